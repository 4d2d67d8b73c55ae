"""client.py - the quantd client: a thin layer over the generated stubs (quantd_pb2,
quantd_pb2_grpc) with the flows that need more than one call - upload what the server lacks,
quantize and follow the job, download an artifact with resume and sha256 verification.

DESIGN
The flows are quantctl's, so both clients meet the same blobs and cache entries:
  upload    StatModel by manifest (computed locally, bundle.py), then one PutModel stream
            sending only the bytes after each file's held_bytes. Another client uploading the
            same files makes the server answer FAILED_PRECONDITION; the client then asks
            again after a pause, until the bundle is complete or no progress is made.
  quantize  upload the model and the calibration file, Quantize (queued, joined or a cache
            hit), WatchJob until the terminal event (watching again after the last seq seen
            when the stream drops), then download.
  download  files arrive in manifest order into "<dir>.partial", with the artifact's manifest
            kept there (STATE_NAME) so a later call resumes at the first incomplete file and
            byte. Every file's sha256 and the manifest digest are checked before the
            directory is renamed to dir: dir never holds a partial or unverified artifact.
The spec travels as written: unset fields stay zero or absent and the server fills in its
defaults, so its spec digest - and the cache key - is the one any other client gets for the
same choices. Every server refusal is a QuantdError carrying the gRPC status code and details;
local verification failures are QuantdErrors too (DATA_LOSS), so callers catch one type.
"""
import json
import os
import re
import threading
import time

import grpc

from . import bundle as _bundle
from . import quantd_pb2 as pb
from . import quantd_pb2_grpc as pb_grpc

STATE_NAME = ".quantd-fetch.json"
CHUNK_BYTES_MAX = 1 << 20     # as fast as larger chunks, and far below any gRPC limit
RETRY_PAUSE_S = 0.2
RETRY_STALLED_MAX = 50        # pauses without progress before an upload gives up: 10 s
WATCH_RECONNECTS = 5          # a dropped WatchJob stream is resumed this many times
DOWNLOAD_ATTEMPTS = 3         # stream attempts per download (resume after a drop)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class QuantdError(Exception):
    """A failed quantd call or flow.

    code: the grpc.StatusCode (for a local failure, the closest one: DATA_LOSS when
    downloaded bytes do not verify, FAILED_PRECONDITION for a stale partial download).
    details: the server's message, which names the field, file or job at fault.
    method: the RPC ("Quantize", ...) or the flow step.
    """

    def __init__(self, code, details, method=""):
        self.code = code
        self.details = details
        self.method = method
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        super().__init__("%s%s: %s" % (method + ": " if method else "", name, details))


class JobFailedError(QuantdError):
    """The job ended FAILED or CANCELLED. job_error_code / job_error_message are the job's
    JobError ("INVALID_ARG", ...); job is the last Job seen."""

    def __init__(self, job_id, state, error_code, error_message, job=None):
        self.job_id = job_id
        self.state = state
        self.job_error_code = error_code
        self.job_error_message = error_message
        self.job = job
        code = grpc.StatusCode.CANCELLED if state == pb.JOB_STATE_CANCELLED else \
            grpc.StatusCode.ABORTED
        word = pb.JobState.Name(state)[len("JOB_STATE_"):].lower()
        super().__init__(code, "job %s %s: %s%s%s" % (job_id, word, error_code,
                                                      ": " if error_code else "", error_message),
                         "job")


class PutResult:
    """What put_bundle did: the bundle (digest, files), the server's BundleStatus after the
    upload, the bytes sent and whether the server held everything already."""

    def __init__(self, bundle, status, sent_bytes, already_complete):
        self.bundle = bundle
        self.digest = bundle.digest
        self.status = status
        self.sent_bytes = sent_bytes
        self.already_complete = already_complete

    def __repr__(self):
        return "PutResult(digest=%s, sent_bytes=%d, already_complete=%s)" % (
            self.digest, self.sent_bytes, self.already_complete)


class DownloadReport:
    """What the latest download did: resumed_file / resumed_offset (where a download left
    in "<dir>.partial" went on; None / 0 when it started afresh), received_bytes (file bytes
    that came over the wire) and refetched (files fetched again because their bytes did not
    verify)."""

    def __init__(self):
        self.resumed_file = None
        self.resumed_offset = 0
        self.received_bytes = 0
        self.refetched = []

    def __repr__(self):
        return "DownloadReport(resumed_file=%r, resumed_offset=%d, received_bytes=%d, " \
            "refetched=%r)" % (self.resumed_file, self.resumed_offset, self.received_bytes,
                               self.refetched)


class QuantizeResult:
    """What quantize() produced.

    path: the verified artifact directory (None when not fetched); job: the final Job;
    outcome: "queued", "joined" or "cache_hit"; artifact_id; cache_hit: no job ran.
    """

    def __init__(self, path, job, outcome, artifact_id):
        self.path = path
        self.job = job
        self.outcome = outcome
        self.artifact_id = artifact_id
        self.cache_hit = outcome == "cache_hit"

    def __iter__(self):
        # path, job = client.quantize(...)
        return iter((self.path, self.job))

    def __repr__(self):
        return "QuantizeResult(path=%r, job=%s, outcome=%s, artifact_id=%s)" % (
            self.path, self.job.id, self.outcome, self.artifact_id)


def _enum_value(enum, prefix, value, what):
    """An enum from its proto number, its full name ("METHOD_AWQ") or its short name in any
    case, '-' for '_' ("awq", "w4a8-awq", "compressed-tensors")."""
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise TypeError("%s: expected a string or an int, got %r" % (what, value))
    name = value.strip().upper().replace("-", "_")
    if not name.startswith(prefix):
        name = prefix + name
    try:
        return enum.Value(name)
    except ValueError:
        names = [n[len(prefix):].lower() for n in enum.keys() if not n.endswith("UNSPECIFIED")]
        raise ValueError("%s '%s': not one of %s" % (what, value, ", ".join(names))) from None


def _message(cls, value, what):
    """A sub-message from None, a message of cls, or a dict of its fields (proto names)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        try:
            return cls(**value)
        except (ValueError, TypeError) as e:
            raise ValueError("%s: %s" % (what, e)) from None
    raise TypeError("%s: expected a dict or %s, got %r" % (what, cls.__name__, value))


def build_spec(method, format, bits=0, group_size=0, symmetric=None, calibration=None,
               modules_to_not_convert=(), awq=None, gptq=None, smoothquant=None, fp8=None):
    """A QuantSpec from its fields, named as in proto/quantd.proto. Zero and None mean "the
    server's default". method and format take names ("awq", "compressed-tensors") or numbers;
    calibration and the params take dicts of their proto fields or messages."""
    spec = pb.QuantSpec(
        method=_enum_value(pb.Method, "METHOD_", method, "method"),
        format=_enum_value(pb.Format, "FORMAT_", format, "format"),
        bits=bits, group_size=group_size,
        modules_to_not_convert=list(modules_to_not_convert))
    if symmetric is not None:
        spec.symmetric = bool(symmetric)
    cal = _message(pb.CalibrationSpec, calibration, "calibration")
    if cal is not None:
        spec.calibration.CopyFrom(cal)
    params = [(n, v, c) for n, v, c in (("awq", awq, pb.AwqParams),
                                        ("gptq", gptq, pb.GptqParams),
                                        ("smoothquant", smoothquant, pb.SmoothQuantParams),
                                        ("fp8", fp8, pb.Fp8Params)) if v is not None]
    if len(params) > 1:
        raise ValueError("spec: give at most one of awq, gptq, smoothquant and fp8 (got %s)"
                         % ", ".join(n for n, _, _ in params))
    for name, value, cls in params:
        getattr(spec, name).CopyFrom(_message(cls, value, name))
    return spec


def _bundle_kind(kind):
    return _enum_value(pb.BundleKind, "BUNDLE_KIND_", kind, "kind")


class Client:
    """A connection to one quantd server.

    target: "host:port" or "unix:/path". token: a bearer token, sent as the "authorization"
    metadata of every call. root_certificates (PEM bytes, or a path to a PEM file): use TLS
    with these CAs; private_key and certificate_chain (PEM bytes or paths): the client
    certificate for mutual TLS. timeout: seconds for unary calls (streams have none).
    options: extra gRPC channel options. Use as a context manager, or call close().
    """

    def __init__(self, target, token=None, root_certificates=None, private_key=None,
                 certificate_chain=None, timeout=30.0, options=None):
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        opts = [("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20)]
        opts.extend(options or ())
        if root_certificates is not None or certificate_chain is not None:
            creds = grpc.ssl_channel_credentials(_pem(root_certificates), _pem(private_key),
                                                 _pem(certificate_chain))
            self._channel = grpc.secure_channel(target, creds, options=opts)
        else:
            self._channel = grpc.insecure_channel(target, options=opts)
        self.stub = pb_grpc.QuantdStub(self._channel)
        self._chunk_bytes = 0
        self.last_download = None  # DownloadReport of the latest download()

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- plumbing ---------------------------------------------------------------------------

    def _unary(self, name, request):
        try:
            return getattr(self.stub, name)(request, timeout=self.timeout,
                                            metadata=self._metadata)
        except grpc.RpcError as e:
            raise _rpc_error(name, e) from None

    def _chunk_size(self):
        if not self._chunk_bytes:
            limits = self.server_info().limits
            n = CHUNK_BYTES_MAX
            if 0 < limits.max_chunk_bytes < n:
                n = limits.max_chunk_bytes
            self._chunk_bytes = n
        return self._chunk_bytes

    # ---- one call each ----------------------------------------------------------------------

    def server_info(self):
        """GetServerInfoResponse: version, devices, methods, limits, cache usage."""
        return self._unary("GetServerInfo", pb.GetServerInfoRequest())

    def get_job(self, job_id):
        return self._unary("GetJob", pb.GetJobRequest(job_id=job_id)).job

    def list_jobs(self, states=(), model_digest="", page_size=0, page_token=""):
        """ListJobsResponse (jobs newest first, next_page_token)."""
        return self._unary("ListJobs", pb.ListJobsRequest(
            states=list(states), model_digest=model_digest, page_size=page_size,
            page_token=page_token))

    def cancel_job(self, job_id):
        return self._unary("CancelJob", pb.CancelJobRequest(job_id=job_id)).job

    def list_artifacts(self, model_digest="", format=0, page_size=0, page_token=""):
        """ListArtifactsResponse (artifacts most recently used first, next_page_token)."""
        fmt = _enum_value(pb.Format, "FORMAT_", format, "format") if format else 0
        return self._unary("ListArtifacts", pb.ListArtifactsRequest(
            model_digest=model_digest, format=fmt, page_size=page_size, page_token=page_token))

    def delete_artifact(self, artifact_id):
        self._unary("DeleteArtifact", pb.DeleteArtifactRequest(artifact_id=artifact_id))

    def watch(self, job_id, after_seq=0):
        """The job's events (JobEvent) after after_seq, until the terminal one. A dropped
        stream raises QuantdError; watch again with after_seq = the last seq seen."""
        try:
            for ev in self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_seq=after_seq),
                                         metadata=self._metadata):
                yield ev
        except grpc.RpcError as e:
            raise _rpc_error("WatchJob", e) from None

    def submit(self, spec, model_digest=None, model_path=None, label=""):
        """One Quantize call: QuantizeResponse (outcome, job, artifact on a cache hit).
        Exactly one of model_digest (an uploaded bundle) and model_path (a directory on the
        server under one of its model roots)."""
        if (model_digest is None) == (model_path is None):
            raise ValueError("submit: give exactly one of model_digest and model_path")
        req = pb.QuantizeRequest(spec=spec, label=label)
        if model_digest is not None:
            req.model_digest = model_digest
        else:
            req.model_path = model_path
        return self._unary("Quantize", req)

    # ---- bundles ----------------------------------------------------------------------------

    def stat(self, what):
        """The server's BundleStatus of a bundle: what may be a manifest digest (NOT_FOUND if
        the server never saw it), a Bundle, or a local path (scanned and hashed here)."""
        if isinstance(what, str) and _DIGEST.match(what) and not os.path.exists(what):
            return self._unary("StatModel", pb.StatModelRequest(digest=what)).status
        b = what if isinstance(what, _bundle.Bundle) else _bundle.load(os.fspath(what))
        return self._unary("StatModel", pb.StatModelRequest(manifest=_manifest(b))).status

    def put_bundle(self, path, kind="model", progress=None):
        """Upload a bundle - a directory, or one file - sending only what the server lacks.

        kind: "model" or "calibration" (or a BundleKind). progress(sent, total) is called
        after every chunk. Returns a PutResult; its digest names the bundle in Quantize.
        """
        b = path if isinstance(path, _bundle.Bundle) else _bundle.load(os.fspath(path))
        k = _bundle_kind(kind)
        man = _manifest(b)
        header = pb.PutModelHeader(manifest=man, kind=k, expected_digest=b.digest)
        chunk = self._chunk_size()
        sent = 0
        first = True
        already = False
        stalled = 0
        last_held = -1
        while True:
            st = self._unary("StatModel", pb.StatModelRequest(manifest=man)).status
            _check_status(st, b)
            if st.complete and st.kind == k:
                already = first
                return PutResult(b, st, sent, already)
            if not first and st.held_bytes <= last_held:
                stalled += 1
            else:
                stalled = 0
            if stalled > RETRY_STALLED_MAX:
                raise QuantdError(grpc.StatusCode.ABORTED, "the server makes no progress on "
                                  "bundle %s (%d of %d bytes held)"
                                  % (b.digest, st.held_bytes, st.total_bytes), "PutModel")
            first = False
            last_held = st.held_bytes
            gen = _Chunks(b, header, st, chunk, progress, sent)
            try:
                resp = self.stub.PutModel(iter(gen), metadata=self._metadata)
            except grpc.RpcError as e:
                if gen.error is not None:
                    raise gen.error from None
                sent = gen.sent
                err = _rpc_error("PutModel", e)
                if err.code in (grpc.StatusCode.FAILED_PRECONDITION,
                                grpc.StatusCode.ALREADY_EXISTS):
                    # Another stream is uploading these files, or just finished them.
                    time.sleep(RETRY_PAUSE_S)
                    continue
                raise err from None
            if gen.error is not None:
                raise gen.error
            sent = gen.sent
            if resp.status.complete:
                return PutResult(b, resp.status, sent, False)
            time.sleep(RETRY_PAUSE_S)

    # ---- download ---------------------------------------------------------------------------

    def download(self, artifact_id, output_dir, chunk_bytes=0):
        """Fetch an artifact into output_dir (which must not exist), verified; returns the
        path. An interrupted download left "<output_dir>.partial", which this resumes."""
        output_dir = os.fspath(output_dir)
        if os.path.lexists(output_dir):
            raise FileExistsError("%s: already exists; choose a new directory" % output_dir)
        d = _Download(self, artifact_id, output_dir, chunk_bytes)
        try:
            return d.run()
        finally:
            self.last_download = d.report

    # ---- the whole flow ---------------------------------------------------------------------

    def quantize(self, model_dir=None, *, method, format, bits=0, group_size=0, symmetric=None,
                 calib=None, calibration=None, modules_to_not_convert=(), awq=None, gptq=None,
                 smoothquant=None, fp8=None, model_digest=None, model_path=None, label="",
                 output_dir=None, fetch=True, on_event=None, on_upload=None):
        """Quantize a model on the server and fetch the verified artifact.

        The model is one of model_dir (a local directory, uploaded as needed), model_digest
        (a bundle the server holds) and model_path (a directory on the server). The spec
        fields are QuantSpec's (see build_spec); calib is a local calibration file, uploaded
        as a one-file calibration bundle whose digest goes into calibration.digest. on_event
        sees every JobEvent of the job (none on a cache hit); on_upload(kind, sent, total)
        sees the upload. output_dir defaults to ./<artifact id>; fetch=False skips the
        download. Returns a QuantizeResult (path, job); a failed or cancelled job raises
        JobFailedError.
        """
        if sum(x is not None for x in (model_dir, model_digest, model_path)) != 1:
            raise ValueError("quantize: give exactly one of model_dir, model_digest and "
                             "model_path")
        if output_dir is not None and os.path.lexists(output_dir):
            raise FileExistsError("%s: already exists; choose a new directory" % output_dir)
        cal = _message(pb.CalibrationSpec, calibration, "calibration")
        if calib is not None:
            cal = pb.CalibrationSpec() if cal is None else cal
        spec = build_spec(method, format, bits, group_size, symmetric, cal,
                          modules_to_not_convert, awq, gptq, smoothquant, fp8)
        if model_dir is not None:
            model_digest = self.put_bundle(model_dir, "model",
                                           _upload_cb(on_upload, "model")).digest
        if calib is not None:
            digest = self.put_bundle(calib, "calibration",
                                     _upload_cb(on_upload, "calibration")).digest
            if spec.calibration.digest and spec.calibration.digest != digest:
                raise ValueError("calibration.digest %s is not the digest %s of calib %s"
                                 % (spec.calibration.digest, digest, calib))
            spec.calibration.digest = digest
        resp = self.submit(spec, model_digest=model_digest, model_path=model_path, label=label)
        outcome = pb.QuantizeOutcome.Name(resp.outcome)[len("QUANTIZE_OUTCOME_"):].lower()
        job = resp.job
        if resp.outcome == pb.QUANTIZE_OUTCOME_CACHE_HIT:
            artifact_id = resp.artifact.id or job.artifact_id
        else:
            done = self._follow(job.id, on_event)
            job = self.get_job(job.id)
            if done.state != pb.JOB_STATE_SUCCEEDED:
                raise JobFailedError(job.id, done.state, done.error.code, done.error.message, job)
            artifact_id = done.artifact_id or job.artifact_id
        if not artifact_id:
            raise QuantdError(grpc.StatusCode.INTERNAL, "job %s succeeded without an artifact "
                              "id" % job.id, "Quantize")
        path = None
        if fetch:
            if output_dir is None:
                _bundle.check_name(artifact_id, "artifact id")
                if "/" in artifact_id:
                    raise ValueError("artifact id '%s' is no directory name: pass output_dir"
                                     % artifact_id)
                output_dir = os.path.join(os.getcwd(), artifact_id)
            path = self.download(artifact_id, output_dir)
        return QuantizeResult(path, job, outcome, artifact_id)

    def _follow(self, job_id, on_event):
        """Watch until the terminal event, resuming after the last seq when the stream
        drops; returns the JobDone."""
        seq = 0
        drops = 0
        while True:
            try:
                for ev in self.watch(job_id, after_seq=seq):
                    seq = max(seq, ev.seq)
                    if on_event is not None:
                        on_event(ev)
                    if ev.WhichOneof("event") == "done":
                        return ev.done
                    if ev.WhichOneof("event") == "snapshot" and _terminal(ev.snapshot.state):
                        s = ev.snapshot
                        return pb.JobDone(state=s.state, error=s.error,
                                          artifact_id=s.artifact_id)
            except QuantdError as e:
                if e.code != grpc.StatusCode.UNAVAILABLE or drops >= WATCH_RECONNECTS:
                    raise
                drops += 1
                time.sleep(RETRY_PAUSE_S * drops)
                continue
            # The stream ended without a terminal event: ask the job itself.
            job = self.get_job(job_id)
            if _terminal(job.state):
                return pb.JobDone(state=job.state, error=job.error, artifact_id=job.artifact_id)
            drops += 1
            if drops > WATCH_RECONNECTS:
                raise QuantdError(grpc.StatusCode.UNAVAILABLE, "job %s: the event stream ended "
                                  "before the job did" % job_id, "WatchJob")


# ---- helpers -----------------------------------------------------------------------------------

def _pem(v):
    """PEM bytes from bytes, or from the file a str path names; None stays None."""
    if v is None or isinstance(v, bytes):
        return v
    with open(v, "rb") as f:
        return f.read()


def _rpc_error(method, e):
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return QuantdError(code, details or "", method)


def _terminal(state):
    return state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


def _upload_cb(fn, kind):
    if fn is None:
        return None
    return lambda sent, total: fn(kind, sent, total)


def _manifest(b):
    return pb.Manifest(files=[pb.FileEntry(name=f.name, size=f.size, sha256=f.sha256)
                              for f in b.files])


def _check_status(st, b):
    """The server's answer must list the manifest we sent; anything else is its fault."""
    if st.digest != b.digest or [f.name for f in st.files] != [f.name for f in b.files]:
        raise QuantdError(grpc.StatusCode.INTERNAL, "StatModel: the answer (bundle %s) does "
                          "not match the manifest sent (bundle %s)" % (st.digest, b.digest),
                          "StatModel")


class _Chunks:
    """The messages of one PutModel stream: the header, then every byte the server lacks,
    from each file's held_bytes. gRPC pulls them from its own thread, so a local error is kept
    in .error (gRPC would only see a cancelled call) and raised by put_bundle."""

    def __init__(self, b, header, status, chunk, progress, sent):
        self.b = b
        self.header = header
        self.status = status
        self.chunk = chunk
        self.progress = progress
        self.sent = sent
        self.error = None
        self._lock = threading.Lock()

    def __iter__(self):
        try:
            yield pb.PutModelRequest(header=self.header)
            held = self.status.held_bytes
            for i, f in enumerate(self.b.files):
                fs = self.status.files[i]
                if fs.complete or fs.held_bytes >= f.size:
                    continue
                with open(f.path, "rb") as fp:
                    off = fs.held_bytes
                    fp.seek(off)
                    while off < f.size:
                        data = fp.read(min(self.chunk, f.size - off))
                        if not data:
                            raise OSError("%s: shorter than when it was hashed" % f.path)
                        yield pb.PutModelRequest(chunk=pb.Chunk(index=i, offset=off, data=data))
                        off += len(data)
                        held += len(data)
                        with self._lock:
                            self.sent += len(data)
                        if self.progress:
                            self.progress(held, self.b.total_bytes)
        except Exception as e:  # noqa: BLE001 - handed to the caller's thread
            self.error = e
            raise


class _Download:
    """One download: the state in "<dir>.partial", the GetArtifact stream, the checks."""

    def __init__(self, client, artifact_id, output_dir, chunk_bytes):
        self.c = client
        self.id = artifact_id
        self.dir = output_dir
        self.partial = output_dir + ".partial"
        self.state_path = os.path.join(self.partial, STATE_NAME)
        self.chunk_bytes = chunk_bytes
        self.files = None            # [{"name", "size", "sha256"}] of the artifact
        self.manifest_digest = ""
        self.resuming = False        # a state file was found: this run goes on from it
        self.report = DownloadReport()

    def run(self):
        os.makedirs(self.partial, exist_ok=True)
        if os.path.exists(self.state_path):
            self._read_state()
            self.resuming = True
        for attempt in range(DOWNLOAD_ATTEMPTS):
            try:
                self._stream(None)
                break
            except QuantdError as e:
                if e.code != grpc.StatusCode.UNAVAILABLE or attempt + 1 == DOWNLOAD_ATTEMPTS:
                    raise
                time.sleep(RETRY_PAUSE_S * (attempt + 1))
        bad = self._verify()
        if bad:
            # Bytes that do not match (a file damaged in the partial directory): fetch those
            # files again, once; a second mismatch is the server's data.
            for name in bad:
                if os.path.exists(os.path.join(self.partial, name)):
                    os.unlink(os.path.join(self.partial, name))
            self.report.refetched = list(bad)
            self._stream(bad)
            bad = self._verify()
            if bad:
                raise QuantdError(grpc.StatusCode.DATA_LOSS, "artifact %s: %s: sha256 or size "
                                  "does not match the artifact's manifest"
                                  % (self.id, ", ".join(bad)), "GetArtifact")
        if self.manifest_digest:
            got = _bundle.manifest_digest([_bundle.BundleFile(f["name"], None, f["size"],
                                                              f["sha256"]) for f in self.files])
            if got != self.manifest_digest:
                raise QuantdError(grpc.StatusCode.DATA_LOSS, "artifact %s: its files digest to "
                                  "%s, its manifest_digest says %s"
                                  % (self.id, got, self.manifest_digest), "GetArtifact")
        os.unlink(self.state_path)
        _fsync_dir(self.partial)
        os.rename(self.partial, self.dir)
        _fsync_dir(os.path.dirname(os.path.abspath(self.dir)))
        return self.dir

    def _read_state(self):
        try:
            with open(self.state_path, encoding="utf-8") as f:
                st = json.load(f)
            files = [{"name": x["name"], "size": int(x["size"]), "sha256": x["sha256"]}
                     for x in st["files"]]
            aid = st["artifact_id"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise QuantdError(grpc.StatusCode.FAILED_PRECONDITION, "%s: unreadable (%s); remove "
                              "%s and download again" % (self.state_path, e, self.partial),
                              "download") from None
        if aid != self.id:
            raise QuantdError(grpc.StatusCode.FAILED_PRECONDITION, "%s holds a download of "
                              "artifact %s, not %s; remove it or choose another directory"
                              % (self.partial, aid, self.id), "download")
        for x in files:
            _bundle.check_name(x["name"], "artifact file")
        self.files = files
        self.manifest_digest = st.get("manifest_digest", "")

    def _write_state(self):
        tmp = self.state_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"artifact_id": self.id, "manifest_digest": self.manifest_digest,
                       "files": self.files}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def _held(self, name):
        try:
            return os.stat(os.path.join(self.partial, name)).st_size
        except FileNotFoundError:
            return 0

    def _start(self):
        """(start_file, start_offset): the first file not yet whole, and its size here."""
        if self.files is None:
            return "", 0
        for f in self.files:
            held = self._held(f["name"])
            if held < f["size"]:
                return f["name"], held
        return None, 0

    def _stream(self, only):
        """One GetArtifact stream: everything from the resume point, or the files in only."""
        req = pb.GetArtifactRequest(artifact_id=self.id, chunk_bytes=self.chunk_bytes)
        if only:
            req.files.extend(only)
        else:
            start, offset = self._start()
            if start is None:
                return  # every file is whole here; _verify decides
            if start:
                req.start_file = start
                req.start_offset = offset
                if self.resuming and self.report.resumed_file is None:
                    self.report.resumed_file = start
                    self.report.resumed_offset = offset
        out = None       # the open file
        out_index = -1
        pos = 0          # next byte expected in the open file
        try:
            for msg in self.c.stub.GetArtifact(req, metadata=self.c._metadata):
                kind = msg.WhichOneof("msg")
                if kind == "artifact":
                    self._on_artifact(msg.artifact)
                    continue
                if kind != "chunk" or self.files is None:
                    raise QuantdError(grpc.StatusCode.INTERNAL, "artifact %s: a chunk came "
                                      "before the manifest" % self.id, "GetArtifact")
                ch = msg.chunk
                if ch.WhichOneof("file") != "index" or ch.index >= len(self.files):
                    raise QuantdError(grpc.StatusCode.INTERNAL, "artifact %s: a chunk names no "
                                      "file of the manifest" % self.id, "GetArtifact")
                f = self.files[ch.index]
                if ch.index != out_index:
                    if out is not None:
                        out.close()
                    out = self._open(f["name"], ch.offset)
                    out_index = ch.index
                    pos = ch.offset
                if ch.offset != pos or ch.offset + len(ch.data) > f["size"]:
                    raise QuantdError(grpc.StatusCode.INTERNAL, "artifact %s: %s: chunk at byte "
                                      "%d, expected %d" % (self.id, f["name"], ch.offset, pos),
                                      "GetArtifact")
                out.write(ch.data)
                pos += len(ch.data)
                self.report.received_bytes += len(ch.data)
        except grpc.RpcError as e:
            raise _rpc_error("GetArtifact", e) from None
        finally:
            if out is not None:
                out.close()
        # Empty files get no chunks.
        for f in self.files or ():
            p = os.path.join(self.partial, f["name"])
            if f["size"] == 0 and not os.path.exists(p):
                os.makedirs(os.path.dirname(p), exist_ok=True)
                open(p, "wb").close()

    def _on_artifact(self, a):
        files = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in a.files]
        for x in files:
            _bundle.check_name(x["name"], "artifact file")  # never write outside partial
        if self.files is not None and files != self.files:
            raise QuantdError(grpc.StatusCode.FAILED_PRECONDITION, "artifact %s: its manifest "
                              "differs from the one in %s; remove %s and download again"
                              % (self.id, self.state_path, self.partial), "GetArtifact")
        if self.files is None:
            self.files = files
            self.manifest_digest = a.manifest_digest
            self._write_state()

    def _open(self, name, offset):
        p = os.path.join(self.partial, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        held = self._held(name)
        if offset > held:
            raise QuantdError(grpc.StatusCode.INTERNAL, "artifact %s: %s: the server starts "
                              "at byte %d, only %d are here" % (self.id, name, offset, held),
                              "GetArtifact")
        fp = open(p, "r+b" if os.path.exists(p) else "wb")
        fp.truncate(offset)
        fp.seek(offset)
        return fp

    def _verify(self):
        """Names of the files whose size or sha256 do not match the manifest."""
        bad = []
        for f in self.files or ():
            p = os.path.join(self.partial, f["name"])
            try:
                digest, size = _bundle.sha256_file(p)
            except FileNotFoundError:
                bad.append(f["name"])
                continue
            if size != f["size"] or digest != f["sha256"]:
                bad.append(f["name"])
        return bad


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["Client", "QuantdError", "JobFailedError", "PutResult", "QuantizeResult",
           "DownloadReport",
           "build_spec", "STATE_NAME"]

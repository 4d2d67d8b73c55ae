#!/usr/bin/python3
"""test_e2e.py - the Python client against `quantd serve` on loopback, end to end.

An AWQ job on the example model (examples/models/babyllama, 4 bits, group 32, 8 calibration
rows) through Client.quantize: the model and calibration set are uploaded, the job is
queued and its events arrive in order (5 layers, seq without gaps, progress never going
back); the fetched artifact is byte-identical to what `quantctl quantize` fetches for the same
spec from the same server (which answers it from the cache, so both clients computed the same
model digest and spec); a second call is a cache hit with nothing uploaded and no events; an
invalid spec raises QuantdError with INVALID_ARGUMENT naming the field; a download left
half-done (a truncated file, a damaged one) resumes at the right byte and fetches the damaged
file again; health and NOT_FOUND answers come through.

Environment (set by ctest): QUANTD, QUANTCTL (the binaries), QD_SOURCE_DIR (the repository),
QD_PROTOC (the system protoc; PATH is searched when unset). Exit 0 pass, 1 fail, 77 skip.
"""
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77
HERE = os.path.dirname(os.path.abspath(__file__))
failures = []


def ok(what):
    print("ok   " + what, flush=True)


def bad(what, detail=""):
    print("FAIL " + what, flush=True)
    if detail:
        for line in str(detail).splitlines():
            print("    " + line)
    failures.append(what)


def check(cond, what, detail=""):
    if cond:
        ok(what)
    else:
        bad(what, detail)
    return cond


def prerequisites():
    """None when the test can run, else why not."""
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        return "%s cannot import grpc / google.protobuf (%s): install python3-grpcio and " \
               "python3-protobuf" % (sys.executable, e)
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        return "%s has no grpc_tools to generate the stubs: install python3-grpc-tools" \
               % sys.executable
    protoc = os.environ.get("QD_PROTOC") or ""
    if not protoc or protoc.endswith("NOTFOUND") or not os.path.exists(protoc):
        protoc = shutil.which("protoc") or ""
    if not protoc:
        return "no protoc to generate the message stubs: install protobuf-compiler"
    os.environ["QD_PROTOC"] = protoc
    return None


def tree(path):
    """{relative name: sha256} of every file under path."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fp:
                out[os.path.relpath(p, path)] = hashlib.sha256(fp.read()).hexdigest()
    return out


def same_tree(a, b):
    """Byte for byte: the same names, the same bytes."""
    ta, tb = tree(a), tree(b)
    if ta == tb and ta:
        return True, ""
    only = sorted(set(ta) ^ set(tb))
    differ = sorted(n for n in set(ta) & set(tb) if ta[n] != tb[n])
    return False, "only in one: %s; different bytes: %s" % (only, differ)


class Server:
    """quantd serve on 127.0.0.1 with a port the kernel picks, in its own data directory."""

    def __init__(self, quantd, tmp, source):
        self.log = os.path.join(tmp, "server.log")
        cfg = os.path.join(tmp, "quantd.yaml")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write("workers:\n  cpu: 1\n  threads: 2\nmodel_roots:\n  - \"%s\"\n"
                    "shutdown:\n  drain_seconds: 5\n" % os.path.join(source, "examples", "models"))
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen([quantd, "serve", "--config", cfg, "--listen", "127.0.0.1:0",
                                      "--data-dir", os.path.join(tmp, "data")],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        self.addr = None
        pat = re.compile(r"^quantd: listening on (127\.0\.0\.1:[0-9]+)$", re.MULTILINE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                m = pat.search(f.read())
            if m:
                self.addr = m.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("quantd serve did not listen within 30 s:\n" + self.read_log())

    def read_log(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        return self.proc.returncode


def run_tests(qc, server, tmp, source, quantctl):
    import grpc
    from quantd_client import (STATE_NAME, Client, QuantdError, bundle, health_pb2,
                               health_pb2_grpc, quantd_pb2 as pb)

    model = os.path.join(source, "examples", "models", "babyllama")
    calib = os.path.join(source, "examples", "data", "babyllama", "calib.safetensors")
    spec = dict(method="awq", format="awq", bits=4, group_size=32, calib=calib,
                calibration={"rows": 8})
    ctl_flags = ["--method", "awq", "--format", "awq", "--bits", "4", "--group-size", "32",
                 "--calib", calib, "--calib-rows", "8"]

    # ---- health, and a refusal as QuantdError ----------------------------------------------------
    health = health_pb2_grpc.HealthStub(qc._channel)
    r = health.Check(health_pb2.HealthCheckRequest(service="quantd.v1.Quantd"), timeout=10)
    check(r.status == health_pb2.HealthCheckResponse.SERVING, "health: quantd.v1.Quantd SERVING")
    try:
        qc.get_job("0123456789abcdef0123456789abcdef")
        bad("GetJob of an unknown job raised nothing")
    except QuantdError as e:
        check(e.code == grpc.StatusCode.NOT_FOUND and e.method == "GetJob",
              "unknown job: QuantdError NOT_FOUND from GetJob", e)

    # ---- the job: uploaded, queued, watched, fetched ---------------------------------------------
    events = []
    uploads = []
    py1 = os.path.join(tmp, "py1")
    t0 = time.monotonic()
    res = qc.quantize(model, **spec, output_dir=py1, label="python-e2e",
                      on_event=events.append, on_upload=lambda *a: uploads.append(a))
    took = time.monotonic() - t0
    check(res.outcome == "queued" and not res.cache_hit,
          "quantize: queued (%.1f s end to end)" % took, res)
    check(res.job.state == pb.JOB_STATE_SUCCEEDED and res.job.artifact_id == res.artifact_id
          and res.job.label == "python-e2e", "the final job: succeeded, its artifact, its label",
          res.job)
    local = bundle.load(model)
    check(res.job.model_digest == local.digest,
          "the server's model digest is the client's manifest digest", res.job.model_digest)
    sent_model = max((s for k, s, _ in uploads if k == "model"), default=0)
    check(sent_model == local.total_bytes, "the whole model went up (%d bytes)" % sent_model)
    check(res.job.spec.bits == 4 and res.job.spec.group_size == 32 and
          res.job.spec.calibration.rows == 8 and res.job.spec.method == pb.METHOD_AWQ,
          "the resolved spec keeps what was asked", res.job.spec)
    seqs = [e.seq for e in events]
    check(seqs == list(range(1, len(seqs) + 1)), "events numbered from 1 without gaps", seqs)
    layers = [e.layer for e in events if e.WhichOneof("event") == "layer"]
    check([ly.index for ly in layers] == [0, 1, 2, 3, 4] and
          all(ly.count == 5 and ly.modules and ly.error >= 0 for ly in layers),
          "5 layer events, in order, each with its modules' errors", layers)
    fr = [e.progress.fraction for e in events]
    check(all(a <= b for a, b in zip(fr, fr[1:])) and fr and fr[-1] == 1.0,
          "progress never goes back and ends at 1", fr)
    last = events[-1] if events else None
    check(last is not None and last.WhichOneof("event") == "done" and
          last.done.state == pb.JOB_STATE_SUCCEEDED and last.done.artifact_id == res.artifact_id,
          "the last event is the job's end, naming the artifact", last)
    check(res.path == py1 and os.path.isdir(py1) and not os.path.exists(py1 + ".partial") and
          not os.path.exists(os.path.join(py1, STATE_NAME)),
          "the artifact is in output_dir; nothing partial left")
    art = qc.list_artifacts().artifacts
    mine = [a for a in art if a.id == res.artifact_id]
    check(len(mine) == 1 and sorted(tree(py1)) == sorted(f.name for f in mine[0].files) and
          all(tree(py1)[f.name] == f.sha256 for f in mine[0].files),
          "the fetched files are the artifact's manifest")

    # ---- quantctl, same spec, same server: a cache hit with the same bytes -----------------------
    ctl = os.path.join(tmp, "ctl")
    p = subprocess.run([quantctl, "--server", server.addr, "quantize", model] + ctl_flags +
                       ["-o", ctl], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120, check=False)
    check(p.returncode == 0 and "cache hit" in p.stdout and "upload: nothing to send" in p.stdout,
          "quantctl quantize of the same spec: cache hit, nothing uploaded", p.stdout)
    check(("artifact: %s" % res.artifact_id) in p.stdout, "quantctl got the same artifact")
    same, why = same_tree(py1, ctl)
    check(same, "the Python client's artifact is byte-identical to quantctl's", why)

    # ---- the same request again: the cache answers, nothing runs, nothing is sent ----------------
    events2 = []
    uploads2 = []
    py2 = os.path.join(tmp, "py2")
    res2 = qc.quantize(model, **spec, output_dir=py2, on_event=events2.append,
                       on_upload=lambda *a: uploads2.append(a))
    check(res2.outcome == "cache_hit" and res2.cache_hit and res2.job.cache_hit and
          res2.artifact_id == res.artifact_id, "second call: cache hit, the same artifact", res2)
    check(not events2 and not uploads2, "a cache hit: no events, no bytes uploaded",
          "%d events, %d uploads" % (len(events2), len(uploads2)))
    same, why = same_tree(py1, py2)
    check(same, "the cache-hit artifact is byte-identical", why)
    pr = qc.put_bundle(model, "model")
    check(pr.already_complete and pr.sent_bytes == 0 and pr.digest == local.digest,
          "put_bundle of a held model sends nothing", pr)
    path, job = res2
    check(path == py2 and job.id == res2.job.id, "QuantizeResult unpacks as (path, job)")

    # ---- an invalid spec: INVALID_ARGUMENT naming the field --------------------------------------
    try:
        qc.quantize(model, method="awq", format="awq", bits=4, group_size=33, calib=calib,
                    calibration={"rows": 8}, fetch=False)
        bad("group_size 33 was accepted")
    except QuantdError as e:
        check(e.code == grpc.StatusCode.INVALID_ARGUMENT and "spec.group_size" in e.details and
              e.method == "Quantize",
              "group_size 33: QuantdError INVALID_ARGUMENT naming spec.group_size", e)
    try:
        qc.submit(pb.QuantSpec(method=pb.METHOD_AWQ), model_digest=local.digest)
        bad("a spec without a format was accepted")
    except QuantdError as e:
        check(e.code == grpc.StatusCode.INVALID_ARGUMENT and "format" in e.details,
              "no format: QuantdError INVALID_ARGUMENT naming the format", e)

    # ---- a download left half-done: resumed at the byte, a damaged file fetched again ------------
    files = mine[0].files if mine else []
    names = [f.name for f in files]
    big = max(files, key=lambda f: f.size) if files else None
    before = [f for f in files if f.name < big.name] if big else []
    if big and before and big.size > 100000:
        out = os.path.join(tmp, "resumed")
        part = out + ".partial"
        os.makedirs(part)
        with open(os.path.join(part, STATE_NAME), "w", encoding="utf-8") as fp:
            import json
            json.dump({"artifact_id": res.artifact_id,
                       "manifest_digest": mine[0].manifest_digest,
                       "files": [{"name": f.name, "size": f.size, "sha256": f.sha256}
                                 for f in files]}, fp)
        for f in before:
            shutil.copyfile(os.path.join(py1, f.name), os.path.join(part, f.name))
        damaged = before[0]
        with open(os.path.join(part, damaged.name), "r+b") as fp:
            first = fp.read(1)
            fp.seek(0)
            fp.write(bytes([first[0] ^ 0xFF]) if first else b"x")
        with open(os.path.join(py1, big.name), "rb") as src, \
                open(os.path.join(part, big.name), "wb") as dst:
            dst.write(src.read(100000))
        qc.download(res.artifact_id, out)
        rep = qc.last_download
        after = sum(f.size for f in files if f.name > big.name)
        want = big.size - 100000 + after + damaged.size
        check(rep.resumed_file == big.name and rep.resumed_offset == 100000,
              "download resumed at %s byte 100000" % big.name, rep)
        check(rep.refetched == [damaged.name] and rep.received_bytes == want,
              "the damaged %s was fetched again; %d bytes came, no more" % (damaged.name, want),
              rep)
        same, why = same_tree(py1, out)
        check(same and not os.path.exists(part), "the resumed download is byte-identical", why)
    else:
        bad("the artifact has no large file after another one to test resuming with", names)
    try:
        qc.download(res.artifact_id, py1)
        bad("download into an existing directory was accepted")
    except FileExistsError:
        ok("download into an existing directory: FileExistsError")


def main():
    why = prerequisites()
    if why:
        print("skip: " + why)
        return SKIP
    for var in ("QUANTD", "QUANTCTL", "QD_SOURCE_DIR"):
        if not os.environ.get(var):
            print("test_e2e.py: %s is not set (run it through ctest)" % var, file=sys.stderr)
            return 1
    source = os.environ["QD_SOURCE_DIR"]
    tmp = tempfile.mkdtemp(prefix="quantd-python-")
    server = None
    try:
        # Stubs from the current proto, into this run's own directory; no bytecode left in
        # the source tree.
        sys.dont_write_bytecode = True
        sys.path.insert(0, os.path.dirname(HERE))
        import gen_stubs
        gen_stubs.generate(os.path.join(source, "proto"), os.path.join(tmp, "pkg"),
                           os.environ["QD_PROTOC"], sys.executable)
        sys.path.insert(0, os.path.join(tmp, "pkg"))
        from quantd_client import Client
        server = Server(os.environ["QUANTD"], tmp, source)
        with Client(server.addr, timeout=30) as qc:
            run_tests(qc, server, tmp, source, os.environ["QUANTCTL"])
        st = server.stop()
        check(st == 0, "quantd serve exits 0 after SIGTERM", "exit %s\n%s" % (st,
                                                                               server.read_log()))
        server = None
    except Exception as e:  # noqa: BLE001 - report it as a failure, with the server's log
        import traceback
        bad("unexpected %s" % type(e).__name__, traceback.format_exc())
        if server is not None:
            print(server.read_log()[-4000:])
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d failure(s)" % len(failures) if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

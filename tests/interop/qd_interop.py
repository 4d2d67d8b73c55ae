#!/usr/bin/env python3
"""qd_interop.py - shared code of the artifact interop tests (tests/interop/*_py.py, *_lib.py).

What it owns:
  - ARTIFACTS: the quantd artifacts the interop tests read, one per format variant, each made
    by `quantd quantize` on a bundled model (or a model derived from it) and cached under the
    build tree, so the tests that share an artifact quantize it once;
  - reading an artifact with the `safetensors` library (names, dtypes, shapes, metadata), with
    the tensors numpy has no dtype for (BF16, F8_E4M3) decoded here from their bytes;
  - an independent numpy dequantization of every format, written from docs/formats.md (the
    layouts as AutoAWQ, AutoGPTQ/GPTQModel, compressed-tensors and ModelOpt write them), not
    from quantd's C;
  - the link to quantd's own dequantization: a float model built from a dequantization and
    `quantd eval` on it and on the artifact print the same perplexity when both dequantize to
    the same fp32 weights (the artifact reader and the float loader run the same forward);
  - a small check counter shared by the test scripts.

DESIGN. Three implementations must agree: quantd's reader (through `quantd eval`), the numpy
reference here, and the format's own Python library (in the *_lib.py tests). The numpy
reference is deliberately the pivot: it needs only numpy and safetensors, so the formats_py test
runs wherever those install, and each library test compares the library with it. Until quantd
can write its dequantized weights (see tests/interop/README.md), the quantd side is compared
through perplexity, which equal weights reproduce to the last printed digit.

Artifacts are cached in $QD_BINARY_DIR/tests/interop-artifacts/<name>-<key>, where the key
hashes the quantd binary (size and mtime), the model and the command line; a lock file per name
makes concurrent tests (ctest -j) build each artifact once. Environment (set by ctest):
QD_SOURCE_DIR, QD_BINARY_DIR, QUANTD.
"""
import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
from safetensors import safe_open

# ---- checks -----------------------------------------------------------------------------------


class Checks:
    """Counts checks; a failure is printed at once and makes finish() return 1."""

    def __init__(self, name):
        self.name = name
        self.n_ok = 0
        self.failures = []
        self.notes = []

    def check(self, cond, what):
        if cond:
            self.n_ok += 1
        else:
            self.failures.append(what)
            print("FAIL: " + what, flush=True)
        return bool(cond)

    def note(self, what):
        """Something the reader should know that is not a failure (a known incompatibility of a
        library version, a comparison that could not be made)."""
        self.notes.append(what)
        print("NOTE: " + what, flush=True)

    def finish(self):
        if self.failures:
            print("%s: %d check(s) failed, %d passed" % (self.name, len(self.failures), self.n_ok))
            return 1
        print("%s: all %d checks passed" % (self.name, self.n_ok))
        return 0


def env_path(name):
    v = os.environ.get(name)
    if not v:
        raise SystemExit("%s is not set (run this test through ctest)" % name)
    return v


# ---- the artifacts ----------------------------------------------------------------------------

CALIB = ["--calib", "@calib", "--calib-rows", "8", "--calib-seq-len", "64"]

# name -> (source model, quantize arguments). "@calib" is the babyllama calibration set.
# babyllama's intermediate_size (352) is no multiple of 64, the smallest group size ModelOpt's
# int4 AWQ takes, so that artifact is made from babyllama-i256 (the MLP cut to 256 channels).
ARTIFACTS = {
    "awq": ("babyllama", ["--method", "awq", "--format", "awq", "--bits", "4",
                          "--group-size", "32", "--asym"] + CALIB),
    "gptq": ("babyllama", ["--method", "gptq", "--format", "gptq", "--bits", "4",
                           "--group-size", "32", "--sym"] + CALIB),
    "gptq_v2": ("babyllama", ["--method", "gptq", "--format", "gptq", "--bits", "4",
                              "--group-size", "32", "--asym"] + CALIB),
    "gptq_act": ("babyllama", ["--method", "gptq", "--format", "gptq", "--bits", "4",
                               "--group-size", "32", "--act-order"] + CALIB),
    "dashinfer": ("babyllama", ["--method", "gptq", "--format", "dashinfer", "--bits", "4",
                                "--group-size", "-1"] + CALIB),
    "ct_w4a16": ("babyllama", ["--method", "gptq", "--format", "compressed-tensors",
                               "--bits", "4", "--group-size", "32", "--sym"] + CALIB),
    "ct_w4a16_asym": ("babyllama", ["--method", "gptq", "--format", "compressed-tensors",
                                    "--bits", "4", "--group-size", "32", "--asym"] + CALIB),
    "ct_w4a16_act": ("babyllama", ["--method", "gptq", "--format", "compressed-tensors",
                                   "--bits", "4", "--group-size", "32", "--act-order",
                                   "--static-groups"] + CALIB),
    "ct_w4a16_asym_bf16": ("babyllama-bf16", ["--method", "rtn", "--format",
                                              "compressed-tensors", "--bits", "4",
                                              "--group-size", "32", "--asym"]),
    "ct_w8a16": ("babyllama", ["--method", "gptq", "--format", "compressed-tensors",
                               "--bits", "8", "--group-size", "-1"] + CALIB),
    "ct_w8a8": ("babyllama", ["--method", "smoothquant", "--format", "compressed-tensors"]
                + CALIB),
    "ct_fp8": ("babyllama", ["--method", "fp8", "--format", "compressed-tensors"]),
    "ct_fp8_static": ("babyllama", ["--method", "fp8", "--format", "compressed-tensors",
                                    "--fp8-activation-scheme", "static"] + CALIB),
    "mo_w4a16_awq": ("babyllama-i256", ["--method", "awq", "--format", "modelopt",
                                        "--group-size", "64"] + CALIB),
    "mo_int8_sq": ("babyllama", ["--method", "smoothquant", "--format", "modelopt"] + CALIB),
}

# Formats whose artifacts quantize weights only: quantd eval of the artifact and of a float
# model holding the same dequantized weights run the same arithmetic.
WEIGHT_ONLY = {"awq", "gptq", "gptq_v2", "gptq_act", "dashinfer", "ct_w4a16", "ct_w4a16_asym",
               "ct_w4a16_act", "ct_w4a16_asym_bf16", "ct_w8a16", "mo_w4a16_awq"}

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def source_dir():
    return env_path("QD_SOURCE_DIR")


def quantd():
    q = env_path("QUANTD")
    if not os.access(q, os.X_OK):
        raise SystemExit("QUANTD does not name the quantd program: %r" % q)
    return q


def cache_dir():
    d = os.path.join(env_path("QD_BINARY_DIR"), "tests", "interop-artifacts")
    os.makedirs(d, exist_ok=True)
    return d


def calib_path():
    return os.path.join(source_dir(), "examples", "data", "babyllama", "calib.safetensors")


def eval_path():
    return os.path.join(source_dir(), "examples", "data", "babyllama", "eval.safetensors")


def run(cmd, what):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if r.returncode != 0:
        raise SystemExit("%s failed (exit %d): %s\n%s%s" % (
            what, r.returncode, " ".join(cmd), r.stdout.decode(errors="replace"),
            r.stderr.decode(errors="replace")))
    return r.stdout.decode(errors="replace")


def _binary_stamp():
    st = os.stat(quantd())
    return "%s:%d:%d" % (os.path.realpath(quantd()), st.st_size, st.st_mtime_ns)


class _Lock:
    def __init__(self, path):
        self.path = path
        self.f = None

    def __enter__(self):
        self.f = open(self.path, "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _cached(name, key_text, build):
    """The directory cache_dir()/name-<key>, made by build(tmp_path) unless it exists; other
    keys of the same name (older quantd binaries) are removed."""
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    root = cache_dir()
    final = os.path.join(root, "%s-%s" % (name, key))
    with _Lock(os.path.join(root, name + ".lock")):
        if os.path.isdir(final):
            return final
        for entry in os.listdir(root):
            if entry.startswith(name + "-") and entry[len(name) + 1:].isalnum() and \
                    len(entry) == len(name) + 17:
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        os.rename(tmp, final)
    return final


def _derive_i256(src, out):
    """babyllama with its MLP cut to the first 256 intermediate channels (gate/up rows, down
    columns): a model whose linears all take ModelOpt's group size 64."""
    os.makedirs(out)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 256
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tensors = {}
    with safe_open(os.path.join(src, "model.safetensors"), framework="numpy") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
                t = t[:256, :]
            elif name.endswith("mlp.down_proj.weight"):
                t = t[:, :256]
            tensors[name] = np.ascontiguousarray(t)
    from safetensors.numpy import save_file
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def model(name):
    """Path of a source model: babyllama (bundled), babyllama-bf16 (quantd convert --dtype
    bf16), babyllama-i256 (see _derive_i256)."""
    base = os.path.join(source_dir(), "examples", "models", "babyllama")
    if name == "babyllama":
        return base
    if name == "babyllama-bf16":
        return _cached(name, _binary_stamp() + "|bf16", lambda out: run(
            [quantd(), "convert", base, "-o", out, "--dtype", "bf16"], "quantd convert"))
    if name == "babyllama-i256":
        return _cached(name, "i256-v1", lambda out: _derive_i256(base, out))
    raise KeyError(name)


def artifact(name):
    """Path of artifact `name` (see ARTIFACTS), quantized now unless cached."""
    src, args = ARTIFACTS[name]
    src_dir = model(src)
    args = [calib_path() if a == "@calib" else a for a in args]
    cmd = [quantd(), "quantize", src_dir] + args + ["--threads", "2", "--quiet"]
    return _cached(name, _binary_stamp() + "|" + src + "|" + " ".join(args),
                   lambda out: run(cmd + ["-o", out], "quantd quantize (%s)" % name))


# ---- reading with safetensors -----------------------------------------------------------------

FP8_E4M3_TABLE = None


def fp8_e4m3_to_f32(raw):
    """float8_e4m3fn bytes -> float32: 1 sign, 4 exponent (bias 7), 3 mantissa bits; exponent 0
    is subnormal (m/8 * 2^-6); S.1111.111 is NaN; there is no infinity (max 448)."""
    global FP8_E4M3_TABLE
    if FP8_E4M3_TABLE is None:
        tab = np.zeros(256, dtype=np.float32)
        for b in range(256):
            s, e, m = b >> 7, (b >> 3) & 15, b & 7
            if e == 15 and m == 7:
                v = float("nan")
            elif e == 0:
                v = m / 8.0 * 2.0 ** -6
            else:
                v = (1 + m / 8.0) * 2.0 ** (e - 7)
            tab[b] = -v if s else v
        FP8_E4M3_TABLE = tab
    return FP8_E4M3_TABLE[np.frombuffer(raw, dtype=np.uint8)]


def bf16_to_f32(raw):
    u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
    return u.view(np.float32)


def f32_to_bf16_bits(x):
    """float32 -> bf16 bit patterns, round to nearest even (x has no NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


class Tensor:
    """One tensor as safetensors lists it: dtype name ("F16", "F8_E4M3", ...), shape, and the
    values as numpy (BF16 and F8_E4M3 decoded to float32; raw keeps their bytes)."""

    def __init__(self, dtype, shape, value, raw=None):
        self.dtype = dtype
        self.shape = tuple(shape)
        self.value = value
        self.raw = raw


def _header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        data = f.read()
    return header, data


def read_model(directory):
    """Every tensor of a model directory (one file or an index + shards), read with safetensors'
    safe_open; returns ({name: Tensor}, [metadata dict of each shard])."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors, metas = {}, []
    for fname in files:
        path = os.path.join(directory, fname)
        header, data = None, None
        with safe_open(path, framework="numpy") as f:
            metas.append(f.metadata() or {})
            for name in f.keys():
                sl = f.get_slice(name)
                dtype, shape = sl.get_dtype(), list(sl.get_shape())
                if dtype in ("BF16", "F8_E4M3"):
                    # numpy has no such dtype: the bytes at the offsets the header gives
                    if header is None:
                        header, data = _header(path)
                    begin, end = header[name]["data_offsets"]
                    raw = data[begin:end]
                    dec = bf16_to_f32(raw) if dtype == "BF16" else fp8_e4m3_to_f32(raw)
                    tensors[name] = Tensor(dtype, shape, dec.reshape(shape), raw)
                else:
                    tensors[name] = Tensor(dtype, shape, f.get_tensor(name))
    return tensors, metas


def read_config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def linear_prefixes(cfg):
    return ["model.layers.%d.%s" % (i, lin) for i in range(cfg["num_hidden_layers"])
            for lin in LINEARS]


# ---- numpy reference dequantization (docs/formats.md) -----------------------------------------

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def unpack_words(words, bits, axis):
    """int32 words -> fields of `bits` bits, field j of a word in bits [bits*j, bits*j + bits),
    laid out along `axis` (the fields of one word become consecutive entries)."""
    pf = 32 // bits
    w = np.ascontiguousarray(words).view(np.uint32)
    shifts = (np.arange(pf, dtype=np.uint32) * bits).astype(np.uint32)
    fields = (w[..., None] >> shifts) & np.uint32((1 << bits) - 1)  # [..., pf]
    fields = np.moveaxis(fields, -1, axis + 1) if axis == 0 else fields
    shape = list(words.shape)
    shape[axis] *= pf
    return fields.reshape(shape).astype(np.int64)


class Ref:
    """A layer as the format defines it: unsigned codes [N, K], integer or float zeros and
    scales per (output row, group) [N, NG], the group of each input column g_idx [K], and the
    dequantized fp32 weight [N, K] (times pre_scale, the activation pre-scale, when the format
    carries one, as engines fold it)."""

    def __init__(self, codes, zeros, scales, g_idx, pre_scale=None):
        self.codes, self.zeros, self.scales, self.g_idx = codes, zeros, scales, g_idx
        self.pre_scale = pre_scale
        z = zeros[:, g_idx].astype(np.float32)
        s = scales[:, g_idx].astype(np.float32)
        # (q - z) is an exact small integer in fp32, so one rounding: the product
        w = ((codes.astype(np.float32) - z) * s).astype(np.float32)
        self.weight_q = w  # before the pre-scale
        self.weight = (w * pre_scale[None, :]).astype(np.float32) if pre_scale is not None \
            else w


def _groups(group_size, k):
    g = group_size if group_size and group_size > 0 else k
    return g, -(-k // g)


def ref_awq(t, prefix, qcfg):
    """AutoAWQ GEMM: qweight [K, N/8] nibble i of word (k, j) = q[k, 8j + ORDER[i]]; qzeros
    [K/G, N/8] the same, raw zeros; scales F16 [K/G, N]."""
    qw, qz, sc = (t[prefix + s].value for s in (".qweight", ".qzeros", ".scales"))
    k = qw.shape[0]

    def deinterleave(words):
        f = unpack_words(words, 4, 1)  # [rows, N]: entry 8j + i = nibble i of word j
        out = np.empty_like(f)
        for i, c in enumerate(AWQ_ORDER):
            out[:, c::8] = f[:, i::8]
        return out
    codes = deinterleave(qw).T  # [N, K]
    zeros = deinterleave(qz).T  # [N, NG]
    g, _ = _groups(qcfg.get("group_size"), k)
    return Ref(codes, zeros, sc.astype(np.float32).T, np.arange(k) // g)


def ref_gptq(t, prefix, bits, v1):
    """GPTQ: qweight [K/pf, N] packed along K, sequential; qzeros [NG, N/pf] packed along N,
    holding z - 1 in v1 (a reader adds the 1 back after masking) and z in v2; scales [NG, N];
    g_idx [K]."""
    qw, qz, sc, gi = (t[prefix + s].value for s in (".qweight", ".qzeros", ".scales", ".g_idx"))
    codes = unpack_words(qw, bits, 0).T  # [N, K]
    zeros = unpack_words(qz, bits, 1).T + (1 if v1 else 0)  # [N, NG]
    return Ref(codes, zeros, sc.astype(np.float32).T, gi.astype(np.int64))


def ref_ctensors(t, prefix, weights_cfg):
    """compressed-tensors. pack-quantized: weight_packed [N, ceil(K/pf)] field i of word (n, c)
    = q[n, pf*c + i] + 2^(b-1); weight_zero_point [ceil(N/pf), NG] packed along N likewise;
    weight_scale [N, NG]; weight_g_idx for actorder group. int-quantized: weight I8 [N, K].
    float-quantized: weight F8_E4M3 [N, K], scale [N, 1] or [1]. The codes returned here are
    in the unsigned domain (signed + 2^(b-1)); zeros likewise."""
    b = weights_cfg["num_bits"]
    off = 1 << (b - 1)
    if prefix + ".weight_packed" in t:
        n, k = (int(x) for x in t[prefix + ".weight_shape"].value)
        codes = unpack_words(t[prefix + ".weight_packed"].value, b, 1)[:, :k]
        scales = t[prefix + ".weight_scale"].value.astype(np.float32)
        ng = scales.shape[1]
        if prefix + ".weight_zero_point" in t:
            zeros = unpack_words(t[prefix + ".weight_zero_point"].value, b, 0)[:n, :]
        else:
            zeros = np.full((n, ng), off, dtype=np.int64)
        if prefix + ".weight_g_idx" in t:
            g_idx = t[prefix + ".weight_g_idx"].value.astype(np.int64)
        else:
            g, _ = _groups(weights_cfg.get("group_size"), k)
            g_idx = np.arange(k) // g
        return Ref(codes, zeros, scales, g_idx)
    w = t[prefix + ".weight"]
    n, k = w.shape
    sc = t[prefix + ".weight_scale"].value.astype(np.float32).reshape(-1, 1)
    if sc.shape[0] == 1:
        sc = np.repeat(sc, n, axis=0)
    if w.dtype == "I8":
        codes = w.value.astype(np.int64) + 128
        return Ref(codes, np.full((n, 1), 128, dtype=np.int64), sc, np.zeros(k, dtype=np.int64))
    if w.dtype == "F8_E4M3":
        # fp8 "codes" are the float values; zero 0, scale per row
        return Ref(w.value.astype(np.float32), np.zeros((n, 1), dtype=np.float32), sc,
                   np.zeros(k, dtype=np.int64))
    raise ValueError("%s.weight: dtype %s" % (prefix, w.dtype))


def ref_modelopt(t, prefix, quant_algo, group_size):
    """ModelOpt HF export. W4A16_AWQ: weight U8 [N/2, K], byte (i, k) = signed nibble of row 2i
    (low) and row 2i + 1 (high); weight_scale [N, K/G]. W8A8_SQ_PER_CHANNEL: weight I8 [N, K],
    weight_scale [N]. pre_quant_scale [K] when present multiplies the activations."""
    w = t[prefix + ".weight"].value
    sc = t[prefix + ".weight_scale"].value.astype(np.float32)
    pre = t.get(prefix + ".pre_quant_scale")
    pre = pre.value.astype(np.float32) if pre is not None else None
    if quant_algo in ("W4A16_AWQ", "W4A8_AWQ"):
        lo = (w & 15).astype(np.int64)
        hi = (w >> 4).astype(np.int64)
        lo = np.where(lo >= 8, lo - 16, lo)
        hi = np.where(hi >= 8, hi - 16, hi)
        n2, k = w.shape
        signed = np.empty((2 * n2, k), dtype=np.int64)
        signed[0::2], signed[1::2] = lo, hi
        g, _ = _groups(group_size, k)
        return Ref(signed + 8, np.full(sc.shape, 8, dtype=np.int64), sc, np.arange(k) // g, pre)
    if quant_algo == "W8A8_SQ_PER_CHANNEL":
        n, k = w.shape
        return Ref(w.astype(np.int64) + 128, np.full((n, 1), 128, dtype=np.int64),
                   sc.reshape(n, 1), np.zeros(k, dtype=np.int64), pre)
    raise ValueError("modelopt quant_algo %s" % quant_algo)


def reference(directory, tensors=None):
    """{prefix: Ref} for every quantized linear of an artifact, by its config.json."""
    cfg = read_config(directory)
    q = cfg["quantization_config"]
    if tensors is None:
        tensors, _ = read_model(directory)
    out = {}
    for prefix in linear_prefixes(cfg):
        if prefix + ".weight" in tensors and tensors[prefix + ".weight"].dtype in (
                "F32", "F16", "BF16"):
            continue  # kept in float
        method = q["quant_method"]
        if method == "awq":
            out[prefix] = ref_awq(tensors, prefix, q)
        elif method == "gptq":
            v1 = q.get("checkpoint_format", "gptq") == "gptq"
            out[prefix] = ref_gptq(tensors, prefix, q["bits"], v1)
        elif method == "compressed-tensors":
            (group,) = q["config_groups"].values()
            out[prefix] = ref_ctensors(tensors, prefix, group["weights"])
        elif method == "modelopt":
            with open(os.path.join(directory, "hf_quant_config.json")) as f:
                side = json.load(f)["quantization"]
            out[prefix] = ref_modelopt(tensors, prefix, q["quant_algo"], side.get("group_size"))
        else:
            raise ValueError("quant_method %s" % method)
    return out


# ---- quantd's side: perplexity of the artifact and of a float model --------------------------


def write_float_model(artifact_dir, weights, out_dir):
    """A float model directory: config.json without quantization_config, every non-linear
    tensor of the artifact as stored (embeddings, norms, lm_head, in their dtype), and each
    quantized linear as <prefix>.weight F32 from `weights` {prefix: [N, K] float32}."""
    os.makedirs(out_dir)
    cfg = read_config(artifact_dir)
    cfg.pop("quantization_config", None)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tensors, _ = read_model(artifact_dir)
    out = {}
    for name, t in tensors.items():
        prefix = name.rsplit(".", 1)[0]
        if prefix in weights:
            continue
        if t.raw is not None:
            out[name] = {"dtype": t.dtype, "shape": list(t.shape), "data": t.raw}
        else:
            v = np.ascontiguousarray(t.value)
            out[name] = {"dtype": t.dtype, "shape": list(v.shape), "data": v.tobytes()}
    for prefix, w in weights.items():
        w = np.ascontiguousarray(w, dtype=np.float32)
        out[prefix + ".weight"] = {"dtype": "F32", "shape": list(w.shape), "data": w.tobytes()}
    write_safetensors(os.path.join(out_dir, "model.safetensors"), out, {"format": "pt"})


def write_safetensors(path, tensors, metadata):
    """The safetensors layout written here (numpy has no BF16 or F8 dtype, and the library's
    raw-bytes writer changed its signature across releases): an 8-byte little-endian header
    length, the JSON header padded with spaces to a multiple of 8, then the data, in order."""
    header = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        header[name] = {"dtype": t["dtype"], "shape": t["shape"],
                        "data_offsets": [offset, offset + len(t["data"])]}
        offset += len(t["data"])
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in tensors.values():
            f.write(t["data"])


def perplexity(directory, rows=8):
    """quantd eval's perplexity line (six decimals) on the first rows of the babyllama eval set.
    """
    out = run([quantd(), "eval", directory, "--data", eval_path(), "--rows", str(rows),
               "--threads", "2"], "quantd eval")
    lines = [ln for ln in out.splitlines() if ln.startswith("perplexity:")]
    if not lines:
        raise SystemExit("quantd eval %s printed no perplexity line:\n%s" % (directory, out))
    return lines[-1].split()[1]


_CONVERT_DEQUANTIZES = None


def quantd_dequantized(directory, out_dir):
    """quantd's own dequantization of an artifact, {name: Tensor}, written by
    `quantd convert DIR -o OUT --dequantize --dtype f32` (each packed linear as <prefix>.weight,
    times its pre_quant_scale; see tests/interop/README.md); None where this quantd's convert
    has no --dequantize yet."""
    global _CONVERT_DEQUANTIZES
    if _CONVERT_DEQUANTIZES is None:
        r = subprocess.run([quantd(), "convert", "--help"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, check=False)
        _CONVERT_DEQUANTIZES = b"--dequantize" in r.stdout
    if not _CONVERT_DEQUANTIZES:
        return None
    run([quantd(), "convert", directory, "-o", out_dir, "--dequantize", "--dtype", "f32"],
        "quantd convert --dequantize")
    tensors, _ = read_model(out_dir)
    return tensors


def compare_exact(checks, what, got, want):
    """Bit-for-bit equality of two float32 arrays (and shapes), naming the first difference."""
    got = np.asarray(got)
    want = np.asarray(want)
    if not checks.check(got.shape == want.shape, "%s: shape %s, want %s" % (
            what, got.shape, want.shape)):
        return False
    g32 = np.ascontiguousarray(got, dtype=np.float32)
    w32 = np.ascontiguousarray(want, dtype=np.float32)
    same = g32.view(np.uint32) == w32.view(np.uint32)
    if same.all():
        checks.check(True, what)
        return True
    idx = np.unravel_index(np.argmin(same), same.shape)
    return checks.check(False, "%s: %d of %d values differ, first at %s: %r, want %r" % (
        what, int((~same).sum()), same.size, tuple(int(i) for i in idx), float(g32[idx]),
        float(w32[idx])))


def compare_rounded(checks, what, got, want, mant_bits):
    """got is want (exact, float32) rounded to a float type with mant_bits explicit mantissa
    bits (fp16 10, bf16 7): |got - want| <= u |want| with unit roundoff u = 2^-(mant_bits + 1),
    plus half the type's smallest subnormal for fp16 (2^-25)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if not checks.check(got.shape == want.shape, "%s: shape %s, want %s" % (
            what, got.shape, want.shape)):
        return False
    u = 2.0 ** -(mant_bits + 1)
    tiny = 2.0 ** -25 if mant_bits == 10 else 0.0
    err = np.abs(got - want)
    bound = u * np.abs(want) + tiny
    bad = err > bound
    if not bad.any():
        checks.check(True, what)
        return True
    idx = np.unravel_index(np.argmax(err - bound), err.shape)
    return checks.check(False, "%s: %d values beyond the rounding bound, worst at %s: %r, "
                        "want %r" % (what, int(bad.sum()), tuple(int(i) for i in idx),
                                     float(got[idx]), float(want[idx])))


def main_guard(fn):
    """Run fn() -> exit status, turning an unexpected exception into a failure with its
    traceback (a library API that changed is a failure to look at, not a skip)."""
    try:
        return fn()
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001 - report anything, then fail
        import traceback
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit("qd_interop.py is a module of the interop tests, not a test")

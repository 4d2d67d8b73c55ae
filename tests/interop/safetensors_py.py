#!/usr/bin/env python3
"""safetensors_py.py - quantd's safetensors reader and writer against the reference library.

Run through run-python.sh (which skips the test when safetensors or numpy is missing), with
the environment ctest sets: QD_SOURCE_DIR, QD_ST_DUMP (the st-dump tool).

1. quantd writes, Python reads. st-dump --copy writes the babyllama checkpoint as F32, F16,
   BF16 and as a 3-shard model; safetensors loads them and the values must equal numpy's own
   conversion of the original bit for bit. numpy has no bfloat16, so for BF16 the expected
   bits come from a round-to-nearest-even done here on the fp32 bit patterns, and the file's
   bytes are taken at the offsets its header gives (parsed with Python's json, not with
   quantd), while safetensors' safe_open supplies the names, dtypes and shapes.
2. Python writes, quantd reads. safetensors.numpy.save_file writes tensors of many dtypes
   (a 0-d one, a zero-size one, metadata), plus a two-shard model with an index written here;
   st-dump must list the same names in header order, dtypes, shapes and the sha256 of each
   tensor's bytes as computed by Python.

Exit status 0 when every check passes, 1 otherwise.
"""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

FAILURES = []

DTYPE_NAMES = {
    np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
    np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
    np.dtype("int8"): "I8", np.dtype("uint64"): "U64", np.dtype("uint32"): "U32",
    np.dtype("uint16"): "U16", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL",
}


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL: " + what)


def st_dump(*args):
    tool = os.environ.get("QD_ST_DUMP")
    if not tool or not os.access(tool, os.X_OK):
        raise SystemExit("QD_ST_DUMP does not name the st-dump program: %r" % tool)
    r = subprocess.run([tool] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       check=False)
    if r.returncode != 0:
        raise SystemExit("st-dump %s failed (%d): %s" % (" ".join(args), r.returncode,
                                                         r.stderr.decode(errors="replace")))
    return r.stdout.decode()


def read_header(path):
    """The header (in file order) and the data section, read without quantd or safetensors."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    return header, raw[8 + n:]


def shape_str(shape):
    return "[" + ", ".join(str(d) for d in shape) + "]"


def bf16_bits(x):
    """fp32 array -> bf16 bit patterns (uint16), round to nearest even; x has no NaN."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


# ---- 1. quantd writes, Python reads ------------------------------------------------------

def quantd_writes(tmp, original):
    ref = load_file(original)
    with safe_open(original, framework="numpy") as f:
        names = list(f.keys())
        meta = f.metadata()
    orig_header, _ = read_header(original)
    order = [k for k in orig_header if k != "__metadata__"]

    for dtype, npdtype in (("F32", np.float32), ("F16", np.float16)):
        out = os.path.join(tmp, "copy-%s.safetensors" % dtype)
        st_dump("--copy", original, out, "--dtype", dtype)
        got = load_file(out)
        check(sorted(got) == sorted(ref), "%s copy: tensor names differ" % dtype)
        header, _ = read_header(out)
        check([k for k in header if k != "__metadata__"] == order,
              "%s copy: header order differs from the original's" % dtype)
        check(header.get("__metadata__") == meta, "%s copy: metadata differs" % dtype)
        for name in ref:
            want = ref[name].astype(npdtype)
            g = got.get(name)
            ok = (g is not None and g.dtype == want.dtype and g.shape == want.shape and
                  g.tobytes() == want.tobytes())
            check(ok, "%s copy: tensor %s differs from numpy's conversion" % (dtype, name))

    out = os.path.join(tmp, "copy-BF16.safetensors")
    st_dump("--copy", original, out, "--dtype", "BF16")
    header, data = read_header(out)
    with safe_open(out, framework="numpy") as f:
        check(sorted(f.keys()) == sorted(names), "BF16 copy: tensor names differ")
        check(f.metadata() == meta, "BF16 copy: metadata differs")
        for name in names:
            sl = f.get_slice(name)
            check(sl.get_dtype() == "BF16", "BF16 copy: %s has dtype %s" % (name,
                                                                           sl.get_dtype()))
            check(list(sl.get_shape()) == list(ref[name].shape),
                  "BF16 copy: %s has shape %s" % (name, sl.get_shape()))
            begin, end = header[name]["data_offsets"]
            want = bf16_bits(ref[name]).tobytes()
            check(data[begin:end] == want, "BF16 copy: tensor %s bits differ" % name)

    model = os.path.join(tmp, "sharded")
    st_dump("--copy", original, model, "--shards", "3")
    with open(os.path.join(model, "model.safetensors.index.json")) as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    check(shards == ["model-%05d-of-00003.safetensors" % i for i in (1, 2, 3)],
          "sharded copy: shard names %s" % shards)
    check(sorted(index["weight_map"]) == sorted(names), "sharded copy: weight_map names")
    total = sum(t.nbytes for t in ref.values())
    check(index["metadata"]["total_size"] == total,
          "sharded copy: total_size %s != %d" % (index["metadata"]["total_size"], total))
    seen = {}
    for shard in shards:
        for name, arr in load_file(os.path.join(model, shard)).items():
            check(index["weight_map"].get(name) == shard,
                  "sharded copy: %s is in %s, index says %s" % (name, shard,
                                                                index["weight_map"].get(name)))
            check(name not in seen, "sharded copy: %s in two shards" % name)
            seen[name] = arr
    for name in ref:
        check(name in seen and seen[name].tobytes() == ref[name].tobytes() and
              seen[name].shape == ref[name].shape, "sharded copy: tensor %s differs" % name)


# ---- 2. Python writes, quantd reads ------------------------------------------------------

def python_tensors():
    rng = np.random.default_rng(20240611)
    return {
        "model.embed.weight": rng.standard_normal((17, 8)).astype(np.float32),
        "half": rng.standard_normal((3, 5, 2)).astype(np.float16),
        "double": rng.standard_normal(4),
        "ids": rng.integers(-2**40, 2**40, size=(6,), dtype=np.int64),
        "i32": rng.integers(-2**31, 2**31 - 1, size=(2, 3), dtype=np.int32),
        "i16": rng.integers(-300, 300, size=(5,), dtype=np.int16),
        "i8": rng.integers(-128, 127, size=(9,), dtype=np.int8),
        "u8": rng.integers(0, 255, size=(3, 3), dtype=np.uint8),
        "u16": rng.integers(0, 65535, size=(3,), dtype=np.uint16),
        "u32": rng.integers(0, 2**32 - 1, size=(3,), dtype=np.uint32),
        "u64": rng.integers(0, 2**63, size=(2,), dtype=np.uint64),
        "mask": rng.integers(0, 2, size=(7,)).astype(bool),
        "scalar": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((4, 0), dtype=np.float32),
        "caf\u00e9 name.with spaces": np.arange(5, dtype=np.int32),
    }


def expected_lines(path, tensors):
    """st-dump's lines for a file written by Python: header order, Python's sha256."""
    header, _ = read_header(path)
    lines = []
    for name in header:
        if name == "__metadata__":
            continue
        arr = tensors[name]  # (np.ascontiguousarray would turn the 0-d one into 1-d)
        lines.append("\t".join([name, DTYPE_NAMES[arr.dtype], shape_str(arr.shape),
                                hashlib.sha256(arr.tobytes(order="C")).hexdigest()]))
    return lines


def python_writes(tmp):
    tensors = python_tensors()
    path = os.path.join(tmp, "python.safetensors")
    save_file(tensors, path, metadata={"format": "np", "producer": "safetensors_py"})
    want = expected_lines(path, tensors)
    check(len(want) == len(tensors), "python file: header lists %d tensors" % len(want))
    got = st_dump(path).splitlines()
    check(got == want, "st-dump of a Python-written file:\n  got  %s\n  want %s" % (got, want))

    # A Hugging Face style two-shard model written by Python, index included.
    model = os.path.join(tmp, "python-model")
    os.mkdir(model)
    names = list(tensors)
    parts = [names[:7], names[7:]]
    weight_map, want = {}, []
    for i, part in enumerate(parts):
        shard = "model-%05d-of-%05d.safetensors" % (i + 1, len(parts))
        spath = os.path.join(model, shard)
        save_file({n: tensors[n] for n in part}, spath, metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
        want += expected_lines(spath, tensors)
    with open(os.path.join(model, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                   "weight_map": weight_map}, f, indent=2, sort_keys=True)
    got = st_dump(model).splitlines()
    check(got == want, "st-dump of a Python-written model:\n  got  %s\n  want %s" % (got, want))


def main():
    src = os.environ.get("QD_SOURCE_DIR")
    if not src:
        raise SystemExit("QD_SOURCE_DIR is not set")
    original = os.path.join(src, "examples", "models", "babyllama", "model.safetensors")
    tmp = tempfile.mkdtemp(prefix="qd-st-py-")
    try:
        quantd_writes(tmp, original)
        python_writes(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if FAILURES:
        print("%d check(s) failed" % len(FAILURES))
        return 1
    print("ok: quantd and the safetensors library agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())

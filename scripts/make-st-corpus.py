#!/usr/bin/env python3
"""make-st-corpus.py - generate quantd's safetensors corpus (malformed and valid files).

Writes tests/corpus/safetensors/: each bad-*.safetensors breaks one rule of the format, named
for what is wrong; each valid-*.safetensors is a small legal file. test-st-corpus expects every
bad file to fail with a known error and message, and every valid file to open; the fuzz
replay test (and the fuzzer, as seeds) runs all of them.

Stdlib only and deterministic: running it again rewrites the same bytes. Headers are written
as literal JSON text here, not produced by a JSON library, so each file is exactly the case it
names. After adding a file, add its expectation to tests/unit/test-st-corpus.c.

    scripts/make-st-corpus.py [OUT_DIR]
"""
import os
import struct
import sys


def st(header, data=b"", hlen=None, pad=True):
    """8-byte little-endian header length, header text, data. The header is space-padded so
    the data starts at a multiple of 8 (as writers do) unless pad is False; hlen overrides
    the length field."""
    h = header.encode("utf-8") if isinstance(header, str) else header
    if pad:
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    n = len(h) if hlen is None else hlen
    return struct.pack("<Q", n) + h + data


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def entry(dtype, shape, begin, end):
    return '{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}' % (
        dtype, "[" + ",".join(str(d) for d in shape) + "]", begin, end)


# Two F32 tensors a (2x2, bytes 0-16) and b (3, bytes 16-28): the base of most bad files.
GOOD_HDR = '{"a":%s,"b":%s}' % (entry("F32", [2, 2], 0, 16), entry("F32", [3], 16, 28))
GOOD_DATA = f32(1, 2, 3, 4, 5, 6, 7)
GOOD = st(GOOD_HDR, GOOD_DATA)


def one(ent, data):
    """A file with the single tensor w given as raw entry JSON text."""
    return st('{"w":%s}' % ent, data)


FILES = {
    # --- the length prefix ---
    "bad-empty-file": b"",
    "bad-7-byte-file": b"\x10\x00\x00\x00\x00\x00\x00",
    "bad-header-len-zero": st("", GOOD_DATA, hlen=0, pad=False),
    "bad-header-len-past-eof": st(GOOD_HDR, b"", hlen=1000, pad=False),
    "bad-header-len-over-100mb": st(GOOD_HDR, GOOD_DATA, hlen=100 * 1000 * 1000 + 1),
    "bad-header-len-u64-max": st(GOOD_HDR, GOOD_DATA, hlen=2**64 - 1),
    "bad-truncated-header": GOOD[:40],
    "bad-truncated-data": GOOD[:-5],
    # --- the JSON text ---
    "bad-json-syntax": st('{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]', b"x" * 16),
    "bad-json-garbage-after-object": st(GOOD_HDR + "xyz", GOOD_DATA),
    "bad-json-nul-padding": st(GOOD_HDR.encode() + b"\0\0\0\0", GOOD_DATA, pad=False),
    "bad-json-leading-space": st(" " + GOOD_HDR, GOOD_DATA),
    "bad-json-deep-nesting": st('{"__metadata__":' + "[" * 5000 + "]" * 5000 + "}", b""),
    "bad-utf8-in-name": st(b'{"w\xff":' + entry("F32", [1], 0, 4).encode() + b"}", f32(1)),
    "bad-utf8-surrogate-escape": st('{"w\\ud800":%s}' % entry("F32", [1], 0, 4), f32(1)),
    "bad-nul-escape-in-name": st('{"w\\u0000x":%s}' % entry("F32", [1], 0, 4), f32(1)),
    "bad-top-level-array": st("[%s]" % entry("F32", [1], 0, 4), f32(1)),
    "bad-offset-too-big-for-json": one(
        '{"dtype":"F32","shape":[1],"data_offsets":[0,99999999999999999999]}', f32(1)),
    # --- one entry's fields ---
    "bad-entry-not-object": st('{"w":[1,2,3]}', b""),
    "bad-missing-dtype": one('{"shape":[1],"data_offsets":[0,4]}', f32(1)),
    "bad-missing-shape": one('{"dtype":"F32","data_offsets":[0,4]}', f32(1)),
    "bad-missing-data-offsets": one('{"dtype":"F32","shape":[1]}', f32(1)),
    "bad-dtype-not-string": one('{"dtype":4,"shape":[1],"data_offsets":[0,4]}', f32(1)),
    "bad-unknown-dtype": one(entry("F4", [2], 0, 1), b"\x00"),
    "bad-shape-not-array": one('{"dtype":"F32","shape":4,"data_offsets":[0,16]}', f32(1, 2, 3, 4)),
    "bad-negative-shape": one(entry("F32", [-1, 2], 0, 8), f32(1, 2)),
    "bad-float-shape": one('{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}', f32(1, 2)),
    "bad-too-many-dims": one(entry("F32", [1] * 9, 0, 4), f32(1)),
    "bad-shape-size-mismatch": one(entry("F32", [2, 3], 0, 20), f32(1, 2, 3, 4, 5)),
    "bad-shape-product-overflow": one(entry("F32", [2**32, 2**32, 4], 0, 0), b""),
    # Holds nothing, but its strides would overflow: rejected although the size is 0.
    "bad-zero-size-huge-dims": one(entry("F32", [0, 2**62, 2**62], 0, 0), b""),
    "bad-offsets-as-strings": one('{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}',
                                  f32(1)),
    "bad-offsets-three-elements": one('{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}',
                                      f32(1)),
    "bad-offsets-negative": one('{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}', f32(1)),
    "bad-offsets-begin-gt-end": one(entry("F32", [0], 8, 4), f32(1, 2)),
    "bad-offsets-past-end": one(entry("F32", [4], 0, 16), f32(1, 2, 3)),
    "bad-duplicate-key-in-entry": one(
        '{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}', f32(1)),
    # --- the tensors together ---
    "bad-overlapping-tensors": st('{"a":%s,"b":%s}' % (entry("F32", [2], 0, 8),
                                                      entry("F32", [2], 4, 12)), f32(1, 2, 3)),
    "bad-zero-size-inside-tensor": st('{"a":%s,"z":%s}' % (entry("F32", [2], 0, 8),
                                                          entry("F32", [0], 4, 4)), f32(1, 2)),
    "bad-gap-between-tensors": st('{"a":%s,"b":%s}' % (entry("F32", [1], 0, 4),
                                                      entry("F32", [1], 8, 12)), f32(1, 2, 3)),
    "bad-gap-at-start": one(entry("F32", [1], 4, 8), f32(1, 2)),
    "bad-trailing-bytes": st(GOOD_HDR, GOOD_DATA + b"\x00" * 4),
    "bad-duplicate-tensor-name": st('{"a":%s,"a":%s}' % (entry("F32", [1], 0, 4),
                                                        entry("F32", [1], 4, 8)), f32(1, 2)),
    # --- __metadata__ ---
    "bad-metadata-not-object": st('{"__metadata__":["pt"],"w":%s}' % entry("F32", [1], 0, 4),
                                  f32(1)),
    "bad-metadata-non-string-value": st(
        '{"__metadata__":{"format":"pt","bits":4},"w":%s}' % entry("F32", [1], 0, 4), f32(1)),
    "bad-metadata-duplicate": st(
        '{"__metadata__":{},"w":%s,"__metadata__":{}}' % entry("F32", [1], 0, 4), f32(1)),
    # --- valid files (fuzz seeds) ---
    "valid-two-f32-metadata": st('{"__metadata__":{"format":"pt","note":"caf\u00e9"},'
                                 '"a":%s,"b":%s}' % (entry("F32", [2, 2], 0, 16),
                                                     entry("F32", [3], 16, 28)), GOOD_DATA),
    # Out of offset order, a 0-d tensor, two zero-size ones, unknown extra field ignored.
    "valid-scalar-zero-size-bf16": st(
        '{"s":%s,"e":%s,"h":{"dtype":"BF16","shape":[2],"data_offsets":[0,4],"extra":1},'
        '"e2":%s}' % (entry("I64", [], 4, 12), entry("U8", [3, 0], 12, 12),
                      entry("F16", [0], 4, 4)),
        b"\x80\x3f\x00\x40" + struct.pack("<q", -7)),
    # No padding, so the data section starts at an odd offset; the header ends in spaces.
    "valid-unpadded-u8": st('{"u":%s}   ' % entry("U8", [5], 0, 5), b"hello", pad=False),
    "valid-no-tensors": st("{}", b""),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "tests", "corpus",
                                                            "safetensors")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(FILES.items()):
        with open(os.path.join(out, name + ".safetensors"), "wb") as f:
            f.write(data)
    print("wrote %d files to %s" % (len(FILES), out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""awq_lib.py - quantd's AWQ (GEMM) artifact unpacked by AutoAWQ's own code.

Run through run-python-torch.sh --need awq. AutoAWQ's top-level package imports its CUDA
kernels and model zoo, so only its unpacking module, awq/utils/packing_utils.py (plain torch),
is loaded, by file path. For every linear of the awq artifact (babyllama, 4-bit, group 32,
zero points):

1. unpack_awq + reverse_awq_order give the integer codes [K, N] and zero points [K/G, N]:
   they must equal the numpy reference's (qd_interop.ref_awq, from docs/formats.md) exactly;
   that is the [0, 2, 4, 6, 1, 3, 5, 7] interleave read back by the format's author.
2. dequantize_gemm with the stored fp16 scales computes (q - z) * s in fp16, as AutoAWQ's
   fallback does: it must equal the exact product (the numpy reference, fp32) rounded to fp16,
   i.e. within fp16's unit roundoff: |lib - ref| <= 2^-11 |ref| + 2^-25.
3. dequantize_gemm with the scales widened to fp32 must equal the reference bit for bit; the
   formats_py test shows quantd's reader dequantizes the artifact to exactly those weights
   (same perplexity), so AutoAWQ, the numpy reference and quantd agree.
"""
import importlib.util
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qd_interop as qi  # noqa: E402

C = qi.Checks("interop-awq-lib")


def load_packing_utils():
    spec = importlib.util.find_spec("awq")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = os.path.join(root, "utils", "packing_utils.py")
        if os.path.exists(path):
            s = importlib.util.spec_from_file_location("qd_autoawq_packing_utils", path)
            mod = importlib.util.module_from_spec(s)
            s.loader.exec_module(mod)
            return mod, path
    raise SystemExit("the awq package has no utils/packing_utils.py (searched %s)" % roots)


def main():
    pu, path = load_packing_utils()
    try:
        import importlib.metadata as md
        version = md.version("autoawq")
    except Exception:  # noqa: BLE001 - the version is informative only
        version = "?"
    print("AutoAWQ %s: %s" % (version, path))
    C.check(pu.AWQ_ORDER == qi.AWQ_ORDER, "AutoAWQ's AWQ_ORDER %s, formats.md says %s" % (
        pu.AWQ_ORDER, qi.AWQ_ORDER))

    d = qi.artifact("awq")
    cfg = qi.read_config(d)
    q = cfg["quantization_config"]
    bits, g = q["bits"], q["group_size"]
    t, _ = qi.read_model(d)
    refs = qi.reference(d, t)
    for prefix, r in refs.items():
        qw = torch.from_numpy(t[prefix + ".qweight"].value.copy())
        qz = torch.from_numpy(t[prefix + ".qzeros"].value.copy())
        sc = torch.from_numpy(t[prefix + ".scales"].value.copy())
        k = qw.shape[0]
        group = g if g > 0 else k

        iw, iz = pu.unpack_awq(qw, qz, bits)
        iw, iz = pu.reverse_awq_order(iw, iz, bits)
        mask = (1 << bits) - 1
        codes = (iw.to(torch.int64) & mask).numpy()
        zeros = (iz.to(torch.int64) & mask).numpy()
        C.check(np.array_equal(codes, r.codes.T), "%s: AutoAWQ's codes differ from the "
                "reference's (%d of %d)" % (prefix, int((codes != r.codes.T).sum()),
                                             codes.size))
        C.check(np.array_equal(zeros, r.zeros.T), "%s: AutoAWQ's zero points differ from the "
                "reference's" % prefix)

        w16 = pu.dequantize_gemm(qw, qz, sc, bits, group)
        C.check(w16.dtype == torch.float16, "%s: dequantize_gemm gave %s" % (prefix, w16.dtype))
        qi.compare_rounded(C, "%s: AutoAWQ fp16 dequantization within fp16 rounding of the "
                           "exact weight" % prefix, w16.float().numpy().T, r.weight, 10)
        w32 = pu.dequantize_gemm(qw, qz, sc.float(), bits, group)
        qi.compare_exact(C, "%s: AutoAWQ dequantization with fp32 scales" % prefix,
                         w32.numpy().T, r.weight)
    print("compared %d linears" % len(refs))
    return C.finish()


if __name__ == "__main__":
    sys.exit(qi.main_guard(main))

#!/usr/bin/env python3
"""gptq_lib.py - quantd's GPTQ artifacts read and re-packed by AutoGPTQ's own code.

Run through run-python-torch.sh --need auto_gptq,transformers. AutoGPTQ's package imports its
CUDA extensions and model zoo, so only auto_gptq/nn_modules/qlinear/qlinear_cuda.py is loaded,
by file path: its QuantLinear is the g_idx-aware layer whose CPU path unpacks with plain torch
(vLLM's gptq kernel reads the same layout). GPTQModel, the library that defines
checkpoint_format "gptq_v2", does not install without building CUDA code and a long list of
dependencies; v2 differs from v1 only in storing the zero points without the -1, so the v2
artifact is read with AutoGPTQ's unpacking and that offset removed (said in each message).

Artifacts (babyllama, 4-bit): gptq (v1, symmetric, group 32), gptq_act (act-order: g_idx not
sequential), dashinfer (v1, per channel), gptq_v2 (asymmetric, raw zeros). Per linear:

1. Codes and zeros by the library's unpacking: QuantLinear.forward on the identity with
   scales 1 and every qzeros field all ones (read as 2^b) gives q - 2^b, so the codes; with
   qweight 0 it gives -z. Both must equal the numpy reference (qd_interop.ref_gptq) exactly.
2. Dequantization: forward on the identity with the stored scales widened to fp32 must equal
   the reference bit for bit (v1); with fp16 scales (AutoGPTQ's default layer dtype) it must
   be within fp16 rounding of it (|lib - ref| <= 2^-11 |ref| + 2^-25).
3. The writer: QuantLinear.pack, given the reference's dequantized weight, scales, zero points
   and g_idx, must produce quantd's qweight and qzeros words bit for bit (v1: pack subtracts
   the 1 itself; v2: it is handed z + 1 for qzeros, so it stores raw z).
The config is checked too: quant_method gptq, checkpoint_format, sym, desc_act as the artifact
was made (DashInfer: desc_act false).
"""
import importlib.util
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qd_interop as qi  # noqa: E402

C = qi.Checks("interop-gptq-lib")


def load_qlinear():
    spec = importlib.util.find_spec("auto_gptq")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = os.path.join(root, "nn_modules", "qlinear", "qlinear_cuda.py")
        if os.path.exists(path):
            s = importlib.util.spec_from_file_location("qd_autogptq_qlinear_cuda", path)
            mod = importlib.util.module_from_spec(s)
            s.loader.exec_module(mod)
            return mod, path
    raise SystemExit("the auto_gptq package has no nn_modules/qlinear/qlinear_cuda.py "
                     "(searched %s)" % roots)


def layer(ql, bits, group, k, n, qweight, qzeros, scales, g_idx):
    m = ql.QuantLinear(bits, group, k, n, bias=False, weight_dtype=scales.dtype)
    m.qweight = qweight
    m.qzeros = qzeros
    m.scales = scales
    m.g_idx = g_idx
    return m


def forward_identity(m, k, dtype):
    with torch.no_grad():
        return m(torch.eye(k, dtype=dtype)).float().numpy().T  # [N, K]


def one(ql, art, want_format, want_desc_act):
    d = qi.artifact(art)
    cfg = qi.read_config(d)
    q = cfg["quantization_config"]
    C.check(q["quant_method"] == "gptq" and q.get("checkpoint_format") == want_format and
            q["desc_act"] == want_desc_act, "%s: quantization_config %s" % (art, q))
    v1 = want_format == "gptq"
    bits = q["bits"]
    t, _ = qi.read_model(d)
    refs = qi.reference(d, t)
    v2_note = "" if v1 else " (v2: AutoGPTQ's v1 unpacking less its +1)"
    for prefix, r in refs.items():
        qw = torch.from_numpy(t[prefix + ".qweight"].value.copy())
        qz = torch.from_numpy(t[prefix + ".qzeros"].value.copy())
        sc16 = torch.from_numpy(t[prefix + ".scales"].value.copy())
        gi = torch.from_numpy(t[prefix + ".g_idx"].value.copy())
        n, k = r.codes.shape
        ng = sc16.shape[0]
        group = q["group_size"] if q["group_size"] > 0 else k

        # 1. codes and zeros through the library's unpacking
        ones = torch.ones((ng, n), dtype=torch.float32)
        all_ones = torch.full_like(qz, -1)
        m = layer(ql, bits, group, k, n, qw, all_ones, ones, gi)
        codes = np.rint(forward_identity(m, k, torch.float32)).astype(np.int64) + (1 << bits)
        C.check(np.array_equal(codes, r.codes), "%s %s: AutoGPTQ's codes differ from the "
                "reference's (%d of %d)" % (art, prefix, int((codes != r.codes).sum()),
                                             codes.size))
        m = layer(ql, bits, group, k, n, torch.zeros_like(qw), qz, ones, gi)
        negz = np.rint(forward_identity(m, k, torch.float32)).astype(np.int64)  # -z[n, g_idx]
        zeros = -negz - (0 if v1 else 1)
        C.check(np.array_equal(zeros, r.zeros[:, r.g_idx]), "%s %s: AutoGPTQ's zero points "
                "differ from the reference's%s" % (art, prefix, v2_note))

        # 2. dequantization (v1: the library's arithmetic; v2 would add its +1)
        if v1:
            m = layer(ql, bits, group, k, n, qw, qz, sc16.float(), gi)
            qi.compare_exact(C, "%s %s: AutoGPTQ dequantization, fp32 scales" % (art, prefix),
                             forward_identity(m, k, torch.float32), r.weight)
            m = layer(ql, bits, group, k, n, qw, qz, sc16, gi)
            qi.compare_rounded(C, "%s %s: AutoGPTQ fp16 dequantization within fp16 rounding" %
                               (art, prefix), forward_identity(m, k, torch.float16), r.weight,
                               10)

        # 3. the library's packer reproduces quantd's words
        lin = torch.nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(r.weight))
        scales = torch.from_numpy(r.scales.astype(np.float32))  # [N, NG]
        zeros_t = torch.from_numpy(r.zeros.astype(np.int32))  # [N, NG]
        p = ql.QuantLinear(bits, group, k, n, bias=False, weight_dtype=torch.float32)
        p.pack(lin, scales, zeros_t.clone(), torch.from_numpy(r.g_idx.astype(np.int32)))
        C.check(np.array_equal(p.qweight.numpy(), t[prefix + ".qweight"].value),
                "%s %s: AutoGPTQ's pack gives other qweight words" % (art, prefix))
        if not v1:
            p = ql.QuantLinear(bits, group, k, n, bias=False, weight_dtype=torch.float32)
            p.pack(lin, scales, zeros_t.clone() + 1, torch.from_numpy(r.g_idx.astype(np.int32)))
        C.check(np.array_equal(p.qzeros.numpy(), t[prefix + ".qzeros"].value),
                "%s %s: AutoGPTQ's pack gives other qzeros words%s" % (art, prefix, v2_note))
    print("ok   %-10s %d linears" % (art, len(refs)), flush=True)


def main():
    ql, path = load_qlinear()
    try:
        import importlib.metadata as md
        version = md.version("auto-gptq")
    except Exception:  # noqa: BLE001 - the version is informative only
        version = "?"
    print("AutoGPTQ %s: %s" % (version, path))
    one(ql, "gptq", "gptq", False)
    one(ql, "gptq_act", "gptq", True)
    one(ql, "dashinfer", "gptq", False)
    one(ql, "gptq_v2", "gptq_v2", False)
    return C.finish()


if __name__ == "__main__":
    sys.exit(qi.main_guard(main))

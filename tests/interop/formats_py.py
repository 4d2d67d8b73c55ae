#!/usr/bin/env python3
"""formats_py.py - every quantd artifact format read with safetensors and numpy alone.

Run through run-python.sh (skips without safetensors and numpy), environment from ctest
(QD_SOURCE_DIR, QD_BINARY_DIR, QUANTD). For each artifact of qd_interop.ARTIFACTS (AWQ; GPTQ v1,
v2, act-order; DashInfer; compressed-tensors W4A16 sym/asym/act-order/bf16, W8A16, W8A8,
FP8 dynamic and static; ModelOpt W4A16_AWQ and INT8 SmoothQuant):

1. safetensors opens every shard; each shard's metadata says format "pt" (transformers refuses
   anything else); config.json has the format's quantization_config.
2. Every packed tensor has the dtype and shape docs/formats.md gives for its format (and no
   tensor the format does not define is left beside a quantized linear); format invariants
   hold: GPTQ v1 symmetric zeros are the 0x77777777 words, g_idx is k // G except under
   act-order where each group still has G columns, compressed-tensors' weight_shape is [N, K],
   ModelOpt's config says has_zero_point false, ...
3. The numpy reference (qd_interop, from formats.md) dequantizes every linear: codes and zeros
   within range, scales positive; for GPTQ/RTN/FP8 (methods that do not rescale weights) the
   result is close to the source model's weight.
4. quantd's dequantization: for the weight-only formats a float model holding the numpy
   dequantization gives the same `quantd eval` perplexity (six decimals) as the artifact;
   changing a single code of a single linear by one step changes that perplexity, so this
   pins every weight. Where `quantd convert --dequantize` exists, its weights must equal the
   numpy dequantization bit for bit, for every format.
   A control reads the AWQ artifact with the sequential nibble order instead of AutoAWQ's
   interleave and must NOT give that perplexity, so the comparison can tell layouts apart.

Exit status 0 when every check passes, 1 otherwise.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qd_interop as qi  # noqa: E402

C = qi.Checks("interop-formats-py")


def shape_of(t, name):
    x = t.get(name)
    return None if x is None else (x.dtype, tuple(x.shape))


def expect(t, name, dtype, shape, art):
    got = shape_of(t, name)
    C.check(got == (dtype, tuple(shape)), "%s: %s is %s, formats.md says %s %s" % (
        art, name, got, dtype, list(shape)))


def dims(cfg, prefix):
    """[N, K] of a linear, from config.json."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, q),
            "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h),
            "mlp.down_proj": (h, i)}[prefix.split(".", 3)[3]]


def check_layout(art, d, cfg, t):
    """Step 2: dtypes, shapes and invariants of the packed tensors."""
    q = cfg["quantization_config"]
    dt = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[cfg["torch_dtype"]]
    method = q["quant_method"]
    allowed = set()
    for prefix in qi.linear_prefixes(cfg):
        n, k = dims(cfg, prefix)
        if method == "awq":
            g = q["group_size"] if q["group_size"] > 0 else k
            C.check(q["version"] == "gemm" and q["zero_point"] is True and q["bits"] == 4,
                    "%s: quantization_config %s" % (art, q))
            expect(t, prefix + ".qweight", "I32", [k, n // 8], art)
            expect(t, prefix + ".qzeros", "I32", [k // g, n // 8], art)
            expect(t, prefix + ".scales", "F16", [k // g, n], art)
            allowed |= {".qweight", ".qzeros", ".scales"}
        elif method == "gptq":
            b = q["bits"]
            pf = 32 // b
            g = q["group_size"] if q["group_size"] > 0 else k
            ng = -(-k // g)
            expect(t, prefix + ".qweight", "I32", [k // pf, n], art)
            expect(t, prefix + ".qzeros", "I32", [ng, n // pf], art)
            expect(t, prefix + ".scales", "F16", [ng, n], art)
            expect(t, prefix + ".g_idx", "I32", [k], art)
            allowed |= {".qweight", ".qzeros", ".scales", ".g_idx"}
            gi = t[prefix + ".g_idx"].value
            v1 = q.get("checkpoint_format", "gptq") == "gptq"
            if v1:
                C.check(q["sym"] is True, "%s: checkpoint_format gptq (v1) with sym %s" % (
                    art, q["sym"]))
                # z = 2^(b-1) stored minus 1 in every field: 0x77777777 for 4-bit
                word = sum(((1 << (b - 1)) - 1) << (b * j) for j in range(pf))
                qz = t[prefix + ".qzeros"].value.view(np.uint32)
                C.check(bool((qz == word).all()), "%s: %s.qzeros holds words other than "
                        "0x%08x (v1 symmetric zeros)" % (art, prefix, word))
            if q["desc_act"]:
                counts = np.bincount(gi, minlength=ng)
                C.check(bool((counts[:-1] == g).all()) and gi.min() >= 0 and gi.max() < ng,
                        "%s: %s.g_idx does not give every group %d columns" % (art, prefix, g))
                C.check(not np.array_equal(gi, np.arange(k) // g), "%s: %s.g_idx is sequential "
                        "although desc_act is true" % (art, prefix))
            else:
                C.check(np.array_equal(gi, np.arange(k) // g), "%s: %s.g_idx is not k // %d" % (
                    art, prefix, g))
        elif method == "compressed-tensors":
            (grp,) = q["config_groups"].values()
            w = grp["weights"]
            fmt = grp["format"]
            C.check(fmt == q["format"], "%s: group format %s, top-level %s" % (
                art, fmt, q["format"]))
            if fmt == "pack-quantized":
                b = w["num_bits"]
                pf = 32 // b
                g = w["group_size"] if w["strategy"] == "group" else k
                ng = -(-k // g)
                expect(t, prefix + ".weight_packed", "I32", [n, -(-k // pf)], art)
                expect(t, prefix + ".weight_scale", dt, [n, ng], art)
                expect(t, prefix + ".weight_shape", "I64", [2], art)
                C.check(list(t[prefix + ".weight_shape"].value) == [n, k],
                        "%s: %s.weight_shape %s, want [%d, %d]" % (
                            art, prefix, list(t[prefix + ".weight_shape"].value), n, k))
                allowed |= {".weight_packed", ".weight_scale", ".weight_shape"}
                if not w["symmetric"]:
                    expect(t, prefix + ".weight_zero_point", "I32", [-(-n // pf), ng], art)
                    allowed.add(".weight_zero_point")
                if w["actorder"] == "group":
                    expect(t, prefix + ".weight_g_idx", "I32", [k], art)
                    allowed.add(".weight_g_idx")
            else:
                wdt = "I8" if fmt == "int-quantized" else "F8_E4M3"
                C.check((fmt == "int-quantized") == (w["type"] == "int"),
                        "%s: format %s with weight type %s" % (art, fmt, w["type"]))
                expect(t, prefix + ".weight", wdt, [n, k], art)
                sshape = [1] if w["strategy"] == "tensor" else [n, 1]
                expect(t, prefix + ".weight_scale", dt, sshape, art)
                allowed |= {".weight", ".weight_scale"}
                act = grp["input_activations"]
                if act is not None and not act["dynamic"]:
                    expect(t, prefix + ".input_scale", dt, [1], art)
                    allowed.add(".input_scale")
        elif method == "modelopt":
            algo = q["quant_algo"]
            with open(os.path.join(d, "hf_quant_config.json")) as f:
                side = json.load(f)["quantization"]
            C.check(side["quant_algo"] == algo, "%s: hf_quant_config.json quant_algo %s, "
                    "config.json %s" % (art, side["quant_algo"], algo))
            if algo == "W4A16_AWQ":
                g = side["group_size"]
                C.check(side.get("has_zero_point") is False and side.get("pre_quant_scale")
                        is True, "%s: hf_quant_config.json %s" % (art, side))
                expect(t, prefix + ".weight", "U8", [n // 2, k], art)
                expect(t, prefix + ".weight_scale", "F32", [n, k // g], art)
                if prefix + ".pre_quant_scale" in t:  # absent where fused into the norm
                    expect(t, prefix + ".pre_quant_scale", dt, [k], art)
                allowed |= {".weight", ".weight_scale", ".pre_quant_scale"}
            else:
                expect(t, prefix + ".weight", "I8", [n, k], art)
                expect(t, prefix + ".weight_scale", "F32", [n], art)
                expect(t, prefix + ".input_scale", "F32", [], art)
                allowed |= {".weight", ".weight_scale", ".input_scale", ".pre_quant_scale"}
        # nothing else under a quantized linear's prefix (a float weight would shadow it)
        extra = [name for name in t if name.startswith(prefix + ".") and
                 name[len(prefix):] not in allowed | {".bias"}]
        C.check(not extra, "%s: unexpected tensors %s" % (art, extra))


def check_values(art, refs, src_model, method, bits):
    """Step 3: ranges, and closeness to the source weight where the method keeps W as is."""
    src, _ = qi.read_model(src_model)
    for prefix, r in refs.items():
        if r.codes.dtype.kind in "iu":
            C.check(r.codes.min() >= 0 and r.codes.max() < (1 << bits),
                    "%s: %s codes outside [0, 2^%d)" % (art, prefix, bits))
            C.check(r.zeros.min() >= 0 and r.zeros.max() < (1 << bits),
                    "%s: %s zeros outside [0, 2^%d)" % (art, prefix, bits))
        else:
            C.check(bool(np.isfinite(r.codes).all()) and np.abs(r.codes).max() <= 448,
                    "%s: %s fp8 values not finite or beyond 448" % (art, prefix))
        C.check(bool((r.scales > 0).all() and np.isfinite(r.scales).all()),
                "%s: %s scales not all finite and > 0" % (art, prefix))
        if method in ("gptq", "rtn", "fp8"):
            w = src[prefix + ".weight"].value.astype(np.float32)
            rel = np.linalg.norm(r.weight - w) / np.linalg.norm(w)
            bound = {4: 0.2, 8: 0.02}[bits] if method != "fp8" else 0.06
            C.check(rel < bound, "%s: %s dequantized weight is %.3g away from the source "
                    "weight (relative), more than %g" % (art, prefix, rel, bound))


def awq_sequential(t, prefix, q):
    """The control: AWQ read with nibble i = channel i (the GPTQ/compressed-tensors order)."""
    save = qi.AWQ_ORDER[:]
    try:
        qi.AWQ_ORDER[:] = list(range(8))
        return qi.ref_awq(t, prefix, q)
    finally:
        qi.AWQ_ORDER[:] = save


def one(art, tmp):
    src_name, args = qi.ARTIFACTS[art]
    d = qi.artifact(art)
    cfg = qi.read_config(d)
    C.check("quantization_config" in cfg, "%s: config.json has no quantization_config" % art)
    t, metas = qi.read_model(d)
    for m in metas:
        C.check(m.get("format") == "pt", "%s: shard metadata format %r" % (art, m.get("format")))
    check_layout(art, d, cfg, t)
    refs = qi.reference(d, t)
    C.check(len(refs) > 0, "%s: no quantized linear found" % art)
    method = args[args.index("--method") + 1]
    bits = int(args[args.index("--bits") + 1]) if "--bits" in args else \
        {"smoothquant": 8, "fp8": 8}.get(method, 4)
    check_values(art, refs, qi.model(src_name), method, bits)

    deq = qi.quantd_dequantized(d, os.path.join(tmp, art + "-dequantized"))
    if deq is None:
        if art == next(iter(qi.ARTIFACTS)):
            C.note("quantd convert has no --dequantize: quantd's weights are compared through "
                   "perplexity only")
    else:
        for prefix, r in refs.items():
            w = deq.get(prefix + ".weight")
            if C.check(w is not None and w.dtype == "F32", "%s: quantd convert --dequantize "
                       "wrote no F32 %s.weight" % (art, prefix)):
                qi.compare_exact(C, "%s %s: quantd's dequantization" % (art, prefix), w.value,
                                 r.weight)

    if art in qi.WEIGHT_ONLY:
        fm = os.path.join(tmp, art + "-float")
        qi.write_float_model(d, {p: r.weight for p, r in refs.items()}, fm)
        want = qi.perplexity(d)
        got = qi.perplexity(fm)
        C.check(got == want, "%s: quantd eval perplexity %s of the artifact, %s of the float "
                "model holding the numpy dequantization" % (art, want, got))
        print("ok   %-20s perplexity %s (artifact) = %s (numpy dequantization)" % (
            art, want, got), flush=True)
        if art == "awq":
            q = cfg["quantization_config"]
            wrong = {p: awq_sequential(t, p, q).weight for p in refs}
            cm = os.path.join(tmp, art + "-control")
            qi.write_float_model(d, wrong, cm)
            bad = qi.perplexity(cm)
            C.check(bad != want, "control: AWQ read in sequential nibble order gives the "
                    "artifact's perplexity %s too; the comparison cannot tell layouts apart" %
                    want)
    else:
        print("ok   %-20s layout and values (activation-quantized: no perplexity match)" % art,
              flush=True)


def main():
    tmp = tempfile.mkdtemp(prefix="qd-formats-py-")
    try:
        for art in qi.ARTIFACTS:
            one(art, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return C.finish()


if __name__ == "__main__":
    sys.exit(qi.main_guard(main))

#!/usr/bin/env python3
"""ctensors_lib.py - quantd's compressed-tensors artifacts decompressed by compressed-tensors.

Run through run-python-torch.sh --need compressed_tensors,transformers. The loader is the one
users run: transformers' AutoModelForCausalLM.from_pretrained on the artifact directory, whose
compressed-tensors quantizer parses quantization_config, builds the compressed modules and
decompresses them with the package's own ModelCompressor (dequantize=True, formerly
run_compressed=False). Artifacts (babyllama): W4A16 pack-quantized symmetric, asymmetric,
act-order with static groups (actorder "weight") and asymmetric on a bf16 model; W8A16; W8A8
int-quantized (SmoothQuant); FP8 float-quantized, dynamic per channel and static per tensor.
Per artifact:

1. compressed-tensors' QuantizationConfig accepts the config; transformers loads the model
   with no missing, unexpected or mis-shaped tensor (the static FP8 input_scale tensors are
   the one exception under dequantize=True, where the loader drops activation quantization).
2. Every quantized linear's decompressed weight equals the numpy reference
   (qd_interop.ref_ctensors, from docs/formats.md), both as transformers' load holds it and
   as the format's compressor class (BaseCompressor registry, "pack-quantized",
   "int-quantized", "float-quantized") decompresses the linear's own tensors: bit for bit for
   the fp32 model (scales fp32, (q - z) * s rounded once either way); within bf16 rounding for
   the bf16 model (|lib - ref| <= 2^-8 |ref|, the library multiplies in bf16). The formats_py
   test shows quantd reads each weight-only artifact to the reference's weights, so the three
   agree.
3. pack-quantized codes: the package's unpack_from_int32 gives the reference's signed codes
   (and zero points, packed along N) exactly, and its pack_to_int32 of those codes gives
   quantd's weight_packed / weight_zero_point words bit for bit.

A library version that refuses a config quantd writes is a finding, not a test error, when
the refusal is a documented removal (compressed-tensors 0.19 dropped actorder "group", which
quantd therefore refuses to write): it is printed as NOTE with the library's message and the rest of that artifact is skipped. Likewise
when transformers' loader leaves weight_g_idx unused (seen with transformers 5.23 and
compressed-tensors 0.18, whose own compressor still applies it): the loaded weights are then
not compared, the compressor's are.
"""
import contextlib
import inspect
import io
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qd_interop as qi  # noqa: E402

C = qi.Checks("interop-ctensors-lib")

CT_ARTIFACTS = ["ct_w4a16", "ct_w4a16_asym", "ct_w4a16_act", "ct_w4a16_asym_bf16", "ct_w8a16",
                "ct_w8a8", "ct_fp8", "ct_fp8_static"]

# Refusals of a config by a library version, documented upstream: (substring of the message,
# what it means). Anything else that fails is a test failure.
KNOWN_REFUSALS = [
    ("actorder='group' has been removed",
     "this compressed-tensors no longer reads actorder \"group\" (weight_g_idx), which quantd "
     "writes for GPTQ act-order without static groups; releases up to 0.18 read it"),
]


def pack_helpers():
    """compressed-tensors' pack_to_int32 / unpack_from_int32 (their module moved between
    releases), or None."""
    for mod in ("compressed_tensors.compressors.pack_quantized.helpers",
                "compressed_tensors.compressors.quantized_compressors.pack_quantized"):
        try:
            m = __import__(mod, fromlist=["pack_to_int32", "unpack_from_int32"])
            return m.pack_to_int32, m.unpack_from_int32
        except (ImportError, AttributeError):
            continue
    return None


def load(d):
    """transformers' load of an artifact, decompressed; (model, loading info)."""
    import transformers
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    params = inspect.signature(CompressedTensorsConfig.__init__).parameters
    qc = CompressedTensorsConfig(dequantize=True) if "dequantize" in params else \
        CompressedTensorsConfig(run_compressed=False)
    transformers.logging.set_verbosity_error()
    kw = {"quantization_config": qc, "output_loading_info": True}
    # progress bars and the config-override warning go to a buffer, shown on failure
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        try:
            return AutoModelForCausalLM.from_pretrained(d, dtype="auto", **kw)
        except TypeError:
            return AutoModelForCausalLM.from_pretrained(d, torch_dtype="auto", **kw)


def torch_tensor(t):
    """A qd_interop.Tensor as torch, in its stored dtype (BF16 and F8_E4M3 from their bytes)."""
    if t.raw is not None:
        dt = torch.bfloat16 if t.dtype == "BF16" else torch.float8_e4m3fn
        return torch.frombuffer(bytearray(t.raw), dtype=dt).reshape(t.shape)
    return torch.from_numpy(np.array(t.value))


def compressor_for(group):
    """(compressor class, QuantizationScheme) of a config group, from compressed-tensors'
    registry; (None, None) where this release has no per-module decompress(state_dict, scheme)
    (noted once)."""
    try:
        from compressed_tensors.compressors.base import BaseCompressor
        from compressed_tensors.quantization import QuantizationScheme
        cls = BaseCompressor.get_value_from_registry(group["format"])
        params = list(inspect.signature(cls.decompress).parameters)
        if params[:2] != ["state_dict", "scheme"]:
            raise TypeError("decompress%s" % params)
        scheme = QuantizationScheme.model_validate(
            {k: v for k, v in group.items() if k != "format"})
        return cls, scheme
    except Exception as e:  # noqa: BLE001 - an older API: say so once
        if not getattr(compressor_for, "noted", False):
            compressor_for.noted = True
            C.note("no per-module compressor API in this compressed-tensors (%s); weights are "
                   "compared as transformers' load decompresses them" % e)
        return None, None


def known_refusal(msg):
    for pattern, meaning in KNOWN_REFUSALS:
        if pattern in msg:
            return meaning
    return None


def one(art, helpers):
    from compressed_tensors.quantization import QuantizationConfig
    d = qi.artifact(art)
    cfg = qi.read_config(d)
    q = cfg["quantization_config"]
    try:
        QuantizationConfig.model_validate(q)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError, or older releases'
        meaning = known_refusal(str(e))
        if meaning:
            said = [ln.strip() for ln in str(e).splitlines() if "actorder" in ln.lower()]
            C.note("%s: %s (compressed-tensors says: %s)" % (art, meaning, said[-1][:160]))
            return
        C.check(False, "%s: compressed-tensors refuses the quantization_config: %s" % (art, e))
        return
    C.check(True, "%s: QuantizationConfig" % art)

    model, info = load(d)
    (grp,) = q["config_groups"].values()
    static_act = grp["input_activations"] is not None and not grp["input_activations"]["dynamic"]
    unexpected = sorted(info.get("unexpected_keys", []))
    if static_act:  # dropped with activation quantization under dequantize=True
        unexpected = [k for k in unexpected if not k.endswith(".input_scale")]
    loader_ok = True
    if unexpected and all(k.endswith(".weight_g_idx") for k in unexpected):
        C.note("%s: transformers' loader left every weight_g_idx unused, so its weights ignore "
               "the act-order groups; they are not compared, the compressor's are" % art)
        unexpected, loader_ok = [], False
    C.check(not info.get("missing_keys") and not unexpected and
            not info.get("mismatched_keys") and not info.get("error_msgs"),
            "%s: transformers' load reports missing %s, unexpected %s, mismatched %s, "
            "errors %s" % (art, sorted(info.get("missing_keys", [])), unexpected,
                           info.get("mismatched_keys"), info.get("error_msgs")))

    t, _ = qi.read_model(d)
    refs = qi.reference(d, t)
    sd = model.state_dict()
    bf16 = cfg["torch_dtype"] == "bfloat16"
    w = grp["weights"]
    compressor, scheme = compressor_for(grp)
    for prefix, r in refs.items():
        lib = sd.get(prefix + ".weight")
        if not C.check(lib is not None, "%s: the loaded model has no %s.weight" % (art, prefix)):
            continue
        got = [("transformers' load", lib)] if loader_ok else []
        if compressor is not None:
            own = {name[len(prefix) + 1:]: torch_tensor(x) for name, x in t.items()
                   if name.startswith(prefix + ".")}
            got.append(("%s.decompress" % compressor.__name__,
                        compressor.decompress(own, scheme)["weight"]))
        for how, w_lib in got:
            what = "%s %s: %s" % (art, prefix, how)
            if bf16:
                C.check(w_lib.dtype == torch.bfloat16, "%s: dtype %s" % (what, w_lib.dtype))
                qi.compare_rounded(C, what + ", within bf16 rounding",
                                   w_lib.detach().float().numpy(), r.weight, 7)
            else:
                qi.compare_exact(C, what, w_lib.detach().float().numpy(), r.weight)

        if helpers and prefix + ".weight_packed" in t:
            pack, unpack = helpers
            b = w["num_bits"]
            off = 1 << (b - 1)
            n, k = r.codes.shape
            packed = torch.from_numpy(t[prefix + ".weight_packed"].value.copy())
            codes = unpack(packed, b, torch.Size([n, k])).to(torch.int64).numpy()
            C.check(np.array_equal(codes, r.codes - off), "%s %s: unpack_from_int32 gives "
                    "other codes than the reference" % (art, prefix))
            repacked = pack(torch.from_numpy((r.codes - off).astype(np.int8)), b)
            C.check(np.array_equal(repacked.numpy(), t[prefix + ".weight_packed"].value),
                    "%s %s: pack_to_int32 of the codes differs from quantd's weight_packed" % (
                        art, prefix))
            if prefix + ".weight_zero_point" in t:
                zp = torch.from_numpy(t[prefix + ".weight_zero_point"].value.copy())
                ng = r.zeros.shape[1]
                z = unpack(zp, b, torch.Size([n, ng]), packed_dim=0).to(torch.int64).numpy()
                C.check(np.array_equal(z, r.zeros - off), "%s %s: unpack_from_int32 "
                        "(packed_dim 0) gives other zero points" % (art, prefix))
                rz = pack(torch.from_numpy((r.zeros - off).astype(np.int8)), b, packed_dim=0)
                C.check(np.array_equal(rz.numpy(), t[prefix + ".weight_zero_point"].value),
                        "%s %s: pack_to_int32 (packed_dim 0) of the zero points differs from "
                        "quantd's weight_zero_point" % (art, prefix))
    print("ok   %-20s %d linears" % (art, len(refs)), flush=True)


def main():
    import compressed_tensors
    import transformers
    print("compressed-tensors %s, transformers %s, torch %s" % (
        compressed_tensors.__version__, transformers.__version__, torch.__version__))
    helpers = pack_helpers()
    if helpers is None:
        C.note("pack_to_int32 / unpack_from_int32 not found in this compressed-tensors; the "
               "codes are compared through the decompressed weights only")
    for art in CT_ARTIFACTS:
        one(art, helpers)
    return C.finish()


if __name__ == "__main__":
    sys.exit(qi.main_guard(main))

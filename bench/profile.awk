# profile.awk - where the main thread of a `quantd quantize` run spent its time, by step.
#
#   perf script -F comm,pid,tid,ip,sym --inline -i perf.data | awk -v comm=quantd -f profile.awk
#
# Input: perf samples with call chains, one block per sample: a header line "COMM PID/TID",
# then one frame per line (address, symbol, "(inlined)" for an inlined frame), innermost
# first, then a blank line.
#
# Each sample of the process's main thread (TID == PID) is charged to ONE step, found by
# walking its frames from the innermost out to the first function listed as a step below:
#   - a LEAF step (AWQ's scale search, GPTQ's Hessian, ...) takes the sample whatever ran
#     inside it, so the GEMMs and fake quantizations of the scale search count as
#     "awq: scale search";
#   - a CONTAINER step (the calibration driver, AWQ's end of layer, the RTN layer loop, ...)
#     takes it unless a KERNEL function (RTN codes, dequantization) ran inside it, below any
#     other step: then the kernel names the step, e.g. "quantize weights (RTN codes)".
# A sample with no listed frame is "start worker threads" when it is in pthread_create or
# clone3 (quantd starts its threads per parallel loop), "BLAS (caller not unwound)" when its innermost frame is an
# OpenBLAS kernel whose hand-written assembly carries no unwind table, else "other".
# Only the main thread is counted because quantd's worker threads are started per parallel
# loop and their stacks end at the thread entry: the caller that says which step they serve is
# on the main thread, which runs the first share of every parallel loop itself, so its samples
# follow the wall clock.
#
# Output, tab-separated and sorted by samples (most first): "step NAME SAMPLES", then
# "total - SAMPLES".

BEGIN {
    # leaf steps: function -> step
    leaf["qd_model_open"] = "open and check the model"
    leaf["check_against_model"] = "check the spec against the model"
    leaf["load_tokens"] = "read calibration tokens"
    leaf["qd_model_check_tokens"] = "read calibration tokens"
    leaf["qd_layer_weights_load"] = "load layer weights (to fp32)"
    leaf["search_scales"] = "awq: scale search"
    leaf["qd_awq_fold"] = "awq: fold scales"
    leaf["sample_scaled"] = "awq: sample clip tokens"
    leaf["qd_awq_clip_search"] = "awq: clip search"
    leaf["qd_awq_clip_apply"] = "awq: clip search"
    leaf["save_orig"] = "gptq: copy weights"
    leaf["qd_gptq_hessian_add"] = "gptq: Hessian (X^T X)"
    leaf["qd_gptq_quantize"] = "gptq: quantize (inverse + column loop)"
    leaf["group_rel_err"] = "error report (each group run again)"
    leaf["pack_model"] = "artifact: pack tensors"
    leaf["qd_job_result_free"] = "free the result"
    # container steps
    cont["qd_calib_run"] = "calibration forward pass"
    cont["awq_group"] = "awq: per-group statistics"
    cont["awq_layer_end"] = "awq: finish layer"
    cont["finish_linear"] = "awq: finish layer"
    cont["gptq_group"] = "gptq: per-group bookkeeping"
    cont["run_weights_only"] = "rtn: layer loop"
    cont["qd_artifact_write"] = "artifact: write files"
    cont["qd_job_quantize"] = "job: other"
    cont["qd_cmd_quantize"] = "command: other"
    # kernels that name the step inside a container
    kern["qd_rtn_quantize"] = "quantize weights (RTN codes)"
    kern["qd_fp8_quantize"] = "quantize weights (RTN codes)"
    kern["qd_qlinear_dequant"] = "dequantize into the layer"
    in_sample = 0
}

function flush() {
    if (in_sample && counted) {
        step = found != "" ? found : cloned ? "start worker threads" : \
               blas ? "BLAS (caller not unwound)" : "other"
        n[step]++
        total++
    }
    in_sample = 0
}

/^[^ \t]/ {
    flush()
    split($2, pt, "/")
    in_sample = 1
    counted = ($1 == comm && pt[1] == pt[2])
    found = ""
    kernel = ""
    cloned = 0
    blas = -1
    next
}

/^[ \t]/ {
    if (!in_sample || !counted || found != "") next
    f = $2
    if (f == "clone3" || f ~ /pthread_create/) cloned = 1
    if (blas < 0 && $1 !~ /^ffffffff/) blas = (f ~ /^(sgemm|dgemm|cblas)_/)
    if (f in leaf) found = leaf[f]
    else if (f in cont) found = kernel != "" ? kernel : cont[f]
    else if (kernel == "" && (f in kern)) kernel = kern[f]
    next
}

/^$/ { flush() }

END {
    flush()
    for (s in n) printf "step\t%s\t%d\n", s, n[s] | "sort -t '\t' -k3,3nr -k2,2"
    close("sort -t '\t' -k3,3nr -k2,2")
    printf "total\t-\t%d\n", total
}

/*
 * module.cu - the entry point of libquantd-cuda.so: the function table (module.h) holding
 * this module's qd_cuda.h functions and device discovery. It is the module's only exported
 * symbol; everything else in the module is hidden, so the loader's forwarders of the same
 * names in quantd and these definitions never meet.
 */
#include "module.h"

/* device.cu */
extern "C" int qd_cuda_device_count(const char **note);
extern "C" int qd_cuda_device_info(int index, qd_device_info *out);

/* Member by member, so each entry is visibly bound to its function: several entries share a
 * signature, and an initializer list in the wrong order would still compile. */
static qd_cuda_module make_table(void) {
    qd_cuda_module t;
    t.abi = QD_CUDA_MODULE_ABI;
    t.size = (uint32_t)sizeof t;
    t.device_count = qd_cuda_device_count;
    t.device_info = qd_cuda_device_info;
    t.open = qd_cuda_open;
    t.close = qd_cuda_close;
    t.info = qd_cuda_info;
    t.sm_count = qd_cuda_sm_count;
    t.broken = qd_cuda_broken;
    t.alloc = qd_cuda_alloc;
    t.free = qd_cuda_free;
    t.upload = qd_cuda_upload;
    t.download = qd_cuda_download;
    t.copy = qd_cuda_copy;
    t.fill = qd_cuda_fill;
    t.sync = qd_cuda_sync;
    t.quant_rtn = qd_quant_rtn_cuda;
    t.quant_fp8 = qd_quant_fp8_cuda;
    t.quant_pack = qd_quant_pack_cuda;
    t.pack_codes = qd_pack_codes_cuda;
    t.matmul = qd_matmul_cuda;
    t.matmul_lp = qd_matmul_lp_cuda;
    t.convert = qd_convert_cuda;
    t.xtx_accum = qd_xtx_accum_cuda;
    t.rmsnorm = qd_rmsnorm_cuda;
    t.rope_apply = qd_rope_apply_cuda;
    t.silu_mul = qd_silu_mul_cuda;
    t.attention = qd_attention_cuda;
    t.act_stats_add = qd_act_stats_add_cuda;
    t.gptq_hessian_add = qd_gptq_hessian_add_cuda;
    t.gptq_quantize = qd_gptq_quantize_cuda;
    t.awq_fake_quant = qd_awq_fake_quant_cuda;
    t.awq_loss = qd_awq_loss_cuda;
    t.awq_clip_search = qd_awq_clip_search_cuda;
    t.kernels = qd_kernels_cuda;
    t.add = qd_add_cuda;
    t.sq_diff = qd_sq_diff_cuda;
    return t;
}

extern "C" const qd_cuda_module *qd_cuda_module_v1(void) {
    /* a function-local static: initialised once, thread-safely, on the first call */
    static const qd_cuda_module table = make_table();
    return &table;
}

/* test-tensor.c - dtype table, tensor views, ownership and size arithmetic. */
#include <stdint.h>

#include "tensor.h"
#include "test.h"

QD_TEST(dtype_table) {
    QD_CHECK_EQ_INT(qd_dtype_size(QD_DTYPE_F32), 4);
    QD_CHECK_EQ_INT(qd_dtype_size(QD_DTYPE_BF16), 2);
    QD_CHECK_EQ_INT(qd_dtype_size(QD_DTYPE_F8_E4M3), 1);
    QD_CHECK_EQ_INT(qd_dtype_size(QD_DTYPE_I64), 8);
    QD_CHECK_EQ_INT(qd_dtype_size(QD_DTYPE_COUNT), 0);
    QD_CHECK_EQ_STR(qd_dtype_name(QD_DTYPE_F8_E4M3), "F8_E4M3");
    QD_CHECK(qd_dtype_name(QD_DTYPE_COUNT) == NULL);
    for (int t = 0; t < QD_DTYPE_COUNT; t++)
        QD_CHECK_EQ_INT(qd_dtype_from_name(qd_dtype_name((qd_dtype)t)), t);
    QD_CHECK_EQ_INT(qd_dtype_from_name("F33"), QD_DTYPE_COUNT);
    QD_CHECK_EQ_INT(qd_dtype_from_name("f32"), QD_DTYPE_COUNT); /* safetensors is case-exact */
    QD_CHECK(qd_dtype_is_float(QD_DTYPE_BF16));
    QD_CHECK(!qd_dtype_is_float(QD_DTYPE_I32));
}

QD_TEST(torch_names) {
    QD_CHECK_EQ_INT(qd_dtype_from_torch("bfloat16"), QD_DTYPE_BF16);
    QD_CHECK_EQ_INT(qd_dtype_from_torch("torch.float16"), QD_DTYPE_F16);
    QD_CHECK_EQ_INT(qd_dtype_from_torch("f32"), QD_DTYPE_COUNT);
    QD_CHECK_EQ_INT(qd_dtype_from_torch("fp32"), QD_DTYPE_F32);
    QD_CHECK_EQ_INT(qd_dtype_from_torch("BF16"), QD_DTYPE_BF16);
    QD_CHECK_EQ_INT(qd_dtype_from_torch("float128"), QD_DTYPE_COUNT);
    QD_CHECK_EQ_STR(qd_dtype_torch_name(QD_DTYPE_BF16), "bfloat16");
    QD_CHECK_EQ_STR(qd_dtype_torch_name(QD_DTYPE_F32), "float32");
}

QD_TEST(view_is_contiguous_and_borrowed) {
    float buf[24];
    int64_t shape[3] = {2, 3, 4};
    qd_tensor t = qd_tensor_view(QD_DTYPE_F32, 3, shape, buf);
    QD_CHECK_EQ_INT(t.stride[0], 12);
    QD_CHECK_EQ_INT(t.stride[1], 4);
    QD_CHECK_EQ_INT(t.stride[2], 1);
    QD_CHECK_EQ_INT(qd_tensor_numel(&t), 24);
    QD_CHECK_EQ_INT(qd_tensor_nbytes(&t), 96);
    QD_CHECK(qd_tensor_is_contiguous(&t));
    QD_CHECK(t.owned == NULL);
    qd_tensor_free(&t); /* must not free buf: ASan would catch a bad free */
    QD_CHECK(t.data == NULL);
    /* a transposed view is not contiguous */
    qd_tensor tr = qd_tensor_view(QD_DTYPE_F32, 2, (int64_t[]){4, 6}, buf);
    tr.stride[0] = 1;
    tr.stride[1] = 4;
    QD_CHECK(!qd_tensor_is_contiguous(&tr));
    /* 0-d tensor: one element */
    qd_tensor s = qd_tensor_view(QD_DTYPE_F32, 0, NULL, buf);
    QD_CHECK_EQ_INT(qd_tensor_numel(&s), 1);
}

QD_TEST(alloc_owns_and_zero_fills) {
    qd_tensor t;
    qd_error e = {0};
    QD_CHECK_OK(qd_tensor_alloc(&t, QD_DTYPE_BF16, 2, (int64_t[]){5, 7}, &e), &e);
    QD_REQUIRE(t.owned != NULL && t.data == t.owned);
    const uint16_t *p = t.data;
    for (int i = 0; i < 35; i++) QD_CHECK_EQ_INT(p[i], 0);
    qd_tensor_free(&t);
    QD_CHECK(t.owned == NULL);
    qd_tensor_free(NULL);
}

QD_TEST(size_overflow_is_refused) {
    uint64_t b;
    QD_CHECK(qd_shape_nbytes(QD_DTYPE_F32, 2, (int64_t[]){1000, 1000}, &b) && b == 4000000);
    QD_CHECK(qd_shape_nbytes(QD_DTYPE_F32, 2, (int64_t[]){0, INT64_MAX}, &b) && b == 0);
    QD_CHECK(!qd_shape_nbytes(QD_DTYPE_F32, 2, (int64_t[]){INT64_MAX, 4}, &b));
    QD_CHECK(!qd_shape_nbytes(QD_DTYPE_F32, 1, (int64_t[]){-1}, &b));
    QD_CHECK(!qd_shape_nbytes(QD_DTYPE_COUNT, 1, (int64_t[]){1}, &b));
    QD_CHECK(!qd_shape_nbytes(QD_DTYPE_F32, QD_MAX_DIMS + 1, (int64_t[QD_MAX_DIMS + 1]){0}, &b));
    qd_tensor t;
    qd_error e = {0};
    QD_CHECK_EQ_INT(qd_tensor_alloc(&t, QD_DTYPE_F64, 3, (int64_t[]){1 << 30, 1 << 30, 1 << 30},
                                    &e),
                    QD_ERR_INVALID_ARG);
}

QD_TEST(shape_str) {
    char buf[64];
    QD_CHECK_EQ_STR(qd_shape_str(2, (int64_t[]){128, 352}, buf, sizeof buf), "[128, 352]");
    QD_CHECK_EQ_STR(qd_shape_str(0, NULL, buf, sizeof buf), "[]");
    char tiny[4];
    qd_shape_str(2, (int64_t[]){128, 352}, tiny, sizeof tiny);
    QD_CHECK_EQ_INT(strlen(tiny), 3);
}

QD_TEST_MAIN()

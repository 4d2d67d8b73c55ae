/* test-error.c - the error table and the first-error-wins message buffer. */
#include "error.h"
#include "test.h"

QD_TEST(table_names_and_status) {
    QD_CHECK_EQ_STR(qd_err_name(QD_OK), "OK");
    QD_CHECK_EQ_STR(qd_err_name(QD_ERR_FORMAT), "FORMAT");
    QD_CHECK_EQ_STR(qd_err_name((qd_err)9999), "UNKNOWN");
    QD_CHECK_EQ_INT(qd_err_grpc_status(QD_OK), 0);
    QD_CHECK_EQ_INT(qd_err_grpc_status(QD_ERR_INVALID_ARG), 3);
    QD_CHECK_EQ_INT(qd_err_grpc_status(QD_ERR_NOT_FOUND), 5);
    QD_CHECK_EQ_INT(qd_err_grpc_status(QD_ERR_TOO_LARGE), 8);
    QD_CHECK_EQ_INT(qd_err_grpc_status(QD_ERR_PRECONDITION), 9);
    QD_CHECK_EQ_INT(qd_err_grpc_status(QD_ERR_CORRUPT), 15);
    QD_CHECK_EQ_INT(qd_err_grpc_status(QD_ERR_UNAUTHENTICATED), 16);
    QD_CHECK_EQ_INT(qd_err_grpc_status((qd_err)9999), 2);
}

QD_TEST(every_code_has_distinct_name_and_text) {
    for (int i = 0; i < QD_ERR_COUNT; i++) {
        QD_CHECK(qd_err_str((qd_err)i)[0] != '\0');
        for (int j = 0; j < i; j++)
            QD_CHECK_MSG(strcmp(qd_err_name((qd_err)i), qd_err_name((qd_err)j)) != 0,
                         "codes %d and %d share a name", i, j);
    }
}

QD_TEST(first_error_wins) {
    qd_error e = {0};
    QD_CHECK_EQ_INT(qd_error_set(&e, QD_ERR_FORMAT, "tensor '%s': bad", "w"), QD_ERR_FORMAT);
    QD_CHECK_EQ_INT(qd_error_set(&e, QD_ERR_IO, "later"), QD_ERR_IO);
    QD_CHECK_EQ_INT(e.code, QD_ERR_FORMAT);
    QD_CHECK_EQ_STR(e.msg, "tensor 'w': bad");
    qd_error_prefix(&e, "%s: ", "model.safetensors");
    QD_CHECK_EQ_STR(qd_error_text(&e), "model.safetensors: tensor 'w': bad");
    qd_error_clear(&e);
    QD_CHECK_EQ_INT(e.code, QD_OK);
    QD_CHECK_EQ_STR(qd_error_text(&e), "success");
    /* a NULL error pointer is allowed everywhere */
    QD_CHECK_EQ_INT(qd_error_set(NULL, QD_ERR_NOMEM, "x"), QD_ERR_NOMEM);
    qd_error_prefix(NULL, "x");
}

QD_TEST(long_messages_are_truncated_not_overflowed) {
    qd_error e = {0};
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    qd_error_set(&e, QD_ERR_CONFIG, "%s", big);
    QD_CHECK_EQ_INT(strlen(e.msg), QD_ERROR_MSG_MAX - 1);
    qd_error_prefix(&e, "%s", big);
    QD_CHECK_EQ_INT(strlen(e.msg), QD_ERROR_MSG_MAX - 1);
}

QD_TEST_MAIN()

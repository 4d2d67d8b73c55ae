/*
 * test.h - the tiny harness every C test in quantd uses.
 *
 *   QD_TEST(name) { ... QD_CHECK(cond); QD_CHECK_EQ_INT(a, b); ... }
 *   int main(void) { return qd_test_run(); }      (or QD_TEST_MAIN())
 *
 * A failing check prints file:line and the values, marks the test failed and carries on
 * (so one run shows every failure). A test that cannot run here (no GPU, no Python package)
 * calls qd_test_skip("why"): the program then exits 77, which ctest reports as skipped.
 * Tests are registered by a constructor, so there is no list to keep in sync.
 */
#ifndef QD_TEST_H
#define QD_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QD_TEST_SKIP_CODE 77
#define QD_TEST_MAX 512

typedef void (*qd_test_fn)(void);
static struct {
    const char *name;
    qd_test_fn fn;
} qd_tests_[QD_TEST_MAX];
static int qd_ntests_;
static int qd_failed_checks_;
static int qd_skipped_;
static const char *qd_skip_reason_;

#define QD_TEST(tname)                                                            \
    static void qd_test_##tname(void);                                            \
    __attribute__((constructor)) static void qd_register_##tname(void) {          \
        if (qd_ntests_ < QD_TEST_MAX) {                                           \
            qd_tests_[qd_ntests_].name = #tname;                                  \
            qd_tests_[qd_ntests_++].fn = qd_test_##tname;                         \
        }                                                                         \
    }                                                                             \
    static void qd_test_##tname(void)

#define QD_FAIL_(...)                                                             \
    do {                                                                          \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                           \
        fprintf(stderr, __VA_ARGS__);                                             \
        fputc('\n', stderr);                                                      \
        qd_failed_checks_++;                                                      \
    } while (0)

#define QD_CHECK(cond)                                                            \
    do {                                                                          \
        if (!(cond)) QD_FAIL_("check failed: %s", #cond);                         \
    } while (0)

#define QD_CHECK_MSG(cond, ...)                                                   \
    do {                                                                          \
        if (!(cond)) QD_FAIL_(__VA_ARGS__);                                       \
    } while (0)

#define QD_CHECK_EQ_INT(a, b)                                                     \
    do {                                                                          \
        long long qa_ = (long long)(a), qb_ = (long long)(b);                     \
        if (qa_ != qb_) QD_FAIL_("%s == %s: %lld != %lld", #a, #b, qa_, qb_);     \
    } while (0)

#define QD_CHECK_EQ_STR(a, b)                                                     \
    do {                                                                          \
        const char *qa_ = (a), *qb_ = (b);                                        \
        if (!qa_ || !qb_ || strcmp(qa_, qb_) != 0)                                \
            QD_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, qa_ ? qa_ : "(null)",  \
                     qb_ ? qb_ : "(null)");                                       \
    } while (0)

#define QD_CHECK_NEAR(a, b, tol)                                                  \
    do {                                                                          \
        double qa_ = (double)(a), qb_ = (double)(b);                              \
        if (!(fabs(qa_ - qb_) <= (tol)))                                          \
            QD_FAIL_("%s ~= %s: %.9g vs %.9g (tol %g)", #a, #b, qa_, qb_,         \
                     (double)(tol));                                              \
    } while (0)

/* The call returned QD_OK; on failure print the error's message. */
#define QD_CHECK_OK(call, errp)                                                   \
    do {                                                                          \
        int qrc_ = (int)(call);                                                   \
        if (qrc_ != 0) QD_FAIL_("%s failed: %s", #call, qd_error_text(errp));     \
    } while (0)

/* Stop the current test early (after a failed precondition). */
#define QD_REQUIRE(cond)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            QD_FAIL_("requirement failed: %s", #cond);                            \
            return;                                                               \
        }                                                                         \
    } while (0)

static inline void qd_test_skip(const char *why) {
    qd_skipped_ = 1;
    qd_skip_reason_ = why;
}

static inline int qd_test_run(void) {
    int failed_tests = 0;
    if (qd_ntests_ == 0) {
        printf("no tests registered: a test program that checks nothing fails\n");
        return 1;
    }
    for (int i = 0; i < qd_ntests_; i++) {
        int before = qd_failed_checks_;
        qd_tests_[i].fn();
        int ok = qd_failed_checks_ == before;
        if (!ok) failed_tests++;
        printf("%-4s %s\n", ok ? "ok" : "FAIL", qd_tests_[i].name);
    }
    if (qd_skipped_ && failed_tests == 0) {
        printf("skipped: %s\n", qd_skip_reason_ ? qd_skip_reason_ : "");
        return QD_TEST_SKIP_CODE;
    }
    printf("%d passed, %d failed\n", qd_ntests_ - failed_tests, failed_tests);
    return failed_tests ? 1 : 0;
}

#define QD_TEST_MAIN() \
    int main(void) { return qd_test_run(); }

#endif /* QD_TEST_H */

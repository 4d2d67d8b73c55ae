/*
 * rt-util.h - small helpers shared by the runtime tests: a seeded generator and comparisons.
 */
#ifndef QD_RT_UTIL_H
#define QD_RT_UTIL_H

#include <math.h>
#include <stdint.h>

/* splitmix64: deterministic, good enough for test data. */
static inline uint64_t rt_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline float rt_uniform(uint64_t *state) {
    return (float)((double)(rt_next(state) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static inline void rt_fill(float *x, int64_t n, float scale, uint64_t *state) {
    for (int64_t i = 0; i < n; i++) x[i] = scale * rt_uniform(state);
}

/* Largest |a - b|. */
static inline double rt_max_abs_diff(const float *a, const float *b, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    return m;
}

static inline double rt_max_abs(const float *a, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (fabs((double)a[i]) > m) m = fabs((double)a[i]);
    return m;
}

#endif /* QD_RT_UTIL_H */

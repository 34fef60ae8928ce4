/* Test helpers: a seeded generator and buffers with canary words after them. */
#ifndef MOERT_TESTS_TEST_UTIL_H
#define MOERT_TESTS_TEST_UTIL_H

#include <check.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Check records the place of every passing assertion with a write(2) to its log; the
 * kernel tests make millions of assertions in loops, which cost minutes of system time
 * (and far more under the sanitizers). Here a passing assertion records nothing; a
 * failing one still reports its file, line and message. Every ck_assert_* form goes
 * through ck_assert_msg, so all of them are covered. */
#undef ck_assert_msg
#define ck_assert_msg(expr, ...) \
    ((expr) ? (void)0 : _ck_assert_failed(__FILE__, __LINE__, "Assertion '" #expr "' failed", ##__VA_ARGS__))

typedef struct test_rng {
    uint64_t state;
} test_rng;

static inline uint64_t test_rng_next(test_rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline double test_rng_uniform(test_rng *r) {
    return (double)(test_rng_next(r) >> 11) * 0x1.0p-53;
}

static inline float test_rng_normal(test_rng *r) {
    double u1 = test_rng_uniform(r) + 0x1.0p-54, u2 = test_rng_uniform(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

#define TEST_CANARY_WORDS 16
#define TEST_CANARY 0xDEADBEEFu

/* Allocates bytes + canary words; the canaries sit right after `bytes`. */
static inline void *test_alloc_canary(size_t bytes) {
    unsigned char *p = malloc(bytes + TEST_CANARY_WORDS * sizeof(uint32_t));
    uint32_t c = TEST_CANARY;
    for (int i = 0; i < TEST_CANARY_WORDS; i++) memcpy(p + bytes + 4 * (size_t)i, &c, 4);
    return p;
}

static inline int test_canary_intact(const void *p, size_t bytes) {
    const unsigned char *q = p;
    for (int i = 0; i < TEST_CANARY_WORDS; i++) {
        uint32_t c;
        memcpy(&c, q + bytes + 4 * (size_t)i, 4);
        if (c != TEST_CANARY) return 0;
    }
    return 1;
}

#endif /* MOERT_TESTS_TEST_UTIL_H */

/* Internal: 16 float lanes by GCC's vector extensions, for the router's row functions.
 * Compiled in each target clone (AVX-512: one register; AVX2: two; SSE2: four), every lane
 * runs the same IEEE single-precision operations (no FMA: -ffp-contract=off) as the scalar
 * code it mirrors, so each clone gives the same bits. */
#ifndef MOERT_ROUTER_VEC16_H
#define MOERT_ROUTER_VEC16_H

#include <stdint.h>
#include <string.h>

#include "kernels/expf.h"

/* The helpers return vectors by value only inside always_inline functions, so the ABI
 * note GCC gives for a 64-byte vector in a function built without AVX-512 does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));

static inline __attribute__((always_inline)) v16f v16_load(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline __attribute__((always_inline)) void v16_store(float *p, v16f v) { memcpy(p, &v, sizeof v); }
static inline __attribute__((always_inline)) v16f v16_set1(float x) { return (v16f){0} + x; }
/* mask ? a : b, mask lanes all ones or zeros (a comparison's result). Masks are never
 * combined with & | ~ (GCC then compares lane by lane in scalar code): one comparison
 * per mask. */
static inline __attribute__((always_inline)) v16f v16_select(v16i mask, v16f a, v16f b) { return (v16f)(((v16i)a & mask) | ((v16i)b & ~mask)); }
static inline __attribute__((always_inline)) v16f v16_max(v16f a, v16f b) { return v16_select(a > b, a, b); }
static inline __attribute__((always_inline)) float v16_reduce_max(v16f v) {
    float l[16];
    v16_store(l, v);
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) l[j] = l[j + w] > l[j] ? l[j + w] : l[j];
    return l[0];
}
static inline __attribute__((always_inline)) float v16_reduce_add(v16f v) { /* a fixed pairwise tree */
    float l[16];
    v16_store(l, v);
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) l[j] += l[j + w];
    return l[0];
}
static inline __attribute__((always_inline)) v16f v16_abs(v16f v) { return (v16f)((v16i)v & 0x7FFFFFFF); }

/* moert_expf lane by lane: the same operations in the same order. */
static inline __attribute__((always_inline)) v16f v16_expf(v16f x) {
    /* !(x >= min): also NaN. As a second comparison, not ~: GCC turns a logical operation
     * on a comparison's mask into a comparison per lane. */
    const v16i small = (x >= MOERT_EXPF_X_MIN) == 0;
    x = v16_select(x > MOERT_EXPF_X_MAX, v16_set1(MOERT_EXPF_X_MAX), x);
    const v16f t = x * MOERT_EXPF_LOG2E + MOERT_EXPF_MAGIC;
    const v16f n = t - MOERT_EXPF_MAGIC;
    v16f r = x - n * MOERT_EXPF_LN2_HI;
    r = r - n * MOERT_EXPF_LN2_LO;
    const v16f r2 = r * r, r4 = r2 * r2;
    const v16f a = MOERT_EXPF_P0 * r + MOERT_EXPF_P1;
    const v16f b = MOERT_EXPF_P2 * r + MOERT_EXPF_P3;
    const v16f c = MOERT_EXPF_P4 * r + MOERT_EXPF_P5;
    v16f p = (a * r4 + b * r2) + c;
    p = p * r2 + r + 1.0f;
    const float magic = MOERT_EXPF_MAGIC;
    int32_t mb;
    memcpy(&mb, &magic, 4);
    const v16i pow2_bits = (((v16i)t - mb) + 127) << 23;
    return v16_select(small, v16_set1(0.0f), p * (v16f)pow2_bits);
}

/* fma lane by lane: the vector instruction in the clones that have FMA, the exact libm
 * fmaf elsewhere; the same bits either way. */
static inline __attribute__((always_inline)) v16f v16_fma(v16f a, v16f b, v16f c) {
    float la[16], lb[16], lc[16];
    v16_store(la, a), v16_store(lb, b), v16_store(lc, c);
    for (int j = 0; j < 16; j++) la[j] = __builtin_fmaf(la[j], lb[j], lc[j]);
    return v16_load(la);
}

/* moert_exp2_stat lane by lane (2^y, y <= 0, within 2e-7: for sums). */
static inline __attribute__((always_inline)) v16f v16_exp2_stat(v16f y) {
    y = v16_select(y > -127.0f, y, v16_set1(-127.0f));
    const v16f t = y + MOERT_EXP2_STAT_MAGIC;
    const v16f n = t - MOERT_EXP2_STAT_MAGIC;
    const v16f f = y - n;
    v16f p = v16_set1(MOERT_EXP2_STAT_C6);
    p = v16_fma(p, f, v16_set1(MOERT_EXP2_STAT_C5));
    p = v16_fma(p, f, v16_set1(MOERT_EXP2_STAT_C4));
    p = v16_fma(p, f, v16_set1(MOERT_EXP2_STAT_C3));
    p = v16_fma(p, f, v16_set1(MOERT_EXP2_STAT_C2));
    p = v16_fma(p, f, v16_set1(MOERT_EXP2_STAT_C1));
    p = v16_fma(p, f, v16_set1(MOERT_EXP2_STAT_C0));
    return p * (v16f)((v16i)t << 23); /* the magic's own bits above the low 9 shift out */
}

#endif /* MOERT_ROUTER_VEC16_H */

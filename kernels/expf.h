/* Internal: the exponential shared by every kernel variant.
 *
 * The scalar reference and each vector variant evaluate exactly this sequence of IEEE
 * single-precision operations (no FMA; the library is built with -ffp-contract=off), so
 * a key or weight computed through it is bit-identical in every variant. Accuracy is
 * about 1 ulp over the range the kernels use.
 *
 * exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in two steps (Cody-Waite),
 * exp(r) by the degree-7 polynomial of Cephes' expf, evaluated by Estrin's scheme. Inputs below -87.3365 (where the
 * result would be subnormal), and -inf, give 0; inputs above 88 are clamped to 88. */
#ifndef MOERT_KERNELS_EXPF_H
#define MOERT_KERNELS_EXPF_H

#include <stdint.h>
#include <string.h>

#define MOERT_EXPF_X_MIN (-87.3365478515625f)
#define MOERT_EXPF_X_MAX 88.0f
#define MOERT_EXPF_LOG2E 1.44269504088896341f
#define MOERT_EXPF_MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer */
#define MOERT_EXPF_LN2_HI 0.693359375f
#define MOERT_EXPF_LN2_LO (-2.12194440e-4f)
#define MOERT_EXPF_P0 1.9875691500e-4f
#define MOERT_EXPF_P1 1.3981999507e-3f
#define MOERT_EXPF_P2 8.3334519073e-3f
#define MOERT_EXPF_P3 4.1665795894e-2f
#define MOERT_EXPF_P4 1.6666665459e-1f
#define MOERT_EXPF_P5 5.0000001201e-1f

static inline float moert_expf(float x) {
    if (!(x >= MOERT_EXPF_X_MIN)) return 0.0f;
    if (x > MOERT_EXPF_X_MAX) x = MOERT_EXPF_X_MAX;
    float t = x * MOERT_EXPF_LOG2E + MOERT_EXPF_MAGIC;
    float n = t - MOERT_EXPF_MAGIC;
    float r = x - n * MOERT_EXPF_LN2_HI;
    r = r - n * MOERT_EXPF_LN2_LO;
    /* Estrin's scheme: the same polynomial as Horner's, with a shorter dependency chain. */
    float r2 = r * r;
    float r4 = r2 * r2;
    float a = MOERT_EXPF_P0 * r + MOERT_EXPF_P1;
    float b = MOERT_EXPF_P2 * r + MOERT_EXPF_P3;
    float c = MOERT_EXPF_P4 * r + MOERT_EXPF_P5;
    float p = (a * r4 + b * r2) + c;
    p = p * r2 + r + 1.0f;
    /* 2^n from the integer in t's low mantissa bits. */
    uint32_t tb, mb;
    memcpy(&tb, &t, 4);
    float magic = MOERT_EXPF_MAGIC;
    memcpy(&mb, &magic, 4);
    uint32_t pow2_bits = (uint32_t)((int32_t)(tb - mb) + 127) << 23;
    float pow2;
    memcpy(&pow2, &pow2_bits, 4);
    return p * pow2;
}

/* 2^y for statistics (probability sums, logsumexp), y <= 0, as exp(x - max) with
 * y = (x - max) log2(e): half the operations of moert_expf, and within 2e-7 relative of
 * the exact value. Not bit-identical across variants (FMA where the ISA has it).
 *
 * y = n + f with n = round(y) (by the 1.5 * 2^23 addition, whose low bits then hold
 * n + 127: the biased exponent of 2^n), |f| <= 1/2; 2^f by a degree-6 polynomial fitted by
 * the Remez exchange for relative error (1.9e-9 on [-1/2, 1/2]). y is first raised to
 * -127, where the exponent field is 0 and the result exactly 0 (as for -inf). */
#define MOERT_EXP2_STAT_MAGIC 12583039.0f /* 1.5 * 2^23 + 127 */
#define MOERT_EXP2_STAT_C0 1.0000000005541665f /* 1.0f once rounded: 2^0 is exactly 1 */
#define MOERT_EXP2_STAT_C1 0.6931472057372673f
#define MOERT_EXP2_STAT_C2 0.24022646890634405f
#define MOERT_EXP2_STAT_C3 0.055503287769656406f
#define MOERT_EXP2_STAT_C4 0.009618488957102513f
#define MOERT_EXP2_STAT_C5 0.0013399931219124377f
#define MOERT_EXP2_STAT_C6 0.00015345812004000534f

static inline float moert_exp2_stat(float y) {
    y = y > -127.0f ? y : -127.0f; /* and -inf */
    const float t = y + MOERT_EXP2_STAT_MAGIC;
    const float n = t - MOERT_EXP2_STAT_MAGIC;
    const float f = y - n;
    float p = MOERT_EXP2_STAT_C6;
    p = __builtin_fmaf(p, f, MOERT_EXP2_STAT_C5);
    p = __builtin_fmaf(p, f, MOERT_EXP2_STAT_C4);
    p = __builtin_fmaf(p, f, MOERT_EXP2_STAT_C3);
    p = __builtin_fmaf(p, f, MOERT_EXP2_STAT_C2);
    p = __builtin_fmaf(p, f, MOERT_EXP2_STAT_C1);
    p = __builtin_fmaf(p, f, MOERT_EXP2_STAT_C0);
    uint32_t bits;
    memcpy(&bits, &t, 4);
    bits <<= 23; /* the magic's own bits above the low 9 shift out */
    float pow2;
    memcpy(&pow2, &bits, 4);
    return p * pow2;
}

/* exp(x - max) as expert choice's softmax takes it: 2^((x - max) log2 e) by
 * moert_exp2_stat, the two IEEE operations the vector variants do lane by lane, so that
 * every variant gets the same bits. Not fma(x, log2 e, -max log2 e): the rounding of
 * max log2 e shifts the whole row, by 2^128 and more once |max| passes 1.5e9. */
static inline float moert_exp_shifted(float x, float max) { return moert_exp2_stat((x - max) * MOERT_EXPF_LOG2E); }

/* The logistic function, stable on both sides: e = exp(-|x|) never overflows. */
static inline float moert_sigmoidf(float x) {
    float e = moert_expf(-__builtin_fabsf(x));
    float d = 1.0f + e;
    return x >= 0.0f ? 1.0f / d : e / d;
}

#endif /* MOERT_KERNELS_EXPF_H */

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

/* The logistic function, stable on both sides: e = exp(-|x|) never overflows. */
static inline float moert_sigmoidf(float x) {
    float e = moert_expf(-__builtin_fabsf(x));
    float d = 1.0f + e;
    return x >= 0.0f ? 1.0f / d : e / d;
}

#endif /* MOERT_KERNELS_EXPF_H */

/* The counter-based noise of noisy (Shazeer et al., "Outrageously Large Neural Networks:
 * The Sparsely-Gated Mixture-of-Experts Layer", 2017) and Gumbel top-k selection (Jang et
 * al., "Categorical Reparameterization with Gumbel-Softmax", 2017). See noise.h. */
#include "kernels/noise.h"

#include <math.h>
#include <string.h>

uint64_t noise_token_key(uint64_t seed, uint64_t token) { return noise_token_key_of(noise_seed_state(seed), token); }

/* Chris Wellons' lowbias32: a 32-bit mixer of full avalanche, in 32-bit multiplies that
 * every vector ISA has. Both rounds are needed: with one, counters whose distance d makes
 * d 0x9E3779B9 nearly 0 mod 2^32 (d = 9, 93, 267, ...) get nearly equal inputs and dependent
 * uniforms (bench/README.md). */
static inline uint32_t lowbias32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

/* Counter c's 23 random bits under a token's key: the token's 64-bit key is already
 * SplitMix64's output, and for a token (key_lo ^ c 0x9E3779B9) + key_hi is one-to-one in c. */
static inline uint32_t bits_of(uint32_t key_lo, uint32_t key_hi, uint32_t c) {
    return lowbias32((key_lo ^ (c * 0x9E3779B9u)) + key_hi) >> 9;
}

/* 23 bits n, centred: (n + 1/2) 2^-23, in [2^-24, 1 - 2^-24], exactly (one rounding of an
 * exact value). */
static inline float uniform_of_bits(uint32_t n) { return __builtin_fmaf((float)n, 0x1.0p-23f, 0x1.0p-24f); }

float noise_uniform(uint64_t key, uint32_t c) {
    return uniform_of_bits(bits_of((uint32_t)key, (uint32_t)(key >> 32), c));
}

/* k ln x for positive normal x, k = 1 or -2 (a power of two, so the factor folds into the
 * constants exactly): x = 2^e m, m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s) with
 * s = (m - 1) / (m + 1), |s| < 0.172: four odd terms of the series (the next is below 3e-8:
 * noise needs no more). */
static inline float scaled_log(float x, float k) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    int32_t e = (int32_t)(bits >> 23) - 127;
    uint32_t mbits = (bits & 0x007FFFFFu) | 0x3F800000u;
    float m;
    memcpy(&m, &mbits, 4);
    const int big = m > 1.41421356f;
    m = big ? m * 0.5f : m;
    e += big;
    const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float p = 2.0f * k / 7.0f;
    p = __builtin_fmaf(p, s2, 2.0f * k / 5.0f);
    p = __builtin_fmaf(p, s2, 2.0f * k / 3.0f);
    p = __builtin_fmaf(p, s2, 2.0f * k);
    return __builtin_fmaf(s, p, (float)e * (k * 0.693147181f));
}

float noise_logf(float x) { return scaled_log(x, 1.0f); }

/* Box-Muller on the bits n1, n2: radius r = sqrt(-2 ln u1), angle 2 pi u2 = pi + a, a in
 * [-pi, pi], from the half angle b = a / 2 = pi u2 - pi / 2 (one fused step from n2): sin b
 * and cos b by polynomials (noise.h; errors below 5e-8 and 2.2e-7), then
 * -r cos a = 2 r sin^2 b - r and -r sin a = -2 r sin b cos b. */
static inline void normal_pair(uint32_t n1, uint32_t n2, float *z0, float *z1) {
    const float r = sqrtf(scaled_log(uniform_of_bits(n1), -2.0f));
    const float b = __builtin_fmaf((float)n2, NOISE_ANGLE_SCALE, NOISE_ANGLE_OFFSET), b2 = b * b;
    float s = NOISE_SIN_S3;
    s = __builtin_fmaf(s, b2, NOISE_SIN_S2);
    s = __builtin_fmaf(s, b2, NOISE_SIN_S1);
    s = __builtin_fmaf(s, b2, NOISE_SIN_S0);
    float c = NOISE_COS_C3;
    c = __builtin_fmaf(c, b2, NOISE_COS_C2);
    c = __builtin_fmaf(c, b2, NOISE_COS_C1);
    c = __builtin_fmaf(c, b2, NOISE_COS_C0);
    const float sin_b = __builtin_fmaf(b * b2, s, b), cos_b = __builtin_fmaf(b2, c, 1.0f);
    const float two_r_sin = (r + r) * sin_b;
    *z0 = __builtin_fmaf(two_r_sin, sin_b, -r);
    *z1 = -(two_r_sin * cos_b);
}

/* Written as plain loops without branches on the data, which the compiler vectorises in
 * each target clone (the operations per lane are the same in every clone). */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static void
noise_raw_clones(const noise_spec *spec, uint64_t token, size_t E, float *noise) {
    const uint64_t key = noise_token_key(spec->seed, token);
    const uint32_t lo = (uint32_t)key, hi = (uint32_t)(key >> 32);
    if (spec->kind == MOERT_NOISE_GUMBEL) {
        for (size_t e = 0; e < E; e++)
            noise[e] = -scaled_log(-scaled_log(uniform_of_bits(bits_of(lo, hi, (uint32_t)e)), 1.0f), 1.0f);
        return;
    }
    const size_t pairs = (E + 1) / 2;
    for (size_t p = 0; p < pairs; p++) {
        float z0, z1;
        normal_pair(bits_of(lo, hi, (uint32_t)(2 * p)), bits_of(lo, hi, (uint32_t)(2 * p + 1)), &z0, &z1);
        noise[2 * p] = z0, noise[2 * p + 1] = z1;
    }
}

void noise_raw(const noise_spec *spec, uint64_t token, size_t E, float *noise) { noise_raw_clones(spec, token, E, noise); }

void noise_row(const noise_spec *spec, uint64_t token, size_t E, float *noise, float *tmp) {
    noise_raw(spec, token, E, tmp);
    if (spec->kind == MOERT_NOISE_GUMBEL)
        memcpy(noise, tmp, E * sizeof(float));
    else if (spec->scales != NULL)
        for (size_t e = 0; e < E; e++) noise[e] = spec->scales[e] * tmp[e];
    else
        for (size_t e = 0; e < E; e++) noise[e] = spec->scale * tmp[e];
}

void noise_keys(const noise_spec *spec, uint64_t token, const float *x, size_t E, float *keys, float *tmp) {
    noise_raw(spec, token, E, tmp);
    if (spec->kind == MOERT_NOISE_GUMBEL)
        for (size_t e = 0; e < E; e++) keys[e] = x[e] + tmp[e];
    else if (spec->scales != NULL)
        for (size_t e = 0; e < E; e++) keys[e] = __builtin_fmaf(spec->scales[e], tmp[e], x[e]);
    else
        for (size_t e = 0; e < E; e++) keys[e] = __builtin_fmaf(spec->scale, tmp[e], x[e]);
}

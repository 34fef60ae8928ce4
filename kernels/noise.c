/* The counter-based noise of noisy (Shazeer et al., "Outrageously Large Neural Networks:
 * The Sparsely-Gated Mixture-of-Experts Layer", 2017) and Gumbel top-k selection (Jang et
 * al., "Categorical Reparameterization with Gumbel-Softmax", 2017). See noise.h. */
#include "kernels/noise.h"

#include <math.h>
#include <string.h>

uint64_t noise_token_key(uint64_t seed, uint64_t token) {
    uint64_t z = seed ^ 0x6A09E667F3BCC909ull;
    for (int round = 0; round < 2; round++) {
        z += 0x9E3779B97F4A7C15ull * (round == 0 ? 1 : token + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
    }
    return z;
}

/* Chris Wellons' lowbias32: a 32-bit mixer of full avalanche, in 32-bit multiplies that
 * every vector ISA has. */
static inline uint32_t lowbias32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

static inline float uniform_of(uint32_t key_lo, uint32_t key_hi, uint32_t c) {
    /* One mixing round: the token's 64-bit key is already SplitMix64's output, and for a
     * token (key_lo ^ c 0x9E3779B9) + key_hi is one-to-one in c. */
    const uint32_t h = lowbias32((key_lo ^ (c * 0x9E3779B9u)) + key_hi);
    /* 23 bits, centred: (n + 1/2) 2^-23 lies in [2^-24, 1 - 2^-24], exactly. */
    return ((float)(h >> 9) + 0.5f) * 0x1.0p-23f;
}

float noise_uniform(uint64_t key, uint32_t c) { return uniform_of((uint32_t)key, (uint32_t)(key >> 32), c); }

/* log(x) = e ln 2 + log(m), m in [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(s) with
 * s = (m - 1) / (m + 1), |s| < 0.172: four odd terms of the series (the next is below
 * 3e-8: noise needs no more). */
static inline float log_positive(float x) {
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
    float p = 1.0f / 7.0f;
    p = __builtin_fmaf(p, s2, 1.0f / 5.0f);
    p = __builtin_fmaf(p, s2, 1.0f / 3.0f);
    p = __builtin_fmaf(p, s2, 1.0f);
    return __builtin_fmaf(2.0f * s, p, (float)e * 0.693147181f);
}

float noise_logf(float x) { return log_positive(x); }

/* Box-Muller with the angle 2 pi u = pi + a, a = 2 pi (u - 1/2) in [-pi, pi], from the half
 * angle b = a / 2 in [-pi/2, pi/2]: sin b and cos b by their Taylor series to b^11 and b^10
 * (errors below 6e-8 and 5e-7), then sin a = 2 sin b cos b and cos a = 1 - 2 sin^2 b. */
static inline void normal_pair(float u1, float u2, float *n0, float *n1) {
    const float neg_r = -sqrtf(-2.0f * log_positive(u1));
    const float b = 3.14159265f * (u2 - 0.5f), b2 = b * b;
    float s = -1.0f / 39916800.0f; /* -1/11! */
    s = __builtin_fmaf(s, b2, 1.0f / 362880.0f);
    s = __builtin_fmaf(s, b2, -1.0f / 5040.0f);
    s = __builtin_fmaf(s, b2, 1.0f / 120.0f);
    s = __builtin_fmaf(s, b2, -1.0f / 6.0f);
    float c = -1.0f / 3628800.0f; /* -1/10! */
    c = __builtin_fmaf(c, b2, 1.0f / 40320.0f);
    c = __builtin_fmaf(c, b2, -1.0f / 720.0f);
    c = __builtin_fmaf(c, b2, 1.0f / 24.0f);
    c = __builtin_fmaf(c, b2, -0.5f);
    const float sin_b = __builtin_fmaf(b * b2, s, b), cos_b = __builtin_fmaf(b2, c, 1.0f);
    *n0 = neg_r * __builtin_fmaf(-2.0f * sin_b, sin_b, 1.0f); /* cos(pi + a) = -cos a */
    *n1 = neg_r * (2.0f * sin_b * cos_b);                   /* sin(pi + a) = -sin a */
}

/* Written as plain loops without branches on the data, which the compiler vectorises in
 * each target clone (the operations per lane are the same in every clone). */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static void
noise_row_clones(const noise_spec *spec, uint64_t token, size_t E, float *noise, float *tmp) {
    const uint64_t key = noise_token_key(spec->seed, token);
    const uint32_t lo = (uint32_t)key, hi = (uint32_t)(key >> 32);
    if (spec->kind == MOERT_NOISE_GUMBEL) {
        for (size_t e = 0; e < E; e++) {
            const float u = uniform_of(lo, hi, (uint32_t)e);
            noise[e] = -log_positive(-log_positive(u));
        }
        return;
    }
    const size_t pairs = (E + 1) / 2;
    for (size_t p = 0; p < pairs; p++) {
        float n0, n1;
        normal_pair(uniform_of(lo, hi, (uint32_t)(2 * p)), uniform_of(lo, hi, (uint32_t)(2 * p + 1)), &n0, &n1);
        tmp[2 * p] = n0, tmp[2 * p + 1] = n1;
    }
    if (spec->scales != NULL)
        for (size_t e = 0; e < E; e++) noise[e] = spec->scales[e] * tmp[e];
    else
        for (size_t e = 0; e < E; e++) noise[e] = spec->scale * tmp[e];
}

void noise_row(const noise_spec *spec, uint64_t token, size_t E, float *noise, float *tmp) {
    noise_row_clones(spec, token, E, noise, tmp);
}

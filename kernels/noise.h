/* Internal: the counter-based noise of noisy and Gumbel top-k selection.
 *
 * The noise of (token, expert) is a function of (seed, token, expert) alone: a hash, not
 * a stream, so that any split of the batch over threads, routing groups or ranks gives
 * every token the same noise. Everything is IEEE single precision in a fixed order, fused
 * multiply-adds only where written (fmaf; the library builds with -ffp-contract=off), so
 * the scalar build, the vectorised builds of the row function and the gate kernel's tiles
 * (which generate it lane by lane, kernels/topk_gate/vector_impl.h) give the same bits.
 * (On a CPU without FMA the row function's plain build calls libm's fmaf: slower, the
 * same bits.) */
#ifndef MOERT_KERNELS_NOISE_H
#define MOERT_KERNELS_NOISE_H

#include <stddef.h>
#include <stdint.h>

#include "moert/router.h"

/* What the noise of a batch is. */
typedef struct noise_spec {
    moert_noise kind;      /* MOERT_NOISE_NORMAL or MOERT_NOISE_GUMBEL */
    uint64_t seed;
    uint64_t token_offset; /* the batch's row t is token token_offset + t */
    float scale;           /* normal: every expert's scale when scales is NULL */
    const float *scales;   /* normal: [experts] per-expert scales, or NULL */
} noise_spec;

/* A token's 64-bit key: the seed and the token's index mixed (SplitMix64's finaliser),
 * in two steps, the first the seed's alone (noise_seed_state), which a caller keying many
 * tokens makes once. */
uint64_t noise_token_key(uint64_t seed, uint64_t token);

/* One SplitMix64 step: z + g, then its finaliser. Inline: the tiles key 16 tokens each. */
static inline uint64_t noise_splitmix_step(uint64_t z, uint64_t g) {
    z += g;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline uint64_t noise_seed_state(uint64_t seed) {
    return noise_splitmix_step(seed ^ 0x6A09E667F3BCC909ull, 0x9E3779B97F4A7C15ull);
}
static inline uint64_t noise_token_key_of(uint64_t seed_state, uint64_t token) {
    return noise_splitmix_step(seed_state, 0x9E3779B97F4A7C15ull * (token + 1));
}

/* The uniform in (0, 1) of counter c under a token's key: 23 bits, centred in their cell:
 * lowbias32((key_lo ^ c 0x9E3779B9) + key_hi), its top 23 bits n, (n + 1/2) 2^-23. */

/* Box-Muller's half angle from a counter's 23 bits n: b = pi (n + 1/2) 2^-23 - pi / 2, as
 * one fused multiply-add (shared by both builds, so the constants are the same floats). */
#define NOISE_ANGLE_SCALE (3.14159265f * 0x1.0p-23f)
#define NOISE_ANGLE_OFFSET (3.14159265f * 0x1.0p-24f - 1.57079633f)

/* sin b = b + b^3 S(b^2), cos b = 1 + b^2 C(b^2) on [-pi/2, pi/2]: S and C of degree 3,
 * interpolated at Chebyshev nodes (errors below 5e-8 and 2.2e-7; Taylor's series needs a
 * degree more for as much). */
#define NOISE_SIN_S0 (-1.666666567e-01f)
#define NOISE_SIN_S1 8.333242498e-03f
#define NOISE_SIN_S2 (-1.982273970e-04f)
#define NOISE_SIN_S3 2.634756356e-06f
#define NOISE_COS_C0 (-4.999999106e-01f)
#define NOISE_COS_C1 4.166566953e-02f
#define NOISE_COS_C2 (-1.386861084e-03f)
#define NOISE_COS_C3 2.347608643e-05f
float noise_uniform(uint64_t key, uint32_t c);

/* Natural log of a positive normal float, to about 2e-7 relative (the noise needs no
 * more). */
float noise_logf(float x);

/* The noise of experts [0, E) of token `token` (an absolute index: token_offset is not
 * added) into noise[0, E): scale_e x N(0, 1) (normal; Box-Muller on uniforms 2p and
 * 2p + 1 gives experts 2p and 2p + 1), or G = -log(-log(u_e)) (Gumbel). tmp: E + 2 floats. */
void noise_row(const noise_spec *spec, uint64_t token, size_t E, float *noise, float *tmp);

/* The same before the scale: N(0, 1) (or G) of experts [0, E) into noise[0, E + 1). */
void noise_raw(const noise_spec *spec, uint64_t token, size_t E, float *noise);

/* A row's selection keys: fma(scale_e, N, x[e]) (normal) or x[e] + G (Gumbel); -inf stays
 * -inf. tmp: E + 2 floats. */
void noise_keys(const noise_spec *spec, uint64_t token, const float *x, size_t E, float *keys, float *tmp);

#endif /* MOERT_KERNELS_NOISE_H */

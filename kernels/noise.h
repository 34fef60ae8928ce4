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

/* A token's 64-bit key: the seed and the token's index mixed (SplitMix64's finaliser). */
uint64_t noise_token_key(uint64_t seed, uint64_t token);

/* The uniform in (0, 1) of counter c under a token's key: 23 bits, centred in their cell:
 * lowbias32((key_lo ^ c 0x9E3779B9) + key_hi), its top 23 bits n, (n + 1/2) 2^-23. */
float noise_uniform(uint64_t key, uint32_t c);

/* Natural log of a positive normal float, to about 2e-7 relative (the noise needs no
 * more). */
float noise_logf(float x);

/* The noise of experts [0, E) of token `token` (an absolute index: token_offset is not
 * added) into noise[0, E): scale_e x N(0, 1) (normal; Box-Muller on uniforms 2p and
 * 2p + 1 gives experts 2p and 2p + 1), or G = -log(-log(u_e)) (Gumbel). tmp: E + 2 floats. */
void noise_row(const noise_spec *spec, uint64_t token, size_t E, float *noise, float *tmp);

#endif /* MOERT_KERNELS_NOISE_H */

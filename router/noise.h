/* Internal: the noise of noisy and Gumbel top-k selection, from a counter-based generator.
 *
 * The noise of (token, expert) is a function of (seed, token, expert) alone: a hash, not
 * a stream, so that any split of the batch over threads, routing groups or ranks gives
 * every token the same noise. Everything is IEEE single precision without FMA (the
 * library builds with -ffp-contract=off) in a fixed order, so the scalar and vectorised
 * builds of the row function give the same bits. */
#ifndef MOERT_ROUTER_NOISE_H
#define MOERT_ROUTER_NOISE_H

#include <stddef.h>
#include <stdint.h>

#include "moert/router.h"

/* A token's 64-bit key: the seed and the token's index mixed (SplitMix64's finaliser). */
uint64_t noise_token_key(uint64_t seed, uint64_t token);

/* The uniform in (0, 1) of counter c under a token's key: 24 bits, centred in their cell. */
float noise_uniform(uint64_t key, uint32_t c);

/* Natural log of a positive normal float, to about 2e-7 relative (the noise needs no
 * more). */
float noise_logf(float x);

/* Keys of one row: x[e] + scale_e * N(0, 1) (normal; Box-Muller on uniforms 2p and
 * 2p + 1 gives experts 2p and 2p + 1), or x[e] + G with G = -log(-log(u_e)) (Gumbel: the
 * temperature does not change the selection; it divides the keys for noisy weights only).
 * -inf stays -inf. tmp: E + 2 floats. */
void noise_keys_row(const moert_router_config *c, uint64_t token, const float *x, size_t E, float *keys,
                    float *tmp);

/* The same, one noise value per expert, without the logits (tests). */
void noise_values_row(const moert_router_config *c, uint64_t token, size_t E, float *noise, float *tmp);

#endif /* MOERT_ROUTER_NOISE_H */

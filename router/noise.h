/* Internal: the noise of noisy and Gumbel top-k selection as the router configures it; the
 * generator itself is kernels/noise.c. */
#ifndef MOERT_ROUTER_NOISE_H
#define MOERT_ROUTER_NOISE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/noise.h"
#include "moert/router.h"

/* The noise of the router's configuration (noise, seed, token_offset, scales). */
noise_spec noise_spec_of(const moert_router_config *c);

/* Keys of one row: fma(scale_e, N(0, 1), x[e]) (normal; Box-Muller on uniforms 2p and
 * 2p + 1 gives experts 2p and 2p + 1), or x[e] + G with G = -log(-log(u_e)) (Gumbel: the
 * temperature does not change the selection; it divides the keys for noisy weights only).
 * -inf stays -inf. tmp: E + 2 floats. */
void noise_keys_row(const moert_router_config *c, uint64_t token, const float *x, size_t E, float *keys,
                    float *tmp);

/* The same, one noise value per expert, without the logits (tests). */
void noise_values_row(const moert_router_config *c, uint64_t token, size_t E, float *noise, float *tmp);

#endif /* MOERT_ROUTER_NOISE_H */

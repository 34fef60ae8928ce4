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

/* A row's noise under the router's configuration (tests): noise_row of noise_spec_of(c). */
void noise_values_row(const moert_router_config *c, uint64_t token, size_t E, float *noise, float *tmp);

#endif /* MOERT_ROUTER_NOISE_H */

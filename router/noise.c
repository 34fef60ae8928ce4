/* The router's view of the counter-based noise (kernels/noise.c): its configuration's. */
#include "router/noise.h"

noise_spec noise_spec_of(const moert_router_config *c) {
    return (noise_spec){c->noise, c->seed, c->token_offset, c->noise_scale, c->noise_scales};
}

void noise_values_row(const moert_router_config *c, uint64_t token, size_t E, float *noise, float *tmp) {
    const noise_spec spec = noise_spec_of(c);
    noise_row(&spec, token, E, noise, tmp);
}

/* Load balancers: the auxiliary-loss-free bias, ReMoE's L1 controller, and a threshold
 * controller for ReLU routing at inference. */
#include <math.h>
#include <stdlib.h>

#include "common/error.h"
#include "moert/balancer.h"

struct moert_bias_balancer {
    size_t experts;
    float gamma;
    float *bias;
};

moert_status moert_bias_balancer_create(size_t experts, float gamma, moert_bias_balancer **out) {
    MOERT_RETURN_ERROR_IF(out == NULL, MOERT_EINVAL, "bias balancer: out is NULL");
    *out = NULL;
    MOERT_RETURN_ERROR_IF(experts == 0, MOERT_EINVAL, "bias balancer: experts=0");
    if (gamma == 0.0f) gamma = 1e-3f;
    MOERT_RETURN_ERROR_IF(!(gamma > 0.0f) || !isfinite(gamma), MOERT_EINVAL,
                          "bias balancer: gamma=%g must be finite and positive", (double)gamma);
    moert_bias_balancer *b = calloc(1, sizeof *b);
    float *bias = calloc(experts, sizeof *bias);
    if (b == NULL || bias == NULL) {
        free(b), free(bias);
        return moert_set_error(MOERT_ENOMEM, "bias balancer: cannot allocate %zu bytes", experts * sizeof *bias);
    }
    b->experts = experts, b->gamma = gamma, b->bias = bias;
    *out = b;
    return MOERT_OK;
}

void moert_bias_balancer_destroy(moert_bias_balancer *b) {
    if (b == NULL) return;
    free(b->bias);
    free(b);
}

moert_status moert_bias_balancer_update(moert_bias_balancer *b, const int64_t *loads) {
    MOERT_RETURN_ERROR_IF(b == NULL || loads == NULL, MOERT_EINVAL, "bias balancer: NULL argument");
    double total = 0.0;
    for (size_t e = 0; e < b->experts; e++) {
        MOERT_RETURN_ERROR_IF(loads[e] < 0, MOERT_EINVAL, "bias balancer: loads[%zu]=%lld is negative", e,
                              (long long)loads[e]);
        total += (double)loads[e];
    }
    const double mean = total / (double)b->experts;
    for (size_t e = 0; e < b->experts; e++) {
        const double error = mean - (double)loads[e];
        /* Over-loaded experts go down, under-loaded ones up, by gamma either way. */
        b->bias[e] += error > 0.0 ? b->gamma : error < 0.0 ? -b->gamma : 0.0f;
    }
    return MOERT_OK;
}

const float *moert_bias_balancer_bias(const moert_bias_balancer *b) { return b ? b->bias : NULL; }

moert_status moert_l1_controller_init(moert_l1_controller *c, int k, size_t experts) {
    MOERT_RETURN_ERROR_IF(c == NULL, MOERT_EINVAL, "L1 controller: NULL");
    MOERT_RETURN_ERROR_IF(experts == 0 || k < 1 || (size_t)k > experts, MOERT_EINVAL,
                          "L1 controller: k=%d must be in 1..experts=%zu", k, experts);
    c->coefficient = 1e-8;
    c->alpha = 1.2;
    c->target_sparsity = 1.0 - (double)k / (double)experts;
    return MOERT_OK;
}

moert_status moert_l1_controller_update(moert_l1_controller *c, double sparsity) {
    MOERT_RETURN_ERROR_IF(c == NULL, MOERT_EINVAL, "L1 controller: NULL");
    MOERT_RETURN_ERROR_IF(!(sparsity >= 0.0 && sparsity <= 1.0), MOERT_EINVAL,
                          "L1 controller: sparsity=%g is outside [0, 1]", sparsity);
    MOERT_RETURN_ERROR_IF(!(c->alpha > 1.0) || !isfinite(c->alpha), MOERT_EINVAL,
                          "L1 controller: alpha=%g must be finite and above 1", c->alpha);
    /* Too dense: penalise more; sparse enough: penalise less. */
    if (sparsity < c->target_sparsity)
        c->coefficient *= c->alpha;
    else
        c->coefficient /= c->alpha;
    return MOERT_OK;
}

moert_status moert_threshold_controller_init(moert_threshold_controller *c, double target_sparsity,
                                             double threshold, double gain) {
    MOERT_RETURN_ERROR_IF(c == NULL, MOERT_EINVAL, "threshold controller: NULL");
    MOERT_RETURN_ERROR_IF(!(target_sparsity >= 0.0 && target_sparsity <= 1.0), MOERT_EINVAL,
                          "threshold controller: target sparsity %g is outside [0, 1]", target_sparsity);
    MOERT_RETURN_ERROR_IF(!isfinite(threshold), MOERT_EINVAL, "threshold controller: threshold %g is not finite",
                          threshold);
    if (gain == 0.0) gain = 1.0;
    MOERT_RETURN_ERROR_IF(!(gain > 0.0) || !isfinite(gain), MOERT_EINVAL,
                          "threshold controller: gain %g must be finite and positive", gain);
    c->target_sparsity = target_sparsity, c->threshold = threshold, c->gain = gain;
    return MOERT_OK;
}

moert_status moert_threshold_controller_update(moert_threshold_controller *c, double sparsity) {
    MOERT_RETURN_ERROR_IF(c == NULL, MOERT_EINVAL, "threshold controller: NULL");
    MOERT_RETURN_ERROR_IF(!(sparsity >= 0.0 && sparsity <= 1.0), MOERT_EINVAL,
                          "threshold controller: sparsity=%g is outside [0, 1]", sparsity);
    c->threshold += c->gain * (c->target_sparsity - sparsity);
    return MOERT_OK;
}

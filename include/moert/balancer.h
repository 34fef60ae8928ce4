/* moert: load balancers for experiments, small stateful objects updated once per step.
 *
 * - The auxiliary-loss-free bias (Wang et al., "Auxiliary-Loss-Free Load Balancing
 *   Strategy for Mixture-of-Experts", 2024; DeepSeek-V3): a per-expert bias used only for
 *   selection, b_e += gamma * sign(mean load - load_e) after each step.
 * - ReMoE's L1-coefficient controller (Wang et al. 2024): the coefficient of the L1
 *   penalty on ReLU gates is multiplied by alpha when the sparsity is under its target
 *   (1 - k/E by default), divided by alpha otherwise.
 * - A threshold controller for ReLU routing at inference, where there is no penalty to
 *   train: the threshold moves by gain x (target - sparsity) each step, so it rises while
 *   too many experts are active and falls while too few are. */
#ifndef MOERT_BALANCER_H
#define MOERT_BALANCER_H

#include <stddef.h>
#include <stdint.h>

#include "moert/export.h"
#include "moert/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- auxiliary-loss-free bias ---- */
typedef struct moert_bias_balancer moert_bias_balancer;

/* gamma > 0, 0 = the default 1e-3. The bias starts at zero. */
MOERT_API moert_status moert_bias_balancer_create(size_t experts, float gamma, moert_bias_balancer **b);
MOERT_API void moert_bias_balancer_destroy(moert_bias_balancer *b);
/* One step: loads[experts] are the tokens each expert received. */
MOERT_API moert_status moert_bias_balancer_update(moert_bias_balancer *b, const int64_t *loads);
/* The bias [experts], owned by the balancer, for moert_router_config.bias. */
MOERT_API const float *moert_bias_balancer_bias(const moert_bias_balancer *b);

/* ---- ReMoE L1-coefficient controller ---- */
typedef struct moert_l1_controller {
    double coefficient;     /* starts at 1e-8 */
    double alpha;           /* > 1, default 1.2 */
    double target_sparsity; /* default 1 - k/E */
} moert_l1_controller;

/* Defaults for k experts per token on average out of `experts`. */
MOERT_API moert_status moert_l1_controller_init(moert_l1_controller *c, int k, size_t experts);
/* One step given the sparsity of the step's routing (moert_plan_stats.sparsity). */
MOERT_API moert_status moert_l1_controller_update(moert_l1_controller *c, double sparsity);

/* ---- ReLU threshold controller ---- */
typedef struct moert_threshold_controller {
    double threshold;       /* the current relu_threshold */
    double gain;            /* threshold change per unit of sparsity error, default 1 */
    double target_sparsity;
} moert_threshold_controller;

MOERT_API moert_status moert_threshold_controller_init(moert_threshold_controller *c, double target_sparsity,
                                                       double threshold, double gain);
MOERT_API moert_status moert_threshold_controller_update(moert_threshold_controller *c, double sparsity);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_BALANCER_H */

/* ReLU routing (ReMoE: Wang et al., "ReMoE: Fully Differentiable Mixture-of-Experts with
 * ReLU Routing", 2024): weight relu(logit - threshold), and a token goes to every expert
 * whose weight is positive. The number of experts per token varies. With score softpick
 * the weights are the softpick scores instead (softpick's rectified form: an expert whose
 * score is 0 is not used). Each row by the variant's ReLU row kernel, which compacts the
 * active experts and sorts them by weight, in router_route_rows's one pass. */
#include <stdint.h>

#include "router/internal.h"
#include "router/scores.h"

typedef struct relu_row_context {
    float threshold;
    int softpick;
    topk_relu_row_fn relu_row;
} relu_row_context;

static size_t relu_row(const void *context, const float *x, size_t E, size_t t, float max, int32_t *ids,
                       float *weights, float *scratch) {
    (void)t, (void)max;
    const relu_row_context *c = context;
    size_t n = c->relu_row(x, E, c->threshold, ids, weights, scratch);
    if (c->softpick && n > 0) {
        /* The experts with e^x > 1 (x > 0: what relu found), weighted by their scores; by x
         * the scores do not increase, so the equal ones go in id order, and any that round
         * to 0 (at the end) are not used. */
        scores_softpick_weights(x, E, ids, (int)n, weights);
        topk_order_equal_weights(ids, weights, (int)n);
        while (n > 0 && weights[n - 1] == 0.0f) n--;
    }
    return n;
}

moert_status router_relu(const moert_router_config *c, const float *logits, size_t tokens, size_t experts,
                         moert_plan *plan, router_workspace *ws) {
    const relu_row_context context = {c->relu_threshold, c->score == MOERT_SCORE_SOFTPICK,
                                      topk_variant_for(c->isa)->relu_row};
    return router_route_rows(c, logits, tokens, experts, relu_row, &context, TOPK_RELU_SCRATCH(experts), plan, ws);
}

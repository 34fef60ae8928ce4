/* ReLU routing (ReMoE: Wang et al., "ReMoE: Fully Differentiable Mixture-of-Experts with
 * ReLU Routing", 2024): weight relu(logit - threshold), and a token goes to every expert
 * whose weight is positive. The number of experts per token varies. */
#include <omp.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "router/internal.h"

moert_status router_relu(const moert_router_config *c, const float *logits, size_t tokens,
                         size_t experts, moert_plan *plan, router_workspace *ws) {
    const size_t T = tokens, E = experts;
    const int threads = router_threads(c->threads);
    const float threshold = c->relu_threshold;

    /* The gate (top-1) checks the logits and yields the softmax sums and logsumexp for the
     * statistics, in the same pass. */
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, T * (sizeof(int32_t) + sizeof(float)) + 64));
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, T, 0, E, 0, threads));
    moert_topk_gate_params p = moert_topk_gate_params_default();
    p.k = 1;
    p.threads = c->threads;
    p.isa = c->isa;
    const moert_topk_gate_output check = {ws->bytes, (float *)((int32_t *)ws->bytes + T), plan->prob_sums,
                                          plan->logsumexp};
    MOERT_FORWARD_IF_ERROR(moert_topk_gate(&p, logits, T, E, &check));

    /* Pass 1: the experts above the threshold, per token; then the offsets. */
    plan->token_offsets[0] = 0;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (size_t t = 0; t < T; t++) {
        const float *x = logits + t * E;
        int64_t n = 0;
        for (size_t e = 0; e < E; e++) n += x[e] - threshold > 0.0f;
        plan->token_offsets[t + 1] = n;
    }
    for (size_t t = 0; t < T; t++) plan->token_offsets[t + 1] += plan->token_offsets[t];
    const size_t entries = (size_t)plan->token_offsets[T];
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, T, entries, E, entries, threads));

    /* Pass 2: each token's entries by descending weight, ties to the lower id. */
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (size_t t = 0; t < T; t++) {
        const float *x = logits + t * E;
        int32_t *ids = plan->expert_ids + plan->token_offsets[t];
        float *w = plan->weights + plan->token_offsets[t];
        int64_t n = 0;
        for (size_t e = 0; e < E; e++) {
            const float weight = x[e] - threshold;
            if (!(weight > 0.0f)) continue;
            int64_t j = n++;
            while (j > 0 && w[j - 1] < weight) {
                w[j] = w[j - 1];
                ids[j] = ids[j - 1];
                j--;
            }
            w[j] = weight;
            ids[j] = (int32_t)e;
        }
    }
    plan->tokens = T, plan->experts = E, plan->entries = entries;
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, threads, 0, 0));
    memcpy(plan->expert_routed, plan->expert_counts, E * sizeof(int64_t));
    plan->capacity = 0;
    plan_compute_stats(plan, plan->prob_sums, plan->logsumexp);
    return MOERT_OK;
}

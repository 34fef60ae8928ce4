/* Token choice: each token's top k by the fused gate kernel (group-limited selection
 * included), then capacity and dropping, then the expert-major order and statistics. */
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "router/internal.h"

moert_status router_token_choice(const moert_router_config *c, const float *logits, size_t tokens,
                                 size_t experts, moert_plan *plan, router_workspace *ws) {
    const size_t k = (size_t)c->k;
    const int threads = router_threads(c->threads);
    size_t entries;
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(tokens, k, &entries), MOERT_EOVERFLOW,
                          "tokens=%zu x k=%zu overflows size_t", tokens, k);
    int64_t capacity;
    MOERT_FORWARD_IF_ERROR(moert_router_capacity(c, experts, tokens, &capacity));
    const int pad = c->pad_to_capacity && capacity > 0;
    size_t slots = entries;
    if (pad) MOERT_RETURN_ERROR_IF(moert_mul_overflows((size_t)capacity, experts, &slots), MOERT_EOVERFLOW,
                                   "capacity=%lld x experts=%zu overflows size_t", (long long)capacity, experts);
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, tokens, entries, experts, slots > entries ? slots : entries, threads));

    const moert_topk_gate_params params = router_gate_params(c);
    const moert_topk_gate_output out = {plan->expert_ids, plan->weights, plan->prob_sums, plan->logsumexp};
    MOERT_FORWARD_IF_ERROR(moert_isa_check(params.isa));
    MOERT_FORWARD_IF_ERROR(
        topk_gate_run_with(topk_variant_for(params.isa), &params, logits, tokens, experts, &out, NULL, NULL, &ws->gate));

    plan->tokens = tokens, plan->experts = experts, plan->entries = entries;
    for (size_t t = 0; t <= tokens; t++) plan->token_offsets[t] = (int64_t)(t * k);
    if (capacity > 0) {
        MOERT_FORWARD_IF_ERROR(router_apply_capacity(plan, capacity, c->drop_policy, threads, ws));
    }
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, threads, capacity, pad));
    if (capacity == 0) memcpy(plan->expert_routed, plan->expert_counts, experts * sizeof(int64_t));
    plan_compute_stats(plan, plan->prob_sums, plan->logsumexp);
    return MOERT_OK;
}

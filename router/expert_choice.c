/* Expert choice (Zhou et al., "Mixture-of-Experts with Expert Choice Routing", 2022): each
 * expert takes the C tokens with the highest softmax probability for it.
 *
 * The probabilities need the whole tokens x experts matrix (this policy is the one that
 * does). It is transposed so each expert's column is contiguous, each column's top C is
 * found by a linear-time selection (no column is sorted), in parallel over experts, and
 * the token-major plan is assembled from the marks. */
#include <omp.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "kernels/topk_gate/internal.h"
#include "router/internal.h"

/* out[e * T + t] = in[t * E + e], in blocks that stay in cache. */
static void transpose(const float *in, size_t T, size_t E, float *out, int threads) {
    enum { B = 32 };
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (size_t t0 = 0; t0 < T; t0 += B)
        for (size_t e0 = 0; e0 < E; e0 += B)
            for (size_t t = t0; t < t0 + B && t < T; t++)
                for (size_t e = e0; e < e0 + B && e < E; e++) out[e * T + t] = in[t * E + e];
}

moert_status router_expert_choice(const moert_router_config *c, const float *logits, size_t tokens,
                                  size_t experts, moert_plan *plan, router_workspace *ws) {
    const size_t T = tokens, E = experts;
    int threads = router_threads(c->threads);
    int64_t capacity;
    MOERT_FORWARD_IF_ERROR(moert_router_capacity(c, E, T, &capacity));
    MOERT_RETURN_ERROR_IF(capacity == 0 && T > 0, MOERT_EINVAL,
                          "expert-choice capacity rounds to 0: tokens=%zu x capacity_factor=%g / experts=%zu "
                          "< 0.5",
                          T, (double)c->capacity_factor, E);
    size_t cells, entries;
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(T, E, &cells), MOERT_EOVERFLOW, "tokens x experts overflows");
    MOERT_RETURN_ERROR_IF(moert_mul_overflows((size_t)capacity, E, &entries), MOERT_EOVERFLOW,
                          "capacity x experts overflows");

    /* Workspace: probabilities [T][E], their transpose [E][T], marks [E][T], and per thread
     * the selection's scratch. */
    const size_t select_bytes = ROUTER_SELECT_SCRATCH(T) + 64;
    const size_t bytes = 2 * cells * sizeof(float) + cells + (size_t)threads * select_bytes + 64;
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, bytes));
    float *probs = ws->bytes;
    float *columns = probs + cells;
    uint8_t *chosen = (uint8_t *)(columns + cells);
    unsigned char *select_scratch = chosen + cells;
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, T, entries, E, entries, threads));

    MOERT_FORWARD_IF_ERROR(topk_softmax_rows(c->isa, logits, T, E, probs, plan->logsumexp, c->threads));
    transpose(probs, T, E, columns, threads);

    int sel_threads = (size_t)threads > E ? (int)E : threads;
#pragma omp parallel num_threads(sel_threads) if (sel_threads > 1)
    {
        void *scratch = select_scratch + (size_t)omp_get_thread_num() * select_bytes;
#pragma omp for schedule(dynamic, 1)
        for (size_t e = 0; e < E; e++) {
            router_select_largest(columns + e * T, T, 1, (size_t)capacity, chosen + e * T, 1, scratch);
            /* P_e for the auxiliary loss: the column's sum, in token order. */
            double sum = 0.0;
            for (size_t t = 0; t < T; t++) sum += columns[e * T + t];
            plan->prob_sums[e] = sum;
        }
    }

    /* Token-major: each token's experts by descending probability, ties to the lower id. */
    plan->token_offsets[0] = 0;
    for (size_t t = 0; t < T; t++) {
        int64_t n = 0;
        for (size_t e = 0; e < E; e++) n += chosen[e * T + t];
        plan->token_offsets[t + 1] = plan->token_offsets[t] + n;
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (size_t t = 0; t < T; t++) {
        int64_t n = 0;
        const int64_t first = plan->token_offsets[t];
        int32_t *ids = plan->expert_ids + first;
        float *w = plan->weights + first;
        for (size_t e = 0; e < E; e++) {
            if (!chosen[e * T + t]) continue;
            /* Insertion in place: experts arrive in ascending order, so an equal weight
             * stays behind the lower id. */
            const float p = probs[t * E + e];
            int64_t j = n++;
            while (j > 0 && w[j - 1] < p) {
                w[j] = w[j - 1];
                ids[j] = ids[j - 1];
                j--;
            }
            w[j] = p;
            ids[j] = (int32_t)e;
        }
    }
    plan->tokens = T, plan->experts = E, plan->entries = (size_t)plan->token_offsets[T];
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, threads, 0, 0));
    memcpy(plan->expert_routed, plan->expert_counts, E * sizeof(int64_t));
    plan->capacity = capacity;
    plan_compute_stats(plan, plan->prob_sums, plan->logsumexp);
    return MOERT_OK;
}

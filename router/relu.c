/* ReLU routing (ReMoE: Wang et al., "ReMoE: Fully Differentiable Mixture-of-Experts with
 * ReLU Routing", 2024): weight relu(logit - threshold), and a token goes to every expert
 * whose weight is positive. The number of experts per token varies.
 *
 * One pass over the logits: the gate (top-1, which also checks the logits and yields the
 * softmax sums and logsumexp for the statistics) runs block by block, and right after
 * each block, while its rows are in cache, the block's active experts are compacted with
 * the variant's vector compaction and each token's entries sorted by weight into the
 * thread's stage. The stages are then copied into the plan in token order. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "router/internal.h"

typedef struct relu_pass {
    const float *logits;
    size_t experts;
    float threshold, bound; /* bound: the least float above the threshold */
    topk_compact_fn compact;
    router_stage *stages;
    int64_t *counts; /* [tokens + 1]: counts[t + 1] = entries of token t */
    moert_status *failed; /* [threads] */
} relu_pass;

/* Tokens with up to this many entries are sorted by rank, without branches. */
#define RELU_RANK_SORT_MAX 32

/* Sorts one token's entries by descending weight, ties to the lower id; they arrive by
 * ascending id. The weights are positive, so their bit patterns order like the values:
 * the key (weight bits, then the id's complement) is distinct per entry, and an entry's
 * place is the number of keys above its own. That costs n^2 compares but no branch on
 * the data: with weights in random order an insertion sort mispredicts about once an
 * entry, which cost more than the compaction. Longer lists go by insertion. */
static void sort_token_entries(int32_t *ids, float *w, size_t n) {
    if (n <= RELU_RANK_SORT_MAX) {
        uint64_t key[RELU_RANK_SORT_MAX];
        for (size_t i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, &w[i], sizeof bits);
            key[i] = (uint64_t)bits << 32 | (uint32_t)~(uint32_t)ids[i];
        }
        for (size_t i = 0; i < n; i++) {
            size_t rank = 0;
            for (size_t j = 0; j < n; j++) rank += key[j] > key[i];
            uint32_t bits = (uint32_t)(key[i] >> 32);
            memcpy(&w[rank], &bits, sizeof bits);
            ids[rank] = (int32_t)~(uint32_t)key[i];
        }
        return;
    }
    for (size_t i = 1; i < n; i++) {
        const float weight = w[i];
        const int32_t id = ids[i];
        size_t j = i;
        for (; j > 0 && w[j - 1] < weight; j--) w[j] = w[j - 1], ids[j] = ids[j - 1];
        w[j] = weight, ids[j] = id;
    }
}

static int relu_block(void *context, int thread, size_t row_begin, size_t row_end) {
    relu_pass *pass = context;
    router_stage *stage = &pass->stages[thread];
    const size_t E = pass->experts;
    if (stage->first_token == SIZE_MAX) stage->first_token = row_begin;
    const moert_status st = router_stage_reserve(stage, (row_end - row_begin) * E);
    if (st != MOERT_OK) {
        pass->failed[thread] = st;
        return 1;
    }
    for (size_t t = row_begin; t < row_end; t++) {
        const float *x = pass->logits + t * E;
        int32_t *ids = stage->ids + stage->used;
        float *w = stage->weights + stage->used;
        const size_t n = pass->compact(x, E, pass->bound, ids);
        for (size_t i = 0; i < n; i++) w[i] = x[ids[i]] - pass->threshold;
        sort_token_entries(ids, w, n);
        pass->counts[t + 1] = (int64_t)n;
        stage->used += n;
    }
    return 0;
}

moert_status router_relu(const moert_router_config *c, const float *logits, size_t tokens,
                         size_t experts, moert_plan *plan, router_workspace *ws) {
    const size_t T = tokens, E = experts;
    const int threads = router_threads(c->threads);
    const float threshold = c->relu_threshold;

    MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, moert_round_up_64(T * (sizeof(int32_t) + sizeof(float))) +
                                                            (size_t)threads * sizeof(moert_status)));
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve_stages(ws, threads));
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, T, 0, E, 0, threads));
    moert_status *failed = (moert_status *)((unsigned char *)ws->bytes +
                                            moert_round_up_64(T * (sizeof(int32_t) + sizeof(float))));
    for (int i = 0; i < threads; i++) failed[i] = MOERT_OK;

    relu_pass pass = {
        .logits = logits,
        .experts = E,
        .threshold = threshold,
        .bound = nextafterf(threshold, INFINITY),
        .compact = topk_variant_for(c->isa)->compact,
        .stages = ws->stages,
        .counts = plan->token_offsets,
        .failed = failed,
    };
    moert_topk_gate_params p = moert_topk_gate_params_default();
    p.k = 1;
    p.threads = threads;
    p.isa = c->isa;
    const moert_topk_gate_output gate = {ws->bytes, (float *)((int32_t *)ws->bytes + T), plan->prob_sums,
                                         plan->logsumexp};
    MOERT_FORWARD_IF_ERROR(topk_gate_run_with(topk_variant_for(c->isa), &p, logits, T, E, &gate, relu_block, &pass));
    for (int i = 0; i < threads; i++)
        MOERT_RETURN_ERROR_IF(failed[i] != MOERT_OK, failed[i], "relu routing: cannot stage the entries of thread %d (%s)",
                              i, moert_strerror(failed[i]));

    /* Offsets, then each thread's stage copied to where its tokens start. */
    plan->token_offsets[0] = 0;
    for (size_t t = 0; t < T; t++) plan->token_offsets[t + 1] += plan->token_offsets[t];
    const size_t entries = (size_t)plan->token_offsets[T];
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, T, entries, E, entries, threads));
    for (int i = 0; i < threads; i++) {
        const router_stage *s = &ws->stages[i];
        if (s->used == 0) continue;
        const int64_t at = plan->token_offsets[s->first_token];
        memcpy(plan->expert_ids + at, s->ids, s->used * sizeof(int32_t));
        memcpy(plan->weights + at, s->weights, s->used * sizeof(float));
    }
    plan->tokens = T, plan->experts = E, plan->entries = entries;
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, threads, 0, 0));
    memcpy(plan->expert_routed, plan->expert_counts, E * sizeof(int64_t));
    plan->capacity = 0;
    plan_compute_stats(plan, plan->prob_sums, plan->logsumexp);
    return MOERT_OK;
}

/* Policies whose tokens get a varying number of experts, each decided from its own row
 * (ReLU routing, sparsemax, BatchTopK's threshold mode): one pass over the logits. The
 * gate (top-1, which also checks the logits and yields the softmax sums and logsumexp for
 * the statistics) runs block by block, and right after each block, while its rows are in
 * cache, the policy's row function writes each token's entries, by descending weight,
 * into the thread's stage. The stages are then copied into the plan in token order. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "router/internal.h"

typedef struct rows_pass {
    const float *logits;
    size_t experts;
    router_row_fn row;
    const void *row_context;
    const int32_t *top; /* [tokens]: the gate's top-1, each row's largest logit */
    float *scratch; /* [threads][scratch_floats] */
    size_t scratch_floats;
    router_stage *stages;
    int64_t *counts;      /* [tokens + 1]: counts[t + 1] = entries of token t */
    moert_status *failed; /* [threads] */
} rows_pass;

static int rows_block(void *context, int thread, size_t row_begin, size_t row_end) {
    rows_pass *pass = context;
    router_stage *stage = &pass->stages[thread];
    const size_t E = pass->experts;
    if (stage->first_token == SIZE_MAX) stage->first_token = row_begin;
    const moert_status st = router_stage_reserve(stage, (row_end - row_begin) * E);
    if (st != MOERT_OK) {
        pass->failed[thread] = st;
        return 1;
    }
    float *scratch = pass->scratch + (size_t)thread * pass->scratch_floats;
    for (size_t t = row_begin; t < row_end; t++) {
        const float *x = pass->logits + t * E;
        const size_t n = pass->row(pass->row_context, x, E, t, x[pass->top[t]], stage->ids + stage->used,
                                   stage->weights + stage->used, scratch);
        pass->counts[t + 1] = (int64_t)n;
        stage->used += n;
    }
    return 0;
}

moert_status router_route_rows(const moert_router_config *c, const float *logits, size_t tokens, size_t experts,
                               router_row_fn row, const void *row_context, size_t scratch_floats, moert_plan *plan,
                               router_workspace *ws) {
    const size_t T = tokens, E = experts;
    const int threads = router_threads(c->threads);

    /* The workspace: the gate's top-1 (each row's max), each thread's row scratch and status. */
    const size_t gate_bytes = moert_round_up_64(T * (sizeof(int32_t) + sizeof(float)));
    const size_t scratch_bytes = moert_round_up_64((size_t)threads * scratch_floats * sizeof(float));
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, gate_bytes + scratch_bytes + (size_t)threads * sizeof(moert_status)));
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve_stages(ws, threads));
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, T, 0, E, 0, threads));
    moert_status *failed = (moert_status *)((unsigned char *)ws->bytes + gate_bytes + scratch_bytes);
    for (int i = 0; i < threads; i++) failed[i] = MOERT_OK;

    rows_pass pass = {
        .logits = logits,
        .experts = E,
        .row = row,
        .row_context = row_context,
        .top = ws->bytes,
        .scratch = (float *)((unsigned char *)ws->bytes + gate_bytes),
        .scratch_floats = scratch_floats,
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
    MOERT_FORWARD_IF_ERROR(topk_gate_run_with(topk_variant_for(c->isa), &p, logits, T, E, &gate, rows_block, &pass, &ws->gate));
    for (int i = 0; i < threads; i++)
        MOERT_RETURN_ERROR_IF(failed[i] != MOERT_OK, failed[i], "routing: cannot stage the entries of thread %d (%s)", i,
                              moert_strerror(failed[i]));

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

moert_status router_softmax_statistics(const moert_router_config *c, const float *logits, size_t tokens, size_t experts,
                                       int threads, float *row_max, float *row_sum, void *scratch, moert_plan *plan,
                                       router_workspace *ws) {
    const size_t E = experts;
    topk_candidates *cand = scratch;
    size_t *counts = (size_t *)(cand + threads);
    float *bounds = (float *)((unsigned char *)scratch +
                              moert_round_up_64((size_t)threads * (sizeof(topk_candidates) + E * sizeof(size_t))));
    for (size_t e = 0; e < E; e++) bounds[e] = INFINITY; /* no probability reaches them */
    memset(counts, 0, (size_t)threads * E * sizeof(size_t));
    for (int u = 0; u < threads; u++) cand[u] = (topk_candidates){bounds, NULL, NULL, counts + (size_t)u * E, 0};
    int used = 0;
    return topk_softmax_filter(c->isa, logits, tokens, E, cand, threads, &used, plan->logsumexp, row_max, row_sum,
                               plan->prob_sums, &ws->gate);
}

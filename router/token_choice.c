/* Token choice: each token's top k by the fused gate kernel (group-limited selection
 * included), then capacity and dropping, then the expert-major order and statistics.
 *
 * Two variations feed the same ending:
 * - the router's own scores (softpick, sqrt-softplus): the kernel selects by logit (both
 *   scores rank experts as their logits do) and, block by block while the rows are in
 *   cache, the weights are replaced by the score's (router/scores.c); softpick's
 *   denominator comes from the kernel's own pass (topk_extras);
 * - noisy selection: with softmax post and clean weights, in the kernel's own pass
 *   (topk_extras: the tiles generate the noise beside the selection); otherwise the clean
 *   logits' softmax statistics first (which also checks the logits), then each block's
 *   noisy keys (router/noise.h) go through the kernel, and the weights come from the
 *   clean logits or the keys. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "kernels/expf.h"
#include "router/internal.h"
#include "router/noise.h"
#include "router/scores.h"

/* ---- the router's own scores --------------------------------------------------------------- */

typedef struct scores_pass {
    const moert_router_config *config;
    const float *logits;
    size_t experts;
    int32_t *ids;
    float *weights;
    const float *softpick_sums; /* [tokens] from the kernel, or NULL */
    float *scratch;             /* [threads][SCORES_SCRATCH] */
} scores_pass;

static int scores_block(void *context, int thread, size_t row_begin, size_t row_end) {
    const scores_pass *p = context;
    scores_rows(p->config, p->logits, p->experts, row_begin, row_end, p->ids, p->weights, p->softpick_sums,
                p->scratch + (size_t)thread * SCORES_SCRATCH(p->experts, p->config->k));
    return 0;
}

/* ---- noisy selection ----------------------------------------------------------------------- */

#define NOISY_BLOCK_ROWS 256 /* 64 KiB of keys at E = 64: in L2; the kernel call per block is amortised */

/* Rows [begin, end) of the keys, selected by the kernel: the weights the configuration
 * asks for, by descending weight, ties to the lower id. */
static void noisy_weights(const moert_router_config *c, const float *logits, const float *keys, size_t E,
                          size_t begin, size_t end, int32_t *ids, float *weights, float *w) {
    const int k = c->k;
    topk_job job = {0};
    job.k = k, job.score = c->score, job.order = c->softmax_order, job.renormalize = c->renormalize;
    job.scaling = c->scaling;
    for (size_t t = begin; t < end; t++) {
        /* The keys block holds rows [begin, end). */
        const float *x = c->noisy_weights ? keys + (t - begin) * E : logits + t * E;
        int32_t *id = ids + t * (size_t)k;
        float *out = weights + t * (size_t)k;
        float m = 0.0f, s = 1.0f;
        if (c->score == MOERT_SCORE_SOFTMAX && c->softmax_order == MOERT_SOFTMAX_PRE)
            (void)topk_row_max_and_sum(x, E, t, 1, &m, &s); /* checked rows: it cannot fail */
        for (int j = 0; j < k; j++) w[j] = x[id[j]];
        topk_weights_inplace(&job, w, m, s); /* post: against the largest chosen, wherever it is */
        topk_sort_entries(id, w, (size_t)k, id, out);
    }
}

/* Gumbel-softmax's temperature, after the selection (which it does not change): the keys
 * divided by tau, the row's max first taken off for softmax (which does not change softmax
 * but keeps a tiny tau from overflowing), not for sigmoid (whose value it would change). */
static void gumbel_temper(const moert_router_config *c, float *keys, size_t E) {
    const float tau = c->noise_temperature;
    const float m = c->score == MOERT_SCORE_SOFTMAX ? scores_row_max(keys, E) : 0.0f;
    for (size_t e = 0; e < E; e++) keys[e] = keys[e] == -INFINITY ? -INFINITY : (keys[e] - m) / tau;
}

static moert_status noisy_select(const moert_router_config *c, const float *logits, size_t T, size_t E, moert_plan *plan,
                                 router_workspace *ws) {
    if (c->score == MOERT_SCORE_SOFTMAX && c->softmax_order == MOERT_SOFTMAX_POST && !c->noisy_weights &&
        c->groups == 0) {
        /* The common case in the kernel's one pass: the noise beside the selection, the
         * clean statistics beside it (topk_extras). */
        const noise_spec spec = noise_spec_of(c);
        const topk_extras extras = {.noise = &spec};
        const moert_topk_gate_params p = router_gate_params(c);
        const moert_topk_gate_output out = {plan->expert_ids, plan->weights, plan->prob_sums, plan->logsumexp};
        return topk_gate_run_extra(topk_variant_for(c->isa), &p, logits, T, E, &out, &extras, NULL, NULL, &ws->gate);
    }
    const int threads = router_threads(c->threads);
    const size_t k = (size_t)c->k;
    /* 1. The clean logits' statistics (probability sums, logsumexp), which checks them. */
    const size_t stats_bytes = ROUTER_STATS_SCRATCH(threads, E) + moert_round_up_64(2 * T * sizeof(float));
    /* 2. Per thread: a block of keys, the noise's scratch, the weights'. */
    const size_t block_floats = NOISY_BLOCK_ROWS * E + E + 2 + k + 64;
    const size_t thread_bytes = moert_round_up_64(block_floats * sizeof(float));
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, stats_bytes + (size_t)threads * thread_bytes + 64));
    unsigned char *base = (unsigned char *)(((uintptr_t)ws->bytes + 63) & ~(uintptr_t)63);
    float *row_max = (float *)(base + ROUTER_STATS_SCRATCH(threads, E)), *row_sum = row_max + T;
    unsigned char *thread_base = base + stats_bytes;
    MOERT_FORWARD_IF_ERROR(router_softmax_statistics(c, logits, T, E, threads, row_max, row_sum, base, plan, ws));

    MOERT_FORWARD_IF_ERROR(router_workspace_reserve_thread_gates(ws, threads));
    /* 2. Block by block: the keys, the kernel's top k of them (softmax post: the keys'
     * order), the weights. */
    const topk_variant *variant = topk_variant_for(c->isa);
    moert_topk_gate_params p = moert_topk_gate_params_default();
    p.k = c->k, p.threads = 1, p.isa = c->isa;
    const size_t blocks = (T + NOISY_BLOCK_ROWS - 1) / NOISY_BLOCK_ROWS;
    const noise_spec spec = noise_spec_of(c);
    moert_status failed = MOERT_OK;
    char detail[256] = "";
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        unsigned char *mine = thread_base + (size_t)omp_get_thread_num() * thread_bytes;
        float *keys = (float *)mine, *tmp = keys + NOISY_BLOCK_ROWS * E, *w = tmp + E + 2;
        topk_workspace *gate_ws = &ws->thread_gates[omp_get_thread_num()];
#pragma omp for schedule(static)
        for (size_t b = 0; b < blocks; b++) {
            const size_t begin = b * NOISY_BLOCK_ROWS, end = begin + NOISY_BLOCK_ROWS < T ? begin + NOISY_BLOCK_ROWS : T;
            for (size_t t = begin; t < end; t++)
                noise_keys(&spec, c->token_offset + t, logits + t * E, E, keys + (t - begin) * E, tmp);
            /* the kernel's ids straight into the plan; its weights are replaced below */
            const moert_topk_gate_output out = {plan->expert_ids + begin * k, plan->weights + begin * k, NULL, NULL};
            const moert_status st = topk_gate_run_with(variant, &p, keys, end - begin, E, &out, NULL, NULL, gate_ws);
            if (st != MOERT_OK) {
#pragma omp critical(moert_noisy_error)
                if (failed == MOERT_OK) failed = st, snprintf(detail, sizeof detail, "%s", moert_last_error());
                continue;
            }
            if (c->noisy_weights && c->noise == MOERT_NOISE_GUMBEL)
                for (size_t t = begin; t < end; t++) gumbel_temper(c, keys + (t - begin) * E, E);
            noisy_weights(c, logits, keys, E, begin, end, plan->expert_ids, plan->weights, w);
        }
    }
    if (failed != MOERT_OK) return moert_set_error(failed, "noisy selection: %s", detail);
    return MOERT_OK;
}

/* ---- token choice ---------------------------------------------------------------------------- */

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
    MOERT_FORWARD_IF_ERROR(moert_isa_check(params.isa));
    if (c->noise != MOERT_NOISE_NONE) {
        if (tokens > 0) MOERT_FORWARD_IF_ERROR(noisy_select(c, logits, tokens, experts, plan, ws));
        else memset(plan->prob_sums, 0, experts * sizeof(double));
    } else {
        const moert_topk_gate_output out = {plan->expert_ids, plan->weights, plan->prob_sums, plan->logsumexp};
        const int own_score = c->score == MOERT_SCORE_SOFTPICK || c->score == MOERT_SCORE_SQRT_SOFTPLUS;
        scores_pass pass = {c, logits, experts, plan->expert_ids, plan->weights, NULL, NULL};
        topk_extras extras = {.softpick_sums = NULL};
        if (own_score) {
            /* Softpick's denominators come from the kernel's pass (topk_extras). */
            const size_t scratch_floats = (size_t)threads * SCORES_SCRATCH(experts, c->k);
            const size_t sums = c->score == MOERT_SCORE_SOFTPICK ? tokens : 0;
            MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, (scratch_floats + sums) * sizeof(float)));
            pass.scratch = ws->bytes;
            if (sums > 0) {
                extras.softpick_sums = pass.scratch + scratch_floats;
                for (size_t t = 0; t < tokens; t++) extras.softpick_sums[t] = TOPK_SOFTPICK_UNSET;
                pass.softpick_sums = extras.softpick_sums;
            }
        }
        MOERT_FORWARD_IF_ERROR(topk_gate_run_extra(topk_variant_for(params.isa), &params, logits, tokens, experts, &out,
                                                   &extras, own_score ? scores_block : NULL, &pass, &ws->gate));
    }

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

/* BatchTopK routing (Bussmann, Leask & Nanda, "BatchTopK Sparse Autoencoders", 2024): the
 * top-k constraint is relaxed to the batch. Of the routing group's tokens x experts
 * scores, the tokens x k largest are kept, ties to the lower (token, expert) in row-major
 * order; a token gets any number of experts, the batch exactly tokens x k (fewer only if
 * fewer experts are unmasked). Scores are the softmax probabilities of each token's
 * logits, or the logits; the weights are the scores, renormalised per token on request.
 *
 * Linear time, never sorting the batch:
 *   1. the softmax statistics of every row (which also checks the logits), then every
 *      score, in parallel over tokens;
 *   2. a bound from a deterministic sample of 16384 scores, a little below the expected
 *      (tokens x k)-th largest: each thread compacts the indices of its tokens' scores
 *      that reach it (the variant's vector filter), in index order;
 *   3. a radix select on the candidates' bit patterns picks exactly tokens x k of them
 *      (ties to the lower index, which is row-major order); if the sample was unlucky
 *      and fewer reached the bound, the select runs over every score;
 *   4. the plan, each token's entries by descending weight.
 * The bound only decides how much work the select does, never its answer.
 *
 * Inference (use_threshold): a fixed threshold theta instead, each token keeping the
 * experts whose score exceeds it, a row at a time (router_route_rows). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "kernels/expf.h"
#include "router/internal.h"

#define BATCH_SAMPLES 16384 /* a bound within about 9% of the (T k)-th score at k / E = 1/8 */

/* ---- threshold mode ----------------------------------------------------------------------- */

typedef struct threshold_context {
    float threshold;
    int probs;       /* scores are probabilities */
    int renormalize; /* each token's weights sum to 1 */
} threshold_context;

static void renormalize_token(float *w, size_t n);

static size_t threshold_row(const void *context, const float *x, size_t E, size_t t, float max, int32_t *ids,
                            float *weights, float *scratch) {
    (void)max, (void)scratch; /* the sort works in place: no scratch */
    const threshold_context *c = context;
    float m = 0.0f, s = 1.0f;
    if (c->probs) (void)topk_row_max_and_sum(x, E, t, 1, &m, &s); /* the gate checked the row */
    size_t n = 0;
    for (size_t e = 0; e < E; e++) {
        if (x[e] == -INFINITY) continue; /* masked */
        const float score = c->probs ? moert_expf(x[e] - m) / s : x[e];
        if (score > c->threshold) ids[n] = (int32_t)e, weights[n++] = score;
    }
    topk_sort_entries(ids, weights, n, ids, weights);
    if (c->renormalize) renormalize_token(weights, n);
    return n;
}

/* ---- the batch's top tokens x k ------------------------------------------------------------ */

/* A row's probabilities as the softmax computed them (exp(x - max) / sum, with the FMA the
 * statistics' exponential uses, so every clone gives the same bits); a masked expert
 * below every probability. */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static void
probability_row(const float *x, size_t E, float m, float sum, float *s) {
    for (size_t e = 0; e < E; e++) s[e] = x[e] == -INFINITY ? -1.0f : moert_exp_shifted(x[e], m) / sum;
}

static void renormalize_token(float *w, size_t n) {
    float sum = 0.0f;
    for (size_t j = 0; j < n; j++) sum += w[j];
    if (sum != 0.0f)
        for (size_t j = 0; j < n; j++) w[j] = w[j] / sum;
}

moert_status router_batch_topk(const moert_router_config *c, const float *logits, size_t tokens, size_t experts,
                               moert_plan *plan, router_workspace *ws) {
    const size_t T = tokens, E = experts;
    int threads = router_threads(c->threads);
    const int probs = c->batch_score == MOERT_BATCH_SCORE_PROBS;
    size_t count, n;
    /* The select counts in 32 bits (router_select_largest). */
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(T, (size_t)c->k, &count) || count > UINT32_MAX, MOERT_EOVERFLOW,
                          "batch-topk: tokens=%zu x k=%d overflows the selection's 32-bit count", T, c->k);
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(T, E, &n) || n > INT32_MAX, MOERT_EOVERFLOW,
                          "batch-topk: tokens=%zu x experts=%zu scores exceed the selection's 31-bit index", T, E);
    if (c->use_threshold) {
        const threshold_context context = {c->threshold, probs, c->renormalize};
        MOERT_FORWARD_IF_ERROR(router_route_rows(c, logits, T, E, threshold_row, &context, 0, plan, ws));
        plan->stats.threshold = c->threshold;
        return MOERT_OK;
    }
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, T, count, E, count, threads));
    const size_t blocks = (T + 63) / 64;
    if (threads < 1) threads = 1;
    if (blocks > 0 && (size_t)threads > blocks) threads = (int)blocks;

    /* Workspace, in 64-byte aligned parts. */
    enum { STATS, ROWS, SCORES, INDICES, VALUES, MARKS, RADIX, SAMPLE, THREAD_COUNTS, PARTS };
    size_t sizes[PARTS], offsets[PARTS], total = 0;
    sizes[STATS] = ROUTER_STATS_SCRATCH(threads, E);
    sizes[ROWS] = 2 * T * sizeof(float);
    sizes[SCORES] = probs ? n * sizeof(float) : 0;
    sizes[INDICES] = n * sizeof(int32_t);
    sizes[VALUES] = n * sizeof(float);
    sizes[MARKS] = n;
    sizes[RADIX] = ROUTER_SELECT_SCRATCH(n);
    sizes[SAMPLE] = BATCH_SAMPLES * sizeof(float);
    sizes[THREAD_COUNTS] = ((size_t)threads + 1) * sizeof(size_t);
    for (int i = 0; i < PARTS; i++) offsets[i] = total, total += moert_round_up_64(sizes[i]);
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, total + 64));
    unsigned char *base = (unsigned char *)(((uintptr_t)ws->bytes + 63) & ~(uintptr_t)63);
    float *row_max = (float *)(base + offsets[ROWS]), *row_sum = row_max + T;
    float *scores = probs ? (float *)(base + offsets[SCORES]) : (float *)logits;
    int32_t *indices = (int32_t *)(base + offsets[INDICES]);
    float *values = (float *)(base + offsets[VALUES]);
    uint8_t *marks = base + offsets[MARKS];
    void *radix = base + offsets[RADIX];
    float *sample = (float *)(base + offsets[SAMPLE]);
    size_t *found = (size_t *)(base + offsets[THREAD_COUNTS]);

    /* 1. Statistics and checks, then the scores. */
    MOERT_FORWARD_IF_ERROR(
        router_softmax_statistics(c, logits, T, E, threads, row_max, row_sum, base + offsets[STATS], plan, ws));
    if (probs) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (size_t t = 0; t < T; t++) probability_row(logits + t * E, E, row_max[t], row_sum[t], scores + t * E);
    }

    /* 2. The bound, and each thread's candidates in index order. */
    const topk_variant *variant = topk_variant_for(c->isa);
    size_t m = 0;
    int sampled = 0;
    if (n >= 4 * BATCH_SAMPLES && count < n) {
        for (size_t i = 0; i < BATCH_SAMPLES; i++) sample[i] = scores[i * n / BATCH_SAMPLES];
        const double expected = (double)count * BATCH_SAMPLES / (double)n;
        const size_t r = (size_t)(expected + 4.0 * sqrt(expected) + 4.0);
        if (r < BATCH_SAMPLES) {
            const float bound = router_nth_largest(sample, BATCH_SAMPLES, r);
            sampled = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
            {
                const int u = omp_get_thread_num(), nth = omp_get_num_threads();
                const size_t t0 = T * (size_t)u / (size_t)nth, t1 = T * (size_t)(u + 1) / (size_t)nth;
                const size_t got = variant->compact(scores + t0 * E, (t1 - t0) * E, bound, indices + t0 * E);
                for (size_t j = 0; j < got; j++) indices[t0 * E + j] += (int32_t)(t0 * E);
                found[u] = got;
#pragma omp barrier
#pragma omp single
                {
                    for (int v = 0; v < nth; v++) { /* packed in thread order: index order */
                        const size_t v0 = T * (size_t)v / (size_t)nth * E;
                        memmove(indices + m, indices + v0, found[v] * sizeof(int32_t));
                        m += found[v];
                    }
                }
            }
            if (m < count) m = 0, sampled = 0; /* unlucky: fewer than tokens x k reached it */
        }
    }

    /* 3. Exactly tokens x k, ties to the lower index. */
    if (sampled) {
        for (size_t j = 0; j < m; j++) values[j] = scores[indices[j]];
        router_select_largest(values, m, 1, count, marks, 1, radix);
    } else {
        router_select_largest(scores, n, 1, count, marks, 1, radix);
        m = n;
    }

    /* 4. The plan: the kept (token, expert) in row-major order, masked ones left out. */
    plan->token_offsets[0] = 0;
    size_t kept = 0, t_at = 0, row_start = 0, t = 0; /* indices ascend: the row by walking, not dividing */
    float threshold = INFINITY;
    for (size_t j = 0; j < m; j++) {
        if (!marks[j]) continue;
        const size_t index = sampled ? (size_t)indices[j] : j;
        while (index >= row_start + E) row_start += E, t++;
        const size_t e = index - row_start;
        if (logits[index] == -INFINITY) continue;
        while (t_at < t) plan->token_offsets[++t_at] = (int64_t)kept;
        plan->expert_ids[kept] = (int32_t)e;
        plan->weights[kept++] = scores[index];
        threshold = scores[index] < threshold ? scores[index] : threshold;
    }
    while (t_at < T) plan->token_offsets[++t_at] = (int64_t)kept;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (size_t t = 0; t < T; t++) {
        const int64_t first = plan->token_offsets[t], k = plan->token_offsets[t + 1] - first;
        int32_t *ids = plan->expert_ids + first;
        float *w = plan->weights + first;
        topk_sort_entries(ids, w, (size_t)k, ids, w);
        if (c->renormalize) renormalize_token(w, (size_t)k);
    }
    plan->tokens = T, plan->experts = E, plan->entries = kept;
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, router_threads(c->threads), 0, 0));
    memcpy(plan->expert_routed, plan->expert_counts, E * sizeof(int64_t));
    plan->capacity = 0;
    plan_compute_stats(plan, plan->prob_sums, plan->logsumexp);
    plan->stats.threshold = kept ? threshold : NAN;
    return MOERT_OK;
}

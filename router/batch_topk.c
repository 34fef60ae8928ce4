/* BatchTopK routing (Bussmann, Leask & Nanda, "BatchTopK Sparse Autoencoders", 2024): the
 * top-k constraint is relaxed to the batch. Of the routing group's tokens x experts
 * scores, the tokens x k largest are kept, ties to the lower (token, expert) in row-major
 * order; a token gets any number of experts, the batch exactly tokens x k (fewer only if
 * fewer experts are unmasked). Scores are the softmax probabilities of each token's
 * logits, or the logits; the weights are the scores, renormalised per token on request.
 *
 * Linear time, never sorting the batch:
 *   1. the softmax statistics of every row (which also checks the logits), in parallel
 *      over tokens;
 *   2. a bound a little below the expected (tokens x k)-th largest score, from a
 *      deterministic sample of 16384 scores (or, for a small batch, the exact one);
 *   3. each row's candidates, the scores that reach the bound: a vector comparison of the
 *      logits with the bound moved into logit space (max + log(bound x sum), less a margin
 *      for rounding), then the score itself for the few that pass, which must reach the
 *      bound; sorted by descending score, ties to the lower expert. If the sample was
 *      unlucky and fewer than tokens x k reached the bound, every score is a candidate;
 *   4. theta, the (tokens x k)-th largest candidate, by a radix select on their bits, and
 *      how many exceed it;
 *   5. the plan: each token keeps a prefix of its sorted candidates, those above theta and,
 *      in row-major order until tokens x k are kept, those equal to it.
 * The bound only decides how much work steps 3-5 do, never their answer.
 *
 * Inference (use_threshold): a fixed threshold theta instead, each token keeping the
 * experts whose score exceeds it, a row at a time (router_route_rows). */
#include <float.h>
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

/* A row's scores as batch mode computes them (exp(x - max) / sum, the sum of
 * moert_exp_shifted in expert order, as the softmax statistics take it), so that a token's
 * entries at the threshold batch mode reports are the same. */
static size_t threshold_row(const void *context, const float *x, size_t E, size_t t, float max, int32_t *ids,
                            float *weights, float *scratch) {
    (void)t, (void)scratch; /* the sort works in place: no scratch */
    const threshold_context *c = context;
    float s = 0.0f;
    if (c->probs)
        for (size_t e = 0; e < E; e++) s += moert_exp_shifted(x[e], max);
    size_t n = 0;
    for (size_t e = 0; e < E; e++) {
        if (x[e] == -INFINITY) continue; /* masked */
        const float score = c->probs ? moert_exp_shifted(x[e], max) / s : x[e];
        if (score > c->threshold) ids[n] = (int32_t)e, weights[n++] = score;
    }
    topk_sort_entries(ids, weights, n, ids, weights);
    if (c->renormalize) renormalize_token(weights, n);
    return n;
}

/* ---- the batch's top tokens x k ------------------------------------------------------------ */

/* The scores of sampled entries: their probabilities as the softmax computes them
 * (exp(x - max) / sum, with the FMA the statistics' exponential uses), or their logits; a
 * masked expert below every score. Separate from the gathering, so that it vectorises. */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static void
sample_probabilities(const float *x, const float *max, const float *sum, size_t samples, float *sample) {
    for (size_t i = 0; i < samples; i++)
        sample[i] = x[i] == -INFINITY ? -INFINITY : moert_exp_shifted(x[i], max[i]) / sum[i];
}

/* A deterministic sample of the batch's scores: every score of a small batch, else
 * `samples` spread evenly over the rows and, a column further each, over the experts (a
 * hot expert does not bias the bound). x, max, sum: scratch of `samples` floats each. */
static void sample_scores(const float *logits, size_t T, size_t E, size_t samples, const float *row_max,
                          const float *row_sum, int probs, float *x, float *max, float *sum, float *sample) {
    const size_t n = T * E;
    if (samples == n) {
        for (size_t t = 0; t < T; t++)
            for (size_t e = 0; e < E; e++) max[t * E + e] = row_max[t], sum[t * E + e] = row_sum[t];
        memcpy(x, logits, n * sizeof(float));
    } else {
        /* Row floor(i T / samples), expert i mod E, by steps: no division per sample. */
        const size_t step = T / samples, carry = T % samples;
        size_t t = 0, frac = 0, e = 0;
        for (size_t i = 0; i < samples; i++) {
            x[i] = logits[t * E + e], max[i] = row_max[t], sum[i] = row_sum[t];
            t += step, frac += carry;
            if (frac >= samples) frac -= samples, t++;
            if (++e == E) e = 0;
        }
    }
    if (probs) sample_probabilities(x, max, sum, samples, sample);
    else memcpy(sample, x, samples * sizeof(float));
}

/* Rows [t0, t1)'s candidates (the variant's batch_rows), each row's sorted and after the
 * previous row's, into ids and scores; counts[t] is row t's number. Returns the total. */
typedef struct candidate_pass {
    const float *logits, *row_max, *row_sum, *lse;
    size_t experts;
    int probs;
    float bound;     /* the scores' */
    float log_bound; /* log(bound) for probabilities */
    topk_batch_rows_fn batch_rows;
    float *scratch; /* TOPK_BATCH_SCRATCH(CANDIDATE_BLOCK, experts) floats per thread */
} candidate_pass;

#define CANDIDATE_BLOCK 32 /* rows per call: their candidates stay in L1 for the sort */

static size_t row_candidates(const candidate_pass *c, size_t t0, size_t t1, int32_t *ids, float *scores,
                             uint32_t *counts, float *scratch) {
    const size_t E = c->experts;
    float logit_bound[CANDIDATE_BLOCK];
    size_t total = 0;
    for (size_t r0 = t0; r0 < t1; r0 += CANDIDATE_BLOCK) {
        const size_t rows = t1 - r0 < CANDIDATE_BLOCK ? t1 - r0 : CANDIDATE_BLOCK;
        for (size_t r = 0; r < rows; r++) {
            float lb = c->bound;
            if (c->probs && c->bound >= 0x1p-100f) {
                /* p = exp(x - max) / sum >= bound where x >= lse + log(bound), lse = max +
                 * log(sum). A p >= 2^-100 comes from exp_shifted's argument >= -100 log 2
                 * and is a normal float: it is within about 3e-5 of the exact one
                 * (relative), and lse and log(bound) within ulps of theirs; the margin
                 * covers all of it many times over, and the scores themselves decide.
                 * Below 2^-100 (a subnormal p rounds by more than the margin) there is no
                 * comparison in logit space: every score is computed. */
                const float lse = c->lse[r0 + r];
                lb = lse + c->log_bound;
                lb -= 0x1p-10f + (fabsf(lse) + fabsf(c->log_bound)) * 0x1p-18f;
            } else if (c->probs) {
                lb = -FLT_MAX;
            }
            logit_bound[r] = lb > -FLT_MAX ? lb : -FLT_MAX; /* bound 0: all but the masked */
        }
        const topk_batch_rows b = {logit_bound, c->row_max + r0, c->row_sum + r0, c->bound, c->probs};
        total += c->batch_rows(c->logits + r0 * E, rows, E, &b, ids + total, scores + total, counts + r0, scratch);
    }
    return total;
}

static void renormalize_token(float *w, size_t n) {
    float sum = 0.0f;
    for (size_t j = 0; j < n; j++) sum += w[j];
    if (sum != 0.0f)
        for (size_t j = 0; j < n; j++) w[j] = w[j] / sum;
}

/* Every row's candidates, in row order: each thread's rows into its own part of ids and
 * scores (room for its rows' E scores each and 16 more), then packed. Returns the total. */
static size_t all_candidates(const candidate_pass *c, size_t T, int threads, int32_t *ids, float *scores,
                             uint32_t *counts, size_t *found) {
    const size_t E = c->experts;
    size_t parts = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int u = omp_get_thread_num(), nth = omp_get_num_threads();
        const size_t t0 = T * (size_t)u / (size_t)nth, t1 = T * (size_t)(u + 1) / (size_t)nth;
        found[u] = row_candidates(c, t0, t1, ids + t0 * E + 16 * (size_t)u, scores + t0 * E + 16 * (size_t)u, counts,
                                  c->scratch + (size_t)u * TOPK_BATCH_SCRATCH(CANDIDATE_BLOCK, E));
        if (u == 0) parts = (size_t)nth;
    }
    size_t m = 0;
    for (size_t v = 0; v < parts; v++) {
        const size_t v0 = T * v / parts * E + 16 * v;
        if (v0 != m) {
            memmove(ids + m, ids + v0, found[v] * sizeof(int32_t));
            memmove(scores + m, scores + v0, found[v] * sizeof(float));
        }
        m += found[v];
    }
    return m;
}

/* The plan from the sorted candidates (step 5). */
typedef struct plan_walk {
    const float *scores;
    const int32_t *ids;
    const uint32_t *counts;
    size_t *start;   /* [T] each row's first candidate */
    float cut;       /* kept above it: theta, or -inf when every candidate is kept */
    float theta;
    int ties_possible;
    int renormalize;
} plan_walk;

/* Row t's candidates above the cut, and equal to theta after them. Up to 16 by a
 * fixed-length step (no branch on the row's length, which no predictor guesses; the
 * workspace has room past its end). */
static inline void walk_count(const plan_walk *w, size_t t, uint32_t *above, uint32_t *equal) {
    const size_t got = w->counts[t];
    const float *s = w->scores + w->start[t];
    uint32_t keep = 0, tied = 0;
    if (got <= 16)
        for (size_t j = 0; j < 16; j++) keep += (j < got) & (s[j] > w->cut);
    else
        for (size_t j = 0; j < got; j++) keep += s[j] > w->cut;
    while (w->ties_possible && keep + tied < got && s[keep + tied] == w->theta) tied++;
    *above = keep, *equal = tied;
}

/* Row t's entries, the ties it may take in row order, and its offset. */
static inline void walk_allot(moert_plan *plan, size_t t, uint32_t above, uint32_t equal, size_t *ties) {
    const size_t tied = equal < *ties ? equal : *ties;
    *ties -= tied;
    plan->token_offsets[t + 1] = plan->token_offsets[t] + (int64_t)(above + tied);
}

/* Row t's kept entries into the plan: 16 at once where that stays below `end` (the
 * entries after are rewritten by the rows that own them), else exactly; the smallest
 * kept score into *smallest; renormalised on request. */
static inline void walk_copy(const plan_walk *w, moert_plan *plan, size_t t, size_t end, float *smallest) {
    const size_t got = w->counts[t], at = w->start[t], out = (size_t)plan->token_offsets[t];
    const size_t keep = (size_t)plan->token_offsets[t + 1] - out;
    if (got <= 16 && out + 16 <= end) { /* a constant size: moves, not a call */
        memcpy(plan->expert_ids + out, w->ids + at, 16 * sizeof(int32_t));
        memcpy(plan->weights + out, w->scores + at, 16 * sizeof(float));
    } else {
        memcpy(plan->expert_ids + out, w->ids + at, keep * sizeof(int32_t));
        memcpy(plan->weights + out, w->scores + at, keep * sizeof(float));
    }
    if (keep > 0 && w->scores[at + keep - 1] < *smallest) *smallest = w->scores[at + keep - 1];
    if (w->renormalize) renormalize_token(plan->weights + out, keep);
}

moert_status router_batch_topk(const moert_router_config *c, const float *logits, size_t tokens, size_t experts,
                               moert_plan *plan, router_workspace *ws) {
    const size_t T = tokens, E = experts;
    int threads = router_threads(c->threads);
    const int probs = c->batch_score == MOERT_BATCH_SCORE_PROBS;
    size_t count, n;
    /* A routing group's counts stay within 32 bits. */
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(T, (size_t)c->k, &count) || count > UINT32_MAX, MOERT_EOVERFLOW,
                          "batch-topk: tokens=%zu x k=%d overflows the selection's 32-bit count", T, c->k);
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(T, E, &n) || n > INT32_MAX, MOERT_EOVERFLOW,
                          "batch-topk: tokens=%zu x experts=%zu scores exceed the selection's 31-bit count", T, E);
    if (c->use_threshold) {
        const threshold_context context = {c->threshold, probs, c->renormalize};
        MOERT_FORWARD_IF_ERROR(router_route_rows(c, logits, T, E, threshold_row, &context, 0, plan, ws));
        plan->stats.threshold = c->threshold;
        return MOERT_OK;
    }
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, T, count + (E > 16 ? E : 16), E, count, threads));
    const size_t blocks = (T + 63) / 64;
    if (blocks == 0 || threads < 1) threads = 1;
    if ((size_t)threads > blocks && blocks > 0) threads = (int)blocks;
    /* A sample of 16384 scores, or every score of a small batch (then the bound is exact). */
    const size_t samples = n >= 4 * BATCH_SAMPLES ? BATCH_SAMPLES : n;

    /* Workspace, in 64-byte aligned parts. */
    enum { STATS, ROWS, IDS, SCORES, COUNTS, RADIX, SAMPLE, ROW_SCRATCH, WALK, THREAD_COUNTS, PARTS };
    size_t sizes[PARTS], offsets[PARTS], total = 0;
    sizes[STATS] = ROUTER_STATS_SCRATCH(threads, E);
    sizes[ROWS] = 2 * T * sizeof(float);
    sizes[IDS] = (n + 16 * (size_t)threads) * sizeof(int32_t);
    sizes[SCORES] = (n + 16 * (size_t)threads) * sizeof(float);
    sizes[COUNTS] = T * sizeof(uint32_t);
    sizes[RADIX] = ROUTER_THRESHOLD_SCRATCH(n, threads);
    sizes[WALK] = T * (sizeof(size_t) + 2 * sizeof(uint32_t));
    sizes[SAMPLE] = 4 * samples * sizeof(float); /* the scores, and their logits, maxima and sums */
    sizes[ROW_SCRATCH] = (size_t)threads * TOPK_BATCH_SCRATCH(CANDIDATE_BLOCK, E) * sizeof(float);
    sizes[THREAD_COUNTS] = (size_t)threads * sizeof(size_t);
    for (int i = 0; i < PARTS; i++) offsets[i] = total, total += moert_round_up_64(sizes[i]);
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, total + 64));
    unsigned char *base = (unsigned char *)(((uintptr_t)ws->bytes + 63) & ~(uintptr_t)63);
    float *row_max = (float *)(base + offsets[ROWS]), *row_sum = row_max + T;
    int32_t *ids = (int32_t *)(base + offsets[IDS]);
    float *scores = (float *)(base + offsets[SCORES]);
    uint32_t *counts = (uint32_t *)(base + offsets[COUNTS]);
    void *radix = base + offsets[RADIX];
    float *sample = (float *)(base + offsets[SAMPLE]);
    size_t *found = (size_t *)(base + offsets[THREAD_COUNTS]);

    /* 1. Statistics and checks. */
    MOERT_FORWARD_IF_ERROR(
        router_softmax_statistics(c, logits, T, E, threads, row_max, row_sum, base + offsets[STATS], plan, ws));

    /* 2. The bound: the sample's r-th largest, r a few standard deviations above the
     * tokens x k share of the sample the batch's top would have (exactly tokens x k for a
     * whole small batch). Never below every unmasked score: probabilities are >= 0. */
    const float lowest = probs ? 0.0f : -FLT_MAX;
    float bound = lowest;
    if (count > 0 && count < n) {
        sample_scores(logits, T, E, samples, row_max, row_sum, probs, sample + samples, sample + 2 * samples,
                      sample + 3 * samples, sample);
        size_t r = count;
        if (samples < n) {
            const double expected = (double)count * (double)samples / (double)n;
            r = (size_t)(expected + 4.0 * sqrt(expected) + 4.0);
        }
        size_t above;
        if (r < samples) bound = router_select_threshold(sample, samples, r, &above, radix, 1);
        if (!(bound > lowest)) bound = lowest;
    }

    /* 3. Each row's candidates, sorted. */
    candidate_pass pass = {logits, row_max, row_sum, plan->logsumexp, E, probs, bound,
                           bound > 0.0f ? logf(bound) : -INFINITY, topk_variant_for(c->isa)->batch_rows,
                           (float *)(base + offsets[ROW_SCRATCH])};
    size_t m = count > 0 ? all_candidates(&pass, T, threads, ids, scores, counts, found) : 0;
    if (m < count && bound > lowest) { /* an unlucky sample: every score */
        pass.bound = lowest, pass.log_bound = -INFINITY;
        m = all_candidates(&pass, T, threads, ids, scores, counts, found);
    }

    /* 4. theta; above it every candidate is kept, at it the first `ties` in row order. */
    float theta = -INFINITY;
    size_t ties = 0;
    if (m > count) {
        size_t above;
        theta = router_select_threshold(scores, m, count, &above, radix, threads);
        ties = count - above;
    }

    /* 5. The plan: each token's kept prefix, the entries above the cut and then, in row
     * order, the first `ties` equal to it. With threads: each row's count above the cut
     * and equal to theta in parallel, the ties' allotment and the offsets in row order, the
     * copies in parallel; on one thread all three a row at a time. */
    const plan_walk walk = {scores, ids, counts, (size_t *)(base + offsets[WALK]), m > count ? theta : -INFINITY,
                            theta, m > count, c->renormalize};
    uint32_t *above_cut = (uint32_t *)(walk.start + T), *at_theta = above_cut + T;
    plan->token_offsets[0] = 0;
    float threshold = INFINITY;
    if (threads == 1) {
        /* A row at a time, all three steps: separate passes cost a single thread 6 ns a
         * token. A row's 16-entry copy is rewritten by the rows after it. */
        for (size_t t = 0, at = 0; t < T; at += counts[t++]) {
            uint32_t keep, equal;
            walk.start[t] = at;
            walk_count(&walk, t, &keep, &equal);
            walk_allot(plan, t, keep, equal, &ties);
            walk_copy(&walk, plan, t, (size_t)plan->token_offsets[t] + 16, &threshold);
        }
    } else {
        for (size_t t = 0, at = 0; t < T; at += counts[t++]) walk.start[t] = at;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (size_t t = 0; t < T; t++) walk_count(&walk, t, &above_cut[t], &at_theta[t]);
        for (size_t t = 0; t < T; t++) walk_allot(plan, t, above_cut[t], at_theta[t], &ties);
#pragma omp parallel num_threads(threads) reduction(min : threshold)
        {
            const int u = omp_get_thread_num(), nth = omp_get_num_threads();
            const size_t t0 = T * (size_t)u / (size_t)nth, t1 = T * (size_t)(u + 1) / (size_t)nth;
            const size_t end = (size_t)plan->token_offsets[t1]; /* where the next thread's rows start */
            for (size_t t = t0; t < t1; t++) walk_copy(&walk, plan, t, end, &threshold);
        }
    }
    const size_t kept = (size_t)plan->token_offsets[T];
    plan->tokens = T, plan->experts = E, plan->entries = kept;
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, router_threads(c->threads), 0, 0));
    memcpy(plan->expert_routed, plan->expert_counts, E * sizeof(int64_t));
    plan->capacity = 0;
    plan_compute_stats(plan, plan->prob_sums, plan->logsumexp);
    plan->stats.threshold = kept ? threshold : NAN;
    return MOERT_OK;
}

/* Expert choice (Zhou et al., "Mixture-of-Experts with Expert Choice Routing", 2022): each
 * expert takes the C tokens with the highest softmax probability for it.
 *
 * The probabilities form the whole tokens x experts matrix, but an expert keeps only C of
 * its T, so the matrix is never stored:
 *   1. a sample of 256 rows gives each expert a bound that somewhat more than C of its
 *      probabilities reach;
 *   2. the softmax of every row offers each probability to its expert, which keeps the
 *      (token, probability) pairs at or above its bound;
 *   3. each expert's exact top C is selected among its candidates (no column is sorted),
 *      in parallel over experts; an expert with too few candidates (an unlucky sample) or
 *      too many (a full buffer) recomputes its whole column and selects from that;
 *   4. the token-major plan is assembled from the experts' lists, in parallel over ranges
 *      of tokens.
 * The bounds only decide how much work the selection does, never its answer, and every
 * step gives the same plan for any thread count and kernel variant. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "kernels/expf.h"
#include "router/internal.h"

#define EC_SAMPLE_ROWS 256

/* The first position in sorted[0, n) holding a value >= key. */
static size_t lower_bound(const int32_t *sorted, size_t n, int32_t key) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (sorted[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The rank-th largest of a[0, n), rank <= EC_SAMPLE_ROWS: the best `rank` kept sorted,
 * which a new value rarely enters once they fill. */
static float rank_largest(const float *a, size_t n, size_t rank) {
    float top[EC_SAMPLE_ROWS];
    size_t filled = 0;
    for (size_t i = 0; i < n; i++) {
        const float v = a[i];
        if (filled == rank && !(v > top[rank - 1])) continue;
        size_t j = filled < rank ? filled++ : rank - 1;
        for (; j > 0 && top[j - 1] < v; j--) top[j] = top[j - 1];
        top[j] = v;
    }
    return top[rank - 1];
}

/* Step 1's rank: the bound is the rank-th largest of an expert's sample, several
 * standard deviations above the expected count * samples / T, so that fewer than C values
 * reach it only by bad luck (about 1 expert in 700) (the fallback then still gives the exact answer). 0 when
 * sampling cannot help: few tokens, or a large C. */
static size_t sample_rank(size_t T, size_t per_expert) {
    if (T < 8 * EC_SAMPLE_ROWS) return 0;
    const double expected = (double)per_expert * EC_SAMPLE_ROWS / (double)T;
    const size_t rank = (size_t)(expected + 3.0 * sqrt(expected) + 2.0);
    return rank < EC_SAMPLE_ROWS / 2 ? rank : 0;
}

/* Step 1: bounds[e] from evenly spaced rows. A bad sample row leaves every bound at 0;
 * step 2 then reports the row. */
static void sample_bounds(const float *logits, size_t T, size_t E, size_t rank, float *bounds, float *sample) {
    for (size_t e = 0; e < E; e++) bounds[e] = 0.0f;
    if (rank == 0) return;
    for (size_t i = 0; i < EC_SAMPLE_ROWS; i++) {
        const float *x = logits + (i * T / EC_SAMPLE_ROWS) * E;
        float m = -INFINITY, s = 0.0f;
        for (size_t e = 0; e < E; e++) {
            if (!(x[e] < INFINITY)) return; /* NaN or +inf */
            m = x[e] > m ? x[e] : m;
        }
        if (m == -INFINITY) return;
        for (size_t e = 0; e < E; e++) {
            sample[e * EC_SAMPLE_ROWS + i] = moert_expf(x[e] - m);
            s += sample[e * EC_SAMPLE_ROWS + i];
        }
        /* Any bound is correct (step 3 checks that enough values reached it): a product
         * by the reciprocal will do. */
        const float inv = 1.0f / s;
        for (size_t e = 0; e < E; e++) sample[e * EC_SAMPLE_ROWS + i] *= inv;
    }
    for (size_t e = 0; e < E; e++) bounds[e] = rank_largest(sample + e * EC_SAMPLE_ROWS, EC_SAMPLE_ROWS, rank);
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
                          T, c->capacity_factor, E);
    const size_t per_expert = (size_t)capacity < T ? (size_t)capacity : T;
    size_t entries;
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(per_expert, E, &entries), MOERT_EOVERFLOW,
                          "capacity x experts overflows");
    const topk_variant *variant = topk_variant_for(c->isa);
    MOERT_RETURN_ERROR_IF(variant == NULL, MOERT_EINVAL, "expert choice: no kernel variant");
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, T, entries, E, entries, threads));
    if (T == 0) {
        plan->tokens = 0, plan->experts = E, plan->entries = 0;
        plan->token_offsets[0] = 0;
        memset(plan->prob_sums, 0, E * sizeof(double));
        MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, threads, 0, 0));
        memcpy(plan->expert_routed, plan->expert_counts, E * sizeof(int64_t));
        plan->capacity = capacity;
        plan_compute_stats(plan, plan->prob_sums, plan->logsumexp);
        return MOERT_OK;
    }

    /* The candidates' room per softmax thread: its share of the tokens (whole blocks of 64
     * rows), times the expected share at or above the bounds, with slack. */
    const size_t blocks = (T + 63) / 64;
    if ((size_t)threads > blocks) threads = (int)blocks;
    const size_t share = (blocks + (size_t)threads - 1) / (size_t)threads * 64;
    const size_t rank = sample_rank(T, per_expert);
    size_t cap = rank ? 2 * (share * rank / EC_SAMPLE_ROWS) + 64 : share;
    if (cap > share) cap = share;
    size_t cand_pairs;
    MOERT_RETURN_ERROR_IF(moert_mul3_overflows((size_t)threads, E, cap, &cand_pairs), MOERT_EOVERFLOW,
                          "expert choice: candidate buffers overflow size_t");
    /* Per selection thread: a column [T], a gathered candidate list (ids, values) [threads
     * x cap], the candidate selection's scratch, and the column selection's. */
    const size_t list = (size_t)threads * cap; /* one expert's candidates, from every thread */
    const size_t select_bytes = (T * sizeof(float) + list * (sizeof(int32_t) + sizeof(float)) +
                                 (ROUTER_TOP_OF_BINS + 2 * list + 2) * sizeof(float) + ROUTER_TOP_SCRATCH(T) + 63) &
                                ~(size_t)63;

    /* Workspace, in 64-byte aligned parts. */
    enum { BOUNDS, SAMPLE, ROWS, CHOSEN, CHOSEN_PROBS, FILL, CANDIDATES, PAIRS, SELECT, PARTS };
    size_t sizes[PARTS], offsets[PARTS], total = 0;
    sizes[BOUNDS] = 2 * E * sizeof(float); /* the bounds, and the filter's a little below */
    sizes[SAMPLE] = rank ? E * EC_SAMPLE_ROWS * sizeof(float) : 0;
    sizes[ROWS] = 2 * T * sizeof(float); /* each row's max and sum */
    sizes[CHOSEN] = entries * sizeof(int32_t);
    sizes[CHOSEN_PROBS] = entries * sizeof(float);
    sizes[FILL] = T * sizeof(int64_t);
    sizes[CANDIDATES] = (size_t)threads * (sizeof(topk_candidates) + E * sizeof(size_t));
    sizes[PAIRS] = cand_pairs * (sizeof(int32_t) + sizeof(float));
    sizes[SELECT] = (size_t)threads * select_bytes;
    for (int i = 0; i < PARTS; i++) {
        offsets[i] = total;
        total += (sizes[i] + 63) & ~(size_t)63;
    }
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, total + 64));
    unsigned char *base = (unsigned char *)(((uintptr_t)ws->bytes + 63) & ~(uintptr_t)63);
    float *bounds = (float *)(base + offsets[BOUNDS]), *filter_bounds = bounds + E;
    float *row_max = (float *)(base + offsets[ROWS]), *row_sum = row_max + T;
    int32_t *chosen = (int32_t *)(base + offsets[CHOSEN]);
    float *chosen_probs = (float *)(base + offsets[CHOSEN_PROBS]);
    int64_t *fill = (int64_t *)(base + offsets[FILL]);
    topk_candidates *cand = (topk_candidates *)(base + offsets[CANDIDATES]);
    size_t *counts = (size_t *)(cand + threads);
    int32_t *cand_tokens = (int32_t *)(base + offsets[PAIRS]);
    float *cand_probs = (float *)(cand_tokens + cand_pairs);
    unsigned char *select_scratch = base + offsets[SELECT];

    /* Step 1. */
    sample_bounds(logits, T, E, rank, bounds, (float *)(base + offsets[SAMPLE]));

    /* Step 2. The filter compares exp(x - max) * (1 / sum), within two ulps of the
     * probability: a bound 2^-20 lower takes every token whose probability reaches the
     * bound, and step 3 counts on that. Near the subnormals, where ulps are not relative,
     * the filter takes every token. */
    for (size_t e = 0; e < E; e++) filter_bounds[e] = bounds[e] >= 0x1.0p-100f ? bounds[e] * (1.0f - 0x1.0p-20f) : 0.0f;
    memset(counts, 0, (size_t)threads * E * sizeof(size_t));
    for (int u = 0; u < threads; u++)
        cand[u] = (topk_candidates){filter_bounds, cand_tokens + (size_t)u * E * cap, cand_probs + (size_t)u * E * cap,
                                    counts + (size_t)u * E, cap};
    int used = 0;
    MOERT_FORWARD_IF_ERROR(topk_softmax_filter(c->isa, logits, T, E, cand, threads, &used, plan->logsumexp,
                                               row_max, row_sum, plan->prob_sums, &ws->gate));

    /* Step 3. */
    const int sel_threads = (size_t)threads > E ? (int)E : threads;
#pragma omp parallel num_threads(sel_threads) if (sel_threads > 1)
    {
        unsigned char *mine = select_scratch + (size_t)omp_get_thread_num() * select_bytes;
        float *column = (float *)mine;
        int32_t *ids = (int32_t *)(column + T);
        float *values = (float *)(ids + list);
        float *spare = values + list;
        void *scratch = spare + ROUTER_TOP_OF_BINS + 2 * list + 2;
#pragma omp for schedule(dynamic, 1)
        for (size_t e = 0; e < E; e++) {
            int32_t *mine_chosen = chosen + e * per_expert;
            float *mine_probs = chosen_probs + e * per_expert;
            size_t m = 0;
            int complete = 1;
            const int32_t *list_ids = ids;
            float *list_values = values;
            if (used == 1) { /* one thread's list: no copy */
                m = cand[0].count[e];
                complete = m <= cap;
                list_ids = cand[0].tokens + e * cap, list_values = cand[0].exps + e * cap;
            } else {
                for (int u = 0; u < used; u++) {
                    const size_t n = cand[u].count[e];
                    if (n > cap) complete = 0;
                    for (size_t i = 0; i < n && i < cap; i++, m++) {
                        ids[m] = cand[u].tokens[e * cap + i];
                        values[m] = cand[u].exps[e * cap + i];
                    }
                }
            }
            if (complete) {
                /* The candidates' probabilities, as the softmax divides; the list holds
                 * every token whose probability reaches bounds[e], and the others fall
                 * short of it: enough of those reaching it make the answer exact. */
                size_t reach = 0;
                for (size_t i = 0; i < m; i++) {
                    list_values[i] /= row_sum[list_ids[i]];
                    reach += list_values[i] >= bounds[e];
                }
                if (reach >= per_expert) {
                    router_select_top_of(list_ids, list_values, m, per_expert, mine_chosen, mine_probs, spare);
                    continue;
                }
            }
            /* The whole column, as the softmax computed it. */
            for (size_t t = 0; t < T; t++)
                column[t] = moert_exp_shifted(logits[t * E + e], row_max[t]) / row_sum[t];
            router_select_top(column, T, per_expert, variant->compact, mine_chosen, scratch);
            for (size_t i = 0; i < per_expert; i++) mine_probs[i] = column[mine_chosen[i]];
        }
    }

    /* Step 4: count each token's experts, place them by expert (ascending), then order
     * each token's entries by descending weight; an equal weight stays behind the lower
     * id. */
    memset(fill, 0, T * sizeof(int64_t));
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const size_t t0 = T * (size_t)tid / (size_t)nth, t1 = T * (size_t)(tid + 1) / (size_t)nth;
        /* Locals: the shared ones live in OpenMP's struct, which the stores to fill[] might
         * alias, so the compiler would reload them in every iteration. */
        const size_t C = per_expert;
        int64_t *const counts_of = fill;
        for (size_t e = 0; e < E; e++) {
            const int32_t *list = chosen + e * C;
            for (size_t i = lower_bound(list, C, (int32_t)t0); i < C && (size_t)list[i] < t1; i++)
                counts_of[list[i]]++;
        }
#pragma omp barrier
#pragma omp single
        {
            plan->token_offsets[0] = 0;
            for (size_t t = 0; t < T; t++) {
                plan->token_offsets[t + 1] = plan->token_offsets[t] + fill[t];
                fill[t] = plan->token_offsets[t];
            }
        }
        int32_t *const expert_ids = plan->expert_ids;
        float *const weights = plan->weights;
        for (size_t e = 0; e < E; e++) {
            const int32_t *list = chosen + e * C;
            const float *probs = chosen_probs + e * C;
            for (size_t i = lower_bound(list, C, (int32_t)t0); i < C && (size_t)list[i] < t1; i++) {
                const int64_t at = counts_of[list[i]]++;
                expert_ids[at] = (int32_t)e;
                weights[at] = probs[i];
            }
        }
        for (size_t t = t0; t < t1; t++) {
            const int64_t first = plan->token_offsets[t], n = plan->token_offsets[t + 1] - first;
            int32_t *token_ids = expert_ids + first;
            float *token_weights = weights + first;
            topk_sort_entries(token_ids, token_weights, (size_t)n, token_ids, token_weights);
        }
    }
    plan->tokens = T, plan->experts = E, plan->entries = (size_t)plan->token_offsets[T];
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, threads, 0, 0));
    memcpy(plan->expert_routed, plan->expert_counts, E * sizeof(int64_t));
    plan->capacity = capacity;
    plan_compute_stats(plan, plan->prob_sums, plan->logsumexp);
    return MOERT_OK;
}

/* Pieces of the top-k gate shared by all variants: exact heap selection, the bad-data
 * scan that names the first offending element, and the weights of one row. */
#include <math.h>
#include <string.h>

#include "kernels/expf.h"
#include "kernels/topk_gate/internal.h"

/* The selection order: a higher key wins; equal keys go to the lower index. */
static int ranks_before(float key_a, int32_t idx_a, float key_b, int32_t idx_b) {
    return key_a > key_b || (key_a == key_b && idx_a < idx_b);
}

/* Min-heap on the selection order: the root is the entry that would leave first. */
static void sift_down(float *hk, int32_t *hi, int size, int at) {
    for (;;) {
        int worst = at, left = 2 * at + 1, right = left + 1;
        if (left < size && ranks_before(hk[worst], hi[worst], hk[left], hi[left])) worst = left;
        if (right < size && ranks_before(hk[worst], hi[worst], hk[right], hi[right]))
            worst = right;
        if (worst == at) return;
        float tk = hk[at];
        hk[at] = hk[worst];
        hk[worst] = tk;
        int32_t ti = hi[at];
        hi[at] = hi[worst];
        hi[worst] = ti;
        at = worst;
    }
}

void topk_select_heap(const float *keys, const int32_t *idx, size_t n, int k, float *top_keys,
                      int32_t *top_idx) {
    /* The heap lives in the output arrays, then is sorted in place by popping. */
    float *hk = top_keys;
    int32_t *hi = top_idx;
    for (int i = 0; i < k; i++) {
        hk[i] = keys[i];
        hi[i] = idx ? idx[i] : i;
    }
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(hk, hi, k, i);
    for (size_t i = (size_t)k; i < n; i++) {
        int32_t id = idx ? idx[i] : (int32_t)i;
        if (ranks_before(keys[i], id, hk[0], hi[0])) {
            hk[0] = keys[i];
            hi[0] = id;
            sift_down(hk, hi, k, 0);
        }
    }
    /* Pop the worst to the end until the arrays read best-first. */
    for (int size = k; size > 1; size--) {
        float tk = hk[0];
        hk[0] = hk[size - 1];
        hk[size - 1] = tk;
        int32_t ti = hi[0];
        hi[0] = hi[size - 1];
        hi[size - 1] = ti;
        sift_down(hk, hi, size - 1, 0);
    }
}

/* rank[i] = how many of w[0, n) exceed w[i], n <= 16, one vector comparison per weight;
 * 0 when two weights are equal (they would share a rank: the ranks no longer sum to
 * n (n - 1) / 2), which the caller then ranks with their ids. */
typedef float rank_v16f __attribute__((vector_size(64)));
typedef int32_t rank_v16i __attribute__((vector_size(64)));
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static int
rank_distinct(const float *w, size_t n, int32_t *rank) {
    float padded[16];
    for (size_t j = 0; j < 16; j++) padded[j] = j < n ? w[j] + 0.0f : -INFINITY; /* -0 as +0 */
    rank_v16f mine;
    memcpy(&mine, padded, sizeof mine);
    rank_v16i above = {0};
    for (size_t j = 0; j < n; j++) above -= (rank_v16i)((rank_v16f){0} + padded[j] > mine);
    int32_t lanes[16];
    memcpy(lanes, &above, sizeof lanes);
    size_t sum = 0;
    for (size_t i = 0; i < n; i++) rank[i] = lanes[i], sum += (size_t)lanes[i];
    return sum == n * (n - 1) / 2;
}

void topk_sort_entries(const int32_t *in_ids, const float *in_weights, size_t n, int32_t *ids,
                       float *weights) {
    if (n > TOPK_RANK_SORT_MAX) { /* a heap: O(n log n) for rows of any width */
        topk_select_heap(in_weights, in_ids, n, (int)n, weights, ids);
        return;
    }
    if (n == 2) { /* the common case (expert choice at small capacity factors): selects */
        const float w0 = in_weights[0], w1 = in_weights[1];
        const int32_t i0 = in_ids[0], i1 = in_ids[1];
        const int swap = w1 > w0 || (w1 == w0 && i1 < i0);
        weights[0] = swap ? w1 : w0, weights[1] = swap ? w0 : w1;
        ids[0] = swap ? i1 : i0, ids[1] = swap ? i0 : i1;
        return;
    }
    if (n <= 16) { /* distinct weights (the usual case): ranked as vectors */
        int32_t rank[16], in_id[16];
        float in_w[16];
        if (rank_distinct(in_weights, n, rank)) {
            memcpy(in_id, in_ids, n * sizeof *in_id); /* the outputs may be the inputs */
            memcpy(in_w, in_weights, n * sizeof *in_w);
            for (size_t i = 0; i < n; i++) weights[rank[i]] = in_w[i], ids[rank[i]] = in_id[i];
            return;
        }
    }
    /* By rank, without a branch on the data (an insertion sort mispredicts about once an
     * entry on weights in random order). A weight's order-preserving bit pattern (negative
     * weights too: BatchTopK on logits), then the id's complement, so every key is distinct
     * and the lower id ranks first. An entry's place is the number of keys above its own.
     * All of the input is read before any output is written, so they may be the same
     * arrays. */
    uint64_t key[TOPK_RANK_SORT_MAX];
    float weight[TOPK_RANK_SORT_MAX];
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        const float w = in_weights[i] + 0.0f; /* -0 as +0: they are equal */
        memcpy(&bits, &w, sizeof bits);
        bits ^= (bits >> 31) ? 0xFFFFFFFFu : 0x80000000u;
        key[i] = (uint64_t)bits << 32 | (uint32_t)~(uint32_t)in_ids[i];
        weight[i] = in_weights[i];
    }
    for (size_t i = 0; i < n; i++) {
        size_t rank = 0;
        for (size_t j = 0; j < n; j++) rank += key[j] > key[i];
        weights[rank] = weight[i];
        ids[rank] = (int32_t)~(uint32_t)key[i];
    }
}

topk_row_error topk_softmax_filter_row(const float *logits, size_t experts, size_t t,
                                       const topk_candidates *cand, float *lse, float *row_max,
                                       float *row_sum, float *prob_block) {
    const float *x = logits + t * experts;
    float m = -INFINITY;
    for (size_t e = 0; e < experts; e++) {
        if (isnan(x[e]) || x[e] == INFINITY) return topk_find_bad(x, experts, t);
        m = x[e] > m ? x[e] : m;
    }
    if (m == -INFINITY) return topk_find_bad(x, experts, t);
    float s = 0.0f;
    for (size_t e = 0; e < experts; e++) s += moert_exp_shifted(x[e], m);
    const float inv = 1.0f / s;
    for (size_t e = 0; e < experts; e++) {
        const float ex = moert_exp_shifted(x[e], m), p = ex * inv;
        prob_block[e] += p;
        if (p >= cand->bounds[e]) {
            const size_t i = cand->count[e]++;
            if (i < cand->cap) {
                cand->tokens[e * cand->cap + i] = (int32_t)t;
                cand->exps[e * cand->cap + i] = ex;
            }
        }
    }
    lse[t] = m + logf(s);
    row_max[t] = m, row_sum[t] = s;
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

topk_row_error topk_find_bad(const float *row, size_t experts, size_t row_index) {
    topk_row_error err = {TOPK_ROW_ALL_NEG_INF, row_index, 0};
    for (size_t e = 0; e < experts; e++) {
        float x = row[e];
        if (isnan(x)) return (topk_row_error){TOPK_ROW_NAN, row_index, e};
        if (x == INFINITY) return (topk_row_error){TOPK_ROW_POS_INF, row_index, e};
        if (x != -INFINITY) err.kind = TOPK_ROW_OK;
    }
    return err;
}

void topk_weights_inplace(const topk_job *job, float *w, float row_max, float row_sum) {
    const int k = job->k;
    if (job->score == MOERT_SCORE_SIGMOID) {
        for (int j = 0; j < k; j++) w[j] = moert_sigmoidf(w[j]);
        if (job->renormalize) {
            float sum = 0.0f;
            for (int j = 0; j < k; j++) sum += w[j];
            sum += 1e-20f; /* as Megatron-Core: an all-zero selection stays zero */
            for (int j = 0; j < k; j++) w[j] = w[j] / sum;
        }
    } else if (job->order == MOERT_SOFTMAX_POST) {
        /* Softmax over the k selected, against the largest (the first, unless noisy keys
         * chose them). */
        float first = w[0];
        for (int j = 1; j < k; j++) first = w[j] > first ? w[j] : first;
        float sum = 0.0f;
        for (int j = 0; j < k; j++) {
            w[j] = moert_expf(w[j] - first);
            sum += w[j];
        }
        for (int j = 0; j < k; j++) w[j] = w[j] / sum;
    } else {
        for (int j = 0; j < k; j++) w[j] = moert_expf(w[j] - row_max) / row_sum;
        if (job->renormalize) {
            float sum = 0.0f;
            for (int j = 0; j < k; j++) sum += w[j];
            for (int j = 0; j < k; j++) w[j] = w[j] / sum;
        }
    }
    if (job->scaling != 1.0f)
        for (int j = 0; j < k; j++) w[j] = w[j] * job->scaling;
}

topk_row_error topk_row_max_and_sum(const float *x, size_t E, size_t t, int normalise, float *max, float *sum) {
    float m = -INFINITY, s = 0.0f;
    for (size_t e = 0; e < E; e++) {
        const float xe = x[e];
        if (isnan(xe) || xe == INFINITY) return topk_find_bad(x, E, t);
        if (xe > m) {
            if (normalise) s = s * moert_expf(m - xe) + 1.0f;
            m = xe;
        } else if (normalise && xe != -INFINITY) {
            s += moert_expf(xe - m);
        }
    }
    if (m == -INFINITY) return topk_find_bad(x, E, t);
    *max = m, *sum = s;
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

void topk_order_equal_weights(int32_t *ids, const float *w, int k) {
    for (int i = 1; i < k; i++) {
        if (w[i] != w[i - 1] || ids[i] > ids[i - 1]) continue;
        const int32_t id = ids[i];
        int j = i;
        for (; j > 0 && w[j - 1] == w[i] && ids[j - 1] > id; j--) ids[j] = ids[j - 1];
        ids[j] = id;
    }
}

void topk_finish_row(const topk_job *job, size_t t, const float *keys, const int32_t *key_ids, size_t n, float m,
                     float s, const topk_scratch *scratch) {
    const size_t E = job->experts;
    const int k = job->k;
    const float *x = job->logits + t * E;
    int32_t *ids = job->ids + t * (size_t)k;
    float *w = job->weights + t * (size_t)k;
    topk_select_heap(keys, key_ids, n, k, w, ids);
    for (int j = 0; j < k; j++) w[j] = x[ids[j]];
    topk_weights_inplace(job, w, m, s);
    topk_order_equal_weights(ids, w, k);
    if (job->logsumexp != NULL) job->logsumexp[t] = m + logf(s);
    if (job->want_probs)
        for (size_t e = 0; e < E; e++) scratch->prob_block[e] += moert_expf(x[e] - m) / s;
}

topk_row_error topk_rows_noisy(const topk_job *job, size_t row_begin, size_t row_end, const topk_scratch *scratch) {
    const size_t E = job->experts;
    const int normalise = job->logsumexp != NULL || job->want_probs;
    float *keys = scratch->keys, *tmp = keys + E + 32;
    for (size_t t = row_begin; t < row_end; t++) {
        const float *x = job->logits + t * E;
        float m, s;
        const topk_row_error err = topk_row_max_and_sum(x, E, t, normalise, &m, &s);
        if (err.kind != TOPK_ROW_OK) return err;
        noise_keys(job->noise, job->noise->token_offset + t, x, E, keys, tmp);
        topk_finish_row(job, t, keys, NULL, E, m, s, scratch);
        /* Chosen in the keys' order: by weight, ties to the lower id. */
        int32_t *ids = job->ids + t * (size_t)job->k;
        float *w = job->weights + t * (size_t)job->k;
        topk_sort_entries(ids, w, (size_t)job->k, ids, w);
    }
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

topk_row_error topk_row_grouped(const topk_job *job, size_t t, const topk_scratch *scratch) {
    const size_t E = job->experts, G = (size_t)job->groups, M = (size_t)job->topk_groups;
    const size_t per_group = E / G;
    const int k = job->k;
    const float *x = job->logits + t * E;
    const int sigmoid = job->score == MOERT_SCORE_SIGMOID;

    /* The row's max and sum of exp(x - max), as the scalar reference computes them. */
    float m, s;
    const topk_row_error err = topk_row_max_and_sum(x, E, t, 1, &m, &s);
    if (err.kind != TOPK_ROW_OK) return err;

    /* The scores the groups are judged by, and the keys the selection ranks by. */
    float *group_keys = scratch->grouped;             /* [E] */
    float *allowed_keys = group_keys + E;             /* [E] */
    int32_t *allowed_ids = (int32_t *)(allowed_keys + E); /* [E] */
    float *group_scores = (float *)(allowed_ids + E);  /* [G] */
    float *top_keys = group_scores + G;                /* [G] */
    int32_t *top_ids = (int32_t *)(top_keys + G);      /* [G] */
    uint8_t *kept = (uint8_t *)(top_ids + G);          /* [G] */
    for (size_t e = 0; e < E; e++) {
        if (sigmoid)
            group_keys[e] = moert_sigmoidf(x[e]) + (job->bias ? job->bias[e] : 0.0f);
        else if (job->order == MOERT_SOFTMAX_PRE)
            group_keys[e] = moert_expf(x[e] - m) / s;
        else
            group_keys[e] = x[e];
    }

    /* Group scores: the sum of each group's top (k / M), taken best first, or its max. */
    for (size_t g = 0; g < G; g++) {
        const float *gk = group_keys + g * per_group;
        float score = gk[0];
        if (job->group_score == MOERT_GROUP_SCORE_MAX) {
            for (size_t i = 1; i < per_group; i++) score = gk[i] > score ? gk[i] : score;
        } else {
            const int take = k / (int)M;
            /* The allowed arrays are free until the groups are chosen. */
            topk_select_heap(gk, NULL, per_group, take, allowed_keys, allowed_ids);
            score = 0.0f;
            for (int i = 0; i < take; i++) score += allowed_keys[i];
        }
        group_scores[g] = score;
    }
    topk_select_heap(group_scores, NULL, G, (int)M, top_keys, top_ids);
    memset(kept, 0, G);
    for (size_t i = 0; i < M; i++) kept[top_ids[i]] = 1;

    /* The top k among the experts of the kept groups only. */
    size_t allowed = 0;
    for (size_t g = 0; g < G; g++) {
        if (!kept[g]) continue;
        for (size_t e = g * per_group; e < (g + 1) * per_group; e++) {
            allowed_keys[allowed] = job->bias ? group_keys[e] : x[e];
            allowed_ids[allowed] = (int32_t)e;
            allowed++;
        }
    }
    topk_finish_row(job, t, allowed_keys, allowed_ids, allowed, m, s, scratch);
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

/* The scalar reference of the top-k gate: plain C that reads like the maths.
 *
 * Per row: one pass keeps the running max m and the sum s of exp(x - m), rescaling s
 * when m grows (the online normaliser); a heap keeps the k best (key, expert) pairs;
 * the weights follow from the selected logits. */
#include <math.h>

#include "kernels/expf.h"
#include "kernels/topk_gate/internal.h"

static int needs_normaliser(const topk_job *job) {
    return (job->score == MOERT_SCORE_SOFTMAX && job->order == MOERT_SOFTMAX_PRE) ||
           job->logsumexp != NULL || job->want_probs;
}

topk_row_error topk_rows_scalar(const topk_job *job, size_t row_begin, size_t row_end,
                                const topk_scratch *scratch) {
    const size_t E = job->experts;
    const int normalise = needs_normaliser(job);
    if (job->noise != NULL) return topk_rows_noisy(job, row_begin, row_end, scratch);

    for (size_t t = row_begin; t < row_end; t++) {
        if (job->groups > 0) {
            topk_row_error err = topk_row_grouped(job, t, scratch);
            if (err.kind != TOPK_ROW_OK) return err;
            continue;
        }
        const float *x = job->logits + t * E;
        float m, s;
        const topk_row_error err = topk_row_max_and_sum(x, E, t, normalise, &m, &s);
        if (err.kind != TOPK_ROW_OK) return err;
        const float *keys = x;
        if (job->bias != NULL) {
            for (size_t e = 0; e < E; e++) scratch->keys[e] = moert_sigmoidf(x[e]) + job->bias[e];
            keys = scratch->keys;
        }
        topk_finish_row(job, t, keys, NULL, E, m, s, scratch);
    }
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

topk_row_error topk_softmax_filter_scalar(const float *logits, size_t tokens, size_t experts, size_t row_begin,
                                          size_t row_end, const topk_candidates *cand, float *lse,
                                          float *row_max, float *row_sum, float *prob_block, float *tile) {
    (void)tile, (void)tokens;
    for (size_t t = row_begin; t < row_end; t++) {
        topk_row_error err = topk_softmax_filter_row(logits, experts, t, cand, lse, row_max, row_sum, prob_block);
        if (err.kind != TOPK_ROW_OK) return err;
    }
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

size_t topk_compact_scalar(const float *x, size_t n, float bound, int32_t *out) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (x[i] >= bound) out[count++] = (int32_t)i;
    return count;
}

size_t topk_relu_row_scalar(const float *x, size_t n, float threshold, int32_t *ids, float *weights,
                            float *scratch) {
    int32_t *found_ids = (int32_t *)scratch;
    float *found = scratch + n;
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        const float w = x[i] - threshold;
        if (w > 0.0f) found_ids[count] = (int32_t)i, found[count] = w, count++;
    }
    topk_sort_entries(found_ids, found, count, ids, weights);
    return count;
}

size_t topk_batch_rows_scalar(const float *logits, size_t rows, size_t E, const topk_batch_rows *b, int32_t *ids,
                              float *scores, uint32_t *counts, float *scratch) {
    (void)scratch;
    size_t total = 0;
    for (size_t r = 0; r < rows; r++) {
        const float *x = logits + r * E;
        size_t count = 0;
        for (size_t i = 0; i < E; i++) {
            if (!(x[i] >= b->logit_bound[r])) continue;
            const float score = b->probs ? moert_exp_shifted(x[i], b->max[r]) / b->sum[r] : x[i];
            if (score >= b->bound) ids[total + count] = (int32_t)i, scores[total + count] = score, count++;
        }
        topk_sort_entries(ids + total, scores + total, count, ids + total, scores + total);
        counts[r] = (uint32_t)count;
        total += count;
    }
    return total;
}

size_t topk_noise_tile_scalar(const noise_spec *spec, uint64_t first, size_t E, float *buf) {
    (void)spec, (void)first, (void)E, (void)buf;
    return 0; /* no tiles: its rows take kernels/noise.c itself */
}

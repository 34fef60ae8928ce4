/* The top-k gate, AVX2 + FMA variant. Compiled with -mavx2 -mfma only. */
/* GCC 12 warns that lanes of the selection's arrays (W, st[1], ...) "may be used
 * uninitialized" where only the first k, or the second tile of a pair, are live: the
 * loops that read them are bounded by the same k or pair flag, which it cannot follow. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kernels/topk_gate/simd_avx2.h"
#include "kernels/topk_gate/vector_impl.h"

topk_row_error topk_rows_avx2(const topk_job *job, size_t row_begin, size_t row_end,
                              const topk_scratch *scratch) {
    return vec_rows(job, row_begin, row_end, scratch);
}

topk_row_error topk_softmax_filter_avx2(const float *logits, size_t tokens, size_t experts, size_t row_begin,
                                        size_t row_end, const topk_candidates *cand, float *lse,
                                        float *row_max, float *row_sum, float *prob_block, float *tile) {
    return vec_softmax_filter(logits, tokens, experts, row_begin, row_end, cand, lse, row_max, row_sum, prob_block, tile);
}

size_t topk_compact_avx2(const float *x, size_t n, float bound, int32_t *out) {
    return vec_compact(x, n, bound, out);
}

size_t topk_relu_row_avx2(const float *x, size_t n, float threshold, int32_t *ids, float *weights,
                           float *scratch) {
    return vec_relu_row(x, n, threshold, ids, weights, scratch);
}

size_t topk_batch_rows_avx2(const float *logits, size_t rows, size_t E, const topk_batch_rows *b, int32_t *ids,
                          float *scores, uint32_t *counts, float *scratch) {
    return vec_batch_rows(logits, rows, E, b, ids, scores, counts, scratch);
}

size_t topk_noise_tile_avx2(const noise_spec *spec, uint64_t first, size_t E, float *buf) {
    return vec_noise_tile(spec, first, E, buf);
}

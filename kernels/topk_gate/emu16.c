/* The top-k gate's 16-lane algorithm (the AVX-512 one) in portable C, for the tests. */
#define VEC_PORTABLE
#include "kernels/topk_gate/simd_emu16.h"
#include "kernels/topk_gate/vector_impl.h"

topk_row_error topk_rows_emu16(const topk_job *job, size_t row_begin, size_t row_end,
                               const topk_scratch *scratch) {
    return vec_rows(job, row_begin, row_end, scratch);
}

topk_row_error topk_softmax_emu16(const float *logits, size_t experts, size_t row_begin,
                                 size_t row_end, float *probs, float *lse) {
    return vec_softmax(logits, experts, row_begin, row_end, probs, lse);
}

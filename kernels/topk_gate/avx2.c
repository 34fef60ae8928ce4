/* The top-k gate, AVX2 + FMA variant. Compiled with -mavx2 -mfma only. */
#include "kernels/topk_gate/simd_avx2.h"
#include "kernels/topk_gate/vector_impl.h"

topk_row_error topk_rows_avx2(const topk_job *job, size_t row_begin, size_t row_end,
                              const topk_scratch *scratch) {
    return vec_rows(job, row_begin, row_end, scratch);
}

topk_row_error topk_softmax_avx2(const float *logits, size_t experts, size_t row_begin,
                                 size_t row_end, float *probs, float *lse) {
    return vec_softmax(logits, experts, row_begin, row_end, probs, lse);
}

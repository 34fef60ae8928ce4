/* The top-k gate, AVX-512 (F, BW, DQ, VL) variant. Compiled with its own -m flags only. */
#include "kernels/topk_gate/simd_avx512.h"
#include "kernels/topk_gate/vector_impl.h"

topk_row_error topk_rows_avx512(const topk_job *job, size_t row_begin, size_t row_end,
                                const topk_scratch *scratch) {
    return vec_rows(job, row_begin, row_end, scratch);
}

topk_row_error topk_softmax_avx512(const float *logits, size_t experts, size_t row_begin,
                                 size_t row_end, float *probs, float *lse) {
    return vec_softmax(logits, experts, row_begin, row_end, probs, lse);
}

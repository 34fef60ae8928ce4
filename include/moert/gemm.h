/* moert: the dense matrix products of the gate and the experts.
 *
 * The library was chosen by measurement on the expert shapes (bench/gemm_libraries.md):
 * oneDNN's dnnl_sgemm. moert calls it on one thread at a time, each call on a block of
 * rows whose bounds do not depend on the thread count, so results are bit-identical for
 * any number of threads. Weights in bfloat16 are converted to float32 tile by tile
 * where the CPU has no bfloat16 arithmetic. */
#ifndef MOERT_GEMM_H
#define MOERT_GEMM_H

#include <stddef.h>

#include "moert/export.h"
#include "moert/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The GEMM library and its version, e.g. "oneDNN 2.6.3 (dnnl_sgemm)". */
MOERT_API const char *moert_gemm_library(void);

/* How bfloat16 weights are multiplied on this machine, e.g. "bf16 converted to f32 per
 * expert block, then dnnl_sgemm". */
MOERT_API const char *moert_gemm_bf16_path(void);

/* C[M,N] = A[M,K] B[K,N] (+ C when accumulate), row-major with leading dimensions,
 * on the calling thread. MOERT_EINVAL on a bad shape, MOERT_EINTERNAL when the library
 * fails (its status in the detail). */
MOERT_API moert_status moert_sgemm(size_t M, size_t N, size_t K, const float *A, size_t lda,
                                   const float *B, size_t ldb, float *C, size_t ldc, int accumulate);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_GEMM_H */

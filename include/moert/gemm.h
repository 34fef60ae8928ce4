/* moert: the dense matrix products of the gate and the experts.
 *
 * The library was chosen by measurement on the expert shapes (bench/gemm_libraries.md):
 * oneDNN's dnnl_sgemm. moert calls it on one thread at a time, each call on a block of
 * rows whose bounds do not depend on the thread count, so results are bit-identical for
 * any number of threads. Weights in bfloat16 go through oneDNN's bf16 matmul where the
 * CPU has bfloat16 arithmetic, and are converted to float32 per expert chunk elsewhere. */
#ifndef MOERT_GEMM_H
#define MOERT_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "moert/export.h"
#include "moert/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The GEMM library and its version, e.g. "oneDNN 2.6.3 (dnnl_sgemm)". */
MOERT_API const char *moert_gemm_library(void);

/* How bfloat16 weights are multiplied on this machine: oneDNN's bf16 matmul where the
 * CPU has bfloat16 arithmetic, else conversion to float32 and dnnl_sgemm. */
MOERT_API const char *moert_gemm_bf16_path(void);

/* 1 if this CPU has bfloat16 arithmetic (AVX512_BF16 or AMX) for the native path. */
MOERT_API int moert_gemm_bf16_native(void);

/* C[M,N] (float32) = A[M,K] B[K,N] (bfloat16 bits), row-major, M from 1 to max_rows,
 * called from thread `thread` of `threads` (each thread its own stream and memory). All
 * the library's objects are made by create; a call allocates nothing. MOERT_EUNSUPPORTED
 * without bfloat16 arithmetic. */
typedef struct moert_gemm_bf16 moert_gemm_bf16;
MOERT_API moert_status moert_gemm_bf16_create(size_t K, size_t N, size_t lda, size_t ldb, size_t ldc,
                                              size_t max_rows, int threads, moert_gemm_bf16 **gemm);
MOERT_API moert_status moert_gemm_bf16_run(moert_gemm_bf16 *gemm, int thread, size_t M, const uint16_t *A,
                                           const uint16_t *B, float *C);
MOERT_API void moert_gemm_bf16_destroy(moert_gemm_bf16 *gemm);

/* C[M,N] = A[M,K] B[K,N] (+ C when accumulate), row-major with leading dimensions,
 * on the calling thread. MOERT_EINVAL on a bad shape, MOERT_EINTERNAL when the library
 * fails (its status in the detail). */
MOERT_API moert_status moert_sgemm(size_t M, size_t N, size_t K, const float *A, size_t lda,
                                   const float *B, size_t ldb, float *C, size_t ldc, int accumulate);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_GEMM_H */

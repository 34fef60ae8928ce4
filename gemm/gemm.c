/* The GEMM of the gate and the experts: oneDNN's dnnl_sgemm (row-major), one thread per
 * call. moert parallelises over blocks of rows itself: inside moert's OpenMP regions
 * oneDNN (built on the same OpenMP runtime) runs each call on the calling thread. */
#include <dnnl.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>

#include "common/error.h"
#include "moert/gemm.h"

const char *moert_gemm_library(void) {
    static char name[64];
    if (name[0] == '\0') {
        const dnnl_version_t *v = dnnl_version();
        snprintf(name, sizeof name, "oneDNN %d.%d.%d (dnnl_sgemm)", v->major, v->minor, v->patch);
    }
    return name;
}

const char *moert_gemm_bf16_path(void) {
    return moert_gemm_bf16_native() ? "native: oneDNN bf16 matmul (bf16 x bf16 -> f32, AVX512_BF16/AMX)"
                                    : "converted: bf16 rows and weights to f32 per expert chunk, then dnnl_sgemm";
}

moert_status moert_sgemm(size_t M, size_t N, size_t K, const float *A, size_t lda, const float *B, size_t ldb,
                         float *C, size_t ldc, int accumulate) {
    MOERT_RETURN_ERROR_IF(A == NULL || B == NULL || C == NULL, MOERT_EINVAL, "sgemm: NULL matrix");
    MOERT_RETURN_ERROR_IF(lda < K || ldb < N || ldc < N, MOERT_EINVAL,
                          "sgemm: leading dimensions %zu, %zu, %zu too small for M=%zu N=%zu K=%zu", lda, ldb,
                          ldc, M, N, K);
    MOERT_RETURN_ERROR_IF(M > (size_t)INT64_MAX || N > (size_t)INT64_MAX || K > (size_t)INT64_MAX ||
                              lda > (size_t)INT64_MAX || ldb > (size_t)INT64_MAX || ldc > (size_t)INT64_MAX,
                          MOERT_EOVERFLOW, "sgemm: dimension too large");
    if (M == 0 || N == 0) return MOERT_OK;
    /* One thread: oneDNN sizes its team by omp_get_max_threads() whenever the caller's
     * region is not active (a team of one is not), which would put a second team on
     * cores the caller's threads already hold. The setting is the calling task's own. */
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    const dnnl_status_t st = dnnl_sgemm('N', 'N', (dnnl_dim_t)M, (dnnl_dim_t)N, (dnnl_dim_t)K, 1.0f, A,
                                        (dnnl_dim_t)lda, B, (dnnl_dim_t)ldb, accumulate ? 1.0f : 0.0f, C,
                                        (dnnl_dim_t)ldc);
    omp_set_num_threads(threads);
    MOERT_RETURN_ERROR_IF(st != dnnl_success, MOERT_EINTERNAL, "dnnl_sgemm failed with status %d (M=%zu N=%zu K=%zu)",
                          (int)st, M, N, K);
    return MOERT_OK;
}

/* bfloat16 GEMM through oneDNN's matmul primitive (bf16 x bf16 -> f32), where the CPU
 * has bfloat16 arithmetic (AVX512_BF16 or AMX): about 1.5x the float32 GEMM's rate on
 * the expert shapes (bench/gemm_libraries.md). M is a run-time dimension, so one
 * primitive serves every chunk size; everything a call needs (streams, memory objects
 * for each M, the scratchpad) is made at creation, so a call allocates nothing. */
#include <dnnl.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "moert/cpu.h"
#include "moert/gemm.h"

typedef struct bf16_thread {
    dnnl_stream_t stream;
    dnnl_memory_t *a, *c; /* [max_rows]: for M = index + 1 */
    dnnl_memory_t b, scratch;
    void *scratch_buffer;
} bf16_thread;

struct moert_gemm_bf16 {
    size_t K, N, lda, ldb, ldc, max_rows;
    int threads;
    dnnl_engine_t engine;
    dnnl_primitive_t primitive;
    bf16_thread *per_thread;
};

static moert_status dnnl_error(dnnl_status_t st, const char *what) {
    return moert_set_error(MOERT_EINTERNAL, "oneDNN bf16 matmul: %s failed with status %d", what, (int)st);
}

#define DNNL_TRY(call, what)                                                                \
    do {                                                                                    \
        const dnnl_status_t s_ = (call);                                                    \
        if (s_ != dnnl_success) return dnnl_error(s_, what);                                \
    } while (0)

static moert_status make_desc(dnnl_memory_desc_t *md, int64_t rows, int64_t cols, int64_t ld, dnnl_data_type_t type) {
    const dnnl_dims_t dims = {rows, cols}, strides = {ld, 1};
    DNNL_TRY(dnnl_memory_desc_init_by_strides(md, 2, dims, type, strides), "memory descriptor");
    return MOERT_OK;
}

int moert_gemm_bf16_native(void) {
    moert_cpu_info cpu;
    moert_cpu_info_get(&cpu);
    return cpu.avx512bf16 || cpu.amx_tile;
}

void moert_gemm_bf16_destroy(moert_gemm_bf16 *g) {
    if (g == NULL) return;
    for (int t = 0; g->per_thread && t < g->threads; t++) {
        bf16_thread *p = &g->per_thread[t];
        for (size_t m = 0; m < g->max_rows; m++) {
            if (p->a && p->a[m]) dnnl_memory_destroy(p->a[m]);
            if (p->c && p->c[m]) dnnl_memory_destroy(p->c[m]);
        }
        free(p->a), free(p->c);
        if (p->b) dnnl_memory_destroy(p->b);
        if (p->scratch) dnnl_memory_destroy(p->scratch);
        free(p->scratch_buffer);
        if (p->stream) dnnl_stream_destroy(p->stream);
    }
    free(g->per_thread);
    if (g->primitive) dnnl_primitive_destroy(g->primitive);
    if (g->engine) dnnl_engine_destroy(g->engine);
    free(g);
}

static moert_status create_parts(moert_gemm_bf16 *g) {
    DNNL_TRY(dnnl_engine_create(&g->engine, dnnl_cpu, 0), "engine");
    dnnl_memory_desc_t a, b, c;
    MOERT_FORWARD_IF_ERROR(make_desc(&a, DNNL_RUNTIME_DIM_VAL, (int64_t)g->K, (int64_t)g->lda, dnnl_bf16));
    MOERT_FORWARD_IF_ERROR(make_desc(&b, (int64_t)g->K, (int64_t)g->N, (int64_t)g->ldb, dnnl_bf16));
    MOERT_FORWARD_IF_ERROR(make_desc(&c, DNNL_RUNTIME_DIM_VAL, (int64_t)g->N, (int64_t)g->ldc, dnnl_f32));
    dnnl_matmul_desc_t desc;
    DNNL_TRY(dnnl_matmul_desc_init(&desc, &a, &b, NULL, &c), "descriptor");
    dnnl_primitive_attr_t attr;
    DNNL_TRY(dnnl_primitive_attr_create(&attr), "attributes");
    dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user); /* ours, made once */
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = dnnl_primitive_desc_create(&pd, &desc, attr, g->engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return moert_set_error(MOERT_EUNSUPPORTED, "oneDNN has no bf16 matmul on this CPU (status %d)", (int)st);
    const dnnl_memory_desc_t *scratch_md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    const size_t scratch_bytes = scratch_md ? dnnl_memory_desc_get_size(scratch_md) : 0;
    st = dnnl_primitive_create(&g->primitive, pd);
    if (st != dnnl_success) {
        dnnl_primitive_desc_destroy(pd);
        return dnnl_error(st, "primitive");
    }
    moert_status status = MOERT_OK;
    for (int t = 0; t < g->threads && status == MOERT_OK; t++) {
        bf16_thread *p = &g->per_thread[t];
        p->a = calloc(g->max_rows, sizeof(dnnl_memory_t));
        p->c = calloc(g->max_rows, sizeof(dnnl_memory_t));
        p->scratch_buffer = scratch_bytes ? malloc(scratch_bytes) : NULL;
        if (!p->a || !p->c || (scratch_bytes && !p->scratch_buffer)) {
            status = moert_set_error(MOERT_ENOMEM, "oneDNN bf16 matmul: out of memory");
            break;
        }
        if (dnnl_stream_create(&p->stream, g->engine, dnnl_stream_default_flags) != dnnl_success ||
            dnnl_memory_create(&p->b, &b, g->engine, DNNL_MEMORY_NONE) != dnnl_success ||
            (scratch_md && dnnl_memory_create(&p->scratch, scratch_md, g->engine, p->scratch_buffer) != dnnl_success)) {
            status = moert_set_error(MOERT_EINTERNAL, "oneDNN bf16 matmul: cannot make its streams and memory");
            break;
        }
        for (size_t m = 0; m < g->max_rows && status == MOERT_OK; m++) {
            dnnl_memory_desc_t am, cm;
            status = make_desc(&am, (int64_t)m + 1, (int64_t)g->K, (int64_t)g->lda, dnnl_bf16);
            if (status == MOERT_OK) status = make_desc(&cm, (int64_t)m + 1, (int64_t)g->N, (int64_t)g->ldc, dnnl_f32);
            if (status == MOERT_OK && (dnnl_memory_create(&p->a[m], &am, g->engine, DNNL_MEMORY_NONE) != dnnl_success ||
                                       dnnl_memory_create(&p->c[m], &cm, g->engine, DNNL_MEMORY_NONE) != dnnl_success))
                status = moert_set_error(MOERT_EINTERNAL, "oneDNN bf16 matmul: cannot make memory objects");
        }
    }
    dnnl_primitive_desc_destroy(pd);
    return status;
}

moert_status moert_gemm_bf16_create(size_t K, size_t N, size_t lda, size_t ldb, size_t ldc, size_t max_rows,
                                    int threads, moert_gemm_bf16 **out) {
    MOERT_RETURN_ERROR_IF(out == NULL, MOERT_EINVAL, "moert_gemm_bf16_create: NULL argument");
    *out = NULL;
    MOERT_RETURN_ERROR_IF(K == 0 || N == 0 || max_rows == 0 || threads < 1, MOERT_EINVAL,
                          "bf16 GEMM: K=%zu, N=%zu, max_rows=%zu, threads=%d must be positive", K, N, max_rows, threads);
    MOERT_RETURN_ERROR_IF(lda < K || ldb < N || ldc < N, MOERT_EINVAL, "bf16 GEMM: leading dimensions too small");
    MOERT_RETURN_ERROR_IF(!moert_gemm_bf16_native(), MOERT_EUNSUPPORTED,
                          "bf16 GEMM: this CPU has no bfloat16 arithmetic (AVX512_BF16 or AMX)");
    moert_gemm_bf16 *g = calloc(1, sizeof *g);
    MOERT_RETURN_ERROR_IF(g == NULL, MOERT_ENOMEM, "bf16 GEMM: out of memory");
    *g = (moert_gemm_bf16){K, N, lda, ldb, ldc, max_rows, threads, NULL, NULL, NULL};
    g->per_thread = calloc((size_t)threads, sizeof(bf16_thread));
    moert_status st = g->per_thread ? create_parts(g) : moert_set_error(MOERT_ENOMEM, "bf16 GEMM: out of memory");
    if (st != MOERT_OK) {
        moert_gemm_bf16_destroy(g);
        return st;
    }
    *out = g;
    return MOERT_OK;
}

moert_status moert_gemm_bf16_run(moert_gemm_bf16 *g, int thread, size_t M, const uint16_t *A, const uint16_t *B,
                                 float *C) {
    MOERT_RETURN_ERROR_IF(g == NULL || A == NULL || B == NULL || C == NULL, MOERT_EINVAL, "bf16 GEMM: NULL argument");
    MOERT_RETURN_ERROR_IF(thread < 0 || thread >= g->threads, MOERT_EINVAL, "bf16 GEMM: thread %d of %d", thread,
                          g->threads);
    MOERT_RETURN_ERROR_IF(M > g->max_rows, MOERT_EINVAL, "bf16 GEMM: M=%zu exceeds %zu", M, g->max_rows);
    if (M == 0) return MOERT_OK;
    bf16_thread *p = &g->per_thread[thread];
    dnnl_memory_set_data_handle(p->a[M - 1], (void *)A);
    dnnl_memory_set_data_handle(p->b, (void *)B);
    dnnl_memory_set_data_handle(p->c[M - 1], C);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, p->a[M - 1]}, {DNNL_ARG_WEIGHTS, p->b}, {DNNL_ARG_DST, p->c[M - 1]},
                               {DNNL_ARG_SCRATCHPAD, p->scratch}};
    /* One thread, as moert_sgemm: the caller parallelises. */
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    dnnl_status_t st = dnnl_primitive_execute(g->primitive, p->stream, p->scratch ? 4 : 3, args);
    if (st == dnnl_success) st = dnnl_stream_wait(p->stream);
    omp_set_num_threads(threads);
    if (st != dnnl_success) return dnnl_error(st, "execution");
    return MOERT_OK;
}

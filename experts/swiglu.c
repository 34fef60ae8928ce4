/* SwiGLU experts: out = (silu(x W1) * (x W3)) W2, two GEMMs per chunk of rows. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/bf16.h"
#include "common/error.h"
#include "experts/experts.h"
#include "moert/gemm.h"

static size_t elem_bytes(moert_dtype dtype) { return dtype == MOERT_DTYPE_BF16 ? 2 : 4; }

moert_status expert_bf16_gemms(expert_shape *shape, const moert_layer_config *c, int threads,
                               moert_gemm_bf16 **gemm13, moert_gemm_bf16 **gemm2) {
    *gemm13 = *gemm2 = NULL;
    shape->native_bf16 = 0;
    if (c->expert_kind != MOERT_EXPERT_SWIGLU || c->dtype != MOERT_DTYPE_BF16 || c->convert_bf16 ||
        c->chunk_rows > EXPERT_BF16_MAX_CHUNK || !moert_gemm_bf16_native())
        return MOERT_OK;
    const size_t d = shape->d, f = shape->f, ld = shape->ld, chunk = c->chunk_rows;
    moert_status st = moert_gemm_bf16_create(d, 2 * f, ld, 2 * f, 2 * f, chunk, threads, gemm13);
    if (st == MOERT_OK) st = moert_gemm_bf16_create(f, d, f, d, ld, chunk, threads, gemm2);
    if (st != MOERT_OK) {
        moert_gemm_bf16_destroy(*gemm13), moert_gemm_bf16_destroy(*gemm2);
        *gemm13 = *gemm2 = NULL;
        return st == MOERT_EUNSUPPORTED ? MOERT_OK : st; /* oneDNN declined: convert instead */
    }
    shape->native_bf16 = 1;
    return MOERT_OK;
}

size_t expert_weight_bytes(const expert_shape *s) { return 3 * s->d * s->f * elem_bytes(s->dtype); }

size_t expert_scratch_floats(const expert_shape *s, size_t chunk_rows) {
    size_t n = chunk_rows * 2 * s->f + 16;
    if (s->dtype == MOERT_DTYPE_BF16 && s->native_bf16) n += (chunk_rows * s->f + 1) / 2 + 16;
    else if (s->dtype == MOERT_DTYPE_BF16) n += chunk_rows * s->ld + 3 * s->d * s->f + 32;
    return n;
}

void expert_scratch_bind(expert_scratch *scratch, const expert_shape *s, size_t chunk_rows, float *memory) {
    memset(scratch, 0, sizeof *scratch);
    scratch->h = memory;
    if (s->dtype == MOERT_DTYPE_BF16 && s->native_bf16) {
        scratch->h_bf16 = (uint16_t *)(memory + ((chunk_rows * 2 * s->f + 15) & ~(size_t)15));
    } else if (s->dtype == MOERT_DTYPE_BF16) {
        /* Each part starts on a 64-byte line (memory is page-aligned). */
        float *p = memory + ((chunk_rows * 2 * s->f + 15) & ~(size_t)15);
        scratch->rows_f32 = p;
        p += chunk_rows * s->ld;
        scratch->w13_f32 = p;
        scratch->w2_f32 = p + ((2 * s->d * s->f + 15) & ~(size_t)15);
    }
}

void expert_store_weights(const expert_shape *s, const float *w1, const float *w3, const float *w2, void *weights) {
    const size_t d = s->d, f = s->f;
    if (s->dtype == MOERT_DTYPE_F32) {
        float *w13 = weights, *out2 = w13 + 2 * d * f;
        for (size_t i = 0; i < d; i++) {
            memcpy(w13 + i * 2 * f, w1 + i * f, f * sizeof(float));
            memcpy(w13 + i * 2 * f + f, w3 + i * f, f * sizeof(float));
        }
        memcpy(out2, w2, f * d * sizeof(float));
    } else {
        uint16_t *w13 = weights, *out2 = w13 + 2 * d * f;
        for (size_t i = 0; i < d; i++) {
            moert_f32_to_bf16_row(w1 + i * f, w13 + i * 2 * f, f);
            moert_f32_to_bf16_row(w3 + i * f, w13 + i * 2 * f + f, f);
        }
        moert_f32_to_bf16_row(w2, out2, f * d);
    }
}

/* silu(a) * b over the halves of each row of h [m, 2f], into the first half. */
static void swiglu_activate(float *h, size_t m, size_t f) {
    for (size_t r = 0; r < m; r++) {
        float *a = h + r * 2 * f;
        const float *b = a + f;
        for (size_t j = 0; j < f; j++) a[j] = a[j] / (1.0f + expf(-a[j])) * b[j];
    }
}

/* Native bf16: x W13 and h W2 by the bf16 GEMM, the activation rounded to bf16 between. */
static moert_status swiglu_bf16(const expert_shape *s, const void *weights, const void *rows, size_t m, float *out,
                                expert_scratch *scratch) {
    const size_t d = s->d, f = s->f;
    const uint16_t *w13 = weights, *w2 = w13 + 2 * d * f;
    MOERT_FORWARD_IF_ERROR(moert_gemm_bf16_run(scratch->gemm13, scratch->thread, m, rows, w13, scratch->h));
    swiglu_activate(scratch->h, m, f);
    for (size_t r = 0; r < m; r++) moert_f32_to_bf16_row(scratch->h + r * 2 * f, scratch->h_bf16 + r * f, f);
    return moert_gemm_bf16_run(scratch->gemm2, scratch->thread, m, scratch->h_bf16, w2, out);
}

moert_status expert_swiglu(const expert_shape *s, const void *weights, const void *rows, size_t m, float *out,
                           expert_scratch *scratch) {
    const size_t d = s->d, f = s->f, ld = s->ld;
    if (s->dtype == MOERT_DTYPE_BF16 && s->native_bf16) return swiglu_bf16(s, weights, rows, m, out, scratch);
    const float *x, *w13, *w2;
    if (s->dtype == MOERT_DTYPE_F32) {
        x = rows;
        w13 = weights;
        w2 = w13 + 2 * d * f;
    } else {
        /* No bfloat16 arithmetic here: the chunk's rows, and the expert's weights unless
         * this thread's last chunk was of the same expert, become float32. */
        const uint16_t *xb = rows, *wb = weights;
        for (size_t r = 0; r < m; r++) moert_bf16_to_f32_row(xb + r * ld, scratch->rows_f32 + r * ld, d);
        if (scratch->w13_of != weights) {
            moert_bf16_to_f32_row(wb, scratch->w13_f32, 2 * d * f);
            moert_bf16_to_f32_row(wb + 2 * d * f, scratch->w2_f32, f * d);
            scratch->w13_of = scratch->w2_of = weights;
        }
        x = scratch->rows_f32;
        w13 = scratch->w13_f32;
        w2 = scratch->w2_f32;
    }
    MOERT_FORWARD_IF_ERROR(moert_sgemm(m, 2 * f, d, x, ld, w13, 2 * f, scratch->h, 2 * f, 0));
    swiglu_activate(scratch->h, m, f);
    return moert_sgemm(m, d, f, scratch->h, 2 * f, w2, d, out, ld, 0);
}

/* Internal: the experts' computation on a chunk of dispatched rows.
 *
 * Rows and outputs are [m, ld] with ld = d rounded up to 16 floats, so every row starts
 * on a cache line whatever the worker layout. A SwiGLU expert's weights are one block in
 * its worker's memory: W13 [d, 2f] (W1's columns, then W3's) and W2 [f, d], in the
 * layer's dtype: one GEMM gives x W1 and x W3 side by side. */
#ifndef MOERT_EXPERTS_H
#define MOERT_EXPERTS_H

#include <stddef.h>
#include <stdint.h>

#include "moert/gemm.h"
#include "moert/layer.h"
#include "moert/status.h"

typedef struct expert_shape {
    size_t d, f, ld; /* ld: the stride of rows and outputs, in elements */
    moert_dtype dtype;
    int native_bf16; /* bf16 through the bf16 GEMM, not converted to f32 */
} expert_shape;

/* A thread's scratch for expert chunks of at most `chunk_rows` rows. */
typedef struct expert_scratch {
    float *h;          /* [chunk_rows, 2f]: x W13, then silu(x W1) * (x W3) */
    float *rows_f32;   /* [chunk_rows, ld], bf16 rows converted */
    float *w13_f32;    /* [d, 2f], bf16 weights converted */
    float *w2_f32;     /* [f, d] */
    const void *w13_of, *w2_of; /* whose weights the f32 copies hold */
    uint16_t *h_bf16;  /* native bf16: [chunk_rows, f], the activation as the second GEMM's input */
    moert_gemm_bf16 *gemm13, *gemm2; /* native bf16: x W13 and h W2 */
    int thread;        /* the caller's thread, for the bf16 GEMMs' per-thread state */
} expert_scratch;

/* The bf16 GEMMs of SwiGLU experts, x W13 ([m, d] x [d, 2f]) and h W2 ([m, f] x [f, d]),
 * where the configuration asks for bf16 and the CPU has bf16 arithmetic: *gemm13 and
 * *gemm2 set and shape->native_bf16 = 1; otherwise both NULL and the converting path.
 * Chunks of more than EXPERT_BF16_MAX_CHUNK rows also convert: the bf16 GEMM keeps a
 * oneDNN memory object per chunk size and thread. */
#define EXPERT_BF16_MAX_CHUNK 1024
moert_status expert_bf16_gemms(expert_shape *shape, const moert_layer_config *config, int threads,
                               moert_gemm_bf16 **gemm13, moert_gemm_bf16 **gemm2);

/* Bytes of one expert's weights, and of a thread's scratch (floats). */
size_t expert_weight_bytes(const expert_shape *s);
size_t expert_scratch_floats(const expert_shape *s, size_t chunk_rows);
void expert_scratch_bind(expert_scratch *scratch, const expert_shape *s, size_t chunk_rows, float *memory);

/* Stores expert weights given as f32 W1, W3 [d, f] and W2 [f, d] into `weights`. */
void expert_store_weights(const expert_shape *s, const float *w1, const float *w3, const float *w2, void *weights);

/* out [m, ld] = SwiGLU of rows [m, ld] (the layer's dtype) with weights (as stored). */
moert_status expert_swiglu(const expert_shape *s, const void *weights, const void *rows, size_t m, float *out,
                           expert_scratch *scratch);

/* The synthetic expert `expert` of `experts`: each element y = x, then `cost` times
 * y = y a + b, with a = 1 - 1 / (expert + 2) and b = (expert + 1) / 64: real arithmetic
 * whose cost grows with `cost`, and a result that depends on the expert. */
void expert_synthetic(const expert_shape *s, size_t expert, int cost, const void *rows, size_t m, float *out);

/* The synthetic expert's constants, for references. */
static inline float expert_synthetic_a(size_t expert) { return 1.0f - 1.0f / (float)(expert + 2); }
static inline float expert_synthetic_b(size_t expert) { return (float)(expert + 1) / 64.0f; }

#endif /* MOERT_EXPERTS_H */

/* Combine: each token's output is the weighted sum of its experts' outputs, added in the
 * token-major entry order, so the result does not depend on how tokens are split among
 * threads. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/bf16.h"
#include "common/error.h"
#include "dispatch/dispatch.h"
#include "router/internal.h"

/* Each output row is summed COMBINE_BLOCK columns at a time in an L1 block, every entry
 * adding to it, so each output line is written to memory once (a whole-row pass per
 * entry wrote it k times). The additions per element keep the entry order. */
static void weighted_set(float *restrict acc, const float *restrict row, float w, size_t n) {
    for (size_t j = 0; j < n; j++) acc[j] = w * row[j];
}

static void weighted_add(float *restrict acc, const float *restrict row, float w, size_t n) {
    for (size_t j = 0; j < n; j++) acc[j] = acc[j] + w * row[j];
}

/* Large outputs are written with non-temporal stores: a plain store first reads the
 * line it fills (read-for-ownership), which costs a quarter of combine's traffic. */
#define COMBINE_STREAM_BYTES ((size_t)8 << 20)

/* bf16 rounding (as moert_f32_to_bf16) of 16 floats at a time with AVX2: the baseline's
 * SSE2 has no 32-to-16-bit pack, and the bf16 output ran at 0.74x memcpy's rate without
 * it. Returns how many were written. */
__attribute__((target("avx2"))) static size_t bf16_store_avx2(uint16_t *o, const float *block, size_t n, int stream) {
    const __m256i round = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1), abs = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i inf = _mm256_set1_epi32(0x7F800000), quiet = _mm256_set1_epi32(0x0040);
    size_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m256i h[2];
        for (int i = 0; i < 2; i++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(block + j + 8 * i));
            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), one);
            const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(round, lsb)), 16);
            const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(bits, abs), inf);
            const __m256i q = _mm256_or_si256(_mm256_srli_epi32(bits, 16), quiet);
            h[i] = _mm256_blendv_epi8(rounded, q, nan);
        }
        /* packus works within 128-bit halves: put the quarters back in order. */
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h[0], h[1]), 0xD8);
        if (stream && ((uintptr_t)(o + j) & 31) == 0)
            _mm256_stream_si256((__m256i *)(o + j), packed);
        else
            _mm256_storeu_si256((__m256i *)(o + j), packed);
    }
    return j;
}

static void store_block(void *out, size_t at, const float *block, size_t n, moert_dtype dtype, int stream) {
    if (dtype == MOERT_DTYPE_F32) {
        float *o = (float *)out + at;
        size_t j = 0;
        if (stream && ((uintptr_t)o & 15) == 0)
            for (; j + 4 <= n; j += 4) _mm_stream_ps(o + j, _mm_loadu_ps(block + j));
        for (; j < n; j++) o[j] = block[j];
    } else {
        uint16_t *o = (uint16_t *)out + at;
        size_t j = __builtin_cpu_supports("avx2") ? bf16_store_avx2(o, block, n, stream) : 0;
        for (; j < n; j++) o[j] = moert_f32_to_bf16(block[j]);
    }
}

/* out row t (at element t d) = sum over entries [first, last) of weights[i] x row(i),
 * a block of COMBINE_BLOCK columns at a time in `block` (L1). */
static void combine_one(void *out, size_t t, const float *weights, int64_t first, int64_t last, int64_t next_last,
                        size_t d, moert_dtype dtype, int stream, float *block,
                        const float *(*row)(const void *, int64_t), const void *ctx) {
    for (size_t j0 = 0; j0 < d; j0 += COMBINE_BLOCK) {
        const size_t n = d - j0 < COMBINE_BLOCK ? d - j0 : COMBINE_BLOCK;
        /* Within a row the hardware prefetches; the jump to the next token's rows (entries
         * [last, next_last)) it cannot guess: fetch their first block during the last. */
        if (j0 + n == d)
            for (int64_t i = last; i < next_last; i++)
                for (size_t j = 0; j < COMBINE_BLOCK && j < d; j += 16) __builtin_prefetch(row(ctx, i) + j);
        if (first == last) {
            memset(block, 0, n * sizeof(float));
        } else {
            weighted_set(block, row(ctx, first) + j0, weights[first], n);
            for (int64_t i = first + 1; i < last; i++) weighted_add(block, row(ctx, i) + j0, weights[i], n);
        }
        store_block(out, t * d + j0, block, n, dtype, stream);
    }
}

static const float *row_by_pointer(const void *ctx, int64_t i) { return ((const float *const *)ctx)[i]; }

typedef struct slot_rows {
    const float *base;
    const int64_t *entry_slots;
    size_t d;
} slot_rows;

static const float *row_by_slot(const void *ctx, int64_t i) {
    const slot_rows *s = ctx;
    return s->base + (size_t)s->entry_slots[i] * s->d;
}

void combine_tokens(const moert_plan_view *plan, const float *const *entry_output, size_t d, moert_dtype dtype,
                    size_t token_begin, size_t token_end, void *out, float *block) {
    const size_t elem = dtype == MOERT_DTYPE_BF16 ? 2 : 4;
    const int stream = plan->tokens * d * elem >= COMBINE_STREAM_BYTES;
    for (size_t t = token_begin; t < token_end; t++)
        combine_one(out, t, plan->weights, plan->token_offsets[t], plan->token_offsets[t + 1],
                    t + 1 < token_end ? plan->token_offsets[t + 2] : plan->token_offsets[t + 1], d, dtype, stream, block,
                    row_by_pointer, entry_output);
    if (stream) _mm_sfence(); /* the streamed lines, visible before the threads join */
}

moert_status moert_combine(const moert_plan *plan, const float *expert_out, size_t d, moert_dtype dtype, void *out,
                           int threads) {
    MOERT_RETURN_ERROR_IF(plan == NULL || expert_out == NULL || out == NULL, MOERT_EINVAL,
                          "moert_combine: NULL argument");
    MOERT_RETURN_ERROR_IF(dtype != MOERT_DTYPE_F32 && dtype != MOERT_DTYPE_BF16, MOERT_EINVAL,
                          "moert_combine: unknown dtype %d", (int)dtype);
    MOERT_RETURN_ERROR_IF(d == 0, MOERT_EINVAL, "moert_combine: d is 0");
    const size_t T = plan->tokens;
    if (threads <= 0) threads = omp_get_max_threads();
    const size_t elem = dtype == MOERT_DTYPE_BF16 ? 2 : 4;
    const int stream = T * d * elem >= COMBINE_STREAM_BYTES;
    float *blocks = malloc((size_t)threads * COMBINE_BLOCK * sizeof(float));
    MOERT_RETURN_ERROR_IF(blocks == NULL, MOERT_ENOMEM, "moert_combine: cannot allocate %zu bytes",
                          (size_t)threads * COMBINE_BLOCK * sizeof(float));
#pragma omp parallel num_threads(threads) if (threads > 1 && T > 16)
    {
        const int tid = omp_get_thread_num(), n = omp_get_num_threads();
        float *block = blocks + (size_t)tid * COMBINE_BLOCK;
        const slot_rows slots = {expert_out, plan->entry_slots, d};
        const size_t end = T * (size_t)(tid + 1) / (size_t)n;
        for (size_t t = T * (size_t)tid / (size_t)n; t < end; t++)
            combine_one(out, t, plan->weights, plan->token_offsets[t], plan->token_offsets[t + 1],
                        t + 1 < end ? plan->token_offsets[t + 2] : plan->token_offsets[t + 1], d, dtype, stream,
                        block, row_by_slot, &slots);
        if (stream) _mm_sfence();
    }
    free(blocks);
    return MOERT_OK;
}

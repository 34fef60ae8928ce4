/* Combine: each token's output is the weighted sum of its experts' outputs, added in the
 * token-major entry order, so the result does not depend on how tokens are split among
 * threads. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/bf16.h"
#include "common/error.h"
#include "dispatch/dispatch.h"
#include "router/internal.h"

static void weighted_set(float *restrict acc, const float *restrict row, float w, size_t d) {
    for (size_t j = 0; j < d; j++) acc[j] = w * row[j];
}

static void weighted_add(float *restrict acc, const float *restrict row, float w, size_t d) {
    for (size_t j = 0; j < d; j++) acc[j] = acc[j] + w * row[j];
}

void combine_tokens(const moert_plan_view *plan, const float *const *entry_output, size_t d, moert_dtype dtype,
                    size_t token_begin, size_t token_end, void *out, float *row) {
    for (size_t t = token_begin; t < token_end; t++) {
        float *acc = dtype == MOERT_DTYPE_F32 ? (float *)out + t * d : row;
        const int64_t first = plan->token_offsets[t], last = plan->token_offsets[t + 1];
        if (first == last) {
            memset(acc, 0, d * sizeof(float));
        } else {
            weighted_set(acc, entry_output[first], plan->weights[first], d);
            for (int64_t i = first + 1; i < last; i++) weighted_add(acc, entry_output[i], plan->weights[i], d);
        }
        if (dtype == MOERT_DTYPE_BF16) moert_f32_to_bf16_row(row, (uint16_t *)out + t * d, d);
    }
}

moert_status moert_combine(const moert_plan *plan, const float *expert_out, size_t d, moert_dtype dtype, void *out,
                           int threads) {
    MOERT_RETURN_ERROR_IF(plan == NULL || expert_out == NULL || out == NULL, MOERT_EINVAL,
                          "moert_combine: NULL argument");
    MOERT_RETURN_ERROR_IF(dtype != MOERT_DTYPE_F32 && dtype != MOERT_DTYPE_BF16, MOERT_EINVAL,
                          "moert_combine: unknown dtype %d", (int)dtype);
    MOERT_RETURN_ERROR_IF(d == 0, MOERT_EINVAL, "moert_combine: d is 0");
    const size_t T = plan->tokens;
    float *rows = NULL;
    if (threads <= 0) threads = omp_get_max_threads();
    if (dtype == MOERT_DTYPE_BF16) { /* a float32 row per thread */
        rows = malloc((size_t)threads * d * sizeof(float));
        MOERT_RETURN_ERROR_IF(rows == NULL, MOERT_ENOMEM, "moert_combine: cannot allocate %zu bytes",
                              (size_t)threads * d * sizeof(float));
    }
#pragma omp parallel num_threads(threads) if (threads > 1 && T > 16)
    {
        const int tid = omp_get_thread_num(), n = omp_get_num_threads();
        float *row = rows ? rows + (size_t)tid * d : NULL;
        for (size_t t = T * (size_t)tid / (size_t)n; t < T * (size_t)(tid + 1) / (size_t)n; t++) {
            float *acc = dtype == MOERT_DTYPE_F32 ? (float *)out + t * d : row;
            const int64_t first = plan->token_offsets[t], last = plan->token_offsets[t + 1];
            if (first == last) {
                memset(acc, 0, d * sizeof(float));
            } else {
                weighted_set(acc, expert_out + (size_t)plan->entry_slots[first] * d, plan->weights[first], d);
                for (int64_t i = first + 1; i < last; i++)
                    weighted_add(acc, expert_out + (size_t)plan->entry_slots[i] * d, plan->weights[i], d);
            }
            if (dtype == MOERT_DTYPE_BF16) moert_f32_to_bf16_row(row, (uint16_t *)out + t * d, d);
        }
    }
    free(rows);
    return MOERT_OK;
}

/* Combine: each token's output is the weighted sum of its experts' outputs, added in the
 * token-major entry order, so the result does not depend on how tokens are split among
 * threads. */
#include <string.h>

#include "common/bf16.h"
#include "dispatch/dispatch.h"

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

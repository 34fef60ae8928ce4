/* Synthetic experts: a cost per token that is real arithmetic (a chain of multiply-adds
 * per element, which the compiler cannot fold away), for routing experiments that need
 * expert time but no FFN weights. */
#include <stdint.h>

#include "common/bf16.h"
#include "experts/experts.h"

void expert_synthetic(const expert_shape *s, size_t expert, int cost, const void *rows, size_t m, float *out) {
    const size_t d = s->d, ld = s->ld;
    const float a = expert_synthetic_a(expert), b = expert_synthetic_b(expert);
    for (size_t r = 0; r < m; r++) {
        float *y = out + r * ld;
        if (s->dtype == MOERT_DTYPE_F32) {
            const float *x = (const float *)rows + r * ld;
            for (size_t j = 0; j < d; j++) y[j] = x[j];
        } else {
            moert_bf16_to_f32_row((const uint16_t *)rows + r * ld, y, d);
        }
        for (int c = 0; c < cost; c++)
            for (size_t j = 0; j < d; j++) y[j] = y[j] * a + b;
    }
}

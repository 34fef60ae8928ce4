/* The router's own score functions (see scores.h). */
#include "router/scores.h"

#include <math.h>
#include <string.h>

#include "kernels/expf.h"
#include "kernels/topk_gate/internal.h"

float scores_sqrt_softplus(float x) {
    if (x == -INFINITY) return 0.0f;
    return sqrtf(fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))));
}

#define SOFTPICK_EPSILON 1e-6f

/* The scaled denominator sum_j |e^(x_j - m) - c|: 16 partial sums, lane j % 16, then a
 * fixed pairwise tree; a plain loop the compiler vectorises in each clone. */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static float softpick_sum(const float *x, size_t E,
                                                                                         float m, float c) {
    float lanes[16] = {0};
    size_t e = 0;
    for (; e + 16 <= E; e += 16)
        for (int j = 0; j < 16; j++) lanes[j] += fabsf(moert_expf(x[e + j] - m) - c);
    for (int j = 0; e + (size_t)j < E; j++) lanes[j] += fabsf(moert_expf(x[e + j] - m) - c);
    for (int width = 8; width >= 1; width /= 2)
        for (int j = 0; j < width; j++) lanes[j] += lanes[j + width];
    return lanes[0];
}

int scores_softpick_row(const float *x, size_t E, float *m, float *c, float *denominator) {
    float max = -INFINITY;
    for (size_t e = 0; e < E; e++) max = x[e] > max ? x[e] : max;
    *m = max;
    if (!(max > 0.0f)) return 0; /* every e^x - 1 <= 0 */
    *c = moert_expf(-max);
    *denominator = softpick_sum(x, E, max, *c) + SOFTPICK_EPSILON * *c;
    return 1;
}

float scores_softpick_weight(float x, float m, float c, float denominator) {
    /* e^(x - m) - e^-m = e^-m (e^x - 1): for x below 1 by expm1, whose result keeps its
     * precision where the difference would cancel (x near 0). */
    const float a = x < 1.0f ? c * expm1f(x) : moert_expf(x - m) - c;
    return a > 0.0f ? a / denominator : 0.0f;
}

/* Sigmoid's renormalisation (as Megatron-Core: + 1e-20) and the scaling. */
static void finish_weights(const moert_router_config *c, float *w, int k) {
    if (c->renormalize) {
        float sum = 0.0f;
        for (int j = 0; j < k; j++) sum += w[j];
        sum += 1e-20f;
        for (int j = 0; j < k; j++) w[j] = w[j] / sum;
    }
    if (c->scaling != 1.0f)
        for (int j = 0; j < k; j++) w[j] = w[j] * c->scaling;
}

void scores_rows(const moert_router_config *c, const float *logits, size_t E, size_t begin, size_t end, int32_t *ids,
                 float *weights, float *scratch) {
    const int k = c->k;
    float *keys = scratch, *top_keys = scratch + E + 32;
    int32_t *top_ids = (int32_t *)(top_keys + k + 16);
    for (size_t t = begin; t < end; t++) {
        const float *x = logits + t * E;
        int32_t *id = ids + t * (size_t)k;
        float *w = weights + t * (size_t)k;
        if (c->score == MOERT_SCORE_SOFTPICK) {
            float m, cm = 0.0f, den = 1.0f;
            const int any = scores_softpick_row(x, E, &m, &cm, &den);
            for (int j = 0; j < k; j++) w[j] = any ? scores_softpick_weight(x[id[j]], m, cm, den) : 0.0f;
            /* By logit, the weights do not increase; equal ones (the zeros) by id. */
            topk_order_equal_weights(id, w, k);
            finish_weights(c, w, k);
            continue;
        }
        if (c->bias != NULL) {
            /* Selection by score + bias; a masked expert stays out. */
            for (size_t e = 0; e < E; e++)
                keys[e] = x[e] == -INFINITY ? -INFINITY : scores_sqrt_softplus(x[e]) + c->bias[e];
            topk_select_heap(keys, NULL, E, k, top_keys, top_ids);
            for (int j = 0; j < k; j++) id[j] = top_ids[j], w[j] = scores_sqrt_softplus(x[top_ids[j]]);
            topk_sort_entries(id, w, (size_t)k, id, w);
        } else {
            for (int j = 0; j < k; j++) w[j] = scores_sqrt_softplus(x[id[j]]);
            topk_order_equal_weights(id, w, k);
        }
        finish_weights(c, w, k);
    }
}

/* The router's own score functions (see scores.h). */
#include "router/scores.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels/expf.h"
#include "kernels/topk_gate/internal.h"
#include "router/vec16.h"

float scores_sqrt_softplus(float x) {
    if (x == -INFINITY) return 0.0f;
    return sqrtf(fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))));
}

#define SOFTPICK_EPSILON TOPK_SOFTPICK_EPSILON
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

/* 16 lanes of x[0, n) from e, the tail padded with `pad` (a macro, as vec16.h says why). */
#define LOAD_PADDED(x, n, e, pad)                                                            \
    ({                                                                                       \
        float padded_[16];                                                                   \
        for (int pj_ = 0; pj_ < 16; pj_++) padded_[pj_] = (e) + (size_t)pj_ < (n) ? (x)[(e) + (size_t)pj_] : (pad); \
        V16_LOAD(padded_);                                                                   \
    })
#define LOAD_ROW(x, n, e) ((e) + 16 <= (n) ? V16_LOAD((x) + (e)) : LOAD_PADDED(x, n, e, -INFINITY))

static inline __attribute__((always_inline)) float lanes_max(const float *x, size_t n) {
    v16f m = V16_SET1(-INFINITY);
    for (size_t e = 0; e < n; e += 16) m = V16_MAX(LOAD_ROW(x, n, e), m);
    return V16_REDUCE_MAX(m);
}

/* The clones are static, reached through plain functions: clang emits a target_clones
 * dispatcher only where the function is called in its own file. */
CLONES static float row_max_clones(const float *x, size_t n) { return lanes_max(x, n); }
float scores_row_max(const float *x, size_t n) { return row_max_clones(x, n); }

/* Softpick's numerator before the relu, e^(x - m) - e^-m = e^-m (e^x - 1), lane by lane,
 * with one exponential: below x = 1/2 in magnitude as e^-m expm1(x) by its Taylor series to
 * x^9 (error below 2e-9 relative), which keeps its precision where the difference would
 * cancel (x near 0, where router logits live); elsewhere below x = 1 as e^-m (e^x - 1),
 * and above as the difference e^(x - m) - e^-m, neither of which cancels. The exponential
 * is the statistics' (within 2e-7; e^x - 1 >= 0.39 where it is used, and e^(x - m) >= e c,
 * so neither difference magnifies that). */
#define SOFTPICK_TERM(arg, m, c)                                                             \
    ({                                                                                       \
        const v16f v_ = (arg);                                                               \
        const v16i below_one_ = v_ < 1.0f;                                                   \
        const v16f e_ = V16_EXP2_STAT(V16_SELECT(below_one_, v_, v_ - (m)) * MOERT_EXPF_LOG2E); \
        v16f s_ = V16_SET1(1.0f / 362880.0f);                                                \
        s_ = s_ * v_ + 1.0f / 40320.0f;                                                      \
        s_ = s_ * v_ + 1.0f / 5040.0f;                                                       \
        s_ = s_ * v_ + 1.0f / 720.0f;                                                        \
        s_ = s_ * v_ + 1.0f / 120.0f;                                                        \
        s_ = s_ * v_ + 1.0f / 24.0f;                                                         \
        s_ = s_ * v_ + 1.0f / 6.0f;                                                          \
        s_ = s_ * v_ + 0.5f;                                                                 \
        const v16f expm1_ = V16_SELECT(V16_ABS(v_) < 0.5f, v_ + v_ * v_ * s_, e_ - 1.0f);    \
        V16_SELECT(below_one_, (c) * expm1_, e_ - (c));                                      \
    })

/* The scaled denominator sum_j |e^(x_j - m) - c| over the unmasked experts (a masked,
 * -inf, expert is absent, as in every gate): 16 partial sums, lane j % 16, then a fixed
 * pairwise tree; the same bits in every clone. */
static inline __attribute__((always_inline)) float softpick_sum(const float *x, size_t E, float m, float c) {
    v16f sum = V16_SET1(0.0f);
    for (size_t e = 0; e < E; e += 16) {
        const v16f v = LOAD_ROW(x, E, e); /* the tail's padding is masked too */
        sum += V16_SELECT(v == -INFINITY, V16_SET1(0.0f), V16_ABS(SOFTPICK_TERM(v, m, c)));
    }
    return V16_REDUCE_ADD(sum);
}

/* The kernel's softpick sum (topk_extras) in plain C, the tiles' operations lane for lane:
 * each exponential as the statistics take it, the even and the odd columns in two sums,
 * then added, and the same test of precision; so a row gets the same bits whichever path
 * routes it (a tile, a tail, the scalar variant). m: the row's max; e: E floats. Returns the
 * sum, or TOPK_SOFTPICK_ILL. */
CLONES static float softpick_kernel_sum_clones(const float *x, size_t E, float m, float *e) {
    for (size_t j0 = 0; j0 < E; j0 += 16) {
        float lanes[16];
        V16_STORE(lanes, V16_EXP2_STAT((LOAD_ROW(x, E, j0) - m) * MOERT_EXPF_LOG2E));
        for (size_t j = j0; j < E && j < j0 + 16; j++) e[j] = lanes[j - j0];
    }
    const float c = moert_expf(0.0f - m);
    float s[2] = {0.0f, 0.0f}, a[2] = {0.0f, 0.0f};
    for (size_t j = 0; j < E; j++) {
        const float d = e[j] - c, nd = 0.0f - d;
        s[j & 1] += e[j];
        a[j & 1] += x[j] == -INFINITY ? 0.0f : d > nd ? d : nd;
    }
    const float sum = a[0] + a[1], bound = (s[0] + s[1]) + (float)E * c;
    return 8.0f * sum >= bound && bound <= FLT_MAX ? sum : TOPK_SOFTPICK_ILL;
}

/* m: the row's max; kernel_sum: the row's sum from softpick_kernel_sum, or negative: the
 * series' sum. */
CLONES static void softpick_weights_clones(const float *x, size_t E, float m, const int32_t *ids, int k,
                                           float kernel_sum, float *w) {
    if (!(m > 0.0f)) {
        for (int j = 0; j < k; j++) w[j] = 0.0f;
        return;
    }
    const float c = moert_expf(-m);
    const float den = (kernel_sum >= 0.0f ? kernel_sum : softpick_sum(x, E, m, c)) + SOFTPICK_EPSILON * c;
    for (int j0 = 0; j0 < k; j0 += 16) {
        float chosen[16], out[16];
        for (int j = 0; j < 16; j++) chosen[j] = j0 + j < k ? x[ids[j0 + j]] : 0.0f;
        const v16f a = SOFTPICK_TERM(V16_LOAD(chosen), m, c);
        V16_STORE(out, V16_SELECT(a > 0.0f, a / den, V16_SET1(0.0f)));
        for (int j = 0; j < 16 && j0 + j < k; j++) w[j0 + j] = out[j];
    }
}

void scores_softpick_weights(const float *x, size_t E, const int32_t *ids, int k, float *w) {
    softpick_weights_clones(x, E, scores_row_max(x, E), ids, k, -1.0f, w);
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
                 float *weights, const float *softpick_sums, float *scratch) {
    const int k = c->k;
    float *keys = scratch, *top_keys = scratch + E + 32;
    int32_t *top_ids = (int32_t *)(top_keys + k + 16);
    for (size_t t = begin; t < end; t++) {
        const float *x = logits + t * E;
        int32_t *id = ids + t * (size_t)k;
        float *w = weights + t * (size_t)k;
        if (c->score == MOERT_SCORE_SOFTPICK) {
            const float sum = softpick_sums != NULL ? softpick_sums[t] : TOPK_SOFTPICK_UNSET;
            if (sum >= 0.0f) { /* the kernel wrote the weights, in order */
                finish_weights(c, w, k);
                continue;
            }
            /* The kernel's sum where the kernel would have taken it, else the series'. */
            const float m = scores_row_max(x, E);
            const float kernel_sum = sum == TOPK_SOFTPICK_ILL ? TOPK_SOFTPICK_ILL : softpick_kernel_sum_clones(x, E, m, keys);
            softpick_weights_clones(x, E, m, id, k, kernel_sum, w);
            /* In the plan's order: softpick's weights need not follow the kernel's (near 0,
             * logits that differ can share a softmax weight; at x = 1 the two forms meet). */
            topk_sort_entries(id, w, (size_t)k, id, w);
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

/* Internal: the router's own score functions, softpick and sqrt-softplus, and the
 * per-block step that turns the fused kernel's selection into their weights. */
#ifndef MOERT_ROUTER_SCORES_H
#define MOERT_ROUTER_SCORES_H

#include <stddef.h>
#include <stdint.h>

#include "moert/router.h"

/* The largest of x[0, n), n >= 1 (NaN-free), in 16 lanes the compiler vectorises. */
float scores_row_max(const float *x, size_t n);

/* sqrt(softplus(x)) = sqrt(max(x, 0) + log1p(exp(-|x|))); 0 for -inf. */
float scores_sqrt_softplus(float x);

/* Softpick (Zuhri et al., 2025) of k selected experts ids[0, k) of one row x[0, E), into w:
 * relu(e^x_i - 1) / (sum_j |e^x_j - 1| + 1e-6), evaluated with the row's max m subtracted
 * (numerator and denominator times e^-m), so nothing overflows; the numerator as
 * e^-m expm1(x) below x = 1, where the difference would cancel. All 0 when m <= 0. The
 * row's max and denominator in 16 lanes, a fixed order: the same bits in every build.
 * (Token choice takes the kernel's sum instead where it is well conditioned, topk_extras,
 * computed by the same operations on every path: the weights agree with these to about
 * 2e-6.) */
void scores_softpick_weights(const float *x, size_t E, const int32_t *ids, int k, float *w);

/* The token-choice block step for score softpick or sqrt-softplus: rows [begin, end) of
 * ids/weights [tokens, k], which the kernel selected as softmax post (by logit), get the
 * score's weights (and, for sqrt-softplus with a bias, the selection by score + bias).
 * softpick_sums [tokens]: each row's softpick denominator where the kernel computed it
 * (topk_extras), negative where not, or NULL. scratch: SCORES_SCRATCH(E, k) floats per
 * thread. */
#define SCORES_SCRATCH(E, k) (2 * (size_t)(E) + 2 * (size_t)(k) + 64)
void scores_rows(const moert_router_config *c, const float *logits, size_t E, size_t begin, size_t end, int32_t *ids,
                 float *weights, const float *softpick_sums, float *scratch);

#endif /* MOERT_ROUTER_SCORES_H */

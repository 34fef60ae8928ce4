/* Sparsemax gating (Martins & Astudillo, "From Softmax to Sparsemax: A Sparse Model of
 * Attention and Multi-Label Classification", ICML 2016): the Euclidean projection of a
 * token's logits onto the probability simplex, p_i = max(x_i - tau, 0), with tau such
 * that the p sum to 1. The weights are exactly sparse; a token uses the experts whose
 * weight is positive. With k_max, only the k_max largest logits are projected (ties to
 * the lower id), so at most k_max experts are used and the weights still sum to 1.
 *
 * The candidates are the logits above max - 1 (no weight exceeds 1, so tau >= max - 1):
 * usually a handful, which are sorted (by rank) and given the paper's threshold in one
 * pass (a partial sort). Beyond 32 of them (logits bunched near the max), tau comes without
 * sorting, by Michelot's fixed point ("A finite algorithm for finding the
 * projection of a point onto the canonical simplex of R^n", 1986): start from every
 * candidate, tau = (sum of the active - 1) / their count, drop those at or below tau,
 * repeat until none drops. tau only rises, the largest logit always stays (tau < max), and
 * the fixed point is the projection's threshold. Sums in double, of the logits minus the
 * max (1e30 logits lose nothing). Masked experts (-inf) are never candidates. */
#include <math.h>
#include <string.h>

#include "router/internal.h"

#define SPARSEMAX_SCRATCH(E) (6 * (size_t)(E) + 64)
#define SPARSEMAX_SORT_MAX 32 /* candidates sorted by rank up to here; Michelot beyond */

typedef struct sparsemax_context {
    size_t k_max;
    topk_compact_fn compact;
} sparsemax_context;

static size_t sparsemax_row(const void *context, const float *x, size_t E, size_t t, float row_max, int32_t *ids,
                            float *weights, float *scratch) {
    (void)t;
    const sparsemax_context *c = context;
    const size_t k_max = c->k_max;
    double *value = (double *)scratch;                  /* [E] */
    int32_t *id = (int32_t *)(value + E);               /* [E] */
    float *top_keys = (float *)(id + E);                /* [E] */
    int32_t *top_ids = (int32_t *)(top_keys + E);       /* [E] */
    /* A weight is at most 1, so tau >= max - 1: a logit at or below max - 1 never has a
     * positive weight, and the candidates are the few above it. */
    size_t n = 0;
    double max;
    if (k_max < E) {
        topk_select_heap(x, NULL, E, (int)k_max, top_keys, top_ids);
        max = top_keys[0];
        for (size_t j = 0; j < k_max; j++)
            if (top_keys[j] != -INFINITY && (double)top_keys[j] >= max - 1.0) /* the max itself always */
                value[n] = (double)top_keys[j] - max, id[n++] = top_ids[j];
    } else {
        /* The variant's vector filter, with a bound a little below max - 1 (which rounding
         * may not give exactly): a superset of the candidates, which the first pass below
         * trims. */
        const float m = row_max, bound = m - 1.0f;
        max = m;
        const size_t found = c->compact(x, E, bound - fabsf(bound) * 0x1.0p-20f - 0x1.0p-126f, id);
        for (size_t j = 0; j < found; j++) value[j] = (double)x[id[j]] - max;
        n = found;
    }
    /* The values relative to the max (exact: the candidates lie within 1 of it, or are far
     * below and drop out), so that tau keeps its precision when the logits are huge. */
    if (n <= SPARSEMAX_SORT_MAX) {
        /* Few candidates (the usual case): sorted by logit, the equal ones by id (the
         * entries' own sort), then the paper's threshold in one pass, and the entries come
         * out in the plan's order. */
        float logit[SPARSEMAX_SORT_MAX];
        for (size_t j = 0; j < n; j++) logit[j] = x[id[j]];
        topk_sort_entries(id, logit, n, id, logit);
        for (size_t j = 0; j < n; j++) value[j] = (double)logit[j] - max;
        double cumulative = 0.0, at_support = 0.0;
        size_t support = 0;
        for (size_t j = 0; j < n; j++) {
            cumulative += value[j];
            if (1.0 + (double)(j + 1) * value[j] > cumulative) support = j + 1, at_support = cumulative;
        }
        const double tau = (at_support - 1.0) / (double)support; /* one division, after the pass */
        for (size_t j = 0; j < support; j++) ids[j] = id[j], weights[j] = (float)(value[j] - tau);
        /* Logits that differ can round to one weight (1e-20 and 2e-20 beside 0.5): by id. */
        topk_order_equal_weights(ids, weights, (int)support);
        return support;
    }
    /* Many (logits bunched within 1 of the max): Michelot, sort-free; the active ones stay
     * packed at the front, in their order. */
    size_t active = n;
    double tau;
    for (;;) {
        double sum = 0.0;
        for (size_t j = 0; j < active; j++) sum += value[j];
        tau = (sum - 1.0) / (double)active;
        size_t kept = 0;
        for (size_t j = 0; j < active; j++) { /* without a branch: which ones drop is no pattern */
            const double v = value[j];
            const int32_t i = id[j];
            value[kept] = v, id[kept] = i;
            kept += v > tau;
        }
        if (kept == active) break;
        active = kept;
    }
    for (size_t j = 0; j < active; j++) ids[j] = id[j], weights[j] = (float)(value[j] - tau);
    topk_sort_entries(ids, weights, active, ids, weights);
    return active;
}

moert_status router_sparsemax(const moert_router_config *c, const float *logits, size_t tokens, size_t experts,
                              moert_plan *plan, router_workspace *ws) {
    const sparsemax_context context = {(size_t)c->k_max, topk_variant_for(c->isa)->compact};
    return router_route_rows(c, logits, tokens, experts, sparsemax_row, &context, SPARSEMAX_SCRATCH(experts), plan, ws);
}

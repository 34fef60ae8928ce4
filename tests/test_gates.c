/* The gates beyond the classic policies, each against a plain reference written from its
 * paper's definition (in double where it matters) and hand-worked examples: BatchTopK,
 * sparsemax, noisy / Gumbel top-k, softpick and sqrt-softplus. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moert/moert.h"
#include "kernels/expf.h"
#include "kernels/topk_gate/internal.h"
#include "router/internal.h"
#include "router/noise.h"
#include "router/scores.h"
#include "tests/test_util.h"

/* ---- helpers --------------------------------------------------------------------------------- */

static moert_plan *route(const moert_router_config *c, const float *logits, size_t T, size_t E) {
    moert_router *r = NULL;
    moert_plan *plan = NULL;
    ck_assert_msg(moert_router_create(c, E, &r) == MOERT_OK, "create: %s", moert_last_error());
    ck_assert_int_eq(moert_plan_create(&plan), MOERT_OK);
    ck_assert_msg(moert_router_route(r, logits, T, plan) == MOERT_OK, "route: %s", moert_last_error());
    moert_router_destroy(r);
    return plan;
}

static moert_status route_status(const moert_router_config *c, const float *logits, size_t T, size_t E) {
    moert_router *r = NULL;
    moert_plan *plan = NULL;
    moert_status st = moert_router_create(c, E, &r);
    if (st == MOERT_OK) st = moert_plan_create(&plan);
    if (st == MOERT_OK) st = moert_router_route(r, logits, T, plan);
    moert_router_destroy(r);
    moert_plan_destroy(plan);
    return st;
}

static float *random_logits(size_t n, uint64_t seed, float scale) {
    test_rng rng = {seed};
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = test_rng_normal(&rng) * scale;
    return x;
}

/* Token t's entries must be exactly ids/weights (weights within rel of want). */
static void expect_token(const moert_plan *plan, size_t t, size_t n, const int32_t *ids, const double *w, double rel,
                         const char *what) {
    moert_plan_view v;
    moert_plan_get_view(plan, &v);
    const int64_t first = v.token_offsets[t], got = v.token_offsets[t + 1] - first;
    ck_assert_msg((size_t)got == n, "%s: token %zu has %lld entries, want %zu", what, t, (long long)got, n);
    for (size_t j = 0; j < n; j++) {
        ck_assert_msg(v.expert_ids[first + j] == ids[j], "%s: token %zu entry %zu: expert %d, want %d", what, t, j,
                      v.expert_ids[first + j], ids[j]);
        const double d = fabs(v.weights[first + j] - w[j]);
        ck_assert_msg(d <= rel * fabs(w[j]) + 1e-12, "%s: token %zu entry %zu: weight %.9g, want %.9g", what, t, j,
                      (double)v.weights[first + j], w[j]);
    }
}

/* Entries of n (ids, weights) by descending weight, ties to the lower id (insertion). */
static void sort_entries(int32_t *ids, double *w, size_t n) {
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && (w[j] > w[j - 1] || (w[j] == w[j - 1] && ids[j] < ids[j - 1])); j--) {
            const double tw = w[j];
            w[j] = w[j - 1], w[j - 1] = tw;
            const int32_t ti = ids[j];
            ids[j] = ids[j - 1], ids[j - 1] = ti;
        }
}

/* ---- sparsemax: the sorting algorithm of the paper (Algorithm 1), in double ------------------- */

static size_t sparsemax_reference(const float *x, size_t E, size_t k_max, int32_t *ids, double *w) {
    int32_t order[1024];
    size_t n = 0;
    for (size_t e = 0; e < E; e++)
        if (x[e] != -INFINITY) order[n++] = (int32_t)e;
    /* by logit descending, ties to the lower id */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && (x[order[j]] > x[order[j - 1]]); j--) {
            const int32_t t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
    if (n > k_max) n = k_max;
    /* z relative to its max (sparsemax is shift-invariant): huge logits keep their
     * precision. */
    const double max = n ? x[order[0]] : 0.0;
    double cumulative = 0.0, tau = 0.0;
    size_t support = 0;
    for (size_t k = 1; k <= n; k++) {
        const double z = (double)x[order[k - 1]] - max;
        cumulative += z;
        if (1.0 + (double)k * z > cumulative) support = k, tau = (cumulative - 1.0) / (double)k;
    }
    ck_assert(n == 0 || support > 0);
    for (size_t j = 0; j < support; j++) ids[j] = order[j], w[j] = ((double)x[order[j]] - max) - tau;
    sort_entries(ids, w, support);
    return support;
}

START_TEST(test_sparsemax_hand_worked) {
    /* z = (1, 0.5, -1): k(z) = 2 (1 + 2 * 0.5 > 1.5, 1 - 3 < 0.5), tau = 0.25. */
    const float x[3] = {1.0f, 0.5f, -1.0f};
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_SPARSEMAX, c.threads = 1;
    moert_plan *plan = route(&c, x, 1, 3);
    expect_token(plan, 0, 2, (const int32_t[]){0, 1}, (const double[]){0.75, 0.25}, 1e-7, "sparsemax (1, .5, -1)");
    moert_plan_stats s;
    moert_plan_get_stats(plan, &s);
    ck_assert_int_eq(s.experts_per_token[2], 1); /* the support size, in the statistics */
    moert_plan_destroy(plan);
    /* 1e-20 and 2e-20 beside 0.5 differ, but their weights round to one: tau = -2/3 (the
     * three within 1 of the max, each 0.5 - x[i] rounding to 0.5 in double), weights
     * (1/6, 1/6, 2/3), the equal ones by id. */
    const float tied[4] = {1e-20f, 2e-20f, 0.5f, -5.0f};
    plan = route(&c, tied, 1, 4);
    expect_token(plan, 0, 3, (const int32_t[]){2, 0, 1}, (const double[]){2.0 / 3, 1.0 / 6, 1.0 / 6}, 1e-7,
                 "sparsemax, weights equal by rounding");
    moert_plan_destroy(plan);
    /* Far apart: one expert with weight 1. Equal: every expert, 1/E each. */
    const float apart[4] = {5.0f, 1.0f, 0.0f, -3.0f}, equal[4] = {2.0f, 2.0f, 2.0f, 2.0f};
    plan = route(&c, apart, 1, 4);
    expect_token(plan, 0, 1, (const int32_t[]){0}, (const double[]){1.0}, 0, "sparsemax, one dominant");
    moert_plan_destroy(plan);
    plan = route(&c, equal, 1, 4);
    expect_token(plan, 0, 4, (const int32_t[]){0, 1, 2, 3}, (const double[]){.25, .25, .25, .25}, 0, "sparsemax, ties");
    moert_plan_destroy(plan);
    /* Huge logits: the projection is shift-invariant, so (1e30, 1e30, 0) is (.5, .5, 0). */
    const float huge[3] = {1e30f, 1e30f, 0.0f}, tiny[3] = {-1e30f, -1e30f, -1e30f}, mixed[4] = {1e30f, -1e30f, 0, 1};
    plan = route(&c, huge, 1, 3);
    expect_token(plan, 0, 2, (const int32_t[]){0, 1}, (const double[]){.5, .5}, 0, "sparsemax 1e30");
    moert_plan_destroy(plan);
    plan = route(&c, tiny, 1, 3);
    expect_token(plan, 0, 3, (const int32_t[]){0, 1, 2}, (const double[]){1 / 3., 1 / 3., 1 / 3.}, 1e-7, "sparsemax -1e30");
    moert_plan_destroy(plan);
    plan = route(&c, mixed, 1, 4);
    expect_token(plan, 0, 1, (const int32_t[]){0}, (const double[]){1}, 0, "sparsemax +-1e30");
    moert_plan_destroy(plan);
    /* k_max = 2 of (1, 0.9, 0.8): the projection of (1, 0.9) only: tau = 0.45. */
    const float three[3] = {1.0f, 0.9f, 0.8f};
    c.k_max = 2;
    plan = route(&c, three, 1, 3);
    expect_token(plan, 0, 2, (const int32_t[]){0, 1}, (const double[]){0.55, 0.45}, 1e-6, "sparsemax k_max 2");
    moert_plan_destroy(plan);
}
END_TEST

START_TEST(test_sparsemax_against_sorting) {
    const size_t widths[] = {1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 64, 65, 256};
    const float scales[] = {0.1f, 1.0f, 10.0f, 1e4f};
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++)
        for (size_t si = 0; si < 4; si++)
            for (int cap = 0; cap < 2; cap++) {
                const size_t E = widths[wi], T = 40;
                float *x = random_logits(T * E, 100 + wi * 10 + si, scales[si]);
                for (size_t t = 0; t < T; t += 5) /* all negative rows, ties, a masked expert, large values */
                    for (size_t e = 0; e < E; e++) x[t * E + e] = -fabsf(x[t * E + e]) - 1000.0f;
                for (size_t e = 0; e < E; e++) x[1 * E + e] = (float)(e % 3);
                if (E > 1) x[2 * E] = -INFINITY; /* a masked expert (a whole masked row is refused) */
                if (E > 1) x[3 * E + 1] = 3e37f, x[3 * E] = -3e37f;
                moert_router_config c = moert_router_config_default();
                c.policy = MOERT_POLICY_SPARSEMAX, c.threads = 2;
                c.k_max = cap ? 3 : MOERT_MAX_EXPERTS;
                moert_plan *plan = route(&c, x, T, E);
                for (size_t t = 0; t < T; t++) {
                    int32_t ids[256];
                    double w[256];
    
                    const size_t n = sparsemax_reference(x + t * E, E, (size_t)c.k_max, ids, w);
                    expect_token(plan, t, n, ids, w, 2e-6, "sparsemax vs sorting");
                }
                moert_plan_destroy(plan);
                free(x);
            }
}
END_TEST

/* ---- softpick and sqrt-softplus ------------------------------------------------------------- */

static double softpick_reference(const float *x, size_t E, size_t i) {
    double m = -INFINITY;
    for (size_t e = 0; e < E; e++) m = x[e] > m ? x[e] : m;
    if (m <= 0) return 0.0;
    double den = 1e-6 * exp(-m);
    for (size_t e = 0; e < E; e++) /* e^-m (e^x - 1), by expm1: exact in double near 0 */
        if (x[e] != -INFINITY) den += fabs(exp(-m) * expm1((double)x[e]));
    const double num = x[i] < 1 ? exp(-m) * expm1((double)x[i]) : exp((double)x[i] - m) - exp(-m);
    return num > 0 ? num / den : 0.0;
}

START_TEST(test_softpick) {
    /* e^x - 1 = (2, 0, -0.5): weights 2 / 2.500001, 0, 0. */
    const float x[3] = {logf(3.0f), 0.0f, logf(0.5f)};
    const double w0 = softpick_reference(x, 3, 0);
    ck_assert(fabs(w0 - 2.0 / 2.500001) < 1e-6);
    moert_router_config c = moert_router_config_default();
    c.score = MOERT_SCORE_SOFTPICK, c.k = 2, c.threads = 1;
    moert_plan *plan = route(&c, x, 1, 3);
    expect_token(plan, 0, 2, (const int32_t[]){0, 1}, (const double[]){w0, 0.0}, 1e-6, "softpick top-2");
    moert_plan_destroy(plan);
    /* The rectified form: only the expert with a positive score. */
    c.k = 2, c.policy = MOERT_POLICY_RELU;
    c.k = moert_router_config_default().k;
    plan = route(&c, x, 1, 3);
    expect_token(plan, 0, 1, (const int32_t[]){0}, (const double[]){w0}, 1e-6, "softpick rectified");
    moert_plan_destroy(plan);
    /* Logits near 0, where e^x - 1 cancels, and masked experts, which are absent. */
    const float masked[4] = {1.0f, -INFINITY, -INFINITY, -INFINITY};
    c.policy = MOERT_POLICY_TOKEN_CHOICE, c.k = 1;
    plan = route(&c, masked, 1, 4);
    expect_token(plan, 0, 1, (const int32_t[]){0}, (const double[]){softpick_reference(masked, 4, 0)}, 1e-6,
                 "softpick, masked");
    ck_assert(softpick_reference(masked, 4, 0) > 0.999);
    moert_plan_destroy(plan);
    for (int scale = 5; scale <= 6; scale++) {
        float *near = random_logits(16 * 16, 70 + (uint64_t)scale, (float)pow(10, -scale));
        c.k = 4;
        plan = route(&c, near, 16, 16);
        moert_plan_view v;
        moert_plan_get_view(plan, &v);
        for (size_t t = 0; t < 16; t++)
            for (int64_t i = v.token_offsets[t]; i < v.token_offsets[t + 1]; i++) {
                const double want = softpick_reference(near + t * 16, 16, (size_t)v.expert_ids[i]);
                ck_assert_msg(fabs(v.weights[i] - want) <= 1e-5 * want + 1e-12, "softpick near 0 (1e-%d): %.9g, want %.9g",
                              scale, (double)v.weights[i], want);
            }
        moert_plan_destroy(plan);
        free(near);
    }
    /* Against the reference on rows of every width, all-negative rows (all weights 0, ties by
     * id), and large values (no overflow). */
    const size_t widths[] = {1, 3, 8, 16, 17, 64, 100};
    for (size_t wi = 0; wi < 7; wi++) {
        const size_t E = widths[wi], T = 30, k = E < 4 ? E : 4;
        float *xs = random_logits(T * E, 7 + wi, 2.0f);
        for (size_t e = 0; e < E; e++) xs[0 * E + e] = -1.0f - (float)e; /* all negative */
        for (size_t e = 0; e < E; e++) xs[1 * E + e] = 80.0f + (float)e * 0.01f; /* near expf's edge */
        for (int form = 0; form < 2; form++) {
            moert_router_config cf = moert_router_config_default();
            cf.score = MOERT_SCORE_SOFTPICK, cf.threads = 2;
            if (form) cf.policy = MOERT_POLICY_RELU;
            else cf.k = (int)k;
            moert_plan *p = route(&cf, xs, T, E);
            for (size_t t = 0; t < T; t++) {
                const float *row = xs + t * E;
                int32_t ids[128];
                double w[128];
                size_t n = 0;
                if (form) { /* every positive score */
                    for (size_t e = 0; e < E; e++)
                        if (softpick_reference(row, E, e) > 0) ids[n] = (int32_t)e, w[n++] = softpick_reference(row, E, e);
                } else { /* the top k by logit, ties to the lower id, then by weight */
                    int32_t order[128];
                    for (size_t e = 0; e < E; e++) order[e] = (int32_t)e;
                    for (size_t i = 1; i < E; i++)
                        for (size_t j = i; j > 0 && row[order[j]] > row[order[j - 1]]; j--) {
                            const int32_t tmp = order[j];
                            order[j] = order[j - 1], order[j - 1] = tmp;
                        }
                    for (; n < k; n++) ids[n] = order[n], w[n] = softpick_reference(row, E, (size_t)order[n]);
                }
                sort_entries(ids, w, n);
                expect_token(p, t, n, ids, w, 1e-5, form ? "softpick rectified vs reference" : "softpick vs reference");
            }
            moert_plan_destroy(p);
        }
        free(xs);
    }
}
END_TEST

/* Softpick's denominators and weights from the kernel's own pass (topk_extras), on every
 * variant: written where well conditioned, each within 2e-6 of the double reference and
 * the weights the exact path's (router/scores.c) to 2e-6; ill conditioned near 0; left
 * alone where the tiles do not settle the row. */
START_TEST(test_softpick_from_kernel) {
    const size_t T = 203, shapes[][2] = {{16, 4}, {64, 8}, {100, 8}, {600, 8}, {64, 12}};
    for (size_t v = 0; v < topk_variant_count; v++) {
        if (moert_isa_check(topk_variants[v].isa) != MOERT_OK) continue;
        for (size_t sh = 0; sh < 5; sh++) {
            const size_t E = shapes[sh][0];
            const int k = (int)shapes[sh][1];
            for (int scale = 0; scale < 3; scale++) { /* N(0, 1), N(0, 9), N(0, 1e-6) */
                float *x = random_logits(T * E, 900 + sh * 3 + (uint64_t)scale, scale == 0 ? 1.0f : scale == 1 ? 3.0f : 1e-3f);
                for (size_t t = 0; t < T; t += 7) x[t * E + (t % E)] = -INFINITY; /* masked experts */
                for (size_t e = 0; e < E; e++) x[5 * E + e] = -1.0f - 0.01f * (float)e; /* all negative */
                int32_t *ids = malloc(T * (size_t)k * sizeof(int32_t));
                float *w = malloc(T * (size_t)k * sizeof(float)), *sums = malloc(T * sizeof(float));
                double *prob_sums = malloc(E * sizeof(double));
                float *lse = malloc(T * sizeof(float));
                for (size_t t = 0; t < T; t++) sums[t] = TOPK_SOFTPICK_UNSET;
                moert_topk_gate_params p = moert_topk_gate_params_default();
                p.k = k, p.threads = 2;
                const moert_topk_gate_output out = {ids, w, prob_sums, lse};
                const topk_extras extras = {.softpick_sums = sums};
                ck_assert_int_eq(topk_gate_run_extra(&topk_variants[v], &p, x, T, E, &out, &extras, NULL, NULL, NULL),
                                 MOERT_OK);
                size_t written = 0, ill = 0;
                for (size_t t = 0; t < T; t++) {
                    const float *row = x + t * E;
                    if (sums[t] == TOPK_SOFTPICK_UNSET) continue;
                    if (sums[t] == TOPK_SOFTPICK_ILL) {
                        ill++;
                        continue;
                    }
                    ck_assert_msg(sums[t] >= 0.0f, "%s: sum %g", topk_variants[v].name, (double)sums[t]);
                    written++;
                    double m = -INFINITY, den = 0.0;
                    for (size_t e = 0; e < E; e++) m = row[e] > m ? row[e] : m;
                    for (size_t e = 0; e < E; e++)
                        if (row[e] != -INFINITY) den += fabs(exp(-m) * expm1((double)row[e]));
                    ck_assert_msg(fabs(sums[t] - den) <= 2e-6 * den, "%s E %zu row %zu: sum %.9g, want %.9g",
                                  topk_variants[v].name, E, t, (double)sums[t], den);
                    float exact[16];
                    scores_softpick_weights(row, E, ids + t * (size_t)k, k, exact);
                    for (int j = 0; j < k; j++) {
                        const size_t at = t * (size_t)k + (size_t)j;
                        const double want = softpick_reference(row, E, (size_t)ids[at]);
                        const float got = w[at];
                        ck_assert_msg(fabs(got - want) <= 2e-6 * want + 1e-12 && fabs(got - exact[j]) <= 2e-6 * exact[j] + 1e-12,
                                      "%s E %zu row %zu entry %d: %.9g, reference %.9g, exact path %.9g",
                                      topk_variants[v].name, E, t, j, (double)got, want, (double)exact[j]);
                        if (j > 0) /* by logit; equal weights by id */
                            ck_assert(got < w[at - 1] || (got == w[at - 1] && ids[at] > ids[at - 1]));
                    }
                }
                /* The tile kernels settle nearly every row; near 0 the sums cancel. */
                const int tiles = strcmp(topk_variants[v].name, "scalar") != 0 && E <= 512 && k <= 8;
                if (!tiles) ck_assert_msg(written + ill == 0, "%s E %zu k %d: wrote sums", topk_variants[v].name, E, k);
                else if (scale < 2) ck_assert_msg(written >= T * 9 / 10 - 16, "%s E %zu: %zu of %zu rows written",
                                                  topk_variants[v].name, E, written, T);
                else ck_assert_msg(written <= 2 && ill >= T * 9 / 10 - 16, "%s E %zu near 0: %zu written, %zu ill",
                                   topk_variants[v].name, E, written, ill);
                free(x), free(ids), free(w), free(sums), free(prob_sums), free(lse);
            }
        }
    }
}
END_TEST

/* Softpick top-k gives the same plan, bit for bit, whichever path routes a row: tiles, their
 * tails, lanes the tiles route again (near-equal logits), tiles sent to the row kernel (a
 * row whose sum overflows), the scalar and AVX2 variants, any thread count or routing
 * groups; rows near 0 take the series everywhere. And the weights are in the plan's order. */
START_TEST(test_softpick_same_everywhere) {
    const size_t T = 509, E = 40;
    float *x = random_logits(T * E, 77, 1.5f);
    for (size_t t = 0; t < T; t += 11) /* near ties: the packed selection cannot settle them */
        for (size_t e = 0; e < E; e++) x[t * E + e] = 1.0f + (float)(e % 3) * 0x1.0p-20f;
    for (size_t e = 0; e < E; e++) x[37 * E + e] = e < 3 ? 3e38f : 0.5f; /* its tile's check sum overflows */
    for (size_t t = 40; t < 60; t++) /* near 0 */
        for (size_t e = 0; e < E; e++) x[t * E + e] *= 1e-4f;
    for (size_t t = 0; t < T; t += 13) x[t * E + (t % E)] = -INFINITY;
    moert_router_config base = moert_router_config_default();
    base.score = MOERT_SCORE_SOFTPICK, base.k = 6, base.threads = 1;
    moert_plan *want = route(&base, x, T, E);
    moert_plan_view a;
    moert_plan_get_view(want, &a);
    for (size_t t = 0; t < T; t++)
        for (int64_t i = a.token_offsets[t] + 1; i < a.token_offsets[t + 1]; i++)
            ck_assert_msg(a.weights[i] < a.weights[i - 1] ||
                              (a.weights[i] == a.weights[i - 1] && a.expert_ids[i] > a.expert_ids[i - 1]),
                          "softpick row %zu out of order at %lld", t, (long long)i);
    const moert_isa isas[] = {MOERT_ISA_SCALAR, MOERT_ISA_AVX2, MOERT_ISA_AVX512, MOERT_ISA_AUTO, MOERT_ISA_AUTO};
    for (int v = 0; v < 5; v++) {
        if (moert_isa_check(isas[v]) != MOERT_OK) continue;
        moert_router_config c = base;
        c.isa = isas[v];
        if (v == 3) c.threads = 2;
        if (v == 4) c.route_groups = 3;
        moert_plan *got = route(&c, x, T, E);
        moert_plan_view b;
        moert_plan_get_view(got, &b);
        ck_assert(a.entries == b.entries);
        for (size_t i = 0; i < a.entries; i++)
            ck_assert_msg(a.expert_ids[i] == b.expert_ids[i] && memcmp(&a.weights[i], &b.weights[i], sizeof(float)) == 0,
                          "case %d: entry %zu: %d %.9g, want %d %.9g", v, i, b.expert_ids[i], (double)b.weights[i],
                          a.expert_ids[i], (double)a.weights[i]);
        moert_plan_destroy(got);
    }
    moert_plan_destroy(want);
    free(x);
}
END_TEST

static double sqrt_softplus_reference(double x) { return sqrt(log1p(exp(-fabs(x))) + (x > 0 ? x : 0)); }

START_TEST(test_sqrt_softplus) {
    /* sqrt(softplus(0)) = sqrt(ln 2). */
    const float x[4] = {0.0f, -30.0f, 3.0f, 1.0f};
    const float bias[4] = {0.0f, 10.0f, 0.0f, 0.0f};
    moert_router_config c = moert_router_config_default();
    c.score = MOERT_SCORE_SQRT_SOFTPLUS, c.k = 2, c.threads = 1;
    moert_plan *plan = route(&c, x, 1, 4);
    expect_token(plan, 0, 2, (const int32_t[]){2, 3},
                 (const double[]){sqrt_softplus_reference(3), sqrt_softplus_reference(1)}, 1e-6, "sqrt-softplus");
    moert_plan_destroy(plan);
    /* A bias chooses expert 1 (tiny score) but its weight is its score; renormalised. */
    c.bias = bias, c.renormalize = 1;
    plan = route(&c, x, 1, 4);
    const double a = sqrt_softplus_reference(3), b = sqrt_softplus_reference(-30);
    expect_token(plan, 0, 2, (const int32_t[]){2, 1}, (const double[]){a / (a + b), b / (a + b)}, 1e-5,
                 "sqrt-softplus with bias");
    moert_plan_destroy(plan);
}
END_TEST

/* ---- BatchTopK ------------------------------------------------------------------------------ */

START_TEST(test_batch_topk_hand_worked) {
    /* All scores equal: the T k = 3 kept go to the lowest (token, expert) in row-major order. */
    const float zeros[12] = {0};
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_BATCH_TOPK, c.k = 1, c.threads = 1, c.batch_score = MOERT_BATCH_SCORE_LOGITS;
    moert_plan *plan = route(&c, zeros, 3, 4);
    expect_token(plan, 0, 3, (const int32_t[]){0, 1, 2}, (const double[]){0, 0, 0}, 0, "ties, token 0");
    expect_token(plan, 1, 0, NULL, NULL, 0, "ties, token 1");
    moert_plan_stats s;
    moert_plan_get_stats(plan, &s);
    ck_assert_int_eq(s.unrouted, 2);
    ck_assert_int_eq(s.assignments, 3);
    moert_plan_destroy(plan);
    /* Logits 2x3, k = 1: the two largest of the batch, both in token 1. */
    const float x[6] = {0.1f, 0.2f, 0.3f, 0.9f, 0.8f, -1.0f};
    plan = route(&c, x, 2, 3);
    expect_token(plan, 0, 0, NULL, NULL, 0, "token 0 gets none");
    expect_token(plan, 1, 2, (const int32_t[]){0, 1}, (const double[]){0.9, 0.8}, 1e-7, "token 1 gets two");
    moert_plan_get_stats(plan, &s);
    ck_assert(fabs(s.threshold - 0.8) < 1e-7); /* the 2nd largest score */
    moert_plan_destroy(plan);
    /* Negative and mixed-sign logits keep descending order within a token. */
    const float negative[8] = {-1.12f, -3.0f, -1.16f, -1.05f, -1.19f, -2.0f, -2.5f, -0.5f};
    c.k = 5;
    plan = route(&c, negative, 1, 8);
    expect_token(plan, 0, 5, (const int32_t[]){7, 3, 0, 2, 4}, (const double[]){-0.5, -1.05, -1.12, -1.16, -1.19}, 1e-7,
                 "negative logits");
    moert_plan_destroy(plan);
    const float mixed_sign[6] = {-0.25f, 0.5f, -0.0f, 0.0f, 2.0f, -4.0f};
    plan = route(&c, mixed_sign, 1, 6);
    expect_token(plan, 0, 5, (const int32_t[]){4, 1, 2, 3, 0}, (const double[]){2, .5, 0, 0, -.25}, 0, "mixed signs");
    moert_plan_destroy(plan);
    c.k = 1;
    /* Probabilities renormalised per token: token 1's two sum to 1. */
    c.batch_score = MOERT_BATCH_SCORE_PROBS, c.renormalize = 1;
    const float y2[6] = {0.0f, 0.0f, 0.0f, 3.0f, 2.9f, -5.0f};
    plan = route(&c, y2, 2, 3);
    const double a3 = exp(3.0), a29 = exp(2.9);
    expect_token(plan, 1, 2, (const int32_t[]){0, 1}, (const double[]){a3 / (a3 + a29), a29 / (a3 + a29)}, 1e-6,
                 "renormalised probabilities");
    moert_plan_destroy(plan);
    c.renormalize = 0, c.batch_score = MOERT_BATCH_SCORE_LOGITS;
    /* Masked experts are never kept, even when the batch has fewer unmasked pairs. */
    const float masked[4] = {1.0f, -INFINITY, -INFINITY, -INFINITY};
    c.renormalize = 0, c.k = 2, c.batch_score = MOERT_BATCH_SCORE_PROBS;
    plan = route(&c, masked, 1, 4);
    expect_token(plan, 0, 1, (const int32_t[]){0}, (const double[]){1.0}, 0, "masked");
    moert_plan_destroy(plan);
    /* Threshold mode: each token keeps the probabilities above theta. */
    const float y[4] = {2.0f, 1.0f, 0.0f, -5.0f};
    c.use_threshold = 1, c.threshold = 0.2f, c.k = 1;
    plan = route(&c, y, 1, 4);
    double p[4], sum = 0;
    for (int e = 0; e < 4; e++) sum += exp(y[e] - 2.0);
    for (int e = 0; e < 4; e++) p[e] = exp(y[e] - 2.0) / sum;
    expect_token(plan, 0, 2, (const int32_t[]){0, 1}, (const double[]){p[0], p[1]}, 1e-6, "threshold mode");
    moert_plan_destroy(plan);
}
END_TEST

/* The reference: every score (logits, or probabilities in double), the T k largest by a
 * full sort with ties to the lower row-major index. */
typedef struct scored {
    double score;
    size_t index;
} scored;

static int by_score(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

START_TEST(test_batch_topk_against_sorting) {
    const size_t shapes[][2] = {{300, 17}, {64, 8}, {1024, 64}, {333, 65}};
    for (size_t si = 0; si < 4; si++)
        for (int probs = 0; probs < 2; probs++)
            for (int k = 1; k <= 3; k += 2) {
                const size_t T = shapes[si][0], E = shapes[si][1], n = T * E;
                float *x = random_logits(n, 40 + si, 1.0f);
                if (!probs) /* ties in the logits: a coarse grid */
                    for (size_t i = 0; i < n; i++) x[i] = roundf(x[i] * 8.0f) / 8.0f;
                scored *all = malloc(n * sizeof *all);
                for (size_t t = 0; t < T; t++) {
                    double m = -INFINITY, s = 0;
                    for (size_t e = 0; e < E; e++) m = x[t * E + e] > m ? x[t * E + e] : m;
                    for (size_t e = 0; e < E; e++) s += exp(x[t * E + e] - m);
                    for (size_t e = 0; e < E; e++)
                        all[t * E + e] = (scored){probs ? exp(x[t * E + e] - m) / s : x[t * E + e], t * E + e};
                }
                qsort(all, n, sizeof *all, by_score);
                uint8_t *keep = calloc(n, 1);
                for (size_t j = 0; j < T * (size_t)k; j++) keep[all[j].index] = 1;
                moert_router_config c = moert_router_config_default();
                c.policy = MOERT_POLICY_BATCH_TOPK, c.k = k, c.threads = 2;
                c.batch_score = probs ? MOERT_BATCH_SCORE_PROBS : MOERT_BATCH_SCORE_LOGITS;
                moert_plan *plan = route(&c, x, T, E);
                moert_plan_view v;
                moert_plan_get_view(plan, &v);
                ck_assert_uint_eq(v.entries, T * (size_t)k);
                for (size_t t = 0; t < T; t++) {
                    int32_t ids[128];
                    double w[128];
                    size_t m = 0;
                    for (size_t e = 0; e < E; e++)
                        if (keep[t * E + e]) {
                            ids[m] = (int32_t)e;
                            double score = x[t * E + e];
                            if (probs) {
                                double mx = -INFINITY, s = 0;
                                for (size_t f = 0; f < E; f++) mx = x[t * E + f] > mx ? x[t * E + f] : mx;
                                for (size_t f = 0; f < E; f++) s += exp(x[t * E + f] - mx);
                                score = exp(x[t * E + e] - mx) / s;
                            }
                            w[m++] = score;
                        }
                    sort_entries(ids, w, m);
                    expect_token(plan, t, m, ids, w, probs ? 1e-6 : 0, probs ? "batch-topk probs" : "batch-topk logits");
                }
                moert_plan_destroy(plan);
                free(keep), free(all), free(x);
            }
}
END_TEST

static int descending(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* router_select_threshold against a sort: the count-th largest and how many exceed it,
 * for every count, on values with ties, signed zeros, -inf, wide and narrow ranges. */
START_TEST(test_select_threshold_against_sorting) {
    test_rng rng = {77};
    const size_t sizes[] = {1, 2, 5, 64, 1000, 5000, 70001}; /* the last split over threads */
    for (size_t si = 0; si < 7; si++)
        for (int kind = 0; kind < 5; kind++) {
            const size_t n = sizes[si];
            float *v = malloc(n * sizeof *v), *sorted = malloc(n * sizeof *sorted);
            void *scratch = malloc(ROUTER_THRESHOLD_SCRATCH(n, 3));
            for (size_t i = 0; i < n; i++) {
                const float g = test_rng_normal(&rng);
                v[i] = kind == 0   ? g                                       /* spread */
                       : kind == 1 ? roundf(g * 4.0f) / 4.0f * (i % 2 ? 1.0f : -1.0f) /* ties, +-0 */
                       : kind == 2 ? 0.05f + 1e-6f * (float)(i % 7)          /* a narrow range */
                       : kind == 3 ? (i % 5 == 0 ? -INFINITY : g * 1e30f)    /* -inf, huge */
                                   : 3.0f;                                   /* all equal */
            }
            memcpy(sorted, v, n * sizeof *v);
            qsort(sorted, n, sizeof *sorted, descending);
            const size_t step = n > 200 ? n / 97 : 1;
            for (size_t count = 1; count <= n; count += step) {
                size_t above = SIZE_MAX;
                const float theta = router_select_threshold(v, n, count, &above, scratch, 1 + (int)(count % 3));
                size_t want_above = 0;
                while (want_above < n && sorted[want_above] > sorted[count - 1]) want_above++;
                ck_assert_msg(theta == sorted[count - 1] && above == want_above,
                              "n %zu kind %d count %zu: %g (%zu above), want %g (%zu above)", n, kind, count,
                              (double)theta, above, (double)sorted[count - 1], want_above);
            }
            free(v), free(sorted), free(scratch);
        }
}
END_TEST

/* A BatchTopK plan against the definition: every score computed as the softmax does (the
 * row's max, and the sum of exp(x - max) in expert order: topk_softmax_filter_fn's
 * contract), sorted; the first T k kept, ties to the lower row-major index, masked never. */
static void expect_batch_topk_definition(const moert_plan *plan, const float *x, size_t T, size_t E, size_t k,
                                         int probs, const char *what) {
    const size_t n = T * E;
    float *score = malloc(n * sizeof *score);
    for (size_t t = 0; t < T; t++) {
        float m = -INFINITY, s = 0.0f;
        for (size_t e = 0; e < E; e++) m = x[t * E + e] > m ? x[t * E + e] : m;
        for (size_t e = 0; e < E; e++) s += moert_exp_shifted(x[t * E + e], m);
        for (size_t e = 0; e < E; e++) {
            const float v = x[t * E + e];
            score[t * E + e] = v == -INFINITY ? -INFINITY : probs ? moert_exp_shifted(v, m) / s : v;
        }
    }
    scored *all = malloc(n * sizeof *all);
    for (size_t i = 0; i < n; i++) all[i] = (scored){score[i], i};
    qsort(all, n, sizeof *all, by_score);
    uint8_t *keep = calloc(n, 1);
    for (size_t j = 0; j < T * k && j < n; j++)
        if (all[j].score != -INFINITY) keep[all[j].index] = 1;
    int32_t *ids = malloc(E * sizeof *ids);
    double *w = malloc(E * sizeof *w);
    size_t kept = 0;
    for (size_t t = 0; t < T; t++) {
        size_t m = 0;
        for (size_t e = 0; e < E; e++)
            if (keep[t * E + e]) ids[m] = (int32_t)e, w[m++] = score[t * E + e];
        sort_entries(ids, w, m);
        expect_token(plan, t, m, ids, w, 0, what);
        kept += m;
    }
    moert_plan_view v;
    moert_plan_get_view(plan, &v);
    ck_assert_uint_eq(v.entries, kept);
    free(score), free(all), free(keep), free(ids), free(w);
}

/* Masked scores on a hot expert (the sample must not be biased by one column), a batch
 * whose scores saturate (large logits: most probabilities 0 or 1), logits shifted far
 * from 0 (the logit-space comparison's margin), +-1e30, and a sample that misleads the
 * bound: the plan is the definition's. */
START_TEST(test_batch_topk_hard_batches) {
    const size_t T = 1100, E = 64, n = T * E;
    for (int kind = 0; kind < 6; kind++)
        for (int probs = 0; probs < 2; probs++) {
            float *x = random_logits(n, 60 + (uint64_t)kind, 1.0f);
            if (kind == 4) /* the 16384 sampled scores (router/batch_topk.c's rule) raised: the
                            * bound is then too high for T k scores, and every score is taken */
                for (size_t i = 0; i < 16384; i++) x[(i * T / 16384) * E + i % E] += 8.0f;
            for (size_t t = 0; t < T; t++)
                for (size_t e = 0; e < E; e++) {
                    float *v = &x[t * E + e];
                    if (kind == 0 && e == 0) *v += 6.0f;                 /* a hot expert */
                    if (kind == 0 && e % 9 == 4) *v = -INFINITY;         /* masked */
                    if (kind == 1) *v = roundf(*v * 40.0f);              /* saturating, tied */
                    if (kind == 2) *v = *v + 3000.0f + (float)(t % 5);   /* far from 0 */
                    if (kind == 3 && t % 2) *v = roundf(*v);             /* half the rows tied */
                    if (kind == 5) *v = (e + t) % 3 == 0 ? *v * 1e30f : (e + t) % 3 == 1 ? -1e30f : *v; /* +-1e30 */
                }
            moert_router_config c = moert_router_config_default();
            c.policy = MOERT_POLICY_BATCH_TOPK, c.k = 3, c.threads = 2;
            c.batch_score = probs ? MOERT_BATCH_SCORE_PROBS : MOERT_BATCH_SCORE_LOGITS;
            moert_plan *plan = route(&c, x, T, E);
            expect_batch_topk_definition(plan, x, T, E, 3, probs, "batch-topk, hard batches");
            moert_plan_destroy(plan);
            free(x);
        }
}
END_TEST

/* Probabilities that round to the same subnormal float: with 32000 experts a row's sum
 * passes 11600, and below about 2^-140 the rounding of exp / sum alone exceeds the
 * logit-space comparison's margin. The four tiny scores are equal as computed, so the two
 * kept go to (0, 0) and (0, 1) in row-major order; the prefilter must not drop (0, 0). */
START_TEST(test_batch_topk_subnormal_ties) {
    const size_t T = 2, E = 32000;
    float *x = calloc(T * E, sizeof *x);
    x[0] = -87.67707f, x[1] = x[E] = x[E + 1] = -87.67578f;
    for (int isa = 0; isa < 3; isa++) {
        const moert_isa isas[] = {MOERT_ISA_SCALAR, MOERT_ISA_AVX2, MOERT_ISA_AVX512};
        if (moert_isa_check(isas[isa]) != MOERT_OK) continue;
        moert_router_config c = moert_router_config_default();
        c.policy = MOERT_POLICY_BATCH_TOPK, c.k = (int)E - 1, c.threads = 1, c.isa = isas[isa];
        moert_plan *plan = route(&c, x, T, E);
        expect_batch_topk_definition(plan, x, T, E, E - 1, 1, "batch-topk, subnormal ties");
        moert_plan_view v;
        moert_plan_get_view(plan, &v);
        int first_kept = 0;
        for (int64_t j = v.token_offsets[0]; j < v.token_offsets[1]; j++) first_kept |= v.expert_ids[j] == 0;
        ck_assert_msg(first_kept, "isa %d: (0, 0) dropped", isa);
        moert_plan_destroy(plan);
    }
    free(x);
}
END_TEST

/* Inference mode with batch mode's threshold keeps batch mode's entries above it, the
 * same bits: both take the scores by the same operations. */
START_TEST(test_batch_topk_threshold_mode_agrees) {
    const size_t T = 700, E = 40;
    float *x = random_logits(T * E, 81, 2.0f);
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_BATCH_TOPK, c.k = 5, c.threads = 2;
    moert_plan *batch = route(&c, x, T, E);
    moert_plan_stats s;
    moert_plan_get_stats(batch, &s);
    c.use_threshold = 1, c.threshold = (float)s.threshold;
    moert_plan *inference = route(&c, x, T, E);
    moert_plan_view a, b;
    moert_plan_get_view(batch, &a);
    moert_plan_get_view(inference, &b);
    size_t above = 0;
    for (size_t t = 0; t < T; t++) {
        size_t j = (size_t)b.token_offsets[t];
        for (int64_t i = a.token_offsets[t]; i < a.token_offsets[t + 1]; i++) {
            if (!(a.weights[i] > c.threshold)) continue;
            ck_assert_msg(j < (size_t)b.token_offsets[t + 1] && b.expert_ids[j] == a.expert_ids[i] &&
                              memcmp(&b.weights[j], &a.weights[i], sizeof(float)) == 0,
                          "token %zu: inference entry %zu differs from batch mode's", t, j);
            j++, above++;
        }
        ck_assert_uint_eq(j, (size_t)b.token_offsets[t + 1]);
    }
    ck_assert(above + 1 >= T * 5 - 3); /* all but the few equal to the threshold */
    moert_plan_destroy(batch), moert_plan_destroy(inference);
    free(x);
}
END_TEST

/* Two plans the same, bit for bit: entries, offsets, experts, weights and threshold. */
static void expect_same_plan(const moert_plan *p, const moert_plan *q) {
    moert_plan_view a, b;
    moert_plan_get_view(p, &a);
    moert_plan_get_view(q, &b);
    moert_plan_stats sa, sb;
    moert_plan_get_stats(p, &sa);
    moert_plan_get_stats(q, &sb);
    ck_assert_uint_eq(a.tokens, b.tokens);
    ck_assert_uint_eq(a.entries, b.entries);
    ck_assert(memcmp(a.token_offsets, b.token_offsets, (a.tokens + 1) * sizeof(int64_t)) == 0);
    ck_assert(memcmp(a.expert_ids, b.expert_ids, a.entries * sizeof(int32_t)) == 0);
    ck_assert(memcmp(a.weights, b.weights, a.entries * sizeof(float)) == 0);
    ck_assert(memcmp(&sa.threshold, &sb.threshold, sizeof(double)) == 0);
}

/* The same plan, offsets and threshold for 1, 2 and 3 threads where every step runs in
 * parallel: T k = 80000 candidates and more split theta's select; ties (logits on a 1/4
 * grid) and renormalised weights go through the parallel walk. */
START_TEST(test_batch_topk_threads_agree) {
    const size_t T = 20000, E = 64;
    float *x = random_logits(T * E, 12, 1.0f);
    for (size_t i = 0; i < T * E; i++) x[i] = roundf(x[i] * 4.0f) / 4.0f;
    for (int probs = 0; probs < 2; probs++) {
        moert_router_config c = moert_router_config_default();
        c.policy = MOERT_POLICY_BATCH_TOPK, c.k = 4, c.renormalize = probs, c.threads = 1;
        c.batch_score = probs ? MOERT_BATCH_SCORE_PROBS : MOERT_BATCH_SCORE_LOGITS;
        moert_plan *one = route(&c, x, T, E);
        for (int threads = 2; threads <= 3; threads++) {
            c.threads = threads;
            moert_plan *many = route(&c, x, T, E);
            expect_same_plan(one, many);
            moert_plan_destroy(many);
        }
        moert_plan_destroy(one);
    }
    free(x);
}
END_TEST

START_TEST(test_batch_topk_groups_and_threads) {
    /* Routing groups: each group its own T_g k; the statistics' threshold is the mean of
     * the groups' thresholds. And the same plan for 1 and 3 threads. E = 144 makes each
     * group's 500 x 144 scores reach the sampled, threaded filter (n >= 4 x 16384). */
    const size_t T = 2000, E = 144;
    float *x = random_logits(T * E, 9, 1.0f);
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_BATCH_TOPK, c.k = 4, c.threads = 1;
    double thresholds = 0;
    for (int g = 0; g < 4; g++) {
        const size_t t0 = T * (size_t)g / 4, t1 = T * (size_t)(g + 1) / 4;
        moert_plan *part = route(&c, x + t0 * E, t1 - t0, E);
        moert_plan_stats s;
        moert_plan_get_stats(part, &s);
        thresholds += s.threshold / 4;
        moert_plan_destroy(part);
    }
    c.route_groups = 4;
    moert_plan *grouped = route(&c, x, T, E);
    moert_plan_stats s;
    moert_plan_get_stats(grouped, &s);
    ck_assert(fabs(s.threshold - thresholds) < 1e-12);
    c.threads = 3;
    moert_plan *threaded = route(&c, x, T, E);
    expect_same_plan(grouped, threaded);
    moert_plan_destroy(grouped), moert_plan_destroy(threaded);
    free(x);
}
END_TEST

/* ---- noisy and Gumbel top-k ----------------------------------------------------------------- */

START_TEST(test_noise_distribution) {
    /* The generator's moments: N(0, 1), and Gumbel(0, 1) (mean Euler's gamma, variance
     * pi^2 / 6), over 2^17 values. */
    moert_router_config c = moert_router_config_default();
    float row[64], tmp[70];
    for (int kind = 0; kind < 2; kind++) {
        c.noise = kind ? MOERT_NOISE_GUMBEL : MOERT_NOISE_NORMAL;
        double sum = 0, sq = 0;
        const size_t rows = 2048;
        for (size_t t = 0; t < rows; t++) {
            noise_values_row(&c, t, 64, row, tmp);
            for (int e = 0; e < 64; e++) sum += row[e], sq += (double)row[e] * row[e];
        }
        const double n = rows * 64.0, mean = sum / n, var = sq / n - mean * mean;
        const double want_mean = kind ? 0.5772156649 : 0.0, want_var = kind ? M_PI * M_PI / 6 : 1.0;
        ck_assert_msg(fabs(mean - want_mean) < 0.02 && fabs(var - want_var) < 0.03 * want_var,
                      "%s noise: mean %g, variance %g", kind ? "gumbel" : "normal", mean, var);
    }
    /* The counters' uniforms: a token's 64 (Box-Muller pairs them 2p, 2p + 1) uniform one
     * by one and pair by pair, by chi-square over 16384 tokens (2^20 values, 2^19 pairs):
     * 256 bins, and a 32 x 32 grid of the pairs, each within 6 standard deviations of its
     * degrees of freedom (one round of mixing must not leave a lattice behind). */
    static double bins[256], grid[32][32];
    memset(bins, 0, sizeof bins), memset(grid, 0, sizeof grid);
    for (uint64_t t = 0; t < 16384; t++) {
        const uint64_t key = noise_token_key(9, t);
        for (uint32_t p = 0; p < 32; p++) {
            const float u0 = noise_uniform(key, 2 * p), u1 = noise_uniform(key, 2 * p + 1);
            bins[(int)(u0 * 256)]++, bins[(int)(u1 * 256)]++;
            grid[(int)(u0 * 32)][(int)(u1 * 32)]++;
        }
    }
    double chi_bins = 0, chi_grid = 0;
    for (int i = 0; i < 256; i++) chi_bins += (bins[i] - 4096.0) * (bins[i] - 4096.0) / 4096.0;
    for (int i = 0; i < 32; i++)
        for (int j = 0; j < 32; j++) chi_grid += (grid[i][j] - 512.0) * (grid[i][j] - 512.0) / 512.0;
    ck_assert_msg(fabs(chi_bins - 255) < 6 * sqrt(2 * 255.0), "uniforms: chi-square %g over 255", chi_bins);
    ck_assert_msg(fabs(chi_grid - 1023) < 6 * sqrt(2 * 1023.0), "pairs: chi-square %g over 1023", chi_grid);
    /* And at every distance: counters c and c + d, d < 300 of 512, over 4000 tokens (16 x 16
     * bins, each within 6 standard deviations). One mixing round instead of lowbias32's two
     * fails at d = 93 and 267, where d 0x9E3779B9 is nearly 0 mod 2^32. */
    enum { TOKENS = 4000, COUNTERS = 512 };
    uint8_t *cell = malloc((size_t)TOKENS * COUNTERS);
    for (uint64_t t = 0; t < TOKENS; t++) {
        const uint64_t key = noise_token_key(5, t);
        for (uint32_t c = 0; c < COUNTERS; c++) cell[t * COUNTERS + c] = (uint8_t)(noise_uniform(key, c) * 16);
    }
    for (size_t d = 1; d < 300; d++) {
        double lag[256] = {0};
        for (size_t t = 0; t < TOKENS; t++)
            for (size_t c = 0; c + d < COUNTERS; c++) lag[cell[t * COUNTERS + c] * 16 + cell[t * COUNTERS + c + d]]++;
        const double expected = (double)TOKENS * (double)(COUNTERS - d) / 256.0;
        double chi = 0;
        for (int i = 0; i < 256; i++) chi += (lag[i] - expected) * (lag[i] - expected) / expected;
        ck_assert_msg(fabs(chi - 255) < 6 * sqrt(2 * 255.0), "counters %zu apart: chi-square %g over 255", d, chi);
    }
    free(cell);
    /* Uniforms strictly inside (0, 1), and the log it uses. */
    for (uint32_t i = 0; i < 100000; i++) {
        const float u = noise_uniform(noise_token_key(1, i), i);
        ck_assert(u > 0.0f && u < 1.0f);
        ck_assert(fabs(noise_logf(u) - log(u)) <= 2e-7 * fabs(log(u)) + 1e-7);
    }
}
END_TEST

START_TEST(test_noisy_top_k) {
    const size_t T = 500, E = 24;
    float *x = random_logits(T * E, 3, 1.0f);
    float scales[24];
    for (size_t e = 0; e < E; e++) scales[e] = 0.1f * (float)e;
    for (int kind = 0; kind < 3; kind++)
        for (int noisy = 0; noisy < 2; noisy++) {
            moert_router_config c = moert_router_config_default();
            c.k = 3, c.threads = 2, c.seed = 77;
            c.noise = kind == 2 ? MOERT_NOISE_GUMBEL : MOERT_NOISE_NORMAL;
            if (kind == 1) c.noise_scales = scales;
            if (kind == 2) c.noise_temperature = 0.5f;
            c.noisy_weights = noisy;
            moert_plan *plan = route(&c, x, T, E);
            float noise[24], tmp[30];
            for (size_t t = 0; t < T; t++) {
                /* The reference: keys from the same generator, top 3 by key (ties to the lower
                 * id), weights softmax over the 3 of the clean logits or of the keys. */
                moert_router_config unscaled = c; /* N(0, 1) itself; the scales applied here */
                unscaled.noise_scales = NULL;
                noise_values_row(&unscaled, t, E, noise, tmp);
                double key[24];
                for (size_t e = 0; e < E; e++)
                    key[e] = kind == 2 ? ((double)x[t * E + e] + noise[e]) / 0.5
                                       : (double)x[t * E + e] + (double)(kind == 1 ? scales[e] : 1.0f) * noise[e];
                int32_t ids[3];
                double w[3], best[3];
                for (int j = 0; j < 3; j++) {
                    ids[j] = -1;
                    for (size_t e = 0; e < E; e++) {
                        int taken = 0;
                        for (int i = 0; i < j; i++) taken |= ids[i] == (int32_t)e;
                        if (!taken && (ids[j] < 0 || key[e] > key[ids[j]])) ids[j] = (int32_t)e;
                    }
                    best[j] = noisy ? key[ids[j]] : x[t * E + (size_t)ids[j]];
                }
                double mx = fmax(best[0], fmax(best[1], best[2])), s = 0;
                for (int j = 0; j < 3; j++) w[j] = exp(best[j] - mx), s += w[j];
                for (int j = 0; j < 3; j++) w[j] /= s;
                sort_entries(ids, w, 3);
                char what[64];
                snprintf(what, sizeof what, "noisy top-3 (kind %d, noisy weights %d)", kind, noisy);
                expect_token(plan, t, 3, ids, w, 1e-5, what);
            }
            moert_plan_destroy(plan);
        }
    free(x);
}
END_TEST

/* Noisy selection in the kernel's own pass (topk_extras), on every variant, against plain C
 * from the generator itself (kernels/noise.h): keys fma(scale, n, x) (or x + G), the top k by key
 * (ties to the lower id), softmax over their clean logits in selection order, then by
 * weight: the same ids and the same bits, on tiles, their tails and the row path; and the
 * statistics are the clean logits', as without noise. */
START_TEST(test_noisy_in_kernel) {
    const size_t T = 203, widths[] = {8, 24, 64, 100, 600};
    const int ks[] = {1, 2, 3, 5, 8, 12};
    float scales[600];
    for (size_t e = 0; e < 600; e++) scales[e] = 0.05f * (float)(e % 40);
    for (size_t wi = 0; wi < 5; wi++)
        for (int kind = 0; kind < 3; kind++) {
            const size_t E = widths[wi];
            float *x = random_logits(T * E, 40 + wi, 1.0f);
            for (size_t t = 0; t < T; t += 3) /* equal logits, so equal weights: by id */
                for (size_t e = 1; e < E; e += 2) x[t * E + e] = x[t * E + e - 1];
            for (size_t t = 0; t < T; t += 5) x[t * E + (t * 7) % E] = -INFINITY; /* masked experts */
            const noise_spec spec = {kind == 2 ? MOERT_NOISE_GUMBEL : MOERT_NOISE_NORMAL, 99, 1000 + wi,
                                     kind == 0 ? 0.7f : 1.0f, kind == 1 ? scales : NULL};
            for (size_t ki = 0; ki < 6; ki++) {
                const int k = ks[ki];
                if ((size_t)k > E) continue;
                /* The reference. */
                int32_t *want_ids = malloc(T * (size_t)k * sizeof(int32_t));
                float *want_w = malloc(T * (size_t)k * sizeof(float)), *keys = malloc(E * sizeof(float));
                float *tmp = malloc((E + 2) * sizeof(float)); /* noise_raw writes E + 1 */
                for (size_t t = 0; t < T; t++) {
                    noise_raw(&spec, spec.token_offset + t, E, tmp); /* N(0, 1) or G */
                    for (size_t e = 0; e < E; e++)
                        keys[e] = kind == 2 ? x[t * E + e] + tmp[e]
                                            : fmaf(kind == 1 ? scales[e] : spec.scale, tmp[e], x[t * E + e]);
                    int32_t *id = want_ids + t * (size_t)k;
                    float *w = want_w + t * (size_t)k;
                    for (int j = 0; j < k; j++) {
                        id[j] = -1;
                        for (size_t e = 0; e < E; e++) {
                            int taken = 0;
                            for (int i = 0; i < j; i++) taken |= id[i] == (int32_t)e;
                            if (!taken && (id[j] < 0 || keys[e] > keys[id[j]])) id[j] = (int32_t)e;
                        }
                    }
                    float top = -INFINITY, sum = 0.0f;
                    for (int j = 0; j < k; j++) top = fmaxf(top, x[t * E + (size_t)id[j]]);
                    for (int j = 0; j < k; j++) w[j] = moert_expf(x[t * E + (size_t)id[j]] - top), sum += w[j];
                    for (int j = 0; j < k; j++) w[j] = w[j] / sum;
                    for (int i = 1; i < k; i++) /* by weight, ties to the lower id */
                        for (int j = i; j > 0 && (w[j] > w[j - 1] || (w[j] == w[j - 1] && id[j] < id[j - 1])); j--) {
                            const float tw = w[j];
                            const int32_t ti = id[j];
                            w[j] = w[j - 1], id[j] = id[j - 1], w[j - 1] = tw, id[j - 1] = ti;
                        }
                }
                for (size_t v = 0; v < topk_variant_count; v++) {
                    if (moert_isa_check(topk_variants[v].isa) != MOERT_OK) continue;
                    int32_t *ids = malloc(T * (size_t)k * sizeof(int32_t)), *clean_ids = malloc(T * (size_t)k * sizeof(int32_t));
                    float *w = malloc(T * (size_t)k * sizeof(float)), *clean_w = malloc(T * (size_t)k * sizeof(float));
                    float *lse = malloc(T * sizeof(float)), *clean_lse = malloc(T * sizeof(float));
                    double *probs = malloc(E * sizeof(double)), *clean_probs = malloc(E * sizeof(double));
                    moert_topk_gate_params p = moert_topk_gate_params_default();
                    p.k = k, p.threads = 2;
                    const topk_extras extras = {.noise = &spec};
                    const moert_topk_gate_output out = {ids, w, probs, lse}, clean = {clean_ids, clean_w, clean_probs, clean_lse};
                    ck_assert_int_eq(topk_gate_run_extra(&topk_variants[v], &p, x, T, E, &out, &extras, NULL, NULL, NULL), MOERT_OK);
                    ck_assert_int_eq(topk_gate_run(&topk_variants[v], &p, x, T, E, &clean), MOERT_OK);
                    for (size_t i = 0; i < T * (size_t)k; i++)
                        ck_assert_msg(ids[i] == want_ids[i] && memcmp(&w[i], &want_w[i], sizeof(float)) == 0,
                                      "%s E %zu k %d kind %d: row %zu entry %zu: %d %.9g, want %d %.9g", topk_variants[v].name,
                                      E, k, kind, i / (size_t)k, i % (size_t)k, ids[i], (double)w[i], want_ids[i],
                                      (double)want_w[i]);
                    for (size_t t = 0; t < T; t++) /* the row path may add in another order */
                        ck_assert_msg(fabsf(lse[t] - clean_lse[t]) <= 1e-6f * (1.0f + fabsf(clean_lse[t])),
                                      "%s E %zu k %d: logsumexp of row %zu %.9g, without noise %.9g", topk_variants[v].name,
                                      E, k, t, (double)lse[t], (double)clean_lse[t]);
                    for (size_t e = 0; e < E; e++) ck_assert(fabs(probs[e] - clean_probs[e]) <= 1e-6 * (1 + clean_probs[e]));
                    free(ids), free(clean_ids), free(w), free(clean_w), free(lse), free(clean_lse), free(probs), free(clean_probs);
                }
                free(want_ids), free(want_w), free(keys), free(tmp);
            }
            free(x);
        }
}
END_TEST

/* Each variant's tiles generate kernels/noise.c's noise, bit for bit: normal and Gumbel,
 * several seeds and token positions (2^40 too), widths that are and are not multiples of 8. */
START_TEST(test_noise_tiles_are_the_generator) {
    const size_t widths[] = {1, 8, 13, 64, 200};
    float *buf = malloc(TOPK_TILE_FLOATS(200) * sizeof(float)), raw[202];
    for (size_t v = 0; v < topk_variant_count; v++) {
        if (moert_isa_check(topk_variants[v].isa) != MOERT_OK) continue;
        for (int kind = 0; kind < 2; kind++)
            for (uint64_t seed = 0; seed < 3; seed++)
                for (size_t wi = 0; wi < 5; wi++) {
                    const size_t E = widths[wi];
                    const noise_spec spec = {kind ? MOERT_NOISE_GUMBEL : MOERT_NOISE_NORMAL, seed * 7919, 0, 1.0f, NULL};
                    const uint64_t first = seed == 2 ? (1ull << 40) + 3 : seed * 100;
                    const size_t lanes = topk_variants[v].noise_tile(&spec, first, E, buf);
                    if (strcmp(topk_variants[v].name, "scalar") == 0) ck_assert(lanes == 0);
                    else ck_assert(lanes > 0);
                    for (size_t lane = 0; lane < lanes; lane++) {
                        noise_raw(&spec, first + lane, E, raw);
                        for (size_t c = 0; c < E; c++)
                            ck_assert_msg(memcmp(&buf[c * lanes + lane], &raw[c], sizeof(float)) == 0,
                                          "%s kind %d seed %llu E %zu token %llu expert %zu: %.9g, generator %.9g",
                                          topk_variants[v].name, kind, (unsigned long long)seed, E,
                                          (unsigned long long)(first + lane), c, (double)buf[c * lanes + lane], (double)raw[c]);
                    }
                }
    }
    free(buf);
}
END_TEST

START_TEST(test_noise_is_keyed_by_token) {
    /* The same plan for any thread count, any routing groups (token choice without
     * capacity does not depend on them), and for a batch routed in two halves with the
     * second's token_offset. And a scale of 0 is plain top-k, bit for bit. */
    const size_t T = 777, E = 64;
    float *x = random_logits(T * E, 5, 1.0f);
    moert_router_config c = moert_router_config_default();
    c.k = 8, c.noise = MOERT_NOISE_GUMBEL, c.seed = 12345, c.threads = 1;
    moert_plan *one = route(&c, x, T, E);
    c.threads = 3, c.route_groups = 5;
    moert_plan *many = route(&c, x, T, E);
    c.route_groups = 1;
    moert_plan *first = route(&c, x, 400, E);
    c.token_offset = 400;
    moert_plan *second = route(&c, x + 400 * E, T - 400, E);
    moert_plan_view a, b, h1, h2;
    moert_plan_get_view(one, &a), moert_plan_get_view(many, &b);
    moert_plan_get_view(first, &h1), moert_plan_get_view(second, &h2);
    ck_assert(memcmp(a.expert_ids, b.expert_ids, a.entries * 4) == 0 && memcmp(a.weights, b.weights, a.entries * 4) == 0);
    ck_assert(memcmp(a.expert_ids, h1.expert_ids, h1.entries * 4) == 0);
    ck_assert(memcmp(a.expert_ids + h1.entries, h2.expert_ids, h2.entries * 4) == 0);
    ck_assert(memcmp(a.weights + h1.entries, h2.weights, h2.entries * 4) == 0);
    /* A tiny temperature selects as any other (it divides the keys for weights only). */
    moert_router_config cold = c;
    cold.token_offset = 0, cold.route_groups = 1, cold.noise_temperature = 1e-40f, cold.noisy_weights = 1;
    moert_plan *frozen = route(&cold, x, T, E);
    moert_plan_view fv;
    moert_plan_get_view(frozen, &fv);
    for (size_t t = 0; t < T; t++) { /* the same set; the weights all on the best key */
        int same = 1;
        for (int j = 0; j < 8; j++) {
            int found = 0;
            for (int i = 0; i < 8; i++) found |= fv.expert_ids[t * 8 + i] == a.expert_ids[t * 8 + j];
            same &= found;
        }
        ck_assert_msg(same && fv.weights[t * 8] == 1.0f && fv.weights[t * 8 + 7] == 0.0f, "gumbel tau 1e-40, token %zu", t);
    }
    moert_plan_destroy(frozen);
    /* Another seed, another plan. */
    c.token_offset = 0, c.seed = 12346, c.route_groups = 1;
    moert_plan *other = route(&c, x, T, E);
    moert_plan_view o;
    moert_plan_get_view(other, &o);
    ck_assert(memcmp(a.expert_ids, o.expert_ids, a.entries * 4) != 0);
    /* Scale 0: the plain router's plan. */
    moert_router_config zero = moert_router_config_default(), plain = moert_router_config_default();
    zero.k = plain.k = 8, zero.noise = MOERT_NOISE_NORMAL, zero.noise_scale = 0.0f;
    moert_plan *z = route(&zero, x, T, E), *p = route(&plain, x, T, E);
    moert_plan_view zv, pv;
    moert_plan_get_view(z, &zv), moert_plan_get_view(p, &pv);
    ck_assert(memcmp(zv.expert_ids, pv.expert_ids, zv.entries * 4) == 0);
    ck_assert(memcmp(zv.weights, pv.weights, zv.entries * 4) == 0);
    moert_plan_destroy(one), moert_plan_destroy(many), moert_plan_destroy(first), moert_plan_destroy(second);
    moert_plan_destroy(other), moert_plan_destroy(z), moert_plan_destroy(p);
    free(x);
}
END_TEST

/* ---- bad input -------------------------------------------------------------------------------- */

START_TEST(test_bad_input) {
    const float x[8] = {0};
    moert_router_config c = moert_router_config_default();
    c.noise = MOERT_NOISE_NORMAL, c.noise_scale = -1.0f;
    ck_assert_int_eq(moert_router_config_check(&c, 8), MOERT_EINVAL);
    c.noise_scale = 1.0f, c.noise = MOERT_NOISE_GUMBEL, c.noise_temperature = 0.0f;
    ck_assert_int_eq(moert_router_config_check(&c, 8), MOERT_EINVAL);
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_SPARSEMAX, c.k_max = 0;
    ck_assert_int_eq(moert_router_config_check(&c, 8), MOERT_EINVAL);
    ck_assert(strstr(moert_last_error(), "k_max") != NULL);
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_BATCH_TOPK, c.use_threshold = 1, c.threshold = NAN;
    ck_assert_int_eq(moert_router_config_check(&c, 8), MOERT_EINVAL);
    ck_assert(strstr(moert_last_error(), "NaN") != NULL);
    /* tokens x k beyond the selection's 32-bit count: refused before any logit is read. */
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_BATCH_TOPK, c.k = 8;
    ck_assert_int_eq(route_status(&c, x, (size_t)INT32_MAX, 8), MOERT_EOVERFLOW);
    ck_assert(strstr(moert_last_error(), "tokens=") != NULL);
    /* Options of another policy or score are errors, not ignored. */
    c = moert_router_config_default();
    c.k_max = 3;
    ck_assert_int_eq(moert_router_config_check(&c, 8), MOERT_EINVAL);
    c = moert_router_config_default();
    c.noisy_weights = 1;
    ck_assert_int_eq(moert_router_config_check(&c, 8), MOERT_EINVAL);
    c = moert_router_config_default();
    c.score = MOERT_SCORE_SOFTPICK, c.groups = 2, c.topk_groups = 1;
    ck_assert_int_eq(moert_router_config_check(&c, 8), MOERT_EINVAL);
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_RELU, c.score = MOERT_SCORE_SOFTPICK, c.relu_threshold = 0.5f;
    ck_assert_int_eq(moert_router_config_check(&c, 8), MOERT_EINVAL);
    /* NaN logits: named. */
    float bad[8] = {0};
    bad[5] = NAN;
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_SPARSEMAX;
    ck_assert_int_eq(route_status(&c, bad, 1, 8), MOERT_EBADDATA);
    c.policy = MOERT_POLICY_BATCH_TOPK;
    ck_assert_int_eq(route_status(&c, bad, 1, 8), MOERT_EBADDATA);
    c = moert_router_config_default();
    c.noise = MOERT_NOISE_NORMAL;
    ck_assert_int_eq(route_status(&c, bad, 1, 8), MOERT_EBADDATA);
    ck_assert(strstr(moert_last_error(), "logits[0,5]") != NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("gates");
    TCase *tc = tcase_create("gates");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sparsemax_hand_worked);
    tcase_add_test(tc, test_sparsemax_against_sorting);
    tcase_add_test(tc, test_softpick);
    tcase_add_test(tc, test_softpick_from_kernel);
    tcase_add_test(tc, test_softpick_same_everywhere);
    tcase_add_test(tc, test_sqrt_softplus);
    tcase_add_test(tc, test_batch_topk_hand_worked);
    tcase_add_test(tc, test_batch_topk_against_sorting);
    tcase_add_test(tc, test_batch_topk_groups_and_threads);
    tcase_add_test(tc, test_select_threshold_against_sorting);
    tcase_add_test(tc, test_batch_topk_hard_batches);
    tcase_add_test(tc, test_batch_topk_subnormal_ties);
    tcase_add_test(tc, test_batch_topk_threshold_mode_agrees);
    tcase_add_test(tc, test_batch_topk_threads_agree);
    tcase_add_test(tc, test_noise_distribution);
    tcase_add_test(tc, test_noisy_top_k);
    tcase_add_test(tc, test_noisy_in_kernel);
    tcase_add_test(tc, test_noise_tiles_are_the_generator);
    tcase_add_test(tc, test_noise_is_keyed_by_token);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

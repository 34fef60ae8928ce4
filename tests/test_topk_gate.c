/* The top-k gate kernel family: the scalar reference against a double-precision
 * computation, every vector variant against the scalar reference, hand-worked rows,
 * ties, extreme and masked logits, bad data, bad arguments, threads and buffers. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/expf.h"
#include "kernels/topk_gate/internal.h"
#include "tests/reference_gate.h"
#include "tests/test_util.h"

/* ---- helpers ------------------------------------------------------------------------ */

static int variant_runs_here(const topk_variant *v) { return moert_isa_check(v->isa) == MOERT_OK; }

typedef struct gate_result {
    int32_t *ids;
    float *weights;
    float *lse;
    double *prob_sums;
    size_t tokens, experts;
    int k;
} gate_result;

static gate_result result_alloc(size_t tokens, size_t experts, int k) {
    gate_result r = {0};
    r.tokens = tokens, r.experts = experts, r.k = k;
    r.ids = test_alloc_canary(tokens * (size_t)k * sizeof(int32_t));
    r.weights = test_alloc_canary(tokens * (size_t)k * sizeof(float));
    r.lse = test_alloc_canary(tokens * sizeof(float));
    r.prob_sums = test_alloc_canary(experts * sizeof(double));
    return r;
}

static void result_check_canaries(const gate_result *r) {
    ck_assert(test_canary_intact(r->ids, r->tokens * (size_t)r->k * sizeof(int32_t)));
    ck_assert(test_canary_intact(r->weights, r->tokens * (size_t)r->k * sizeof(float)));
    ck_assert(test_canary_intact(r->lse, r->tokens * sizeof(float)));
    ck_assert(test_canary_intact(r->prob_sums, r->experts * sizeof(double)));
}

static void result_free(gate_result *r) {
    free(r->ids), free(r->weights), free(r->lse), free(r->prob_sums);
}

static moert_status run_variant(const topk_variant *v, const moert_topk_gate_params *p,
                                const float *logits, gate_result *r, int with_stats) {
    moert_topk_gate_output out = {r->ids, r->weights, with_stats ? r->prob_sums : NULL,
                                  with_stats ? r->lse : NULL};
    return topk_gate_run(v, p, logits, r->tokens, r->experts, &out);
}

static float *random_logits(size_t n, uint64_t seed, float scale) {
    float *x = malloc(n * sizeof(float) + 64);
    test_rng rng = {seed};
    for (size_t i = 0; i < n; i++) x[i] = scale * test_rng_normal(&rng);
    return x;
}

/* The parameter sets every comparison runs through. */
enum { MODE_POST, MODE_PRE, MODE_PRE_RENORM, MODE_SIGMOID, MODE_SIGMOID_RENORM_SCALED,
       MODE_SIGMOID_BIAS, MODE_COUNT };

static moert_topk_gate_params params_for(int mode, int k, const float *bias) {
    moert_topk_gate_params p = moert_topk_gate_params_default();
    p.k = k;
    p.threads = 1;
    switch (mode) {
    case MODE_PRE: p.softmax_order = MOERT_SOFTMAX_PRE; break;
    case MODE_PRE_RENORM: p.softmax_order = MOERT_SOFTMAX_PRE, p.renormalize = 1; break;
    case MODE_SIGMOID: p.score = MOERT_SCORE_SIGMOID; break;
    case MODE_SIGMOID_RENORM_SCALED:
        p.score = MOERT_SCORE_SIGMOID, p.renormalize = 1, p.scaling = 2.5f;
        break;
    case MODE_SIGMOID_BIAS: p.score = MOERT_SCORE_SIGMOID, p.bias = bias, p.scaling = 1.5f; break;
    default: break;
    }
    return p;
}

/* Softmax pre sums over all experts in a variant's own order, so its weights may differ
 * in the last bits; post and sigmoid weights are the same operations everywhere. */
static int weights_bit_identical(int mode) { return mode != MODE_PRE && mode != MODE_PRE_RENORM; }

static int close_rel(double a, double b, double rel, double abs_tol) {
    return fabs(a - b) <= rel * fabs(b) + abs_tol;
}

/* Float sums of n terms in different orders (or against double) differ by up to about
 * n half-ulps: tolerances grow with the number of terms summed. */
static double sum_tolerance(size_t n) { return 1e-6 + 6e-8 * (double)n; }

static const size_t shape_experts[] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14,
                                       15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                       29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42,
                                       43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56,
                                       57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70,
                                       127, 128, 129, 160, 256, 384, 1000};
#define N_SHAPES (sizeof shape_experts / sizeof shape_experts[0])

/* k of 1, 2, E, and around the vector widths. */
static int shape_ks(size_t E, int *ks) {
    const int wanted[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, (int)E - 1, (int)E};
    int n = 0;
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
        int k = wanted[i];
        if (k < 1 || (size_t)k > E) continue;
        int dup = 0;
        for (int j = 0; j < n; j++) dup |= ks[j] == k;
        if (!dup) ks[n++] = k;
    }
    return n;
}

/* ---- comparing rows ------------------------------------------------------------------ */

/* A row obeys the order rule: weights non-increasing, equal weights by ascending id. */
static void assert_row_ordered(const int32_t *ids, const float *w, int k, const char *who, size_t t) {
    for (int j = 1; j < k; j++) {
        ck_assert_msg(w[j] <= w[j - 1], "%s t=%zu: weight %d (%.9g) above weight %d (%.9g)", who, t, j,
                      w[j], j - 1, w[j - 1]);
        ck_assert_msg(w[j] != w[j - 1] || ids[j] > ids[j - 1], "%s t=%zu: equal weights out of id order", who, t);
    }
}

/* An entry of a row: expert id and weight, to compare rows as sets sorted by id. */
typedef struct id_weight {
    int32_t id;
    double weight;
} id_weight;

static int compare_by_id(const void *a, const void *b) {
    const int32_t x = ((const id_weight *)a)->id, y = ((const id_weight *)b)->id;
    return (x > y) - (x < y);
}

/* The same experts, and each one's weight within `rel` (weights that round alike may be
 * ordered differently by computations that round differently). */
static void assert_same_entries(const int32_t *ids, const float *w, const int32_t *want_ids,
                                const double *want_w, int k, double rel, const char *who, size_t t) {
    id_weight *a = malloc((size_t)k * sizeof *a), *b = malloc((size_t)k * sizeof *b);
    for (int j = 0; j < k; j++) a[j] = (id_weight){ids[j], w[j]}, b[j] = (id_weight){want_ids[j], want_w[j]};
    qsort(a, (size_t)k, sizeof *a, compare_by_id);
    qsort(b, (size_t)k, sizeof *b, compare_by_id);
    for (int j = 0; j < k; j++) {
        ck_assert_msg(a[j].id == b[j].id, "%s t=%zu: experts differ (%d vs %d)", who, t, a[j].id, b[j].id);
        ck_assert_msg(fabs(a[j].weight - b[j].weight) <= rel * fabs(b[j].weight) + 1e-30,
                      "%s t=%zu expert %d: weight %.9g, expected %.9g", who, t, a[j].id, a[j].weight, b[j].weight);
    }
    free(a), free(b);
}

/* ---- the scalar reference against double precision ----------------------------------- */

static void check_scalar_params_against_double(const float *logits, size_t T, size_t E,
                                               const moert_topk_gate_params *pp, int mode) {
    const moert_topk_gate_params p = *pp;
    const int k = p.k;
    gate_result r = result_alloc(T, E, k);
    ck_assert_int_eq(run_variant(&topk_variants[0], &p, logits, &r, 1), MOERT_OK);
    result_check_canaries(&r);
    int32_t *ids = malloc((size_t)k * sizeof(int32_t));
    double *w = malloc((size_t)k * sizeof(double));
    double *probs = malloc(E * sizeof(double)), *prob_sums = calloc(E, sizeof(double));
    for (size_t t = 0; t < T; t++) {
        double lse;
        reference_gate_row(&p, logits + t * E, E, ids, w, &lse, probs);
        for (size_t e = 0; e < E; e++) prob_sums[e] += probs[e];
        char who[64];
        snprintf(who, sizeof who, "scalar E=%zu k=%d mode=%d", E, k, mode);
        assert_row_ordered(r.ids + t * k, r.weights + t * k, k, who, t);
        assert_same_entries(r.ids + t * k, r.weights + t * k, ids, w, k, sum_tolerance(E), who, t);
        ck_assert_msg(close_rel(r.lse[t], lse, sum_tolerance(E), 1e-6), "lse %.9g vs %.9g", r.lse[t], lse);
    }
    for (size_t e = 0; e < E; e++)
        ck_assert_msg(close_rel(r.prob_sums[e], prob_sums[e], 1e-5 + sum_tolerance(E), 1e-9),
                      "E=%zu prob_sums[%zu] %.9g vs %.9g", E, e, r.prob_sums[e], prob_sums[e]);
    free(ids), free(w), free(probs), free(prob_sums);
    result_free(&r);
}

static void check_scalar_against_double(const float *logits, size_t T, size_t E, int k, int mode,
                                        const float *bias) {
    const moert_topk_gate_params p = params_for(mode, k, bias);
    check_scalar_params_against_double(logits, T, E, &p, mode);
}

START_TEST(scalar_matches_double_precision) {
    for (size_t s = 0; s < N_SHAPES; s++) {
        const size_t E = shape_experts[s], T = 9;
        float *logits = random_logits(T * E, 100 + E, 3.0f);
        float *bias = random_logits(E, 7 + E, 0.05f);
        int ks[16];
        const int nk = shape_ks(E, ks);
        for (int i = 0; i < nk; i++)
            for (int mode = 0; mode < MODE_COUNT; mode++)
                check_scalar_against_double(logits, T, E, ks[i], mode, bias);
        free(logits), free(bias);
    }
}
END_TEST

START_TEST(scalar_matches_double_at_extremes) {
    /* Logits of +-80: exp(80) overflows a careless float softmax. */
    const size_t E = 37, T = 11;
    float *logits = random_logits(T * E, 5, 1.0f);
    for (size_t i = 0; i < T * E; i++) logits[i] = logits[i] > 0 ? 80.0f - logits[i] : -80.0f - logits[i];
    for (int mode = 0; mode < MODE_COUNT; mode++)
        for (int k = 1; k <= 9; k += 4) check_scalar_against_double(logits, T, E, k, mode, logits);
    free(logits);
}
END_TEST

START_TEST(expf_is_accurate) {
    /* moert_expf against exp in double: within 2 ulp over the whole range used. */
    for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
        const double want = exp((double)x);
        const double got = moert_expf(x);
        ck_assert_msg(fabs(got - want) <= 2.5e-7 * want, "exp(%g) = %.9g, want %.9g", x, got, want);
    }
    ck_assert_float_eq(moert_expf(0.0f), 1.0f);
    ck_assert_float_eq(moert_expf(-INFINITY), 0.0f);
    ck_assert_float_eq(moert_expf(-100.0f), 0.0f);
    ck_assert(moert_expf(100.0f) < INFINITY);
    ck_assert_float_eq(moert_sigmoidf(0.0f), 0.5f);
    ck_assert_float_eq(moert_sigmoidf(-INFINITY), 0.0f);
    ck_assert(fabs(moert_sigmoidf(-30.0f) - 1.0 / (1.0 + exp(30.0))) < 1e-19);
}
END_TEST

START_TEST(exp2_stat_is_accurate) {
    /* The statistics' 2^y against exp2 in double: within 2e-7 relative down to 2^-126, then
     * exactly 0 (the sums it feeds need no subnormals), and 0 for -inf. */
    for (float y = -126.0f; y <= 0.0f; y += 0.00731f) {
        const double want = exp2((double)y), got = moert_exp2_stat(y);
        ck_assert_msg(fabs(got - want) <= 2e-7 * want, "2^%g = %.9g, want %.9g", y, got, want);
    }
    ck_assert_float_eq(moert_exp2_stat(0.0f), 1.0f);
    ck_assert_float_eq(moert_exp2_stat(-127.0f), 0.0f);
    ck_assert_float_eq(moert_exp2_stat(-1000.0f), 0.0f);
    ck_assert_float_eq(moert_exp2_stat(-INFINITY), 0.0f);
}
END_TEST

/* ---- every vector variant against the scalar reference --------------------------------- */

static void check_variant_params_against_scalar(const topk_variant *v, const float *logits, size_t T,
                                                size_t E, const moert_topk_gate_params *pp, int mode) {
    const moert_topk_gate_params p = *pp;
    const int k = p.k;
    gate_result want = result_alloc(T, E, k), got = result_alloc(T, E, k);
    ck_assert_int_eq(run_variant(&topk_variants[0], &p, logits, &want, 1), MOERT_OK);
    ck_assert_msg(run_variant(v, &p, logits, &got, 1) == MOERT_OK, "%s: %s", v->name, moert_last_error());
    result_check_canaries(&got);
    if (weights_bit_identical(mode)) {
        for (size_t i = 0; i < T * (size_t)k; i++) {
            ck_assert_msg(got.ids[i] == want.ids[i], "%s E=%zu k=%d mode=%d entry %zu: id %d, scalar %d",
                          v->name, E, k, mode, i, got.ids[i], want.ids[i]);
            ck_assert_msg(got.weights[i] == want.weights[i],
                          "%s E=%zu k=%d mode=%d entry %zu: weight %.9g, scalar %.9g", v->name, E, k,
                          mode, i, got.weights[i], want.weights[i]);
        }
    } else {
        /* Softmax pre sums the row in each variant's own order: weights agree to rounding,
         * and weights that round alike in one variant may be ordered by id there. */
        double *want_w = malloc((size_t)k * sizeof *want_w);
        for (size_t t = 0; t < T; t++) {
            char who[64];
            snprintf(who, sizeof who, "%s E=%zu k=%d mode=%d", v->name, E, k, mode);
            for (int j = 0; j < k; j++) want_w[j] = want.weights[t * k + j];
            assert_row_ordered(got.ids + t * k, got.weights + t * k, k, who, t);
            assert_same_entries(got.ids + t * k, got.weights + t * k, want.ids + t * k, want_w, k,
                                sum_tolerance(E), who, t);
        }
        free(want_w);
    }
    for (size_t t = 0; t < T; t++)
        ck_assert_msg(close_rel(got.lse[t], want.lse[t], sum_tolerance(E), 1e-6), "%s lse", v->name);
    for (size_t e = 0; e < E; e++)
        ck_assert_msg(close_rel(got.prob_sums[e], want.prob_sums[e], 1e-5 + sum_tolerance(E), 1e-9),
                      "%s prob_sums[%zu]",
                      v->name, e);
    result_free(&want), result_free(&got);
}

static void check_variant_against_scalar(const topk_variant *v, const float *logits, size_t T,
                                         size_t E, int k, int mode, const float *bias) {
    const moert_topk_gate_params p = params_for(mode, k, bias);
    check_variant_params_against_scalar(v, logits, T, E, &p, mode);
}

static void for_each_vector_variant(void (*check)(const topk_variant *)) {
    for (size_t i = 1; i < topk_variant_count; i++) {
        if (!variant_runs_here(&topk_variants[i])) {
            fprintf(stderr, "note: variant %s does not run on this CPU; its algorithm is covered by emu16\n",
                    topk_variants[i].name);
            continue;
        }
        check(&topk_variants[i]);
    }
}

static void random_shapes(const topk_variant *v) {
    for (size_t s = 0; s < N_SHAPES; s++) {
        const size_t E = shape_experts[s], T = 45; /* tiles of 8 and 16, and remainders */
        float *logits = random_logits(T * E, 200 + E, 2.0f);
        float *bias = random_logits(E, 9 + E, 0.05f);
        int ks[16];
        const int nk = shape_ks(E, ks);
        for (int i = 0; i < nk; i++)
            for (int mode = 0; mode < MODE_COUNT; mode++)
                check_variant_against_scalar(v, logits, T, E, ks[i], mode, bias);
        free(logits), free(bias);
    }
}
START_TEST(variants_match_scalar_on_random_rows) { for_each_vector_variant(random_shapes); }
END_TEST

/* ---- expert choice's softmax filter and the vector compaction ----------------------- */

/* One variant's softmax filter over all rows (one block at a time, as the driver calls it). */
typedef struct filter_result {
    float *bounds, *exps, *lse, *row_max, *row_sum, *prob_block, *tile;
    int32_t *tokens;
    size_t *count, cap;
} filter_result;

static topk_row_error run_filter(const topk_variant *v, const float *x, size_t T, size_t E, filter_result *f) {
    const topk_candidates cand = {f->bounds, f->tokens, f->exps, f->count, f->cap};
    memset(f->count, 0, E * sizeof(size_t));
    memset(f->prob_block, 0, (E + 64) * sizeof(float));
    for (size_t b = 0; b < T; b += 64) {
        topk_row_error err = v->softmax_filter(x, T, E, b, b + 64 < T ? b + 64 : T, &cand, f->lse, f->row_max,
                                               f->row_sum, f->prob_block, f->tile);
        if (err.kind != TOPK_ROW_OK) return err;
    }
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

static filter_result filter_alloc(size_t T, size_t E, size_t cap, const float *bounds) {
    filter_result f = {0};
    f.bounds = malloc(E * sizeof(float));
    memcpy(f.bounds, bounds, E * sizeof(float));
    f.cap = cap;
    f.tokens = calloc(E * cap, sizeof(int32_t));
    f.exps = calloc(E * cap, sizeof(float));
    f.count = calloc(E, sizeof(size_t));
    f.lse = calloc(T, sizeof(float)), f.row_max = calloc(T, sizeof(float)), f.row_sum = calloc(T, sizeof(float));
    f.prob_block = calloc(E + 64, sizeof(float));
    f.tile = calloc(2 * TOPK_TILE_FLOATS(E), sizeof(float));
    return f;
}

static void filter_free(filter_result *f) {
    free(f->bounds), free(f->tokens), free(f->exps), free(f->count), free(f->lse), free(f->row_max);
    free(f->row_sum), free(f->prob_block), free(f->tile);
}

static void filter_variant(const topk_variant *v) {
    const size_t Es[] = {1, 7, 8, 12, 64, 130};
    for (size_t s = 0; s < sizeof Es / sizeof Es[0]; s++) {
        const size_t E = Es[s], T = 203;
        float *x = random_logits(T * E, 600 + E, 2.0f);
        float *bounds = malloc(E * sizeof(float));
        for (size_t e = 0; e < E; e++) bounds[e] = e % 3 == 0 ? 0.0f : (e % 3 == 1 ? 0.5f / (float)E : 2.0f / (float)E);
        for (size_t cap = 16; cap <= T; cap += T - 16) { /* a small buffer overflows */
            filter_result want = filter_alloc(T, E, cap, bounds), got = filter_alloc(T, E, cap, bounds);
            ck_assert_int_eq(run_filter(&topk_variants[0], x, T, E, &want).kind, TOPK_ROW_OK);
            ck_assert_int_eq(run_filter(v, x, T, E, &got).kind, TOPK_ROW_OK);
            ck_assert(!memcmp(got.lse, want.lse, T * sizeof(float)));
            ck_assert(!memcmp(got.row_max, want.row_max, T * sizeof(float)));
            ck_assert(!memcmp(got.row_sum, want.row_sum, T * sizeof(float)));
            for (size_t e = 0; e < E; e++) {
                ck_assert(close_rel(got.prob_block[e], want.prob_block[e], sum_tolerance(T), 1e-6));
                /* A vector variant may call a buffer over-full a little early; otherwise
                 * the same list. */
                if (got.count[e] > cap) continue;
                ck_assert_msg(got.count[e] == want.count[e], "%s E=%zu cap=%zu expert %zu: %zu vs %zu", v->name, E,
                              cap, e, got.count[e], want.count[e]);
                ck_assert(!memcmp(got.tokens + e * cap, want.tokens + e * cap, want.count[e] * sizeof(int32_t)));
                ck_assert(!memcmp(got.exps + e * cap, want.exps + e * cap, want.count[e] * sizeof(float)));
            }
            filter_free(&want), filter_free(&got);
        }
        /* A bad row is reported at its first bad element, as the scalar reports it. */
        x[(T - 5) * E + E / 2] = NAN;
        filter_result want = filter_alloc(T, E, T, bounds), got = filter_alloc(T, E, T, bounds);
        const topk_row_error a = run_filter(&topk_variants[0], x, T, E, &want), b = run_filter(v, x, T, E, &got);
        ck_assert(a.kind == TOPK_ROW_NAN && b.kind == a.kind && b.row == a.row && b.col == a.col);
        filter_free(&want), filter_free(&got);
        free(x), free(bounds);
    }
    /* Compaction: every length around the vector widths, bounds that take none, some, all. */
    float x[300];
    int32_t want_idx[300], got_idx[300];
    for (size_t i = 0; i < 300; i++) x[i] = (float)((i * 37) % 11) - 5.0f;
    x[17] = NAN;
    for (size_t n = 0; n <= 300; n += (n < 70 ? 1 : 23))
        for (float bound = -6.0f; bound <= 6.0f; bound += 2.5f) {
            const size_t a = topk_variants[0].compact(x, n, bound, want_idx), b = v->compact(x, n, bound, got_idx);
            ck_assert_msg(a == b, "%s compact n=%zu bound=%g: %zu vs %zu", v->name, n, (double)bound, b, a);
            ck_assert(!memcmp(want_idx, got_idx, a * sizeof(int32_t)));
        }
}
START_TEST(variants_match_scalar_softmax_filter_and_compact) { for_each_vector_variant(filter_variant); }
END_TEST

/* ---- ReLU routing's row: compaction and sort ------------------------------------------ */

static int by_weight_then_id(const void *pa, const void *pb) {
    const id_weight *a = pa, *b = pb;
    if (a->weight != b->weight) return a->weight > b->weight ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* Widths around the vector widths and past the heap's threshold; thresholds from nearly
 * all to none active; logits on a 1/8 grid so that weights tie; -inf masked entries. */
static void relu_rows(const topk_variant *v) {
    const size_t widths[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 64, 100, 1000};
    const float thresholds[] = {-3.0f, -0.5f, 0.0f, 0.4f, 1.0f, 1.7f, 2.5f, 50.0f};
    for (size_t s = 0; s < sizeof widths / sizeof widths[0]; s++) {
        const size_t E = widths[s];
        float *x = random_logits(E, 900 + E, 1.5f);
        for (size_t e = 0; e < E; e++) x[e] = e % 11 == 5 ? -INFINITY : roundf(x[e] * 8.0f) / 8.0f;
        int32_t *ids = malloc(E * sizeof *ids), *want_ids = malloc(E * sizeof *want_ids);
        float *w = malloc(E * sizeof *w), *want_w = malloc(E * sizeof *want_w);
        float *scratch = malloc(TOPK_RELU_SCRATCH(E) * sizeof *scratch);
        id_weight *ref = malloc(E * sizeof *ref);
        for (size_t h = 0; h < sizeof thresholds / sizeof thresholds[0]; h++) {
            const float thr = thresholds[h];
            /* The definition, with qsort. */
            size_t n = 0;
            for (size_t e = 0; e < E; e++)
                if (x[e] - thr > 0.0f) ref[n++] = (id_weight){(int32_t)e, x[e] - thr};
            qsort(ref, n, sizeof *ref, by_weight_then_id);
            const size_t got_scalar = topk_variants[0].relu_row(x, E, thr, want_ids, want_w, scratch);
            ck_assert_msg(got_scalar == n, "scalar E=%zu thr=%g: %zu entries, want %zu", E, thr, got_scalar, n);
            for (size_t j = 0; j < n; j++)
                ck_assert_msg(want_ids[j] == ref[j].id && want_w[j] == (float)ref[j].weight,
                              "scalar E=%zu thr=%g entry %zu: (%d, %g), want (%d, %g)", E, thr, j, want_ids[j],
                              want_w[j], ref[j].id, ref[j].weight);
            const size_t got = v->relu_row(x, E, thr, ids, w, scratch);
            ck_assert_msg(got == n, "%s E=%zu thr=%g: %zu entries, want %zu", v->name, E, thr, got, n);
            for (size_t j = 0; j < n; j++)
                ck_assert_msg(ids[j] == want_ids[j] && w[j] == want_w[j], "%s E=%zu thr=%g entry %zu: (%d, %g), scalar (%d, %g)",
                              v->name, E, thr, j, ids[j], w[j], want_ids[j], want_w[j]);
        }
        free(x), free(ids), free(want_ids), free(w), free(want_w), free(scratch), free(ref);
    }
}
START_TEST(variants_match_scalar_relu_rows) { for_each_vector_variant(relu_rows); }
END_TEST

/* BatchTopK's rows: the definition (the entries with x >= the row's logit bound whose
 * score reaches the bound, by qsort), then every variant bit for bit against scalar.
 * Several rows per call (the vector variants' two passes), widths around the vector
 * widths and past the register and heap paths, bounds from every entry to none, logit
 * bounds that let the margin's extras through (they must be dropped), ties on a 1/8
 * grid, masked entries, all-negative rows with -0 (its sign kept) under negative bounds. */
static void batch_rows(const topk_variant *v) {
    const size_t widths[] = {1, 7, 8, 9, 16, 17, 33, 64, 100, 1000};
    const float bounds[] = {-FLT_MAX, 0.0f, 0.004f, 0.02f, 0.1f, 0.6f};
    const float logit_bounds[] = {-FLT_MAX, -0.5f, 0.0f, 0.125f, 0.8f, 4.0f};
    const size_t R = 13;
    for (size_t s = 0; s < sizeof widths / sizeof widths[0]; s++)
        for (int probs = 0; probs < 2; probs++)
            for (size_t h = 0; h < sizeof bounds / sizeof bounds[0]; h++) {
                const size_t E = widths[s];
                const float bound = probs ? bounds[h] : logit_bounds[h];
                float *x = random_logits(R * E, 700 + E, 1.5f);
                float max[13], sum[13], logit_bound[13];
                for (size_t r = 0; r < R; r++) {
                    float *row = x + r * E;
                    for (size_t e = 0; e < E; e++) {
                        row[e] = (e + r) % 11 == 5 && E > 1 ? -INFINITY : roundf(row[e] * 8.0f) / 8.0f;
                        if (r % 4 == 3) row[e] = -fabsf(row[e]); /* rows of x <= 0, with -0 */
                    }
                    if (r % 4 == 3) row[0] = 0.0f; /* and +0 first: the row max is +0 */
                    max[r] = -INFINITY, sum[r] = 0.0f;
                    for (size_t e = 0; e < E; e++) max[r] = row[e] > max[r] ? row[e] : max[r];
                    for (size_t e = 0; e < E; e++) sum[r] += expf(row[e] - max[r]);
                    /* Exact, loose (extras to drop) and every-entry logit bounds, by row. */
                    const float exact = probs ? max[r] + logf(sum[r]) + logf(bound) : bound;
                    logit_bound[r] = r % 3 == 0 ? exact : r % 3 == 1 ? exact - 0.5f : -FLT_MAX;
                    if (!(logit_bound[r] > -FLT_MAX)) logit_bound[r] = -FLT_MAX;
                }
                const topk_batch_rows b = {logit_bound, max, sum, bound, probs};
                int32_t *ids = malloc((R * E + 16) * sizeof *ids), *want_ids = malloc((R * E + 16) * sizeof *want_ids);
                float *w = malloc((R * E + 16) * sizeof *w), *want_w = malloc((R * E + 16) * sizeof *want_w);
                uint32_t counts[13], want_counts[13];
                float *scratch = malloc(TOPK_BATCH_SCRATCH(R, E) * sizeof *scratch);
                id_weight *ref = malloc(E * sizeof *ref);
                const size_t total = topk_variants[0].batch_rows(x, R, E, &b, want_ids, want_w, want_counts, scratch);
                size_t at = 0;
                for (size_t r = 0; r < R; r++) {
                    size_t n = 0;
                    for (size_t e = 0; e < E; e++) {
                        const float xe = x[r * E + e];
                        const float score = probs ? moert_exp_shifted(xe, max[r]) / sum[r] : xe;
                        if (xe >= logit_bound[r] && score >= bound) ref[n++] = (id_weight){(int32_t)e, score};
                    }
                    qsort(ref, n, sizeof *ref, by_weight_then_id);
                    ck_assert_msg(want_counts[r] == n, "scalar E=%zu bound %g row %zu: %u entries, want %zu", E,
                                  (double)bound, r, want_counts[r], n);
                    for (size_t j = 0; j < n; j++)
                        ck_assert_msg(want_ids[at + j] == ref[j].id && want_w[at + j] == (float)ref[j].weight,
                                      "scalar E=%zu row %zu entry %zu: (%d, %g), want (%d, %g)", E, r, j,
                                      want_ids[at + j], (double)want_w[at + j], ref[j].id, ref[j].weight);
                    at += n;
                }
                ck_assert_uint_eq(total, at);
                ck_assert_uint_eq(v->batch_rows(x, R, E, &b, ids, w, counts, scratch), total);
                ck_assert(memcmp(counts, want_counts, sizeof counts) == 0);
                for (size_t j = 0; j < total; j++)
                    ck_assert_msg(ids[j] == want_ids[j] && memcmp(&w[j], &want_w[j], sizeof(float)) == 0,
                                  "%s E=%zu probs %d bound %g entry %zu: (%d, %.9g), scalar (%d, %.9g)", v->name, E,
                                  probs, (double)bound, j, ids[j], (double)w[j], want_ids[j], (double)want_w[j]);
                free(x), free(ids), free(want_ids), free(w), free(want_w), free(scratch), free(ref);
            }
}
START_TEST(variants_match_scalar_batch_rows) { for_each_vector_variant(batch_rows); }
END_TEST

/* ---- group-limited selection ----------------------------------------------------------- */

/* Shapes of group-limited selection: groups of 8, 16 and 32 experts (the tile kernel), of
 * 4 and 12 (the row path), and DeepSeek-V3's 256 experts in 8 groups, keep 4, k = 8. */
static const struct { size_t E; int G, M; } group_shapes[] = {
    {256, 8, 4}, {64, 8, 2}, {64, 4, 1}, {64, 2, 2}, {128, 16, 4}, {96, 3, 1}, {64, 16, 4}, {48, 4, 2},
};
#define N_GROUP_SHAPES (sizeof group_shapes / sizeof group_shapes[0])
static const int group_modes[] = {MODE_POST, MODE_PRE_RENORM, MODE_SIGMOID_RENORM_SCALED, MODE_SIGMOID_BIAS};

/* Calls check for every group shape, mode, group score and k (k a multiple of M for the
 * top-k sum), on Gaussian rows and on coarse rows full of exact ties. */
static void for_each_group_case(const topk_variant *v,
                                void (*check)(const topk_variant *, const float *, size_t, size_t,
                                              const moert_topk_gate_params *, int),
                                size_t T) {
    for (size_t s = 0; s < N_GROUP_SHAPES; s++) {
        const size_t E = group_shapes[s].E;
        float *x = random_logits(T * E, 300 + E, 2.0f);
        float *coarse = random_logits(T * E, 400 + E, 2.0f);
        for (size_t i = 0; i < T * E; i++) coarse[i] = roundf(coarse[i] * 4.0f) / 4.0f;
        float *bias = random_logits(E, 500 + E, 0.05f);
        for (size_t m = 0; m < sizeof group_modes / sizeof group_modes[0]; m++)
            for (int score = 0; score < 2; score++)
                for (int k = 1; k <= 8; k++) {
                    moert_topk_gate_params p = params_for(group_modes[m], k, bias);
                    p.groups = group_shapes[s].G, p.topk_groups = group_shapes[s].M;
                    p.group_score = score ? MOERT_GROUP_SCORE_MAX : MOERT_GROUP_SCORE_TOPK_SUM;
                    if (p.group_score == MOERT_GROUP_SCORE_TOPK_SUM && k % p.topk_groups != 0) continue;
                    if ((size_t)k > (size_t)p.topk_groups * (E / (size_t)p.groups)) continue;
                    check(v, x, T, E, &p, group_modes[m]);
                    check(v, coarse, T, E, &p, group_modes[m]);
                }
        free(x), free(coarse), free(bias);
    }
}

static void scalar_group_check(const topk_variant *v, const float *x, size_t T, size_t E,
                               const moert_topk_gate_params *p, int mode) {
    (void)v;
    check_scalar_params_against_double(x, T, E, p, mode);
}
START_TEST(scalar_group_limited_matches_double) { for_each_group_case(NULL, scalar_group_check, 11); }
END_TEST

static void variant_groups(const topk_variant *v) {
    for_each_group_case(v, check_variant_params_against_scalar, 45);
}
START_TEST(variants_match_scalar_on_group_limited_rows) { for_each_vector_variant(variant_groups); }
END_TEST

/* Adversarial rows: many exact ties, coarse values, sorted rows, +-80, masked experts. */
static void adversarial_rows(const topk_variant *v) {
    const size_t Es[] = {3, 8, 16, 17, 24, 33, 64, 65, 128, 160, 256, 1000};
    for (size_t s = 0; s < sizeof Es / sizeof Es[0]; s++) {
        const size_t E = Es[s], T = 50;
        float *x = malloc(T * E * sizeof(float));
        test_rng rng = {E};
        for (size_t t = 0; t < T; t++)
            for (size_t e = 0; e < E; e++) {
                float *xe = &x[t * E + e];
                switch (t % 10) {
                case 8: /* keys one ulp apart: packed keys that lose low bits must notice */
                    *xe = 1.0f;
                    for (size_t i = 0; i < (e * 7) % E; i++) *xe = nextafterf(*xe, 2.0f);
                    break;
                case 9: *xe = (e % 3) ? 3.0e38f : 2.9e38f; break; /* huge but finite */
                case 0: *xe = 1.0f; break;                                     /* all tied */
                case 1: *xe = (float)(test_rng_next(&rng) % 4); break;         /* few values */
                case 2: *xe = (float)e; break;                                 /* ascending */
                case 3: *xe = -(float)e; break;                                /* descending */
                case 4: *xe = (test_rng_next(&rng) & 1) ? 80.0f : -80.0f; break; /* +-80 */
                case 5: *xe = (e % 3 == 0) ? -INFINITY : test_rng_normal(&rng); break;
                case 6: *xe = (e == E / 2) ? 0.0f : -INFINITY; break;          /* one unmasked */
                default: *xe = (e % 8 == 0) ? 10.0f + (float)e : (float)(e % 5); /* one lane holds the top */
                }
            }
        int ks[16];
        const int nk = shape_ks(E, ks);
        for (int i = 0; i < nk; i++)
            for (int mode = 0; mode < MODE_COUNT; mode++)
                check_variant_against_scalar(v, x, T, E, ks[i], mode, x);
        free(x);
    }
}
START_TEST(variants_match_scalar_on_adversarial_rows) { for_each_vector_variant(adversarial_rows); }
END_TEST

/* The scalar reference on the same adversarial rows, against double precision. */
START_TEST(scalar_matches_double_on_ties) {
    const size_t E = 20, T = 6;
    float x[6 * 20];
    for (size_t t = 0; t < T; t++)
        for (size_t e = 0; e < E; e++) x[t * E + e] = (float)((e * (t + 3)) % 4);
    for (int mode = 0; mode < MODE_COUNT; mode++)
        for (int k = 1; k <= (int)E; k += 3) check_scalar_against_double(x, T, E, k, mode, NULL);
}
END_TEST

/* ---- hand-worked rows ------------------------------------------------------------------ */

static void gate_one_row(const moert_topk_gate_params *p, const float *row, size_t E, int32_t *ids,
                         float *w) {
    for (size_t v = 0; v < topk_variant_count; v++) {
        if (!variant_runs_here(&topk_variants[v])) continue;
        moert_topk_gate_output out = {ids, w, NULL, NULL};
        ck_assert_int_eq(topk_gate_run(&topk_variants[v], p, row, 1, E, &out), MOERT_OK);
        if (v == 0) continue;
        int32_t ids0[8];
        float w0[8];
        moert_topk_gate_output out0 = {ids0, w0, NULL, NULL};
        ck_assert_int_eq(topk_gate_run(&topk_variants[0], p, row, 1, E, &out0), MOERT_OK);
        ck_assert_int_eq(memcmp(ids, ids0, (size_t)p->k * sizeof(int32_t)), 0);
    }
}

START_TEST(hand_worked_rows) {
    moert_topk_gate_params p = moert_topk_gate_params_default();
    int32_t ids[8];
    float w[8];

    /* Ties go to the lower index: [1, 3, 3, 2, 3], top-3 is experts 1, 2, 4. */
    const float tied[5] = {1, 3, 3, 2, 3};
    p.k = 3;
    gate_one_row(&p, tied, 5, ids, w);
    ck_assert_int_eq(ids[0], 1); ck_assert_int_eq(ids[1], 2); ck_assert_int_eq(ids[2], 4);
    for (int j = 0; j < 3; j++) ck_assert_float_eq_tol(w[j], 1.0f / 3.0f, 1e-7f);

    /* Post: [1, 2, 3] top-2 = experts 2, 1 with softmax(3, 2) = 1/(1+e^-1), e^-1/(1+e^-1)
     * = 0.7310586, 0.2689414. */
    const float abc[3] = {1, 2, 3};
    p.k = 2;
    gate_one_row(&p, abc, 3, ids, w);
    ck_assert_int_eq(ids[0], 2); ck_assert_int_eq(ids[1], 1);
    ck_assert_float_eq_tol(w[0], 0.7310586f, 1e-6f); ck_assert_float_eq_tol(w[1], 0.2689414f, 1e-6f);

    /* Pre: the full softmax of [1, 2, 3] is 0.0900306, 0.2447285, 0.6652410; with
     * renormalisation the pair equals post. */
    p.softmax_order = MOERT_SOFTMAX_PRE;
    gate_one_row(&p, abc, 3, ids, w);
    ck_assert_float_eq_tol(w[0], 0.6652410f, 1e-6f); ck_assert_float_eq_tol(w[1], 0.2447285f, 1e-6f);
    p.renormalize = 1;
    gate_one_row(&p, abc, 3, ids, w);
    ck_assert_float_eq_tol(w[0], 0.7310586f, 1e-6f); ck_assert_float_eq_tol(w[1], 0.2689414f, 1e-6f);

    /* Masked experts: [-inf, 2, -inf, 1], top-3 = 1, 3, then the lowest -inf, 0, weight 0. */
    const float masked[4] = {-INFINITY, 2, -INFINITY, 1};
    p = moert_topk_gate_params_default();
    p.k = 3;
    gate_one_row(&p, masked, 4, ids, w);
    ck_assert_int_eq(ids[0], 1); ck_assert_int_eq(ids[1], 3); ck_assert_int_eq(ids[2], 0);
    ck_assert_float_eq_tol(w[0], 0.7310586f, 1e-6f); ck_assert_float_eq(w[2], 0.0f);

    /* Sigmoid with a selection bias: logits all 0 (sigmoid 0.5), bias [0, .1, 0, .2]:
     * the bias picks experts 3 and 1; the weights stay 0.5, so the entries go 1, 3 (equal
     * weights, lower id first); renormalised to 0.5 each, scaled by 2 to 1.0. */
    const float zeros[4] = {0, 0, 0, 0}, bias[4] = {0, 0.1f, 0, 0.2f};
    p.k = 2, p.score = MOERT_SCORE_SIGMOID, p.bias = bias;
    gate_one_row(&p, zeros, 4, ids, w);
    ck_assert_int_eq(ids[0], 1); ck_assert_int_eq(ids[1], 3);
    ck_assert_float_eq(w[0], 0.5f); ck_assert_float_eq(w[1], 0.5f);
    p.renormalize = 1, p.scaling = 2.0f;
    gate_one_row(&p, zeros, 4, ids, w);
    ck_assert_float_eq_tol(w[0], 1.0f, 1e-7f); ck_assert_float_eq_tol(w[1], 1.0f, 1e-7f);
    /* [2, 1, 0, -1] with bias [0, 0, .5, 0]: keys sigmoid + bias = .881, .731, 1.0, .269
     * choose experts 2 and 0; their weights .5 and .881 put expert 0 first. */
    const float row[4] = {2, 1, 0, -1}, bias2[4] = {0, 0, 0.5f, 0};
    p.bias = bias2, p.renormalize = 0, p.scaling = 1.0f;
    gate_one_row(&p, row, 4, ids, w);
    ck_assert_int_eq(ids[0], 0); ck_assert_int_eq(ids[1], 2);
    ck_assert_float_eq_tol(w[0], 0.8807971f, 1e-6f); ck_assert_float_eq_tol(w[1], 0.5f, 1e-6f);
    p.renormalize = 0, p.scaling = 1.0f;

    /* Sigmoid without a bias: [0, ln 3] -> sigmoid = 0.5, 0.75; top-1 is expert 1. */
    const float two[2] = {0.0f, 1.0986123f};
    p = moert_topk_gate_params_default();
    p.k = 1, p.score = MOERT_SCORE_SIGMOID;
    gate_one_row(&p, two, 2, ids, w);
    ck_assert_int_eq(ids[0], 1); ck_assert_float_eq_tol(w[0], 0.75f, 1e-6f);
}
END_TEST

/* ---- bad data ---------------------------------------------------------------------------- */

static void bad_data_is_reported(const topk_variant *v) {
    const size_t E = 40, T = 300;
    const int threads[] = {1, 2, 4};
    for (size_t ti = 0; ti < 3; ti++) {
        float *x = random_logits(T * E, 3, 1.0f);
        x[250 * E + 7] = NAN;
        x[290 * E + 1] = INFINITY;
        x[123 * E + 39] = INFINITY; /* the first bad element in row order */
        moert_topk_gate_params p = params_for(MODE_POST, 2, NULL);
        p.threads = threads[ti];
        gate_result r = result_alloc(T, E, 2);
        ck_assert_int_eq(run_variant(v, &p, x, &r, 1), MOERT_EBADDATA);
        ck_assert_str_eq(moert_last_error(), "logits[123,39] is +inf");
        x[123 * E + 39] = 0.0f;
        ck_assert_int_eq(run_variant(v, &p, x, &r, 0), MOERT_EBADDATA);
        ck_assert_str_eq(moert_last_error(), "logits[250,7] is NaN");
        for (size_t e = 0; e < E; e++) x[17 * E + e] = -INFINITY;
        ck_assert_int_eq(run_variant(v, &p, x, &r, 0), MOERT_EBADDATA);
        ck_assert_str_eq(moert_last_error(), "logits row 17 is all -inf: no expert can be chosen");
        result_check_canaries(&r);
        result_free(&r);
        free(x);
    }
}
START_TEST(nan_inf_and_all_masked_rows_are_errors) {
    bad_data_is_reported(&topk_variants[0]);
    for_each_vector_variant(bad_data_is_reported);
}
END_TEST

/* ---- bad arguments ------------------------------------------------------------------------ */

START_TEST(bad_arguments_are_errors) {
    float x[16] = {0};
    int32_t ids[16];
    float w[16];
    moert_topk_gate_output out = {ids, w, NULL, NULL};
    moert_topk_gate_params p = moert_topk_gate_params_default();

    ck_assert_int_eq(moert_topk_gate(NULL, x, 1, 8, &out), MOERT_EINVAL);
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, NULL), MOERT_EINVAL);
    ck_assert_int_eq(moert_topk_gate(&p, NULL, 1, 8, &out), MOERT_EINVAL);
    ck_assert_str_eq(moert_last_error(), "top-k gate: logits is NULL");
    moert_topk_gate_output no_ids = {NULL, w, NULL, NULL};
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &no_ids), MOERT_EINVAL);
    moert_topk_gate_output no_w = {ids, NULL, NULL, NULL};
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &no_w), MOERT_EINVAL);

    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 0, &out), MOERT_EINVAL);
    ck_assert_str_eq(moert_last_error(), "experts=0 is outside 1..65536");
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 65537, &out), MOERT_EINVAL);
    p.k = 0;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EINVAL);
    ck_assert_str_eq(moert_last_error(), "k=0 must be at least 1");
    p.k = 9;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EINVAL);
    ck_assert_str_eq(moert_last_error(), "k=9 exceeds num_experts=8");
    p.k = 2;

    /* Sizes whose product overflows are refused before anything is read. */
    ck_assert_int_eq(moert_topk_gate(&p, x, SIZE_MAX / 2, 8, &out), MOERT_EOVERFLOW);
    ck_assert_int_eq(moert_topk_gate(&p, x, SIZE_MAX / 4 + 1, 2, &out), MOERT_EOVERFLOW);

    p.scaling = 0.0f;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EINVAL);
    p.scaling = NAN;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EINVAL);
    p.scaling = 1.0f;
    p.threads = -1;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EINVAL);
    p.threads = 0;
    p.score = (moert_score)7;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EINVAL);
    p.score = MOERT_SCORE_SOFTMAX;
    p.softmax_order = (moert_softmax_order)-1;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EINVAL);
    p.softmax_order = MOERT_SOFTMAX_POST;

    float bias[8] = {0};
    p.bias = bias;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EINVAL); /* softmax + bias */
    p.score = MOERT_SCORE_SIGMOID;
    bias[3] = NAN;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EBADDATA);
    ck_assert_str_eq(moert_last_error(), "bias[3] is nan; it must be finite");
    bias[3] = 0.0f;
    ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_OK);

    p.isa = (moert_isa)42;
    ck_assert_int_ne(moert_topk_gate(&p, x, 1, 8, &out), MOERT_OK);
    p.isa = MOERT_ISA_AVX512;
    if (moert_isa_check(MOERT_ISA_AVX512) != MOERT_OK)
        ck_assert_int_eq(moert_topk_gate(&p, x, 1, 8, &out), MOERT_EUNSUPPORTED);
}
END_TEST

START_TEST(zero_tokens_write_nothing) {
    for (size_t v = 0; v < topk_variant_count; v++) {
        if (!variant_runs_here(&topk_variants[v])) continue;
        gate_result r = result_alloc(0, 8, 2);
        for (int e = 0; e < 8; e++) ((double *)r.prob_sums)[e] = 5.0; /* overwritten by 0 */
        moert_topk_gate_params p = params_for(MODE_POST, 2, NULL);
        ck_assert_int_eq(run_variant(&topk_variants[v], &p, NULL, &r, 1), MOERT_OK);
        for (int e = 0; e < 8; e++) ck_assert(r.prob_sums[e] == 0.0);
        result_check_canaries(&r);
        result_free(&r);
        /* NULL outputs are fine when there is nothing to write. */
        moert_topk_gate_output none = {NULL, NULL, NULL, NULL};
        ck_assert_int_eq(topk_gate_run(&topk_variants[v], &p, NULL, 0, 8, &none), MOERT_OK);
    }
}
END_TEST

/* ---- buffers and threads ----------------------------------------------------------------- */

static void unaligned_buffers(const topk_variant *v) {
    const size_t E = 61, T = 37;
    const int k = 5;
    float *x = random_logits(T * E + 1, 77, 1.0f);
    gate_result a = result_alloc(T, E, k);
    moert_topk_gate_params p = params_for(MODE_PRE, k, NULL);
    ck_assert_int_eq(run_variant(v, &p, x, &a, 1), MOERT_OK);
    /* The same logits one float off alignment, written one element off alignment. */
    float *shifted = malloc((T * E + 2) * sizeof(float));
    memcpy(shifted + 1, x, T * E * sizeof(float));
    int32_t *ids = malloc((T * k + 1) * sizeof(int32_t));
    float *w = malloc((T * k + 1) * sizeof(float));
    moert_topk_gate_output out = {ids + 1, w + 1, NULL, NULL};
    ck_assert_int_eq(topk_gate_run(v, &p, shifted + 1, T, E, &out), MOERT_OK);
    ck_assert_int_eq(memcmp(ids + 1, a.ids, T * k * sizeof(int32_t)), 0);
    ck_assert_int_eq(memcmp(w + 1, a.weights, T * k * sizeof(float)), 0);
    free(shifted), free(ids), free(w), free(x);
    result_free(&a);
}
START_TEST(unaligned_pointers_give_the_same_result) {
    unaligned_buffers(&topk_variants[0]);
    for_each_vector_variant(unaligned_buffers);
}
END_TEST

static void thread_counts(const topk_variant *v) {
    const size_t Es[] = {8, 64, 160};
    for (size_t s = 0; s < 3; s++) {
        const size_t E = Es[s], T = 1000; /* 16 blocks, the last one short */
        float *x = random_logits(T * E, 11 + E, 1.0f);
        for (int mode = 0; mode < MODE_COUNT; mode++) {
            gate_result base = result_alloc(T, E, 4);
            moert_topk_gate_params p = params_for(mode, 4, x);
            ck_assert_int_eq(run_variant(v, &p, x, &base, 1), MOERT_OK);
            const int threads[] = {2, 4};
            for (int i = 0; i < 2; i++) {
                gate_result r = result_alloc(T, E, 4);
                p.threads = threads[i];
                ck_assert_int_eq(run_variant(v, &p, x, &r, 1), MOERT_OK);
                ck_assert_int_eq(memcmp(r.ids, base.ids, T * 4 * sizeof(int32_t)), 0);
                ck_assert_int_eq(memcmp(r.weights, base.weights, T * 4 * sizeof(float)), 0);
                ck_assert_int_eq(memcmp(r.lse, base.lse, T * sizeof(float)), 0);
                ck_assert_msg(memcmp(r.prob_sums, base.prob_sums, E * sizeof(double)) == 0,
                              "%s: prob_sums differ with %d threads", v->name, threads[i]);
                result_free(&r);
            }
            result_free(&base);
        }
        free(x);
    }
}
START_TEST(threads_give_bit_identical_results) {
    thread_counts(&topk_variants[0]);
    for_each_vector_variant(thread_counts);
}
END_TEST

START_TEST(largest_expert_counts) {
    /* E = 65536 with k = 1, 16 and E: the heap path and the widest rows. */
    const size_t E = 65536, T = 3;
    float *x = random_logits(T * E, 99, 1.0f);
    const int ks[] = {1, 16, 300, 65536};
    for (int i = 0; i < 4; i++) {
        for (int mode = 0; mode < MODE_COUNT; mode += 2) {
            if (ks[i] == 65536 && mode == MODE_SIGMOID_BIAS) continue;
            check_scalar_against_double(x, T, E, ks[i], mode, x);
            for (size_t v = 1; v < topk_variant_count; v++)
                if (variant_runs_here(&topk_variants[v]))
                    check_variant_against_scalar(&topk_variants[v], x, T, E, ks[i], mode, x);
        }
    }
    free(x);
}
END_TEST

/* ---- the variant chosen at start-up ---------------------------------------------------- */

/* Runs `probe` in a child process with MOERT_ISA set, since the choice is made once. */
static int isa_in_child(const char *value, moert_status *status, moert_isa *isa) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        setenv("MOERT_ISA", value, 1);
        int answer[2];
        moert_isa got = MOERT_ISA_AUTO;
        answer[0] = (int)moert_isa_active(&got);
        answer[1] = (int)got;
        if (write(fds[1], answer, sizeof answer) != (ssize_t)sizeof answer) _exit(2);
        _exit(0);
    }
    close(fds[1]);
    int answer[2] = {-1, -1};
    ssize_t n = read(fds[0], answer, sizeof answer);
    close(fds[0]);
    waitpid(pid, NULL, 0);
    if (n != (ssize_t)sizeof answer) return -1;
    *status = (moert_status)answer[0];
    *isa = (moert_isa)answer[1];
    return 0;
}

START_TEST(moert_isa_environment_variable) {
    moert_status st;
    moert_isa isa;
    ck_assert_int_eq(isa_in_child("scalar", &st, &isa), 0);
    ck_assert_int_eq(st, MOERT_OK); ck_assert_int_eq(isa, MOERT_ISA_SCALAR);
    ck_assert_int_eq(isa_in_child("sse9", &st, &isa), 0);
    ck_assert_int_eq(st, MOERT_EINVAL);
    ck_assert_int_eq(isa_in_child("AVX2 ", &st, &isa), 0);
    ck_assert_int_eq(st, MOERT_EINVAL);
    ck_assert_int_eq(isa_in_child("avx512", &st, &isa), 0);
    ck_assert_int_eq(st, moert_isa_check(MOERT_ISA_AVX512) == MOERT_OK ? MOERT_OK : MOERT_EUNSUPPORTED);
    ck_assert_int_eq(isa_in_child("avx2", &st, &isa), 0);
    if (moert_isa_check(MOERT_ISA_AVX2) == MOERT_OK) ck_assert_int_eq(isa, MOERT_ISA_AVX2);
}
END_TEST

START_TEST(variant_table_is_complete) {
    /* Every ISA has its variant, named as the ISA, and the table starts with scalar. */
    ck_assert_str_eq(topk_variants[0].name, "scalar");
    const moert_isa all[] = {MOERT_ISA_SCALAR, MOERT_ISA_AVX2, MOERT_ISA_AVX512};
    for (int i = 0; i < 3; i++) {
        const topk_variant *v = topk_variant_for(all[i]);
        ck_assert_ptr_nonnull(v);
        ck_assert_int_eq(v->isa, all[i]);
        ck_assert_str_eq(v->name, moert_isa_name(all[i]));
    }
}
END_TEST

/* topk_sort_entries against an insertion sort, by descending weight, ties to the lower id:
 * 0..100 entries (the rank path up to 32, the heap beyond), weights with ties and signed
 * zeros, from separate inputs (left as they were) and in place. */
START_TEST(sort_entries_matches_insertion_sort) {
    test_rng rng = {17};
    int32_t in_ids[100], ids[100], want_ids[100];
    float in_w[100], w[100], want_w[100];
    for (size_t n = 0; n <= 100; n++)
        for (int rep = 0; rep < 20; rep++) {
            for (size_t i = 0; i < n; i++) {
                in_ids[i] = (int32_t)((i * 37 + (size_t)rep) % 101); /* distinct, not in order */
                const uint64_t r = test_rng_next(&rng) % 8;
                in_w[i] = r == 0 ? 0.5f : r == 1 ? -0.0f : r == 2 ? 0.0f : test_rng_normal(&rng);
                want_ids[i] = in_ids[i], want_w[i] = in_w[i];
            }
            for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0 && (want_w[j] > want_w[j - 1] ||
                                            (want_w[j] == want_w[j - 1] && want_ids[j] < want_ids[j - 1])); j--) {
                    const float tw = want_w[j];
                    const int32_t ti = want_ids[j];
                    want_w[j] = want_w[j - 1], want_ids[j] = want_ids[j - 1], want_w[j - 1] = tw, want_ids[j - 1] = ti;
                }
            int32_t keep_ids[100];
            float keep_w[100];
            memcpy(keep_ids, in_ids, sizeof keep_ids), memcpy(keep_w, in_w, sizeof keep_w);
            topk_sort_entries(in_ids, in_w, n, ids, w);
            for (size_t i = 0; i < n; i++)
                ck_assert_msg(ids[i] == want_ids[i] && (w[i] == want_w[i]), "n %zu: entry %zu: %d, want %d", n, i, ids[i],
                              want_ids[i]);
            ck_assert(memcmp(keep_ids, in_ids, n * sizeof *in_ids) == 0 && memcmp(keep_w, in_w, n * sizeof *in_w) == 0);
            topk_sort_entries(in_ids, in_w, n, in_ids, in_w); /* in place */
            for (size_t i = 0; i < n; i++)
                ck_assert_msg(in_ids[i] == want_ids[i] && in_w[i] == want_w[i], "n %zu in place: entry %zu: %d, want %d",
                              n, i, in_ids[i], want_ids[i]);
        }
}
END_TEST

static Suite *topk_gate_suite(void) {
    Suite *s = suite_create("topk_gate");
    TCase *ref = tcase_create("reference");
    tcase_add_test(ref, scalar_matches_double_precision);
    tcase_add_test(ref, scalar_matches_double_at_extremes);
    tcase_add_test(ref, scalar_matches_double_on_ties);
    tcase_add_test(ref, expf_is_accurate);
    tcase_add_test(ref, exp2_stat_is_accurate);
    tcase_add_test(ref, scalar_group_limited_matches_double);
    tcase_add_test(ref, hand_worked_rows);
    tcase_add_test(ref, sort_entries_matches_insertion_sort);
    tcase_set_timeout(ref, 120);
    suite_add_tcase(s, ref);

    TCase *variants = tcase_create("variants");
    tcase_add_test(variants, variants_match_scalar_on_random_rows);
    tcase_add_test(variants, variants_match_scalar_on_adversarial_rows);
    tcase_add_test(variants, variants_match_scalar_on_group_limited_rows);
    tcase_add_test(variants, variants_match_scalar_softmax_filter_and_compact);
    tcase_add_test(variants, variants_match_scalar_relu_rows);
    tcase_add_test(variants, variants_match_scalar_batch_rows);
    tcase_add_test(variants, unaligned_pointers_give_the_same_result);
    tcase_add_test(variants, threads_give_bit_identical_results);
    tcase_add_test(variants, largest_expert_counts);
    tcase_add_test(variants, variant_table_is_complete);
    tcase_set_timeout(variants, 300);
    suite_add_tcase(s, variants);

    TCase *errors = tcase_create("errors");
    tcase_add_test(errors, nan_inf_and_all_masked_rows_are_errors);
    tcase_add_test(errors, bad_arguments_are_errors);
    tcase_add_test(errors, zero_tokens_write_nothing);
    tcase_add_test(errors, moert_isa_environment_variable);
    suite_add_tcase(s, errors);
    return s;
}

int main(void) {
    SRunner *runner = srunner_create(topk_gate_suite());
    srunner_run_all(runner, CK_NORMAL);
    const int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

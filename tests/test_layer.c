/* The MoE layer against a double-precision reference, bit-identity over threads and
 * workers, NUMA placement by the kernel's own answer, allocation after warm-up, bad input. */
#include <check.h>
#include <dlfcn.h>
#include <numa.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/bf16.h"
#include "moert/moert.h"
#include "tests/test_util.h"
#include "tools/layer_reference.h"

/* ---- allocation counting (as in test_router.c) -------------------------------------------
 * Every allocation of the process is counted while `counting` is set. AddressSanitizer
 * brings its own allocator: not there. */
static int counting;
static long allocations;
#if !defined(__SANITIZE_ADDRESS__)
#define COUNT_ALLOCATIONS 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
void *malloc(size_t n) {
    if (counting) __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED);
    return __libc_malloc(n);
}
void *calloc(size_t n, size_t size) {
    if (counting) __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED);
    return __libc_calloc(n, size);
}
void *realloc(void *p, size_t n) {
    if (counting) __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED);
    return __libc_realloc(p, n);
}
#endif

/* ---- a layer with seeded weights, and its reference ------------------------------------- */

typedef struct fixture {
    moert_layer_config config;
    size_t T;
    float *x, *gate, **w1, **w3, **w2;
    uint16_t *x_bf16;
} fixture;

static float *normal_array(test_rng *rng, size_t n, float scale) {
    float *p = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = test_rng_normal(rng) * scale;
    return p;
}

static void fixture_init(fixture *fx, moert_layer_config config, size_t T, uint64_t seed) {
    memset(fx, 0, sizeof *fx);
    fx->config = config;
    fx->T = T;
    test_rng rng = {seed};
    const size_t d = config.d_model, f = config.d_ff, E = config.experts;
    fx->x = normal_array(&rng, T * d, 1.0f);
    fx->gate = normal_array(&rng, d * E, 1.0f / sqrtf((float)d));
    fx->w1 = calloc(E, sizeof(float *)), fx->w3 = calloc(E, sizeof(float *)), fx->w2 = calloc(E, sizeof(float *));
    for (size_t e = 0; config.expert_kind == MOERT_EXPERT_SWIGLU && e < E; e++) {
        fx->w1[e] = normal_array(&rng, d * f, 1.0f / sqrtf((float)d));
        fx->w3[e] = normal_array(&rng, d * f, 1.0f / sqrtf((float)d));
        fx->w2[e] = normal_array(&rng, f * d, 1.0f / sqrtf((float)f));
    }
    fx->x_bf16 = malloc(T * d * sizeof(uint16_t));
    for (size_t i = 0; i < T * d; i++) fx->x_bf16[i] = moert_f32_to_bf16(fx->x[i]);
}

static void fixture_free(fixture *fx) {
    for (size_t e = 0; e < fx->config.experts; e++) free(fx->w1[e]), free(fx->w3[e]), free(fx->w2[e]);
    free(fx->w1), free(fx->w3), free(fx->w2), free(fx->x), free(fx->gate), free(fx->x_bf16);
}

static moert_layer *fixture_layer(const fixture *fx, int threads, int workers) {
    moert_layer_config c = fx->config;
    c.threads = threads, c.workers = workers;
    moert_layer *L = NULL;
    ck_assert_msg(moert_layer_create(&c, &L) == MOERT_OK, "create: %s", moert_last_error());
    ck_assert_int_eq(moert_layer_set_gate(L, fx->gate), MOERT_OK);
    for (size_t e = 0; c.expert_kind == MOERT_EXPERT_SWIGLU && e < c.experts; e++)
        ck_assert_int_eq(moert_layer_set_expert(L, e, fx->w1[e], fx->w3[e], fx->w2[e]), MOERT_OK);
    return L;
}

/* Runs the layer, returns its output as float32 (malloc'd). */
static float *fixture_run(const fixture *fx, moert_layer *L) {
    const size_t n = fx->T * fx->config.d_model;
    float *out = malloc(n * sizeof(float));
    if (fx->config.dtype == MOERT_DTYPE_F32) {
        ck_assert_msg(moert_layer_forward(L, fx->x, fx->T, out) == MOERT_OK, "forward: %s", moert_last_error());
    } else {
        uint16_t *ob = malloc(n * sizeof(uint16_t));
        ck_assert_msg(moert_layer_forward(L, fx->x_bf16, fx->T, ob) == MOERT_OK, "forward: %s", moert_last_error());
        for (size_t i = 0; i < n; i++) out[i] = moert_bf16_to_f32(ob[i]);
        free(ob);
    }
    return out;
}

static double fixture_error(const fixture *fx, moert_layer *L, const float *out) {
    const layer_reference ref = {fx->config.d_model, fx->config.d_ff, fx->config.experts, fx->config.expert_kind,
                                 fx->config.synthetic_cost, (const float *const *)fx->w1,
                                 (const float *const *)fx->w3, (const float *const *)fx->w2};
    double *want = malloc(fx->T * fx->config.d_model * sizeof(double));
    layer_reference_forward(&ref, moert_layer_plan(L), fx->x, want);
    const double err = layer_reference_error(out, want, fx->T, fx->config.d_model);
    free(want);
    return err;
}

static moert_layer_config small_config(void) {
    moert_layer_config c = moert_layer_config_default();
    c.d_model = 24, c.d_ff = 40, c.experts = 6;
    c.router.k = 2;
    c.chunk_rows = 7; /* several chunks per expert */
    return c;
}

/* ---- against the reference ------------------------------------------------------------- */

static void check_against_reference(moert_layer_config c, size_t T, double tolerance, const char *what) {
    fixture fx;
    fixture_init(&fx, c, T, 42);
    moert_layer *L = fixture_layer(&fx, 2, 1);
    float *out = fixture_run(&fx, L);
    const double err = fixture_error(&fx, L, out);
    ck_assert_msg(err <= tolerance, "%s: max relative error %g > %g", what, err, tolerance);
    /* A token with no kept expert gets zeros. */
    moert_plan_view v;
    moert_plan_get_view(moert_layer_plan(L), &v);
    for (size_t t = 0; t < T; t++)
        if (v.token_offsets[t] == v.token_offsets[t + 1])
            for (size_t j = 0; j < c.d_model; j++) ck_assert_msg(out[t * c.d_model + j] == 0.0f, "%s: unrouted token", what);
    free(out);
    moert_layer_destroy(L);
    fixture_free(&fx);
}

START_TEST(test_reference_token_choice) {
    moert_layer_config c = small_config();
    check_against_reference(c, 50, 1e-4, "token choice");
    c.router.capacity_factor = 1.0; /* drops */
    check_against_reference(c, 50, 1e-4, "token choice, capacity 1");
    c.router.capacity_factor = 0.25; /* most entries dropped, some tokens unrouted */
    check_against_reference(c, 50, 1e-4, "token choice, capacity 0.25");
    c.router.capacity_factor = 1.0;
    c.router.pad_to_capacity = 1;
    check_against_reference(c, 50, 1e-4, "token choice, padded");
    c = small_config();
    c.router.k = 3, c.router.score = MOERT_SCORE_SIGMOID, c.router.renormalize = 1;
    check_against_reference(c, 33, 1e-4, "sigmoid top-3");
}
END_TEST

START_TEST(test_reference_expert_choice_relu) {
    moert_layer_config c = small_config();
    c.router.policy = MOERT_POLICY_EXPERT_CHOICE;
    c.router.k = 0;
    c.router.capacity_factor = 2.0;
    check_against_reference(c, 40, 1e-4, "expert choice");
    c = small_config();
    c.router.policy = MOERT_POLICY_RELU;
    c.router.k = 0;
    check_against_reference(c, 40, 1e-4, "relu");
}
END_TEST

START_TEST(test_reference_bf16_and_synthetic) {
    moert_layer_config c = small_config();
    c.dtype = MOERT_DTYPE_BF16;
    check_against_reference(c, 50, 2e-2, "bf16"); /* native bf16 GEMM where the CPU has it */
    c.convert_bf16 = 1;
    check_against_reference(c, 50, 2e-2, "bf16 converted to f32");
    c = small_config();
    c.expert_kind = MOERT_EXPERT_SYNTHETIC;
    c.synthetic_cost = 10;
    check_against_reference(c, 50, 1e-5, "synthetic");
    c.dtype = MOERT_DTYPE_BF16;
    check_against_reference(c, 50, 2e-2, "synthetic bf16");
}
END_TEST

/* ---- bit-identical for any thread and worker count --------------------------------------- */

static void check_identical(moert_layer_config c, size_t T, const char *what) {
    fixture fx;
    fixture_init(&fx, c, T, 7);
    moert_layer *L0 = fixture_layer(&fx, 1, 1);
    float *want = fixture_run(&fx, L0);
    const int threads[] = {1, 2, 4}, workers[] = {1, 2, 3};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            if (workers[j] > threads[i]) continue;
            moert_layer *L = fixture_layer(&fx, threads[i], workers[j]);
            ck_assert_int_eq(moert_layer_workers(L), workers[j]);
            for (int rep = 0; rep < 2; rep++) { /* the warm pass too */
                float *got = fixture_run(&fx, L);
                ck_assert_msg(memcmp(got, want, T * c.d_model * sizeof(float)) == 0,
                              "%s: output differs with %d threads, %d workers", what, threads[i], workers[j]);
                free(got);
            }
            moert_layer_destroy(L);
        }
    free(want);
    moert_layer_destroy(L0);
    fixture_free(&fx);
}

START_TEST(test_identical_threads_workers) {
    moert_layer_config c = small_config();
    c.d_model = 64, c.d_ff = 48, c.experts = 8;
    c.chunk_rows = 16;
    check_identical(c, 300, "token choice");
    c.ignore_numa = 1; /* as without libnuma: plain memory, no binding */
    check_identical(c, 300, "token choice without NUMA");
    c.ignore_numa = 0;
    c.dtype = MOERT_DTYPE_BF16;
    check_identical(c, 200, "bf16");
    c.convert_bf16 = 1;
    check_identical(c, 200, "bf16 converted");
    c.convert_bf16 = 0;
    c.dtype = MOERT_DTYPE_F32;
    c.router.policy = MOERT_POLICY_EXPERT_CHOICE, c.router.k = 0, c.router.capacity_factor = 1.5;
    check_identical(c, 200, "expert choice");
}
END_TEST

/* ---- placement, placement changes, balance --------------------------------------------- */

static int node_of(const void *p) {
    int node = -1;
    if (get_mempolicy(&node, NULL, 0, (void *)p, MPOL_F_NODE | MPOL_F_ADDR) != 0) return -2;
    return node;
}

/* Every page of [p, p + bytes) on `node`, by move_pages' status query. */
static void check_pages_on(const void *p, size_t bytes, int node, const char *what) {
    const long page = sysconf(_SC_PAGESIZE);
    const size_t pages = (bytes + (size_t)page - 1) / (size_t)page;
    void **addrs = malloc(pages * sizeof(void *));
    int *status = malloc(pages * sizeof(int));
    for (size_t i = 0; i < pages; i++) addrs[i] = (char *)p + i * (size_t)page;
    ck_assert_int_eq(move_pages(0, pages, addrs, NULL, status, 0), 0);
    for (size_t i = 0; i < pages; i++) ck_assert_msg(status[i] == node, "%s: page %zu on node %d, not %d", what, i, status[i], node);
    free(addrs), free(status);
}

START_TEST(test_numa_placement) {
    {
        /* Without NUMA every worker reports node -1, and the layer still works. */
        moert_layer_config c = small_config();
        c.ignore_numa = 1;
        fixture fx;
        fixture_init(&fx, c, 20, 3);
        moert_layer *L = fixture_layer(&fx, 2, 2);
        for (int w = 0; w < 2; w++) ck_assert_int_eq(moert_layer_worker_node(L, w), -1);
        float *out = fixture_run(&fx, L);
        ck_assert_msg(fixture_error(&fx, L, out) <= 1e-4, "without NUMA: wrong output");
        free(out);
        moert_layer_destroy(L);
        fixture_free(&fx);
    }
    if (numa_available() < 0) return; /* nothing more to check: plain memory */
    moert_layer_config c = small_config();
    fixture fx;
    fixture_init(&fx, c, 64, 3);
    moert_layer *L = fixture_layer(&fx, 3, 3);
    float *out = fixture_run(&fx, L);
    for (size_t e = 0; e < c.experts; e++) {
        const int w = moert_layer_expert_worker(L, e);
        ck_assert_int_eq(w, (int)(e % 3)); /* round-robin */
        const int node = moert_layer_worker_node(L, w);
        ck_assert_int_ge(node, 0);
        moert_layer_expert_memory m;
        ck_assert_int_eq(moert_layer_get_expert_memory(L, e, &m), MOERT_OK);
        ck_assert_int_eq(node_of(m.weights), node);
        check_pages_on(m.weights, m.weight_bytes, node, "weights");
        check_pages_on(m.rows, m.row_bytes, node, "dispatch rows");
        check_pages_on(m.outputs, m.output_bytes, node, "outputs");
    }
    /* Balanced by load: the heaviest experts spread; the output does not change. */
    moert_plan_stats s;
    moert_plan_get_stats(moert_layer_plan(L), &s);
    ck_assert_int_eq(moert_layer_balance(L, s.expert_counts), MOERT_OK);
    int64_t load[3] = {0, 0, 0};
    for (size_t e = 0; e < c.experts; e++) load[moert_layer_expert_worker(L, e)] += s.expert_counts[e];
    /* Greedy packing's guarantee: no worker exceeds the mean by more than the largest load. */
    int64_t total = 0, largest = 0, most = 0;
    for (size_t e = 0; e < c.experts; e++) total += s.expert_counts[e], largest = s.expert_counts[e] > largest ? s.expert_counts[e] : largest;
    for (int w = 0; w < 3; w++) most = load[w] > most ? load[w] : most;
    ck_assert_int_le(most * 3, total + 3 * largest);
    float *again = fixture_run(&fx, L);
    ck_assert_msg(memcmp(out, again, fx.T * c.d_model * sizeof(float)) == 0, "output changed with the placement");
    for (size_t e = 0; e < c.experts; e++) {
        moert_layer_expert_memory m;
        moert_layer_get_expert_memory(L, e, &m);
        check_pages_on(m.weights, m.weight_bytes, moert_layer_worker_node(L, moert_layer_expert_worker(L, e)), "moved weights");
    }
    free(out), free(again);
    moert_layer_destroy(L);
    fixture_free(&fx);
}
END_TEST

/* ---- no allocation after warm-up --------------------------------------------------------- */

START_TEST(test_no_allocation_after_warmup) {
#ifndef COUNT_ALLOCATIONS
    return; /* AddressSanitizer owns malloc */
#endif
    const moert_policy policies[] = {MOERT_POLICY_TOKEN_CHOICE, MOERT_POLICY_EXPERT_CHOICE, MOERT_POLICY_RELU,
                                     MOERT_POLICY_TOKEN_CHOICE, MOERT_POLICY_TOKEN_CHOICE};
    for (int p = 0; p < 5; p++) {
        moert_layer_config c = small_config();
        c.router.policy = policies[p];
        if (p == 1 || p == 2) c.router.k = 0;
        if (p == 1) c.router.capacity_factor = 2.0;
        if (p >= 3) c.dtype = MOERT_DTYPE_BF16, c.convert_bf16 = p == 4; /* both bf16 paths */
        fixture fx;
        fixture_init(&fx, c, 80, 11);
        moert_layer *L = fixture_layer(&fx, 2, 2);
        float *out = fixture_run(&fx, L); /* warm-up */
        /* Bounded policies see new data after the warm-up: their buffers were sized for the
         * worst case. ReLU's entries depend on the data, so it sees the warm-up's again. */
        fixture other;
        fixture_init(&other, c, 80, 12);
        const fixture *data = policies[p] == MOERT_POLICY_RELU ? &fx : &other;
        const void *x = c.dtype == MOERT_DTYPE_BF16 ? (const void *)data->x_bf16 : (const void *)data->x;
        /* The layer's own buffers (mmap'd, which the counting does not see) stay put. */
        moert_layer_expert_memory before[6], after;
        for (size_t e = 0; e < c.experts; e++) moert_layer_get_expert_memory(L, e, &before[e]);
        /* The native bf16 GEMM is oneDNN's matmul primitive, whose execute builds a small
         * argument map (4 allocations per call, measured): allowed there and nowhere else. */
        const int native = c.dtype == MOERT_DTYPE_BF16 && !c.convert_bf16 && moert_gemm_bf16_native();
        long gemm_calls = 0;
        counting = 1, allocations = 0;
        for (int i = 0; i < 4; i++) {
            const size_t T = i < 3 ? fx.T : fx.T / 2; /* then fewer tokens */
            ck_assert_int_eq(moert_layer_forward(L, x, T, out), MOERT_OK);
            moert_plan_stats s;
            moert_plan_get_stats(moert_layer_plan(L), &s);
            for (size_t e = 0; e < c.experts; e++)
                gemm_calls += 2 * (long)((s.expert_counts[e] + (int64_t)c.chunk_rows - 1) / (int64_t)c.chunk_rows);
        }
        counting = 0;
        for (size_t e = 0; e < c.experts; e++) {
            moert_layer_get_expert_memory(L, e, &after);
            ck_assert_msg(after.rows == before[e].rows && after.outputs == before[e].outputs &&
                              after.row_bytes == before[e].row_bytes,
                          "policy %d: expert %zu's buffers were reallocated", p, e);
        }
        fixture_free(&other);
        if (native)
            ck_assert_msg(allocations <= 4 * gemm_calls,
                          "native bf16: %ld allocations after warm-up for %ld GEMM calls", allocations, gemm_calls);
        else
            ck_assert_msg(allocations == 0, "policy %d: %ld allocations after warm-up", p, allocations);
        free(out);
        moert_layer_destroy(L);
        fixture_free(&fx);
    }
}
END_TEST

/* ---- the public dispatch and combine ------------------------------------------------------ */

/* Routes random logits, dispatches x, lets expert e output (e + 1) x its row, combines;
 * checks every slot's row and each token's output against a direct sum. */
static void check_dispatch_combine(moert_router_config rc, moert_dtype dtype, const char *what) {
    const size_t T = 77, E = 8, d = 33;
    test_rng rng = {99};
    float *logits = normal_array(&rng, T * E, 1.0f), *x = normal_array(&rng, T * d, 1.0f);
    uint16_t *xb = malloc(T * d * sizeof(uint16_t));
    for (size_t i = 0; i < T * d; i++) x[i] = moert_bf16_to_f32(xb[i] = moert_f32_to_bf16(x[i]));
    const void *xin = dtype == MOERT_DTYPE_F32 ? (const void *)x : (const void *)xb;
    const size_t elem = dtype == MOERT_DTYPE_F32 ? 4 : 2;
    rc.threads = 2;
    moert_router *r;
    moert_plan *plan;
    ck_assert_int_eq(moert_router_create(&rc, E, &r), MOERT_OK);
    ck_assert_int_eq(moert_plan_create(&plan), MOERT_OK);
    ck_assert_msg(moert_router_route(r, logits, T, plan) == MOERT_OK, "%s", moert_last_error());
    moert_plan_view v;
    moert_plan_get_view(plan, &v);
    char *rows = malloc(v.slots * d * elem + 1);
    float *eout = malloc(v.slots * d * sizeof(float) + 4), *want = calloc(T * d, sizeof(float));
    char *out[3];
    for (int ti = 0; ti < 3; ti++) {
        const int threads = 1 << ti;
        ck_assert_int_eq(moert_dispatch(plan, xin, d, dtype, rows, threads), MOERT_OK);
        for (size_t e = 0; e < E; e++)
            for (int64_t s = v.expert_offsets[e]; s < v.expert_offsets[e + 1]; s++)
                for (size_t j = 0; j < d; j++) {
                    const float got = dtype == MOERT_DTYPE_F32 ? ((float *)rows)[s * d + j]
                                                               : moert_bf16_to_f32(((uint16_t *)rows)[s * d + j]);
                    const float expect = v.slot_tokens[s] < 0 ? 0.0f : x[(size_t)v.slot_tokens[s] * d + j];
                    ck_assert_msg(got == expect, "%s: slot %lld", what, (long long)s);
                    eout[s * d + j] = got * (float)(e + 1);
                }
        out[ti] = malloc(T * d * elem);
        ck_assert_int_eq(moert_combine(plan, eout, d, dtype, out[ti], threads), MOERT_OK);
        if (ti > 0) ck_assert_msg(memcmp(out[ti], out[0], T * d * elem) == 0, "%s: %d threads differ", what, threads);
    }
    for (size_t t = 0; t < T; t++)
        for (int64_t i = v.token_offsets[t]; i < v.token_offsets[t + 1]; i++)
            for (size_t j = 0; j < d; j++)
                want[t * d + j] += v.weights[i] * (float)(v.expert_ids[i] + 1) * x[t * d + j];
    for (size_t i = 0; i < T * d; i++) {
        const float got = dtype == MOERT_DTYPE_F32 ? ((float *)out[0])[i] : moert_bf16_to_f32(((uint16_t *)out[0])[i]);
        ck_assert_msg(fabsf(got - want[i]) <= (dtype == MOERT_DTYPE_F32 ? 1e-5f : 1e-2f) * (1.0f + fabsf(want[i])),
                      "%s: out[%zu] %g, want %g", what, i, got, want[i]);
    }
    ck_assert_int_eq(moert_dispatch(plan, NULL, d, dtype, rows, 1), MOERT_EINVAL);
    ck_assert_int_eq(moert_combine(plan, eout, 0, dtype, out[0], 1), MOERT_EINVAL);
    for (int ti = 0; ti < 3; ti++) free(out[ti]);
    free(rows), free(eout), free(want), free(logits), free(x), free(xb);
    moert_plan_destroy(plan);
    moert_router_destroy(r);
}

START_TEST(test_public_dispatch_combine) {
    moert_router_config rc = moert_router_config_default();
    rc.k = 3;
    check_dispatch_combine(rc, MOERT_DTYPE_F32, "top-3");
    rc.capacity_factor = 0.8, rc.pad_to_capacity = 1; /* drops and padding slots */
    check_dispatch_combine(rc, MOERT_DTYPE_F32, "top-3 padded");
    check_dispatch_combine(rc, MOERT_DTYPE_BF16, "top-3 padded bf16");
    rc = moert_router_config_default();
    rc.policy = MOERT_POLICY_EXPERT_CHOICE, rc.capacity_factor = 1.0;
    check_dispatch_combine(rc, MOERT_DTYPE_F32, "expert choice");
}
END_TEST

/* ---- bad input --------------------------------------------------------------------------- */

static void expect_create_error(moert_layer_config c, moert_status want, const char *word) {
    moert_layer *L = (moert_layer *)1;
    ck_assert_int_eq(moert_layer_create(&c, &L), want);
    ck_assert_ptr_null(L);
    ck_assert_msg(strstr(moert_last_error(), word) != NULL, "'%s' does not name '%s'", moert_last_error(), word);
}

START_TEST(test_bad_input) {
    moert_layer_config c = small_config();
    c.d_model = 0;
    expect_create_error(c, MOERT_EINVAL, "d_model");
    c = small_config(), c.d_ff = 0;
    expect_create_error(c, MOERT_EINVAL, "d_ff");
    c = small_config(), c.experts = 0;
    expect_create_error(c, MOERT_EINVAL, "experts");
    c = small_config(), c.workers = 3, c.threads = 2;
    expect_create_error(c, MOERT_EINVAL, "workers=3 exceeds threads=2");
    c = small_config(), c.router.k = 7;
    expect_create_error(c, MOERT_EINVAL, "k");
    c = small_config(), c.d_model = (size_t)1 << 40, c.d_ff = (size_t)1 << 40;
    expect_create_error(c, MOERT_EOVERFLOW, "overflow");
    c = small_config(), c.d_model = (size_t)1 << 20, c.d_ff = (size_t)1 << 18; /* 3 TiB per expert */
    expect_create_error(c, MOERT_ENOMEM, "bytes");

    fixture fx;
    fixture_init(&fx, small_config(), 16, 5);
    moert_layer *L = fixture_layer(&fx, 2, 1);
    float *out = malloc(16 * 24 * sizeof(float));
    ck_assert_int_eq(moert_layer_forward(L, NULL, 16, out), MOERT_EINVAL);
    ck_assert_int_eq(moert_layer_forward(L, fx.x, 0, out), MOERT_EINVAL);
    fx.x[5 * 24 + 3] = NAN; /* a NaN hidden state makes NaN logits: the router names them */
    ck_assert_int_eq(moert_layer_forward(L, fx.x, 16, out), MOERT_EBADDATA);
    ck_assert_msg(strstr(moert_last_error(), "logits[5,") != NULL, "%s", moert_last_error());
    const int32_t bad_map[6] = {0, 0, 0, 0, 0, 1};
    ck_assert_int_eq(moert_layer_set_placement(L, bad_map), MOERT_EINVAL);
    const int64_t bad_loads[6] = {1, 2, 3, -1, 0, 0};
    ck_assert_int_eq(moert_layer_balance(L, bad_loads), MOERT_EINVAL);
    ck_assert_int_eq(moert_layer_set_expert(L, 6, fx.w1[0], fx.w3[0], fx.w2[0]), MOERT_EINVAL);
    free(out);
    moert_layer_destroy(L);
    fixture_free(&fx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("layer");
    TCase *tc = tcase_create("layer");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_reference_token_choice);
    tcase_add_test(tc, test_reference_expert_choice_relu);
    tcase_add_test(tc, test_reference_bf16_and_synthetic);
    tcase_add_test(tc, test_identical_threads_workers);
    tcase_add_test(tc, test_numa_placement);
    tcase_add_test(tc, test_no_allocation_after_warmup);
    tcase_add_test(tc, test_public_dispatch_combine);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* Routing policies and the plan: hand-worked 4 x 4 examples for every option, each
 * policy against a small readable reference, capacity edge cases, plan invariants,
 * statistics, thread counts, routing groups, balancers and bad configurations. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/expf.h"
#include "moert/moert.h"
#include "tests/reference_gate.h"
#include "tests/test_util.h"

/* Every allocation of the process is counted (the library is linked statically into this
 * test, and these definitions take the place of libc's), to check that routing into a plan
 * that has grown allocates nothing. AddressSanitizer brings its own allocator: not there. */
#if !defined(__SANITIZE_ADDRESS__)
#define COUNT_ALLOCATIONS 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static long allocations;
void *malloc(size_t n) {
    __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED);
    return __libc_malloc(n);
}
void *calloc(size_t n, size_t size) {
    __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED);
    return __libc_calloc(n, size);
}
void *realloc(void *p, size_t n) {
    __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED);
    return __libc_realloc(p, n);
}
#endif

/* The 4-token, 4-expert batch of the hand-worked examples. Its softmax rows, worked out:
 *   t0 [ 2, 1,   0, -1]: 0.6439143 0.2368828 0.0871443 0.0320586  lse 2.4401897
 *   t1 [ 0, 3,   1,  0]: 0.0403164 0.8097760 0.1095913 0.0403164  lse 3.2109976
 *   t2 [ 1, 1,   2,  0]: 0.1966119 0.1966119 0.5344466 0.0723295  lse 2.6265234
 *   t3 [-1, 3.5, 0,  4]: 0.0041297 0.3717434 0.0112257 0.6129012  lse 4.4895515 */
static const float hand[16] = {2, 1, 0, -1, 0, 3, 1, 0, 1, 1, 2, 0, -1, 3.5f, 0, 4};

typedef struct routed {
    moert_plan *plan;
    moert_plan_view v;
    moert_plan_stats s;
} routed;

static moert_status route(const moert_router_config *c, const float *logits, size_t T, size_t E, routed *out) {
    moert_router *r = NULL;
    moert_status st = moert_router_create(c, E, &r);
    if (st != MOERT_OK) return st;
    if (out->plan == NULL) ck_assert_int_eq(moert_plan_create(&out->plan), MOERT_OK);
    st = moert_router_route(r, logits, T, out->plan);
    moert_router_destroy(r);
    if (st == MOERT_OK) {
        moert_plan_get_view(out->plan, &out->v);
        moert_plan_get_stats(out->plan, &out->s);
    }
    return st;
}

static void routed_free(routed *r) {
    moert_plan_destroy(r->plan);
    r->plan = NULL;
}

/* Token t's entries are exactly these ids and weights (within 1e-6). */
static void expect_token(const routed *r, size_t t, int n, const int32_t *ids, const double *w) {
    const int64_t a = r->v.token_offsets[t], b = r->v.token_offsets[t + 1];
    ck_assert_msg(b - a == n, "token %zu has %lld entries, expected %d", t, (long long)(b - a), n);
    for (int j = 0; j < n; j++) {
        ck_assert_msg(r->v.expert_ids[a + j] == ids[j], "token %zu entry %d: expert %d, expected %d", t, j,
                      r->v.expert_ids[a + j], ids[j]);
        ck_assert_msg(fabs(r->v.weights[a + j] - w[j]) < 1e-6, "token %zu entry %d: weight %.7f, expected %.7f",
                      t, j, r->v.weights[a + j], w[j]);
    }
}

/* The two orders hold the same entries; experts' slots follow the tokens; counts agree. */
static void check_plan_invariants(const routed *r) {
    const moert_plan_view *v = &r->v;
    ck_assert_int_eq(v->token_offsets[0], 0);
    ck_assert_int_eq((size_t)v->token_offsets[v->tokens], v->entries);
    ck_assert_int_eq(v->expert_offsets[0], 0);
    ck_assert_int_eq((size_t)v->expert_offsets[v->experts], v->slots);
    size_t seen = 0;
    for (size_t e = 0; e < v->experts; e++) {
        int32_t last = -1;
        int64_t kept = 0;
        for (int64_t s = v->expert_offsets[e]; s < v->expert_offsets[e + 1]; s++) {
            if (v->slot_tokens[s] < 0) {
                ck_assert_int_eq(v->slot_entries[s], -1);
                continue;
            }
            const int64_t i = v->slot_entries[s];
            ck_assert(i >= v->token_offsets[v->slot_tokens[s]] && i < v->token_offsets[v->slot_tokens[s] + 1]);
            ck_assert_int_eq(v->expert_ids[i], (int32_t)e);
            ck_assert(v->slot_tokens[s] > last); /* ascending tokens, one slot each */
            last = v->slot_tokens[s];
            kept++;
            seen++;
        }
        ck_assert_int_eq(r->s.expert_counts[e], kept);
    }
    ck_assert_int_eq(seen, v->entries);
    for (size_t t = 0; t < v->tokens; t++)
        for (int64_t i = v->token_offsets[t] + 1; i < v->token_offsets[t + 1]; i++)
            ck_assert(v->weights[i] < v->weights[i - 1] ||
                      (v->weights[i] == v->weights[i - 1] && v->expert_ids[i] > v->expert_ids[i - 1]));
}

/* ---- hand-worked examples ---------------------------------------------------------------- */

START_TEST(hand_token_choice_post) {
    /* Top 2, softmax post. t2 ties experts 0 and 1 at logit 1: the lower id wins.
     * softmax(2, 1) = 0.7310586, 0.2689414; softmax(3, 1) = 0.8807971, 0.1192029;
     * softmax(4, 3.5) = 0.6224593, 0.3775407. Loads [2, 3, 2, 1], mean 2: max/mean 1.5,
     * cv sqrt((0 + 1 + 0 + 1) / 4) / 2 = 0.3535534, entropy of (.25, .375, .25, .125) over
     * ln 4 = 0.9528195. Mean softmax per expert P = 0.2212431 0.4037535 0.1856020 0.1894014,
     * shares f = .25 .375 .25 .125: aux = 4 sum f P = 1.1071761. z-loss = mean lse^2 =
     * 10.8299322. */
    moert_router_config c = moert_router_config_default();
    routed r = {0};
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    check_plan_invariants(&r);
    expect_token(&r, 0, 2, (int32_t[]){0, 1}, (double[]){0.7310586, 0.2689414});
    expect_token(&r, 1, 2, (int32_t[]){1, 2}, (double[]){0.8807971, 0.1192029});
    expect_token(&r, 2, 2, (int32_t[]){2, 0}, (double[]){0.7310586, 0.2689414});
    expect_token(&r, 3, 2, (int32_t[]){3, 1}, (double[]){0.6224593, 0.3775407});
    const int64_t loads[4] = {2, 3, 2, 1};
    for (int e = 0; e < 4; e++) ck_assert_int_eq(r.s.expert_counts[e], loads[e]);
    ck_assert_int_eq(r.s.assignments, 8); ck_assert_int_eq(r.s.dropped, 0); ck_assert_int_eq(r.s.unrouted, 0);
    ck_assert_double_eq_tol(r.s.max_over_mean, 1.5, 1e-12);
    ck_assert_double_eq_tol(r.s.cv, 0.3535534, 1e-7);
    ck_assert_double_eq_tol(r.s.entropy, 0.9528195, 1e-7);
    ck_assert_double_eq_tol(r.s.aux_loss, 1.1071761, 1e-5);
    ck_assert_double_eq_tol(r.s.z_loss, 10.8299322, 1e-4);
    ck_assert_double_eq_tol(r.s.experts_per_token_mean, 2.0, 1e-12);
    ck_assert_double_eq_tol(r.s.sparsity, 0.5, 1e-12);
    ck_assert_int_eq(r.s.experts_per_token[2], 4);
    /* Expert-major: expert 1 holds tokens 0, 1, 3 in token order. */
    ck_assert_int_eq(r.v.expert_offsets[1], 2); ck_assert_int_eq(r.v.expert_offsets[2], 5);
    ck_assert_int_eq(r.v.slot_tokens[2], 0); ck_assert_int_eq(r.v.slot_tokens[3], 1);
    ck_assert_int_eq(r.v.slot_tokens[4], 3);
    routed_free(&r);
}
END_TEST

START_TEST(hand_token_choice_pre_and_sigmoid) {
    moert_router_config c = moert_router_config_default();
    routed r = {0};
    /* Softmax pre: the full-softmax probabilities of the top 2; renormalised they equal post. */
    c.softmax_order = MOERT_SOFTMAX_PRE;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    expect_token(&r, 0, 2, (int32_t[]){0, 1}, (double[]){0.6439143, 0.2368828});
    expect_token(&r, 3, 2, (int32_t[]){3, 1}, (double[]){0.6129012, 0.3717434});
    c.renormalize = 1;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    expect_token(&r, 0, 2, (int32_t[]){0, 1}, (double[]){0.7310586, 0.2689414});
    /* Sigmoid with bias [0, 0, .5, 0]: t0's keys sigmoid + bias = .8808 .7311 1.0 .2689 pick
     * experts 2 and 0; the weights are the sigmoids .5 and .8807971, expert 0 first; with
     * renormalisation .8807971 / 1.3807971 = 0.6378904 and 0.3621096, then x 2.5. */
    const float bias[4] = {0, 0, 0.5f, 0};
    c = moert_router_config_default();
    c.score = MOERT_SCORE_SIGMOID, c.bias = bias;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    expect_token(&r, 0, 2, (int32_t[]){0, 2}, (double[]){0.8807971, 0.5});
    c.renormalize = 1, c.scaling = 2.5f;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    expect_token(&r, 0, 2, (int32_t[]){0, 2}, (double[]){2.5 * 0.6378904, 2.5 * 0.3621096});
    check_plan_invariants(&r);
    routed_free(&r);
}
END_TEST

START_TEST(hand_group_limited) {
    /* Groups {0, 1} and {2, 3}, keep 1. Top-(2/1) sum: t3's groups score -1 + 3.5 = 2.5 and
     * 0 + 4 = 4, so group 1 is kept and t3 takes experts 3 and 2: softmax(4, 0) = 0.9820138,
     * 0.0179862 (plain top-2 would take expert 1). t1: 0 + 3 = 3 against 1 + 0 = 1, group 0:
     * softmax(3, 0) = 0.9525741, 0.0474259. With the group max the same groups win. */
    moert_router_config c = moert_router_config_default();
    c.groups = 2, c.topk_groups = 1;
    routed r = {0};
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    expect_token(&r, 3, 2, (int32_t[]){3, 2}, (double[]){0.9820138, 0.0179862});
    expect_token(&r, 1, 2, (int32_t[]){1, 0}, (double[]){0.9525741, 0.0474259});
    expect_token(&r, 0, 2, (int32_t[]){0, 1}, (double[]){0.7310586, 0.2689414});
    c.group_score = MOERT_GROUP_SCORE_MAX;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    expect_token(&r, 3, 2, (int32_t[]){3, 2}, (double[]){0.9820138, 0.0179862});
    check_plan_invariants(&r);

    /* Where the two group scores disagree: [3, -5 | 2, 2]. Top-(2/1) sum: -2 against 4, so
     * group 1, experts 2 and 3 tied at 2 (the lower id first), softmax(2, 2) = 0.5, 0.5.
     * Group max: 3 against 2, so group 0: softmax(3, -5) = 0.99966465, 0.00033535. */
    const float split[4] = {3, -5, 2, 2};
    c.group_score = MOERT_GROUP_SCORE_TOPK_SUM;
    ck_assert_int_eq(route(&c, split, 1, 4, &r), MOERT_OK);
    expect_token(&r, 0, 2, (int32_t[]){2, 3}, (double[]){0.5, 0.5});
    c.group_score = MOERT_GROUP_SCORE_MAX;
    ck_assert_int_eq(route(&c, split, 1, 4, &r), MOERT_OK);
    expect_token(&r, 0, 2, (int32_t[]){0, 1}, (double[]){0.99966465, 0.00033535});
    routed_free(&r);
}
END_TEST

START_TEST(capacity_is_computed_in_double) {
    /* As Megatron-Core and the paper compute it, in double: ceil((10 x 2 / 4) x 1.2) = 6
     * (1.2f is 1.20000005, which would give 7), and expert choice floor(10 x 0.7 / 2 + 0.5)
     * = 4 (0.7f gives 3). */
    moert_router_config c = moert_router_config_default();
    int64_t capacity = -1;
    c.k = 2, c.capacity_factor = 1.2;
    ck_assert_int_eq(moert_router_capacity(&c, 4, 10, &capacity), MOERT_OK);
    ck_assert_int_eq(capacity, 6);
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_EXPERT_CHOICE, c.capacity_factor = 0.7;
    ck_assert_int_eq(moert_router_capacity(&c, 2, 10, &capacity), MOERT_OK);
    ck_assert_int_eq(capacity, 4);
    /* A factor whose capacity leaves int64 is an error, not a wrapped number. */
    c = moert_router_config_default();
    c.capacity_factor = 1e30;
    ck_assert_int_eq(moert_router_capacity(&c, 4, 10, &capacity), MOERT_EOVERFLOW);
    moert_router *r;
    ck_assert_int_eq(moert_router_create(&c, 4, &r), MOERT_OK);
    moert_plan *plan;
    moert_plan_create(&plan);
    ck_assert_int_eq(moert_router_route(r, hand, 4, plan), MOERT_EOVERFLOW);
    moert_plan_destroy(plan);
    moert_router_destroy(r);
}
END_TEST

START_TEST(hand_capacity) {
    /* Capacity factor 1: ceil((4 x 2 / 4) x 1) = 2 per expert. Expert 1 was routed tokens 0,
     * 1 and 3 with weights .2689414, .8807971, .3775407. Drop `probs` keeps t1 and t3 and
     * drops t0's entry; `position` keeps t0 and t1 and drops t3's. Kept weights stay. */
    moert_router_config c = moert_router_config_default();
    c.capacity_factor = 1.0f;
    routed r = {0};
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    ck_assert_int_eq(r.s.capacity, 2);
    expect_token(&r, 0, 1, (int32_t[]){0}, (double[]){0.7310586});
    expect_token(&r, 3, 2, (int32_t[]){3, 1}, (double[]){0.6224593, 0.3775407});
    ck_assert_int_eq(r.s.dropped, 1); ck_assert_int_eq(r.s.routed, 8); ck_assert_int_eq(r.s.assignments, 7);
    ck_assert_int_eq(r.s.expert_routed[1], 3); ck_assert_int_eq(r.s.expert_counts[1], 2);
    check_plan_invariants(&r);
    c.drop_policy = MOERT_DROP_POSITION;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    expect_token(&r, 0, 2, (int32_t[]){0, 1}, (double[]){0.7310586, 0.2689414});
    expect_token(&r, 3, 1, (int32_t[]){3}, (double[]){0.6224593});
    /* Padding: every expert gets exactly 2 slots; expert 3 (one token) has one empty. */
    c.pad_to_capacity = 1;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    check_plan_invariants(&r);
    ck_assert_int_eq(r.v.slots, 8);
    for (int e = 0; e <= 4; e++) ck_assert_int_eq(r.v.expert_offsets[e], 2 * e);
    ck_assert_int_eq(r.v.slot_tokens[6], 3); ck_assert_int_eq(r.v.slot_tokens[7], -1);
    routed_free(&r);
}
END_TEST

START_TEST(hand_expert_choice) {
    /* C = floor(4 x 1 / 4 + 0.5) = 1: each expert takes its most probable token:
     * expert 0 t0 (.6439143), 1 t1 (.8097760), 2 t2 (.5344466), 3 t3 (.6129012).
     * C = 2 (capacity factor 2): expert 0 t0 t2, 1 t1 t3, 2 t2 t1, 3 t3 t2, so t2 holds
     * experts 2 (.5344466), 0 (.1966119) and 3 (.0723295). */
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_EXPERT_CHOICE, c.capacity_factor = 1.0f;
    routed r = {0};
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    for (int t = 0; t < 4; t++) {
        const double w[4] = {0.6439143, 0.8097760, 0.5344466, 0.6129012};
        expect_token(&r, (size_t)t, 1, (int32_t[]){t}, &w[t]);
    }
    ck_assert_int_eq(r.s.capacity, 1); ck_assert_int_eq(r.s.unrouted, 0);
    c.capacity_factor = 2.0f;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    check_plan_invariants(&r);
    expect_token(&r, 0, 1, (int32_t[]){0}, (double[]){0.6439143});
    expect_token(&r, 1, 2, (int32_t[]){1, 2}, (double[]){0.8097760, 0.1095913});
    expect_token(&r, 2, 3, (int32_t[]){2, 0, 3}, (double[]){0.5344466, 0.1966119, 0.0723295});
    expect_token(&r, 3, 2, (int32_t[]){3, 1}, (double[]){0.6129012, 0.3717434});
    for (int e = 0; e < 4; e++) ck_assert_int_eq(r.s.expert_counts[e], 2);
    /* C = T: every expert takes every token. */
    c.capacity_factor = 4.0f;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    ck_assert_int_eq(r.v.entries, 16); ck_assert_double_eq_tol(r.s.sparsity, 0.0, 1e-12);
    /* C rounds to 0: an error. */
    c.capacity_factor = 0.4f;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_EINVAL);
    routed_free(&r);
}
END_TEST

START_TEST(hand_relu) {
    /* Threshold 0: t0 -> 0 (2), 1 (1); t1 -> 1 (3), 2 (1); t2 -> 2 (2), 0 (1), 1 (1), the tie
     * to the lower id; t3 -> 3 (4), 1 (3.5). 9 of 16: sparsity 0.4375. Threshold 1.5: t0 -> 0
     * (.5), t1 -> 1 (1.5), t2 -> 2 (.5), t3 -> 3 (2.5), 1 (2). */
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_RELU;
    routed r = {0};
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    check_plan_invariants(&r);
    expect_token(&r, 2, 3, (int32_t[]){2, 0, 1}, (double[]){2, 1, 1});
    expect_token(&r, 3, 2, (int32_t[]){3, 1}, (double[]){4, 3.5});
    ck_assert_double_eq_tol(r.s.sparsity, 0.4375, 1e-12);
    ck_assert_int_eq(r.s.experts_per_token[2], 3); ck_assert_int_eq(r.s.experts_per_token[3], 1);
    c.relu_threshold = 1.5f;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    expect_token(&r, 0, 1, (int32_t[]){0}, (double[]){0.5});
    expect_token(&r, 3, 2, (int32_t[]){3, 1}, (double[]){2.5, 2.0});
    /* Every logit at or below the threshold: nobody is routed. */
    c.relu_threshold = 10.0f;
    ck_assert_int_eq(route(&c, hand, 4, 4, &r), MOERT_OK);
    ck_assert_int_eq(r.v.entries, 0); ck_assert_int_eq(r.s.unrouted, 4);
    ck_assert_double_eq_tol(r.s.sparsity, 1.0, 1e-12);
    check_plan_invariants(&r);
    routed_free(&r);
}
END_TEST

/* ---- against references ------------------------------------------------------------------ */

static float *random_logits(size_t n, uint64_t seed) {
    float *x = malloc(n * sizeof(float) + 4);
    test_rng rng = {seed};
    /* Rounded to 1/64: ties happen, and the references see the same floats. */
    for (size_t i = 0; i < n; i++) x[i] = roundf(2.0f * test_rng_normal(&rng) * 64.0f) / 64.0f;
    return x;
}

START_TEST(token_choice_matches_reference) {
    const size_t shapes[][2] = {{64, 8}, {33, 3}, {256, 8}, {8, 2}, {128, 1}};
    for (size_t s = 0; s < 5; s++) {
        const size_t E = shapes[s][0], T = 300;
        const int k = (int)shapes[s][1];
        float *x = random_logits(T * E, 10 + s);
        for (int variant = 0; variant < 4; variant++) {
            moert_router_config c = moert_router_config_default();
            c.k = k;
            if (variant == 1) c.softmax_order = MOERT_SOFTMAX_PRE, c.renormalize = 1;
            if (variant == 2) c.score = MOERT_SCORE_SIGMOID, c.renormalize = 1, c.scaling = 2.5f;
            if (variant == 3 && E % 8 == 0 && k % 2 == 0) c.groups = 8, c.topk_groups = 2;
            routed r = {0};
            ck_assert_msg(route(&c, x, T, E, &r) == MOERT_OK, "%s", moert_last_error());
            check_plan_invariants(&r);
            moert_topk_gate_params p = moert_topk_gate_params_default();
            p.k = k, p.score = c.score, p.softmax_order = c.softmax_order, p.renormalize = c.renormalize;
            p.scaling = c.scaling, p.groups = c.groups, p.topk_groups = c.topk_groups;
            int32_t ids[8];
            double w[8], lse;
            for (size_t t = 0; t < T; t++) {
                reference_gate_row(&p, x + t * E, E, ids, w, &lse, NULL);
                const int64_t a = r.v.token_offsets[t];
                ck_assert_int_eq(r.v.token_offsets[t + 1] - a, k);
                int32_t got[8];
                memcpy(got, r.v.expert_ids + a, (size_t)k * sizeof(int32_t));
                /* Same experts; weights that round alike may be ordered by id. */
                for (int j = 0; j < k; j++) {
                    int found = 0;
                    for (int i = 0; i < k; i++)
                        if (ids[i] == got[j]) {
                            found = 1;
                            ck_assert_msg(fabs(r.v.weights[a + j] - w[i]) < 2e-6 * fabs(w[i]) + 1e-30,
                                          "E=%zu variant %d token %zu", E, variant, t);
                        }
                    ck_assert_msg(found, "E=%zu k=%d variant %d token %zu: expert %d not in the reference", E, k,
                                  variant, t, got[j]);
                }
            }
            routed_free(&r);
        }
        free(x);
    }
}
END_TEST

/* Capacity on given routed entries, the readable way: for each expert, its entries in
 * token order; keep the first C, or the C of highest weight (ties to the earlier token). */
static void reference_keep(const moert_plan_view *pre, int64_t C, moert_drop_policy policy, uint8_t *keep) {
    memset(keep, 1, pre->entries);
    for (size_t e = 0; e < pre->experts; e++) {
        int64_t n = 0;
        int64_t *mine = malloc(pre->entries * sizeof *mine);
        for (size_t t = 0; t < pre->tokens; t++)
            for (int64_t i = pre->token_offsets[t]; i < pre->token_offsets[t + 1]; i++)
                if (pre->expert_ids[i] == (int32_t)e) mine[n++] = i;
        if (policy == MOERT_DROP_POSITION) {
            for (int64_t j = C; j < n; j++) keep[mine[j]] = 0;
        } else {
            for (int64_t j = 0; j < n; j++) { /* rank = entries that beat it */
                int64_t rank = 0;
                for (int64_t q = 0; q < n; q++) {
                    const float a = pre->weights[mine[q]], b = pre->weights[mine[j]];
                    rank += a > b || (a == b && q < j);
                }
                if (rank >= C) keep[mine[j]] = 0;
            }
        }
        free(mine);
    }
}

START_TEST(capacity_matches_reference) {
    const size_t E = 16, T = 200;
    float *x = random_logits(T * E, 77);
    /* Skew: expert 3 is popular, so it overflows at every capacity below. */
    for (size_t t = 0; t < T; t++) x[t * E + 3] += 1.5f;
    const float factors[] = {0.25f, 0.5f, 1.0f, 1.25f, 8.0f};
    for (int d = 0; d < 2; d++)
        for (size_t f = 0; f < 5; f++) {
            moert_router_config c = moert_router_config_default();
            c.k = 4;
            routed pre = {0}, r = {0};
            ck_assert_int_eq(route(&c, x, T, E, &pre), MOERT_OK);
            c.capacity_factor = factors[f], c.drop_policy = d ? MOERT_DROP_POSITION : MOERT_DROP_PROBS;
            ck_assert_int_eq(route(&c, x, T, E, &r), MOERT_OK);
            check_plan_invariants(&r);
            const int64_t C = (int64_t)ceil(((double)T * 4 / (double)E) * factors[f]);
            ck_assert_int_eq(r.s.capacity, C);
            /* The aux loss takes f_e from the routed entries, before drops: the same as
             * without capacity, bit for bit; the routed counts are the dropless ones. */
            ck_assert(r.s.aux_loss == pre.s.aux_loss);
            for (size_t e = 0; e < E; e++) ck_assert_int_eq(r.s.expert_routed[e], pre.s.expert_counts[e]);
            uint8_t *keep = malloc(pre.v.entries);
            reference_keep(&pre.v, C, c.drop_policy, keep);
            size_t n = 0;
            for (size_t i = 0; i < pre.v.entries; i++)
                if (keep[i]) {
                    ck_assert_int_eq(r.v.expert_ids[n], pre.v.expert_ids[i]);
                    ck_assert(r.v.weights[n] == pre.v.weights[i]);
                    n++;
                }
            ck_assert_int_eq(n, r.v.entries);
            ck_assert_int_eq(r.s.dropped, (int64_t)(pre.v.entries - n));
            for (size_t e = 0; e < E; e++) {
                ck_assert_int_le(r.s.expert_counts[e], C);
                ck_assert_int_eq(r.s.expert_routed[e], pre.s.expert_counts[e]);
            }
            /* Padded: the same entries; each expert's C slots start with the kept ones, in
             * the same order as unpadded, then empty ones (at 8.0 nothing drops). */
            routed padded = {0};
            c.pad_to_capacity = 1;
            ck_assert_int_eq(route(&c, x, T, E, &padded), MOERT_OK);
            check_plan_invariants(&padded);
            ck_assert_int_eq(padded.v.entries, r.v.entries);
            ck_assert(!memcmp(padded.v.token_offsets, r.v.token_offsets, (T + 1) * sizeof(int64_t)));
            ck_assert(!memcmp(padded.v.expert_ids, r.v.expert_ids, r.v.entries * sizeof(int32_t)));
            ck_assert_int_eq(padded.v.slots, (size_t)C * E);
            for (size_t e = 0; e < E; e++) {
                const int64_t kept = r.s.expert_counts[e];
                ck_assert_int_eq(padded.v.expert_offsets[e], (int64_t)e * C);
                for (int64_t i = 0; i < C; i++) {
                    const int64_t s = padded.v.expert_offsets[e] + i;
                    ck_assert_int_eq(padded.v.slot_tokens[s], i < kept ? r.v.slot_tokens[r.v.expert_offsets[e] + i] : -1);
                    ck_assert_int_eq(padded.v.slot_entries[s], i < kept ? r.v.slot_entries[r.v.expert_offsets[e] + i] : -1);
                }
            }
            routed_free(&padded);
            free(keep);
            routed_free(&pre), routed_free(&r);
        }
    free(x);
}
END_TEST

START_TEST(expert_choice_matches_reference) {
    const size_t E = 12, T = 150;
    float *x = random_logits(T * E, 5);
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_EXPERT_CHOICE, c.capacity_factor = 2.0f;
    routed r = {0};
    ck_assert_int_eq(route(&c, x, T, E, &r), MOERT_OK);
    check_plan_invariants(&r);
    const int64_t C = (int64_t)floor(T * 2.0 / E + 0.5);
    /* Reference: probabilities in double; each expert ranks tokens by them. */
    double *p = malloc(T * E * sizeof *p);
    for (size_t t = 0; t < T; t++) {
        double m = -INFINITY, s = 0;
        for (size_t e = 0; e < E; e++) m = fmax(m, x[t * E + e]);
        for (size_t e = 0; e < E; e++) s += exp(x[t * E + e] - m);
        for (size_t e = 0; e < E; e++) p[t * E + e] = exp(x[t * E + e] - m) / s;
    }
    int64_t unrouted = 0;
    for (size_t t = 0; t < T; t++) {
        int64_t n = 0;
        for (size_t e = 0; e < E; e++) {
            int64_t rank = 0;
            for (size_t q = 0; q < T; q++) {
                const double a = p[q * E + e], b = p[t * E + e];
                rank += a > b || (a == b && q < t);
            }
            if (rank >= C) continue;
            n++;
            int found = 0;
            for (int64_t i = r.v.token_offsets[t]; i < r.v.token_offsets[t + 1]; i++)
                if (r.v.expert_ids[i] == (int32_t)e) {
                    found = 1;
                    ck_assert(fabs(r.v.weights[i] - p[t * E + e]) < 1e-6);
                }
            ck_assert_msg(found, "token %zu should be chosen by expert %zu", t, e);
        }
        ck_assert_int_eq(r.v.token_offsets[t + 1] - r.v.token_offsets[t], n);
        unrouted += n == 0;
    }
    ck_assert_int_eq(r.s.unrouted, unrouted);
    for (size_t e = 0; e < E; e++) ck_assert_int_eq(r.s.expert_counts[e], C);
    free(p), free(x);
    routed_free(&r);
}
END_TEST

/* Expert choice at sizes where the router samples bounds: the reference computes each
 * probability with the same float operations (so ties are the same ties), sorts every
 * expert's tokens by (probability desc, token asc) and keeps the first C. Shapes: plain
 * random rows; an expert whose sampled rows mislead its bound (too few candidates); all
 * probabilities equal (every token a candidate: the buffers overflow); coarse rows. */
typedef struct ec_ranked {
    float p;
    int32_t t;
} ec_ranked;

static int ec_by_rank(const void *a, const void *b) {
    const ec_ranked *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->t > y->t) - (x->t < y->t);
}

static void check_expert_choice_exact(const float *x, size_t T, size_t E, float cf, int threads, moert_isa isa) {
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_EXPERT_CHOICE, c.capacity_factor = cf, c.threads = threads, c.isa = isa;
    routed r = {0};
    ck_assert_msg(route(&c, x, T, E, &r) == MOERT_OK, "%s", moert_last_error());
    check_plan_invariants(&r);
    int64_t C = (int64_t)floor((double)T * cf / (double)E + 0.5);
    if (C > (int64_t)T) C = (int64_t)T;
    float *p = malloc(T * E * sizeof *p);
    for (size_t t = 0; t < T; t++) {
        float m = -INFINITY, sum = 0.0f;
        for (size_t e = 0; e < E; e++) m = x[t * E + e] > m ? x[t * E + e] : m;
        /* The softmax as expert choice defines it: exp by moert_exp_shifted. */
        for (size_t e = 0; e < E; e++) sum += moert_exp_shifted(x[t * E + e], m);
        for (size_t e = 0; e < E; e++) p[t * E + e] = moert_exp_shifted(x[t * E + e], m) / sum;
    }
    /* chosen[t * E + e]: the weight expert e gives token t, or -1 */
    float *chosen = malloc(T * E * sizeof *chosen);
    ec_ranked *col = malloc(T * sizeof *col);
    for (size_t i = 0; i < T * E; i++) chosen[i] = -1.0f;
    for (size_t e = 0; e < E; e++) {
        for (size_t t = 0; t < T; t++) col[t] = (ec_ranked){p[t * E + e], (int32_t)t};
        qsort(col, T, sizeof *col, ec_by_rank);
        for (int64_t i = 0; i < C; i++) chosen[(size_t)col[i].t * E + e] = col[i].p;
    }
    for (size_t t = 0; t < T; t++) {
        int64_t n = 0;
        for (size_t e = 0; e < E; e++) n += chosen[t * E + e] >= 0.0f;
        ck_assert_msg(r.v.token_offsets[t + 1] - r.v.token_offsets[t] == n, "T=%zu token %zu: %lld experts, want %lld",
                      T, t, (long long)(r.v.token_offsets[t + 1] - r.v.token_offsets[t]), (long long)n);
        for (int64_t i = r.v.token_offsets[t]; i < r.v.token_offsets[t + 1]; i++)
            ck_assert_msg(chosen[t * E + (size_t)r.v.expert_ids[i]] == r.v.weights[i],
                          "T=%zu token %zu expert %d: weight %.9g, want %.9g", T, t, r.v.expert_ids[i],
                          (double)r.v.weights[i], (double)chosen[t * E + (size_t)r.v.expert_ids[i]]);
    }
    for (size_t e = 0; e < E; e++) ck_assert_int_eq(r.s.expert_counts[e], C);
    free(p), free(chosen), free(col);
    routed_free(&r);
}

/* ReLU's entries of one token by the definition: x - threshold where positive, by
 * descending weight, ties to the lower id. */
typedef struct relu_entry {
    int32_t id;
    float weight;
} relu_entry;

static int relu_entry_order(const void *pa, const void *pb) {
    const relu_entry *a = pa, *b = pb;
    if (a->weight != b->weight) return a->weight > b->weight ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static void check_relu_against_reference(const float *x, size_t T, size_t E, float threshold, int threads,
                                         moert_isa isa) {
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_RELU, c.relu_threshold = threshold, c.threads = threads, c.isa = isa;
    routed r = {0};
    ck_assert_msg(route(&c, x, T, E, &r) == MOERT_OK, "%s", moert_last_error());
    check_plan_invariants(&r);
    relu_entry *want = malloc(E * sizeof *want);
    int64_t *loads = calloc(E, sizeof *loads), *histogram = calloc(E + 1, sizeof *histogram);
    double *mean_prob = calloc(E, sizeof *mean_prob), z = 0.0;
    size_t total = 0;
    for (size_t t = 0; t < T; t++) {
        const float *row = x + t * E;
        size_t n = 0;
        double max = row[0], sum = 0.0;
        for (size_t e = 0; e < E; e++) {
            if (row[e] - threshold > 0.0f) want[n++] = (relu_entry){(int32_t)e, row[e] - threshold};
            max = row[e] > max ? row[e] : max;
        }
        for (size_t e = 0; e < E; e++) sum += exp(row[e] - max);
        for (size_t e = 0; e < E; e++) mean_prob[e] += exp(row[e] - max) / sum / (double)T;
        z += (max + log(sum)) * (max + log(sum)) / (double)T;
        qsort(want, n, sizeof *want, relu_entry_order);
        const int64_t a = r.v.token_offsets[t];
        ck_assert_msg(r.v.token_offsets[t + 1] - a == (int64_t)n, "E=%zu thr=%g isa=%d token %zu: %lld entries, want %zu",
                      E, threshold, isa, t, (long long)(r.v.token_offsets[t + 1] - a), n);
        for (size_t j = 0; j < n; j++) {
            ck_assert_msg(r.v.expert_ids[a + j] == want[j].id && r.v.weights[a + j] == want[j].weight,
                          "E=%zu thr=%g isa=%d token %zu entry %zu: (%d, %.9g), want (%d, %.9g)", E, threshold, isa, t,
                          j, r.v.expert_ids[a + j], r.v.weights[a + j], want[j].id, want[j].weight);
            loads[want[j].id]++;
        }
        histogram[n]++;
        total += n;
    }
    double aux = 0.0;
    for (size_t e = 0; e < E; e++) {
        ck_assert_int_eq(r.s.expert_counts[e], loads[e]);
        aux += total ? (double)loads[e] / (double)total * mean_prob[e] : 0.0;
    }
    for (size_t n = 0; n <= E; n++) ck_assert_int_eq(r.s.experts_per_token[n], histogram[n]);
    ck_assert_int_eq(r.s.unrouted, histogram[0]);
    ck_assert_double_eq_tol(r.s.sparsity, 1.0 - (double)total / ((double)T * (double)E), 1e-12);
    ck_assert_msg(fabs(r.s.aux_loss - (double)E * aux) <= 1e-5 * (double)E * aux + 1e-12, "aux %.9g, want %.9g",
                  r.s.aux_loss, (double)E * aux);
    ck_assert_msg(fabs(r.s.z_loss - z) <= 1e-5 * z + 1e-9, "z-loss %.9g, want %.9g", r.s.z_loss, z);
    free(want), free(loads), free(histogram), free(mean_prob);
    routed_free(&r);
}

START_TEST(routing_again_allocates_nothing) {
#ifdef COUNT_ALLOCATIONS
    const size_t E = 64, T = 3000;
    float *x = random_logits(T * E, 21);
    for (int policy = 0; policy < 6; policy++) {
        moert_router_config c = moert_router_config_default();
        c.k = 8, c.threads = policy % 2 + 1;
        if (policy == 1) c.capacity_factor = 1.0, c.pad_to_capacity = 1;
        if (policy == 2) c.policy = MOERT_POLICY_EXPERT_CHOICE, c.capacity_factor = 2.0;
        if (policy == 3) c.policy = MOERT_POLICY_RELU, c.relu_threshold = 1.0f;
        if (policy == 4) c.capacity_factor = 1.25, c.route_groups = 3;
        if (policy == 5) c.score = MOERT_SCORE_SIGMOID, c.groups = 8, c.topk_groups = 4;
        moert_router *r;
        moert_plan *plan;
        ck_assert_int_eq(moert_router_create(&c, E, &r), MOERT_OK);
        ck_assert_int_eq(moert_plan_create(&plan), MOERT_OK);
        ck_assert_int_eq(moert_router_route(r, x, T, plan), MOERT_OK); /* grows */
        ck_assert_int_eq(moert_router_route(r, x, T, plan), MOERT_OK);
        const long before = __atomic_load_n(&allocations, __ATOMIC_RELAXED);
        for (int i = 0; i < 3; i++) ck_assert_int_eq(moert_router_route(r, x, T, plan), MOERT_OK);
        const long during = __atomic_load_n(&allocations, __ATOMIC_RELAXED) - before;
        ck_assert_msg(during == 0, "policy case %d: %ld allocations in 3 routes of a grown plan", policy, during);
        moert_plan_destroy(plan);
        moert_router_destroy(r);
    }
    free(x);
#endif
}
END_TEST

START_TEST(relu_with_every_logit_at_most_zero) {
    /* Threshold 0 and logits <= 0 (zeros included: relu(0) = 0 is not positive): no
     * entries, every token unrouted, sparsity 1, no aux loss (nothing routed); the z-loss
     * is still the logits'. */
    const size_t T = 37, E = 12;
    float *x = random_logits(T * E, 77);
    for (size_t i = 0; i < T * E; i++) x[i] = i % 5 == 0 ? 0.0f : -fabsf(x[i]);
    moert_router_config c = moert_router_config_default();
    c.policy = MOERT_POLICY_RELU;
    routed r = {0};
    ck_assert_int_eq(route(&c, x, T, E, &r), MOERT_OK);
    check_plan_invariants(&r);
    ck_assert_int_eq(r.v.entries, 0);
    ck_assert_int_eq(r.s.unrouted, (int64_t)T);
    ck_assert_int_eq(r.s.experts_per_token[0], (int64_t)T);
    ck_assert_double_eq(r.s.sparsity, 1.0);
    ck_assert_double_eq(r.s.aux_loss, 0.0);
    ck_assert(r.s.z_loss > 0.0);
    routed_free(&r);
    free(x);
}
END_TEST

START_TEST(relu_matches_reference) {
    /* Widths around the vector widths; thresholds with many, few and no active entries;
     * logits on a 1/64 grid, so weights tie. Every ISA this CPU runs, several threads
     * (301 rows are 5 gate blocks: uneven shares). */
    const size_t widths[] = {1, 7, 8, 17, 64, 130};
    const float thresholds[] = {-0.5f, 0.0f, 1.3f, 2.5f, 100.0f};
    const moert_isa isas[] = {MOERT_ISA_SCALAR, MOERT_ISA_AVX2, MOERT_ISA_AVX512};
    for (size_t s = 0; s < sizeof widths / sizeof widths[0]; s++) {
        const size_t E = widths[s], T = 301;
        float *x = random_logits(T * E, 50 + s);
        for (size_t h = 0; h < sizeof thresholds / sizeof thresholds[0]; h++)
            for (size_t i = 0; i < 3; i++) {
                if (moert_isa_check(isas[i]) != MOERT_OK) continue;
                check_relu_against_reference(x, T, E, thresholds[h], 1, isas[i]);
                check_relu_against_reference(x, T, E, thresholds[h], 3, isas[i]);
            }
        free(x);
    }
}
END_TEST

START_TEST(limits_of_threads_and_capacities) {
    /* More OpenMP threads than MOERT_MAX_THREADS by default: every policy still routes
     * (the default is clamped), ReLU included. */
    omp_set_num_threads(MOERT_MAX_THREADS + 1000);
    for (int policy = 0; policy < 3; policy++) {
        moert_router_config c = moert_router_config_default();
        c.policy = (moert_policy)policy;
        if (policy == MOERT_POLICY_EXPERT_CHOICE) c.capacity_factor = 2.0;
        routed r = {0};
        ck_assert_msg(route(&c, hand, 4, 4, &r) == MOERT_OK, "policy %d: %s", policy, moert_last_error());
        routed_free(&r);
    }
    omp_set_num_threads(2);
    /* Routing groups whose capacities each fit but whose sum does not: an error, not an
     * overflow. */
    const size_t T = 3000;
    float *x = calloc(T, sizeof *x);
    moert_router_config c = moert_router_config_default();
    c.k = 1, c.capacity_factor = 4e15, c.route_groups = 3000, c.threads = 1;
    routed r = {0};
    ck_assert_int_eq(route(&c, x, T, 1, &r), MOERT_EOVERFLOW);
    routed_free(&r);
    free(x);
}
END_TEST

START_TEST(huge_finite_logits) {
    /* Finite logits far from 0: the statistics and expert choice's softmax stay finite
     * (an exp argument built as fma(x, log2 e, -max log2 e) carried the rounding of
     * max log2 e, 2^128 and more at these sizes, into every element). */
    const float x[8] = {1.48875302e9f, 1.48875302e9f, 0.0f, -1e30f, 3e38f, -3e38f, 3e38f, 0.0f};
    check_expert_choice_exact(x, 2, 4, 2.0f, 1, MOERT_ISA_SCALAR);
    check_expert_choice_exact(x, 2, 4, 2.0f, 2, MOERT_ISA_AUTO);
    moert_router_config c = moert_router_config_default();
    routed r = {0};
    for (int isa = 0; isa < 2; isa++) {
        c.isa = isa ? MOERT_ISA_SCALAR : MOERT_ISA_AUTO;
        ck_assert_int_eq(route(&c, x, 2, 4, &r), MOERT_OK);
        /* Each token's two tied maxima: weights 1/2; softmax means (1/2, 1/2, 0, 0) for
         * t0 and (1/2, 0, 1/2, 0) for t1; loads 2, 1, 1, 0 of 4: aux = 4 (1/2 . 1/2 +
         * 1/4 . 1/4 + 1/4 . 1/4) = 1.5; z = mean lse^2, lse = max + ln 2. */
        for (size_t i = 0; i < 4; i++) ck_assert(r.v.weights[i] == 0.5f);
        ck_assert_msg(fabs(r.s.aux_loss - 1.5) < 1e-6, "aux %.9g", r.s.aux_loss);
        ck_assert(isfinite(r.s.z_loss) && r.s.z_loss > 1e76);
    }
    routed_free(&r);
}
END_TEST

START_TEST(expert_choice_exact_at_scale) {
    const size_t T = 5000, E = 32;
    float *x = random_logits(T * E, 21);
    for (int threads = 1; threads <= 4; threads *= 2) check_expert_choice_exact(x, T, E, 2.0f, threads, MOERT_ISA_AUTO);
    check_expert_choice_exact(x, T, E, 2.0f, 1, MOERT_ISA_SCALAR);
    check_expert_choice_exact(x, T, E, 1.0f, 2, MOERT_ISA_AUTO);
    /* Expert 0 looks strong on exactly the rows a sample of 256 reads, weak elsewhere. */
    for (size_t t = 0; t < T; t++) x[t * E] = -5.0f;
    for (size_t i = 0; i < 256; i++) x[(i * T / 256) * E] = 5.0f;
    check_expert_choice_exact(x, T, E, 2.0f, 1, MOERT_ISA_AUTO);
    check_expert_choice_exact(x, T, E, 2.0f, 3, MOERT_ISA_AUTO);
    /* Every probability the same: ties everywhere, decided by token order. */
    for (size_t i = 0; i < T * E; i++) x[i] = 0.5f;
    check_expert_choice_exact(x, T, E, 2.0f, 2, MOERT_ISA_AUTO);
    /* Coarse values: many ties at each expert's boundary. */
    for (size_t i = 0; i < T * E; i++) x[i] = (float)((i * 7919u) % 5u);
    check_expert_choice_exact(x, T, E, 2.0f, 1, MOERT_ISA_AUTO);
    check_expert_choice_exact(x, T, E, 24.0f, 2, MOERT_ISA_AUTO); /* C = 3750: no sampling */
    free(x);
    /* C = T with 48 experts: each token has all 48, more than the rank sort takes (the
     * heap orders them); coarse values, so ties. */
    const size_t T2 = 300, E2 = 48;
    float *y = random_logits(T2 * E2, 5);
    for (size_t i = 0; i < T2 * E2; i++) y[i] = roundf(y[i]);
    check_expert_choice_exact(y, T2, E2, 48.0f, 2, MOERT_ISA_AUTO);
    free(y);
}
END_TEST

/* ---- determinism ------------------------------------------------------------------------- */

static void assert_same_plan(const routed *a, const routed *b) {
    ck_assert_int_eq(a->v.entries, b->v.entries);
    ck_assert_int_eq(a->v.slots, b->v.slots);
    ck_assert(!memcmp(a->v.token_offsets, b->v.token_offsets, (a->v.tokens + 1) * sizeof(int64_t)));
    ck_assert(!memcmp(a->v.expert_ids, b->v.expert_ids, a->v.entries * sizeof(int32_t)));
    ck_assert(!memcmp(a->v.weights, b->v.weights, a->v.entries * sizeof(float)));
    ck_assert(!memcmp(a->v.expert_offsets, b->v.expert_offsets, (a->v.experts + 1) * sizeof(int64_t)));
    ck_assert(!memcmp(a->v.slot_tokens, b->v.slot_tokens, a->v.slots * sizeof(int32_t)));
    ck_assert(!memcmp(a->v.slot_entries, b->v.slot_entries, a->v.slots * sizeof(int64_t)));
}

START_TEST(plans_are_bit_identical_for_1_2_4_threads) {
    const size_t E = 64, T = 1000;
    float *x = random_logits(T * E, 9);
    for (int policy = 0; policy < 5; policy++) {
        moert_router_config c = moert_router_config_default();
        c.k = 8;
        if (policy == 1) c.capacity_factor = 1.0f;
        if (policy == 2) c.capacity_factor = 0.75f, c.drop_policy = MOERT_DROP_POSITION, c.pad_to_capacity = 1;
        if (policy == 3) c.policy = MOERT_POLICY_EXPERT_CHOICE, c.capacity_factor = 2.0f;
        if (policy == 4) c.policy = MOERT_POLICY_RELU, c.relu_threshold = 1.0f;
        routed base = {0};
        c.threads = 1;
        ck_assert_int_eq(route(&c, x, T, E, &base), MOERT_OK);
        for (int th = 2; th <= 4; th += 2) {
            routed r = {0};
            c.threads = th;
            ck_assert_int_eq(route(&c, x, T, E, &r), MOERT_OK);
            assert_same_plan(&base, &r);
            ck_assert(base.s.aux_loss == r.s.aux_loss && base.s.z_loss == r.s.z_loss);
            routed_free(&r);
        }
        routed_free(&base);
    }
    free(x);
}
END_TEST

START_TEST(routing_groups) {
    const size_t E = 16, T = 103;
    float *x = random_logits(T * E, 4);
    moert_router_config c = moert_router_config_default();
    c.k = 2;
    routed whole = {0}, grouped = {0}, part = {0};
    /* Token choice without capacity is the same with or without groups. */
    ck_assert_int_eq(route(&c, x, T, E, &whole), MOERT_OK);
    c.route_groups = 3;
    ck_assert_int_eq(route(&c, x, T, E, &grouped), MOERT_OK);
    assert_same_plan(&whole, &grouped);
    /* The losses agree up to how the probability sums were blocked. */
    ck_assert_double_eq_tol(whole.s.aux_loss, grouped.s.aux_loss, 1e-6);
    ck_assert_double_eq_tol(whole.s.z_loss, grouped.s.z_loss, 1e-5 * whole.s.z_loss);
    /* With capacity, group r of 3 is routed alone: tokens [r T / 3, (r + 1) T / 3). */
    c.capacity_factor = 0.5f;
    ck_assert_int_eq(route(&c, x, T, E, &grouped), MOERT_OK);
    check_plan_invariants(&grouped);
    c.route_groups = 1;
    for (size_t g = 0; g < 3; g++) {
        const size_t t0 = T * g / 3, t1 = T * (g + 1) / 3;
        ck_assert_int_eq(route(&c, x + t0 * E, t1 - t0, E, &part), MOERT_OK);
        for (size_t t = 0; t < t1 - t0; t++) {
            const int64_t a = grouped.v.token_offsets[t0 + t], n = grouped.v.token_offsets[t0 + t + 1] - a;
            ck_assert_int_eq(n, part.v.token_offsets[t + 1] - part.v.token_offsets[t]);
            ck_assert(!memcmp(grouped.v.expert_ids + a, part.v.expert_ids + part.v.token_offsets[t],
                              (size_t)n * sizeof(int32_t)));
        }
    }
    routed_free(&whole), routed_free(&grouped), routed_free(&part);
    free(x);
}
END_TEST

/* ---- statistics and balancers ------------------------------------------------------------ */

START_TEST(worker_load_and_plans_from_entries) {
    /* Three tokens: [1, 0], [2], [] over 3 experts. */
    const int64_t offsets[4] = {0, 2, 3, 3};
    const int32_t ids[3] = {1, 0, 2};
    const float w[3] = {0.7f, 0.3f, 1.0f};
    moert_plan *plan;
    ck_assert_int_eq(moert_plan_create(&plan), MOERT_OK);
    ck_assert_int_eq(moert_plan_from_entries(plan, 3, 3, offsets, ids, w, 2), MOERT_OK);
    moert_plan_stats s;
    moert_plan_get_stats(plan, &s);
    ck_assert_int_eq(s.unrouted, 1); ck_assert_int_eq(s.assignments, 3);
    const int32_t worker_of[3] = {0, 1, 1};
    int64_t load[2];
    ck_assert_int_eq(moert_plan_worker_load(plan, worker_of, 2, load), MOERT_OK);
    ck_assert_int_eq(load[0], 1); ck_assert_int_eq(load[1], 2);
    const int32_t bad_worker[3] = {0, 2, 1};
    ck_assert_int_eq(moert_plan_worker_load(plan, bad_worker, 2, load), MOERT_EINVAL);
    const int32_t unordered[3] = {0, 1, 2};
    ck_assert_int_eq(moert_plan_from_entries(plan, 3, 3, offsets, unordered, (float[]){0.3f, 0.7f, 1}, 1),
                     MOERT_EINVAL);
    const int32_t out_of_range[3] = {1, 0, 3};
    ck_assert_int_eq(moert_plan_from_entries(plan, 3, 3, offsets, out_of_range, w, 1), MOERT_EINVAL);
    moert_plan_destroy(plan);
    moert_plan_destroy(NULL);
}
END_TEST

START_TEST(balancers) {
    /* Aux-free bias on a skewed router: expert 0's logits are +2 for every token. After
     * enough steps the bias pulls its load down to near the mean. */
    const size_t E = 8, T = 512;
    float *x = random_logits(T * E, 8);
    for (size_t t = 0; t < T; t++) x[t * E] += 2.0f;
    moert_bias_balancer *b;
    ck_assert_int_eq(moert_bias_balancer_create(E, 0.02f, &b), MOERT_OK);
    moert_router_config c = moert_router_config_default();
    c.score = MOERT_SCORE_SIGMOID, c.k = 2;
    routed r = {0};
    double first = 0, last = 0;
    for (int step = 0; step < 200; step++) {
        c.bias = moert_bias_balancer_bias(b);
        ck_assert_int_eq(route(&c, x, T, E, &r), MOERT_OK);
        if (step == 0) first = r.s.max_over_mean;
        last = r.s.max_over_mean;
        ck_assert_int_eq(moert_bias_balancer_update(b, r.s.expert_counts), MOERT_OK);
    }
    ck_assert_msg(first > 2.0 && last < 1.3, "max/mean %.3f -> %.3f", first, last);
    ck_assert(moert_bias_balancer_bias(b)[0] < 0.0f);
    moert_bias_balancer_destroy(b);
    routed_free(&r);
    free(x);

    /* ReMoE: x 1.2 while too dense, / 1.2 once sparse enough; target 1 - k/E. */
    moert_l1_controller l1;
    ck_assert_int_eq(moert_l1_controller_init(&l1, 2, 8), MOERT_OK);
    ck_assert_double_eq(l1.coefficient, 1e-8);
    ck_assert_double_eq_tol(l1.target_sparsity, 0.75, 1e-15);
    moert_l1_controller_update(&l1, 0.5);
    ck_assert_double_eq_tol(l1.coefficient, 1.2e-8, 1e-20);
    moert_l1_controller_update(&l1, 0.9);
    ck_assert_double_eq_tol(l1.coefficient, 1e-8, 1e-20);
    ck_assert_int_eq(moert_l1_controller_update(&l1, 1.5), MOERT_EINVAL);

    /* Threshold controller on ReLU routing: converges to the target sparsity. */
    const size_t E2 = 32, T2 = 2000;
    float *y = random_logits(T2 * E2, 3);
    moert_threshold_controller tc;
    ck_assert_int_eq(moert_threshold_controller_init(&tc, 0.9, 0.0, 2.0), MOERT_OK);
    moert_router_config rc = moert_router_config_default();
    rc.policy = MOERT_POLICY_RELU;
    for (int step = 0; step < 60; step++) {
        rc.relu_threshold = (float)tc.threshold;
        ck_assert_int_eq(route(&rc, y, T2, E2, &r), MOERT_OK);
        moert_threshold_controller_update(&tc, r.s.sparsity);
    }
    ck_assert_msg(fabs(r.s.sparsity - 0.9) < 0.01, "sparsity %.4f", r.s.sparsity);
    routed_free(&r);
    free(y);
}
END_TEST

/* ---- bad configurations ------------------------------------------------------------------ */

START_TEST(bad_configurations) {
    moert_router *r;
    moert_router_config c = moert_router_config_default();
    c.k = 0;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c.k = 9;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    ck_assert_str_eq(moert_last_error(), "k=9 exceeds num_experts=8");
    c = moert_router_config_default();
    c.groups = 3, c.topk_groups = 1;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    ck_assert_str_eq(moert_last_error(), "groups=3 does not divide experts=8");
    c.groups = 4, c.topk_groups = 5;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c.groups = 4, c.topk_groups = 3; /* k = 2 is not a multiple of 3 */
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    ck_assert(strstr(moert_last_error(), "not a multiple of topk_groups=3") != NULL);
    c = moert_router_config_default();
    c.capacity_factor = -1.0f;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c.capacity_factor = NAN;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_EXPERT_CHOICE; /* needs a capacity factor */
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_RELU, c.relu_threshold = NAN;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c = moert_router_config_default();
    c.route_groups = 0;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    /* Options of another policy are errors, not silently ignored. */
    const float bias8[8] = {0};
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_RELU, c.bias = bias8;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    ck_assert_str_eq(moert_last_error(), "a bias does not apply to relu routing");
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_RELU, c.capacity_factor = 1.0;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c = moert_router_config_default();
    c.policy = MOERT_POLICY_EXPERT_CHOICE, c.capacity_factor = 2.0, c.pad_to_capacity = 1;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c.pad_to_capacity = 0, c.groups = 2, c.topk_groups = 1;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c.groups = 0, c.topk_groups = 0, c.score = MOERT_SCORE_SIGMOID;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c = moert_router_config_default();
    c.relu_threshold = 0.5f; /* token choice */
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    c = moert_router_config_default();
    c.pad_to_capacity = 1; /* no capacity to pad to */
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_EINVAL);
    ck_assert_int_eq(moert_router_create(NULL, 8, &r), MOERT_EINVAL);
    c = moert_router_config_default();
    ck_assert_int_eq(moert_router_create(&c, 0, &r), MOERT_EINVAL);
    moert_router_destroy(NULL);

    /* Bad logits name the token in the whole batch, also across routing groups. */
    float x[4 * 8] = {0};
    x[3 * 8 + 5] = NAN;
    c.route_groups = 2;
    ck_assert_int_eq(moert_router_create(&c, 8, &r), MOERT_OK);
    moert_plan *plan;
    moert_plan_create(&plan);
    ck_assert_int_eq(moert_router_route(r, x, 4, plan), MOERT_EBADDATA);
    ck_assert_str_eq(moert_last_error(), "logits[3,5] is NaN");
    ck_assert_int_eq(moert_router_route(r, NULL, 4, plan), MOERT_EINVAL);
    moert_router_destroy(r);
    moert_plan_destroy(plan);
}
END_TEST

int main(void) {
    Suite *s = suite_create("router");
    TCase *hand_tc = tcase_create("hand-worked");
    tcase_add_test(hand_tc, hand_token_choice_post);
    tcase_add_test(hand_tc, hand_token_choice_pre_and_sigmoid);
    tcase_add_test(hand_tc, hand_group_limited);
    tcase_add_test(hand_tc, hand_capacity);
    tcase_add_test(hand_tc, hand_expert_choice);
    tcase_add_test(hand_tc, hand_relu);
    tcase_add_test(hand_tc, capacity_is_computed_in_double);
    suite_add_tcase(s, hand_tc);
    TCase *ref = tcase_create("references");
    tcase_add_test(ref, token_choice_matches_reference);
    tcase_add_test(ref, capacity_matches_reference);
    tcase_add_test(ref, expert_choice_matches_reference);
    tcase_add_test(ref, expert_choice_exact_at_scale);
    tcase_add_test(ref, relu_matches_reference);
    tcase_add_test(ref, relu_with_every_logit_at_most_zero);
    tcase_add_test(ref, huge_finite_logits);
    tcase_add_test(ref, limits_of_threads_and_capacities);
    tcase_add_test(ref, routing_again_allocates_nothing);
    tcase_add_test(ref, plans_are_bit_identical_for_1_2_4_threads);
    tcase_add_test(ref, routing_groups);
    tcase_set_timeout(ref, 300);
    suite_add_tcase(s, ref);
    TCase *misc = tcase_create("misc");
    tcase_add_test(misc, worker_load_and_plans_from_entries);
    tcase_add_test(misc, balancers);
    tcase_add_test(misc, bad_configurations);
    tcase_set_timeout(misc, 120);
    suite_add_tcase(s, misc);
    SRunner *runner = srunner_create(s);
    srunner_run_all(runner, CK_NORMAL);
    const int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* `moert simulate`'s pieces against hand-worked answers and formulas: placements, the
 * trace and count readers, profiles, the alpha-beta model, and whole simulations with
 * known outcomes (a uniform profile balances as tokens grow, a hot expert under capacity
 * drops a computable number of entries, the aux-free bias flattens Zipf(1.2) within 1/gamma
 * steps). The ESFT trace in ../shared/data, when present, must reproduce its recorded
 * shares, and EPLB must lower its straggler ratio. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/model.h"
#include "sim/placement.h"
#include "sim/profile.h"
#include "sim/simulate.h"
#include "sim/trace.h"
#include "tests/test_util.h"
#include "tools/npy.h"

START_TEST(test_placements) {
    sim_placement p;
    ck_assert_int_eq(sim_place(SIM_PLACE_CONTIGUOUS, 6, 4, 2, 0, NULL, &p), MOERT_OK);
    const int32_t contiguous[6] = {0, 0, 1, 2, 2, 3}; /* floor(e 4 / 6) */
    for (int e = 0; e < 6; e++) ck_assert_int_eq(p.rank_of[p.offsets[e]], contiguous[e]);
    sim_placement_free(&p);
    ck_assert_int_eq(sim_place(SIM_PLACE_ROUND_ROBIN, 6, 4, 1, 0, NULL, &p), MOERT_OK);
    for (int e = 0; e < 6; e++) ck_assert_int_eq(p.rank_of[p.offsets[e]], e % 4);
    sim_placement_free(&p);
    /* Balanced (LPT, 2 slots a rank): 10 -> r0, 9 -> r1, 1 -> r1 (9 < 10), 1 -> r0 (tie: lower). */
    const double loads[4] = {10, 9, 1, 1};
    ck_assert_int_eq(sim_place(SIM_PLACE_BALANCED, 4, 2, 1, 0, loads, &p), MOERT_OK);
    const int32_t balanced[4] = {0, 1, 1, 0};
    for (int e = 0; e < 4; e++) ck_assert_int_eq(p.rank_of[p.offsets[e]], balanced[e]);
    double rank_load[2];
    sim_rank_loads(&p, loads, rank_load);
    ck_assert(rank_load[0] == 11 && rank_load[1] == 10);
    sim_placement_free(&p);
    /* EPLB, 2 spare slots: expert 0 (12) gets a second replica (6 each; a third would exceed
     * the ranks), then expert 3 (2 -> 1 each); packed 3 slots a rank, the two replicas of an
     * expert apart: both ranks carry 8. */
    const double hot[4] = {12, 1, 1, 2};
    ck_assert_int_eq(sim_place(SIM_PLACE_EPLB, 4, 2, 1, 2, hot, &p), MOERT_OK);
    ck_assert_int_eq(p.offsets[1] - p.offsets[0], 2);
    ck_assert_int_eq(p.offsets[4] - p.offsets[3], 2);
    ck_assert_int_ne(p.rank_of[p.offsets[0]], p.rank_of[p.offsets[0] + 1]);
    ck_assert_int_ne(p.rank_of[p.offsets[3]], p.rank_of[p.offsets[3] + 1]);
    sim_rank_loads(&p, hot, rank_load);
    ck_assert(rank_load[0] == 8 && rank_load[1] == 8);
    /* A re-plan's moved replicas: against contiguous (experts 0, 1 on rank 0; 2, 3 on rank 1)
     * the replicas it lacks, expert 0's on rank 1 and expert 3's on rank 0 (the packing puts
     * 1 with 0's first replica, 2 with its second). */
    sim_placement c;
    ck_assert_int_eq(sim_place(SIM_PLACE_CONTIGUOUS, 4, 2, 1, 0, NULL, &c), MOERT_OK);
    ck_assert_int_eq(p.rank_of[p.offsets[1]], 0);
    ck_assert_int_eq(p.rank_of[p.offsets[2]], 1);
    ck_assert_uint_eq(sim_placement_moves(&c, &p), 2);
    sim_placement_free(&c);
    sim_placement_free(&p);
    /* Bad input. */
    ck_assert_int_eq(sim_place(SIM_PLACE_CONTIGUOUS, 6, 6, 4, 0, NULL, &p), MOERT_EINVAL);
    ck_assert(strstr(moert_last_error(), "do not divide into 4 nodes") != NULL);
    ck_assert_int_eq(sim_place(SIM_PLACE_EPLB, 4, 2, 1, 1, hot, &p), MOERT_EINVAL); /* 5 slots on 2 ranks */
    ck_assert_int_eq(sim_place(SIM_PLACE_EPLB, 4, 2, 1, 6, hot, &p), MOERT_EINVAL); /* more than E (P - 1) */
    ck_assert(strstr(moert_last_error(), "more than the slots") != NULL);
    ck_assert_int_eq(sim_place(SIM_PLACE_BALANCED, 4, 2, 1, 0, NULL, &p), MOERT_EINVAL);
    /* Hierarchical EPLB on 2 nodes of 3 ranks with 2 groups: {0, 1} (load 11) and {2, 3} (9),
     * one per node, the heavier on node 0; each node replicates its hottest expert (0 and 3)
     * onto two of its own ranks. */
    const double two_groups[4] = {10, 1, 1, 8};
    ck_assert_int_eq(sim_place_groups(SIM_PLACE_EPLB, 4, 6, 2, 2, 2, two_groups, &p), MOERT_OK);
    ck_assert_int_eq(p.offsets[1] - p.offsets[0], 2);
    ck_assert_int_eq(p.offsets[4] - p.offsets[3], 2);
    for (int32_t j = p.offsets[0]; j < p.offsets[2]; j++) ck_assert_int_lt(p.rank_of[j], 3);  /* group 0: node 0 */
    for (int32_t j = p.offsets[2]; j < p.offsets[4]; j++) ck_assert_int_ge(p.rank_of[j], 3); /* group 1: node 1 */
    ck_assert_int_ne(p.rank_of[p.offsets[0]], p.rank_of[p.offsets[0] + 1]);
    sim_placement_free(&p);
    /* By default one expert a group: experts 0 (10) and 3 (8) onto different nodes. */
    ck_assert_int_eq(sim_place(SIM_PLACE_EPLB, 4, 6, 2, 2, two_groups, &p), MOERT_OK);
    ck_assert_int_ne(p.rank_of[p.offsets[0]] / 3, p.rank_of[p.offsets[3]] / 3);
    sim_placement_free(&p);
    ck_assert_int_eq(sim_place(SIM_PLACE_EPLB, 5, 6, 2, 1, hot, &p), MOERT_EINVAL); /* 5 experts on 2 nodes */
    /* Any valid EPLB configuration packs: every rank its slots, no expert twice on a rank
     * (random shapes, loads up to 50x apart). */
    test_rng rng = {3};
    for (int run = 0; run < 3000; run++) {
        const int N = 1 + (int)(test_rng_next(&rng) % 4), P = N * (1 + (int)(test_rng_next(&rng) % 4));
        const size_t Es = 1 + test_rng_next(&rng) % 24;
        const int per_rank = 1 + (int)(test_rng_next(&rng) % 4), R = P * per_rank - (int)Es;
        if (R < 0 || (size_t)R > Es * (size_t)(P - 1)) continue;
        /* several nodes: an expert group and its replicas on each, in equal slots per rank */
        if (N > 1 && (Es % (size_t)N || R % N || (Es / (size_t)N + (size_t)(R / N)) % (size_t)(P / N) ||
                      (size_t)(R / N) > Es / (size_t)N * (size_t)(P / N - 1)))
            continue;
        double w[24];
        for (size_t e = 0; e < Es; e++) w[e] = 1 + (double)(test_rng_next(&rng) % 1000) * (test_rng_next(&rng) % 3 ? 1 : 50);
        ck_assert_msg(sim_place(SIM_PLACE_EPLB, Es, P, N, R, w, &p) == MOERT_OK, "P=%d N=%d E=%zu R=%d: %s", P, N, Es, R,
                      moert_last_error());
        int used[16] = {0};
        for (size_t e = 0; e < Es; e++)
            for (int32_t j = p.offsets[e]; j < p.offsets[e + 1]; j++) {
                used[p.rank_of[j]]++;
                for (int32_t m = p.offsets[e]; m < j; m++) ck_assert_int_ne(p.rank_of[m], p.rank_of[j]);
            }
        for (int q = 0; q < P; q++) ck_assert_int_eq(used[q], per_rank);
        sim_placement_free(&p);
    }
}
END_TEST

static moert_status parse(const char *text, size_t k, size_t experts, sim_trace *t) {
    return sim_trace_parse_esft(text, strlen(text), "trace", k, experts, t);
}

START_TEST(test_trace_reader) {
    sim_trace t;
    /* Two sequences: 2 tokens and 1 token of k = 2. */
    ck_assert_int_eq(parse("1\t2\t0\t3\t\t0.5\t0.25\t0.125\t0.0625\n3\t0\t\t0.1\t0.2\n", 2, 4, &t), MOERT_OK);
    ck_assert_uint_eq(t.tokens, 3);
    ck_assert_uint_eq(t.sequences, 2);
    const int32_t ids[6] = {1, 2, 0, 3, 3, 0};
    const float w[6] = {0.5f, 0.25f, 0.125f, 0.0625f, 0.1f, 0.2f};
    for (int i = 0; i < 6; i++) ck_assert(t.ids[i] == ids[i] && t.weights[i] == w[i]);
    sim_trace_free(&t);
    /* Bad input, each named. */
    ck_assert_int_eq(parse("1\t2\t0\t\t0.5\t0.25\t0.1\n", 2, 4, &t), MOERT_EBADDATA);
    ck_assert(strstr(moert_last_error(), "ragged") != NULL);
    ck_assert_int_eq(parse("1\t4\t\t0.5\t0.25\n", 2, 4, &t), MOERT_EBADDATA);
    ck_assert(strstr(moert_last_error(), "outside 0..3") != NULL);
    ck_assert_int_eq(parse("1\t2\t\t0.5\n", 2, 4, &t), MOERT_EBADDATA);
    ck_assert(strstr(moert_last_error(), "2 expert ids but 1 weights") != NULL);
    ck_assert_int_eq(parse("1\tx\t\t0.5\t0.5\n", 2, 4, &t), MOERT_EBADDATA);
    ck_assert(strstr(moert_last_error(), "line 1: expert id 1 is not an integer") != NULL);
    ck_assert_int_eq(parse("1\t2\n", 2, 4, &t), MOERT_EBADDATA);
    ck_assert(strstr(moert_last_error(), "no weights") != NULL);
    ck_assert_int_eq(parse("1\t2\t\tnan\t0.5\n", 2, 4, &t), MOERT_EBADDATA);
    ck_assert_int_eq(parse("", 2, 4, &t), MOERT_EBADDATA);
    ck_assert_int_eq(parse("-1\t2\t\t0.5\t0.5\n", 2, 4, &t), MOERT_EBADDATA);
    /* moert's own: ids.npy [N, k] (and weights.npy). */
    char ids_path[] = "/tmp/moert_test_sim_ids_XXXXXX", w_path[] = "/tmp/moert_test_sim_w_XXXXXX";
    ck_assert_int_ne(mkstemp(ids_path), -1);
    ck_assert_int_ne(mkstemp(w_path), -1);
    const int32_t npy_ids[6] = {0, 3, 2, 1, 1, 0};
    const float npy_w[6] = {0.5f, 0.5f, 0.9f, 0.1f, 0.6f, 0.4f};
    const size_t shape[2] = {3, 2};
    ck_assert_int_eq(npy_write(ids_path, NPY_I32, 2, shape, npy_ids), MOERT_OK);
    ck_assert_int_eq(npy_write(w_path, NPY_F32, 2, shape, npy_w), MOERT_OK);
    ck_assert_int_eq(sim_trace_read_npy(ids_path, w_path, 4, &t), MOERT_OK);
    ck_assert(t.tokens == 3 && t.k == 2 && t.ids[1] == 3 && t.weights[2] == 0.9f);
    sim_trace_free(&t);
    ck_assert_int_eq(sim_trace_read_npy(ids_path, NULL, 4, &t), MOERT_OK);
    ck_assert(t.weights[0] == 0.5f);
    sim_trace_free(&t);
    ck_assert_int_eq(sim_trace_read_npy(ids_path, NULL, 3, &t), MOERT_EBADDATA); /* id 3 of 3 experts */
    ck_assert(strstr(moert_last_error(), "ids[0,1] = 3 is outside 0..2") != NULL);
    const size_t other[2] = {2, 3};
    ck_assert_int_eq(npy_write(w_path, NPY_F32, 2, other, npy_w), MOERT_OK);
    ck_assert_int_eq(sim_trace_read_npy(ids_path, w_path, 4, &t), MOERT_EBADDATA); /* weights of another shape */
    remove(ids_path), remove(w_path);
}
END_TEST

START_TEST(test_profiles) {
    double m[8];
    ck_assert_int_eq(sim_profile_parse("uniform", 8, m), MOERT_OK);
    for (int e = 0; e < 8; e++) ck_assert(fabs(m[e] + log(8.0)) < 1e-12);
    ck_assert_int_eq(sim_profile_parse("zipf:1", 8, m), MOERT_OK);
    double h8 = 0;
    for (int e = 1; e <= 8; e++) h8 += 1.0 / e;
    for (int e = 0; e < 8; e++) ck_assert(fabs(exp(m[e]) - 1.0 / (e + 1) / h8) < 1e-12);
    ck_assert_int_eq(sim_profile_parse("hot:2:0.5", 8, m), MOERT_OK);
    ck_assert(fabs(exp(m[0]) - 0.25) < 1e-12 && fabs(exp(m[7]) - 0.5 / 6) < 1e-12);
    const char *bad[] = {"", "zipf", "zipf:", "zipf:-1", "zipf:1x", "hot:0:0.5", "hot:8:0.5", "hot:2:1.5", "hot:2",
                         "hot:1.5:0.5", "uniform:3", "pareto:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(sim_profile_parse(bad[i], 8, m) == MOERT_EINVAL, "profile '%s' accepted", bad[i]);
    /* A count table, rows chosen by filters: p proportional to the summed counts. */
    const char *csv = "model,domain,layer,expert,count\nolmoe,arxiv,0,0,30\nolmoe,arxiv,0,1,10\n"
                      "olmoe,c4,0,0,5\nolmoe,arxiv,0,2,60\n";
    size_t E = 0;
    double *means = NULL;
    ck_assert_int_eq(sim_profile_parse_counts(csv, strlen(csv), "t.csv", "domain=arxiv", &E, &means), MOERT_OK);
    ck_assert_uint_eq(E, 3);
    ck_assert(fabs(exp(means[0]) - 0.3) < 1e-12 && fabs(exp(means[2]) - 0.6) < 1e-12);
    free(means);
    E = 0;
    ck_assert_int_eq(sim_profile_parse_counts(csv, strlen(csv), "t.csv", "domain=nowhere", &E, &means), MOERT_EBADDATA);
    ck_assert_int_eq(sim_profile_parse_counts(csv, strlen(csv), "t.csv", "colour=red", &E, &means), MOERT_EINVAL);
    const char *malformed[] = {"expert,count\n0,1,2\n", "expert,count\n0,x\n", "model,count\nm,1\n", "expert,count\n-1,3\n",
                               "expert,count\n0.5,3\n", "", "expert,count\n0,-3\n"};
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        E = 0;
        ck_assert_msg(sim_profile_parse_counts(malformed[i], strlen(malformed[i]), "t.csv", NULL, &E, &means) ==
                          MOERT_EBADDATA,
                      "malformed CSV %zu accepted", i);
    }
    /* Counts near double's range: the shares still follow them. */
    const char *huge = "expert,count\n0,1e308\n1,1e308\n2,5\n";
    E = 0;
    ck_assert_int_eq(sim_profile_parse_counts(huge, strlen(huge), "t.csv", NULL, &E, &means), MOERT_OK);
    ck_assert(fabs(exp(means[0]) - 0.5) < 1e-12 && isfinite(means[2]));
    free(means);
    E = 4; /* the counts name 3 experts */
    ck_assert_int_eq(sim_profile_parse_counts(csv, strlen(csv), "t.csv", NULL, &E, &means), MOERT_EINVAL);
}
END_TEST

START_TEST(test_model) {
    /* 2 ranks in 2 nodes, experts 0 on r0 and 1 on r1. r0 routes 10 to e0 and 3 to e1; r1
     * 4 to e1: r1 receives 3 rows from another node; loads 10 and 7. */
    sim_placement p;
    ck_assert_int_eq(sim_place(SIM_PLACE_CONTIGUOUS, 2, 2, 2, 0, NULL, &p), MOERT_OK);
    sim_cost c = {.alpha_intra = 1, .beta_intra = 100, .alpha_inter = 2, .beta_inter = 10, .expert_seconds = 0.5,
                  .bytes_per_row = 10};
    const double counts[4] = {10, 3, 0, 4};
    double load[2], scratch[12];
    sim_step_cost s;
    sim_step_model(&p, &c, counts, load, scratch, &s);
    ck_assert(load[0] == 10 && load[1] == 7);
    ck_assert(s.inter_bytes == 30 && s.intra_bytes == 0);
    ck_assert(fabs(s.dispatch - (2 + 30.0 / 10)) < 1e-12); /* one peer between nodes, 30 bytes */
    ck_assert(fabs(s.compute - 5) < 1e-12 && fabs(s.total - (5 + 2 * 5)) < 1e-12);
    ck_assert(fabs(s.straggler - 10 / 8.5) < 1e-12);
    sim_placement_free(&p);
}
END_TEST

/* Whole simulations with answers known in advance. */
typedef struct collected {
    double last_mom[4], dropped[4], unrouted[4];
    int first_below[4];
} collected;

static void collect(void *context, int i, const sim_step_record *r, const double *load, const double *ranks) {
    (void)load, (void)ranks;
    collected *c = context;
    c->last_mom[i] = r->expert_max_over_mean, c->dropped[i] = r->dropped, c->unrouted[i] = r->unrouted;
    if (c->first_below[i] < 0 && r->expert_max_over_mean < 1.2) c->first_below[i] = r->step;
}

static sim_config base(size_t E, int k, size_t T, const double *means) {
    sim_config c = {0};
    c.ranks = 2, c.nodes = 1, c.steps = 1, c.k = k, c.threads = 2, c.experts = E, c.tokens_per_rank = T;
    c.sample = T, c.seed = 7, c.means = means, c.temperature = 1.0f, c.cost = sim_cost_default();
    c.expert_bytes = 1;
    return c;
}

START_TEST(test_simulations) {
    double means[16];
    sim_strategy none = {.name = "none", .balance = SIM_BALANCE_NONE, .place = SIM_PLACE_CONTIGUOUS};
    /* Uniform: max/mean falls toward 1 as tokens grow. */
    ck_assert_int_eq(sim_profile_parse("uniform", 16, means), MOERT_OK);
    collected small = {{0}, {0}, {0}, {0}}, large = {{0}, {0}, {0}, {0}};
    small.first_below[0] = large.first_below[0] = -1;
    sim_config c = base(16, 2, 256, means);
    ck_assert_int_eq(sim_run(&c, &none, 1, collect, &small), MOERT_OK);
    c = base(16, 2, 32768, means);
    ck_assert_int_eq(sim_run(&c, &none, 1, collect, &large), MOERT_OK);
    ck_assert_msg(large.last_mom[0] < 1.05 && large.last_mom[0] < small.last_mom[0], "max/mean %g (256 tokens %g)",
                  large.last_mom[0], small.last_mom[0]);
    /* One hot expert (all but 1e-6 of the probability), top-1, capacity factor 1: each rank
     * keeps ceil(T / E) of its T tokens there and drops the rest. */
    ck_assert_int_eq(sim_profile_parse("hot:1:0.999999", 16, means), MOERT_OK);
    sim_strategy cap = {.name = "capacity:1", .balance = SIM_BALANCE_CAPACITY, .capacity_factor = 1.0,
                        .place = SIM_PLACE_CONTIGUOUS};
    collected hot = {{0}, {0}, {0}, {0}};
    hot.first_below[0] = -1;
    c = base(16, 1, 1000, means);
    ck_assert_int_eq(sim_run(&c, &cap, 1, collect, &hot), MOERT_OK);
    const double kept = ceil(1000.0 / 16);
    ck_assert_msg(hot.dropped[0] == 2 * (1000 - kept) && hot.unrouted[0] == 2 * (1000 - kept), "dropped %g, unrouted %g",
                  hot.dropped[0], hot.unrouted[0]);
    /* Zipf(1.2) under the aux-free bias (gamma 1e-3): the sigmoid scores lie in (0, 1), so
     * no expert's bias needs to move more than 1: max/mean below 1.2 within 1 / gamma steps. */
    ck_assert_int_eq(sim_profile_parse("zipf:1.2", 16, means), MOERT_OK);
    sim_strategy strategies[2] = {none, {.name = "aux-free", .balance = SIM_BALANCE_AUX_FREE, .gamma = 1e-3f,
                                         .place = SIM_PLACE_CONTIGUOUS}};
    collected zipf = {{0}, {0}, {0}, {0}};
    zipf.first_below[0] = zipf.first_below[1] = -1;
    c = base(16, 2, 4096, means);
    c.steps = 1000;
    ck_assert_int_eq(sim_run(&c, strategies, 2, collect, &zipf), MOERT_OK);
    ck_assert_msg(zipf.first_below[1] >= 0 && zipf.first_below[1] < 1000 && zipf.last_mom[1] < 1.2,
                  "aux-free: first below 1.2 at step %d, last %g", zipf.first_below[1], zipf.last_mom[1]);
    ck_assert_msg(zipf.last_mom[0] > 3, "without a balancer Zipf(1.2) stays skewed: %g", zipf.last_mom[0]);
    /* Expert choice at capacity factor 1 on 1024 tokens of 16 experts: each expert takes
     * round(1024 / 16) = 64 of each rank's tokens, whatever the skew: max/mean exactly 1. */
    sim_strategy ec = {.name = "expert-choice:1", .balance = SIM_BALANCE_EXPERT_CHOICE, .capacity_factor = 1.0,
                       .place = SIM_PLACE_CONTIGUOUS};
    collected choice = {{0}, {0}, {0}, {0}};
    choice.first_below[0] = -1;
    c = base(16, 2, 1024, means);
    ck_assert_int_eq(sim_run(&c, &ec, 1, collect, &choice), MOERT_OK);
    ck_assert_msg(choice.last_mom[0] == 1.0, "expert choice max/mean %g", choice.last_mom[0]);
    /* Node-limited routing needs the experts to divide into the nodes. */
    sim_strategy limited = {.name = "node-limited:2", .balance = SIM_BALANCE_NODE_LIMITED, .max_nodes = 2,
                            .place = SIM_PLACE_CONTIGUOUS};
    c = base(16, 2, 64, means);
    c.ranks = 6, c.nodes = 3;
    ck_assert_int_eq(sim_run(&c, &limited, 1, collect, &choice), MOERT_EINVAL);
}
END_TEST

/* The last step's straggler ratio, into *(double *)context. */
static void collect_straggler(void *context, int i, const sim_step_record *r, const double *load, const double *ranks) {
    (void)i, (void)load, (void)ranks;
    *(double *)context = r->cost.straggler;
}

/* The hottest expert of each step. */
typedef struct hottest {
    int at[64];
} hottest;

static void record_hottest(void *context, int i, const sim_step_record *r, const double *load, const double *ranks) {
    (void)i, (void)ranks;
    hottest *h = context;
    int best = 0;
    for (int e = 1; e < 16; e++) best = load[e] > load[best] ? e : best;
    h->at[r->step] = best;
}

START_TEST(test_correlation_and_drift) {
    double means[16];
    sim_strategy none = {.name = "none", .balance = SIM_BALANCE_NONE, .place = SIM_PLACE_CONTIGUOUS};
    /* Tokens of a sequence sharing a latent are fewer independent draws: the load is
     * lumpier than for independent tokens of the same profile. */
    ck_assert_int_eq(sim_profile_parse("uniform", 16, means), MOERT_OK);
    collected independent = {{0}, {0}, {0}, {0}}, correlated = {{0}, {0}, {0}, {0}};
    independent.first_below[0] = correlated.first_below[0] = -1;
    sim_config c = base(16, 2, 4096, means);
    ck_assert_int_eq(sim_run(&c, &none, 1, collect, &independent), MOERT_OK);
    c.correlation = 0.95, c.seq_len = 512;
    ck_assert_int_eq(sim_run(&c, &none, 1, collect, &correlated), MOERT_OK);
    ck_assert_msg(correlated.last_mom[0] > independent.last_mom[0] + 0.1, "max/mean correlated %g, independent %g",
                  correlated.last_mom[0], independent.last_mom[0]);
    /* One hot expert rotating every 3 steps: step s's hottest is expert floor(s / 3) mod 16. */
    ck_assert_int_eq(sim_profile_parse("hot:1:0.9", 16, means), MOERT_OK);
    c = base(16, 2, 1024, means);
    c.steps = 40, c.rotate_every = 3;
    hottest h;
    ck_assert_int_eq(sim_run(&c, &none, 1, record_hottest, &h), MOERT_OK);
    for (int step = 0; step < 40; step++) ck_assert_int_eq(h.at[step], (step / 3) % 16);
    /* A placement planned from past loads lags a hot expert that moves every step: EPLB
     * re-planned every step then balances worse than when the expert stays put. */
    double lagging = 0, still = 0;
    c = base(16, 1, 2048, means);
    c.ranks = 8, c.steps = 6, c.rotate_every = 1;
    sim_strategy eplb = {.name = "eplb:8", .place = SIM_PLACE_EPLB, .replicas = 8, .replan_every = 1, .window = 1};
    ck_assert_int_eq(sim_run(&c, &eplb, 1, collect_straggler, &lagging), MOERT_OK);
    c.rotate_every = 0;
    ck_assert_int_eq(sim_run(&c, &eplb, 1, collect_straggler, &still), MOERT_OK);
    ck_assert_msg(lagging > still + 0.5, "eplb straggler %g with the hot expert moving, %g still", lagging, still);
}
END_TEST

/* The ESFT intent trace: each layer's expert shares as recorded (4 decimals), and EPLB's
 * placement (8 ranks, 8 replicas) lowering the max/mean rank load against contiguous. */
typedef struct esft_run {
    double shares[64], straggler[2];
} esft_run;

static void esft_step(void *context, int i, const sim_step_record *r, const double *load, const double *ranks) {
    (void)ranks;
    esft_run *run = context;
    run->straggler[i] = r->cost.straggler; /* the last step's */
    if (i == 0)
        for (int e = 0; e < 64; e++) run->shares[e] = load[e];
}

START_TEST(test_esft_trace) {
    const char *dir = MOERT_SHARED_DATA "/esft-intent";
    char path[512];
    snprintf(path, sizeof path, "%s/summary.json", dir);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "test_esft_trace: %s absent: skipped\n", path);
        return;
    }
    char *text = malloc(1 << 20);
    const size_t n = fread(text, 1, (1 << 20) - 1, f);
    fclose(f);
    text[n] = '\0';
    cJSON *summary = cJSON_Parse(text);
    free(text);
    ck_assert_ptr_nonnull(summary);
    const cJSON *scores = cJSON_GetObjectItem(summary, "token_scores");
    double worst = 0, contiguous = 0, eplb = 0;
    for (int layer = 1; layer <= 26; layer++) {
        sim_trace t;
        snprintf(path, sizeof path, "%s/expert_weights_%d.txt", dir, layer);
        ck_assert_msg(sim_trace_read_esft(path, 6, 64, &t) == MOERT_OK, "%s", moert_last_error());
        ck_assert_uint_eq(t.tokens, 8222);
        sim_config c = {0};
        /* Two steps: the first on contiguous measures the loads, the second runs on the plan. */
        c.ranks = 8, c.nodes = 1, c.steps = 2, c.k = 6, c.threads = 2, c.experts = 64, c.trace = &t;
        c.cost = sim_cost_default(), c.expert_bytes = 1;
        sim_strategy s[2] = {{.name = "contiguous", .place = SIM_PLACE_CONTIGUOUS},
                             {.name = "eplb:8", .place = SIM_PLACE_EPLB, .replicas = 8, .window = 1}};
        esft_run run;
        ck_assert_int_eq(sim_run(&c, s, 2, esft_step, &run), MOERT_OK);
        char key[8];
        snprintf(key, sizeof key, "%d", layer);
        const cJSON *recorded = cJSON_GetObjectItem(scores, key);
        for (int e = 0; e < 64; e++) {
            snprintf(key, sizeof key, "%d", e);
            const double share = run.shares[e] / (8222.0 * 6), want = cJSON_GetObjectItem(recorded, key)->valuedouble;
            worst = fabs(share - want) > worst ? fabs(share - want) : worst;
        }
        contiguous += run.straggler[0] / 26, eplb += run.straggler[1] / 26;
        sim_trace_free(&t);
    }
    cJSON_Delete(summary);
    ck_assert_msg(worst <= 0.5e-4 + 1e-12, "shares differ from the recorded ones by %g", worst);
    ck_assert_msg(eplb < contiguous - 0.1, "max/mean rank load: eplb %g, contiguous %g", eplb, contiguous);
    fprintf(stderr, "ESFT intent: shares within %.2g of the recorded; max/mean rank load contiguous %.3f, eplb:8 %.3f\n",
            worst, contiguous, eplb);
}
END_TEST

int main(void) {
    Suite *s = suite_create("sim");
    TCase *tc = tcase_create("sim");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_placements);
    tcase_add_test(tc, test_trace_reader);
    tcase_add_test(tc, test_profiles);
    tcase_add_test(tc, test_model);
    tcase_add_test(tc, test_simulations);
    tcase_add_test(tc, test_correlation_and_drift);
    tcase_add_test(tc, test_esft_trace);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

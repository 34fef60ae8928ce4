/* Expert parallelism over MPI, run by ctest under mpiexec with 1 to 4 ranks: each rank
 * holds its group [floor(r T / P), floor((r+1) T / P)) of a global batch, and its output
 * must equal, bit for bit, its slice of the single-process layer with route_groups = P
 * (which every rank also computes). */
#include <check.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bf16.h"
#include "moert/ep.h"
#include "moert/moert.h"
#include "tests/test_util.h"

static int rank, size;

/* Allocation failures on demand: the test links with -Wl,--wrap=malloc,--wrap=calloc, which
 * reaches moert's own allocations (the static library's) and not MPI's or OpenMP's. When
 * armed, the fail_at-th allocation from then on fails. */
void *__real_malloc(size_t n);
void *__real_calloc(size_t m, size_t n);
static long alloc_countdown = -1; /* -1: not armed */
static int allocation_fails(void) {
    if (alloc_countdown < 0) return 0;
    if (alloc_countdown-- == 0) return 1;
    return 0;
}
void *__wrap_malloc(size_t n) { return allocation_fails() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t m, size_t n) { return allocation_fails() ? NULL : __real_calloc(m, n); }

typedef struct ep_case {
    const char *name;
    moert_layer_config config;
    size_t tokens;     /* global */
    int one_expert;    /* every token to expert 0 (k = 1) */
    int max_count;     /* 0, or a small count to force rounds */
    const int32_t *rank_of_expert;
    const int32_t *replica_offsets, *replica_ranks; /* replicated experts, or NULL */
} ep_case;

static float *normal(test_rng *rng, size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = test_rng_normal(rng) * scale;
    return p;
}

static void run_case(const ep_case *c) {
    moert_layer_config cfg = c->config;
    const size_t T = c->tokens, d = cfg.d_model, f = cfg.d_ff, E = cfg.experts;
    const size_t elem = cfg.dtype == MOERT_DTYPE_BF16 ? 2 : 4;
    test_rng rng = {1234};
    float *x = normal(&rng, T * d, 1.0f), *gate = normal(&rng, d * E, 1.0f / sqrtf((float)d));
    if (c->one_expert) { /* positive rows and a gate that only expert 0 answers */
        for (size_t i = 0; i < T * d; i++) x[i] = fabsf(x[i]) + 0.1f;
        for (size_t i = 0; i < d * E; i++) gate[i] = i % E == 0 ? 1.0f : 0.0f;
    }
    float **w1 = calloc(E, sizeof(float *)), **w3 = calloc(E, sizeof(float *)), **w2 = calloc(E, sizeof(float *));
    for (size_t e = 0; cfg.expert_kind == MOERT_EXPERT_SWIGLU && e < E; e++) {
        w1[e] = normal(&rng, d * f, 1.0f / sqrtf((float)d));
        w3[e] = normal(&rng, d * f, 1.0f / sqrtf((float)d));
        w2[e] = normal(&rng, f * d, 1.0f / sqrtf((float)f));
    }
    void *xin = x;
    uint16_t *xb = NULL;
    if (cfg.dtype == MOERT_DTYPE_BF16) {
        xb = malloc((T * d > 0 ? T * d : 1) * sizeof(uint16_t));
        for (size_t i = 0; i < T * d; i++) xb[i] = moert_f32_to_bf16(x[i]);
        xin = xb;
    }

    /* The single-process reference: route_groups = P, one worker, one thread. */
    moert_layer_config single = cfg;
    single.router.route_groups = size;
    single.workers = 1, single.threads = 1;
    moert_layer *L = NULL;
    ck_assert_msg(moert_layer_create(&single, &L) == MOERT_OK, "%s: layer: %s", c->name, moert_last_error());
    ck_assert_int_eq(moert_layer_set_gate(L, gate), MOERT_OK);
    for (size_t e = 0; cfg.expert_kind == MOERT_EXPERT_SWIGLU && e < E; e++)
        ck_assert_int_eq(moert_layer_set_expert(L, e, w1[e], w3[e], w2[e]), MOERT_OK);
    char *want = malloc(T * d * elem + 1);
    ck_assert_msg(moert_layer_forward(L, xin, T, want) == MOERT_OK, "%s: layer forward: %s", c->name,
                  moert_last_error());

    /* The same over the ranks. */
    moert_layer_config dist = cfg;
    dist.threads = 2;
    moert_ep *ep = NULL;
    const moert_status created = c->replica_offsets
                                     ? moert_ep_create_replicated(&dist, MPI_COMM_WORLD, c->replica_offsets,
                                                                  c->replica_ranks, &ep)
                                     : moert_ep_create(&dist, MPI_COMM_WORLD, c->rank_of_expert, &ep);
    ck_assert_msg(created == MOERT_OK, "%s: ep: %s", c->name, moert_last_error());
    if (c->max_count) ck_assert_int_eq(moert_ep_set_max_count(ep, c->max_count), MOERT_OK);
    ck_assert_int_eq(moert_ep_set_gate(ep, gate), MOERT_OK);
    for (size_t e = 0; cfg.expert_kind == MOERT_EXPERT_SWIGLU && e < E; e++)
        ck_assert_int_eq(moert_ep_set_expert(ep, e, w1[e], w3[e], w2[e]), MOERT_OK);
    const size_t begin = T * (size_t)rank / (size_t)size, end = T * (size_t)(rank + 1) / (size_t)size;
    char *got = malloc((end - begin) * d * elem + 1);
    for (int pass = 0; pass < 4; pass++) { /* each exchange twice: the second reuses every buffer */
        ck_assert_int_eq(moert_ep_set_exchange(ep, pass < 2 ? MOERT_EP_EXCHANGE_ONE : MOERT_EP_EXCHANGE_PER_EXPERT),
                         MOERT_OK);
        const moert_status st = moert_ep_forward(ep, (const char *)xin + begin * d * elem, end - begin, got);
        /* Every rank learns whether any differed before asserting, so that a failure
         * ends the test on all ranks instead of leaving the others in a collective. */
        moert_ep_timings timings;
        moert_ep_get_timings(ep, &timings);
        const int differs = st != MOERT_OK || memcmp(got, want + begin * d * elem, (end - begin) * d * elem) != 0 ||
                            timings.per_expert_exchange != (pass >= 2);
        int any = 0;
        MPI_Allreduce(&differs, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        ck_assert_msg(!any, "%s: rank %d of %d: %s (pass %d)", c->name, rank, size,
                      st != MOERT_OK ? moert_last_error() : differs ? "differs from the single-process layer"
                                                                     : "another rank differs",
                      pass);
    }
    if (c->replica_offsets != NULL) {
        /* Where the rows went, by the rule written out here: for each expert in order, each
         * of its rows (ascending token) to the replica on this rank if there is one, else
         * to the replica this rank has sent the fewest rows so far, the first on a tie. */
        const int32_t R = c->replica_offsets[E];
        int64_t *want_rows = calloc((size_t)R, sizeof(int64_t)), *got_rows = calloc((size_t)R, sizeof(int64_t));
        moert_plan_view v;
        moert_plan_get_view(moert_ep_plan(ep), &v);
        for (size_t e = 0; e < E; e++)
            for (int64_t slot = v.expert_offsets[e]; slot < v.expert_offsets[e + 1]; slot++) {
                if (v.slot_tokens[slot] < 0) continue;
                int32_t pick = -1;
                for (int32_t j = c->replica_offsets[e]; j < c->replica_offsets[e + 1]; j++)
                    if (c->replica_ranks[j] == rank) pick = j;
                if (pick < 0) {
                    pick = c->replica_offsets[e];
                    for (int32_t j = pick + 1; j < c->replica_offsets[e + 1]; j++)
                        if (want_rows[j] < want_rows[pick]) pick = j;
                }
                want_rows[pick]++;
            }
        ck_assert_int_eq(moert_ep_replica_rows(ep, got_rows), MOERT_OK);
        const int differs = memcmp(want_rows, got_rows, (size_t)R * sizeof(int64_t)) != 0;
        int any = 0;
        MPI_Allreduce(&differs, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        ck_assert_msg(!any, "%s: rank %d of %d: rows per replica differ from the replica rule", c->name, rank, size);
        free(want_rows), free(got_rows);
    }
    moert_ep_destroy(ep);
    moert_layer_destroy(L);
    for (size_t e = 0; e < E; e++) free(w1[e]), free(w3[e]), free(w2[e]);
    free(w1), free(w3), free(w2), free(x), free(xb), free(gate), free(want), free(got);
}

static moert_layer_config base_config(void) {
    moert_layer_config c = moert_layer_config_default();
    c.d_model = 40, c.d_ff = 24, c.experts = 6; /* 6 experts: not divisible by 4 ranks */
    c.router.k = 2;
    c.chunk_rows = 8;
    return c;
}

START_TEST(test_token_choice) {
    ep_case c = {"top-2", base_config(), 97, 0, 0, NULL, NULL, NULL};
    run_case(&c);
    c.name = "top-2 with capacity 1 and padding";
    c.config.router.capacity_factor = 1.0, c.config.router.pad_to_capacity = 1;
    run_case(&c);
    c = (ep_case){"rounds of at most 3 rows", base_config(), 97, 0, 3, NULL, NULL, NULL};
    run_case(&c);
}
END_TEST

START_TEST(test_edge_cases) {
    /* Fewer tokens than ranks: rank 0 has none (with 2 ranks or more). */
    ep_case c = {"a rank without tokens", base_config(), (size_t)(size - 1), 0, 0, NULL, NULL, NULL};
    if (size > 1) run_case(&c);
    /* Every token to expert 0, on rank 0. */
    c = (ep_case){"every token to one expert", base_config(), 50, 1, 0, NULL, NULL, NULL};
    c.config.router.k = 1;
    run_case(&c);
    /* Experts placed out of order, all but one on the last rank. */
    int32_t map[6];
    for (int e = 0; e < 6; e++) map[e] = e == 2 ? 0 : size - 1;
    c = (ep_case){"an explicit placement", base_config(), 61, 0, 0, map, NULL, NULL};
    run_case(&c);
    /* Replicated experts: expert 0 on every rank, expert 3 on the first and last, the rest
     * one each; rows go to the own rank's replica or the least-loaded one. */
    int32_t offsets[7], ranks[6 * 4];
    int32_t n = 0;
    for (int e = 0; e < 6; e++) {
        offsets[e] = n;
        if (e == 0)
            for (int r = 0; r < size; r++) ranks[n++] = r;
        else if (e == 3 && size > 1)
            ranks[n++] = 0, ranks[n++] = size - 1;
        else
            ranks[n++] = (e * size) / 6;
    }
    offsets[6] = n;
    c = (ep_case){"replicated experts", base_config(), 83, 0, 0, NULL, offsets, ranks};
    run_case(&c);
    c.name = "replicated experts, all tokens to the replicated one";
    c.one_expert = 1, c.config.router.k = 1;
    run_case(&c);
}
END_TEST

START_TEST(test_policies_and_dtypes) {
    ep_case c = {"expert choice", base_config(), 90, 0, 0, NULL, NULL, NULL};
    c.config.router.policy = MOERT_POLICY_EXPERT_CHOICE, c.config.router.capacity_factor = 1.5;
    run_case(&c);
    c = (ep_case){"relu", base_config(), 90, 0, 0, NULL, NULL, NULL};
    c.config.router.policy = MOERT_POLICY_RELU;
    run_case(&c);
    c = (ep_case){"bf16 rows", base_config(), 90, 0, 0, NULL, NULL, NULL};
    c.config.dtype = MOERT_DTYPE_BF16;
    run_case(&c);
    c = (ep_case){"two NUMA workers in each rank", base_config(), 90, 0, 0, NULL, NULL, NULL};
    c.config.workers = 2; /* the ranks run 2 threads: a worker each */
    run_case(&c);
    c.config.dtype = MOERT_DTYPE_BF16, c.name = "two NUMA workers in each rank, bf16";
    run_case(&c);
    c = (ep_case){"synthetic experts", base_config(), 90, 0, 0, NULL, NULL, NULL};
    c.config.expert_kind = MOERT_EXPERT_SYNTHETIC, c.config.synthetic_cost = 5;
    run_case(&c);
}
END_TEST

/* A failed allocation on the last rank only, at each allocation of creation and of two
 * forward passes in turn: every rank returns the same status, none hangs (the timeout
 * would catch it), and the object is usable or freed. */
START_TEST(test_allocation_failure_agreed) {
    moert_layer_config cfg = base_config();
    cfg.threads = 1;
    test_rng rng = {3};
    const size_t T = 40, d = cfg.d_model;
    float *x = normal(&rng, T * d, 1.0f), *gate = normal(&rng, d * cfg.experts, 0.2f);
    float *out = malloc(T * d * sizeof(float));
    int failures_seen = 0;
    for (long at = 0; at < 200; at++) {
        moert_ep *ep = NULL;
        if (rank == size - 1) alloc_countdown = at;
        moert_status st = moert_ep_create(&cfg, MPI_COMM_WORLD, NULL, &ep);
        if (st == MOERT_OK) st = moert_ep_set_gate(ep, gate);
        /* set_gate is local and cannot fail here; the passes are collective */
        for (int pass = 0; st == MOERT_OK && pass < 2; pass++) st = moert_ep_forward(ep, x, T, out);
        const int left = alloc_countdown >= 0; /* the countdown outlived this round: all passed */
        alloc_countdown = -1;
        int mine[2] = {(int)st, -(int)st}, all[2];
        MPI_Allreduce(mine, all, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        ck_assert_msg(all[0] == -all[1], "allocation %ld failing on rank %d: statuses differ between ranks (%d..%d)", at,
                      size - 1, -all[1], all[0]);
        if (st != MOERT_OK) {
            ck_assert_msg(st == MOERT_ENOMEM, "allocation %ld: status %s: %s", at, moert_strerror(st), moert_last_error());
            failures_seen++;
        }
        moert_ep_destroy(ep);
        int all_left = 0;
        MPI_Allreduce(&left, &all_left, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (all_left && st == MOERT_OK) break; /* past the last allocation */
    }
    ck_assert_msg(failures_seen > 3, "only %d allocations failed", failures_seen);
    if (rank == 0) printf("allocation failures agreed: %d points, %d ranks\n", failures_seen, size);
    free(x), free(gate), free(out);
}
END_TEST

/* A NaN on the last rank only: every rank returns MOERT_EBADDATA, none hangs (ctest's
 * timeout would catch a hang); the failing rank has the detail, the others name it. */
START_TEST(test_error_agreed) {
    moert_layer_config cfg = base_config();
    cfg.threads = 1;
    moert_ep *ep = NULL;
    ck_assert_int_eq(moert_ep_create(&cfg, MPI_COMM_WORLD, NULL, &ep), MOERT_OK);
    test_rng rng = {7};
    const size_t T = 10, d = cfg.d_model;
    float *x = normal(&rng, T * d, 1.0f), *gate = normal(&rng, d * cfg.experts, 0.2f);
    float *out = malloc(T * d * sizeof(float));
    ck_assert_int_eq(moert_ep_set_gate(ep, gate), MOERT_OK);
    if (rank == size - 1) x[3 * d + 1] = NAN;
    const moert_status st = moert_ep_forward(ep, x, T, out);
    ck_assert_int_eq(st, MOERT_EBADDATA);
    if (rank == size - 1)
        ck_assert_msg(strstr(moert_last_error(), "logits[3,") != NULL, "%s", moert_last_error());
    else {
        char want[64];
        snprintf(want, sizeof want, "rank %d failed", size - 1);
        ck_assert_msg(strstr(moert_last_error(), want) != NULL, "%s", moert_last_error());
    }
    /* A bad placement is refused on every rank, at creation. */
    int32_t bad[6] = {0, 0, 0, 0, 0, size};
    moert_ep *none = (moert_ep *)1;
    ck_assert_int_eq(moert_ep_create(&cfg, MPI_COMM_WORLD, bad, &none), MOERT_EINVAL);
    ck_assert_ptr_null(none);
    /* Configurations that differ between ranks are refused on every rank, without a hang. */
    moert_layer_config other = cfg;
    if (rank == size - 1) other.d_model = 48;
    none = (moert_ep *)1;
    ck_assert_int_eq(moert_ep_create(&other, MPI_COMM_WORLD, NULL, &none), size > 1 ? MOERT_EINVAL : MOERT_OK);
    if (size > 1) ck_assert_msg(strstr(moert_last_error(), "different configurations") != NULL, "%s", moert_last_error());
    moert_ep_destroy(size > 1 ? NULL : none);
    /* The pass after an error works. */
    x[3 * d + 1] = 0.5f;
    ck_assert_msg(moert_ep_forward(ep, x, T, out) == MOERT_OK, "rank %d: after an error: %s", rank, moert_last_error());
    /* A rank's own max_count does not change the schedule (the smallest one is used; a
     * different one per rank would hang), and exchanges cut into rounds of 2 rows per call
     * give the same bits as whole ones. */
    float *rounds = malloc(T * d * sizeof(float));
    ck_assert_int_eq(moert_ep_set_max_count(ep, rank == 0 ? 2 : 5), MOERT_OK);
    ck_assert_msg(moert_ep_forward(ep, x, T, rounds) == MOERT_OK, "rank %d: in rounds: %s", rank, moert_last_error());
    ck_assert(memcmp(rounds, out, T * d * sizeof(float)) == 0);
    free(rounds);
    moert_ep_destroy(ep);
    free(x), free(gate), free(out);
}
END_TEST

int main(int argc, char **argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    Suite *s = suite_create("ep");
    TCase *tc = tcase_create("ep");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_token_choice);
    tcase_add_test(tc, test_edge_cases);
    tcase_add_test(tc, test_policies_and_dtypes);
    tcase_add_test(tc, test_error_agreed);
    tcase_add_test(tc, test_allocation_failure_agreed);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); /* MPI and fork() do not mix */
    srunner_run_all(sr, rank == 0 ? CK_NORMAL : CK_SILENT);
    int failed = srunner_ntests_failed(sr), any = 0;
    srunner_free(sr);
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any && rank == 0) printf("a test failed on some rank\n");
    MPI_Finalize();
    return any ? EXIT_FAILURE : EXIT_SUCCESS;
}

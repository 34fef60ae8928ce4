/* `moert layer --ep P` (see layer_ep.h). */
#include <cjson/cJSON.h>
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bf16.h"
#include "moert/ep.h"
#include "tools/cli.h"
#include "tools/layer_ep.h"
#include "tools/layer_reference.h"

/* regroup is a part of experts; the others add up to the total. */
enum { STAGES = 11 };
static const char *const stage_names[STAGES] = {"gate",    "route",   "pack", "counts",  "dispatch", "experts",
                                                "regroup", "wait",    "return", "combine", "total"};

static void timings_array(const moert_ep_timings *t, double *v) {
    const double a[STAGES] = {t->gate,    t->route,  t->pack, t->exchange_counts,  t->dispatch, t->experts,
                              t->regroup, t->wait,   t->combine_exchange, t->combine, t->total};
    memcpy(v, a, sizeof a);
}

/* An agreed failure: the rank whose own failure it was prints its detail (the others'
 * detail is "rank R failed: ..."); rank 0 prints when no rank has its own detail. */
static int report_failure(moert_status st, const char *what, int rank) {
    const int own = strncmp(moert_last_error(), "rank ", 5) != 0;
    int own_anywhere = 0;
    MPI_Allreduce(&own, &own_anywhere, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (own) {
        char prefixed[64];
        snprintf(prefixed, sizeof prefixed, "rank %d: %s", rank, what);
        return cli_fail_status(st, prefixed);
    }
    return !own_anywhere && rank == 0 ? cli_fail_status(st, what) : CLI_FAIL;
}

/* The same code on every rank: the worst one. */
static int agreed_code(int code) {
    int worst = code;
    MPI_Allreduce(&code, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return worst;
}

static int run(const layer_ep_args *a, int rank, int size) {
    const moert_layer_config *c = &a->config;
    const size_t d = c->d_model, T = a->tokens, E = c->experts;
    const size_t begin = T * (size_t)rank / (size_t)size, end = T * (size_t)(rank + 1) / (size_t)size, n = end - begin;
    const size_t elem = c->dtype == MOERT_DTYPE_BF16 ? 2 : 4;
    void *x = malloc(n * d * elem + 1), *out = malloc(n * d * elem + 1);
    float *out_f32 = malloc(n * d * sizeof(float) + 1);
    int code = x && out && out_f32 ? CLI_OK : cli_fail(CLI_FAIL, "rank %d: cannot allocate %zu rows", rank, n);
    if (code == CLI_OK && c->dtype == MOERT_DTYPE_BF16)
        moert_f32_to_bf16_row(a->x + begin * d, x, n * d);
    else if (code == CLI_OK)
        memcpy(x, a->x + begin * d, n * d * sizeof(float));
    moert_ep *ep = NULL;
    code = agreed_code(code);
    if (code == CLI_OK) {
        moert_status st = moert_ep_create(c, MPI_COMM_WORLD, NULL, &ep);
        if (st == MOERT_OK) st = moert_ep_set_gate(ep, a->gate);
        for (size_t e = 0; st == MOERT_OK && c->expert_kind == MOERT_EXPERT_SWIGLU && e < E; e++)
            st = moert_ep_set_expert(ep, e, a->w1[e], a->w3[e], a->w2[e]);
        if (st != MOERT_OK) code = report_failure(st, "--ep", rank);
    }
    code = agreed_code(code); /* no rank enters the passes alone */
    double sum[STAGES] = {0};
    for (int i = 0; code == CLI_OK && i <= a->iters; i++) { /* pass 0 warms up */
        const moert_status st = moert_ep_forward(ep, x, n, out); /* collective: agreed status */
        if (st != MOERT_OK) {
            code = report_failure(st, "--ep forward", rank);
            break;
        }
        moert_ep_timings t;
        moert_ep_get_timings(ep, &t);
        double v[STAGES];
        timings_array(&t, v);
        for (int s = 0; i > 0 && s < STAGES; s++) sum[s] += v[s] / a->iters;
    }
    double check_error = 0;
    if (code == CLI_OK && a->check) {
        if (c->dtype == MOERT_DTYPE_BF16)
            moert_bf16_to_f32_row((const uint16_t *)out, out_f32, n * d);
        else
            memcpy(out_f32, out, n * d * sizeof(float));
        const layer_reference ref = {d, c->d_ff, E, c->expert_kind, c->synthetic_cost, a->w1, a->w3, a->w2};
        double *want = malloc(n * d * sizeof(double) + 1);
        double mine = INFINITY;
        if (want != NULL) {
            layer_reference_forward(&ref, moert_ep_plan(ep), a->x + begin * d, want);
            mine = layer_reference_error(out_f32, want, n, d);
            free(want);
        }
        MPI_Allreduce(&mine, &check_error, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    }
    code = agreed_code(code);
    /* --save: the whole batch on rank 0, then its files (a failure there is agreed too). */
    if (code == CLI_OK && a->save != NULL) {
        void *whole = rank == 0 ? malloc(T * d * elem + 1) : NULL;
        float *whole_f32 = rank == 0 ? malloc(T * d * sizeof(float) + 1) : NULL;
        moert_plan *plan = NULL;
        if (rank == 0) moert_plan_create(&plan);
        const int ready = rank != 0 || (whole && whole_f32 && plan);
        int all_ready = 0;
        MPI_Allreduce(&ready, &all_ready, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        moert_status st = all_ready ? moert_ep_gather(ep, 0, out, whole, plan)
                                    : moert_set_error(MOERT_ENOMEM, "--save: cannot allocate the whole batch");
        if (st == MOERT_OK && rank == 0) {
            if (c->dtype == MOERT_DTYPE_BF16)
                moert_bf16_to_f32_row((const uint16_t *)whole, whole_f32, T * d);
            else
                memcpy(whole_f32, whole, T * d * sizeof(float));
            st = a->save(a->save_context, whole_f32, plan, size);
        }
        if (st != MOERT_OK) code = rank == 0 ? cli_fail_status(st, "--save") : CLI_FAIL;
        free(whole), free(whole_f32);
        moert_plan_destroy(plan);
        code = agreed_code(code);
    }
    /* Every rank's stage times to rank 0. */
    double *all = rank == 0 ? malloc((size_t)size * STAGES * sizeof(double)) : NULL;
    if (code == CLI_OK) MPI_Gather(sum, STAGES, MPI_DOUBLE, all, STAGES, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    const double tolerance = c->dtype == MOERT_DTYPE_BF16 ? 2e-2 : 1e-4;
    if (code == CLI_OK && rank == 0 && all != NULL) {
        printf("layer --ep %d: T=%zu (global) d=%zu f=%zu E=%zu %s, %d threads per rank\n", size, T, d, c->d_ff, E,
               c->dtype == MOERT_DTYPE_BF16 ? "bf16" : "f32", c->threads > 0 ? c->threads : omp_get_max_threads());
        printf("  %-6s", "rank");
        for (int s = 0; s < STAGES; s++) printf(" %9s", stage_names[s]);
        printf("   (ms, mean of %d passes)\n", a->iters);
        double max[STAGES] = {0}, mean[STAGES] = {0};
        for (int r = 0; r < size; r++) {
            printf("  %-6d", r);
            for (int s = 0; s < STAGES; s++) {
                const double v = all[r * STAGES + s];
                printf(" %9.3f", v * 1e3);
                max[s] = v > max[s] ? v : max[s];
                mean[s] += v / size;
            }
            printf("\n");
        }
        printf("  %-6s", "max");
        for (int s = 0; s < STAGES; s++) printf(" %9.3f", max[s] * 1e3);
        printf("\n  %-6s", "mean");
        for (int s = 0; s < STAGES; s++) printf(" %9.3f", mean[s] * 1e3);
        printf("\n  %.0f tokens/s (global), max/mean of the total %.3f\n", T / max[STAGES - 1],
               mean[STAGES - 1] > 0 ? max[STAGES - 1] / mean[STAGES - 1] : 0.0);
        if (a->check)
            printf("  check: max relative error %.3g against the double reference (%s, limit %.0e)\n", check_error,
                   check_error <= tolerance ? "ok" : "FAILED", tolerance);
        if (a->json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "ranks", size);
            cJSON_AddNumberToObject(o, "tokens", (double)T);
            cJSON_AddNumberToObject(o, "tokens_per_s", T / max[STAGES - 1]);
            for (int s = 0; s < STAGES; s++) {
                char key[32];
                cJSON *per_rank = cJSON_CreateArray();
                for (int r = 0; r < size; r++) cJSON_AddItemToArray(per_rank, cJSON_CreateNumber(all[r * STAGES + s] * 1e3));
                snprintf(key, sizeof key, "%s_ms", stage_names[s]);
                cJSON_AddItemToObject(o, key, per_rank);
                snprintf(key, sizeof key, "%s_max_over_mean", stage_names[s]);
                cJSON_AddNumberToObject(o, key, mean[s] > 0 ? max[s] / mean[s] : 0.0);
            }
            if (a->check) cJSON_AddNumberToObject(o, "check_error", check_error);
            cli_print_json_line(o);
        }
    }
    if (code == CLI_OK && a->check && !(check_error <= tolerance))
        code = rank == 0 ? cli_fail(CLI_FAIL, "--check: max relative error %.3g exceeds %.0e", check_error, tolerance)
                         : CLI_FAIL;
    free(all);
    moert_ep_destroy(ep);
    free(x), free(out), free(out_f32);
    return code;
}

int layer_ep_run(const layer_ep_args *a) {
    int initialized = 0, provided, rank = 0, size = 1;
    MPI_Initialized(&initialized);
    if (!initialized) MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int code;
    if (size != a->ranks)
        code = rank == 0 ? cli_fail(CLI_USAGE, "--ep %d: running on %d MPI ranks (start it with mpirun -np %d)",
                                    a->ranks, size, a->ranks)
                         : CLI_USAGE;
    else
        code = run(a, rank, size);
    if (!initialized) MPI_Finalize();
    return code;
}

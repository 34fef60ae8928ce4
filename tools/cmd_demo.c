/* moert demo: route a batch of synthetic logits with built-in defaults and show what
 * was measured: speed, the variant used, and the balance of the routing. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench/bench.h"
#include "tools/cli.h"

static const char demo_help[] =
    "usage: moert demo\n"
    "\n"
    "Routes 16384 tokens of standard-normal logits over 64 experts, top-8 softmax (post),\n"
    "and prints the time per token, the kernel variant, and the balance of the load:\n"
    "tokens per expert, max/mean, coefficient of variation, the Switch auxiliary loss and\n"
    "the router z-loss.\n";

enum { DEMO_TOKENS = 16384, DEMO_EXPERTS = 64, DEMO_K = 8 };

int cmd_demo(int argc, char **argv) {
    static const struct option options[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int opt;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs(demo_help, stdout);
            return CLI_OK;
        }
        return cli_usage_error("demo", "unknown option or missing value");
    }
    if (optind < argc) return cli_usage_error("demo", "unexpected argument");

    const size_t T = DEMO_TOKENS, E = DEMO_EXPERTS;
    const int k = DEMO_K;
    float *logits = malloc(T * E * sizeof(float));
    int32_t *ids = malloc(T * k * sizeof(int32_t));
    float *weights = malloc(T * k * sizeof(float));
    float *lse = malloc(T * sizeof(float));
    double prob_sums[DEMO_EXPERTS];
    if (!logits || !ids || !weights || !lse) {
        free(logits), free(ids), free(weights), free(lse);
        return cli_fail(CLI_FAIL, "demo: cannot allocate %zu bytes", T * E * sizeof(float));
    }
    bench_fill_gaussian(logits, T * E, 42);

    moert_topk_gate_params params = moert_topk_gate_params_default();
    params.k = k;
    moert_topk_gate_output out = {ids, weights, prob_sums, lse};
    moert_isa isa;
    moert_status st = moert_isa_active(&isa);
    if (st == MOERT_OK) st = moert_topk_gate(&params, logits, T, E, &out); /* warm-up */
    double t0 = bench_now();
    const int reps = 20;
    for (int r = 0; r < reps && st == MOERT_OK; r++) st = moert_topk_gate(&params, logits, T, E, &out);
    double seconds = (bench_now() - t0) / reps;
    if (st != MOERT_OK) {
        free(logits), free(ids), free(weights), free(lse);
        return cli_fail_status(st, "demo");
    }

    long counts[DEMO_EXPERTS] = {0};
    for (size_t i = 0; i < T * (size_t)k; i++) counts[ids[i]]++;
    const double mean = (double)(T * k) / (double)E;
    long max = 0, min = (long)(T * k);
    double var = 0.0, aux = 0.0, z = 0.0;
    for (size_t e = 0; e < E; e++) {
        max = counts[e] > max ? counts[e] : max;
        min = counts[e] < min ? counts[e] : min;
        var += (counts[e] - mean) * (counts[e] - mean);
        /* Switch: f_e = share of assignments, P_e = mean router probability. */
        aux += ((double)counts[e] / (double)(T * k)) * (prob_sums[e] / (double)T);
    }
    aux *= (double)E;
    for (size_t t = 0; t < T; t++) z += (double)lse[t] * lse[t];
    z /= (double)T;

    printf("moert %s demo: route %zu tokens over %zu experts, top-%d softmax (post)\n",
           moert_version(), T, E, k);
    printf("  gate kernel     %s variant, %.1f ns/token, %.1f M tokens/s\n", moert_isa_name(isa),
           seconds * 1e9 / (double)T, (double)T / seconds / 1e6);
    printf("  tokens/expert   mean %.1f, min %ld, max %ld\n", mean, min, max);
    printf("  balance         max/mean %.3f, cv %.4f\n", (double)max / mean, sqrt(var / (double)E) / mean);
    printf("  losses          aux (Switch) %.4f, z-loss %.3f\n", aux, z);
    printf("  first token     experts");
    for (int j = 0; j < k; j++) printf(" %d", ids[j]);
    printf("  weights");
    for (int j = 0; j < k; j++) printf(" %.3f", weights[j]);
    printf("\n");
    free(logits), free(ids), free(weights), free(lse);
    return CLI_OK;
}

/* moert demo: route a batch of synthetic logits with built-in defaults and show what
 * was measured: the speed of the gate kernel, and each routing policy's speed and the
 * balance of the plan it made. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench/bench.h"
#include "tools/cli.h"

static const char demo_help[] =
    "usage: moert demo\n"
    "\n"
    "Makes 16384 tokens of logits over 64 experts (standard normal, plus a fixed skew per\n"
    "expert so that some experts are popular), times the fused top-8 gate kernel, then\n"
    "routes the batch with each policy (token choice dropless and with a capacity,\n"
    "group-limited sigmoid, expert choice, ReLU) into a plan and prints its time per token\n"
    "and balance: experts per token, dropped entries, tokens with no expert, max/mean load,\n"
    "coefficient of variation and normalised entropy of the load, the Switch auxiliary loss\n"
    "and the router z-loss. Then it runs a small MoE layer end to end (512 tokens, d 256,\n"
    "f 512, 16 SwiGLU experts, top-2: gate, route, dispatch, experts, combine), prints the\n"
    "time of each stage and the balance, and checks the output against a double-precision\n"
    "reference (as `moert layer --check`).\n";

enum { DEMO_TOKENS = 16384, DEMO_EXPERTS = 64, DEMO_K = 8, DEMO_REPS = 10 };

/* Best of DEMO_REPS routes, in seconds; the plan holds the last one. */
static moert_status time_route(const moert_router_config *c, const float *logits, size_t T, size_t E,
                               moert_plan *plan, double *seconds) {
    moert_router *r = NULL;
    moert_status st = moert_router_create(c, E, &r);
    if (st == MOERT_OK) st = moert_router_route(r, logits, T, plan); /* warm-up: the plan grows */
    *seconds = INFINITY;
    for (int i = 0; i < DEMO_REPS && st == MOERT_OK; i++) {
        const double t0 = bench_now();
        st = moert_router_route(r, logits, T, plan);
        const double dt = bench_now() - t0;
        *seconds = dt < *seconds ? dt : *seconds;
    }
    moert_router_destroy(r);
    return st;
}

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
    float *logits = malloc(T * E * sizeof(float));
    float skew[DEMO_EXPERTS];
    int32_t *ids = malloc(T * DEMO_K * sizeof(int32_t));
    float *weights = malloc(T * DEMO_K * sizeof(float));
    moert_plan *plan = NULL;
    moert_status st = moert_plan_create(&plan);
    if (!logits || !ids || !weights || st != MOERT_OK) {
        free(logits), free(ids), free(weights), moert_plan_destroy(plan);
        return cli_fail(CLI_FAIL, "demo: cannot allocate %zu bytes", T * E * sizeof(float));
    }
    bench_fill_gaussian(logits, T * E, 42);
    bench_fill_gaussian(skew, E, 7);
    for (size_t t = 0; t < T; t++)
        for (size_t e = 0; e < E; e++) logits[t * E + e] += 0.3f * skew[e];

    /* The kernel alone: the fused top-8 softmax, no statistics. */
    moert_topk_gate_params params = moert_topk_gate_params_default();
    params.k = DEMO_K;
    const moert_topk_gate_output out = {ids, weights, NULL, NULL};
    moert_isa isa = MOERT_ISA_AUTO;
    st = moert_isa_active(&isa);
    double kernel = INFINITY;
    for (int i = 0; i <= DEMO_REPS && st == MOERT_OK; i++) {
        const double t0 = bench_now();
        st = moert_topk_gate(&params, logits, T, E, &out);
        const double dt = bench_now() - t0;
        if (i > 0) kernel = dt < kernel ? dt : kernel; /* the first warms up */
    }
    if (st != MOERT_OK) {
        free(logits), free(ids), free(weights), moert_plan_destroy(plan);
        return cli_fail_status(st, "demo");
    }
    printf("moert %s demo: %zu tokens over %zu experts (standard-normal logits plus a skew per expert)\n",
           moert_version(), T, E);
    printf("  fused top-%d softmax kernel: %s variant, %.1f ns/token, %.1f M tokens/s\n", DEMO_K,
           moert_isa_name(isa), kernel * 1e9 / (double)T, (double)T / kernel / 1e6);
    printf("  first token: experts");
    for (int j = 0; j < DEMO_K; j++) printf(" %d", ids[j]);
    printf(", weights");
    for (int j = 0; j < DEMO_K; j++) printf(" %.3f", weights[j]);
    printf("\n\n");

    enum { CASES = 5 };
    const char *names[CASES] = {"top-8 softmax, dropless", "top-8 softmax, capacity factor 1",
                                "top-8 sigmoid, 8 groups keep 4", "expert choice, capacity factor 8",
                                "relu, threshold 1.5"};
    printf("  %-33s %8s %8s %8s %8s %8s %7s %7s %7s %7s\n", "plan and statistics", "ns/token", "exp/tok",
           "dropped", "unrouted", "max/mean", "cv", "entropy", "aux", "z-loss");
    int code = CLI_OK;
    for (int i = 0; i < CASES && code == CLI_OK; i++) {
        moert_router_config c = moert_router_config_default();
        c.k = DEMO_K;
        if (i == 1) c.capacity_factor = 1.0;
        if (i == 2) c.score = MOERT_SCORE_SIGMOID, c.groups = 8, c.topk_groups = 4, c.renormalize = 1;
        if (i == 3) c.policy = MOERT_POLICY_EXPERT_CHOICE, c.capacity_factor = 8.0;
        if (i == 4) c.policy = MOERT_POLICY_RELU, c.relu_threshold = 1.5f;
        if (i >= 3) c.k = 2; /* not read by these policies; the default */
        double seconds;
        st = time_route(&c, logits, T, E, plan, &seconds);
        if (st != MOERT_OK) {
            code = cli_fail_status(st, names[i]);
            break;
        }
        moert_plan_stats s;
        moert_plan_get_stats(plan, &s);
        printf("  %-33s %8.1f %8.2f %8lld %8lld %8.3f %7.4f %7.4f %7.4f %7.3f\n", names[i], seconds * 1e9 / (double)T,
               s.experts_per_token_mean, (long long)s.dropped, (long long)s.unrouted, s.max_over_mean, s.cv, s.entropy,
               s.aux_loss, s.z_loss);
    }
    free(logits), free(ids), free(weights);
    moert_plan_destroy(plan);
    if (code != CLI_OK) return code;

    /* A small MoE layer end to end, through the `moert layer` command itself. */
    printf("\n");
    char *layer_argv[] = {"layer", "--tokens", "512", "--d-model", "256", "--d-ff", "512", "--experts", "16",
                          "--k", "2", "--iters", "5", "--check", NULL};
    return cmd_layer((int)(sizeof layer_argv / sizeof layer_argv[0]) - 1, layer_argv);
}

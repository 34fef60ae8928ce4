/* moert bench route: a routing policy with its plan and statistics, against the fused
 * gate kernel alone (top-k weights and ids, nothing else), in interleaved rounds. File
 * I/O is not measured. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "tools/cli.h"
#include "tools/router_cli.h"

static const char help[] =
    "usage: moert bench route [options]\n"
    "\n"
    "  --tokens T          default 16384\n"
    "  --experts E         default 64\n"
    "  --baseline-k K      k of the fused kernel it is compared with, default --k (8 for\n"
    "                      expert choice and relu)\n"
    "  --relu-active F     relu: pick the threshold so that about F of the entries are\n"
    "                      active (on standard-normal logits), default 0.1\n"
    "  --threads N         default 1\n"
    "  --rounds R          default 5\n"
    "  --json              one JSON object on the last line\n" ROUTER_CLI_HELP
    "\n"
    "The fused kernel alone is moert_topk_gate with the router's score (softmax post, or\n"
    "sigmoid), k = --baseline-k, no groups, no statistics. The same kernel with statistics\n"
    "also sums the softmax probabilities per expert and writes each token's logsumexp,\n"
    "which the auxiliary loss and the z-loss of any policy need.\n";

typedef struct route_ctx {
    moert_router *router;
    moert_plan *plan;
    const float *logits;
    size_t tokens;
    moert_status status;
} route_ctx;

static void run_route(void *arg) {
    route_ctx *c = arg;
    c->status = moert_router_route(c->router, c->logits, c->tokens, c->plan);
}

typedef struct kernel_ctx {
    moert_topk_gate_params params;
    const float *logits;
    size_t tokens, experts;
    int32_t *ids;
    float *weights;
    double *prob_sums; /* NULL, or [experts] with logsumexp: the kernel with statistics */
    float *logsumexp;
    moert_status status;
} kernel_ctx;

static void run_kernel(void *arg) {
    kernel_ctx *c = arg;
    moert_topk_gate_output out = {c->ids, c->weights, c->prob_sums, c->logsumexp};
    c->status = moert_topk_gate(&c->params, c->logits, c->tokens, c->experts, &out);
}

int bench_route(int argc, char **argv) {
    enum { OPT_TOKENS = 256, OPT_EXPERTS, OPT_BASELINE_K, OPT_RELU_ACTIVE, OPT_THREADS, OPT_ROUNDS, OPT_JSON };
    static const struct option options[] = {
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"experts", required_argument, NULL, OPT_EXPERTS},
        {"baseline-k", required_argument, NULL, OPT_BASELINE_K},
        {"relu-active", required_argument, NULL, OPT_RELU_ACTIVE},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"rounds", required_argument, NULL, OPT_ROUNDS},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        ROUTER_CLI_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    router_cli rc;
    router_cli_init(&rc);
    rc.config.k = 8;
    size_t tokens = 16384, experts = 64;
    int baseline_k = 0, threads = 1, rounds = 5, json = 0, relu_threshold_given = 0, opt, code;
    float relu_active = 0.1f;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        code = CLI_OK;
        switch (opt) {
        case 'h': fputs(help, stdout); return CLI_OK;
        case OPT_TOKENS: code = cli_parse_size("--tokens", optarg, 1, (size_t)1 << 26, &tokens); break;
        case OPT_EXPERTS: code = cli_parse_size("--experts", optarg, 1, MOERT_MAX_EXPERTS, &experts); break;
        case OPT_BASELINE_K: code = cli_parse_int("--baseline-k", optarg, 1, MOERT_MAX_EXPERTS, &baseline_k); break;
        case OPT_RELU_ACTIVE: code = cli_parse_float("--relu-active", optarg, 1e-6, 1.0, &relu_active); break;
        case OPT_THREADS: code = cli_parse_int("--threads", optarg, 1, 1024, &threads); break;
        case OPT_ROUNDS: code = cli_parse_int("--rounds", optarg, 1, 101, &rounds); break;
        case OPT_JSON: json = 1; break;
        default:
            if (opt == ROUTER_OPT_RELU_THRESHOLD) relu_threshold_given = 1;
            code = router_cli_option(&rc, opt, optarg);
            if (code < 0) return cli_usage_error("bench route", "unknown option or missing value");
        }
        if (code != CLI_OK) return code;
    }
    if (optind < argc) return cli_usage_error("bench route", "unexpected argument");
    moert_router_config *c = &rc.config;
    c->threads = threads;
    if (c->policy == MOERT_POLICY_RELU && !relu_threshold_given && c->score != MOERT_SCORE_SOFTPICK) {
        /* The standard normal's upper quantile: P(x > threshold) = relu_active. */
        double lo = -10, hi = 10;
        for (int i = 0; i < 100; i++) {
            const double mid = 0.5 * (lo + hi);
            if (0.5 * erfc(mid / sqrt(2.0)) > relu_active)
                lo = mid;
            else
                hi = mid;
        }
        c->relu_threshold = (float)lo;
    }
    if ((code = router_cli_finish(&rc, experts)) != CLI_OK) return code;
    if (baseline_k == 0) baseline_k = c->policy == MOERT_POLICY_TOKEN_CHOICE ? c->k : 8;
    if ((size_t)baseline_k > experts) return cli_fail(CLI_USAGE, "--baseline-k %d exceeds --experts %zu", baseline_k, experts);

    float *logits = malloc(tokens * experts * sizeof(float));
    int32_t *ids = malloc(tokens * (size_t)baseline_k * sizeof(int32_t));
    float *weights = malloc(tokens * (size_t)baseline_k * sizeof(float));
    double *route_ns = calloc((size_t)rounds, sizeof(double)), *kernel_ns = calloc((size_t)rounds, sizeof(double));
    double *ratio = calloc((size_t)rounds, sizeof(double));
    double *stats_ns = calloc((size_t)rounds, sizeof(double)), *stats_ratio = calloc((size_t)rounds, sizeof(double));
    double *prob_sums = malloc(experts * sizeof(double));
    float *logsumexp = malloc(tokens * sizeof(float));
    route_ctx r = {NULL, NULL, logits, tokens, MOERT_OK};
    code = CLI_OK;
    if (!logits || !ids || !weights || !route_ns || !kernel_ns || !ratio || !stats_ns || !stats_ratio ||
        !prob_sums || !logsumexp)
        code = cli_fail(CLI_FAIL, "cannot allocate the benchmark's buffers");
    moert_status st = MOERT_OK;
    if (code == CLI_OK) {
        bench_fill_gaussian(logits, tokens * experts, 1);
        st = moert_router_create(c, experts, &r.router);
        if (st == MOERT_OK) st = moert_plan_create(&r.plan);
        if (st != MOERT_OK) code = cli_fail_status(st, "bench route");
    }
    kernel_ctx k = {moert_topk_gate_params_default(), logits, tokens, experts, ids, weights, NULL, NULL, MOERT_OK};
    k.params.k = baseline_k;
    k.params.score = c->score == MOERT_SCORE_SIGMOID ? MOERT_SCORE_SIGMOID : MOERT_SCORE_SOFTMAX;
    k.params.threads = threads;
    k.params.isa = c->isa;
    kernel_ctx ks = k;
    ks.prob_sums = prob_sums, ks.logsumexp = logsumexp;
    if (code == CLI_OK) {
        run_route(&r); /* warm up, and check */
        run_kernel(&ks);
        run_kernel(&k);
        if (r.status != MOERT_OK) code = cli_fail_status(r.status, "route");
        else if (k.status != MOERT_OK) code = cli_fail_status(k.status, "kernel");
        else if (ks.status != MOERT_OK) code = cli_fail_status(ks.status, "kernel with statistics");
    }
    for (int i = 0; i < rounds && code == CLI_OK; i++) {
        route_ns[i] = bench_sample(run_route, &r, 0.05) * 1e9 / (double)tokens;
        kernel_ns[i] = bench_sample(run_kernel, &k, 0.05) * 1e9 / (double)tokens;
        stats_ns[i] = bench_sample(run_kernel, &ks, 0.05) * 1e9 / (double)tokens;
        ratio[i] = route_ns[i] / kernel_ns[i];
        stats_ratio[i] = stats_ns[i] / kernel_ns[i];
    }
    if (code == CLI_OK) {
        moert_plan_stats s;
        moert_plan_get_stats(r.plan, &s);
        const double m_route = bench_median(route_ns, rounds), m_kernel = bench_median(kernel_ns, rounds);
        const double m_ratio = bench_median(ratio, rounds);
        const double m_stats = bench_median(stats_ns, rounds), m_stats_ratio = bench_median(stats_ratio, rounds);
        printf("moert bench route: tokens=%zu experts=%zu threads=%d rounds=%d\n", tokens, experts, threads, rounds);
        printf("  route    %10.2f ns/token  (plan and statistics; %.3f experts/token, sparsity %.3f)\n", m_route,
               s.experts_per_token_mean, s.sparsity);
        printf("  kernel   %10.2f ns/token  (fused top-%d alone)\n", m_kernel, baseline_k);
        printf("  kernel with statistics %.2f ns/token (%.2f x the kernel alone)\n", m_stats, m_stats_ratio);
        printf("  ratio    %10.2f x  (route / kernel alone)\n", m_ratio);
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "benchmark", "route");
            router_cli_to_json(&rc, o);
            cJSON_AddNumberToObject(o, "tokens", (double)tokens);
            cJSON_AddNumberToObject(o, "experts", (double)experts);
            cJSON_AddNumberToObject(o, "threads", threads);
            cJSON_AddNumberToObject(o, "rounds", rounds);
            cJSON_AddNumberToObject(o, "route_ns_per_token", m_route);
            cJSON_AddNumberToObject(o, "kernel_ns_per_token", m_kernel);
            cJSON_AddNumberToObject(o, "baseline_k", baseline_k);
            cJSON_AddNumberToObject(o, "ratio_to_kernel", m_ratio);
            cJSON_AddNumberToObject(o, "kernel_stats_ns_per_token", m_stats);
            cJSON_AddNumberToObject(o, "kernel_stats_ratio_to_kernel", m_stats_ratio);
            cJSON_AddNumberToObject(o, "experts_per_token", s.experts_per_token_mean);
            cJSON_AddNumberToObject(o, "sparsity", s.sparsity);
            char *text = cJSON_PrintUnformatted(o);
            if (text) puts(text);
            cJSON_free(text);
            cJSON_Delete(o);
        }
    }
    moert_plan_destroy(r.plan);
    moert_router_destroy(r.router);
    router_cli_free(&rc);
    free(logits), free(ids), free(weights), free(route_ns), free(kernel_ns), free(ratio);
    free(stats_ns), free(stats_ratio), free(prob_sums), free(logsumexp);
    return code;
}

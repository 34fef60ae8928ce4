/* moert bench softmax-topk: the fused gate kernel against, in the same run,
 * - a naive baseline: a 3-pass softmax into a tokens x experts buffer, then k argmax
 *   scans and a renormalisation (what a straightforward C port of PyTorch's
 *   topk(softmax(x)) does), on the same threads;
 * - the memory floor: the bytes the kernel must read and write, divided by the copy
 *   bandwidth measured now with the same threads.
 * Logits are standard normal and stay warm in the last-level cache between calls. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "tools/cli.h"

static const char help[] =
    "usage: moert bench softmax-topk [options]\n"
    "\n"
    "  --tokens T        tokens (rows of logits), default 16384\n"
    "  --experts E       experts per row, default 64\n"
    "  --k K             experts chosen per token, default 8\n"
    "  --mode M          post | pre | pre-renorm | sigmoid | sigmoid-renorm, default post\n"
    "  --threads N       threads for the kernel, the baseline and the floor, default 1\n"
    "  --isa X           scalar | avx2 | avx512, default the variant moert chose\n"
    "  --samples S       timing samples (median is reported), default 7\n"
    "  --seed S          seed of the logits, default 1\n"
    "  --no-naive        skip the naive baseline\n"
    "  --json            also print one JSON object on the last line\n"
    "\n"
    "Reports ns/token and tokens/s of the fused kernel, and its speed-up over the naive\n"
    "baseline and its ratio to the memory floor, all measured in this run.\n";

typedef struct gate_ctx {
    moert_topk_gate_params params;
    const float *logits;
    size_t tokens, experts;
    moert_topk_gate_output out;
    moert_status status;
} gate_ctx;

static void run_fused(void *arg) {
    gate_ctx *g = arg;
    g->status = moert_topk_gate(&g->params, g->logits, g->tokens, g->experts, &g->out);
}

typedef struct naive_ctx {
    const float *logits;
    size_t tokens, experts;
    int k, threads;
    float *probs; /* [tokens, experts] */
    int32_t *ids;
    float *weights;
} naive_ctx;

static void run_naive(void *arg) {
    naive_ctx *n = arg;
    const size_t E = n->experts;
    const int k = n->k;
#pragma omp parallel for num_threads(n->threads) schedule(static)
    for (size_t t = 0; t < n->tokens; t++) {
        const float *x = n->logits + t * E;
        float *p = n->probs + t * E;
        float m = -INFINITY;
        for (size_t e = 0; e < E; e++) m = x[e] > m ? x[e] : m;
        float s = 0.0f;
        for (size_t e = 0; e < E; e++) {
            p[e] = expf(x[e] - m);
            s += p[e];
        }
        for (size_t e = 0; e < E; e++) p[e] /= s;
        int32_t *ids = n->ids + t * (size_t)k;
        float *w = n->weights + t * (size_t)k;
        float sum = 0.0f;
        for (int j = 0; j < k; j++) {
            size_t best = 0;
            for (size_t e = 1; e < E; e++)
                if (p[e] > p[best]) best = e;
            ids[j] = (int32_t)best;
            w[j] = p[best];
            sum += w[j];
            p[best] = -1.0f; /* taken */
        }
        for (int j = 0; j < k; j++) w[j] /= sum;
    }
}

static int parse_mode(const char *text, moert_topk_gate_params *p) {
    p->score = MOERT_SCORE_SOFTMAX;
    p->softmax_order = MOERT_SOFTMAX_POST;
    p->renormalize = 0;
    if (strcmp(text, "post") == 0) return CLI_OK;
    if (strcmp(text, "pre") == 0 || strcmp(text, "pre-renorm") == 0) {
        p->softmax_order = MOERT_SOFTMAX_PRE;
        p->renormalize = strcmp(text, "pre-renorm") == 0;
        return CLI_OK;
    }
    if (strcmp(text, "sigmoid") == 0 || strcmp(text, "sigmoid-renorm") == 0) {
        p->score = MOERT_SCORE_SIGMOID;
        p->renormalize = strcmp(text, "sigmoid-renorm") == 0;
        return CLI_OK;
    }
    return cli_fail(CLI_USAGE, "--mode: '%s' is not post, pre, pre-renorm, sigmoid or sigmoid-renorm",
                    text);
}

int bench_softmax_topk(int argc, char **argv) {
    enum { OPT_TOKENS = 256, OPT_EXPERTS, OPT_K, OPT_MODE, OPT_THREADS, OPT_ISA, OPT_SAMPLES,
           OPT_SEED, OPT_NO_NAIVE, OPT_JSON };
    static const struct option options[] = {
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"experts", required_argument, NULL, OPT_EXPERTS},
        {"k", required_argument, NULL, OPT_K},
        {"mode", required_argument, NULL, OPT_MODE},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"isa", required_argument, NULL, OPT_ISA},
        {"samples", required_argument, NULL, OPT_SAMPLES},
        {"seed", required_argument, NULL, OPT_SEED},
        {"no-naive", no_argument, NULL, OPT_NO_NAIVE},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    size_t tokens = 16384, experts = 64, seed = 1;
    int k = 8, threads = 1, samples = 7, json = 0, naive = 1, rc;
    const char *mode = "post";
    moert_topk_gate_params params = moert_topk_gate_params_default();

    int opt;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        rc = CLI_OK;
        switch (opt) {
        case 'h': fputs(help, stdout); return CLI_OK;
        case OPT_TOKENS: rc = cli_parse_size("--tokens", optarg, 1, (size_t)1 << 26, &tokens); break;
        case OPT_EXPERTS:
            rc = cli_parse_size("--experts", optarg, 1, MOERT_MAX_EXPERTS, &experts);
            break;
        case OPT_K: rc = cli_parse_int("--k", optarg, 1, MOERT_MAX_EXPERTS, &k); break;
        case OPT_MODE: mode = optarg; break;
        case OPT_THREADS: rc = cli_parse_int("--threads", optarg, 1, 1024, &threads); break;
        case OPT_ISA:
            if (moert_isa_parse(optarg, &params.isa) != MOERT_OK)
                rc = cli_fail(CLI_USAGE, "--isa: %s", moert_last_error());
            break;
        case OPT_SAMPLES: rc = cli_parse_int("--samples", optarg, 1, 101, &samples); break;
        case OPT_SEED: rc = cli_parse_size("--seed", optarg, 0, SIZE_MAX, &seed); break;
        case OPT_NO_NAIVE: naive = 0; break;
        case OPT_JSON: json = 1; break;
        default: return cli_usage_error("bench softmax-topk", "unknown option or missing value");
        }
        if (rc != CLI_OK) return rc;
    }
    if (optind < argc) return cli_usage_error("bench softmax-topk", "unexpected argument");
    if ((size_t)k > experts) return cli_fail(CLI_USAGE, "--k: k=%d exceeds --experts %zu", k, experts);
    if ((rc = parse_mode(mode, &params)) != CLI_OK) return rc;
    params.k = k;
    params.threads = threads;
    moert_isa isa = params.isa;
    if (isa == MOERT_ISA_AUTO) {
        moert_status st = moert_isa_active(&isa);
        if (st != MOERT_OK) return cli_fail_status(st, "kernel variant");
    } else if (moert_isa_check(isa) != MOERT_OK) {
        return cli_fail(CLI_FAIL, "--isa: %s", moert_last_error());
    }

    float *logits = malloc(tokens * experts * sizeof(float));
    int32_t *ids = malloc(tokens * (size_t)k * sizeof(int32_t));
    float *weights = malloc(tokens * (size_t)k * sizeof(float));
    float *probs = naive ? malloc(tokens * experts * sizeof(float)) : NULL;
    if (!logits || !ids || !weights || (naive && !probs)) {
        free(logits), free(ids), free(weights), free(probs);
        return cli_fail(CLI_FAIL, "cannot allocate the benchmark's buffers");
    }
    bench_fill_gaussian(logits, tokens * experts, (uint64_t)seed);

    gate_ctx g = {params, logits, tokens, experts, {ids, weights, NULL, NULL}, MOERT_OK};
    double fused_s = bench_seconds_per_call(run_fused, &g, samples, 0.05);
    if (g.status != MOERT_OK) {
        free(logits), free(ids), free(weights), free(probs);
        return cli_fail_status(g.status, "softmax-topk");
    }
    double naive_s = 0.0;
    if (naive) {
        naive_ctx n = {logits, tokens, experts, k, threads, probs, ids, weights};
        naive_s = bench_seconds_per_call(run_naive, &n, samples < 5 ? samples : 5, 0.05);
    }
    const double copy_gbs = bench_copy_bandwidth((size_t)256 << 20, threads, 3);
    const double bytes_per_token = (double)experts * sizeof(float) + (double)k * 8.0;

    const double fused_ns = fused_s * 1e9 / (double)tokens;
    const double naive_ns = naive_s * 1e9 / (double)tokens;
    const double floor_ns = bytes_per_token / copy_gbs;
    printf("moert bench softmax-topk: tokens=%zu experts=%d k=%d mode=%s threads=%d variant=%s\n",
           tokens, (int)experts, k, mode, threads, moert_isa_name(isa));
    printf("  fused  %10.2f ns/token %10.2f M tokens/s\n", fused_ns, 1e3 / fused_ns);
    if (naive)
        printf("  naive  %10.2f ns/token  (fused is %.1fx faster)\n", naive_ns, naive_ns / fused_ns);
    printf("  floor  %10.2f ns/token  (%.0f bytes/token at %.1f GB/s copy; fused is %.2fx the floor)\n",
           floor_ns, bytes_per_token, copy_gbs, fused_ns / floor_ns);

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "benchmark", "softmax-topk");
        cJSON_AddStringToObject(o, "variant", moert_isa_name(isa));
        cJSON_AddStringToObject(o, "mode", mode);
        cJSON_AddNumberToObject(o, "tokens", (double)tokens);
        cJSON_AddNumberToObject(o, "experts", (double)experts);
        cJSON_AddNumberToObject(o, "k", k);
        cJSON_AddNumberToObject(o, "threads", threads);
        cJSON_AddNumberToObject(o, "ns_per_token", fused_ns);
        cJSON_AddNumberToObject(o, "tokens_per_s", 1e9 / fused_ns);
        if (naive) {
            cJSON_AddNumberToObject(o, "naive_ns_per_token", naive_ns);
            cJSON_AddNumberToObject(o, "speedup_vs_naive", naive_ns / fused_ns);
        } else {
            cJSON_AddNullToObject(o, "naive_ns_per_token");
            cJSON_AddNullToObject(o, "speedup_vs_naive");
        }
        cJSON_AddNumberToObject(o, "floor_ns_per_token", floor_ns);
        cJSON_AddNumberToObject(o, "ratio_to_floor", fused_ns / floor_ns);
        cJSON_AddNumberToObject(o, "copy_gb_per_s", copy_gbs);
        char *text = cJSON_PrintUnformatted(o);
        if (text) puts(text);
        cJSON_free(text);
        cJSON_Delete(o);
    }
    free(logits), free(ids), free(weights), free(probs);
    return CLI_OK;
}

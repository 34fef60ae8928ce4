/* moert bench softmax-topk: the fused gate kernel against, in the same run,
 * - a naive baseline: a 3-pass softmax into a tokens x experts buffer, then k argmax
 *   scans and a renormalisation (what a straightforward C port of PyTorch's
 *   topk(softmax(x)) does), on the same threads;
 * - the memory floor: the bytes the kernel must read and write, divided by the copy
 *   bandwidth (memcpy of 256 MiB, bytes read plus written) measured with the same threads.
 * The three are measured in interleaved rounds, so a noisy neighbour slows all of them
 * alike; each reported figure is the median over rounds, each ratio the median of the
 * per-round ratios. Logits are standard normal and stay as warm as the cache allows. */
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
    "  --rounds R        interleaved rounds (medians are reported), default 5\n"
    "  --scaling         also time the kernel on 1 thread in each round, and report the\n"
    "                    speed-up of --threads N over it\n"
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
    enum { OPT_TOKENS = 256, OPT_EXPERTS, OPT_K, OPT_MODE, OPT_THREADS, OPT_ISA, OPT_ROUNDS,
           OPT_SEED, OPT_NO_NAIVE, OPT_JSON, OPT_SCALING };
    static const struct option options[] = {
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"experts", required_argument, NULL, OPT_EXPERTS},
        {"k", required_argument, NULL, OPT_K},
        {"mode", required_argument, NULL, OPT_MODE},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"isa", required_argument, NULL, OPT_ISA},
        {"rounds", required_argument, NULL, OPT_ROUNDS},
        {"scaling", no_argument, NULL, OPT_SCALING},
        {"seed", required_argument, NULL, OPT_SEED},
        {"no-naive", no_argument, NULL, OPT_NO_NAIVE},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    size_t tokens = 16384, experts = 64, seed = 1;
    int k = 8, threads = 1, rounds = 5, json = 0, naive = 1, scaling = 0, rc;
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
        case OPT_ROUNDS: rc = cli_parse_int("--rounds", optarg, 1, 101, &rounds); break;
        case OPT_SCALING: scaling = 1; break;
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
    gate_ctx g1 = g;
    g1.params.threads = 1;
    naive_ctx n = {logits, tokens, experts, k, threads, probs, ids, weights};
    double *fused_ns = calloc((size_t)rounds, sizeof(double)), *fused1_ns = calloc((size_t)rounds, sizeof(double));
    double *naive_ns = calloc((size_t)rounds, sizeof(double)), *floor_ns = calloc((size_t)rounds, sizeof(double));
    double *copy_gbs = calloc((size_t)rounds, sizeof(double)), *speedup = calloc((size_t)rounds, sizeof(double));
    double *to_floor = calloc((size_t)rounds, sizeof(double)), *scaled = calloc((size_t)rounds, sizeof(double));
    const double bytes_per_token = (double)experts * sizeof(float) + (double)k * 8.0;
    run_fused(&g); /* warm caches and pages, and check the arguments once */
    if (g.status != MOERT_OK) rc = cli_fail_status(g.status, "softmax-topk");
    for (int r = 0; r < rounds && rc == CLI_OK; r++) {
        fused_ns[r] = bench_sample(run_fused, &g, 0.05) * 1e9 / (double)tokens;
        if (scaling) fused1_ns[r] = bench_sample(run_fused, &g1, 0.05) * 1e9 / (double)tokens;
        if (naive) naive_ns[r] = bench_sample(run_naive, &n, 0.05) * 1e9 / (double)tokens;
        copy_gbs[r] = bench_copy_bandwidth((size_t)256 << 20, threads, 1);
        floor_ns[r] = bytes_per_token / copy_gbs[r];
        speedup[r] = naive_ns[r] / fused_ns[r];
        to_floor[r] = fused_ns[r] / floor_ns[r];
        scaled[r] = fused1_ns[r] / fused_ns[r];
    }
    if (rc == CLI_OK && g.status != MOERT_OK) rc = cli_fail_status(g.status, "softmax-topk");
    const double m_fused = bench_median(fused_ns, rounds), m_naive = bench_median(naive_ns, rounds);
    const double m_floor = bench_median(floor_ns, rounds), m_copy = bench_median(copy_gbs, rounds);
    const double m_speedup = bench_median(speedup, rounds), m_to_floor = bench_median(to_floor, rounds);
    const double m_fused1 = bench_median(fused1_ns, rounds), m_scaled = bench_median(scaled, rounds);
    free(fused_ns), free(fused1_ns), free(naive_ns), free(floor_ns), free(copy_gbs), free(speedup);
    free(to_floor), free(scaled);
    if (rc != CLI_OK) {
        free(logits), free(ids), free(weights), free(probs);
        return rc;
    }

    printf("moert bench softmax-topk: tokens=%zu experts=%d k=%d mode=%s threads=%d variant=%s rounds=%d\n",
           tokens, (int)experts, k, mode, threads, moert_isa_name(isa), rounds);
    printf("  fused  %10.2f ns/token %10.2f M tokens/s\n", m_fused, 1e3 / m_fused);
    if (scaling)
        printf("  1 thread %8.2f ns/token  (%d threads are %.2fx faster)\n", m_fused1, threads, m_scaled);
    if (naive)
        printf("  naive  %10.2f ns/token  (fused is %.1fx faster)\n", m_naive, m_speedup);
    printf("  floor  %10.2f ns/token  (%.0f bytes/token at %.1f GB/s copy; fused is %.2fx the floor)\n",
           m_floor, bytes_per_token, m_copy, m_to_floor);

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "benchmark", "softmax-topk");
        cJSON_AddStringToObject(o, "variant", moert_isa_name(isa));
        cJSON_AddStringToObject(o, "mode", mode);
        cJSON_AddNumberToObject(o, "tokens", (double)tokens);
        cJSON_AddNumberToObject(o, "experts", (double)experts);
        cJSON_AddNumberToObject(o, "k", k);
        cJSON_AddNumberToObject(o, "threads", threads);
        cJSON_AddNumberToObject(o, "rounds", rounds);
        cJSON_AddNumberToObject(o, "ns_per_token", m_fused);
        cJSON_AddNumberToObject(o, "tokens_per_s", 1e9 / m_fused);
        if (naive) {
            cJSON_AddNumberToObject(o, "naive_ns_per_token", m_naive);
            cJSON_AddNumberToObject(o, "speedup_vs_naive", m_speedup);
        } else {
            cJSON_AddNullToObject(o, "naive_ns_per_token");
            cJSON_AddNullToObject(o, "speedup_vs_naive");
        }
        cJSON_AddNumberToObject(o, "floor_ns_per_token", m_floor);
        cJSON_AddNumberToObject(o, "ratio_to_floor", m_to_floor);
        cJSON_AddNumberToObject(o, "copy_gb_per_s", m_copy);
        if (scaling) {
            cJSON_AddNumberToObject(o, "one_thread_ns_per_token", m_fused1);
            cJSON_AddNumberToObject(o, "speedup_vs_1_thread", m_scaled);
        }
        char *text = cJSON_PrintUnformatted(o);
        if (text) puts(text);
        cJSON_free(text);
        cJSON_Delete(o);
    }
    free(logits), free(ids), free(weights), free(probs);
    return CLI_OK;
}

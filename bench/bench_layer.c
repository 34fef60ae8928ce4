/* moert bench dispatch and moert bench layer.
 *
 * dispatch: moert_dispatch and moert_combine against memcpy of the same bytes, in
 * interleaved rounds (bytes read plus written, as the memory floors count them).
 * layer: the MoE layer's stages on a model's shape; the expert stage's GEMM rate against
 * the GEMM library's own rate (oneDNN with all the threads, one call per expert GEMM) on
 * the same per-expert shapes, and the share of the layer that is not expert GEMMs. */
#include <cjson/cJSON.h>
#include <dnnl.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "tools/cli.h"

/* ---- dispatch and combine ------------------------------------------------------------------ */

typedef struct copy_ctx {
    const moert_plan *plan;
    const void *x;
    void *rows, *out;
    float *eout;
    size_t d, bytes;
    moert_dtype dtype;
    int threads;
    const unsigned char *src;
    unsigned char *dst;
} copy_ctx;

static void run_dispatch(void *arg) {
    copy_ctx *c = arg;
    moert_dispatch(c->plan, c->x, c->d, c->dtype, c->rows, c->threads);
}

static void run_combine(void *arg) {
    copy_ctx *c = arg;
    moert_combine(c->plan, c->eout, c->d, c->dtype, c->out, c->threads);
}

static void run_memcpy(void *arg) {
    copy_ctx *c = arg;
#pragma omp parallel num_threads(c->threads)
    {
        const size_t n = (size_t)omp_get_num_threads(), i = (size_t)omp_get_thread_num();
        const size_t at = c->bytes * i / n, end = c->bytes * (i + 1) / n;
        memcpy(c->dst + at, c->src + at, end - at);
    }
}

static const char dispatch_help[] =
    "usage: moert bench dispatch [--tokens T] [--d-model D] [--experts E] [--k K] [--dtype f32|bf16]\n"
    "                            [--threads N] [--rounds R] [--json]\n"
    "\n"
    "Times moert_dispatch (gather each slot's row, expert-major) and moert_combine (each\n"
    "token's weighted sum of its experts' f32 outputs) on a top-k plan of random logits,\n"
    "and memcpy of the same number of bytes on the same threads, in interleaved rounds.\n"
    "Rates count bytes read plus bytes written. Defaults: T 4096, d 4096, E 64, k 2, f32,\n"
    "2 threads, 5 rounds.\n";

int bench_dispatch(int argc, char **argv) {
    enum { OPT_TOKENS = 256, OPT_D, OPT_E, OPT_K, OPT_DTYPE, OPT_THREADS, OPT_ROUNDS, OPT_JSON };
    static const struct option options[] = {
        {"tokens", required_argument, NULL, OPT_TOKENS}, {"d-model", required_argument, NULL, OPT_D},
        {"experts", required_argument, NULL, OPT_E},     {"k", required_argument, NULL, OPT_K},
        {"dtype", required_argument, NULL, OPT_DTYPE},   {"threads", required_argument, NULL, OPT_THREADS},
        {"rounds", required_argument, NULL, OPT_ROUNDS}, {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},                {NULL, 0, NULL, 0},
    };
    size_t T = 4096, d = 4096, E = 64;
    int k = 2, threads = 2, rounds = 5, json = 0, opt, code;
    moert_dtype dtype = MOERT_DTYPE_F32;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        code = CLI_OK;
        switch (opt) {
        case 'h': fputs(dispatch_help, stdout); return CLI_OK;
        case OPT_TOKENS: code = cli_parse_size("--tokens", optarg, 1, (size_t)1 << 24, &T); break;
        case OPT_D: code = cli_parse_size("--d-model", optarg, 1, (size_t)1 << 16, &d); break;
        case OPT_E: code = cli_parse_size("--experts", optarg, 1, 4096, &E); break;
        case OPT_K: code = cli_parse_int("--k", optarg, 1, 64, &k); break;
        case OPT_DTYPE: code = cli_parse_dtype("--dtype", optarg, &dtype); break;
        case OPT_THREADS: code = cli_parse_int("--threads", optarg, 1, 1024, &threads); break;
        case OPT_ROUNDS: code = cli_parse_int("--rounds", optarg, 1, 101, &rounds); break;
        case OPT_JSON: json = 1; break;
        default: return cli_usage_error("bench dispatch", "unknown option or missing value");
        }
        if (code != CLI_OK) return code;
    }
    if (optind < argc) return cli_usage_error("bench dispatch", "unexpected argument");
    if ((size_t)k > E) return cli_fail(CLI_USAGE, "--k %d exceeds --experts %zu", k, E);

    const size_t elem = dtype == MOERT_DTYPE_BF16 ? 2 : 4, slots = T * (size_t)k;
    float *logits = malloc(T * E * sizeof(float));
    void *x = malloc(T * d * elem), *rows = malloc(slots * d * elem), *out = malloc(T * d * elem);
    float *eout = malloc(slots * d * sizeof(float));
    const size_t copy_bytes = slots * d * elem; /* the larger of the two: dispatch's copy */
    unsigned char *src = malloc(copy_bytes), *dst = malloc(copy_bytes);
    double *t_dispatch = calloc((size_t)rounds, sizeof(double)), *t_combine = calloc((size_t)rounds, sizeof(double));
    double *t_copy = calloc((size_t)rounds, sizeof(double));
    moert_router *router = NULL;
    moert_plan *plan = NULL;
    if (!logits || !x || !rows || !out || !eout || !src || !dst || !t_dispatch || !t_combine || !t_copy)
        return cli_fail(CLI_FAIL, "bench dispatch: cannot allocate the buffers");
    bench_fill_gaussian(logits, T * E, 3);
    bench_fill_gaussian(eout, slots * d, 4);
    memset(x, 0x3c, T * d * elem); /* finite in both dtypes */
    memset(src, 1, copy_bytes), memset(dst, 2, copy_bytes), memset(rows, 0, slots * d * elem), memset(out, 0, T * d * elem);
    moert_router_config rc = moert_router_config_default();
    rc.k = k, rc.threads = threads;
    moert_status st = moert_router_create(&rc, E, &router);
    if (st == MOERT_OK) st = moert_plan_create(&plan);
    if (st == MOERT_OK) st = moert_router_route(router, logits, T, plan);
    if (st != MOERT_OK) return cli_fail_status(st, "bench dispatch");

    copy_ctx c = {plan, x, rows, out, eout, d, copy_bytes, dtype, threads, src, dst};
    const double dispatch_bytes = 2.0 * (double)slots * (double)d * (double)elem;
    const double combine_bytes = (double)slots * (double)d * 4.0 + (double)T * (double)d * (double)elem;
    const double copy_traffic = 2.0 * (double)copy_bytes;
    run_dispatch(&c), run_combine(&c), run_memcpy(&c); /* warm up */
    double r_dispatch[101], r_combine[101];
    for (int i = 0; i < rounds; i++) {
        t_dispatch[i] = bench_sample(run_dispatch, &c, 0.1);
        t_copy[i] = bench_sample(run_memcpy, &c, 0.1);
        t_combine[i] = bench_sample(run_combine, &c, 0.1);
        const double copy_rate = copy_traffic / t_copy[i];
        r_dispatch[i] = dispatch_bytes / t_dispatch[i] / copy_rate;
        r_combine[i] = combine_bytes / t_combine[i] / copy_rate;
    }
    const double gd = dispatch_bytes / bench_median(t_dispatch, rounds) / 1e9;
    const double gc = combine_bytes / bench_median(t_combine, rounds) / 1e9;
    const double gm = copy_traffic / bench_median(t_copy, rounds) / 1e9;
    const double rd = bench_median(r_dispatch, rounds), rcm = bench_median(r_combine, rounds);
    printf("dispatch/combine: T=%zu d=%zu E=%zu k=%d %s, %d threads, %d rounds (medians)\n", T, d, E, k,
           dtype == MOERT_DTYPE_BF16 ? "bf16" : "f32", threads, rounds);
    printf("  memcpy    %6.1f GB/s\n", gm);
    printf("  dispatch  %6.1f GB/s  (%.2f x memcpy)\n", gd, rd);
    printf("  combine   %6.1f GB/s  (%.2f x memcpy)\n", gc, rcm);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "dtype", dtype == MOERT_DTYPE_BF16 ? "bf16" : "f32");
        cJSON_AddNumberToObject(o, "threads", threads);
        cJSON_AddNumberToObject(o, "memcpy_gbs", gm);
        cJSON_AddNumberToObject(o, "dispatch_gbs", gd);
        cJSON_AddNumberToObject(o, "combine_gbs", gc);
        cJSON_AddNumberToObject(o, "dispatch_ratio_to_memcpy", rd);
        cJSON_AddNumberToObject(o, "combine_ratio_to_memcpy", rcm);
        cli_print_json_line(o);
    }
    moert_plan_destroy(plan);
    moert_router_destroy(router);
    free(logits), free(x), free(rows), free(out), free(eout), free(src), free(dst);
    free(t_dispatch), free(t_combine), free(t_copy);
    return CLI_OK;
}

/* ---- the layer ---------------------------------------------------------------------------------- */

static const char layer_help[] =
    "usage: moert bench layer [--model deepseek|mixtral] [--tokens T] [--dtype f32|bf16]\n"
    "                         [--threads N] [--workers W] [--rounds R] [--bf16-convert] [--json]\n"
    "\n"
    "Runs the MoE layer of a model's shape (deepseek: d 2048, f 1408, E 64, k 6; mixtral:\n"
    "d 2048, f 5632, E 8, k 2; T 2048 by default; random weights) and, in each round, one\n"
    "forward pass and then the GEMM library alone on the same per-expert shapes (for each\n"
    "expert with n rows: [n, d] x [d, 2f] and [n, f] x [f, d], oneDNN with all the threads).\n"
    "Reports the stage times, the expert stage's rate against the library's own, and the\n"
    "share of the layer outside the expert GEMMs (gate, route, dispatch, combine).\n";

static float *bench_random(size_t n, uint64_t seed, float scale) {
    float *p = malloc(n * sizeof(float));
    if (p == NULL) return NULL;
    bench_fill_gaussian(p, n, seed);
    for (size_t i = 0; i < n; i++) p[i] *= scale;
    return p;
}

int bench_layer(int argc, char **argv) {
    enum { OPT_MODEL = 256, OPT_TOKENS, OPT_DTYPE, OPT_THREADS, OPT_WORKERS, OPT_ROUNDS, OPT_JSON, OPT_CONVERT };
    static const struct option options[] = {
        {"model", required_argument, NULL, OPT_MODEL},     {"tokens", required_argument, NULL, OPT_TOKENS},
        {"dtype", required_argument, NULL, OPT_DTYPE},     {"threads", required_argument, NULL, OPT_THREADS},
        {"workers", required_argument, NULL, OPT_WORKERS}, {"rounds", required_argument, NULL, OPT_ROUNDS},
        {"json", no_argument, NULL, OPT_JSON},             {"help", no_argument, NULL, 'h'},
        {"bf16-convert", no_argument, NULL, OPT_CONVERT},  {NULL, 0, NULL, 0},
    };
    size_t T = 2048, d = 2048, f = 1408, E = 64;
    int k = 6, threads = omp_get_max_threads(), workers = 0, rounds = 3, json = 0, convert = 0, opt, code;
    const char *model = "deepseek";
    moert_dtype dtype = MOERT_DTYPE_F32;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        code = CLI_OK;
        switch (opt) {
        case 'h': fputs(layer_help, stdout); return CLI_OK;
        case OPT_MODEL:
            model = optarg;
            if (strcmp(optarg, "deepseek") == 0) d = 2048, f = 1408, E = 64, k = 6;
            else if (strcmp(optarg, "mixtral") == 0) d = 2048, f = 5632, E = 8, k = 2;
            else code = cli_fail(CLI_USAGE, "--model: '%s' is not deepseek or mixtral", optarg);
            break;
        case OPT_TOKENS: code = cli_parse_size("--tokens", optarg, 1, (size_t)1 << 20, &T); break;
        case OPT_DTYPE: code = cli_parse_dtype("--dtype", optarg, &dtype); break;
        case OPT_THREADS: code = cli_parse_int("--threads", optarg, 1, 1024, &threads); break;
        case OPT_WORKERS: code = cli_parse_int("--workers", optarg, 1, 1024, &workers); break;
        case OPT_ROUNDS: code = cli_parse_int("--rounds", optarg, 1, 101, &rounds); break;
        case OPT_JSON: json = 1; break;
        case OPT_CONVERT: convert = 1; break;
        default: return cli_usage_error("bench layer", "unknown option or missing value");
        }
        if (code != CLI_OK) return code;
    }
    if (optind < argc) return cli_usage_error("bench layer", "unexpected argument");

    moert_layer_config c = moert_layer_config_default();
    c.d_model = d, c.d_ff = f, c.experts = E, c.dtype = dtype, c.threads = threads, c.workers = workers;
    c.router.k = k;
    c.convert_bf16 = convert;
    moert_layer *L = NULL;
    moert_status st = moert_layer_create(&c, &L);
    if (st != MOERT_OK) return cli_fail_status(st, "bench layer");
    const size_t elem = dtype == MOERT_DTYPE_BF16 ? 2 : 4;
    float *gate = bench_random(d * E, 1, 1.0f / sqrtf((float)d));
    float *w13 = bench_random(d * 2 * f, 2, 1.0f / sqrtf((float)d)), *w2 = bench_random(f * d, 3, 1.0f / sqrtf((float)f));
    float *xf = bench_random(T * d, 4, 1.0f);
    void *x = malloc(T * d * elem), *out = malloc(T * d * elem);
    float *a = malloc(T * (size_t)k * (d > f ? d : f) * sizeof(float)), *h = malloc(T * (size_t)k * 2 * f * sizeof(float));
    float *w1 = malloc(d * f * sizeof(float)), *w3 = malloc(d * f * sizeof(float)), *o2 = malloc(T * (size_t)k * d * sizeof(float));
    if (!gate || !w13 || !w2 || !xf || !x || !out || !a || !h || !w1 || !w3 || !o2) {
        moert_layer_destroy(L);
        return cli_fail(CLI_FAIL, "bench layer: cannot allocate the buffers");
    }
    /* Every expert gets the same weights: the GEMMs' speed does not depend on them. */
    for (size_t i = 0; i < d; i++) memcpy(w1 + i * f, w13 + i * 2 * f, f * 4), memcpy(w3 + i * f, w13 + i * 2 * f + f, f * 4);
    st = moert_layer_set_gate(L, gate);
    for (size_t e = 0; st == MOERT_OK && e < E; e++) st = moert_layer_set_expert(L, e, w1, w3, w2);
    if (dtype == MOERT_DTYPE_F32) memcpy(x, xf, T * d * 4);
    else
        for (size_t i = 0; i < T * d; i++) {
            uint32_t bits;
            memcpy(&bits, &xf[i], 4);
            ((uint16_t *)x)[i] = (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
        }
    if (st == MOERT_OK) st = moert_layer_forward(L, x, T, out); /* warm-up */
    if (st != MOERT_OK) {
        moert_layer_destroy(L);
        return cli_fail_status(st, "bench layer");
    }
    memset(a, 0, T * (size_t)k * (d > f ? d : f) * sizeof(float));
    double *ratio = calloc((size_t)rounds, sizeof(double)), *share = calloc((size_t)rounds, sizeof(double));
    double *lib_rate = calloc((size_t)rounds, sizeof(double)), *layer_rate = calloc((size_t)rounds, sizeof(double));
    moert_layer_timings sum = {0};
    double flops = 0;
    for (int r = 0; r < rounds && st == MOERT_OK; r++) {
        st = moert_layer_forward(L, x, T, out);
        moert_layer_timings t;
        moert_layer_get_timings(L, &t);
        moert_plan_stats s;
        moert_plan_get_stats(moert_layer_plan(L), &s);
        /* The library alone, each expert's two GEMMs with all the threads (as a user would
         * call it), on f32 operands of the same shapes. */
        const int saved = omp_get_max_threads();
        omp_set_num_threads(threads);
        const double t0 = bench_now();
        for (size_t e = 0; e < E; e++) {
            const dnnl_dim_t n = s.expert_counts[e];
            if (n == 0) continue;
            dnnl_sgemm('N', 'N', n, (dnnl_dim_t)(2 * f), (dnnl_dim_t)d, 1.0f, a, (dnnl_dim_t)d, w13, (dnnl_dim_t)(2 * f),
                       0.0f, h, (dnnl_dim_t)(2 * f));
            dnnl_sgemm('N', 'N', n, (dnnl_dim_t)d, (dnnl_dim_t)f, 1.0f, h, (dnnl_dim_t)(2 * f), w2, (dnnl_dim_t)d, 0.0f,
                       o2, (dnnl_dim_t)d);
        }
        const double lib = bench_now() - t0;
        omp_set_num_threads(saved);
        flops = 6.0 * (double)s.assignments * (double)d * (double)f;
        lib_rate[r] = flops / lib / 1e9;
        layer_rate[r] = flops / t.experts / 1e9;
        ratio[r] = layer_rate[r] / lib_rate[r];
        share[r] = (t.total - t.experts) / t.total;
        sum.gate += t.gate, sum.route += t.route, sum.dispatch += t.dispatch, sum.experts += t.experts;
        sum.combine += t.combine, sum.total += t.total;
    }
    if (st != MOERT_OK) {
        moert_layer_destroy(L);
        return cli_fail_status(st, "bench layer");
    }
    const double m = 1e3 / rounds;
    const double mr = bench_median(ratio, rounds), ms = bench_median(share, rounds);
    const double ml = bench_median(lib_rate, rounds), my = bench_median(layer_rate, rounds);
    printf("layer %s: T=%zu d=%zu f=%zu E=%zu k=%d %s, %d threads, %d workers; %s\n", model, T, d, f, E, k,
           dtype == MOERT_DTYPE_BF16 ? "bf16" : "f32", threads, moert_layer_workers(L), moert_gemm_library());
    printf("  stages, ms (mean of %d): gate %.2f  route %.2f  dispatch %.2f  experts %.2f  combine %.2f  total %.2f\n",
           rounds, sum.gate * m, sum.route * m, sum.dispatch * m, sum.experts * m, sum.combine * m, sum.total * m);
    printf("  %.0f tokens/s\n", T / (sum.total / rounds));
    printf("  expert stage %.1f GFLOP/s, the library alone (f32 dnnl_sgemm) %.1f GFLOP/s on the same shapes: %.2f x (median)\n", my, ml,
           mr);
    printf("  outside the expert stage (gate, route, dispatch, combine): %.1f%% of the layer (median)\n", 100 * ms);
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", model);
        cJSON_AddStringToObject(o, "dtype", dtype == MOERT_DTYPE_BF16 ? "bf16" : "f32");
        cJSON_AddNumberToObject(o, "tokens_per_s", T / (sum.total / rounds));
        const double stage[6] = {sum.gate, sum.route, sum.dispatch, sum.experts, sum.combine, sum.total};
        const char *names[6] = {"gate_ms", "route_ms", "dispatch_ms", "experts_ms", "combine_ms", "total_ms"};
        for (int i = 0; i < 6; i++) cJSON_AddNumberToObject(o, names[i], stage[i] * m);
        cJSON_AddNumberToObject(o, "expert_gflops", my);
        cJSON_AddNumberToObject(o, "library_gflops", ml);
        cJSON_AddNumberToObject(o, "expert_ratio_to_library", mr);
        cJSON_AddNumberToObject(o, "outside_experts_share", ms);
        cli_print_json_line(o);
    }
    moert_layer_destroy(L);
    free(gate), free(w13), free(w2), free(xf), free(x), free(out), free(a), free(h), free(w1), free(w3), free(o2);
    free(ratio), free(share), free(lib_rate), free(layer_rate);
    return CLI_OK;
}

/* moert layer: run the MoE layer on seeded random or given weights and inputs; print its
 * speed, the time of each stage and the balance; optionally check it against a double
 * reference and save everything needed to recompute it. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/bf16.h"
#include "common/error.h"
#include "tools/cli.h"
#include "tools/layer_ep.h"
#include "tools/layer_reference.h"
#include "tools/npy.h"
#include "tools/plan_io.h"
#include "tools/router_cli.h"
#include "tools/safetensors.h"

static const char layer_help[] =
    "usage: moert layer [options]\n"
    "\n"
    "Runs an MoE layer: gate (x W_gate), route, dispatch, experts, combine. Prints tokens/s,\n"
    "the mean time of each stage over --iters passes (after one warm-up pass) and the\n"
    "balance statistics of the last pass.\n"
    "\n"
    "  --tokens T            default 2048 (or the rows of --input)\n"
    "  --d-model D           default 2048 (or from the files)\n"
    "  --d-ff F              default 1408 (or from --weights)\n"
    "  --experts E           default 64 (or from --weights)\n"
    "  --expert KIND         swiglu (default) | synthetic\n"
    "  --synthetic-cost N    synthetic experts: multiply-adds per element, default 64\n"
    "  --dtype T             f32 (default) | bf16: hidden states and expert weights\n"
    "  --bf16-convert        bf16: convert to f32 for the f32 GEMM even where the CPU has\n"
    "                        bf16 arithmetic (`moert info` shows the bf16 path)\n"
    "  --workers W           NUMA workers, default one per node\n"
    "  --threads N           threads, default all\n"
    "  --chunk-rows N        rows per expert chunk claimed by a thread, default 128\n"
    "  --iters N             timed passes, default 3\n"
    "  --seed S              seed of the random weights and inputs, default 1\n"
    "  --weights FILE        safetensors: gate.weight [E, d], experts.{e}.w1.weight and\n"
    "                        experts.{e}.w3.weight [f, d], experts.{e}.w2.weight [d, f]\n"
    "                        (PyTorch Linear layout, the Mixtral names); F32, BF16 or F16\n"
    "  --weights-prefix P    prepended to every tensor name, e.g. model.layers.0.block_sparse_moe.\n"
    "  --input FILE.npy      hidden states x [T, d] (f16, f32 or f64)\n"
    "  --save DIR            write x.npy, gate.npy [d, E], w1.npy and w3.npy [E, d, f],\n"
    "                        w2.npy [E, f, d] (f32, as used), layer.safetensors (as\n"
    "                        --weights reads it), the plan files as `route` does, and\n"
    "                        out.npy [T, d]\n"
    "  --check               compare the output with a double-precision reference (each\n"
    "                        token's routed experts and weights, the FFN in double); fail if\n"
    "                        the largest per-token relative error exceeds 1e-4 (f32) or 2e-2\n"
    "                        (bf16)\n"
    "  --json                one JSON object on the last line\n"
    "  --ep P                expert parallelism over P MPI ranks: run as\n"
    "                        mpirun -np P moert layer --ep P [...]; rank r takes tokens\n"
    "                        [floor(r T / P), floor((r+1) T / P)) of the global batch, experts\n"
    "                        go in contiguous blocks; rank 0 prints every rank's stage times\n"
    "                        and their max/mean; --save: rank 0 gathers the whole batch and\n"
    "                        writes the files of the single-process run with --route-groups P\n"
    "\n"
    "routing options (as in `moert route`; default token choice, k = 6):\n" ROUTER_CLI_HELP;

enum {
    OPT_TOKENS = 256, OPT_D_MODEL, OPT_D_FF, OPT_EXPERTS, OPT_EXPERT, OPT_SYNTHETIC_COST, OPT_DTYPE, OPT_WORKERS,
    OPT_THREADS, OPT_CHUNK_ROWS, OPT_ITERS, OPT_SEED, OPT_WEIGHTS, OPT_WEIGHTS_PREFIX, OPT_INPUT, OPT_SAVE,
    OPT_CHECK, OPT_JSON, OPT_BF16_CONVERT, OPT_EP,
};

#define LAYER_MAX_DIM (1 << 20) /* d_model and d_ff, from options or files */

typedef struct layer_args {
    size_t tokens, d, f, experts;
    int given_tokens, given_d, given_f, given_experts;
    moert_expert_kind kind;
    int synthetic_cost;
    moert_dtype dtype;
    int workers, threads, iters;
    size_t chunk_rows;
    unsigned long long seed;
    const char *weights, *prefix, *input, *save;
    int check, json, bf16_convert, ep;
} layer_args;

/* The weights as float32, the layout the layer and the reference take. */
typedef struct layer_weights {
    float *gate;             /* [d, E] */
    float **w1, **w3, **w2;  /* [E]: [d, f], [d, f], [f, d] */
} layer_weights;

static void weights_free(layer_weights *w, size_t E) {
    for (size_t e = 0; w->w1 && e < E; e++) free(w->w1[e]), free(w->w3[e]), free(w->w2[e]);
    free(w->w1), free(w->w3), free(w->w2), free(w->gate);
    memset(w, 0, sizeof *w);
}

/* splitmix64: seeded, fast, the same stream everywhere. */
static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform with standard deviation `scale`. */
static float *random_array(uint64_t *s, size_t n, float scale) {
    float *p = malloc(n * sizeof(float));
    if (p == NULL) return NULL;
    const float half_width = scale * 1.7320508f;
    for (size_t i = 0; i < n; i++) p[i] = ((float)(mix(s) >> 40) * 0x1.0p-24f * 2.0f - 1.0f) * half_width;
    return p;
}

static int alloc_weight_tables(layer_weights *w, size_t E) {
    w->w1 = calloc(E, sizeof(float *)), w->w3 = calloc(E, sizeof(float *)), w->w2 = calloc(E, sizeof(float *));
    return w->w1 && w->w3 && w->w2;
}

static int random_weights(const layer_args *a, layer_weights *w) {
    uint64_t s = a->seed * 0x2545F4914F6CDD1Dull + 1;
    w->gate = random_array(&s, a->d * a->experts, 1.0f / sqrtf((float)a->d));
    if (w->gate == NULL || !alloc_weight_tables(w, a->experts)) return cli_fail(CLI_FAIL, "cannot allocate the weights");
    for (size_t e = 0; a->kind == MOERT_EXPERT_SWIGLU && e < a->experts; e++) {
        w->w1[e] = random_array(&s, a->d * a->f, 1.0f / sqrtf((float)a->d));
        w->w3[e] = random_array(&s, a->d * a->f, 1.0f / sqrtf((float)a->d));
        w->w2[e] = random_array(&s, a->f * a->d, 1.0f / sqrtf((float)a->f));
        if (!w->w1[e] || !w->w3[e] || !w->w2[e])
            return cli_fail(CLI_FAIL, "cannot allocate the weights of %zu experts of %zu x %zu", a->experts, a->d, a->f);
    }
    return CLI_OK;
}

/* in [rows, cols] -> out [cols, rows] */
static void transpose(const float *in, size_t rows, size_t cols, float *out) {
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) out[c * rows + r] = in[r * cols + c];
}

/* Reads a Linear weight [out_dim, in_dim] and stores it transposed, [in_dim, out_dim]. */
static moert_status read_linear(st_file *f, const char *prefix, const char *name, size_t out_dim, size_t in_dim,
                                float *scratch, float **dst) {
    char full[1024];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const size_t shape[2] = {out_dim, in_dim};
    MOERT_FORWARD_IF_ERROR(st_read_f32(f, full, 2, shape, scratch));
    *dst = malloc(out_dim * in_dim * sizeof(float));
    if (*dst == NULL) return moert_set_error(MOERT_ENOMEM, "cannot allocate %zu bytes for %s", out_dim * in_dim * 4, full);
    transpose(scratch, out_dim, in_dim, *dst);
    return MOERT_OK;
}

static int file_weights(layer_args *a, layer_weights *w) {
    st_file *f = NULL;
    moert_status st = st_open(a->weights, &f);
    if (st != MOERT_OK) return cli_fail_status(st, "--weights");
    char name[1024];
    /* The dimensions come from the file; options that were given must agree. */
    snprintf(name, sizeof name, "%sgate.weight", a->prefix);
    const st_tensor *gate = st_find(f, name);
    snprintf(name, sizeof name, "%sexperts.0.w1.weight", a->prefix);
    const st_tensor *w1 = st_find(f, name);
    int code = CLI_OK;
    if (gate == NULL || gate->ndim != 2)
        code = cli_fail(CLI_FAIL, "--weights: %s: no 2-D tensor '%sgate.weight'", a->weights, a->prefix);
    else if (a->kind == MOERT_EXPERT_SWIGLU && (w1 == NULL || w1->ndim != 2))
        code = cli_fail(CLI_FAIL, "--weights: %s: no 2-D tensor '%s'", a->weights, name);
    if (code == CLI_OK) {
        const size_t E = gate->shape[0], d = gate->shape[1], ff = w1 ? w1->shape[0] : a->f;
        if (E < 1 || E > MOERT_MAX_EXPERTS || d < 1 || d > LAYER_MAX_DIM || ff < 1 || ff > LAYER_MAX_DIM)
            code = cli_fail(CLI_FAIL, "--weights: %s holds E=%zu, d=%zu, f=%zu: outside 1..%d experts and 1..%d dims",
                            a->weights, E, d, ff, MOERT_MAX_EXPERTS, LAYER_MAX_DIM);
        else if ((a->given_experts && a->experts != E) || (a->given_d && a->d != d) ||
                 (a->given_f && a->kind == MOERT_EXPERT_SWIGLU && a->f != ff))
            code = cli_fail(CLI_USAGE, "--weights: %s holds E=%zu, d=%zu, f=%zu, which --experts, --d-model or --d-ff "
                            "contradict", a->weights, E, d, ff);
        a->experts = E, a->d = d, a->f = ff;
    }
    float *scratch = NULL;
    if (code == CLI_OK) {
        /* Both within LAYER_MAX_DIM (2^20) and MOERT_MAX_EXPERTS: the product fits. */
        const size_t big = a->d * (a->f > a->experts ? a->f : a->experts);
        scratch = malloc(big * sizeof(float));
        if (scratch == NULL || !alloc_weight_tables(w, a->experts))
            code = cli_fail(CLI_FAIL, "cannot allocate %zu bytes for the weights", big * sizeof(float));
    }
    if (code == CLI_OK) st = read_linear(f, a->prefix, "gate.weight", a->experts, a->d, scratch, &w->gate);
    for (size_t e = 0; code == CLI_OK && st == MOERT_OK && a->kind == MOERT_EXPERT_SWIGLU && e < a->experts; e++) {
        char n1[64], n3[64], n2[64];
        snprintf(n1, sizeof n1, "experts.%zu.w1.weight", e);
        snprintf(n3, sizeof n3, "experts.%zu.w3.weight", e);
        snprintf(n2, sizeof n2, "experts.%zu.w2.weight", e);
        st = read_linear(f, a->prefix, n1, a->f, a->d, scratch, &w->w1[e]);
        if (st == MOERT_OK) st = read_linear(f, a->prefix, n3, a->f, a->d, scratch, &w->w3[e]);
        if (st == MOERT_OK) st = read_linear(f, a->prefix, n2, a->d, a->f, scratch, &w->w2[e]);
    }
    if (code == CLI_OK && st != MOERT_OK) code = cli_fail_status(st, "--weights");
    free(scratch);
    st_close(f);
    return code;
}

/* The layer's own files in --save DIR. They are written as .NAME.partial and renamed
 * only when every file (the plan's included) was written, so a failed run leaves nothing
 * that looks valid; a failed run also removes what an earlier run left. */
static const char *const layer_files[] = {"x.npy", "gate.npy", "out.npy", "w1.npy", "w3.npy", "w2.npy",
                                          "layer.safetensors"};
enum { LAYER_FILES = sizeof layer_files / sizeof layer_files[0] };

static void save_path(char *path, size_t size, const char *dir, const char *name, int partial) {
    snprintf(path, size, partial ? "%s/.%s.partial" : "%s/%s", dir, name);
}

/* Removes the layer's files (final and partial) and the plan's from dir. */
static void save_remove_all(const char *dir) {
    char path[4096];
    for (int i = 0; i < LAYER_FILES; i++) {
        save_path(path, sizeof path, dir, layer_files[i], 0);
        unlink(path);
        save_path(path, sizeof path, dir, layer_files[i], 1);
        unlink(path);
    }
    plan_remove_dir_files(dir);
}

/* The weights again as DIR/layer.safetensors, in the layout --weights reads (Linear
 * weights [out, in], the Mixtral names), so that a run can be repeated from files. */
static moert_status save_safetensors(const layer_args *a, const layer_weights *w) {
    const size_t d = a->d, f = a->f, E = a->experts;
    const size_t experts_saved = a->kind == MOERT_EXPERT_SWIGLU ? E : 0;
    const size_t n = 1 + 3 * experts_saved;
    char **names = calloc(n, sizeof(char *));
    float **data = calloc(n, sizeof(float *));
    st_dtype *dtypes = calloc(n, sizeof(st_dtype));
    int *ndims = calloc(n, sizeof(int));
    size_t(*shapes)[ST_MAX_DIMS] = calloc(n, sizeof *shapes);
    moert_status st = names && data && dtypes && ndims && shapes ? MOERT_OK
                                                                 : moert_set_error(MOERT_ENOMEM, "cannot save the weights");
    for (size_t i = 0; st == MOERT_OK && i < n; i++) {
        const float *src;
        size_t rows, cols; /* of the source, [in, out] */
        names[i] = malloc(64);
        if (i == 0) {
            snprintf(names[i], 64, "gate.weight");
            src = w->gate, rows = d, cols = E;
        } else {
            const size_t e = (i - 1) / 3, which = (i - 1) % 3;
            snprintf(names[i], 64, "experts.%zu.w%d.weight", e, which == 0 ? 1 : which == 1 ? 3 : 2);
            src = which == 0 ? w->w1[e] : which == 1 ? w->w3[e] : w->w2[e];
            rows = which == 2 ? f : d, cols = which == 2 ? d : f;
        }
        data[i] = malloc(rows * cols * sizeof(float));
        if (names[i] == NULL || data[i] == NULL) {
            st = moert_set_error(MOERT_ENOMEM, "cannot save the weights");
            break;
        }
        transpose(src, rows, cols, data[i]);
        dtypes[i] = ST_F32, ndims[i] = 2, shapes[i][0] = cols, shapes[i][1] = rows;
    }
    if (st == MOERT_OK) {
        char path[4096];
        save_path(path, sizeof path, a->save, "layer.safetensors", 1);
        st = st_write(path, n, (const char *const *)names, dtypes, ndims, (const size_t(*)[ST_MAX_DIMS])shapes,
                      (const void *const *)data);
    }
    for (size_t i = 0; names && data && i < n; i++) free(names[i]), free(data[i]);
    free(names), free(data), free(dtypes), free(ndims), free(shapes);
    return st;
}

static moert_status save_files(const layer_args *a, const layer_weights *w, const float *x, const float *out,
                               const moert_plan *plan, const router_cli *rc) {
    struct stat sb;
    if (stat(a->save, &sb) != 0 && mkdir(a->save, 0777) != 0)
        return moert_set_error(MOERT_EIO, "%s: cannot create: %s", a->save, strerror(errno));
    char path[4096];
    const size_t d = a->d, f = a->f, E = a->experts, T = a->tokens;
#define SAVE_(name, ndim, shape, data)                                                      \
    do {                                                                                    \
        save_path(path, sizeof path, a->save, name, 1);                                     \
        moert_status s_ = npy_write(path, NPY_F32, ndim, shape, data);                      \
        if (s_ != MOERT_OK) return s_;                                                      \
    } while (0)
    const size_t xs[2] = {T, d}, gs[2] = {d, E};
    SAVE_("x.npy", 2, xs, x);
    SAVE_("gate.npy", 2, gs, w->gate);
    SAVE_("out.npy", 2, xs, out);
    if (a->kind == MOERT_EXPERT_SWIGLU) {
        /* [E, ...] arrays: one expert after another. */
        const char *names[3] = {"w1.npy", "w3.npy", "w2.npy"};
        float **parts[3] = {w->w1, w->w3, w->w2};
        float *all = malloc(E * d * f * sizeof(float));
        if (all == NULL) return moert_set_error(MOERT_ENOMEM, "cannot allocate %zu bytes to save weights", E * d * f * 4);
        for (int i = 0; i < 3; i++) {
            for (size_t e = 0; e < E; e++) memcpy(all + e * d * f, parts[i][e], d * f * sizeof(float));
            const size_t shape[3] = {E, i == 2 ? f : d, i == 2 ? d : f};
            save_path(path, sizeof path, a->save, names[i], 1);
            moert_status s = npy_write(path, NPY_F32, 3, shape, all);
            if (s != MOERT_OK) {
                free(all);
                return s;
            }
        }
        free(all);
    }
#undef SAVE_
    MOERT_FORWARD_IF_ERROR(save_safetensors(a, w));
    cJSON *extra = cJSON_CreateObject();
    router_cli_to_json(rc, extra);
    cJSON_AddNumberToObject(extra, "d_model", (double)d);
    cJSON_AddNumberToObject(extra, "d_ff", (double)f);
    cJSON_AddStringToObject(extra, "dtype", a->dtype == MOERT_DTYPE_BF16 ? "bf16" : "f32");
    moert_status st = plan_write_dir(plan, a->save, extra);
    cJSON_Delete(extra);
    for (int i = 0; st == MOERT_OK && i < LAYER_FILES; i++) {
        char final[4096];
        save_path(path, sizeof path, a->save, layer_files[i], 1);
        save_path(final, sizeof final, a->save, layer_files[i], 0);
        if (access(path, F_OK) != 0) { /* not made by this run (synthetic experts' weights) */
            unlink(final);
            continue;
        }
        if (rename(path, final) != 0)
            st = moert_set_error(MOERT_EIO, "%s: cannot rename into place: %s", final, strerror(errno));
    }
    return st;
}

static moert_status save_all(const layer_args *a, const layer_weights *w, const float *x, const float *out,
                             const moert_plan *plan, const router_cli *rc) {
    const moert_status st = save_files(a, w, x, out, plan, rc);
    if (st != MOERT_OK) save_remove_all(a->save);
    return st;
}

/* --save under --ep: rank 0 writes the whole batch's files, as the single-process run with
 * --route-groups P does (its stats.json says so). */
typedef struct ep_save_context {
    const layer_args *a;
    const layer_weights *w;
    const float *x;
    const router_cli *rc;
} ep_save_context;

static moert_status ep_save(void *context, const float *out, const moert_plan *plan, int ranks) {
    const ep_save_context *c = context;
    router_cli rc = *c->rc;
    rc.config.route_groups = ranks;
    return save_all(c->a, c->w, c->x, out, plan, &rc);
}

/* The layer's configuration from the options. */
static moert_layer_config layer_config_of(const layer_args *a, const router_cli *rc) {
    moert_layer_config c = moert_layer_config_default();
    c.d_model = a->d, c.d_ff = a->kind == MOERT_EXPERT_SWIGLU ? a->f : 0, c.experts = a->experts;
    c.expert_kind = a->kind, c.dtype = a->dtype, c.synthetic_cost = a->synthetic_cost;
    c.router = rc->config;
    c.workers = a->workers, c.threads = a->threads, c.chunk_rows = a->chunk_rows;
    c.convert_bf16 = a->bf16_convert;
    return c;
}

static void round_to_bf16(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = moert_bf16_to_f32(moert_f32_to_bf16(p[i]));
}

static int parse_args(int argc, char **argv, layer_args *a, router_cli *rc) {
    static const struct option options[] = {
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"d-model", required_argument, NULL, OPT_D_MODEL},
        {"d-ff", required_argument, NULL, OPT_D_FF},
        {"experts", required_argument, NULL, OPT_EXPERTS},
        {"expert", required_argument, NULL, OPT_EXPERT},
        {"synthetic-cost", required_argument, NULL, OPT_SYNTHETIC_COST},
        {"dtype", required_argument, NULL, OPT_DTYPE},
        {"workers", required_argument, NULL, OPT_WORKERS},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"chunk-rows", required_argument, NULL, OPT_CHUNK_ROWS},
        {"iters", required_argument, NULL, OPT_ITERS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"weights", required_argument, NULL, OPT_WEIGHTS},
        {"weights-prefix", required_argument, NULL, OPT_WEIGHTS_PREFIX},
        {"input", required_argument, NULL, OPT_INPUT},
        {"save", required_argument, NULL, OPT_SAVE},
        {"check", no_argument, NULL, OPT_CHECK},
        {"json", no_argument, NULL, OPT_JSON},
        {"bf16-convert", no_argument, NULL, OPT_BF16_CONVERT},
        {"ep", required_argument, NULL, OPT_EP},
        {"help", no_argument, NULL, 'h'},
        ROUTER_CLI_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    int opt, code;
    size_t value;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        code = CLI_OK;
        switch (opt) {
        case 'h': fputs(layer_help, stdout); return -1;
        case OPT_TOKENS: code = cli_parse_size("--tokens", optarg, 1, (size_t)1 << 30, &a->tokens), a->given_tokens = 1; break;
        case OPT_D_MODEL: code = cli_parse_size("--d-model", optarg, 1, LAYER_MAX_DIM, &a->d), a->given_d = 1; break;
        case OPT_D_FF: code = cli_parse_size("--d-ff", optarg, 1, LAYER_MAX_DIM, &a->f), a->given_f = 1; break;
        case OPT_EXPERTS: code = cli_parse_size("--experts", optarg, 1, MOERT_MAX_EXPERTS, &a->experts), a->given_experts = 1; break;
        case OPT_EXPERT:
            if (strcmp(optarg, "swiglu") == 0) a->kind = MOERT_EXPERT_SWIGLU;
            else if (strcmp(optarg, "synthetic") == 0) a->kind = MOERT_EXPERT_SYNTHETIC;
            else code = cli_fail(CLI_USAGE, "--expert: '%s' is not swiglu or synthetic", optarg);
            break;
        case OPT_SYNTHETIC_COST: code = cli_parse_int("--synthetic-cost", optarg, 0, 1 << 20, &a->synthetic_cost); break;
        case OPT_DTYPE: code = cli_parse_dtype("--dtype", optarg, &a->dtype); break;
        case OPT_WORKERS: code = cli_parse_int("--workers", optarg, 1, 1024, &a->workers); break;
        case OPT_THREADS: code = cli_parse_int("--threads", optarg, 1, 4096, &a->threads); break;
        case OPT_CHUNK_ROWS: code = cli_parse_size("--chunk-rows", optarg, 1, (size_t)1 << 20, &a->chunk_rows); break;
        case OPT_ITERS: code = cli_parse_int("--iters", optarg, 1, 1000000, &a->iters); break;
        case OPT_SEED: code = cli_parse_size("--seed", optarg, 0, (size_t)-1 >> 1, &value), a->seed = value; break;
        case OPT_WEIGHTS: a->weights = optarg; break;
        case OPT_WEIGHTS_PREFIX: a->prefix = optarg; break;
        case OPT_INPUT: a->input = optarg; break;
        case OPT_SAVE: a->save = optarg; break;
        case OPT_CHECK: a->check = 1; break;
        case OPT_JSON: a->json = 1; break;
        case OPT_BF16_CONVERT: a->bf16_convert = 1; break;
        case OPT_EP: code = cli_parse_int("--ep", optarg, 1, 1 << 20, &a->ep); break;
        default:
            code = router_cli_option(rc, opt, optarg);
            if (code < 0) return cli_usage_error("layer", "unknown option or missing value");
        }
        if (code != CLI_OK) return code;
    }
    if (optind < argc) return cli_usage_error("layer", "unexpected argument");
    if (a->prefix[0] != '\0' && a->weights == NULL) return cli_fail(CLI_USAGE, "--weights-prefix needs --weights");
    if (strlen(a->prefix) > 512) return cli_fail(CLI_USAGE, "--weights-prefix: longer than 512 characters");
    if (a->ep > 0 && (rc->given >> (ROUTER_OPT_ROUTE_GROUPS - ROUTER_OPT_POLICY) & 1) && rc->config.route_groups != a->ep)
        return cli_fail(CLI_USAGE, "--route-groups %d with --ep %d: each rank's tokens are one routing group, so the "
                                   "groups are the ranks",
                        rc->config.route_groups, a->ep);
    if (a->workers > 0 && a->threads > 0 && a->workers > a->threads)
        return cli_fail(CLI_USAGE, "--workers %d exceeds --threads %d: every worker needs a thread", a->workers, a->threads);
    return CLI_OK;
}

int cmd_layer(int argc, char **argv) {
    layer_args a = {2048, 2048, 1408, 64, 0, 0, 0, 0, MOERT_EXPERT_SWIGLU, 64, MOERT_DTYPE_F32, 0, 0, 3, 128, 1,
                    NULL, "", NULL, NULL, 0, 0, 0, 0};
    router_cli rc;
    router_cli_init(&rc);
    rc.config.k = 6;
    int code = parse_args(argc, argv, &a, &rc);
    if (code != CLI_OK) return code < 0 ? CLI_OK : code;

    layer_weights w = {0};
    float *x = NULL, *out = NULL;
    void *x_layer = NULL, *out_layer = NULL;
    moert_layer *L = NULL;
    code = a.weights ? file_weights(&a, &w) : CLI_OK;
    if (code == CLI_OK && a.input) {
        size_t shape[2];
        moert_status st = npy_read_f32(a.input, 2, &x, shape);
        if (st == MOERT_OK && !a.given_d && !a.weights) a.d = shape[1]; /* d from the file */
        if (st != MOERT_OK) code = cli_fail_status(st, "--input");
        else if (shape[1] != a.d)
            code = cli_fail(CLI_USAGE, "--input: %s has rows of %zu, the layer's d_model is %zu", a.input, shape[1], a.d);
        else if (a.given_tokens && shape[0] != a.tokens)
            code = cli_fail(CLI_USAGE, "--input: %s has %zu tokens, --tokens says %zu", a.input, shape[0], a.tokens);
        else
            a.tokens = shape[0];
    }
    if (code == CLI_OK) code = router_cli_finish(&rc, a.experts);
    if (code == CLI_OK && !a.weights) code = random_weights(&a, &w);
    if (code == CLI_OK && !a.input) {
        uint64_t s = a.seed * 0x9E3779B97F4A7C15ull + 7;
        x = random_array(&s, a.tokens * a.d, 1.0f);
        if (x == NULL) code = cli_fail(CLI_FAIL, "cannot allocate %zu x %zu inputs", a.tokens, a.d);
    }
    const size_t n = a.tokens * a.d;
    const size_t elem = a.dtype == MOERT_DTYPE_BF16 ? 2 : 4;
    if (code == CLI_OK) {
        out = malloc(n * sizeof(float));
        x_layer = a.dtype == MOERT_DTYPE_BF16 ? malloc(n * elem) : x;
        out_layer = a.dtype == MOERT_DTYPE_BF16 ? malloc(n * elem) : out;
        if (!out || !x_layer || !out_layer) code = cli_fail(CLI_FAIL, "cannot allocate %zu x %zu outputs", a.tokens, a.d);
    }
    if (code == CLI_OK && a.dtype == MOERT_DTYPE_BF16) { /* the values the layer will use */
        round_to_bf16(x, n);
        for (size_t e = 0; a.kind == MOERT_EXPERT_SWIGLU && e < a.experts; e++) {
            round_to_bf16(w.w1[e], a.d * a.f), round_to_bf16(w.w3[e], a.d * a.f), round_to_bf16(w.w2[e], a.f * a.d);
        }
        moert_f32_to_bf16_row(x, x_layer, n);
    }
    if (code == CLI_OK && a.ep > 0) { /* expert parallelism: every rank has the same x and weights */
        ep_save_context saving = {&a, &w, x, &rc};
        const layer_ep_args e = {layer_config_of(&a, &rc), x, a.tokens, w.gate, (const float *const *)w.w1,
                                 (const float *const *)w.w3, (const float *const *)w.w2, a.ep, a.iters, a.check,
                                 a.json, a.save ? ep_save : NULL, &saving};
        code = layer_ep_run(&e);
        goto cleanup;
    }
    if (code == CLI_OK) {
        const moert_layer_config c = layer_config_of(&a, &rc);
        moert_status st = moert_layer_create(&c, &L);
        if (st == MOERT_OK) st = moert_layer_set_gate(L, w.gate);
        for (size_t e = 0; st == MOERT_OK && a.kind == MOERT_EXPERT_SWIGLU && e < a.experts; e++)
            st = moert_layer_set_expert(L, e, w.w1[e], w.w3[e], w.w2[e]);
        if (st != MOERT_OK) code = cli_fail_status(st, "layer");
    }
    moert_layer_timings sum = {0};
    double best = INFINITY;
    for (int i = 0; code == CLI_OK && i <= a.iters; i++) { /* pass 0 warms up */
        moert_status st = moert_layer_forward(L, x_layer, a.tokens, out_layer);
        if (st != MOERT_OK) {
            code = cli_fail_status(st, "forward");
            break;
        }
        moert_layer_timings t;
        moert_layer_get_timings(L, &t);
        if (i == 0) continue;
        sum.gate += t.gate, sum.route += t.route, sum.dispatch += t.dispatch;
        sum.experts += t.experts, sum.combine += t.combine, sum.total += t.total;
        best = t.total < best ? t.total : best;
    }
    if (code == CLI_OK && a.dtype == MOERT_DTYPE_BF16)
        for (size_t i = 0; i < n; i++) out[i] = moert_bf16_to_f32(((uint16_t *)out_layer)[i]);

    double check_error = -1;
    if (code == CLI_OK && a.check) {
        const layer_reference ref = {a.d, a.f, a.experts, a.kind, a.synthetic_cost, (const float *const *)w.w1,
                                     (const float *const *)w.w3, (const float *const *)w.w2};
        double *want = malloc(n * sizeof(double));
        if (want == NULL) {
            code = cli_fail(CLI_FAIL, "--check: cannot allocate %zu bytes", n * sizeof(double));
        } else {
            layer_reference_forward(&ref, moert_layer_plan(L), x, want);
            check_error = layer_reference_error(out, want, a.tokens, a.d);
            free(want);
        }
    }
    const double tolerance = a.dtype == MOERT_DTYPE_BF16 ? 2e-2 : 1e-4;
    if (code == CLI_OK && a.save && !(a.check && !(check_error <= tolerance))) { /* not a failed check's */
        moert_status st = save_all(&a, &w, x, out, moert_layer_plan(L), &rc);
        if (st != MOERT_OK) code = cli_fail_status(st, "--save");
    }
    if (code == CLI_OK) {
        const double k = 1.0 / a.iters;
        moert_plan_stats s;
        moert_plan_get_stats(moert_layer_plan(L), &s);
        printf("layer: T=%zu d=%zu f=%zu E=%zu %s %s, %d workers, %d threads; gemm: %s\n", a.tokens, a.d, a.f,
               a.experts, a.kind == MOERT_EXPERT_SWIGLU ? "swiglu" : "synthetic",
               a.dtype == MOERT_DTYPE_BF16 ? "bf16" : "f32", moert_layer_workers(L),
               a.threads > 0 ? a.threads : omp_get_max_threads(), moert_gemm_library());
        printf("  %.0f tokens/s (mean of %d passes: %.3f ms; best %.3f ms)\n", a.tokens / (sum.total * k), a.iters,
               sum.total * k * 1e3, best * 1e3);
        printf("  stages, ms: gate %.3f  route %.3f  dispatch %.3f  experts %.3f  combine %.3f\n", sum.gate * k * 1e3,
               sum.route * k * 1e3, sum.dispatch * k * 1e3, sum.experts * k * 1e3, sum.combine * k * 1e3);
        printf("  balance: %lld entries, %lld dropped, %lld unrouted; max/mean %.3f, cv %.3f, entropy %.3f, "
               "aux loss %.4f\n",
               (long long)s.assignments, (long long)s.dropped, (long long)s.unrouted, s.max_over_mean, s.cv, s.entropy,
               s.aux_loss);
        const int W = moert_layer_workers(L);
        int32_t *map = malloc(a.experts * sizeof(int32_t));
        int64_t *load = malloc((size_t)W * sizeof(int64_t));
        if (map && load) {
            for (size_t e = 0; e < a.experts; e++) map[e] = moert_layer_expert_worker(L, e);
            if (moert_plan_worker_load(moert_layer_plan(L), map, W, load) == MOERT_OK) {
                printf("  rows per worker (node):");
                for (int i = 0; i < W; i++) printf(" %lld (%d)", (long long)load[i], moert_layer_worker_node(L, i));
                printf("\n");
            }
        }
        free(map), free(load);
        if (a.check)
            printf("  check: max relative error %.3g against the double reference (%s, limit %.0e)\n", check_error,
                   check_error <= tolerance ? "ok" : "FAILED", tolerance);
        if (a.json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "tokens", (double)a.tokens);
            cJSON_AddNumberToObject(o, "tokens_per_s", a.tokens / (sum.total * k));
            const double stage[6] = {sum.gate, sum.route, sum.dispatch, sum.experts, sum.combine, sum.total};
            const char *names[6] = {"gate_ms", "route_ms", "dispatch_ms", "experts_ms", "combine_ms", "total_ms"};
            for (int i = 0; i < 6; i++) cJSON_AddNumberToObject(o, names[i], stage[i] * k * 1e3);
            cJSON_AddItemToObject(o, "balance", plan_stats_json(&s));
            if (a.check) cJSON_AddNumberToObject(o, "check_error", check_error);
            cli_print_json_line(o);
        }
        if (a.check && !(check_error <= tolerance))
            code = cli_fail(CLI_FAIL, "--check: max relative error %.3g exceeds %.0e", check_error, tolerance);
    }
    if (code != CLI_OK && a.save) save_remove_all(a.save); /* nothing stale that looks valid */
cleanup:
    moert_layer_destroy(L);
    weights_free(&w, a.experts);
    if (x_layer != x) free(x_layer);
    if (out_layer != out) free(out_layer);
    free(x), free(out);
    router_cli_free(&rc);
    return code;
}

/* moert simulate: distributed routing and load-balance experiments at scale (sim/). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sim/profile.h"
#include "sim/simulate.h"
#include "sim/text.h"
#include "tools/cli.h"
#include "tools/router_cli.h"

static const char help[] =
    "usage: moert simulate [options] --out DIR\n"
    "\n"
    "Simulates P ranks in N nodes routing their tokens to E experts for a number of steps,\n"
    "under each strategy of --compare on the same token stream, and writes DIR/steps.csv\n"
    "(a row per step and strategy) and DIR/summary.json (the configuration, the seed, the\n"
    "version and each strategy's means), and draws with gnuplot DIR/imbalance.png (expert\n"
    "max/mean per step and strategy), DIR/heatmap.png (the first strategy's expert loads\n"
    "over steps) and DIR/ranks.png (each strategy's rank loads at the last step, under its\n"
    "placement and, before, under contiguous placement), from heatmap.dat,\n"
    "ranks.csv and plots.gp there (kept: without gnuplot they are written all the same).\n"
    "\n"
    "The distributed machine:\n"
    "  --ranks P             default 8\n"
    "  --nodes N             default 1; P must divide into N equal nodes\n"
    "  --experts E           default 64\n"
    "  --k K                 experts per token, default 8 (6 for an ESFT trace)\n"
    "  --tokens T            tokens per rank and step, default 4096\n"
    "  --sample S            tokens each rank routes per step, its counts scaled by T / S;\n"
    "                        default 256 (all tokens when S >= T); the output says so\n"
    "  --steps N             default 100\n"
    "The workload (synthetic unless --trace):\n"
    "  --profile SPEC        uniform | zipf:S | hot:N:F, default uniform: per-expert means\n"
    "                        log p_e of the logits (means + N(0,1)) / temperature\n"
    "  --counts FILE.csv     the profile from a count table (columns expert and count)\n"
    "  --counts-select SEL   its rows: column=value,... (e.g. model=olmoe,domain=arxiv,layer=0)\n"
    "  --temperature F       default 1\n"
    "  --correlation RHO     consecutive tokens of a sequence share a latent: the noise is\n"
    "                        sqrt(RHO) z_sequence + sqrt(1 - RHO) z_token, 0 <= RHO < 1\n"
    "  --seq-len L           tokens per sequence, default 64 with --correlation\n"
    "  --drift walk:SIGMA    the means take a random walk, SIGMA N(0,1) per expert and step\n"
    "  --drift rotate:N      the profile rotates by one expert every N steps (hot experts move)\n"
    "  --seed S              default 0\n"
    "  --trace FILE          replay recorded routing: DeepSeek ESFT's text format (ids, an\n"
    "                        empty field, weights: one line per sequence), or ids.npy [N, k]\n"
    "                        int32 (--trace-weights F.npy [N, k] float32 after it, else 1/k);\n"
    "                        repeat for several layers (each its own layer). By\n"
    "                        default each of 2 steps replays the whole trace (the first\n"
    "                        measures the loads balanced and eplb plan from), rank r its\n"
    "                        share [r N / P, (r+1) N / P); with --tokens T each step takes\n"
    "                        the next P x T tokens, wrapping\n"
    "Strategies (--compare A,B,...; each one balancing and one placement joined by +):\n"
    "  none | capacity:F | aux-free:GAMMA | expert-choice:F | relu:S | node-limited:M\n"
    "                        balancing: top-k softmax; with capacity factor F dropping the\n"
    "                        lowest weights (capacity:F:position: the latest tokens); sigmoid\n"
    "                        with the aux-free bias; expert choice at\n"
    "                        capacity factor F; ReLU routing, its threshold steered to\n"
    "                        sparsity S; top-k within the best M nodes (experts in equal\n"
    "                        contiguous blocks per node)\n"
    "  contiguous | round-robin | balanced | eplb:R[:G]\n"
    "                        placement; balanced and eplb re-plan every --replan steps\n"
    "                        (default 10) from the mean of the last --window (10) steps'\n"
    "                        loads; eplb (DeepSeek's, hierarchical) packs G groups of\n"
    "                        contiguous experts (default: one expert each) onto the nodes,\n"
    "                        then in each node adds R/N replicas of its hottest experts\n"
    "                        and packs its ranks; default compare: none,capacity:1.25,aux-free:0.001\n"
    "                        (a trace: contiguous,round-robin,balanced)\n"
    "The cost model (per step: dispatch + compute + combine):\n"
    "  --alpha-intra S --beta-intra B    latency (s) and bandwidth (bytes/s) within a\n"
    "                        node, default 2e-6 and 150e9\n"
    "  --alpha-inter S --beta-inter B    between nodes, default 5e-6 and 25e9\n"
    "  --row-bytes B         one token's hidden state, default 8192 (d 4096, bf16)\n"
    "  --expert-seconds S    one token through one expert, default 3.46e-7\n"
    "  --expert-bytes B      one expert's weights (re-plan traffic), default 3.46e7\n"
    "The routing (synthetic workloads): any option of moert route, for strategy none and as\n"
    "the base the others change (--k and --seed are the simulation's):\n" ROUTER_CLI_HELP
    "Other:\n"
    "  --replay SUMMARY.json run again what a summary.json records (with --out; --threads and\n"
    "                        --quiet may join): the same steps.csv, bit for bit\n"
    "  --threads N           default all\n"
    "  --quiet               print nothing on success (and no progress bar, which shows\n"
    "                        on stderr only when it is a terminal)\n";

enum {
    OPT_RANKS = 256, OPT_NODES, OPT_EXPERTS, OPT_K, OPT_TOKENS, OPT_SAMPLE, OPT_STEPS, OPT_PROFILE, OPT_COUNTS,
    OPT_COUNTS_SELECT, OPT_TEMPERATURE, OPT_SEED, OPT_TRACE, OPT_COMPARE, OPT_REPLAN, OPT_WINDOW, OPT_ALPHA_INTRA,
    OPT_BETA_INTRA, OPT_ALPHA_INTER, OPT_BETA_INTER, OPT_ROW_BYTES, OPT_EXPERT_SECONDS, OPT_EXPERT_BYTES, OPT_THREADS,
    OPT_QUIET, OPT_OUT, OPT_CORRELATION, OPT_SEQ_LEN, OPT_DRIFT, OPT_REPLAY, OPT_TRACE_WEIGHTS,
};

#define SIM_MAX_STRATEGIES 16
#define SIM_MAX_LAYERS 256

/* One strategy from "balance+placement" (either part alone takes the other's default). */
static int parse_strategy(const char *text, int replan, int window, sim_strategy *s) {
    memset(s, 0, sizeof *s);
    for (const char *p = text; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '\'' || *p == '"')
            return cli_fail(CLI_USAGE, "--compare: a strategy holds no spaces, quotes or control characters");
    if (*text == '\0' || *text == '+' || text[strlen(text) - 1] == '+' || strstr(text, "++"))
        return cli_fail(CLI_USAGE, "--compare: '%s' has an empty part", text);
    s->balance = SIM_BALANCE_NONE, s->place = SIM_PLACE_CONTIGUOUS, s->replan_every = replan, s->window = window;
    if (strlen(text) >= sizeof s->name) return cli_fail(CLI_USAGE, "--compare: '%s' is too long", text);
    strcpy(s->name, text);
    char buf[64];
    strcpy(buf, text);
    int have_balance = 0, have_place = 0;
    for (char *part = strtok(buf, "+"); part; part = strtok(NULL, "+")) {
        char *colon = strchr(part, ':');
        const char *arg = colon ? colon + 1 : NULL;
        if (colon) *colon = '\0';
        /* eplb:R:G, the expert groups */
        char *groups = arg && !strcmp(part, "eplb") ? strchr(colon + 1, ':') : NULL;
        if (groups) {
            *groups++ = '\0';
            char *gend = NULL;
            const long g = strtol(groups, &gend, 10);
            if (gend == groups || *gend || g < 1 || g > (1L << 20))
                return cli_fail(CLI_USAGE, "--compare: '%s': eplb:R:G needs G >= 1 expert groups", text);
            s->groups = (int)g;
        }
        /* capacity:F:probs|position */
        char *policy = arg && !strcmp(part, "capacity") ? strchr(colon + 1, ':') : NULL;
        s->drop = MOERT_DROP_PROBS; /* as moert route */
        if (policy) {
            *policy++ = '\0';
            if (!strcmp(policy, "probs")) s->drop = MOERT_DROP_PROBS;
            else if (!strcmp(policy, "position")) s->drop = MOERT_DROP_POSITION;
            else return cli_fail(CLI_USAGE, "--compare: '%s': the drop policy is probs or position", text);
        }
        char *end = NULL;
        const double v = arg ? strtod(arg, &end) : 0;
        const int number = arg && end != arg && *end == '\0' && isfinite(v);
        int is_balance = 1;
        if (!strcmp(part, "none") && !arg) s->balance = SIM_BALANCE_NONE;
        else if (!strcmp(part, "capacity") && number && v > 0) s->balance = SIM_BALANCE_CAPACITY, s->capacity_factor = v;
        else if (!strcmp(part, "aux-free") && number && v > 0) s->balance = SIM_BALANCE_AUX_FREE, s->gamma = (float)v;
        else if (!strcmp(part, "expert-choice") && number && v > 0)
            s->balance = SIM_BALANCE_EXPERT_CHOICE, s->capacity_factor = v;
        else if (!strcmp(part, "relu") && number && v > 0 && v < 1) s->balance = SIM_BALANCE_RELU, s->target_sparsity = v;
        else if (!strcmp(part, "node-limited") && number && v >= 1 && v == floor(v) && v <= 1 << 20)
            s->balance = SIM_BALANCE_NODE_LIMITED, s->max_nodes = (int)v;
        else {
            is_balance = 0;
            if (!strcmp(part, "contiguous") && !arg) s->place = SIM_PLACE_CONTIGUOUS;
            else if (!strcmp(part, "round-robin") && !arg) s->place = SIM_PLACE_ROUND_ROBIN;
            else if (!strcmp(part, "balanced") && !arg) s->place = SIM_PLACE_BALANCED;
            else if (!strcmp(part, "eplb") && number && v >= 0 && v == floor(v) && v <= 1e6)
                s->place = SIM_PLACE_EPLB, s->replicas = (int)v;
            else
                return cli_fail(CLI_USAGE,
                                "--compare: '%s' is not none, capacity:F, aux-free:GAMMA, expert-choice:F, relu:S, "
                                "node-limited:M, contiguous, round-robin, balanced or eplb:R (F, GAMMA > 0; 0 < S < 1; "
                                "M >= 1 and R >= 0 integers)",
                                text);
        }
        if (is_balance ? have_balance++ : have_place++)
            return cli_fail(CLI_USAGE, "--compare: '%s' gives two %s", text, is_balance ? "balancings" : "placements");
    }
    if (s->balance == SIM_BALANCE_NODE_LIMITED && s->place != SIM_PLACE_CONTIGUOUS)
        return cli_fail(CLI_USAGE, "--compare: '%s': node-limited routing takes the nodes' experts as contiguous blocks: "
                                   "contiguous placement only",
                        text);
    return CLI_OK;
}

typedef struct sim_output {
    FILE *csv;
    int layer;
    const sim_strategy *strategies;
    int count;
    size_t experts;
    /* per strategy sums over steps and layers */
    double sum_mom[SIM_MAX_STRATEGIES], sum_straggler[SIM_MAX_STRATEGIES], sum_time[SIM_MAX_STRATEGIES];
    double sum_dropped[SIM_MAX_STRATEGIES], sum_unrouted[SIM_MAX_STRATEGIES], sum_inter[SIM_MAX_STRATEGIES];
    double sum_moved[SIM_MAX_STRATEGIES];
    double last_mom[SIM_MAX_STRATEGIES], last_straggler[SIM_MAX_STRATEGIES], last_time[SIM_MAX_STRATEGIES];
    long records[SIM_MAX_STRATEGIES];
    double *shares; /* [layers][experts], the first strategy's loads summed over steps */
    double *heat;       /* [steps][experts] */
    double *ranks_last;   /* [strategies][ranks] */
    double *ranks_before; /* [strategies][ranks]: the same loads under contiguous placement */
    int ranks, steps;
    /* the progress bar: stderr is a terminal and not --quiet */
    int progress;
    long done, total;
    struct timespec start, last;
} sim_output;

static double seconds_between(struct timespec a, struct timespec b) {
    return (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
}

/* "step 37/300 [#####.....] 12.3 steps/s, ETA 21 s", at most ten times a second. */
static void show_progress(sim_output *o, int final) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!final && seconds_between(o->last, now) < 0.1) return;
    o->last = now;
    const double elapsed = seconds_between(o->start, now), rate = elapsed > 0 ? (double)o->done / elapsed : 0;
    char bar[31];
    const int filled = o->total ? (int)(30 * o->done / o->total) : 30;
    for (int i = 0; i < 30; i++) bar[i] = i < filled ? '#' : '.';
    bar[30] = '\0';
    fprintf(stderr, "\rstep %ld/%ld (steps x strategies x layers) [%s] %.1f/s, ETA %.0f s   ", o->done, o->total, bar, rate,
            rate > 0 ? (double)(o->total - o->done) / rate : 0.0);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

static void on_step(void *context, int i, const sim_step_record *r, const double *expert_load, const double *rank_load) {
    sim_output *o = context;
    fprintf(o->csv, "%s,%d,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g\n", o->strategies[i].name,
            o->layer, r->step, r->expert_max_over_mean, r->expert_cv, r->dropped, r->unrouted, r->cost.inter_bytes,
            r->cost.intra_bytes, r->cost.total, r->cost.dispatch, r->cost.compute, r->cost.combine, r->cost.straggler,
            r->moved_bytes, r->experts_per_token);
    o->sum_mom[i] += r->expert_max_over_mean, o->sum_straggler[i] += r->cost.straggler, o->sum_time[i] += r->cost.total;
    o->sum_dropped[i] += r->dropped, o->sum_unrouted[i] += r->unrouted, o->sum_inter[i] += r->cost.inter_bytes;
    o->sum_moved[i] += r->moved_bytes, o->records[i]++;
    if (r->step == o->steps - 1) /* the last step, summed over layers */
        o->last_mom[i] += r->expert_max_over_mean, o->last_straggler[i] += r->cost.straggler,
            o->last_time[i] += r->cost.total;
    if (i == 0 && o->shares)
        for (size_t e = 0; e < o->experts; e++) o->shares[(size_t)o->layer * o->experts + e] += expert_load[e];
    if (o->layer == 0 && i == 0 && o->heat) /* the heatmap: the first strategy's loads, layer 0 */
        memcpy(o->heat + (size_t)r->step * o->experts, expert_load, o->experts * sizeof(double));
    if (o->layer == 0 && o->ranks_last && r->step == o->steps - 1) { /* each strategy's rank loads, the last step of layer 0 */
        memcpy(o->ranks_last + (size_t)i * (size_t)o->ranks, rank_load, (size_t)o->ranks * sizeof(double));
        /* and the same step's under contiguous placement (one replica each: a rank's load is
         * its experts'), the "before" of the plot */
        double *before = o->ranks_before + (size_t)i * (size_t)o->ranks;
        memset(before, 0, (size_t)o->ranks * sizeof(double));
        for (size_t e = 0; e < o->experts; e++) before[e * (size_t)o->ranks / o->experts] += expert_load[e];
    }
    o->done++;
    if (o->progress) show_progress(o, 0);
}

/* The plots' data (heatmap.dat, ranks.csv) and script (plots.gp) in DIR, then gnuplot on
 * it: imbalance.png (expert max/mean over steps, per strategy), heatmap.png (the first
 * strategy's expert loads over steps), ranks.png (each strategy's rank loads at the last
 * step: the placements side by side). Without gnuplot the data and script stay, and the
 * command says so. */
static int write_plots(const sim_output *o, const char *dir, int quiet) {
    char path[4096];
    snprintf(path, sizeof path, "%s/heatmap.dat", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL) return cli_fail(CLI_FAIL, "--out: cannot write %s", path);
    for (size_t e = 0; e < o->experts; e++) { /* a row per expert, a column per step */
        for (int s = 0; s < o->steps; s++) fprintf(f, "%s%.6g", s ? " " : "", o->heat[(size_t)s * o->experts + e]);
        fputc('\n', f);
    }
    if (fclose(f) != 0) return cli_fail(CLI_FAIL, "--out: cannot write %s", path);
    snprintf(path, sizeof path, "%s/ranks.csv", dir);
    if ((f = fopen(path, "w")) == NULL) return cli_fail(CLI_FAIL, "--out: cannot write %s", path);
    fputs("rank", f); /* each strategy's placement, then the same loads placed contiguously */
    for (int i = 0; i < o->count; i++) fprintf(f, ",%s,%s (contiguous)", o->strategies[i].name, o->strategies[i].name);
    fputc('\n', f);
    for (int r = 0; r < o->ranks; r++) {
        fprintf(f, "%d", r);
        for (int i = 0; i < o->count; i++)
            fprintf(f, ",%.6g,%.6g", o->ranks_last[(size_t)i * (size_t)o->ranks + r],
                    o->ranks_before[(size_t)i * (size_t)o->ranks + r]);
        fputc('\n', f);
    }
    if (fclose(f) != 0) return cli_fail(CLI_FAIL, "--out: cannot write %s", path);
    snprintf(path, sizeof path, "%s/plots.gp", dir);
    if ((f = fopen(path, "w")) == NULL) return cli_fail(CLI_FAIL, "--out: cannot write %s", path);
    fputs("# moert simulate's plots: gnuplot plots.gp, in this directory\n"
          "set datafile separator ','\nset terminal pngcairo size 1000,600\nset key outside right\nset grid\n"
          "set output 'imbalance.png'\nset title 'expert load max/mean per step (layer 0)'\n"
          "set xlabel 'step'\nset ylabel 'max/mean'\n", f);
    fputs("plot ", f);
    for (int i = 0; i < o->count; i++)
        fprintf(f, "%s'steps.csv' using 3:((strcol(1) eq '%s' && $2 == 0) ? $4 : 1/0) with lines title '%s'",
                i ? ", " : "", o->strategies[i].name, o->strategies[i].name);
    fprintf(f, "\nset output 'ranks.png'\nset title 'rank load at the last step: each placement (solid) and "
               "contiguous (dashed), layer 0'\nset xlabel 'rank'\nset ylabel 'entries'\nplot ");
    for (int i = 0; i < o->count; i++)
        fprintf(f, "%s'ranks.csv' using 1:%d with steps lc %d title '%s', 'ranks.csv' using 1:%d with steps lc %d dt 2 "
                   "title '%s before (contiguous)'",
                i ? ", " : "", 2 * i + 2, i + 1, o->strategies[i].name, 2 * i + 3, i + 1, o->strategies[i].name);
    if (o->steps >= 2) /* an image needs two columns */
        fprintf(f, "\nset datafile separator whitespace\nset output 'heatmap.png'\n"
                   "set title 'expert load over steps: %s (layer 0)'\nset xlabel 'step'\nset ylabel 'expert'\n"
                   "set key noautotitle\nset grid noxtics noytics\nplot 'heatmap.dat' matrix with image\n",
                o->strategies[0].name);
    else
        fputc('\n', f);
    if (fclose(f) != 0) return cli_fail(CLI_FAIL, "--out: cannot write %s", path);
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "moert: simulate: gnuplot is not installed: no plots were drawn; their data and script are in "
                        "%s (install gnuplot-nox, then run gnuplot plots.gp there)\n",
                dir);
        return CLI_OK;
    }
    char command[8192];
    snprintf(command, sizeof command, "cd '%s' && gnuplot plots.gp 2>gnuplot.log", dir);
    if (strchr(dir, '\'') != NULL || system(command) != 0)
        return cli_fail(CLI_FAIL, "simulate: gnuplot failed on %s/plots.gp (see %s/gnuplot.log)", dir, dir);
    if (!quiet)
        printf("plots: %s/imbalance.png, %s/ranks.png%s%s%s\n", dir, dir, o->steps >= 2 ? ", " : " (one step: no heatmap)",
               o->steps >= 2 ? dir : "", o->steps >= 2 ? "/heatmap.png" : "");
    return CLI_OK;
}

static int make_dir(const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) == 0) return S_ISDIR(sb.st_mode) ? CLI_OK : cli_fail(CLI_FAIL, "--out: %s is not a directory", dir);
    if (mkdir(dir, 0777) != 0) return cli_fail(CLI_FAIL, "--out: cannot create %s: %s", dir, strerror(errno));
    return CLI_OK;
}

/* A trace given as ids.npy (moert's format), not an ESFT text dump. */
static int is_npy(const char *path) {
    const size_t len = strlen(path);
    return len > 4 && !strcmp(path + len - 4, ".npy");
}

/* --replay: the summary's configuration as the options it came from, run again. */
static int replay_summary(const char *path, const char *out_dir, int quiet, int threads) {
    char *text;
    size_t size;
    if (sim_read_text(path, &text, &size) != MOERT_OK) return cli_fail(CLI_FAIL, "--replay: %s", moert_last_error());
    cJSON *root = cJSON_ParseWithLength(text, size);
    free(text);
    const cJSON *cfg = root ? cJSON_GetObjectItem(root, "config") : NULL;
    if (cfg == NULL) {
        cJSON_Delete(root);
        return cli_fail(CLI_FAIL, "--replay: %s is not a summary.json of moert simulate (no config)", path);
    }
    const cJSON *trace_list = cJSON_GetObjectItem(cfg, "trace");
    const size_t slots = 128 + 4 * (size_t)cJSON_GetArraySize(trace_list);
    const char **args = malloc(slots * sizeof *args);
    char(*values)[64] = malloc(64 * sizeof *values);
    if (args == NULL || values == NULL) {
        free(args), free(values), cJSON_Delete(root);
        return cli_fail(CLI_FAIL, "--replay: out of memory");
    }
    int argc = 0, nv = 0, code = CLI_OK;
    args[argc++] = "simulate";
#define ARG_(flag) (args[argc++] = (flag))
#define VALUE_(fmt, v) (snprintf(values[nv], sizeof values[nv], fmt, v), args[argc++] = values[nv++])
    static const char *const numbers[][2] = {
        {"ranks", "--ranks"}, {"nodes", "--nodes"}, {"experts", "--experts"}, {"k", "--k"},
        {"tokens_per_rank", "--tokens"}, {"sample", "--sample"}, {"steps", "--steps"}, {"temperature", "--temperature"},
        {"correlation", "--correlation"}, {"seq_len", "--seq-len"}, {"replan", "--replan"}, {"window", "--window"},
    };
    const int trace_run = cJSON_GetObjectItem(cfg, "trace") != NULL;
    for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++) {
        const cJSON *v = cJSON_GetObjectItem(cfg, numbers[i][0]);
        if (v == NULL) continue;
        if (trace_run && (!strcmp(numbers[i][0], "sample") || !strcmp(numbers[i][0], "temperature"))) continue;
        if (!cJSON_IsNumber(v)) code = cli_fail(CLI_FAIL, "--replay: config.%s is not a number", numbers[i][0]);
        else if (!strcmp(numbers[i][0], "tokens_per_rank") && v->valuedouble == 0) continue; /* a trace's default */
        else ARG_(numbers[i][1]), VALUE_("%.17g", v->valuedouble);
    }
    static const char *const strings[][2] = {{"seed", "--seed"}, {"profile", "--profile"}, {"counts", "--counts"},
                                             {"counts_select", "--counts-select"}, {"drift", "--drift"},
                                             {"compare", "--compare"}};
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) {
        const cJSON *v = cJSON_GetObjectItem(cfg, strings[i][0]);
        if (v == NULL || (trace_run && !strcmp(strings[i][0], "seed"))) continue;
        if (!cJSON_IsString(v)) code = cli_fail(CLI_FAIL, "--replay: config.%s is not a string", strings[i][0]);
        else ARG_(strings[i][1]), ARG_(v->valuestring);
    }
    const cJSON *traces = cJSON_GetObjectItem(cfg, "trace"), *weights = cJSON_GetObjectItem(cfg, "trace_weights"), *t;
    int layer = 0;
    cJSON_ArrayForEach(t, traces) {
        const cJSON *w = cJSON_GetArrayItem(weights, layer++);
        if (!cJSON_IsString(t)) {
            code = cli_fail(CLI_FAIL, "--replay: config.trace is not a list of paths");
            break;
        }
        ARG_("--trace"), ARG_(t->valuestring);
        if (cJSON_IsString(w)) ARG_("--trace-weights"), ARG_(w->valuestring);
    }
    static const char *const costs[][2] = {
        {"alpha_intra", "--alpha-intra"}, {"beta_intra", "--beta-intra"}, {"alpha_inter", "--alpha-inter"},
        {"beta_inter", "--beta-inter"}, {"row_bytes", "--row-bytes"}, {"expert_seconds", "--expert-seconds"},
        {"expert_bytes", "--expert-bytes"},
    };
    const cJSON *cost = cJSON_GetObjectItem(cfg, "cost");
    for (size_t i = 0; cost && i < sizeof costs / sizeof costs[0]; i++) {
        const cJSON *v = cJSON_GetObjectItem(cost, costs[i][0]);
        if (cJSON_IsNumber(v)) ARG_(costs[i][1]), VALUE_("%.17g", v->valuedouble);
        else code = cli_fail(CLI_FAIL, "--replay: config.cost.%s is missing or not a number", costs[i][0]);
    }
    const cJSON *version = cJSON_GetObjectItem(root, "version");
    if (code == CLI_OK && (!cJSON_IsString(version) || strcmp(version->valuestring, moert_version())))
        fprintf(stderr, "moert: --replay: %s was written by moert %s, this is %s: the numbers may differ\n", path,
                cJSON_IsString(version) ? version->valuestring : "(unknown)", moert_version());
    /* The routing options, back from the fields router_cli_to_json wrote (defaults that
     * cannot be given, like 0 groups, are left out). */
    const cJSON *router = cJSON_GetObjectItem(cfg, "router");
    static const char *const router_strings[][2] = {
        {"policy", "--policy"}, {"score", "--score"}, {"softmax_order", "--softmax-order"},
        {"group_score", "--group-score"}, {"bias", "--bias"}, {"drop", "--drop"}, {"batch_score", "--batch-score"},
        {"noise_scales", "--noise-scales"},
    };
    for (size_t i = 0; router && i < sizeof router_strings / sizeof router_strings[0]; i++) {
        const cJSON *v = cJSON_GetObjectItem(router, router_strings[i][0]);
        if (cJSON_IsString(v)) ARG_(router_strings[i][1]), ARG_(v->valuestring);
    }
    static const char *const router_numbers[][2] = {
        {"scaling", "--scaling"}, {"groups", "--groups"}, {"topk_groups", "--topk-groups"},
        {"capacity_factor", "--capacity-factor"}, {"relu_threshold", "--relu-threshold"},
        {"inference_threshold", "--threshold"}, {"k_max", "--k-max"}, {"route_groups", "--route-groups"},
    };
    for (size_t i = 0; router && i < sizeof router_numbers / sizeof router_numbers[0]; i++) {
        const cJSON *v = cJSON_GetObjectItem(router, router_numbers[i][0]);
        if (!cJSON_IsNumber(v)) continue;
        const char *key = router_numbers[i][0];
        if ((v->valuedouble == 0 && strcmp(key, "inference_threshold")) || (!strcmp(key, "route_groups") && v->valuedouble == 1))
            continue; /* the defaults (and not given values) */
        ARG_(router_numbers[i][1]), VALUE_("%.17g", v->valuedouble);
    }
    static const char *const router_flags[][2] = {{"renormalize", "--renormalize"}, {"pad", "--pad"},
                                                  {"noisy_weights", "--noisy-weights"}};
    for (size_t i = 0; router && i < sizeof router_flags / sizeof router_flags[0]; i++)
        if (cJSON_IsTrue(cJSON_GetObjectItem(router, router_flags[i][0]))) ARG_(router_flags[i][1]);
    const cJSON *noise = router ? cJSON_GetObjectItem(router, "noise") : NULL;
    if (cJSON_IsString(noise)) {
        const cJSON *scale = cJSON_GetObjectItem(router, "noise_scale"), *tau = cJSON_GetObjectItem(router, "noise_temperature");
        ARG_("--noise");
        if (!strcmp(noise->valuestring, "gumbel") && cJSON_IsNumber(tau)) VALUE_("gumbel:%.17g", tau->valuedouble);
        else VALUE_("normal:%.17g", cJSON_IsNumber(scale) ? scale->valuedouble : 1.0);
    }
    ARG_("--out"), ARG_(out_dir);
    if (quiet) ARG_("--quiet");
    if (threads > 0) ARG_("--threads"), VALUE_("%d", threads);
#undef ARG_
#undef VALUE_
    args[argc] = NULL;
    if (code == CLI_OK) code = cmd_simulate(argc, (char **)args); /* getopt_long does not write them */
    free(args), free(values);
    cJSON_Delete(root);
    return code;
}

int cmd_simulate(int argc, char **argv) {
    static const struct option options[] = {
        {"ranks", required_argument, NULL, OPT_RANKS}, {"nodes", required_argument, NULL, OPT_NODES},
        {"experts", required_argument, NULL, OPT_EXPERTS}, {"k", required_argument, NULL, OPT_K},
        {"tokens", required_argument, NULL, OPT_TOKENS}, {"sample", required_argument, NULL, OPT_SAMPLE},
        {"steps", required_argument, NULL, OPT_STEPS}, {"profile", required_argument, NULL, OPT_PROFILE},
        {"counts", required_argument, NULL, OPT_COUNTS}, {"counts-select", required_argument, NULL, OPT_COUNTS_SELECT},
        {"temperature", required_argument, NULL, OPT_TEMPERATURE}, {"seed", required_argument, NULL, OPT_SEED},
        {"trace", required_argument, NULL, OPT_TRACE}, {"compare", required_argument, NULL, OPT_COMPARE},
        {"replan", required_argument, NULL, OPT_REPLAN}, {"window", required_argument, NULL, OPT_WINDOW},
        {"alpha-intra", required_argument, NULL, OPT_ALPHA_INTRA}, {"beta-intra", required_argument, NULL, OPT_BETA_INTRA},
        {"alpha-inter", required_argument, NULL, OPT_ALPHA_INTER}, {"beta-inter", required_argument, NULL, OPT_BETA_INTER},
        {"row-bytes", required_argument, NULL, OPT_ROW_BYTES},
        {"expert-seconds", required_argument, NULL, OPT_EXPERT_SECONDS},
        {"expert-bytes", required_argument, NULL, OPT_EXPERT_BYTES}, {"threads", required_argument, NULL, OPT_THREADS},
        {"quiet", no_argument, NULL, OPT_QUIET}, {"out", required_argument, NULL, OPT_OUT},
        {"correlation", required_argument, NULL, OPT_CORRELATION}, {"seq-len", required_argument, NULL, OPT_SEQ_LEN},
        {"drift", required_argument, NULL, OPT_DRIFT}, {"replay", required_argument, NULL, OPT_REPLAY},
        {"trace-weights", required_argument, NULL, OPT_TRACE_WEIGHTS},
        {"help", no_argument, NULL, 'h'},
        /* the router's own options (after these: --k and --seed are the simulation's) */
        ROUTER_CLI_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    router_cli rc;
    router_cli_init(&rc);
    sim_config c = {0};
    c.ranks = 8, c.nodes = 1, c.steps = 100, c.k = 8, c.experts = 64, c.tokens_per_rank = 4096, c.sample = 256;
    c.temperature = 1.0f, c.cost = sim_cost_default(), c.expert_bytes = 3.0 * 4096 * 1408 * 2;
    const char *replay = NULL, *drift = NULL, *profile = NULL, *counts_path = NULL, *counts_select = NULL, *compare = NULL, *out_dir = NULL;
    const char *traces[SIM_MAX_LAYERS], *trace_weights[SIM_MAX_LAYERS];
    int n_traces = 0, replan = 10, window = 10, quiet = 0, k_given = 0, experts_given = 0, tokens_given = 0;
    int steps_given = 0, router_given = 0, sample_given = 0, temperature_given = 0, seed_given = 0, opt, code;
    size_t seed = 0;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        code = CLI_OK;
        switch (opt) {
        case 'h': fputs(help, stdout); return CLI_OK;
        case OPT_RANKS: code = cli_parse_int("--ranks", optarg, 1, 1 << 20, &c.ranks); break;
        case OPT_NODES: code = cli_parse_int("--nodes", optarg, 1, 1 << 20, &c.nodes); break;
        case OPT_EXPERTS: code = cli_parse_size("--experts", optarg, 1, MOERT_MAX_EXPERTS, &c.experts), experts_given = 1; break;
        case OPT_K: code = cli_parse_int("--k", optarg, 1, MOERT_MAX_EXPERTS, &c.k), k_given = 1; break;
        case OPT_TOKENS: code = cli_parse_size("--tokens", optarg, 1, (size_t)1 << 30, &c.tokens_per_rank), tokens_given = 1; break;
        case OPT_SAMPLE: code = cli_parse_size("--sample", optarg, 1, (size_t)1 << 30, &c.sample), sample_given = 1; break;
        case OPT_STEPS: code = cli_parse_int("--steps", optarg, 1, 1 << 24, &c.steps), steps_given = 1; break;
        case OPT_PROFILE: profile = optarg; break;
        case OPT_COUNTS: counts_path = optarg; break;
        case OPT_COUNTS_SELECT: counts_select = optarg; break;
        case OPT_TEMPERATURE:
            code = cli_parse_float("--temperature", optarg, 1e-6, 1e6, &c.temperature), temperature_given = 1;
            break;
        case OPT_SEED: code = cli_parse_size("--seed", optarg, 0, SIZE_MAX, &seed), seed_given = 1; break;
        case OPT_TRACE:
            if (n_traces == SIM_MAX_LAYERS) return cli_fail(CLI_USAGE, "--trace: more than %d layers", SIM_MAX_LAYERS);
            trace_weights[n_traces] = NULL;
            traces[n_traces++] = optarg;
            break;
        case OPT_TRACE_WEIGHTS:
            if (n_traces == 0 || trace_weights[n_traces - 1] != NULL)
                return cli_fail(CLI_USAGE, "--trace-weights F.npy follows the --trace ids.npy it belongs to, once");
            trace_weights[n_traces - 1] = optarg;
            break;
        case OPT_COMPARE: compare = optarg; break;
        case OPT_REPLAN: code = cli_parse_int("--replan", optarg, 0, 1 << 24, &replan); break;
        case OPT_WINDOW: code = cli_parse_int("--window", optarg, 1, 1 << 16, &window); break;
        case OPT_ALPHA_INTRA: code = cli_parse_double("--alpha-intra", optarg, 0, 1, &c.cost.alpha_intra); break;
        case OPT_BETA_INTRA: code = cli_parse_double("--beta-intra", optarg, 1, 1e15, &c.cost.beta_intra); break;
        case OPT_ALPHA_INTER: code = cli_parse_double("--alpha-inter", optarg, 0, 1, &c.cost.alpha_inter); break;
        case OPT_BETA_INTER: code = cli_parse_double("--beta-inter", optarg, 1, 1e15, &c.cost.beta_inter); break;
        case OPT_ROW_BYTES: code = cli_parse_double("--row-bytes", optarg, 0, 1e12, &c.cost.bytes_per_row); break;
        case OPT_EXPERT_SECONDS: code = cli_parse_double("--expert-seconds", optarg, 0, 1, &c.cost.expert_seconds); break;
        case OPT_EXPERT_BYTES: code = cli_parse_double("--expert-bytes", optarg, 0, 1e15, &c.expert_bytes); break;
        case OPT_THREADS: code = cli_parse_int("--threads", optarg, 1, 4096, &c.threads); break;
        case OPT_QUIET: quiet = 1; break;
        case OPT_OUT: out_dir = optarg; break;
        case OPT_REPLAY: replay = optarg; break;
        case OPT_CORRELATION: code = cli_parse_double("--correlation", optarg, 0, 0.999999, &c.correlation); break;
        case OPT_SEQ_LEN: code = cli_parse_size("--seq-len", optarg, 1, (size_t)1 << 30, &c.seq_len); break;
        case OPT_DRIFT: {
            if (drift) return cli_fail(CLI_USAGE, "--drift given twice (%s, %s): one drift", drift, optarg);
            drift = optarg;
            char *end = NULL;
            if (!strncmp(optarg, "walk:", 5)) {
                c.walk_sigma = strtod(optarg + 5, &end);
                if (end == optarg + 5 || *end || !isfinite(c.walk_sigma) || c.walk_sigma <= 0 || c.walk_sigma > 100)
                    code = cli_fail(CLI_USAGE, "--drift: '%s' is not walk:SIGMA with 0 < SIGMA <= 100", optarg);
            } else if (!strncmp(optarg, "rotate:", 7)) {
                const long n = strtol(optarg + 7, &end, 10);
                if (end == optarg + 7 || *end || n < 1 || n > (1 << 24))
                    code = cli_fail(CLI_USAGE, "--drift: '%s' is not rotate:N with N >= 1 steps", optarg);
                c.rotate_every = (int)n;
            } else {
                code = cli_fail(CLI_USAGE, "--drift: '%s' is not walk:SIGMA or rotate:N", optarg);
            }
            break;
        }
        default:
            code = router_cli_option(&rc, opt, optarg);
            if (code < 0) return cli_usage_error("simulate", "unknown option or missing value");
            router_given = 1;
        }
        if (code != CLI_OK) return code;
    }
    if (optind < argc) return cli_usage_error("simulate", "unexpected argument");
    if (out_dir == NULL) return cli_usage_error("simulate", "--out DIR is required");
    if (replay != NULL) {
        /* Only where the outputs go, and how loudly, may join a replay. */
        int others = 0;
        for (int i = 1; i < argc; i++)
            if (argv[i][0] == '-' && strcmp(argv[i], "--replay") && strcmp(argv[i], "--out") && strcmp(argv[i], "--quiet") &&
                strcmp(argv[i], "--threads") && strncmp(argv[i], "--replay=", 9) && strncmp(argv[i], "--out=", 6) &&
                strncmp(argv[i], "--threads=", 10))
                others++;
        if (others) return cli_fail(CLI_USAGE, "--replay runs a summary's configuration: only --out, --threads and "
                                               "--quiet go with it");
        return replay_summary(replay, out_dir, quiet, c.threads);
    }
    c.seed = (uint64_t)seed;
    /* Conflicting options. */
    if (c.ranks % c.nodes != 0) return cli_fail(CLI_USAGE, "--ranks %d do not divide into --nodes %d", c.ranks, c.nodes);
    if (n_traces && (profile || counts_path))
        return cli_fail(CLI_USAGE, "--trace replays recorded choices: --profile and --counts do not apply");
    if (profile && counts_path) return cli_fail(CLI_USAGE, "--profile and --counts are two profiles: give one");
    if (n_traces && (drift || c.correlation > 0 || c.seq_len))
        return cli_fail(CLI_USAGE, "--trace replays recorded choices: --drift, --correlation and --seq-len do not apply");
    if (c.seq_len && c.correlation == 0) return cli_fail(CLI_USAGE, "--seq-len goes with --correlation");
    if (c.correlation > 0 && c.seq_len == 0) c.seq_len = 64;
    if (counts_select && !counts_path) return cli_fail(CLI_USAGE, "--counts-select needs --counts");
    if (n_traces && router_given)
        return cli_fail(CLI_USAGE, "--trace replays recorded choices: routing options do not apply");
    if (rc.given >> (ROUTER_OPT_ROUTE_GROUPS - ROUTER_OPT_POLICY) & 1)
        return cli_fail(CLI_USAGE, "--route-groups: each rank's tokens are its routing group in a simulation");
    if (n_traces && (sample_given || temperature_given || seed_given))
        return cli_fail(CLI_USAGE, "--trace replays recorded choices: --sample, --temperature and --seed do not apply");
    if (n_traces && !k_given && !is_npy(traces[0]))
        c.k = 6; /* ESFT-vanilla-lite's; a .npy trace's is its own */
    if (n_traces && !tokens_given) c.tokens_per_rank = 0; /* the whole trace each step, split over the ranks */
    if (n_traces && !steps_given) c.steps = 2; /* the first measures, the second runs on the plan */
    if (!n_traces && !counts_path && (size_t)c.k > c.experts)
        return cli_fail(CLI_USAGE, "--k %d exceeds --experts %zu", c.k, c.experts);

    sim_strategy strategies[SIM_MAX_STRATEGIES];
    int count = 0;
    {
        char list[1024];
        if (strlen(compare ? compare : "") >= sizeof list) return cli_fail(CLI_USAGE, "--compare: too long");
        /* a trace's recorded choices cannot be re-routed: compare placements by default */
        strcpy(list, compare ? compare : n_traces ? "contiguous,round-robin,balanced" : "none,capacity:1.25,aux-free:0.001");
        if (list[0] == ',' || list[strlen(list) - 1] == ',' || strstr(list, ",,"))
            return cli_fail(CLI_USAGE, "--compare: an empty strategy in '%s'", list);
        char *save = NULL;
        for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
            if (count == SIM_MAX_STRATEGIES) return cli_fail(CLI_USAGE, "--compare: more than %d strategies", SIM_MAX_STRATEGIES);
            if ((code = parse_strategy(item, replan, window, &strategies[count])) != CLI_OK) return code;
            if (n_traces && strategies[count].balance != SIM_BALANCE_NONE &&
                strategies[count].balance != SIM_BALANCE_CAPACITY)
                return cli_fail(CLI_USAGE, "--compare: %s re-routes, which a trace's recorded choices cannot", item);
            count++;
        }
        if (count == 0) return cli_fail(CLI_USAGE, "--compare: no strategy");
    }
    /* The workload. */
    double *means = NULL;
    sim_trace *layers = n_traces ? calloc((size_t)n_traces, sizeof *layers) : NULL;
    code = CLI_OK;
    if (n_traces == 0) {
        if (counts_path) {
            size_t found = experts_given ? c.experts : 0;
            const moert_status st = sim_profile_read_counts(counts_path, counts_select, &found, &means);
            if (st != MOERT_OK) code = st == MOERT_EINVAL ? cli_fail(CLI_USAGE, "--counts: %s", moert_last_error())
                                                         : cli_fail_status(st, "--counts");
            else c.experts = found;
        } else {
            means = malloc(c.experts * sizeof *means);
            const moert_status st = means ? sim_profile_parse(profile ? profile : "uniform", c.experts, means) : MOERT_ENOMEM;
            if (st != MOERT_OK) code = cli_fail(st == MOERT_EINVAL ? CLI_USAGE : CLI_FAIL, "--profile: %s", moert_last_error());
        }
        c.means = means;
    } else {
        for (int l = 0; code == CLI_OK && l < n_traces; l++) {
            const int npy = is_npy(traces[l]);
            if (!npy && trace_weights[l])
                code = cli_fail(CLI_USAGE, "--trace-weights goes with an ids.npy trace, not %s", traces[l]);
            const moert_status st = code != CLI_OK ? MOERT_EINVAL
                                    : npy          ? sim_trace_read_npy(traces[l], trace_weights[l], c.experts, &layers[l])
                                                   : sim_trace_read_esft(traces[l], (size_t)c.k, c.experts, &layers[l]);
            if (code != CLI_OK) break;
            if (st != MOERT_OK) code = cli_fail_status(st, "--trace");
            else if (npy && !k_given && l == 0) c.k = (int)layers[l].k; /* .npy: k is the file's */
            if (code == CLI_OK && layers[l].k != (size_t)c.k)
                code = cli_fail(CLI_USAGE, "--trace %s has %zu experts a token, --k is %d", traces[l], layers[l].k, c.k);
        }
    }
    if (code == CLI_OK && (size_t)c.k > c.experts) code = cli_fail(CLI_USAGE, "--k %d exceeds the %zu experts", c.k, c.experts);
    if (code == CLI_OK && !n_traces) { /* the routing of strategy none, and the base of the others */
        rc.config.k = c.k, rc.config.seed = c.seed;
        code = router_cli_finish(&rc, c.experts);
        c.router = rc.config;
    }
    /* Every strategy's placement and routing checked before any output is written. */
    double *uniform = code == CLI_OK ? malloc(c.experts * sizeof *uniform) : NULL;
    for (size_t e = 0; uniform && e < c.experts; e++) uniform[e] = 1.0;
    for (int i = 0; code == CLI_OK && i < count; i++) {
        sim_placement probe;
        moert_status st = uniform ? sim_place_groups(strategies[i].place, c.experts, c.ranks, c.nodes, strategies[i].replicas,
                                                     strategies[i].groups, uniform, &probe)
                                  : MOERT_ENOMEM;
        if (st == MOERT_OK) sim_placement_free(&probe);
        if (st == MOERT_OK && !n_traces) { /* its routing, with a stand-in for aux-free's bias */
            float *zeros = calloc(c.experts, sizeof *zeros);
            const moert_router_config rcfg = sim_router_config(&c, &strategies[i], zeros, 0.0);
            st = zeros ? moert_router_config_check(&rcfg, c.experts) : MOERT_ENOMEM;
            free(zeros);
        }
        if (st != MOERT_OK)
            code = cli_fail(st == MOERT_EINVAL ? CLI_USAGE : CLI_FAIL, "--compare %s: %s", strategies[i].name,
                            moert_last_error());
    }
    free(uniform);
    if (code == CLI_OK) code = make_dir(out_dir);
    char path[4096];
    sim_output out = {0};
    out.strategies = strategies, out.count = count, out.experts = c.experts;
    if (code == CLI_OK) {
        snprintf(path, sizeof path, "%s/steps.csv", out_dir);
        out.csv = fopen(path, "w");
        if (out.csv == NULL) code = cli_fail(CLI_FAIL, "--out: cannot write %s: %s", path, strerror(errno));
        else
            fputs("strategy,layer,step,max_over_mean,cv,dropped,unrouted,inter_node_bytes,intra_node_bytes,step_time_s,"
                  "dispatch_s,compute_s,combine_s,straggler,moved_bytes,experts_per_token\n",
                  out.csv);
        out.shares = calloc((size_t)(n_traces ? n_traces : 1) * c.experts, sizeof(double));
        out.ranks = c.ranks, out.steps = c.steps;
        out.heat = calloc((size_t)c.steps * c.experts, sizeof(double));
        out.ranks_last = calloc((size_t)count * (size_t)c.ranks, sizeof(double));
        out.ranks_before = calloc((size_t)count * (size_t)c.ranks, sizeof(double));
        if (!out.shares || !out.heat || !out.ranks_last || !out.ranks_before)
            code = cli_fail(CLI_FAIL, "simulate: out of memory");
    }
    const int sampled = n_traces == 0 && c.sample < c.tokens_per_rank;
    struct timespec start, stop;
    clock_gettime(CLOCK_MONOTONIC, &start);
    out.progress = !quiet && isatty(STDERR_FILENO);
    out.total = (long)(n_traces ? n_traces : 1) * c.steps * count;
    out.start = out.last = start;
    for (int l = 0; code == CLI_OK && l < (n_traces ? n_traces : 1); l++) {
        out.layer = l;
        c.trace = n_traces ? &layers[l] : NULL;
        const moert_status st = sim_run(&c, strategies, count, on_step, &out);
        if (st != MOERT_OK) code = cli_fail(st == MOERT_EINVAL ? CLI_USAGE : CLI_FAIL, "simulate: %s", moert_last_error());
    }
    clock_gettime(CLOCK_MONOTONIC, &stop);
    if (out.progress && code == CLI_OK) show_progress(&out, 1);
    const double seconds = seconds_between(start, stop);
    if (out.csv && fclose(out.csv) != 0 && code == CLI_OK) code = cli_fail(CLI_FAIL, "--out: cannot write steps.csv");
    if (code == CLI_OK) { /* summary.json */
        cJSON *o = cJSON_CreateObject(), *cfg = cJSON_AddObjectToObject(o, "config");
        cJSON_AddStringToObject(o, "version", moert_version());
        cJSON_AddNumberToObject(cfg, "ranks", c.ranks), cJSON_AddNumberToObject(cfg, "nodes", c.nodes);
        cJSON_AddNumberToObject(cfg, "experts", (double)c.experts), cJSON_AddNumberToObject(cfg, "k", c.k);
        cJSON_AddNumberToObject(cfg, "tokens_per_rank", (double)c.tokens_per_rank);
        cJSON_AddNumberToObject(cfg, "sample", (double)c.sample);
        cJSON_AddBoolToObject(cfg, "sampled", sampled);
        cJSON_AddNumberToObject(cfg, "steps", c.steps);
        char seed_text[24];
        snprintf(seed_text, sizeof seed_text, "%llu", (unsigned long long)c.seed);
        cJSON_AddStringToObject(cfg, "seed", seed_text);
        if (n_traces) {
            cJSON *tr = cJSON_AddArrayToObject(cfg, "trace");
            cJSON *tw = cJSON_AddArrayToObject(cfg, "trace_weights");
            for (int l = 0; l < n_traces; l++) { /* absolute: a replay may run elsewhere */
                char *full = realpath(traces[l], NULL);
                cJSON_AddItemToArray(tr, cJSON_CreateString(full ? full : traces[l]));
                free(full);
                full = trace_weights[l] ? realpath(trace_weights[l], NULL) : NULL;
                cJSON_AddItemToArray(tw, trace_weights[l] ? cJSON_CreateString(full ? full : trace_weights[l])
                                                          : cJSON_CreateNull());
                free(full);
            }
        } else if (counts_path) {
            char *full = realpath(counts_path, NULL);
            cJSON_AddStringToObject(cfg, "counts", full ? full : counts_path);
            free(full);
            if (counts_select) cJSON_AddStringToObject(cfg, "counts_select", counts_select);
        } else {
            cJSON_AddStringToObject(cfg, "profile", profile ? profile : "uniform");
        }
        cJSON_AddNumberToObject(cfg, "temperature", c.temperature);
        if (drift) cJSON_AddStringToObject(cfg, "drift", drift);
        if (c.correlation > 0)
            cJSON_AddNumberToObject(cfg, "correlation", c.correlation), cJSON_AddNumberToObject(cfg, "seq_len", (double)c.seq_len);
        cJSON_AddNumberToObject(cfg, "replan", replan), cJSON_AddNumberToObject(cfg, "window", window);
        char names[SIM_MAX_STRATEGIES * 65] = "";
        for (int i = 0, at = 0; i < count; i++)
            at += snprintf(names + at, sizeof names - (size_t)at, "%s%s", i ? "," : "", strategies[i].name);
        cJSON_AddStringToObject(cfg, "compare", names);
        if (!n_traces) {
            cJSON *router = cJSON_AddObjectToObject(cfg, "router");
            router_cli_to_json(&rc, router);
            const char *const files[2] = {"bias", "noise_scales"}; /* absolute, as the traces */
            for (int i = 0; i < 2; i++) {
                const cJSON *v = cJSON_GetObjectItem(router, files[i]);
                char *full = cJSON_IsString(v) ? realpath(v->valuestring, NULL) : NULL;
                if (full) cJSON_ReplaceItemInObject(router, files[i], cJSON_CreateString(full));
                free(full);
            }
        }
        cJSON *cost = cJSON_AddObjectToObject(cfg, "cost");
        cJSON_AddNumberToObject(cost, "alpha_intra", c.cost.alpha_intra);
        cJSON_AddNumberToObject(cost, "beta_intra", c.cost.beta_intra);
        cJSON_AddNumberToObject(cost, "alpha_inter", c.cost.alpha_inter);
        cJSON_AddNumberToObject(cost, "beta_inter", c.cost.beta_inter);
        cJSON_AddNumberToObject(cost, "row_bytes", c.cost.bytes_per_row);
        cJSON_AddNumberToObject(cost, "expert_seconds", c.cost.expert_seconds);
        cJSON_AddNumberToObject(cost, "expert_bytes", c.expert_bytes);
        cJSON *list = cJSON_AddArrayToObject(o, "strategies");
        for (int i = 0; i < count; i++) {
            cJSON *s = cJSON_CreateObject();
            const double n = out.records[i] ? (double)out.records[i] : 1;
            cJSON_AddStringToObject(s, "name", strategies[i].name);
            cJSON_AddNumberToObject(s, "mean_max_over_mean", out.sum_mom[i] / n);
            cJSON_AddNumberToObject(s, "mean_straggler", out.sum_straggler[i] / n);
            cJSON_AddNumberToObject(s, "mean_step_time_s", out.sum_time[i] / n);
            cJSON_AddNumberToObject(s, "dropped", out.sum_dropped[i]);
            cJSON_AddNumberToObject(s, "unrouted", out.sum_unrouted[i]);
            cJSON_AddNumberToObject(s, "inter_node_bytes", out.sum_inter[i]);
            cJSON_AddNumberToObject(s, "moved_bytes", out.sum_moved[i]);
            const double layers = n_traces ? n_traces : 1;
            cJSON_AddNumberToObject(s, "last_step_max_over_mean", out.last_mom[i] / layers);
            cJSON_AddNumberToObject(s, "last_step_straggler", out.last_straggler[i] / layers);
            cJSON_AddNumberToObject(s, "last_step_time_s", out.last_time[i] / layers);
            cJSON_AddItemToArray(list, s);
        }
        /* Each layer's expert shares (the first strategy's: without capacity, the workload's own). */
        cJSON *shares = cJSON_AddArrayToObject(o, "expert_shares");
        for (int l = 0; l < (n_traces ? n_traces : 1); l++) {
            double total = 0;
            for (size_t e = 0; e < c.experts; e++) total += out.shares[(size_t)l * c.experts + e];
            cJSON *row = cJSON_CreateArray();
            for (size_t e = 0; e < c.experts; e++)
                cJSON_AddItemToArray(row, cJSON_CreateNumber(total > 0 ? out.shares[(size_t)l * c.experts + e] / total : 0));
            cJSON_AddItemToArray(shares, row);
        }
        cJSON_AddNumberToObject(o, "seconds", seconds);
        char *text = cJSON_Print(o);
        snprintf(path, sizeof path, "%s/summary.json", out_dir);
        FILE *f = text ? fopen(path, "w") : NULL;
        if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) code = cli_fail(CLI_FAIL, "--out: cannot write %s", path);
        cJSON_free(text);
        cJSON_Delete(o);
    }
    if (code == CLI_OK) code = write_plots(&out, out_dir, quiet);
    if (code == CLI_OK && !quiet) {
        if (c.tokens_per_rank)
            printf("simulated %d ranks in %d nodes, %zu experts, k=%d, %d steps x %zu tokens per rank", c.ranks, c.nodes,
                   c.experts, c.k, c.steps, c.tokens_per_rank);
        else
            printf("replayed %d layer%s of %zu tokens on %d ranks in %d nodes, %zu experts, k=%d, %d step%s", n_traces,
                   n_traces == 1 ? "" : "s", layers[0].tokens, c.ranks, c.nodes, c.experts, c.k, c.steps,
                   c.steps == 1 ? "" : "s");
        if (sampled) printf(" (sampled: %zu tokens per rank and step routed, counts scaled by %.4g)", c.sample,
                            (double)c.tokens_per_rank / (double)c.sample);
        printf(", %d strateg%s in %.2f s -> %s\n", count, count == 1 ? "y" : "ies", seconds, out_dir);
        for (int i = 0; i < count; i++) {
            const double n = out.records[i] ? (double)out.records[i] : 1;
            const double layers = n_traces ? n_traces : 1;
            printf("  %-28s max/mean %.3f  straggler %.3f (last step %.3f)  step %.3g ms  dropped %.4g  inter-node "
                   "%.4g GB  moved %.4g GB\n",
                   strategies[i].name, out.sum_mom[i] / n, out.sum_straggler[i] / n, out.last_straggler[i] / layers,
                   1e3 * out.sum_time[i] / n, out.sum_dropped[i], out.sum_inter[i] / 1e9, out.sum_moved[i] / 1e9);
        }
    }
    free(means), free(out.shares), free(out.heat), free(out.ranks_last), free(out.ranks_before);
    router_cli_free(&rc);
    for (int l = 0; l < n_traces; l++) sim_trace_free(&layers[l]);
    free(layers);
    return code;
}

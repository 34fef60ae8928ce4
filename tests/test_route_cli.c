/* `moert route` end to end, without Python: logits written as .npy from C, the tool run,
 * its files read back and checked against the library and hand-worked values; and every
 * kind of bad input, each a non-zero exit with a one-line error and no files left. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moert/moert.h"
#include "tools/npy.h"

static const char *moert_bin;
static char workdir[256];

static const float hand[16] = {2, 1, 0, -1, 0, 3, 1, 0, 1, 1, 2, 0, -1, 3.5f, 0, 4};

/* Runs `moert ARGS` with stderr to a file; returns the exit status, and the error text. */
static int run(const char *args, char *err, size_t err_cap) {
    char cmd[4200], err_path[512];
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", workdir);
    snprintf(cmd, sizeof cmd, "%s %s >/dev/null 2>%s", moert_bin, args, err_path);
    const int status = system(cmd);
    FILE *f = fopen(err_path, "r");
    size_t n = f ? fread(err, 1, err_cap - 1, f) : 0;
    err[n] = '\0';
    if (f) fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void path(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", workdir, name); }

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static void write_logits(const char *name, const float *x, size_t T, size_t E) {
    char p[512];
    path(p, sizeof p, name);
    const size_t shape[2] = {T, E};
    ck_assert_int_eq(npy_write(p, NPY_F32, 2, shape, x), MOERT_OK);
}

static void write_bytes(const char *name, const void *bytes, size_t n) {
    char p[512];
    path(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

/* A .npy of `dict` followed by `data`. */
static void write_npy_data(const char *name, const char *dict, const void *data, size_t data_bytes) {
    char header[512];
    int n = snprintf(header, sizeof header, "%s", dict);
    while ((10 + n + 1) % 64) header[n++] = ' ';
    header[n++] = '\n';
    unsigned char *buf = malloc(10 + (size_t)n + data_bytes);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(n & 0xFF), buf[9] = (unsigned char)(n >> 8);
    memcpy(buf + 10, header, (size_t)n);
    memcpy(buf + 10 + n, data, data_bytes);
    write_bytes(name, buf, 10 + (size_t)n + data_bytes);
    free(buf);
}

/* A .npy whose header is `dict` and whose data is `data_bytes` of zeros. */
static void write_npy_with_header(const char *name, const char *dict, size_t data_bytes) {
    void *zeros = calloc(1, data_bytes + 1);
    write_npy_data(name, dict, zeros, data_bytes);
    free(zeros);
}

/* The IEEE half of a float that one holds exactly (the hand logits: small integers and
 * halves), little-endian. */
static uint16_t half_of(float x) {
    if (x == 0.0f) return 0;
    uint32_t b;
    memcpy(&b, &x, 4);
    const uint32_t sign = b >> 31, exponent = (b >> 23) & 0xFF, mantissa = b & 0x7FFFFF;
    return (uint16_t)(sign << 15 | (exponent - 127 + 15) << 10 | mantissa >> 13);
}

/* The plan files of DIR, read back: token offsets, ids and weights. */
static void read_plan(const char *dir, int64_t **offsets, int64_t **ids, float **weights, size_t *entries) {
    char f[1100];
    size_t shape[2];
    snprintf(f, sizeof f, "%s/token_offsets.npy", dir);
    ck_assert_int_eq(npy_read_i64(f, 1, offsets, shape), MOERT_OK);
    snprintf(f, sizeof f, "%s/expert_ids.npy", dir);
    ck_assert_int_eq(npy_read_i64(f, 1, ids, shape), MOERT_OK);
    *entries = shape[0];
    snprintf(f, sizeof f, "%s/weights.npy", dir);
    ck_assert_int_eq(npy_read_f32(f, 1, weights, shape), MOERT_OK);
}

START_TEST(route_writes_readable_plan) {
    write_logits("hand.npy", hand, 4, 4);
    char args[2048], err[1024], out[512], f[1100];
    path(out, sizeof out, "plan");
    snprintf(args, sizeof args, "route --logits %s/hand.npy --out %s --capacity-factor 1", workdir, out);
    ck_assert_msg(run(args, err, sizeof err) == 0, "%s", err);

    /* Hand-worked (tests/test_router.c): capacity 2, drop `probs` leaves t0 with expert 0. */
    int64_t *offsets, *counts, *ids64;
    float *w;
    size_t shape[2];
    snprintf(f, sizeof f, "%s/token_offsets.npy", out);
    ck_assert_int_eq(npy_read_i64(f, 1, &offsets, shape), MOERT_OK);
    ck_assert_int_eq(shape[0], 5);
    const int64_t want_offsets[5] = {0, 1, 3, 5, 7};
    for (int i = 0; i < 5; i++) ck_assert_int_eq(offsets[i], want_offsets[i]);
    snprintf(f, sizeof f, "%s/expert_ids.npy", out);
    ck_assert_int_eq(npy_read_i64(f, 1, &ids64, shape), MOERT_OK);
    const int64_t want_ids[7] = {0, 1, 2, 2, 0, 3, 1};
    for (int i = 0; i < 7; i++) ck_assert_int_eq(ids64[i], want_ids[i]);
    snprintf(f, sizeof f, "%s/weights.npy", out);
    ck_assert_int_eq(npy_read_f32(f, 1, &w, shape), MOERT_OK);
    ck_assert_float_eq_tol(w[0], 0.7310586f, 1e-6f); ck_assert_float_eq_tol(w[6], 0.3775407f, 1e-6f);
    snprintf(f, sizeof f, "%s/expert_counts.npy", out);
    ck_assert_int_eq(npy_read_i64(f, 1, &counts, shape), MOERT_OK);
    const int64_t want_counts[4] = {2, 2, 2, 1};
    for (int i = 0; i < 4; i++) ck_assert_int_eq(counts[i], want_counts[i]);
    free(offsets), free(ids64), free(w), free(counts);

    /* stats.json carries the named fields. */
    snprintf(f, sizeof f, "%s/stats.json", out);
    FILE *js = fopen(f, "r");
    ck_assert_ptr_nonnull(js);
    char text[8192];
    text[fread(text, 1, sizeof text - 1, js)] = '\0';
    fclose(js);
    const char *keys[] = {"tokens", "experts", "assignments", "dropped", "unrouted", "aux_loss", "z_loss",
                          "max_over_mean", "cv", "entropy", "experts_per_token", "sparsity", "capacity"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char quoted[64];
        snprintf(quoted, sizeof quoted, "\"%s\":", keys[i]);
        ck_assert_msg(strstr(text, quoted) != NULL, "stats.json lacks %s", keys[i]);
    }
    ck_assert(strstr(text, "\"dropped\":\t1") != NULL);
}
END_TEST

START_TEST(route_matches_library_on_random_logits) {
    const size_t T = 777, E = 48;
    float *x = malloc(T * E * sizeof(float));
    unsigned s = 12345;
    for (size_t i = 0; i < T * E; i++) {
        s = s * 1103515245u + 12345u;
        x[i] = (float)((int)(s >> 8) % 2000 - 1000) / 250.0f;
    }
    write_logits("random.npy", x, T, E);
    const char *policies[] = {"--k 6 --capacity-factor 1.25 --drop position",
                              "--policy expert-choice --capacity-factor 2 --threads 2",
                              "--policy relu --relu-threshold 2.5", "--score sigmoid --renormalize --k 4 --groups 8 --topk-groups 2",
                              "--policy batch-topk --k 3 --renormalize --threads 2", "--policy sparsemax --k-max 4",
                              "--k 4 --noise normal:0.7 --seed 9 --threads 2", "--k 4 --noise gumbel:0.5 --seed 3 --noisy-weights",
                              "--k 5 --score softpick", "--k 5 --score sqrt-softplus --renormalize",
                              "--policy batch-topk --k 2 --threshold 0.04"};
    for (int p = 0; p < 11; p++) {
        moert_router_config c = moert_router_config_default();
        if (p == 0) c.k = 6, c.capacity_factor = 1.25f, c.drop_policy = MOERT_DROP_POSITION;
        if (p == 1) c.policy = MOERT_POLICY_EXPERT_CHOICE, c.capacity_factor = 2.0f;
        if (p == 2) c.policy = MOERT_POLICY_RELU, c.relu_threshold = 2.5f;
        if (p == 3) c.score = MOERT_SCORE_SIGMOID, c.renormalize = 1, c.k = 4, c.groups = 8, c.topk_groups = 2;
        if (p == 4) c.policy = MOERT_POLICY_BATCH_TOPK, c.k = 3, c.renormalize = 1;
        if (p == 5) c.policy = MOERT_POLICY_SPARSEMAX, c.k_max = 4;
        if (p == 6) c.k = 4, c.noise = MOERT_NOISE_NORMAL, c.noise_scale = 0.7f, c.seed = 9;
        if (p == 7) c.k = 4, c.noise = MOERT_NOISE_GUMBEL, c.noise_temperature = 0.5f, c.seed = 3, c.noisy_weights = 1;
        if (p == 8) c.k = 5, c.score = MOERT_SCORE_SOFTPICK;
        if (p == 9) c.k = 5, c.score = MOERT_SCORE_SQRT_SOFTPLUS, c.renormalize = 1;
        if (p == 10) c.policy = MOERT_POLICY_BATCH_TOPK, c.k = 2, c.use_threshold = 1, c.threshold = 0.04f;
        moert_router *r;
        moert_plan *plan;
        ck_assert_int_eq(moert_router_create(&c, E, &r), MOERT_OK);
        moert_plan_create(&plan);
        ck_assert_int_eq(moert_router_route(r, x, T, plan), MOERT_OK);
        moert_plan_view v;
        moert_plan_get_view(plan, &v);

        char args[2048], err[1024], out[512];
        snprintf(out, sizeof out, "%s/random%d", workdir, p);
        snprintf(args, sizeof args, "route --logits %s/random.npy --out %s %s --quiet", workdir, out, policies[p]);
        ck_assert_msg(run(args, err, sizeof err) == 0, "%s", err);
        int64_t *offsets, *ids;
        float *w;
        size_t entries;
        read_plan(out, &offsets, &ids, &w, &entries);
        ck_assert(!memcmp(offsets, v.token_offsets, (T + 1) * sizeof(int64_t)));
        ck_assert_int_eq(entries, v.entries);
        for (size_t i = 0; i < v.entries; i++) ck_assert_int_eq(ids[i], v.expert_ids[i]);
        ck_assert(!memcmp(w, v.weights, v.entries * sizeof(float)));
        free(offsets), free(ids), free(w);
        moert_plan_destroy(plan);
        moert_router_destroy(r);
    }
    free(x);
}
END_TEST

/* `moert ARGS` fails with status `want`, a one-line "moert:" error mentioning `needle`,
 * and leaves no plan files in DIR/bad. */
static void expect_failure(const char *args_tail, int want, const char *needle) {
    char args[2048], err[2048], out[512], f[1100];
    path(out, sizeof out, "bad");
    snprintf(args, sizeof args, "route --out %s %s", out, args_tail);
    const int status = run(args, err, sizeof err);
    ck_assert_msg(status == want, "'%s' exited %d, expected %d: %s", args_tail, status, want, err);
    ck_assert_msg(strncmp(err, "moert: ", 7) == 0, "'%s': error does not start with 'moert:': %s", args_tail, err);
    ck_assert_msg(strchr(err, '\n') == err + strlen(err) - 1, "'%s': error is not one line: %s", args_tail, err);
    ck_assert_msg(strstr(err, needle) != NULL, "'%s': error does not mention '%s': %s", args_tail, needle, err);
    const char *files[] = {"token_offsets.npy", "expert_ids.npy", "weights.npy", "expert_counts.npy", "stats.json"};
    for (int i = 0; i < 5; i++) {
        snprintf(f, sizeof f, "%s/%s", out, files[i]);
        ck_assert_msg(!exists(f), "'%s' left %s behind", args_tail, files[i]);
    }
}

START_TEST(bad_inputs_fail_cleanly) {
    char a[2048];
    write_logits("hand.npy", hand, 4, 4);
    float nan_logits[16];
    memcpy(nan_logits, hand, sizeof hand);
    nan_logits[9] = NAN;
    write_logits("nan.npy", nan_logits, 4, 4);
    nan_logits[9] = INFINITY;
    write_logits("inf.npy", nan_logits, 4, 4);
#define L(name) (snprintf(a, sizeof a, "--logits %s/" name, workdir), a)
    char args[1200];
#define WITH(name, rest) (snprintf(args, sizeof args, "--logits %s/%s %s", workdir, name, rest), args)
    expect_failure(L("nan.npy"), 1, "logits[2,1] is NaN");
    expect_failure(L("inf.npy"), 1, "logits[2,1] is +inf");
    expect_failure(WITH("hand.npy", "--k 0"), 2, "k=0");
    expect_failure(WITH("hand.npy", "--k 5"), 2, "k=5 exceeds num_experts=4");
    expect_failure(WITH("hand.npy", "--groups 3 --topk-groups 1"), 2, "groups=3 does not divide experts=4");
    expect_failure(WITH("hand.npy", "--groups 2 --topk-groups 3"), 2, "topk_groups=3");
    expect_failure(WITH("hand.npy", "--groups 2"), 2, "--groups and --topk-groups");
    expect_failure(WITH("hand.npy", "--capacity-factor -1"), 2, "--capacity-factor");
    expect_failure(WITH("hand.npy", "--policy expert-choice --capacity-factor 0.4"), 1, "rounds to 0");
    expect_failure(WITH("hand.npy", "--policy sideways"), 2, "--policy");
    expect_failure(WITH("hand.npy", "--unknown"), 2, "unknown option");
    /* Options another policy reads are errors, not ignored. */
    expect_failure(WITH("hand.npy", "--policy relu --k 3"), 2, "--k does not apply to --policy relu");
    expect_failure(WITH("hand.npy", "--policy relu --capacity-factor 1"), 2, "--capacity-factor does not apply");
    expect_failure(WITH("hand.npy", "--policy expert-choice --capacity-factor 2 --pad"), 2,
                   "--pad does not apply to --policy expert-choice");
    expect_failure(WITH("hand.npy", "--relu-threshold 1"), 2, "--relu-threshold does not apply to --policy token-choice");
    /* The new gates' bad input. */
    expect_failure(WITH("hand.npy", "--noise normal"), 2, "is not normal:SCALE or gumbel:TAU");
    expect_failure(WITH("hand.npy", "--noise poisson:1"), 2, "is not normal:SCALE or gumbel:TAU");
    expect_failure(WITH("hand.npy", "--noise normal:abc"), 2, "is not a finite number");
    expect_failure(WITH("hand.npy", "--noise normal:-1"), 2, "is negative");
    expect_failure(WITH("hand.npy", "--noise gumbel:0"), 2, "must be above 0");
    expect_failure(WITH("hand.npy", "--noise gumbel:-2"), 2, "must be above 0");
    expect_failure(WITH("hand.npy", "--noise normal:inf"), 2, "is not a finite number");
    expect_failure(WITH("hand.npy", "--seed 3"), 2, "--noisy-weights and --seed go with --noise");
    expect_failure(WITH("hand.npy", "--policy sparsemax --k-max 0"), 2, "--k-max");
    expect_failure(WITH("hand.npy", "--policy batch-topk --threshold nan"), 2, "NaN is not a threshold");
    expect_failure(WITH("hand.npy", "--threshold 0.1"), 2, "--threshold does not apply to --policy token-choice");
    expect_failure(WITH("hand.npy", "--k-max 2"), 2, "--k-max does not apply to --policy token-choice");
    expect_failure(WITH("hand.npy", "--policy sparsemax --k 2"), 2, "--k does not apply to --policy sparsemax");
    expect_failure(WITH("hand.npy", "--score softpick --groups 2 --topk-groups 1"), 2, "softmax or sigmoid");
    expect_failure(WITH("hand.npy", "--policy relu --score sigmoid"), 2, "does not apply to relu");
    expect_failure(WITH("hand.npy", "--score cosine"), 2, "--score");
    expect_failure(WITH("hand.npy", "--policy batch-topk --batch-score logits --renormalize"), 2, "renormalising logits");
    /* float64 logits beyond float32's range. */
    double big[16] = {0};
    big[6] = -1e39;
    write_npy_data("big64.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }", big, sizeof big);
    expect_failure(L("big64.npy"), 1, "element [1,2] = -1e+39 is outside float32's range");

    const float bias3[3] = {0, 0, 0};
    char p[512];
    path(p, sizeof p, "bias3.npy");
    const size_t three = 3;
    ck_assert_int_eq(npy_write(p, NPY_F32, 1, &three, bias3), MOERT_OK);
    snprintf(a, sizeof a, "--logits %s/hand.npy --score sigmoid --bias %s", workdir, p);
    expect_failure(a, 2, "has 3 values; the logits have 4 experts");

    /* Files that are not valid .npy logits. */
    write_bytes("empty.npy", "", 0);
    expect_failure(L("empty.npy"), 1, "too short");
    write_bytes("magic.npy", "\x93NUMPX\x01\x00\x10\x00{}", 12);
    expect_failure(L("magic.npy"), 1, "bad magic");
    write_npy_with_header("int.npy", "{'descr': '<i4', 'fortran_order': False, 'shape': (4, 4), }", 64);
    expect_failure(L("int.npy"), 1, "integer data");
    write_npy_with_header("complex.npy", "{'descr': '<c8', 'fortran_order': False, 'shape': (4, 4), }", 128);
    expect_failure(L("complex.npy"), 1, "not supported");
    write_npy_with_header("one_d.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (16,), }", 64);
    expect_failure(L("one_d.npy"), 1, "1-D; need 2-D");
    write_npy_with_header("three_d.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 4), }", 64);
    expect_failure(L("three_d.npy"), 1, "3-D; need 2-D");
    write_npy_with_header("fortran.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (4, 4), }", 64);
    expect_failure(L("fortran.npy"), 1, "Fortran order");
    write_npy_with_header("overflow.npy",
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", 64);
    expect_failure(L("overflow.npy"), 1, "overflows");
    write_npy_with_header("truncated.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 4), }", 60);
    expect_failure(L("truncated.npy"), 1, "truncated");
    write_npy_with_header("garbage.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (4, x), }", 64);
    expect_failure(L("garbage.npy"), 1, "shape");
    expect_failure(L("no_such_file.npy"), 1, "No such file");
    expect_failure("", 2, "--logits and --out are required");

    /* An --out that is a file, or under a missing directory. */
    snprintf(a, sizeof a, "route --logits %s/hand.npy --out %s/hand.npy/x", workdir, workdir);
    char err[1024];
    ck_assert_int_eq(run(a, err, sizeof err), 1);
    ck_assert(strncmp(err, "moert: --out: ", 14) == 0);
    snprintf(a, sizeof a, "route --logits %s/hand.npy --out %s/missing/deeper", workdir, workdir);
    ck_assert_int_eq(run(a, err, sizeof err), 1);
    ck_assert(strstr(err, "cannot create") != NULL);
#undef L
#undef WITH
}
END_TEST

START_TEST(float16_and_float64_logits_route_as_float32) {
    write_logits("hand.npy", hand, 4, 4);
    uint16_t h[16];
    double d[16];
    for (int i = 0; i < 16; i++) h[i] = half_of(hand[i]), d[i] = hand[i];
    write_npy_data("hand16.npy", "{'descr': '<f2', 'fortran_order': False, 'shape': (4, 4), }", h, sizeof h);
    write_npy_data("hand64.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }", d, sizeof d);
    const char *inputs[] = {"hand.npy", "hand16.npy", "hand64.npy"};
    int64_t *offsets[3], *ids[3];
    float *w[3];
    size_t entries[3];
    for (int i = 0; i < 3; i++) {
        char args[2048], err[1024], out[512];
        snprintf(out, sizeof out, "%s/dtype%d", workdir, i);
        snprintf(args, sizeof args, "route --logits %s/%s --out %s --k 3 --quiet", workdir, inputs[i], out);
        ck_assert_msg(run(args, err, sizeof err) == 0, "%s: %s", inputs[i], err);
        read_plan(out, &offsets[i], &ids[i], &w[i], &entries[i]);
    }
    for (int i = 1; i < 3; i++) {
        ck_assert_int_eq(entries[i], entries[0]);
        ck_assert(!memcmp(offsets[i], offsets[0], 5 * sizeof(int64_t)));
        ck_assert(!memcmp(ids[i], ids[0], entries[0] * sizeof(int64_t)));
        ck_assert(!memcmp(w[i], w[0], entries[0] * sizeof(float)));
    }
    for (int i = 0; i < 3; i++) free(offsets[i]), free(ids[i]), free(w[i]);
}
END_TEST

START_TEST(failed_runs_leave_no_plan) {
    write_logits("hand.npy", hand, 4, 4);
    float nan_logits[16];
    memcpy(nan_logits, hand, sizeof hand);
    nan_logits[5] = NAN;
    write_logits("nan.npy", nan_logits, 4, 4);
    const char *files[] = {"token_offsets.npy", "expert_ids.npy", "weights.npy", "expert_counts.npy", "stats.json"};
    char args[2048], err[1024], out[512], f[1100];

    /* A good run, then a failing one into the same directory: the earlier plan goes. */
    snprintf(out, sizeof out, "%s/stale", workdir);
    snprintf(args, sizeof args, "route --logits %s/hand.npy --out %s --quiet", workdir, out);
    ck_assert_msg(run(args, err, sizeof err) == 0, "%s", err);
    snprintf(f, sizeof f, "%s/stats.json", out);
    ck_assert(exists(f));
    snprintf(args, sizeof args, "route --logits %s/nan.npy --out %s --quiet", workdir, out);
    ck_assert_int_eq(run(args, err, sizeof err), 1);
    for (int i = 0; i < 5; i++) {
        snprintf(f, sizeof f, "%s/%s", out, files[i]);
        ck_assert_msg(!exists(f), "a failed run left %s of the earlier one", files[i]);
    }

    /* A file that cannot be renamed into place (a directory holds its name): none of the
     * other plan files is left, renamed before it or not. */
    snprintf(out, sizeof out, "%s/blocked", workdir);
    ck_assert_int_eq(mkdir(out, 0777), 0);
    snprintf(f, sizeof f, "%s/weights.npy", out);
    ck_assert_int_eq(mkdir(f, 0777), 0);
    snprintf(f, sizeof f, "%s/weights.npy/x", out);
    write_bytes("blocked/weights.npy/x", "x", 1);
    snprintf(args, sizeof args, "route --logits %s/hand.npy --out %s --quiet", workdir, out);
    ck_assert_int_eq(run(args, err, sizeof err), 1);
    ck_assert_msg(strncmp(err, "moert: ", 7) == 0, "%s", err);
    for (int i = 0; i < 5; i++) {
        if (i == 2) continue;
        snprintf(f, sizeof f, "%s/%s", out, files[i]);
        ck_assert_msg(!exists(f), "a failed rename left %s", files[i]);
    }
}
END_TEST

START_TEST(help_documents_every_option) {
    char args[1200], out_path[512];
    path(out_path, sizeof out_path, "help.txt");
    snprintf(args, sizeof args, "%s route --help > %s", moert_bin, out_path);
    ck_assert_int_eq(system(args), 0);
    FILE *f = fopen(out_path, "r");
    char text[8192];
    text[fread(text, 1, sizeof text - 1, f)] = '\0';
    fclose(f);
    const char *options[] = {"--logits", "--out", "--policy", "--k", "--score", "--softmax-order", "--renormalize",
                             "--scaling", "--groups", "--topk-groups", "--group-score", "--bias", "--capacity-factor",
                             "--drop", "--pad", "--relu-threshold", "--threads", "--route-groups", "--batch-score",
                             "--threshold", "--k-max", "--noise", "--noise-scales", "--noisy-weights", "--seed",
                             "batch-topk", "sparsemax", "softpick", "sqrt-softplus"};
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++)
        ck_assert_msg(strstr(text, options[i]) != NULL, "route --help does not document %s", options[i]);
}
END_TEST

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_route_cli PATH/TO/moert\n");
        return 2;
    }
    moert_bin = argv[1];
    snprintf(workdir, sizeof workdir, "/tmp/moert-route-cli-XXXXXX");
    if (mkdtemp(workdir) == NULL) return 2;
    Suite *s = suite_create("route_cli");
    TCase *tc = tcase_create("route");
    tcase_add_test(tc, route_writes_readable_plan);
    tcase_add_test(tc, route_matches_library_on_random_logits);
    tcase_add_test(tc, bad_inputs_fail_cleanly);
    tcase_add_test(tc, help_documents_every_option);
    tcase_add_test(tc, float16_and_float64_logits_route_as_float32);
    tcase_add_test(tc, failed_runs_leave_no_plan);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    SRunner *runner = srunner_create(s);
    srunner_run_all(runner, CK_NORMAL);
    const int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    char cleanup[512];
    snprintf(cleanup, sizeof cleanup, "rm -rf %s", workdir);
    if (system(cleanup) != 0) fprintf(stderr, "could not remove %s\n", workdir);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

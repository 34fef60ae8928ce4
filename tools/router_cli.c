#include "tools/router_cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"
#include "tools/npy.h"

void router_cli_init(router_cli *rc) {
    memset(rc, 0, sizeof *rc);
    rc->config = moert_router_config_default();
}

void router_cli_free(router_cli *rc) {
    free(rc->bias), free(rc->noise_scales);
    rc->bias = rc->noise_scales = NULL;
    rc->config.bias = rc->config.noise_scales = NULL;
}

static const char *policy_name(moert_policy p) {
    switch (p) {
    case MOERT_POLICY_EXPERT_CHOICE: return "expert-choice";
    case MOERT_POLICY_RELU: return "relu";
    case MOERT_POLICY_BATCH_TOPK: return "batch-topk";
    case MOERT_POLICY_SPARSEMAX: return "sparsemax";
    case MOERT_POLICY_TOKEN_CHOICE: break;
    }
    return "token-choice";
}

static const char *score_name(moert_score s) {
    return s == MOERT_SCORE_SIGMOID    ? "sigmoid"
           : s == MOERT_SCORE_SOFTPICK ? "softpick"
           : s == MOERT_SCORE_SQRT_SOFTPLUS ? "sqrt-softplus"
                                            : "softmax";
}

/* "normal:SCALE" or "gumbel:TAU": the whole text, a finite number, SCALE >= 0, TAU > 0. */
static int parse_noise(moert_router_config *c, const char *arg) {
    const char *colon = strchr(arg, ':');
    const size_t kind = colon ? (size_t)(colon - arg) : strlen(arg);
    int normal = kind == 6 && !strncmp(arg, "normal", 6), gumbel = kind == 6 && !strncmp(arg, "gumbel", 6);
    if (!colon || !(normal || gumbel) || colon[1] == '\0')
        return cli_fail(CLI_USAGE, "--noise: '%s' is not normal:SCALE or gumbel:TAU", arg);
    char *end = NULL;
    errno = 0;
    const double v = strtod(colon + 1, &end);
    if (errno != 0 || *end != '\0' || end == colon + 1 || !isfinite(v) || v > 1e30)
        return cli_fail(CLI_USAGE, "--noise: '%s' is not a finite number", colon + 1);
    if (normal && v < 0) return cli_fail(CLI_USAGE, "--noise: the scale %s is negative", colon + 1);
    if (gumbel && !(v > 0)) return cli_fail(CLI_USAGE, "--noise: the temperature %s must be above 0", colon + 1);
    if (gumbel && (float)v == 0.0f) return cli_fail(CLI_USAGE, "--noise: the temperature %s rounds to 0", colon + 1);
    c->noise = normal ? MOERT_NOISE_NORMAL : MOERT_NOISE_GUMBEL;
    if (normal) c->noise_scale = (float)v;
    else c->noise_temperature = (float)v;
    return CLI_OK;
}

int router_cli_option(router_cli *rc, int opt, const char *arg) {
    moert_router_config *c = &rc->config;
    if (opt >= ROUTER_OPT_POLICY && opt < ROUTER_OPT_END) rc->given |= 1u << (opt - ROUTER_OPT_POLICY);
    switch (opt) {
    case ROUTER_OPT_POLICY:
        if (!strcmp(arg, "token-choice")) c->policy = MOERT_POLICY_TOKEN_CHOICE;
        else if (!strcmp(arg, "expert-choice")) c->policy = MOERT_POLICY_EXPERT_CHOICE;
        else if (!strcmp(arg, "relu")) c->policy = MOERT_POLICY_RELU;
        else if (!strcmp(arg, "batch-topk")) c->policy = MOERT_POLICY_BATCH_TOPK;
        else if (!strcmp(arg, "sparsemax")) c->policy = MOERT_POLICY_SPARSEMAX;
        else return cli_fail(CLI_USAGE, "--policy: '%s' is not token-choice, expert-choice, relu, batch-topk or sparsemax", arg);
        return CLI_OK;
    case ROUTER_OPT_K: return cli_parse_int("--k", arg, 0, MOERT_MAX_EXPERTS, &c->k);
    case ROUTER_OPT_SCORE:
        if (!strcmp(arg, "softmax")) c->score = MOERT_SCORE_SOFTMAX;
        else if (!strcmp(arg, "sigmoid")) c->score = MOERT_SCORE_SIGMOID;
        else if (!strcmp(arg, "softpick")) c->score = MOERT_SCORE_SOFTPICK;
        else if (!strcmp(arg, "sqrt-softplus")) c->score = MOERT_SCORE_SQRT_SOFTPLUS;
        else return cli_fail(CLI_USAGE, "--score: '%s' is not softmax, sigmoid, softpick or sqrt-softplus", arg);
        return CLI_OK;
    case ROUTER_OPT_SOFTMAX_ORDER:
        if (!strcmp(arg, "post")) c->softmax_order = MOERT_SOFTMAX_POST;
        else if (!strcmp(arg, "pre")) c->softmax_order = MOERT_SOFTMAX_PRE;
        else return cli_fail(CLI_USAGE, "--softmax-order: '%s' is not post or pre", arg);
        return CLI_OK;
    case ROUTER_OPT_RENORMALIZE: c->renormalize = 1; return CLI_OK;
    case ROUTER_OPT_SCALING: return cli_parse_float("--scaling", arg, 1e-30, 1e30, &c->scaling);
    case ROUTER_OPT_GROUPS: return cli_parse_int("--groups", arg, 1, MOERT_MAX_EXPERTS, &c->groups);
    case ROUTER_OPT_TOPK_GROUPS: return cli_parse_int("--topk-groups", arg, 1, MOERT_MAX_EXPERTS, &c->topk_groups);
    case ROUTER_OPT_GROUP_SCORE:
        if (!strcmp(arg, "topk-sum")) c->group_score = MOERT_GROUP_SCORE_TOPK_SUM;
        else if (!strcmp(arg, "max")) c->group_score = MOERT_GROUP_SCORE_MAX;
        else return cli_fail(CLI_USAGE, "--group-score: '%s' is not topk-sum or max", arg);
        return CLI_OK;
    case ROUTER_OPT_BIAS: rc->bias_path = arg; return CLI_OK;
    case ROUTER_OPT_CAPACITY_FACTOR:
        return cli_parse_double("--capacity-factor", arg, 0.0, 1e9, &c->capacity_factor);
    case ROUTER_OPT_DROP:
        if (!strcmp(arg, "probs")) c->drop_policy = MOERT_DROP_PROBS;
        else if (!strcmp(arg, "position")) c->drop_policy = MOERT_DROP_POSITION;
        else return cli_fail(CLI_USAGE, "--drop: '%s' is not probs or position", arg);
        return CLI_OK;
    case ROUTER_OPT_PAD: c->pad_to_capacity = 1; return CLI_OK;
    case ROUTER_OPT_RELU_THRESHOLD: return cli_parse_float("--relu-threshold", arg, -1e30, 1e30, &c->relu_threshold);
    case ROUTER_OPT_ROUTE_GROUPS: return cli_parse_int("--route-groups", arg, 1, 1 << 20, &c->route_groups);
    case ROUTER_OPT_ISA:
        if (moert_isa_parse(arg, &c->isa) != MOERT_OK) return cli_fail(CLI_USAGE, "--isa: %s", moert_last_error());
        return CLI_OK;
    case ROUTER_OPT_BATCH_SCORE:
        if (!strcmp(arg, "probs")) c->batch_score = MOERT_BATCH_SCORE_PROBS;
        else if (!strcmp(arg, "logits")) c->batch_score = MOERT_BATCH_SCORE_LOGITS;
        else return cli_fail(CLI_USAGE, "--batch-score: '%s' is not probs or logits", arg);
        return CLI_OK;
    case ROUTER_OPT_THRESHOLD: {
        /* NaN is refused by name: strtod reads "nan". */
        char *end = NULL;
        const double v = strtod(arg, &end);
        if (end != arg && *end == '\0' && isnan(v)) return cli_fail(CLI_USAGE, "--threshold: NaN is not a threshold");
        c->use_threshold = 1;
        return cli_parse_float("--threshold", arg, -1e30, 1e30, &c->threshold);
    }
    case ROUTER_OPT_K_MAX: return cli_parse_int("--k-max", arg, 1, MOERT_MAX_EXPERTS, &c->k_max);
    case ROUTER_OPT_NOISE: return parse_noise(c, arg);
    case ROUTER_OPT_NOISE_SCALES: rc->noise_scales_path = arg; return CLI_OK;
    case ROUTER_OPT_NOISY_WEIGHTS: c->noisy_weights = 1; return CLI_OK;
    case ROUTER_OPT_SEED: {
        size_t seed;
        const int code = cli_parse_size("--seed", arg, 0, SIZE_MAX, &seed);
        c->seed = (uint64_t)seed;
        return code;
    }
    }
    return -1;
}

/* The options each policy reads; any other given is an error, not silently ignored. */
static const struct {
    int opt;
    const char *name;
    unsigned policies; /* bit p: applies to moert_policy p */
} policy_options[] = {
#define TC_ (1u << MOERT_POLICY_TOKEN_CHOICE)
    {ROUTER_OPT_K, "--k", TC_ | 1u << MOERT_POLICY_BATCH_TOPK},
    {ROUTER_OPT_SCORE, "--score", TC_ | 1u << MOERT_POLICY_RELU},
    {ROUTER_OPT_SOFTMAX_ORDER, "--softmax-order", TC_},
    {ROUTER_OPT_RENORMALIZE, "--renormalize", TC_ | 1u << MOERT_POLICY_BATCH_TOPK},
    {ROUTER_OPT_SCALING, "--scaling", TC_},
    {ROUTER_OPT_GROUPS, "--groups", TC_},
    {ROUTER_OPT_TOPK_GROUPS, "--topk-groups", TC_},
    {ROUTER_OPT_GROUP_SCORE, "--group-score", TC_},
    {ROUTER_OPT_BIAS, "--bias", TC_},
    {ROUTER_OPT_CAPACITY_FACTOR, "--capacity-factor", TC_ | 1u << MOERT_POLICY_EXPERT_CHOICE},
    {ROUTER_OPT_DROP, "--drop", TC_},
    {ROUTER_OPT_PAD, "--pad", TC_},
    {ROUTER_OPT_RELU_THRESHOLD, "--relu-threshold", 1u << MOERT_POLICY_RELU},
    {ROUTER_OPT_BATCH_SCORE, "--batch-score", 1u << MOERT_POLICY_BATCH_TOPK},
    {ROUTER_OPT_THRESHOLD, "--threshold", 1u << MOERT_POLICY_BATCH_TOPK},
    {ROUTER_OPT_K_MAX, "--k-max", 1u << MOERT_POLICY_SPARSEMAX},
    {ROUTER_OPT_NOISE, "--noise", TC_},
    {ROUTER_OPT_NOISE_SCALES, "--noise-scales", TC_},
    {ROUTER_OPT_NOISY_WEIGHTS, "--noisy-weights", TC_},
    {ROUTER_OPT_SEED, "--seed", TC_},
#undef TC_
};

/* A float [experts] .npy for an option. */
static int load_vector(const char *option, const char *path, size_t experts, float **out) {
    size_t shape[2];
    moert_status st = npy_read_f32(path, 1, out, shape);
    if (st != MOERT_OK) return cli_fail_status(st, option);
    if (shape[0] != experts)
        return cli_fail(CLI_USAGE, "%s: %s has %zu values; the logits have %zu experts", option, path, shape[0], experts);
    return CLI_OK;
}

int router_cli_finish(router_cli *rc, size_t experts) {
    moert_router_config *c = &rc->config;
    for (size_t i = 0; i < sizeof policy_options / sizeof policy_options[0]; i++)
        if ((rc->given >> (policy_options[i].opt - ROUTER_OPT_POLICY) & 1) && !(policy_options[i].policies >> c->policy & 1))
            return cli_fail(CLI_USAGE, "%s does not apply to --policy %s", policy_options[i].name, policy_name(c->policy));
    if ((c->groups > 0) != (c->topk_groups > 0))
        return cli_fail(CLI_USAGE, "--groups and --topk-groups go together");
    if ((rc->given >> (ROUTER_OPT_NOISE_SCALES - ROUTER_OPT_POLICY) & 1) && c->noise != MOERT_NOISE_NORMAL)
        return cli_fail(CLI_USAGE, "--noise-scales goes with --noise normal:SCALE");
    if ((rc->given >> (ROUTER_OPT_NOISY_WEIGHTS - ROUTER_OPT_POLICY) & 1 || rc->given >> (ROUTER_OPT_SEED - ROUTER_OPT_POLICY) & 1) &&
        c->noise == MOERT_NOISE_NONE)
        return cli_fail(CLI_USAGE, "--noisy-weights and --seed go with --noise");
    if (rc->bias_path != NULL) {
        const int code = load_vector("--bias", rc->bias_path, experts, &rc->bias);
        if (code != CLI_OK) return code;
        c->bias = rc->bias;
    }
    if (rc->noise_scales_path != NULL) {
        const int code = load_vector("--noise-scales", rc->noise_scales_path, experts, &rc->noise_scales);
        if (code != CLI_OK) return code;
        c->noise_scales = rc->noise_scales;
    }
    moert_status st = moert_router_config_check(c, experts);
    if (st == MOERT_EINVAL) return cli_fail(CLI_USAGE, "%s", moert_last_error());
    if (st != MOERT_OK) return cli_fail_status(st, "routing options");
    return CLI_OK;
}

void router_cli_to_json(const router_cli *rc, void *object) {
    cJSON *o = object;
    const moert_router_config *c = &rc->config;
    cJSON_AddStringToObject(o, "policy", policy_name(c->policy));
    if (c->policy == MOERT_POLICY_TOKEN_CHOICE) {
        cJSON_AddNumberToObject(o, "k", c->k);
        cJSON_AddStringToObject(o, "score", score_name(c->score));
        cJSON_AddStringToObject(o, "softmax_order", c->softmax_order == MOERT_SOFTMAX_PRE ? "pre" : "post");
        cJSON_AddBoolToObject(o, "renormalize", c->renormalize);
        cJSON_AddNumberToObject(o, "scaling", c->scaling);
        cJSON_AddNumberToObject(o, "groups", c->groups);
        cJSON_AddNumberToObject(o, "topk_groups", c->topk_groups);
        cJSON_AddStringToObject(o, "group_score", c->group_score == MOERT_GROUP_SCORE_MAX ? "max" : "topk-sum");
        if (rc->bias_path) cJSON_AddStringToObject(o, "bias", rc->bias_path);
        cJSON_AddStringToObject(o, "drop", c->drop_policy == MOERT_DROP_POSITION ? "position" : "probs");
        cJSON_AddBoolToObject(o, "pad", c->pad_to_capacity);
        if (c->noise != MOERT_NOISE_NONE) {
            cJSON_AddStringToObject(o, "noise", c->noise == MOERT_NOISE_NORMAL ? "normal" : "gumbel");
            if (c->noise == MOERT_NOISE_NORMAL && rc->noise_scales_path)
                cJSON_AddStringToObject(o, "noise_scales", rc->noise_scales_path);
            else if (c->noise == MOERT_NOISE_NORMAL)
                cJSON_AddNumberToObject(o, "noise_scale", c->noise_scale);
            else
                cJSON_AddNumberToObject(o, "noise_temperature", c->noise_temperature);
            cJSON_AddBoolToObject(o, "noisy_weights", c->noisy_weights);
            if (c->seed <= (UINT64_C(1) << 53)) /* exactly a JSON number */
                cJSON_AddNumberToObject(o, "seed", (double)c->seed);
            else { /* beyond a double's integers: as a string, digit for digit */
                char digits[24];
                snprintf(digits, sizeof digits, "%llu", (unsigned long long)c->seed);
                cJSON_AddStringToObject(o, "seed", digits);
            }
        }
    }
    if (c->policy == MOERT_POLICY_RELU) cJSON_AddStringToObject(o, "score", score_name(c->score));
    if (c->policy == MOERT_POLICY_BATCH_TOPK) {
        cJSON_AddNumberToObject(o, "k", c->k);
        cJSON_AddStringToObject(o, "batch_score", c->batch_score == MOERT_BATCH_SCORE_LOGITS ? "logits" : "probs");
        cJSON_AddBoolToObject(o, "renormalize", c->renormalize);
        if (c->use_threshold) cJSON_AddNumberToObject(o, "inference_threshold", c->threshold);
    }
    if (c->policy == MOERT_POLICY_SPARSEMAX && c->k_max != MOERT_MAX_EXPERTS) cJSON_AddNumberToObject(o, "k_max", c->k_max);
    if (c->policy == MOERT_POLICY_TOKEN_CHOICE || c->policy == MOERT_POLICY_EXPERT_CHOICE)
        cJSON_AddNumberToObject(o, "capacity_factor", c->capacity_factor);
    if (c->policy == MOERT_POLICY_RELU) cJSON_AddNumberToObject(o, "relu_threshold", c->relu_threshold);
    cJSON_AddNumberToObject(o, "route_groups", c->route_groups);
}

#include "tools/router_cli.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"
#include "tools/npy.h"

void router_cli_init(router_cli *rc) {
    memset(rc, 0, sizeof *rc);
    rc->config = moert_router_config_default();
}

void router_cli_free(router_cli *rc) {
    free(rc->bias);
    rc->bias = NULL;
    rc->config.bias = NULL;
}

static const char *policy_name(moert_policy p) {
    return p == MOERT_POLICY_EXPERT_CHOICE ? "expert-choice" : p == MOERT_POLICY_RELU ? "relu" : "token-choice";
}

int router_cli_option(router_cli *rc, int opt, const char *arg) {
    moert_router_config *c = &rc->config;
    if (opt >= ROUTER_OPT_POLICY && opt < ROUTER_OPT_END) rc->given |= 1u << (opt - ROUTER_OPT_POLICY);
    switch (opt) {
    case ROUTER_OPT_POLICY:
        if (!strcmp(arg, "token-choice")) c->policy = MOERT_POLICY_TOKEN_CHOICE;
        else if (!strcmp(arg, "expert-choice")) c->policy = MOERT_POLICY_EXPERT_CHOICE;
        else if (!strcmp(arg, "relu")) c->policy = MOERT_POLICY_RELU;
        else return cli_fail(CLI_USAGE, "--policy: '%s' is not token-choice, expert-choice or relu", arg);
        return CLI_OK;
    case ROUTER_OPT_K: return cli_parse_int("--k", arg, 0, MOERT_MAX_EXPERTS, &c->k);
    case ROUTER_OPT_SCORE:
        if (!strcmp(arg, "softmax")) c->score = MOERT_SCORE_SOFTMAX;
        else if (!strcmp(arg, "sigmoid")) c->score = MOERT_SCORE_SIGMOID;
        else return cli_fail(CLI_USAGE, "--score: '%s' is not softmax or sigmoid", arg);
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
    }
    return -1;
}

/* The options each policy reads; any other given is an error, not silently ignored. */
static const struct {
    int opt;
    const char *name;
    unsigned policies; /* bit p: applies to moert_policy p */
} policy_options[] = {
    {ROUTER_OPT_K, "--k", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_SCORE, "--score", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_SOFTMAX_ORDER, "--softmax-order", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_RENORMALIZE, "--renormalize", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_SCALING, "--scaling", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_GROUPS, "--groups", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_TOPK_GROUPS, "--topk-groups", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_GROUP_SCORE, "--group-score", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_BIAS, "--bias", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_CAPACITY_FACTOR, "--capacity-factor", 1u << MOERT_POLICY_TOKEN_CHOICE | 1u << MOERT_POLICY_EXPERT_CHOICE},
    {ROUTER_OPT_DROP, "--drop", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_PAD, "--pad", 1u << MOERT_POLICY_TOKEN_CHOICE},
    {ROUTER_OPT_RELU_THRESHOLD, "--relu-threshold", 1u << MOERT_POLICY_RELU},
};

int router_cli_finish(router_cli *rc, size_t experts) {
    moert_router_config *c = &rc->config;
    for (size_t i = 0; i < sizeof policy_options / sizeof policy_options[0]; i++)
        if ((rc->given >> (policy_options[i].opt - ROUTER_OPT_POLICY) & 1) && !(policy_options[i].policies >> c->policy & 1))
            return cli_fail(CLI_USAGE, "%s does not apply to --policy %s", policy_options[i].name, policy_name(c->policy));
    if ((c->groups > 0) != (c->topk_groups > 0))
        return cli_fail(CLI_USAGE, "--groups and --topk-groups go together");
    if (rc->bias_path != NULL) {
        size_t shape[2];
        moert_status st = npy_read_f32(rc->bias_path, 1, &rc->bias, shape);
        if (st != MOERT_OK) return cli_fail_status(st, "--bias");
        if (shape[0] != experts)
            return cli_fail(CLI_USAGE, "--bias: %s has %zu values; the logits have %zu experts", rc->bias_path, shape[0],
                            experts);
        c->bias = rc->bias;
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
        cJSON_AddStringToObject(o, "score", c->score == MOERT_SCORE_SIGMOID ? "sigmoid" : "softmax");
        cJSON_AddStringToObject(o, "softmax_order", c->softmax_order == MOERT_SOFTMAX_PRE ? "pre" : "post");
        cJSON_AddBoolToObject(o, "renormalize", c->renormalize);
        cJSON_AddNumberToObject(o, "scaling", c->scaling);
        cJSON_AddNumberToObject(o, "groups", c->groups);
        cJSON_AddNumberToObject(o, "topk_groups", c->topk_groups);
        cJSON_AddStringToObject(o, "group_score", c->group_score == MOERT_GROUP_SCORE_MAX ? "max" : "topk-sum");
        if (rc->bias_path) cJSON_AddStringToObject(o, "bias", rc->bias_path);
        cJSON_AddStringToObject(o, "drop", c->drop_policy == MOERT_DROP_POSITION ? "position" : "probs");
        cJSON_AddBoolToObject(o, "pad", c->pad_to_capacity);
    }
    if (c->policy != MOERT_POLICY_RELU) cJSON_AddNumberToObject(o, "capacity_factor", c->capacity_factor);
    if (c->policy == MOERT_POLICY_RELU) cJSON_AddNumberToObject(o, "relu_threshold", c->relu_threshold);
    cJSON_AddNumberToObject(o, "route_groups", c->route_groups);
}

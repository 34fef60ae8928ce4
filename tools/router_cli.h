/* The routing options shared by `moert route`, `moert layer` and `moert simulate`. */
#ifndef MOERT_TOOLS_ROUTER_CLI_H
#define MOERT_TOOLS_ROUTER_CLI_H

#include <getopt.h>
#include <stddef.h>

#include "moert/moert.h"

/* Option codes from 1000 on, so commands can add their own below. */
enum {
    ROUTER_OPT_POLICY = 1000,
    ROUTER_OPT_K,
    ROUTER_OPT_SCORE,
    ROUTER_OPT_SOFTMAX_ORDER,
    ROUTER_OPT_RENORMALIZE,
    ROUTER_OPT_SCALING,
    ROUTER_OPT_GROUPS,
    ROUTER_OPT_TOPK_GROUPS,
    ROUTER_OPT_GROUP_SCORE,
    ROUTER_OPT_BIAS,
    ROUTER_OPT_CAPACITY_FACTOR,
    ROUTER_OPT_DROP,
    ROUTER_OPT_PAD,
    ROUTER_OPT_RELU_THRESHOLD,
    ROUTER_OPT_ROUTE_GROUPS,
    ROUTER_OPT_ISA,
    ROUTER_OPT_BATCH_SCORE,
    ROUTER_OPT_THRESHOLD,
    ROUTER_OPT_K_MAX,
    ROUTER_OPT_NOISE,
    ROUTER_OPT_NOISE_SCALES,
    ROUTER_OPT_NOISY_WEIGHTS,
    ROUTER_OPT_SEED,
    ROUTER_OPT_END,
};

#define ROUTER_CLI_OPTIONS                                                                  \
    {"policy", required_argument, NULL, ROUTER_OPT_POLICY},                                 \
        {"k", required_argument, NULL, ROUTER_OPT_K},                                       \
        {"score", required_argument, NULL, ROUTER_OPT_SCORE},                               \
        {"softmax-order", required_argument, NULL, ROUTER_OPT_SOFTMAX_ORDER},               \
        {"renormalize", no_argument, NULL, ROUTER_OPT_RENORMALIZE},                         \
        {"scaling", required_argument, NULL, ROUTER_OPT_SCALING},                           \
        {"groups", required_argument, NULL, ROUTER_OPT_GROUPS},                             \
        {"topk-groups", required_argument, NULL, ROUTER_OPT_TOPK_GROUPS},                   \
        {"group-score", required_argument, NULL, ROUTER_OPT_GROUP_SCORE},                   \
        {"bias", required_argument, NULL, ROUTER_OPT_BIAS},                                 \
        {"capacity-factor", required_argument, NULL, ROUTER_OPT_CAPACITY_FACTOR},           \
        {"drop", required_argument, NULL, ROUTER_OPT_DROP},                                 \
        {"pad", no_argument, NULL, ROUTER_OPT_PAD},                                         \
        {"relu-threshold", required_argument, NULL, ROUTER_OPT_RELU_THRESHOLD},             \
        {"route-groups", required_argument, NULL, ROUTER_OPT_ROUTE_GROUPS},                 \
        {"isa", required_argument, NULL, ROUTER_OPT_ISA},                                   \
        {"batch-score", required_argument, NULL, ROUTER_OPT_BATCH_SCORE},                   \
        {"threshold", required_argument, NULL, ROUTER_OPT_THRESHOLD},                       \
        {"k-max", required_argument, NULL, ROUTER_OPT_K_MAX},                               \
        {"noise", required_argument, NULL, ROUTER_OPT_NOISE},                               \
        {"noise-scales", required_argument, NULL, ROUTER_OPT_NOISE_SCALES},                 \
        {"noisy-weights", no_argument, NULL, ROUTER_OPT_NOISY_WEIGHTS},                     \
        {"seed", required_argument, NULL, ROUTER_OPT_SEED}

#define ROUTER_CLI_HELP                                                                     \
    "  --policy P            token-choice | expert-choice | relu | batch-topk | sparsemax,\n" \
    "                        default token-choice (see the README's table of policies)\n" \
    "  --k N                 token choice: experts per token, default 2; batch-topk: the\n" \
    "                        batch keeps tokens x N (token, expert) pairs\n"              \
    "  --score S             token choice: softmax | sigmoid | softpick | sqrt-softplus;\n" \
    "                        relu: softpick (its rectified form); default softmax\n"     \
    "  --softmax-order O     post (top-k, then softmax over the k) | pre (softmax over all,\n" \
    "                        then top-k), default post\n"                                   \
    "  --renormalize         pre, sigmoid, sqrt-softplus: the k weights sum to 1;\n"    \
    "                        batch-topk: each token's weights sum to 1\n"                   \
    "  --scaling F           multiply every weight by F > 0, default 1\n"                   \
    "  --groups G --topk-groups M\n"                                                        \
    "                        group-limited selection: G equal groups, the best M kept\n"    \
    "  --group-score S       topk-sum (sum of a group's top k/M) | max, default topk-sum\n" \
    "  --bias FILE.npy       sigmoid, sqrt-softplus: float [E] added to the scores for\n"   \
    "                        selection only\n"                                              \
    "  --capacity-factor F   token choice: capacity ceil(T k F / E), 0 = dropless (default);\n" \
    "                        expert choice: C = floor(T F / E + 0.5) tokens per expert\n"   \
    "  --drop D              over capacity keep the highest weights (probs, default) or the\n" \
    "                        earliest tokens (position)\n"                                  \
    "  --pad                 pad every expert's slots to exactly the capacity\n"            \
    "  --relu-threshold F    relu: weights relu(logit - F), default 0\n"                    \
    "  --batch-score S       batch-topk: probs (softmax of each token, default) | logits\n" \
    "  --threshold F         batch-topk inference: keep every score above F instead of the\n" \
    "                        batch's top T k (estimate F as the mean of the batches'\n"   \
    "                        thresholds: --route-groups G reports it as \"threshold\")\n" \
    "  --k-max N             sparsemax: at most N experts per token (the projection of the\n" \
    "                        N largest logits), N >= 1\n"                                  \
    "  --noise normal:SCALE | gumbel:TAU\n"                                                 \
    "                        token choice: noise for selection only, SCALE x N(0,1) or\n"  \
    "                        Gumbel(0,1) with keys (x + g) / TAU, by a counter-based\n"    \
    "                        hash of (seed, token, expert)\n"                               \
    "  --noise-scales F.npy  normal noise: float [E] scales per expert instead of SCALE\n" \
    "  --noisy-weights       weights from the noisy keys (default: the clean logits)\n"    \
    "  --seed S              the noise's seed, default 0\n"                                 \
    "  --route-groups G      route G contiguous groups of tokens each on their own, as G\n" \
    "                        ranks would (capacity, expert choice, batch-topk per group),\n" \
    "                        default 1\n"                                                   \
    "  --isa X               kernel variant: scalar | avx2 | avx512\n"

typedef struct router_cli {
    moert_router_config config;
    const char *bias_path, *noise_scales_path;
    float *bias;         /* loaded by router_cli_finish; freed by router_cli_free */
    float *noise_scales; /* likewise */
    unsigned given; /* bit o - ROUTER_OPT_POLICY: option o was on the command line */
} router_cli;

void router_cli_init(router_cli *rc);

/* Handles one getopt_long result: CLI_OK if it was a routing option and its value was
 * good, CLI_USAGE (after printing why) if the value was bad, -1 if it is not a routing
 * option. */
int router_cli_option(router_cli *rc, int opt, const char *arg);

/* Loads the bias (its length must be `experts`) and checks the whole configuration:
 * CLI_OK, CLI_USAGE or CLI_FAIL (after printing why). */
int router_cli_finish(router_cli *rc, size_t experts);

void router_cli_free(router_cli *rc);

/* The configuration as JSON fields of `object` (a cJSON *). */
void router_cli_to_json(const router_cli *rc, void *object);

#endif /* MOERT_TOOLS_ROUTER_CLI_H */

/* moert: routing policies. A router turns logits [tokens, experts] into a plan.
 *
 * Token choice (top-k of E per token), as Megatron-Core's topk_softmax_with_capacity:
 * - score softmax (post or pre, optionally renormalised) or sigmoid (with a
 *   selection-only bias, optional renormalisation); weights times `scaling`;
 * - group-limited selection: experts in `groups` equal groups; a group's score is the sum
 *   of its top (k / topk_groups) scores (Megatron-Core, DeepSeek-V3) or its max
 *   (DeepSeek-V2); the best `topk_groups` groups are kept and the top k is taken inside
 *   them. Scores are those the selection ranks: logits (softmax post), probabilities
 *   (softmax pre), sigmoid + bias (sigmoid);
 * - capacity = ceil((tokens x k / experts) x capacity_factor), 0 = dropless. Over
 *   capacity an expert keeps its highest-weight entries (drop `probs`, ties to the lower
 *   token) or its earliest tokens (`position`); the kept weights are not renormalised.
 *   With pad_to_capacity every expert gets exactly `capacity` slots, the unused ones
 *   empty (token -1), so that dispatch buffers have a fixed shape.
 * Expert choice (Zhou et al. 2022): probabilities are the softmax over experts of each
 * token's logits (exp(x - max) by a degree-6 polynomial on 2^f, within 2e-7 of exp, the
 * same bits for every ISA and thread count); each expert takes its C = floor(tokens x capacity_factor / experts + 0.5)
 * highest-probability tokens (ties to the lower token; C is at most tokens), weight = the
 * probability. C = 0 is an error.
 * ReLU routing (ReMoE, Wang et al. 2024): weights relu(logit - relu_threshold); a token
 * goes to every expert with a positive weight. With score softpick (threshold 0) the
 * weights are the softpick scores: softpick's rectified form, where an expert whose score
 * is 0 is not used.
 * BatchTopK (Bussmann et al., "BatchTopK Sparse Autoencoders", 2024): the tokens x k
 * largest (token, expert) scores of the routing group are kept, ties to the lower
 * (token, expert) in row-major order; scores are softmax probabilities or the logits
 * (batch_score); weights are the scores, renormalised per token with `renormalize`. A
 * token gets any number of experts. Masked (-inf) experts are never kept. With
 * use_threshold (inference) each token keeps the experts whose score exceeds `threshold`
 * instead; the statistics' `threshold` of a routing with several routing groups is the
 * mean of the groups' thresholds, the estimate to use at inference.
 * Sparsemax (Martins & Astudillo, "From Softmax to Sparsemax", 2016): the Euclidean
 * projection of a token's logits onto the simplex, weights max(x - tau, 0) summing to 1;
 * the token uses the experts with a positive weight. k_max caps them: the projection of
 * the k_max largest logits only.
 * Token choice scores beyond the fused kernel's: softpick (Zuhri et al., "Softpick: No
 * Attention Sink, No Massive Activations with Rectified Softmax", 2025), relu(e^x_i - 1) /
 * (sum_j |e^x_j - 1| + 1e-6), computed with the row's max subtracted; and sqrt-softplus,
 * sqrt(log(1 + e^x)), with an optional selection bias and renormalisation as sigmoid.
 * Both rank experts as their logits do (without a bias), so the selection is the logits'
 * top k; softpick's zero scores then go by logit.
 * Noisy selection (token choice with softmax or sigmoid): noise is added to the logits
 * for selection only, standard normal times a per-expert scale (Shazeer et al., 2017) or
 * Gumbel(0, 1) (Jang et al., 2017, with temperature tau: keys (x + g) / tau). The weights
 * come from the clean logits, or from the noisy keys with noisy_weights. The noise of
 * (token, expert) is a counter-based hash of (seed, token_offset + token, expert): the
 * same for any thread count, routing groups or ranks.
 *
 * Routing groups: decisions that depend on the batch (capacity, expert choice) are made
 * within groups of tokens. Group r of G holds tokens [floor(r T / G), floor((r+1) T / G)),
 * so a run on G ranks is reproduced in one process with route_groups = G. Capacity and
 * statistics such as `capacity` are then per group (the largest group's capacity is
 * reported).
 *
 * Options of another policy are errors: a bias, groups, drop policy, padding, score other
 * than softmax, renormalisation or scaling outside token choice; a capacity factor with
 * ReLU; a ReLU threshold outside ReLU.
 *
 * Every policy is deterministic: bit-identical plans for any thread count. */
#ifndef MOERT_ROUTER_H
#define MOERT_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "moert/cpu.h"
#include "moert/export.h"
#include "moert/plan.h"
#include "moert/status.h"
#include "moert/topk_gate.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moert_policy {
    MOERT_POLICY_TOKEN_CHOICE = 0,
    MOERT_POLICY_EXPERT_CHOICE = 1,
    MOERT_POLICY_RELU = 2,
    MOERT_POLICY_BATCH_TOPK = 3,
    MOERT_POLICY_SPARSEMAX = 4,
} moert_policy;

typedef enum moert_batch_score {
    MOERT_BATCH_SCORE_PROBS = 0,  /* softmax probabilities over each token's experts */
    MOERT_BATCH_SCORE_LOGITS = 1, /* the logits themselves (weights may be negative) */
} moert_batch_score;

typedef enum moert_noise {
    MOERT_NOISE_NONE = 0,
    MOERT_NOISE_NORMAL = 1, /* noise_scale (or noise_scales[e]) x N(0, 1) */
    MOERT_NOISE_GUMBEL = 2, /* Gumbel(0, 1), keys divided by noise_temperature */
} moert_noise;

typedef enum moert_drop_policy {
    MOERT_DROP_PROBS = 0,    /* an expert keeps its highest-weight entries */
    MOERT_DROP_POSITION = 1, /* an expert keeps its earliest tokens */
} moert_drop_policy;

typedef struct moert_router_config {
    moert_policy policy;               /* default token choice */
    int k;                             /* token choice: experts per token; default 2 */
    moert_score score;                 /* token choice; default softmax */
    moert_softmax_order softmax_order; /* default post */
    int renormalize;                   /* default 0 */
    float scaling;                     /* default 1 */
    const float *bias;                 /* sigmoid: [experts], selection only; borrowed for
                                          each route call */
    int groups;                        /* group-limited selection: 0 = off */
    int topk_groups;                   /* groups kept, 1..groups */
    moert_group_score group_score;     /* default top-(k/M) sum */
    double capacity_factor;            /* token choice: 0 = dropless; expert choice: > 0. A double,
                                          as the references compute capacity: ceil(20 / 4 x 1.2)
                                          is 6, where 1.2f would give 7 */
    moert_drop_policy drop_policy;     /* default probs */
    int pad_to_capacity;               /* default 0 */
    float relu_threshold;              /* ReLU: default 0 */
    int route_groups;                  /* routing groups, default 1 */
    /* BatchTopK: k is the mean experts per token */
    moert_batch_score batch_score;     /* default probs */
    int use_threshold;                 /* inference mode: keep scores > threshold; default 0 */
    float threshold;                   /* finite */
    /* Sparsemax */
    int k_max;                         /* experts per token at most, >= 1; default
                                          MOERT_MAX_EXPERTS (no cap) */
    /* Noisy selection (token choice) */
    moert_noise noise;                 /* default none */
    float noise_scale;                 /* normal: >= 0, default 1 */
    const float *noise_scales;         /* normal: [experts] >= 0 per expert, or NULL; borrowed */
    float noise_temperature;           /* gumbel: > 0, default 1 */
    int noisy_weights;                 /* weights from the noisy keys; default 0 (clean) */
    uint64_t seed;                     /* default 0 */
    uint64_t token_offset;             /* the noise's index of this batch's first token */
    int threads;                       /* OpenMP threads, 0 = omp_get_max_threads() */
    moert_isa isa;                     /* kernel variant, default auto */
} moert_router_config;

MOERT_API moert_router_config moert_router_config_default(void);

/* Checks a configuration for `experts` experts without routing: MOERT_EINVAL with the
 * detail of the first problem found. */
MOERT_API moert_status moert_router_config_check(const moert_router_config *config, size_t experts);

typedef struct moert_router moert_router;

/* A router for `experts` experts. The configuration is copied (the bias pointer too: it
 * must stay valid while the router routes). The router owns its workspace and reuses it. */
MOERT_API moert_status moert_router_create(const moert_router_config *config, size_t experts,
                                           moert_router **router);
MOERT_API void moert_router_destroy(moert_router *router);

/* Routes logits [tokens, experts] into `plan` (its previous contents are replaced). */
MOERT_API moert_status moert_router_route(moert_router *router, const float *logits, size_t tokens,
                                          moert_plan *plan);

/* Sets the index the noise gives this router's next batch's first token (the
 * configuration's token_offset): a rank routing its share of a global batch passes where
 * its share starts, so every token gets the noise it gets in one process. */
MOERT_API moert_status moert_router_set_token_offset(moert_router *router, uint64_t token_offset);

/* The capacity per expert a routing group of `tokens` tokens gets under `config`
 * (0 = dropless), as the router computes it. */
MOERT_API moert_status moert_router_capacity(const moert_router_config *config, size_t experts,
                                             size_t tokens, int64_t *capacity);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_ROUTER_H */

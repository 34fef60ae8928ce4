/* moert: the fused gate kernel, score function + top-k over rows of router logits.
 *
 * For each token t (a row of logits[tokens, experts], f32, row-major) one pass over the
 * row keeps the running max, the rescaled sum of exponentials (the online normaliser) and
 * the best k (score, expert) pairs, then writes k expert ids and k weights. No
 * tokens x experts matrix is ever written.
 *
 * Semantics:
 * - softmax, post (Mixtral, Megatron-Core default): top-k of the logits, then softmax
 *   over those k. The weights sum to 1.
 * - softmax, pre: softmax over all experts, gathered at the top k; `renormalize` rescales
 *   the k weights to sum to 1 (DeepSeek's norm_topk_prob).
 * - sigmoid (DeepSeek-V3): top-k of sigmoid(logit) + bias[e]; the bias only chooses, the
 *   weights are the sigmoid values, divided by their sum (+1e-20, as Megatron-Core) when
 *   `renormalize` is set.
 * - every weight is then multiplied by `scaling`.
 * - group-limited (Megatron-Core, DeepSeek-V2/V3): the experts form `groups` equal
 *   groups; a group's score is the sum of its top (k / topk_groups) scores, or its max;
 *   only the best `topk_groups` groups (ties to the lower group) may be chosen. The
 *   scores are what the selection ranks: logits (post), probabilities (pre), sigmoid +
 *   bias (sigmoid). With the sum, k must be a multiple of topk_groups.
 * Selection ranks by the logit (or by sigmoid + bias when a bias is given), which orders
 * experts exactly as the scores do without rounding ties. Within a row the k entries go
 * by descending weight (with a bias, not necessarily the order they were chosen in), ties
 * to the lower expert id, identically for every variant and every thread count.
 *
 * Bad data: a NaN or +inf logit is MOERT_EBADDATA naming the first such element in row
 * order; -inf means a masked expert; a row that is all -inf is MOERT_EBADDATA. On error
 * the outputs are unspecified. */
#ifndef MOERT_TOPK_GATE_H
#define MOERT_TOPK_GATE_H

#include <stddef.h>
#include <stdint.h>

#include "moert/cpu.h"
#include "moert/export.h"
#include "moert/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOERT_MAX_EXPERTS 65536
#define MOERT_MAX_THREADS 4096 /* the most threads a call may ask for */

typedef enum moert_score {
    MOERT_SCORE_SOFTMAX = 0,
    MOERT_SCORE_SIGMOID = 1,
    /* The router's own score functions (moert/router.h); the fused kernel does not take them. */
    MOERT_SCORE_SOFTPICK = 2,      /* relu(e^x - 1) / sum_j |e^x_j - 1| (Zuhri et al., 2025) */
    MOERT_SCORE_SQRT_SOFTPLUS = 3, /* sqrt(softplus(x)) (Megatron-Core, llama.cpp) */
} moert_score;

typedef enum moert_softmax_order {
    MOERT_SOFTMAX_POST = 0, /* top-k of logits, softmax over the k */
    MOERT_SOFTMAX_PRE = 1,  /* softmax over all experts, then top-k */
} moert_softmax_order;

typedef enum moert_group_score {
    MOERT_GROUP_SCORE_TOPK_SUM = 0, /* sum of the group's top (k / topk_groups) scores */
    MOERT_GROUP_SCORE_MAX = 1,      /* the group's best score */
} moert_group_score;

typedef struct moert_topk_gate_params {
    int k;                             /* experts per token, 1..experts; default 2 */
    moert_score score;                 /* default softmax */
    moert_softmax_order softmax_order; /* softmax only; default post */
    int renormalize;                   /* pre and sigmoid: weights sum to 1; default 0 */
    float scaling;                     /* > 0, multiplies every weight; default 1 */
    const float *bias;                 /* sigmoid only: [experts] finite, or NULL.
                                          Borrowed for the call. */
    int groups;                        /* group-limited selection: experts in `groups`
                                          equal groups, 0 = off */
    int topk_groups;                   /* the best `topk_groups` groups are kept */
    moert_group_score group_score;     /* default top-(k/topk_groups) sum */
    int threads;                       /* OpenMP threads, 0 = omp_get_max_threads() */
    moert_isa isa;                     /* kernel variant; default MOERT_ISA_AUTO */
} moert_topk_gate_params;

/* Results, all caller-owned. The optional ones cost no second pass over the logits. */
typedef struct moert_topk_gate_output {
    int32_t *expert_ids; /* [tokens, k], required */
    float *weights;      /* [tokens, k], required */
    double *prob_sums;   /* [experts] or NULL: sum over tokens of the full softmax
                            probability of each expert (for the auxiliary loss) */
    float *logsumexp;    /* [tokens] or NULL: logsumexp over experts (for the z-loss) */
} moert_topk_gate_output;

MOERT_API moert_topk_gate_params moert_topk_gate_params_default(void);

/* Routes `tokens` rows of `experts` logits. tokens may be 0 (nothing is written);
 * 1 <= experts <= MOERT_MAX_EXPERTS. The logits need no particular alignment. */
MOERT_API moert_status moert_topk_gate(const moert_topk_gate_params *params,
                                       const float *logits, size_t tokens, size_t experts,
                                       const moert_topk_gate_output *out);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_TOPK_GATE_H */

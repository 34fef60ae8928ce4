/* moert: the routing plan, the one data structure at the centre.
 *
 * Whatever the policy, routing produces a sparse tokens x experts matrix of combine
 * weights. The plan holds it in both orders:
 * - token-major (CSR over tokens): token_offsets[T+1], expert_ids[nnz], weights[nnz];
 *   within a token, entries go by descending weight, ties to the lower expert id;
 * - expert-major (CSR over experts): expert_offsets[E+1] and, for each slot, the token it
 *   holds and the token-major entry it came from. This order is the dispatch layout:
 *   expert e's rows are slots expert_offsets[e] .. expert_offsets[e+1], in ascending token
 *   order. With padding to capacity, every expert has exactly `capacity` slots and the
 *   unused ones hold token -1 and entry -1.
 * It also holds the balance statistics of the routing that made it.
 *
 * A plan keeps its memory across calls: once it has grown to a shape, routing into it
 * again allocates nothing. */
#ifndef MOERT_PLAN_H
#define MOERT_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "moert/export.h"
#include "moert/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moert_plan moert_plan;

/* The plan's arrays, owned by the plan and valid until it is routed into again or
 * destroyed. */
typedef struct moert_plan_view {
    size_t tokens, experts;
    size_t entries;                /* nnz: kept (token, expert) pairs */
    size_t slots;                  /* expert-major slots: entries, or experts x capacity
                                      when padded */
    const int64_t *token_offsets;  /* [tokens + 1] */
    const int32_t *expert_ids;     /* [entries] */
    const float *weights;          /* [entries] */
    const int64_t *expert_offsets; /* [experts + 1] */
    const int32_t *slot_tokens;    /* [slots]: token of each slot, -1 for padding */
    const int64_t *slot_entries;   /* [slots]: token-major entry of each slot, -1 for padding */
} moert_plan_view;

/* Balance of the routing that made a plan. Arrays are owned by the plan, as above. */
typedef struct moert_plan_stats {
    size_t tokens, experts;
    int64_t capacity;                 /* per expert; 0 when there was none (dropless) */
    int64_t assignments;              /* kept entries */
    int64_t routed;                   /* entries before capacity dropped any */
    int64_t dropped;                  /* routed - assignments */
    int64_t unrouted;                 /* tokens left with no expert */
    const int64_t *expert_counts;     /* [experts] kept entries per expert */
    const int64_t *expert_routed;     /* [experts] entries per expert before drops */
    const int64_t *experts_per_token; /* [experts + 1] histogram: tokens with n experts */
    double experts_per_token_mean;
    double max_over_mean;             /* of the kept load; 0 when nothing is kept */
    double cv;                        /* coefficient of variation of the kept load */
    double entropy;                   /* of the kept load, normalised to [0, 1] by log E */
    double sparsity;                  /* 1 - entries / (tokens x experts) */
    double aux_loss;                  /* Switch/GShard: E * sum_e f_e * P_e, f_e the share of
                                         routed entries, P_e the mean softmax probability */
    double z_loss;                    /* mean over tokens of logsumexp(logits)^2 */
    double threshold;                 /* batch-topk: the score of the batch's (tokens x k)-th
                                         kept entry (with routing groups, the mean over the
                                         groups: the threshold to use at inference); NaN for
                                         the other policies */
} moert_plan_stats;

/* A new, empty plan. Free it with moert_plan_destroy. */
MOERT_API moert_status moert_plan_create(moert_plan **plan);

/* Frees the plan and everything it holds; NULL is fine. */
MOERT_API void moert_plan_destroy(moert_plan *plan);

MOERT_API moert_status moert_plan_get_view(const moert_plan *plan, moert_plan_view *view);
MOERT_API moert_status moert_plan_get_stats(const moert_plan *plan, moert_plan_stats *stats);

/* Load per worker under an expert -> worker map: load[w] = kept entries of the experts
 * on worker w. worker_of_expert[experts] in [0, workers); load[workers] out. */
MOERT_API moert_status moert_plan_worker_load(const moert_plan *plan, const int32_t *worker_of_expert,
                                              int32_t workers, int64_t *load);

/* Builds a plan from token-major entries a caller made (for trace replay, tests and
 * other routers): token_offsets[tokens + 1], expert_ids[entries], weights[entries], each
 * token's entries by descending weight (ties to the lower id). The plan's statistics are
 * those of the entries (no drops, no losses). The inputs are copied. */
MOERT_API moert_status moert_plan_from_entries(moert_plan *plan, size_t tokens, size_t experts,
                                               const int64_t *token_offsets,
                                               const int32_t *expert_ids, const float *weights,
                                               int threads);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_PLAN_H */

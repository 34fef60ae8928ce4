/* Internal: the plan's storage and the pieces the routing policies share. */
#ifndef MOERT_ROUTER_INTERNAL_H
#define MOERT_ROUTER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "common/size.h"
#include "kernels/topk_gate/internal.h"
#include "moert/plan.h"
#include "moert/router.h"

struct moert_plan {
    size_t tokens, experts, entries, slots;
    int64_t capacity; /* per expert, 0 = none */
    int padded;       /* slots are experts x capacity */

    /* token-major */
    int64_t *token_offsets; /* [tokens + 1] */
    int32_t *expert_ids;    /* [entries] */
    float *weights;         /* [entries] */
    /* expert-major */
    int64_t *expert_offsets; /* [experts + 1] */
    int32_t *slot_tokens;    /* [slots] */
    int64_t *slot_entries;   /* [slots] */
    int64_t *entry_slots;    /* [entries]: the slot of each entry (combine's map) */

    /* statistics */
    moert_plan_stats stats;
    int64_t *expert_counts;     /* [experts] */
    int64_t *expert_routed;     /* [experts] */
    int64_t *experts_per_token; /* [experts + 1] */

    /* scratch */
    int64_t *thread_counts; /* [threads x experts] for the counting sort */
    uint8_t *keep;          /* [entries] capacity decisions */
    double *prob_sums;      /* [experts] */
    float *logsumexp;       /* [tokens] */

    size_t cap_tokens, cap_entries, cap_experts, cap_slots, cap_thread_counts;
};

/* Makes room for `tokens` tokens, `entries` token-major entries, `experts` experts and
 * `slots` expert-major slots; keeps what is there. MOERT_ENOMEM with the size asked. */
moert_status plan_reserve(moert_plan *plan, size_t tokens, size_t entries, size_t experts,
                          size_t slots, int threads);

/* Builds the expert-major order from the token-major arrays: a counting sort over tokens
 * cut into `threads` contiguous ranges, so within an expert the slots follow the tokens
 * and the result is the same for any thread count. With capacity > 0 and pad set, every
 * expert gets exactly `capacity` slots (callers have already dropped what exceeds it). */
moert_status plan_build_expert_major(moert_plan *plan, int threads, int64_t capacity, int pad);

/* A plan merged from parts (routing groups, or ranks' plans): the parts' per-expert routed
 * counts and softmax sums (`parts` rows of `experts` each, summed here), the sum and the
 * largest of their capacities, and the sum and count of their BatchTopK thresholds. */
typedef struct plan_parts {
    const int64_t *routed;
    const double *prob_sums;
    size_t parts;
    int64_t capacity_sum, capacity_max;
    double threshold_sum;
    size_t thresholds;
} plan_parts;

/* Finishes a merged plan whose token-major arrays, tokens and entries are set: the
 * expert-major order (padded to the parts' capacity sum with pad set), the counts, the
 * statistics, and the threshold as the mean of the parts' (the inference estimate). */
moert_status plan_finish_merged(moert_plan *plan, const plan_parts *parts, int pad, int threads);

/* Fills plan->stats from the plan's arrays, plan->expert_routed (set by the caller; the
 * kept counts when nothing was dropped), and the optional per-expert softmax sums and
 * per-token logsumexp (NULL: those losses are 0). */
void plan_compute_stats(moert_plan *plan, const double *prob_sums, const float *logsumexp);

/* Marks the `count` largest of values[i * stride], i < n, ties to the lower i, by setting
 * keep[i * keep_stride] = 1 (and the others 0). Linear time: a radix select on the
 * values' order-preserving bit patterns. count <= n <= UINT32_MAX; scratch holds
 * ROUTER_SELECT_SCRATCH(n) bytes, 4-byte aligned: the candidates, and a histogram of
 * ROUTER_SELECT_BINS digits. */
#define ROUTER_SELECT_BINS 4096u
#define ROUTER_SELECT_SCRATCH(n) ((size_t)(n) * 8u + ROUTER_SELECT_BINS * 4u)
void router_select_largest(const float *values, size_t n, size_t stride, size_t count,
                           uint8_t *keep, size_t keep_stride, void *scratch);

/* The `count` largest of values[0, n), ties to the lower index, as their indices in
 * ascending order into chosen[0, min(count, n)). compact is the gate variant's vector
 * filter. scratch: ROUTER_TOP_SCRATCH(n) bytes. */
#define ROUTER_TOP_SCRATCH(n) ((size_t)(n) * 9u + 64u + ROUTER_SELECT_SCRATCH(n))
void router_select_top(const float *values, size_t n, size_t count, topk_compact_fn compact,
                       int32_t *chosen, void *scratch);

/* The count-th largest (1 <= count <= n) of values[0, n) (NaN-free), and in *above how
 * many values exceed it. Linear time: the radix select's narrowing on the values' keys,
 * which are not reordered; the pass over every value split over `threads`. scratch:
 * ROUTER_THRESHOLD_SCRATCH(n, threads) bytes, 8-byte aligned. */
#define ROUTER_THRESHOLD_SCRATCH(n, threads) \
    ((size_t)(n) * 4u + (size_t)((threads) > 1 ? (threads) : 1) * (ROUTER_SELECT_BINS * 4u + 16u) + 16u)
float router_select_threshold(const float *values, size_t n, size_t count, size_t *above, void *scratch, int threads);

/* The r-th largest (1 <= r <= n) of a[0, n) (NaN-free), reordering a. */
float router_nth_largest(float *a, size_t n, size_t r);

/* The `count` largest of values[0, m) (finite), ties to the earlier position: their ids
 * (ids[j] for values[j]) and values, in position order, into chosen[0, min(count, m)) and
 * chosen_values. scratch: ROUTER_TOP_OF_BINS + 2 * m + 2 floats. Linear in m. */
#define ROUTER_TOP_OF_BINS 4096
void router_select_top_of(const int32_t *ids, const float *values, size_t m, size_t count, int32_t *chosen,
                          float *chosen_values, float *scratch);

/* A thread's own growing buffer of token-major entries, for policies whose entry count
 * is known only after the pass that finds them (ReLU). */
typedef struct router_stage {
    int32_t *ids;
    float *weights;
    size_t used, cap;
    size_t first_token; /* of the thread's range; SIZE_MAX while it has none */
} router_stage;


/* Scratch memory a router keeps between calls; it only grows. */
typedef struct router_workspace {
    void *bytes;
    size_t size;
    router_stage *stages; /* [stage_count], one per thread */
    int stage_count;
    topk_workspace gate; /* the gate kernels' own scratch */
    topk_workspace *thread_gates; /* [thread_gate_count]: each thread's, for kernel calls
                                     made inside a parallel region (noisy selection) */
    int thread_gate_count;
} router_workspace;

/* At least `threads` per-thread kernel workspaces (kept, they only grow). */
moert_status router_workspace_reserve_thread_gates(router_workspace *ws, int threads);

moert_status router_workspace_reserve(router_workspace *ws, size_t bytes);
/* At least `threads` stages, each emptied (first_token SIZE_MAX). */
moert_status router_workspace_reserve_stages(router_workspace *ws, int threads);
/* Room for `more` entries after the stage's used ones. */
moert_status router_stage_reserve(router_stage *stage, size_t more);
void router_workspace_free(router_workspace *ws);

/* The gate parameters a token-choice router uses. */
moert_topk_gate_params router_gate_params(const moert_router_config *config);

/* The plan of one routing group, made by a policy: tokens [0, tokens) of `logits`. Each
 * fills the token-major arrays, plan->expert_routed, plan->prob_sums and
 * plan->logsumexp, builds the expert-major order and computes the statistics. */
moert_status router_token_choice(const moert_router_config *config, const float *logits,
                                 size_t tokens, size_t experts, moert_plan *plan,
                                 router_workspace *ws);
moert_status router_expert_choice(const moert_router_config *config, const float *logits,
                                  size_t tokens, size_t experts, moert_plan *plan,
                                  router_workspace *ws);
moert_status router_relu(const moert_router_config *config, const float *logits, size_t tokens,
                         size_t experts, moert_plan *plan, router_workspace *ws);

moert_status router_batch_topk(const moert_router_config *config, const float *logits, size_t tokens,
                               size_t experts, moert_plan *plan, router_workspace *ws);
moert_status router_sparsemax(const moert_router_config *config, const float *logits, size_t tokens,
                              size_t experts, moert_plan *plan, router_workspace *ws);

/* A policy's row: token t's entries (logits x[0, E), their largest `max`) by descending
 * weight, ties to the lower id, into ids and weights (room for E each); returns how many.
 * scratch: the floats the policy asked router_route_rows for. */
typedef size_t (*router_row_fn)(const void *context, const float *x, size_t E, size_t t, float max, int32_t *ids,
                                float *weights, float *scratch);

/* The plan of a policy whose tokens get any number of experts, each token's from its own
 * row (router/rows.c): one pass over the logits, the statistics included. */
moert_status router_route_rows(const moert_router_config *config, const float *logits, size_t tokens, size_t experts,
                               router_row_fn row, const void *row_context, size_t scratch_floats, moert_plan *plan,
                               router_workspace *ws);

/* The softmax statistics of logits [tokens, experts] alone (which also checks them):
 * plan->logsumexp and plan->prob_sums, and each row's max and sum of exp(x - max) into
 * row_max and row_sum [tokens], by the kernel's softmax filter offered no candidates.
 * scratch: ROUTER_STATS_SCRATCH(threads, experts) bytes, 64-byte aligned. */
#define ROUTER_STATS_SCRATCH(threads, experts) \
    (moert_round_up_64((size_t)(threads) * (sizeof(topk_candidates) + (size_t)(experts) * sizeof(size_t))) + \
     moert_round_up_64((size_t)(experts) * sizeof(float)))
moert_status router_softmax_statistics(const moert_router_config *config, const float *logits, size_t tokens,
                                       size_t experts, int threads, float *row_max, float *row_sum, void *scratch,
                                       moert_plan *plan, router_workspace *ws);

/* Applies capacity to a plan whose token-major arrays are set: the entries of an expert
 * beyond `capacity` are dropped by the drop policy and the token-major arrays compacted;
 * plan->expert_routed gets the counts before the drops. */
moert_status router_apply_capacity(moert_plan *plan, int64_t capacity, moert_drop_policy policy,
                                   int threads, router_workspace *ws);

/* The router's thread count for a call. */
int router_threads(int requested);

#endif /* MOERT_ROUTER_INTERNAL_H */

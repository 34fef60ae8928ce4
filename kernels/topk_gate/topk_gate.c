/* The top-k gate's public entry: validation, the variant, threads, and the per-expert
 * probability sums.
 *
 * Rows are cut into blocks of TOPK_BLOCK_ROWS. A block's probabilities are summed in
 * row order, then added to a per-thread fixed-point (2^-32) accumulator: integer sums do
 * not depend on their order, so prob_sums are bit-identical for any thread count. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "kernels/topk_gate/internal.h"

#define TOPK_BLOCK_ROWS 64
#define TOPK_FIXED_POINT_ONE 4294967296.0 /* 2^32 */

const topk_variant topk_variants[] = {
#define TOPK_VARIANT_DECLARE_(name, isa) \
    {#name, isa, topk_rows_##name, topk_softmax_filter_##name, topk_compact_##name, topk_relu_row_##name, \
     topk_batch_rows_##name, topk_noise_tile_##name},
#include "kernels/topk_gate/variants.inc"
#undef TOPK_VARIANT_DECLARE_
};
const size_t topk_variant_count = sizeof topk_variants / sizeof topk_variants[0];

const topk_variant *topk_variant_for(moert_isa isa) {
    if (isa == MOERT_ISA_AUTO && moert_isa_active(&isa) != MOERT_OK) return NULL;
    const char *name = moert_isa_name(isa);
    for (size_t i = 0; i < topk_variant_count; i++)
        if (strcmp(topk_variants[i].name, name) == 0) return &topk_variants[i];
    return NULL;
}

moert_topk_gate_params moert_topk_gate_params_default(void) {
    return (moert_topk_gate_params){
        .k = 2,
        .score = MOERT_SCORE_SOFTMAX,
        .softmax_order = MOERT_SOFTMAX_POST,
        .renormalize = 0,
        .scaling = 1.0f,
        .bias = NULL,
        .groups = 0,
        .topk_groups = 0,
        .group_score = MOERT_GROUP_SCORE_TOPK_SUM,
        .threads = 0,
        .isa = MOERT_ISA_AUTO,
    };
}

static moert_status validate(const moert_topk_gate_params *p, const float *logits,
                             size_t tokens, size_t experts, const moert_topk_gate_output *out) {
    MOERT_RETURN_ERROR_IF(p == NULL, MOERT_EINVAL, "top-k gate: params is NULL");
    MOERT_RETURN_ERROR_IF(out == NULL, MOERT_EINVAL, "top-k gate: output is NULL");
    MOERT_RETURN_ERROR_IF(experts == 0 || experts > MOERT_MAX_EXPERTS, MOERT_EINVAL,
                          "experts=%zu is outside 1..%d", experts, MOERT_MAX_EXPERTS);
    MOERT_RETURN_ERROR_IF(p->k < 1, MOERT_EINVAL, "k=%d must be at least 1", p->k);
    MOERT_RETURN_ERROR_IF((size_t)p->k > experts, MOERT_EINVAL,
                          "k=%d exceeds num_experts=%zu", p->k, experts);
    MOERT_RETURN_ERROR_IF(p->score != MOERT_SCORE_SOFTMAX && p->score != MOERT_SCORE_SIGMOID,
                          MOERT_EINVAL, "score=%d is not softmax (0) or sigmoid (1) (the fused kernel's; softpick and "
                          "sqrt-softplus are the router's)",
                          (int)p->score);
    MOERT_RETURN_ERROR_IF(
        p->softmax_order != MOERT_SOFTMAX_POST && p->softmax_order != MOERT_SOFTMAX_PRE,
        MOERT_EINVAL, "softmax_order=%d is not post (0) or pre (1)", (int)p->softmax_order);
    MOERT_RETURN_ERROR_IF(!(isfinite(p->scaling) && p->scaling > 0.0f), MOERT_EINVAL,
                          "scaling=%g must be finite and positive", (double)p->scaling);
    MOERT_RETURN_ERROR_IF(p->threads < 0 || p->threads > MOERT_MAX_THREADS, MOERT_EINVAL,
                          "threads=%d is outside 0..%d", p->threads, MOERT_MAX_THREADS);
    MOERT_RETURN_ERROR_IF(p->bias != NULL && p->score != MOERT_SCORE_SIGMOID, MOERT_EINVAL,
                          "a selection bias applies to sigmoid scores only");
    if (p->bias != NULL) {
        for (size_t e = 0; e < experts; e++)
            MOERT_RETURN_ERROR_IF(!isfinite(p->bias[e]), MOERT_EBADDATA,
                                  "bias[%zu] is %g; it must be finite", e,
                                  (double)p->bias[e]);
    }
    if (p->groups != 0) {
        MOERT_RETURN_ERROR_IF(p->groups < 0 || (size_t)p->groups > experts ||
                                  experts % (size_t)p->groups != 0,
                              MOERT_EINVAL, "groups=%d does not divide experts=%zu", p->groups,
                              experts);
        MOERT_RETURN_ERROR_IF(p->topk_groups < 1 || p->topk_groups > p->groups, MOERT_EINVAL,
                              "topk_groups=%d is outside 1..groups=%d", p->topk_groups, p->groups);
        MOERT_RETURN_ERROR_IF(p->group_score != MOERT_GROUP_SCORE_TOPK_SUM &&
                                  p->group_score != MOERT_GROUP_SCORE_MAX,
                              MOERT_EINVAL, "group_score=%d is not topk-sum (0) or max (1)",
                              (int)p->group_score);
        MOERT_RETURN_ERROR_IF(p->group_score == MOERT_GROUP_SCORE_TOPK_SUM && p->k % p->topk_groups != 0,
                              MOERT_EINVAL,
                              "k=%d is not a multiple of topk_groups=%d (a group's score sums its "
                              "top k/topk_groups)", p->k, p->topk_groups);
        MOERT_RETURN_ERROR_IF((size_t)p->k > (size_t)p->topk_groups * (experts / (size_t)p->groups),
                              MOERT_EINVAL, "k=%d exceeds the %zu experts of the topk_groups=%d kept groups",
                              p->k, (size_t)p->topk_groups * (experts / (size_t)p->groups), p->topk_groups);
    }
    size_t elements;
    MOERT_RETURN_ERROR_IF(moert_mul3_overflows(tokens, experts, sizeof(float), &elements),
                          MOERT_EOVERFLOW, "tokens=%zu x experts=%zu logits overflow size_t",
                          tokens, experts);
    MOERT_RETURN_ERROR_IF(moert_mul3_overflows(tokens, (size_t)p->k, sizeof(float), &elements),
                          MOERT_EOVERFLOW, "tokens=%zu x k=%d outputs overflow size_t", tokens,
                          p->k);
    if (tokens > 0) {
        MOERT_RETURN_ERROR_IF(logits == NULL, MOERT_EINVAL, "top-k gate: logits is NULL");
        MOERT_RETURN_ERROR_IF(out->expert_ids == NULL, MOERT_EINVAL,
                              "top-k gate: output expert_ids is NULL");
        MOERT_RETURN_ERROR_IF(out->weights == NULL, MOERT_EINVAL,
                              "top-k gate: output weights is NULL");
    }
    return MOERT_OK;
}

static moert_status report_bad_row(topk_row_error err);

/* A block's float sums into a thread's fixed-point (2^-32) accumulators. */
static void topk_add_fixed_point(int64_t *acc, const float *block, size_t experts) {
    for (size_t e = 0; e < experts; e++) acc[e] += llrint((double)block[e] * TOPK_FIXED_POINT_ONE);
}

/* The threads' accumulators (each at the start of its per_thread bytes) summed, as doubles. */
static void topk_fixed_point_totals(const unsigned char *workspace, size_t per_thread, int threads,
                                    size_t experts, double *sums) {
    for (size_t e = 0; e < experts; e++) {
        int64_t total = 0;
        for (int t = 0; t < threads; t++) total += ((const int64_t *)(workspace + (size_t)t * per_thread))[e];
        sums[e] = (double)total / TOPK_FIXED_POINT_ONE;
    }
}

/* `bytes` of zeroed scratch: from the caller's workspace when there is one (grown as
 * needed), else a fresh allocation that *owned says to free. */
static moert_status scratch_zeroed(topk_workspace *ws, size_t bytes, unsigned char **out, int *owned) {
    *out = NULL, *owned = 0;
    if (bytes == 0) return MOERT_OK;
    if (ws == NULL) {
        *out = calloc(1, bytes);
        MOERT_RETURN_ERROR_IF(*out == NULL, MOERT_ENOMEM, "top-k gate: cannot allocate %zu bytes of workspace", bytes);
        *owned = 1;
        return MOERT_OK;
    }
    if (ws->size < bytes || ws->bytes == NULL) {
        void *p = realloc(ws->bytes, bytes);
        MOERT_RETURN_ERROR_IF(p == NULL, MOERT_ENOMEM, "top-k gate: cannot allocate %zu bytes of workspace", bytes);
        ws->bytes = p, ws->size = bytes;
    }
    memset(ws->bytes, 0, bytes);
    *out = ws->bytes;
    return MOERT_OK;
}

moert_status topk_softmax_filter(moert_isa isa, const float *logits, size_t tokens, size_t experts,
                                 const topk_candidates *cand, int threads, int *used, float *lse,
                                 float *row_max, float *row_sum, double *prob_sums, topk_workspace *ws) {
    MOERT_FORWARD_IF_ERROR(moert_isa_check(isa));
    const topk_variant *variant = topk_variant_for(isa);
    MOERT_RETURN_ERROR_IF(variant == NULL, MOERT_EINVAL, "softmax: no variant");
    memset(prob_sums, 0, experts * sizeof(double));
    *used = 0;
    if (tokens == 0) return MOERT_OK;
    const size_t blocks = (tokens + TOPK_BLOCK_ROWS - 1) / TOPK_BLOCK_ROWS;
    if ((size_t)threads > blocks) threads = (int)blocks;
    /* Per thread: the fixed-point sums, a block's sums, the tiles. */
    const size_t per_thread =
        moert_round_up_64(experts * sizeof(int64_t) + (experts + 64 + 2 * TOPK_TILE_FLOATS(experts)) * sizeof(float));
    unsigned char *workspace;
    int owned;
    MOERT_FORWARD_IF_ERROR(scratch_zeroed(ws, (size_t)threads * per_thread, &workspace, &owned));
    topk_row_error first_bad = {TOPK_ROW_OK, 0, 0};
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int tid = omp_get_thread_num();
        unsigned char *mine = workspace + (size_t)tid * per_thread;
        int64_t *acc = (int64_t *)mine;
        float *block = (float *)(acc + experts), *tile = block + experts + 64;
        topk_row_error my_bad = {TOPK_ROW_OK, 0, 0};
        /* Static schedule: thread i takes the i-th range of blocks, in order. */
#pragma omp for schedule(static)
        for (size_t b = 0; b < blocks; b++) {
            if (my_bad.kind != TOPK_ROW_OK) continue;
            const size_t begin = b * TOPK_BLOCK_ROWS;
            const size_t end = begin + TOPK_BLOCK_ROWS < tokens ? begin + TOPK_BLOCK_ROWS : tokens;
            memset(block, 0, experts * sizeof(float));
            my_bad = variant->softmax_filter(logits, tokens, experts, begin, end, &cand[tid], lse, row_max, row_sum, block, tile);
            if (my_bad.kind == TOPK_ROW_OK) topk_add_fixed_point(acc, block, experts);
        }
        if (my_bad.kind != TOPK_ROW_OK) {
#pragma omp critical(moert_softmax_error)
            if (first_bad.kind == TOPK_ROW_OK || my_bad.row < first_bad.row) first_bad = my_bad;
        }
    }
    if (first_bad.kind == TOPK_ROW_OK) topk_fixed_point_totals(workspace, per_thread, threads, experts, prob_sums);
    if (owned) free(workspace);
    *used = threads;
    if (first_bad.kind != TOPK_ROW_OK) return report_bad_row(first_bad);
    return MOERT_OK;
}

static moert_status report_bad_row(topk_row_error err) {
    switch (err.kind) {
    case TOPK_ROW_NAN:
        return moert_set_error(MOERT_EBADDATA, "logits[%zu,%zu] is NaN", err.row, err.col);
    case TOPK_ROW_POS_INF:
        return moert_set_error(MOERT_EBADDATA, "logits[%zu,%zu] is +inf", err.row, err.col);
    case TOPK_ROW_ALL_NEG_INF:
        return moert_set_error(MOERT_EBADDATA,
                               "logits row %zu is all -inf: no expert can be chosen", err.row);
    case TOPK_ROW_OK: break;
    }
    return moert_set_error(MOERT_EINTERNAL, "top-k gate: bad row report");
}

/* With a selection bias the chosen order (by sigmoid + bias) is not the weights' order:
 * put each row's entries by descending weight, ties to the lower expert id. */
static void sort_by_weight(const topk_job *job, size_t begin, size_t end) {
    const int k = job->k;
    for (size_t t = begin; t < end; t++) {
        int32_t *ids = job->ids + t * (size_t)k;
        float *w = job->weights + t * (size_t)k;
        for (int i = 1; i < k; i++) {
            const float wi = w[i];
            const int32_t id = ids[i];
            int j = i;
            while (j > 0 && (w[j - 1] < wi || (w[j - 1] == wi && ids[j - 1] > id))) {
                w[j] = w[j - 1];
                ids[j] = ids[j - 1];
                j--;
            }
            w[j] = wi;
            ids[j] = id;
        }
    }
}

moert_status topk_gate_run(const topk_variant *variant, const moert_topk_gate_params *p,
                           const float *logits, size_t tokens, size_t experts,
                           const moert_topk_gate_output *out) {
    return topk_gate_run_with(variant, p, logits, tokens, experts, out, NULL, NULL, NULL);
}

moert_status topk_gate_run_with(const topk_variant *variant, const moert_topk_gate_params *p,
                                const float *logits, size_t tokens, size_t experts,
                                const moert_topk_gate_output *out, topk_block_hook hook, void *context,
                                topk_workspace *ws) {
    return topk_gate_run_extra(variant, p, logits, tokens, experts, out, NULL, hook, context, ws);
}

moert_status topk_gate_run_extra(const topk_variant *variant, const moert_topk_gate_params *p,
                                 const float *logits, size_t tokens, size_t experts,
                                 const moert_topk_gate_output *out, const topk_extras *extras, topk_block_hook hook,
                                 void *context, topk_workspace *ws) {
    MOERT_FORWARD_IF_ERROR(validate(p, logits, tokens, experts, out));
    const int softpick = extras != NULL && extras->softpick_sums != NULL;
    MOERT_RETURN_ERROR_IF(softpick && (p->score != MOERT_SCORE_SOFTMAX || p->softmax_order != MOERT_SOFTMAX_POST ||
                                       p->groups != 0 || p->bias != NULL),
                          MOERT_EINVAL, "top-k gate: softpick sums need softmax post without groups");
    const noise_spec *noise = extras != NULL ? extras->noise : NULL;
    MOERT_RETURN_ERROR_IF(noise != NULL && (p->score != MOERT_SCORE_SOFTMAX || p->softmax_order != MOERT_SOFTMAX_POST ||
                                            p->groups != 0 || p->bias != NULL || softpick),
                          MOERT_EINVAL, "top-k gate: noisy selection needs softmax post without groups");
    MOERT_RETURN_ERROR_IF(variant == NULL, MOERT_EINVAL, "top-k gate: no variant");
    MOERT_FORWARD_IF_ERROR(moert_isa_check(variant->isa));

    const int want_probs = out->prob_sums != NULL;
    if (want_probs) memset(out->prob_sums, 0, experts * sizeof(double));
    if (tokens == 0) return MOERT_OK;

    const topk_job job = {
        .logits = logits,
        .tokens = tokens,
        .experts = experts,
        .k = p->k,
        .score = p->score,
        .order = p->softmax_order,
        .renormalize = p->renormalize,
        .scaling = p->scaling,
        .bias = p->bias,
        .ids = out->expert_ids,
        .weights = out->weights,
        .logsumexp = out->logsumexp,
        .want_probs = want_probs,
        .groups = p->groups,
        .topk_groups = p->topk_groups,
        .group_score = p->group_score,
        .softpick_sums = softpick ? extras->softpick_sums : NULL,
        .noise = noise,
    };

    const size_t blocks = (tokens + TOPK_BLOCK_ROWS - 1) / TOPK_BLOCK_ROWS;
    int threads = p->threads > 0 ? p->threads : omp_get_max_threads();
    if ((size_t)threads > blocks) threads = (int)blocks;

    /* Per-thread scratch, only when the call needs it: no allocation otherwise. */
    const int normalise = (p->score == MOERT_SCORE_SOFTMAX && p->softmax_order == MOERT_SOFTMAX_PRE) ||
                          want_probs || out->logsumexp != NULL || softpick;
    const size_t key_floats = noise != NULL ? TOPK_NOISY_KEY_FLOATS(experts) : p->bias != NULL ? experts + 64 : 0;
    const size_t tile_floats = normalise ? 2 * TOPK_TILE_FLOATS(experts) : 0;
    const size_t lane_floats = want_probs ? TOPK_TILE_FLOATS(experts) : 0;
    const size_t block_floats = want_probs ? experts + 64 : 0; /* slack for vector tails */
    const size_t acc_words = want_probs ? experts : 0;
    const size_t list_words = p->groups > 0 ? TOPK_GROUP_LISTS(p->groups) : 0;
    const size_t grouped_floats = p->groups > 0 ? TOPK_GROUPED_SCRATCH(experts, p->groups) : 0;
    const size_t per_thread = moert_round_up_64(
        acc_words * sizeof(int64_t) + list_words * sizeof(int32_t) +
        (block_floats + key_floats + tile_floats + lane_floats + grouped_floats) * sizeof(float));
    unsigned char *workspace;
    int owned;
    MOERT_FORWARD_IF_ERROR(scratch_zeroed(ws, (size_t)threads * per_thread, &workspace, &owned));

    topk_row_error first_bad = {TOPK_ROW_OK, 0, 0};
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int tid = omp_get_thread_num();
        /* Accumulators first: int64 alignment, then the float arrays. */
        unsigned char *mine = workspace ? workspace + (size_t)tid * per_thread : NULL;
        int64_t *acc = want_probs ? (int64_t *)mine : NULL;
        float *floats = mine ? (float *)(mine + acc_words * sizeof(int64_t) + list_words * sizeof(int32_t)) : NULL;
        topk_scratch scratch = {
            .prob_block = block_floats ? floats : NULL,
            .keys = key_floats ? floats + block_floats : NULL,
            .tiles = tile_floats ? floats + block_floats + key_floats : NULL,
            .prob_lanes = lane_floats ? floats + block_floats + key_floats + tile_floats : NULL,
            .group_lists = list_words ? (int32_t *)(mine + acc_words * sizeof(int64_t)) : NULL,
            .grouped = grouped_floats ? floats + block_floats + key_floats + tile_floats + lane_floats : NULL,
        };
        topk_row_error my_bad = {TOPK_ROW_OK, 0, 0};
        int hook_stopped = 0;

        /* Static schedule: each thread walks its blocks in ascending order, so its first
         * bad row is the first in its share and the minimum over threads is global. */
#pragma omp for schedule(static)
        for (size_t b = 0; b < blocks; b++) {
            if (my_bad.kind != TOPK_ROW_OK || hook_stopped) continue;
            const size_t begin = b * TOPK_BLOCK_ROWS;
            const size_t end = begin + TOPK_BLOCK_ROWS < tokens ? begin + TOPK_BLOCK_ROWS : tokens;
            if (want_probs) memset(scratch.prob_block, 0, experts * sizeof(float));
            my_bad = variant->rows(&job, begin, end, &scratch);
            /* Without a bias the rows kernels order their entries themselves. */
            if (my_bad.kind == TOPK_ROW_OK && job.bias != NULL) sort_by_weight(&job, begin, end);
            if (my_bad.kind == TOPK_ROW_OK && want_probs) topk_add_fixed_point(acc, scratch.prob_block, experts);
            if (my_bad.kind == TOPK_ROW_OK && hook != NULL) hook_stopped = hook(context, tid, begin, end);
        }
        if (my_bad.kind != TOPK_ROW_OK) {
#pragma omp critical(moert_topk_gate_error)
            if (first_bad.kind == TOPK_ROW_OK || my_bad.row < first_bad.row) first_bad = my_bad;
        }
    }

    if (first_bad.kind == TOPK_ROW_OK && want_probs)
        topk_fixed_point_totals(workspace, per_thread, threads, experts, out->prob_sums);
    if (owned) free(workspace);
    if (first_bad.kind != TOPK_ROW_OK) return report_bad_row(first_bad);
    return MOERT_OK;
}

moert_status moert_topk_gate(const moert_topk_gate_params *params, const float *logits,
                             size_t tokens, size_t experts, const moert_topk_gate_output *out) {
    MOERT_RETURN_ERROR_IF(params == NULL, MOERT_EINVAL, "top-k gate: params is NULL");
    MOERT_FORWARD_IF_ERROR(moert_isa_check(params->isa));
    return topk_gate_run(topk_variant_for(params->isa), params, logits, tokens, experts, out);
}

/* The router object: configuration, workspace, routing groups, and the policies'
 * dispatch. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "router/internal.h"

struct moert_router {
    moert_router_config config;
    size_t experts;
    moert_plan *group_plan; /* one routing group's plan, when there are several */
    int64_t *group_routed;  /* [experts], routing groups: routed entries summed over groups */
    double *group_prob_sums; /* [experts], likewise the probability sums */
    router_workspace ws;
};

int router_threads(int requested) {
    if (requested > 0) return requested; /* checked against MOERT_MAX_THREADS with the config */
    const int available = omp_get_max_threads();
    return available < MOERT_MAX_THREADS ? available : MOERT_MAX_THREADS;
}

moert_status router_workspace_reserve(router_workspace *ws, size_t bytes) {
    if (bytes <= ws->size && ws->bytes != NULL) return MOERT_OK;
    void *p = realloc(ws->bytes, bytes);
    MOERT_RETURN_ERROR_IF(p == NULL, MOERT_ENOMEM, "router: cannot allocate %zu bytes of workspace", bytes);
    ws->bytes = p;
    ws->size = bytes;
    return MOERT_OK;
}

moert_status router_workspace_reserve_stages(router_workspace *ws, int threads) {
    if (threads > ws->stage_count) {
        router_stage *p = realloc(ws->stages, (size_t)threads * sizeof *p);
        MOERT_RETURN_ERROR_IF(p == NULL, MOERT_ENOMEM, "router: cannot allocate %d thread stages", threads);
        memset(p + ws->stage_count, 0, (size_t)(threads - ws->stage_count) * sizeof *p);
        ws->stages = p;
        ws->stage_count = threads;
    }
    for (int i = 0; i < ws->stage_count; i++) ws->stages[i].used = 0, ws->stages[i].first_token = SIZE_MAX;
    return MOERT_OK;
}

moert_status router_stage_reserve(router_stage *stage, size_t more) {
    size_t want;
    MOERT_RETURN_ERROR_IF(__builtin_add_overflow(stage->used, more, &want), MOERT_EOVERFLOW,
                          "router: stage size overflows size_t");
    if (want <= stage->cap) return MOERT_OK;
    want += want / 2 + 64;
    int32_t *ids = realloc(stage->ids, want * sizeof *ids);
    if (ids != NULL) stage->ids = ids;
    float *weights = ids != NULL ? realloc(stage->weights, want * sizeof *weights) : NULL;
    if (weights != NULL) stage->weights = weights;
    MOERT_RETURN_ERROR_IF(ids == NULL || weights == NULL, MOERT_ENOMEM,
                          "router: cannot allocate %zu staged entries", want);
    stage->cap = want;
    return MOERT_OK;
}

moert_status router_workspace_reserve_thread_gates(router_workspace *ws, int threads) {
    if (threads <= ws->thread_gate_count) return MOERT_OK;
    topk_workspace *p = realloc(ws->thread_gates, (size_t)threads * sizeof *p);
    MOERT_RETURN_ERROR_IF(p == NULL, MOERT_ENOMEM, "router: cannot allocate %d thread workspaces", threads);
    memset(p + ws->thread_gate_count, 0, (size_t)(threads - ws->thread_gate_count) * sizeof *p);
    ws->thread_gates = p;
    ws->thread_gate_count = threads;
    return MOERT_OK;
}

void router_workspace_free(router_workspace *ws) {
    for (int i = 0; i < ws->thread_gate_count; i++) free(ws->thread_gates[i].bytes);
    free(ws->thread_gates);
    for (int i = 0; i < ws->stage_count; i++) free(ws->stages[i].ids), free(ws->stages[i].weights);
    free(ws->stages);
    free(ws->bytes);
    free(ws->gate.bytes);
    *ws = (router_workspace){0};
}

moert_router_config moert_router_config_default(void) {
    return (moert_router_config){
        .policy = MOERT_POLICY_TOKEN_CHOICE,
        .k = 2,
        .score = MOERT_SCORE_SOFTMAX,
        .softmax_order = MOERT_SOFTMAX_POST,
        .renormalize = 0,
        .scaling = 1.0f,
        .bias = NULL,
        .groups = 0,
        .topk_groups = 0,
        .group_score = MOERT_GROUP_SCORE_TOPK_SUM,
        .capacity_factor = 0.0,
        .drop_policy = MOERT_DROP_PROBS,
        .pad_to_capacity = 0,
        .relu_threshold = 0.0f,
        .route_groups = 1,
        .batch_score = MOERT_BATCH_SCORE_PROBS,
        .use_threshold = 0,
        .threshold = 0.0f,
        .k_max = MOERT_MAX_EXPERTS,
        .noise = MOERT_NOISE_NONE,
        .noise_scale = 1.0f,
        .noise_scales = NULL,
        .noise_temperature = 1.0f,
        .noisy_weights = 0,
        .seed = 0,
        .token_offset = 0,
        .threads = 0,
        .isa = MOERT_ISA_AUTO,
    };
}

moert_topk_gate_params router_gate_params(const moert_router_config *c) {
    moert_topk_gate_params p = moert_topk_gate_params_default();
    p.k = c->k;
    /* The router's own scores rank as the logits do: the kernel selects by softmax post
     * and the router replaces the weights (router/scores.c). */
    p.score = c->score == MOERT_SCORE_SIGMOID ? MOERT_SCORE_SIGMOID : MOERT_SCORE_SOFTMAX;
    p.softmax_order = c->softmax_order;
    p.renormalize = c->renormalize;
    p.scaling = c->scaling;
    p.bias = c->bias;
    if (c->score == MOERT_SCORE_SOFTPICK || c->score == MOERT_SCORE_SQRT_SOFTPLUS)
        p.softmax_order = MOERT_SOFTMAX_POST, p.renormalize = 0, p.scaling = 1.0f, p.bias = NULL;
    p.groups = c->groups;
    p.topk_groups = c->topk_groups;
    p.group_score = c->group_score;
    p.threads = c->threads;
    p.isa = c->isa;
    return p;
}

moert_status moert_router_config_check(const moert_router_config *c, size_t experts) {
    MOERT_RETURN_ERROR_IF(c == NULL, MOERT_EINVAL, "router: config is NULL");
    MOERT_RETURN_ERROR_IF(experts == 0 || experts > MOERT_MAX_EXPERTS, MOERT_EINVAL,
                          "experts=%zu is outside 1..%d", experts, MOERT_MAX_EXPERTS);
    MOERT_RETURN_ERROR_IF(c->policy != MOERT_POLICY_TOKEN_CHOICE && c->policy != MOERT_POLICY_EXPERT_CHOICE &&
                              c->policy != MOERT_POLICY_RELU && c->policy != MOERT_POLICY_BATCH_TOPK &&
                              c->policy != MOERT_POLICY_SPARSEMAX,
                          MOERT_EINVAL, "policy=%d is not token choice, expert choice, relu, batch-topk or sparsemax",
                          (int)c->policy);
    MOERT_RETURN_ERROR_IF(!isfinite(c->capacity_factor) || c->capacity_factor < 0.0, MOERT_EINVAL,
                          "capacity factor %g must be finite and not negative", c->capacity_factor);
    MOERT_RETURN_ERROR_IF(c->drop_policy != MOERT_DROP_PROBS && c->drop_policy != MOERT_DROP_POSITION,
                          MOERT_EINVAL, "drop policy %d is not probs (0) or position (1)", (int)c->drop_policy);
    MOERT_RETURN_ERROR_IF(c->route_groups < 1, MOERT_EINVAL, "route_groups=%d must be at least 1",
                          c->route_groups);
    MOERT_RETURN_ERROR_IF(c->threads < 0 || c->threads > MOERT_MAX_THREADS, MOERT_EINVAL, "threads=%d is outside 0..%d",
                          c->threads, MOERT_MAX_THREADS);
    MOERT_RETURN_ERROR_IF(c->isa != MOERT_ISA_AUTO && c->isa != MOERT_ISA_SCALAR && c->isa != MOERT_ISA_AVX2 &&
                              c->isa != MOERT_ISA_AVX512,
                          MOERT_EINVAL, "isa=%d is not a kernel variant", (int)c->isa);
    MOERT_RETURN_ERROR_IF(c->score != MOERT_SCORE_SOFTMAX && c->score != MOERT_SCORE_SIGMOID &&
                              c->score != MOERT_SCORE_SOFTPICK && c->score != MOERT_SCORE_SQRT_SOFTPLUS,
                          MOERT_EINVAL, "score=%d is not softmax, sigmoid, softpick or sqrt-softplus", (int)c->score);
    /* The options of BatchTopK, sparsemax and noise, each checked where it applies and
     * refused elsewhere, never silently ignored. */
    MOERT_RETURN_ERROR_IF(isnan(c->threshold), MOERT_EINVAL, "threshold is NaN");
    MOERT_RETURN_ERROR_IF(c->policy != MOERT_POLICY_BATCH_TOPK &&
                              (c->use_threshold || c->threshold != 0.0f || c->batch_score != MOERT_BATCH_SCORE_PROBS),
                          MOERT_EINVAL, "a batch score or threshold applies to batch-topk only");
    MOERT_RETURN_ERROR_IF(c->k_max < 1, MOERT_EINVAL, "k_max=%d must be at least 1", c->k_max);
    MOERT_RETURN_ERROR_IF(c->policy != MOERT_POLICY_SPARSEMAX && c->k_max != MOERT_MAX_EXPERTS, MOERT_EINVAL,
                          "k_max applies to sparsemax only");
    MOERT_RETURN_ERROR_IF(c->noise != MOERT_NOISE_NONE && c->noise != MOERT_NOISE_NORMAL && c->noise != MOERT_NOISE_GUMBEL,
                          MOERT_EINVAL, "noise=%d is not none, normal or gumbel", (int)c->noise);
    MOERT_RETURN_ERROR_IF(!(c->noise_scale >= 0.0f) || !isfinite(c->noise_scale), MOERT_EINVAL,
                          "noise scale %g must be finite and not negative", (double)c->noise_scale);
    MOERT_RETURN_ERROR_IF(!(c->noise_temperature > 0.0f) || !isfinite(c->noise_temperature), MOERT_EINVAL,
                          "noise temperature %g must be finite and above 0", (double)c->noise_temperature);
    if (c->noise_scales != NULL)
        for (size_t e = 0; e < experts; e++)
            MOERT_RETURN_ERROR_IF(!(c->noise_scales[e] >= 0.0f) || !isfinite(c->noise_scales[e]), MOERT_EINVAL,
                                  "noise_scales[%zu] = %g must be finite and not negative", e,
                                  (double)c->noise_scales[e]);
    if (c->noise != MOERT_NOISE_NONE) {
        MOERT_RETURN_ERROR_IF(c->policy != MOERT_POLICY_TOKEN_CHOICE, MOERT_EINVAL,
                              "noisy selection applies to token choice only");
        MOERT_RETURN_ERROR_IF(c->score != MOERT_SCORE_SOFTMAX && c->score != MOERT_SCORE_SIGMOID, MOERT_EINVAL,
                              "noisy selection takes softmax or sigmoid scores");
        MOERT_RETURN_ERROR_IF(c->bias != NULL || c->groups != 0, MOERT_EINVAL,
                              "noisy selection does not combine with a selection bias or group-limited selection");
        MOERT_RETURN_ERROR_IF(c->noise == MOERT_NOISE_GUMBEL && c->noise_scales != NULL, MOERT_EINVAL,
                              "per-expert noise scales apply to normal noise only");
    } else {
        MOERT_RETURN_ERROR_IF(c->noisy_weights || c->noise_scales != NULL || c->noise_scale != 1.0f ||
                                  c->noise_temperature != 1.0f,
                              MOERT_EINVAL, "noise options without noise");
    }
    if (c->policy == MOERT_POLICY_TOKEN_CHOICE) {
        /* The gate checks k, scores, bias and groups; run its checks on no tokens. */
        const moert_topk_gate_params p = router_gate_params(c);
        moert_topk_gate_output none = {NULL, NULL, NULL, NULL};
        MOERT_FORWARD_IF_ERROR(moert_topk_gate(&p, NULL, 0, experts, &none));
        const int own_score = c->score == MOERT_SCORE_SOFTPICK || c->score == MOERT_SCORE_SQRT_SOFTPLUS;
        MOERT_RETURN_ERROR_IF(own_score && c->groups != 0, MOERT_EINVAL,
                              "group-limited selection takes softmax or sigmoid scores");
        MOERT_RETURN_ERROR_IF(c->score == MOERT_SCORE_SOFTPICK && (c->bias != NULL || c->renormalize ||
                                                                   c->softmax_order != MOERT_SOFTMAX_POST),
                              MOERT_EINVAL, "softpick takes no bias, renormalisation or softmax order");
        MOERT_RETURN_ERROR_IF(c->score == MOERT_SCORE_SQRT_SOFTPLUS && c->softmax_order != MOERT_SOFTMAX_POST,
                              MOERT_EINVAL, "a softmax order does not apply to sqrt-softplus");
        if (c->bias != NULL && c->score == MOERT_SCORE_SQRT_SOFTPLUS)
            for (size_t e = 0; e < experts; e++)
                MOERT_RETURN_ERROR_IF(!isfinite(c->bias[e]), MOERT_EINVAL, "bias[%zu] is not finite", e);
        MOERT_RETURN_ERROR_IF(c->pad_to_capacity && c->capacity_factor == 0.0, MOERT_EINVAL,
                              "padding to capacity needs a capacity factor");
        MOERT_RETURN_ERROR_IF(c->relu_threshold != 0.0f, MOERT_EINVAL, "a relu threshold applies to relu routing only");
        return MOERT_OK;
    }
    /* The other policies: the options of token choice would be silently ignored. */
    const char *policy = c->policy == MOERT_POLICY_EXPERT_CHOICE ? "expert choice"
                         : c->policy == MOERT_POLICY_RELU        ? "relu routing"
                         : c->policy == MOERT_POLICY_BATCH_TOPK  ? "batch-topk"
                                                                 : "sparsemax";
    MOERT_RETURN_ERROR_IF(c->bias != NULL, MOERT_EINVAL, "a bias does not apply to %s", policy);
    MOERT_RETURN_ERROR_IF(c->groups != 0 || c->topk_groups != 0, MOERT_EINVAL,
                          "group-limited selection does not apply to %s", policy);
    MOERT_RETURN_ERROR_IF(c->score != MOERT_SCORE_SOFTMAX &&
                              !(c->policy == MOERT_POLICY_RELU && c->score == MOERT_SCORE_SOFTPICK),
                          MOERT_EINVAL, "score %s does not apply to %s",
                          c->score == MOERT_SCORE_SIGMOID    ? "sigmoid"
                          : c->score == MOERT_SCORE_SOFTPICK ? "softpick"
                                                             : "sqrt-softplus",
                          policy);
    MOERT_RETURN_ERROR_IF((c->renormalize && c->policy != MOERT_POLICY_BATCH_TOPK) || c->scaling != 1.0f,
                          MOERT_EINVAL, "renormalisation and scaling do not apply to %s", policy);
    MOERT_RETURN_ERROR_IF(c->drop_policy != MOERT_DROP_PROBS || c->pad_to_capacity, MOERT_EINVAL,
                          "drop policies and padding do not apply to %s", policy);
    MOERT_RETURN_ERROR_IF(c->relu_threshold != 0.0f && c->policy != MOERT_POLICY_RELU, MOERT_EINVAL,
                          "a relu threshold applies to relu routing only");
    MOERT_RETURN_ERROR_IF(c->capacity_factor != 0.0 && c->policy != MOERT_POLICY_EXPERT_CHOICE, MOERT_EINVAL,
                          "a capacity factor does not apply to %s", policy);
    if (c->policy == MOERT_POLICY_EXPERT_CHOICE) {
        MOERT_RETURN_ERROR_IF(c->capacity_factor <= 0.0, MOERT_EINVAL, "expert choice needs a capacity factor above 0");
    } else if (c->policy == MOERT_POLICY_RELU) {
        MOERT_RETURN_ERROR_IF(!isfinite(c->relu_threshold), MOERT_EINVAL, "relu threshold %g must be finite",
                              (double)c->relu_threshold);
        MOERT_RETURN_ERROR_IF(c->score == MOERT_SCORE_SOFTPICK && c->relu_threshold != 0.0f, MOERT_EINVAL,
                              "softpick's rectified form keeps the experts with a positive score: its threshold is 0");
    } else if (c->policy == MOERT_POLICY_BATCH_TOPK) {
        MOERT_RETURN_ERROR_IF(c->k < 1 || (size_t)c->k > experts, MOERT_EINVAL, "batch-topk: k=%d is outside 1..%zu",
                              c->k, experts);
        MOERT_RETURN_ERROR_IF(c->batch_score != MOERT_BATCH_SCORE_PROBS && c->batch_score != MOERT_BATCH_SCORE_LOGITS,
                              MOERT_EINVAL, "batch score %d is not probs (0) or logits (1)", (int)c->batch_score);
        MOERT_RETURN_ERROR_IF(!isfinite(c->threshold), MOERT_EINVAL, "threshold %g must be finite", (double)c->threshold);
        MOERT_RETURN_ERROR_IF(c->renormalize && c->batch_score == MOERT_BATCH_SCORE_LOGITS, MOERT_EINVAL,
                              "batch-topk: renormalising logits (which may be negative) means nothing: use probs");
        MOERT_RETURN_ERROR_IF(!c->use_threshold && c->threshold != 0.0f, MOERT_EINVAL,
                              "a threshold is used in threshold mode only (use_threshold)");
    }
    return MOERT_OK;
}

moert_status moert_router_capacity(const moert_router_config *c, size_t experts, size_t tokens,
                                   int64_t *capacity) {
    MOERT_RETURN_ERROR_IF(c == NULL || capacity == NULL, MOERT_EINVAL, "moert_router_capacity: NULL argument");
    MOERT_RETURN_ERROR_IF(experts == 0, MOERT_EINVAL, "experts=0");
    *capacity = 0;
    MOERT_RETURN_ERROR_IF(!isfinite(c->capacity_factor) || c->capacity_factor < 0.0, MOERT_EINVAL,
                          "capacity factor %g must be finite and not negative", c->capacity_factor);
    double exact = 0.0;
    if (c->policy == MOERT_POLICY_TOKEN_CHOICE && c->capacity_factor > 0.0) {
        /* Megatron-Core's get_capacity: ceil((tokens x k / experts) x capacity_factor). */
        exact = ceil(((double)tokens * (double)c->k / (double)experts) * c->capacity_factor);
    } else if (c->policy == MOERT_POLICY_EXPERT_CHOICE) {
        /* Expert Choice: C = round(tokens x capacity_factor / experts), at most tokens. */
        exact = floor((double)tokens * c->capacity_factor / (double)experts + 0.5);
        if (exact > (double)tokens) exact = (double)tokens;
    }
    /* Padding allocates experts x capacity slots: keep it far from int64's end. */
    MOERT_RETURN_ERROR_IF(exact > 0x1.0p52, MOERT_EOVERFLOW,
                          "capacity %g (tokens=%zu, capacity factor %g) is out of range", exact, tokens,
                          c->capacity_factor);
    *capacity = (int64_t)exact;
    return MOERT_OK;
}

moert_status moert_router_create(const moert_router_config *config, size_t experts, moert_router **router) {
    MOERT_RETURN_ERROR_IF(router == NULL, MOERT_EINVAL, "moert_router_create: router is NULL");
    *router = NULL;
    MOERT_FORWARD_IF_ERROR(moert_router_config_check(config, experts));
    moert_router *r = calloc(1, sizeof *r);
    MOERT_RETURN_ERROR_IF(r == NULL, MOERT_ENOMEM, "cannot allocate a router (%zu bytes)", sizeof *r);
    r->config = *config;
    r->experts = experts;
    if (config->route_groups > 1) {
        r->group_routed = malloc(experts * sizeof *r->group_routed);
        r->group_prob_sums = malloc(experts * sizeof *r->group_prob_sums);
        if (r->group_routed == NULL || r->group_prob_sums == NULL) {
            moert_router_destroy(r);
            return moert_set_error(MOERT_ENOMEM, "cannot allocate a router's group sums (%zu experts)", experts);
        }
    }
    *router = r;
    return MOERT_OK;
}

moert_status moert_router_set_token_offset(moert_router *router, uint64_t token_offset) {
    MOERT_RETURN_ERROR_IF(router == NULL, MOERT_EINVAL, "moert_router_set_token_offset: router is NULL");
    router->config.token_offset = token_offset;
    return MOERT_OK;
}

void moert_router_destroy(moert_router *router) {
    if (router == NULL) return;
    moert_plan_destroy(router->group_plan);
    free(router->group_routed), free(router->group_prob_sums);
    router_workspace_free(&router->ws);
    free(router);
}

static moert_status route_policy(moert_router *r, const moert_router_config *c, const float *logits, size_t tokens,
                                 moert_plan *plan) {
    switch (c->policy) {
    case MOERT_POLICY_TOKEN_CHOICE: return router_token_choice(c, logits, tokens, r->experts, plan, &r->ws);
    case MOERT_POLICY_EXPERT_CHOICE: return router_expert_choice(c, logits, tokens, r->experts, plan, &r->ws);
    case MOERT_POLICY_RELU: return router_relu(c, logits, tokens, r->experts, plan, &r->ws);
    case MOERT_POLICY_BATCH_TOPK: return router_batch_topk(c, logits, tokens, r->experts, plan, &r->ws);
    case MOERT_POLICY_SPARSEMAX: return router_sparsemax(c, logits, tokens, r->experts, plan, &r->ws);
    }
    return moert_set_error(MOERT_EINTERNAL, "router: unknown policy");
}

/* The first NaN, +inf or all -inf row of logits [tokens, experts], named as row
 * first_row + t; `status` (with its detail) when there is none. */
static moert_status report_bad_logits(const float *logits, size_t tokens, size_t E, size_t first_row,
                                      moert_status status) {
    for (size_t t = 0; t < tokens; t++) {
        const float *x = logits + t * E;
        int finite = 0;
        for (size_t e = 0; e < E; e++) {
            if (isnan(x[e])) return moert_set_error(MOERT_EBADDATA, "logits[%zu,%zu] is NaN", first_row + t, e);
            if (x[e] == INFINITY) return moert_set_error(MOERT_EBADDATA, "logits[%zu,%zu] is +inf", first_row + t, e);
            finite |= x[e] != -INFINITY;
        }
        if (!finite)
            return moert_set_error(MOERT_EBADDATA, "logits row %zu is all -inf: no expert can be chosen",
                                   first_row + t);
    }
    return status;
}

/* Several routing groups: each is routed alone into the group plan, and its token-major
 * entries, counts and losses are appended to the whole plan. */
static moert_status route_groups(moert_router *r, const float *logits, size_t tokens, moert_plan *plan) {
    const size_t E = r->experts, G = (size_t)r->config.route_groups;
    const int threads = router_threads(r->config.threads);
    if (r->group_plan == NULL) MOERT_FORWARD_IF_ERROR(moert_plan_create(&r->group_plan));
    moert_plan *gp = r->group_plan;

    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, tokens, 0, E, 0, threads));
    int64_t *routed = r->group_routed;
    double *prob_sums = r->group_prob_sums;
    memset(routed, 0, E * sizeof *routed);
    memset(prob_sums, 0, E * sizeof *prob_sums);
    moert_status st = MOERT_OK;
    int64_t capacity_sum = 0, capacity_max = 0, entries = 0;
    double threshold_sum = 0.0;
    size_t threshold_groups = 0;
    plan->token_offsets[0] = 0;
    for (size_t g = 0; g < G && st == MOERT_OK; g++) {
        const size_t t0 = tokens * g / G, t1 = tokens * (g + 1) / G;
        /* The group's tokens keep their index in the batch (the noise's counter). */
        moert_router_config group_config = r->config;
        group_config.token_offset += t0;
        st = route_policy(r, &group_config, logits + t0 * E, t1 - t0, gp);
        if (st == MOERT_EBADDATA) {
            /* The detail names a row of the group: name the token in the whole batch. */
            st = report_bad_logits(logits + t0 * E, t1 - t0, E, t0, st);
            break;
        }
        if (st != MOERT_OK) break;
        st = plan_reserve(plan, tokens, (size_t)entries + gp->entries, E, 0, threads);
        if (st != MOERT_OK) break;
        memcpy(plan->expert_ids + entries, gp->expert_ids, gp->entries * sizeof(int32_t));
        memcpy(plan->weights + entries, gp->weights, gp->entries * sizeof(float));
        for (size_t t = 0; t < t1 - t0; t++) plan->token_offsets[t0 + t + 1] = entries + gp->token_offsets[t + 1];
        if (t1 > t0) memcpy(plan->logsumexp + t0, gp->logsumexp, (t1 - t0) * sizeof(float));
        for (size_t e = 0; e < E; e++) {
            routed[e] += gp->expert_routed[e];
            prob_sums[e] += gp->prob_sums[e];
        }
        entries += (int64_t)gp->entries;
        if (!isnan(gp->stats.threshold)) threshold_sum += gp->stats.threshold, threshold_groups++;
        if (__builtin_add_overflow(capacity_sum, gp->capacity, &capacity_sum)) {
            st = moert_set_error(MOERT_EOVERFLOW, "routing groups: the sum of their capacities overflows int64");
            break;
        }
        capacity_max = gp->capacity > capacity_max ? gp->capacity : capacity_max;
    }
    if (st == MOERT_OK) {
        plan->tokens = tokens, plan->experts = E, plan->entries = (size_t)entries;
        const plan_parts parts = {routed, prob_sums, 1, capacity_sum, capacity_max, threshold_sum, threshold_groups};
        st = plan_finish_merged(plan, &parts, r->config.pad_to_capacity, threads);
    }
    return st;
}

moert_status moert_router_route(moert_router *r, const float *logits, size_t tokens, moert_plan *plan) {
    MOERT_RETURN_ERROR_IF(r == NULL || plan == NULL, MOERT_EINVAL, "moert_router_route: NULL router or plan");
    MOERT_RETURN_ERROR_IF(tokens > 0 && logits == NULL, MOERT_EINVAL, "moert_router_route: logits is NULL");
    MOERT_RETURN_ERROR_IF(tokens > INT32_MAX, MOERT_EINVAL, "tokens=%zu exceeds %d", tokens, INT32_MAX);
    size_t elements;
    MOERT_RETURN_ERROR_IF(moert_mul3_overflows(tokens, r->experts, sizeof(float), &elements), MOERT_EOVERFLOW,
                          "tokens=%zu x experts=%zu logits overflow size_t", tokens, r->experts);
    if (r->config.route_groups > 1) return route_groups(r, logits, tokens, plan);
    return route_policy(r, &r->config, logits, tokens, plan);
}

/* The plan: storage that grows and is reused, the expert-major counting sort, and the
 * balance statistics. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "router/internal.h"

#define PLAN_PREFETCH_SLOTS 32 /* entries ahead in each expert's stream: 2-4 cache lines */

moert_status moert_plan_create(moert_plan **plan) {
    MOERT_RETURN_ERROR_IF(plan == NULL, MOERT_EINVAL, "moert_plan_create: plan is NULL");
    *plan = calloc(1, sizeof **plan);
    MOERT_RETURN_ERROR_IF(*plan == NULL, MOERT_ENOMEM, "cannot allocate a plan (%zu bytes)",
                          sizeof **plan);
    return MOERT_OK;
}

void moert_plan_destroy(moert_plan *plan) {
    if (plan == NULL) return;
    free(plan->token_offsets), free(plan->expert_ids), free(plan->weights);
    free(plan->expert_offsets), free(plan->slot_tokens), free(plan->slot_entries);
    free(plan->expert_counts), free(plan->expert_routed), free(plan->experts_per_token);
    free(plan->thread_counts), free(plan->keep), free(plan->entry_slots), free(plan->prob_sums), free(plan->logsumexp);
    free(plan);
}

/* Grows *p to hold `count` elements of `size` bytes when *cap is smaller. */
static moert_status grow(void **p, size_t *cap, size_t count, size_t size, const char *what) {
    if (count <= *cap && *p != NULL) return MOERT_OK;
    size_t want = count + count / 2 + 16, bytes;
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(want, size, &bytes), MOERT_EOVERFLOW,
                          "plan: %zu %s overflow size_t", count, what);
    void *q = realloc(*p, bytes);
    MOERT_RETURN_ERROR_IF(q == NULL, MOERT_ENOMEM, "plan: cannot allocate %zu bytes for %s", bytes,
                          what);
    *p = q;
    *cap = want;
    return MOERT_OK;
}

moert_status plan_reserve(moert_plan *plan, size_t tokens, size_t entries, size_t experts,
                          size_t slots, int threads) {
    size_t cap;
    cap = plan->cap_tokens;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->token_offsets, &cap, tokens + 1, sizeof(int64_t), "token offsets"));
    cap = plan->cap_tokens;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->logsumexp, &cap, tokens + 1, sizeof(float), "logsumexp"));
    plan->cap_tokens = cap;

    cap = plan->cap_entries;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->expert_ids, &cap, entries, sizeof(int32_t), "expert ids"));
    cap = plan->cap_entries;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->weights, &cap, entries, sizeof(float), "weights"));
    cap = plan->cap_entries;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->keep, &cap, entries, sizeof(uint8_t), "capacity marks"));
    cap = plan->cap_entries;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->entry_slots, &cap, entries, sizeof(int64_t), "entry slots"));
    plan->cap_entries = cap;

    cap = plan->cap_experts;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->expert_offsets, &cap, experts + 1, sizeof(int64_t), "expert offsets"));
    cap = plan->cap_experts;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->expert_counts, &cap, experts + 1, sizeof(int64_t), "expert counts"));
    cap = plan->cap_experts;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->expert_routed, &cap, experts + 1, sizeof(int64_t), "routed counts"));
    cap = plan->cap_experts;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->experts_per_token, &cap, experts + 1, sizeof(int64_t), "histogram"));
    cap = plan->cap_experts;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->prob_sums, &cap, experts + 1, sizeof(double), "probability sums"));
    plan->cap_experts = cap;

    cap = plan->cap_slots;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->slot_tokens, &cap, slots, sizeof(int32_t), "slot tokens"));
    cap = plan->cap_slots;
    MOERT_FORWARD_IF_ERROR(grow((void **)&plan->slot_entries, &cap, slots, sizeof(int64_t), "slot entries"));
    plan->cap_slots = cap;

    /* The counting sort runs at most a thread per token (plan_build_expert_major). */
    if ((size_t)threads > tokens) threads = tokens > 0 ? (int)tokens : 1;
    size_t counts;
    MOERT_RETURN_ERROR_IF(moert_mul_overflows((size_t)(threads + 1), experts + 1, &counts),
                          MOERT_EOVERFLOW, "plan: thread counts overflow size_t");
    return grow((void **)&plan->thread_counts, &plan->cap_thread_counts, counts, sizeof(int64_t),
                "thread counts");
}

moert_status plan_build_expert_major(moert_plan *plan, int threads, int64_t capacity, int pad) {
    const size_t T = plan->tokens, E = plan->experts;
    const int64_t *offsets = plan->token_offsets;
    const int32_t *ids = plan->expert_ids;
    if ((size_t)threads > T) threads = T > 0 ? (int)T : 1;
    int64_t *counts = plan->thread_counts; /* [threads][E] */
    memset(counts, 0, (size_t)threads * E * sizeof(int64_t));

#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const size_t t0 = T * (size_t)tid / (size_t)nth, t1 = T * (size_t)(tid + 1) / (size_t)nth;
        int64_t *mine = counts + (size_t)tid * E;
        const int64_t first = offsets[t0], last = offsets[t1];
        for (int64_t i = first; i < last; i++) mine[ids[i]]++;
#pragma omp barrier
#pragma omp single
        {
            /* Each thread's running slot per expert: the expert's start plus the counts of
             * the threads before it, which hold the lower tokens. */
            int64_t start = 0;
            for (size_t e = 0; e < E; e++) {
                plan->expert_offsets[e] = start;
                int64_t total = 0;
                for (int u = 0; u < nth; u++) {
                    const int64_t c = counts[(size_t)u * E + e];
                    counts[(size_t)u * E + e] = start + total;
                    total += c;
                }
                plan->expert_counts[e] = total;
                start += pad && capacity > 0 ? capacity : total;
            }
            plan->expert_offsets[E] = start;
        }
        /* The scatter writes E sequential streams at once, which the hardware does not
         * prefetch for stores: each cache line would be fetched only when its first store
         * retires, one miss at a time. Fetch each stream's line a few lines ahead. */
        int32_t *slot_tokens = plan->slot_tokens;
        int64_t *slot_entries = plan->slot_entries;
        int64_t *entry_slots = plan->entry_slots;
        const int64_t slots_end = plan->expert_offsets[E];
        for (size_t t = t0; t < t1; t++) {
            const int64_t end = offsets[t + 1];
            for (int64_t i = offsets[t]; i < end; i++) {
                const int64_t slot = mine[ids[i]]++;
                if (slot + PLAN_PREFETCH_SLOTS < slots_end) {
                    __builtin_prefetch(slot_tokens + slot + PLAN_PREFETCH_SLOTS, 1);
                    __builtin_prefetch(slot_entries + slot + PLAN_PREFETCH_SLOTS, 1);
                }
                slot_tokens[slot] = (int32_t)t;
                slot_entries[slot] = i;
                entry_slots[i] = slot; /* in entry order: a sequential stream */
            }
        }
    }
    if (pad && capacity > 0)
        for (size_t e = 0; e < E; e++)
            for (int64_t s = plan->expert_offsets[e] + plan->expert_counts[e]; s < plan->expert_offsets[e + 1]; s++) {
                plan->slot_tokens[s] = -1;
                plan->slot_entries[s] = -1;
            }
    plan->slots = (size_t)plan->expert_offsets[E];
    plan->capacity = capacity;
    plan->padded = pad && capacity > 0;
    return MOERT_OK;
}

void plan_compute_stats(moert_plan *plan, const double *prob_sums, const float *logsumexp) {
    const size_t T = plan->tokens, E = plan->experts;
    moert_plan_stats *s = &plan->stats;
    memset(s, 0, sizeof *s);
    s->tokens = T, s->experts = E, s->capacity = plan->capacity;
    s->threshold = NAN; /* batch-topk sets it after */
    s->expert_counts = plan->expert_counts;
    s->expert_routed = plan->expert_routed;
    s->experts_per_token = plan->experts_per_token;

    int64_t kept = 0, routed = 0, max = 0;
    for (size_t e = 0; e < E; e++) {
        kept += plan->expert_counts[e];
        routed += plan->expert_routed[e];
        max = plan->expert_counts[e] > max ? plan->expert_counts[e] : max;
    }
    s->assignments = kept, s->routed = routed, s->dropped = routed - kept;

    memset(plan->experts_per_token, 0, (E + 1) * sizeof(int64_t));
    for (size_t t = 0; t < T; t++) {
        const int64_t n = plan->token_offsets[t + 1] - plan->token_offsets[t];
        plan->experts_per_token[n <= (int64_t)E ? n : (int64_t)E]++;
    }
    s->unrouted = plan->experts_per_token[0];
    s->experts_per_token_mean = T ? (double)kept / (double)T : 0.0;
    s->sparsity = T ? 1.0 - (double)kept / ((double)T * (double)E) : 0.0;

    if (kept > 0) {
        const double mean = (double)kept / (double)E;
        double var = 0.0, entropy = 0.0;
        for (size_t e = 0; e < E; e++) {
            const double c = (double)plan->expert_counts[e];
            var += (c - mean) * (c - mean);
            if (c > 0) entropy -= (c / (double)kept) * log(c / (double)kept);
        }
        s->max_over_mean = (double)max / mean;
        s->cv = sqrt(var / (double)E) / mean;
        /* One expert is perfectly balanced by definition. */
        s->entropy = E > 1 ? entropy / log((double)E) : 1.0;
    }
    if (prob_sums != NULL && routed > 0 && T > 0) {
        double aux = 0.0;
        for (size_t e = 0; e < E; e++)
            aux += ((double)plan->expert_routed[e] / (double)routed) * (prob_sums[e] / (double)T);
        s->aux_loss = (double)E * aux;
    }
    if (logsumexp != NULL && T > 0) {
        double z = 0.0;
        for (size_t t = 0; t < T; t++) z += (double)logsumexp[t] * (double)logsumexp[t];
        s->z_loss = z / (double)T;
    }
}

moert_status moert_plan_get_view(const moert_plan *plan, moert_plan_view *view) {
    MOERT_RETURN_ERROR_IF(plan == NULL || view == NULL, MOERT_EINVAL, "moert_plan_get_view: NULL argument");
    *view = (moert_plan_view){
        .tokens = plan->tokens,
        .experts = plan->experts,
        .entries = plan->entries,
        .slots = plan->slots,
        .token_offsets = plan->token_offsets,
        .expert_ids = plan->expert_ids,
        .weights = plan->weights,
        .expert_offsets = plan->expert_offsets,
        .slot_tokens = plan->slot_tokens,
        .slot_entries = plan->slot_entries,
    };
    return MOERT_OK;
}

moert_status moert_plan_get_stats(const moert_plan *plan, moert_plan_stats *stats) {
    MOERT_RETURN_ERROR_IF(plan == NULL || stats == NULL, MOERT_EINVAL, "moert_plan_get_stats: NULL argument");
    *stats = plan->stats;
    return MOERT_OK;
}

moert_status moert_plan_worker_load(const moert_plan *plan, const int32_t *worker_of_expert,
                                    int32_t workers, int64_t *load) {
    MOERT_RETURN_ERROR_IF(plan == NULL || worker_of_expert == NULL || load == NULL, MOERT_EINVAL,
                          "moert_plan_worker_load: NULL argument");
    MOERT_RETURN_ERROR_IF(workers < 1, MOERT_EINVAL, "workers=%d must be at least 1", workers);
    for (size_t e = 0; e < plan->experts; e++)
        MOERT_RETURN_ERROR_IF(worker_of_expert[e] < 0 || worker_of_expert[e] >= workers, MOERT_EINVAL,
                              "worker_of_expert[%zu]=%d is outside 0..%d", e, worker_of_expert[e],
                              workers - 1);
    memset(load, 0, (size_t)workers * sizeof(int64_t));
    for (size_t e = 0; e < plan->experts; e++) load[worker_of_expert[e]] += plan->expert_counts[e];
    return MOERT_OK;
}

moert_status moert_plan_from_entries(moert_plan *plan, size_t tokens, size_t experts,
                                     const int64_t *token_offsets, const int32_t *expert_ids,
                                     const float *weights, int threads) {
    MOERT_RETURN_ERROR_IF(plan == NULL || token_offsets == NULL, MOERT_EINVAL,
                          "moert_plan_from_entries: NULL argument");
    MOERT_RETURN_ERROR_IF(experts == 0 || experts > INT32_MAX, MOERT_EINVAL,
                          "experts=%zu is outside 1..%d", experts, INT32_MAX);
    MOERT_RETURN_ERROR_IF(tokens > INT32_MAX, MOERT_EINVAL, "tokens=%zu exceeds %d", tokens, INT32_MAX);
    MOERT_RETURN_ERROR_IF(token_offsets[0] != 0, MOERT_EINVAL, "token_offsets[0]=%lld, not 0",
                          (long long)token_offsets[0]);
    for (size_t t = 0; t < tokens; t++)
        MOERT_RETURN_ERROR_IF(token_offsets[t + 1] < token_offsets[t], MOERT_EINVAL,
                              "token_offsets[%zu]=%lld decreases", t + 1, (long long)token_offsets[t + 1]);
    const size_t entries = (size_t)token_offsets[tokens];
    MOERT_RETURN_ERROR_IF(entries > 0 && (expert_ids == NULL || weights == NULL), MOERT_EINVAL,
                          "moert_plan_from_entries: NULL entries");
    for (size_t t = 0; t < tokens; t++)
        for (int64_t i = token_offsets[t]; i < token_offsets[t + 1]; i++) {
            MOERT_RETURN_ERROR_IF(expert_ids[i] < 0 || (size_t)expert_ids[i] >= experts, MOERT_EINVAL,
                                  "token %zu: expert id %d is outside 0..%zu", t, expert_ids[i], experts - 1);
            MOERT_RETURN_ERROR_IF(!isfinite(weights[i]), MOERT_EBADDATA, "token %zu: weight %g is not finite",
                                  t, (double)weights[i]);
            if (i > token_offsets[t]) {
                const int ordered = weights[i - 1] > weights[i] ||
                                    (weights[i - 1] == weights[i] && expert_ids[i - 1] < expert_ids[i]);
                MOERT_RETURN_ERROR_IF(!ordered, MOERT_EINVAL,
                                      "token %zu: entries are not by descending weight, ties to the lower "
                                      "expert (entry %lld)", t, (long long)i);
            }
        }
    threads = router_threads(threads);
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, tokens, entries, experts, entries, threads));
    plan->tokens = tokens, plan->experts = experts, plan->entries = entries;
    memcpy(plan->token_offsets, token_offsets, (tokens + 1) * sizeof(int64_t));
    if (entries > 0) {
        memcpy(plan->expert_ids, expert_ids, entries * sizeof(int32_t));
        memcpy(plan->weights, weights, entries * sizeof(float));
    }
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, threads, 0, 0));
    memcpy(plan->expert_routed, plan->expert_counts, experts * sizeof(int64_t));
    plan_compute_stats(plan, NULL, NULL);
    return MOERT_OK;
}

moert_status plan_finish_merged(moert_plan *plan, const plan_parts *parts, int pad, int threads) {
    const size_t E = plan->experts;
    pad = pad && parts->capacity_sum > 0;
    size_t slots = plan->entries;
    MOERT_RETURN_ERROR_IF(pad && moert_mul_overflows((size_t)parts->capacity_sum, E, &slots), MOERT_EOVERFLOW,
                          "padding: capacity %lld x %zu experts overflows size_t", (long long)parts->capacity_sum, E);
    MOERT_FORWARD_IF_ERROR(plan_reserve(plan, plan->tokens, plan->entries, E, slots, threads));
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, threads, pad ? parts->capacity_sum : 0, pad));
    for (size_t e = 0; e < E; e++) {
        plan->expert_routed[e] = 0, plan->prob_sums[e] = 0.0;
        for (size_t p = 0; p < parts->parts; p++)
            plan->expert_routed[e] += parts->routed[p * E + e], plan->prob_sums[e] += parts->prob_sums[p * E + e];
    }
    plan->capacity = parts->capacity_max;
    plan_compute_stats(plan, plan->prob_sums, plan->logsumexp);
    plan->stats.threshold = parts->thresholds ? parts->threshold_sum / (double)parts->thresholds : NAN;
    return MOERT_OK;
}

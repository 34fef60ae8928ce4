/* Capacity: an expert keeps at most `capacity` of the entries routed to it, chosen by the
 * drop policy; the rest leave the plan. Kept weights are not renormalised. */
#include <omp.h>
#include <string.h>

#include "common/error.h"
#include "common/size.h"
#include "router/internal.h"

moert_status router_apply_capacity(moert_plan *plan, int64_t capacity, moert_drop_policy policy,
                                   int threads, router_workspace *ws) {
    const size_t E = plan->experts, T = plan->tokens;
    /* The routed entries of each expert, in token order. */
    MOERT_FORWARD_IF_ERROR(plan_build_expert_major(plan, threads, 0, 0));
    memcpy(plan->expert_routed, plan->expert_counts, E * sizeof(int64_t));
    memset(plan->keep, 1, plan->entries);

    int64_t largest = 0;
    for (size_t e = 0; e < E; e++) largest = plan->expert_counts[e] > largest ? plan->expert_counts[e] : largest;
    if (largest <= capacity) return MOERT_OK;

    /* Per thread: the over-full expert's weights, its marks, and the selection's scratch. */
    const size_t per_thread =
        moert_round_up_64((size_t)largest * (sizeof(float) + 1) + ROUTER_SELECT_SCRATCH(largest));
    if ((size_t)threads > E) threads = (int)E;
    MOERT_FORWARD_IF_ERROR(router_workspace_reserve(ws, per_thread * (size_t)threads));

#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        unsigned char *mine = (unsigned char *)ws->bytes + per_thread * (size_t)omp_get_thread_num();
        void *select_scratch = mine;
        float *values = (float *)(mine + ROUTER_SELECT_SCRATCH(largest));
        uint8_t *marks = (uint8_t *)(values + largest);
#pragma omp for schedule(dynamic, 1)
        for (size_t e = 0; e < E; e++) {
            const int64_t first = plan->expert_offsets[e], n = plan->expert_counts[e];
            if (n <= capacity) continue;
            if (policy == MOERT_DROP_POSITION) {
                /* The earliest tokens stay: the slots are in token order. */
                for (int64_t s = capacity; s < n; s++) plan->keep[plan->slot_entries[first + s]] = 0;
            } else {
                /* The highest weights stay, ties to the earlier token. */
                for (int64_t s = 0; s < n; s++) values[s] = plan->weights[plan->slot_entries[first + s]];
                router_select_largest(values, (size_t)n, 1, (size_t)capacity, marks, 1, select_scratch);
                for (int64_t s = 0; s < n; s++)
                    if (!marks[s]) plan->keep[plan->slot_entries[first + s]] = 0;
            }
        }
    }

    /* Compact the token-major arrays in place; each token keeps its order. */
    int64_t out = 0;
    for (size_t t = 0; t < T; t++) {
        const int64_t begin = plan->token_offsets[t], end = plan->token_offsets[t + 1];
        plan->token_offsets[t] = out;
        for (int64_t i = begin; i < end; i++)
            if (plan->keep[i]) {
                plan->expert_ids[out] = plan->expert_ids[i];
                plan->weights[out] = plan->weights[i];
                out++;
            }
    }
    plan->token_offsets[T] = out;
    plan->entries = (size_t)out;
    return MOERT_OK;
}

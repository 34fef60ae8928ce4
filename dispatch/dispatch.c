/* Dispatch: gather each expert's rows into its worker's buffer. */
#include <omp.h>
#include <string.h>

#include "common/error.h"
#include "dispatch/dispatch.h"
#include "router/internal.h"

void dispatch_rows(const dispatch_worker *w, const moert_plan_view *plan, const void *x, size_t d, size_t ld,
                   moert_dtype dtype, size_t row_begin, size_t row_end, const float **entry_output) {
    const size_t elem = dtype == MOERT_DTYPE_BF16 ? 2 : 4;
    const char *xb = x;
    char *rows = w->rows;
    for (size_t i = 0; i < w->expert_count; i++) {
        const int32_t e = w->experts[i];
        const size_t start = (size_t)w->row_start[e], count = (size_t)w->row_count[e];
        /* This thread's part of the expert's rows. */
        const size_t lo = row_begin > start ? row_begin : start;
        const size_t hi = row_end < start + count ? row_end : start + count;
        if (lo >= hi) continue;
        const int64_t first_slot = plan->expert_offsets[e] + (int64_t)(lo - start);
        for (size_t r = lo; r < hi; r++) {
            const int64_t slot = first_slot + (int64_t)(r - lo);
            const size_t token = (size_t)plan->slot_tokens[slot];
            if (r + 4 < hi) __builtin_prefetch(xb + (size_t)plan->slot_tokens[slot + 4] * d * elem);
            memcpy(rows + r * ld * elem, xb + token * d * elem, d * elem);
            entry_output[plan->slot_entries[slot]] = w->outputs + r * ld;
        }
    }
}

moert_status moert_dispatch(const moert_plan *plan, const void *x, size_t d, moert_dtype dtype, void *rows,
                            int threads) {
    MOERT_RETURN_ERROR_IF(plan == NULL || x == NULL || rows == NULL, MOERT_EINVAL, "moert_dispatch: NULL argument");
    MOERT_RETURN_ERROR_IF(dtype != MOERT_DTYPE_F32 && dtype != MOERT_DTYPE_BF16, MOERT_EINVAL,
                          "moert_dispatch: unknown dtype %d", (int)dtype);
    MOERT_RETURN_ERROR_IF(d == 0, MOERT_EINVAL, "moert_dispatch: d is 0");
    const size_t elem = dtype == MOERT_DTYPE_BF16 ? 2 : 4, slots = plan->slots;
    const char *xb = x;
    char *out = rows;
    const int32_t *tokens = plan->slot_tokens;
    if (threads <= 0) threads = omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && slots > 64)
    for (size_t s = 0; s < slots; s++) {
        if (s + 4 < slots && tokens[s + 4] >= 0) __builtin_prefetch(xb + (size_t)tokens[s + 4] * d * elem);
        if (tokens[s] < 0)
            memset(out + s * d * elem, 0, d * elem); /* padding */
        else
            memcpy(out + s * d * elem, xb + (size_t)tokens[s] * d * elem, d * elem);
    }
    return MOERT_OK;
}

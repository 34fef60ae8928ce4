/* Dispatch: gather each expert's rows into its worker's buffer. */
#include <string.h>

#include "dispatch/dispatch.h"

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

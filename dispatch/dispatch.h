/* Internal: moving hidden-state rows to the experts and their outputs back.
 *
 * Dispatch is pull-based: each worker's threads gather the rows of that worker's experts
 * into the worker's own buffer (in its NUMA node's memory), in the plan's expert-major
 * order, and note where each plan entry's output row will be. Combine then reads those
 * rows back in token-major order. */
#ifndef MOERT_DISPATCH_INTERNAL_H
#define MOERT_DISPATCH_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "moert/layer.h"
#include "moert/plan.h"

/* One worker's share of the dispatch. */
typedef struct dispatch_worker {
    const int32_t *experts; /* the worker's experts, ascending */
    size_t expert_count;
    const int64_t *row_start; /* [E]: first row of each expert in its worker's buffers */
    const int64_t *row_count; /* [E]: kept rows of each expert */
    void *rows;               /* [rows, ld] in the layer's dtype */
    float *outputs;           /* [rows, ld] */
    size_t total_rows;
} dispatch_worker;

/* Rows [row_begin, row_end) of the worker (its thread's share): copies x[token] (x is
 * [T, d], dtype) into the worker's rows and sets entry_output[entry] to the output row. */
void dispatch_rows(const dispatch_worker *w, const moert_plan_view *plan, const void *x, size_t d, size_t ld,
                   moert_dtype dtype, size_t row_begin, size_t row_end, const float **entry_output);

/* Combine's columns per block (the size of its scratch). */
#define COMBINE_BLOCK 512

/* out[t] for t in [token_begin, token_end) = sum over t's entries, in order, of weight x
 * its output row; zeros for a token without entries. Sums in float32, COMBINE_BLOCK
 * columns at a time in `block`; bf16 output rounds once. */
void combine_tokens(const moert_plan_view *plan, const float *const *entry_output, size_t d, moert_dtype dtype,
                    size_t token_begin, size_t token_end, void *out, float *block);

#endif /* MOERT_DISPATCH_INTERNAL_H */

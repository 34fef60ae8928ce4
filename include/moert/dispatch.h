/* moert: moving hidden states to the experts and their outputs back, by a plan.
 *
 * For backends that run their own experts: dispatch gathers each slot's token row into
 * an expert-major buffer (expert e's rows are slots expert_offsets[e] .. [e+1] of the
 * plan, padding slots zero), and combine adds each token's expert outputs, weighted, in
 * the token-major entry order, so the result is bit-identical for any thread count. A
 * token with no kept expert gets zeros. (The MoE layer of moert/layer.h does the same
 * per NUMA worker.) */
#ifndef MOERT_DISPATCH_H
#define MOERT_DISPATCH_H

#include <stddef.h>

#include "moert/export.h"
#include "moert/plan.h"
#include "moert/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moert_dtype {
    MOERT_DTYPE_F32 = 0,
    MOERT_DTYPE_BF16 = 1, /* bfloat16, as uint16_t bits */
} moert_dtype;

/* rows [slots, d] = x [tokens, d] gathered by the plan's slot_tokens; both in dtype. */
MOERT_API moert_status moert_dispatch(const moert_plan *plan, const void *x, size_t d, moert_dtype dtype, void *rows,
                                      int threads);

/* out [tokens, d] (dtype) = for each token, the sum over its entries of weight x
 * expert_out[slot of the entry] (expert_out is [slots, d] float32). bf16 output sums in
 * float32 and rounds once. */
MOERT_API moert_status moert_combine(const moert_plan *plan, const float *expert_out, size_t d, moert_dtype dtype,
                                     void *out, int threads);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_DISPATCH_H */

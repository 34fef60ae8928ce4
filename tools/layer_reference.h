/* A plain double-precision MoE layer, the reference of `moert layer --check` and of the
 * tests: for each token, its routed experts and weights (from the plan), and each expert
 * computed in double from the float32 weights. No BLAS, no threads, no layout tricks. */
#ifndef MOERT_TOOLS_LAYER_REFERENCE_H
#define MOERT_TOOLS_LAYER_REFERENCE_H

#include <stddef.h>

#include "moert/layer.h"
#include "moert/plan.h"

typedef struct layer_reference {
    size_t d, f, experts;
    moert_expert_kind kind;
    int synthetic_cost;
    const float *const *w1, *const *w3, *const *w2; /* [experts]: [d, f], [d, f], [f, d] */
} layer_reference;

/* out [T, d] (double) for x [T, d] float32, routed as `plan` says. */
void layer_reference_forward(const layer_reference *ref, const moert_plan *plan, const float *x, double *out);

/* The largest per-token relative error: max over tokens of max_j |got - want| / max_j |want|
 * (tokens whose reference row is all zero compare absolutely). */
double layer_reference_error(const float *got, const double *want, size_t tokens, size_t d);

#endif /* MOERT_TOOLS_LAYER_REFERENCE_H */

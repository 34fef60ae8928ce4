/* Test-only: an independent double-precision top-k gate, written from the definitions
 * (sort the experts, then compute the weights in double), to check the scalar kernel. */
#ifndef MOERT_TESTS_REFERENCE_GATE_H
#define MOERT_TESTS_REFERENCE_GATE_H

#include <stddef.h>
#include <stdint.h>

#include "moert/topk_gate.h"

/* One row. ids[k], weights[k] out; *lse out (natural log-sum-exp); probs[E] out (the
 * full softmax) when non-NULL. Assumes the row is valid. */
void reference_gate_row(const moert_topk_gate_params *p, const float *row, size_t experts,
                        int32_t *ids, double *weights, double *lse, double *probs);

#endif

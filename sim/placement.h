/* Internal to `moert simulate`: where the experts live. A placement puts every expert on
 * one rank or more (replicas); a replica takes an equal share of its expert's load, except
 * that a rank holding a replica sends its own tokens to it (as moert_ep does).
 *
 * - contiguous: expert e on rank floor(e P / E);
 * - round-robin: expert e on rank e mod P;
 * - balanced: the experts by descending measured load (ties to the lower id), each to the
 *   least-loaded rank that still has a slot (ceil(E / P) slots each): greedy LPT packing;
 * - eplb (as DeepSeek's EPLB): the R hottest replicas first (R times, the expert with the
 *   largest load per replica gets one more), then hierarchically: the replicas packed onto
 *   nodes (the least-loaded node with a free slot), then within each node onto its ranks,
 *   never two replicas of an expert on one rank. (E + R) must divide into P equal slot
 *   counts. */
#ifndef MOERT_SIM_PLACEMENT_H
#define MOERT_SIM_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "moert/status.h"

typedef enum sim_place_kind {
    SIM_PLACE_CONTIGUOUS,
    SIM_PLACE_ROUND_ROBIN,
    SIM_PLACE_BALANCED,
    SIM_PLACE_EPLB,
} sim_place_kind;

typedef struct sim_placement {
    size_t experts;
    int ranks, nodes;
    int32_t *offsets; /* [experts + 1]: expert e's replicas are [offsets[e], offsets[e + 1]) */
    int32_t *rank_of; /* [replicas] */
} sim_placement;

/* A placement of `experts` on `ranks` in `nodes` nodes (ranks a multiple of nodes), from
 * the measured load [experts] (balanced, eplb; may be NULL for the others) with `spare`
 * replica slots (eplb). Bad input is MOERT_EINVAL naming it. */
moert_status sim_place(sim_place_kind kind, size_t experts, int ranks, int nodes, int spare, const double *load,
                       sim_placement *out);
void sim_placement_free(sim_placement *p);

/* The same with eplb's expert groups: `groups` groups of contiguous experts packed whole
 * onto nodes (0: one expert each). */
moert_status sim_place_groups(sim_place_kind kind, size_t experts, int ranks, int nodes, int spare, int groups,
                              const double *load, sim_placement *out);

/* Each rank's load under the placement: load[e] spread over its replicas equally. */
void sim_rank_loads(const sim_placement *p, const double *expert_load, double *rank_load);

/* Expert-replica pairs of `next` that `prev` did not have: the weights a re-plan moves. */
size_t sim_placement_moves(const sim_placement *prev, const sim_placement *next);

#endif /* MOERT_SIM_PLACEMENT_H */

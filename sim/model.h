/* Internal to `moert simulate`: the distributed step under an alpha-beta cost model.
 *
 * Given each source rank's routed entries per expert (counts[r][e], scaled from a sample)
 * and a placement, a step sends each entry's row (bytes_per_row) from its rank to a rank
 * holding a replica of its expert: its own, if it holds one, else each replica an equal
 * share. Per rank: the bytes and peers it sends and receives, within its node and to other
 * nodes; the dispatch time is the slowest rank's max(send, receive) of
 *   peers_intra alpha_intra + bytes_intra / beta_intra + peers_inter alpha_inter + bytes_inter / beta_inter,
 * the combine the same (the outputs come back the same way), the compute the slowest
 * rank's entries times the time of one token through one expert. */
#ifndef MOERT_SIM_MODEL_H
#define MOERT_SIM_MODEL_H

#include <stddef.h>

#include "sim/placement.h"

typedef struct sim_cost {
    double alpha_intra, beta_intra; /* s per message, bytes per s: within a node */
    double alpha_inter, beta_inter; /* between nodes */
    double expert_seconds;          /* one token through one expert */
    double bytes_per_row;           /* one token's hidden state on the wire */
} sim_cost;

/* The defaults (README): NVLink-class 2 us and 150 GB/s within a node, InfiniBand-class
 * 5 us and 25 GB/s between nodes, d = 4096 in bf16 (8 KiB a row), an expert of
 * 3 x 4096 x 1408 multiply-adds at 100 TFLOP/s (0.35 us a token). */
sim_cost sim_cost_default(void);

typedef struct sim_step_cost {
    double dispatch, compute, combine, total; /* seconds */
    double intra_bytes, inter_bytes;          /* the whole step's, dispatch only */
    double max_rank_load, mean_rank_load;     /* entries */
    double straggler;                         /* max / mean rank load */
} sim_step_cost;

/* counts [ranks x experts]; scratch: 6 ranks doubles. O(ranks x experts) a step. rank_load [ranks] receives each
 * rank's entries. */
void sim_step_model(const sim_placement *p, const sim_cost *cost, const double *counts, double *rank_load,
                    double *scratch, sim_step_cost *out);

#endif /* MOERT_SIM_MODEL_H */

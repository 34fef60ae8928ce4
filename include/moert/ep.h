/* moert: expert parallelism over MPI ranks. Include it on its own (it needs <mpi.h>);
 * moert/moert.h does not.
 *
 * Every rank holds a share of the tokens and a share of the experts. A forward pass on
 * each rank: the gate and the router on the rank's own tokens (its tokens are a routing
 * group: capacity, dropping and expert choice are decided per rank, as in GShard and
 * Megatron-Core); the rows each expert needs travel to the rank that owns it (the rows per
 * (rank, expert) by a small MPI_Alltoallv, which also tells each row's expert; the rows by
 * MPI_Alltoallv, in rounds of at most max_count rows per peer); the owner numbers each expert's rows in order (by source, then
 * token) without moving them, its threads claim chunks, gather each into node-local
 * scratch and run the expert there, writing the outputs where they travel back from; the
 * source combines them with its weights in token-major order.
 *
 * With P ranks where rank r holds tokens [floor(r T / P), floor((r+1) T / P)) of a global
 * batch, the outputs are bit-identical to the single-process layer (moert/layer.h) with
 * route_groups = P, one worker, and the same chunk rows.
 *
 * Errors are agreed: a bad input or a failed allocation on any rank makes every rank
 * return the same status after at most one extra collective, the failing rank with its
 * detail and the others naming it; so do configurations or placements that differ between
 * ranks (checked at creation). moert works on its own duplicate of the caller's
 * communicator, with MPI_ERRORS_RETURN; an error inside an MPI call becomes MOERT_EMPI with
 * MPI's string on the rank that saw it, but MPI gives no guarantee that the others return:
 * treat it as fatal. A rank's send or receive total is limited to INT_MAX rows. */
#ifndef MOERT_EP_H
#define MOERT_EP_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "moert/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moert_ep moert_ep;

/* Collective over comm. config as for moert_layer_create, NUMA workers included: inside
 * each rank, its experts go round-robin to its workers, whose node memory holds their
 * weights, rows and outputs and whose threads claim their chunks (one worker per node by
 * default). rank_of_expert[E] places experts on ranks; NULL means contiguous blocks,
 * expert e on rank floor(e P / E). */
MOERT_API moert_status moert_ep_create(const moert_layer_config *config, MPI_Comm comm,
                                       const int32_t *rank_of_expert, moert_ep **ep);
/* The same with replicated experts: expert e's replicas are on ranks
 * replica_ranks[replica_offsets[e] .. replica_offsets[e + 1]) (at least one, no rank
 * twice). A token's row for e goes to the replica on its own rank if there is one, else to
 * the replica its rank has sent the fewest rows so far in the pass (ties to the first
 * listed): deterministic, and each replica computes the rows it gets. */
MOERT_API moert_status moert_ep_create_replicated(const moert_layer_config *config, MPI_Comm comm,
                                                  const int32_t *replica_offsets, const int32_t *replica_ranks,
                                                  moert_ep **ep);

MOERT_API void moert_ep_destroy(moert_ep *ep); /* collective (it frees the communicator) */

/* W_gate [d, E], float32, the same on every rank. */
MOERT_API moert_status moert_ep_set_gate(moert_ep *ep, const float *w_gate);

/* Expert e's weights (as moert_layer_set_expert); kept only by the ranks that hold a
 * replica of e, so every rank may pass every expert, or only its own. */
MOERT_API moert_status moert_ep_set_expert(moert_ep *ep, size_t expert, const float *w1, const float *w3,
                                           const float *w2);

/* Collective: out [tokens, d] = the MoE layer of this rank's x [tokens, d] (the layer's
 * dtype). tokens may differ between ranks, and may be 0. */
MOERT_API moert_status moert_ep_forward(moert_ep *ep, const void *x, size_t tokens, void *out);

/* This rank's plan of its last forward pass, and the rank of an expert's first replica. */
MOERT_API const moert_plan *moert_ep_plan(const moert_ep *ep);
MOERT_API int moert_ep_rank_of_expert(const moert_ep *ep, size_t expert);

/* Collective, after a forward pass: the whole batch on `root`. Its whole_out [sum of the
 * ranks' tokens, d] (the layer's dtype) receives every rank's `out` in rank order, and
 * whole_plan the plan of the whole batch, merged as the single-process router merges
 * routing groups (so, with rank r holding group r, both equal the single-process layer's
 * with route_groups = P, statistics included). Other ranks pass NULL for both. */
MOERT_API moert_status moert_ep_gather(moert_ep *ep, int root, const void *out, void *whole_out,
                                       moert_plan *whole_plan);

/* Rows this rank sent each replica in its last forward pass: rows[j] for replica j of the
 * placement given to moert_ep_create_replicated (one per expert, in expert order, for
 * moert_ep_create), replica_offsets[E] of them. Shows where the replica rule sent them. */
MOERT_API moert_status moert_ep_replica_rows(const moert_ep *ep, int64_t *rows);

/* Wall-clock seconds of the stages of this rank's last forward pass. */
typedef struct moert_ep_timings {
    double gate, route, exchange_counts, dispatch, experts, combine_exchange, combine, total;
    double regroup; /* placing the received rows in expert-major order: working out each
                       expert's place (the per-expert exchanges then put its rows there), or
                       numbering each place's received row, plus (part of `experts`) the
                       slowest thread's gathering of rows by place and scattering of outputs */
    double pack;    /* gathering this rank's routed rows into the send buffer, before the counts */
    double wait;    /* in the agreements after packing and after the experts: waiting for slower
                       ranks (load imbalance) plus the agreements' own latency */
    int per_expert_exchange; /* 1: one exchange per local expert number put the rows at their
                                expert-major places; 0: one exchange, rows gathered by place */
} moert_ep_timings;
MOERT_API moert_status moert_ep_get_timings(const moert_ep *ep, moert_ep_timings *timings);

/* Testing knob: the largest count one MPI call may carry (default INT_MAX); smaller
 * values force the transfers into several rounds. The smallest value set on any rank is
 * used by all. */
MOERT_API moert_status moert_ep_set_max_count(moert_ep *ep, int max_count);

/* How the rows travel: one MPI_Alltoallv per local expert number, which lands the rows at
 * their expert-major places (when each call carries at least 512 KiB between two ranks on
 * average), or one MPI_Alltoallv for all, each chunk's rows then gathered by place (else).
 * The results are the same bits either way. The largest value set on any rank is used. */
typedef enum moert_ep_exchange {
    MOERT_EP_EXCHANGE_AUTO = 0,
    MOERT_EP_EXCHANGE_ONE = 1,
    MOERT_EP_EXCHANGE_PER_EXPERT = 2,
} moert_ep_exchange;
MOERT_API moert_status moert_ep_set_exchange(moert_ep *ep, moert_ep_exchange mode);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_EP_H */

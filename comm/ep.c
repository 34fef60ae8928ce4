/* Expert parallelism over MPI ranks (see moert/ep.h). */
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bf16.h"
#include "common/error.h"
#include "common/large_alloc.h"
#include "common/size.h"
#include "dispatch/dispatch.h"
#include "experts/experts.h"
#include "moert/ep.h"
#include "moert/gemm.h"
#include "numa/numa_pool.h"
#include "router/internal.h"

#define EP_GATE_BLOCK_ROWS 64 /* as the layer's, from the rank's first token */

struct moert_ep {
    moert_layer_config config;
    expert_shape shape;
    size_t E;
    int threads;
    MPI_Comm comm;
    MPI_Datatype in_row, out_row; /* a row of ld elements: the dtype's, and float */
    int rank, size, max_count;
    int exchange_mode; /* moert_ep_exchange */
    int32_t *replica_offsets; /* [E + 1]: expert e's replicas are [offsets[e], offsets[e + 1]) */
    int32_t *replica_ranks;   /* [replicas]: the rank holding each replica */
    int32_t *replica_index;   /* [replicas]: the expert's index among that rank's experts */
    int32_t *held;            /* [E]: this rank's replica of e (a replica number), or -1 */
    int64_t *replica_rows;    /* [replicas]: rows this rank sent each replica in this pass */
    int32_t *local_experts;  /* [local] */
    size_t local;
    moert_router *router;
    moert_plan *plan;
    float *w_gate;
    void **weights; /* [local] */
    size_t weight_bytes;
    moert_gemm_bf16 *gemm13, *gemm2;
    float **thread_scratch; /* [threads] */
    size_t scratch_floats;
    /* Buffers grown by forward passes. */
    float *logits;
    size_t logit_cap;
    void *send_rows, *recv_rows;                  /* dtype rows, stride ld */
    float *back_rows, *ret_rows;                  /* f32 rows, stride ld */
    /* Rows per (rank, expert on it): this rank's to every expert's replicas, arranged by
     * destination (rank p's experts at expert_displ[p]), and what each source sends this
     * rank's experts ([P][local]). They tell the receiver each row's expert. */
    int *experts_on, *expert_displ, *local_counts, *local_displs; /* [P] each */
    int64_t *rows_to_expert, *rows_from;
    int64_t *send_pos;       /* [slots]: a slot's row in the send buffer, -1 for padding */
    const float **entry_output;
    size_t send_cap, recv_cap, entry_cap;
    int64_t *counts;         /* [4 size]: send counts, recv counts, send displacements, recv
                                displacements (pack's running places until the exchange) */
    int64_t *expert_start;   /* [local + 1] */
    int *round_counts;       /* [4 size]: one round's int counts and displacements */
    /* NUMA workers inside the rank: local expert i on worker i mod W, its weights in that
     * worker's node memory; each worker's threads claim its experts' chunks, gathered into
     * their own scratch on the same node. */
    numa_pool pool;
    int32_t *worker_of;      /* [local] */
    int32_t *order;          /* [local]: local experts, worker by worker */
    int *worker_next;        /* [W]: the next chunk to claim */
    int64_t *next_rows;      /* [local]: rows per expert, then the end of each expert's rows */
    int64_t *call_counts;    /* [4 size]: one per-expert exchange's counts and displacements */
    int64_t *place_source;   /* [received], one exchange for all experts: the received row at
                                each expert-major place */
    int max_local;           /* the most experts any rank holds: the per-expert exchanges */
    size_t chunk_offset;     /* in a thread's scratch: where a chunk's rows would start */
    moert_ep_timings timings;
};

/* ---- errors ------------------------------------------------------------------------------ */

/* The element type of x and out: MPI's and its size in bytes. */
static MPI_Datatype row_element(moert_dtype dtype) { return dtype == MOERT_DTYPE_BF16 ? MPI_UINT16_T : MPI_FLOAT; }
static size_t row_element_size(moert_dtype dtype) { return dtype == MOERT_DTYPE_BF16 ? 2 : 4; }

static moert_status mpi_error(int code, const char *what) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(code, text, &len);
    return moert_set_error(MOERT_EMPI, "%s: %s", what, text);
}

#define MPI_TRY(call, what)                                                                 \
    do {                                                                                    \
        const int code_ = (call);                                                           \
        if (code_ != MPI_SUCCESS) return mpi_error(code_, what);                            \
    } while (0)

/* Every rank learns the worst status (and the lowest rank that had it): one collective.
 * A rank that failed with that status keeps its own detail; the others name the rank. */
static moert_status agree(moert_ep *ep, moert_status local) {
    struct {
        int status, rank;
    } mine = {(int)local, local != MOERT_OK ? ep->rank : INT_MAX}, worst;
    /* MAXLOC on the status keeps the lowest rank among equal ones. */
    int code = MPI_Allreduce(&mine, &worst, 1, MPI_2INT, MPI_MAXLOC, ep->comm);
    if (code != MPI_SUCCESS) return mpi_error(code, "agreeing on a status");
    if (worst.status == MOERT_OK) return MOERT_OK;
    if (local == (moert_status)worst.status) return local; /* this rank failed so too: its own detail */
    return moert_set_error((moert_status)worst.status, "rank %d failed: %s", worst.rank,
                           moert_strerror((moert_status)worst.status));
}

/* ---- creation ------------------------------------------------------------------------------ */

void moert_ep_destroy(moert_ep *ep) {
    if (ep == NULL) return;
    for (size_t i = 0; ep->weights && i < ep->local; i++) numa_pool_release(ep->weights[i], ep->weight_bytes);
    free(ep->worker_of), free(ep->order), free(ep->worker_next), free(ep->next_rows);
    numa_pool_free(&ep->pool);
    for (int t = 0; ep->thread_scratch && t < ep->threads; t++)
        numa_pool_release(ep->thread_scratch[t], ep->scratch_floats * sizeof(float));
    free(ep->weights), free(ep->thread_scratch);
    moert_gemm_bf16_destroy(ep->gemm13);
    moert_gemm_bf16_destroy(ep->gemm2);
    moert_router_destroy(ep->router);
    moert_plan_destroy(ep->plan);
    free(ep->replica_offsets), free(ep->replica_ranks), free(ep->replica_index), free(ep->held);
    free(ep->replica_rows), free(ep->local_experts), free(ep->w_gate);
    free(ep->logits), free(ep->send_rows), free(ep->recv_rows);
    free(ep->back_rows), free(ep->ret_rows), free(ep->experts_on), free(ep->expert_displ);
    free(ep->local_counts), free(ep->local_displs), free(ep->rows_to_expert), free(ep->rows_from);
    free(ep->send_pos), free(ep->call_counts), free(ep->place_source), free((void *)ep->entry_output), free(ep->counts), free(ep->expert_start);
    free(ep->round_counts);
    if (ep->in_row != MPI_DATATYPE_NULL) MPI_Type_free(&ep->in_row);
    if (ep->out_row != MPI_DATATYPE_NULL) MPI_Type_free(&ep->out_row);
    if (ep->comm != MPI_COMM_NULL) MPI_Comm_free(&ep->comm);
    free(ep);
}

static moert_status create_local(moert_ep *ep, const moert_layer_config *config, const int32_t *offsets,
                                 const int32_t *ranks) {
    const size_t E = ep->E, d = config->d_model;
    MOERT_RETURN_ERROR_IF(offsets[0] != 0, MOERT_EINVAL, "replica_offsets[0] is %d, not 0", (int)offsets[0]);
    for (size_t e = 0; e < E; e++)
        MOERT_RETURN_ERROR_IF(offsets[e + 1] <= offsets[e], MOERT_EINVAL, "expert %zu has no replica (offsets %d, %d)",
                              e, (int)offsets[e], (int)offsets[e + 1]);
    const size_t R = (size_t)offsets[E];
    ep->replica_offsets = malloc((E + 1) * sizeof(int32_t));
    ep->replica_ranks = malloc(R * sizeof(int32_t));
    ep->replica_index = malloc(R * sizeof(int32_t));
    ep->replica_rows = malloc(R * sizeof(int64_t));
    ep->held = malloc(E * sizeof(int32_t));
    ep->local_experts = malloc(E * sizeof(int32_t));
    int32_t *owned = calloc((size_t)ep->size, sizeof(int32_t)); /* experts so far per rank */
    if (!ep->replica_offsets || !ep->replica_ranks || !ep->replica_index || !ep->replica_rows || !ep->held ||
        !ep->local_experts || !owned) {
        free(owned);
        return moert_set_error(MOERT_ENOMEM, "expert parallelism: out of memory");
    }
    memcpy(ep->replica_offsets, offsets, (E + 1) * sizeof(int32_t));
    for (size_t e = 0; e < E; e++) {
        ep->held[e] = -1;
        for (int32_t j = offsets[e]; j < offsets[e + 1]; j++) {
            const int32_t r = ranks[j];
            int twice = 0;
            for (int32_t i = offsets[e]; i < j; i++) twice |= ranks[i] == r;
            if (r < 0 || r >= ep->size || twice) {
                free(owned);
                return moert_set_error(MOERT_EINVAL, "expert %zu: replica on rank %d, %s", e, (int)r,
                                       twice ? "which holds it twice" : "outside the communicator");
            }
            ep->replica_ranks[j] = r;
            ep->replica_index[j] = owned[r]++; /* what that rank calls the expert: rows carry it */
            if (r == ep->rank) ep->held[e] = j, ep->local_experts[ep->local++] = (int32_t)e;
        }
    }
    const size_t P = (size_t)ep->size;
    ep->experts_on = malloc(P * sizeof(int)), ep->expert_displ = malloc(P * sizeof(int));
    ep->local_counts = malloc(P * sizeof(int)), ep->local_displs = malloc(P * sizeof(int));
    ep->rows_to_expert = calloc(R ? R : 1, sizeof(int64_t));
    ep->rows_from = calloc(P * (ep->local ? ep->local : 1), sizeof(int64_t));
    if (!ep->experts_on || !ep->expert_displ || !ep->local_counts || !ep->local_displs || !ep->rows_to_expert ||
        !ep->rows_from) {
        free(owned);
        return moert_set_error(MOERT_ENOMEM, "expert parallelism: out of memory");
    }
    for (size_t p = 0, at = 0; p < P; p++) {
        ep->experts_on[p] = owned[p], ep->expert_displ[p] = (int)at, at += (size_t)owned[p];
        ep->max_local = owned[p] > ep->max_local ? owned[p] : ep->max_local;
        ep->local_counts[p] = (int)ep->local, ep->local_displs[p] = (int)(p * ep->local);
    }
    free(owned);
    MOERT_FORWARD_IF_ERROR(moert_router_create(&ep->config.router, E, &ep->router));
    MOERT_FORWARD_IF_ERROR(moert_plan_create(&ep->plan));
    ep->w_gate = calloc(d * E, sizeof(float));
    ep->weights = calloc(ep->local ? ep->local : 1, sizeof(void *));
    ep->thread_scratch = calloc((size_t)ep->threads, sizeof(float *));
    ep->counts = calloc(4 * (size_t)ep->size, sizeof(int64_t));
    ep->expert_start = calloc(ep->local + 1, sizeof(int64_t));
    ep->round_counts = calloc(4 * (size_t)ep->size, sizeof(int));
    ep->call_counts = calloc(4 * (size_t)ep->size, sizeof(int64_t));
    MOERT_RETURN_ERROR_IF(!ep->w_gate || !ep->weights || !ep->thread_scratch || !ep->counts || !ep->expert_start ||
                              !ep->round_counts || !ep->call_counts,
                          MOERT_ENOMEM, "expert parallelism: out of memory");
    MOERT_FORWARD_IF_ERROR(expert_bf16_gemms(&ep->shape, config, ep->threads, &ep->gemm13, &ep->gemm2));
    MOERT_FORWARD_IF_ERROR(numa_pool_init(&ep->pool, config->workers, ep->threads, config->bind_threads,
                                          !config->ignore_numa));
    const int W = ep->pool.workers;
    ep->worker_of = malloc((ep->local ? ep->local : 1) * sizeof(int32_t));
    ep->order = malloc((ep->local ? ep->local : 1) * sizeof(int32_t));
    ep->worker_next = calloc((size_t)W, sizeof(int));
    ep->next_rows = calloc(ep->local ? ep->local : 1, sizeof(int64_t));
    MOERT_RETURN_ERROR_IF(!ep->worker_of || !ep->order || !ep->worker_next || !ep->next_rows,
                          MOERT_ENOMEM, "expert parallelism: out of memory");
    size_t n = 0;
    for (size_t i = 0; i < ep->local; i++) ep->worker_of[i] = (int32_t)(i % (size_t)W);
    for (int w = 0; w < W; w++)
        for (size_t i = 0; i < ep->local; i++)
            if (ep->worker_of[i] == w) ep->order[n++] = (int32_t)i;
    if (config->expert_kind == MOERT_EXPERT_SWIGLU) {
        ep->weight_bytes = expert_weight_bytes(&ep->shape);
        for (size_t i = 0; i < ep->local; i++)
            MOERT_FORWARD_IF_ERROR(numa_pool_alloc(&ep->pool, ep->worker_of[i], ep->weight_bytes, &ep->weights[i]));
    }
    /* Expert scratch, a gate block of f32 rows, a combine block: as the layer's. */
    /* Per thread, on its worker's node: expert scratch, a gate block of f32 rows, a combine
     * block (as the layer's), then a chunk's gathered rows and its outputs. */
    ep->chunk_offset = (expert_scratch_floats(&ep->shape, config->chunk_rows) + EP_GATE_BLOCK_ROWS * d + d + 64 + 15) &
                       ~(size_t)15; /* whole cache lines: the chunk's rows start as the layer's do */
    ep->scratch_floats = ep->chunk_offset + config->chunk_rows * ep->shape.ld * 2 + 64;
    for (int t = 0; t < ep->threads; t++) {
        void *scratch = NULL;
        MOERT_FORWARD_IF_ERROR(numa_pool_alloc(&ep->pool, numa_pool_worker_of_thread(&ep->pool, t),
                                               ep->scratch_floats * sizeof(float), &scratch));
        ep->thread_scratch[t] = scratch;
    }
    return MOERT_OK;
}

/* A fingerprint of what every rank must agree on: the configuration's fields that shape
 * the collectives and the results, and the expert placement (FNV-1a over their bytes). */
static uint64_t fingerprint(const moert_ep *ep) {
    const moert_layer_config *c = &ep->config;
    const moert_router_config *r = &c->router;
    uint64_t h = 1469598103934665603ull;
#define FP_(value)                                                                          \
    do {                                                                                    \
        const uint64_t v_ = (uint64_t)(value);                                              \
        for (int i_ = 0; i_ < 8; i_++) h = (h ^ ((v_ >> (8 * i_)) & 0xFF)) * 1099511628211ull; \
    } while (0)
    const uint64_t fields[] = {(uint64_t)c->d_model, (uint64_t)c->d_ff, (uint64_t)c->experts,
                               (uint64_t)c->expert_kind, (uint64_t)c->dtype, (uint64_t)c->chunk_rows,
                               (uint64_t)c->synthetic_cost, (uint64_t)c->convert_bf16, (uint64_t)r->policy,
                               (uint64_t)r->k, (uint64_t)r->score, (uint64_t)r->softmax_order,
                               (uint64_t)r->renormalize, (uint64_t)r->groups, (uint64_t)r->topk_groups,
                               (uint64_t)r->group_score, (uint64_t)r->drop_policy,
                               (uint64_t)r->pad_to_capacity, (uint64_t)(r->bias != NULL), (uint64_t)r->batch_score,
                               (uint64_t)r->use_threshold, (uint64_t)r->k_max, (uint64_t)r->noise,
                               (uint64_t)r->noisy_weights, r->seed, (uint64_t)(r->noise_scales != NULL)};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) FP_(fields[i]);
    uint64_t bits;
    memcpy(&bits, &r->capacity_factor, sizeof bits);
    FP_(bits);
    uint32_t f32;
    memcpy(&f32, &r->scaling, sizeof f32);
    FP_(f32);
    memcpy(&f32, &r->relu_threshold, sizeof f32);
    FP_(f32);
    const float floats[] = {r->threshold, r->noise_scale, r->noise_temperature};
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++) {
        memcpy(&f32, &floats[i], sizeof f32);
        FP_(f32);
    }
    for (size_t e = 0; e <= ep->E; e++) FP_(ep->replica_offsets[e]);
    for (int32_t j = 0; j < ep->replica_offsets[ep->E]; j++) FP_(ep->replica_ranks[j]);
#undef FP_
    return h;
}

/* Collective: the ranks agree on a failure any of them had before (its status, and the
 * lowest rank with it), and else that they were given the same configuration and
 * placement. One MPI_Allreduce of {fingerprint, ~fingerprint, status and rank}; a rank
 * without the object (out of memory) contributes {0, ~0, its status} (create's path). */
static uint64_t status_word(moert_status st, int rank) {
    return st == MOERT_OK ? 0 : (uint64_t)st << 32 | (uint32_t)(INT_MAX - rank);
}

static moert_status agreed_status(uint64_t word, moert_status local, int rank) {
    if (word == 0) return MOERT_OK;
    const moert_status st = (moert_status)(word >> 32);
    const int failed = INT_MAX - (int)(uint32_t)word;
    if (local == st) return local; /* this rank failed so too: its own detail */
    return moert_set_error(st, "rank %d failed: %s", failed, moert_strerror(st));
}

static moert_status agree_config(moert_ep *ep, moert_status st) {
    const uint64_t h = st == MOERT_OK ? fingerprint(ep) : 0;
    /* max of h and of ~h: equal everywhere iff every rank has the same h. */
    uint64_t mine[3] = {h, ~h, status_word(st, ep->rank)}, all[3];
    const int code = MPI_Allreduce(mine, all, 3, MPI_UINT64_T, MPI_MAX, ep->comm);
    if (code != MPI_SUCCESS) return mpi_error(code, "comparing the ranks' configurations");
    if (all[2] != 0) return agreed_status(all[2], st, ep->rank);
    if (all[0] != h || all[1] != ~h)
        return moert_set_error(MOERT_EINVAL, "expert parallelism: the ranks were given different configurations or "
                                             "expert placements");
    return MOERT_OK;
}

/* Creation, with a failure the caller already had (local, agreed like the others). */
static moert_status create(const moert_layer_config *config, MPI_Comm comm, const int32_t *replica_offsets,
                           const int32_t *replica_ranks, moert_status local, moert_ep **out) {
    /* The duplicate first, on every rank: every later failure can then be agreed on it. */
    MPI_Comm dup = MPI_COMM_NULL;
    int code = MPI_Comm_dup(comm, &dup);
    if (code != MPI_SUCCESS) return mpi_error(code, "duplicating the communicator");
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    moert_ep *ep = calloc(1, sizeof *ep);
    moert_status st = local;
    if (out != NULL) *out = NULL;
    if (st == MOERT_OK && (config == NULL || out == NULL))
        st = moert_set_error(MOERT_EINVAL, "moert_ep_create: NULL argument");
    else if (ep == NULL) st = moert_set_error(MOERT_ENOMEM, "expert parallelism: out of memory");
    if (ep == NULL) { /* the same two collectives as agree(agree_config()) below, without the object */
        int rank = 0;
        MPI_Comm_rank(dup, &rank);
        uint64_t words[3] = {0, ~(uint64_t)0, status_word(st, rank)}, all[3];
        MPI_Allreduce(words, all, 3, MPI_UINT64_T, MPI_MAX, dup);
        struct {
            int status, rank;
        } mine = {(int)st, rank}, worst;
        MPI_Allreduce(&mine, &worst, 1, MPI_2INT, MPI_MAXLOC, dup);
        MPI_Comm_free(&dup);
        return agreed_status(all[2], st, rank);
    }
    ep->comm = dup;
    MPI_Comm_rank(ep->comm, &ep->rank);
    MPI_Comm_size(ep->comm, &ep->size);
    ep->max_count = INT_MAX;
    ep->in_row = ep->out_row = MPI_DATATYPE_NULL;
    if (st == MOERT_OK) st = moert_layer_config_check(config);
    if (st == MOERT_OK) {
        ep->config = *config;
        ep->E = config->experts;
        ep->threads = config->threads > 0 ? config->threads : omp_get_max_threads();
        ep->config.router.threads = ep->threads;
        ep->config.router.route_groups = 1; /* the rank's tokens are its routing group */
        const size_t d = config->d_model;
        ep->shape = (expert_shape){d, config->expert_kind == MOERT_EXPERT_SWIGLU ? config->d_ff : 0,
                                   (d + 15) & ~(size_t)15, config->dtype, 0};
        if (ep->E > (size_t)INT32_MAX) st = moert_set_error(MOERT_EINVAL, "expert parallelism: too many experts");
    }
    if (st == MOERT_OK && (replica_offsets == NULL || replica_ranks == NULL))
        st = moert_set_error(MOERT_EINVAL, "moert_ep_create_replicated: NULL placement");
    if (st == MOERT_OK) st = create_local(ep, config, replica_offsets, replica_ranks);
    /* The rows' datatypes, made once. */
    if (st == MOERT_OK && ep->shape.ld > INT_MAX) st = moert_set_error(MOERT_EOVERFLOW, "a row exceeds an int");
    if (st == MOERT_OK) {
        const int ld = (int)ep->shape.ld;
        if (MPI_Type_contiguous(ld, row_element(config->dtype), &ep->in_row) !=
                MPI_SUCCESS ||
            MPI_Type_commit(&ep->in_row) != MPI_SUCCESS || MPI_Type_contiguous(ld, MPI_FLOAT, &ep->out_row) != MPI_SUCCESS ||
            MPI_Type_commit(&ep->out_row) != MPI_SUCCESS)
            st = moert_set_error(MOERT_EMPI, "expert parallelism: cannot make the rows' datatypes");
    }
    st = agree(ep, agree_config(ep, st));
    if (st != MOERT_OK) {
        moert_ep_destroy(ep);
        return st;
    }
    *out = ep;
    return MOERT_OK;
}

moert_status moert_ep_create_replicated(const moert_layer_config *config, MPI_Comm comm,
                                        const int32_t *replica_offsets, const int32_t *replica_ranks,
                                        moert_ep **out) {
    return create(config, comm, replica_offsets, replica_ranks, MOERT_OK, out);
}

moert_status moert_ep_create(const moert_layer_config *config, MPI_Comm comm, const int32_t *rank_of_expert,
                             moert_ep **out) {
    /* One replica per expert: on rank_of_expert[e], or in contiguous blocks. */
    int size = 1;
    MPI_Comm_size(comm, &size);
    const size_t E = config != NULL ? config->experts : 0;
    int32_t *offsets = malloc((E + 1) * sizeof(int32_t)), *ranks = malloc((E ? E : 1) * sizeof(int32_t));
    const int ok = offsets != NULL && ranks != NULL && E <= (size_t)INT32_MAX;
    for (size_t e = 0; ok && e <= E; e++) offsets[e] = (int32_t)e;
    for (size_t e = 0; ok && e < E; e++) ranks[e] = rank_of_expert ? rank_of_expert[e] : (int32_t)(e * (size_t)size / E);
    /* A failed allocation here still goes through the collective create, which agrees on it. */
    const moert_status st =
        create(config, comm, offsets, ranks,
               ok ? MOERT_OK : moert_set_error(MOERT_ENOMEM, "expert parallelism: cannot allocate the placement"), out);
    free(offsets), free(ranks);
    return st;
}

moert_status moert_ep_set_gate(moert_ep *ep, const float *w_gate) {
    MOERT_RETURN_ERROR_IF(ep == NULL || w_gate == NULL, MOERT_EINVAL, "moert_ep_set_gate: NULL argument");
    memcpy(ep->w_gate, w_gate, ep->config.d_model * ep->E * sizeof(float));
    return MOERT_OK;
}

moert_status moert_ep_set_expert(moert_ep *ep, size_t expert, const float *w1, const float *w3, const float *w2) {
    MOERT_RETURN_ERROR_IF(ep == NULL || w1 == NULL || w3 == NULL || w2 == NULL, MOERT_EINVAL,
                          "moert_ep_set_expert: NULL argument");
    MOERT_RETURN_ERROR_IF(expert >= ep->E, MOERT_EINVAL, "expert %zu out of range (experts=%zu)", expert, ep->E);
    MOERT_RETURN_ERROR_IF(ep->config.expert_kind != MOERT_EXPERT_SWIGLU, MOERT_EINVAL,
                          "expert weights set on synthetic experts");
    if (ep->held[expert] >= 0)
        expert_store_weights(&ep->shape, w1, w3, w2, ep->weights[ep->replica_index[ep->held[expert]]]);
    return MOERT_OK;
}

moert_status moert_ep_set_exchange(moert_ep *ep, moert_ep_exchange mode) {
    MOERT_RETURN_ERROR_IF(ep == NULL, MOERT_EINVAL, "moert_ep_set_exchange: NULL argument");
    MOERT_RETURN_ERROR_IF(mode != MOERT_EP_EXCHANGE_AUTO && mode != MOERT_EP_EXCHANGE_PER_EXPERT &&
                              mode != MOERT_EP_EXCHANGE_ONE,
                          MOERT_EINVAL, "moert_ep_set_exchange: mode %d is not auto, per-expert or one", (int)mode);
    ep->exchange_mode = (int)mode;
    return MOERT_OK;
}

moert_status moert_ep_set_max_count(moert_ep *ep, int max_count) {
    MOERT_RETURN_ERROR_IF(ep == NULL || max_count < 1, MOERT_EINVAL, "moert_ep_set_max_count: max_count must be >= 1");
    ep->max_count = max_count;
    return MOERT_OK;
}

const moert_plan *moert_ep_plan(const moert_ep *ep) { return ep ? ep->plan : NULL; }

int moert_ep_rank_of_expert(const moert_ep *ep, size_t expert) {
    return ep && expert < ep->E ? ep->replica_ranks[ep->replica_offsets[expert]] : -1;
}

moert_status moert_ep_replica_rows(const moert_ep *ep, int64_t *rows) {
    MOERT_RETURN_ERROR_IF(ep == NULL || rows == NULL, MOERT_EINVAL, "moert_ep_replica_rows: NULL argument");
    memcpy(rows, ep->replica_rows, (size_t)ep->replica_offsets[ep->E] * sizeof(int64_t));
    return MOERT_OK;
}

moert_status moert_ep_get_timings(const moert_ep *ep, moert_ep_timings *t) {
    MOERT_RETURN_ERROR_IF(ep == NULL || t == NULL, MOERT_EINVAL, "moert_ep_get_timings: NULL argument");
    *t = ep->timings;
    return MOERT_OK;
}

/* ---- buffers -------------------------------------------------------------------------------- */

static moert_status grow(void **p, size_t *cap, size_t need, size_t elem, const char *what) {
    if (need <= *cap && *p != NULL) return MOERT_OK;
    size_t bytes;
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(need ? need : 1, elem, &bytes), MOERT_EOVERFLOW, "%s: size overflows", what);
    /* Fresh and zeroed: rows are sent with their padding columns (ld - d), which nothing
     * reads but which should not be uninitialised bytes on the wire. Huge pages when large:
     * the exchange reads them across processes. */
    void *q = moert_large_calloc(bytes);
    MOERT_RETURN_ERROR_IF(q == NULL, MOERT_ENOMEM, "cannot allocate %zu bytes for %s", bytes, what);
    free(*p);
    *p = q;
    *cap = need;
    return MOERT_OK;
}

/* Rows to send (slots) and receive. */
static moert_status grow_exchange(moert_ep *ep, size_t slots, size_t received) {
    const size_t ld = ep->shape.ld, elem = row_element_size(ep->config.dtype);
    if (slots > ep->send_cap || ep->send_rows == NULL) {
        size_t c1 = ep->send_cap, c2 = ep->send_cap, c3 = ep->send_cap;
        MOERT_FORWARD_IF_ERROR(grow(&ep->send_rows, &c1, slots, ld * elem, "send rows"));
        MOERT_FORWARD_IF_ERROR(grow((void **)&ep->ret_rows, &c2, slots, ld * sizeof(float), "returned rows"));
        MOERT_FORWARD_IF_ERROR(grow((void **)&ep->send_pos, &c3, slots, sizeof(int64_t), "send places"));
        ep->send_cap = slots;
    }
    if (received > ep->recv_cap || ep->recv_rows == NULL) {
        size_t c1 = ep->recv_cap, c2 = ep->recv_cap, c3 = ep->recv_cap;
        MOERT_FORWARD_IF_ERROR(grow(&ep->recv_rows, &c1, received, ld * elem, "received rows"));
        MOERT_FORWARD_IF_ERROR(grow((void **)&ep->back_rows, &c2, received, ld * sizeof(float), "rows sent back"));
        MOERT_FORWARD_IF_ERROR(grow((void **)&ep->place_source, &c3, received, sizeof(int64_t), "place sources"));
        ep->recv_cap = received;
    }
    return MOERT_OK;
}

/* A per-expert exchange's least bytes between two ranks, on average, for one exchange per
 * local expert number to beat one for all (bench/README.md: measured at 128 KiB-4 MiB). */
#define EP_PER_EXPERT_MIN_BYTES (512.0 * 1024.0)

/* ---- the exchange ------------------------------------------------------------------------- */

/* MPI_Alltoallv of rows of `type` (row_bytes each) with 64-bit counts and displacements
 * (in rows), in `rounds` rounds of at most max_count rows per peer: never truncated. Every
 * rank runs the same number of rounds (agreed by the caller). Each round's buffers start
 * at its lowest row, so its int displacements stay below the rank's total rows, which the
 * caller has checked fit an int. */
static moert_status alltoallv_rounds(moert_ep *ep, const void *send, const int64_t *send_counts,
                                     const int64_t *send_displs, void *recv, const int64_t *recv_counts,
                                     const int64_t *recv_displs, MPI_Datatype type, size_t row_bytes, int64_t rounds) {
    const int P = ep->size;
    int *sc = ep->round_counts, *sd = sc + P, *rc = sd + P, *rd = rc + P;
    for (int64_t round = 0; round < rounds; round++) {
        const int64_t done = round * ep->max_count;
        int64_t send_base = INT64_MAX, recv_base = INT64_MAX;
        for (int p = 0; p < P; p++) {
            if (send_counts[p] > done && send_displs[p] + done < send_base) send_base = send_displs[p] + done;
            if (recv_counts[p] > done && recv_displs[p] + done < recv_base) recv_base = recv_displs[p] + done;
        }
        if (send_base == INT64_MAX) send_base = 0;
        if (recv_base == INT64_MAX) recv_base = 0;
        for (int p = 0; p < P; p++) {
            const int64_t s = send_counts[p] - done, r = recv_counts[p] - done;
            sc[p] = s > 0 ? (int)(s < ep->max_count ? s : ep->max_count) : 0;
            rc[p] = r > 0 ? (int)(r < ep->max_count ? r : ep->max_count) : 0;
            sd[p] = sc[p] ? (int)(send_displs[p] + done - send_base) : 0;
            rd[p] = rc[p] ? (int)(recv_displs[p] + done - recv_base) : 0;
        }
        MPI_TRY(MPI_Alltoallv((const char *)send + (size_t)send_base * row_bytes, sc, sd, type,
                              (char *)recv + (size_t)recv_base * row_bytes, rc, rd, type, ep->comm),
                "MPI_Alltoallv");
    }
    return MOERT_OK;
}

/* ---- the forward pass ---------------------------------------------------------------------- */

static moert_status local_gate_and_route(moert_ep *ep, const void *x, size_t T) {
    const size_t d = ep->config.d_model, E = ep->E;
    size_t cap = ep->logit_cap;
    MOERT_FORWARD_IF_ERROR(grow((void **)&ep->logits, &cap, T ? T * E : 1, sizeof(float), "logits"));
    ep->logit_cap = cap;
    const size_t blocks = (T + EP_GATE_BLOCK_ROWS - 1) / EP_GATE_BLOCK_ROWS;
    const size_t gate_offset = expert_scratch_floats(&ep->shape, ep->config.chunk_rows);
    moert_status failed = MOERT_OK;
    char detail[256] = "";
    const double t0 = MPI_Wtime();
#pragma omp parallel for schedule(static) num_threads(ep->threads)
    for (size_t b = 0; b < blocks; b++) {
        const size_t r0 = b * EP_GATE_BLOCK_ROWS, m = T - r0 < EP_GATE_BLOCK_ROWS ? T - r0 : EP_GATE_BLOCK_ROWS;
        const float *a = (const float *)x + r0 * d;
        if (ep->config.dtype == MOERT_DTYPE_BF16) {
            float *rows = ep->thread_scratch[omp_get_thread_num()] + gate_offset;
            moert_bf16_to_f32_row((const uint16_t *)x + r0 * d, rows, m * d);
            a = rows;
        }
        const moert_status st = moert_sgemm(m, E, d, a, d, ep->w_gate, E, ep->logits + r0 * E, E, 0);
        if (st != MOERT_OK) {
#pragma omp critical(moert_ep_error)
            if (failed == MOERT_OK) failed = st, snprintf(detail, sizeof detail, "%s", moert_last_error());
        }
    }
    if (failed != MOERT_OK) return moert_set_error(failed, "%s", detail);
    const double t1 = MPI_Wtime();
    moert_status st = moert_router_route(ep->router, ep->logits, T, ep->plan);
    ep->timings.gate = t1 - t0, ep->timings.route = MPI_Wtime() - t1;
    return st;
}

/* The send buffer: each kept slot's row, grouped by destination rank (stable: within a
 * rank by expert, then token), with its expert's index on that rank. A replicated expert's
 * row goes to this rank's replica if it holds one, else to the replica this rank has sent
 * the fewest rows so far in this pass (ties to the first listed): deterministic. */
static moert_status pack(moert_ep *ep, const void *x, int64_t *send_counts) {
    const moert_plan *plan = ep->plan;
    const size_t d = ep->config.d_model, ld = ep->shape.ld, elem = row_element_size(ep->config.dtype);
    const int P = ep->size;
    for (int p = 0; p < P; p++) send_counts[p] = 0;
    memset(ep->replica_rows, 0, (size_t)ep->replica_offsets[ep->E] * sizeof(int64_t));
    /* Each slot's replica (kept in send_pos for now), and the counts per rank. */
    for (size_t e = 0; e < plan->experts; e++) {
        const int32_t first = ep->replica_offsets[e], last = ep->replica_offsets[e + 1];
        for (int64_t s = plan->expert_offsets[e]; s < plan->expert_offsets[e + 1]; s++) {
            if (plan->slot_tokens[s] < 0) {
                ep->send_pos[s] = -1; /* padding */
                continue;
            }
            int32_t j = ep->held[e];
            if (j < 0) {
                j = first;
                for (int32_t i = first + 1; i < last; i++)
                    if (ep->replica_rows[i] < ep->replica_rows[j]) j = i;
            }
            ep->replica_rows[j]++;
            send_counts[ep->replica_ranks[j]]++;
            ep->send_pos[s] = j;
        }
    }
    for (int32_t j = 0; j < ep->replica_offsets[ep->E]; j++) /* what each expert on each rank gets */
        ep->rows_to_expert[ep->expert_displ[ep->replica_ranks[j]] + ep->replica_index[j]] = ep->replica_rows[j];
    int64_t *displs = ep->counts + 2 * (size_t)P, *fill = ep->counts + 3 * (size_t)P; /* running place per rank */
    int64_t next = 0;
    for (int p = 0; p < P; p++) displs[p] = fill[p] = next, next += send_counts[p];
    for (size_t e = 0; e < plan->experts; e++)
        for (int64_t s = plan->expert_offsets[e]; s < plan->expert_offsets[e + 1]; s++) {
            const int64_t j = ep->send_pos[s];
            if (j < 0) continue;
            ep->send_pos[s] = fill[ep->replica_ranks[j]]++;
        }
    const size_t slots = plan->slots;
    const int32_t *tokens = plan->slot_tokens;
#pragma omp parallel for schedule(static) num_threads(ep->threads) if (slots > 256)
    for (size_t s = 0; s < slots; s++) {
        const int64_t pos = ep->send_pos[s];
        if (pos < 0) continue;
        memcpy((char *)ep->send_rows + (size_t)pos * ld * elem, (const char *)x + (size_t)tokens[s] * d * elem, d * elem);
    }
    return MOERT_OK;
}

/* Where each local expert's received rows go: experts worker by worker, each expert's rows
 * by source rank, then as sent (ascending token). expert_start[i] is expert i's first row,
 * next_rows[i] the end of its rows. */
static void layout_received(moert_ep *ep) {
    const size_t L = ep->local;
    const int P = ep->size;
    int64_t *next = ep->next_rows;
    memset(next, 0, (L ? L : 1) * sizeof(int64_t));
    for (int s = 0; s < P; s++)
        for (size_t i = 0; i < L; i++) next[i] += ep->rows_from[(size_t)s * L + i];
    int64_t place = 0;
    for (size_t k = 0; k < L; k++) {
        const int32_t i = ep->order[k];
        ep->expert_start[i] = place, place += next[i];
        next[i] = place;
    }
}

/* With one exchange for all experts the rows arrive source by source (each source's expert
 * by expert): each expert-major place's received row, without moving any. */
static void number_received(moert_ep *ep, const int64_t *recv_displs) {
    const size_t L = ep->local;
    int64_t *next = ep->call_counts; /* [L] would do; the counts are free until the exchange */
    int64_t *fill = L <= 4 * (size_t)ep->size ? next : NULL;
    for (int s = 0, first = 1; s < ep->size; s++) {
        int64_t row = recv_displs[s];
        for (size_t i = 0; i < L; i++) {
            /* expert i's next place: its start plus the rows of the sources before s */
            int64_t at = ep->expert_start[i];
            if (fill != NULL) {
                if (first) fill[i] = at;
                at = fill[i];
            } else {
                for (int u = 0; u < s; u++) at += ep->rows_from[(size_t)u * L + i];
            }
            const int64_t n = ep->rows_from[(size_t)s * L + i];
            for (int64_t r = 0; r < n; r++) ep->place_source[at + r] = row++;
            if (fill != NULL) fill[i] = at + n;
        }
        first = 0;
    }
}

/* Rows out (back = 0) or outputs back (back = 1), one MPI_Alltoallv per local expert
 * number j (as many as the most experts a rank holds): call j carries, between every
 * source and every owner, the rows of the owner's j-th expert. A source's rows for an
 * owner come expert by expert, so each call's part is contiguous at the source; at the
 * owner it lands at the expert's own place (layout_received), so the received rows are
 * in expert-major order as they arrive, and the outputs leave from there. */
static moert_status exchange_by_expert(moert_ep *ep, int back, MPI_Datatype in_row, MPI_Datatype out_row,
                                       int64_t rounds) {
    const int P = ep->size;
    const size_t L = ep->local, ld = ep->shape.ld, elem = row_element_size(ep->config.dtype);
    const int64_t *source_displs = ep->counts + 2 * (size_t)P; /* each owner's part of the send buffer */
    int64_t *sc = ep->call_counts, *sd = sc + P, *rc = sd + P, *rd = rc + P;
    for (int j = 0; j < ep->max_local; j++) {
        for (int p = 0; p < P; p++) { /* as a source: this rank's rows for p's j-th expert */
            const int64_t *to_p = ep->rows_to_expert + ep->expert_displ[p];
            int64_t before = 0;
            for (int i = 0; i < j && i < ep->experts_on[p]; i++) before += to_p[i];
            sc[p] = j < ep->experts_on[p] ? to_p[j] : 0;
            sd[p] = source_displs[p] + before;
        }
        for (int s = 0; s < P; s++) { /* as an owner: source s's rows for this rank's j-th expert */
            rc[s] = (size_t)j < L ? ep->rows_from[(size_t)s * L + (size_t)j] : 0;
            rd[s] = (size_t)j < L ? (s == 0 ? ep->expert_start[j] : rd[s - 1] + rc[s - 1]) : 0;
        }
        const moert_status st =
            back ? alltoallv_rounds(ep, ep->back_rows, rc, rd, ep->ret_rows, sc, sd, out_row, ld * sizeof(float), rounds)
                 : alltoallv_rounds(ep, ep->send_rows, sc, sd, ep->recv_rows, rc, rd, in_row, ld * elem, rounds);
        if (st != MOERT_OK) return st;
    }
    return MOERT_OK;
}

/* The experts on the received rows, which are in expert-major order already: each
 * expert's rows in chunks of chunk_rows from its first row (as in the single-process
 * layer, so every GEMM has the same shape and the bits do not change), claimed by the
 * threads of the expert's worker, read where they arrived and written where they return
 * from. */
static moert_status run_experts(moert_ep *ep, int gathered) {
    const size_t ld = ep->shape.ld, elem = row_element_size(ep->config.dtype), chunk = ep->config.chunk_rows;
    const size_t L = ep->local;
    const int W = ep->pool.workers;
    const int64_t *end = ep->next_rows;
    for (int w = 0; w < W; w++) ep->worker_next[w] = 0;
    moert_status failed = MOERT_OK;
    char detail[256] = "";
    double moving = 0.0; /* the slowest thread's gathering and scattering */
#pragma omp parallel num_threads(ep->threads)
    {
        const int tid = omp_get_thread_num();
        double moved = 0.0;
        /* A smaller team (OMP_THREAD_LIMIT) cannot serve every worker: thread 0 does all. */
        const int full = omp_get_num_threads() == ep->pool.threads;
        if (full) numa_pool_bind_thread(&ep->pool, tid);
        expert_scratch scratch;
        expert_scratch_bind(&scratch, &ep->shape, chunk, ep->thread_scratch[tid]);
        scratch.gemm13 = ep->gemm13, scratch.gemm2 = ep->gemm2, scratch.thread = tid;
        char *chunk_rows = (char *)(ep->thread_scratch[tid] + ep->chunk_offset);
        float *chunk_outs = ep->thread_scratch[tid] + ep->chunk_offset + ((chunk * ld * elem / 4 + 15) & ~(size_t)15);
        for (int w = full ? numa_pool_worker_of_thread(&ep->pool, tid) : 0; w < W && (full || tid == 0); w++) {
            for (;;) { /* the worker's chunks, in its experts' order, claimed one by one */
                size_t k = (size_t)__atomic_fetch_add(&ep->worker_next[w], 1, __ATOMIC_RELAXED), at = 0;
                int32_t i = -1;
                for (size_t j = 0; j < L && i < 0; j++) {
                    const int32_t e = ep->order[j];
                    if (ep->worker_of[e] != w) continue;
                    const size_t chunks = (size_t)(end[e] - ep->expert_start[e] + (int64_t)chunk - 1) / chunk;
                    if (k < chunks) i = e, at = k;
                    else k -= chunks;
                }
                if (i < 0) break;
                const int64_t first = ep->expert_start[i] + (int64_t)(at * chunk);
                const size_t m = end[i] - first < (int64_t)chunk ? (size_t)(end[i] - first) : chunk;
                const void *rows = (const char *)ep->recv_rows + (size_t)first * ld * elem;
                float *outs = ep->back_rows + (size_t)first * ld;
                const double t_gather = gathered ? omp_get_wtime() : 0.0;
                if (gathered) { /* into the thread's node-local scratch, in cache */
                    for (size_t r = 0; r < m; r++)
                        memcpy(chunk_rows + r * ld * elem,
                               (const char *)ep->recv_rows + (size_t)ep->place_source[first + r] * ld * elem, ld * elem);
                    rows = chunk_rows, outs = chunk_outs;
                    moved += omp_get_wtime() - t_gather;
                }
                moert_status st = MOERT_OK;
                if (ep->config.expert_kind == MOERT_EXPERT_SWIGLU)
                    st = expert_swiglu(&ep->shape, ep->weights[i], rows, m, outs, &scratch);
                else
                    expert_synthetic(&ep->shape, (size_t)ep->local_experts[i], ep->config.synthetic_cost, rows, m, outs);
                const double t_scatter = gathered ? omp_get_wtime() : 0.0;
                for (size_t r = 0; gathered && r < m; r++) /* each output where it returns from */
                    memcpy(ep->back_rows + (size_t)ep->place_source[first + r] * ld, chunk_outs + r * ld,
                           ep->shape.d * sizeof(float));
                if (gathered) moved += omp_get_wtime() - t_scatter;
                if (st != MOERT_OK) {
#pragma omp critical(moert_ep_error)
                    if (failed == MOERT_OK) failed = st, snprintf(detail, sizeof detail, "%s", moert_last_error());
                }
            }
            if (full) break; /* only its own worker */
        }
#pragma omp critical(moert_ep_moving)
        moving = moved > moving ? moved : moving;
    }
    ep->timings.regroup += moving;
    if (failed != MOERT_OK) return moert_set_error(failed, "%s", detail);
    return MOERT_OK;
}

static moert_status forward(moert_ep *ep, const void *x, size_t T, void *out, MPI_Datatype in_row,
                            MPI_Datatype out_row) {
    const int P = ep->size;
    const size_t ld = ep->shape.ld, elem = row_element_size(ep->config.dtype);
    int64_t *send_counts = ep->counts, *recv_counts = ep->counts + P;
    const moert_plan *plan = ep->plan;
    double t = MPI_Wtime();
    /* Counts per rank. Each step that can fail on one rank is agreed on before the next
     * collective, so no rank waits for one that gave up. */
    moert_status local = grow_exchange(ep, plan->slots, 0);
    if (local == MOERT_OK) local = pack(ep, x, send_counts);
    const double t_packed = MPI_Wtime();
    ep->timings.pack = t_packed - t;
    MOERT_FORWARD_IF_ERROR(agree(ep, local));
    /* The agreement is where a rank waits for slower ones' packing: counted apart. */
    t = MPI_Wtime();
    ep->timings.wait = t - t_packed; /* the count exchange starts here */
    /* The rows each source sends each of this rank's experts: the rows per rank, and each
     * row's expert, follow from them. */
    MPI_TRY(MPI_Alltoallv(ep->rows_to_expert, ep->experts_on, ep->expert_displ, MPI_INT64_T, ep->rows_from,
                          ep->local_counts, ep->local_displs, MPI_INT64_T, ep->comm),
            "MPI_Alltoallv of counts");
    for (int p = 0; p < P; p++) {
        recv_counts[p] = 0;
        for (size_t i = 0; i < ep->local; i++) recv_counts[p] += ep->rows_from[(size_t)p * ep->local + i];
    }
    const int64_t *send_displs = ep->counts + 2 * (size_t)P; /* set by pack */
    int64_t *recv_displs = ep->counts + 3 * (size_t)P, received = 0;
    for (int p = 0; p < P; p++) recv_displs[p] = received, received += recv_counts[p];
    const int64_t sent = send_displs[P - 1] + send_counts[P - 1];
    moert_status st = grow_exchange(ep, plan->slots, (size_t)received);
    if (st == MOERT_OK && (sent > INT_MAX || received > INT_MAX))
        st = moert_set_error(MOERT_EOVERFLOW, "exchange: %lld rows sent, %lld received: more than an int can count",
                             (long long)sent, (long long)received);
    st = agree(ep, st);
    /* The rounds: the largest count anywhere, over max_count. */
    int64_t most = 0, rounds = 0, all_most = 0;
    int exchange_mode = MOERT_EP_EXCHANGE_AUTO;
    for (int p = 0; st == MOERT_OK && p < P; p++) {
        most = send_counts[p] > most ? send_counts[p] : most;
        most = recv_counts[p] > most ? recv_counts[p] : most;
    }
    if (st == MOERT_OK) {
        /* The largest count anywhere, and the smallest max_count anywhere (a rank's own
         * setting must not change the collective schedule). */
        int64_t mine[3] = {most, -(int64_t)ep->max_count, ep->exchange_mode}, all[3];
        const int code = MPI_Allreduce(mine, all, 3, MPI_INT64_T, MPI_MAX, ep->comm);
        if (code != MPI_SUCCESS) st = mpi_error(code, "agreeing on the rounds");
        ep->max_count = (int)-all[1];
        rounds = (all[0] + ep->max_count - 1) / ep->max_count;
        all_most = all[0], exchange_mode = (int)all[2];
    }
    if (st != MOERT_OK) return st;
    const double t_counts = MPI_Wtime();
    ep->timings.exchange_counts = t_counts - t;
    /* One exchange per local expert number puts the rows straight at their expert-major
     * places, but each costs a collective's latency: it pays when a call carries enough
     * (EP_PER_EXPERT_MIN_BYTES between two ranks, on average). Otherwise one exchange for
     * all experts, and each chunk's rows gathered by place. Decided on agreed figures, so
     * every rank takes the same path. */
    const int per_expert =
        exchange_mode == MOERT_EP_EXCHANGE_PER_EXPERT ||
        (exchange_mode == MOERT_EP_EXCHANGE_AUTO &&
         (double)all_most * (double)(ld * elem) / (double)(ep->max_local > 0 ? ep->max_local : 1) >= EP_PER_EXPERT_MIN_BYTES);
    ep->timings.per_expert_exchange = per_expert;
    /* The regrouping: where each expert's rows go. */
    layout_received(ep);
    if (!per_expert) number_received(ep, recv_displs);
    const double t_layout = MPI_Wtime();
    ep->timings.regroup = t_layout - t_counts;
    st = per_expert ? exchange_by_expert(ep, 0, in_row, out_row, rounds)
                    : alltoallv_rounds(ep, ep->send_rows, send_counts, send_displs, ep->recv_rows, recv_counts,
                                       recv_displs, in_row, ld * elem, rounds);
    const double t_dispatch = MPI_Wtime();
    ep->timings.dispatch = t_dispatch - t_layout;
    if (st == MOERT_OK) st = run_experts(ep, !per_expert);
    if (st == MOERT_OK) { /* the last thing that can fail, before the last agreement */
        size_t cap = ep->entry_cap;
        st = grow((void **)&ep->entry_output, &cap, plan->entries, sizeof(float *), "entry outputs");
        ep->entry_cap = cap;
    }
    const double t_ran = MPI_Wtime();
    ep->timings.experts = t_ran - t_dispatch;
    /* A failure here is local (the exchange is symmetric); agree before moving on. Here a
     * rank waits for the slowest rank's experts: waiting, not the exchange's cost. */
    st = agree(ep, st);
    const double t_experts = MPI_Wtime();
    ep->timings.wait += t_experts - t_ran;
    if (st == MOERT_OK)
        st = per_expert ? exchange_by_expert(ep, 1, in_row, out_row, rounds)
                        : alltoallv_rounds(ep, ep->back_rows, recv_counts, recv_displs, ep->ret_rows, send_counts,
                                           send_displs, out_row, ld * sizeof(float), rounds);
    const double t_back = MPI_Wtime();
    ep->timings.combine_exchange = t_back - t_experts;
    if (st != MOERT_OK) return st;
    /* Combine: each entry's output row where it came back. */
    for (size_t i = 0; i < plan->entries; i++)
        ep->entry_output[i] = ep->ret_rows + (size_t)ep->send_pos[plan->entry_slots[i]] * ld;
    moert_plan_view view;
    moert_plan_get_view(plan, &view);
    const size_t d = ep->config.d_model;
    const size_t block_offset = expert_scratch_floats(&ep->shape, ep->config.chunk_rows) + EP_GATE_BLOCK_ROWS * d;
#pragma omp parallel num_threads(ep->threads)
    {
        const int tid = omp_get_thread_num(), n = omp_get_num_threads();
        combine_tokens(&view, ep->entry_output, d, ep->config.dtype, T * (size_t)tid / (size_t)n,
                       T * (size_t)(tid + 1) / (size_t)n, out, ep->thread_scratch[tid] + block_offset);
    }
    ep->timings.combine = MPI_Wtime() - t_back;
    return MOERT_OK;
}

moert_status moert_ep_forward(moert_ep *ep, const void *x, size_t T, void *out) {
    MOERT_RETURN_ERROR_IF(ep == NULL, MOERT_EINVAL, "moert_ep_forward: NULL argument");
    const double t0 = MPI_Wtime();
    /* Where this rank's tokens start in the global batch: the noise of noisy selection is
     * keyed by the global token index. Every rank calls it first, whatever its input. */
    uint64_t mine = T, before = 0;
    const int code = MPI_Exscan(&mine, &before, 1, MPI_UINT64_T, MPI_SUM, ep->comm);
    if (code != MPI_SUCCESS) return mpi_error(code, "counting the tokens of the ranks before this one");
    if (ep->rank == 0) before = 0; /* MPI_Exscan leaves rank 0's result undefined */
    moert_router_set_token_offset(ep->router, before);
    /* Local checks and routing; then every rank agrees before any exchange. */
    moert_status st = MOERT_OK;
    if (T > 0 && (x == NULL || out == NULL)) st = moert_set_error(MOERT_EINVAL, "moert_ep_forward: NULL argument");
    size_t bytes;
    if (st == MOERT_OK && moert_mul3_overflows(T, ep->E > ep->config.d_model ? ep->E : ep->config.d_model,
                                               sizeof(float), &bytes))
        st = moert_set_error(MOERT_EOVERFLOW, "moert_ep_forward: %zu tokens overflow the sizes", T);
    if (st == MOERT_OK) st = local_gate_and_route(ep, x, T);
    MOERT_FORWARD_IF_ERROR(agree(ep, st));
    /* Every failure in forward is agreed where it happens (once); an MPI error is not
     * (the communicator is then unusable: ep.h). */
    st = forward(ep, x, T, out, ep->in_row, ep->out_row);
    ep->timings.total = MPI_Wtime() - t0;
    return st;
}

/* ---- gathering the whole batch ---------------------------------------------------------------- */

/* Runs an MPI call and keeps the first failure in `code`; every rank makes every call, so
 * the collectives stay matched, and the failure is agreed on after them. */
#define MPI_KEEP_FIRST(code, call)                       \
    do {                                                 \
        const int code_ = (call);                        \
        if ((code) == MPI_SUCCESS) (code) = code_;       \
    } while (0)

/* The plan of the whole batch on `root`, merged as the router merges routing groups: the
 * ranks' entries in rank order, routed counts and probability sums added in rank order,
 * the capacity the largest, padding to the sum of capacities. */
static moert_status merge_plans(moert_ep *ep, int root, moert_plan *whole) {
    const moert_plan *mine = ep->plan;
    const int P = ep->size;
    const size_t E = ep->E;
    int64_t shape[3] = {(int64_t)mine->tokens, (int64_t)mine->entries, mine->capacity};
    double threshold = mine->stats.threshold, *thresholds = ep->rank == root ? malloc((size_t)P * sizeof(double)) : NULL;
    int64_t *shapes = ep->rank == root ? malloc(3 * (size_t)P * sizeof(int64_t)) : NULL;
    int64_t *routed = ep->rank == root ? malloc((size_t)P * E * sizeof(int64_t)) : NULL;
    double *sums = ep->rank == root ? malloc((size_t)P * E * sizeof(double)) : NULL;
    int *counts = ep->rank == root ? malloc(4 * (size_t)P * sizeof(int)) : NULL;
    moert_status st = MOERT_OK;
    if (ep->rank == root && (!shapes || !routed || !sums || !counts || !thresholds))
        st = moert_set_error(MOERT_ENOMEM, "gathering the plan: out of memory");
    st = agree(ep, st);
    if (st == MOERT_OK) {
        int code = MPI_SUCCESS;
        MPI_KEEP_FIRST(code, MPI_Gather(shape, 3, MPI_INT64_T, shapes, 3, MPI_INT64_T, root, ep->comm));
        MPI_KEEP_FIRST(code, MPI_Gather(mine->expert_routed, (int)E, MPI_INT64_T, routed, (int)E, MPI_INT64_T, root,
                                        ep->comm));
        MPI_KEEP_FIRST(code, MPI_Gather(mine->prob_sums, (int)E, MPI_DOUBLE, sums, (int)E, MPI_DOUBLE, root, ep->comm));
        MPI_KEEP_FIRST(code, MPI_Gather(&threshold, 1, MPI_DOUBLE, thresholds, 1, MPI_DOUBLE, root, ep->comm));
        st = agree(ep, code == MPI_SUCCESS ? MOERT_OK : mpi_error(code, "gathering the plans' shapes"));
    }
    int64_t tokens = 0, entries = 0, capacity_sum = 0, capacity_max = 0;
    if (st == MOERT_OK && ep->rank == root)
        for (int p = 0; p < P; p++) {
            tokens += shapes[3 * p], entries += shapes[3 * p + 1];
            capacity_sum += shapes[3 * p + 2];
            capacity_max = shapes[3 * p + 2] > capacity_max ? shapes[3 * p + 2] : capacity_max;
        }
    if (st == MOERT_OK && ep->rank == root) {
        if (tokens > INT_MAX || entries > INT_MAX) st = moert_set_error(MOERT_EOVERFLOW, "gathering the plan: too big");
        else st = plan_reserve(whole, (size_t)tokens, (size_t)entries, E, 0, ep->threads);
    }
    st = agree(ep, st);
    if (st != MOERT_OK) {
        free(shapes), free(routed), free(sums), free(counts), free(thresholds);
        return st;
    }
    /* Per-token entry counts (in token_offsets[1..]), entries, logsumexp. */
    int64_t *per_token = malloc((mine->tokens ? mine->tokens : 1) * sizeof(int64_t));
    for (size_t t = 0; per_token && t < mine->tokens; t++)
        per_token[t] = mine->token_offsets[t + 1] - mine->token_offsets[t];
    int *tc = counts, *td = counts ? counts + P : NULL, *ec = counts ? counts + 2 * P : NULL,
        *ed = counts ? counts + 3 * P : NULL;
    if (ep->rank == root) {
        int64_t t = 0, e = 0;
        for (int p = 0; p < P; p++) {
            tc[p] = (int)shapes[3 * p], td[p] = (int)t, t += shapes[3 * p];
            ec[p] = (int)shapes[3 * p + 1], ed[p] = (int)e, e += shapes[3 * p + 1];
        }
    }
    st = agree(ep, per_token ? MOERT_OK : moert_set_error(MOERT_ENOMEM, "gathering the plan: out of memory"));
    if (st == MOERT_OK) {
        int code = MPI_SUCCESS;
        MPI_KEEP_FIRST(code, MPI_Gatherv(per_token, (int)mine->tokens, MPI_INT64_T,
                                         ep->rank == root ? whole->token_offsets + 1 : NULL, tc, td, MPI_INT64_T, root,
                                         ep->comm));
        MPI_KEEP_FIRST(code, MPI_Gatherv(mine->expert_ids, (int)mine->entries, MPI_INT32_T,
                                         ep->rank == root ? whole->expert_ids : NULL, ec, ed, MPI_INT32_T, root, ep->comm));
        MPI_KEEP_FIRST(code, MPI_Gatherv(mine->weights, (int)mine->entries, MPI_FLOAT,
                                         ep->rank == root ? whole->weights : NULL, ec, ed, MPI_FLOAT, root, ep->comm));
        MPI_KEEP_FIRST(code, MPI_Gatherv(mine->logsumexp, (int)mine->tokens, MPI_FLOAT,
                                         ep->rank == root ? whole->logsumexp : NULL, tc, td, MPI_FLOAT, root, ep->comm));
        st = agree(ep, code == MPI_SUCCESS ? MOERT_OK : mpi_error(code, "gathering the plans' entries"));
    }
    free(per_token);
    if (st == MOERT_OK && ep->rank == root) {
        whole->token_offsets[0] = 0;
        for (int64_t t = 0; t < tokens; t++) whole->token_offsets[t + 1] += whole->token_offsets[t];
        whole->tokens = (size_t)tokens, whole->experts = E, whole->entries = (size_t)entries;
        plan_parts parts = {routed, sums, (size_t)P, capacity_sum, capacity_max, 0.0, 0};
        for (int p = 0; p < P; p++)
            if (!isnan(thresholds[p])) parts.threshold_sum += thresholds[p], parts.thresholds++;
        st = plan_finish_merged(whole, &parts, ep->config.router.pad_to_capacity, ep->threads);
    }
    free(shapes), free(routed), free(sums), free(counts), free(thresholds);
    return agree(ep, st);
}

moert_status moert_ep_gather(moert_ep *ep, int root, const void *out, void *whole_out, moert_plan *whole_plan) {
    MOERT_RETURN_ERROR_IF(ep == NULL, MOERT_EINVAL, "moert_ep_gather: NULL argument");
    moert_status st = MOERT_OK;
    if (root < 0 || root >= ep->size) st = moert_set_error(MOERT_EINVAL, "moert_ep_gather: root %d", root);
    else if (ep->rank == root && (whole_out == NULL || whole_plan == NULL))
        st = moert_set_error(MOERT_EINVAL, "moert_ep_gather: NULL output on the root");
    MOERT_FORWARD_IF_ERROR(agree(ep, st));
    /* The output rows, in rank order. */
    const int P = ep->size;
    const size_t d = ep->config.d_model;
    int mine = (int)ep->plan->tokens, *rows = ep->rank == root ? malloc(2 * (size_t)P * sizeof(int)) : NULL;
    st = agree(ep, ep->rank == root && rows == NULL ? moert_set_error(MOERT_ENOMEM, "gather: out of memory") : MOERT_OK);
    if (st != MOERT_OK) return st;
    int code = MPI_Gather(&mine, 1, MPI_INT, rows, 1, MPI_INT, root, ep->comm);
    int64_t at = 0;
    for (int p = 0; ep->rank == root && p < P; p++) rows[P + p] = (int)at, at += rows[p];
    st = agree(ep, code == MPI_SUCCESS ? MOERT_OK : mpi_error(code, "gathering the row counts"));
    if (st != MOERT_OK) {
        free(rows);
        return st;
    }
    MPI_Datatype row = MPI_DATATYPE_NULL;
    code = MPI_Type_contiguous((int)d, row_element(ep->config.dtype), &row);
    if (code == MPI_SUCCESS) code = MPI_Type_commit(&row);
    st = agree(ep, code == MPI_SUCCESS ? MOERT_OK : mpi_error(code, "making the rows' datatype"));
    if (st != MOERT_OK) {
        if (row != MPI_DATATYPE_NULL) MPI_Type_free(&row);
        free(rows);
        return st;
    }
    code = MPI_Gatherv(out, mine, row, whole_out, rows, rows ? rows + P : NULL, row, root, ep->comm);
    MPI_Type_free(&row);
    free(rows);
    st = code == MPI_SUCCESS ? MOERT_OK : mpi_error(code, "gathering the outputs");
    st = agree(ep, st);
    if (st != MOERT_OK) return st;
    return merge_plans(ep, root, whole_plan);
}

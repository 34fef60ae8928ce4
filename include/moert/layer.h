/* moert: the MoE layer on one machine. Hidden states in, MoE output out.
 *
 * A forward pass runs five stages:
 * - gate: logits [T, E] = x [T, d] . W_gate [d, E];
 * - route: the router of moert/router.h turns the logits into a plan;
 * - dispatch: each worker gathers the rows of its own experts, in the plan's
 *   expert-major order, into buffers in its NUMA node's memory (pull-based);
 * - experts: each expert runs on its contiguous block of rows, split into chunks of
 *   `chunk_rows` that the worker's threads claim, so a hot expert keeps every thread busy.
 *   SwiGLU experts compute (silu(x W1) * (x W3)) W2; synthetic experts spend
 *   `synthetic_cost` multiply-adds per element of the row, for routing experiments;
 * - combine: out[t] = sum over token t's plan entries, in token-major order, of
 *   weight x expert output; a token with no expert gets zeros.
 *
 * Workers: W groups of threads, one per NUMA node by default (several per node are allowed,
 * so that the multi-worker logic runs on a one-node machine). Thread i of N belongs to
 * worker floor(i W / N) and is bound to that worker's node's CPUs. Each expert lives on one
 * worker (round-robin by default, or packed by measured load): its weights, its rows and
 * its outputs are allocated in the worker's node memory. Without NUMA support everything
 * runs the same, in ordinary memory.
 *
 * Every stage splits its work at bounds that do not depend on the thread or worker count
 * (row blocks of the gate, chunks of an expert's rows), and the GEMM runs on one thread per
 * call, so the output is bit-identical for any number of threads and workers.
 *
 * Memory: weights at creation; the buffers of a batch size at its first forward pass (the
 * warm-up), sized for the worst case of token choice (T k rows) and expert choice. After
 * that, forward passes of at most that many tokens allocate nothing, with two exceptions:
 * ReLU routing, whose entries depend on the data, grows the buffers (with a quarter of
 * headroom) when a pass routes more than any before; and the native bf16 GEMM, where
 * oneDNN's primitive execution allocates a small argument map on every call.
 *
 * Binding: with bind_threads, the OpenMP threads that run the layer (the caller's thread
 * among them) stay bound to their worker's node's CPUs after the call returns; set
 * bind_threads to 0 to leave them where they are. */
#ifndef MOERT_LAYER_H
#define MOERT_LAYER_H

#include <stddef.h>
#include <stdint.h>

#include "moert/dispatch.h"
#include "moert/export.h"
#include "moert/plan.h"
#include "moert/router.h"
#include "moert/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moert_expert_kind {
    MOERT_EXPERT_SWIGLU = 0,    /* (silu(x W1) * (x W3)) W2 */
    MOERT_EXPERT_SYNTHETIC = 1, /* a configurable cost per token, for routing experiments */
} moert_expert_kind;

typedef enum moert_placement {
    MOERT_PLACEMENT_ROUND_ROBIN = 0, /* expert e on worker e mod W */
    MOERT_PLACEMENT_CONTIGUOUS = 1,  /* equal blocks of consecutive experts */
} moert_placement;

typedef struct moert_layer_config {
    size_t d_model;              /* d, > 0 */
    size_t d_ff;                 /* f, > 0 (SwiGLU) */
    size_t experts;              /* E, > 0 */
    moert_expert_kind expert_kind;
    moert_dtype dtype;           /* of x, out and the expert weights; the gate is f32 */
    moert_router_config router;  /* its threads field is ignored: the layer's count is used;
                                    a bias pointer is borrowed for the layer's lifetime */
    int workers;                 /* 0 = one per NUMA node */
    int threads;                 /* 0 = omp_get_max_threads(); at least `workers` */
    moert_placement placement;   /* initial expert -> worker map */
    int bind_threads;            /* bind each worker's threads to its node's CPUs; default 1 */
    size_t chunk_rows;           /* rows per expert chunk, default 128 */
    int synthetic_cost;          /* synthetic experts: multiply-adds per element, default 64 */
    int convert_bf16;            /* bf16: convert to f32 and use the f32 GEMM even where the
                                    CPU has bf16 arithmetic (for comparison); default 0 */
    int ignore_numa;             /* run as libnuma would without NUMA support: ordinary
                                    memory, no binding, every worker node -1; default 0 */
} moert_layer_config;

MOERT_API moert_layer_config moert_layer_config_default(void);

/* Checks a configuration without making a layer: MOERT_EINVAL (or MOERT_EOVERFLOW) with
 * the detail of the first problem. */
MOERT_API moert_status moert_layer_config_check(const moert_layer_config *config);

/* Wall-clock seconds of each stage of the last forward pass. */
typedef struct moert_layer_timings {
    double gate, route, dispatch, experts, combine, total;
} moert_layer_timings;

typedef struct moert_layer moert_layer;

/* A layer with zero weights. MOERT_EINVAL for a bad dimension, worker or thread count
 * (the detail names it), MOERT_ENOMEM with the size asked for. */
MOERT_API moert_status moert_layer_create(const moert_layer_config *config, moert_layer **layer);
MOERT_API void moert_layer_destroy(moert_layer *layer);

/* W_gate [d, E], float32, row-major (copied). */
MOERT_API moert_status moert_layer_set_gate(moert_layer *layer, const float *w_gate);

/* Expert e's SwiGLU weights, float32 (converted to the layer's dtype): W1 and W3 [d, f],
 * W2 [f, d], row-major (copied into the expert's worker memory). */
MOERT_API moert_status moert_layer_set_expert(moert_layer *layer, size_t expert, const float *w1,
                                              const float *w3, const float *w2);

/* The expert -> worker map: worker_of_expert[E], each in [0, W). Moves the weights. */
MOERT_API moert_status moert_layer_set_placement(moert_layer *layer, const int32_t *worker_of_expert);

/* Packs experts onto workers by load (e.g. the expert_counts of earlier plans): the
 * heaviest first, each onto the least-loaded worker (ties to the lower worker). */
MOERT_API moert_status moert_layer_balance(moert_layer *layer, const int64_t *expert_loads);

/* out [tokens, d] = the MoE layer of x [tokens, d]; both in the layer's dtype (float, or
 * bfloat16 bits as uint16_t). x and out must not overlap. */
MOERT_API moert_status moert_layer_forward(moert_layer *layer, const void *x, size_t tokens, void *out);

/* The plan of the last forward pass (owned by the layer), its statistics included. */
MOERT_API const moert_plan *moert_layer_plan(const moert_layer *layer);

MOERT_API moert_status moert_layer_get_timings(const moert_layer *layer, moert_layer_timings *timings);

/* The worker count, an expert's worker, and a worker's NUMA node (-1 without NUMA). */
MOERT_API int moert_layer_workers(const moert_layer *layer);
MOERT_API int moert_layer_expert_worker(const moert_layer *layer, size_t expert);
MOERT_API int moert_layer_worker_node(const moert_layer *layer, int worker);

/* Where an expert's memory is, for placement checks: its weights, and (after a forward
 * pass) its worker's dispatch and output buffers. NULL/0 when there is none. */
typedef struct moert_layer_expert_memory {
    const void *weights;
    size_t weight_bytes;
    const void *rows;
    size_t row_bytes;
    const void *outputs;
    size_t output_bytes;
} moert_layer_expert_memory;
MOERT_API moert_status moert_layer_get_expert_memory(const moert_layer *layer, size_t expert,
                                                     moert_layer_expert_memory *memory);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_LAYER_H */

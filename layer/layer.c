/* The MoE layer: gate, route, dispatch, experts, combine (see moert/layer.h). */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/bf16.h"
#include "common/error.h"
#include "common/size.h"
#include "dispatch/dispatch.h"
#include "experts/experts.h"
#include "moert/gemm.h"
#include "moert/layer.h"
#include "numa/numa_pool.h"

#define GATE_BLOCK_ROWS 64 /* the gate's GEMM blocks: fixed, for bit-identical logits */

typedef struct expert_item { /* a chunk of an expert's rows, claimed by one thread */
    int32_t expert;
    int64_t row, rows;
} expert_item;

typedef struct worker_state {
    int32_t *experts; /* ascending */
    size_t expert_count;
    void *rows;       /* dispatch buffer, [row_cap, ld], dtype */
    float *outputs;   /* [row_cap, ld] */
    size_t row_cap, rows_bytes, outputs_bytes;
    expert_item *items;
    size_t item_cap;
    size_t item_count;
    size_t total_rows;
    int next_item; /* claimed with an atomic add */
} worker_state;

struct moert_layer {
    moert_layer_config config;
    expert_shape shape;
    size_t E;
    numa_pool pool;
    moert_router *router;
    moert_plan *plan;
    float *w_gate;             /* [d, E] */
    int32_t *worker_of_expert; /* [E] */
    void **weights;            /* [E]: each on its worker's node */
    size_t weight_bytes;
    worker_state *workers;     /* [W] */
    int64_t *row_start, *row_count; /* [E] */
    /* Buffers of the largest batch so far. */
    size_t token_cap;
    float *logits;             /* [token_cap, E] */
    const float **entry_output;
    size_t entry_cap;
    float **thread_scratch;    /* [threads]: expert scratch, gate rows, combine row */
    size_t scratch_bytes;
    moert_gemm_bf16 *gemm13, *gemm2; /* native bf16 experts */
    moert_layer_timings timings;
};

moert_layer_config moert_layer_config_default(void) {
    moert_layer_config c;
    memset(&c, 0, sizeof c);
    c.d_model = 0, c.d_ff = 0, c.experts = 0;
    c.expert_kind = MOERT_EXPERT_SWIGLU;
    c.dtype = MOERT_DTYPE_F32;
    c.router = moert_router_config_default();
    c.workers = 0, c.threads = 0;
    c.placement = MOERT_PLACEMENT_ROUND_ROBIN;
    c.bind_threads = 1;
    c.chunk_rows = 128;
    c.synthetic_cost = 64;
    return c;
}

static size_t elem_bytes(const moert_layer *L) { return L->config.dtype == MOERT_DTYPE_BF16 ? 2 : 4; }

/* ---- errors raised on worker threads ---------------------------------------------------- */

typedef struct stage_error {
    moert_status status;
    char detail[256];
} stage_error;

static void stage_error_record(stage_error *err, moert_status st) {
    if (st == MOERT_OK) return;
#pragma omp critical(moert_layer_error)
    if (err->status == MOERT_OK) {
        err->status = st;
        snprintf(err->detail, sizeof err->detail, "%s", moert_last_error());
    }
}

static moert_status stage_error_raise(const stage_error *err) {
    if (err->status == MOERT_OK) return MOERT_OK;
    return moert_set_error(err->status, "%s", err->detail);
}

/* ---- creation and weights ------------------------------------------------------------- */

moert_status moert_layer_config_check(const moert_layer_config *c) {
    MOERT_RETURN_ERROR_IF(c == NULL, MOERT_EINVAL, "moert_layer_config_check: NULL config");
    MOERT_RETURN_ERROR_IF(c->d_model == 0, MOERT_EINVAL, "layer: d_model is 0");
    MOERT_RETURN_ERROR_IF(c->experts == 0, MOERT_EINVAL, "layer: experts is 0");
    MOERT_RETURN_ERROR_IF(c->expert_kind != MOERT_EXPERT_SWIGLU && c->expert_kind != MOERT_EXPERT_SYNTHETIC,
                          MOERT_EINVAL, "layer: unknown expert kind %d", (int)c->expert_kind);
    MOERT_RETURN_ERROR_IF(c->expert_kind == MOERT_EXPERT_SWIGLU && c->d_ff == 0, MOERT_EINVAL,
                          "layer: d_ff is 0");
    MOERT_RETURN_ERROR_IF(c->dtype != MOERT_DTYPE_F32 && c->dtype != MOERT_DTYPE_BF16, MOERT_EINVAL,
                          "layer: unknown dtype %d", (int)c->dtype);
    MOERT_RETURN_ERROR_IF(c->placement != MOERT_PLACEMENT_ROUND_ROBIN && c->placement != MOERT_PLACEMENT_CONTIGUOUS,
                          MOERT_EINVAL, "layer: unknown placement %d", (int)c->placement);
    MOERT_RETURN_ERROR_IF(c->workers < 0, MOERT_EINVAL, "layer: workers=%d is negative", c->workers);
    MOERT_RETURN_ERROR_IF(c->threads < 0, MOERT_EINVAL, "layer: threads=%d is negative", c->threads);
    MOERT_RETURN_ERROR_IF(c->chunk_rows == 0 || c->chunk_rows > (1u << 20), MOERT_EINVAL,
                          "layer: chunk_rows=%zu must be in 1..1048576", c->chunk_rows);
    MOERT_RETURN_ERROR_IF(c->synthetic_cost < 0, MOERT_EINVAL, "layer: synthetic_cost=%d is negative",
                          c->synthetic_cost);
    /* Sizes that must fit: one expert's weights, one row. */
    size_t bytes;
    MOERT_RETURN_ERROR_IF(moert_mul3_overflows(c->d_model, c->d_ff ? c->d_ff : 1, 12, &bytes) ||
                              moert_mul_overflows(c->d_model, c->experts * 4, &bytes) || c->d_model > ((size_t)1 << 40),
                          MOERT_EOVERFLOW, "layer: d_model=%zu, d_ff=%zu, experts=%zu overflow the sizes",
                          c->d_model, c->d_ff, c->experts);
    return moert_router_config_check(&c->router, c->experts);
}

static void free_weights(moert_layer *L) {
    if (L->weights == NULL) return;
    for (size_t e = 0; e < L->E; e++) numa_pool_release(L->weights[e], L->weight_bytes);
}

static void free_batch_buffers(moert_layer *L) {
    for (int w = 0; L->workers && w < L->pool.workers; w++) {
        worker_state *ws = &L->workers[w];
        numa_pool_release(ws->rows, ws->rows_bytes);
        numa_pool_release(ws->outputs, ws->outputs_bytes);
        free(ws->items);
        ws->rows = NULL, ws->outputs = NULL, ws->items = NULL;
        ws->row_cap = ws->rows_bytes = ws->outputs_bytes = ws->item_cap = 0;
    }
    if (L->thread_scratch)
        for (int t = 0; t < L->pool.threads; t++) numa_pool_release(L->thread_scratch[t], L->scratch_bytes);
    free(L->logits);
    free((void *)L->entry_output);
    L->logits = NULL, L->entry_output = NULL;
    L->token_cap = L->entry_cap = 0;
}

void moert_layer_destroy(moert_layer *L) {
    if (L == NULL) return;
    free_batch_buffers(L);
    free_weights(L);
    if (L->workers)
        for (int w = 0; w < L->pool.workers; w++) free(L->workers[w].experts);
    free(L->workers);
    free(L->weights);
    free(L->thread_scratch);
    free(L->w_gate);
    free(L->worker_of_expert);
    free(L->row_start);
    free(L->row_count);
    moert_gemm_bf16_destroy(L->gemm13);
    moert_gemm_bf16_destroy(L->gemm2);
    moert_router_destroy(L->router);
    moert_plan_destroy(L->plan);
    numa_pool_free(&L->pool);
    free(L);
}

/* Rebuilds each worker's expert list from worker_of_expert. */
static void index_workers(moert_layer *L) {
    for (int w = 0; w < L->pool.workers; w++) L->workers[w].expert_count = 0;
    for (size_t e = 0; e < L->E; e++) {
        worker_state *ws = &L->workers[L->worker_of_expert[e]];
        ws->experts[ws->expert_count++] = (int32_t)e;
    }
}

moert_status moert_layer_create(const moert_layer_config *config, moert_layer **out) {
    MOERT_RETURN_ERROR_IF(config == NULL || out == NULL, MOERT_EINVAL, "moert_layer_create: NULL argument");
    *out = NULL;
    MOERT_FORWARD_IF_ERROR(moert_layer_config_check(config));
    moert_layer *L = calloc(1, sizeof *L);
    MOERT_RETURN_ERROR_IF(L == NULL, MOERT_ENOMEM, "layer: out of memory");
    L->config = *config;
    L->E = config->experts;
    const size_t d = config->d_model;
    L->shape = (expert_shape){d, config->expert_kind == MOERT_EXPERT_SWIGLU ? config->d_ff : 0, (d + 15) & ~(size_t)15,
                              config->dtype, 0};
    const int threads = config->threads > 0 ? config->threads : omp_get_max_threads();
    moert_status st = numa_pool_init(&L->pool, config->workers, threads, config->bind_threads, !config->ignore_numa);
    if (st != MOERT_OK) {
        free(L);
        return st;
    }
    const int W = L->pool.workers;
    L->config.router.threads = threads;
    if (st == MOERT_OK) st = moert_router_create(&L->config.router, L->E, &L->router);
    if (st == MOERT_OK) st = moert_plan_create(&L->plan);
    L->w_gate = calloc(d * L->E, sizeof(float));
    L->worker_of_expert = calloc(L->E, sizeof(int32_t));
    L->row_start = calloc(L->E, sizeof(int64_t));
    L->row_count = calloc(L->E, sizeof(int64_t));
    L->weights = calloc(L->E, sizeof(void *));
    L->workers = calloc((size_t)W, sizeof(worker_state));
    L->thread_scratch = calloc((size_t)threads, sizeof(float *));
    if (st == MOERT_OK && (!L->w_gate || !L->worker_of_expert || !L->row_start || !L->row_count || !L->weights ||
                           !L->workers || !L->thread_scratch))
        st = moert_set_error(MOERT_ENOMEM, "layer: out of memory for %zu experts", L->E);
    for (int w = 0; st == MOERT_OK && w < W; w++) {
        L->workers[w].experts = malloc(L->E * sizeof(int32_t));
        if (L->workers[w].experts == NULL) st = moert_set_error(MOERT_ENOMEM, "layer: out of memory");
    }
    if (st != MOERT_OK) {
        moert_layer_destroy(L);
        return st;
    }
    for (size_t e = 0; e < L->E; e++)
        L->worker_of_expert[e] = config->placement == MOERT_PLACEMENT_ROUND_ROBIN
                                     ? (int32_t)(e % (size_t)W)
                                     : (int32_t)(e * (size_t)W / L->E);
    index_workers(L);
    st = expert_bf16_gemms(&L->shape, config, threads, &L->gemm13, &L->gemm2);
    if (st == MOERT_OK && config->expert_kind == MOERT_EXPERT_SWIGLU) {
        L->weight_bytes = expert_weight_bytes(&L->shape);
        for (size_t e = 0; st == MOERT_OK && e < L->E; e++)
            st = numa_pool_alloc(&L->pool, L->worker_of_expert[e], L->weight_bytes, &L->weights[e]);
    }
    if (st != MOERT_OK) {
        moert_layer_destroy(L);
        return st;
    }
    *out = L;
    return MOERT_OK;
}

moert_status moert_layer_set_gate(moert_layer *L, const float *w_gate) {
    MOERT_RETURN_ERROR_IF(L == NULL || w_gate == NULL, MOERT_EINVAL, "moert_layer_set_gate: NULL argument");
    memcpy(L->w_gate, w_gate, L->config.d_model * L->E * sizeof(float));
    return MOERT_OK;
}

moert_status moert_layer_set_expert(moert_layer *L, size_t expert, const float *w1, const float *w3, const float *w2) {
    MOERT_RETURN_ERROR_IF(L == NULL || w1 == NULL || w3 == NULL || w2 == NULL, MOERT_EINVAL,
                          "moert_layer_set_expert: NULL argument");
    MOERT_RETURN_ERROR_IF(expert >= L->E, MOERT_EINVAL, "expert %zu out of range (experts=%zu)", expert, L->E);
    MOERT_RETURN_ERROR_IF(L->config.expert_kind != MOERT_EXPERT_SWIGLU, MOERT_EINVAL,
                          "expert weights set on a layer of synthetic experts");
    expert_store_weights(&L->shape, w1, w3, w2, L->weights[expert]);
    return MOERT_OK;
}

moert_status moert_layer_set_placement(moert_layer *L, const int32_t *worker_of_expert) {
    MOERT_RETURN_ERROR_IF(L == NULL || worker_of_expert == NULL, MOERT_EINVAL,
                          "moert_layer_set_placement: NULL argument");
    for (size_t e = 0; e < L->E; e++)
        MOERT_RETURN_ERROR_IF(worker_of_expert[e] < 0 || worker_of_expert[e] >= L->pool.workers, MOERT_EINVAL,
                              "placement: expert %zu on worker %d, outside 0..%d", e, (int)worker_of_expert[e],
                              L->pool.workers - 1);
    /* Move the weights of experts that change worker: new memory on the new node first,
     * so that a failure leaves the layer as it was. */
    if (L->config.expert_kind == MOERT_EXPERT_SWIGLU) {
        void **moved = calloc(L->E, sizeof(void *));
        MOERT_RETURN_ERROR_IF(moved == NULL, MOERT_ENOMEM, "placement: out of memory");
        moert_status st = MOERT_OK;
        for (size_t e = 0; st == MOERT_OK && e < L->E; e++)
            if (worker_of_expert[e] != L->worker_of_expert[e]) {
                st = numa_pool_alloc(&L->pool, worker_of_expert[e], L->weight_bytes, &moved[e]);
                if (st == MOERT_OK) memcpy(moved[e], L->weights[e], L->weight_bytes);
            }
        if (st != MOERT_OK) {
            for (size_t e = 0; e < L->E; e++) numa_pool_release(moved[e], L->weight_bytes);
            free(moved);
            return st;
        }
        for (size_t e = 0; e < L->E; e++)
            if (moved[e] != NULL) {
                numa_pool_release(L->weights[e], L->weight_bytes);
                L->weights[e] = moved[e];
            }
        free(moved);
    }
    memcpy(L->worker_of_expert, worker_of_expert, L->E * sizeof(int32_t));
    index_workers(L);
    return MOERT_OK;
}

moert_status moert_layer_balance(moert_layer *L, const int64_t *loads) {
    MOERT_RETURN_ERROR_IF(L == NULL || loads == NULL, MOERT_EINVAL, "moert_layer_balance: NULL argument");
    const size_t E = L->E;
    const int W = L->pool.workers;
    int32_t *order = malloc(E * sizeof(int32_t)), *map = malloc(E * sizeof(int32_t));
    int64_t *total = calloc((size_t)W, sizeof(int64_t));
    if (!order || !map || !total) {
        free(order), free(map), free(total);
        return moert_set_error(MOERT_ENOMEM, "balance: out of memory");
    }
    for (size_t e = 0; e < E; e++) {
        if (loads[e] < 0) {
            free(order), free(map), free(total);
            return moert_set_error(MOERT_EINVAL, "balance: load of expert %zu is negative (%lld)", e,
                                   (long long)loads[e]);
        }
        order[e] = (int32_t)e;
    }
    /* Heaviest first (ties to the lower expert), each onto the least-loaded worker. */
    for (size_t i = 1; i < E; i++) {
        const int32_t e = order[i];
        size_t j = i;
        for (; j > 0 && loads[order[j - 1]] < loads[e]; j--) order[j] = order[j - 1];
        order[j] = e;
    }
    for (size_t i = 0; i < E; i++) {
        int best = 0;
        for (int w = 1; w < W; w++)
            if (total[w] < total[best]) best = w;
        map[order[i]] = best;
        /* Saturating: loads near INT64_MAX must not wrap the sums. */
        total[best] = loads[order[i]] > INT64_MAX - total[best] ? INT64_MAX : total[best] + loads[order[i]];
    }
    moert_status st = moert_layer_set_placement(L, map);
    free(order), free(map), free(total);
    return st;
}

/* ---- batch buffers -------------------------------------------------------------------- */

/* Entries a batch of T tokens can have under the router's policy, when that is bounded
 * well below T x E; 0 when only the actual routing tells (ReLU). */
static size_t entry_bound(const moert_layer *L, size_t T) {
    const moert_router_config *r = &L->config.router;
    if (r->policy == MOERT_POLICY_TOKEN_CHOICE) return T * (size_t)r->k;
    if (r->policy == MOERT_POLICY_EXPERT_CHOICE) {
        /* Per routing group g, C_g <= T_g cf / E + 1/2, so the sum is at most T cf + E G. */
        const double groups = r->route_groups > 0 ? r->route_groups : 1;
        const double bound = (double)T * r->capacity_factor + (double)L->E * groups;
        return bound < (double)T * (double)L->E ? (size_t)bound : T * L->E;
    }
    return 0;
}

static moert_status grow_batch_buffers(moert_layer *L, size_t T, size_t entries) {
    const size_t E = L->E, ld = L->shape.ld, chunk = L->config.chunk_rows;
    if (T > L->token_cap) {
        float *logits = realloc(L->logits, T * E * sizeof(float));
        MOERT_RETURN_ERROR_IF(logits == NULL, MOERT_ENOMEM, "layer: cannot allocate %zu bytes of logits",
                              T * E * sizeof(float));
        L->logits = logits;
        L->token_cap = T;
    }
    const size_t bound = entry_bound(L, T);
    if (entries > L->entry_cap || bound > L->entry_cap) {
        size_t cap = bound > entries ? bound : entries + entries / 4;
        const float **eo = realloc((void *)L->entry_output, cap * sizeof(float *));
        MOERT_RETURN_ERROR_IF(eo == NULL, MOERT_ENOMEM, "layer: cannot allocate %zu bytes of entry outputs",
                              cap * sizeof(float *));
        L->entry_output = eo;
        L->entry_cap = cap;
    }
    /* Each worker's buffers hold at most its experts' rows: at most T per expert. */
    for (int w = 0; w < L->pool.workers; w++) {
        worker_state *ws = &L->workers[w];
        size_t need = ws->total_rows;
        size_t worst = T * ws->expert_count;
        if (bound > 0 && bound < worst) worst = bound;
        if (bound > 0 && worst > need) need = worst; /* bounded policies: the worst case at once */
        if (need > ws->row_cap) {
            const size_t cap = bound > 0 ? need : need + need / 4;
            size_t rows_bytes, out_bytes;
            MOERT_RETURN_ERROR_IF(moert_mul3_overflows(cap, ld, elem_bytes(L), &rows_bytes) ||
                                      moert_mul3_overflows(cap, ld, sizeof(float), &out_bytes),
                                  MOERT_EOVERFLOW, "layer: %zu rows of %zu overflow", cap, ld);
            void *rows, *outs;
            MOERT_FORWARD_IF_ERROR(numa_pool_alloc(&L->pool, w, rows_bytes, &rows));
            moert_status st = numa_pool_alloc(&L->pool, w, out_bytes, &outs);
            if (st != MOERT_OK) {
                numa_pool_release(rows, rows_bytes);
                return st;
            }
            numa_pool_release(ws->rows, ws->rows_bytes);
            numa_pool_release(ws->outputs, ws->outputs_bytes);
            ws->rows = rows, ws->outputs = outs, ws->rows_bytes = rows_bytes, ws->outputs_bytes = out_bytes;
            ws->row_cap = cap;
        }
        const size_t items = ws->row_cap / chunk + ws->expert_count + 1;
        if (items > ws->item_cap) {
            expert_item *it = realloc(ws->items, items * sizeof(expert_item));
            MOERT_RETURN_ERROR_IF(it == NULL, MOERT_ENOMEM, "layer: out of memory for %zu work items", items);
            ws->items = it;
            ws->item_cap = items;
        }
    }
    if (L->scratch_bytes == 0) {
        /* Per thread, on its worker's node: expert scratch, a block of gate rows (f32),
         * a combine row. */
        const size_t floats = expert_scratch_floats(&L->shape, chunk) + GATE_BLOCK_ROWS * L->config.d_model +
                              L->config.d_model + 64;
        L->scratch_bytes = floats * sizeof(float);
        for (int t = 0; t < L->pool.threads; t++) {
            void *p;
            moert_status st = numa_pool_alloc(&L->pool, numa_pool_worker_of_thread(&L->pool, t), L->scratch_bytes, &p);
            if (st != MOERT_OK) {
                for (int u = 0; u < t; u++) numa_pool_release(L->thread_scratch[u], L->scratch_bytes);
                memset(L->thread_scratch, 0, (size_t)L->pool.threads * sizeof(float *));
                L->scratch_bytes = 0;
                return st;
            }
            L->thread_scratch[t] = p;
        }
    }
    return MOERT_OK;
}

/* ---- the stages ------------------------------------------------------------------------ */

/* Blocks of GATE_BLOCK_ROWS rows counted from the start of each routing group, so that a
 * group routed alone (an MPI rank holding exactly that group) computes the same blocks and
 * the same logits, bit for bit. */
static void gate_stage(moert_layer *L, const void *x, size_t T, stage_error *err) {
    const size_t d = L->config.d_model, E = L->E;
    const size_t groups = L->config.router.route_groups > 1 ? (size_t)L->config.router.route_groups : 1;
    const size_t expert_floats = expert_scratch_floats(&L->shape, L->config.chunk_rows);
#pragma omp parallel num_threads(L->pool.threads)
    {
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        numa_pool_bind_thread(&L->pool, tid);
        float *rows = L->thread_scratch[tid] + expert_floats;
        size_t block = 0;
        for (size_t g = 0; g < groups; g++) {
            const size_t begin = T * g / groups, end = T * (g + 1) / groups;
            for (size_t r0 = begin; r0 < end; r0 += GATE_BLOCK_ROWS, block++) {
                if (block % (size_t)nth != (size_t)tid) continue;
                const size_t m = end - r0 < GATE_BLOCK_ROWS ? end - r0 : GATE_BLOCK_ROWS;
                const float *a = (const float *)x + r0 * d;
                if (L->config.dtype == MOERT_DTYPE_BF16) {
                    moert_bf16_to_f32_row((const uint16_t *)x + r0 * d, rows, m * d);
                    a = rows;
                }
                stage_error_record(err, moert_sgemm(m, E, d, a, d, L->w_gate, E, L->logits + r0 * E, E, 0));
            }
        }
    }
}

/* Each worker's expert rows: where each expert starts in its worker's buffers. */
static void lay_out_rows(moert_layer *L, const moert_plan_stats *stats) {
    for (int w = 0; w < L->pool.workers; w++) {
        worker_state *ws = &L->workers[w];
        int64_t row = 0;
        for (size_t i = 0; i < ws->expert_count; i++) {
            const int32_t e = ws->experts[i];
            L->row_start[e] = row;
            L->row_count[e] = stats->expert_counts[e];
            row += stats->expert_counts[e];
        }
        ws->total_rows = (size_t)row;
    }
}

/* The chunks each worker's threads will claim: bounds fixed by chunk_rows, not by the
 * thread count. */
static void list_chunks(moert_layer *L) {
    const size_t chunk = L->config.chunk_rows;
    for (int w = 0; w < L->pool.workers; w++) {
        worker_state *ws = &L->workers[w];
        size_t n = 0;
        for (size_t i = 0; i < ws->expert_count; i++) {
            const int32_t e = ws->experts[i];
            for (int64_t r = 0; r < L->row_count[e]; r += (int64_t)chunk) {
                const int64_t left = L->row_count[e] - r;
                ws->items[n++] = (expert_item){e, L->row_start[e] + r, left < (int64_t)chunk ? left : (int64_t)chunk};
            }
        }
        ws->item_count = n;
        ws->next_item = 0;
    }
}

static void dispatch_experts_stage(moert_layer *L, const moert_plan_view *view, const void *x, stage_error *err,
                                   double *dispatch_end) {
    const size_t d = L->config.d_model, ld = L->shape.ld, chunk = L->config.chunk_rows;
    const size_t elem = elem_bytes(L);
#pragma omp parallel num_threads(L->pool.threads)
    {
        const int tid = omp_get_thread_num();
        /* Every worker needs its threads: a smaller team (OMP_THREAD_LIMIT, dynamic
         * adjustment) would leave work undone, so it is an error. */
        if (omp_get_num_threads() != L->pool.threads) {
            if (tid == 0)
                stage_error_record(err, moert_set_error(MOERT_EUNSUPPORTED,
                                                        "layer: OpenMP gave %d threads where %d were asked for "
                                                        "(OMP_THREAD_LIMIT or OMP_DYNAMIC?)",
                                                        omp_get_num_threads(), L->pool.threads));
        } else {
        numa_pool_bind_thread(&L->pool, tid);
        const int w = numa_pool_worker_of_thread(&L->pool, tid);
        worker_state *ws = &L->workers[w];
        const int first = L->pool.first_thread[w], n = L->pool.first_thread[w + 1] - first, j = tid - first;
        /* Dispatch: the worker's threads split its rows evenly. */
        const dispatch_worker dw = {ws->experts, ws->expert_count, L->row_start, L->row_count,
                                    ws->rows,    ws->outputs,      ws->total_rows};
        dispatch_rows(&dw, view, x, d, ld, L->config.dtype, ws->total_rows * (size_t)j / (size_t)n,
                      ws->total_rows * (size_t)(j + 1) / (size_t)n, L->entry_output);
#pragma omp barrier
        if (tid == 0) *dispatch_end = omp_get_wtime();
        /* Experts: the worker's threads claim its chunks. */
        expert_scratch scratch;
        expert_scratch_bind(&scratch, &L->shape, chunk, L->thread_scratch[tid]);
        scratch.gemm13 = L->gemm13, scratch.gemm2 = L->gemm2, scratch.thread = tid;
        for (;;) {
            const int i = __atomic_fetch_add(&ws->next_item, 1, __ATOMIC_RELAXED);
            if ((size_t)i >= ws->item_count) break;
            const expert_item *it = &ws->items[i];
            const void *rows = (const char *)ws->rows + (size_t)it->row * ld * elem;
            float *out = ws->outputs + (size_t)it->row * ld;
            if (L->config.expert_kind == MOERT_EXPERT_SWIGLU)
                stage_error_record(err, expert_swiglu(&L->shape, L->weights[it->expert], rows, (size_t)it->rows,
                                                      out, &scratch));
            else
                expert_synthetic(&L->shape, (size_t)it->expert, L->config.synthetic_cost, rows, (size_t)it->rows,
                                 out);
        }
        }
    }
}

static void combine_stage(moert_layer *L, const moert_plan_view *view, void *out) {
    const size_t d = L->config.d_model, T = view->tokens;
    const size_t row_offset = expert_scratch_floats(&L->shape, L->config.chunk_rows) + GATE_BLOCK_ROWS * d;
    const int threads = L->pool.threads;
#pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num();
        numa_pool_bind_thread(&L->pool, tid);
        const int n = omp_get_num_threads();
        combine_tokens(view, L->entry_output, d, L->config.dtype, T * (size_t)tid / (size_t)n,
                       T * (size_t)(tid + 1) / (size_t)n, out, L->thread_scratch[tid] + row_offset);
    }
}

moert_status moert_layer_forward(moert_layer *L, const void *x, size_t T, void *out) {
    MOERT_RETURN_ERROR_IF(L == NULL || x == NULL || out == NULL, MOERT_EINVAL, "moert_layer_forward: NULL argument");
    MOERT_RETURN_ERROR_IF(T == 0, MOERT_EINVAL, "moert_layer_forward: 0 tokens");
    size_t bytes;
    MOERT_RETURN_ERROR_IF(moert_mul3_overflows(T, L->config.d_model, elem_bytes(L), &bytes) ||
                              moert_mul_overflows(T, L->E * sizeof(float), &bytes),
                          MOERT_EOVERFLOW, "moert_layer_forward: %zu tokens overflow the sizes", T);
    const double t0 = omp_get_wtime();
    MOERT_FORWARD_IF_ERROR(grow_batch_buffers(L, T, 0));

    stage_error err = {MOERT_OK, {0}};
    gate_stage(L, x, T, &err);
    MOERT_FORWARD_IF_ERROR(stage_error_raise(&err));
    const double t1 = omp_get_wtime();

    MOERT_FORWARD_IF_ERROR(moert_router_route(L->router, L->logits, T, L->plan));
    const double t2 = omp_get_wtime();

    moert_plan_view view;
    moert_plan_stats stats;
    moert_plan_get_view(L->plan, &view);
    moert_plan_get_stats(L->plan, &stats);
    lay_out_rows(L, &stats);
    MOERT_FORWARD_IF_ERROR(grow_batch_buffers(L, T, view.entries));
    list_chunks(L);
    double dispatch_end = t2;
    dispatch_experts_stage(L, &view, x, &err, &dispatch_end);
    MOERT_FORWARD_IF_ERROR(stage_error_raise(&err));
    const double t3 = omp_get_wtime();

    combine_stage(L, &view, out);
    const double t4 = omp_get_wtime();
    L->timings = (moert_layer_timings){t1 - t0, t2 - t1, dispatch_end - t2, t3 - dispatch_end, t4 - t3, t4 - t0};
    return MOERT_OK;
}

/* ---- queries --------------------------------------------------------------------------- */

const moert_plan *moert_layer_plan(const moert_layer *L) { return L ? L->plan : NULL; }

moert_status moert_layer_get_timings(const moert_layer *L, moert_layer_timings *t) {
    MOERT_RETURN_ERROR_IF(L == NULL || t == NULL, MOERT_EINVAL, "moert_layer_get_timings: NULL argument");
    *t = L->timings;
    return MOERT_OK;
}

int moert_layer_workers(const moert_layer *L) { return L ? L->pool.workers : 0; }

int moert_layer_expert_worker(const moert_layer *L, size_t expert) {
    return L && expert < L->E ? L->worker_of_expert[expert] : -1;
}

int moert_layer_worker_node(const moert_layer *L, int worker) {
    return L && worker >= 0 && worker < L->pool.workers ? L->pool.node_of_worker[worker] : -1;
}

moert_status moert_layer_get_expert_memory(const moert_layer *L, size_t expert, moert_layer_expert_memory *m) {
    MOERT_RETURN_ERROR_IF(L == NULL || m == NULL, MOERT_EINVAL, "moert_layer_get_expert_memory: NULL argument");
    MOERT_RETURN_ERROR_IF(expert >= L->E, MOERT_EINVAL, "expert %zu out of range (experts=%zu)", expert, L->E);
    const worker_state *ws = &L->workers[L->worker_of_expert[expert]];
    *m = (moert_layer_expert_memory){L->weights[expert], L->weights[expert] ? L->weight_bytes : 0,
                                     ws->rows, ws->rows_bytes, ws->outputs, ws->outputs_bytes};
    return MOERT_OK;
}

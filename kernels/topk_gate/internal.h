/* Internal: what the top-k gate driver (topk_gate.c) hands to a kernel variant. */
#ifndef MOERT_KERNELS_TOPK_GATE_INTERNAL_H
#define MOERT_KERNELS_TOPK_GATE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/noise.h"
#include "moert/topk_gate.h"

/* One call's worth of validated arguments, shared read-only by all threads. */
typedef struct topk_job {
    const float *logits; /* [tokens, experts] */
    size_t tokens, experts;
    int k;
    moert_score score;
    moert_softmax_order order;
    int renormalize;
    float scaling;
    const float *bias; /* [experts] or NULL (sigmoid only) */
    int32_t *ids;      /* [tokens, k] */
    float *weights;    /* [tokens, k] */
    float *logsumexp;  /* [tokens] or NULL */
    int want_probs;    /* accumulate softmax probabilities per expert */
    int groups, topk_groups; /* group-limited selection, groups = 0: off */
    moert_group_score group_score;
    float *softpick_sums; /* [tokens] or NULL: see topk_extras */
    const noise_spec *noise; /* or NULL: see topk_extras */
} topk_job;

/* What went wrong in a row; kind TOPK_ROW_OK means nothing did. */
typedef enum topk_row_kind {
    TOPK_ROW_OK = 0,
    TOPK_ROW_NAN,     /* logits[row, col] is NaN */
    TOPK_ROW_POS_INF, /* logits[row, col] is +inf */
    TOPK_ROW_ALL_NEG_INF,
} topk_row_kind;

typedef struct topk_row_error {
    topk_row_kind kind;
    size_t row, col;
} topk_row_error;

/* Per-thread scratch, owned by the driver. `keys` holds one row's selection keys when
 * they differ from the logits (sigmoid with a bias); `tiles` two tiles of transposed
 * logits when the tile kernel needs the normaliser; `prob_lanes` the tile kernel's
 * probability sums lane by lane; `prob_block` accumulates the probabilities of the rows
 * of one block. Each may be NULL when not needed. */
#define TOPK_TILE_FLOATS(experts) (((size_t)(experts) + 8) * 16) /* a tile, any width */
typedef struct topk_scratch {
    float *keys;       /* [experts + 64] */
    float *tiles;      /* [2 * TOPK_TILE_FLOATS(experts)] */
    float *prob_lanes; /* [TOPK_TILE_FLOATS(experts)], zero between blocks */
    float *prob_block; /* [experts + 64] */
    float *grouped;    /* [TOPK_GROUPED_SCRATCH(experts, groups)], group-limited rows */
    int32_t *group_lists; /* [TOPK_GROUP_LISTS(groups)], group-limited tiles */
} topk_scratch;

/* Floats of scratch a group-limited row needs: group keys, selection keys and ids of the
 * allowed experts, group scores and ids, a group's top entries. */
#define TOPK_GROUPED_SCRATCH(experts, groups) (4 * (size_t)(experts) + 4 * (size_t)(groups) + 64)
/* Int32s a group-limited tile needs: each group's top 8 and best dropped, 16 lanes. */
#define TOPK_GROUP_LISTS(groups) ((size_t)(groups) * 9 * 16)

/* A row's max and, when `normalise`, its sum of exp(x - max), by the online rescaling of
 * the scalar reference; or the row's first NaN, +inf, or all -inf, as row t. */
topk_row_error topk_row_max_and_sum(const float *x, size_t E, size_t t, int normalise, float *max, float *sum);

/* A row's entries come in the order of their keys, which is the order of their weights
 * except where different logits round to the same weight (exp or sigmoid saturating):
 * this puts such runs in ascending expert id, as the tie rule says. Every rows kernel
 * calls it on the rows it writes (the tile kernels only on lanes with an equal pair). */
void topk_order_equal_weights(int32_t *ids, const float *w, int k);

/* The end of a scalar row t: the top k of keys[0, n) (ids key_ids, or 0..n-1 when NULL)
 * with the logits as their weights, then the statistics the job asks for. */
void topk_finish_row(const topk_job *job, size_t t, const float *keys, const int32_t *key_ids, size_t n, float m,
                     float s, const topk_scratch *scratch);

/* Noisy rows (topk_extras), the same in every variant (plain C): the keys by noise_keys,
 * then topk_finish_row. scratch->keys holds TOPK_NOISY_KEY_FLOATS(experts) (the tiles keep
 * their noise there too). */
#define TOPK_NOISY_KEY_FLOATS(experts) (TOPK_TILE_FLOATS(experts) + 2 * (size_t)(experts) + 66) /* or a tile's noise */
topk_row_error topk_rows_noisy(const topk_job *job, size_t row_begin, size_t row_end, const topk_scratch *scratch);

/* One group-limited row, the same in every variant (plain C). */
topk_row_error topk_row_grouped(const topk_job *job, size_t t, const topk_scratch *scratch);

/* Routes rows [row_begin, row_end). Adds each row's softmax probabilities into
 * scratch->prob_block when job->want_probs. Stops at the first bad row and reports it. */
typedef topk_row_error (*topk_rows_fn)(const topk_job *job, size_t row_begin,
                                       size_t row_end, const topk_scratch *scratch);

/* For expert choice: per expert e, the tokens t whose exp(x - max) * (1 / sum) reaches
 * bounds[e], in token order: tokens[e * cap + i] and exps[e * cap + i] = exp(x - max) for
 * i < count[e]; the probability itself is exps / row_sum[t], a division left to the few
 * candidates (the product by the reciprocal may differ from it by an ulp: a caller that
 * needs every token whose probability reaches b passes a bound a little below b). count[e]
 * > cap says the list is incomplete (a vector variant may say so as its buffer nears
 * full). */
typedef struct topk_candidates {
    const float *bounds;
    int32_t *tokens;
    float *exps;
    size_t *count;
    size_t cap;
} topk_candidates;

/* Full softmax of rows [row_begin, row_end) of logits [tokens, experts]: each probability is
 * offered to `cand`, each row's probabilities (exp(x - max) * (1 / sum)) are added into
 * prob_block [experts + 64], and lse[t], row_max[t], row_sum[t] (p = exp(x - max) / sum)
 * are written. exp(x - max) is moert_exp_shifted (kernels/expf.h): a degree-6 polynomial
 * on 2^f, within 2e-7 of exp, at half the cost of moert_expf, which matters in the one
 * pass over every logit. tile: scratch of 2 * TOPK_TILE_FLOATS(experts) floats. The
 * exps, row sums and lse are the same operations in every variant (bit-identical); the
 * probability sums may be added in another order. Stops at the first bad row. */
typedef topk_row_error (*topk_softmax_filter_fn)(const float *logits, size_t tokens, size_t experts,
                                                 size_t row_begin, size_t row_end,
                                                 const topk_candidates *cand, float *lse,
                                                 float *row_max, float *row_sum, float *prob_block,
                                                 float *tile);

/* The indices i of x[0, n) with x[i] >= bound, ascending, into out (room for n); returns
 * how many. NaN is never >= bound. */
typedef size_t (*topk_compact_fn)(const float *x, size_t n, float bound, int32_t *out);

/* ReLU routing's row: the i with w = x[i] - threshold > 0, by descending w, ties to the
 * lower i, into ids and weights (room for n each); returns how many. scratch holds
 * TOPK_RELU_SCRATCH(n) floats. Weights are the same float subtraction in every variant,
 * so the rows are bit-identical. */
#define TOPK_RELU_SCRATCH(n) (2 * (size_t)(n) + 64)
typedef size_t (*topk_relu_row_fn)(const float *x, size_t n, float threshold, int32_t *ids, float *weights,
                                   float *scratch);

/* A float's order as an unsigned integer (keys compare as the floats do; -0 and +0, which
 * are equal, map alike). Without a branch, so that loops over it vectorise. */
static inline uint32_t topk_float_order(float x) {
    x += 0.0f; /* -0 becomes +0 */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
}

/* BatchTopK's candidates (router/batch_topk.c) in rows [0, rows) of logits [rows, E]: in
 * each row, the i with x[i] >= logit_bound[r] whose score reaches `bound`, by descending
 * score, ties to the lower i; row after row into ids and scores, how many into
 * counts[r]; returns the total. ids and scores have room for rows x E + 16 entries (a
 * row's entries past its count may be written). The score is the logit, or with probs
 * exp(x - max) / sum by moert_exp_shifted's operations (max, sum: the row's), so every
 * variant gives the same bits. Below a row's logit_bound no score may reach the bound:
 * the caller's way of keeping the exponentials to a few per row. scratch holds
 * TOPK_BATCH_SCRATCH(rows, E) floats. */
typedef struct topk_batch_rows {
    const float *logit_bound, *max, *sum; /* [rows] */
    float bound;
    int probs;
} topk_batch_rows;
#define TOPK_BATCH_SCRATCH(rows, E) (2 * ((size_t)(rows) * (size_t)(E) + 16))
typedef size_t (*topk_batch_rows_fn)(const float *logits, size_t rows, size_t E, const topk_batch_rows *b,
                                     int32_t *ids, float *scores, uint32_t *counts, float *scratch);

/* The noise the variant's tiles generate for noisy selection (topk_extras), before its
 * scale: tokens [first, first + lanes) of `spec` (absolute indices), experts [0, E), into
 * buf[c * lanes + lane] for c < E rounded up to 8 (TOPK_TILE_FLOATS(E) floats). Returns
 * lanes, 0 for a variant without tiles. For tests: the tiles call the same code. */
typedef size_t (*topk_noise_tile_fn)(const noise_spec *spec, uint64_t first, size_t E, float *buf);

typedef struct topk_variant {
    const char *name;
    moert_isa isa;       /* what the CPU must support to run it */
    topk_rows_fn rows;
    topk_softmax_filter_fn softmax_filter;
    topk_compact_fn compact;
    topk_relu_row_fn relu_row;
    topk_batch_rows_fn batch_rows;
    topk_noise_tile_fn noise_tile;
} topk_variant;

/* The variants, best last; see variants.inc. Tests and benchmarks iterate this table. */
#define TOPK_VARIANT_DECLARE_(name, isa) \
    topk_row_error topk_rows_##name(const topk_job *, size_t, size_t, const topk_scratch *); \
    topk_row_error topk_softmax_filter_##name(const float *, size_t, size_t, size_t, size_t,      \
                                              const topk_candidates *, float *, float *, float *,  \
                                              float *, float *);                                   \
    size_t topk_compact_##name(const float *, size_t, float, int32_t *);                         \
    size_t topk_relu_row_##name(const float *, size_t, float, int32_t *, float *, float *);         \
    size_t topk_batch_rows_##name(const float *, size_t, size_t, const topk_batch_rows *, int32_t *, float *,     \
                                  uint32_t *, float *);                                                    \
    size_t topk_noise_tile_##name(const noise_spec *, uint64_t, size_t, float *);
#include "kernels/topk_gate/variants.inc"
#undef TOPK_VARIANT_DECLARE_

extern const topk_variant topk_variants[];
extern const size_t topk_variant_count;

/* The variant that runs `isa` (MOERT_ISA_AUTO resolves to the process's choice). */
const topk_variant *topk_variant_for(moert_isa isa);

/* Scratch a caller keeps between calls, so that a driver allocates only until it has
 * grown to the shape; bytes NULL and size 0 to start. Free bytes when done. */
typedef struct topk_workspace {
    void *bytes;
    size_t size;
} topk_workspace;

/* Routes with a given variant (tests use it to reach every entry of the table, the
 * emulated ones included). Same contract as moert_topk_gate. */
moert_status topk_gate_run(const topk_variant *variant, const moert_topk_gate_params *params,
                           const float *logits, size_t tokens, size_t experts,
                           const moert_topk_gate_output *out);

/* Called by the driver's thread `thread` after it routed rows [row_begin, row_end), while
 * they are still in cache; each thread sees its blocks in ascending order, and the
 * threads hold consecutive ranges of blocks. Returns 0, or non-zero to stop: the thread
 * then routes no more blocks and topk_gate_run_with returns MOERT_OK all the same (the
 * caller's context says what failed). */
typedef int (*topk_block_hook)(void *context, int thread, size_t row_begin, size_t row_end);

/* What a router asks of the kernel beyond moert_topk_gate's outputs, computed in the same
 * pass over the logits.
 *
 * softpick_sums [tokens]: softpick's denominator (Zuhri et al., 2025) against the row's max
 * m, sum over the unmasked experts of |e^(x_j - m) - e^-m|, for softmax post without groups.
 * The tile kernels compute it next to the softmax normaliser, lane by lane (a subtraction,
 * an absolute value and an addition per logit), and write it where it holds its precision:
 * each term's error is about 2e-7 (e^(x_j - m) + e^-m), so the sum is written when
 * S + E e^-m <= 8 x sum (S the softmax normaliser), a relative error below about 2e-6;
 * otherwise (logits near 0, where the difference cancels) TOPK_SOFTPICK_ILL. Where the sum
 * is written, the row's weights are softpick's, relu(e^(x_i - m) - e^-m) / (sum + 1e-6 e^-m)
 * (the operations of router/scores.c, the same bits), by descending weight, equal weights
 * by id; elsewhere they are to be replaced. Lanes the tiles route again get
 * TOPK_SOFTPICK_UNSET (their max was not settled); rows no tile reaches (the scalar
 * variant, rows past the last tile, tiles sent to the row kernel) are not written: the
 * caller fills the array with TOPK_SOFTPICK_UNSET first, and computes those rows' sums by
 * the same operations (router/scores.c), so that a row's weights do not depend on the path
 * that routed it. */
#define TOPK_SOFTPICK_UNSET (-1.0f)
#define TOPK_SOFTPICK_ILL (-2.0f)
#define TOPK_SOFTPICK_EPSILON 1e-6f
/*
 * noise: noisy or Gumbel top-k selection (softmax post without groups or bias): the k
 * largest keys x + noise (kernels/noise.h; row t is token noise->token_offset + t) are
 * chosen, weighed by softmax over their clean logits, by descending weight (ties to the
 * lower id); the statistics are the clean logits'. The tiles generate the noise lane by
 * lane next to their selection (the same bits as noise_row), so the logits are read once. */
typedef struct topk_extras {
    float *softpick_sums;
    const noise_spec *noise;
} topk_extras;

/* topk_gate_run, calling `hook` (if non-NULL) after each block, with its scratch in
 * `workspace` (NULL: allocated and freed in the call). */
moert_status topk_gate_run_with(const topk_variant *variant, const moert_topk_gate_params *params,
                                const float *logits, size_t tokens, size_t experts,
                                const moert_topk_gate_output *out, topk_block_hook hook, void *context,
                                topk_workspace *workspace);

/* topk_gate_run_with and the extras (NULL: none). */
moert_status topk_gate_run_extra(const topk_variant *variant, const moert_topk_gate_params *params,
                                 const float *logits, size_t tokens, size_t experts,
                                 const moert_topk_gate_output *out, const topk_extras *extras, topk_block_hook hook,
                                 void *context, topk_workspace *workspace);

/* Full softmax over experts of logits [tokens, experts], each probability offered to the
 * candidates of the thread that computes it (cand[thread], threads of them; thread i
 * takes the i-th range of tokens), with lse, row_max, row_sum [tokens] and prob_sums
 * [experts] (each expert's probabilities summed over tokens, bit-identical for any thread
 * count), by the variant `isa` chooses. Returns how many threads ran in *used. Bad data
 * as moert_topk_gate (MOERT_EBADDATA naming the first bad element, all -inf rows). Its
 * scratch lives in `workspace`. */
moert_status topk_softmax_filter(moert_isa isa, const float *logits, size_t tokens, size_t experts,
                                 const topk_candidates *cand, int threads, int *used, float *lse,
                                 float *row_max, float *row_sum, double *prob_sums, topk_workspace *workspace);

/* ---- pieces shared by the variants ---- */

/* Exact top-k of keys[0..n) by (key descending, index ascending): writes k keys and their
 * indices (idx[i] if idx is non-NULL, else i) in that order. k <= n. O(n log k). */
void topk_select_heap(const float *keys, const int32_t *idx, size_t n, int k, float *top_keys,
                      int32_t *top_idx);

/* Sorts n entries by descending weight, ties to the lower id, from (in_ids,
 * in_weights) into (ids, weights); the input and output may be the same arrays. Up to
 * TOPK_RANK_SORT_MAX entries by rank, without a branch on the data; more by a heap
 * (O(n log n)) built in the output (which reads each input entry before it writes its
 * place). */
#define TOPK_RANK_SORT_MAX 32
void topk_sort_entries(const int32_t *in_ids, const float *in_weights, size_t n, int32_t *ids, float *weights);

/* One row of topk_softmax_filter_fn, in plain C: the scalar variant, and every variant's
 * rows past its last whole tile. */
topk_row_error topk_softmax_filter_row(const float *logits, size_t experts, size_t t,
                                       const topk_candidates *cand, float *lse, float *row_max,
                                       float *row_sum, float *prob_block);

/* First NaN/+inf/all -inf finding in one row, scanning in column order. */
topk_row_error topk_find_bad(const float *row, size_t experts, size_t row_index);

/* Turns one row's k selected logits (in selection order) into its weights, in place.
 * row_max and row_sum (the sum of exp(logit - row_max) over the row) are used by softmax
 * pre only. This is the reference; vector variants evaluate the same operations lane by
 * lane, so post and sigmoid weights are bit-identical across variants. */
void topk_weights_inplace(const topk_job *job, float *w, float row_max, float row_sum);

#endif /* MOERT_KERNELS_TOPK_GATE_INTERNAL_H */

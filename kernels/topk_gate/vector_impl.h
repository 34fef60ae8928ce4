/* Internal: the vectorised top-k gate, written once over a V_W-lane vocabulary
 * (simd_avx2.h, simd_avx512.h, simd_emu16.h) and compiled once per variant.
 *
 * Two kernels, chosen per call by shape:
 *
 * Tiles (experts <= TILE_MAX_EXPERTS, k <= TILE_MAX_K): V_W tokens at a time, one token
 * per lane. A tile of logits is transposed so that vector e holds expert e of V_W
 * tokens, and a branch-free insertion network keeps each lane's best k. Small rows
 * then cost no horizontal work at all. The normaliser (softmax pre, logsumexp,
 * probability sums) is a second pass over the transposed tile, against the row max that
 * the selection found; the statistics use a cheaper exp (moert_exp2_stat).
 *
 * Rows (any shape), per token:
 *   sweep 1 reads the row once: the NaN/+inf check, the max of each of 16 disjoint
 *     stripes of keys, and the online normaliser (running max, rescaled sum, per block
 *     of ROW_BLOCK_VECS vectors) when softmax pre, the logsumexp or the probabilities
 *     need it;
 *   the k-th largest of the 16 stripe maxima (k <= 16) bounds the row's k-th largest key
 *     from below, since those maxima are 16 distinct elements;
 *   sweep 2 (the row is in L1 now) marks the candidates, keys >= that bound: about 10
 *     of 64..256 Gaussian logits for k = 8;
 *   up to 16 candidates are ranked exactly by comparison masks; more go to the heap.
 * k = 1 needs only the row max; rows with k > 16 use sweep 1 and the heap.
 *
 * Selection and the post and sigmoid weights evaluate the scalar reference's operations
 * lane by lane, so they are bit-identical to it. */
#ifndef MOERT_TOPK_VECTOR_IMPL_H
#define MOERT_TOPK_VECTOR_IMPL_H

#include <math.h>
#include <string.h>

#include "kernels/expf.h"
#include "kernels/topk_gate/internal.h"

#define STRIPE_REGS (16 / V_W) /* vectors that hold the 16 stripe maxima */
#define ROW_MAX_K 16
#define ROW_CAND_CAP 256
#define ROW_BLOCK_VECS 16
#define TILE_MAX_K 8

/* The hardware variants force inlining and unrolling so that k and the kind become
 * constants and the networks' vectors stay in registers. The portable emu16 variant only
 * checks the algorithm, and sanitizer builds only check memory and behaviour: there the
 * same forcing would cost many minutes of compile time. */
#if defined(VEC_PORTABLE) || defined(MOERT_LIGHT_INLINING)
#define VEC_INLINE static inline
#define VEC_UNROLL(n)
#else
#define VEC_INLINE static inline __attribute__((always_inline))
#define VEC_PRAGMA_(x) _Pragma(#x)
#define VEC_UNROLL(n) VEC_PRAGMA_(GCC unroll n)
#endif

static inline int vec_needs_normaliser(const topk_job *job) {
    return (job->score == MOERT_SCORE_SOFTMAX && job->order == MOERT_SOFTMAX_PRE) ||
           job->logsumexp != NULL || job->want_probs || job->softpick_sums != NULL;
}

/* The kinds of gate. Each kernel is instantiated once per kind, so its inner loops hold
 * only what that kind computes. */
enum { GATE_POST, GATE_PRE, GATE_SIGMOID, GATE_SIGMOID_BIAS, GATE_KINDS };

static inline int vec_gate_kind(const topk_job *job) {
    if (job->score == MOERT_SCORE_SIGMOID) return job->bias != NULL ? GATE_SIGMOID_BIAS : GATE_SIGMOID;
    return job->order == MOERT_SOFTMAX_PRE ? GATE_PRE : GATE_POST;
}

/* ---- weights ------------------------------------------------------------------------ */

/* topk_weights_inplace on V_W lanes: w holds the selected logits (entry r * V_W + j in
 * lane j of register r), k entries. The sums run over the k entries in order, as the
 * scalar reference does. Returns the weights in w. */
VEC_INLINE void vec_weights(const topk_job *job, vf *w, int regs, float row_max, float row_sum,
                            const int kind) {
    const int k = job->k;
    float tmp[16];
    int sum_it;
    if (kind == GATE_SIGMOID || kind == GATE_SIGMOID_BIAS) {
        for (int r = 0; r < regs; r++) w[r] = vf_sigmoid(w[r]);
        sum_it = job->renormalize;
    } else if (kind == GATE_POST) {
        vf_storeu(tmp, w[0]);
        const vf first = vf_set1(tmp[0]);
        for (int r = 0; r < regs; r++) w[r] = vf_exp(vf_sub(w[r], first));
        sum_it = 1;
    } else {
        const vf m = vf_set1(row_max), s = vf_set1(row_sum);
        for (int r = 0; r < regs; r++) w[r] = vf_div(vf_exp(vf_sub(w[r], m)), s);
        sum_it = job->renormalize;
    }
    if (sum_it) {
        for (int r = 0; r < regs; r++) vf_storeu(tmp + r * V_W, w[r]);
        float sum = 0.0f;
        for (int j = 0; j < k; j++) sum += tmp[j];
        if (kind == GATE_SIGMOID || kind == GATE_SIGMOID_BIAS) sum += 1e-20f;
        const vf s = vf_set1(sum);
        for (int r = 0; r < regs; r++) w[r] = vf_div(w[r], s);
    }
    if (job->scaling != 1.0f) {
        const vf s = vf_set1(job->scaling);
        for (int r = 0; r < regs; r++) w[r] = vf_mul(w[r], s);
    }
}

/* ---- the row kernel ------------------------------------------------------------------ */

/* The exact top-k among c <= 16 candidates (keys padded with -inf to 16 entries, in index
 * order). Ranks first by "how many keys are greater", exact when keys are distinct; if two
 * keys tie their ranks collide, and the tie-aware count decides: the candidates before
 * with a key >= its own plus those after with a key > its own, ties to the lower index. */
static inline void vec_rank16(const float *cand_keys, const int32_t *cand_idx, int c, int k,
                              float *top_keys, int32_t *top_ids) {
    const int regs = (c + V_W - 1) / V_W;
    vf keys[STRIPE_REGS];
    vi rank[STRIPE_REGS];
    for (int r = 0; r < regs; r++) {
        keys[r] = vf_loadu(cand_keys + r * V_W);
        rank[r] = vi_zero();
    }
    for (int j = 0; j < c; j++) {
        const vf kj = vf_set1(cand_keys[j]);
        for (int r = 0; r < regs; r++) rank[r] = vi_add_mask(rank[r], vm_gt(kj, keys[r]));
    }
    int32_t ranks[16];
    for (int r = 0; r < regs; r++) vi_storeu(ranks + r * V_W, rank[r]);
    uint32_t seen = 0;
    for (int i = 0; i < c; i++) {
        const int32_t r = ranks[i];
        seen |= 1u << r;
        const int slot = r < k ? r : ROW_MAX_K;
        top_keys[slot] = cand_keys[i];
        top_ids[slot] = cand_idx[i];
    }
    if (seen == (1u << c) - 1u) return;
    for (int i = 0; i < c; i++) { /* a tie: rank again, tie-aware */
        const vf mine = vf_set1(cand_keys[i]);
        uint32_t ge = 0, gt = 0;
        for (int r = 0; r < regs; r++) {
            ge |= vm_bits(vm_ge(keys[r], mine)) << (r * V_W);
            gt |= vm_bits(vm_gt(keys[r], mine)) << (r * V_W);
        }
        const uint32_t before = (1u << i) - 1u, all = (1u << c) - 1u;
        const int r = __builtin_popcount((ge & before) | (gt & ~before & all));
        const int slot = r < k ? r : ROW_MAX_K;
        top_keys[slot] = cand_keys[i];
        top_ids[slot] = cand_idx[i];
    }
}

/* Candidates of a row, keys >= bound, in index order into cand_keys/cand_idx. Returns their
 * count, or ROW_CAND_CAP + 1 when there are more than ROW_CAND_CAP. */
static inline int vec_candidates(const float *keys, size_t full, int tail, float bound,
                                 float *cand_keys, int32_t *cand_idx) {
    const vf b = vf_set1(bound);
    const size_t nvec = full + (tail > 0);
    int c = 0;
    for (size_t v0 = 0; v0 < nvec; v0 += 64 / V_W) { /* 64 keys to a bit word */
        const size_t v1 = v0 + 64 / V_W < full ? v0 + 64 / V_W : full;
        uint64_t word = 0;
        size_t v = v0;
        for (; v < v1; v++) word |= (uint64_t)vm_bits(vm_ge(vf_loadu(keys + v * V_W), b)) << ((v - v0) * V_W);
        if (v == full && tail > 0 && v < v0 + 64 / V_W) {
            const vm take = vm_and(vm_ge(vf_load_part(keys + v * V_W, tail, -INFINITY), b), vm_first(tail));
            word |= (uint64_t)vm_bits(take) << ((v - v0) * V_W);
        }
        if (c + __builtin_popcountll(word) > ROW_CAND_CAP) return ROW_CAND_CAP + 1;
        const int32_t base = (int32_t)(v0 * V_W);
        for (; word != 0; word &= word - 1) {
            const int32_t e = base + __builtin_ctzll(word);
            cand_keys[c] = keys[e];
            cand_idx[c] = e;
            c++;
        }
    }
    return c;
}

/* The first index whose key equals `key` (which the row holds). */
static inline int32_t vec_first_equal(const float *keys, size_t full, int tail, float key) {
    const vf kv = vf_set1(key);
    size_t v = 0;
    for (; v < full; v++) {
        const uint32_t bits = vm_bits(vm_eq(vf_loadu(keys + v * V_W), kv));
        if (bits != 0) return (int32_t)(v * V_W) + __builtin_ctz(bits);
    }
    const uint32_t bits = vm_bits(vm_and(vm_eq(vf_load_part(keys + v * V_W, tail, -INFINITY), kv), vm_first(tail)));
    return (int32_t)(v * V_W) + __builtin_ctz(bits);
}

static inline vf row_load(const float *p, size_t v, size_t full, int tail) {
    return v < full ? vf_loadu(p + v * V_W) : vf_load_part(p + v * V_W, tail, -INFINITY);
}

/* Sweep 1 of a row: stripes, bad lanes, max and (when asked) the online normaliser. */
typedef struct row_sweep {
    vf stripe[STRIPE_REGS];
    vm bad;
    float row_max, row_sum;
} row_sweep;

VEC_INLINE void vec_sweep(const topk_job *job, const float *x, size_t full, int tail,
                          const topk_scratch *scratch, row_sweep *s, const int kind) {
    const size_t nvec = full + (tail > 0);
    const vf neg_inf = vf_set1(-INFINITY);
    for (int r = 0; r < STRIPE_REGS; r++) s->stripe[r] = neg_inf;
    s->bad = vm_none();
    if (kind != GATE_SIGMOID_BIAS && kind != GATE_PRE && !vec_needs_normaliser(job)) {
        /* The hot path: keys are the logits and nothing else is needed. */
        size_t v = 0;
        for (; v + STRIPE_REGS <= full; v += STRIPE_REGS)
            for (int r = 0; r < STRIPE_REGS; r++) {
                const vf xv = vf_loadu(x + (v + r) * V_W);
                s->bad = vm_or(s->bad, vm_bad(xv));
                s->stripe[r] = vf_max(s->stripe[r], xv);
            }
        for (; v < nvec; v++) { /* the stripes stay disjoint whichever takes these */
            const vf xv = row_load(x, v, full, tail);
            s->bad = vm_or(s->bad, vm_bad(xv));
            s->stripe[0] = vf_max(s->stripe[0], xv);
        }
        vf m = s->stripe[0];
        for (int r = 1; r < STRIPE_REGS; r++) m = vf_max(m, s->stripe[r]);
        s->row_max = vf_hmax(m);
        s->row_sum = 0.0f;
        return;
    }
    const int biased = kind == GATE_SIGMOID_BIAS, normalise = vec_needs_normaliser(job);
    const vm tail_lanes = vm_first(tail);
    vf logit_max = neg_inf, sum = vf_set1(0.0f);
    float m = -INFINITY;
    for (size_t v0 = 0; v0 < nvec; v0 += ROW_BLOCK_VECS) {
        const size_t v1 = v0 + ROW_BLOCK_VECS < nvec ? v0 + ROW_BLOCK_VECS : nvec;
        vf block_max = neg_inf;
        for (size_t v = v0; v < v1; v += STRIPE_REGS)
            for (int r = 0; r < STRIPE_REGS && v + r < v1; r++) {
                const vf xv = row_load(x, v + r, full, tail);
                s->bad = vm_or(s->bad, vm_bad(xv));
                block_max = vf_max(block_max, xv);
                vf key = xv;
                if (biased) {
                    const vf b = v + r < full ? vf_loadu(job->bias + (v + r) * V_W)
                                              : vf_load_part(job->bias + (v + r) * V_W, tail, 0.0f);
                    key = vf_add(vf_sigmoid(xv), b);
                    if (v + r == full) key = vf_select(tail_lanes, key, neg_inf);
                    vf_storeu(scratch->keys + (v + r) * V_W, key);
                }
                s->stripe[r] = vf_max(s->stripe[r], key);
            }
        logit_max = vf_max(logit_max, block_max);
        if (normalise) {
            /* Online normaliser: rescale the running sum when the max grows. */
            const float bm = vf_hmax(block_max);
            if (bm > m) {
                if (m != -INFINITY) sum = vf_mul(sum, vf_set1(moert_expf(m - bm)));
                m = bm;
            }
            if (m != -INFINITY) {
                const vf mv = vf_set1(m);
                for (size_t v = v0; v < v1; v++) sum = vf_add(sum, vf_exp(vf_sub(row_load(x, v, full, tail), mv)));
            }
        }
    }
    s->row_max = vf_hmax(logit_max);
    s->row_sum = normalise ? vf_hsum(sum) : 0.0f;
}

/* One token by the row kernel. */
VEC_INLINE topk_row_error vec_row(const topk_job *job, size_t t, const topk_scratch *scratch,
                                  const int kind) {
    const size_t E = job->experts;
    const int k = job->k;
    const float *x = job->logits + t * E;
    const size_t full = E / V_W;
    const int tail = (int)(E % V_W);
    const int biased = kind == GATE_SIGMOID_BIAS;

    row_sweep s;
    vec_sweep(job, x, full, tail, scratch, &s, kind);
    if (vm_bits(s.bad) != 0 || s.row_max == -INFINITY) return topk_find_bad(x, E, t);

    int32_t *ids = job->ids + t * (size_t)k;
    float *w = job->weights + t * (size_t)k;
    const float *keys = biased ? scratch->keys : x;
    if (k > ROW_MAX_K) {
        topk_select_heap(keys, NULL, E, k, w, ids);
        for (int j = 0; j < k; j++) w[j] = x[ids[j]];
        topk_weights_inplace(job, w, s.row_max, s.row_sum);
    } else {
        float top[ROW_MAX_K + 1 + 16]; /* keys, then the logits of the selected */
        int32_t top_ids[ROW_MAX_K + 1];  /* slot ROW_MAX_K takes the unselected */
        if (k == 1) {
            top[0] = biased ? v_kth_largest16(s.stripe, 1) : s.row_max;
            top_ids[0] = vec_first_equal(keys, full, tail, top[0]);
        } else {
            float cand_keys[ROW_CAND_CAP + 2 * 16];
            int32_t cand_idx[ROW_CAND_CAP + 16];
            const float bound = v_kth_largest16(s.stripe, k);
            const int c = vec_candidates(keys, full, tail, bound, cand_keys, cand_idx);
            if (c <= 16) {
                for (int r = 0; r < STRIPE_REGS; r++) vf_storeu(cand_keys + c + r * V_W, vf_set1(-INFINITY));
                vec_rank16(cand_keys, cand_idx, c, k, top, top_ids);
            } else if (c <= ROW_CAND_CAP) {
                topk_select_heap(cand_keys, cand_idx, (size_t)c, k, top, top_ids);
            } else {
                topk_select_heap(keys, NULL, E, k, top, top_ids);
            }
        }
        memcpy(ids, top_ids, (size_t)k * sizeof(int32_t));
        if (biased)
            for (int j = 0; j < k; j++) top[j] = x[ids[j]];
        const int regs = (k + V_W - 1) / V_W;
        vf wv[STRIPE_REGS];
        for (int r = 0; r < regs; r++) wv[r] = vf_loadu(top + r * V_W); /* lanes past k: unused */
        vec_weights(job, wv, regs, s.row_max, s.row_sum, kind);
        for (int r = 0; r < regs; r++) {
            if (k - r * V_W >= V_W)
                vf_storeu(w + r * V_W, wv[r]);
            else
                vf_store_part(w + r * V_W, k - r * V_W, wv[r]);
        }
    }
    topk_order_equal_weights(ids, w, k);

    if (job->logsumexp != NULL) job->logsumexp[t] = s.row_max + logf(s.row_sum);
    if (job->want_probs) {
        const vf mv = vf_set1(s.row_max), sv = vf_set1(s.row_sum);
        float *acc = scratch->prob_block; /* has V_W of slack past E */
        const size_t nvec = full + (tail > 0);
        for (size_t v = 0; v < nvec; v++)
            vf_storeu(acc + v * V_W, vf_add(vf_loadu(acc + v * V_W),
                                            vf_div(vf_exp(vf_sub(row_load(x, v, full, tail), mv)), sv)));
    }
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

/* ---- the tile kernel ------------------------------------------------------------------- */

/* The tile kernel packs each key and its expert index into one int32 whose order is the
 * selection order: the key's sign and magnitude as a two's complement integer, with the
 * magnitude's low `bits` bits replaced by (2^bits - 1 - index). Comparators are then one max and one min. Keys that
 * differ only in those low bits compare by index instead; the check after the selection
 * catches that (see vec_tile), so the answer stays exact. */
#define TILE_MAX_EXPERTS 512
#define TILE_PREFETCH_TILES 4
#define TILE_NONE INT32_MIN /* below every packed key */
#define EXACT_MAX_K 3        /* up to this k, the exact insertion network */
#define TILE_MAX_GROUPS 64   /* group-limited selection by tiles: at most this many groups */

static inline int vec_uses_tiles(const topk_job *job) {
    return job->k <= TILE_MAX_K && job->experts <= TILE_MAX_EXPERTS;
}

/* Index bits for E experts: enough for every column of the last block of 8 (so >= 3). */
static inline int vec_index_bits(size_t E) {
    int bits = 3;
    while (((size_t)1 << bits) < E) bits++;
    return bits;
}

VEC_INLINE vi vec_pack(vf key, vi index_code, vi keep) {
    return vi_or(vi_ordered_truncated(key, keep), index_code);
}

/* Batcher's 19-comparator network for 8 (depth 6): pairs (a, b), a < b. */
static const unsigned char vec_net8[19][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}, {0, 4}, {1, 5}, {2, 6},
                                              {3, 7}, {0, 1}, {2, 3}, {4, 5}, {6, 7}, {2, 4}, {3, 5},
                                              {1, 4}, {3, 6}, {1, 2}, {3, 4}, {5, 6}};

/* Sorts 8 packed keys per lane, descending, by vec_net8. */
VEC_INLINE void vec_sort8(vi *P) {
    VEC_UNROLL(19)
    for (int i = 0; i < 19; i++) {
        const vi a = P[vec_net8[i][0]], b = P[vec_net8[i][1]];
        P[vec_net8[i][0]] = vi_max(a, b);
        P[vec_net8[i][1]] = vi_min(a, b);
    }
}

/* R (8 per lane, sorted) becomes the top 8 of R and G (sorted): the lane-wise max of R[i]
 * and G[7 - i] is a bitonic sequence holding the top 8, which three half-cleaner stages
 * sort. With track_dropped, the best of what drops out is kept in *dropped. */
VEC_INLINE void vec_merge8(vi *R, const vi *G, vi *dropped, const int track_dropped) {
    VEC_UNROLL(8)
    for (int i = 0; i < 8; i++) {
        const vi r = R[i], g = G[7 - i];
        R[i] = vi_max(r, g);
        if (track_dropped) *dropped = vi_max(*dropped, vi_min(r, g));
    }
    static const unsigned char half[12][2] = {{0, 4}, {1, 5}, {2, 6}, {3, 7}, {0, 2}, {1, 3},
                                              {4, 6}, {5, 7}, {0, 1}, {2, 3}, {4, 5}, {6, 7}};
    VEC_UNROLL(12)
    for (int i = 0; i < 12; i++) {
        const vi a = R[half[i][0]], b = R[half[i][1]];
        R[half[i][0]] = vi_max(a, b);
        R[half[i][1]] = vi_min(a, b);
    }
}

/* One expert into the exact top `levels` kept lane by lane in B (keys, in selection
 * order), I (ids) and BX (logits). The key lands in level j when it strictly beats B[j]
 * and not B[j-1] (an equal key has a lower index, so it stays ahead); every level from
 * there down takes the entry above it. Each level's comparison is against the old B, so
 * they all run in parallel. With `drop`, the last level's entry falls out; otherwise the
 * caller puts what fell out of B[levels-1] into level `levels` (from *key, *id, *logit).
 * For small k this costs less than packing keys, and needs neither the check nor the
 * gather. */
VEC_INLINE void vec_insert_exact(vf *B, vi *I, vf *BX, vf *key, vi *id, vf *logit, const int levels,
                                 const int drop, const int biased) {
    if (levels == 0) return; /* nothing kept yet: the key itself is what "falls out" */
    vm gt[8];
    VEC_UNROLL(8)
    for (int j = 0; j < levels; j++) gt[j] = vm_gt(*key, B[j]);
    /* What leaves the last level, before it is overwritten. */
    const vf out_key = vf_min(B[levels - 1], *key);
    const vi out_id = vi_select(gt[levels - 1], I[levels - 1], *id);
    const vf out_logit = biased ? vf_select(gt[levels - 1], BX[levels - 1], *logit) : *logit;
    VEC_UNROLL(8)
    for (int j = levels - 1; j >= 0; j--) {
        if (j > 0) {
            B[j] = vf_max(B[j], vf_min(B[j - 1], *key));
            I[j] = vi_select(gt[j - 1], I[j - 1], vi_select(gt[j], *id, I[j]));
            if (biased) BX[j] = vf_select(gt[j - 1], BX[j - 1], vf_select(gt[j], *logit, BX[j]));
        } else {
            B[0] = vf_max(B[0], *key);
            I[0] = vi_select(gt[0], *id, I[0]);
            if (biased) BX[0] = vf_select(gt[0], *logit, BX[0]);
        }
    }
    if (!drop) {
        *key = out_key;
        *id = out_id;
        *logit = out_logit;
    }
}

enum { TILE_BAD = -1 }; /* the tile holds bad data and nothing was written */

/* V_W tokens from row t, one per lane. The experts are read 8 at a time (a transposed
 * block of 8 columns; missing columns are -inf), and kept transposed in tile_x when the
 * normaliser is needed (vec_tile_finish sums it once the max is known). k <= 3 inserts
 * each key into the exact top k; 4 <= k <= 8 sorts each block of packed keys and merges
 * it into the running top 8.
 *
 * The packed selection is the exact one when, lane by lane, the chosen keys' high parts
 * (the packed value without its index bits) strictly decrease and stay strictly above
 * every key left out: then every comparison that mattered was decided by the keys
 * themselves. Lanes where that fails (keys equal in all but their lowest bits, or exact
 * ties) are written anyway and returned as a bit mask, for the caller to route exactly.
 * k, the kind and (for the common E = 8) the expert count are compile-time constants
 * after inlining. Returns the mask, or
 * TILE_BAD without writing anything when the tile holds NaN, +inf or an all -inf row. */
/* Group-limited selection on a tile, from each group's packed top 8 (and the best key
 * below them) in group_lists: each lane scores its groups by the exact keys of their top
 * k / M (or their max), keeps the best M (ties to the lower group), and merges the kept
 * groups' lists into R, the best key left out into *dropped. Lanes where a group's score
 * rests on keys the packing could not order go to *inexact; the caller's check covers
 * the final top k. */
VEC_INLINE void vec_tile_groups(const topk_job *job, const float *base, const int k, const int kind,
                                const int bits, const int32_t *group_lists, vi *R, vi *dropped,
                                vm *inexact) {
    const int G = job->groups, M = job->topk_groups;
    const int take = job->group_score == MOERT_GROUP_SCORE_MAX ? 1 : k / M;
    const size_t E = job->experts;
    const int32_t index_mask = (1 << bits) - 1;
    const vi row_offset = vi_mul(vi_iota(), vi_set1((int32_t)E));
    vf scores[TILE_MAX_GROUPS];
    for (int g = 0; g < G; g++) {
        const int32_t *list = group_lists + (size_t)g * 9 * V_W;
        vf score = vf_set1(0.0f); /* 0 + key 0 + key 1 + ..., as the reference adds */
        for (int j = 0; j < take; j++) {
            const vi entry = vi_loadu(list + j * V_W);
            const vi below = vi_loadu(list + (j + 1) * V_W); /* j + 1 <= 8: the dropped */
            *inexact = vm_or(*inexact, vm_not(vi_gt(vi_sra(entry, bits), vi_sra(below, bits))));
            const vi id = vi_sub(vi_set1(index_mask), vi_and(entry, vi_set1(index_mask)));
            vf key = vf_gather(base, vi_add(row_offset, id));
            if (kind == GATE_SIGMOID || kind == GATE_SIGMOID_BIAS) key = vf_sigmoid(key);
            if (kind == GATE_SIGMOID_BIAS) key = vf_add(key, vf_gather(job->bias, id));
            score = job->group_score == MOERT_GROUP_SCORE_MAX ? key : vf_add(score, key);
        }
        scores[g] = score;
    }
    for (int j = 0; j < 8; j++) R[j] = vi_set1(TILE_NONE);
    *dropped = vi_set1(TILE_NONE);
    for (int g = 0; g < G; g++) {
        /* Kept when fewer than M groups rank before it. */
        vi rank = vi_zero();
        for (int h = 0; h < G; h++)
            if (h != g) rank = vi_add_mask(rank, h < g ? vm_ge(scores[h], scores[g]) : vm_gt(scores[h], scores[g]));
        const vm kept = vi_gt(vi_set1(M), rank);
        const int32_t *list = group_lists + (size_t)g * 9 * V_W;
        vi L[8];
        for (int j = 0; j < 8; j++) L[j] = vi_select(kept, vi_loadu(list + j * V_W), vi_set1(TILE_NONE));
        vec_merge8(R, L, dropped, 1);
        *dropped = vi_max(*dropped, vi_select(kept, vi_loadu(list + 8 * V_W), vi_set1(TILE_NONE)));
    }
}

/* Softpick's numerator before the relu, e^(x - m) - e^-m with c = e^-m, lane by lane: the
 * operations of router/scores.c's SOFTPICK_TERM (which explains them), so the bits agree. */
VEC_INLINE vf vec_softpick_term(vf v, vf m, vf c) {
    const vf one = vf_set1(1.0f);
    const vm below_one = vm_gt(one, v);
    const vf e = vf_exp2_stat(vf_mul(vf_select(below_one, v, vf_sub(v, m)), vf_set1(MOERT_EXPF_LOG2E)));
    vf s = vf_set1(1.0f / 362880.0f);
    s = vf_add(vf_mul(s, v), vf_set1(1.0f / 40320.0f));
    s = vf_add(vf_mul(s, v), vf_set1(1.0f / 5040.0f));
    s = vf_add(vf_mul(s, v), vf_set1(1.0f / 720.0f));
    s = vf_add(vf_mul(s, v), vf_set1(1.0f / 120.0f));
    s = vf_add(vf_mul(s, v), vf_set1(1.0f / 24.0f));
    s = vf_add(vf_mul(s, v), vf_set1(1.0f / 6.0f));
    s = vf_add(vf_mul(s, v), vf_set1(0.5f));
    const vf abs_v = vf_max(v, vf_sub(vf_set1(0.0f), v));
    const vf expm1 = vf_select(vm_gt(vf_set1(0.5f), abs_v), vf_add(v, vf_mul(vf_mul(v, v), s)), vf_sub(e, one));
    return vf_select(below_one, vf_mul(c, expm1), vf_sub(e, c));
}

/* ---- the noise of noisy and Gumbel top-k, lane by lane (kernels/noise.c's operations, in
 * its order, fused where it fuses: the same bits) ---- */

VEC_INLINE vi vec_lowbias32(vi x) {
    x = vi_mul(vi_xor(x, vi_srl(x, 16)), vi_set1((int32_t)0x7FEB352Du));
    x = vi_mul(vi_xor(x, vi_srl(x, 15)), vi_set1((int32_t)0x846CA68Bu));
    return vi_xor(x, vi_srl(x, 16));
}

/* A counter's 23 random bits under each lane's token key (lo, hi), c_phi = c 0x9E3779B9
 * (the callers step it by a vector addition: a broadcast of c's product from a general
 * register per counter cost 10% of the generator on Zen 4). */
VEC_INLINE vi vec_noise_bits(vi lo, vi hi, vi c_phi) { return vi_srl(vec_lowbias32(vi_add(vi_xor(lo, c_phi), hi)), 9); }

VEC_INLINE vf vec_noise_uniform(vi n) { return vf_fmadd(vf_cvt_vi(n), vf_set1(0x1.0p-23f), vf_set1(0x1.0p-24f)); }

VEC_INLINE vf vec_negate(vf x) { return vf_from_vi(vi_xor(vi_from_vf(x), vi_set1(INT32_MIN))); }

/* k ln x of positive normal floats, k = 1 or -2 (kernels/noise.c's scaled_log); m / 2 by
 * its exponent field, which is exact as the product is. */
VEC_INLINE vf vec_scaled_log(vf x, const float k) {
    const vi bits = vi_from_vf(x);
    vi e = vi_sub(vi_srl(bits, 23), vi_set1(127));
    const vi mbits = vi_or(vi_and(bits, vi_set1(0x007FFFFF)), vi_set1(0x3F800000));
    const vm big = vm_gt(vf_from_vi(mbits), vf_set1(1.41421356f));
    const vf m = vf_from_vi(vi_select(big, vi_sub(mbits, vi_set1(1 << 23)), mbits));
    e = vi_add_mask(e, big);
    const vf s = vf_div(vf_sub(m, vf_set1(1.0f)), vf_add(m, vf_set1(1.0f))), s2 = vf_mul(s, s);
    vf p = vf_set1(2.0f * k / 7.0f);
    p = vf_fmadd(p, s2, vf_set1(2.0f * k / 5.0f));
    p = vf_fmadd(p, s2, vf_set1(2.0f * k / 3.0f));
    p = vf_fmadd(p, s2, vf_set1(2.0f * k));
    return vf_fmadd(s, p, vf_mul(vf_cvt_vi(e), vf_set1(k * 0.693147181f)));
}

/* Box-Muller's pair from counters' bits n1, n2 (kernels/noise.c's normal_pair). */
VEC_INLINE void vec_normal_pair(vi n1, vi n2, vf *z0, vf *z1) {
    const vf r = vf_sqrt(vec_scaled_log(vec_noise_uniform(n1), -2.0f));
    const vf b = vf_fmadd(vf_cvt_vi(n2), vf_set1(NOISE_ANGLE_SCALE), vf_set1(NOISE_ANGLE_OFFSET)), b2 = vf_mul(b, b);
    vf s = vf_set1(NOISE_SIN_S3);
    s = vf_fmadd(s, b2, vf_set1(NOISE_SIN_S2));
    s = vf_fmadd(s, b2, vf_set1(NOISE_SIN_S1));
    s = vf_fmadd(s, b2, vf_set1(NOISE_SIN_S0));
    vf c = vf_set1(NOISE_COS_C3);
    c = vf_fmadd(c, b2, vf_set1(NOISE_COS_C2));
    c = vf_fmadd(c, b2, vf_set1(NOISE_COS_C1));
    c = vf_fmadd(c, b2, vf_set1(NOISE_COS_C0));
    const vf sin_b = vf_fmadd(vf_mul(b, b2), s, b), cos_b = vf_fmadd(b2, c, vf_set1(1.0f));
    const vf two_r_sin = vf_mul(vf_add(r, r), sin_b);
    *z0 = vf_fmadd(two_r_sin, sin_b, vec_negate(r));
    *z1 = vec_negate(vf_mul(two_r_sin, cos_b));
}

/* The noise of a tile before its scale, columns [0, cols) (cols a multiple of 8), each
 * lane's token keyed by (lo, hi), into buf[c * V_W + lane]: generated before the selection,
 * in a loop of its own that keeps few registers live (inside the selection's it ran at half
 * the speed). */
VEC_INLINE void vec_noise_fill(const noise_spec *noise, vi lo, vi hi, size_t cols, float *buf) {
    const vi phi = vi_set1((int32_t)0x9E3779B9u);
    vi c_phi = vi_zero();
    if (noise->kind == MOERT_NOISE_GUMBEL) {
        for (size_t c = 0; c < cols; c++, c_phi = vi_add(c_phi, phi)) {
            const vf u = vec_noise_uniform(vec_noise_bits(lo, hi, c_phi));
            vf_storeu(buf + c * V_W, vec_negate(vec_scaled_log(vec_negate(vec_scaled_log(u, 1.0f)), 1.0f)));
        }
        return;
    }
    for (size_t c0 = 0; c0 < cols; c0 += 4) {
        /* Two pairs side by side: each is a long chain (hash, log, sqrt), which two hide
         * better than the out-of-order window alone. */
        vi n[4];
        for (int j = 0; j < 4; j++, c_phi = vi_add(c_phi, phi)) n[j] = vec_noise_bits(lo, hi, c_phi);
        vf z[4];
        vec_normal_pair(n[0], n[1], &z[0], &z[1]);
        vec_normal_pair(n[2], n[3], &z[2], &z[3]);
        for (int j = 0; j < 4; j++) vf_storeu(buf + (c0 + (size_t)j) * V_W, z[j]);
    }
}

/* A tile's noise (topk_noise_tile_fn): each lane's token key (kernels/noise.c), then the
 * generator. */
VEC_INLINE size_t vec_noise_tile(const noise_spec *noise, uint64_t first, size_t E, float *buf) {
    int32_t lo[V_W], hi[V_W];
    const uint64_t seed_state = noise_seed_state(noise->seed);
    for (int lane = 0; lane < V_W; lane++) {
        const uint64_t key = noise_token_key_of(seed_state, first + (uint64_t)lane);
        lo[lane] = (int32_t)(uint32_t)key, hi[lane] = (int32_t)(uint32_t)(key >> 32);
    }
    vec_noise_fill(noise, vi_loadu(lo), vi_loadu(hi), (E + 7) & ~(size_t)7, buf);
    return V_W;
}

/* Entries a and b (a < b) of each lane by descending weight; equal weights (rare) are put
 * in id order after the sort, with the kernel's other rows (vec_tile_finish). */
VEC_INLINE void vec_order_entries(vf *W, vi *I, int a, int b) {
    const vm swap = vm_gt(W[b], W[a]);
    const vf wa = W[a];
    const vi ia = I[a];
    W[a] = vf_select(swap, W[b], wa), W[b] = vf_select(swap, wa, W[b]);
    I[a] = vi_select(swap, I[b], ia), I[b] = vi_select(swap, ia, I[b]);
}

/* Sorts k <= 8 entries per lane by descending weight: the ones noisy keys chose come in
 * the keys' order. vec_net8, the entries past k padded below every real one. */
VEC_INLINE void vec_sort_entries(vf *W, vi *I, const int k) {
    if (k == 2) vec_order_entries(W, I, 0, 1);
    if (k == 3) vec_order_entries(W, I, 0, 1), vec_order_entries(W, I, 1, 2), vec_order_entries(W, I, 0, 1);
    if (k <= 3) return;
    for (int j = k; j < 8; j++) W[j] = vf_set1(-INFINITY), I[j] = vi_set1(INT32_MAX);
    VEC_UNROLL(19)
    for (int i = 0; i < 19; i++) vec_order_entries(W, I, vec_net8[i][0], vec_net8[i][1]);
}

/* A tile's selection, handed from vec_tile_select to vec_tile_finish. */
typedef struct tile_state {
    vi I[8];    /* ids of the chosen, in selection order */
    vf W[8];    /* their logits */
    vf M;       /* row max */
    vm inexact; /* lanes the packed selection could not settle */
    int bad;    /* NaN, +inf or an all -inf row somewhere in the tile */
} tile_state;

VEC_INLINE void vec_tile_select(const topk_job *job, size_t t, const int k_fixed, const int kind,
                                const size_t fixed_experts, const int noisy, float *tile_x, int32_t *group_lists,
                                float *noise_buf, tile_state *st) {
    /* k_fixed: k as a compile-time constant (the exact network), or 0: job->k, packed.
     * group_lists: NULL, or room for the group-limited selection (packed, k_fixed = 0). */
    const int k = k_fixed ? k_fixed : job->k;
    const int exact = k_fixed != 0;
    const size_t E = fixed_experts ? fixed_experts : job->experts;
    const int biased = kind == GATE_SIGMOID_BIAS;
    const int grouped = group_lists != NULL;
    const size_t per_group = grouped ? E / (size_t)job->groups : E;
    const float *base = job->logits + t * E;
    const vf neg_inf = vf_set1(-INFINITY);
    const int bits = vec_index_bits(E);
    const int32_t index_mask = (1 << bits) - 1;
    const vi keep = vi_set1(0x7FFFFFFF & ~index_mask); /* magnitude bits above the index */

    /* The tile reads V_W rows side by side, which the hardware prefetchers follow poorly
     * (without this, logits that are not in cache take 2-3x longer): fetch the rows of the
     * tile TILE_PREFETCH_TILES ahead, one cache line per row every 16 experts. (4 measured
     * best of 1, 2, 4 and 8 on DRAM-resident logits.) */
    const float *next = E >= 32 && t + (TILE_PREFETCH_TILES + 1) * V_W <= job->tokens
                            ? base + TILE_PREFETCH_TILES * V_W * E
                            : NULL;

    if (noisy) vec_noise_tile(job->noise, job->noise->token_offset + t, E, noise_buf);

    vi R[8], dropped = vi_set1(TILE_NONE); /* packed path */
    vf B[EXACT_MAX_K], BX[EXACT_MAX_K];     /* exact path: keys, logits */
    vi BI[EXACT_MAX_K];
    vm bad = vm_none();
    vf M = neg_inf;
    for (size_t c0 = 0; c0 < E; c0 += 8) {
        const int n = E - c0 < 8 ? (int)(E - c0) : 8;
        if (next != NULL && (c0 & 15) == 0)
            for (int r = 0; r < V_W; r++) __builtin_prefetch(next + (size_t)r * E + c0);
        /* All 8 columns are processed alike: a missing one is -inf, which is not bad data,
         * adds nothing to the normaliser and never enters the selection. */
        vf X[8];
        v_load_tile8(base + c0, E, n, -INFINITY, X);
        if (tile_x != NULL) /* kept for the normaliser, transposed */
            for (int c = 0; c < 8; c++) vf_storeu(tile_x + (c0 + c) * V_W, X[c]);
        /* NaN or +inf anywhere makes the sum NaN or +inf (and a finite sum that overflows
         * only sends the tile to the row kernel, which finds nothing wrong). */
        const vf sum8 = vf_add(vf_add(vf_add(X[0], X[1]), vf_add(X[2], X[3])),
                               vf_add(vf_add(X[4], X[5]), vf_add(X[6], X[7])));
        bad = vm_or(bad, vm_bad(sum8));
        if (biased || grouped || noisy) /* else the top logit is the row max */
            for (int c = 0; c < 8; c++) M = vf_max(M, X[c]);
        vf noisy_key[8];
        if (noisy) { /* kernels/noise.c's noise_keys: fma(scale, N, x), or x + G */
            const noise_spec *noise = job->noise;
            for (int c = 0; c < 8; c++) {
                const vf z = vf_loadu(noise_buf + (c0 + (size_t)c) * V_W);
                if (noise->kind == MOERT_NOISE_GUMBEL) {
                    noisy_key[c] = vf_add(X[c], z);
                } else { /* a missing column's scale: 0, its key -inf all the same */
                    const float scale = noise->scales == NULL ? noise->scale : c < n ? noise->scales[c0 + (size_t)c] : 0.0f;
                    noisy_key[c] = vf_fmadd(vf_set1(scale), z, X[c]);
                }
            }
        }
        if (exact) {
            vi next_id = vi_set1((int32_t)c0);
            for (int c = 0; c < 8; c++) {
                vf key = biased && c < n ? vf_add(vf_sigmoid(X[c]), vf_set1(job->bias[c0 + c])) : noisy ? noisy_key[c] : X[c];
                vf logit = X[c];
                vi id = next_id;
                next_id = vi_add(next_id, vi_set1(1));
                if (c0 == 0 && c < k) { /* the first k fill the levels */
                    vec_insert_exact(B, BI, BX, &key, &id, &logit, c, 0, biased || noisy);
                    B[c] = key, BI[c] = id, BX[c] = logit;
                } else {
                    vec_insert_exact(B, BI, BX, &key, &id, &logit, k, 1, biased || noisy);
                }
            }
            continue;
        }
        vi P[8];
        vi code = vi_set1(index_mask - (int32_t)c0);
        for (int c = 0; c < 8; c++) {
            const vf key = biased && c < n ? vf_add(vf_sigmoid(X[c]), vf_set1(job->bias[c0 + c])) : noisy ? noisy_key[c] : X[c];
            P[c] = vec_pack(key, code, keep);
            code = vi_sub(code, vi_set1(1));
        }
        vec_sort8(P);
        if (c0 % per_group == 0) { /* a group (or the row) starts */
            for (int c = 0; c < 8; c++) R[c] = P[c];
            dropped = vi_set1(TILE_NONE);
        } else if (k == 8 || grouped) {
            vec_merge8(R, P, &dropped, 1);
        } else {
            vec_merge8(R, P, &dropped, 0); /* R[k] bounds what drops: no need to track it */
        }
        if (grouped && (c0 + 8) % per_group == 0) { /* a group ends: keep its top 8 */
            int32_t *list = group_lists + (c0 / per_group) * 9 * V_W;
            for (int c = 0; c < 8; c++) vi_storeu(list + c * V_W, R[c]);
            vi_storeu(list + 8 * V_W, dropped);
        }
    }
    vm inexact = vm_none();
    if (grouped) vec_tile_groups(job, base, k, kind, bits, group_lists, R, &dropped, &inexact);

    vi I[8];
    vf W[8];
    if (exact) {
        for (int j = 0; j < k; j++) I[j] = BI[j], W[j] = biased || noisy ? BX[j] : B[j];
    } else {
        /* The check, lane by lane: high parts strictly decreasing, above all the rest. */
        if (k < 8) dropped = vi_max(dropped, R[k]);
        for (int j = 0; j < k; j++) {
            const vi below = j + 1 < k ? R[j + 1] : dropped;
            inexact = vm_or(inexact, vm_not(vi_gt(vi_sra(R[j], bits), vi_sra(below, bits))));
        }
        /* Expert ids, and the exact logits of the chosen (the packed keys lost low bits). */
        const vi row_offset = vi_mul(vi_iota(), vi_set1((int32_t)E));
        const vi last = vi_set1((int32_t)E - 1);
        for (int j = 0; j < k; j++) {
            I[j] = vi_sub(vi_set1(index_mask), vi_and(R[j], vi_set1(index_mask)));
            W[j] = vf_gather(base, vi_add(row_offset, vi_min(I[j], last)));
        }
    }

    if (!biased && !grouped && !noisy) M = W[0]; /* the top logit */
    st->bad = vm_bits(vm_or(bad, vm_eq(M, neg_inf))) != 0;
    for (int j = 0; j < k; j++) st->I[j] = I[j], st->W[j] = W[j];
    st->M = M, st->inexact = inexact;
}

/* The second half of a tile: weights, outputs and statistics from the selection. Returns
 * the lanes to route again, or TILE_BAD without writing anything. */
VEC_INLINE int vec_tile_finish(const topk_job *job, size_t t, const topk_scratch *scratch, const int k_fixed,
                               const int kind, const size_t fixed_experts, const int noisy, float *tile_x,
                               const tile_state *st) {
    const int k = k_fixed ? k_fixed : job->k;
    if (st->bad) return TILE_BAD;
    const size_t E = fixed_experts ? fixed_experts : job->experts;
    vi I[8];
    vf W[8];
    for (int j = 0; j < k; j++) I[j] = st->I[j], W[j] = st->W[j];
    const vf M = st->M;
    const vm inexact = st->inexact;

    /* The normaliser from the tile's transposed logits, lane by lane: S = sum of
     * exp(logit - max), every exp against the row's final max, with no horizontal work;
     * the probabilities go to per-lane sums. Missing columns are -inf: exp gives 0. */
    vf S = vf_set1(0.0f);
    const int softpick = kind == GATE_POST && job->softpick_sums != NULL;
    vf softpick_den = S, softpick_c = S; /* softpick: the denominator (+ epsilon) and e^-M */
    if (tile_x != NULL) {
        const size_t cols = (E + 7) & ~(size_t)7;
        /* (x - max) log2 e, not fma(x, log2 e, -max log2 e): the rounding of max log2 e
         * would shift the whole row, by 2^128 and more once |max| passes 1.5e9. */
        const vf log2e = vf_set1(MOERT_EXPF_LOG2E);
        vf S1 = S;
        if (softpick) {
            /* Softpick's denominator beside it (topk_extras): |e - e^-M|, masked experts
             * (and missing columns) absent. */
            const vf zero = vf_set1(0.0f), neg_inf = vf_set1(-INFINITY), c_m = vf_exp(vf_sub(zero, M));
            vf A = zero, A1 = zero;
            for (size_t c = 0; c < cols; c += 2) {
                const vf x0 = vf_loadu(tile_x + c * V_W), x1 = vf_loadu(tile_x + (c + 1) * V_W);
                const vf e0 = vf_exp2_stat(vf_mul(vf_sub(x0, M), log2e));
                const vf e1 = vf_exp2_stat(vf_mul(vf_sub(x1, M), log2e));
                vf_storeu(tile_x + c * V_W, e0);
                vf_storeu(tile_x + (c + 1) * V_W, e1);
                S = vf_add(S, e0);
                S1 = vf_add(S1, e1);
                const vf d0 = vf_sub(e0, c_m), d1 = vf_sub(e1, c_m);
                A = vf_add(A, vf_select(vm_eq(x0, neg_inf), zero, vf_max(d0, vf_sub(zero, d0))));
                A1 = vf_add(A1, vf_select(vm_eq(x1, neg_inf), zero, vf_max(d1, vf_sub(zero, d1))));
            }
            A = vf_add(A, A1);
            const vf bound = vf_add(vf_add(S, S1), vf_mul(vf_set1((float)E), c_m));
            const vm fine = vm_and(vm_ge(vf_mul(vf_set1(8.0f), A), bound), vm_not(vm_bad(bound)));
            const vf unset = vf_set1(TOPK_SOFTPICK_UNSET); /* M may not be the max there */
            vf_storeu(job->softpick_sums + t,
                      vf_select(inexact, unset, vf_select(fine, A, vf_set1(TOPK_SOFTPICK_ILL))));
            softpick_c = c_m;
            softpick_den = vf_add(A, vf_mul(vf_set1(TOPK_SOFTPICK_EPSILON), c_m));
        } else {
            for (size_t c = 0; c < cols; c += 2) {
                const vf x0 = vf_loadu(tile_x + c * V_W), x1 = vf_loadu(tile_x + (c + 1) * V_W);
                vf e0, e1;
                if (kind == GATE_PRE) { /* its weights divide by S: the exact exp */
                    e0 = vf_exp(vf_sub(x0, M));
                    e1 = vf_exp(vf_sub(x1, M));
                } else {
                    e0 = vf_exp2_stat(vf_mul(vf_sub(x0, M), log2e));
                    e1 = vf_exp2_stat(vf_mul(vf_sub(x1, M), log2e));
                }
                vf_storeu(tile_x + c * V_W, e0);
                vf_storeu(tile_x + (c + 1) * V_W, e1);
                S = vf_add(S, e0);
                S1 = vf_add(S1, e1);
            }
        }
        S = vf_add(S, S1);
        if (job->want_probs) {
            const vf inv = vf_div(vf_set1(1.0f), S);
            float *acc = scratch->prob_lanes;
            for (size_t c = 0; c < cols; c++)
                vf_storeu(acc + c * V_W, vf_fmadd(vf_loadu(tile_x + c * V_W), inv, vf_loadu(acc + c * V_W)));
        }
    }

    /* Weights: topk_weights_inplace, lane by lane. */
    int sum_it;
    if (kind == GATE_SIGMOID || kind == GATE_SIGMOID_BIAS) {
        for (int j = 0; j < k; j++) W[j] = vf_sigmoid(W[j]);
        sum_it = job->renormalize;
    } else if (softpick) {
        /* Softpick's weights (topk_extras), by the reference's operations; in the lanes
         * whose sum is not written the caller replaces them. */
        for (int j = 0; j < k; j++) {
            const vf a = vec_softpick_term(W[j], M, softpick_c);
            W[j] = vf_select(vm_gt(a, vf_set1(0.0f)), vf_div(a, softpick_den), vf_set1(0.0f));
        }
        sum_it = 0;
    } else if (kind == GATE_POST && noisy) {
        /* Chosen by the noisy keys, weighed by the clean logits: the largest of those need
         * not come first (topk_weights_inplace's operations, in selection order). */
        vf top = W[0];
        for (int j = 1; j < k; j++) top = vf_max(top, W[j]);
        for (int j = 0; j < k; j++) W[j] = vf_exp(vf_sub(W[j], top));
        sum_it = 1;
    } else if (kind == GATE_POST) {
        /* exp(W[0] - W[0]) is exactly 1, as the reference computes it. */
        for (int j = 1; j < k; j++) W[j] = vf_exp(vf_sub(W[j], W[0]));
        W[0] = vf_set1(1.0f);
        sum_it = 1;
    } else {
        for (int j = 0; j < k; j++) W[j] = vf_div(vf_exp(vf_sub(W[j], M)), S);
        sum_it = job->renormalize;
    }
    if (sum_it) {
        vf sum = W[0]; /* 0 + w[0] + w[1] + ..., in order */
        for (int j = 1; j < k; j++) sum = vf_add(sum, W[j]);
        if (kind == GATE_SIGMOID || kind == GATE_SIGMOID_BIAS) sum = vf_add(sum, vf_set1(1e-20f));
        for (int j = 0; j < k; j++) W[j] = vf_div(W[j], sum);
    }
    if (job->scaling != 1.0f)
        for (int j = 0; j < k; j++) W[j] = vf_mul(W[j], vf_set1(job->scaling));
    if (noisy || softpick) vec_sort_entries(W, I, k); /* neither follows the selection's order */

    /* Lanes back to rows: out[(t + lane) * k + j]. */
    float *wo = job->weights + t * (size_t)k;
    int32_t *io = job->ids + t * (size_t)k;
    if (k == 1) {
        vf_storeu(wo, W[0]);
        vi_storeu(io, I[0]);
    } else if (k == 2) {
        vf_store_interleaved2(wo, W[0], W[1]);
        vi_store_interleaved2(io, I[0], I[1]);
    } else {
        vf ids_as_float[8];
        for (int j = 0; j < 8; j++) ids_as_float[j] = vf_from_vi(I[j < k ? j : 0]);
        for (int j = k; j < 8; j++) W[j] = W[0];
        v_store_tile8(wo, (size_t)k, k, W);
        v_store_tile8((float *)io, (size_t)k, k, ids_as_float);
    }

    /* Lanes with two equal neighbouring weights (rare) put such runs in id order. */
    vm equal = vm_none();
    for (int j = 1; j < k; j++) equal = vm_or(equal, vm_eq(W[j], W[j - 1]));
    for (unsigned lanes = vm_bits(equal); lanes != 0; lanes &= lanes - 1) {
        const size_t row = t + (size_t)__builtin_ctz(lanes);
        topk_order_equal_weights(job->ids + row * (size_t)k, job->weights + row * (size_t)k, k);
    }

    if (job->logsumexp != NULL) {
        float ml[V_W], sl[V_W];
        vf_storeu(ml, M);
        vf_storeu(sl, S);
        for (int lane = 0; lane < V_W; lane++) job->logsumexp[t + lane] = ml[lane] + logf(sl[lane]);
    }
    return (int)vm_bits(inexact);
}

/* The instances: one row kernel per kind, and per kind and k a loop over a block's tiles
 * (inlined, so the tile's set-up is paid once per block, not once per tile). */
typedef topk_row_error (*vec_rows_fn)(const topk_job *, size_t, size_t, const topk_scratch *);

#define VEC_ROW_FOR_KIND_(KIND)                                                             \
    static topk_row_error vec_row_##KIND(const topk_job *job, size_t t, const topk_scratch *s) { \
        return vec_row(job, t, s, KIND);                                                    \
    }                                                                                       \
    static topk_row_error vec_rows_##KIND(const topk_job *job, size_t begin, size_t end,    \
                                          const topk_scratch *s) {                          \
        for (size_t t = begin; t < end; t++) {                                              \
            topk_row_error err = vec_row_##KIND(job, t, s);                                 \
            if (err.kind != TOPK_ROW_OK) return err;                                        \
        }                                                                                   \
        return (topk_row_error){TOPK_ROW_OK, 0, 0};                                         \
    }
VEC_ROW_FOR_KIND_(GATE_POST)
VEC_ROW_FOR_KIND_(GATE_PRE)
VEC_ROW_FOR_KIND_(GATE_SIGMOID)
VEC_ROW_FOR_KIND_(GATE_SIGMOID_BIAS)

/* Rows [begin, end) by tiles of V_W; lanes a tile could not settle exactly are routed
 * again by the row kernel, without adding their probabilities a second time; rows past
 * the last whole tile go to the row kernel. */
VEC_INLINE topk_row_error vec_tiles(const topk_job *job, size_t begin, size_t end,
                                    const topk_scratch *scratch, const int k, const int kind,
                                    const size_t fixed_experts, const int grouped, const int noisy, vec_rows_fn rows) {
    topk_job again = *job;
    again.want_probs = 0;
    const size_t E = fixed_experts ? fixed_experts : job->experts;
    float *tile_x[2] = {NULL, NULL};
    if (vec_needs_normaliser(job)) tile_x[0] = scratch->tiles, tile_x[1] = scratch->tiles + TOPK_TILE_FLOATS(E);
    int32_t *group_lists = grouped ? scratch->group_lists : NULL;
    float *noise_buf = noisy ? scratch->keys : NULL; /* TOPK_NOISY_KEY_FLOATS: a tile's noise */
    size_t t = begin;
    int redo[2];
    while (t + V_W <= end) {
        /* Short rows: two tiles at a time, so that one tile's weights (a long chain of
         * dependent operations) overlap the other's selection. */
        const int pair = t + 2 * V_W <= end;
        tile_state st[2];
        vec_tile_select(job, t, k, kind, fixed_experts, noisy, tile_x[0], group_lists, noise_buf, &st[0]);
        if (pair) vec_tile_select(job, t + V_W, k, kind, fixed_experts, noisy, tile_x[1], group_lists, noise_buf, &st[1]);
        redo[0] = vec_tile_finish(job, t, scratch, k, kind, fixed_experts, noisy, tile_x[0], &st[0]);
        if (pair) redo[1] = vec_tile_finish(job, t + V_W, scratch, k, kind, fixed_experts, noisy, tile_x[1], &st[1]);
        for (int p = 0; p <= pair; p++, t += V_W) {
            if (redo[p] == 0) continue;
            if (redo[p] == TILE_BAD) {
                topk_row_error err = rows(job, t, t + V_W, scratch);
                if (err.kind != TOPK_ROW_OK) return err;
                continue;
            }
            for (int lane = 0; lane < V_W; lane++)
                if ((redo[p] >> lane) & 1) rows(&again, t + (size_t)lane, t + (size_t)lane + 1, scratch);
        }
    }
    if (job->want_probs) { /* the lanes' sums into the block's, and zero for the next block */
        float *acc = scratch->prob_lanes;
        for (size_t c = 0; c < E; c++) {
            float lanes[V_W];
            vf_storeu(lanes, vf_loadu(acc + c * V_W));
            vf_storeu(acc + c * V_W, vf_set1(0.0f));
            float sum = 0.0f;
            for (int lane = 0; lane < V_W; lane++) sum += lanes[lane];
            scratch->prob_block[c] += sum;
        }
    }
    return rows(job, t, end, scratch);
}

#define VEC_TILES_FOR_(KIND, K, NAME)                                                       \
    static topk_row_error vec_tiles_##KIND##_##NAME(const topk_job *job, size_t begin, size_t end, \
                                                    const topk_scratch *s) {                \
        return vec_tiles(job, begin, end, s, K, KIND, 0, 0, 0, vec_rows_##KIND);             \
    }
/* k = 1..3 by the exact network, each k its own instance; k = 4..8 by packed keys, one
 * instance with k at run time (the sorting network does not depend on it). */
#define VEC_TILES_FOR_KIND_(KIND)                                                           \
    VEC_TILES_FOR_(KIND, 1, 1) VEC_TILES_FOR_(KIND, 2, 2) VEC_TILES_FOR_(KIND, 3, 3)        \
    VEC_TILES_FOR_(KIND, 0, packed)
VEC_TILES_FOR_KIND_(GATE_POST)
VEC_TILES_FOR_KIND_(GATE_PRE)
VEC_TILES_FOR_KIND_(GATE_SIGMOID)
VEC_TILES_FOR_KIND_(GATE_SIGMOID_BIAS)

#define VEC_TILES_ROW_(KIND)                                                                \
    {vec_tiles_##KIND##_1, vec_tiles_##KIND##_2, vec_tiles_##KIND##_3, vec_tiles_##KIND##_packed, \
     vec_tiles_##KIND##_packed, vec_tiles_##KIND##_packed, vec_tiles_##KIND##_packed,       \
     vec_tiles_##KIND##_packed}
static const vec_rows_fn vec_tile_kernels[GATE_KINDS][TILE_MAX_K] = {
    VEC_TILES_ROW_(GATE_POST), VEC_TILES_ROW_(GATE_PRE), VEC_TILES_ROW_(GATE_SIGMOID),
    VEC_TILES_ROW_(GATE_SIGMOID_BIAS)};

/* Eight experts (Mixtral's count) with k <= 3, specialised: one block, no loops. */
#define VEC_TILES_E8_(KIND, K)                                                              \
    static topk_row_error vec_tiles_##KIND##_##K##_e8(const topk_job *job, size_t begin,     \
                                                      size_t end, const topk_scratch *s) {  \
        return vec_tiles(job, begin, end, s, K, KIND, 8, 0, 0, vec_rows_##KIND);             \
    }
#define VEC_TILES_E8_FOR_KIND_(KIND) VEC_TILES_E8_(KIND, 1) VEC_TILES_E8_(KIND, 2) VEC_TILES_E8_(KIND, 3)
VEC_TILES_E8_FOR_KIND_(GATE_POST)
VEC_TILES_E8_FOR_KIND_(GATE_PRE)
VEC_TILES_E8_FOR_KIND_(GATE_SIGMOID)
VEC_TILES_E8_FOR_KIND_(GATE_SIGMOID_BIAS)
#define VEC_TILES_E8_ROW_(KIND) {vec_tiles_##KIND##_1_e8, vec_tiles_##KIND##_2_e8, vec_tiles_##KIND##_3_e8}
static const vec_rows_fn vec_tile_kernels_e8[GATE_KINDS][EXACT_MAX_K] = {
    VEC_TILES_E8_ROW_(GATE_POST), VEC_TILES_E8_ROW_(GATE_PRE), VEC_TILES_E8_ROW_(GATE_SIGMOID),
    VEC_TILES_E8_ROW_(GATE_SIGMOID_BIAS)};

/* Group-limited selection by tiles (packed keys, any k <= 8), for the kinds whose keys
 * are known before the normaliser; the groups' top 8 go to scratch. */
static topk_row_error vec_rows_grouped(const topk_job *job, size_t begin, size_t end, const topk_scratch *s) {
    for (size_t t = begin; t < end; t++) {
        topk_row_error err = topk_row_grouped(job, t, s);
        if (err.kind != TOPK_ROW_OK) return err;
    }
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}
#define VEC_TILES_GROUPED_(KIND)                                                            \
    static topk_row_error vec_tiles_grouped_##KIND(const topk_job *job, size_t begin, size_t end, \
                                                   const topk_scratch *s) {                 \
        return vec_tiles(job, begin, end, s, 0, KIND, 0, 1, 0, vec_rows_grouped);           \
    }
VEC_TILES_GROUPED_(GATE_POST)
VEC_TILES_GROUPED_(GATE_SIGMOID)
VEC_TILES_GROUPED_(GATE_SIGMOID_BIAS)

static inline int vec_groups_use_tiles(const topk_job *job) {
    const size_t per_group = job->experts / (size_t)job->groups;
    return vec_gate_kind(job) != GATE_PRE && vec_uses_tiles(job) && job->groups <= TILE_MAX_GROUPS &&
           per_group % 8 == 0;
}

/* Noisy selection (softmax post, clean weights) by tiles: k = 1..3 exact, 4..8 packed;
 * rows the tiles do not settle go to the plain-C noisy row. */
#define VEC_TILES_NOISY_(K, NAME)                                                           \
    static topk_row_error vec_tiles_noisy_##NAME(const topk_job *job, size_t begin, size_t end, \
                                                 const topk_scratch *s) {                  \
        return vec_tiles(job, begin, end, s, K, GATE_POST, 0, 0, 1, topk_rows_noisy);       \
    }
VEC_TILES_NOISY_(1, 1)
VEC_TILES_NOISY_(2, 2)
VEC_TILES_NOISY_(3, 3)
VEC_TILES_NOISY_(0, packed)
static const vec_rows_fn vec_tile_kernels_noisy[TILE_MAX_K] = {
    vec_tiles_noisy_1, vec_tiles_noisy_2, vec_tiles_noisy_3, vec_tiles_noisy_packed,
    vec_tiles_noisy_packed, vec_tiles_noisy_packed, vec_tiles_noisy_packed, vec_tiles_noisy_packed};

static const vec_rows_fn vec_row_kernels[GATE_KINDS] = {
    vec_rows_GATE_POST, vec_rows_GATE_PRE, vec_rows_GATE_SIGMOID, vec_rows_GATE_SIGMOID_BIAS};

static topk_row_error vec_rows(const topk_job *job, size_t row_begin, size_t row_end,
                               const topk_scratch *scratch) {
    const int kind = vec_gate_kind(job);
    if (job->noise != NULL)
        return vec_uses_tiles(job) ? vec_tile_kernels_noisy[job->k - 1](job, row_begin, row_end, scratch)
                                   : topk_rows_noisy(job, row_begin, row_end, scratch);
    if (job->groups > 0) {
        if (!vec_groups_use_tiles(job)) return vec_rows_grouped(job, row_begin, row_end, scratch);
        if (kind == GATE_POST) return vec_tiles_grouped_GATE_POST(job, row_begin, row_end, scratch);
        if (kind == GATE_SIGMOID) return vec_tiles_grouped_GATE_SIGMOID(job, row_begin, row_end, scratch);
        return vec_tiles_grouped_GATE_SIGMOID_BIAS(job, row_begin, row_end, scratch);
    }
    if (job->experts == 8 && job->k <= EXACT_MAX_K)
        return vec_tile_kernels_e8[kind][job->k - 1](job, row_begin, row_end, scratch);
    if (vec_uses_tiles(job)) return vec_tile_kernels[kind][job->k - 1](job, row_begin, row_end, scratch);
    return vec_row_kernels[kind](job, row_begin, row_end, scratch);
}

/* Full softmax of rows for expert choice (topk_softmax_filter_fn), V_W rows at a time:
 * per lane, the max and the bad-data check, then exp and the sum in expert order, then the
 * division (the scalar reference's operations, in its order); each expert's V_W
 * probabilities are then one comparison with its bound. */
static topk_row_error vec_softmax_filter(const float *logits, size_t tokens, size_t experts, size_t row_begin,
                                         size_t row_end, const topk_candidates *cand, float *lse,
                                         float *row_max, float *row_sum, float *prob_block, float *tile) {
    const size_t E = experts;
    float *lanes = tile + TOPK_TILE_FLOATS(E); /* each expert's probabilities, lane by lane */
    memset(lanes, 0, E * V_W * sizeof(float));
    const vf neg_inf = vf_set1(-INFINITY);
    const float *bounds = cand->bounds;
    int32_t *cand_tokens = cand->tokens;
    float *cand_exps = cand->exps;
    size_t *count = cand->count;
    const size_t cap = cand->cap;
    size_t t = row_begin;
    for (; t + V_W <= row_end; t += V_W) {
        const float *base = logits + t * E;
        /* As the gate's tiles: fetch the rows a few tiles ahead. */
        const float *next = t + (TILE_PREFETCH_TILES + 1) * V_W <= tokens ? base + TILE_PREFETCH_TILES * V_W * E : NULL;
        vf M = neg_inf;
        vm bad = vm_none();
        for (size_t c0 = 0; c0 < E; c0 += 8) {
            const int n = E - c0 < 8 ? (int)(E - c0) : 8;
            if (next != NULL && (c0 & 15) == 0)
                for (int r = 0; r < V_W; r++) __builtin_prefetch(next + (size_t)r * E + c0);
            vf X[8];
            v_load_tile8(base + c0, E, n, -INFINITY, X);
            const vf sum8 = vf_add(vf_add(vf_add(X[0], X[1]), vf_add(X[2], X[3])),
                                   vf_add(vf_add(X[4], X[5]), vf_add(X[6], X[7])));
            bad = vm_or(bad, vm_bad(sum8));
            for (int c = 0; c < 8; c++) {
                M = vf_max(M, X[c]);
                vf_storeu(tile + (c0 + c) * V_W, X[c]);
            }
        }
        if (vm_bits(vm_or(bad, vm_eq(M, neg_inf))) != 0) { /* the rows name what is wrong */
            for (size_t r = t; r < t + V_W; r++) {
                topk_row_error err = topk_softmax_filter_row(logits, E, r, cand, lse, row_max, row_sum, prob_block);
                if (err.kind != TOPK_ROW_OK) return err;
            }
            continue;
        }
        /* moert_exp_shifted lane by lane: the same bits as the scalar rows. */
        vf S = vf_set1(0.0f);
        const vf log2e = vf_set1(MOERT_EXPF_LOG2E);
        for (size_t c = 0; c < E; c++) {
            const vf e = vf_exp2_stat(vf_mul(vf_sub(vf_loadu(tile + c * V_W), M), log2e));
            S = vf_add(S, e);
            vf_storeu(tile + c * V_W, e);
        }
        const vi tokens_v = vi_add(vi_iota(), vi_set1((int32_t)t));
        const vf inv = vf_div(vf_set1(1.0f), S); /* one division per row, not per entry */
        for (size_t c = 0; c < E; c++) {
            const vf e = vf_loadu(tile + c * V_W), p = vf_mul(e, inv);
            vf_storeu(lanes + c * V_W, vf_add(vf_loadu(lanes + c * V_W), p));
            /* Appended without a branch on the hits, which no predictor guesses: every lane
             * is written, the hits packed first. Near a full buffer the expert is marked
             * over-full instead (its selection then recomputes the column). */
            const uint32_t hits = vm_bits(vm_ge(p, vf_set1(bounds[c])));
            const size_t i = count[c];
            if (i + V_W <= cap)
                count[c] = i + (size_t)v_compress_store(cand_exps + c * cap + i, cand_tokens + c * cap + i, hits, e, tokens_v);
            else if (hits != 0)
                count[c] = cap + 1;
        }
        float ml[V_W], sl[V_W];
        vf_storeu(ml, M);
        vf_storeu(sl, S);
        for (int lane = 0; lane < V_W; lane++) {
            lse[t + lane] = ml[lane] + logf(sl[lane]);
            row_max[t + lane] = ml[lane], row_sum[t + lane] = sl[lane];
        }
    }
    for (size_t c = 0; c < E; c++) {
        float l[V_W];
        vf_storeu(l, vf_loadu(lanes + c * V_W));
        float sum = 0.0f;
        for (int lane = 0; lane < V_W; lane++) sum += l[lane];
        prob_block[c] += sum;
    }
    for (; t < row_end; t++) {
        topk_row_error err = topk_softmax_filter_row(logits, E, t, cand, lse, row_max, row_sum, prob_block);
        if (err.kind != TOPK_ROW_OK) return err;
    }
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

/* topk_compact_fn: a bit per key, 64 keys to a word, then the set bits in order. */
static size_t vec_compact(const float *x, size_t n, float bound, int32_t *out) {
    const vf b = vf_set1(bound);
    const size_t full = n / V_W;
    const int tail = (int)(n % V_W);
    size_t count = 0;
    for (size_t v0 = 0; v0 * V_W < n; v0 += 64 / V_W) {
        uint64_t word = 0;
        for (size_t v = v0; v < v0 + 64 / V_W && v <= full; v++) {
            vm m;
            if (v < full)
                m = vm_ge(vf_loadu(x + v * V_W), b);
            else if (tail > 0)
                m = vm_and(vm_ge(vf_load_part(x + v * V_W, tail, -INFINITY), b), vm_first(tail));
            else
                break;
            word |= (uint64_t)vm_bits(m) << ((v - v0) * V_W);
        }
        const int32_t base = (int32_t)(v0 * V_W);
        for (; word != 0; word &= word - 1) out[count++] = base + __builtin_ctzll(word);
    }
    return count;
}


/* found[0, count) with ids found_ids (ascending) into (ids, weights) by descending weight,
 * ties to the lower id. Up to two vectors of them by rank: entry j's place is the number
 * of entries above it (a greater weight, or an equal one with a lower id), all j counted
 * at once against each entry in turn, so no branch depends on the data. More go to the
 * shared heap sort. found and found_ids have room for count + V_W; the output may be
 * the input. */
static size_t vec_sort_found(const int32_t *found_ids, const float *found, size_t count, int32_t *ids,
                             float *weights) {
    if (count > 2 * V_W) {
        topk_sort_entries(found_ids, found, count, ids, weights);
        return count;
    }
    const int c = (int)count;
    const vf w0 = vf_load_part(found, c, 0.0f), w1 = vf_load_part(found + V_W, c > V_W ? c - V_W : 0, 0.0f);
    const vi i0 = vi_loadu(found_ids); /* junk past c: never placed */
    vi rank0 = vi_zero(), rank1 = vi_zero();
    for (int j = 0; j < c; j++) {
        /* Entry j is above the lanes with a smaller weight, and above the equal ones after
         * it (they have higher ids: the entries arrive by ascending id). */
        const vf b = vf_set1(found[j]);
        rank0 = vi_add_mask(rank0, vm_or(vm_gt(b, w0), vm_and(vm_eq(b, w0), vm_not(vm_first(j + 1)))));
        const vm after1 = vm_not(vm_first(j + 1 > V_W ? j + 1 - V_W : 0));
        rank1 = vi_add_mask(rank1, vm_or(vm_gt(b, w1), vm_and(vm_eq(b, w1), after1)));
    }
    if (c <= V_W) { /* the common case: one vector, placed in registers where the ISA can */
        v_place_by_rank(weights, ids, rank0, w0, i0, c);
        return count;
    }
    int32_t rank[2 * V_W], id[2 * V_W];
    float w[2 * V_W];
    vi_storeu(rank, rank0);
    vi_storeu(rank + V_W, rank1);
    memcpy(id, found_ids, (size_t)c * sizeof(int32_t)); /* the output may be the input */
    memcpy(w, found, (size_t)c * sizeof(float));
    for (int j = 0; j < c; j++) ids[rank[j]] = id[j], weights[rank[j]] = w[j];
    return count;
}

/* topk_relu_row_fn. The active entries are appended without a branch (every lane
 * written, the hits packed first), then sorted (vec_sort_found). */
static size_t vec_relu_row(const float *x, size_t n, float threshold, int32_t *ids, float *weights,
                           float *scratch) {
    int32_t *found_ids = (int32_t *)scratch;     /* [n + V_W] */
    float *found = scratch + n + V_W;              /* [n + V_W] */
    const vf thr = vf_set1(threshold), zero = vf_set1(0.0f);
    size_t count = 0, i = 0;
    for (; i + V_W <= n; i += V_W) {
        const vf w = vf_sub(vf_loadu(x + i), thr);
        count += (size_t)v_compress_store(found + count, found_ids + count, vm_bits(vm_gt(w, zero)), w,
                                          vi_add(vi_iota(), vi_set1((int32_t)i)));
    }
    if (i < n) {
        const int tail = (int)(n - i);
        const vf w = vf_sub(vf_load_part(x + i, tail, -INFINITY), thr);
        count += (size_t)v_compress_store(found + count, found_ids + count, vm_bits(vm_and(vm_gt(w, zero), vm_first(tail))),
                                          w, vi_add(vi_iota(), vi_set1((int32_t)i)));
    }
    return vec_sort_found(found_ids, found, count, ids, weights);
}

/* BatchTopK's scores of a vector of candidates' logits: exp(x - max) / sum lane by lane
 * (the scalar reference's operations), or the logits. */
VEC_INLINE vf vec_batch_score(vf x, float max, float sum, int probs) {
    if (!probs) return x;
    return vf_div(vf_exp2_stat(vf_mul(vf_sub(x, vf_set1(max)), vf_set1(MOERT_EXPF_LOG2E))), vf_set1(sum));
}

/* One row of BatchTopK's second pass: c candidates (logits x and experts id, ascending)
 * to their scores, sorted into (ids, scores); returns how many reach the bound, which the
 * sort puts first (the others are below it). ids and scores have room for max(c, V_W).
 *
 * Up to V_W candidates stay in registers, sorted by a network on unique 32-bit keys: a
 * score's distance from the bound in float order (the bit patterns of same-signed
 * floats are ordered as the floats), one more, times V_W, plus V_W - 1 - lane (ties to
 * the lower lane, which is the lower expert); the pads and the scores below the bound get
 * just that lane part, below every score that reaches it. The distance fits when the
 * row's largest possible score (1 for probabilities, the row max for logits) is within
 * 2^(31 - log2 V_W) - 1 patterns of the bound, which covers every bound above about
 * 1.5e-5 for probabilities; other rows and longer lists take topk_sort_entries. */
static size_t vec_batch_finish(float *x, const int32_t *id, size_t c, float max, float sum, const topk_batch_rows *b,
                               int32_t *ids, float *scores) {
    const vf bound = vf_set1(b->bound);
    enum { LANE_BITS = V_W == 16 ? 4 : 3 };
    const uint32_t base = topk_float_order(b->bound), top = topk_float_order(b->probs ? 1.0f : max);
    if (c <= V_W && top - base < (1u << (31 - LANE_BITS)) - 1u) {
        const int n = (int)c;
        const vf p = vec_batch_score(vf_load_part(x, n, 0.0f), max, sum, b->probs);
        const vm real = vm_and(vm_ge(p, bound), vm_first(n));
        /* topk_float_order lane by lane (the score itself keeps its sign). */
        const vi bits = vi_from_vf(vf_add(p, vf_set1(0.0f))), lane_part = vi_sub(vi_set1(V_W - 1), vi_iota());
        const vi order = vi_xor(bits, vi_or(vi_sra(bits, 31), vi_set1(INT32_MIN)));
        vi key = vi_add(vi_sub(order, vi_set1((int32_t)base)), vi_set1(1));
        for (int shift = 0; shift < LANE_BITS; shift++) key = vi_add(key, key);
        key = vi_or(vi_select(real, key, vi_zero()), lane_part);
        const vi origin = vi_sub(vi_set1(V_W - 1), vi_and(vi_sort_desc(key), vi_set1(V_W - 1)));
        vf_storeu(scores, vf_permute(p, origin));
        vi_storeu(ids, vi_permute(vi_loadu(id), origin));
        return (size_t)__builtin_popcount(vm_bits(real));
    }
    size_t real = 0;
    for (size_t j = 0; j < c; j += V_W) {
        const int lanes = c - j < V_W ? (int)(c - j) : V_W;
        const vf p = vec_batch_score(vf_load_part(x + j, lanes, 0.0f), max, sum, b->probs);
        vf_store_part(x + j, lanes, p);
        real += (size_t)__builtin_popcount(vm_bits(vm_and(vm_ge(p, bound), vm_first(lanes))));
    }
    topk_sort_entries(id, x, c, ids, scores);
    return real;
}

/* topk_batch_rows_fn, in two passes over the rows: each row's logits that pass the
 * comparison appended to scratch (every lane written, the hits packed first), then each
 * row's scores and sort (vec_batch_finish). The second pass reads what the first wrote
 * a block of rows earlier: right after the appends, its loads would span several stores
 * still in flight, which the store buffer cannot forward (on Zen 4 that stall cost more
 * than all the rest). The exponentials are taken for the candidates alone. */
static size_t vec_batch_rows(const float *logits, size_t rows, size_t E, const topk_batch_rows *b, int32_t *ids,
                             float *scores, uint32_t *counts, float *scratch) {
    float *found = scratch;                                     /* [rows E + V_W] */
    int32_t *found_ids = (int32_t *)(scratch + rows * E + V_W); /* [rows E + V_W] */
    size_t at = 0;
    for (size_t r = 0; r < rows; r++) {
        const float *x = logits + r * E;
        const vf logit_bound = vf_set1(b->logit_bound[r]);
        size_t count = 0;
        vi id = vi_iota(); /* stepped by an addition: no broadcast from a general register */
        for (size_t i = 0; i < E; i += V_W, id = vi_add(id, vi_set1(V_W))) {
            const int lanes = E - i < V_W ? (int)(E - i) : V_W;
            const vf v = lanes == V_W ? vf_loadu(x + i) : vf_load_part(x + i, lanes, -INFINITY);
            const vm hit = vm_and(vm_ge(v, logit_bound), vm_first(lanes));
            count += (size_t)v_compress_store(found + at + count, found_ids + at + count, vm_bits(hit), v, id);
        }
        counts[r] = (uint32_t)count;
        at += count;
    }
    size_t total = 0;
    at = 0;
    for (size_t r = 0; r < rows; r++) {
        const size_t c = counts[r];
        counts[r] = (uint32_t)vec_batch_finish(found + at, found_ids + at, c, b->max[r], b->sum[r], b, ids + total,
                                               scores + total);
        total += counts[r], at += c;
    }
    return total;
}

#endif /* MOERT_TOPK_VECTOR_IMPL_H */

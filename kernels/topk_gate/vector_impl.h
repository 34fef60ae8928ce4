/* Internal: the vectorised top-k gate, written once over a V_W-lane vocabulary
 * (simd_avx2.h, simd_avx512.h, simd_emu16.h) and compiled once per variant.
 *
 * Two kernels, chosen per call by shape:
 *
 * Tiles (experts <= TILE_MAX_EXPERTS, k <= TILE_MAX_K): V_W tokens at a time, one token
 * per lane. A tile of logits is transposed so that vector e holds expert e of V_W
 * tokens; a branch-free insertion network keeps each lane's best k. Small rows cost no
 * horizontal work at all.
 *
 * Rows (any shape): per token,
 *   sweep 1 reads the row once: NaN/+inf check, the max of each of 16 interleaved stripes
 *     of keys, and the online normaliser (a running max and rescaled sum, per block of
 *     ROW_BLOCK_VECS vectors) when softmax pre, the logsumexp or the probabilities need it;
 *   the k-th largest of the 16 stripe maxima (k <= 16) is a lower bound L for the row's
 *     k-th largest key: those maxima are 16 distinct elements;
 *   sweep 2 (the row is in L1 now) left-packs the candidates, keys >= L, in index order;
 *     on Gaussian logits that leaves about 10 of 64..256 experts for k = 8;
 *   up to 16 candidates are ranked exactly by comparison masks; more go to the heap.
 * Rows with k > 16 use sweep 1 and the heap.
 *
 * Selection and the post/sigmoid weights evaluate the scalar reference's operations lane
 * by lane, so they are bit-identical to it. */
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
#define TILE_MAX_EXPERTS 32
#define TILE_MAX_K 4

static inline int vec_needs_normaliser(const topk_job *job) {
    return (job->score == MOERT_SCORE_SOFTMAX && job->order == MOERT_SOFTMAX_PRE) ||
           job->logsumexp != NULL || job->want_probs;
}

/* topk_weights_inplace for k <= 16, vectorised with the same per-element operations and
 * the same sequential sums. sel: the k selected logits, readable to 16 entries (lanes
 * past k are computed and dropped). */
static inline void vec_weights16(const topk_job *job, const float *sel, float row_max,
                                 float row_sum, float *out) {
    const int k = job->k;
    const int regs = (k + V_W - 1) / V_W;
    vf w[STRIPE_REGS];
    float tmp[16];
    int sum_it = 0;
    float sum_bias = 0.0f;
    if (job->score == MOERT_SCORE_SIGMOID) {
        for (int r = 0; r < regs; r++) w[r] = vf_sigmoid(vf_loadu(sel + r * V_W));
        sum_it = job->renormalize;
        sum_bias = 1e-20f;
    } else if (job->order == MOERT_SOFTMAX_POST) {
        const vf first = vf_set1(sel[0]);
        for (int r = 0; r < regs; r++) w[r] = vf_exp(vf_sub(vf_loadu(sel + r * V_W), first));
        sum_it = 1;
    } else {
        const vf m = vf_set1(row_max), s = vf_set1(row_sum);
        for (int r = 0; r < regs; r++) w[r] = vf_div(vf_exp(vf_sub(vf_loadu(sel + r * V_W), m)), s);
        sum_it = job->renormalize;
    }
    if (sum_it) {
        for (int r = 0; r < regs; r++) vf_storeu(tmp + r * V_W, w[r]);
        float sum = 0.0f;
        for (int j = 0; j < k; j++) sum += tmp[j];
        if (sum_bias != 0.0f) sum += sum_bias;
        const vf s = vf_set1(sum);
        for (int r = 0; r < regs; r++) w[r] = vf_div(w[r], s);
    }
    if (job->scaling != 1.0f) {
        const vf s = vf_set1(job->scaling);
        for (int r = 0; r < regs; r++) w[r] = vf_mul(w[r], s);
    }
    for (int r = 0; r < regs; r++) {
        const int n = k - r * V_W;
        if (n >= V_W)
            vf_storeu(out + r * V_W, w[r]);
        else
            vf_store_part(out + r * V_W, n, w[r]);
    }
}

/* The exact top-k among c <= 16 candidates (keys padded with -inf to 16, in index order).
 * Ranks first by "how many keys are greater", which is exact when keys are distinct;
 * if two keys tie, ranks collide and the tie-aware count decides: a candidate's rank is
 * then the number before it with a key >= its own plus those after it with a key > its
 * own, which sends ties to the lower index. */
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
    float slot_key[ROW_MAX_K + 1];
    int32_t slot_id[ROW_MAX_K + 1];
    uint32_t seen = 0;
    for (int i = 0; i < c; i++) {
        const int32_t r = ranks[i];
        seen |= 1u << r;
        const int slot = r < k ? r : ROW_MAX_K;
        slot_key[slot] = cand_keys[i];
        slot_id[slot] = cand_idx[i];
    }
    if (seen != (1u << c) - 1u) { /* a tie: rank again, tie-aware */
        for (int i = 0; i < c; i++) {
            const vf mine = vf_set1(cand_keys[i]);
            uint32_t ge = 0, gt = 0;
            for (int r = 0; r < regs; r++) {
                ge |= vm_bits(vm_ge(keys[r], mine)) << (r * V_W);
                gt |= vm_bits(vm_gt(keys[r], mine)) << (r * V_W);
            }
            const uint32_t before = (1u << i) - 1u;
            const int r = __builtin_popcount((ge & before) | (gt & ~before & ((1u << c) - 1u)));
            const int slot = r < k ? r : ROW_MAX_K;
            slot_key[slot] = cand_keys[i];
            slot_id[slot] = cand_idx[i];
        }
    }
    for (int j = 0; j < k; j++) {
        top_keys[j] = slot_key[j];
        top_ids[j] = slot_id[j];
    }
}

static inline vf row_load(const float *p, size_t v, size_t full, int tail) {
    return v < full ? vf_loadu(p + v * V_W) : vf_load_part(p + v * V_W, tail, -INFINITY);
}

/* One token by the row kernel. */
static topk_row_error vec_row(const topk_job *job, size_t t, const topk_scratch *scratch) {
    const size_t E = job->experts;
    const int k = job->k;
    const float *x = job->logits + t * E;
    const int normalise = vec_needs_normaliser(job);
    const int biased = job->bias != NULL;
    const size_t full = E / V_W;
    const int tail = (int)(E % V_W);
    const size_t nvec = full + (tail > 0);
    const vf neg_inf = vf_set1(-INFINITY);

    /* Sweep 1: stripe r takes vectors r, r + STRIPE_REGS, ... of the keys. */
    vf stripe[STRIPE_REGS];
    for (int r = 0; r < STRIPE_REGS; r++) stripe[r] = neg_inf;
    vf logit_max = neg_inf;
    vm bad = vm_none();
    float m = -INFINITY;
    vf sum = vf_set1(0.0f);
    if (!biased && !normalise) {
        /* The hot path: keys are the logits and nothing else is needed. */
        size_t v = 0;
        for (; v + STRIPE_REGS <= full; v += STRIPE_REGS)
            for (int r = 0; r < STRIPE_REGS; r++) {
                const vf xv = vf_loadu(x + (v + r) * V_W);
                bad = vm_or(bad, vm_bad(xv));
                stripe[r] = vf_max(stripe[r], xv);
            }
        for (; v < nvec; v++) { /* stripes stay disjoint whichever one takes these */
            const vf xv = row_load(x, v, full, tail);
            bad = vm_or(bad, vm_bad(xv));
            stripe[0] = vf_max(stripe[0], xv);
        }
        for (int r = 0; r < STRIPE_REGS; r++) logit_max = vf_max(logit_max, stripe[r]);
    } else {
        const vm tail_lanes = vm_first(tail);
        for (size_t v0 = 0; v0 < nvec; v0 += ROW_BLOCK_VECS) {
            const size_t v1 = v0 + ROW_BLOCK_VECS < nvec ? v0 + ROW_BLOCK_VECS : nvec;
            vf block_max = neg_inf;
            for (size_t v = v0; v < v1; v += STRIPE_REGS)
                for (int r = 0; r < STRIPE_REGS; r++) {
                    if (v + r >= v1) break;
                    const vf xv = row_load(x, v + r, full, tail);
                    bad = vm_or(bad, vm_bad(xv));
                    block_max = vf_max(block_max, xv);
                    vf key = xv;
                    if (biased) {
                        const vf b = v + r < full ? vf_loadu(job->bias + (v + r) * V_W)
                                                  : vf_load_part(job->bias + (v + r) * V_W, tail, 0.0f);
                        key = vf_add(vf_sigmoid(xv), b);
                        if (v + r == full) key = vf_select(tail_lanes, key, neg_inf);
                        vf_storeu(scratch->keys + (v + r) * V_W, key);
                    }
                    stripe[r] = vf_max(stripe[r], key);
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
                    for (size_t v = v0; v < v1; v++)
                        sum = vf_add(sum, vf_exp(vf_sub(row_load(x, v, full, tail), mv)));
                }
            }
        }
    }
    if (vm_bits(bad) != 0) return topk_find_bad(x, E, t);
    const float row_max = vf_hmax(logit_max);
    if (row_max == -INFINITY) return topk_find_bad(x, E, t);
    const float row_sum = normalise ? vf_hsum(sum) : 0.0f;

    int32_t *ids = job->ids + t * (size_t)k;
    float *w = job->weights + t * (size_t)k;
    const float *keys = biased ? scratch->keys : x;
    if (k <= ROW_MAX_K) {
        /* Sweep 2: candidate bits, 64 keys to a word, then their keys and indices. */
        const vf bound = vf_set1(v_kth_largest16(stripe, k));
        float cand_keys[ROW_CAND_CAP + 16];
        int32_t cand_idx[ROW_CAND_CAP + 16];
        int c = 0;
        for (size_t v0 = 0; v0 < nvec && c <= ROW_CAND_CAP; v0 += 64 / V_W) {
            const size_t v1 = v0 + 64 / V_W < nvec ? v0 + 64 / V_W : nvec;
            uint64_t word = 0;
            for (size_t v = v0; v < v1; v++) {
                vm take = vm_ge(row_load(keys, v, full, tail), bound);
                if (v == full) take = vm_and(take, vm_first(tail));
                word |= (uint64_t)vm_bits(take) << ((v - v0) * V_W);
            }
            if (c + __builtin_popcountll(word) > ROW_CAND_CAP) {
                c = ROW_CAND_CAP + 1;
                break;
            }
            const size_t base = v0 * V_W;
            for (; word != 0; word &= word - 1) {
                const size_t e = base + (size_t)__builtin_ctzll(word);
                cand_keys[c] = keys[e];
                cand_idx[c] = (int32_t)e;
                c++;
            }
        }
        float top_keys[ROW_MAX_K];
        if (c <= 16) {
            vf_storeu(cand_keys + c, neg_inf);
            if (V_W < 16) vf_storeu(cand_keys + c + V_W, neg_inf);
            vec_rank16(cand_keys, cand_idx, c, k, top_keys, ids);
        } else if (c <= ROW_CAND_CAP) {
            topk_select_heap(cand_keys, cand_idx, (size_t)c, k, top_keys, ids);
        } else {
            topk_select_heap(keys, NULL, E, k, w, ids);
            for (int j = 0; j < k; j++) top_keys[j] = x[ids[j]];
        }
        float sel[16 + V_W];
        if (biased)
            for (int j = 0; j < k; j++) sel[j] = x[ids[j]];
        else
            memcpy(sel, top_keys, sizeof top_keys);
        for (int j = k; j < 16; j++) sel[j] = sel[0];
        vec_weights16(job, sel, row_max, row_sum, w);
    } else {
        topk_select_heap(keys, NULL, E, k, w, ids);
        for (int j = 0; j < k; j++) w[j] = x[ids[j]];
        topk_weights_inplace(job, w, row_max, row_sum);
    }

    if (job->logsumexp != NULL) job->logsumexp[t] = row_max + logf(row_sum);
    if (job->want_probs) {
        const vf mv = vf_set1(row_max), sv = vf_set1(row_sum);
        float *acc = scratch->prob_block; /* has V_W of slack past E */
        for (size_t v = 0; v < nvec; v++)
            vf_storeu(acc + v * V_W, vf_add(vf_loadu(acc + v * V_W),
                                            vf_div(vf_exp(vf_sub(row_load(x, v, full, tail), mv)), sv)));
    }
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

static inline int vec_uses_tiles(const topk_job *job) {
    return job->experts <= TILE_MAX_EXPERTS && job->k <= TILE_MAX_K;
}

/* V_W tokens from row t by the tile kernel. Returns 0, or 1 without writing anything
 * when the tile holds bad data (the caller then finds it row by row). */
static int vec_tile(const topk_job *job, size_t t, const topk_scratch *scratch) {
    const int E = (int)job->experts;
    const int k = job->k;
    const int biased = job->bias != NULL;
    const float *base = job->logits + t * (size_t)E;

    vf X[TILE_MAX_EXPERTS];
    for (int c0 = 0; c0 < E; c0 += 8) v_load_tile8(base + c0, (size_t)E, E - c0 < 8 ? E - c0 : 8, X + c0);

    vm bad = vm_bad(X[0]);
    vf M = X[0];
    for (int e = 1; e < E; e++) {
        bad = vm_or(bad, vm_bad(X[e]));
        M = vf_max(M, X[e]);
    }
    if (vm_bits(bad) != 0 || vm_bits(vm_eq(M, vf_set1(-INFINITY))) != 0) return 1;

    /* Insertion network: lane by lane, B[0..k) holds the best keys so far in selection
     * order. A new key enters above the first entry it strictly beats (an equal key has a
     * lower index, so it stays ahead); from there down every entry shifts one level. */
    vf B[TILE_MAX_K], BX[TILE_MAX_K];
    vi I[TILE_MAX_K];
    for (int e = 0; e < E; e++) {
        vf key = X[e], logit = X[e];
        if (biased) key = vf_add(vf_sigmoid(X[e]), vf_set1(job->bias[e]));
        vi id = vi_set1(e);
        const int levels = e < k ? e : k;
        vm moved = vm_none();
        for (int j = 0; j < levels; j++) {
            const vm gt = vm_or(moved, vm_gt(key, B[j]));
            moved = gt;
            const vf nb = vf_select(gt, key, B[j]);
            key = vf_select(gt, B[j], key);
            B[j] = nb;
            const vi ni = vi_select(gt, id, I[j]);
            id = vi_select(gt, I[j], id);
            I[j] = ni;
            if (biased) {
                const vf nx = vf_select(gt, logit, BX[j]);
                logit = vf_select(gt, BX[j], logit);
                BX[j] = nx;
            }
        }
        if (e < k) {
            B[e] = key;
            I[e] = id;
            BX[e] = logit;
        }
    }
    const vf *sel = biased ? BX : B;

    vf S = vf_set1(0.0f);
    if (vec_needs_normaliser(job))
        for (int e = 0; e < E; e++) S = vf_add(S, vf_exp(vf_sub(X[e], M)));

    /* Weights: topk_weights_inplace, lane by lane. */
    vf W[TILE_MAX_K];
    int sum_it = 0;
    float sum_bias = 0.0f;
    if (job->score == MOERT_SCORE_SIGMOID) {
        for (int j = 0; j < k; j++) W[j] = vf_sigmoid(sel[j]);
        sum_it = job->renormalize;
        sum_bias = 1e-20f;
    } else if (job->order == MOERT_SOFTMAX_POST) {
        for (int j = 0; j < k; j++) W[j] = vf_exp(vf_sub(sel[j], sel[0]));
        sum_it = 1;
    } else {
        for (int j = 0; j < k; j++) W[j] = vf_div(vf_exp(vf_sub(sel[j], M)), S);
        sum_it = job->renormalize;
    }
    if (sum_it) {
        vf sum = vf_set1(0.0f);
        for (int j = 0; j < k; j++) sum = vf_add(sum, W[j]);
        if (sum_bias != 0.0f) sum = vf_add(sum, vf_set1(sum_bias));
        for (int j = 0; j < k; j++) W[j] = vf_div(W[j], sum);
    }
    if (job->scaling != 1.0f)
        for (int j = 0; j < k; j++) W[j] = vf_mul(W[j], vf_set1(job->scaling));

    /* Lanes back to rows: out[(t + lane) * k + j]. */
    float wt[TILE_MAX_K][V_W];
    int32_t it[TILE_MAX_K][V_W];
    for (int j = 0; j < k; j++) {
        vf_storeu(wt[j], W[j]);
        vi_storeu(it[j], I[j]);
    }
    float *wo = job->weights + t * (size_t)k;
    int32_t *io = job->ids + t * (size_t)k;
    for (int lane = 0; lane < V_W; lane++)
        for (int j = 0; j < k; j++) {
            wo[lane * k + j] = wt[j][lane];
            io[lane * k + j] = it[j][lane];
        }

    if (job->logsumexp != NULL || job->want_probs) {
        float ml[V_W], sl[V_W];
        vf_storeu(ml, M);
        vf_storeu(sl, S);
        if (job->logsumexp != NULL)
            for (int lane = 0; lane < V_W; lane++) job->logsumexp[t + lane] = ml[lane] + logf(sl[lane]);
        if (job->want_probs) {
            /* Lane by lane in token order, as the scalar reference adds them. */
            for (int e = 0; e < E; e++) {
                float p[V_W];
                vf_storeu(p, vf_div(vf_exp(vf_sub(X[e], M)), S));
                float acc = scratch->prob_block[e];
                for (int lane = 0; lane < V_W; lane++) acc += p[lane];
                scratch->prob_block[e] = acc;
            }
        }
    }
    return 0;
}

static topk_row_error vec_rows(const topk_job *job, size_t row_begin, size_t row_end,
                               const topk_scratch *scratch) {
    size_t t = row_begin;
    if (vec_uses_tiles(job)) {
        for (; t + V_W <= row_end; t += V_W) {
            if (vec_tile(job, t, scratch) == 0) continue;
            for (size_t r = t; r < t + V_W; r++) {
                topk_row_error err = vec_row(job, r, scratch);
                if (err.kind != TOPK_ROW_OK) return err;
            }
        }
    }
    for (; t < row_end; t++) {
        topk_row_error err = vec_row(job, t, scratch);
        if (err.kind != TOPK_ROW_OK) return err;
    }
    return (topk_row_error){TOPK_ROW_OK, 0, 0};
}

#endif /* MOERT_TOPK_VECTOR_IMPL_H */

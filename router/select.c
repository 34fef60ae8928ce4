/* Selecting the `count` largest of n values, ties to the lower index, in linear time:
 * a radix select on order-preserving bit patterns (for each over-full expert under the
 * `probs` drop policy), and, for expert choice's columns, a sampled bound that narrows
 * the column to a few candidates in one vector pass before the radix select. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "router/internal.h"

typedef struct candidate {
    uint32_t key;
    uint32_t index;
} candidate;

/* Descending key, ties to the lower index. */
static int by_rank(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

#define SELECT_BITS 12
#define SELECT_BINS (1u << SELECT_BITS)
_Static_assert(SELECT_BINS == ROUTER_SELECT_BINS, "the scratch's histogram has a bin per digit");

/* The bin (of SELECT_BINS, the digits of key >> shift) that holds the need-th largest of
 * the candidates, and how many candidates lie in higher bins. hist: SELECT_BINS counters. */
static uint32_t bin_of(const uint32_t *hist, size_t need, size_t *higher);

static uint32_t find_bin(const candidate *c, size_t n, int shift, size_t need, size_t *above, uint32_t *hist) {
    memset(hist, 0, SELECT_BINS * sizeof *hist);
    for (size_t i = 0; i < n; i++) hist[(c[i].key >> shift) & (SELECT_BINS - 1)]++;
    return bin_of(hist, need, above);
}

void router_select_largest(const float *values, size_t n, size_t stride, size_t count,
                           uint8_t *keep, size_t keep_stride, void *scratch) {
    for (size_t i = 0; i < n; i++) keep[i * keep_stride] = 0;
    if (count == 0 || n == 0) return;
    candidate *c = scratch;
    uint32_t *hist = (uint32_t *)(c + n);
    for (size_t i = 0; i < n; i++) c[i] = (candidate){topk_float_order(values[i * stride]), (uint32_t)i};

    /* Narrow the candidates to those sharing the count-th largest's leading digits,
     * 12 bits at a time, keeping everything above them; then sort the few left. */
    size_t m = n, need = count;
    for (int shift = 32 - SELECT_BITS; shift >= 0 && m > 64; shift -= SELECT_BITS) {
        size_t above;
        const uint32_t bin = find_bin(c, m, shift, need, &above, hist);
        size_t kept = 0;
        for (size_t i = 0; i < m; i++) {
            const uint32_t digit = (c[i].key >> shift) & (SELECT_BINS - 1);
            if (digit > bin)
                keep[c[i].index * keep_stride] = 1;
            else if (digit == bin)
                c[kept++] = c[i]; /* stays in index order */
        }
        m = kept;
        need -= above;
    }
    qsort(c, m, sizeof *c, by_rank);
    for (size_t i = 0; i < need && i < m; i++) keep[c[i].index * keep_stride] = 1;
}

static float key_value(uint32_t key) {
    const uint32_t u = (key & 0x80000000u) ? key & 0x7FFFFFFFu : ~key;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* The bin of `need`-th largest among hist[0, SELECT_BINS), and how many lie in higher bins. */
static uint32_t bin_of(const uint32_t *hist, size_t need, size_t *higher) {
    size_t acc = 0;
    uint32_t bin = SELECT_BINS - 1;
    for (;; bin--) {
        if (acc + hist[bin] >= need || bin == 0) break;
        acc += hist[bin];
    }
    *higher = acc;
    return bin;
}

/* keys[i] = the order of values[i], and the keys' range. */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static void
keys_and_range(const float *values, size_t n, uint32_t *keys, uint32_t *lo, uint32_t *hi) {
    uint32_t l = UINT32_MAX, h = 0;
    for (size_t i = 0; i < n; i++) {
        const uint32_t key = topk_float_order(values[i]);
        keys[i] = key;
        l = key < l ? key : l;
        h = key > h ? key : h;
    }
    *lo = l, *hi = h;
}

/* keys[i0, i1)'s digits (key - lo) >> shift counted into hist. */
static void count_digits(const uint32_t *keys, size_t i0, size_t i1, uint32_t lo, int shift, uint32_t *hist) {
    for (size_t i = i0; i < i1; i++) hist[(keys[i] - lo) >> shift]++;
}

/* keys[i0, i1)'s keys of digit `bin` packed at keys + i0 (branch-free: every key written,
 * the bin's kept); returns how many. */
static size_t keep_digit(uint32_t *keys, size_t i0, size_t i1, uint32_t lo, int shift, uint32_t bin) {
    size_t kept = i0;
    for (size_t i = i0; i < i1; i++) {
        const uint32_t key = keys[i];
        keys[kept] = key;
        kept += ((key - lo) >> shift) == bin;
    }
    return kept - i0;
}

float router_select_threshold(const float *values, size_t n, size_t count, size_t *above, void *scratch, int threads) {
    if (threads < 1 || n < 65536) threads = 1;
    /* scratch: the parts' kept counts (8-byte aligned first), their ranges, the keys, the
     * parts' histograms. */
    size_t *part_kept = scratch;
    uint32_t *part_range = (uint32_t *)(part_kept + threads), *keys = part_range + 2 * (size_t)threads;
    uint32_t *hist = keys + n;
    /* The keys and their range, in parts. The digits span the keys' own range (min to max),
     * not fixed bits: a batch's scores crowd into a few exponents, which fixed leading bits
     * would put in a few bins. Each loop is over parts, not threads: however many threads run
     * share it. */
    uint32_t lo = UINT32_MAX, hi = 0;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int u = 0; u < threads; u++) {
        const size_t i0 = n * (size_t)u / (size_t)threads, i1 = n * (size_t)(u + 1) / (size_t)threads;
        keys_and_range(values + i0, i1 - i0, keys + i0, &part_range[2 * u], &part_range[2 * u + 1]);
    }
    for (int u = 0; u < threads; u++) {
        lo = part_range[2 * u] < lo ? part_range[2 * u] : lo;
        hi = part_range[2 * u + 1] > hi ? part_range[2 * u + 1] : hi;
    }
    size_t m = n, need = count, total_above = 0;
    for (int round = 0; hi > lo; round++) {
        int shift = 0;
        while (((hi - lo) >> shift) >= SELECT_BINS) shift++;
        /* The first round in the parts (each its histogram, its bin's keys packed in its
         * part, then the parts packed); the later ones, over the few keys left, whole. */
        const int p = round == 0 ? threads : 1;
        memset(hist, 0, (size_t)p * SELECT_BINS * sizeof *hist);
#pragma omp parallel for schedule(static) num_threads(p) if (p > 1)
        for (int u = 0; u < p; u++)
            count_digits(keys, m * (size_t)u / (size_t)p, m * (size_t)(u + 1) / (size_t)p, lo, shift,
                         hist + (size_t)u * SELECT_BINS);
        for (int v = 1; v < p; v++)
            for (uint32_t d = 0; d < SELECT_BINS; d++) hist[d] += hist[(size_t)v * SELECT_BINS + d];
        size_t higher;
        const uint32_t bin = bin_of(hist, need, &higher);
#pragma omp parallel for schedule(static) num_threads(p) if (p > 1)
        for (int u = 0; u < p; u++)
            part_kept[u] = keep_digit(keys, m * (size_t)u / (size_t)p, m * (size_t)(u + 1) / (size_t)p, lo, shift, bin);
        size_t kept = 0;
        for (int u = 0; u < p; u++) {
            const size_t i0 = m * (size_t)u / (size_t)p;
            if (i0 != kept) memmove(keys + kept, keys + i0, part_kept[u] * sizeof *keys);
            kept += part_kept[u];
        }
        m = kept;
        need -= higher, total_above += higher;
        /* The bin's range: lo + bin 2^shift up to the smaller of its end and hi. */
        const uint32_t bin_lo = lo + (bin << shift);
        const uint64_t bin_hi = (uint64_t)bin_lo + ((1ull << shift) - 1u);
        lo = bin_lo, hi = bin_hi < hi ? (uint32_t)bin_hi : hi;
        if (shift == 0) break;
    }
    /* lo is the key (the range closed on it, or every key was equal). */
    *above = total_above;
    return key_value(lo);
}

/* The r-th largest (1-based) of a[0, n), reordering a: quickselect with a three-way
 * partition (greater, equal, less than the middle element). */
float router_nth_largest(float *a, size_t n, size_t r) {
    size_t lo = 0, hi = n;
    const size_t want = r - 1;
    while (hi - lo > 1) {
        const float pivot = a[lo + (hi - lo) / 2];
        size_t greater = lo, i = lo, less = hi;
        while (i < less) {
            const float v = a[i];
            if (v > pivot) {
                a[i++] = a[greater];
                a[greater++] = v;
            } else if (v < pivot) {
                a[i] = a[--less];
                a[less] = v;
            } else {
                i++;
            }
        }
        if (want < greater)
            hi = greater;
        else if (want >= less)
            lo = less;
        else
            return pivot;
    }
    return a[lo];
}

/* router_select_top samples a bound that a few more than `count` values reach: those are
 * collected in one vector pass, and the exact top `count` chosen among them. Only worth
 * it when count is a small part of n. */
#define ROUTER_TOP_SAMPLES 256

void router_select_top(const float *values, size_t n, size_t count, topk_compact_fn compact,
                       int32_t *chosen, void *scratch) {
    if (count >= n) {
        for (size_t i = 0; i < n; i++) chosen[i] = (int32_t)i;
        return;
    }
    if (count == 0) return;
    int32_t *cand = scratch;                     /* [n] */
    float *cand_values = (float *)(cand + n);    /* [n] */
    uint8_t *marks = (uint8_t *)(cand_values + n); /* [n] */
    void *radix = (uint8_t *)scratch + 8 * n + ((n + 63) & ~(size_t)63); /* ROUTER_SELECT_SCRATCH(n) */
    size_t m = 0;
    if (n >= 8 * ROUTER_TOP_SAMPLES && count * 16 <= n) {
        /* A deterministic sample; the bound is its r-th largest with r several standard
         * deviations above the expected count * s / n, so that, but for unlikely luck,
         * at least count values reach it. */
        float sample[ROUTER_TOP_SAMPLES];
        for (size_t i = 0; i < ROUTER_TOP_SAMPLES; i++) sample[i] = values[i * n / ROUTER_TOP_SAMPLES];
        const double expected = (double)count * ROUTER_TOP_SAMPLES / (double)n;
        const size_t r = (size_t)(expected + 4.0 * sqrt(expected) + 4.0);
        if (r < ROUTER_TOP_SAMPLES) {
            const float bound = router_nth_largest(sample, ROUTER_TOP_SAMPLES, r);
            m = compact(values, n, bound, cand);
            if (m < count) m = 0; /* unlucky: everything below */
        }
    }
    if (m == 0) {
        router_select_largest(values, n, 1, count, marks, 1, radix);
        size_t out = 0;
        for (size_t i = 0; i < n; i++)
            if (marks[i]) chosen[out++] = (int32_t)i;
        return;
    }
    for (size_t j = 0; j < m; j++) cand_values[j] = values[cand[j]];
    router_select_largest(cand_values, m, 1, count, marks, 1, radix);
    size_t out = 0;
    for (size_t j = 0; j < m; j++)
        if (marks[j]) chosen[out++] = cand[j];
}

void router_select_top_of(const int32_t *ids, const float *values, size_t m, size_t count, int32_t *chosen,
                          float *chosen_values, float *scratch) {
    if (count > m) count = m;
    if (count == 0) return;
    /* Bin the values by a histogram over [min, max] (the bin, (v - min) * scale in float,
     * is monotone in v: a higher bin never holds a smaller value); every value in a bin
     * above the one holding the count-th largest is chosen; that bin's few values decide
     * the rest. */
    float lo = values[0], hi = values[0];
    for (size_t j = 1; j < m; j++) {
        lo = values[j] < lo ? values[j] : lo;
        hi = values[j] > hi ? values[j] : hi;
    }
    size_t bins = 64;
    while (bins < m && bins < ROUTER_TOP_OF_BINS) bins *= 2;
    /* (hi - lo) in double: it may overflow float */
    const float scale = hi > lo ? (float)((double)(bins - 1) / ((double)hi - (double)lo)) : 0.0f;
    uint32_t *hist = (uint32_t *)scratch;
    uint16_t *bin = (uint16_t *)(hist + ROUTER_TOP_OF_BINS);
    float *in_bin = (float *)(bin + ((m + 3) & ~(size_t)1)); /* an even count of uint16: float-aligned */
    memset(hist, 0, bins * sizeof(uint32_t));
    for (size_t j = 0; j < m; j++) {
        float b = (values[j] - lo) * scale; /* inf - inf is NaN: clamped below */
        b = b < (float)(bins - 1) ? b : (float)(bins - 1);
        bin[j] = (uint16_t)(b > 0.0f ? b : 0.0f);
        hist[bin[j]]++;
    }
    /* The bin of the count-th largest: the one where the values below reach m - count.
     * Counted from the bottom, where the values crowd (a list of the largest values has
     * a sparse top: scanning down from it crosses many empty bins). */
    size_t b = 0, below = 0;
    while (below + hist[b] <= m - count) below += hist[b++];
    const size_t above = m - below - hist[b];
    size_t n_in_bin = 0;
    for (size_t j = 0; j < m; j++)
        if (bin[j] == b) in_bin[n_in_bin++] = values[j];
    const size_t need = count - above;
    const float threshold = router_nth_largest(in_bin, n_in_bin, need);
    size_t greater = 0;
    for (size_t j = 0; j < n_in_bin; j++) greater += in_bin[j] > threshold;
    /* Without a branch on which values are taken (about half, in no order a predictor
     * could follow): every value is written at `out`, which moves on only when taken.
     * Exactly `count` are taken, so the loop stops at the last one and never writes past
     * chosen[count - 1]. */
    size_t equal_left = need - greater, out = 0;
    for (size_t j = 0; out < count; j++) {
        const int in_bin_b = bin[j] == b;
        const int tie = in_bin_b & (values[j] == threshold) & (equal_left > 0);
        const int take = (bin[j] > b) | (in_bin_b & (values[j] > threshold)) | tie;
        equal_left -= (size_t)tie;
        chosen[out] = ids[j], chosen_values[out] = values[j];
        out += (size_t)take;
    }
}

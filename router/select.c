/* Selecting the `count` largest of n values, ties to the lower index, in linear time:
 * a radix select on order-preserving bit patterns. Used for each expert's column in
 * expert choice and for each over-full expert under the `probs` drop policy. */
#include <stdlib.h>
#include <string.h>

#include "router/internal.h"

/* The float's order as an unsigned integer; -0 and +0 map alike, since they are equal. */
static uint32_t ordered_key(float x) {
    x += 0.0f; /* -0 becomes +0 */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

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

/* The bin (of SELECT_BINS, the digits of key >> shift) that holds the need-th largest of
 * the candidates, and how many candidates lie in higher bins. */
static uint32_t find_bin(const candidate *c, size_t n, int shift, size_t need, size_t *above) {
    static _Thread_local uint32_t hist[SELECT_BINS];
    memset(hist, 0, sizeof hist);
    for (size_t i = 0; i < n; i++) hist[(c[i].key >> shift) & (SELECT_BINS - 1)]++;
    size_t acc = 0;
    uint32_t b = SELECT_BINS - 1;
    for (;; b--) {
        if (acc + hist[b] >= need || b == 0) break;
        acc += hist[b];
    }
    *above = acc;
    return b;
}

void router_select_largest(const float *values, size_t n, size_t stride, size_t count,
                           uint8_t *keep, size_t keep_stride, void *scratch) {
    for (size_t i = 0; i < n; i++) keep[i * keep_stride] = 0;
    if (count == 0 || n == 0) return;
    candidate *c = scratch;
    for (size_t i = 0; i < n; i++) c[i] = (candidate){ordered_key(values[i * stride]), (uint32_t)i};

    /* Narrow the candidates to those sharing the count-th largest's leading digits,
     * 12 bits at a time, keeping everything above them; then sort the few left. */
    size_t m = n, need = count;
    for (int shift = 32 - SELECT_BITS; shift >= 0 && m > 64; shift -= SELECT_BITS) {
        size_t above;
        const uint32_t bin = find_bin(c, m, shift, need, &above);
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

/* Internal: the 16-lane vector vocabulary of vector_impl.h in portable C, one loop per
 * operation. It runs the AVX-512 variant's algorithm (same lane count, same masks) on any
 * machine, so the tests check that algorithm where AVX-512 is absent. Each lane computes
 * exactly what the scalar reference computes. Included only by emu16.c. */
#ifndef MOERT_TOPK_SIMD_EMU16_H
#define MOERT_TOPK_SIMD_EMU16_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/expf.h"

#define V_W 16
typedef struct { float f[16]; } vf;
typedef struct { int32_t i[16]; } vi;
typedef uint32_t vm;

#define EMU_MAP_(expr)                                                                      \
    vf r_;                                                                                  \
    for (int l_ = 0; l_ < 16; l_++) r_.f[l_] = (expr);                                      \
    return r_
#define EMU_CMP_(expr)                                                                      \
    vm m_ = 0;                                                                              \
    for (int l_ = 0; l_ < 16; l_++) m_ |= (uint32_t)(expr) << l_;                           \
    return m_

static inline vf vf_set1(float a) { EMU_MAP_(a); }
static inline vf vf_loadu(const float *p) { EMU_MAP_(p[l_]); }
static inline void vf_storeu(float *p, vf a) { memcpy(p, a.f, sizeof a.f); }
static inline vf vf_add(vf a, vf b) { EMU_MAP_(a.f[l_] + b.f[l_]); }
static inline vf vf_sub(vf a, vf b) { EMU_MAP_(a.f[l_] - b.f[l_]); }
static inline vf vf_mul(vf a, vf b) { EMU_MAP_(a.f[l_] * b.f[l_]); }
static inline vf vf_div(vf a, vf b) { EMU_MAP_(a.f[l_] / b.f[l_]); }
/* As the hardware: the second operand when the comparison is false or unordered. */
static inline vf vf_max(vf a, vf b) { EMU_MAP_(a.f[l_] > b.f[l_] ? a.f[l_] : b.f[l_]); }
static inline vf vf_min(vf a, vf b) { EMU_MAP_(a.f[l_] < b.f[l_] ? a.f[l_] : b.f[l_]); }

static inline vm vm_gt(vf a, vf b) { EMU_CMP_(a.f[l_] > b.f[l_]); }
static inline vm vm_ge(vf a, vf b) { EMU_CMP_(a.f[l_] >= b.f[l_]); }
static inline vm vm_eq(vf a, vf b) { EMU_CMP_(a.f[l_] == b.f[l_]); }
static inline vm vm_bad(vf x) { EMU_CMP_(!(x.f[l_] <= FLT_MAX)); }
static inline vm vm_or(vm a, vm b) { return a | b; }
static inline vm vm_and(vm a, vm b) { return a & b; }
static inline vm vm_none(void) { return 0; }
static inline uint32_t vm_bits(vm m) { return m; }
static inline vm vm_first(int n) { return n >= 16 ? 0xFFFFu : (1u << n) - 1u; }

static inline vf vf_select(vm m, vf a, vf b) { EMU_MAP_((m >> l_) & 1 ? a.f[l_] : b.f[l_]); }
static inline vi vi_select(vm m, vi a, vi b) {
    vi r;
    for (int l = 0; l < 16; l++) r.i[l] = (m >> l) & 1 ? a.i[l] : b.i[l];
    return r;
}
static inline vi vi_set1(int32_t a) {
    vi r;
    for (int l = 0; l < 16; l++) r.i[l] = a;
    return r;
}
static inline vi vi_iota(void) {
    vi r;
    for (int l = 0; l < 16; l++) r.i[l] = l;
    return r;
}
static inline vi vi_add(vi a, vi b) {
    vi r;
    for (int l = 0; l < 16; l++) r.i[l] = (int32_t)((uint32_t)a.i[l] + (uint32_t)b.i[l]); /* wraps, as the ISA's */
    return r;
}
static inline void vi_storeu(int32_t *p, vi a) { memcpy(p, a.i, sizeof a.i); }
static inline vi vi_zero(void) { return vi_set1(0); }
#define EMU_IMAP_(expr)                                                                     \
    vi r_;                                                                                  \
    for (int l_ = 0; l_ < 16; l_++) r_.i[l_] = (expr);                                      \
    return r_
static inline vi vi_max(vi a, vi b) { EMU_IMAP_(a.i[l_] > b.i[l_] ? a.i[l_] : b.i[l_]); }
static inline vi vi_min(vi a, vi b) { EMU_IMAP_(a.i[l_] < b.i[l_] ? a.i[l_] : b.i[l_]); }
static inline vi vi_and(vi a, vi b) { EMU_IMAP_(a.i[l_] & b.i[l_]); }
static inline vi vi_or(vi a, vi b) { EMU_IMAP_(a.i[l_] | b.i[l_]); }
static inline vi vi_xor(vi a, vi b) { EMU_IMAP_(a.i[l_] ^ b.i[l_]); }
static inline vi vi_sub(vi a, vi b) { EMU_IMAP_((int32_t)((uint32_t)a.i[l_] - (uint32_t)b.i[l_])); }
/* Arithmetic shift right, as the hardware (>> of a negative int is implementation-defined). */
static inline vi vi_sra(vi a, int n) { EMU_IMAP_(a.i[l_] < 0 ? ~(~a.i[l_] >> n) : a.i[l_] >> n); }
static inline vi vi_srl(vi a, int n) { EMU_IMAP_((int32_t)((uint32_t)a.i[l_] >> n)); }
static inline vf vf_cvt_vi(vi a) { EMU_MAP_((float)a.i[l_]); } /* converted, not reinterpreted */
static inline vf vf_sqrt(vf a) { EMU_MAP_(sqrtf(a.f[l_])); }
static inline vm vi_gt(vi a, vi b) { EMU_CMP_(a.i[l_] > b.i[l_]); }
static inline vi vi_from_vf(vf a) {
    vi r;
    memcpy(r.i, a.f, sizeof r.i);
    return r;
}
static inline vi vi_mul(vi a, vi b) { EMU_IMAP_((int32_t)((uint32_t)a.i[l_] * (uint32_t)b.i[l_])); }
static inline vm vm_not(vm m) { return ~m & 0xFFFFu; }
/* The float's order as an int32 with the magnitude bits outside `keep` cleared: the
 * magnitude, negated where the sign is set (-0 maps like +0). Monotone in the float. */
static inline vi vi_ordered_truncated(vf x, vi keep) {
    vi r;
    for (int l = 0; l < 16; l++) {
        int32_t b;
        memcpy(&b, &x.f[l], 4);
        const int32_t magnitude = b & keep.i[l];
        r.i[l] = b < 0 ? -magnitude : magnitude;
    }
    return r;
}
static inline vi vi_loadu(const int32_t *p) { EMU_IMAP_(p[l_]); }
static inline vf vf_gather(const float *base, vi offset) { EMU_MAP_(base[offset.i[l_]]); }
static inline vi vi_add_mask(vi acc, vm m) {
    for (int l = 0; l < 16; l++) acc.i[l] += (int32_t)((m >> l) & 1);
    return acc;
}
static inline void vf_store_part(float *p, int n, vf a) { memcpy(p, a.f, (size_t)n * sizeof(float)); }
static inline void vi_store_part(int32_t *p, int n, vi a) { memcpy(p, a.i, (size_t)n * sizeof(int32_t)); }

static inline vf vf_load_part(const float *p, int n, float fill) { EMU_MAP_(l_ < n ? p[l_] : fill); }

static inline float vf_hmax(vf a) {
    float m = a.f[0];
    for (int l = 1; l < 16; l++) m = a.f[l] > m ? a.f[l] : m;
    return m;
}
static inline float vf_hsum(vf a) { /* pairwise, like a reduction tree */
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) a.f[l] = a.f[l] + a.f[l + w];
    return a.f[0];
}

static inline vf vf_exp(vf x) { EMU_MAP_(moert_expf(x.f[l_])); }
static inline vf vf_exp2_stat(vf y) { EMU_MAP_(moert_exp2_stat(y.f[l_])); }
static inline vf vf_fmadd(vf a, vf b, vf c) { EMU_MAP_(__builtin_fmaf(a.f[l_], b.f[l_], c.f[l_])); }
static inline vf vf_sigmoid(vf x) { EMU_MAP_(moert_sigmoidf(x.f[l_])); }

static inline float v_kth_largest16(const vf v[1], int k) {
    float s[16];
    memcpy(s, v[0].f, sizeof s);
    for (int i = 1; i < 16; i++) /* insertion sort, descending */
        for (int j = i; j > 0 && s[j] > s[j - 1]; j--) {
            float t = s[j];
            s[j] = s[j - 1];
            s[j - 1] = t;
        }
    return s[k - 1];
}

static inline void vf_store_interleaved2(float *p, vf a, vf b) {
    for (int l = 0; l < 16; l++) p[2 * l] = a.f[l], p[2 * l + 1] = b.f[l];
}
static inline void vi_store_interleaved2(int32_t *p, vi a, vi b) {
    for (int l = 0; l < 16; l++) p[2 * l] = a.i[l], p[2 * l + 1] = b.i[l];
}

static inline void v_load_tile8(const float *rows, size_t ld, int ncols, float fill, vf cols[8]) {
    for (int c = 0; c < 8; c++)
        for (int r = 0; r < 16; r++) cols[c].f[r] = c < ncols ? rows[(size_t)r * ld + c] : fill;
}
static inline void v_store_tile8(float *rows, size_t ld, int ncols, const vf cols[8]) {
    for (int c = 0; c < ncols; c++)
        for (int r = 0; r < 16; r++) rows[(size_t)r * ld + c] = cols[c].f[r];
}
static inline vf vf_from_vi(vi a) {
    vf r;
    memcpy(r.f, a.i, sizeof r.f);
    return r;
}

static inline int v_compress_store(float *fdst, int32_t *idst, uint32_t bits, vf f, vi i) {
    int n = 0;
    for (int l = 0; l < 16; l++)
        if ((bits >> l) & 1) fdst[n] = f.f[l], idst[n] = i.i[l], n++;
    return n;
}

#undef EMU_CMP_
/* The 16 lanes sorted descending (signed). */
static inline vi vi_sort_desc(vi a) {
    for (int i = 1; i < 16; i++)
        for (int j = i; j > 0 && a.i[j] > a.i[j - 1]; j--) {
            const int32_t t = a.i[j];
            a.i[j] = a.i[j - 1], a.i[j - 1] = t;
        }
    return a;
}

/* Lane i of the result is lane idx[i] of a. */
static inline vf vf_permute(vf a, vi idx) { EMU_MAP_(a.f[idx.i[l_] & 15]); }
static inline vi vi_permute(vi a, vi idx) { EMU_IMAP_(a.i[idx.i[l_] & 15]); }

/* dst[rank[j]] = src[j] for the first n <= V_W lanes (ranks a permutation of 0..n-1). */
static inline void v_place_by_rank(float *wdst, int32_t *idst, vi rank, vf w, vi ids, int n) {
    int32_t r[V_W], id[V_W];
    float wv[V_W];
    vi_storeu(r, rank);
    vi_storeu(id, ids);
    vf_storeu(wv, w);
    for (int j = 0; j < n; j++) wdst[r[j]] = wv[j], idst[r[j]] = id[j];
}

#endif /* MOERT_TOPK_SIMD_EMU16_H */

/* Internal: the 8-lane vector vocabulary of vector_impl.h, in AVX2 + FMA intrinsics.
 * Masks are float vectors whose true lanes are all ones. Included only by avx2.c. */
#ifndef MOERT_TOPK_SIMD_AVX2_H
#define MOERT_TOPK_SIMD_AVX2_H

#include <float.h>
#include <immintrin.h>
#include <stdint.h>

#include "kernels/expf.h"
#include "kernels/topk_gate/compress_lut.h"

#define V_W 8
typedef __m256 vf;
typedef __m256i vi;
typedef __m256 vm;

static inline __attribute__((always_inline)) vf vf_set1(float a) { return _mm256_set1_ps(a); }
static inline __attribute__((always_inline)) vf vf_loadu(const float *p) { return _mm256_loadu_ps(p); }
static inline __attribute__((always_inline)) void vf_storeu(float *p, vf a) { _mm256_storeu_ps(p, a); }
static inline __attribute__((always_inline)) vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }

static inline __attribute__((always_inline)) vm vm_gt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline __attribute__((always_inline)) vm vm_ge(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
static inline __attribute__((always_inline)) vm vm_eq(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
/* NaN or +inf: the lanes that are not <= FLT_MAX. */
static inline __attribute__((always_inline)) vm vm_bad(vf x) { return _mm256_cmp_ps(x, _mm256_set1_ps(FLT_MAX), _CMP_NLE_UQ); }
static inline __attribute__((always_inline)) vm vm_or(vm a, vm b) { return _mm256_or_ps(a, b); }
static inline __attribute__((always_inline)) vm vm_and(vm a, vm b) { return _mm256_and_ps(a, b); }
static inline __attribute__((always_inline)) vm vm_none(void) { return _mm256_setzero_ps(); }
static inline __attribute__((always_inline)) uint32_t vm_bits(vm m) { return (uint32_t)_mm256_movemask_ps(m); }
static inline __attribute__((always_inline)) vm vm_first(int n) { /* lanes [0, n) */
    return _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

/* m ? a : b. In asm because GCC 12 rewrites a blend whose mask feeds two blends into a
 * sign test plus the blend (vpcmpgtd + vblendvps), one wasted instruction per select. */
static inline __attribute__((always_inline)) vf vf_select(vm m, vf a, vf b) {
    vf r;
    __asm__("vblendvps %3, %1, %2, %0" : "=x"(r) : "x"(a), "x"(b), "x"(m));
    return r;
}
static inline __attribute__((always_inline)) vi vi_select(vm m, vi a, vi b) {
    return _mm256_castps_si256(vf_select(m, _mm256_castsi256_ps(a), _mm256_castsi256_ps(b)));
}
static inline __attribute__((always_inline)) vi vi_set1(int32_t a) { return _mm256_set1_epi32(a); }
static inline __attribute__((always_inline)) vi vi_iota(void) { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
static inline __attribute__((always_inline)) vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
static inline __attribute__((always_inline)) void vi_storeu(int32_t *p, vi a) { _mm256_storeu_si256((__m256i *)p, a); }
static inline __attribute__((always_inline)) vi vi_zero(void) { return _mm256_setzero_si256(); }
static inline __attribute__((always_inline)) vi vi_max(vi a, vi b) { return _mm256_max_epi32(a, b); }
static inline __attribute__((always_inline)) vi vi_min(vi a, vi b) { return _mm256_min_epi32(a, b); }
static inline __attribute__((always_inline)) vi vi_and(vi a, vi b) { return _mm256_and_si256(a, b); }
static inline __attribute__((always_inline)) vi vi_or(vi a, vi b) { return _mm256_or_si256(a, b); }
static inline __attribute__((always_inline)) vi vi_xor(vi a, vi b) { return _mm256_xor_si256(a, b); }
static inline __attribute__((always_inline)) vi vi_sub(vi a, vi b) { return _mm256_sub_epi32(a, b); }
static inline __attribute__((always_inline)) vi vi_sra(vi a, int n) { return _mm256_srai_epi32(a, n); }
static inline __attribute__((always_inline)) vi vi_srl(vi a, int n) { return _mm256_srli_epi32(a, n); }
static inline __attribute__((always_inline)) vf vf_cvt_vi(vi a) { return _mm256_cvtepi32_ps(a); } /* converted, not reinterpreted */
static inline __attribute__((always_inline)) vf vf_sqrt(vf a) { return _mm256_sqrt_ps(a); }
static inline __attribute__((always_inline)) vm vi_gt(vi a, vi b) { return _mm256_castsi256_ps(_mm256_cmpgt_epi32(a, b)); }
static inline __attribute__((always_inline)) vi vi_from_vf(vf a) { return _mm256_castps_si256(a); }
static inline __attribute__((always_inline)) vi vi_mul(vi a, vi b) { return _mm256_mullo_epi32(a, b); }
static inline __attribute__((always_inline)) vm vm_not(vm m) { return _mm256_xor_ps(m, _mm256_castsi256_ps(_mm256_set1_epi32(-1))); }
/* The float's order as an int32 with the magnitude bits outside `keep` cleared: the
 * magnitude, negated where the sign is set (-0 maps like +0). Monotone in the float. */
static inline __attribute__((always_inline)) vi vi_ordered_truncated(vf x, vi keep) {
    const vi bits = _mm256_castps_si256(x);
    return _mm256_sign_epi32(_mm256_and_si256(bits, keep), bits);
}
static inline __attribute__((always_inline)) vi vi_loadu(const int32_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
/* base[offset[lane]] for each lane. */
static inline __attribute__((always_inline)) vf vf_gather(const float *base, vi offset) { return _mm256_i32gather_ps(base, offset, 4); }
/* acc + 1 in the lanes of m (a true lane is -1 as an integer). */
static inline __attribute__((always_inline)) vi vi_add_mask(vi acc, vm m) { return _mm256_sub_epi32(acc, _mm256_castps_si256(m)); }
/* Stores lanes [0, n) only. */
static inline __attribute__((always_inline)) void vf_store_part(float *p, int n, vf a) {
    _mm256_maskstore_ps(p, _mm256_castps_si256(vm_first(n)), a);
}
static inline __attribute__((always_inline)) void vi_store_part(int32_t *p, int n, vi a) {
    _mm256_maskstore_epi32((int *)p, _mm256_castps_si256(vm_first(n)), a);
}

/* Lanes [0, n) from p, the others `fill`; p[n..] is never touched. */
static inline __attribute__((always_inline)) vf vf_load_part(const float *p, int n, float fill) {
    vm m = vm_first(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, _mm256_castps_si256(m)),
                            m);
}

static inline __attribute__((always_inline)) float vf_hmax(vf a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
static inline __attribute__((always_inline)) float vf_hsum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* moert_expf, lane by lane, by the same operations. */
static inline __attribute__((always_inline)) vf vf_exp(vf x) {
    const vm underflow = _mm256_cmp_ps(x, _mm256_set1_ps(MOERT_EXPF_X_MIN), _CMP_NGE_UQ);
    x = _mm256_min_ps(x, _mm256_set1_ps(MOERT_EXPF_X_MAX));
    const vf magic = _mm256_set1_ps(MOERT_EXPF_MAGIC);
    vf t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(MOERT_EXPF_LOG2E)), magic);
    vf n = _mm256_sub_ps(t, magic);
    vf r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(MOERT_EXPF_LN2_HI)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(MOERT_EXPF_LN2_LO)));
    vf r2 = _mm256_mul_ps(r, r);
    vf r4 = _mm256_mul_ps(r2, r2);
    vf a = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(MOERT_EXPF_P0), r), _mm256_set1_ps(MOERT_EXPF_P1));
    vf b = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(MOERT_EXPF_P2), r), _mm256_set1_ps(MOERT_EXPF_P3));
    vf c = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(MOERT_EXPF_P4), r), _mm256_set1_ps(MOERT_EXPF_P5));
    vf p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(a, r4), _mm256_mul_ps(b, r2)), c);
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, r2), r), _mm256_set1_ps(1.0f));
    __m256i k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
    vf pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
    return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, pow2));
}

static inline __attribute__((always_inline)) vf vf_fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }

/* moert_exp2_stat, lane by lane. */
static inline __attribute__((always_inline)) vf vf_exp2_stat(vf y) {
    const vf magic = _mm256_set1_ps(MOERT_EXP2_STAT_MAGIC);
    y = _mm256_max_ps(y, _mm256_set1_ps(-127.0f)); /* -inf too: the first operand is y */
    const vf t = _mm256_add_ps(y, magic);
    const vf f = _mm256_sub_ps(y, _mm256_sub_ps(t, magic));
    vf p = _mm256_fmadd_ps(_mm256_set1_ps(MOERT_EXP2_STAT_C6), f, _mm256_set1_ps(MOERT_EXP2_STAT_C5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MOERT_EXP2_STAT_C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MOERT_EXP2_STAT_C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MOERT_EXP2_STAT_C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MOERT_EXP2_STAT_C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(MOERT_EXP2_STAT_C0));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

/* moert_sigmoidf, lane by lane. */
static inline __attribute__((always_inline)) vf vf_sigmoid(vf x) {
    const vf sign = _mm256_set1_ps(-0.0f);
    vf e = vf_exp(_mm256_or_ps(x, sign)); /* exp(-|x|) */
    vf d = _mm256_add_ps(_mm256_set1_ps(1.0f), e);
    vm nonneg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
    return _mm256_blendv_ps(_mm256_div_ps(e, d), _mm256_div_ps(_mm256_set1_ps(1.0f), d), nonneg);
}

/* One stage of the bitonic sorting network on 16 lanes held in (a, b): lane i meets
 * lane i ^ d and keeps the max when ((i & d) == 0) == ((i & size) == 0), else the min.
 * After the stages of size 2, 4 and 8, a is sorted descending and b ascending. */
#define SORT16_TAKES_MAX_(i, size, d) ((((i) & (d)) == 0) == (((i) & (size)) == 0))
#define SORT16_IMM_(base, size, d)                                                          \
    (SORT16_TAKES_MAX_((base) + 0, size, d) << 0 | SORT16_TAKES_MAX_((base) + 1, size, d) << 1 | \
     SORT16_TAKES_MAX_((base) + 2, size, d) << 2 | SORT16_TAKES_MAX_((base) + 3, size, d) << 3 | \
     SORT16_TAKES_MAX_((base) + 4, size, d) << 4 | SORT16_TAKES_MAX_((base) + 5, size, d) << 5 | \
     SORT16_TAKES_MAX_((base) + 6, size, d) << 6 | SORT16_TAKES_MAX_((base) + 7, size, d) << 7)
#define SORT16_PARTNER_(reg, d)                                                             \
    ((d) == 4 ? _mm256_permute2f128_ps(reg, reg, 1)                                         \
              : (d) == 2 ? _mm256_permute_ps(reg, 0x4E) : _mm256_permute_ps(reg, 0xB1))
#define SORT16_IN_REG_(reg, base, size, d)                                                  \
    do {                                                                                    \
        const vf p_ = SORT16_PARTNER_(reg, d);                                              \
        reg = _mm256_blend_ps(_mm256_min_ps(reg, p_), _mm256_max_ps(reg, p_),               \
                              SORT16_IMM_(base, size, d));                                  \
    } while (0)
#define SORT16_BOTH_(size, d)                                                               \
    do {                                                                                    \
        SORT16_IN_REG_(a, 0, size, d);                                                      \
        SORT16_IN_REG_(b, 8, size, d);                                                      \
    } while (0)

/* The k-th largest (1-based, k <= 16) of the 16 values in v[0..1]. */
static inline __attribute__((always_inline)) float v_kth_largest16(const vf v[2], int k) {
    vf a = v[0], b = v[1];
    if (k == 1) return vf_hmax(_mm256_max_ps(a, b));
    SORT16_BOTH_(2, 1);
    SORT16_BOTH_(4, 2);
    SORT16_BOTH_(4, 1);
    SORT16_BOTH_(8, 4);
    SORT16_BOTH_(8, 2);
    SORT16_BOTH_(8, 1);
    float sorted[16];
    if (k <= 8) {
        /* a descending, b ascending: their lane-wise max is the top 8, bitonic. */
        a = _mm256_max_ps(a, b);
        SORT16_IN_REG_(a, 0, 16, 4);
        SORT16_IN_REG_(a, 0, 16, 2);
        SORT16_IN_REG_(a, 0, 16, 1);
        _mm256_storeu_ps(sorted, a);
        return sorted[k - 1];
    }
    vf hi = _mm256_max_ps(a, b);
    b = _mm256_min_ps(a, b);
    a = hi;
    SORT16_BOTH_(16, 4);
    SORT16_BOTH_(16, 2);
    SORT16_BOTH_(16, 1);
    _mm256_storeu_ps(sorted, a);
    _mm256_storeu_ps(sorted + 8, b);
    return sorted[k - 1];
}

/* Rows of two-entry outputs from two lane vectors: p[2i] = a[i], p[2i + 1] = b[i]. */
static inline __attribute__((always_inline)) void vf_store_interleaved2(float *p, vf a, vf b) {
    vf lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
    _mm256_storeu_ps(p, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(p + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}
static inline __attribute__((always_inline)) void vi_store_interleaved2(int32_t *p, vi a, vi b) {
    vf_store_interleaved2((float *)p, _mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
}

static inline __attribute__((always_inline)) void avx2_transpose8x8(const vf in[8], vf out[8]) {
    vf t0 = _mm256_unpacklo_ps(in[0], in[1]), t1 = _mm256_unpackhi_ps(in[0], in[1]);
    vf t2 = _mm256_unpacklo_ps(in[2], in[3]), t3 = _mm256_unpackhi_ps(in[2], in[3]);
    vf t4 = _mm256_unpacklo_ps(in[4], in[5]), t5 = _mm256_unpackhi_ps(in[4], in[5]);
    vf t6 = _mm256_unpacklo_ps(in[6], in[7]), t7 = _mm256_unpackhi_ps(in[6], in[7]);
    vf s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    vf s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    vf s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    vf s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    out[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    out[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    out[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    out[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    out[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    out[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    out[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    out[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* A tile of V_W rows x ncols (1..8) columns, transposed: cols[c] lane r = rows[r*ld + c].
 * Columns past ncols are never read; their vectors are `fill`. */
static inline __attribute__((always_inline)) void v_load_tile8(const float *rows, size_t ld, int ncols, float fill, vf cols[8]) {
    vf r[8];
    if (ncols == 8) {
        for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(rows + (size_t)i * ld);
    } else {
        for (int i = 0; i < 8; i++) r[i] = vf_load_part(rows + (size_t)i * ld, ncols, fill);
    }
    avx2_transpose8x8(r, cols);
}

/* The inverse: rows[r*ld + c] = cols[c] lane r, for c < ncols (1..8). */
static inline __attribute__((always_inline)) void v_store_tile8(float *rows, size_t ld, int ncols, const vf cols[8]) {
    vf r[8];
    avx2_transpose8x8(cols, r);
    for (int i = 0; i < 8; i++) {
        if (ncols == 8)
            _mm256_storeu_ps(rows + (size_t)i * ld, r[i]);
        else
            vf_store_part(rows + (size_t)i * ld, ncols, r[i]);
    }
}
static inline __attribute__((always_inline)) vf vf_from_vi(vi a) { return _mm256_castsi256_ps(a); }

/* The lanes set in `bits`, in lane order, to the front of fdst and idst (all V_W lanes
 * are written; those past the count are junk). Returns the count. */
static inline __attribute__((always_inline)) int v_compress_store(float *fdst, int32_t *idst, uint32_t bits, vf f, vi i) {
    const __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)&compress_lut8[bits]));
    _mm256_storeu_ps(fdst, _mm256_permutevar8x32_ps(f, perm));
    _mm256_storeu_si256((__m256i *)idst, _mm256_permutevar8x32_epi32(i, perm));
    return __builtin_popcount(bits);
}

/* The 8 lanes sorted descending (signed): a bitonic network, lane i meeting lane i ^ d and
 * keeping the max where ((i & d) == 0) == ((i & size) == 0) (the blend masks below). */
#define AVX2_SORT8_STAGE(a, p0, p1, p2, p3, p4, p5, p6, p7, takes_max)                                  \
    do {                                                                                                   \
        const __m256i partner_ = _mm256_permutevar8x32_epi32(a, _mm256_setr_epi32(p0, p1, p2, p3, p4, p5, p6, p7)); \
        a = _mm256_blend_epi32(_mm256_min_epi32(a, partner_), _mm256_max_epi32(a, partner_), takes_max);        \
    } while (0)
static inline __attribute__((always_inline)) vi vi_sort_desc(vi a) {
    AVX2_SORT8_STAGE(a, 1, 0, 3, 2, 5, 4, 7, 6, 0x99); /* size 2, d 1 */
    AVX2_SORT8_STAGE(a, 2, 3, 0, 1, 6, 7, 4, 5, 0xC3); /* size 4, d 2 */
    AVX2_SORT8_STAGE(a, 1, 0, 3, 2, 5, 4, 7, 6, 0xA5); /* size 4, d 1 */
    AVX2_SORT8_STAGE(a, 4, 5, 6, 7, 0, 1, 2, 3, 0x0F); /* size 8, d 4 */
    AVX2_SORT8_STAGE(a, 2, 3, 0, 1, 6, 7, 4, 5, 0x33); /* size 8, d 2 */
    AVX2_SORT8_STAGE(a, 1, 0, 3, 2, 5, 4, 7, 6, 0x55); /* size 8, d 1 */
    return a;
}
#undef AVX2_SORT8_STAGE

/* Lane i of the result is lane idx[i] of a. */
static inline __attribute__((always_inline)) vf vf_permute(vf a, vi idx) { return _mm256_permutevar8x32_ps(a, idx); }
static inline __attribute__((always_inline)) vi vi_permute(vi a, vi idx) { return _mm256_permutevar8x32_epi32(a, idx); }

/* dst[rank[j]] = src[j] for the first n <= V_W lanes (ranks a permutation of 0..n-1). */
static inline __attribute__((always_inline)) void v_place_by_rank(float *wdst, int32_t *idst, vi rank, vf w, vi ids, int n) {
    int32_t r[V_W], id[V_W];
    float wv[V_W];
    vi_storeu(r, rank);
    vi_storeu(id, ids);
    vf_storeu(wv, w);
    for (int j = 0; j < n; j++) wdst[r[j]] = wv[j], idst[r[j]] = id[j];
}

#endif /* MOERT_TOPK_SIMD_AVX2_H */

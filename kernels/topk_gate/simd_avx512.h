/* Internal: the 16-lane vector vocabulary of vector_impl.h in AVX-512 (F, BW, DQ, VL)
 * intrinsics. Masks are __mmask16. Included only by avx512.c. Its portable twin,
 * simd_emu16.h, runs the same algorithm in the tests on machines without AVX-512. */
#ifndef MOERT_TOPK_SIMD_AVX512_H
#define MOERT_TOPK_SIMD_AVX512_H

#include <float.h>
#include <immintrin.h>
#include <stdint.h>

#include "kernels/expf.h"

#define V_W 16
typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 vm;

static inline __attribute__((always_inline)) vf vf_set1(float a) { return _mm512_set1_ps(a); }
static inline __attribute__((always_inline)) vf vf_loadu(const float *p) { return _mm512_loadu_ps(p); }
static inline __attribute__((always_inline)) void vf_storeu(float *p, vf a) { _mm512_storeu_ps(p, a); }
static inline __attribute__((always_inline)) vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline __attribute__((always_inline)) vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }

static inline __attribute__((always_inline)) vm vm_gt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline __attribute__((always_inline)) vm vm_ge(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
static inline __attribute__((always_inline)) vm vm_eq(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
static inline __attribute__((always_inline)) vm vm_bad(vf x) { return _mm512_cmp_ps_mask(x, _mm512_set1_ps(FLT_MAX), _CMP_NLE_UQ); }
static inline __attribute__((always_inline)) vm vm_or(vm a, vm b) { return (vm)(a | b); }
static inline __attribute__((always_inline)) vm vm_and(vm a, vm b) { return (vm)(a & b); }
static inline __attribute__((always_inline)) vm vm_none(void) { return 0; }
static inline __attribute__((always_inline)) uint32_t vm_bits(vm m) { return (uint32_t)m; }
static inline __attribute__((always_inline)) vm vm_first(int n) { return n >= 16 ? (vm)0xFFFF : (vm)((1u << n) - 1u); }

/* m ? a : b; _mm512_mask_blend_ps(k, x, y) takes y where k is set. */
static inline __attribute__((always_inline)) vf vf_select(vm m, vf a, vf b) { return _mm512_mask_blend_ps(m, b, a); }
static inline __attribute__((always_inline)) vi vi_select(vm m, vi a, vi b) { return _mm512_mask_blend_epi32(m, b, a); }
static inline __attribute__((always_inline)) vi vi_set1(int32_t a) { return _mm512_set1_epi32(a); }
static inline __attribute__((always_inline)) vi vi_iota(void) {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
static inline __attribute__((always_inline)) vi vi_add(vi a, vi b) { return _mm512_add_epi32(a, b); }
static inline __attribute__((always_inline)) void vi_storeu(int32_t *p, vi a) { _mm512_storeu_si512((void *)p, a); }
static inline __attribute__((always_inline)) vi vi_zero(void) { return _mm512_setzero_si512(); }
static inline __attribute__((always_inline)) vi vi_max(vi a, vi b) { return _mm512_max_epi32(a, b); }
static inline __attribute__((always_inline)) vi vi_min(vi a, vi b) { return _mm512_min_epi32(a, b); }
static inline __attribute__((always_inline)) vi vi_and(vi a, vi b) { return _mm512_and_si512(a, b); }
static inline __attribute__((always_inline)) vi vi_or(vi a, vi b) { return _mm512_or_si512(a, b); }
static inline __attribute__((always_inline)) vi vi_xor(vi a, vi b) { return _mm512_xor_si512(a, b); }
static inline __attribute__((always_inline)) vi vi_sub(vi a, vi b) { return _mm512_sub_epi32(a, b); }
static inline __attribute__((always_inline)) vi vi_sra(vi a, int n) { return _mm512_srai_epi32(a, (unsigned)n); }
static inline __attribute__((always_inline)) vi vi_srl(vi a, int n) { return _mm512_srli_epi32(a, (unsigned)n); }
static inline __attribute__((always_inline)) vf vf_cvt_vi(vi a) { return _mm512_cvtepi32_ps(a); } /* converted, not reinterpreted */
static inline __attribute__((always_inline)) vf vf_sqrt(vf a) { return _mm512_sqrt_ps(a); }
static inline __attribute__((always_inline)) vm vi_gt(vi a, vi b) { return _mm512_cmpgt_epi32_mask(a, b); }
static inline __attribute__((always_inline)) vi vi_from_vf(vf a) { return _mm512_castps_si512(a); }
static inline __attribute__((always_inline)) vi vi_mul(vi a, vi b) { return _mm512_mullo_epi32(a, b); }
static inline __attribute__((always_inline)) vm vm_not(vm m) { return (vm)~m; }
/* The float's order as an int32 with the magnitude bits outside `keep` cleared: the
 * magnitude, negated where the sign is set (-0 maps like +0). Monotone in the float. */
static inline __attribute__((always_inline)) vi vi_ordered_truncated(vf x, vi keep) {
    const vi bits = _mm512_castps_si512(x);
    const vi magnitude = _mm512_and_si512(bits, keep);
    return _mm512_mask_sub_epi32(magnitude, _mm512_movepi32_mask(bits), _mm512_setzero_si512(), magnitude);
}
static inline __attribute__((always_inline)) vi vi_loadu(const int32_t *p) { return _mm512_loadu_si512((const void *)p); }
/* base[offset[lane]] for each lane. */
static inline __attribute__((always_inline)) vf vf_gather(const float *base, vi offset) { return _mm512_i32gather_ps(offset, base, 4); }
static inline __attribute__((always_inline)) vi vi_add_mask(vi acc, vm m) { return _mm512_mask_add_epi32(acc, m, acc, _mm512_set1_epi32(1)); }
static inline __attribute__((always_inline)) void vf_store_part(float *p, int n, vf a) { _mm512_mask_storeu_ps(p, vm_first(n), a); }
static inline __attribute__((always_inline)) void vi_store_part(int32_t *p, int n, vi a) {
    _mm512_mask_storeu_epi32((void *)p, vm_first(n), a);
}

/* Masked-off lanes are not read, so this never touches p[n..]. */
static inline __attribute__((always_inline)) vf vf_load_part(const float *p, int n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), vm_first(n), p);
}

static inline __attribute__((always_inline)) float vf_hmax(vf a) { return _mm512_reduce_max_ps(a); }
static inline __attribute__((always_inline)) float vf_hsum(vf a) { return _mm512_reduce_add_ps(a); }

/* moert_expf, lane by lane, by the same operations. */
static inline __attribute__((always_inline)) vf vf_exp(vf x) {
    const vm underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(MOERT_EXPF_X_MIN), _CMP_NGE_UQ);
    x = _mm512_min_ps(x, _mm512_set1_ps(MOERT_EXPF_X_MAX));
    const vf magic = _mm512_set1_ps(MOERT_EXPF_MAGIC);
    vf t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(MOERT_EXPF_LOG2E)), magic);
    vf n = _mm512_sub_ps(t, magic);
    vf r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(MOERT_EXPF_LN2_HI)));
    r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(MOERT_EXPF_LN2_LO)));
    vf r2 = _mm512_mul_ps(r, r);
    vf r4 = _mm512_mul_ps(r2, r2);
    vf a = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(MOERT_EXPF_P0), r), _mm512_set1_ps(MOERT_EXPF_P1));
    vf b = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(MOERT_EXPF_P2), r), _mm512_set1_ps(MOERT_EXPF_P3));
    vf c = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(MOERT_EXPF_P4), r), _mm512_set1_ps(MOERT_EXPF_P5));
    vf p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(a, r4), _mm512_mul_ps(b, r2)), c);
    p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, r2), r), _mm512_set1_ps(1.0f));
    __m512i k = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(magic));
    vf pow2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k, _mm512_set1_epi32(127)), 23));
    return _mm512_maskz_mul_ps((vm)~underflow, p, pow2);
}

static inline __attribute__((always_inline)) vf vf_fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }

/* moert_exp2_stat, lane by lane. */
static inline __attribute__((always_inline)) vf vf_exp2_stat(vf y) {
    const vf magic = _mm512_set1_ps(MOERT_EXP2_STAT_MAGIC);
    y = _mm512_max_ps(y, _mm512_set1_ps(-127.0f));
    const vf t = _mm512_add_ps(y, magic);
    const vf f = _mm512_sub_ps(y, _mm512_sub_ps(t, magic));
    vf p = _mm512_fmadd_ps(_mm512_set1_ps(MOERT_EXP2_STAT_C6), f, _mm512_set1_ps(MOERT_EXP2_STAT_C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MOERT_EXP2_STAT_C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MOERT_EXP2_STAT_C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MOERT_EXP2_STAT_C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MOERT_EXP2_STAT_C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(MOERT_EXP2_STAT_C0));
    return _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t), 23)));
}

/* moert_sigmoidf, lane by lane. */
static inline __attribute__((always_inline)) vf vf_sigmoid(vf x) {
    vf neg_abs = _mm512_castsi512_ps(
        _mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int32_t)0x80000000u)));
    vf e = vf_exp(neg_abs);
    vf d = _mm512_add_ps(_mm512_set1_ps(1.0f), e);
    vm nonneg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    return _mm512_mask_blend_ps(nonneg, _mm512_div_ps(e, d), _mm512_div_ps(_mm512_set1_ps(1.0f), d));
}

/* Bitonic network on 16 lanes: lane i meets lane i ^ d and keeps the max when
 * ((i & d) == 0) == ((i & size) == 0), else the min. */
static inline __attribute__((always_inline)) vm sort16_takes_max(int size, int d) {
    unsigned m = 0;
    for (int i = 0; i < 16; i++) m |= (unsigned)(((i & d) == 0) == ((i & size) == 0)) << i;
    return (vm)m;
}
static inline __attribute__((always_inline)) vf sort16_partner(vf a, int d) {
    switch (d) {
    case 8: return _mm512_shuffle_f32x4(a, a, _MM_SHUFFLE(1, 0, 3, 2));
    case 4: return _mm512_shuffle_f32x4(a, a, _MM_SHUFFLE(2, 3, 0, 1));
    case 2: return _mm512_permute_ps(a, _MM_SHUFFLE(1, 0, 3, 2));
    default: return _mm512_permute_ps(a, _MM_SHUFFLE(2, 3, 0, 1));
    }
}
static inline __attribute__((always_inline)) vf sort16_stage(vf a, int size, int d) {
    vf p = sort16_partner(a, d);
    return _mm512_mask_blend_ps(sort16_takes_max(size, d), _mm512_min_ps(a, p), _mm512_max_ps(a, p));
}

/* The 16 lanes sorted descending (signed), by the same network. */
static inline __attribute__((always_inline)) vi sort16_stage_i(vi a, int size, int d) {
    const vi p = _mm512_castps_si512(sort16_partner(_mm512_castsi512_ps(a), d));
    return _mm512_mask_blend_epi32(sort16_takes_max(size, d), _mm512_min_epi32(a, p), _mm512_max_epi32(a, p));
}
static inline __attribute__((always_inline)) vi vi_sort_desc(vi a) {
    a = sort16_stage_i(a, 2, 1);
    a = sort16_stage_i(a, 4, 2);
    a = sort16_stage_i(a, 4, 1);
    a = sort16_stage_i(a, 8, 4);
    a = sort16_stage_i(a, 8, 2);
    a = sort16_stage_i(a, 8, 1);
    a = sort16_stage_i(a, 16, 8);
    a = sort16_stage_i(a, 16, 4);
    a = sort16_stage_i(a, 16, 2);
    return sort16_stage_i(a, 16, 1);
}

/* Lane i of the result is lane idx[i] of a. */
static inline __attribute__((always_inline)) vf vf_permute(vf a, vi idx) { return _mm512_permutexvar_ps(idx, a); }
static inline __attribute__((always_inline)) vi vi_permute(vi a, vi idx) { return _mm512_permutexvar_epi32(idx, a); }

/* The k-th largest (1-based, k <= 16) of the 16 values in v[0]. */
static inline __attribute__((always_inline)) float v_kth_largest16(const vf v[1], int k) {
    vf a = v[0];
    a = sort16_stage(a, 2, 1);
    a = sort16_stage(a, 4, 2);
    a = sort16_stage(a, 4, 1);
    a = sort16_stage(a, 8, 4);
    a = sort16_stage(a, 8, 2);
    a = sort16_stage(a, 8, 1);
    a = sort16_stage(a, 16, 8);
    a = sort16_stage(a, 16, 4);
    a = sort16_stage(a, 16, 2);
    a = sort16_stage(a, 16, 1);
    float sorted[16];
    _mm512_storeu_ps(sorted, a);
    return sorted[k - 1];
}

/* Rows of two-entry outputs from two lane vectors: p[2i] = a[i], p[2i + 1] = b[i]. */
static inline __attribute__((always_inline)) void vf_store_interleaved2(float *p, vf a, vf b) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(p, _mm512_permutex2var_ps(a, lo, b));
    _mm512_storeu_ps(p + 16, _mm512_permutex2var_ps(a, hi, b));
}
static inline __attribute__((always_inline)) void vi_store_interleaved2(int32_t *p, vi a, vi b) {
    vf_store_interleaved2((float *)p, _mm512_castsi512_ps(a), _mm512_castsi512_ps(b));
}

static inline __attribute__((always_inline)) void avx512_transpose8x8(const __m256 in[8], __m256 out[8]) {
    __m256 t0 = _mm256_unpacklo_ps(in[0], in[1]), t1 = _mm256_unpackhi_ps(in[0], in[1]);
    __m256 t2 = _mm256_unpacklo_ps(in[2], in[3]), t3 = _mm256_unpackhi_ps(in[2], in[3]);
    __m256 t4 = _mm256_unpacklo_ps(in[4], in[5]), t5 = _mm256_unpackhi_ps(in[4], in[5]);
    __m256 t6 = _mm256_unpacklo_ps(in[6], in[7]), t7 = _mm256_unpackhi_ps(in[6], in[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    out[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    out[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    out[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    out[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    out[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    out[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    out[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    out[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* A tile of 16 rows x ncols (1..8) columns, transposed: cols[c] lane r = rows[r*ld + c],
 * two 8x8 transposes in ymm halves. Columns past ncols are never read; they are `fill`. */
static inline __attribute__((always_inline)) void v_load_tile8(const float *rows, size_t ld, int ncols, float fill, vf cols[8]) {
    const __mmask8 m = ncols >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << ncols) - 1u);
    const __m256 f = _mm256_set1_ps(fill);
    __m256 lo[8], hi[8], r[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_mask_loadu_ps(f, m, rows + (size_t)i * ld);
    avx512_transpose8x8(r, lo);
    for (int i = 0; i < 8; i++) r[i] = _mm256_mask_loadu_ps(f, m, rows + (size_t)(i + 8) * ld);
    avx512_transpose8x8(r, hi);
    for (int c = 0; c < 8; c++) cols[c] = _mm512_insertf32x8(_mm512_castps256_ps512(lo[c]), hi[c], 1);
}

/* The inverse: rows[r*ld + c] = cols[c] lane r, for c < ncols (1..8). */
static inline __attribute__((always_inline)) void v_store_tile8(float *rows, size_t ld, int ncols, const vf cols[8]) {
    const __mmask8 m = ncols >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << ncols) - 1u);
    __m256 half[8], r[8];
    for (int c = 0; c < 8; c++) half[c] = _mm512_castps512_ps256(cols[c]);
    avx512_transpose8x8(half, r);
    for (int i = 0; i < 8; i++) _mm256_mask_storeu_ps(rows + (size_t)i * ld, m, r[i]);
    for (int c = 0; c < 8; c++) half[c] = _mm512_extractf32x8_ps(cols[c], 1);
    avx512_transpose8x8(half, r);
    for (int i = 0; i < 8; i++) _mm256_mask_storeu_ps(rows + (size_t)(i + 8) * ld, m, r[i]);
}
static inline __attribute__((always_inline)) vf vf_from_vi(vi a) { return _mm512_castsi512_ps(a); }

/* The lanes set in `bits`, in lane order, to the front of fdst and idst; all 16 lanes
 * are written (the callers leave room), as in the AVX2 variant. Compressing in a
 * register and storing whole vectors: the compress-to-memory form is microcoded on
 * Zen 4 (its expert choice and ReLU routes ran 3x slower with it). Returns the count. */
static inline __attribute__((always_inline)) int v_compress_store(float *fdst, int32_t *idst, uint32_t bits, vf f, vi i) {
    _mm512_storeu_ps(fdst, _mm512_maskz_compress_ps((__mmask16)bits, f));
    _mm512_storeu_si512(idst, _mm512_maskz_compress_epi32((__mmask16)bits, i));
    return __builtin_popcount(bits);
}

/* dst[rank[j]] = src[j] for the first n <= V_W lanes (ranks a permutation of 0..n-1),
 * in registers: the inverse permutation lane by lane, then one permute and a masked store
 * per array. (Reloading the ranks one by one from the vector just stored cost a third of
 * the ReLU row kernel's time on Zen 4, whose scatter is slower still.) */
static inline __attribute__((always_inline)) void v_place_by_rank(float *wdst, int32_t *idst, vi rank, vf w, vi ids,
                                                                  int n) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i inverse = _mm512_setzero_si512();
    for (int j = 0; j < n; j++) {
        /* inverse[rank[j]] = j: the lane whose index equals rank[j]. */
        const __m512i rank_j = _mm512_permutexvar_epi32(_mm512_set1_epi32(j), rank);
        inverse = _mm512_mask_mov_epi32(inverse, _mm512_cmpeq_epi32_mask(lane, rank_j), _mm512_set1_epi32(j));
    }
    const __mmask16 m = vm_first(n);
    _mm512_mask_storeu_ps(wdst, m, _mm512_permutexvar_ps(inverse, w));
    _mm512_mask_storeu_epi32(idst, m, _mm512_permutexvar_epi32(inverse, ids));
}

#endif /* MOERT_TOPK_SIMD_AVX512_H */

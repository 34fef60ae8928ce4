/* Internal: 16 float lanes by GCC's vector extensions, for the router's row functions.
 * Compiled in each target clone (AVX-512: one register; AVX2: two; SSE2: four), every lane
 * runs the same IEEE single-precision operations (no FMA unless asked: -ffp-contract=off)
 * as the scalar code it mirrors, so each clone gives the same bits.
 *
 * The helpers are macros (GNU statement expressions), not functions: a 64-byte vector
 * passed to or returned from a function built without AVX-512 changes the calling
 * convention, which clang refuses outright even for functions that are always inlined.
 * Masks (comparison results) are never combined with & | ~: GCC then compares lane by lane
 * in scalar code; one comparison per mask. */
#ifndef MOERT_ROUTER_VEC16_H
#define MOERT_ROUTER_VEC16_H

#include <stdint.h>
#include <string.h>

#include "kernels/expf.h"

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

#define V16_LOAD(p)                                  \
    ({                                               \
        v16f v16_loaded_;                            \
        memcpy(&v16_loaded_, (p), sizeof v16_loaded_); \
        v16_loaded_;                                 \
    })
#define V16_STORE(p, v)                              \
    do {                                             \
        const v16f v16_stored_ = (v);                \
        memcpy((p), &v16_stored_, sizeof v16_stored_); \
    } while (0)
#define V16_SET1(x) ((v16f){0} + (float)(x))
/* mask ? a : b, a mask's lanes all ones or zeros (a comparison's result) */
#define V16_SELECT(mask, a, b) ((v16f)((((v16i)(a)) & (mask)) | (((v16i)(b)) & ~(mask))))
#define V16_MAX(a, b)                                \
    ({                                               \
        const v16f v16_ma_ = (a), v16_mb_ = (b);     \
        V16_SELECT(v16_ma_ > v16_mb_, v16_ma_, v16_mb_); \
    })
#define V16_ABS(v) ((v16f)((v16i)(v) & 0x7FFFFFFF))
/* The lanes' max and (a fixed pairwise tree) sum. */
#define V16_REDUCE_(v, op)                                                   \
    ({                                                                       \
        float v16_l_[16];                                                    \
        V16_STORE(v16_l_, (v));                                              \
        for (int v16_w_ = 8; v16_w_ >= 1; v16_w_ /= 2)                       \
            for (int v16_j_ = 0; v16_j_ < v16_w_; v16_j_++) op(v16_l_[v16_j_], v16_l_[v16_j_ + v16_w_]); \
        v16_l_[0];                                                           \
    })
#define V16_MAX_INTO_(a, b) ((a) = (b) > (a) ? (b) : (a))
#define V16_ADD_INTO_(a, b) ((a) += (b))
#define V16_REDUCE_MAX(v) V16_REDUCE_(v, V16_MAX_INTO_)
#define V16_REDUCE_ADD(v) V16_REDUCE_(v, V16_ADD_INTO_)

/* moert_expf lane by lane: the same operations in the same order. */
#define V16_EXPF(arg)                                                                           \
    ({                                                                                          \
        v16f x_ = (arg);                                                                        \
        const v16i small_ = (x_ >= MOERT_EXPF_X_MIN) == 0; /* !(x >= min): also NaN, -inf */    \
        x_ = V16_SELECT(x_ > MOERT_EXPF_X_MAX, V16_SET1(MOERT_EXPF_X_MAX), x_);                  \
        const v16f t_ = x_ * MOERT_EXPF_LOG2E + MOERT_EXPF_MAGIC;                               \
        const v16f n_ = t_ - MOERT_EXPF_MAGIC;                                                  \
        v16f r_ = x_ - n_ * MOERT_EXPF_LN2_HI;                                                  \
        r_ = r_ - n_ * MOERT_EXPF_LN2_LO;                                                       \
        const v16f r2_ = r_ * r_, r4_ = r2_ * r2_;                                              \
        const v16f a_ = MOERT_EXPF_P0 * r_ + MOERT_EXPF_P1;                                     \
        const v16f b_ = MOERT_EXPF_P2 * r_ + MOERT_EXPF_P3;                                     \
        const v16f c_ = MOERT_EXPF_P4 * r_ + MOERT_EXPF_P5;                                     \
        v16f p_ = (a_ * r4_ + b_ * r2_) + c_;                                                   \
        p_ = p_ * r2_ + r_ + 1.0f;                                                              \
        const float magic_ = MOERT_EXPF_MAGIC;                                                  \
        int32_t mb_;                                                                            \
        memcpy(&mb_, &magic_, 4);                                                               \
        const v16i pow2_bits_ = (((v16i)t_ - mb_) + 127) << 23;                                 \
        V16_SELECT(small_, V16_SET1(0.0f), p_ * (v16f)pow2_bits_);                              \
    })

/* fma lane by lane: the vector instruction in the clones that have FMA, the exact libm
 * fmaf elsewhere; the same bits either way. */
#define V16_FMA(a, b, c)                                                     \
    ({                                                                       \
        float fa_[16], fb_[16], fc_[16];                                     \
        V16_STORE(fa_, (a));                                                 \
        V16_STORE(fb_, (b));                                                 \
        V16_STORE(fc_, (c));                                                 \
        for (int fj_ = 0; fj_ < 16; fj_++) fa_[fj_] = __builtin_fmaf(fa_[fj_], fb_[fj_], fc_[fj_]); \
        V16_LOAD(fa_);                                                       \
    })

/* moert_exp2_stat lane by lane (2^y, within 2e-7: for sums). */
#define V16_EXP2_STAT(arg)                                                   \
    ({                                                                       \
        v16f y_ = (arg);                                                     \
        y_ = V16_SELECT(y_ > -127.0f, y_, V16_SET1(-127.0f));                \
        const v16f t2_ = y_ + MOERT_EXP2_STAT_MAGIC;                         \
        const v16f f_ = y_ - (t2_ - MOERT_EXP2_STAT_MAGIC);                  \
        v16f q_ = V16_SET1(MOERT_EXP2_STAT_C6);                              \
        q_ = V16_FMA(q_, f_, V16_SET1(MOERT_EXP2_STAT_C5));                  \
        q_ = V16_FMA(q_, f_, V16_SET1(MOERT_EXP2_STAT_C4));                  \
        q_ = V16_FMA(q_, f_, V16_SET1(MOERT_EXP2_STAT_C3));                  \
        q_ = V16_FMA(q_, f_, V16_SET1(MOERT_EXP2_STAT_C2));                  \
        q_ = V16_FMA(q_, f_, V16_SET1(MOERT_EXP2_STAT_C1));                  \
        q_ = V16_FMA(q_, f_, V16_SET1(MOERT_EXP2_STAT_C0));                  \
        q_ * (v16f)((v16i)t2_ << 23); /* the magic's own bits above the low 9 shift out */ \
    })

#endif /* MOERT_ROUTER_VEC16_H */

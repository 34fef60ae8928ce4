/* Internal: bfloat16 <-> float32. A bfloat16 is the upper half of a float32. */
#ifndef MOERT_COMMON_BF16_H
#define MOERT_COMMON_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline float moert_bf16_to_f32(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest, ties to even; a NaN stays a (quiet) NaN rather than rounding to inf.
 * Without a branch, so that row conversions vectorise. */
static inline uint16_t moert_f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const uint32_t quiet = (bits >> 16) | 0x0040u;
    return (uint16_t)((bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet : rounded);
}

/* Row conversions, written so that the compiler vectorises them. */
static inline void moert_bf16_to_f32_row(const uint16_t *restrict in, float *restrict out, size_t n) {
    uint32_t *o = (uint32_t *)out;
    for (size_t i = 0; i < n; i++) o[i] = (uint32_t)in[i] << 16;
}

static inline void moert_f32_to_bf16_row(const float *restrict in, uint16_t *restrict out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = moert_f32_to_bf16(in[i]);
}

#endif /* MOERT_COMMON_BF16_H */

/* Internal: size arithmetic that cannot wrap. */
#ifndef MOERT_COMMON_SIZE_H
#define MOERT_COMMON_SIZE_H

#include <stdbool.h>
#include <stddef.h>

/* *out = a * b; true if that overflowed size_t. */
static inline bool moert_mul_overflows(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out);
}

/* *out = a * b * c; true on overflow. */
static inline bool moert_mul3_overflows(size_t a, size_t b, size_t c, size_t *out) {
    size_t ab;
    return __builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, out);
}

/* n rounded up to a whole cache line: per-thread workspace slices stay aligned for any
 * element type and never share a line. */
static inline size_t moert_round_up_64(size_t n) { return (n + 63) & ~(size_t)63; }

#endif /* MOERT_COMMON_SIZE_H */

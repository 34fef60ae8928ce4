#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"

double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void bench_fill_gaussian(float *x, size_t n, uint64_t seed) {
    uint64_t state = seed;
    for (size_t i = 0; i < n; i += 2) {
        /* u1 in (0, 1], u2 in [0, 1) */
        double u1 = ((double)(splitmix64(&state) >> 11) + 1.0) * 0x1.0p-53;
        double u2 = (double)(splitmix64(&state) >> 11) * 0x1.0p-53;
        double r = sqrt(-2.0 * log(u1));
        x[i] = (float)(r * cos(2.0 * M_PI * u2));
        if (i + 1 < n) x[i + 1] = (float)(r * sin(2.0 * M_PI * u2));
    }
}

double bench_copy_bandwidth(size_t bytes, int threads, int repeats) {
    unsigned char *src = malloc(bytes), *dst = malloc(bytes);
    if (src == NULL || dst == NULL) {
        free(src);
        free(dst);
        return 0.0;
    }
    /* Touch both from the threads that will copy them (first touch places the pages). */
#pragma omp parallel num_threads(threads)
    {
        size_t per = bytes / (size_t)omp_get_num_threads(), at = per * (size_t)omp_get_thread_num();
        if (omp_get_thread_num() == omp_get_num_threads() - 1) per = bytes - at;
        memset(src + at, 1, per);
        memset(dst + at, 2, per);
    }
    double best = 0.0;
    for (int r = 0; r < repeats; r++) {
        double t0 = bench_now();
#pragma omp parallel num_threads(threads)
        {
            size_t per = bytes / (size_t)omp_get_num_threads(), at = per * (size_t)omp_get_thread_num();
            if (omp_get_thread_num() == omp_get_num_threads() - 1) per = bytes - at;
            memcpy(dst + at, src + at, per);
        }
        double gbs = 2.0 * (double)bytes / (bench_now() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    free(src);
    free(dst);
    return best;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *values, int n) {
    qsort(values, (size_t)n, sizeof(double), compare_doubles);
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

double bench_sample(void (*fn)(void *), void *ctx, double min_seconds) {
    long calls = 0;
    const double t0 = bench_now();
    double elapsed;
    do {
        fn(ctx);
        calls++;
        elapsed = bench_now() - t0;
    } while (elapsed < min_seconds);
    return elapsed / (double)calls;
}

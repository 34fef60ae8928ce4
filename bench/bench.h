/* moert's benchmarks: timing, workloads and the machine's limits, shared by the
 * `moert bench` subcommands. Every figure is a rate or a ratio measured in one run. */
#ifndef MOERT_BENCH_H
#define MOERT_BENCH_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic seconds. */
double bench_now(void);

/* n standard-normal floats from a seeded generator (splitmix64 + Box-Muller). */
void bench_fill_gaussian(float *x, size_t n, uint64_t seed);

/* memcpy bandwidth with `threads` threads over `bytes`-sized buffers, in GB/s, counting
 * bytes read plus bytes written (as the memory floors do). Best of `repeats`. */
double bench_copy_bandwidth(size_t bytes, int threads, int repeats);

/* One timing sample of fn(ctx): calls it until at least min_seconds have passed and
 * returns the seconds per call. */
double bench_sample(void (*fn)(void *), void *ctx, double min_seconds);

/* The median of n values (reorders them). */
double bench_median(double *values, int n);

/* `moert bench NAME` entries. */
int bench_softmax_topk(int argc, char **argv);
int bench_route(int argc, char **argv);
int bench_dispatch(int argc, char **argv);
int bench_layer(int argc, char **argv);
int bench_alltoall(int argc, char **argv);
int bench_noise(int argc, char **argv);

#endif /* MOERT_BENCH_H */

/* moert bench noise: the quality of noisy top-k's counter-based noise (kernels/noise.c).
 * Chi-square of its uniforms one by one and in Box-Muller's pairs, the pairs' correlation,
 * and the normals' moments, over tokens x 64 counters of one seed. A statistical check, in
 * bench/ because it is a figure to report, not a pass/fail (tests/test_gates.c asserts the
 * first two at a smaller size). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "kernels/noise.h"
#include "tools/cli.h"

#define COUNTERS 64

static void print_help(FILE *out) {
    fprintf(out, "usage: moert bench noise [options]\n\n"
                 "  --tokens N   tokens (each 64 counters), default 400000\n"
                 "  --seed S     default 12345\n"
                 "  --scan-tokens N\n"
                 "               tokens (each 1024 counters) of the scan over distances: counters\n"
                 "               c and c + d, d = 1..1023, 16 x 16 bins; default 4000\n"
                 "  --json       one JSON object on the last line\n");
}

/* sum (observed - expected)^2 / expected over n bins of equal expectation. */
static double chi_square(const double *bins, size_t n, double expected) {
    double chi = 0.0;
    for (size_t i = 0; i < n; i++) chi += (bins[i] - expected) * (bins[i] - expected) / expected;
    return chi;
}

int bench_noise(int argc, char **argv) {
    size_t tokens = 400000, seed = 12345, scan_tokens = 4000;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int code = CLI_OK;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help(stdout);
            return CLI_OK;
        } else if (strcmp(a, "--json") == 0) {
            json = 1;
        } else if (strcmp(a, "--tokens") == 0 && i + 1 < argc) {
            code = cli_parse_size(a, argv[++i], 1, 100000000, &tokens);
        } else if (strcmp(a, "--scan-tokens") == 0 && i + 1 < argc) {
            code = cli_parse_size(a, argv[++i], 1, 1000000, &scan_tokens);
        } else if (strcmp(a, "--seed") == 0 && i + 1 < argc) {
            code = cli_parse_size(a, argv[++i], 0, SIZE_MAX, &seed);
        } else {
            return cli_usage_error("bench noise", a);
        }
        if (code != CLI_OK) return code;
    }
    enum { BINS = 1024, GRID = 32, FINE = 128 };
    double *bins = calloc(BINS + GRID * GRID + FINE * FINE, sizeof(double));
    if (bins == NULL) return cli_fail(CLI_FAIL, "bench noise: out of memory");
    double *grid = bins + BINS, *fine = grid + GRID * GRID;
    double pair_xy = 0, pair_xx = 0, pair_yy = 0, m1 = 0, m2 = 0, m3 = 0, m4 = 0;
    const noise_spec spec = {MOERT_NOISE_NORMAL, seed, 0, 1.0f, NULL};
    float normals[COUNTERS + 1];
    const double t0 = bench_now();
    for (size_t t = 0; t < tokens; t++) {
        const uint64_t key = noise_token_key(seed, t);
        for (uint32_t p = 0; p < COUNTERS / 2; p++) {
            const double u0 = noise_uniform(key, 2 * p), u1 = noise_uniform(key, 2 * p + 1);
            bins[(int)(u0 * BINS)]++, bins[(int)(u1 * BINS)]++;
            grid[(int)(u0 * GRID) * GRID + (int)(u1 * GRID)]++;
            fine[(int)(u0 * FINE) * FINE + (int)(u1 * FINE)]++;
            pair_xy += (u0 - 0.5) * (u1 - 0.5), pair_xx += (u0 - 0.5) * (u0 - 0.5), pair_yy += (u1 - 0.5) * (u1 - 0.5);
        }
        noise_raw(&spec, t, COUNTERS, normals);
        for (int e = 0; e < COUNTERS; e++) {
            const double z = normals[e], z2 = z * z;
            m1 += z, m2 += z2, m3 += z2 * z, m4 += z2 * z2;
        }
    }
    /* The scan over distances: the largest chi-square's z. */
    enum { SCAN_COUNTERS = 1024 };
    uint8_t *cell = malloc(scan_tokens * SCAN_COUNTERS);
    if (cell == NULL) {
        free(bins);
        return cli_fail(CLI_FAIL, "bench noise: out of memory");
    }
    for (size_t t = 0; t < scan_tokens; t++) {
        const uint64_t key = noise_token_key(seed, t);
        for (uint32_t c = 0; c < SCAN_COUNTERS; c++) cell[t * SCAN_COUNTERS + c] = (uint8_t)(noise_uniform(key, c) * 16);
    }
    double worst_z = -INFINITY;
    size_t worst_d = 0;
    for (size_t d = 1; d < SCAN_COUNTERS; d++) {
        double lag[256] = {0};
        for (size_t t = 0; t < scan_tokens; t++) {
            const uint8_t *row = cell + t * SCAN_COUNTERS;
            for (size_t c = 0; c + d < SCAN_COUNTERS; c++) lag[row[c] * 16 + row[c + d]]++;
        }
        const double z = (chi_square(lag, 256, (double)scan_tokens * (double)(SCAN_COUNTERS - d) / 256) - 255) /
                         sqrt(2 * 255.0);
        if (z > worst_z) worst_z = z, worst_d = d;
    }
    free(cell);
    const double seconds = bench_now() - t0;
    const double values = (double)tokens * COUNTERS, pairs = values / 2;
    const double chi_1d = chi_square(bins, BINS, values / BINS);
    const double chi_pairs = chi_square(grid, GRID * GRID, pairs / (GRID * GRID));
    const double chi_fine = chi_square(fine, FINE * FINE, pairs / (FINE * FINE));
    const double corr = pair_xy / sqrt(pair_xx * pair_yy);
    const double mean = m1 / values, var = m2 / values - mean * mean;
    const double skew = m3 / values / pow(var, 1.5), kurt = m4 / values / (var * var);
    printf("moert bench noise: %zu tokens x %d counters, seed %zu (%.2f s)\n", tokens, COUNTERS, seed, seconds);
    char label[64];
    snprintf(label, sizeof label, "uniforms, %d bins:", BINS);
    printf("  %-26s chi-square %.0f (%d degrees of freedom, sd %.0f)\n", label, chi_1d, BINS - 1,
           sqrt(2.0 * (BINS - 1)));
    snprintf(label, sizeof label, "pairs (2p, 2p+1), %dx%d:", GRID, GRID);
    printf("  %-26s chi-square %.0f (%d, sd %.0f)\n", label, chi_pairs, GRID * GRID - 1,
           sqrt(2.0 * (GRID * GRID - 1)));
    snprintf(label, sizeof label, "pairs, %dx%d:", FINE, FINE);
    printf("  %-26s chi-square %.0f (%d, sd %.0f)\n", label, chi_fine, FINE * FINE - 1, sqrt(2.0 * (FINE * FINE - 1)));
    printf("  %-26s %.2e (sd %.1e)\n", "pairs' correlation:", corr, 1.0 / sqrt(pairs));
    printf("  %-26s z %.1f at d = %zu (the largest of 1023; %zu tokens)\n", "counters c and c + d:", worst_z, worst_d,
           scan_tokens);
    printf("  normals: mean %.2e, variance %.5f, skewness %.2e, kurtosis %.4f (0, 1, 0, 3)\n", mean, var, skew, kurt);
    if (json)
        printf("{\"tokens\": %zu, \"seed\": %zu, \"chi_square_uniform\": %.3f, \"chi_square_pairs\": %.3f, "
               "\"chi_square_pairs_fine\": %.3f, \"pair_correlation\": %.6e, \"mean\": %.6e, \"variance\": %.6f, "
               "\"skewness\": %.6e, \"kurtosis\": %.6f, \"distance_scan_worst_z\": %.3f, \"distance_scan_worst_d\": %zu}\n",
               tokens, seed, chi_1d, chi_pairs, chi_fine, corr, mean, var, skew, kurt, worst_z, worst_d);
    free(bins);
    return CLI_OK;
}

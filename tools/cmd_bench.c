/* moert bench: one subcommand per benchmark. */
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"
#include "tools/cli.h"

typedef struct bench_entry {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} bench_entry;

static const bench_entry benches[] = {
    {"softmax-topk", bench_softmax_topk,
     "the fused gate kernel vs a naive 3-pass baseline and the memory floor"},
    {"route", bench_route, "a routing policy with its plan and statistics vs the kernel alone"},
    {"dispatch", bench_dispatch, "moert_dispatch and moert_combine vs memcpy of the same bytes"},
    {"layer", bench_layer, "the MoE layer's stages; its expert GEMMs vs the GEMM library alone"},
    {"alltoall", bench_alltoall, "under mpirun: expert parallelism's exchanges vs raw MPI_Alltoallv"},
    {"noise", bench_noise, "noisy top-k's noise: chi-square of its uniforms and pairs, the normals' moments"},
};

static void print_help(FILE *out) {
    fprintf(out, "usage: moert bench BENCHMARK [options]\n"
                 "       moert bench BENCHMARK --help\n\nbenchmarks:\n");
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
        fprintf(out, "  %-14s %s\n", benches[i].name, benches[i].summary);
    fprintf(out, "\nEach prints a table and, with --json, one JSON object on its last line.\n");
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2) return cli_fail(CLI_USAGE, "bench: which benchmark? (see 'moert bench --help')");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_help(stdout);
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
        if (strcmp(argv[1], benches[i].name) == 0) return benches[i].run(argc - 1, argv + 1);
    return cli_fail(CLI_USAGE, "bench: unknown benchmark '%s' (see 'moert bench --help')", argv[1]);
}

/* moert: the command line. `moert COMMAND [options]`; exit status 0 on success, 2 on a
 * usage error, 1 on any other error. */
#include <stdio.h>
#include <string.h>

#include "tools/cli.h"

typedef struct cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cli_command;

static const cli_command commands[] = {
    {"demo", cmd_demo, "route a batch of synthetic logits and show what was measured"},
    {"route", cmd_route, "route a .npy of logits; write the plan (.npy) and its statistics"},
    {"layer", cmd_layer, "run an MoE layer (gate, route, dispatch, experts, combine); --check, --save"},
    {"simulate", cmd_simulate, "simulate distributed routing and load balancing at scale; steps.csv, summary.json"},
    {"info", cmd_info, "the machine, the kernel variant chosen, threads and NUMA nodes"},
    {"bench", cmd_bench, "benchmarks against baselines and the machine's limits"},
};

static void print_help(FILE *out) {
    fprintf(out,
            "moert %s: Mixture-of-Experts routing runtime\n"
            "\n"
            "usage: moert COMMAND [options]\n"
            "       moert COMMAND --help\n"
            "       moert --version\n"
            "\n"
            "commands:\n",
            moert_version());
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
            "\n"
            "environment:\n"
            "  MOERT_ISA=scalar|avx2|avx512   force a kernel variant\n"
            "  OMP_NUM_THREADS=N              default thread count\n"
            "\n"
            "Exit status: 0 on success, 2 on a usage error, 1 on any other error.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_help(stderr);
        return CLI_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        print_help(stdout);
        return CLI_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
        printf("moert %s\n", moert_version());
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(name, commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    if (name[0] == '-') return cli_fail(CLI_USAGE, "unknown option '%s' (see 'moert --help')", name);
    return cli_fail(CLI_USAGE, "unknown command '%s' (see 'moert --help')", name);
}

/* moert info: what this machine offers moert, and what moert chose. */
#include <getopt.h>
#include <mpi.h>
#include <numa.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"

static const char info_help[] =
    "usage: moert info\n"
    "\n"
    "Prints the version, the CPU and its vector extensions, the top-k gate variant chosen\n"
    "(MOERT_ISA=scalar|avx2|avx512 forces one), the GEMM library and its bf16 path, the MPI\n"
    "library (and this process's rank under mpirun), logical CPUs, OpenMP threads and NUMA\n"
    "nodes.\n";

static const char *yes_no(int flag) { return flag ? "yes" : "no"; }

int cmd_info(int argc, char **argv) {
    static const struct option options[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int opt;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs(info_help, stdout);
            return CLI_OK;
        }
        return cli_usage_error("info", "unknown option or missing value");
    }
    if (optind < argc) return cli_usage_error("info", "unexpected argument");

    moert_cpu_info cpu;
    moert_status st = moert_cpu_info_get(&cpu);
    if (st != MOERT_OK) return cli_fail_status(st, "cpu");

    printf("moert %s\n", moert_version());
    printf("cpu:            %s (%s)\n", cpu.brand[0] ? cpu.brand : "unknown", cpu.vendor);
    printf("logical cpus:   %d\n", cpu.logical_cpus);
    printf("isa flags:      avx2=%s fma=%s f16c=%s avx512f=%s avx512bw=%s avx512dq=%s "
           "avx512vl=%s avx512bf16=%s avx512fp16=%s amx=%s\n",
           yes_no(cpu.avx2), yes_no(cpu.fma), yes_no(cpu.f16c), yes_no(cpu.avx512f),
           yes_no(cpu.avx512bw), yes_no(cpu.avx512dq), yes_no(cpu.avx512vl),
           yes_no(cpu.avx512bf16), yes_no(cpu.avx512fp16), yes_no(cpu.amx_tile));

    const moert_isa all[] = {MOERT_ISA_SCALAR, MOERT_ISA_AVX2, MOERT_ISA_AVX512};
    printf("variants here: ");
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (moert_isa_check(all[i]) == MOERT_OK) printf(" %s", moert_isa_name(all[i]));
    printf("\n");
    moert_isa active;
    st = moert_isa_active(&active);
    if (st != MOERT_OK) return cli_fail_status(st, "kernel variant");
    printf("variant chosen: %s%s\n", moert_isa_name(active),
           getenv("MOERT_ISA") && getenv("MOERT_ISA")[0] ? " (forced by MOERT_ISA)" : "");
    printf("gemm:           %s\n", moert_gemm_library());
    printf("bf16 experts:   %s\n", moert_gemm_bf16_path());
    /* MPI: the library (callable before MPI_Init), and this process's place when started by
     * mpirun (from the launcher's environment: info does not initialise MPI). */
    char mpi_version[MPI_MAX_LIBRARY_VERSION_STRING];
    int mpi_len = 0;
    MPI_Get_library_version(mpi_version, &mpi_len);
    char *eol = strchr(mpi_version, '\n');
    if (eol != NULL) *eol = '\0';
    printf("mpi:            %s\n", mpi_version);
    const char *mpi_rank = getenv("OMPI_COMM_WORLD_RANK"), *mpi_size = getenv("OMPI_COMM_WORLD_SIZE");
    if (mpi_rank == NULL) mpi_rank = getenv("PMI_RANK"), mpi_size = getenv("PMI_SIZE");
    if (mpi_rank != NULL && mpi_size != NULL) printf("mpi rank:       %s of %s\n", mpi_rank, mpi_size);
    printf("openmp threads: %d (of %d processors)\n", omp_get_max_threads(), omp_get_num_procs());

    if (numa_available() < 0) {
        printf("numa:           not available (all memory is treated as one node)\n");
    } else {
        int nodes = numa_num_configured_nodes();
        printf("numa nodes:     %d\n", nodes);
        for (int node = 0; node <= numa_max_node(); node++) {
            long long free_bytes = 0;
            long long size = numa_node_size64(node, &free_bytes);
            if (size < 0) continue;
            struct bitmask *cpus = numa_allocate_cpumask();
            int ncpus = 0;
            if (numa_node_to_cpus(node, cpus) == 0)
                for (unsigned c = 0; c < cpus->size; c++) ncpus += numa_bitmask_isbitset(cpus, c);
            numa_free_cpumask(cpus);
            printf("  node %d:       %d cpus, %.1f GiB (%.1f GiB free)\n", node, ncpus,
                   size / 1073741824.0, free_bytes / 1073741824.0);
        }
    }
    return CLI_OK;
}

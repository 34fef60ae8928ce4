/* moert bench alltoall: under mpirun, expert parallelism's dispatch and combine exchanges
 * against raw MPI_Alltoallv of the same byte counts, in interleaved rounds. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench/bench.h"
#include "moert/ep.h"
#include "tools/cli.h"

static const char help[] =
    "usage: mpirun -np P moert bench alltoall [--tokens T] [--d-model D] [--experts E] [--k K]\n"
    "                                         [--threads N] [--rounds R] [--json]\n"
    "\n"
    "Each rank routes T tokens (default 8192) of d (4096) f32 over E (64) experts, top-k (2),\n"
    "experts in contiguous blocks per rank, synthetic experts of cost 0 (a copy). Each round\n"
    "times one expert-parallel forward pass (its exchanges: rows out, outputs back; the\n"
    "count exchange; the regrouping of received rows) and raw MPI_Alltoallv of the\n"
    "same per-peer byte counts, out and back (on huge-page buffers, as moert's, and on\n"
    "4 KiB-page ones). Rank 0 reports the medians over rounds of the\n"
    "slowest rank: the exchanges' rate, raw MPI's, their ratio, and what the count exchange\n"
    "and the regrouping add on top of the payload (packing the send buffer, the local gather\n"
    "a single process does too, is reported apart, and so is the waiting for slower ranks at\n"
    "the agreements after packing and after the experts).\n";

/* The raw exchange's buffers: on 2 MiB transparent huge pages as moert's own exchange
 * buffers are (common/large_alloc.c), or on the 4 KiB pages plain malloc gives. */
static void *raw_buffer(size_t bytes, int huge) {
    void *p = NULL;
    if (!huge) return malloc(bytes);
    if (posix_memalign(&p, (size_t)2 << 20, bytes) != 0) return NULL;
    (void)madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

int bench_alltoall(int argc, char **argv) {
    enum { OPT_TOKENS = 256, OPT_D, OPT_E, OPT_K, OPT_THREADS, OPT_ROUNDS, OPT_JSON };
    static const struct option options[] = {
        {"tokens", required_argument, NULL, OPT_TOKENS}, {"d-model", required_argument, NULL, OPT_D},
        {"experts", required_argument, NULL, OPT_E},     {"k", required_argument, NULL, OPT_K},
        {"threads", required_argument, NULL, OPT_THREADS}, {"rounds", required_argument, NULL, OPT_ROUNDS},
        {"json", no_argument, NULL, OPT_JSON},           {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    size_t T = 8192, d = 4096, E = 64;
    int k = 2, threads = 1, rounds = 5, json = 0, opt, code;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        code = CLI_OK;
        switch (opt) {
        case 'h': fputs(help, stdout); return CLI_OK;
        case OPT_TOKENS: code = cli_parse_size("--tokens", optarg, 1, (size_t)1 << 24, &T); break;
        case OPT_D: code = cli_parse_size("--d-model", optarg, 1, (size_t)1 << 16, &d); break;
        case OPT_E: code = cli_parse_size("--experts", optarg, 1, 4096, &E); break;
        case OPT_K: code = cli_parse_int("--k", optarg, 1, 64, &k); break;
        case OPT_THREADS: code = cli_parse_int("--threads", optarg, 1, 1024, &threads); break;
        case OPT_ROUNDS: code = cli_parse_int("--rounds", optarg, 1, 101, &rounds); break;
        case OPT_JSON: json = 1; break;
        default: return cli_usage_error("bench alltoall", "unknown option or missing value");
        }
        if (code != CLI_OK) return code;
    }
    if (optind < argc) return cli_usage_error("bench alltoall", "unexpected argument");
    if ((size_t)k > E) return cli_fail(CLI_USAGE, "--k %d exceeds --experts %zu", k, E);
    const size_t ld = (d + 15) & ~(size_t)15; /* moert sends rows padded to 16 floats: so does the raw exchange */

    int initialized = 0, provided, rank, size;
    MPI_Initialized(&initialized);
    if (!initialized) MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    moert_layer_config c = moert_layer_config_default();
    c.d_model = d, c.experts = E, c.router.k = k, c.threads = threads;
    c.expert_kind = MOERT_EXPERT_SYNTHETIC, c.synthetic_cost = 0;
    float *x = malloc(T * d * sizeof(float)), *out = malloc(T * d * sizeof(float));
    float *gate = malloc(d * E * sizeof(float));
    double *t_ep = calloc((size_t)rounds, sizeof(double)), *t_raw = calloc((size_t)rounds, sizeof(double));
    double *t_extra = calloc((size_t)rounds, sizeof(double)), *t_small = calloc((size_t)rounds, sizeof(double));
    int64_t *counts = calloc(2 * (size_t)size, sizeof(int64_t));
    int *sc = calloc(4 * (size_t)size, sizeof(int));
    code = x && out && gate && t_ep && t_raw && t_extra && t_small && counts && sc ? CLI_OK : CLI_FAIL;
    int failed_here = code != CLI_OK, failed_anywhere = 0; /* every rank creates, or none */
    MPI_Allreduce(&failed_here, &failed_anywhere, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (failed_anywhere) code = CLI_FAIL;
    moert_ep *ep = NULL;
    moert_status st = MOERT_OK;
    if (code == CLI_OK) {
        bench_fill_gaussian(x, T * d, 11 + (uint64_t)rank);
        bench_fill_gaussian(gate, d * E, 5);
        for (size_t i = 0; i < d * E; i++) gate[i] /= sqrtf((float)d);
        st = moert_ep_create(&c, MPI_COMM_WORLD, NULL, &ep);
        if (st == MOERT_OK) st = moert_ep_set_gate(ep, gate);
        if (st == MOERT_OK) st = moert_ep_forward(ep, x, T, out); /* warm-up: buffers grow */
    }
    /* The raw exchange's per-peer counts, in rows of d floats: what this rank sends to each. */
    char *send = NULL, *recv = NULL, *send_small = NULL, *recv_small = NULL;
    int *rc = sc + size, *sd = rc + size, *rd = sd + size;
    if (code == CLI_OK && st == MOERT_OK) {
        moert_plan_stats s;
        moert_plan_get_stats(moert_ep_plan(ep), &s);
        for (size_t e = 0; e < E; e++) counts[moert_ep_rank_of_expert(ep, e)] += s.expert_counts[e];
        for (int p = 0; p < size; p++) sc[p] = (int)counts[p];
        MPI_Alltoall(sc, 1, MPI_INT, rc, 1, MPI_INT, MPI_COMM_WORLD);
        int64_t sent = 0, received = 0;
        for (int p = 0; p < size; p++) sd[p] = (int)sent, sent += sc[p], rd[p] = (int)received, received += rc[p];
        const size_t send_bytes = (size_t)sent * ld * sizeof(float) + 1, recv_bytes = (size_t)received * ld * sizeof(float) + 1;
        send = raw_buffer(send_bytes, 1), recv = raw_buffer(recv_bytes, 1);
        send_small = raw_buffer(send_bytes, 0), recv_small = raw_buffer(recv_bytes, 0);
        if (!send || !recv || !send_small || !recv_small) code = CLI_FAIL;
        else {
            memset(send, 1, send_bytes), memset(recv, 2, recv_bytes);
            memset(send_small, 1, send_bytes), memset(recv_small, 2, recv_bytes);
        }
    }
    int worst = code != CLI_OK || st != MOERT_OK;
    int any = 0;
    MPI_Allreduce(&worst, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any) {
        if (rank == 0) code = st != MOERT_OK ? cli_fail_status(st, "bench alltoall") : cli_fail(CLI_FAIL, "bench alltoall: out of memory");
        else code = CLI_FAIL;
    }
    MPI_Datatype row;
    MPI_Type_contiguous((int)ld, MPI_FLOAT, &row);
    MPI_Type_commit(&row);
    moert_ep_timings last = {0};
    for (int r = 0; r < rounds && !any; r++) {
        MPI_Barrier(MPI_COMM_WORLD); /* the ranks start together: the figures are the exchange's */
        const moert_status failed = moert_ep_forward(ep, x, T, out);
        if (failed != MOERT_OK) { /* agreed: every rank stops here */
            code = rank == 0 ? cli_fail_status(failed, "bench alltoall: forward") : CLI_FAIL;
            any = 1;
            break;
        }
        moert_ep_timings t;
        moert_ep_get_timings(ep, &t);
        last = t;
        /* The slowest rank decides each figure. */
        double mine[2] = {t.dispatch + t.combine_exchange, t.exchange_counts + t.regroup}, slowest[2];
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        MPI_Alltoallv(send, sc, sd, row, recv, rc, rd, row, MPI_COMM_WORLD);
        MPI_Alltoallv(recv, rc, rd, row, send, sc, sd, row, MPI_COMM_WORLD);
        const double raw = MPI_Wtime() - t0;
        MPI_Barrier(MPI_COMM_WORLD);
        const double t1 = MPI_Wtime();
        MPI_Alltoallv(send_small, sc, sd, row, recv_small, rc, rd, row, MPI_COMM_WORLD);
        MPI_Alltoallv(recv_small, rc, rd, row, send_small, sc, sd, row, MPI_COMM_WORLD);
        const double small = MPI_Wtime() - t1;
        MPI_Allreduce(mine, slowest, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(&raw, &t_raw[r], 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        MPI_Allreduce(&small, &t_small[r], 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        t_ep[r] = slowest[0], t_extra[r] = slowest[1];
    }
    if (!any && rank == 0) {
        /* Bytes: this rank's rows out and back (rank 0's share; the ranks are alike). */
        int64_t rows = 0;
        for (int p = 0; p < size; p++) rows += sc[p];
        const double bytes = 2.0 * (double)rows * (double)ld * 4.0;
        double ratio[101], ratio_small[101];
        for (int r = 0; r < rounds; r++) ratio[r] = t_raw[r] / t_ep[r], ratio_small[r] = t_small[r] / t_ep[r];
        double overhead[101];
        for (int r = 0; r < rounds; r++) overhead[r] = t_extra[r] / t_ep[r]; /* on top of the payload */
        const double m_ep = bench_median(t_ep, rounds), m_raw = bench_median(t_raw, rounds);
        const double m_ratio = bench_median(ratio, rounds), m_over = bench_median(overhead, rounds);
        const double m_small = bench_median(t_small, rounds), m_ratio_small = bench_median(ratio_small, rounds);
        printf("alltoall: %d ranks, T=%zu per rank, d=%zu, E=%zu, k=%d, f32, %d rounds (medians of the slowest rank)\n",
               size, T, d, E, k, rounds);
        printf("  expert-parallel exchanges %.2f ms (%.2f GB/s), raw MPI_Alltoallv %.2f ms (%.2f GB/s): %.2f x raw\n",
               m_ep * 1e3, bytes / m_ep / 1e9, m_raw * 1e3, bytes / m_raw / 1e9, m_ratio);
        printf("  (raw MPI_Alltoallv on 4 KiB-page buffers instead of huge pages: %.2f ms (%.2f GB/s): %.2f x)\n",
               m_small * 1e3, bytes / m_small / 1e9, m_ratio_small);
        printf("  counts and regrouping add %.1f%% to the payload exchange (%s)\n", 100 * m_over,
               last.per_expert_exchange ? "one exchange per local expert: rows land in expert-major order"
                                        : "one exchange for all experts: rows gathered by place");
        printf("  (this rank, last round: packing %.2f ms, waiting %.2f ms, counts %.2f ms, rows out %.2f ms, "
               "regrouping %.2f ms, back %.2f ms)\n",
               last.pack * 1e3, last.wait * 1e3, last.exchange_counts * 1e3, last.dispatch * 1e3,
               last.regroup * 1e3, last.combine_exchange * 1e3);
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "ranks", size);
            cJSON_AddNumberToObject(o, "ep_exchange_ms", m_ep * 1e3);
            cJSON_AddNumberToObject(o, "raw_alltoallv_ms", m_raw * 1e3);
            cJSON_AddNumberToObject(o, "ep_ratio_to_raw", m_ratio);
            cJSON_AddNumberToObject(o, "raw_alltoallv_small_pages_ms", m_small * 1e3);
            cJSON_AddNumberToObject(o, "ep_ratio_to_raw_small_pages", m_ratio_small);
            cJSON_AddNumberToObject(o, "counts_regroup_over_payload", m_over);
            cli_print_json_line(o);
        }
    }
    MPI_Type_free(&row);
    moert_ep_destroy(ep);
    free(x), free(out), free(gate), free(t_ep), free(t_raw), free(t_extra), free(t_small), free(counts), free(sc);
    free(send), free(recv), free(send_small), free(recv_small);
    if (!initialized) MPI_Finalize();
    return code;
}

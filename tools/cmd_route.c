/* moert route: route a .npy file of logits and write the plan and its statistics. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "tools/cli.h"
#include "tools/npy.h"
#include "tools/plan_io.h"
#include "tools/router_cli.h"

static const char route_help[] =
    "usage: moert route --logits FILE.npy --out DIR [options]\n"
    "\n"
    "Routes logits [T, E] (a 2-D C-order .npy of float16, float32 or float64) and writes\n"
    "into DIR (created if missing):\n"
    "  token_offsets.npy   int64 [T+1]: token t's entries are [offsets[t], offsets[t+1])\n"
    "  expert_ids.npy      int32 [nnz]: by descending weight, ties to the lower id\n"
    "  weights.npy         float32 [nnz]: combine weights\n"
    "  expert_counts.npy   int64 [E]: entries each expert kept\n"
    "  stats.json          tokens, experts, assignments, dropped, unrouted, aux_loss, z_loss,\n"
    "                      max_over_mean, cv, entropy, experts_per_token, sparsity, capacity, ...\n"
    "The files appear together, only when routing succeeded; a failed run removes any that\n"
    "an earlier run left in DIR.\n"
    "\n"
    "options:\n" ROUTER_CLI_HELP
    "  --threads N           threads, default all\n"
    "  --quiet               print nothing on success\n"
    "\n"
    "Read the plan with numpy: o = np.load('DIR/token_offsets.npy'); ids = np.load(...).\n";

enum { OPT_LOGITS = 256, OPT_OUT, OPT_THREADS, OPT_QUIET };

int cmd_route(int argc, char **argv) {
    static const struct option options[] = {
        {"logits", required_argument, NULL, OPT_LOGITS},
        {"out", required_argument, NULL, OPT_OUT},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, 'h'},
        ROUTER_CLI_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    router_cli rc;
    router_cli_init(&rc);
    const char *logits_path = NULL, *out_dir = NULL;
    int quiet = 0, opt, rc_code;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        rc_code = CLI_OK;
        switch (opt) {
        case 'h': fputs(route_help, stdout); return CLI_OK;
        case OPT_LOGITS: logits_path = optarg; break;
        case OPT_OUT: out_dir = optarg; break;
        case OPT_THREADS: rc_code = cli_parse_int("--threads", optarg, 1, 4096, &rc.config.threads); break;
        case OPT_QUIET: quiet = 1; break;
        default:
            rc_code = router_cli_option(&rc, opt, optarg);
            if (rc_code < 0) return cli_usage_error("route", "unknown option or missing value");
        }
        if (rc_code != CLI_OK) return rc_code;
    }
    if (optind < argc) return cli_usage_error("route", "unexpected argument");
    if (logits_path == NULL || out_dir == NULL) return cli_usage_error("route", "--logits and --out are required");

    float *logits = NULL;
    size_t shape[2];
    moert_status st = npy_read_f32(logits_path, 2, &logits, shape);
    if (st != MOERT_OK) {
        plan_remove_dir_files(out_dir);
        return cli_fail_status(st, "--logits");
    }
    const size_t T = shape[0], E = shape[1];
    int code = router_cli_finish(&rc, E);
    moert_router *router = NULL;
    moert_plan *plan = NULL;
    if (code == CLI_OK) {
        st = moert_router_create(&rc.config, E, &router);
        if (st == MOERT_OK) st = moert_plan_create(&plan);
        if (st == MOERT_OK) st = moert_router_route(router, logits, T, plan);
        if (st != MOERT_OK) code = cli_fail_status(st, "route");
    }
    if (code == CLI_OK) {
        cJSON *extra = cJSON_CreateObject();
        cJSON_AddStringToObject(extra, "logits", logits_path);
        router_cli_to_json(&rc, extra);
        st = plan_write_dir(plan, out_dir, extra);
        cJSON_Delete(extra);
        if (st != MOERT_OK) code = cli_fail_status(st, "--out");
    }
    if (code == CLI_OK && !quiet) {
        moert_plan_stats s;
        moert_plan_get_stats(plan, &s);
        printf("routed %zu tokens over %zu experts: %lld entries, %lld dropped, %lld tokens unrouted; "
               "max/mean %.3f, aux loss %.4f, z-loss %.3f -> %s\n",
               T, E, (long long)s.assignments, (long long)s.dropped, (long long)s.unrouted, s.max_over_mean,
               s.aux_loss, s.z_loss, out_dir);
        if (!isnan(s.threshold))
            printf("batch-topk threshold %.9g (with routing groups: the mean of the groups', the estimate for "
                   "--threshold at inference)\n",
                   s.threshold);
    }
    if (code != CLI_OK) plan_remove_dir_files(out_dir);
    moert_plan_destroy(plan);
    moert_router_destroy(router);
    router_cli_free(&rc);
    free(logits);
    return code;
}

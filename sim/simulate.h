/* Internal to `moert simulate`: the step loop. Every strategy sees the same token stream:
 * synthetic logits are a function of (seed, step, rank, token, expert) alone, and a trace
 * is read in the same order; so strategies differ only in how they route and place.
 *
 * Each step, each rank routes a sample of its tokens (all of them when the sample is at
 * least the tokens per rank, and always for a trace), and its per-expert counts are scaled
 * to its tokens; the placement and the alpha-beta model (model.h) then give the traffic
 * and the step time. */
#ifndef MOERT_SIM_SIMULATE_H
#define MOERT_SIM_SIMULATE_H

#include <stddef.h>
#include <stdint.h>

#include "moert/moert.h"
#include "sim/model.h"
#include "sim/placement.h"
#include "sim/trace.h"

typedef enum sim_balance {
    SIM_BALANCE_NONE,     /* plain top-k softmax */
    SIM_BALANCE_CAPACITY, /* top-k with a capacity factor and a drop policy */
    SIM_BALANCE_AUX_FREE, /* sigmoid top-k with the auxiliary-loss-free bias */
    SIM_BALANCE_EXPERT_CHOICE, /* each expert takes its capacity_factor share of a rank's tokens */
    SIM_BALANCE_RELU,          /* ReLU routing, its threshold steered to target_sparsity */
    SIM_BALANCE_NODE_LIMITED,  /* top-k within the best max_nodes nodes (group-limited, groups =
                                  nodes; experts in contiguous blocks per node) */
} sim_balance;

typedef struct sim_strategy {
    char name[64];
    sim_balance balance;
    double capacity_factor; /* capacity, expert choice */
    moert_drop_policy drop; /* capacity: keep the earliest tokens (position) or the highest weights (probs) */
    float gamma;            /* aux-free */
    double target_sparsity; /* relu */
    int max_nodes;          /* node-limited */
    sim_place_kind place;
    int replicas;           /* eplb */
    int groups;             /* eplb: expert groups packed whole onto nodes (0: one expert each) */
    int replan_every;       /* balanced, eplb: steps between re-plans (0: plan once, from step 0) */
    int window;             /* steps of loads a re-plan averages */
} sim_strategy;

typedef struct sim_config {
    int ranks, nodes, steps, k, threads;
    size_t experts, tokens_per_rank, sample;
    uint64_t seed;
    /* synthetic: per-token logits (means[e] + N(0, 1)) / temperature */
    const double *means; /* [experts] */
    float temperature;
    /* consecutive tokens of a rank form sequences of seq_len sharing a latent: the logits'
     * noise is sqrt(correlation) z_sequence + sqrt(1 - correlation) z_token */
    size_t seq_len;
    double correlation;
    /* drift of the means over steps: a random walk (sigma per step), or the means rotating
     * by one expert every rotate_every steps (the hot experts move) */
    double walk_sigma;
    int rotate_every;
    /* trace replay (instead of synthetic when non-NULL) */
    const sim_trace *trace;
    sim_cost cost;
    double expert_bytes; /* the weights one replica moves */
    /* the routing of strategy none and the base the others change (k and threads are the
     * simulation's); zero: moert_router_config_default() */
    moert_router_config router;
} sim_config;

typedef struct sim_step_record {
    int step;
    double expert_max_over_mean, expert_cv;
    double dropped, unrouted; /* entries, tokens (scaled to all tokens) */
    double experts_per_token;  /* routed entries per token (ReLU and expert choice vary) */
    double moved_bytes;        /* weights moved by this step's re-plan */
    sim_step_cost cost;
} sim_step_record;

/* Called after each step with its record, the step's per-expert loads [experts] and
 * per-rank loads [ranks] (entries each rank's experts run). */
typedef void (*sim_step_fn)(void *context, int strategy, const sim_step_record *record, const double *expert_load,
                            const double *rank_load);

/* The router configuration a strategy routes with (bias: aux-free's, borrowed; the ReLU
 * threshold of the step). moert_router_config_check on it tells before a run whether the
 * strategy and the routing options go together. */
moert_router_config sim_router_config(const sim_config *config, const sim_strategy *strategy, const float *bias,
                                      double relu_threshold);

moert_status sim_run(const sim_config *config, const sim_strategy *strategies, int count, sim_step_fn on_step,
                     void *context);

#endif /* MOERT_SIM_SIMULATE_H */

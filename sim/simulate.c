/* The step loop of `moert simulate` (see simulate.h). */
#include "sim/simulate.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "router/internal.h" /* router_select_largest: the router's capacity select */
#include "kernels/noise.h"

/* One strategy's state across steps. */
typedef struct strategy_state {
    moert_router *router;
    moert_bias_balancer *balancer;
    moert_threshold_controller relu; /* relu: the threshold, steered each step */
    sim_placement placement;
    double *history; /* [window][experts] loads of the last steps */
    int history_count;
} strategy_state;

/* Synthetic logits of one rank's sampled tokens at a step: (means[e] + noise) / temperature,
 * the noise N(0, 1) from the counter hash of (seed, global token index, expert), mixed with
 * its sequence's latent (keyed by the global sequence index) when tokens are correlated. */
static void synthetic_logits(const sim_config *c, const double *means, int step, int rank, size_t count, float *logits,
                             float *tmp, float *latent) {
    /* N(0, 1) keyed apart from the router's --noise and from each other */
    const noise_spec noise = {MOERT_NOISE_NORMAL, c->seed ^ 0x10C175E3D10C175Eull, 0, 1.0f, NULL};
    const noise_spec seq_noise = {MOERT_NOISE_NORMAL, c->seed ^ 0x5EC0E5C0E5C0E5C0ull, 0, 1.0f, NULL};
    const size_t E = c->experts, L = c->seq_len > 0 ? c->seq_len : 1;
    const uint64_t first = ((uint64_t)step * (uint64_t)c->ranks + (uint64_t)rank) * (uint64_t)c->tokens_per_rank;
    /* The sample: every (T / count)-th of the rank's tokens, spread over its sequences. */
    const double stride = (double)c->tokens_per_rank / (double)count;
    const float inv_t = 1.0f / c->temperature;
    const float own = (float)sqrt(1.0 - c->correlation), shared = (float)sqrt(c->correlation);
    uint64_t latent_of = UINT64_MAX;
    for (size_t i = 0; i < count; i++) {
        float *x = logits + i * E;
        const uint64_t token = (uint64_t)((double)i * stride); /* within the rank's step */
        noise_row(&noise, first + token, E, x, tmp);
        if (c->correlation > 0) {
            /* the sequence of that token within its rank's stream */
            const uint64_t seq = ((uint64_t)step * (uint64_t)c->ranks + (uint64_t)rank) * ((c->tokens_per_rank + L - 1) / L) +
                                 token / L;
            if (seq != latent_of) noise_row(&seq_noise, seq, E, latent, tmp), latent_of = seq;
            for (size_t e = 0; e < E; e++) x[e] = own * x[e] + shared * latent[e];
        }
        for (size_t e = 0; e < E; e++) x[e] = ((float)means[e] + x[e]) * inv_t;
    }
}

/* The means of a step under drift: a random walk of sigma N(0, 1) per expert and step
 * (keyed by step and expert), or the profile rotated by one expert every rotate_every steps. */
static void drifted_means(const sim_config *c, int step, double *means, float *tmp) {
    const size_t E = c->experts;
    if (c->rotate_every > 0) {
        const size_t shift = (size_t)(step / c->rotate_every) % E;
        for (size_t e = 0; e < E; e++) means[e] = c->means[(e + E - shift) % E];
        return;
    }
    if (step == 0) memcpy(means, c->means, E * sizeof *means);
    if (c->walk_sigma > 0 && step > 0) {
        const noise_spec noise = {MOERT_NOISE_NORMAL, c->seed ^ 0xD21F7D21F7D21F7Dull, 0, 1.0f, NULL};
        float *z = tmp + E + 2;
        noise_row(&noise, (uint64_t)step, E, z, tmp);
        for (size_t e = 0; e < E; e++) means[e] += c->walk_sigma * z[e];
    }
}

/* A thread's scratch for a trace rank's capacity decisions, entries = T k at most. */
typedef struct trace_scratch {
    uint8_t *keep;    /* [entries] the decisions */
    uint32_t *order;  /* [entries] the entries grouped by expert, in entry order */
    float *values;    /* [entries] one expert's weights */
    uint8_t *marks;   /* [entries] the ones router_select_largest keeps */
    size_t *starts;   /* [experts + 1] each expert's first place in order */
    void *radix;      /* ROUTER_SELECT_SCRATCH(entries) */
} trace_scratch;

static void trace_scratch_free(trace_scratch *s) {
    free(s->keep), free(s->order), free(s->values), free(s->marks), free(s->starts), free(s->radix);
}

static int trace_scratch_alloc(trace_scratch *s, size_t entries, size_t experts) {
    *s = (trace_scratch){malloc(entries), malloc(entries * sizeof(uint32_t)), malloc(entries * sizeof(float)),
                         malloc(entries), malloc((experts + 1) * sizeof(size_t)), malloc(ROUTER_SELECT_SCRATCH(entries))};
    return s->keep && s->order && s->values && s->marks && s->starts && s->radix;
}

/* A trace rank's counts at a step with capacity applied to its recorded choices: each
 * expert keeps its earliest entries (position) or its highest-weight ones (probs, ties to
 * the earlier token, by the router's own select); returns the tokens left with no expert. */
static double trace_counts(const sim_config *c, int step, int rank, double capacity_factor, moert_drop_policy drop,
                           double *counts, const trace_scratch *s) {
    const sim_trace *tr = c->trace;
    const size_t k = tr->k, E = c->experts;
    size_t T = c->tokens_per_rank, first;
    if (T == 0) { /* the whole trace each step, rank r its share [floor(r N / P), floor((r+1) N / P)) */
        first = tr->tokens * (size_t)rank / (size_t)c->ranks;
        T = tr->tokens * (size_t)(rank + 1) / (size_t)c->ranks - first;
    } else {
        first = (((size_t)step * (size_t)c->ranks + (size_t)rank) * T) % tr->tokens;
    }
    /* The capacity of this rank's own tokens (its routing group), as the router computes it. */
    int64_t capacity = 0;
    if (capacity_factor > 0) {
        moert_router_config rc = moert_router_config_default();
        rc.k = (int)k, rc.capacity_factor = capacity_factor;
        (void)moert_router_capacity(&rc, E, T, &capacity); /* bounded by T k: cannot fail */
    }
    /* Entry i (token i / k, choice i % k) of this rank's share, in the trace. */
#define ENTRY_(i) (((first + (i) / k) % tr->tokens) * k + (i) % k)
    uint8_t *keep = s->keep;
    for (size_t i = 0; i < T * k; i++) keep[i] = 1;
    if (capacity > 0 && drop == MOERT_DROP_PROBS) {
        /* The entries grouped by expert (a counting sort, entry order kept), then each
         * over-full expert's highest `capacity` kept. */
        size_t *starts = s->starts;
        memset(starts, 0, (E + 1) * sizeof *starts);
        for (size_t i = 0; i < T * k; i++) starts[tr->ids[ENTRY_(i)] + 1]++;
        for (size_t e = 0; e < E; e++) starts[e + 1] += starts[e];
        for (size_t i = 0; i < T * k; i++) s->order[starts[tr->ids[ENTRY_(i)]]++] = (uint32_t)i;
        for (size_t e = E; e > 0; e--) starts[e] = starts[e - 1]; /* the fill moved each start to the next */
        starts[0] = 0;
        for (size_t e = 0; e < E; e++) {
            const uint32_t *mine = s->order + starts[e];
            const size_t n = starts[e + 1] - starts[e];
            if (n <= (size_t)capacity) continue;
            for (size_t m = 0; m < n; m++) s->values[m] = tr->weights[ENTRY_(mine[m])];
            router_select_largest(s->values, n, 1, (size_t)capacity, s->marks, 1, s->radix);
            for (size_t m = 0; m < n; m++)
                if (!s->marks[m]) keep[mine[m]] = 0;
        }
    }
    double unrouted = 0;
    for (size_t i = 0; i < T; i++) {
        int kept = 0;
        for (size_t j = 0; j < k; j++) {
            const int32_t e = tr->ids[ENTRY_(i * k + j)];
            if (!keep[i * k + j] || (capacity > 0 && drop == MOERT_DROP_POSITION && counts[e] >= (double)capacity))
                continue;
            counts[e] += 1, kept++;
        }
        unrouted += kept == 0;
    }
#undef ENTRY_
    return unrouted;
}

static moert_status replan(const sim_config *c, const sim_strategy *s, strategy_state *st, double *moved) {
    const size_t E = c->experts;
    double *mean = calloc(E, sizeof *mean);
    MOERT_RETURN_ERROR_IF(mean == NULL, MOERT_ENOMEM, "simulate: out of memory");
    for (int h = 0; h < st->history_count; h++)
        for (size_t e = 0; e < E; e++) mean[e] += st->history[(size_t)h * E + e] / st->history_count;
    sim_placement next;
    moert_status status = sim_place_groups(s->place, E, c->ranks, c->nodes, s->replicas, s->groups, mean, &next);
    free(mean);
    MOERT_FORWARD_IF_ERROR(status);
    *moved = st->placement.offsets ? (double)sim_placement_moves(&st->placement, &next) * c->expert_bytes : 0.0;
    sim_placement_free(&st->placement);
    st->placement = next;
    return MOERT_OK;
}

moert_router_config sim_router_config(const sim_config *c, const sim_strategy *s, const float *bias,
                                      double relu_threshold) {
    moert_router_config rc = c->router.scaling != 0.0f ? c->router : moert_router_config_default();
    rc.k = c->k, rc.threads = 1, rc.route_groups = 1;
    switch (s->balance) {
    case SIM_BALANCE_NONE: break;
    case SIM_BALANCE_CAPACITY: rc.capacity_factor = s->capacity_factor, rc.drop_policy = s->drop; break;
    case SIM_BALANCE_AUX_FREE: rc.score = MOERT_SCORE_SIGMOID, rc.bias = bias; break;
    case SIM_BALANCE_EXPERT_CHOICE:
        rc = moert_router_config_default(), rc.threads = 1; /* its own policy, no token choice options */
        rc.policy = MOERT_POLICY_EXPERT_CHOICE, rc.capacity_factor = s->capacity_factor;
        break;
    case SIM_BALANCE_RELU:
        rc = moert_router_config_default(), rc.threads = 1;
        rc.policy = MOERT_POLICY_RELU, rc.relu_threshold = (float)relu_threshold;
        break;
    case SIM_BALANCE_NODE_LIMITED:
        rc.groups = c->nodes, rc.topk_groups = s->max_nodes;
        rc.group_score = c->k % s->max_nodes == 0 ? MOERT_GROUP_SCORE_TOPK_SUM : MOERT_GROUP_SCORE_MAX;
        break;
    }
    return rc;
}

moert_status sim_run(const sim_config *c, const sim_strategy *strategies, int count, sim_step_fn on_step,
                     void *context) {
    const size_t E = c->experts;
    const int P = c->ranks;
    const size_t S = c->trace ? 1 : (c->sample < c->tokens_per_rank ? c->sample : c->tokens_per_rank);
    const double scale = c->trace ? 1.0 : (double)c->tokens_per_rank / (double)S;
    const int threads = c->threads > 0 ? c->threads : omp_get_max_threads();
    strategy_state *state = calloc((size_t)count, sizeof *state);
    double *counts = calloc((size_t)P * E, sizeof *counts), *expert_load = calloc(E, sizeof *expert_load);
    double *rank_load = calloc((size_t)P, sizeof *rank_load), *scratch = calloc(6 * (size_t)P, sizeof *scratch);
    int64_t *global = calloc(E, sizeof *global);
    double *unrouted_of = calloc((size_t)P, sizeof *unrouted_of), *dropped_of = calloc((size_t)P, sizeof *dropped_of);
    double *sparsity_of = calloc((size_t)P, sizeof *sparsity_of);
    /* Per thread: a router per strategy would need its own; one router and plan per thread. */
    float **logits = calloc((size_t)threads, sizeof *logits), **tmp = calloc((size_t)threads, sizeof *tmp);
    double *means = c->trace ? NULL : calloc(E, sizeof *means);
    float *drift_tmp = c->trace ? NULL : calloc(2 * E + 4, sizeof *drift_tmp);
    moert_plan **plans = calloc((size_t)threads, sizeof *plans);
    trace_scratch *traces = calloc((size_t)threads, sizeof *traces); /* a trace rank's capacity decisions */
    moert_router **routers = calloc((size_t)threads * (size_t)count, sizeof *routers);
    moert_status st = MOERT_OK;
    if (!state || !counts || !expert_load || !rank_load || !scratch || !global || !unrouted_of || !dropped_of ||
        !sparsity_of || !traces || !logits ||
        !tmp || !plans || !routers || (!c->trace && (!means || !drift_tmp)))
        st = moert_set_error(MOERT_ENOMEM, "simulate: out of memory");
    for (int u = 0; st == MOERT_OK && u < threads; u++) {
        logits[u] = c->trace ? NULL : malloc(S * E * sizeof(float) + 1);
        tmp[u] = malloc((2 * E + 2) * sizeof(float)); /* the noise's scratch, then a sequence's latent */
        if (c->trace) {
            const size_t most = (c->tokens_per_rank ? c->tokens_per_rank : c->trace->tokens / (size_t)P + 1) * c->trace->k;
            if (!trace_scratch_alloc(&traces[u], most, E))
                st = moert_set_error(MOERT_ENOMEM, "simulate: cannot allocate a rank's trace");
        }
        if (st == MOERT_OK) st = moert_plan_create(&plans[u]);
        if (st == MOERT_OK && ((!c->trace && !logits[u]) || !tmp[u]))
            st = moert_set_error(MOERT_ENOMEM, "simulate: cannot allocate %zu sampled tokens", S);
    }
    for (int i = 0; st == MOERT_OK && i < count; i++) {
        const sim_strategy *s = &strategies[i];
        const int window = s->window > 0 ? s->window : 1;
        state[i].history = calloc((size_t)window * E, sizeof(double));
        if (state[i].history == NULL) st = moert_set_error(MOERT_ENOMEM, "simulate: out of memory");
        if (st == MOERT_OK && s->balance == SIM_BALANCE_AUX_FREE)
            st = moert_bias_balancer_create(E, s->gamma, &state[i].balancer);
        if (st == MOERT_OK && s->balance == SIM_BALANCE_RELU) /* from the threshold a top-k of E would have */
            st = moert_threshold_controller_init(&state[i].relu, s->target_sparsity, 0.0, 1.0);
        if (st == MOERT_OK && s->balance == SIM_BALANCE_NODE_LIMITED &&
            (E % (size_t)c->nodes != 0 || s->max_nodes < 1 || s->max_nodes > c->nodes))
            st = moert_set_error(MOERT_EINVAL, "node-limited:%d: %zu experts in %d nodes (the experts must divide into "
                                               "the nodes, and 1 <= M <= nodes)",
                                 s->max_nodes, E, c->nodes);
        /* Balanced and eplb start contiguous: they have measured nothing yet. */
        if (st == MOERT_OK)
            st = sim_place(s->place == SIM_PLACE_ROUND_ROBIN ? SIM_PLACE_ROUND_ROBIN : SIM_PLACE_CONTIGUOUS, E, P, c->nodes,
                           0, NULL, &state[i].placement);
    }
    for (int step = 0; st == MOERT_OK && step < c->steps; step++) {
        if (!c->trace) drifted_means(c, step, means, drift_tmp); /* the same for every strategy */
        for (int i = 0; st == MOERT_OK && i < count; i++) {
            const sim_strategy *s = &strategies[i];
            strategy_state *ss = &state[i];
            moert_router_config rc = sim_router_config(c, s, moert_bias_balancer_bias(ss->balancer), ss->relu.threshold);
            if (s->balance == SIM_BALANCE_RELU) /* the threshold moves each step: routers made anew */
                for (int u = 0; u < threads; u++) {
                    moert_router_destroy(routers[(size_t)u * (size_t)count + (size_t)i]);
                    routers[(size_t)u * (size_t)count + (size_t)i] = NULL;
                }

            memset(counts, 0, (size_t)P * E * sizeof *counts);
            moert_status failed = st;
            char detail[256] = ""; /* a worker's error detail (thread-local), for this thread */
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
            for (int r = 0; r < P; r++) {
                moert_status seen;
#pragma omp atomic read
                seen = failed;
                if (seen != MOERT_OK) continue;
                const int u = omp_get_thread_num();
                double *row = counts + (size_t)r * E;
                if (c->trace) {
                    unrouted_of[r] = trace_counts(c, step, r, s->balance == SIM_BALANCE_CAPACITY ? s->capacity_factor : 0,
                                                  s->drop, row, &traces[u]);
                    dropped_of[r] = 0; /* counted below from the entries */
                    continue;
                }
                /* Each thread's router for this strategy, made once (the bias it borrows is the
                 * balancer's, updated in place). */
                moert_router **router_of = &routers[(size_t)u * (size_t)count + (size_t)i];
                moert_status rs = *router_of ? MOERT_OK : moert_router_create(&rc, E, router_of);
                moert_router *router = *router_of;
                if (rs == MOERT_OK) {
                    synthetic_logits(c, means, step, r, S, logits[u], tmp[u], tmp[u] + E + 2);
                    /* the router's own noise (--noise): keyed by rank and step too */
                    rs = moert_router_set_token_offset(router, ((uint64_t)step * (uint64_t)P + (uint64_t)r) * (uint64_t)S);
                }
                if (rs == MOERT_OK) rs = moert_router_route(router, logits[u], S, plans[u]);
                if (rs == MOERT_OK) {
                    moert_plan_stats ps;
                    moert_plan_get_stats(plans[u], &ps);
                    for (size_t e = 0; e < E; e++) row[e] = (double)ps.expert_counts[e] * scale;
                    dropped_of[r] = (double)ps.dropped * scale, unrouted_of[r] = (double)ps.unrouted * scale;
                    sparsity_of[r] = ps.sparsity;
                }
                if (rs != MOERT_OK) {
#pragma omp critical(moert_sim_error)
                    if (failed == MOERT_OK) {
                        snprintf(detail, sizeof detail, "%s", moert_last_error());
#pragma omp atomic write
                        failed = rs;
                    }
                }
            }
            st = failed;
            if (st != MOERT_OK) {
                st = moert_set_error(st, "%s: %s", s->name, detail);
                break;
            }
            /* The step's loads; for a trace, the drops are the entries capacity refused. */
            sim_step_record rec = {.step = step};
            memset(expert_load, 0, E * sizeof *expert_load);
            for (int r = 0; r < P; r++) {
                for (size_t e = 0; e < E; e++) expert_load[e] += counts[(size_t)r * E + e];
                rec.dropped += dropped_of[r], rec.unrouted += unrouted_of[r];
            }
            double total = 0, max = 0, sq = 0;
            for (size_t e = 0; e < E; e++) total += expert_load[e], max = expert_load[e] > max ? expert_load[e] : max;
            if (c->trace) /* the entries capacity refused */
                rec.dropped = (double)(c->tokens_per_rank ? (size_t)P * c->tokens_per_rank : c->trace->tokens) *
                                  (double)c->trace->k - total;
            const double mean = total / (double)E;
            for (size_t e = 0; e < E; e++) sq += (expert_load[e] - mean) * (expert_load[e] - mean);
            rec.expert_max_over_mean = mean > 0 ? max / mean : 0;
            rec.expert_cv = mean > 0 ? sqrt(sq / (double)E) / mean : 0;
            /* Placement: the history window, and a (re-)plan when due. */
            const int window = s->window > 0 ? s->window : 1;
            memmove(ss->history + E, ss->history, (size_t)(window - 1) * E * sizeof(double));
            memcpy(ss->history, expert_load, E * sizeof(double));
            ss->history_count = ss->history_count < window ? ss->history_count + 1 : window;
            /* This step runs on the placement planned from the steps before it; then, when due,
             * the next plan (after the first step, and every replan_every steps). The moved
             * bytes are the next step's, recorded with the step that decided them. */
            sim_step_model(&ss->placement, &c->cost, counts, rank_load, scratch, &rec.cost);
            const int adaptive = s->place == SIM_PLACE_BALANCED || s->place == SIM_PLACE_EPLB;
            if (adaptive && step + 1 < c->steps && (step == 0 || (s->replan_every > 0 && (step + 1) % s->replan_every == 0)))
                st = replan(c, s, ss, &rec.moved_bytes);
            if (st != MOERT_OK) break;
            const double tokens_all = (double)(c->tokens_per_rank ? (size_t)P * c->tokens_per_rank : c->trace->tokens);
            rec.experts_per_token = total / tokens_all;
            if (s->balance == SIM_BALANCE_RELU) { /* the threshold follows the ranks' mean sparsity */
                double sparsity = 0;
                for (int r = 0; r < P; r++) sparsity += sparsity_of[r] / P;
                st = moert_threshold_controller_update(&ss->relu, sparsity);
            }
            if (ss->balancer != NULL) { /* the bias follows the global loads */
                for (size_t e = 0; e < E; e++) global[e] = (int64_t)llround(expert_load[e]);
                st = moert_bias_balancer_update(ss->balancer, global);
            }
            if (on_step) on_step(context, i, &rec, expert_load, rank_load);
        }
    }
    for (int i = 0; state && i < count; i++) {
        moert_bias_balancer_destroy(state[i].balancer);
        sim_placement_free(&state[i].placement);
        free(state[i].history);
    }
    for (size_t j = 0; routers && j < (size_t)threads * (size_t)count; j++) moert_router_destroy(routers[j]);
    for (int u = 0; plans && u < threads; u++) {
        moert_plan_destroy(plans[u]);
        if (logits) free(logits[u]);
        if (traces) trace_scratch_free(&traces[u]);
        if (tmp) free(tmp[u]);
    }
    free(state), free(counts), free(expert_load), free(rank_load), free(scratch), free(global), free(unrouted_of);
    free(dropped_of), free(sparsity_of), free(traces), free(logits), free(tmp), free(plans), free(routers), free(means), free(drift_tmp);
    return st;
}

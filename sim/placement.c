/* Expert placements for `moert simulate` (see placement.h). */
#include "sim/placement.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

void sim_placement_free(sim_placement *p) {
    if (p == NULL) return;
    free(p->offsets), free(p->rank_of);
    memset(p, 0, sizeof *p);
}

static moert_status alloc_placement(sim_placement *p, size_t E, int P, int N, size_t replicas) {
    memset(p, 0, sizeof *p);
    p->experts = E, p->ranks = P, p->nodes = N;
    p->offsets = calloc(E + 1, sizeof *p->offsets);
    p->rank_of = calloc(replicas ? replicas : 1, sizeof *p->rank_of);
    if (p->offsets == NULL || p->rank_of == NULL) {
        sim_placement_free(p);
        return moert_set_error(MOERT_ENOMEM, "placement: cannot allocate %zu replicas", replicas);
    }
    return MOERT_OK;
}

/* Experts (or replicas) by descending weight, ties to the lower index. */
static const double *sort_weights;
static int by_weight(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (sort_weights[x] != sort_weights[y]) return sort_weights[x] > sort_weights[y] ? -1 : 1;
    return (x > y) - (x < y);
}

static void order_by_weight(const double *w, size_t n, int32_t *order) {
    for (size_t i = 0; i < n; i++) order[i] = (int32_t)i;
    sort_weights = w;
    qsort(order, n, sizeof *order, by_weight);
}

/* The least-loaded of bins [first, first + count) with a free slot, skipping `forbidden`
 * bins (forbid[bin] != 0); -1 if none. */
static int least_loaded(const double *bin_load, const int *free_slots, const uint8_t *forbid, int first, int count) {
    int best = -1;
    for (int b = first; b < first + count; b++)
        if (free_slots[b] > 0 && !(forbid && forbid[b]) && (best < 0 || bin_load[b] < bin_load[best])) best = b;
    return best;
}

/* EPLB on several nodes, as DeepSeek's hierarchical balancing: the experts in `groups`
 * groups of E / groups contiguous experts, the groups packed onto the nodes by load (the
 * heaviest first, each to the least-loaded node with room, groups / N each), then within
 * each node its R / N replicas and its ranks as on one node. */
static moert_status eplb_hierarchical(size_t E, int P, int N, int spare, int groups, const double *load,
                                      sim_placement *out) {
    const size_t G = groups > 0 ? (size_t)groups : E;
    MOERT_RETURN_ERROR_IF(E % G != 0 || G % (size_t)N != 0, MOERT_EINVAL,
                          "eplb placement: %zu experts in %zu groups on %d nodes: the groups must divide the experts, and "
                          "the nodes the groups",
                          E, G, N);
    const size_t per_group = E / G, per_node = E / (size_t)N, replicas = (size_t)spare / (size_t)N;
    const int ranks_per_node = P / N;
    MOERT_RETURN_ERROR_IF((size_t)spare % (size_t)N != 0, MOERT_EINVAL,
                          "eplb placement: %d replicas do not divide into the %d nodes", spare, N);
    MOERT_RETURN_ERROR_IF((per_node + replicas) % (size_t)ranks_per_node != 0, MOERT_EINVAL,
                          "eplb placement: a node's %zu experts and %zu replicas make %zu slots, not a multiple of its %d "
                          "ranks",
                          per_node, replicas, per_node + replicas, ranks_per_node);
    double *group_load = calloc(G, sizeof *group_load), *node_load = calloc((size_t)N, sizeof *node_load);
    double *sub_load = malloc(per_node * sizeof *sub_load);
    int32_t *group_order = malloc(G * sizeof *group_order), *count = calloc(E, sizeof *count);
    int32_t *node_of = malloc(G * sizeof *node_of), *members = malloc(per_node * sizeof *members);
    int *room = malloc((size_t)N * sizeof *room);
    /* each expert's replicas' ranks, node by node: expert e's from start[e] */
    int32_t *ranks = malloc((E + (size_t)spare) * sizeof *ranks);
    size_t *start = malloc(E * sizeof *start), used = 0;
    moert_status st = group_load && node_load && sub_load && group_order && count && node_of && members && room && ranks &&
                              start
                          ? MOERT_OK
                          : moert_set_error(MOERT_ENOMEM, "placement: out of memory");
    for (size_t e = 0; st == MOERT_OK && e < E; e++) group_load[e / per_group] += load[e];
    if (st == MOERT_OK) {
        order_by_weight(group_load, G, group_order);
        for (int v = 0; v < N; v++) room[v] = (int)(G / (size_t)N);
        for (size_t i = 0; i < G; i++) { /* LPT onto the nodes, G / N groups each */
            const int best = least_loaded(node_load, room, NULL, 0, N);
            node_of[group_order[i]] = best, node_load[best] += group_load[group_order[i]], room[best]--;
        }
    }
    for (int v = 0; st == MOERT_OK && v < N; v++) { /* node v: its experts as one node */
        size_t n = 0;
        for (size_t g = 0; g < G; g++)
            if (node_of[g] == v)
                for (size_t i = 0; i < per_group; i++) members[n] = (int32_t)(g * per_group + i), sub_load[n++] = load[g * per_group + i];
        sim_placement node;
        st = sim_place(SIM_PLACE_EPLB, per_node, ranks_per_node, 1, (int)replicas, sub_load, &node);
        for (size_t i = 0; st == MOERT_OK && i < per_node; i++) {
            const int32_t e = members[i], c = node.offsets[i + 1] - node.offsets[i];
            count[e] = c, start[e] = used;
            for (int32_t j = 0; j < c; j++) ranks[used++] = v * ranks_per_node + node.rank_of[node.offsets[i] + j];
        }
        sim_placement_free(&node);
    }
    if (st == MOERT_OK) st = alloc_placement(out, E, P, N, E + (size_t)spare);
    if (st == MOERT_OK)
        for (size_t e = 0; e < E; e++) {
            out->offsets[e + 1] = out->offsets[e] + count[e];
            memcpy(out->rank_of + out->offsets[e], ranks + start[e], (size_t)count[e] * sizeof(int32_t));
        }
    free(group_load), free(node_load), free(sub_load), free(group_order), free(count), free(node_of), free(members);
    free(room), free(ranks), free(start);
    return st;
}

moert_status sim_place(sim_place_kind kind, size_t E, int P, int N, int spare, const double *load, sim_placement *out) {
    return sim_place_groups(kind, E, P, N, spare, 0, load, out);
}

moert_status sim_place_groups(sim_place_kind kind, size_t E, int P, int N, int spare, int groups, const double *load,
                              sim_placement *out) {
    MOERT_RETURN_ERROR_IF(out == NULL, MOERT_EINVAL, "placement: NULL output");
    memset(out, 0, sizeof *out);
    MOERT_RETURN_ERROR_IF(E == 0 || E > (size_t)INT32_MAX, MOERT_EINVAL, "placement: experts=%zu", E);
    MOERT_RETURN_ERROR_IF(P < 1 || N < 1, MOERT_EINVAL, "placement: ranks=%d and nodes=%d must be at least 1", P, N);
    MOERT_RETURN_ERROR_IF(P % N != 0, MOERT_EINVAL, "placement: %d ranks do not divide into %d nodes", P, N);
    MOERT_RETURN_ERROR_IF(spare < 0, MOERT_EINVAL, "placement: %d replicas", spare);
    MOERT_RETURN_ERROR_IF(kind != SIM_PLACE_EPLB && spare != 0, MOERT_EINVAL, "placement: replicas need eplb placement");
    MOERT_RETURN_ERROR_IF((kind == SIM_PLACE_BALANCED || kind == SIM_PLACE_EPLB) && load == NULL, MOERT_EINVAL,
                          "placement: balanced and eplb placements need measured loads");
    if (kind == SIM_PLACE_CONTIGUOUS || kind == SIM_PLACE_ROUND_ROBIN) {
        MOERT_FORWARD_IF_ERROR(alloc_placement(out, E, P, N, E));
        for (size_t e = 0; e < E; e++) {
            out->offsets[e + 1] = (int32_t)(e + 1);
            out->rank_of[e] = kind == SIM_PLACE_CONTIGUOUS ? (int32_t)(e * (size_t)P / E) : (int32_t)(e % (size_t)P);
        }
        return MOERT_OK;
    }
    const size_t R = (size_t)spare, total = E + R;
    MOERT_RETURN_ERROR_IF(groups < 0 || (groups > 0 && (kind != SIM_PLACE_EPLB || E % (size_t)groups != 0 ||
                                                       (size_t)groups % (size_t)N != 0)),
                          MOERT_EINVAL,
                          "placement: %d expert groups: eplb only, and they must divide the %zu experts and be divided by "
                          "the %d nodes",
                          groups, E, N);
    if (kind == SIM_PLACE_EPLB && N > 1) return eplb_hierarchical(E, P, N, spare, groups, load, out);
    if (kind == SIM_PLACE_EPLB) {
        MOERT_RETURN_ERROR_IF(total % (size_t)P != 0, MOERT_EINVAL,
                              "eplb placement: %zu experts and %d replicas make %zu slots, not a multiple of %d ranks", E,
                              spare, total, P);
        MOERT_RETURN_ERROR_IF(R > E * (size_t)(P - 1), MOERT_EINVAL,
                              "eplb placement: %d replicas is more than the slots (%zu experts x %d other ranks)", spare, E,
                              P - 1);
    }
    const int per_rank = (int)((total + (size_t)P - 1) / (size_t)P);
    /* Replicas per expert: the hottest load per replica gets one more, R times. */
    int32_t *count = calloc(E, sizeof *count), *order = malloc(total * sizeof *order), *item_expert = malloc(total * sizeof(int32_t));
    double *item_load = malloc(total * sizeof *item_load), *rank_load = calloc((size_t)P, sizeof *rank_load);
    double *node_load = calloc((size_t)N, sizeof *node_load);
    int *rank_free = malloc((size_t)P * sizeof *rank_free);
    int32_t *item_rank = malloc(total * sizeof *item_rank);
    uint8_t *forbid = calloc((size_t)P, 1);
    size_t *first = malloc((E + 1) * sizeof *first); /* expert e's items: [first[e], first[e + 1]) */
    moert_status st = MOERT_OK;
    if (!count || !order || !item_expert || !item_load || !rank_load || !node_load || !rank_free || !item_rank || !forbid ||
        !first)
        st = moert_set_error(MOERT_ENOMEM, "placement: out of memory");
    for (size_t e = 0; st == MOERT_OK && e < E; e++) count[e] = 1;
    for (size_t r = 0; st == MOERT_OK && r < R; r++) {
        size_t best = E; /* the largest load per replica among experts not yet on every rank */
        for (size_t e = 0; e < E; e++)
            if (count[e] < P && (best == E || load[e] / count[e] > load[best] / count[best])) best = e;
        if (best == E) { /* every expert on every rank already */
            st = moert_set_error(MOERT_EINVAL, "eplb placement: more replicas than ranks for every expert");
            break;
        }
        count[best]++;
    }
    if (st == MOERT_OK) {
        size_t n = 0;
        for (size_t e = 0; e < E; e++) {
            first[e] = n;
            for (int32_t c = 0; c < count[e]; c++) item_expert[n] = (int32_t)e, item_load[n++] = load[e] / count[e];
        }
        first[E] = n;
        for (size_t i = 0; i < total; i++) item_rank[i] = -1;
        order_by_weight(item_load, total, order);
        /* Items by descending load, each to the least-loaded node that has a rank with a free
         * slot and without a replica of the item's expert (eplb; balanced: one node), then to
         * the least-loaded such rank in it. */
        const int nodes = kind == SIM_PLACE_EPLB ? N : 1, ranks_per_node = P / nodes;
        for (int q = 0; q < P; q++) rank_free[q] = per_rank;
        for (size_t i = 0; i < total && st == MOERT_OK; i++) {
            const int32_t it = order[i], e = item_expert[it];
            for (size_t j = first[e]; j < first[e + 1]; j++) /* the ranks holding e already */
                if ((int32_t)j != it && item_rank[j] >= 0) forbid[item_rank[j]] = 1;
            int best_node = -1;
            for (int v = 0; v < nodes; v++) {
                if (least_loaded(rank_load, rank_free, forbid, v * ranks_per_node, ranks_per_node) < 0) continue;
                if (best_node < 0 || node_load[v] < node_load[best_node]) best_node = v;
            }
            int q = best_node < 0 ? -1 : least_loaded(rank_load, rank_free, forbid, best_node * ranks_per_node, ranks_per_node);
            if (q < 0) {
                /* Every free slot is on a rank holding e: move a placed item of another
                 * expert from a rank without e to a free slot it may take, and take its place. */
                for (int32_t j = 0; j < (int32_t)total && q < 0; j++) {
                    if (item_rank[j] < 0 || forbid[item_rank[j]] || item_expert[j] == e) continue;
                    for (int r = 0; r < P && q < 0; r++) {
                        if (rank_free[r] == 0) continue;
                        int holds = 0;
                        for (size_t m = first[item_expert[j]]; m < first[item_expert[j] + 1]; m++) holds |= item_rank[m] == r;
                        if (holds) continue;
                        q = item_rank[j];
                        rank_load[q] -= item_load[j], rank_load[r] += item_load[j];
                        node_load[q / ranks_per_node] -= item_load[j], node_load[r / ranks_per_node] += item_load[j];
                        rank_free[r]--, rank_free[q]++;
                        item_rank[j] = r;
                    }
                }
            }
            for (size_t j = first[e]; j < first[e + 1]; j++)
                if (item_rank[j] >= 0) forbid[item_rank[j]] = 0;
            if (q < 0) {
                st = moert_set_error(MOERT_EINTERNAL, "placement: no rank can take replica of expert %d", e);
                break;
            }
            item_rank[it] = q;
            rank_load[q] += item_load[it], node_load[q / ranks_per_node] += item_load[it], rank_free[q]--;
        }
    }
    if (st == MOERT_OK) st = alloc_placement(out, E, P, N, total);
    if (st == MOERT_OK) {
        for (size_t e = 0; e < E; e++) out->offsets[e + 1] = out->offsets[e] + count[e];
        /* items are expert-major already (built expert by expert) */
        for (size_t i = 0; i < total; i++) out->rank_of[i] = item_rank[i];
    }
    free(count), free(order), free(item_expert), free(item_load), free(rank_load), free(node_load);
    free(rank_free), free(item_rank), free(forbid), free(first);
    return st;
}

void sim_rank_loads(const sim_placement *p, const double *expert_load, double *rank_load) {
    memset(rank_load, 0, (size_t)p->ranks * sizeof *rank_load);
    for (size_t e = 0; e < p->experts; e++) {
        const int32_t first = p->offsets[e], n = p->offsets[e + 1] - first;
        for (int32_t j = first; j < first + n; j++) rank_load[p->rank_of[j]] += expert_load[e] / n;
    }
}

size_t sim_placement_moves(const sim_placement *prev, const sim_placement *next) {
    size_t moves = 0;
    for (size_t e = 0; e < next->experts; e++)
        for (int32_t j = next->offsets[e]; j < next->offsets[e + 1]; j++) {
            int had = 0;
            for (int32_t i = prev->offsets[e]; i < prev->offsets[e + 1]; i++) had |= prev->rank_of[i] == next->rank_of[j];
            moves += !had;
        }
    return moves;
}

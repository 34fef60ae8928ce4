/* The alpha-beta step model of `moert simulate` (see model.h). */
#include "sim/model.h"

#include <stdint.h>
#include <string.h>

sim_cost sim_cost_default(void) {
    return (sim_cost){
        .alpha_intra = 2e-6,
        .beta_intra = 150e9,
        .alpha_inter = 5e-6,
        .beta_inter = 25e9,
        .expert_seconds = 2.0 * 3.0 * 4096.0 * 1408.0 / 100e12,
        .bytes_per_row = 4096.0 * 2.0,
    };
}

void sim_step_model(const sim_placement *p, const sim_cost *c, const double *counts, double *rank_load,
                    double *scratch, sim_step_cost *out) {
    const int P = p->ranks, per_node = P / p->nodes;
    const size_t E = p->experts;
    double *to = scratch;                                   /* [P] rows from the current source */
    double *recv_intra = to + P, *recv_inter = recv_intra + P; /* [P] rows received */
    double *peers_intra = recv_inter + P, *peers_inter = peers_intra + P; /* [P] peers received from */
    int32_t *touched = (int32_t *)(peers_inter + P); /* [P]: the ranks the current source sends to */
    memset(rank_load, 0, (size_t)P * sizeof *rank_load);
    memset(recv_intra, 0, 4 * (size_t)P * sizeof *recv_intra);
    memset(to, 0, (size_t)P * sizeof *to);
    double send_worst = 0, intra_total = 0, inter_total = 0;
    for (int r = 0; r < P; r++) {
        /* Only the ranks this source sends to are visited: O(E) per source, not O(P). */
        const double *row = counts + (size_t)r * E;
        int touched_count = 0;
        for (size_t e = 0; e < E; e++) {
            if (!(row[e] > 0)) continue;
            const int32_t first = p->offsets[e], n = p->offsets[e + 1] - first;
            int own = -1;
            for (int32_t j = first; j < first + n; j++)
                if (p->rank_of[j] == r) own = j;
            if (own >= 0) {
                if (to[r] == 0) touched[touched_count++] = r;
                to[r] += row[e];
            } else {
                for (int32_t j = first; j < first + n; j++) {
                    const int32_t q = p->rank_of[j];
                    if (to[q] == 0) touched[touched_count++] = q;
                    to[q] += row[e] / n;
                }
            }
        }
        double s_intra = 0, s_inter = 0, n_intra = 0, n_inter = 0;
        for (int i = 0; i < touched_count; i++) {
            const int q = touched[i];
            const double rows = to[q];
            to[q] = 0; /* ready for the next source */
            rank_load[q] += rows;
            if (q == r) continue;
            if (q / per_node == r / per_node)
                s_intra += rows, n_intra++, recv_intra[q] += rows, peers_intra[q]++;
            else
                s_inter += rows, n_inter++, recv_inter[q] += rows, peers_inter[q]++;
        }
        intra_total += s_intra, inter_total += s_inter;
        const double t = n_intra * c->alpha_intra + s_intra * c->bytes_per_row / c->beta_intra +
                         n_inter * c->alpha_inter + s_inter * c->bytes_per_row / c->beta_inter;
        send_worst = t > send_worst ? t : send_worst;
    }
    double recv_worst = 0, max_load = 0, sum_load = 0;
    for (int q = 0; q < P; q++) {
        const double t = peers_intra[q] * c->alpha_intra + recv_intra[q] * c->bytes_per_row / c->beta_intra +
                         peers_inter[q] * c->alpha_inter + recv_inter[q] * c->bytes_per_row / c->beta_inter;
        recv_worst = t > recv_worst ? t : recv_worst;
        max_load = rank_load[q] > max_load ? rank_load[q] : max_load;
        sum_load += rank_load[q];
    }
    out->dispatch = send_worst > recv_worst ? send_worst : recv_worst;
    out->combine = out->dispatch;
    out->compute = max_load * c->expert_seconds;
    out->total = out->dispatch + out->compute + out->combine;
    out->intra_bytes = intra_total * c->bytes_per_row;
    out->inter_bytes = inter_total * c->bytes_per_row;
    out->max_rank_load = max_load;
    out->mean_rank_load = sum_load / P;
    out->straggler = sum_load > 0 ? max_load / (sum_load / P) : 0;
}

/* The alpha-beta step model of `moert simulate` (see model.h). */
#include "sim/model.h"

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
    double *unused = peers_inter + P;
    (void)unused;
    memset(rank_load, 0, (size_t)P * sizeof *rank_load);
    memset(recv_intra, 0, 4 * (size_t)P * sizeof *recv_intra);
    double send_worst = 0, intra_total = 0, inter_total = 0;
    for (int r = 0; r < P; r++) {
        memset(to, 0, (size_t)P * sizeof *to);
        const double *row = counts + (size_t)r * E;
        for (size_t e = 0; e < E; e++) {
            if (row[e] == 0) continue;
            const int32_t first = p->offsets[e], n = p->offsets[e + 1] - first;
            int own = -1;
            for (int32_t j = first; j < first + n; j++)
                if (p->rank_of[j] == r) own = j;
            if (own >= 0)
                to[r] += row[e];
            else
                for (int32_t j = first; j < first + n; j++) to[p->rank_of[j]] += row[e] / n;
        }
        double s_intra = 0, s_inter = 0, n_intra = 0, n_inter = 0;
        for (int q = 0; q < P; q++) {
            if (to[q] == 0) continue;
            rank_load[q] += to[q];
            if (q == r) continue;
            if (q / per_node == r / per_node)
                s_intra += to[q], n_intra++, recv_intra[q] += to[q], peers_intra[q]++;
            else
                s_inter += to[q], n_inter++, recv_inter[q] += to[q], peers_inter[q]++;
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

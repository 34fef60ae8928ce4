#include "tests/reference_gate.h"

#include <math.h>
#include <stdlib.h>

typedef struct ranked {
    double key;
    int32_t id;
} ranked;

/* Descending key, ties to the lower id. */
static int by_rank(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

void reference_gate_row(const moert_topk_gate_params *p, const float *row, size_t experts,
                        int32_t *ids, double *weights, double *lse, double *probs) {
    double m = -INFINITY;
    for (size_t e = 0; e < experts; e++) m = row[e] > m ? row[e] : m;
    double s = 0.0;
    for (size_t e = 0; e < experts; e++) s += exp((double)row[e] - m);
    *lse = m + log(s);
    if (probs)
        for (size_t e = 0; e < experts; e++) probs[e] = exp((double)row[e] - *lse);

    ranked *r = malloc(experts * sizeof *r);
    size_t candidates = 0;
    int *group_kept = calloc(p->groups > 0 ? (size_t)p->groups : 1, sizeof(int));
    if (p->groups > 0) {
        /* Group-limited: judge each group by its scores, keep the best topk_groups. */
        const size_t G = (size_t)p->groups, n = experts / G;
        ranked *groups = malloc(G * sizeof *groups), *g = malloc(n * sizeof *g);
        for (size_t gi = 0; gi < G; gi++) {
            for (size_t i = 0; i < n; i++) {
                const size_t e = gi * n + i;
                double score = row[e];
                if (p->score == MOERT_SCORE_SIGMOID)
                    score = sigmoid(row[e]) + (p->bias ? p->bias[e] : 0.0);
                else if (p->softmax_order == MOERT_SOFTMAX_PRE)
                    score = exp((double)row[e] - *lse);
                g[i] = (ranked){score, (int32_t)e};
            }
            qsort(g, n, sizeof *g, by_rank);
            double score = g[0].key;
            if (p->group_score == MOERT_GROUP_SCORE_TOPK_SUM) {
                score = 0.0;
                for (int i = 0; i < p->k / p->topk_groups; i++) score += g[i].key;
            }
            groups[gi] = (ranked){score, (int32_t)gi};
        }
        qsort(groups, G, sizeof *groups, by_rank);
        for (int i = 0; i < p->topk_groups; i++) group_kept[groups[i].id] = 1;
        free(groups), free(g);
    }
    for (size_t e = 0; e < experts; e++) {
        if (p->groups > 0 && !group_kept[e / (experts / (size_t)p->groups)]) continue;
        r[candidates].id = (int32_t)e;
        r[candidates].key = row[e];
        if (p->bias) r[candidates].key = sigmoid(row[e]) + p->bias[e];
        candidates++;
    }
    free(group_kept);
    qsort(r, candidates, sizeof *r, by_rank);
    const int k = p->k;
    double sum = 0.0;
    for (int j = 0; j < k; j++) {
        ids[j] = r[j].id;
        const double x = row[r[j].id];
        if (p->score == MOERT_SCORE_SIGMOID)
            weights[j] = sigmoid(x);
        else if (p->softmax_order == MOERT_SOFTMAX_POST)
            weights[j] = exp(x - (double)row[r[0].id]);
        else
            weights[j] = exp(x - *lse);
        sum += weights[j];
    }
    const int normalise = p->score == MOERT_SCORE_SOFTMAX
                              ? (p->softmax_order == MOERT_SOFTMAX_POST || p->renormalize)
                              : p->renormalize;
    for (int j = 0; j < k; j++) {
        if (normalise) weights[j] /= sum;
        weights[j] *= p->scaling;
    }
    /* Entries go by descending weight, ties to the lower id (a bias may have chosen them
     * in another order). The weights are floats in the kernel, so the order is the order
     * of the weights rounded to float: values that round together tie. */
    for (int j = 0; j < k; j++) weights[j] = (double)(float)weights[j];
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && (weights[j - 1] < weights[j] ||
                                  (weights[j - 1] == weights[j] && ids[j - 1] > ids[j])); j--) {
            double tw = weights[j];
            weights[j] = weights[j - 1];
            weights[j - 1] = tw;
            int32_t ti = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = ti;
        }
    free(r);
}

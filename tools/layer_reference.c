/* The double-precision reference layer (see layer_reference.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tools/layer_reference.h"

/* One expert on one row, in double: y [d]. h is scratch [f]. */
static void expert_row(const layer_reference *ref, size_t e, const float *x, double *h, double *y) {
    const size_t d = ref->d, f = ref->f;
    if (ref->kind == MOERT_EXPERT_SYNTHETIC) {
        const double a = 1.0 - 1.0 / (double)(e + 2), b = (double)(e + 1) / 64.0;
        for (size_t j = 0; j < d; j++) {
            double v = x[j];
            for (int c = 0; c < ref->synthetic_cost; c++) v = v * a + b;
            y[j] = v;
        }
        return;
    }
    const float *w1 = ref->w1[e], *w3 = ref->w3[e], *w2 = ref->w2[e];
    for (size_t i = 0; i < f; i++) {
        double a = 0, b = 0;
        for (size_t j = 0; j < d; j++) {
            a += (double)x[j] * w1[j * f + i];
            b += (double)x[j] * w3[j * f + i];
        }
        h[i] = a / (1.0 + exp(-a)) * b;
    }
    for (size_t j = 0; j < d; j++) {
        double s = 0;
        for (size_t i = 0; i < f; i++) s += h[i] * w2[i * d + j];
        y[j] = s;
    }
}

void layer_reference_forward(const layer_reference *ref, const moert_plan *plan, const float *x, double *out) {
    moert_plan_view v;
    moert_plan_get_view(plan, &v);
    const size_t d = ref->d;
    /* Tokens are independent: in parallel (--check on real shapes is slow in double). */
#pragma omp parallel
    {
        double *h = malloc((ref->f + 1) * sizeof(double)), *y = malloc(d * sizeof(double));
        if (h == NULL || y == NULL) abort(); /* a reference: no recovery to offer */
#pragma omp for schedule(dynamic, 4)
        for (size_t t = 0; t < v.tokens; t++) {
            double *o = out + t * d;
            memset(o, 0, d * sizeof(double));
            for (int64_t i = v.token_offsets[t]; i < v.token_offsets[t + 1]; i++) {
                expert_row(ref, (size_t)v.expert_ids[i], x + t * d, h, y);
                for (size_t j = 0; j < d; j++) o[j] += (double)v.weights[i] * y[j];
            }
        }
        free(h);
        free(y);
    }
}

double layer_reference_error(const float *got, const double *want, size_t tokens, size_t d) {
    double worst = 0;
    for (size_t t = 0; t < tokens; t++) {
        double scale = 0, diff = 0;
        for (size_t j = 0; j < d; j++) {
            const double g = got[t * d + j], w = want[t * d + j];
            /* A NaN or infinity anywhere fails the check (fmax would skip a NaN). */
            if (!isfinite(g) || !isfinite(w)) return INFINITY;
            scale = fmax(scale, fabs(w));
            diff = fmax(diff, fabs(g - w));
        }
        const double e = scale > 0 ? diff / scale : diff;
        worst = e > worst ? e : worst;
    }
    return worst;
}

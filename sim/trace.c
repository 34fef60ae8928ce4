/* Trace replay's readers (see trace.h). */
#include "sim/trace.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "sim/text.h"
#include "tools/npy.h"

void sim_trace_free(sim_trace *t) {
    if (t == NULL) return;
    free(t->ids), free(t->weights);
    memset(t, 0, sizeof *t);
}

/* Growing arrays of a trace being parsed. */
static moert_status reserve(sim_trace *t, size_t *cap, size_t need) {
    if (need <= *cap) return MOERT_OK;
    size_t want = *cap ? *cap : 4096;
    while (want < need) want *= 2;
    int32_t *ids = realloc(t->ids, want * sizeof *ids);
    if (ids) t->ids = ids;
    float *w = ids ? realloc(t->weights, want * sizeof *w) : NULL;
    if (w) t->weights = w;
    MOERT_RETURN_ERROR_IF(!ids || !w, MOERT_ENOMEM, "trace: cannot allocate %zu entries", want);
    *cap = want;
    return MOERT_OK;
}

moert_status sim_trace_parse_esft(const char *text, size_t size, const char *name, size_t k, size_t experts,
                                  sim_trace *t) {
    memset(t, 0, sizeof *t);
    MOERT_RETURN_ERROR_IF(k == 0 || experts == 0, MOERT_EINVAL, "%s: k and experts must be at least 1", name);
    size_t cap = 0, entries = 0, line = 0;
    const char *p = text, *end = text + size;
    moert_status st = MOERT_OK;
    while (p < end && st == MOERT_OK) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL) eol = end;
        line++;
        if (eol == p || (eol == p + 1 && *p == '\r')) { /* an empty line: nothing */
            p = eol + 1;
            continue;
        }
        /* ids, then an empty field, then the weights */
        size_t n_ids = 0, n_w = 0;
        int in_weights = 0;
        const size_t first = entries;
        const char *q = p;
        while (q < eol && st == MOERT_OK) {
            if (*q == '\t') {
                if (!in_weights && q + 1 < eol && q[1] == '\t') in_weights = 1, q++;
                q++;
                continue;
            }
            if (*q == '\r' && q + 1 == eol) break;
            char *after = NULL;
            errno = 0;
            if (!in_weights) {
                const long v = strtol(q, &after, 10);
                if (after == q || after > eol || errno != 0 || (after < eol && *after != '\t' && *after != '\r'))
                    st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: expert id %zu is not an integer", name, line,
                                         n_ids);
                else if (v < 0 || (size_t)v >= experts)
                    st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: expert id %ld is outside 0..%zu", name, line, v,
                                         experts - 1);
                else if ((st = reserve(t, &cap, first + n_ids + 1)) == MOERT_OK)
                    t->ids[first + n_ids++] = (int32_t)v;
            } else {
                const float v = strtof(q, &after);
                if (after == q || after > eol || (after < eol && *after != '\t' && *after != '\r') || !isfinite(v))
                    st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: weight %zu is not a finite number", name, line,
                                         n_w);
                else if (n_w >= n_ids)
                    st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: more weights than the %zu expert ids", name,
                                         line, n_ids);
                else
                    t->weights[first + n_w++] = v;
            }
            q = after;
        }
        if (st != MOERT_OK) break;
        if (!in_weights) st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: no weights (ids, an empty field, then weights)",
                                              name, line);
        else if (n_w != n_ids)
            st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: %zu expert ids but %zu weights", name, line, n_ids, n_w);
        else if (n_ids % k != 0)
            st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: %zu entries is not a whole number of tokens of k=%zu "
                                                 "(ragged rows)",
                                 name, line, n_ids, k);
        entries += n_ids;
        t->sequences++;
        p = eol + 1;
    }
    if (st == MOERT_OK && entries == 0) st = moert_set_error(MOERT_EBADDATA, "%s: no tokens", name);
    if (st != MOERT_OK) {
        sim_trace_free(t);
        return st;
    }
    t->tokens = entries / k, t->k = k;
    return MOERT_OK;
}

moert_status sim_trace_read_esft(const char *path, size_t k, size_t experts, sim_trace *t) {
    memset(t, 0, sizeof *t);
    char *text;
    size_t size;
    MOERT_FORWARD_IF_ERROR(sim_read_text(path, &text, &size)); /* NUL-terminated: strtol and strtof stop there */
    const moert_status st = sim_trace_parse_esft(text, size, path, k, experts, t);
    free(text);
    return st;
}

moert_status sim_trace_read_npy(const char *ids_path, const char *weights_path, size_t experts, sim_trace *t) {
    memset(t, 0, sizeof *t);
    int64_t *ids = NULL;
    size_t shape[2];
    MOERT_FORWARD_IF_ERROR(npy_read_i64(ids_path, 2, &ids, shape));
    const size_t n = shape[0], k = shape[1];
    moert_status st = MOERT_OK;
    if (n == 0 || k == 0) st = moert_set_error(MOERT_EBADDATA, "%s: shape (%zu, %zu): no tokens", ids_path, n, k);
    for (size_t i = 0; st == MOERT_OK && i < n * k; i++)
        if (ids[i] < 0 || (uint64_t)ids[i] >= experts)
            st = moert_set_error(MOERT_EBADDATA, "%s: ids[%zu,%zu] = %lld is outside 0..%zu", ids_path, i / k, i % k,
                                 (long long)ids[i], experts - 1);
    float *w = NULL;
    if (st == MOERT_OK && weights_path != NULL) {
        size_t wshape[2];
        st = npy_read_f32(weights_path, 2, &w, wshape);
        if (st == MOERT_OK && (wshape[0] != n || wshape[1] != k))
            st = moert_set_error(MOERT_EBADDATA, "%s: shape (%zu, %zu), the ids' is (%zu, %zu)", weights_path, wshape[0],
                                 wshape[1], n, k);
        for (size_t i = 0; st == MOERT_OK && i < n * k; i++)
            if (!isfinite(w[i])) st = moert_set_error(MOERT_EBADDATA, "%s: weights[%zu,%zu] is not finite", weights_path,
                                                      i / k, i % k);
    }
    if (st == MOERT_OK) {
        t->ids = malloc(n * k * sizeof(int32_t));
        t->weights = w ? w : malloc(n * k * sizeof(float));
        w = NULL;
        if (!t->ids || !t->weights) st = moert_set_error(MOERT_ENOMEM, "%s: cannot allocate the trace", ids_path);
    }
    if (st == MOERT_OK) {
        for (size_t i = 0; i < n * k; i++) t->ids[i] = (int32_t)ids[i];
        if (weights_path == NULL)
            for (size_t i = 0; i < n * k; i++) t->weights[i] = 1.0f / (float)k;
        t->tokens = n, t->k = k, t->sequences = 1;
    }
    free(ids), free(w);
    if (st != MOERT_OK) sim_trace_free(t);
    return st;
}

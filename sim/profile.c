/* Popularity profiles of `moert simulate` (see profile.h). */
#include "sim/profile.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "sim/text.h"

/* A whole-string number: the text ends where the number does. */
static int parse_number(const char *text, double *out) {
    char *end = NULL;
    errno = 0;
    const double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno != 0 || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

moert_status sim_profile_parse(const char *spec, size_t E, double *means) {
    MOERT_RETURN_ERROR_IF(spec == NULL || E == 0, MOERT_EINVAL, "profile: empty");
    char buf[128];
    MOERT_RETURN_ERROR_IF(strlen(spec) >= sizeof buf, MOERT_EINVAL, "profile '%.40s...': too long", spec);
    strcpy(buf, spec);
    char *parts[4] = {buf, NULL, NULL, NULL};
    int n = 1;
    for (char *p = buf; *p && n < 4; p++)
        if (*p == ':') *p = '\0', parts[n++] = p + 1;
    if (!strcmp(parts[0], "uniform") && n == 1) {
        for (size_t e = 0; e < E; e++) means[e] = -log((double)E);
        return MOERT_OK;
    }
    double a, b;
    if (!strcmp(parts[0], "zipf") && n == 2) {
        MOERT_RETURN_ERROR_IF(!parse_number(parts[1], &a) || !(a > 0), MOERT_EINVAL,
                              "profile '%s': zipf:S needs an exponent S > 0", spec);
        double z = 0;
        for (size_t e = 0; e < E; e++) z += pow((double)(e + 1), -a);
        for (size_t e = 0; e < E; e++) means[e] = -a * log((double)(e + 1)) - log(z);
        return MOERT_OK;
    }
    if (!strcmp(parts[0], "hot") && n == 3) {
        MOERT_RETURN_ERROR_IF(!parse_number(parts[1], &a) || a != floor(a) || a < 1 || a >= (double)E, MOERT_EINVAL,
                              "profile '%s': hot:N:F needs 1 <= N < experts (%zu)", spec, E);
        MOERT_RETURN_ERROR_IF(!parse_number(parts[2], &b) || !(b > 0 && b < 1), MOERT_EINVAL,
                              "profile '%s': hot:N:F needs a share 0 < F < 1", spec);
        const size_t hot = (size_t)a;
        for (size_t e = 0; e < E; e++) means[e] = e < hot ? log(b / (double)hot) : log((1 - b) / (double)(E - hot));
        return MOERT_OK;
    }
    return moert_set_error(MOERT_EINVAL, "profile '%s' is not uniform, zipf:S, hot:N:F or a count table", spec);
}

/* The fields of one CSV line (no quoting: the count tables have none), in place. */
static int split_fields(char *line, char **fields, int max) {
    int n = 0;
    fields[n++] = line;
    for (char *p = line; *p; p++)
        if (*p == ',') {
            if (n == max) return -1;
            *p = '\0', fields[n++] = p + 1;
        }
    return n;
}

#define PROFILE_MAX_FIELDS 32
#define PROFILE_MAX_FILTERS 8

moert_status sim_profile_parse_counts(const char *text, size_t size, const char *name, const char *select, size_t *E_io,
                                      double **means_out) {
    *means_out = NULL;
    char *copy = malloc(size + 1), *sel = select ? strdup(select) : NULL;
    double *sums = NULL;
    size_t cap = 0, found = 0;
    moert_status st = copy == NULL || (select && !sel) ? moert_set_error(MOERT_ENOMEM, "%s: out of memory", name) : MOERT_OK;
    char *filter_col[PROFILE_MAX_FILTERS], *filter_val[PROFILE_MAX_FILTERS];
    int filters = 0, filter_idx[PROFILE_MAX_FILTERS];
    if (st == MOERT_OK && sel && *sel) {
        char *f[PROFILE_MAX_FILTERS + 1];
        const int n = split_fields(sel, f, PROFILE_MAX_FILTERS);
        if (n < 0) st = moert_set_error(MOERT_EINVAL, "--counts-select: more than %d filters", PROFILE_MAX_FILTERS);
        for (int i = 0; st == MOERT_OK && i < n; i++) {
            char *eq = strchr(f[i], '=');
            if (eq == NULL || eq == f[i])
                st = moert_set_error(MOERT_EINVAL, "--counts-select: '%s' is not column=value", f[i]);
            else
                *eq = '\0', filter_col[filters] = f[i], filter_val[filters++] = eq + 1;
        }
    }
    size_t line_no = 0;
    int expert_col = -1, count_col = -1, columns = 0;
    if (st == MOERT_OK) {
        memcpy(copy, text, size);
        copy[size] = '\0';
    }
    char *p = copy;
    while (st == MOERT_OK && p && *p) {
        char *eol = strchr(p, '\n');
        if (eol) *eol = '\0';
        const size_t len = strlen(p);
        if (len && p[len - 1] == '\r') p[len - 1] = '\0';
        line_no++;
        char *fields[PROFILE_MAX_FIELDS];
        if (*p == '\0') { /* blank line */
            p = eol ? eol + 1 : NULL;
            continue;
        }
        const int n = split_fields(p, fields, PROFILE_MAX_FIELDS);
        if (n < 0) {
            st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: more than %d fields", name, line_no, PROFILE_MAX_FIELDS);
            break;
        }
        if (columns == 0) { /* the header */
            columns = n;
            for (int i = 0; i < n; i++) {
                if (!strcmp(fields[i], "expert")) expert_col = i;
                if (!strcmp(fields[i], "count")) count_col = i;
            }
            for (int j = 0; j < filters && st == MOERT_OK; j++) {
                filter_idx[j] = -1;
                for (int i = 0; i < n; i++)
                    if (!strcmp(fields[i], filter_col[j])) filter_idx[j] = i;
                if (filter_idx[j] < 0)
                    st = moert_set_error(MOERT_EINVAL, "%s: --counts-select: no column '%s' in the header", name,
                                         filter_col[j]);
            }
            if (st == MOERT_OK && (expert_col < 0 || count_col < 0))
                st = moert_set_error(MOERT_EBADDATA, "%s: line 1: the header names no 'expert' and 'count' columns", name);
        } else if (n != columns) {
            st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: %d fields, the header has %d", name, line_no, n, columns);
        } else {
            int match = 1;
            for (int j = 0; j < filters; j++) match &= !strcmp(fields[filter_idx[j]], filter_val[j]);
            double ex, cnt;
            if (!parse_number(fields[expert_col], &ex) || ex < 0 || ex != floor(ex) || ex >= 1048576)
                st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: expert '%s' is not an id in 0..2^20", name, line_no,
                                     fields[expert_col]);
            else if (!parse_number(fields[count_col], &cnt) || cnt < 0)
                st = moert_set_error(MOERT_EBADDATA, "%s: line %zu: count '%s' is not a number >= 0", name, line_no,
                                     fields[count_col]);
            else if (match) {
                const size_t e = (size_t)ex;
                if (e >= cap) {
                    size_t want = cap ? cap : 64;
                    while (want <= e) want *= 2;
                    double *more = realloc(sums, want * sizeof *more);
                    if (more == NULL) {
                        st = moert_set_error(MOERT_ENOMEM, "%s: out of memory", name);
                        break;
                    }
                    memset(more + cap, 0, (want - cap) * sizeof *more);
                    sums = more, cap = want;
                }
                sums[e] += cnt; /* a sum of finite counts may still overflow: checked below */
                found = e + 1 > found ? e + 1 : found;
            }
        }
        p = eol ? eol + 1 : NULL;
    }
    if (st == MOERT_OK && columns == 0) st = moert_set_error(MOERT_EBADDATA, "%s: empty (no header)", name);
    if (st == MOERT_OK && found == 0) st = moert_set_error(MOERT_EBADDATA, "%s: no rows match '%s'", name, select ? select : "");
    if (st == MOERT_OK && *E_io != 0 && found != *E_io)
        st = moert_set_error(MOERT_EINVAL, "%s: the counts name %zu experts, the simulation has %zu", name, found, *E_io);
    /* Relative to the largest count, so that huge counts cannot overflow the total. */
    double largest = 0, total = 0;
    for (size_t e = 0; st == MOERT_OK && e < found; e++) largest = sums[e] > largest ? sums[e] : largest;
    if (st == MOERT_OK && !(largest > 0 && isfinite(largest)))
        st = moert_set_error(MOERT_EBADDATA, "%s: the counts sum to 0 or are not finite", name);
    for (size_t e = 0; st == MOERT_OK && e < found; e++) sums[e] /= largest, total += sums[e];
    double *means = NULL;
    if (st == MOERT_OK) {
        means = malloc(found * sizeof *means);
        if (means == NULL) st = moert_set_error(MOERT_ENOMEM, "%s: out of memory", name);
    }
    if (st == MOERT_OK) {
        /* An expert never chosen gets a hundredth of the least count's probability, not -inf. */
        double least = INFINITY;
        for (size_t e = 0; e < found; e++)
            if (sums[e] > 0 && sums[e] < least) least = sums[e];
        for (size_t e = 0; e < found; e++) means[e] = log((sums[e] > 0 ? sums[e] : least / 100) / total);
        *E_io = found;
        *means_out = means;
    }
    free(copy), free(sel), free(sums);
    return st;
}

moert_status sim_profile_read_counts(const char *path, const char *select, size_t *E_io, double **means) {
    *means = NULL;
    char *text;
    size_t size;
    MOERT_FORWARD_IF_ERROR(sim_read_text(path, &text, &size));
    const moert_status st = sim_profile_parse_counts(text, size, path, select, E_io, means);
    free(text);
    return st;
}

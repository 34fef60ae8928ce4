#include "tools/plan_io.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "tools/npy.h"

void *plan_stats_json(const moert_plan_stats *s) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "tokens", (double)s->tokens);
    cJSON_AddNumberToObject(o, "experts", (double)s->experts);
    cJSON_AddNumberToObject(o, "assignments", (double)s->assignments);
    cJSON_AddNumberToObject(o, "routed", (double)s->routed);
    cJSON_AddNumberToObject(o, "dropped", (double)s->dropped);
    cJSON_AddNumberToObject(o, "unrouted", (double)s->unrouted);
    cJSON_AddNumberToObject(o, "capacity", (double)s->capacity);
    cJSON_AddNumberToObject(o, "aux_loss", s->aux_loss);
    cJSON_AddNumberToObject(o, "z_loss", s->z_loss);
    cJSON_AddNumberToObject(o, "max_over_mean", s->max_over_mean);
    cJSON_AddNumberToObject(o, "cv", s->cv);
    cJSON_AddNumberToObject(o, "entropy", s->entropy);
    cJSON_AddNumberToObject(o, "experts_per_token", s->experts_per_token_mean);
    cJSON_AddNumberToObject(o, "sparsity", s->sparsity);
    if (!isnan(s->threshold)) cJSON_AddNumberToObject(o, "threshold", s->threshold); /* batch-topk */
    cJSON *hist = cJSON_AddArrayToObject(o, "experts_per_token_histogram");
    size_t last = 0;
    for (size_t n = 0; n <= s->experts; n++)
        if (s->experts_per_token[n]) last = n;
    for (size_t n = 0; n <= last; n++) cJSON_AddItemToArray(hist, cJSON_CreateNumber((double)s->experts_per_token[n]));
    cJSON *counts = cJSON_AddArrayToObject(o, "expert_counts");
    cJSON *routed = cJSON_AddArrayToObject(o, "expert_routed");
    for (size_t e = 0; e < s->experts; e++) {
        cJSON_AddItemToArray(counts, cJSON_CreateNumber((double)s->expert_counts[e]));
        cJSON_AddItemToArray(routed, cJSON_CreateNumber((double)s->expert_routed[e]));
    }
    return o;
}

enum { PLAN_FILES = 5 };
static const char *const plan_files[PLAN_FILES] = {"token_offsets.npy", "expert_ids.npy", "weights.npy",
                                                   "expert_counts.npy", "stats.json"};

static moert_status write_json(const char *path, const cJSON *o) {
    char *text = cJSON_Print(o);
    MOERT_RETURN_ERROR_IF(text == NULL, MOERT_ENOMEM, "cannot format %s", path);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        cJSON_free(text);
        return moert_set_error(MOERT_EIO, "%s: %s", path, strerror(errno));
    }
    const size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n && fputc('\n', f) != EOF;
    ok = fclose(f) == 0 && ok;
    cJSON_free(text);
    MOERT_RETURN_ERROR_IF(!ok, MOERT_EIO, "%s: cannot write", path);
    return MOERT_OK;
}

moert_status plan_write_dir(const moert_plan *plan, const char *dir, const void *extra) {
    moert_plan_view v;
    moert_plan_stats s;
    MOERT_FORWARD_IF_ERROR(moert_plan_get_view(plan, &v));
    MOERT_FORWARD_IF_ERROR(moert_plan_get_stats(plan, &s));
    struct stat st;
    if (stat(dir, &st) != 0) {
        MOERT_RETURN_ERROR_IF(mkdir(dir, 0777) != 0, MOERT_EIO, "%s: cannot create: %s", dir, strerror(errno));
    } else {
        MOERT_RETURN_ERROR_IF(!S_ISDIR(st.st_mode), MOERT_EIO, "%s: not a directory", dir);
    }
    char tmp[PLAN_FILES][4096], final[PLAN_FILES][4096];
    for (int i = 0; i < PLAN_FILES; i++) {
        MOERT_RETURN_ERROR_IF(snprintf(final[i], sizeof final[i], "%s/%s", dir, plan_files[i]) >= (int)sizeof final[i],
                              MOERT_EINVAL, "%s: path too long", dir);
        snprintf(tmp[i], sizeof tmp[i], "%s/.%s.%ld.tmp", dir, plan_files[i], (long)getpid());
    }
    const size_t offsets_shape = v.tokens + 1, entries_shape = v.entries, experts_shape = v.experts;
    moert_status status = npy_write(tmp[0], NPY_I64, 1, &offsets_shape, v.token_offsets);
    if (status == MOERT_OK) status = npy_write(tmp[1], NPY_I32, 1, &entries_shape, v.expert_ids);
    if (status == MOERT_OK) status = npy_write(tmp[2], NPY_F32, 1, &entries_shape, v.weights);
    if (status == MOERT_OK) status = npy_write(tmp[3], NPY_I64, 1, &experts_shape, s.expert_counts);
    if (status == MOERT_OK) {
        cJSON *o = plan_stats_json(&s);
        /* The expert-major slots: the entries, or experts x capacity when padded. */
        cJSON_AddNumberToObject(o, "slots", (double)v.slots);
        if (extra != NULL) {
            const cJSON *item;
            cJSON_ArrayForEach(item, (const cJSON *)extra) {
                cJSON_AddItemToObject(o, item->string, cJSON_Duplicate(item, 1));
            }
        }
        status = write_json(tmp[4], o);
        cJSON_Delete(o);
    }
    int renamed = 0;
    while (status == MOERT_OK && renamed < PLAN_FILES) {
        if (rename(tmp[renamed], final[renamed]) != 0)
            status = moert_set_error(MOERT_EIO, "%s: %s", final[renamed], strerror(errno));
        else
            renamed++;
    }
    if (status != MOERT_OK) /* none of this run's files stay, renamed or not */
        for (int i = 0; i < PLAN_FILES; i++) {
            unlink(tmp[i]);
            if (i < renamed) unlink(final[i]);
        }
    return status;
}

void plan_remove_dir_files(const char *dir) {
    char name[4096];
    for (int i = 0; i < PLAN_FILES; i++)
        if (snprintf(name, sizeof name, "%s/%s", dir, plan_files[i]) < (int)sizeof name) unlink(name);
}

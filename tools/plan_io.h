/* Writing a plan for others to read: the token-major arrays and per-expert counts as
 * .npy files, the statistics as JSON. */
#ifndef MOERT_TOOLS_PLAN_IO_H
#define MOERT_TOOLS_PLAN_IO_H

#include "moert/moert.h"

/* The statistics as a cJSON object (returned as void * so that callers need no cJSON). */
void *plan_stats_json(const moert_plan_stats *stats);

/* Writes into `dir` (created if missing): token_offsets.npy (int64 [T+1]),
 * expert_ids.npy (int32 [nnz]), weights.npy (float32 [nnz]), expert_counts.npy (int64 [E],
 * kept) and stats.json (the statistics, plus the fields of `extra`, a cJSON object or
 * NULL). Each file is written under a temporary name and renamed at the end; a failure
 * leaves none of them, half-written or renamed. */
moert_status plan_write_dir(const moert_plan *plan, const char *dir, const void *extra);

/* Removes the plan files above from `dir`, if there: after a failed run, so that the
 * directory does not offer an earlier run's plan as this one's. */
void plan_remove_dir_files(const char *dir);

#endif /* MOERT_TOOLS_PLAN_IO_H */

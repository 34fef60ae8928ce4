/* Internal to `moert simulate`: the popularity profile of synthetic logits, as per-expert
 * means log(p_e) (the logits are means + N(0, 1), over a temperature):
 * - "uniform": every p_e equal;
 * - "zipf:S": p_e proportional to 1 / (e + 1)^S, S > 0;
 * - "hot:N:F": N hot experts (0..N-1) share F of the probability, 0 < F < 1, 1 <= N < E;
 * - a per-expert count table (CSV with a header naming columns expert and count, like
 *   ../shared/data/olmoe/expert_counts_all.csv), its rows chosen by column=value filters,
 *   p_e proportional to the summed counts. */
#ifndef MOERT_SIM_PROFILE_H
#define MOERT_SIM_PROFILE_H

#include <stddef.h>

#include "moert/status.h"

/* means [experts] from a profile string; MOERT_EINVAL naming what does not parse. */
moert_status sim_profile_parse(const char *spec, size_t experts, double *means);

/* means [experts] from a count table: the rows whose columns match every "column=value" of
 * `select` (comma-separated; NULL or "" for all rows). *experts_found receives the largest
 * expert id + 1 of the matching rows, which must equal `experts` (0: take it). Bad CSV is
 * MOERT_EBADDATA naming the line. means is malloc'd when experts is 0. */
moert_status sim_profile_read_counts(const char *path, const char *select, size_t *experts, double **means);

/* The same from text[0, size) with text[size] == '\0' (the fuzz target's entry). */
moert_status sim_profile_parse_counts(const char *text, size_t size, const char *name, const char *select,
                                      size_t *experts, double **means);

#endif /* MOERT_SIM_PROFILE_H */

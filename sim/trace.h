/* Internal to `moert simulate`: recorded routing decisions (trace replay).
 *
 * Two formats:
 * - moert's own: ids.npy int32 [N, k] and, optionally, weights.npy float32 [N, k]
 *   (weights 1/k each when absent);
 * - DeepSeek ESFT's expert-score dumps: a text file per layer, one line per sequence:
 *   the sequence's token-major expert ids separated by tabs, then an empty field (two
 *   tabs), then the weights at the same positions. k is given (6 for ESFT-vanilla-lite).
 * Every id must lie in [0, experts); every row has k entries. */
#ifndef MOERT_SIM_TRACE_H
#define MOERT_SIM_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "moert/status.h"

typedef struct sim_trace {
    size_t tokens, k;
    int32_t *ids;     /* [tokens, k] */
    float *weights;   /* [tokens, k] */
    size_t sequences; /* ESFT: lines; npy: 1 */
} sim_trace;

/* The ESFT text format (see above); bad input is MOERT_EBADDATA naming line and field. */
moert_status sim_trace_read_esft(const char *path, size_t k, size_t experts, sim_trace *trace);

/* The same from text[0, size), where text[size] is '\0' (the fuzz target's entry); `name`
 * names it in errors. */
moert_status sim_trace_parse_esft(const char *text, size_t size, const char *name, size_t k, size_t experts,
                                  sim_trace *trace);

/* ids.npy [N, k] int32 (and weights.npy [N, k] float32, or NULL). */
moert_status sim_trace_read_npy(const char *ids_path, const char *weights_path, size_t experts, sim_trace *trace);

void sim_trace_free(sim_trace *trace);

#endif /* MOERT_SIM_TRACE_H */

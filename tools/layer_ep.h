/* `moert layer --ep P`: the layer's expert parallelism over P MPI ranks, from the command
 * line (run under mpirun). */
#ifndef MOERT_TOOLS_LAYER_EP_H
#define MOERT_TOOLS_LAYER_EP_H

#include <stddef.h>

#include "moert/layer.h"

typedef struct layer_ep_args {
    moert_layer_config config;
    const float *x; /* the global batch [tokens, d], f32 (rounded to bf16 values for bf16) */
    size_t tokens;
    const float *gate;                                /* [d, E] */
    const float *const *w1, *const *w3, *const *w2;   /* [E], SwiGLU only */
    int ranks, iters, check, json;
    /* --save: on rank 0, the whole batch's output (f32) and plan; NULL: no saving. */
    moert_status (*save)(void *context, const float *out, const moert_plan *plan, int ranks);
    void *save_context;
} layer_ep_args;

/* Runs on every rank; rank r takes tokens [floor(r T / P), floor((r+1) T / P)). Rank 0
 * prints the stage times of every rank, their max/mean, and the check. Returns the CLI
 * exit code, the same on every rank. */
int layer_ep_run(const layer_ep_args *args);

#endif /* MOERT_TOOLS_LAYER_EP_H */

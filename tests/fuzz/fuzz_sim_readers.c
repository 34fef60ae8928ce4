/* libFuzzer target: `moert simulate`'s text readers on arbitrary bytes: the ESFT trace
 * format (k 1..3, 8 experts) and the count-table CSV (with and without a filter). A
 * success promises its invariants: every id below the experts, k entries a token, the
 * means finite. Built with -DMOERT_FUZZ=ON (clang); replay_corpus.c runs the seed corpus
 * through the same entry point as a regular test. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sim/profile.h"
#include "sim/trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1); /* the readers' contract: text[size] is '\0' */
    if (text == NULL) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    for (size_t k = 1; k <= 3; k++) {
        sim_trace t;
        if (sim_trace_parse_esft(text, size, "fuzz", k, 8, &t) == MOERT_OK) {
            if (t.k != k || t.tokens == 0) __builtin_trap();
            for (size_t i = 0; i < t.tokens * k; i++)
                if (t.ids[i] < 0 || t.ids[i] >= 8 || !isfinite(t.weights[i])) __builtin_trap();
            sim_trace_free(&t);
        }
    }
    for (int filtered = 0; filtered < 2; filtered++) {
        size_t experts = 0;
        double *means = NULL;
        if (sim_profile_parse_counts(text, size, "fuzz", filtered ? "model=a,layer=0" : NULL, &experts, &means) ==
            MOERT_OK) {
            if (experts == 0) __builtin_trap();
            for (size_t e = 0; e < experts; e++)
                if (!isfinite(means[e]) || means[e] > 0) __builtin_trap();
            free(means);
        }
    }
    free(text);
    return 0;
}

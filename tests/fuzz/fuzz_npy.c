/* libFuzzer target: the .npy header parser on arbitrary bytes. Built with
 * -DMOERT_FUZZ=ON (clang); without it, replay_corpus.c runs the seed corpus through the
 * same entry point as a regular test. */
#include <stddef.h>
#include <stdint.h>

#include "tools/npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    npy_header h;
    if (npy_parse_header(data, size, &h) == MOERT_OK) {
        /* What a reader relies on after a successful parse. */
        if (h.data_offset > size || h.ndim < 0 || h.ndim > NPY_MAX_DIMS) __builtin_trap();
        size_t count = 1;
        for (int i = 0; i < h.ndim; i++) count *= h.shape[i];
        if (count != h.count) __builtin_trap();
    }
    return 0;
}

/* libFuzzer target: the safetensors header checks on arbitrary bytes (st_parse_header on
 * the input as a whole file), then, when they pass, what `moert layer` does with a file:
 * st_open on the same bytes in a memory-backed file (memfd) and every readable tensor read
 * as float32 and as bfloat16. Built with -DMOERT_FUZZ=ON (clang); without it,
 * replay_corpus.c runs the seed corpus through the same entry point as a regular test.
 * (memfd_create needs _GNU_SOURCE, which the build defines.) */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tools/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads of tensors larger than this are skipped: they would only cost time. A passing
 * header guarantees the data are in the input, so this only bounds the copies. */
#define MAX_READ_ELEMENTS ((size_t)1 << 16)

/* Every element read is touched, so that the sanitizers see a write past the end. */
static void touch(const void *p, size_t bytes) {
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < bytes; i++) sink ^= ((const unsigned char *)p)[i];
    (void)sink;
}

/* What a reader relies on after a successful parse; a trap otherwise. */
static void check_promises(const st_file *f, size_t size) {
    const size_t n = st_count(f);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_tensor_at(f, i);
        if (t == NULL || t->name == NULL || t->ndim < 0 || t->ndim > ST_MAX_DIMS) __builtin_trap();
        size_t count = 1;
        for (int d = 0; d < t->ndim; d++) count *= t->shape[d];
        if (count != t->count || t->offset < 10 || t->offset > size || t->nbytes > size - t->offset) __builtin_trap();
        if (t->dtype_supported && t->nbytes != t->count * (t->dtype == ST_F32 ? 4u : 2u)) __builtin_trap();
        if (st_find(f, t->name) != t) __builtin_trap(); /* names are unique */
        /* Cross-check the sorted overlap check, for the small headers a quadratic loop affords. */
        for (size_t j = 0; j < i && n <= 64; j++) {
            const st_tensor *u = st_tensor_at(f, j);
            if (t->nbytes && u->nbytes && t->offset < u->offset + u->nbytes && u->offset < t->offset + t->nbytes)
                __builtin_trap();
        }
    }
}

static void read_every_tensor(st_file *f) {
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_tensor_at(f, i);
        if (t->count > MAX_READ_ELEMENTS) continue;
        float *x = malloc(t->count * sizeof *x + 1);
        uint16_t *b = malloc(t->count * sizeof *b + 1);
        const moert_status sx = st_read_f32(f, t->name, t->ndim, t->shape, x);
        const moert_status sb = st_read_bf16(f, t->name, t->ndim, t->shape, b);
        /* Only the dtype may refuse a read: shape and bytes were checked at open. */
        if ((sx == MOERT_OK) != t->dtype_supported || (sb == MOERT_OK) != t->dtype_supported) __builtin_trap();
        if (sx == MOERT_OK) touch(x, t->count * sizeof *x), touch(b, t->count * sizeof *b);
        free(x), free(b);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_file *f = NULL;
    const moert_status parsed = st_parse_header(data, size, size, &f);
    if (parsed == MOERT_OK) check_promises(f, size);
    else if (f != NULL) __builtin_trap(); /* a failure leaves nothing to close */
    st_close(f);
    if (parsed != MOERT_OK) return 0;

    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz_safetensors", 0);
        if (fd < 0) return 0;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) return 0;
    if (st_open(path, &f) != MOERT_OK) __builtin_trap(); /* the same bytes from a file */
    check_promises(f, size);
    read_every_tensor(f);
    st_close(f);
    return 0;
}

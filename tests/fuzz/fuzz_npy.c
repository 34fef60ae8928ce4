/* libFuzzer target: the whole .npy reader on arbitrary bytes: the header parser, then
 * reading the file as float32 (with float16 / float64 conversion, byte swapping, the
 * range check) and as int64, as `moert route` reads logits and biases. The bytes go to a
 * memory-backed file (memfd), so that the reader's own file path is what runs. Built with
 * -DMOERT_FUZZ=ON (clang); without it, replay_corpus.c runs the seed corpus through the
 * same entry point as a regular test. (memfd_create needs _GNU_SOURCE, which the build
 * defines.) */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tools/npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every element read back is touched, so that the sanitizers see any read past the end. */
static void touch(const void *p, size_t bytes) {
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < bytes; i++) sink ^= ((const unsigned char *)p)[i];
    (void)sink;
}

static void read_all_ways(const char *path, size_t size) {
    for (int ndim = 1; ndim <= 2; ndim++) {
        size_t shape[2] = {0, 0};
        float *f = NULL;
        if (npy_read_f32(path, ndim, &f, shape) == MOERT_OK) {
            /* A success promises the shape, and data that fit in the file. */
            const size_t count = shape[0] * shape[1];
            if (count * 2 > size) __builtin_trap(); /* float16 is the smallest element */
            touch(f, count * sizeof *f);
        }
        free(f);
        int64_t *v = NULL;
        if (npy_read_i64(path, ndim, &v, shape) == MOERT_OK) {
            const size_t count = shape[0] * shape[1];
            if (count * 4 > size) __builtin_trap();
            touch(v, count * sizeof *v);
        }
        free(v);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    npy_header h;
    if (npy_parse_header(data, size, &h) == MOERT_OK) {
        /* What a reader relies on after a successful parse. */
        if (h.data_offset > size || h.ndim < 0 || h.ndim > NPY_MAX_DIMS) __builtin_trap();
        size_t count = 1;
        for (int i = 0; i < h.ndim; i++) count *= h.shape[i];
        if (count != h.count) __builtin_trap();
    }
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz_npy", 0);
        if (fd < 0) return 0;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) return 0;
    read_all_ways(path, size);
    return 0;
}

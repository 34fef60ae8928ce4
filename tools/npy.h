/* NumPy .npy files (format versions 1.0, 2.0 and 3.0), read and written without NumPy.
 *
 * A file is the magic "\x93NUMPY", a version, a header length, a header that is a
 * Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (T, E), } padded
 * with spaces to a multiple of 64 bytes and ended by '\n', then the data in C order.
 * Every field is checked against the file: a truncated, hostile or unsupported file is
 * MOERT_EFORMAT (or MOERT_EIO when it cannot be read) with the reason in the detail. */
#ifndef MOERT_TOOLS_NPY_H
#define MOERT_TOOLS_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "moert/status.h"

#define NPY_MAX_DIMS 8

typedef enum npy_dtype {
    NPY_F16,
    NPY_F32,
    NPY_F64,
    NPY_I32,
    NPY_I64,
} npy_dtype;

typedef struct npy_header {
    npy_dtype dtype;
    int big_endian;
    int ndim;
    size_t shape[NPY_MAX_DIMS];
    size_t count;       /* product of the shape */
    size_t data_offset; /* where the data starts */
} npy_header;

/* Parses the header at the start of buf[0..len). Checks the magic, version, header
 * length, dict syntax, dtype, order and shape; not the data length. */
moert_status npy_parse_header(const unsigned char *buf, size_t len, npy_header *header);

/* Reads a whole file as float32, converting float16 and float64, and checks its shape
 * has `ndim` dimensions (1 or 2). *data is malloc'd; the caller frees it. */
moert_status npy_read_f32(const char *path, int ndim, float **data, size_t shape[2]);

/* Reads a whole 1-D or 2-D file of int32 or int64 as int64. */
moert_status npy_read_i64(const char *path, int ndim, int64_t **data, size_t shape[2]);

/* Writes a little-endian C-order array. */
moert_status npy_write(const char *path, npy_dtype dtype, int ndim, const size_t *shape, const void *data);

#endif /* MOERT_TOOLS_NPY_H */

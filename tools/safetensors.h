/* safetensors files, read tensor by tensor without loading the whole file, and written.
 *
 * A file is an 8-byte little-endian length N, N bytes of JSON (UTF-8, possibly padded with
 * trailing spaces), then the data buffer. The JSON is an object mapping each tensor name to
 * {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, the offsets relative to
 * the start of the data buffer, end exclusive; an optional "__metadata__" maps to an object
 * of strings and is skipped. Every field is checked against the file when it is opened: a
 * truncated, hostile or malformed file is MOERT_EFORMAT (MOERT_EIO when it cannot be read)
 * with the file and the reason in the detail. Tensors of any safetensors dtype are listed;
 * only F32, BF16 and F16 can be read, as float32 or bfloat16. */
#ifndef MOERT_TOOLS_SAFETENSORS_H
#define MOERT_TOOLS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "moert/status.h"

#define ST_MAX_DIMS 8

/* Headers longer than this are refused, as the reference implementation does: a hostile
 * length must be an error, not an allocation. */
#define ST_MAX_HEADER 100000000u

typedef enum st_dtype {
    ST_F32,
    ST_BF16,
    ST_F16,
} st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;       /* meaningful only when dtype_supported */
    int dtype_supported;  /* F32, BF16 or F16: can be read */
    char dtype_name[16];  /* as in the file: "F32", "I64", ... */
    int ndim;
    size_t shape[ST_MAX_DIMS];
    size_t count;  /* product of the shape (1 for a scalar) */
    size_t offset; /* from the start of the file */
    size_t nbytes;
} st_tensor;

typedef struct st_file st_file;

/* Opens `path` and reads and checks its header (not the data). */
moert_status st_open(const char *path, st_file **out);

/* Checks the header in buf[0..len), which holds at least its 8 + N bytes, for a file of
 * `file_size` bytes. The result has no file to read from: st_read_* on it fail. */
moert_status st_parse_header(const unsigned char *buf, size_t len, uint64_t file_size, st_file **out);

/* The tensors in the order of the header; st_find is NULL when `name` is absent. */
size_t st_count(const st_file *f);
const st_tensor *st_tensor_at(const st_file *f, size_t i);
const st_tensor *st_find(const st_file *f, const char *name);

/* Reads the tensor `name`, which must have exactly `ndim` dimensions of `shape`, into
 * out[count] as float32 (F32 copied, BF16 and F16 widened exactly). */
moert_status st_read_f32(st_file *f, const char *name, int ndim, const size_t *shape, float *out);

/* The same into bfloat16 bits: BF16 copied, F32 (and F16 through float32) rounded to
 * nearest even, NaN kept NaN. */
moert_status st_read_bf16(st_file *f, const char *name, int ndim, const size_t *shape, uint16_t *out);

/* Frees everything; NULL is ignored. */
void st_close(st_file *f);

/* Writes `n` tensors in the given order: names[i] of dtypes[i], ndims[i] dimensions
 * shapes[i], little-endian data[i] (NULL allowed when the tensor is empty). The header
 * is padded with spaces to a multiple of 8 bytes, so that the data buffer is aligned. */
moert_status st_write(const char *path, size_t n, const char *const *names, const st_dtype *dtypes, const int *ndims,
                      const size_t (*shapes)[ST_MAX_DIMS], const void *const *data);

#endif /* MOERT_TOOLS_SAFETENSORS_H */

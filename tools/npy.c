/* NumPy .npy reading and writing, checked field by field (see npy.h). */
#include "tools/npy.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/size.h"

/* NumPy refuses headers longer than this by default; so does moert. */
#define NPY_MAX_HEADER 65536

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

static size_t dtype_size(npy_dtype d) {
    switch (d) {
    case NPY_F16: return 2;
    case NPY_F32: case NPY_I32: return 4;
    case NPY_F64: case NPY_I64: return 8;
    }
    return 0;
}

/* ---- the header's dict literal ---- */

typedef struct cursor {
    const char *p, *end;
} cursor;

static void skip_space(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int expect(cursor *c, char ch) {
    skip_space(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A quoted string into out[cap]; 0 if malformed or too long. */
static int read_string(cursor *c, char *out, size_t cap) {
    skip_space(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return 0;
    const char quote = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != quote) {
        if (n + 1 >= cap) return 0;
        out[n++] = *c->p++;
    }
    if (c->p >= c->end) return 0;
    c->p++;
    out[n] = '\0';
    return 1;
}

static int read_word(cursor *c, const char *word) {
    skip_space(c);
    const size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return 0;
    c->p += n;
    return 1;
}

/* A non-negative integer (with an optional Python 2 'L'); 0 if malformed or too big. */
static int read_size(cursor *c, size_t *out) {
    skip_space(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9') return 0;
    size_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (v > (SIZE_MAX - 9) / 10) return 0;
        v = v * 10 + (size_t)(*c->p++ - '0');
    }
    if (c->p < c->end && *c->p == 'L') c->p++;
    *out = v;
    return 1;
}

static moert_status parse_descr(const char *descr, npy_header *h) {
    const char order = descr[0];
    MOERT_RETURN_ERROR_IF(order != '<' && order != '>' && order != '=' && order != '|', MOERT_EFORMAT,
                          "npy: dtype '%.32s' has no byte order", descr);
    h->big_endian = order == '>';
    const char *t = descr + 1;
    if (!strcmp(t, "f2")) h->dtype = NPY_F16;
    else if (!strcmp(t, "f4")) h->dtype = NPY_F32;
    else if (!strcmp(t, "f8")) h->dtype = NPY_F64;
    else if (!strcmp(t, "i4")) h->dtype = NPY_I32;
    else if (!strcmp(t, "i8")) h->dtype = NPY_I64;
    else
        return moert_set_error(MOERT_EFORMAT, "npy: dtype '%.32s' is not supported (f2, f4, f8, i4 or i8)", descr);
    return MOERT_OK;
}

moert_status npy_parse_header(const unsigned char *buf, size_t len, npy_header *h) {
    MOERT_RETURN_ERROR_IF(buf == NULL || h == NULL, MOERT_EINVAL, "npy: NULL argument");
    memset(h, 0, sizeof *h);
    MOERT_RETURN_ERROR_IF(len < 10, MOERT_EFORMAT, "npy: %zu bytes is too short for a header", len);
    MOERT_RETURN_ERROR_IF(memcmp(buf, npy_magic, 6) != 0, MOERT_EFORMAT, "npy: bad magic number (not a .npy file)");
    const unsigned major = buf[6], minor = buf[7];
    MOERT_RETURN_ERROR_IF(major < 1 || major > 3 || minor != 0, MOERT_EFORMAT, "npy: format version %u.%u is not 1.0, 2.0 or 3.0",
                          major, minor);
    size_t start, header_len;
    if (major == 1) {
        start = 10;
        header_len = (size_t)buf[8] | (size_t)buf[9] << 8;
    } else {
        MOERT_RETURN_ERROR_IF(len < 12, MOERT_EFORMAT, "npy: %zu bytes is too short for a version %u header", len, major);
        start = 12;
        header_len = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
    }
    MOERT_RETURN_ERROR_IF(header_len > NPY_MAX_HEADER, MOERT_EFORMAT, "npy: header length %zu exceeds %d", header_len,
                          NPY_MAX_HEADER);
    MOERT_RETURN_ERROR_IF(header_len > len - start, MOERT_EFORMAT, "npy: header length %zu runs past the end (%zu bytes)",
                          header_len, len);
    h->data_offset = start + header_len;

    cursor c = {(const char *)buf + start, (const char *)buf + start + header_len};
    MOERT_RETURN_ERROR_IF(!expect(&c, '{'), MOERT_EFORMAT, "npy: header is not a dict");
    int have_descr = 0, have_order = 0, have_shape = 0;
    char descr[64];
    for (;;) {
        skip_space(&c);
        if (expect(&c, '}')) break;
        char key[32];
        MOERT_RETURN_ERROR_IF(!read_string(&c, key, sizeof key) || !expect(&c, ':'), MOERT_EFORMAT,
                              "npy: header dict is malformed");
        if (!strcmp(key, "descr")) {
            MOERT_RETURN_ERROR_IF(have_descr || !read_string(&c, descr, sizeof descr), MOERT_EFORMAT,
                                  "npy: header 'descr' is malformed");
            have_descr = 1;
        } else if (!strcmp(key, "fortran_order")) {
            int fortran;
            if (read_word(&c, "True"))
                fortran = 1;
            else if (read_word(&c, "False"))
                fortran = 0;
            else
                return moert_set_error(MOERT_EFORMAT, "npy: header 'fortran_order' is not True or False");
            MOERT_RETURN_ERROR_IF(have_order, MOERT_EFORMAT, "npy: header repeats 'fortran_order'");
            MOERT_RETURN_ERROR_IF(fortran, MOERT_EFORMAT, "npy: Fortran order is not supported (need C order)");
            have_order = 1;
        } else if (!strcmp(key, "shape")) {
            MOERT_RETURN_ERROR_IF(have_shape || !expect(&c, '('), MOERT_EFORMAT, "npy: header 'shape' is malformed");
            int n = 0;
            while (!expect(&c, ')')) {
                MOERT_RETURN_ERROR_IF(n >= NPY_MAX_DIMS, MOERT_EFORMAT, "npy: more than %d dimensions", NPY_MAX_DIMS);
                MOERT_RETURN_ERROR_IF(!read_size(&c, &h->shape[n]), MOERT_EFORMAT,
                                      "npy: header 'shape' has a bad dimension");
                n++;
                if (!expect(&c, ',')) {
                    MOERT_RETURN_ERROR_IF(!expect(&c, ')'), MOERT_EFORMAT, "npy: header 'shape' is malformed");
                    break;
                }
            }
            h->ndim = n;
            have_shape = 1;
        } else {
            return moert_set_error(MOERT_EFORMAT, "npy: unknown header key '%.31s'", key);
        }
        if (!expect(&c, ',')) {
            MOERT_RETURN_ERROR_IF(!expect(&c, '}'), MOERT_EFORMAT, "npy: header dict is malformed");
            break;
        }
    }
    MOERT_RETURN_ERROR_IF(!have_descr || !have_order || !have_shape, MOERT_EFORMAT,
                          "npy: header lacks 'descr', 'fortran_order' or 'shape'");
    MOERT_FORWARD_IF_ERROR(parse_descr(descr, h));
    size_t count = 1, bytes;
    for (int i = 0; i < h->ndim; i++)
        MOERT_RETURN_ERROR_IF(moert_mul_overflows(count, h->shape[i], &count), MOERT_EFORMAT, "npy: shape overflows");
    MOERT_RETURN_ERROR_IF(moert_mul_overflows(count, dtype_size(h->dtype), &bytes), MOERT_EFORMAT,
                          "npy: data size overflows");
    h->count = count;
    return MOERT_OK;
}

/* ---- reading ---- */

static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (mant << 13); /* inf or NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        uint32_t m = mant;
        do {
            e++;
            m <<= 1;
        } while (!(m & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void swap_bytes(unsigned char *p, size_t count, size_t size) {
    for (size_t i = 0; i < count; i++, p += size)
        for (size_t a = 0, b = size - 1; a < b; a++, b--) {
            const unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

/* Reads the header and raw data of `path`. *raw is malloc'd. */
static moert_status read_raw(const char *path, npy_header *h, unsigned char **raw) {
    *raw = NULL;
    FILE *f = fopen(path, "rb");
    MOERT_RETURN_ERROR_IF(f == NULL, MOERT_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    moert_status status = MOERT_OK;
    unsigned char *head = NULL;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        status = moert_set_error(MOERT_EIO, "%s: not a regular file", path);
        goto done;
    }
    const size_t file_size = (size_t)st.st_size;
    /* The header is in the first NPY_MAX_HEADER + 12 bytes, or the file is malformed. */
    const size_t head_len = file_size < NPY_MAX_HEADER + 12 ? file_size : NPY_MAX_HEADER + 12;
    head = malloc(head_len ? head_len : 1);
    if (head == NULL) {
        status = moert_set_error(MOERT_ENOMEM, "%s: cannot allocate %zu bytes for the header", path, head_len);
        goto done;
    }
    if (fread(head, 1, head_len, f) != head_len) {
        status = moert_set_error(MOERT_EIO, "%s: cannot read the header", path);
        goto done;
    }
    status = npy_parse_header(head, head_len, h);
    if (status != MOERT_OK) {
        char detail[256];
        snprintf(detail, sizeof detail, "%s", moert_last_error());
        moert_set_error(status, "%s: %s", path, detail);
        goto done;
    }
    const size_t bytes = h->count * dtype_size(h->dtype);
    if (file_size < h->data_offset || file_size - h->data_offset < bytes) {
        status = moert_set_error(MOERT_EFORMAT, "%s: truncated: %zu bytes of data, the shape needs %zu", path,
                                 file_size < h->data_offset ? 0 : file_size - h->data_offset, bytes);
        goto done;
    }
    *raw = malloc(bytes ? bytes : 1);
    if (*raw == NULL) {
        status = moert_set_error(MOERT_ENOMEM, "%s: cannot allocate %zu bytes for the data", path, bytes);
        goto done;
    }
    if (fseek(f, (long)h->data_offset, SEEK_SET) != 0 || fread(*raw, 1, bytes, f) != bytes) {
        status = moert_set_error(MOERT_EIO, "%s: cannot read %zu bytes of data", path, bytes);
        free(*raw);
        *raw = NULL;
        goto done;
    }
    if (h->big_endian) swap_bytes(*raw, h->count, dtype_size(h->dtype));
done:
    free(head);
    fclose(f);
    return status;
}

static moert_status check_ndim(const char *path, const npy_header *h, int ndim, size_t shape[2]) {
    MOERT_RETURN_ERROR_IF(h->ndim != ndim, MOERT_EFORMAT, "%s: array is %d-D; need %d-D", path, h->ndim, ndim);
    shape[0] = h->shape[0];
    shape[1] = ndim == 2 ? h->shape[1] : 1;
    return MOERT_OK;
}

moert_status npy_read_f32(const char *path, int ndim, float **data, size_t shape[2]) {
    MOERT_RETURN_ERROR_IF(path == NULL || data == NULL || shape == NULL, MOERT_EINVAL, "npy: NULL argument");
    *data = NULL;
    npy_header h;
    unsigned char *raw;
    MOERT_FORWARD_IF_ERROR(read_raw(path, &h, &raw));
    moert_status st = check_ndim(path, &h, ndim, shape);
    if (st == MOERT_OK && h.dtype != NPY_F16 && h.dtype != NPY_F32 && h.dtype != NPY_F64)
        st = moert_set_error(MOERT_EFORMAT, "%s: integer data; need float16, float32 or float64", path);
    if (st != MOERT_OK) {
        free(raw);
        return st;
    }
    if (h.dtype == NPY_F32) {
        *data = (float *)raw;
        return MOERT_OK;
    }
    float *f = malloc(h.count * sizeof(float) + 1);
    if (f == NULL) {
        free(raw);
        return moert_set_error(MOERT_ENOMEM, "%s: cannot allocate %zu bytes", path, h.count * sizeof(float));
    }
    for (size_t i = 0; i < h.count; i++) {
        if (h.dtype == NPY_F16) {
            uint16_t v;
            memcpy(&v, raw + 2 * i, 2);
            f[i] = half_to_float(v);
        } else {
            double v;
            memcpy(&v, raw + 8 * i, 8);
            if (isfinite(v) && isinf((float)v)) { /* it would become an infinity, or a mask */
                free(raw), free(f);
                if (ndim == 2)
                    return moert_set_error(MOERT_EBADDATA, "%s: element [%zu,%zu] = %g is outside float32's range",
                                           path, i / shape[1], i % shape[1], v);
                return moert_set_error(MOERT_EBADDATA, "%s: element [%zu] = %g is outside float32's range", path, i,
                                       v);
            }
            f[i] = (float)v;
        }
    }
    free(raw);
    *data = f;
    return MOERT_OK;
}

moert_status npy_read_i64(const char *path, int ndim, int64_t **data, size_t shape[2]) {
    MOERT_RETURN_ERROR_IF(path == NULL || data == NULL || shape == NULL, MOERT_EINVAL, "npy: NULL argument");
    *data = NULL;
    npy_header h;
    unsigned char *raw;
    MOERT_FORWARD_IF_ERROR(read_raw(path, &h, &raw));
    moert_status st = check_ndim(path, &h, ndim, shape);
    if (st == MOERT_OK && h.dtype != NPY_I32 && h.dtype != NPY_I64)
        st = moert_set_error(MOERT_EFORMAT, "%s: float data; need int32 or int64", path);
    if (st != MOERT_OK) {
        free(raw);
        return st;
    }
    if (h.dtype == NPY_I64) {
        *data = (int64_t *)raw;
        return MOERT_OK;
    }
    int64_t *v = malloc(h.count * sizeof(int64_t) + 1);
    if (v == NULL) {
        free(raw);
        return moert_set_error(MOERT_ENOMEM, "%s: cannot allocate %zu bytes", path, h.count * sizeof(int64_t));
    }
    for (size_t i = 0; i < h.count; i++) {
        int32_t x;
        memcpy(&x, raw + 4 * i, 4);
        v[i] = x;
    }
    free(raw);
    *data = v;
    return MOERT_OK;
}

/* ---- writing ---- */

moert_status npy_write(const char *path, npy_dtype dtype, int ndim, const size_t *shape, const void *data) {
    MOERT_RETURN_ERROR_IF(path == NULL || ndim < 1 || ndim > NPY_MAX_DIMS, MOERT_EINVAL, "npy: bad arguments");
    static const char *descr[] = {"<f2", "<f4", "<f8", "<i4", "<i8"};
    char header[NPY_MAX_DIMS * 24 + 128];
    int n = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr[dtype]);
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        n += snprintf(header + n, sizeof header - (size_t)n, "%zu%s", shape[i], ndim == 1 ? "," : i + 1 < ndim ? ", " : "");
        count *= shape[i];
    }
    n += snprintf(header + n, sizeof header - (size_t)n, "), }");
    /* Pad with spaces so that magic + version + length + header is a multiple of 64. */
    size_t total = 10 + (size_t)n + 1;
    const size_t padded = (total + 63) / 64 * 64;
    while (total < padded) {
        header[n++] = ' ';
        total++;
    }
    header[n++] = '\n';
    FILE *f = fopen(path, "wb");
    MOERT_RETURN_ERROR_IF(f == NULL, MOERT_EIO, "%s: %s", path, strerror(errno));
    const unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(n & 0xFF),
                                        (unsigned char)(n >> 8)};
    const size_t bytes = count * dtype_size(dtype);
    int ok = fwrite(preamble, 1, 10, f) == 10 && fwrite(header, 1, (size_t)n, f) == (size_t)n &&
             (bytes == 0 || fwrite(data, 1, bytes, f) == bytes);
    ok = fclose(f) == 0 && ok;
    MOERT_RETURN_ERROR_IF(!ok, MOERT_EIO, "%s: cannot write %zu bytes", path, bytes);
    return MOERT_OK;
}

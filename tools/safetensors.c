/* safetensors reading and writing, checked field by field (see safetensors.h). */
#include "tools/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "common/error.h"
#include "common/size.h"

/* Offsets reach 2^53 and tensors are read with pread at any of them. */
_Static_assert(sizeof(size_t) >= 8 && sizeof(off_t) >= 8, "safetensors needs 64-bit sizes and file offsets");

/* Shapes and offsets are JSON numbers, which cJSON holds as doubles: above 2^53 they are
 * no longer exact, so larger values are refused rather than silently rounded. */
#define ST_MAX_INTEGER 9007199254740992.0 /* 2^53 */

/* Tensors are read through a buffer of this size, so memory stays bounded however large
 * they are. A multiple of every element size. */
#define ST_CHUNK_BYTES ((size_t)1 << 20)

/* Longest tensor name quoted in a message: the detail has room for a path and numbers. */
#define NAME_FMT "%.128s"

struct st_file {
    char *path;          /* NULL when parsed from memory */
    int fd;              /* -1 when parsed from memory */
    uint64_t data_start; /* 8 + header length */
    size_t n;
    st_tensor *tensors;  /* in header order */
    st_tensor **by_name; /* sorted by name, for st_find */
};

/* ---- dtypes ---- */

typedef struct dtype_info {
    const char *name;
    unsigned bits; /* F4 and F6 pack elements below a byte */
    int supported;
    st_dtype dtype;
} dtype_info;

/* Every dtype of the safetensors format: any of them is a valid file, but only the first
 * three can be read. */
static const dtype_info dtype_table[] = {
    {"F32", 32, 1, ST_F32},      {"BF16", 16, 1, ST_BF16},    {"F16", 16, 1, ST_F16},      {"F64", 64, 0, ST_F32},
    {"I64", 64, 0, ST_F32},      {"U64", 64, 0, ST_F32},      {"I32", 32, 0, ST_F32},      {"U32", 32, 0, ST_F32},
    {"I16", 16, 0, ST_F32},      {"U16", 16, 0, ST_F32},      {"I8", 8, 0, ST_F32},        {"U8", 8, 0, ST_F32},
    {"BOOL", 8, 0, ST_F32},      {"F8_E5M2", 8, 0, ST_F32},   {"F8_E4M3", 8, 0, ST_F32},   {"F8_E8M0", 8, 0, ST_F32},
    {"C64", 64, 0, ST_F32},      {"F4", 4, 0, ST_F32},        {"F6_E2M3", 6, 0, ST_F32},   {"F6_E3M2", 6, 0, ST_F32},
};

static const dtype_info *find_dtype(const char *name) {
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++)
        if (!strcmp(dtype_table[i].name, name)) return &dtype_table[i];
    return NULL;
}

static const dtype_info *info_of(st_dtype d) {
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++)
        if (dtype_table[i].supported && dtype_table[i].dtype == d) return &dtype_table[i];
    return NULL;
}

static size_t element_bytes(st_dtype d) { return d == ST_F32 ? 4 : 2; }

/* ---- small helpers ---- */

static uint64_t load_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint16_t load_le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

static float load_le_f32(const unsigned char *p) {
    const uint32_t bits = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

/* "[2, 3]" into out[cap], which it returns. */
static const char *format_shape(char *out, size_t cap, int ndim, const size_t *shape) {
    size_t n = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++) n += (size_t)snprintf(out + n, cap - n, "%s%zu", i ? ", " : "", shape[i]);
    if (n < cap) snprintf(out + n, cap - n, "]");
    return out;
}

/* Puts the file's name in front of a detail that was set without it. */
static moert_status with_path(moert_status status, const char *path) {
    char detail[512];
    snprintf(detail, sizeof detail, "%s", moert_last_error());
    return moert_set_error(status, "%s: %s", path, detail);
}

/* Reads until `bytes` are in or the file ends; the count read, or -1 (errno set). */
static ssize_t pread_full(int fd, unsigned char *buf, size_t bytes, uint64_t offset) {
    size_t done = 0;
    while (done < bytes) {
        const ssize_t r = pread(fd, buf + done, bytes - done, (off_t)(offset + done));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        done += (size_t)r;
    }
    return (ssize_t)done;
}

/* ---- the header ---- */

static moert_status check_header_length(uint64_t n, uint64_t file_size) {
    MOERT_RETURN_ERROR_IF(n < 2, MOERT_EFORMAT, "safetensors: header length %llu is too small (even '{}' is 2 bytes)",
                          (unsigned long long)n);
    MOERT_RETURN_ERROR_IF(n > ST_MAX_HEADER, MOERT_EFORMAT, "safetensors: header length %llu exceeds the limit of %u bytes",
                          (unsigned long long)n, ST_MAX_HEADER);
    MOERT_RETURN_ERROR_IF(n > file_size - 8, MOERT_EFORMAT,
                          "safetensors: truncated header: it is %llu bytes long, the file has only %llu after the length",
                          (unsigned long long)n, (unsigned long long)(file_size - 8));
    return MOERT_OK;
}

/* The reference files are written and read by serde_json, which takes only valid UTF-8 and
 * no raw control characters. cJSON is laxer (any byte <= 32 is white space to it, and it
 * never checks UTF-8), so the text is checked before it is parsed. */
static moert_status check_text(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        const unsigned c = s[i];
        if (c < 0x80) {
            MOERT_RETURN_ERROR_IF(c < 0x20 && c != '\t' && c != '\n' && c != '\r', MOERT_EFORMAT,
                                  "safetensors: header has control character 0x%02x at byte %zu", c, i);
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, least;
        if ((c & 0xE0) == 0xC0)
            len = 2, cp = c & 0x1F, least = 0x80;
        else if ((c & 0xF0) == 0xE0)
            len = 3, cp = c & 0x0F, least = 0x800;
        else if ((c & 0xF8) == 0xF0)
            len = 4, cp = c & 0x07, least = 0x10000;
        else
            return moert_set_error(MOERT_EFORMAT, "safetensors: header is not UTF-8 (byte 0x%02x at %zu)", c, i);
        int ok = n - i >= len;
        for (size_t k = 1; ok && k < len; k++) {
            ok = (s[i + k] & 0xC0) == 0x80;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        /* Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8. */
        ok = ok && cp >= least && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
        MOERT_RETURN_ERROR_IF(!ok, MOERT_EFORMAT, "safetensors: header is not UTF-8 (bad sequence at byte %zu)", i);
        i += len;
    }
    return MOERT_OK;
}

/* A JSON number that is an exact integer in [0, 2^53]. */
static int json_size(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    const double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_INTEGER) || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

/* What a JSON value is, for a message: "-3", "2.5", "a string". */
static const char *describe(const cJSON *v, char *buf, size_t cap) {
    if (cJSON_IsNumber(v)) {
        snprintf(buf, cap, "%.17g", v->valuedouble);
        return buf;
    }
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    if (cJSON_IsBool(v)) return "a boolean";
    return "null";
}

static moert_status parse_dtype(const char *name, const cJSON *v, st_tensor *t, unsigned *bits) {
    MOERT_RETURN_ERROR_IF(!cJSON_IsString(v), MOERT_EFORMAT, "safetensors: tensor '" NAME_FMT "': 'dtype' is not a string",
                          name);
    const dtype_info *d = find_dtype(v->valuestring);
    MOERT_RETURN_ERROR_IF(d == NULL, MOERT_EFORMAT, "safetensors: tensor '" NAME_FMT "': dtype '%.32s' is not a safetensors dtype",
                          name, v->valuestring);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", d->name);
    t->dtype_supported = d->supported;
    t->dtype = d->dtype;
    *bits = d->bits;
    return MOERT_OK;
}

static moert_status parse_shape(const char *name, const cJSON *v, st_tensor *t) {
    MOERT_RETURN_ERROR_IF(!cJSON_IsArray(v), MOERT_EFORMAT, "safetensors: tensor '" NAME_FMT "': 'shape' is not an array", name);
    int n = 0;
    size_t count = 1;
    for (const cJSON *dim = v->child; dim != NULL; dim = dim->next, n++) {
        MOERT_RETURN_ERROR_IF(n >= ST_MAX_DIMS, MOERT_EFORMAT, "safetensors: tensor '" NAME_FMT "' has more than %d dimensions",
                              name, ST_MAX_DIMS);
        uint64_t size;
        char what[40];
        MOERT_RETURN_ERROR_IF(!json_size(dim, &size), MOERT_EFORMAT,
                              "safetensors: tensor '" NAME_FMT "': shape[%d] is %s, not an integer in [0, 2^53]", name, n,
                              describe(dim, what, sizeof what));
        t->shape[n] = (size_t)size;
        MOERT_RETURN_ERROR_IF(moert_mul_overflows(count, t->shape[n], &count), MOERT_EFORMAT,
                              "safetensors: tensor '" NAME_FMT "': the shape's element count overflows", name);
    }
    t->ndim = n;
    t->count = count;
    return MOERT_OK;
}

/* The bytes `count` elements of `bits` take; 0 on overflow or a partial last byte. */
static int data_bytes(size_t count, unsigned bits, size_t *bytes) {
    if (bits % 8 == 0) return !moert_mul_overflows(count, bits / 8, bytes);
    size_t total_bits;
    if (moert_mul_overflows(count, bits, &total_bits) || total_bits % 8 != 0) return 0;
    *bytes = total_bits / 8;
    return 1;
}

static moert_status parse_offsets(const char *name, const cJSON *v, unsigned bits, uint64_t data_start,
                                  uint64_t file_size, st_tensor *t) {
    const cJSON *first = cJSON_IsArray(v) ? v->child : NULL, *second = first ? first->next : NULL;
    uint64_t begin, end;
    MOERT_RETURN_ERROR_IF(second == NULL || second->next != NULL || !json_size(first, &begin) || !json_size(second, &end),
                          MOERT_EFORMAT, "safetensors: tensor '" NAME_FMT "': 'data_offsets' is not two integers in [0, 2^53]",
                          name);
    MOERT_RETURN_ERROR_IF(begin > end, MOERT_EFORMAT,
                          "safetensors: tensor '" NAME_FMT "': data_offsets [%llu, %llu) end before they begin", name,
                          (unsigned long long)begin, (unsigned long long)end);
    size_t nbytes;
    char shape[200]; /* formatted only for a message: the macro evaluates its arguments only on failure */
    MOERT_RETURN_ERROR_IF(!data_bytes(t->count, bits, &nbytes), MOERT_EFORMAT,
                          "safetensors: tensor '" NAME_FMT "': shape %s of %s is not a whole number of bytes", name,
                          format_shape(shape, sizeof shape, t->ndim, t->shape), t->dtype_name);
    MOERT_RETURN_ERROR_IF(end - begin != nbytes, MOERT_EFORMAT,
                          "safetensors: tensor '" NAME_FMT "': data_offsets [%llu, %llu) hold %llu bytes; shape %s of %s needs %zu",
                          name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)(end - begin),
                          format_shape(shape, sizeof shape, t->ndim, t->shape), t->dtype_name, nbytes);
    MOERT_RETURN_ERROR_IF(end > file_size - data_start, MOERT_EFORMAT,
                          "safetensors: tensor '" NAME_FMT "': data [%llu, %llu) runs past the end of the file "
                          "(truncated? the data buffer has %llu bytes)",
                          name, (unsigned long long)begin, (unsigned long long)end,
                          (unsigned long long)(file_size - data_start));
    t->offset = (size_t)(data_start + begin);
    t->nbytes = nbytes;
    return MOERT_OK;
}

/* One tensor's entry: exactly the three fields, each of the right type. */
static moert_status parse_entry(const cJSON *entry, uint64_t data_start, uint64_t file_size, st_tensor *t) {
    const char *name = entry->string;
    t->name = strdup(name);
    MOERT_RETURN_ERROR_IF(t->name == NULL, MOERT_ENOMEM, "safetensors: cannot allocate a tensor name");
    MOERT_RETURN_ERROR_IF(!cJSON_IsObject(entry), MOERT_EFORMAT, "safetensors: tensor '" NAME_FMT "' is not an object", name);
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL;
    for (const cJSON *field = entry->child; field != NULL; field = field->next) {
        const cJSON **slot = !strcmp(field->string, "dtype")          ? &dtype
                             : !strcmp(field->string, "shape")        ? &shape
                             : !strcmp(field->string, "data_offsets") ? &offsets
                                                                      : NULL;
        MOERT_RETURN_ERROR_IF(slot == NULL, MOERT_EFORMAT, "safetensors: tensor '" NAME_FMT "' has an unexpected field '%.32s'",
                              name, field->string);
        MOERT_RETURN_ERROR_IF(*slot != NULL, MOERT_EFORMAT, "safetensors: tensor '" NAME_FMT "' repeats field '%s'", name,
                              field->string);
        *slot = field;
    }
    MOERT_RETURN_ERROR_IF(dtype == NULL || shape == NULL || offsets == NULL, MOERT_EFORMAT,
                          "safetensors: tensor '" NAME_FMT "' lacks field '%s'", name,
                          dtype == NULL ? "dtype" : shape == NULL ? "shape" : "data_offsets");
    unsigned bits = 0;
    MOERT_FORWARD_IF_ERROR(parse_dtype(name, dtype, t, &bits));
    MOERT_FORWARD_IF_ERROR(parse_shape(name, shape, t));
    return parse_offsets(name, offsets, bits, data_start, file_size, t);
}

/* "__metadata__" is free text for the writer (framework, format): only its form is checked. */
static moert_status check_metadata(const cJSON *m) {
    MOERT_RETURN_ERROR_IF(!cJSON_IsObject(m), MOERT_EFORMAT, "safetensors: '__metadata__' is not an object");
    for (const cJSON *c = m->child; c != NULL; c = c->next)
        MOERT_RETURN_ERROR_IF(!cJSON_IsString(c), MOERT_EFORMAT, "safetensors: '__metadata__' entry '%.64s' is not a string",
                              c->string);
    return MOERT_OK;
}

static int compare_names(const void *a, const void *b) {
    return strcmp((*(st_tensor *const *)a)->name, (*(st_tensor *const *)b)->name);
}

/* cJSON keeps every copy of a repeated key; a name must mean one tensor. Sorting (also
 * what st_find searches) keeps this fast for headers with millions of names. */
static moert_status check_duplicates(st_file *f) {
    qsort(f->by_name, f->n, sizeof *f->by_name, compare_names);
    for (size_t i = 1; i < f->n; i++)
        MOERT_RETURN_ERROR_IF(!strcmp(f->by_name[i - 1]->name, f->by_name[i]->name), MOERT_EFORMAT,
                              "safetensors: duplicate tensor name '" NAME_FMT "'", f->by_name[i]->name);
    return MOERT_OK;
}

static int compare_offsets(const void *a, const void *b) {
    const st_tensor *x = *(st_tensor *const *)a, *y = *(st_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

/* Every byte of the data buffer belongs to exactly one tensor. Empty tensors hold no
 * bytes, so they overlap nothing wherever they point. */
static moert_status check_overlaps(st_file *f, uint64_t file_size) {
    st_tensor **order = malloc((f->n ? f->n : 1) * sizeof *order);
    MOERT_RETURN_ERROR_IF(order == NULL, MOERT_ENOMEM, "safetensors: cannot allocate %zu tensor pointers", f->n);
    for (size_t i = 0; i < f->n; i++) order[i] = &f->tensors[i];
    qsort(order, f->n, sizeof *order, compare_offsets);
    const st_tensor *reach = NULL; /* of those seen, the one whose data ends last */
    moert_status status = MOERT_OK;
    for (size_t i = 0; i < f->n && status == MOERT_OK; i++) {
        const st_tensor *t = order[i];
        if (t->nbytes == 0) continue;
        if (reach != NULL && t->offset < reach->offset + reach->nbytes) {
            const uint64_t a = reach->offset - f->data_start, b = t->offset - f->data_start;
            status = moert_set_error(MOERT_EFORMAT,
                                     "safetensors: tensors '" NAME_FMT "' [%llu, %llu) and '" NAME_FMT "' [%llu, %llu) overlap",
                                     reach->name, (unsigned long long)a, (unsigned long long)(a + reach->nbytes), t->name,
                                     (unsigned long long)b, (unsigned long long)(b + t->nbytes));
        }
        /* Nor may a byte belong to none (as the format's reference reader insists). */
        const uint64_t covered = reach ? reach->offset + reach->nbytes : f->data_start;
        if (status == MOERT_OK && t->offset > covered)
            status = moert_set_error(MOERT_EFORMAT, "safetensors: bytes [%llu, %llu) of the data belong to no tensor",
                                     (unsigned long long)(covered - f->data_start),
                                     (unsigned long long)(t->offset - f->data_start));
        if (reach == NULL || t->offset + t->nbytes > reach->offset + reach->nbytes) reach = t;
    }
    const uint64_t end = reach ? reach->offset + reach->nbytes : f->data_start;
    if (status == MOERT_OK && end != file_size)
        status = moert_set_error(MOERT_EFORMAT, "safetensors: %llu bytes after the last tensor's data",
                                 (unsigned long long)(file_size - end));
    free(order);
    return status;
}

static moert_status parse_entries(st_file *f, const cJSON *root, uint64_t file_size) {
    size_t tensors = 0;
    for (const cJSON *c = root->child; c != NULL; c = c->next) tensors += strcmp(c->string, "__metadata__") != 0;
    /* calloc'd, and n set now, so that st_close frees whatever a failure leaves. */
    f->tensors = calloc(tensors ? tensors : 1, sizeof *f->tensors);
    f->by_name = calloc(tensors ? tensors : 1, sizeof *f->by_name);
    MOERT_RETURN_ERROR_IF(f->tensors == NULL || f->by_name == NULL, MOERT_ENOMEM,
                          "safetensors: cannot allocate %zu tensor entries", tensors);
    f->n = tensors;
    size_t i = 0;
    int have_metadata = 0;
    for (const cJSON *c = root->child; c != NULL; c = c->next) {
        if (!strcmp(c->string, "__metadata__")) {
            MOERT_RETURN_ERROR_IF(have_metadata, MOERT_EFORMAT, "safetensors: '__metadata__' appears twice");
            have_metadata = 1;
            MOERT_FORWARD_IF_ERROR(check_metadata(c));
            continue;
        }
        f->by_name[i] = &f->tensors[i];
        MOERT_FORWARD_IF_ERROR(parse_entry(c, f->data_start, file_size, &f->tensors[i]));
        i++;
    }
    MOERT_FORWARD_IF_ERROR(check_duplicates(f));
    return check_overlaps(f, file_size);
}

/* Only white space may follow the object (the writer pads with spaces). */
static moert_status check_trailing(const char *text, size_t n, const char *end) {
    for (const char *p = end; p < text + n; p++)
        MOERT_RETURN_ERROR_IF(*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r', MOERT_EFORMAT,
                              "safetensors: header has trailing bytes after the JSON object (at byte %td)", p - text);
    return MOERT_OK;
}

static moert_status parse_json(st_file *f, const unsigned char *header, size_t n, uint64_t file_size) {
    /* A terminated copy: cJSON then never depends on its length checks alone. */
    char *text = malloc(n + 1);
    MOERT_RETURN_ERROR_IF(text == NULL, MOERT_ENOMEM, "safetensors: cannot allocate %zu bytes for the header", n + 1);
    memcpy(text, header, n);
    text[n] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    moert_status status;
    if (root == NULL)
        status = moert_set_error(MOERT_EFORMAT, "safetensors: header is not valid JSON (error near byte %td)",
                                 end ? end - text : (ptrdiff_t)0);
    else if ((status = check_trailing(text, n, end)) == MOERT_OK && !cJSON_IsObject(root))
        status = moert_set_error(MOERT_EFORMAT, "safetensors: header is not a JSON object");
    if (status == MOERT_OK) status = parse_entries(f, root, file_size);
    cJSON_Delete(root);
    free(text);
    return status;
}

moert_status st_parse_header(const unsigned char *buf, size_t len, uint64_t file_size, st_file **out) {
    MOERT_RETURN_ERROR_IF(buf == NULL || out == NULL, MOERT_EINVAL, "safetensors: NULL argument");
    *out = NULL;
    MOERT_RETURN_ERROR_IF(len < 8 || file_size < 8, MOERT_EFORMAT,
                          "safetensors: %llu bytes is too short for the 8-byte header length",
                          (unsigned long long)(len < file_size ? len : file_size));
    const uint64_t n = load_le64(buf);
    MOERT_FORWARD_IF_ERROR(check_header_length(n, file_size));
    MOERT_RETURN_ERROR_IF(n > len - 8, MOERT_EFORMAT,
                          "safetensors: truncated header: it is %llu bytes long, the buffer has only %zu after the length",
                          (unsigned long long)n, len - 8);
    MOERT_FORWARD_IF_ERROR(check_text(buf + 8, (size_t)n));
    st_file *f = calloc(1, sizeof *f);
    MOERT_RETURN_ERROR_IF(f == NULL, MOERT_ENOMEM, "safetensors: cannot allocate a file");
    f->fd = -1;
    f->data_start = 8 + n;
    const moert_status status = parse_json(f, buf + 8, (size_t)n, file_size);
    if (status != MOERT_OK) {
        st_close(f);
        return status;
    }
    *out = f;
    return MOERT_OK;
}

/* ---- opening ---- */

/* The first `bytes` of the file, all of them. */
static moert_status read_start(int fd, const char *path, unsigned char *buf, size_t bytes) {
    errno = 0;
    const ssize_t got = pread_full(fd, buf, bytes, 0);
    MOERT_RETURN_ERROR_IF(got != (ssize_t)bytes, MOERT_EIO, "%s: cannot read the %zu-byte header: %s", path, bytes,
                          got < 0 ? strerror(errno) : "the file ended early");
    return MOERT_OK;
}

/* The 8 + N header bytes of an open file, malloc'd into *buf; the length is checked
 * before anything is allocated. */
static moert_status read_header(int fd, const char *path, uint64_t file_size, unsigned char **buf, size_t *len) {
    *buf = NULL;
    unsigned char prefix[8];
    const size_t got = file_size < 8 ? (size_t)file_size : 8;
    MOERT_FORWARD_IF_ERROR(read_start(fd, path, prefix, got));
    if (got < 8) { /* the parser says why that is too short */
        st_file *never;
        return with_path(st_parse_header(prefix, got, file_size, &never), path);
    }
    const uint64_t n = load_le64(prefix);
    if (check_header_length(n, file_size) != MOERT_OK) return with_path(MOERT_EFORMAT, path);
    *len = (size_t)(8 + n);
    *buf = malloc(*len);
    MOERT_RETURN_ERROR_IF(*buf == NULL, MOERT_ENOMEM, "%s: cannot allocate %zu bytes for the header", path, *len);
    const moert_status status = read_start(fd, path, *buf, *len);
    if (status != MOERT_OK) {
        free(*buf);
        *buf = NULL;
    }
    return status;
}

moert_status st_open(const char *path, st_file **out) {
    MOERT_RETURN_ERROR_IF(path == NULL || out == NULL, MOERT_EINVAL, "safetensors: NULL argument");
    *out = NULL;
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    MOERT_RETURN_ERROR_IF(fd < 0, MOERT_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return moert_set_error(MOERT_EIO, "%s: not a regular file", path);
    }
    const uint64_t file_size = (uint64_t)st.st_size;
    unsigned char *head;
    size_t len = 0;
    st_file *f = NULL;
    moert_status status = read_header(fd, path, file_size, &head, &len);
    if (status == MOERT_OK) {
        status = st_parse_header(head, len, file_size, &f);
        if (status != MOERT_OK) status = with_path(status, path);
        free(head);
    }
    if (status == MOERT_OK && (f->path = strdup(path)) == NULL) {
        st_close(f);
        status = moert_set_error(MOERT_ENOMEM, "%s: cannot allocate the path", path);
    }
    if (status != MOERT_OK) {
        close(fd);
        return status;
    }
    f->fd = fd;
    *out = f;
    return MOERT_OK;
}

size_t st_count(const st_file *f) { return f ? f->n : 0; }

const st_tensor *st_tensor_at(const st_file *f, size_t i) { return f && i < f->n ? &f->tensors[i] : NULL; }

static int compare_key(const void *key, const void *elem) { return strcmp(key, (*(st_tensor *const *)elem)->name); }

const st_tensor *st_find(const st_file *f, const char *name) {
    if (f == NULL || name == NULL || f->n == 0) return NULL;
    st_tensor *const *hit = bsearch(name, f->by_name, f->n, sizeof *f->by_name, compare_key);
    return hit ? *hit : NULL;
}

void st_close(st_file *f) {
    if (f == NULL) return;
    if (f->fd >= 0) close(f->fd);
    for (size_t i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->by_name);
    free(f->path);
    free(f);
}

/* ---- reading ---- */

/* IEEE binary16 to binary32, exactly (every half is a float). */
static float f16_to_f32(uint16_t h) {
    const uint32_t exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    uint32_t bits;
    if (exponent == 0) { /* zero or subnormal: mantissa x 2^-24, exact in float */
        const float m = (float)mantissa * 0x1p-24f;
        memcpy(&bits, &m, 4);
    } else if (exponent == 31) { /* inf or NaN: the mantissa's top bit, quiet or not, stays on top */
        bits = 0x7F800000u | mantissa << 13;
    } else { /* rebias the exponent from 15 to 127 */
        bits = (exponent + 112) << 23 | mantissa << 13;
    }
    bits |= (uint32_t)(h & 0x8000) << 16;
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

/* float32 to bfloat16 bits, rounded to nearest, ties to even (finite values beyond
 * bfloat16's largest round to infinity, as IEEE rounding does). Rounding could carry a NaN
 * whose payload sits in the low bits into infinity, so a NaN gets its quiet bit instead. */
static uint16_t f32_to_bf16(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)(b >> 16 | 0x0040);
    b += 0x7FFFu + (b >> 16 & 1);
    return (uint16_t)(b >> 16);
}

static void convert_to_f32(const unsigned char *src, size_t n, st_dtype from, float *dst) {
    switch (from) {
    case ST_F32:
        for (size_t i = 0; i < n; i++) dst[i] = load_le_f32(src + 4 * i);
        break;
    case ST_BF16: /* the top half of a float */
        for (size_t i = 0; i < n; i++) {
            const uint32_t bits = (uint32_t)load_le16(src + 2 * i) << 16;
            memcpy(&dst[i], &bits, 4);
        }
        break;
    case ST_F16:
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(load_le16(src + 2 * i));
        break;
    }
}

static void convert_to_bf16(const unsigned char *src, size_t n, st_dtype from, uint16_t *dst) {
    switch (from) {
    case ST_F32:
        for (size_t i = 0; i < n; i++) dst[i] = f32_to_bf16(load_le_f32(src + 4 * i));
        break;
    case ST_BF16: /* bit for bit, signalling NaNs included */
        for (size_t i = 0; i < n; i++) dst[i] = load_le16(src + 2 * i);
        break;
    case ST_F16:
        for (size_t i = 0; i < n; i++) dst[i] = f32_to_bf16(f16_to_f32(load_le16(src + 2 * i)));
        break;
    }
}

static moert_status check_request(const st_file *f, const st_tensor *t, int ndim, const size_t *shape) {
    if (t->ndim != ndim || (ndim > 0 && memcmp(t->shape, shape, (size_t)ndim * sizeof *shape) != 0)) {
        char have[200], want[200];
        format_shape(have, sizeof have, t->ndim, t->shape);
        format_shape(want, sizeof want, ndim, shape);
        return moert_set_error(MOERT_EFORMAT, "tensor '" NAME_FMT "' in %s has shape %s; expected %s", t->name, f->path,
                               have, want);
    }
    MOERT_RETURN_ERROR_IF(!t->dtype_supported, MOERT_EFORMAT,
                          "tensor '" NAME_FMT "' in %s has dtype %s, which is not supported (F32, BF16 or F16)", t->name,
                          f->path, t->dtype_name);
    return MOERT_OK;
}

/* Reads tensor `name` chunk by chunk into out, as float32 or as bfloat16 bits. */
static moert_status read_tensor(st_file *f, const char *name, int ndim, const size_t *shape, int to_bf16, void *out) {
    MOERT_RETURN_ERROR_IF(f == NULL || name == NULL || out == NULL || ndim < 0 || ndim > ST_MAX_DIMS ||
                              (ndim > 0 && shape == NULL),
                          MOERT_EINVAL, "safetensors: bad arguments to read a tensor");
    MOERT_RETURN_ERROR_IF(f->fd < 0, MOERT_EINVAL, "safetensors: a header parsed from memory has no data to read");
    const st_tensor *t = st_find(f, name);
    MOERT_RETURN_ERROR_IF(t == NULL, MOERT_EFORMAT, "tensor '" NAME_FMT "' not found in %s", name, f->path);
    MOERT_FORWARD_IF_ERROR(check_request(f, t, ndim, shape));
    const size_t size = element_bytes(t->dtype), per_chunk = ST_CHUNK_BYTES / size;
    unsigned char *chunk = malloc(t->nbytes < ST_CHUNK_BYTES ? (t->nbytes ? t->nbytes : 1) : ST_CHUNK_BYTES);
    MOERT_RETURN_ERROR_IF(chunk == NULL, MOERT_ENOMEM, "%s: cannot allocate a read buffer", f->path);
    moert_status status = MOERT_OK;
    for (size_t done = 0; done < t->count && status == MOERT_OK;) {
        const size_t n = t->count - done < per_chunk ? t->count - done : per_chunk, bytes = n * size;
        const uint64_t at = (uint64_t)t->offset + done * size;
        errno = 0;
        const ssize_t got = pread_full(f->fd, chunk, bytes, at);
        if (got < 0)
            status = moert_set_error(MOERT_EIO, "%s: cannot read tensor '" NAME_FMT "': %s", f->path, t->name, strerror(errno));
        else if ((size_t)got != bytes) /* the header was checked against the size at open */
            status = moert_set_error(MOERT_EIO, "%s: short read of tensor '" NAME_FMT "': %zd of %zu bytes at offset %llu "
                                     "(was the file truncated?)", f->path, t->name, got, bytes, (unsigned long long)at);
        else if (to_bf16)
            convert_to_bf16(chunk, n, t->dtype, (uint16_t *)out + done);
        else
            convert_to_f32(chunk, n, t->dtype, (float *)out + done);
        done += n;
    }
    free(chunk);
    return status;
}

moert_status st_read_f32(st_file *f, const char *name, int ndim, const size_t *shape, float *out) {
    return read_tensor(f, name, ndim, shape, 0, out);
}

moert_status st_read_bf16(st_file *f, const char *name, int ndim, const size_t *shape, uint16_t *out) {
    return read_tensor(f, name, ndim, shape, 1, out);
}

/* ---- writing ---- */

/* Checks the tensors to write and gives each one's byte count. */
static moert_status check_write(size_t n, const char *const *names, const st_dtype *dtypes, const int *ndims,
                                const size_t (*shapes)[ST_MAX_DIMS], const void *const *data, size_t *nbytes) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        MOERT_RETURN_ERROR_IF(names[i] == NULL || !strcmp(names[i], "__metadata__"), MOERT_EINVAL,
                              "safetensors: tensor %zu has no usable name", i);
        MOERT_RETURN_ERROR_IF(info_of(dtypes[i]) == NULL, MOERT_EINVAL, "safetensors: tensor '" NAME_FMT "': bad dtype %d",
                              names[i], (int)dtypes[i]);
        MOERT_RETURN_ERROR_IF(ndims[i] < 0 || ndims[i] > ST_MAX_DIMS, MOERT_EINVAL,
                              "safetensors: tensor '" NAME_FMT "': %d dimensions", names[i], ndims[i]);
        size_t count = 1;
        for (int d = 0; d < ndims[i]; d++)
            MOERT_RETURN_ERROR_IF(moert_mul_overflows(count, shapes[i][d], &count), MOERT_EOVERFLOW,
                                  "safetensors: tensor '" NAME_FMT "': the shape overflows", names[i]);
        MOERT_RETURN_ERROR_IF(moert_mul_overflows(count, element_bytes(dtypes[i]), &nbytes[i]), MOERT_EOVERFLOW,
                              "safetensors: tensor '" NAME_FMT "': the size overflows", names[i]);
        MOERT_RETURN_ERROR_IF(nbytes[i] > 0 && data[i] == NULL, MOERT_EINVAL, "safetensors: tensor '" NAME_FMT "' has no data",
                              names[i]);
        total += nbytes[i];
        /* Readers hold offsets as doubles, exact up to 2^53. */
        MOERT_RETURN_ERROR_IF(total > (uint64_t)ST_MAX_INTEGER, MOERT_EOVERFLOW, "safetensors: more than 2^53 bytes of data");
        /* Few tensors are written at a time (a layer's), so a quadratic check is enough. */
        for (size_t j = 0; j < i; j++)
            MOERT_RETURN_ERROR_IF(!strcmp(names[i], names[j]), MOERT_EINVAL, "safetensors: duplicate tensor name '" NAME_FMT "'",
                                  names[i]);
    }
    return MOERT_OK;
}

/* {"dtype": .., "shape": [..], "data_offsets": [begin, end]}, or NULL when out of memory. */
static cJSON *tensor_entry(st_dtype dtype, int ndim, const size_t *shape, uint64_t begin, uint64_t end) {
    cJSON *e = cJSON_CreateObject();
    cJSON *s = cJSON_AddArrayToObject(e, "shape"), *o = cJSON_AddArrayToObject(e, "data_offsets");
    int ok = cJSON_AddStringToObject(e, "dtype", info_of(dtype)->name) != NULL && s != NULL && o != NULL;
    for (int d = 0; ok && d < ndim; d++) ok = cJSON_AddItemToArray(s, cJSON_CreateNumber((double)shape[d]));
    ok = ok && cJSON_AddItemToArray(o, cJSON_CreateNumber((double)begin));
    ok = ok && cJSON_AddItemToArray(o, cJSON_CreateNumber((double)end));
    if (!ok) {
        cJSON_Delete(e);
        return NULL;
    }
    return e;
}

/* The header text, unpadded, or NULL when out of memory; cJSON_free it. */
static char *header_text(size_t n, const char *const *names, const st_dtype *dtypes, const int *ndims,
                         const size_t (*shapes)[ST_MAX_DIMS], const size_t *nbytes) {
    cJSON *root = cJSON_CreateObject();
    uint64_t offset = 0;
    int ok = root != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *e = tensor_entry(dtypes[i], ndims[i], shapes[i], offset, offset + nbytes[i]);
        ok = e != NULL && cJSON_AddItemToObject(root, names[i], e);
        if (e != NULL && !ok) cJSON_Delete(e);
        offset += nbytes[i];
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}

static int write_all(FILE *fp, size_t n, const char *text, size_t text_len, size_t padded, const void *const *data,
                     const size_t *nbytes) {
    unsigned char length[8];
    for (int i = 0; i < 8; i++) length[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(length, 1, 8, fp) == 8 && fwrite(text, 1, text_len, fp) == text_len;
    for (size_t i = text_len; ok && i < padded; i++) ok = fputc(' ', fp) != EOF;
    for (size_t i = 0; ok && i < n; i++) ok = nbytes[i] == 0 || fwrite(data[i], 1, nbytes[i], fp) == nbytes[i];
    return ok;
}

moert_status st_write(const char *path, size_t n, const char *const *names, const st_dtype *dtypes, const int *ndims,
                      const size_t (*shapes)[ST_MAX_DIMS], const void *const *data) {
    MOERT_RETURN_ERROR_IF(path == NULL || (n > 0 && (names == NULL || dtypes == NULL || ndims == NULL || shapes == NULL ||
                                                     data == NULL)),
                          MOERT_EINVAL, "safetensors: NULL argument");
    size_t *nbytes = calloc(n ? n : 1, sizeof *nbytes);
    MOERT_RETURN_ERROR_IF(nbytes == NULL, MOERT_ENOMEM, "safetensors: cannot allocate %zu sizes", n);
    moert_status status = check_write(n, names, dtypes, ndims, shapes, data, nbytes);
    char *text = status == MOERT_OK ? header_text(n, names, dtypes, ndims, shapes, nbytes) : NULL;
    if (status == MOERT_OK && text == NULL) status = moert_set_error(MOERT_ENOMEM, "%s: cannot build the header", path);
    if (status == MOERT_OK) {
        const size_t text_len = strlen(text), padded = (text_len + 7) / 8 * 8;
        FILE *fp = fopen(path, "wb");
        if (fp == NULL) {
            status = moert_set_error(MOERT_EIO, "%s: %s", path, strerror(errno));
        } else {
            int ok = write_all(fp, n, text, text_len, padded, data, nbytes);
            ok = fclose(fp) == 0 && ok;
            if (!ok) {
                remove(path); /* no half-written file for a reader to trip on */
                status = moert_set_error(MOERT_EIO, "%s: cannot write", path);
            }
        }
    }
    cJSON_free(text);
    free(nbytes);
    return status;
}

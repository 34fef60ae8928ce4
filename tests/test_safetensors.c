/* The safetensors reader and writer: files written by st_write read back as values worked
 * out independently (half and bfloat16 bits by hand, every half by arithmetic), and bad
 * files written byte by byte, each failing with its status and a message that names the
 * file and the problem. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"
#include "tools/safetensors.h"

static char workdir[256];

static void path(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", workdir, name); }

static void write_raw(const char *name, const void *bytes, size_t n) {
    char p[512];
    path(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

/* A file whose header is `json` as it stands (length `header_len`, which may lie),
 * followed by `data_bytes` bytes counting 0, 1, 2, ... */
static void write_file_with_length(const char *name, uint64_t header_len, const char *json, size_t data_bytes) {
    const size_t n = strlen(json);
    unsigned char *buf = malloc(8 + n + data_bytes + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(header_len >> (8 * i));
    memcpy(buf + 8, json, n);
    for (size_t i = 0; i < data_bytes; i++) buf[8 + n + i] = (unsigned char)i;
    write_raw(name, buf, 8 + n + data_bytes);
    free(buf);
}

static void write_file(const char *name, const char *json, size_t data_bytes) {
    write_file_with_length(name, strlen(json), json, data_bytes);
}

/* st_open(name) fails with `want`, no file, and a message naming the file and `needle`. */
static void expect_open_error(const char *name, moert_status want, const char *needle) {
    char p[512];
    path(p, sizeof p, name);
    st_file *f = (st_file *)1;
    const moert_status got = st_open(p, &f);
    ck_assert_msg(got == want, "%s: status %s, expected %s (%s)", name, moert_status_name(got), moert_status_name(want),
                  moert_last_error());
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(moert_last_error(), p) != NULL, "%s: message does not name the file: %s", name, moert_last_error());
    ck_assert_msg(strstr(moert_last_error(), needle) != NULL, "%s: message lacks '%s': %s", name, needle, moert_last_error());
}

/* The bits of x, for exact comparisons that also cover -0 and NaN payloads. */
static uint32_t bits_of(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    return b;
}

static float float_of(uint32_t b) {
    float x;
    memcpy(&x, &b, 4);
    return x;
}

/* A half's value by its definition, in double arithmetic: no bit manipulation shared with
 * the reader. */
static double half_value(uint16_t h) {
    const int sign = h >> 15, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    double v;
    if (exponent == 31)
        v = mantissa ? NAN : INFINITY;
    else if (exponent == 0)
        v = ldexp(mantissa, -24);
    else
        v = ldexp(1024 + mantissa, exponent - 25);
    return sign ? -v : v;
}

/* bfloat16 (8 significant bits) of a value in its normal range, rounded to nearest even
 * by the floating-point unit (nearbyint in the default rounding mode). */
static double bf16_round(double x) {
    if (x == 0 || isinf(x) || isnan(x)) return x;
    int e;
    const double m = frexp(x, &e); /* x = m 2^e, 0.5 <= |m| < 1 */
    return ldexp(nearbyint(ldexp(m, 8)), e - 8);
}

START_TEST(good_file_reads_back) {
    const float f32[6] = {1.5f, -2.25f, 0.0f, 3.0e38f, -1e-40f /* subnormal */, 1024.0f};
    /* Half bits worked out by hand: 1, -2, 65504 (the largest half), 2^-24 (the smallest
     * subnormal), +inf, -0, 2^-14 (the smallest normal), 1023 x 2^-24 (the largest subnormal). */
    const uint16_t f16[8] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x8000, 0x0400, 0x03FF};
    const float f16_want[8] = {1.0f, -2.0f, 65504.0f, 0x1p-24f, INFINITY, -0.0f, 0x1p-14f, 1023 * 0x1p-24f};
    /* bfloat16: 1, -2, 3.140625 (0x4049), the smallest normal 2^-126. */
    const uint16_t bf16[4] = {0x3F80, 0xC000, 0x4049, 0x0080};
    const float bf16_want[4] = {1.0f, -2.0f, 3.140625f, 0x1p-126f};
    const char *names[3] = {"experts.0.w1.weight", "experts.0.w2.weight", "gate.weight"};
    const st_dtype dtypes[3] = {ST_F32, ST_F16, ST_BF16};
    const int ndims[3] = {2, 3, 1};
    const size_t shapes[3][8] = {{2, 3}, {2, 2, 2}, {4}};
    const void *data[3] = {f32, f16, bf16};
    char p[512];
    path(p, sizeof p, "good.safetensors");
    ck_assert_int_eq(st_write(p, 3, names, dtypes, ndims, shapes, data), MOERT_OK);

    /* The layout: an 8-aligned header, then the tensors in the given order. */
    struct stat sb;
    ck_assert_int_eq(stat(p, &sb), 0);
    st_file *f;
    ck_assert_msg(st_open(p, &f) == MOERT_OK, "%s", moert_last_error());
    ck_assert_int_eq(st_count(f), 3);
    const st_tensor *t0 = st_tensor_at(f, 0), *t1 = st_tensor_at(f, 1), *t2 = st_tensor_at(f, 2);
    ck_assert_ptr_null(st_tensor_at(f, 3));
    ck_assert_str_eq(t0->name, names[0]);
    ck_assert_int_eq(t0->offset % 8, 0);
    ck_assert_int_eq(t0->nbytes, 24);
    ck_assert_int_eq(t1->offset, t0->offset + 24);
    ck_assert_int_eq(t2->offset, t1->offset + 16);
    ck_assert_int_eq((long long)(t2->offset + t2->nbytes), (long long)sb.st_size);
    ck_assert(t0->dtype == ST_F32 && t1->dtype == ST_F16 && t2->dtype == ST_BF16);
    ck_assert(t0->dtype_supported && t1->dtype_supported && t2->dtype_supported);
    ck_assert_str_eq(t1->dtype_name, "F16");
    ck_assert_str_eq(t2->dtype_name, "BF16");
    ck_assert_int_eq(t1->ndim, 3);
    ck_assert_int_eq(t1->count, 8);
    ck_assert_int_eq(t0->shape[0], 2);
    ck_assert_int_eq(t0->shape[1], 3);
    ck_assert_ptr_eq(st_find(f, "gate.weight"), t2);
    ck_assert_ptr_null(st_find(f, "gate"));

    float *out = test_alloc_canary(8 * sizeof(float));
    ck_assert_msg(st_read_f32(f, names[0], 2, shapes[0], out) == MOERT_OK, "%s", moert_last_error());
    for (int i = 0; i < 6; i++) ck_assert_uint_eq(bits_of(out[i]), bits_of(f32[i]));
    ck_assert_msg(st_read_f32(f, names[1], 3, shapes[1], out) == MOERT_OK, "%s", moert_last_error());
    for (int i = 0; i < 8; i++) ck_assert_msg(bits_of(out[i]) == bits_of(f16_want[i]), "half %d: %a", i, (double)out[i]);
    ck_assert_msg(st_read_f32(f, names[2], 1, shapes[2], out) == MOERT_OK, "%s", moert_last_error());
    for (int i = 0; i < 4; i++) ck_assert_uint_eq(bits_of(out[i]), bits_of(bf16_want[i]));
    ck_assert(test_canary_intact(out, 8 * sizeof(float)));

    /* As bfloat16: BF16 copied; F16 through float (65504 rounds up to 65536 = 0x4780). */
    uint16_t *b = test_alloc_canary(8 * sizeof(uint16_t));
    ck_assert_int_eq(st_read_bf16(f, names[2], 1, shapes[2], b), MOERT_OK);
    for (int i = 0; i < 4; i++) ck_assert_uint_eq(b[i], bf16[i]);
    ck_assert_int_eq(st_read_bf16(f, names[1], 3, shapes[1], b), MOERT_OK);
    const uint16_t f16_as_bf16[8] = {0x3F80, 0xC000, 0x4780, 0x3380, 0x7F80, 0x8000, 0x3880, 0x3880};
    for (int i = 0; i < 8; i++) ck_assert_msg(b[i] == f16_as_bf16[i], "half %d: 0x%04x", i, b[i]);
    ck_assert(test_canary_intact(b, 8 * sizeof(uint16_t)));
    free(out), free(b);
    st_close(f);
    unlink(p);
}
END_TEST

START_TEST(float32_rounds_to_nearest_even_bfloat16) {
    /* Each float's bits and the bfloat16 it must become. */
    const uint32_t in[] = {
        0x3F800000, /* 1 */
        0x3F808000, /* 1 + 2^-8, halfway between 0x3F80 and 0x3F81: to the even 0x3F80 */
        0x3F818000, /* halfway between 0x3F81 and 0x3F82: to the even 0x3F82 */
        0x3F808001, /* just above halfway: up */
        0x3F807FFF, /* just below: down */
        0xBF818000, /* negative, halfway: to even, away from zero here */
        0x7F7FFFFF, /* FLT_MAX rounds past bfloat16's largest: +inf */
        0x7F800000, /* +inf */
        0x80000000, /* -0 */
        0x00000001, /* the smallest subnormal rounds to +0 */
    };
    const uint16_t want[] = {0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x3F80, 0xBF82, 0x7F80, 0x7F80, 0x8000, 0x0000};
    const size_t n = sizeof in / sizeof in[0];
    /* NaNs follow: a quiet one, and one whose payload is only in the low bits (truncated,
     * or rounded, it would become infinity). */
    const uint32_t nans[2] = {0x7FC00000, 0xFF800001};
    float x[12];
    for (size_t i = 0; i < n; i++) x[i] = float_of(in[i]);
    x[n] = float_of(nans[0]), x[n + 1] = float_of(nans[1]);
    const char *name = "x";
    const st_dtype dtype = ST_F32;
    const int ndim = 1;
    const size_t shape[1][8] = {{n + 2}};
    const void *data[1] = {x};
    char p[512];
    path(p, sizeof p, "round.safetensors");
    ck_assert_int_eq(st_write(p, 1, &name, &dtype, &ndim, shape, data), MOERT_OK);
    st_file *f;
    ck_assert_int_eq(st_open(p, &f), MOERT_OK);
    uint16_t b[12];
    ck_assert_msg(st_read_bf16(f, "x", 1, shape[0], b) == MOERT_OK, "%s", moert_last_error());
    for (size_t i = 0; i < n; i++) ck_assert_msg(b[i] == want[i], "0x%08x -> 0x%04x, expected 0x%04x", in[i], b[i], want[i]);
    for (int i = 0; i < 2; i++) {
        const uint16_t v = b[n + i];
        ck_assert_msg((v & 0x7F80) == 0x7F80 && (v & 0x7F) != 0, "NaN 0x%08x -> 0x%04x, not a NaN", nans[i], v);
        ck_assert_uint_eq(v >> 15, nans[i] >> 31);
    }
    st_close(f);
    unlink(p);
}
END_TEST

/* Every half, twenty times over: more than two read chunks, and each value checked
 * against its definition, as float32 and as bfloat16. */
START_TEST(every_half_converts_across_chunks) {
    const size_t reps = 20, n = 65536 * reps;
    uint16_t *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = (uint16_t)(i * 40503u); /* odd: each rep is a permutation */
    const char *name = "halves";
    const st_dtype dtype = ST_F16;
    const int ndim = 2;
    const size_t shape[1][8] = {{reps, 65536}};
    const void *data[1] = {h};
    char p[512];
    path(p, sizeof p, "halves.safetensors");
    ck_assert_int_eq(st_write(p, 1, &name, &dtype, &ndim, shape, data), MOERT_OK);
    st_file *f;
    ck_assert_int_eq(st_open(p, &f), MOERT_OK);
    float *x = test_alloc_canary(n * sizeof *x);
    uint16_t *b = test_alloc_canary(n * sizeof *b);
    ck_assert_msg(st_read_f32(f, name, 2, shape[0], x) == MOERT_OK, "%s", moert_last_error());
    ck_assert_msg(st_read_bf16(f, name, 2, shape[0], b) == MOERT_OK, "%s", moert_last_error());
    for (size_t i = 0; i < n; i++) {
        const double want = half_value(h[i]), got_bf16 = float_of((uint32_t)b[i] << 16);
        const int ok = isnan(want) ? isnan(x[i]) && isnan(got_bf16)
                                   : (double)x[i] == want && !signbit(x[i]) == !signbit(want) &&
                                         got_bf16 == bf16_round(want) && !signbit(got_bf16) == !signbit(want);
        ck_assert_msg(ok, "half 0x%04x: float %a, bfloat16 0x%04x; expected %a", h[i], (double)x[i], b[i], want);
    }
    ck_assert(test_canary_intact(x, n * sizeof *x) && test_canary_intact(b, n * sizeof *b));
    free(x), free(b), free(h);
    st_close(f);
    unlink(p);
}
END_TEST

START_TEST(metadata_is_skipped) {
    /* Written by hand, as the reference writer lays it out; a scalar and an empty tensor. */
    const char *json = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\"},"
                       "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"s\":{\"shape\":[],\"dtype\":\"BF16\",\"data_offsets\":[8,10]},"
                       "\"e\":{\"dtype\":\"F16\",\"shape\":[3,0],\"data_offsets\":[10,10]}}      ";
    char p[512];
    path(p, sizeof p, "meta.safetensors");
    const size_t n = strlen(json);
    unsigned char buf[512];
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    const float w[2] = {0.5f, -4.0f};
    memcpy(buf + 8 + n, w, 8);
    buf[8 + n + 8] = 0x40, buf[8 + n + 9] = 0x40; /* bfloat16 0x4040 = 3 */
    write_raw("meta.safetensors", buf, 8 + n + 10);

    st_file *f;
    ck_assert_msg(st_open(p, &f) == MOERT_OK, "%s", moert_last_error());
    ck_assert_int_eq(st_count(f), 3);
    ck_assert_ptr_null(st_find(f, "__metadata__"));
    ck_assert_str_eq(st_tensor_at(f, 0)->name, "w");
    float x[2];
    ck_assert_int_eq(st_read_f32(f, "w", 1, (size_t[]){2}, x), MOERT_OK);
    ck_assert(x[0] == 0.5f && x[1] == -4.0f);
    ck_assert_int_eq(st_find(f, "s")->ndim, 0);
    ck_assert_int_eq(st_find(f, "s")->count, 1);
    ck_assert_int_eq(st_read_f32(f, "s", 0, NULL, x), MOERT_OK);
    ck_assert(x[0] == 3.0f);
    ck_assert_int_eq(st_find(f, "e")->count, 0);
    ck_assert_int_eq(st_read_f32(f, "e", 2, (size_t[]){3, 0}, x), MOERT_OK);
    st_close(f);
    unlink(p);

    /* Metadata must still be an object of strings. */
    write_file("meta_bad.safetensors", "{\"__metadata__\":{\"epochs\":3}}", 0);
    expect_open_error("meta_bad.safetensors", MOERT_EFORMAT, "'epochs' is not a string");
    write_file("meta_twice.safetensors", "{\"__metadata__\":{},\"__metadata__\":{}}", 0);
    expect_open_error("meta_twice.safetensors", MOERT_EFORMAT, "appears twice");
    /* No tensors at all is a valid file. */
    write_file("empty.safetensors", "{}", 0);
    path(p, sizeof p, "empty.safetensors");
    ck_assert_int_eq(st_open(p, &f), MOERT_OK);
    ck_assert_int_eq(st_count(f), 0);
    ck_assert_ptr_null(st_find(f, "w"));
    st_close(f);
}
END_TEST

#define T4(name, dtype, begin, end) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":[4],\"data_offsets\":[" #begin "," #end "]}"

START_TEST(bad_files_fail_with_reasons) {
    /* The header length against the file. */
    write_raw("short.safetensors", "\x10\x00\x00", 3);
    expect_open_error("short.safetensors", MOERT_EFORMAT, "too short");
    write_file_with_length("huge_len.safetensors", (uint64_t)1 << 60, "{}", 64);
    expect_open_error("huge_len.safetensors", MOERT_EFORMAT, "exceeds the limit");
    write_file_with_length("max_len.safetensors", (uint64_t)-1, "{}", 64);
    expect_open_error("max_len.safetensors", MOERT_EFORMAT, "exceeds the limit");
    write_file_with_length("tiny_len.safetensors", 1, "{}", 0);
    expect_open_error("tiny_len.safetensors", MOERT_EFORMAT, "too small");
    write_file_with_length("zero_len.safetensors", 0, "", 0);
    expect_open_error("zero_len.safetensors", MOERT_EFORMAT, "too small");
    write_file_with_length("trunc_header.safetensors", 200, "{\"a\":{\"dtype\":\"F32\",", 0);
    expect_open_error("trunc_header.safetensors", MOERT_EFORMAT, "truncated header");

    /* The text. */
    write_file("not_json.safetensors", "this is not JSON", 0);
    expect_open_error("not_json.safetensors", MOERT_EFORMAT, "not valid JSON");
    write_file("unclosed.safetensors", "{\"a\":{\"dtype\":\"F32\"", 0);
    expect_open_error("unclosed.safetensors", MOERT_EFORMAT, "not valid JSON");
    write_file("array.safetensors", "[1, 2]  ", 0);
    expect_open_error("array.safetensors", MOERT_EFORMAT, "not a JSON object");
    write_file("trailing.safetensors", "{} {}", 0);
    expect_open_error("trailing.safetensors", MOERT_EFORMAT, "trailing bytes");
    write_file("latin1.safetensors", "{\"caf\xe9\":{}}", 0);
    expect_open_error("latin1.safetensors", MOERT_EFORMAT, "not UTF-8");
    write_file("overlong.safetensors", "{\"\xc0\xaf\":{}}", 0);
    expect_open_error("overlong.safetensors", MOERT_EFORMAT, "not UTF-8");
    write_file("f8_byte.safetensors", "{\"\xf8\x88\x80\x80\x80\":{}}", 0);
    expect_open_error("f8_byte.safetensors", MOERT_EFORMAT, "not UTF-8 (byte 0xf8 at 2)");
    write_raw("nul.safetensors", "\x04\0\0\0\0\0\0\0{}\0 ", 12);
    expect_open_error("nul.safetensors", MOERT_EFORMAT, "control character");

    /* Each tensor entry. */
    write_file("entry.safetensors", "{\"a\":[1]}", 0);
    expect_open_error("entry.safetensors", MOERT_EFORMAT, "'a' is not an object");
    write_file("unknown_dtype.safetensors", "{" T4("a", "F33", 0, 16) "}", 16);
    expect_open_error("unknown_dtype.safetensors", MOERT_EFORMAT, "dtype 'F33' is not a safetensors dtype");
    write_file("lower_dtype.safetensors", "{" T4("a", "f32", 0, 16) "}", 16);
    expect_open_error("lower_dtype.safetensors", MOERT_EFORMAT, "not a safetensors dtype");
    write_file("number_dtype.safetensors", "{\"a\":{\"dtype\":32,\"shape\":[4],\"data_offsets\":[0,16]}}", 16);
    expect_open_error("number_dtype.safetensors", MOERT_EFORMAT, "'dtype' is not a string");
    write_file("extra_field.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16],\"x\":1}}", 16);
    expect_open_error("extra_field.safetensors", MOERT_EFORMAT, "unexpected field 'x'");
    write_file("missing_field.safetensors", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", 16);
    expect_open_error("missing_field.safetensors", MOERT_EFORMAT, "lacks field 'shape'");
    write_file("repeat_field.safetensors", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
               16);
    expect_open_error("repeat_field.safetensors", MOERT_EFORMAT, "repeats field 'dtype'");
    write_file("shape_string.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":\"4\",\"data_offsets\":[0,16]}}", 16);
    expect_open_error("shape_string.safetensors", MOERT_EFORMAT, "'shape' is not an array");
    write_file("negative.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}", 16);
    expect_open_error("negative.safetensors", MOERT_EFORMAT, "shape[0] is -4, not an integer");
    write_file("fraction.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2.5],\"data_offsets\":[0,20]}}", 20);
    expect_open_error("fraction.safetensors", MOERT_EFORMAT, "shape[1] is 2.5, not an integer");
    write_file("big_dim.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[9007199254740994],\"data_offsets\":[0,16]}}", 16);
    expect_open_error("big_dim.safetensors", MOERT_EFORMAT, "not an integer in [0, 2^53]");
    write_file("huge_dim.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,16]}}", 16);
    expect_open_error("huge_dim.safetensors", MOERT_EFORMAT, "shape[0] is 1.0000000000000001e+300");
    write_file("string_dim.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,16]}}", 16);
    expect_open_error("string_dim.safetensors", MOERT_EFORMAT, "shape[0] is a string");
    write_file("nine_dims.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1);
    expect_open_error("nine_dims.safetensors", MOERT_EFORMAT, "more than 8 dimensions");
    write_file("overflow.safetensors",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,16]}}", 16);
    expect_open_error("overflow.safetensors", MOERT_EFORMAT, "overflows");
    write_file("one_offset.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16]}}", 16);
    expect_open_error("one_offset.safetensors", MOERT_EFORMAT, "'data_offsets' is not two integers");
    write_file("three_offsets.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16,32]}}", 32);
    expect_open_error("three_offsets.safetensors", MOERT_EFORMAT, "'data_offsets' is not two integers");
    write_file("negative_offset.safetensors", "{" T4("a", "F32", -16, 0) "}", 16);
    expect_open_error("negative_offset.safetensors", MOERT_EFORMAT, "'data_offsets' is not two integers");
    write_file("backwards.safetensors", "{" T4("a", "F32", 16, 0) "}", 16);
    expect_open_error("backwards.safetensors", MOERT_EFORMAT, "end before they begin");
    write_file("wrong_length.safetensors", "{" T4("a", "F32", 0, 12) "}", 16);
    expect_open_error("wrong_length.safetensors", MOERT_EFORMAT, "hold 12 bytes; shape [4] of F32 needs 16");
    write_file("wrong_length_i64.safetensors", "{" T4("a", "I64", 0, 16) "}", 32);
    expect_open_error("wrong_length_i64.safetensors", MOERT_EFORMAT, "shape [4] of I64 needs 32");
    write_file("half_byte.safetensors", "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 1);
    expect_open_error("half_byte.safetensors", MOERT_EFORMAT, "not a whole number of bytes");

    /* The tensors together, and against the file. */
    write_file("truncated.safetensors", "{" T4("a", "F32", 0, 16) "," T4("b", "F32", 16, 32) "}", 24);
    expect_open_error("truncated.safetensors", MOERT_EFORMAT, "tensor 'b': data [16, 32) runs past the end of the file");
    write_file("overlap.safetensors", "{" T4("a", "F32", 0, 16) "," T4("b", "F32", 8, 24) "}", 24);
    expect_open_error("overlap.safetensors", MOERT_EFORMAT, "tensors 'a' [0, 16) and 'b' [8, 24) overlap");
    /* Out of order in the header, and a containing range: still caught. */
    write_file("overlap2.safetensors",
               "{" T4("c", "U8", 40, 44) "," T4("b", "F32", 4, 20) "," T4("a", "I64", 0, 32) "}", 44);
    expect_open_error("overlap2.safetensors", MOERT_EFORMAT, "tensors 'a' [0, 32) and 'b' [4, 20) overlap");
    write_file("same_range.safetensors", "{" T4("a", "F32", 0, 16) "," T4("b", "I32", 0, 16) "}", 16);
    expect_open_error("same_range.safetensors", MOERT_EFORMAT, "overlap");
    /* Every byte indexed, as the format's reference reader requires: no hole, no tail. */
    write_file("hole.safetensors", "{" T4("a", "F32", 0, 16) "," T4("b", "F32", 20, 36) "}", 36);
    expect_open_error("hole.safetensors", MOERT_EFORMAT, "bytes [16, 20) of the data belong to no tensor");
    write_file("tail.safetensors", "{" T4("a", "F32", 0, 16) "}", 20);
    expect_open_error("tail.safetensors", MOERT_EFORMAT, "4 bytes after the last tensor's data");
    write_file("duplicate.safetensors", "{" T4("a", "F32", 0, 16) "," T4("a", "F32", 16, 32) "}", 32);
    expect_open_error("duplicate.safetensors", MOERT_EFORMAT, "duplicate tensor name 'a'");

    /* Not a readable file at all. */
    expect_open_error("no_such_file.safetensors", MOERT_EIO, "No such file");
    st_file *f = NULL;
    ck_assert_int_eq(st_open(workdir, &f), MOERT_EIO);
    ck_assert(strstr(moert_last_error(), "not a regular file") != NULL);
    ck_assert_ptr_null(f);
}
END_TEST

/* Opened files whose tensors cannot be read as asked. */
START_TEST(read_errors_name_the_tensor) {
    write_file("mixed.safetensors",
               "{" T4("ids", "I64", 0, 32) "," T4("experts.0.w1.weight", "F32", 32, 48) "," T4("q", "F4", 48, 50) "}  ",
               50);
    char p[512];
    path(p, sizeof p, "mixed.safetensors");
    st_file *f;
    ck_assert_msg(st_open(p, &f) == MOERT_OK, "%s", moert_last_error());
    const st_tensor *ids = st_find(f, "ids");
    ck_assert_ptr_nonnull(ids);
    ck_assert(!ids->dtype_supported);
    ck_assert_str_eq(ids->dtype_name, "I64");
    ck_assert_int_eq(ids->nbytes, 32);
    ck_assert_int_eq(st_find(f, "q")->nbytes, 2); /* four 4-bit elements */
    ck_assert(!st_find(f, "q")->dtype_supported);
    float x[8];
    uint16_t b[8];
    const size_t four[1] = {4};
    ck_assert_int_eq(st_read_f32(f, "ids", 1, four, x), MOERT_EFORMAT);
    ck_assert_msg(strstr(moert_last_error(), "tensor 'ids' in ") && strstr(moert_last_error(), "has dtype I64") &&
                      strstr(moert_last_error(), "not supported"),
                  "%s", moert_last_error());
    ck_assert_int_eq(st_read_bf16(f, "ids", 1, four, b), MOERT_EFORMAT);

    char want[1024];
    ck_assert_int_eq(st_read_f32(f, "experts.3.w1.weight", 1, four, x), MOERT_EFORMAT);
    snprintf(want, sizeof want, "tensor 'experts.3.w1.weight' not found in %s", p);
    ck_assert_str_eq(moert_last_error(), want);

    const size_t two_by_two[2] = {2, 2}, five[1] = {5};
    ck_assert_int_eq(st_read_f32(f, "experts.0.w1.weight", 2, two_by_two, x), MOERT_EFORMAT);
    ck_assert_msg(strstr(moert_last_error(), "has shape [4]; expected [2, 2]"), "%s", moert_last_error());
    ck_assert_int_eq(st_read_bf16(f, "experts.0.w1.weight", 1, five, b), MOERT_EFORMAT);
    ck_assert_msg(strstr(moert_last_error(), "has shape [4]; expected [5]"), "%s", moert_last_error());
    ck_assert_int_eq(st_read_f32(f, "experts.0.w1.weight", 9, four, x), MOERT_EINVAL);
    ck_assert_int_eq(st_read_f32(f, "experts.0.w1.weight", 1, four, x), MOERT_OK);

    /* The file shrinks after it was opened: the read comes up short. */
    ck_assert_int_eq(truncate(p, (off_t)st_find(f, "experts.0.w1.weight")->offset + 8), 0);
    ck_assert_int_eq(st_read_f32(f, "experts.0.w1.weight", 1, four, x), MOERT_EIO);
    ck_assert_msg(strstr(moert_last_error(), "short read of tensor 'experts.0.w1.weight'"), "%s", moert_last_error());
    st_close(f);
    unlink(p);
}
END_TEST

START_TEST(header_in_memory) {
    const char *json = "{" T4("a", "BF16", 0, 8) "}";
    const size_t n = strlen(json);
    unsigned char buf[256];
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    st_file *f;
    /* The whole header, for a file with the 8 data bytes after it. */
    ck_assert_int_eq(st_parse_header(buf, 8 + n, 8 + n + 8, &f), MOERT_OK);
    ck_assert_int_eq(st_count(f), 1);
    ck_assert_int_eq(st_tensor_at(f, 0)->offset, 8 + n);
    float x[4];
    ck_assert_int_eq(st_read_f32(f, "a", 1, (size_t[]){4}, x), MOERT_EINVAL); /* nothing to read from */
    st_close(f);
    /* Data past the stated file size; a header cut short in the buffer. */
    ck_assert_int_eq(st_parse_header(buf, 8 + n, 8 + n + 7, &f), MOERT_EFORMAT);
    ck_assert(strstr(moert_last_error(), "past the end"));
    ck_assert_int_eq(st_parse_header(buf, 8 + n - 1, 8 + n + 8, &f), MOERT_EFORMAT);
    ck_assert(strstr(moert_last_error(), "truncated header"));
    ck_assert_ptr_null(f);
    /* A huge length fails before anything is allocated for it. */
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(((uint64_t)1 << 60) >> (8 * i));
    ck_assert_int_eq(st_parse_header(buf, 8 + n, (uint64_t)1 << 62, &f), MOERT_EFORMAT);
    ck_assert(strstr(moert_last_error(), "exceeds the limit"));
    ck_assert_int_eq(st_parse_header(NULL, 0, 0, &f), MOERT_EINVAL);
    st_close(NULL);
}
END_TEST

START_TEST(writer_refuses_bad_tensors) {
    const float x[2] = {1, 2};
    const char *names[2] = {"a", "a"};
    const st_dtype dtypes[2] = {ST_F32, ST_F32};
    const int ndims[2] = {1, 1};
    const size_t shapes[2][8] = {{2}, {2}};
    const void *data[2] = {x, x};
    char p[512];
    path(p, sizeof p, "refused.safetensors");
    ck_assert_int_eq(st_write(p, 2, names, dtypes, ndims, shapes, data), MOERT_EINVAL);
    ck_assert(strstr(moert_last_error(), "duplicate tensor name 'a'"));
    const char *meta[1] = {"__metadata__"};
    ck_assert_int_eq(st_write(p, 1, meta, dtypes, ndims, shapes, data), MOERT_EINVAL);
    const st_dtype bad[1] = {(st_dtype)7};
    ck_assert_int_eq(st_write(p, 1, names, bad, ndims, shapes, data), MOERT_EINVAL);
    const int nine[1] = {9};
    ck_assert_int_eq(st_write(p, 1, names, dtypes, nine, shapes, data), MOERT_EINVAL);
    const void *none[1] = {NULL};
    ck_assert_int_eq(st_write(p, 1, names, dtypes, ndims, shapes, none), MOERT_EINVAL);
    ck_assert_int_ne(access(p, F_OK), 0);
    ck_assert_int_eq(st_write("/nonexistent-dir/x.safetensors", 1, names, dtypes, ndims, shapes, data), MOERT_EIO);
    /* No tensors: the smallest valid file, "{}" padded to 8. */
    ck_assert_int_eq(st_write(p, 0, NULL, NULL, NULL, NULL, NULL), MOERT_OK);
    struct stat sb;
    ck_assert_int_eq(stat(p, &sb), 0);
    ck_assert_int_eq(sb.st_size, 16);
    st_file *f;
    ck_assert_int_eq(st_open(p, &f), MOERT_OK);
    ck_assert_int_eq(st_count(f), 0);
    st_close(f);
    unlink(p);
}
END_TEST

int main(void) {
    snprintf(workdir, sizeof workdir, "/tmp/moert-safetensors-XXXXXX");
    if (mkdtemp(workdir) == NULL) return 2;
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_add_test(tc, good_file_reads_back);
    tcase_add_test(tc, float32_rounds_to_nearest_even_bfloat16);
    tcase_add_test(tc, every_half_converts_across_chunks);
    tcase_add_test(tc, metadata_is_skipped);
    tcase_add_test(tc, bad_files_fail_with_reasons);
    tcase_add_test(tc, read_errors_name_the_tensor);
    tcase_add_test(tc, header_in_memory);
    tcase_add_test(tc, writer_refuses_bad_tensors);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    SRunner *runner = srunner_create(s);
    srunner_run_all(runner, CK_NORMAL);
    const int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    char cleanup[512];
    snprintf(cleanup, sizeof cleanup, "rm -rf %s", workdir);
    if (system(cleanup) != 0) fprintf(stderr, "could not remove %s\n", workdir);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

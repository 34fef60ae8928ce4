#include "tools/cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_fail(int code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fputs("moert: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    return code;
}

int cli_fail_status(moert_status status, const char *what) {
    const char *detail = moert_last_error();
    if (detail[0] != '\0') return cli_fail(CLI_FAIL, "%s: %s", what, detail);
    return cli_fail(CLI_FAIL, "%s: %s", what, moert_strerror(status));
}

int cli_usage_error(const char *command, const char *problem) {
    return cli_fail(CLI_USAGE, "%s (see 'moert %s --help')", problem, command);
}

int cli_parse_size(const char *option, const char *text, size_t min, size_t max, size_t *out) {
    char *end = NULL;
    errno = 0;
    if (text[0] == '-') return cli_fail(CLI_USAGE, "%s: '%s' is negative", option, text);
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || *end != '\0')
        return cli_fail(CLI_USAGE, "%s: '%s' is not a whole number", option, text);
    if (errno == ERANGE || v < min || v > max)
        return cli_fail(CLI_USAGE, "%s: %s is outside %zu..%zu", option, text, min, max);
    *out = (size_t)v;
    return CLI_OK;
}

int cli_parse_int(const char *option, const char *text, long min, long max, int *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0')
        return cli_fail(CLI_USAGE, "%s: '%s' is not a whole number", option, text);
    if (errno == ERANGE || v < min || v > max)
        return cli_fail(CLI_USAGE, "%s: %s is outside %ld..%ld", option, text, min, max);
    *out = (int)v;
    return CLI_OK;
}

int cli_parse_float(const char *option, const char *text, double min, double max, float *out) {
    double v = 0.0;
    const int code = cli_parse_double(option, text, min, max, &v);
    if (code == CLI_OK) *out = (float)v;
    return code;
}

int cli_parse_double(const char *option, const char *text, double min, double max, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0')
        return cli_fail(CLI_USAGE, "%s: '%s' is not a number", option, text);
    if (!isfinite(v) || v < min || v > max)
        return cli_fail(CLI_USAGE, "%s: %s is outside %g..%g", option, text, min, max);
    *out = v;
    return CLI_OK;
}

int cli_parse_dtype(const char *option, const char *text, moert_dtype *out) {
    if (strcmp(text, "f32") == 0) *out = MOERT_DTYPE_F32;
    else if (strcmp(text, "bf16") == 0) *out = MOERT_DTYPE_BF16;
    else return cli_fail(CLI_USAGE, "%s: '%s' is not f32 or bf16", option, text);
    return CLI_OK;
}

void cli_print_json_line(void *object) {
    char *text = cJSON_PrintUnformatted(object);
    if (text != NULL) printf("%s\n", text);
    free(text);
    cJSON_Delete(object);
}

/* The moert command line: exit codes, error lines and option parsing shared by the
 * subcommands. Errors go to stderr as one line starting with "moert:". */
#ifndef MOERT_TOOLS_CLI_H
#define MOERT_TOOLS_CLI_H

#include <stddef.h>

#include "moert/moert.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Prints "moert: <message>" to stderr and returns `code`. */
int cli_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "moert: <what>: <detail of the last error>" and returns CLI_FAIL. */
int cli_fail_status(moert_status status, const char *what);

/* A usage error for an unknown option or a missing argument; returns CLI_USAGE. */
int cli_usage_error(const char *command, const char *problem);

/* Option values. Each returns CLI_OK or, after printing what was wrong, CLI_USAGE. */
int cli_parse_size(const char *option, const char *text, size_t min, size_t max, size_t *out);
int cli_parse_int(const char *option, const char *text, long min, long max, int *out);
int cli_parse_float(const char *option, const char *text, double min, double max, float *out);
int cli_parse_double(const char *option, const char *text, double min, double max, double *out);
int cli_parse_dtype(const char *option, const char *text, moert_dtype *out); /* f32 | bf16 */

/* Prints a cJSON object (passed as void *) on one line, then frees it. */
void cli_print_json_line(void *object);

/* Subcommands: argv[0] is the subcommand's name. */
int cmd_info(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_simulate(int argc, char **argv);
int cmd_route(int argc, char **argv);
int cmd_layer(int argc, char **argv);

#endif /* MOERT_TOOLS_CLI_H */

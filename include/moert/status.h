/* moert: status codes and error details.
 *
 * Every public function returns a moert_status. moert_strerror() names the status;
 * moert_last_error() gives the detail of the last failure on the calling thread (which
 * row, which field, which value), e.g. "logits[3,2] is NaN". Library code never prints
 * and never exits. */
#ifndef MOERT_STATUS_H
#define MOERT_STATUS_H

#include "moert/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The one table of status codes: X(name, value, message). */
#define MOERT_STATUS_TABLE(X)                                                      \
    X(MOERT_OK, 0, "success")                                                      \
    X(MOERT_EINVAL, 1, "invalid argument")                                         \
    X(MOERT_ENOMEM, 2, "out of memory")                                            \
    X(MOERT_EBADDATA, 3, "invalid input data")                                     \
    X(MOERT_EOVERFLOW, 4, "size overflows")                                        \
    X(MOERT_EUNSUPPORTED, 5, "not supported on this machine or build")             \
    X(MOERT_EIO, 6, "input/output error")                                          \
    X(MOERT_EFORMAT, 7, "malformed file")                                          \
    X(MOERT_EMPI, 8, "MPI error")                                                  \
    X(MOERT_EINTERNAL, 9, "internal error")

typedef enum moert_status {
#define MOERT_STATUS_ENUM_(name, value, message) name = value,
    MOERT_STATUS_TABLE(MOERT_STATUS_ENUM_)
#undef MOERT_STATUS_ENUM_
} moert_status;

/* The message of a status ("invalid argument"); never NULL, also for unknown values. */
MOERT_API const char *moert_strerror(moert_status status);

/* The symbolic name of a status ("MOERT_EINVAL"); never NULL. */
MOERT_API const char *moert_status_name(moert_status status);

/* Detail of the most recent failure on the calling thread, or "" if there was none.
 * Successful calls leave it unchanged. The string is owned by the library and is
 * overwritten by the next failure on this thread. */
MOERT_API const char *moert_last_error(void);

/* Records the detail for moert_last_error() on this thread and returns `status`: for code
 * built on moert (tools, bindings, layers of its own) to report errors the same way. */
MOERT_API moert_status moert_set_error(moert_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#ifdef __cplusplus
}
#endif

#endif /* MOERT_STATUS_H */

/* Status names and messages, from the one table in moert/status.h, and the thread-local
 * error detail. */
#include <stdarg.h>
#include <stdio.h>

#include "common/error.h"
#include "moert/status.h"

/* Long enough for a path and a couple of numbers; longer details are truncated. */
#define MOERT_ERROR_DETAIL_MAX 512

static _Thread_local char error_detail[MOERT_ERROR_DETAIL_MAX];

const char *moert_strerror(moert_status status) {
    switch (status) {
#define MOERT_STATUS_MESSAGE_(name, value, message)                                    \
    case name: return message;
        MOERT_STATUS_TABLE(MOERT_STATUS_MESSAGE_)
#undef MOERT_STATUS_MESSAGE_
    }
    return "unknown status";
}

const char *moert_status_name(moert_status status) {
    switch (status) {
#define MOERT_STATUS_NAME_(name, value, message)                                       \
    case name: return #name;
        MOERT_STATUS_TABLE(MOERT_STATUS_NAME_)
#undef MOERT_STATUS_NAME_
    }
    return "MOERT_UNKNOWN";
}

const char *moert_last_error(void) { return error_detail; }

moert_status moert_set_error(moert_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(error_detail, sizeof error_detail, fmt, args);
    va_end(args);
    return status;
}

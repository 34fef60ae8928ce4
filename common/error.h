/* Internal: setting the thread-local error detail, and one-line error paths.
 *
 *   MOERT_RETURN_ERROR_IF(k > e, MOERT_EINVAL, "k=%d exceeds experts=%zu", k, e);
 *   MOERT_FORWARD_IF_ERROR(other_call(...));
 */
#ifndef MOERT_COMMON_ERROR_H
#define MOERT_COMMON_ERROR_H

#include "moert/status.h"

#define MOERT_RETURN_ERROR_IF(cond, status, ...)                                       \
    do {                                                                               \
        if (cond) return moert_set_error((status), __VA_ARGS__);                       \
    } while (0)

#define MOERT_FORWARD_IF_ERROR(expr)                                                   \
    do {                                                                               \
        moert_status moert_forward_status_ = (expr);                                   \
        if (moert_forward_status_ != MOERT_OK) return moert_forward_status_;           \
    } while (0)

#endif /* MOERT_COMMON_ERROR_H */

/* A whole text file in memory (see text.h). */
#include "sim/text.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

moert_status sim_read_text(const char *path, char **text, size_t *size) {
    *text = NULL, *size = 0;
    FILE *f = fopen(path, "rb");
    MOERT_RETURN_ERROR_IF(f == NULL, MOERT_EIO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t used = 0, cap = 0;
    moert_status st = MOERT_OK;
    for (;;) { /* growing by doubling: no size asked of the file, which may be a pipe */
        if (used + 65536 > cap) {
            char *more = realloc(buf, cap = (cap ? 2 * cap : 1 << 20));
            if (more == NULL) {
                st = moert_set_error(MOERT_ENOMEM, "%s: cannot allocate %zu bytes", path, cap);
                break;
            }
            buf = more;
        }
        const size_t got = fread(buf + used, 1, cap - used - 1, f);
        used += got;
        if (got == 0) {
            if (ferror(f)) st = moert_set_error(MOERT_EIO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (st != MOERT_OK) {
        free(buf);
        return st;
    }
    buf[used] = '\0';
    *text = buf, *size = used;
    return MOERT_OK;
}

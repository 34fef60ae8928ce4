/* Internal to `moert simulate`: a whole text file in memory, for the readers of traces,
 * count tables and summaries. */
#ifndef MOERT_SIM_TEXT_H
#define MOERT_SIM_TEXT_H

#include <stddef.h>

#include "moert/status.h"

/* The file at path into *text (malloc'd, NUL-terminated, the caller frees it) and its
 * length into *size; any size, read until the end. MOERT_EIO naming the file, MOERT_ENOMEM. */
moert_status sim_read_text(const char *path, char **text, size_t *size);

#endif /* MOERT_SIM_TEXT_H */

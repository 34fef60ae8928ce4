/* Internal: zeroed buffers for bulk transfers, on transparent huge pages where they are
 * large enough. The machines moert runs on set THP to "madvise" by default, so large
 * exchange buffers must ask: Open MPI's single-copy path (CMA) walks the peer's pages, and
 * on 4 KiB pages the expert-parallel exchange ran at 0.83-0.97x of the same transfer on
 * 2 MiB pages' speed (bench/README.md). Free with free(). */
#ifndef MOERT_COMMON_LARGE_ALLOC_H
#define MOERT_COMMON_LARGE_ALLOC_H

#include <stddef.h>

/* NULL when out of memory. Below 4 MiB: plain calloc. */
void *moert_large_calloc(size_t bytes);

#endif /* MOERT_COMMON_LARGE_ALLOC_H */

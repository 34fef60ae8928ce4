/* Zeroed large buffers on transparent huge pages (see large_alloc.h). */
#include "common/large_alloc.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

enum { LARGE_ALLOC_HUGE_PAGE = 2 << 20, LARGE_ALLOC_MIN = 4 << 20 };

void *moert_large_calloc(size_t bytes) {
    if (bytes < LARGE_ALLOC_MIN) return calloc(1, bytes ? bytes : 1);
    void *p = NULL;
    if (posix_memalign(&p, LARGE_ALLOC_HUGE_PAGE, bytes) != 0) return NULL;
    /* Advice only: where THP is off or unsupported the buffer still works on small pages. */
    (void)madvise(p, bytes, MADV_HUGEPAGE);
    memset(p, 0, bytes); /* faults the pages in now, not in the first exchange */
    return p;
}

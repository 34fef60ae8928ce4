/* Internal: NUMA workers. A worker is a group of the layer's OpenMP threads and a NUMA
 * node whose memory holds its experts. Works the same when libnuma reports no NUMA
 * support: every worker then has node -1 and memory comes from ordinary pages. */
#ifndef MOERT_NUMA_POOL_H
#define MOERT_NUMA_POOL_H

#include <stddef.h>

#include "moert/status.h"

#define NUMA_POOL_MAX_WORKERS 1024

typedef struct numa_pool {
    int workers, threads;
    int numa;             /* libnuma works here */
    int bind;             /* bind threads to their node's CPUs */
    unsigned id;          /* tells the threads' binding caches apart */
    int *node_of_worker;  /* [workers], -1 without NUMA */
    int *first_thread;    /* [workers + 1]: worker w has threads [first[w], first[w + 1]) */
    void *allowed_cpus;   /* cpu_set_t: the process's CPUs when the pool was made */
} numa_pool;

/* `workers` 0 means one per node that has CPUs. MOERT_EINVAL if workers > threads.
 * use_numa 0 behaves as when libnuma reports no NUMA support. */
moert_status numa_pool_init(numa_pool *pool, int workers, int threads, int bind, int use_numa);
void numa_pool_free(numa_pool *pool);

static inline int numa_pool_worker_of_thread(const numa_pool *pool, int thread) {
    return (int)((long)thread * pool->workers / pool->threads);
}

/* Binds the calling thread (thread `thread` of a team of pool->threads) to its worker's
 * node's CPUs, within the CPUs the process was allowed; remembered per thread, so the
 * system call is made once. */
void numa_pool_bind_thread(const numa_pool *pool, int thread);

/* `bytes` of zeroed memory, page-aligned, on worker's node (preferred policy, pages
 * touched now so that they are placed). MOERT_ENOMEM with the size on failure. */
moert_status numa_pool_alloc(const numa_pool *pool, int worker, size_t bytes, void **out);
void numa_pool_release(void *p, size_t bytes);

/* The node holding the page at p, by the kernel's own answer (get_mempolicy), or -1. */
int numa_node_of_address(const void *p);

#endif /* MOERT_NUMA_POOL_H */

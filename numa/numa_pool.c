/* NUMA workers: nodes, threads, binding and node-local memory. */
#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/error.h"
#include "numa/numa_pool.h"

static unsigned next_pool_id = 1;
static _Thread_local unsigned bound_pool; /* the pool and worker this thread is bound for */
static _Thread_local int bound_worker = -1;

/* Nodes that have CPUs, in ascending order; returns their count (0 without NUMA). */
static int nodes_with_cpus(int *nodes, int max) {
    int n = 0;
    struct bitmask *cpus = numa_allocate_cpumask();
    if (cpus == NULL) return 0;
    for (int node = 0; node <= numa_max_node() && n < max; node++) {
        if (numa_node_to_cpus(node, cpus) != 0) continue;
        if (numa_bitmask_weight(cpus) > 0) nodes[n++] = node;
    }
    numa_free_cpumask(cpus);
    return n;
}

moert_status numa_pool_init(numa_pool *pool, int workers, int threads, int bind, int use_numa) {
    memset(pool, 0, sizeof *pool);
    MOERT_RETURN_ERROR_IF(threads < 1, MOERT_EINVAL, "threads=%d: at least 1 is needed", threads);
    pool->numa = use_numa && numa_available() >= 0;
    int nodes[NUMA_POOL_MAX_WORKERS];
    const int node_count = pool->numa ? nodes_with_cpus(nodes, NUMA_POOL_MAX_WORKERS) : 0;
    if (workers == 0) { /* one per node, but never more than the threads */
        workers = node_count > 0 ? node_count : 1;
        if (workers > threads) workers = threads;
    }
    MOERT_RETURN_ERROR_IF(workers < 1 || workers > NUMA_POOL_MAX_WORKERS, MOERT_EINVAL,
                          "workers=%d must be in 1..%d", workers, NUMA_POOL_MAX_WORKERS);
    MOERT_RETURN_ERROR_IF(workers > threads, MOERT_EINVAL,
                          "workers=%d exceeds threads=%d: every worker needs a thread", workers, threads);
    pool->workers = workers, pool->threads = threads, pool->bind = bind && node_count > 0;
    pool->node_of_worker = malloc((size_t)workers * sizeof(int));
    pool->first_thread = malloc((size_t)(workers + 1) * sizeof(int));
    pool->allowed_cpus = malloc(sizeof(cpu_set_t));
    if (!pool->node_of_worker || !pool->first_thread || !pool->allowed_cpus) {
        numa_pool_free(pool);
        return moert_set_error(MOERT_ENOMEM, "NUMA pool of %d workers: out of memory", workers);
    }
    for (int w = 0; w < workers; w++) pool->node_of_worker[w] = node_count > 0 ? nodes[w % node_count] : -1;
    /* The inverse of numa_pool_worker_of_thread: the first thread t with t W / N >= w. */
    for (int w = 0; w <= workers; w++) pool->first_thread[w] = (int)(((long)w * threads + workers - 1) / workers);
    if (sched_getaffinity(0, sizeof(cpu_set_t), pool->allowed_cpus) != 0) pool->bind = 0;
    pool->id = __atomic_fetch_add(&next_pool_id, 1, __ATOMIC_RELAXED);
    return MOERT_OK;
}

void numa_pool_free(numa_pool *pool) {
    free(pool->node_of_worker);
    free(pool->first_thread);
    free(pool->allowed_cpus);
    memset(pool, 0, sizeof *pool);
}

void numa_pool_bind_thread(const numa_pool *pool, int thread) {
    if (!pool->bind) return;
    const int worker = numa_pool_worker_of_thread(pool, thread);
    if (bound_pool == pool->id && bound_worker == worker) return;
    bound_pool = pool->id, bound_worker = worker;
    struct bitmask *cpus = numa_allocate_cpumask();
    if (cpus == NULL) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (numa_node_to_cpus(pool->node_of_worker[worker], cpus) == 0)
        for (unsigned c = 0; c < cpus->size && c < CPU_SETSIZE; c++)
            if (numa_bitmask_isbitset(cpus, c) && CPU_ISSET(c, (cpu_set_t *)pool->allowed_cpus)) CPU_SET(c, &set);
    numa_free_cpumask(cpus);
    /* A node none of whose CPUs the process may use: leave the thread where it is. */
    if (CPU_COUNT(&set) > 0) sched_setaffinity(0, sizeof set, &set);
}

moert_status numa_pool_alloc(const numa_pool *pool, int worker, size_t bytes, void **out) {
    *out = NULL;
    if (bytes == 0) return MOERT_OK;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    MOERT_RETURN_ERROR_IF(p == MAP_FAILED, MOERT_ENOMEM, "cannot map %zu bytes for worker %d", bytes, worker);
    const int node = pool->numa ? pool->node_of_worker[worker] : -1;
    if (node >= 0) {
        /* Preferred, not bound: a node that fills up spills to another instead of failing
         * at a page fault. The pages are touched below, under this policy. */
        unsigned long mask[16] = {0};
        if (node < (int)(sizeof mask * 8)) {
            mask[node / (8 * sizeof(unsigned long))] |= 1ul << (node % (8 * sizeof(unsigned long)));
            if (mbind(p, bytes, MPOL_PREFERRED, mask, sizeof mask * 8, 0) != 0) {
                const int err = errno;
                munmap(p, bytes);
                return moert_set_error(MOERT_ENOMEM, "cannot place %zu bytes on NUMA node %d: %s", bytes, node,
                                       strerror(err));
            }
        }
    }
    memset(p, 0, bytes); /* the first touch places the pages */
    *out = p;
    return MOERT_OK;
}

void numa_pool_release(void *p, size_t bytes) {
    if (p != NULL && bytes > 0) munmap(p, bytes);
}

int numa_node_of_address(const void *p) {
    int node = -1;
    if (get_mempolicy(&node, NULL, 0, (void *)p, MPOL_F_NODE | MPOL_F_ADDR) != 0) return -1;
    return node;
}

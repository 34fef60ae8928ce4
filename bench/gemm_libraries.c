/*
 * gemm_libraries: which BLAS should moert use for its expert GEMMs?
 *
 * A standalone program (it does not link libmoert) that times
 *     C[M,N] = A[M,K] * B[K,N]      (row-major, f32, alpha = 1, beta = 0)
 * with several libraries on the expert shapes of a MoE layer, interleaving the
 * libraries in rounds and reporting the median GFLOP/s per (library, shape, threads).
 *
 * Libraries ("variants", --libs):
 *   openblas          Debian's OpenBLAS (pthread build) with the core it detects
 *   openblas:CORE     the same library with OPENBLAS_CORETYPE=CORE (Haswell, Zen,
 *                     SkylakeX, Cooperlake, Prescott, ...)
 *   blis              BLIS's cblas_sgemm (libblis.so.4, OpenMP build)
 *   dnnl              oneDNN's dnnl_sgemm (OpenMP runtime)
 *   dnnl-matmul       oneDNN's matmul primitive, f32, the weights packed once into the
 *                     layout the primitive asks for (format_tag_any)
 *   dnnl-bf16         oneDNN's matmul primitive with bf16 activations and weights
 *                     (packed once) and f32 output; "unimplemented" where the CPU
 *                     lacks support. The f32 -> bf16 conversion of A is not timed.
 *
 * Each variant runs in its own worker process: the program re-executes itself
 * (/proc/self/exe --worker VARIANT) with the environment that variant needs
 * (OpenBLAS reads OPENBLAS_CORETYPE once, when it is loaded), loads its library with
 * dlopen(RTLD_NOW | RTLD_LOCAL) and answers the parent's commands on two pipes. So
 * OpenBLAS and BLIS (both export cblas_sgemm) never share a process, nor do
 * OpenBLAS's pthread pool and the OpenMP pool of BLIS and oneDNN. Only one worker
 * computes at a time. A library's idle threads may spin after a call (OpenBLAS's for
 * about 0.1 s): the verification step measures that ("idle spin"), and before another
 * worker runs the parent waits that long, so they do not steal the vCPUs.
 *
 * The weights are cold by default, as in a MoE layer where each expert's weights are
 * read once per step: every call uses the next of several copies of B that together
 * span --cold-mib MiB (128), more than the last-level cache. --weights hot reuses one.
 *
 * Before any timing, each worker checks its library against a double-precision
 * reference on a small odd shape (relative error max|C - ref| / max|ref| < 1e-4;
 * for bf16 the reference uses the bf16-rounded inputs), at 1 and 2 threads, and every
 * measurement re-checks 64 sampled entries of its own result the same way; a library
 * that fails is dropped and none of its figures is reported.
 *
 * The machine may be shared: the parent counts the CPU time other processes take
 * (/proc/stat less its own and its workers'), measures a block (one library, one K x N,
 * every M) again after a pause when they took more than --max-other CPUs meanwhile, and
 * reports that load with the table.
 *
 * Build (OpenMP only provides omp_set_num_threads to the oneDNN workers):
 *   gcc -O2 -std=c11 -D_GNU_SOURCE -fopenmp bench/gemm_libraries.c \
 *       -o /tmp/gemm/gemm_libraries -ldl -lm
 * oneDNN is dlopen()ed too; dnnl.h (Debian: libdnnl-dev) is included for its types
 * only, and without it (or with -DGEMM_LIBRARIES_NO_DNNL) the dnnl variants report
 * "not built". Built with
 * -DGEMM_LIBRARIES_LINK_DNNL ... -ldnnl the program links oneDNN instead (as moert
 * would), which checks that a program linking it gets its full speed.
 *
 * Run: gemm_libraries [--shapes ds,mx,ref] [--m 16,128,512] [--threads 1,2]
 *          [--rounds 5] [--libs LIST] [--min-time 0.05] [--json]    (see --help)
 * It prints a markdown table on stdout (progress on stderr) and, with --json, one
 * JSON object on the last line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__has_include) && !defined(GEMM_LIBRARIES_NO_DNNL)
#if __has_include(<oneapi/dnnl/dnnl.h>)
#include <oneapi/dnnl/dnnl.h>
#define HAVE_DNNL 1
#endif
#endif
#ifndef HAVE_DNNL
#define HAVE_DNNL 0
#endif
#if defined(GEMM_LIBRARIES_LINK_DNNL) && !HAVE_DNNL
#error "GEMM_LIBRARIES_LINK_DNNL needs oneapi/dnnl/dnnl.h (Debian: libdnnl-dev)"
#endif

#define DEFAULT_OPENBLAS "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
#define DEFAULT_BLIS "/usr/lib/x86_64-linux-gnu/libblis.so.4"
#define DEFAULT_DNNL "libdnnl.so.2"

#define VERIFY_M 37
#define VERIFY_K 301
#define VERIFY_N 83
#define SPOT_SAMPLES 64
#define MAX_REL_ERR 1e-4
#define LINE 4096

/* ------------------------------------------------------------------------ */
/* Helpers shared by the parent and the workers                              */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "gemm_libraries: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void *xalloc(size_t bytes) {
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded == 0) rounded = 64;
    if (posix_memalign(&p, 64, rounded) != 0) die("out of memory (%zu bytes)", bytes);
    memset(p, 0, rounded); /* touch the pages now, not inside a timed call */
    return p;
}

static uint64_t mix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform values in [-1, 1); the same seed gives every worker the same matrices. */
static void fill_uniform(float *x, size_t n, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++) x[i] = (float)((double)(mix64(&s) >> 11) * 0x1.0p-52 - 1.0);
}

/* f32 -> bf16, round to nearest even (the inputs here are finite). */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static double from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return (double)f;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of the finite values among v[0..n). */
static double median(const double *v, int n) {
    double *t = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    int m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) t[m++] = v[i];
    double r = NAN;
    if (m > 0) {
        qsort(t, (size_t)m, sizeof(double), cmp_double);
        r = (m % 2) ? t[m / 2] : 0.5 * (t[m / 2 - 1] + t[m / 2]);
    }
    free(t);
    return r;
}

/* ------------------------------------------------------------------------ */
/* Variants                                                                  */

enum kind { K_OPENBLAS, K_BLIS, K_DNNL_SGEMM, K_DNNL_MATMUL, K_DNNL_BF16 };

static int parse_variant(const char *name, enum kind *kind, char *core, size_t core_size) {
    core[0] = '\0';
    if (strcmp(name, "openblas") == 0) {
        *kind = K_OPENBLAS;
    } else if (strncmp(name, "openblas:", 9) == 0 && name[9] != '\0' && strlen(name + 9) < core_size) {
        *kind = K_OPENBLAS;
        snprintf(core, core_size, "%s", name + 9);
    } else if (strcmp(name, "blis") == 0) {
        *kind = K_BLIS;
    } else if (strcmp(name, "dnnl") == 0) {
        *kind = K_DNNL_SGEMM;
    } else if (strcmp(name, "dnnl-matmul") == 0) {
        *kind = K_DNNL_MATMUL;
    } else if (strcmp(name, "dnnl-bf16") == 0) {
        *kind = K_DNNL_BF16;
    } else {
        return -1;
    }
    return 0;
}

static int is_dnnl(enum kind k) { return k == K_DNNL_SGEMM || k == K_DNNL_MATMUL || k == K_DNNL_BF16; }
static int is_matmul(enum kind k) { return k == K_DNNL_MATMUL || k == K_DNNL_BF16; }

/* ======================================================================== */
/* Worker                                                                    */

typedef void (*cblas_sgemm32_fn)(int, int, int, int32_t, int32_t, int32_t, float, const float *, int32_t,
                                 const float *, int32_t, float, float *, int32_t);
typedef void (*cblas_sgemm64_fn)(int, int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
                                 const float *, int64_t, float, float *, int64_t);
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111 };

/* The weights B[K, N] of one (K, N): `ncopy` identical copies, used in turn so that
 * each call reads them from memory (cold) rather than from the cache. */
typedef struct {
    int k, n, ncopy, next;
    float **b;    /* sgemm kinds: ncopy f32 copies; matmul kinds: one f32 source */
    uint16_t *bh; /* dnnl-bf16: the bf16-rounded source */
} bset;

#if HAVE_DNNL
#define DNNL_FUNCS(X)                     \
    X(dnnl_sgemm)                         \
    X(dnnl_version)                       \
    X(dnnl_get_effective_cpu_isa)         \
    X(dnnl_engine_create)                 \
    X(dnnl_stream_create)                 \
    X(dnnl_stream_wait)                   \
    X(dnnl_memory_desc_init_by_tag)       \
    X(dnnl_memory_desc_equal)             \
    X(dnnl_matmul_desc_init)              \
    X(dnnl_primitive_desc_create)         \
    X(dnnl_primitive_desc_query)          \
    X(dnnl_primitive_desc_query_md)       \
    X(dnnl_primitive_desc_destroy)        \
    X(dnnl_primitive_create)              \
    X(dnnl_primitive_execute)             \
    X(dnnl_primitive_destroy)             \
    X(dnnl_memory_create)                 \
    X(dnnl_memory_destroy)                \
    X(dnnl_reorder_primitive_desc_create)

#define DNNL_DECLARE(f) static __typeof__(&f) p_##f;
DNNL_FUNCS(DNNL_DECLARE)

/* Packed weights: one bset copy reordered into the layout a primitive asked for. */
typedef struct {
    const bset *bs;
    int copy;
    dnnl_memory_desc_t md;
    dnnl_memory_t mem;
} packed;

/* One matmul primitive per (M, bset, threads, A, C): oneDNN plans its blocking for the
 * thread count it sees at creation. */
typedef struct {
    int m, threads;
    const bset *bs;
    const void *a;
    const float *c;
    dnnl_primitive_t prim;
    dnnl_memory_t src, dst;
    dnnl_memory_t *wei; /* one per copy */
    char impl[80];
} mm_entry;

static const char *dnnl_status_name(dnnl_status_t s) {
    switch (s) {
    case dnnl_success: return "success";
    case dnnl_out_of_memory: return "out_of_memory";
    case dnnl_invalid_arguments: return "invalid_arguments";
    case dnnl_unimplemented: return "unimplemented";
    case dnnl_iterator_ends: return "iterator_ends";
    case dnnl_runtime_error: return "runtime_error";
    case dnnl_not_required: return "not_required";
    default: return "unknown_status";
    }
}

static const char *dnnl_isa_name(dnnl_cpu_isa_t isa) {
    switch ((int)isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}
#endif

typedef struct {
    enum kind kind;
    void *h;
    /* OpenBLAS */
    cblas_sgemm32_fn ob_sgemm;
    void (*ob_set_threads)(int);
    int (*ob_get_threads)(void);
    char *(*ob_corename)(void);
    char *(*ob_config)(void);
    /* BLIS */
    cblas_sgemm32_fn bl_sgemm32;
    cblas_sgemm64_fn bl_sgemm64;
    int bl_int64, bl_blas_int64;
    void *bl_set_threads, *bl_get_threads;
    /* OpenMP (oneDNN workers) */
    void (*omp_set)(int);
    int (*omp_get)(void);
    int default_threads;
#if HAVE_DNNL
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    mm_entry *mm;
    int n_mm;
    packed *pk;
    int n_pk;
#endif
    /* benchmark buffers */
    float *a, *c;
    uint16_t *ah;
    size_t a_cap, c_cap;
    bset **bs;
    int n_bs;
    size_t cold_bytes;
    char err[512];
} worker;

static int set_err(worker *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
    for (char *p = w->err; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return -1;
}

static int get_threads(worker *w) {
    switch (w->kind) {
    case K_OPENBLAS: return w->ob_get_threads();
    case K_BLIS:
        if (w->bl_int64) return (int)((int64_t(*)(void))w->bl_get_threads)();
        return (int)((int32_t(*)(void))w->bl_get_threads)();
    default: return w->omp_get();
    }
}

/* t = 0: the library's default, as read when it was loaded (BLIS: 1 when unset). */
static void set_threads(worker *w, int t) {
    if (t <= 0) t = w->default_threads > 0 ? w->default_threads : 1;
    switch (w->kind) {
    case K_OPENBLAS: w->ob_set_threads(t); break;
    case K_BLIS:
        if (w->bl_int64)
            ((void (*)(int64_t))w->bl_set_threads)((int64_t)t);
        else
            ((void (*)(int32_t))w->bl_set_threads)((int32_t)t);
        break;
    default: w->omp_set(t); break;
    }
}

static int load_library(worker *w, const char *ob_path, const char *blis_path, const char *dnnl_path, char *info,
                        size_t info_size) {
    switch (w->kind) {
    case K_OPENBLAS: {
        w->h = dlopen(ob_path, RTLD_NOW | RTLD_LOCAL);
        if (!w->h) return set_err(w, "dlopen %s: %s", ob_path, dlerror());
        w->ob_sgemm = (cblas_sgemm32_fn)dlsym(w->h, "cblas_sgemm");
        w->ob_set_threads = (void (*)(int))dlsym(w->h, "openblas_set_num_threads");
        w->ob_get_threads = (int (*)(void))dlsym(w->h, "openblas_get_num_threads");
        w->ob_corename = (char *(*)(void))dlsym(w->h, "openblas_get_corename");
        w->ob_config = (char *(*)(void))dlsym(w->h, "openblas_get_config");
        if (!w->ob_sgemm || !w->ob_set_threads || !w->ob_get_threads || !w->ob_corename || !w->ob_config)
            return set_err(w, "%s lacks an OpenBLAS symbol", ob_path);
        const char *env = getenv("OPENBLAS_CORETYPE");
        snprintf(info, info_size, "core=%s; OPENBLAS_CORETYPE=%s; default_threads=%d; config=%s", w->ob_corename(),
                 env ? env : "(unset)", w->ob_get_threads(), w->ob_config());
        break;
    }
    case K_BLIS: {
        w->h = dlopen(blis_path, RTLD_NOW | RTLD_LOCAL);
        if (!w->h) return set_err(w, "dlopen %s: %s", blis_path, dlerror());
        void *sg = dlsym(w->h, "cblas_sgemm");
        void *isz = dlsym(w->h, "bli_info_get_int_type_size");
        void *bsz = dlsym(w->h, "bli_info_get_blas_int_type_size");
        void *ver = dlsym(w->h, "bli_info_get_version_str");
        void *aq = dlsym(w->h, "bli_arch_query_id");
        void *as = dlsym(w->h, "bli_arch_string");
        w->bl_set_threads = dlsym(w->h, "bli_thread_set_num_threads");
        w->bl_get_threads = dlsym(w->h, "bli_thread_get_num_threads");
        if (!sg || !isz || !bsz || !ver || !aq || !as || !w->bl_set_threads || !w->bl_get_threads)
            return set_err(w, "%s lacks a BLIS symbol", blis_path);
        /* gint_t has 32 or 64 bits: the low 32 bits of the result are valid either way. */
        w->bl_int64 = ((int32_t(*)(void))isz)() == 64;
        w->bl_blas_int64 = ((int32_t(*)(void))bsz)() == 64;
        if (w->bl_blas_int64)
            w->bl_sgemm64 = (cblas_sgemm64_fn)sg;
        else
            w->bl_sgemm32 = (cblas_sgemm32_fn)sg;
        int arch = ((int (*)(void))aq)(); /* arch_t is an enum */
        const char *arch_name = ((const char *(*)(int))as)(arch);
        snprintf(info, info_size, "BLIS %s; arch=%s; int=%d-bit; blas_int=%d-bit; default_threads=%d",
                 ((const char *(*)(void))ver)(), arch_name, w->bl_int64 ? 64 : 32, w->bl_blas_int64 ? 64 : 32,
                 get_threads(w));
        break;
    }
    default: {
#if HAVE_DNNL
#ifdef GEMM_LIBRARIES_LINK_DNNL
        (void)dnnl_path;
#define DNNL_LOAD(f) p_##f = &f;
        DNNL_FUNCS(DNNL_LOAD)
        const char *how = "linked";
#else
        w->h = dlopen(dnnl_path, RTLD_NOW | RTLD_LOCAL);
        if (!w->h) return set_err(w, "dlopen %s: %s", dnnl_path, dlerror());
#define DNNL_LOAD(f)                                            \
    p_##f = (__typeof__(p_##f))dlsym(w->h, #f);                 \
    if (!p_##f) return set_err(w, "%s lacks %s", dnnl_path, #f);
        DNNL_FUNCS(DNNL_LOAD)
        const char *how = "dlopen";
#endif
#ifdef _OPENMP
        w->omp_set = omp_set_num_threads;
        w->omp_get = omp_get_max_threads;
#else
        /* libdnnl's own OpenMP runtime */
        void *omp = w->h ? w->h : RTLD_DEFAULT;
        w->omp_set = (void (*)(int))dlsym(omp, "omp_set_num_threads");
        w->omp_get = (int (*)(void))dlsym(omp, "omp_get_max_threads");
        if (!w->omp_set || !w->omp_get) return set_err(w, "no omp_set_num_threads beside libdnnl");
#endif
        const dnnl_version_t *v = p_dnnl_version();
        dnnl_status_t st = p_dnnl_engine_create(&w->engine, dnnl_cpu, 0);
        if (st != dnnl_success) return set_err(w, "dnnl_engine_create: %s", dnnl_status_name(st));
        st = p_dnnl_stream_create(&w->stream, w->engine, dnnl_stream_default_flags);
        if (st != dnnl_success) return set_err(w, "dnnl_stream_create: %s", dnnl_status_name(st));
        const char *cap = getenv("ONEDNN_MAX_CPU_ISA");
        if (!cap) cap = getenv("DNNL_MAX_CPU_ISA");
        snprintf(info, info_size, "oneDNN %d.%d.%d (%s, %s runtime); effective_isa=%s; max_isa_env=%s; default_threads=%d",
                 v->major, v->minor, v->patch, how, v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other",
                 dnnl_isa_name(p_dnnl_get_effective_cpu_isa()), cap ? cap : "(unset)", w->omp_get());
#else
        (void)dnnl_path;
        (void)info;
        (void)info_size;
        return set_err(w, "not built: dnnl.h was not found at compile time");
#endif
        break;
    }
    }
    w->default_threads = get_threads(w);
    return 0;
}

/* The weights of (K, N), made on first use with ncopy copies. */
static bset *get_bset(worker *w, int k, int n, int hot) {
    for (int i = 0; i < w->n_bs; i++)
        if (w->bs[i]->k == k && w->bs[i]->n == n) return w->bs[i];
    bset *b = calloc(1, sizeof *b);
    b->k = k;
    b->n = n;
    size_t elems = (size_t)k * (size_t)n;
    size_t one = elems * (w->kind == K_DNNL_BF16 ? 2 : 4); /* bytes a call reads */
    b->ncopy = hot ? 1 : (int)((w->cold_bytes + one - 1) / one);
    if (b->ncopy < 1) b->ncopy = 1;
    int f32_copies = is_matmul(w->kind) ? 1 : b->ncopy; /* matmul kinds pack their own copies */
    b->b = calloc((size_t)f32_copies, sizeof(float *));
    for (int c = 0; c < f32_copies; c++) {
        b->b[c] = xalloc(elems * sizeof(float));
        if (c == 0)
            fill_uniform(b->b[0], elems, 0xB0B0ull * 1000003u + (uint64_t)k * 7919u + (uint64_t)n);
        else
            memcpy(b->b[c], b->b[0], elems * sizeof(float));
    }
    if (w->kind == K_DNNL_BF16) {
        b->bh = xalloc(elems * sizeof(uint16_t));
        for (size_t i = 0; i < elems; i++) b->bh[i] = to_bf16(b->b[0][i]);
    }
    w->bs = realloc(w->bs, sizeof(bset *) * (size_t)(w->n_bs + 1));
    w->bs[w->n_bs++] = b;
    return b;
}

#if HAVE_DNNL
static int dnnl_fail(worker *w, const char *what, dnnl_status_t st) {
    return set_err(w, "%s: %s", what, dnnl_status_name(st));
}

/* Copy `copy` of bs reordered into the layout `want`, made once and kept. */
static int dnnl_packed(worker *w, const bset *bs, int copy, const dnnl_memory_desc_t *want, dnnl_memory_t *out) {
    for (int i = 0; i < w->n_pk; i++) {
        packed *p = &w->pk[i];
        if (p->bs == bs && p->copy == copy && p_dnnl_memory_desc_equal(&p->md, want)) {
            *out = p->mem;
            return 0;
        }
    }
    dnnl_data_type_t dt = w->kind == K_DNNL_BF16 ? dnnl_bf16 : dnnl_f32;
    const void *src = w->kind == K_DNNL_BF16 ? (const void *)bs->bh : (const void *)bs->b[0];
    dnnl_dims_t dims = {bs->k, bs->n};
    dnnl_memory_desc_t user_md;
    dnnl_memory_t user = NULL, mem = NULL;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t r = NULL;
    dnnl_status_t st;
    if ((st = p_dnnl_memory_desc_init_by_tag(&user_md, 2, dims, dt, dnnl_ab)) != dnnl_success)
        return dnnl_fail(w, "weights memory desc", st);
    if ((st = p_dnnl_memory_create(&user, &user_md, w->engine, (void *)src)) != dnnl_success)
        return dnnl_fail(w, "weights memory", st);
    if ((st = p_dnnl_memory_create(&mem, want, w->engine, DNNL_MEMORY_ALLOCATE)) != dnnl_success)
        return dnnl_fail(w, "packed weights memory", st);
    if ((st = p_dnnl_reorder_primitive_desc_create(&rpd, &user_md, w->engine, want, w->engine, NULL)) != dnnl_success)
        return dnnl_fail(w, "weights reorder", st);
    if ((st = p_dnnl_primitive_create(&r, rpd)) != dnnl_success) return dnnl_fail(w, "weights reorder primitive", st);
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, mem}};
    if ((st = p_dnnl_primitive_execute(r, w->stream, 2, args)) != dnnl_success)
        return dnnl_fail(w, "weights reorder execute", st);
    p_dnnl_stream_wait(w->stream);
    p_dnnl_primitive_destroy(r);
    p_dnnl_primitive_desc_destroy(rpd);
    p_dnnl_memory_destroy(user);
    w->pk = realloc(w->pk, sizeof(packed) * (size_t)(w->n_pk + 1));
    packed *p = &w->pk[w->n_pk++];
    p->bs = bs;
    p->copy = copy;
    p->md = *want;
    p->mem = mem;
    *out = mem;
    return 0;
}

static int dnnl_matmul_entry(worker *w, int m, const bset *bs, const void *a, float *c, mm_entry **out) {
    int threads = get_threads(w);
    for (int i = 0; i < w->n_mm; i++) {
        mm_entry *e = &w->mm[i];
        if (e->m == m && e->bs == bs && e->threads == threads && e->a == a && e->c == c) {
            *out = e;
            return 0;
        }
    }
    dnnl_data_type_t dt = w->kind == K_DNNL_BF16 ? dnnl_bf16 : dnnl_f32;
    const char *what = w->kind == K_DNNL_BF16 ? "bf16 matmul (bf16 src/weights, f32 dst)" : "f32 matmul";
    dnnl_dims_t sd = {m, bs->k}, wd = {bs->k, bs->n}, dd = {m, bs->n};
    dnnl_memory_desc_t smd, wmd, dmd, packed_md;
    dnnl_matmul_desc_t desc;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st;
    if ((st = p_dnnl_memory_desc_init_by_tag(&smd, 2, sd, dt, dnnl_ab)) != dnnl_success ||
        (st = p_dnnl_memory_desc_init_by_tag(&wmd, 2, wd, dt, dnnl_format_tag_any)) != dnnl_success ||
        (st = p_dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dnnl_f32, dnnl_ab)) != dnnl_success)
        return dnnl_fail(w, "matmul memory descs", st);
    if ((st = p_dnnl_matmul_desc_init(&desc, &smd, &wmd, NULL, &dmd)) != dnnl_success)
        return set_err(w, "%s: dnnl_matmul_desc_init returned %s", what, dnnl_status_name(st));
    if ((st = p_dnnl_primitive_desc_create(&pd, &desc, NULL, w->engine, NULL)) != dnnl_success)
        return set_err(w, "%s: dnnl_primitive_desc_create returned %s", what, dnnl_status_name(st));
    w->mm = realloc(w->mm, sizeof(mm_entry) * (size_t)(w->n_mm + 1));
    mm_entry *e = &w->mm[w->n_mm];
    memset(e, 0, sizeof *e);
    e->m = m;
    e->bs = bs;
    e->threads = threads;
    e->a = a;
    e->c = c;
    const char *impl = NULL;
    if (p_dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success || !impl) impl = "?";
    snprintf(e->impl, sizeof e->impl, "%s", impl);
    for (char *p = e->impl; *p; p++)
        if (*p == ' ') *p = '_';
    packed_md = *p_dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    if ((st = p_dnnl_primitive_create(&e->prim, pd)) != dnnl_success) return dnnl_fail(w, "matmul primitive", st);
    p_dnnl_primitive_desc_destroy(pd);
    if ((st = p_dnnl_memory_create(&e->src, &smd, w->engine, (void *)a)) != dnnl_success ||
        (st = p_dnnl_memory_create(&e->dst, &dmd, w->engine, c)) != dnnl_success)
        return dnnl_fail(w, "matmul src/dst memory", st);
    e->wei = calloc((size_t)bs->ncopy, sizeof(dnnl_memory_t));
    for (int k = 0; k < bs->ncopy; k++)
        if (dnnl_packed(w, bs, k, &packed_md, &e->wei[k]) != 0) return -1;
    w->n_mm++;
    *out = e;
    return 0;
}
#endif

/* C = A * B with copy `copy` of the weights. e: the matmul entry (matmul kinds). */
static int gemm_call(worker *w, int m, const bset *bs, int copy, const void *a, float *c, void *e) {
    int k = bs->k, n = bs->n;
    switch (w->kind) {
    case K_OPENBLAS:
        w->ob_sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, m, n, k, 1.0f, a, k, bs->b[copy], n, 0.0f, c,
                    n);
        return 0;
    case K_BLIS:
        if (w->bl_blas_int64)
            w->bl_sgemm64(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, m, n, k, 1.0f, a, k, bs->b[copy], n,
                          0.0f, c, n);
        else
            w->bl_sgemm32(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, m, n, k, 1.0f, a, k, bs->b[copy], n,
                          0.0f, c, n);
        return 0;
#if HAVE_DNNL
    case K_DNNL_SGEMM: {
        dnnl_status_t st = p_dnnl_sgemm('N', 'N', m, n, k, 1.0f, a, k, bs->b[copy], n, 0.0f, c, n);
        return st == dnnl_success ? 0 : dnnl_fail(w, "dnnl_sgemm", st);
    }
    case K_DNNL_MATMUL:
    case K_DNNL_BF16: {
        mm_entry *me = e;
        dnnl_exec_arg_t args[3] = {
            {DNNL_ARG_SRC, me->src}, {DNNL_ARG_WEIGHTS, me->wei[copy]}, {DNNL_ARG_DST, me->dst}};
        dnnl_status_t st = p_dnnl_primitive_execute(me->prim, w->stream, 3, args);
        if (st != dnnl_success) return dnnl_fail(w, "matmul execute", st);
        p_dnnl_stream_wait(w->stream);
        return 0;
    }
#endif
    default: (void)e; return set_err(w, "library not available");
    }
}

/* Element i of A or B as the library sees it (bf16 for dnnl-bf16). */
static double elem(const void *p, size_t i, int bf16) {
    return bf16 ? from_bf16(((const uint16_t *)p)[i]) : (double)((const float *)p)[i];
}

/* max |C - ref| / max |ref| over all entries (samples = 0) or `samples` random ones. */
static double check(worker *w, int m, const bset *bs, const void *a, const float *c, int samples, uint64_t seed) {
    int bf16 = w->kind == K_DNNL_BF16, k = bs->k, n = bs->n;
    const void *b = bf16 ? (const void *)bs->bh : (const void *)bs->b[0];
    uint64_t s = seed;
    double max_diff = 0, max_ref = 0;
    long total = samples > 0 ? samples : (long)m * n;
    for (long t = 0; t < total; t++) {
        int i = samples > 0 ? (int)(mix64(&s) % (uint64_t)m) : (int)(t / n);
        int j = samples > 0 ? (int)(mix64(&s) % (uint64_t)n) : (int)(t % n);
        double ref = 0;
        for (int q = 0; q < k; q++) ref += elem(a, (size_t)i * k + q, bf16) * elem(b, (size_t)q * n + j, bf16);
        double d = fabs((double)c[(size_t)i * n + j] - ref);
        if (!(d <= max_diff)) max_diff = d; /* NaN propagates */
        if (fabs(ref) > max_ref) max_ref = fabs(ref);
    }
    return max_ref > 0 ? max_diff / max_ref : max_diff;
}

static void *prepare(worker *w, int m, const bset *bs, const void *a, float *c) {
#if HAVE_DNNL
    if (is_matmul(w->kind)) {
        mm_entry *e = NULL;
        if (dnnl_matmul_entry(w, m, bs, a, c, &e) != 0) return NULL;
        return e;
    }
#else
    (void)m, (void)bs, (void)a, (void)c;
#endif
    return w; /* anything non-NULL */
}

/* A small bset (one copy) with its A and C, for the checks below; kept for good, as
 * the matmul entries made for it point at it. */
typedef struct {
    bset *bs;
    float *a, *c;
    uint16_t *ah;
} small_case;

static small_case make_small(worker *w, int m, int k, int n, uint64_t seed) {
    small_case sc;
    sc.bs = calloc(1, sizeof *sc.bs);
    sc.bs->k = k;
    sc.bs->n = n;
    sc.bs->ncopy = 1;
    sc.bs->b = calloc(1, sizeof(float *));
    sc.bs->b[0] = xalloc(sizeof(float) * (size_t)k * n);
    sc.a = xalloc(sizeof(float) * (size_t)m * k);
    sc.c = xalloc(sizeof(float) * (size_t)m * n);
    sc.ah = NULL;
    fill_uniform(sc.bs->b[0], (size_t)k * n, seed);
    fill_uniform(sc.a, (size_t)m * k, seed + 1);
    if (w->kind == K_DNNL_BF16) {
        sc.bs->bh = xalloc(sizeof(uint16_t) * (size_t)k * n);
        sc.ah = xalloc(sizeof(uint16_t) * (size_t)m * k);
        for (size_t i = 0; i < (size_t)k * n; i++) sc.bs->bh[i] = to_bf16(sc.bs->b[0][i]);
        for (size_t i = 0; i < (size_t)m * k; i++) sc.ah[i] = to_bf16(sc.a[i]);
    }
    return sc;
}

/* Full check on a small odd shape at 1 and 2 threads, then the CPU time the library's
 * idle threads burn in the 0.3 s after a 2-thread call. */
static int do_verify(worker *w, double *rel_err, double *spin) {
    int m = VERIFY_M;
    small_case v = make_small(w, m, VERIFY_K, VERIFY_N, 11);
    const void *a = v.ah ? (const void *)v.ah : (const void *)v.a;
    *rel_err = 0;
    for (int t = 1; t <= 2; t++) {
        set_threads(w, t);
        for (size_t i = 0; i < (size_t)m * VERIFY_N; i++) v.c[i] = NAN;
        void *e = prepare(w, m, v.bs, a, v.c);
        if (!e || gemm_call(w, m, v.bs, 0, a, v.c, e) != 0) return -1;
        double err = check(w, m, v.bs, a, v.c, 0, 0);
        if (!(err <= *rel_err)) *rel_err = err;
    }
    if (!(*rel_err < MAX_REL_ERR))
        return set_err(w, "wrong result on %dx%dx%d: relative error %.3g (limit %g)", m, VERIFY_K, VERIFY_N,
                       *rel_err, MAX_REL_ERR);
    /* idle spin: 2-thread calls big enough to wake every thread, then sleep */
    int sm = 256;
    small_case s = make_small(w, sm, 512, 512, 21);
    const void *sa = s.ah ? (const void *)s.ah : (const void *)s.a;
    set_threads(w, 2);
    void *e = prepare(w, sm, s.bs, sa, s.c);
    if (!e) return -1;
    for (int r = 0; r < 3; r++)
        if (gemm_call(w, sm, s.bs, 0, sa, s.c, e) != 0) return -1;
    double c0 = cpu_s();
    sleep_s(0.3);
    *spin = cpu_s() - c0;
    return 0;
}

/* One measurement: a warm-up call, then calls until min_time has passed (at least one).
 * The weights rotate through the copies of B. */
static int do_run(worker *w, int m, int k, int n, int threads, double min_time, int hot, char *reply,
                  size_t reply_size) {
    if ((size_t)m * k > w->a_cap || (size_t)m * n > w->c_cap) return set_err(w, "shape larger than the buffers");
    bset *bs = get_bset(w, k, n, hot);
    set_threads(w, threads);
    int eff_threads = get_threads(w);
    const void *a = w->kind == K_DNNL_BF16 ? (const void *)w->ah : (const void *)w->a;
    void *e = prepare(w, m, bs, a, w->c);
    if (!e) return -1;
    if (gemm_call(w, m, bs, bs->next, a, w->c, e) != 0) return -1;
    bs->next = (bs->next + 1) % bs->ncopy;
    int calls = 0;
    double t0 = now_s(), c0 = cpu_s(), t1;
    do {
        if (gemm_call(w, m, bs, bs->next, a, w->c, e) != 0) return -1;
        bs->next = (bs->next + 1) % bs->ncopy;
        calls++;
        t1 = now_s();
    } while (t1 - t0 < min_time);
    double c1 = cpu_s();
    double gflops = 2.0 * m * (double)k * n * calls / (t1 - t0) / 1e9;
    double err = check(w, m, bs, a, w->c, SPOT_SAMPLES, (uint64_t)m * 131 + (uint64_t)k * 17 + (uint64_t)n);
    if (!(err < MAX_REL_ERR))
        return set_err(w, "wrong result on %dx%dx%d at %d threads: relative error %.3g", m, k, n, eff_threads, err);
    const char *impl = "-";
#if HAVE_DNNL
    if (is_matmul(w->kind)) impl = ((mm_entry *)e)->impl;
#endif
    snprintf(reply, reply_size, "%.6g %d %.4g %.3g %d %d %s", gflops, calls, (c1 - c0) / (t1 - t0), err,
             eff_threads, bs->ncopy, impl);
    return 0;
}

static int worker_main(const char *variant, int rfd, int wfd, const char *ob_path, const char *blis_path,
                       const char *dnnl_path) {
    FILE *in = fdopen(rfd, "r"), *out = fdopen(wfd, "w");
    if (!in || !out) return 3;
    static worker w;
    char core[64], info[2048] = "", line[LINE], reply[LINE];
    if (parse_variant(variant, &w.kind, core, sizeof core) != 0) {
        fprintf(out, "err unknown variant %s\n", variant);
        fflush(out);
        return 3;
    }
    if (load_library(&w, ob_path, blis_path, dnnl_path, info, sizeof info) != 0) {
        fprintf(out, "err %s\n", w.err);
        fflush(out);
        /* keep answering so that the parent sees a clean error */
        while (fgets(line, sizeof line, in))
            if (strncmp(line, "quit", 4) == 0) break;
        return 0;
    }
    fprintf(out, "ok %s\n", info);
    fflush(out);
    while (fgets(line, sizeof line, in)) {
        int rc = -1;
        reply[0] = '\0';
        if (strncmp(line, "alloc ", 6) == 0) {
            size_t amax, cmax, cold_mib;
            if (sscanf(line + 6, "%zu %zu %zu", &amax, &cmax, &cold_mib) == 3) {
                w.a_cap = amax;
                w.c_cap = cmax;
                w.cold_bytes = cold_mib << 20;
                w.a = xalloc(sizeof(float) * amax);
                w.c = xalloc(sizeof(float) * cmax);
                fill_uniform(w.a, amax, 0xA0A0);
                if (w.kind == K_DNNL_BF16) {
                    w.ah = xalloc(sizeof(uint16_t) * amax);
                    for (size_t i = 0; i < amax; i++) w.ah[i] = to_bf16(w.a[i]);
                }
                rc = 0;
            } else {
                set_err(&w, "bad alloc command");
            }
        } else if (strncmp(line, "verify", 6) == 0) {
            double err = 0, spin = 0;
            rc = do_verify(&w, &err, &spin);
            if (rc == 0) snprintf(reply, sizeof reply, "%.3g %.4f", err, spin);
        } else if (strncmp(line, "run ", 4) == 0) {
            int m, k, n, t, hot;
            double min_time;
            if (sscanf(line + 4, "%d %d %d %d %lf %d", &m, &k, &n, &t, &min_time, &hot) == 6)
                rc = do_run(&w, m, k, n, t, min_time, hot, reply, sizeof reply);
            else
                set_err(&w, "bad run command");
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        } else {
            set_err(&w, "unknown command");
        }
        if (rc == 0)
            fprintf(out, "ok %s\n", reply);
        else
            fprintf(out, "err %s\n", w.err);
        fflush(out);
    }
    return 0;
}

/* ======================================================================== */
/* Parent                                                                    */

typedef struct {
    int m, k, n;
    const char *gemm; /* e.g. "DeepSeek x·W1" */
} shape;

typedef struct {
    char name[64];
    enum kind kind;
    char core[64];
    pid_t pid;
    FILE *to, *from;
    int alive;
    char info[2048];
    char error[1024];
    char note[256];
    int dropped; /* failed during the rounds: none of its figures is reported */
    double verify_err, spin;
} variant;

typedef struct {
    double *gflops; /* [rounds] */
    double *cpu;    /* [rounds] */
    double *other;  /* [rounds]: CPUs other processes used during the block */
    double max_err;
    int eff_threads, ncopy;
    char impl[80];
} cell;

static struct {
    const char *ob_path, *blis_path, *dnnl_path, *max_isa;
    int rounds, json, hot, retries;
    double min_time, settle; /* settle < 0: from the measured idle spin */
    double max_other, time_limit;
    size_t cold_mib;
} opt = {DEFAULT_OPENBLAS, DEFAULT_BLIS, DEFAULT_DNNL, NULL, 5, 0, 0, 2, 0.05, -1.0, 0.25, 240, 128};

static int split_list(const char *s, char out[][64], int max) {
    int n = 0;
    const char *p = s;
    while (*p && n < max) {
        const char *q = strchr(p, ',');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len > 0 && len < 64) {
            memcpy(out[n], p, len);
            out[n][len] = '\0';
            n++;
        } else if (len >= 64) {
            die("list item too long in '%s'", s);
        }
        if (!q) break;
        p = q + 1;
    }
    return n;
}

static int parse_ints(const char *s, int *out, int max, int min_value) {
    char items[32][64];
    int n = split_list(s, items, max < 32 ? max : 32);
    for (int i = 0; i < n; i++) {
        char *end;
        long v = strtol(items[i], &end, 10);
        if (*end || v < min_value || v > 1000000) die("bad number '%s' in '%s'", items[i], s);
        out[i] = (int)v;
    }
    return n;
}

/* Start a worker: this program again, with the variant's environment. */
static void spawn(variant *v) {
    int to_w[2], from_w[2];
    if (pipe(to_w) != 0 || pipe(from_w) != 0) die("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(to_w[1]);
        close(from_w[0]);
        if (v->kind == K_OPENBLAS) {
            if (v->core[0])
                setenv("OPENBLAS_CORETYPE", v->core, 1);
            else
                unsetenv("OPENBLAS_CORETYPE"); /* measure what OpenBLAS detects */
        }
        if (is_dnnl(v->kind) && opt.max_isa) {
            setenv("ONEDNN_MAX_CPU_ISA", opt.max_isa, 1);
            setenv("DNNL_MAX_CPU_ISA", opt.max_isa, 1);
        }
        char rfd[16], wfd[16];
        snprintf(rfd, sizeof rfd, "%d", to_w[0]);
        snprintf(wfd, sizeof wfd, "%d", from_w[1]);
        char *argv[] = {"gemm_libraries", "--worker",       v->name,
                        "--fds",          rfd,              wfd,
                        "--openblas",     (char *)opt.ob_path, "--blis",
                        (char *)opt.blis_path, "--dnnl",     (char *)opt.dnnl_path,
                        NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(to_w[0]);
    close(from_w[1]);
    fcntl(to_w[1], F_SETFD, FD_CLOEXEC);
    fcntl(from_w[0], F_SETFD, FD_CLOEXEC);
    v->pid = pid;
    v->to = fdopen(to_w[1], "w");
    v->from = fdopen(from_w[0], "r");
    v->alive = 1;
}

/* Send a command; 0 and the text after "ok " in `reply`, or -1 (error kept in v->error). */
static int ask(variant *v, const char *cmd, char *reply, size_t reply_size) {
    char line[LINE];
    if (!v->alive) return -1;
    if (cmd) {
        fputs(cmd, v->to);
        fputc('\n', v->to);
        fflush(v->to);
    }
    if (!fgets(line, sizeof line, v->from)) {
        int status = 0;
        waitpid(v->pid, &status, 0);
        v->alive = 0;
        if (WIFSIGNALED(status))
            snprintf(v->error, sizeof v->error, "worker died (signal %d: %s)", WTERMSIG(status),
                     strsignal(WTERMSIG(status)));
        else
            snprintf(v->error, sizeof v->error, "worker exited (status %d)", WEXITSTATUS(status));
        return -1;
    }
    line[strcspn(line, "\n")] = '\0';
    if (strncmp(line, "ok", 2) == 0) {
        snprintf(reply, reply_size, "%s", line[2] ? line + 3 : "");
        return 0;
    }
    snprintf(v->error, sizeof v->error, "%.1000s", strncmp(line, "err ", 4) == 0 ? line + 4 : line);
    return -1;
}

/* Tell a worker to quit (it is reaped at the end); its error message stays. */
static void stop(variant *v) {
    if (!v->alive) return;
    fputs("quit\n", v->to);
    fflush(v->to);
    v->alive = 0;
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double x) {
    if (isfinite(x))
        fprintf(f, "%.4g", x);
    else
        fputs("null", f);
}

typedef struct {
    char model[256];
    int family, model_id, cpus;
    int avx2, fma, avx512f, avx512_bf16, amx;
} cpu_facts;

static int has_flag(const char *flags, const char *flag) {
    size_t len = strlen(flag);
    for (const char *p = flags; (p = strstr(p, flag)) != NULL; p += len)
        if ((p == flags || p[-1] == ' ' || p[-1] == '\t') && (p[len] == ' ' || p[len] == '\n' || p[len] == '\0'))
            return 1;
    return 0;
}

static void read_cpu(cpu_facts *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->model, sizeof c->model, "unknown");
    c->family = c->model_id = -1;
    c->cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    static char line[1 << 14];
    int got_flags = 0;
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!colon) {
            if (got_flags) break; /* end of the first processor */
            continue;
        }
        char *val = colon + 1;
        while (*val == ' ') val++;
        if (strncmp(line, "model name", 10) == 0) {
            snprintf(c->model, sizeof c->model, "%s", val);
            c->model[strcspn(c->model, "\n")] = '\0';
        } else if (strncmp(line, "cpu family", 10) == 0) {
            c->family = atoi(val);
        } else if (strncmp(line, "model", 5) == 0 && (line[5] == ' ' || line[5] == '\t')) {
            c->model_id = atoi(val);
        } else if (strncmp(line, "flags", 5) == 0 && !got_flags) {
            got_flags = 1;
            c->avx2 = has_flag(val, "avx2");
            c->fma = has_flag(val, "fma");
            c->avx512f = has_flag(val, "avx512f");
            c->avx512_bf16 = has_flag(val, "avx512_bf16");
            c->amx = has_flag(val, "amx_bf16");
        }
    }
    fclose(f);
}

/* Machine-wide CPU ticks from /proc/stat: busy (user, nice, system, irq, softirq) and
 * steal (time the hypervisor gave this VM's vCPUs to someone else). */
static int read_machine_ticks(unsigned long long *busy, unsigned long long *steal) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]);
    fclose(f);
    if (n < 8) return -1;
    *busy = v[0] + v[1] + v[2] + v[5] + v[6];
    *steal = v[7];
    return 0;
}

/* utime + stime (+ cutime + cstime) of /proc/PID/stat, in ticks. */
static unsigned long long proc_ticks(const char *path, int with_children) {
    char buf[1024];
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    unsigned long long t[4] = {0};
    /* after ')': state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) ... */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu", &t[0], &t[1], &t[2],
               &t[3]) != 4)
        return 0;
    return t[0] + t[1] + (with_children ? t[2] + t[3] : 0);
}

/* CPU ticks used so far by this program: itself, its reaped workers and the live ones. */
static unsigned long long our_ticks(const variant *vs, int n_v) {
    unsigned long long t = proc_ticks("/proc/self/stat", 1);
    char path[64];
    for (int v = 0; v < n_v; v++)
        if (vs[v].pid > 0 && vs[v].to) {
            snprintf(path, sizeof path, "/proc/%d/stat", (int)vs[v].pid);
            t += proc_ticks(path, 0);
        }
    return t;
}

typedef struct {
    double t;
    unsigned long long busy, steal, ours;
} load_mark;

static load_mark mark_load(const variant *vs, int n_v) {
    load_mark m = {now_s(), 0, 0, 0};
    read_machine_ticks(&m.busy, &m.steal);
    m.ours = our_ticks(vs, n_v);
    return m;
}

/* Between two marks: CPUs used by other processes, and the share of vCPU time stolen. */
static void load_between(load_mark a, load_mark b, int cpus, double *other, double *steal) {
    double hz = (double)sysconf(_SC_CLK_TCK), dt = b.t - a.t;
    if (dt <= 0) dt = 1e-9;
    double o = ((double)(b.busy - a.busy) - (double)(b.ours - a.ours)) / hz / dt;
    *other = o > 0 ? o : 0;
    *steal = (double)(b.steal - a.steal) / hz / dt / (cpus > 0 ? cpus : 1);
}

static void usage(void) {
    printf("usage: gemm_libraries [options]\n"
           "  --shapes LIST    groups ds (DeepSeek-like d=2048 f=1408: x*W1 = Mx2048x1408, h*W2 = Mx1408x2048),\n"
           "                   mx (Mixtral-like d=2048 f=5632), ref (K=4096 N=1024) or KxN pairs;\n"
           "                   default ds,mx,ref\n"
           "  --m LIST         token counts M (default 16,128,512)\n"
           "  --threads LIST   thread counts (default 1,2; 0 = the library's default, no setting)\n"
           "  --rounds N       rounds of every (library, shape, threads) (default 5)\n"
           "  --libs LIST      openblas, openblas:CORE, blis, dnnl, dnnl-matmul, dnnl-bf16\n"
           "                   (default openblas,openblas:Haswell,openblas:Zen[,openblas:SkylakeX if avx512f],\n"
           "                   blis,dnnl,dnnl-matmul,dnnl-bf16)\n"
           "  --min-time S     seconds of timed calls per measurement, after a warm-up call (default 0.05)\n"
           "  --weights cold|hot  cold (default): rotate through copies of B spanning --cold-mib MiB\n"
           "  --cold-mib N     (default 128)\n"
           "  --max-other X    re-measure a block (one library, one K x N, every M) when other processes\n"
           "                   used more than X CPUs meanwhile (default 0.25) ...\n"
           "  --retries N      ... at most N times, after a 1 s pause (default 2) ...\n"
           "  --retry-until S  ... and only in the first S seconds of the rounds (default 240)\n"
           "  --settle S       pause before another library runs after a multi-thread run\n"
           "                   (default: the idle spin measured for the previous library)\n"
           "  --dnnl-max-isa ISA  set ONEDNN_MAX_CPU_ISA for the oneDNN workers (e.g. AVX2)\n"
           "  --openblas PATH  --blis PATH  --dnnl PATH   libraries to dlopen\n"
           "  --json           also print one JSON object on the last line\n");
}

int main(int argc, char **argv) {
    /* worker mode */
    if (argc >= 2 && strcmp(argv[1], "--worker") == 0) {
        const char *variant = argc > 2 ? argv[2] : "";
        int rfd = -1, wfd = -1;
        const char *obp = DEFAULT_OPENBLAS, *blp = DEFAULT_BLIS, *dnp = DEFAULT_DNNL;
        for (int i = 3; i < argc; i++) {
            if (strcmp(argv[i], "--fds") == 0 && i + 2 < argc) {
                rfd = atoi(argv[i + 1]);
                wfd = atoi(argv[i + 2]);
                i += 2;
            } else if (strcmp(argv[i], "--openblas") == 0 && i + 1 < argc) {
                obp = argv[++i];
            } else if (strcmp(argv[i], "--blis") == 0 && i + 1 < argc) {
                blp = argv[++i];
            } else if (strcmp(argv[i], "--dnnl") == 0 && i + 1 < argc) {
                dnp = argv[++i];
            }
        }
        if (rfd < 0 || wfd < 0) die("--worker needs --fds R W");
        return worker_main(variant, rfd, wfd, obp, blp, dnp);
    }

    const char *shapes_arg = "ds,mx,ref", *m_arg = "16,128,512", *threads_arg = "1,2", *libs_arg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VAL                               \
    do {                                       \
        if (!val) die("%s needs a value", a);  \
        i++;                                   \
    } while (0)
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage();
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            opt.json = 1;
        } else if (strcmp(a, "--shapes") == 0) {
            NEED_VAL;
            shapes_arg = val;
        } else if (strcmp(a, "--m") == 0) {
            NEED_VAL;
            m_arg = val;
        } else if (strcmp(a, "--threads") == 0) {
            NEED_VAL;
            threads_arg = val;
        } else if (strcmp(a, "--rounds") == 0) {
            NEED_VAL;
            opt.rounds = atoi(val);
            if (opt.rounds < 1 || opt.rounds > 1000) die("bad --rounds");
        } else if (strcmp(a, "--libs") == 0) {
            NEED_VAL;
            libs_arg = val;
        } else if (strcmp(a, "--min-time") == 0) {
            NEED_VAL;
            opt.min_time = atof(val);
            if (!(opt.min_time >= 0 && opt.min_time < 60)) die("bad --min-time");
        } else if (strcmp(a, "--weights") == 0) {
            NEED_VAL;
            if (strcmp(val, "hot") == 0)
                opt.hot = 1;
            else if (strcmp(val, "cold") == 0)
                opt.hot = 0;
            else
                die("--weights is hot or cold");
        } else if (strcmp(a, "--cold-mib") == 0) {
            NEED_VAL;
            opt.cold_mib = (size_t)atol(val);
            if (opt.cold_mib < 1 || opt.cold_mib > 16384) die("bad --cold-mib");
        } else if (strcmp(a, "--max-other") == 0) {
            NEED_VAL;
            opt.max_other = atof(val);
        } else if (strcmp(a, "--retries") == 0) {
            NEED_VAL;
            opt.retries = atoi(val);
            if (opt.retries < 0 || opt.retries > 100) die("bad --retries");
        } else if (strcmp(a, "--retry-until") == 0) {
            NEED_VAL;
            opt.time_limit = atof(val);
        } else if (strcmp(a, "--settle") == 0) {
            NEED_VAL;
            opt.settle = atof(val);
        } else if (strcmp(a, "--dnnl-max-isa") == 0) {
            NEED_VAL;
            opt.max_isa = val;
        } else if (strcmp(a, "--openblas") == 0) {
            NEED_VAL;
            opt.ob_path = val;
        } else if (strcmp(a, "--blis") == 0) {
            NEED_VAL;
            opt.blis_path = val;
        } else if (strcmp(a, "--dnnl") == 0) {
            NEED_VAL;
            opt.dnnl_path = val;
        } else {
            usage();
            die("unknown option %s", a);
        }
#undef NEED_VAL
    }
    signal(SIGPIPE, SIG_IGN);

    cpu_facts cpu;
    read_cpu(&cpu);

    /* shapes, grouped by (K, N): one group's M values run back to back per library */
    int ms[16], n_m = parse_ints(m_arg, ms, 16, 1);
    int threads[8], n_t = parse_ints(threads_arg, threads, 8, 0);
    if (n_m == 0 || n_t == 0) die("empty --m or --threads");
    struct {
        int k, n;
        const char *gemm;
    } groups[32];
    int n_g = 0;
    char items[32][64];
    int n_items = split_list(shapes_arg, items, 32);
    for (int i = 0; i < n_items && n_g < 30; i++) {
        if (strcmp(items[i], "ds") == 0) {
            groups[n_g].k = 2048, groups[n_g].n = 1408, groups[n_g++].gemm = "DeepSeek x·W1";
            groups[n_g].k = 1408, groups[n_g].n = 2048, groups[n_g++].gemm = "DeepSeek h·W2";
        } else if (strcmp(items[i], "mx") == 0) {
            groups[n_g].k = 2048, groups[n_g].n = 5632, groups[n_g++].gemm = "Mixtral x·W1";
            groups[n_g].k = 5632, groups[n_g].n = 2048, groups[n_g++].gemm = "Mixtral h·W2";
        } else if (strcmp(items[i], "ref") == 0) {
            groups[n_g].k = 4096, groups[n_g].n = 1024, groups[n_g++].gemm = "reference";
        } else {
            int k, n;
            char extra;
            if (sscanf(items[i], "%dx%d%c", &k, &n, &extra) != 2 || k < 1 || n < 1 || k > 65536 || n > 65536)
                die("bad shape '%s' (ds, mx, ref or KxN)", items[i]);
            groups[n_g].k = k, groups[n_g].n = n, groups[n_g++].gemm = "custom";
        }
    }
    if (n_g == 0) die("no shapes");
    int n_s = n_g * n_m;
    shape *shapes = calloc((size_t)n_s, sizeof(shape));
    size_t amax = (size_t)VERIFY_M * VERIFY_K, cmax = (size_t)VERIFY_M * VERIFY_N;
    for (int g = 0; g < n_g; g++)
        for (int j = 0; j < n_m; j++) {
            shape *s = &shapes[g * n_m + j];
            s->m = ms[j], s->k = groups[g].k, s->n = groups[g].n, s->gemm = groups[g].gemm;
            if ((size_t)s->m * s->k > amax) amax = (size_t)s->m * s->k;
            if ((size_t)s->m * s->n > cmax) cmax = (size_t)s->m * s->n;
        }

    /* libraries */
    char lib_names[16][64];
    int n_v;
    if (libs_arg) {
        n_v = split_list(libs_arg, lib_names, 16);
    } else {
        n_v = 0;
        snprintf(lib_names[n_v++], 64, "openblas");
        snprintf(lib_names[n_v++], 64, "openblas:Haswell");
        snprintf(lib_names[n_v++], 64, "openblas:Zen");
        if (cpu.avx512f) snprintf(lib_names[n_v++], 64, "openblas:SkylakeX");
        snprintf(lib_names[n_v++], 64, "blis");
        snprintf(lib_names[n_v++], 64, "dnnl");
        snprintf(lib_names[n_v++], 64, "dnnl-matmul");
        snprintf(lib_names[n_v++], 64, "dnnl-bf16");
    }
    if (n_v == 0) die("no libraries");
    variant *vs = calloc((size_t)n_v, sizeof(variant));
    for (int v = 0; v < n_v; v++) {
        snprintf(vs[v].name, sizeof vs[v].name, "%.63s", lib_names[v]);
        if (parse_variant(vs[v].name, &vs[v].kind, vs[v].core, sizeof vs[v].core) != 0)
            die("unknown library '%s'", vs[v].name);
    }

    double before_other = 0, before_steal = 0;
    {
        load_mark a = mark_load(NULL, 0);
        sleep_s(0.5);
        load_mark b = mark_load(NULL, 0);
        load_between(a, b, cpu.cpus, &before_other, &before_steal);
        if (before_other > 0.2)
            fprintf(stderr, "warning: other processes are using %.1f CPUs: the figures will be noisy\n",
                    before_other);
    }
    double t_start = now_s();
    char reply[LINE], cmd[256];
    /* start every worker, then check each library before any timing */
    for (int v = 0; v < n_v; v++) spawn(&vs[v]);
    for (int v = 0; v < n_v; v++) {
        variant *x = &vs[v];
        x->verify_err = x->spin = NAN;
        if (ask(x, NULL, reply, sizeof reply) != 0) {
            fprintf(stderr, "%-18s load failed: %s\n", x->name, x->error);
            stop(x);
            continue;
        }
        snprintf(x->info, sizeof x->info, "%.2000s", reply);
        if (x->kind == K_OPENBLAS && x->core[0]) {
            char got[64] = "";
            const char *c = strstr(x->info, "core=");
            if (c) sscanf(c + 5, "%63[^;]", got);
            if (strcasecmp(got, x->core) != 0) {
                snprintf(x->note, sizeof x->note, "OPENBLAS_CORETYPE=%s not taken: OpenBLAS runs %s", x->core, got);
                fprintf(stderr, "%-18s warning: %s\n", x->name, x->note);
            }
        }
        snprintf(cmd, sizeof cmd, "alloc %zu %zu %zu", amax, cmax, opt.cold_mib);
        if (ask(x, cmd, reply, sizeof reply) != 0 || ask(x, "verify", reply, sizeof reply) != 0) {
            fprintf(stderr, "%-18s %s\n", x->name, x->error);
            stop(x);
            continue;
        }
        sscanf(reply, "%lf %lf", &x->verify_err, &x->spin);
        fprintf(stderr, "%-18s ok: rel. error %.2g, idle spin %.3f s; %s\n", x->name, x->verify_err, x->spin,
                x->info);
    }

    /* results[v][s][t] */
    cell *cells = calloc((size_t)n_v * n_s * n_t, sizeof(cell));
#define CELL(v, s, t) (&cells[((size_t)(v) * n_s + (s)) * n_t + (t)])
    for (size_t i = 0; i < (size_t)n_v * n_s * n_t; i++) {
        cells[i].gflops = malloc(sizeof(double) * (size_t)opt.rounds);
        cells[i].cpu = malloc(sizeof(double) * (size_t)opt.rounds);
        cells[i].other = malloc(sizeof(double) * (size_t)opt.rounds);
        for (int r = 0; r < opt.rounds; r++) cells[i].gflops[r] = cells[i].cpu[r] = cells[i].other[r] = NAN;
        snprintf(cells[i].impl, sizeof cells[i].impl, "-");
    }

    double *round_other = calloc((size_t)opt.rounds, sizeof(double));
    double *round_steal = calloc((size_t)opt.rounds, sizeof(double));
    load_mark round_start = mark_load(vs, n_v), first_round = round_start;
    int prev = -1, prev_threads = 1, n_retried = 0, n_blocks = 0, n_noisy = 0;
    for (int r = 0; r < opt.rounds; r++) {
        for (int ti = 0; ti < n_t; ti++)
            for (int g = 0; g < n_g; g++)
                for (int vi = 0; vi < n_v; vi++) {
                    int v = (vi + r + g) % n_v; /* rotate the order from group to group and round to round */
                    variant *x = &vs[v];
                    if (!x->alive) continue;
                    if (prev >= 0 && prev != v && prev_threads != 1) {
                        double settle = opt.settle;
                        if (settle < 0) settle = vs[prev].spin > 0.002 ? fmin(0.5, 1.2 * vs[prev].spin + 0.005) : 0;
                        sleep_s(settle);
                    }
                    /* One block: this library on the group's M values. Re-measured (after a
                     * pause) when other processes took more than --max-other CPUs meanwhile. */
                    for (int attempt = 0;; attempt++) {
                        load_mark b0 = mark_load(vs, n_v);
                        double gf[16], cu[16], err[16];
                        int eff[16], ncopy[16], ok = 1;
                        char impl[16][80];
                        for (int j = 0; j < n_m && ok; j++) {
                            shape *sh = &shapes[g * n_m + j];
                            snprintf(cmd, sizeof cmd, "run %d %d %d %d %.4f %d", sh->m, sh->k, sh->n, threads[ti],
                                     opt.min_time, opt.hot);
                            int calls;
                            snprintf(impl[j], sizeof impl[j], "-");
                            if (ask(x, cmd, reply, sizeof reply) != 0) {
                                fprintf(stderr, "%-18s %dx%dx%d, %d threads: %s (dropped)\n", x->name, sh->m,
                                        sh->k, sh->n, threads[ti], x->error);
                                stop(x);
                                x->dropped = 1;
                                ok = 0;
                            } else if (sscanf(reply, "%lf %d %lf %lf %d %d %79s", &gf[j], &calls, &cu[j], &err[j],
                                              &eff[j], &ncopy[j], impl[j]) < 6) {
                                gf[j] = NAN;
                            }
                        }
                        if (!ok) break;
                        double other, steal;
                        load_between(b0, mark_load(vs, n_v), cpu.cpus, &other, &steal);
                        if (other > opt.max_other && attempt < opt.retries && now_s() - t_start < opt.time_limit) {
                            n_retried++;
                            sleep_s(1.0);
                            continue;
                        }
                        n_blocks++;
                        if (other > opt.max_other) n_noisy++;
                        for (int j = 0; j < n_m; j++) {
                            cell *c = CELL(v, g * n_m + j, ti);
                            if (!isfinite(gf[j])) continue;
                            c->gflops[r] = gf[j];
                            c->cpu[r] = cu[j];
                            c->other[r] = other;
                            if (err[j] > c->max_err) c->max_err = err[j];
                            c->eff_threads = eff[j];
                            c->ncopy = ncopy[j];
                            snprintf(c->impl, sizeof c->impl, "%s", impl[j]);
                        }
                        break;
                    }
                    prev = v;
                    prev_threads = threads[ti];
                }
        load_mark round_end = mark_load(vs, n_v);
        load_between(round_start, round_end, cpu.cpus, &round_other[r], &round_steal[r]);
        round_start = round_end;
        fprintf(stderr, "round %d/%d done, %.0f s; other processes used %.2f CPUs, steal %.1f%%; blocks re-measured so far %d\n",
                r + 1, opt.rounds, now_s() - t_start, round_other[r], 100 * round_steal[r], n_retried);
    }
    for (int v = 0; v < n_v; v++) stop(&vs[v]);
    for (int v = 0; v < n_v; v++) {
        if (vs[v].to) fclose(vs[v].to);
        if (vs[v].from) fclose(vs[v].from);
        if (vs[v].pid > 0) waitpid(vs[v].pid, NULL, 0);
    }
    double elapsed = now_s() - t_start, all_other, all_steal;
    load_between(first_round, round_start, cpu.cpus, &all_other, &all_steal);

    /* ---- markdown ---- */
    printf("## GEMM libraries: C[M,N] = A[M,K]·B[K,N], f32 row-major, median GFLOP/s of %d rounds\n\n",
           opt.rounds);
    printf("CPU: %s (family %d, model %d), %d online CPUs; avx2 %s, fma %s, avx512f %s, avx512_bf16 %s, amx_bf16 %s\n\n",
           cpu.model, cpu.family, cpu.model_id, cpu.cpus, cpu.avx2 ? "yes" : "no", cpu.fma ? "yes" : "no",
           cpu.avx512f ? "yes" : "no", cpu.avx512_bf16 ? "yes" : "no", cpu.amx ? "yes" : "no");
    printf("Weights: %s; %.3g s of timed calls per measurement after a warm-up call; %.0f s in all.\n\n",
           opt.hot ? "hot (one copy of B, reused)" : "cold (copies of B rotated, spanning the cold set)",
           opt.min_time, elapsed);
    printf("Load from other processes: %.2f CPUs before the start, %.2f during the rounds (per round:", before_other,
           all_other);
    for (int r = 0; r < opt.rounds; r++) printf(" %.2f", round_other[r]);
    printf("); steal %.1f%%. Blocks (one library, one K x N, every M) re-measured because other processes used "
           "more than %.2f CPUs meanwhile: %d; kept although noisy: %d of %d.\n\n",
           100 * all_steal, opt.max_other, n_retried, n_noisy, n_blocks);
    printf("Libraries:\n");
    for (int v = 0; v < n_v; v++) {
        variant *x = &vs[v];
        if (isfinite(x->verify_err))
            printf("- `%s`: %s; check %dx%dx%d rel. error %.2g; idle spin after a 2-thread call %.3f s%s%s%s%s%s\n",
                   x->name, x->info, VERIFY_M, VERIFY_K, VERIFY_N, x->verify_err, x->spin,
                   x->note[0] ? "; **" : "", x->note, x->note[0] ? "**" : "", x->error[0] ? "; later: " : "",
                   x->error);
        else
            printf("- `%s`: %s%s%s\n", x->name, x->info[0] ? x->info : "", x->info[0] ? "; " : "",
                   x->error[0] ? x->error : "failed");
    }
    printf("\n| M x K x N | GEMM | threads |");
    for (int v = 0; v < n_v; v++) {
        const char *c = vs[v].kind == K_OPENBLAS && !vs[v].core[0] ? strstr(vs[v].info, "core=") : NULL;
        char detected[64] = "";
        if (c) sscanf(c + 5, "%63[^;]", detected);
        printf(detected[0] ? " %s (%s) |" : " %s |", vs[v].name, detected);
    }
    printf(" best |\n|---|---|---|");
    for (int v = 0; v < n_v; v++) printf("---:|");
    printf("---|\n");
    double *gsum = calloc((size_t)n_v * n_t, sizeof(double));
    int *gcount = calloc((size_t)n_v * n_t, sizeof(int));
    for (int ti = 0; ti < n_t; ti++) {
        for (int s = 0; s < n_s; s++) {
            shape *sh = &shapes[s];
            char tl[32];
            if (threads[ti] == 0)
                snprintf(tl, sizeof tl, "default");
            else
                snprintf(tl, sizeof tl, "%d", threads[ti]);
            printf("| %d x %d x %d | %s | %s |", sh->m, sh->k, sh->n, sh->gemm, tl);
            int best = -1;
            double best_v = 0;
            for (int v = 0; v < n_v; v++) {
                cell *c = CELL(v, s, ti);
                double med = vs[v].dropped ? NAN : median(c->gflops, opt.rounds);
                if (isfinite(med)) {
                    printf(" %.1f |", med);
                    if (med > best_v) best_v = med, best = v;
                    gsum[v * n_t + ti] += log(med);
                    gcount[v * n_t + ti]++;
                } else {
                    printf(" - |");
                }
            }
            printf(" %s |\n", best >= 0 ? vs[best].name : "-");
        }
        if (threads[ti] == 0)
            printf("| geometric mean | | default |");
        else
            printf("| geometric mean | | %d |", threads[ti]);
        for (int v = 0; v < n_v; v++) {
            if (gcount[v * n_t + ti] == n_s)
                printf(" %.1f |", exp(gsum[v * n_t + ti] / n_s));
            else
                printf(" - |");
        }
        printf(" |\n");
    }
    printf("\n");

    /* ---- JSON ---- */
    if (opt.json) {
        printf("{\"bench\":\"gemm_libraries\",\"units\":\"GFLOP/s\",\"rounds\":%d,\"min_time_s\":%g,\"weights\":\"%s\","
               "\"cold_mib\":%zu,\"elapsed_s\":%.1f,\"other_cpus_before\":%.3f,\"other_cpus\":%.3f,\"steal\":%.4f,"
               "\"other_cpus_rounds\":[",
               opt.rounds, opt.min_time, opt.hot ? "hot" : "cold", opt.cold_mib, elapsed, before_other, all_other,
               all_steal);
        for (int r = 0; r < opt.rounds; r++) printf("%s%.3f", r ? "," : "", round_other[r]);
        printf("],\"max_other\":%g,\"blocks\":%d,\"blocks_retried\":%d,\"blocks_noisy\":%d,\"cpu\":{\"model\":",
               opt.max_other, n_blocks, n_retried, n_noisy);
        json_str(stdout, cpu.model);
        printf(",\"family\":%d,\"model_id\":%d,\"cpus\":%d,\"avx2\":%s,\"fma\":%s,\"avx512f\":%s,\"avx512_bf16\":%s,"
               "\"amx_bf16\":%s},\"libs\":[",
               cpu.family, cpu.model_id, cpu.cpus, cpu.avx2 ? "true" : "false", cpu.fma ? "true" : "false",
               cpu.avx512f ? "true" : "false", cpu.avx512_bf16 ? "true" : "false", cpu.amx ? "true" : "false");
        for (int v = 0; v < n_v; v++) {
            printf("%s{\"name\":", v ? "," : "");
            json_str(stdout, vs[v].name);
            printf(",\"info\":");
            json_str(stdout, vs[v].info);
            printf(",\"verify_rel_err\":");
            json_num(stdout, vs[v].verify_err);
            printf(",\"idle_spin_s\":");
            json_num(stdout, vs[v].spin);
            printf(",\"note\":");
            json_str(stdout, vs[v].note);
            printf(",\"error\":");
            json_str(stdout, vs[v].error);
            printf("}");
        }
        printf("],\"results\":[");
        int first = 1;
        for (int v = 0; v < n_v; v++)
            for (int s = 0; s < n_s; s++)
                for (int ti = 0; ti < n_t; ti++) {
                    cell *c = CELL(v, s, ti);
                    double med = median(c->gflops, opt.rounds);
                    if (vs[v].dropped || !isfinite(med)) continue;
                    printf("%s{\"lib\":", first ? "" : ",");
                    first = 0;
                    json_str(stdout, vs[v].name);
                    printf(",\"m\":%d,\"k\":%d,\"n\":%d,\"gemm\":", shapes[s].m, shapes[s].k, shapes[s].n);
                    json_str(stdout, shapes[s].gemm);
                    printf(",\"threads\":%d,\"effective_threads\":%d,\"gflops\":", threads[ti], c->eff_threads);
                    json_num(stdout, med);
                    printf(",\"gflops_rounds\":[");
                    for (int r = 0; r < opt.rounds; r++) {
                        if (r) putchar(',');
                        json_num(stdout, c->gflops[r]);
                    }
                    printf("],\"other_cpus_rounds\":[");
                    for (int r = 0; r < opt.rounds; r++) {
                        if (r) putchar(',');
                        json_num(stdout, c->other[r]);
                    }
                    printf("],\"cpu_per_wall\":");
                    json_num(stdout, median(c->cpu, opt.rounds));
                    printf(",\"max_rel_err\":");
                    json_num(stdout, c->max_err);
                    printf(",\"b_copies\":%d,\"impl\":", c->ncopy);
                    json_str(stdout, c->impl);
                    printf("}");
                }
        printf("]}\n");
    }
    int failed = 0;
    for (int v = 0; v < n_v; v++)
        if (vs[v].error[0]) failed++;
    return failed == n_v ? 1 : 0;
}

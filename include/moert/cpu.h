/* moert: the machine's instruction sets and the choice of kernel variant.
 *
 * Each kernel has a scalar reference and vectorised variants. The best variant that the
 * CPU and OS support is chosen once, at the first call; the environment variable
 * MOERT_ISA=scalar|avx2|avx512 forces one (for tests and benchmarks). A kernel's params
 * may also name a variant explicitly, which overrides both. */
#ifndef MOERT_CPU_H
#define MOERT_CPU_H

#include "moert/export.h"
#include "moert/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moert_isa {
    MOERT_ISA_AUTO = 0, /* the variant chosen at start-up (MOERT_ISA or the best one) */
    MOERT_ISA_SCALAR = 1,
    MOERT_ISA_AVX2 = 2,   /* AVX2 + FMA */
    MOERT_ISA_AVX512 = 3, /* AVX-512 F, BW, DQ and VL */
} moert_isa;

typedef struct moert_cpu_info {
    char vendor[16];  /* "GenuineIntel", "AuthenticAMD", ... */
    char brand[64];   /* the processor brand string */
    int logical_cpus; /* online logical CPUs */
    /* Each flag is 1 when the CPU has the feature and the OS saves its registers. */
    int sse42, avx, avx2, fma, f16c;
    int avx512f, avx512bw, avx512dq, avx512vl, avx512bf16, avx512fp16;
    int amx_tile; /* AMX tiles visible (not used by moert yet) */
} moert_cpu_info;

/* Fills *info from CPUID and XGETBV. */
MOERT_API moert_status moert_cpu_info_get(moert_cpu_info *info);

/* "auto", "scalar", "avx2", "avx512" (or "unknown"). */
MOERT_API const char *moert_isa_name(moert_isa isa);

/* Parses "scalar", "avx2" or "avx512" (not "auto"). MOERT_EINVAL on anything else. */
MOERT_API moert_status moert_isa_parse(const char *name, moert_isa *isa);

/* MOERT_OK if variant `isa` can run on this machine, MOERT_EUNSUPPORTED (with the
 * missing feature in the detail) if not. MOERT_ISA_AUTO resolves first. */
MOERT_API moert_status moert_isa_check(moert_isa isa);

/* The variant that MOERT_ISA_AUTO means in this process: MOERT_ISA if it is set (an
 * error if its value is bad or unsupported here), else the best supported one. */
MOERT_API moert_status moert_isa_active(moert_isa *isa);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_CPU_H */

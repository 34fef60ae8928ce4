/* CPU features from CPUID/XGETBV, and the process-wide choice of kernel variant. */
#include <cpuid.h>
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "moert/cpu.h"

static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    if (!__get_cpuid_count(leaf, subleaf, &r[0], &r[1], &r[2], &r[3]))
        r[0] = r[1] = r[2] = r[3] = 0;
}

static int bit(uint32_t word, int n) { return (int)((word >> n) & 1u); }

/* The facts, read once per process: under a hypervisor every CPUID instruction traps
 * (microseconds each), and the ISA check runs on every gate and route call. */
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;
static moert_cpu_info cpu_facts;

static void read_cpu_info(moert_cpu_info *info) {
    memset(info, 0, sizeof *info);

    uint32_t r[4];
    cpuid(0, 0, r);
    uint32_t max_leaf = r[0];
    memcpy(info->vendor + 0, &r[1], 4); /* EBX, EDX, ECX spell the vendor */
    memcpy(info->vendor + 4, &r[3], 4);
    memcpy(info->vendor + 8, &r[2], 4);

    cpuid(0x80000000u, 0, r);
    if (r[0] >= 0x80000004u) {
        for (uint32_t i = 0; i < 3; i++) {
            cpuid(0x80000002u + i, 0, r);
            memcpy(info->brand + 16 * i, r, 16);
        }
        info->brand[48] = '\0';
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    info->logical_cpus = cpus > 0 ? (int)cpus : 1;

    uint32_t l1[4] = {0}, l7[4] = {0}, l7s1[4] = {0};
    if (max_leaf >= 1) cpuid(1, 0, l1);
    if (max_leaf >= 7) {
        cpuid(7, 0, l7);
        if (l7[0] >= 1) cpuid(7, 1, l7s1);
    }
    /* A feature counts only if the OS saves its registers on a context switch. */
    int osxsave = bit(l1[2], 27);
    uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    int os_ymm = (xcr0 & 0x6) == 0x6;
    int os_zmm = os_ymm && (xcr0 & 0xe0) == 0xe0;
    int os_amx = (xcr0 & 0x60000) == 0x60000;

    info->sse42 = bit(l1[2], 20);
    info->avx = os_ymm && bit(l1[2], 28);
    info->fma = info->avx && bit(l1[2], 12);
    info->f16c = info->avx && bit(l1[2], 29);
    info->avx2 = info->avx && bit(l7[1], 5);
    info->avx512f = os_zmm && bit(l7[1], 16);
    info->avx512dq = info->avx512f && bit(l7[1], 17);
    info->avx512bw = info->avx512f && bit(l7[1], 30);
    info->avx512vl = info->avx512f && bit(l7[1], 31);
    info->avx512fp16 = info->avx512f && bit(l7[3], 23);
    info->avx512bf16 = info->avx512f && bit(l7s1[0], 5);
    info->amx_tile = os_amx && bit(l7[3], 24);
}

static void read_cpu_facts(void) { read_cpu_info(&cpu_facts); }

moert_status moert_cpu_info_get(moert_cpu_info *info) {
    MOERT_RETURN_ERROR_IF(info == NULL, MOERT_EINVAL, "moert_cpu_info_get: info is NULL");
    pthread_once(&cpu_once, read_cpu_facts);
    *info = cpu_facts;
    return MOERT_OK;
}

const char *moert_isa_name(moert_isa isa) {
    switch (isa) {
    case MOERT_ISA_AUTO: return "auto";
    case MOERT_ISA_SCALAR: return "scalar";
    case MOERT_ISA_AVX2: return "avx2";
    case MOERT_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

moert_status moert_isa_parse(const char *name, moert_isa *isa) {
    MOERT_RETURN_ERROR_IF(name == NULL || isa == NULL, MOERT_EINVAL,
                          "moert_isa_parse: NULL argument");
    static const moert_isa all[] = {MOERT_ISA_SCALAR, MOERT_ISA_AVX2, MOERT_ISA_AVX512};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(name, moert_isa_name(all[i])) == 0) {
            *isa = all[i];
            return MOERT_OK;
        }
    }
    return moert_set_error(MOERT_EINVAL, "ISA '%.64s' is not one of scalar, avx2, avx512",
                           name);
}

/* Checks support without resolving AUTO (used by the start-up choice itself). */
static moert_status check_supported(moert_isa isa) {
    moert_cpu_info cpu;
    moert_cpu_info_get(&cpu);
    switch (isa) {
    case MOERT_ISA_SCALAR: return MOERT_OK;
    case MOERT_ISA_AVX2:
        MOERT_RETURN_ERROR_IF(!cpu.avx2 || !cpu.fma, MOERT_EUNSUPPORTED,
                              "ISA avx2 needs AVX2 and FMA, which this CPU (%s) lacks",
                              cpu.vendor);
        return MOERT_OK;
    case MOERT_ISA_AVX512:
        MOERT_RETURN_ERROR_IF(
            !(cpu.avx512f && cpu.avx512bw && cpu.avx512dq && cpu.avx512vl && cpu.avx2 &&
              cpu.fma),
            MOERT_EUNSUPPORTED,
            "ISA avx512 needs AVX-512 F/BW/DQ/VL, which this CPU (%s) lacks", cpu.vendor);
        return MOERT_OK;
    case MOERT_ISA_AUTO: break;
    }
    return moert_set_error(MOERT_EINVAL, "unknown ISA value %d", (int)isa);
}

/* The start-up choice, made once per process. */
static pthread_once_t active_once = PTHREAD_ONCE_INIT;
static moert_isa active_isa = MOERT_ISA_SCALAR;
static moert_status active_status = MOERT_OK;
static char active_detail[256];

static void choose_active_isa(void) {
    const char *forced = getenv("MOERT_ISA");
    if (forced != NULL && forced[0] != '\0') {
        moert_isa isa;
        active_status = moert_isa_parse(forced, &isa);
        if (active_status == MOERT_OK) active_status = check_supported(isa);
        if (active_status == MOERT_OK) {
            active_isa = isa;
        } else {
            /* Keep the reason: every later call must report it, not only the first. */
            snprintf(active_detail, sizeof active_detail, "MOERT_ISA: %s", moert_last_error());
        }
        return;
    }
    if (check_supported(MOERT_ISA_AVX512) == MOERT_OK)
        active_isa = MOERT_ISA_AVX512;
    else if (check_supported(MOERT_ISA_AVX2) == MOERT_OK)
        active_isa = MOERT_ISA_AVX2;
    else
        active_isa = MOERT_ISA_SCALAR;
}

moert_status moert_isa_active(moert_isa *isa) {
    MOERT_RETURN_ERROR_IF(isa == NULL, MOERT_EINVAL, "moert_isa_active: isa is NULL");
    pthread_once(&active_once, choose_active_isa);
    MOERT_RETURN_ERROR_IF(active_status != MOERT_OK, active_status, "%s", active_detail);
    *isa = active_isa;
    return MOERT_OK;
}

moert_status moert_isa_check(moert_isa isa) {
    if (isa == MOERT_ISA_AUTO) return moert_isa_active(&isa);
    return check_supported(isa);
}

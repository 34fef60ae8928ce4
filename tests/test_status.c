/* Status codes, messages, the thread-local error detail, version and CPU facts. */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "moert/moert.h"

START_TEST(every_status_has_a_distinct_name_and_message) {
    const moert_status all[] = {
#define MOERT_LIST_(name, value, message) name,
        MOERT_STATUS_TABLE(MOERT_LIST_)
#undef MOERT_LIST_
    };
    const size_t n = sizeof all / sizeof all[0];
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq((int)all[i], (int)i); /* values are dense from 0 */
        ck_assert(strlen(moert_strerror(all[i])) > 0);
        ck_assert(strncmp(moert_status_name(all[i]), "MOERT_", 6) == 0);
        for (size_t j = 0; j < i; j++) {
            ck_assert_str_ne(moert_strerror(all[i]), moert_strerror(all[j]));
            ck_assert_str_ne(moert_status_name(all[i]), moert_status_name(all[j]));
        }
    }
    ck_assert_str_eq(moert_strerror(MOERT_OK), "success");
    ck_assert_str_eq(moert_status_name(MOERT_EINVAL), "MOERT_EINVAL");
    ck_assert_str_eq(moert_strerror((moert_status)999), "unknown status");
    ck_assert_str_eq(moert_status_name((moert_status)-3), "MOERT_UNKNOWN");
}
END_TEST

static void *set_in_other_thread(void *arg) {
    (void)arg;
    moert_set_error(MOERT_EIO, "written by another thread");
    return NULL;
}

START_TEST(error_detail_is_per_thread) {
    ck_assert_str_eq(moert_last_error(), "");
    ck_assert_int_eq(moert_set_error(MOERT_EINVAL, "k=%d exceeds num_experts=%d", 9, 8), MOERT_EINVAL);
    ck_assert_str_eq(moert_last_error(), "k=9 exceeds num_experts=8");
    pthread_t other;
    pthread_create(&other, NULL, set_in_other_thread, NULL);
    pthread_join(other, NULL);
    ck_assert_str_eq(moert_last_error(), "k=9 exceeds num_experts=8");
    /* Long details are cut, never overflow. */
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    moert_set_error(MOERT_EINVAL, "%s", big);
    ck_assert(strlen(moert_last_error()) < sizeof big - 1);
}
END_TEST

START_TEST(version_and_isa_names) {
    ck_assert_str_eq(moert_version(), MOERT_VERSION_STRING);
    moert_isa isa;
    ck_assert_int_eq(moert_isa_parse("avx2", &isa), MOERT_OK);
    ck_assert_int_eq(isa, MOERT_ISA_AVX2);
    ck_assert_int_eq(moert_isa_parse("avx512", &isa), MOERT_OK);
    ck_assert_int_eq(moert_isa_parse("auto", &isa), MOERT_EINVAL);
    ck_assert_int_eq(moert_isa_parse("", &isa), MOERT_EINVAL);
    ck_assert_int_eq(moert_isa_parse(NULL, &isa), MOERT_EINVAL);
    ck_assert_str_eq(moert_isa_name(MOERT_ISA_SCALAR), "scalar");
    ck_assert_str_eq(moert_isa_name((moert_isa)77), "unknown");
    ck_assert_int_eq(moert_isa_check(MOERT_ISA_SCALAR), MOERT_OK);
}
END_TEST

START_TEST(cpu_info_is_consistent) {
    moert_cpu_info cpu;
    ck_assert_int_eq(moert_cpu_info_get(&cpu), MOERT_OK);
    ck_assert_int_ge(cpu.logical_cpus, 1);
    ck_assert(strlen(cpu.vendor) > 0);
    /* Dependent features never appear without their base. */
    if (cpu.avx2) ck_assert(cpu.avx);
    if (cpu.avx512bw || cpu.avx512dq || cpu.avx512vl) ck_assert(cpu.avx512f);
    ck_assert_int_eq(moert_isa_check(MOERT_ISA_AVX2) == MOERT_OK, cpu.avx2 && cpu.fma);
    ck_assert_int_eq(moert_cpu_info_get(NULL), MOERT_EINVAL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, every_status_has_a_distinct_name_and_message);
    tcase_add_test(tc, error_detail_is_per_thread);
    tcase_add_test(tc, version_and_isa_names);
    tcase_add_test(tc, cpu_info_is_consistent);
    suite_add_tcase(s, tc);
    SRunner *runner = srunner_create(s);
    srunner_run_all(runner, CK_NORMAL);
    const int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Formatting users read in every summary line, number parsing, and the error table. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "check-main.h"
#include "error.h"
#include "util.h"

START_TEST(test_format_bytes)
{
        char buf[FORMAT_BYTES_MAX];
        ck_assert_str_eq(format_bytes(buf, 0), "0 B");
        ck_assert_str_eq(format_bytes(buf, 1023), "1023 B");
        ck_assert_str_eq(format_bytes(buf, 1024), "1.0 KiB");
        ck_assert_str_eq(format_bytes(buf, 10737418240ULL), "10.0 GiB");
        ck_assert_str_eq(format_bytes(buf, 2254857830ULL), "2.1 GiB");
        ck_assert_str_eq(format_bytes(buf, UINT64_MAX), "16.0 EiB");
}
END_TEST

START_TEST(test_format_duration)
{
        char buf[FORMAT_DURATION_MAX];
        ck_assert_str_eq(format_duration(buf, 1200000), "1.2 s");
        ck_assert_str_eq(format_duration(buf, 41000000), "41 s");
        ck_assert_str_eq(format_duration(buf, 125000000), "2 min 05 s");
        ck_assert_str_eq(format_duration(buf, 3723000000ULL), "1 h 02 min");
}
END_TEST

START_TEST(test_parse_u64)
{
        uint64_t v;
        ck_assert_int_eq(parse_u64("18446744073709551615", &v), 0);
        ck_assert_uint_eq(v, UINT64_MAX);
        ck_assert_int_lt(parse_u64("18446744073709551616", &v), 0);
        ck_assert_int_lt(parse_u64("", &v), 0);
        ck_assert_int_lt(parse_u64("-1", &v), 0);
        ck_assert_int_lt(parse_u64("12 ", &v), 0);
        ck_assert_int_lt(parse_u64(NULL, &v), 0);
}
END_TEST

START_TEST(test_error_names_round_trip)
{
        for (int c = QT_ERR_FAILED; c < _QT_ERR_MAX; c++)
                ck_assert_int_eq(qt_error_from_dbus_name(qt_error_dbus_name(c)), c);
        ck_assert_str_eq(qt_error_dbus_name(QT_ERR_IN_USE), "org.qtrim1.Error.ImageInUse");
        ck_assert_int_eq(qt_error_from_dbus_name("org.example.Nope"), QT_ERR_FAILED);
}
END_TEST

START_TEST(test_first_error_wins)
{
        struct qt_error e = {};
        ck_assert_int_eq(qt_error_set(&e, QT_ERR_IN_USE, 16, "first\nline"), -16);
        qt_error_set(&e, QT_ERR_FAILED, 5, "second");
        ck_assert_int_eq(e.code, QT_ERR_IN_USE);
        ck_assert_str_eq(e.message, "first line");
}
END_TEST

START_TEST(test_utf8_sanitize)
{
        char ok[] = "vm1.qcow2 → ü 😀";
        ck_assert_str_eq(utf8_sanitize(ok), "vm1.qcow2 → ü 😀");
        char latin1[] = "caf\xe9.qcow2";
        ck_assert_str_eq(utf8_sanitize(latin1), "caf?.qcow2");
        char overlong[] = "a\xc0\xaf"
                          "b";
        ck_assert_str_eq(utf8_sanitize(overlong), "a??b");
        char surrogate[] = "\xed\xa0\x80x";
        ck_assert_str_eq(utf8_sanitize(surrogate), "???x");
        char too_big[] = "\xf4\x90\x80\x80";
        ck_assert_str_eq(utf8_sanitize(too_big), "????");
        char cut[] = "ok\xe2\x86"; /* "→" cut short, as truncation leaves it */
        ck_assert_str_eq(utf8_sanitize(cut), "ok??");
}
END_TEST

START_TEST(test_error_message_is_utf8_when_cut)
{
        struct qt_error e = {};
        char long_arrows[3 * QT_ERROR_MESSAGE_MAX];
        long_arrows[0] = 'x'; /* shifts the arrows so the cut falls inside one */
        for (size_t i = 1; i + 3 < sizeof(long_arrows); i += 3)
                memcpy(long_arrows + i, "→", 3);
        long_arrows[sizeof(long_arrows) - 2] = '\0';
        qt_error_set(&e, QT_ERR_FAILED, 5, "%s", long_arrows);
        size_t len = strlen(e.message);
        ck_assert(len > 0 && len < QT_ERROR_MESSAGE_MAX);
        char copy[QT_ERROR_MESSAGE_MAX];
        strcpy(copy, e.message);
        ck_assert_str_eq(utf8_sanitize(copy), e.message); /* already valid: unchanged */
}
END_TEST

/* A step that failed because a cancel stopped it makes the job canceled, not failed. */
START_TEST(test_cancel_is_canceled)
{
        struct qt_error e = {};
        ck_assert_int_eq(qt_error_set(&e, QT_ERR_FAILED, -ECANCELED, "cannot run qemu-img check"),
                         -ECANCELED);
        ck_assert_int_eq(e.code, QT_ERR_CANCELED);
        ck_assert_str_eq(qt_error_dbus_name(e.code), "org.qtrim1.Error.Canceled");
        struct qt_error f = {};
        qt_error_set(&f, QT_ERR_NO_SPACE, ENOSPC, "full");
        ck_assert_int_eq(f.code, QT_ERR_NO_SPACE);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("util");
        TCase *tc = tcase_create("util");
        tcase_add_test(tc, test_format_bytes);
        tcase_add_test(tc, test_format_duration);
        tcase_add_test(tc, test_parse_u64);
        tcase_add_test(tc, test_error_names_round_trip);
        tcase_add_test(tc, test_first_error_wins);
        tcase_add_test(tc, test_utf8_sanitize);
        tcase_add_test(tc, test_error_message_is_utf8_when_cut);
        tcase_add_test(tc, test_cancel_is_canceled);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

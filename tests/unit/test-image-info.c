/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Parsing qemu-img info's JSON: what qtrim learns from it decides what it may do to an image. */
#include <check.h>
#include <string.h>

#include "check-main.h"
#include "image.h"
#include "util.h"

/* As qemu-img 7.2 prints it for a qcow2 overlay with a snapshot and a bitmap. */
static const char overlay_json[] =
    "{ \"virtual-size\": 4294967296, \"filename\": \"/images/vm.qcow2\","
    "  \"cluster-size\": 131072, \"format\": \"qcow2\", \"actual-size\": 200704,"
    "  \"snapshots\": [ { \"id\": \"1\", \"name\": \"before-upgrade\" } ],"
    "  \"backing-filename\": \"base, v1.qcow2\", \"backing-filename-format\": \"qcow2\","
    "  \"format-specific\": { \"type\": \"qcow2\", \"data\": {"
    "    \"compat\": \"1.1\", \"compression-type\": \"zstd\", \"lazy-refcounts\": true,"
    "    \"bitmaps\": [ { \"name\": \"b0\", \"granularity\": 65536, \"flags\": [\"auto\"] } ],"
    "    \"refcount-bits\": 16, \"corrupt\": false, \"extended-l2\": true } },"
    "  \"dirty-flag\": false }";

START_TEST(test_qcow2_overlay)
{
        struct qt_image_info info;
        struct qt_error e = {};
        ck_assert_int_eq(qt_image_parse_info(overlay_json, &info, &e), 0);
        ck_assert_str_eq(info.format, "qcow2");
        ck_assert_uint_eq(info.virtual_size, 4294967296ULL);
        ck_assert_uint_eq(info.cluster_size, 131072);
        ck_assert_str_eq(info.backing_file, "base, v1.qcow2");
        ck_assert_str_eq(info.backing_format, "qcow2");
        ck_assert_uint_eq(info.snapshots, 1);
        ck_assert_uint_eq(info.bitmaps, 1);
        ck_assert_str_eq(info.compat, "1.1");
        ck_assert_str_eq(info.compression_type, "zstd");
        ck_assert(info.lazy_refcounts);
        ck_assert(info.extended_l2);
        ck_assert_uint_eq(info.refcount_bits, 16);
        ck_assert(!info.corrupt && !info.encrypted && !info.has_data_file);
}
END_TEST

START_TEST(test_raw)
{
        struct qt_image_info info;
        struct qt_error e = {};
        ck_assert_int_eq(qt_image_parse_info("{\"virtual-size\": 1048576, \"format\": \"raw\","
                                             " \"actual-size\": 4096, \"dirty-flag\": false}",
                                             &info, &e),
                         0);
        ck_assert_str_eq(info.format, "raw");
        ck_assert_str_eq(info.backing_file, "");
        ck_assert_uint_eq(info.snapshots, 0);
}
END_TEST

START_TEST(test_flags_that_refuse)
{
        struct qt_image_info info;
        struct qt_error e = {};
        ck_assert_int_eq(
            qt_image_parse_info("{\"format\": \"qcow2\", \"encrypted\": true}", &info, &e), 0);
        ck_assert(info.encrypted);
        ck_assert_int_eq(
            qt_image_parse_info("{\"format\": \"qcow2\", \"format-specific\": {\"type\":"
                                " \"qcow2\", \"data\": {\"corrupt\": true,"
                                " \"data-file\": \"x.raw\"}}}",
                                &info, &e),
            0);
        ck_assert(info.corrupt);
        ck_assert(info.has_data_file);
}
END_TEST

START_TEST(test_malformed)
{
        static const char *const bad[] = {"",
                                          "[]",
                                          "{",
                                          "{\"virtual-size\": 1}",
                                          "null",
                                          "{\"format\": 7}",
                                          "{\"format\": \"\"}"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct qt_image_info info;
                struct qt_error e = {};
                ck_assert_msg(qt_image_parse_info(bad[i], &info, &e) < 0, "accepted %s", bad[i]);
                ck_assert_int_eq(e.code, QT_ERR_FAILED);
                ck_assert(e.message[0] != '\0');
        }
}
END_TEST

START_TEST(test_wrong_types_are_ignored)
{
        struct qt_image_info info;
        struct qt_error e = {};
        ck_assert_int_eq(qt_image_parse_info("{\"format\": \"qcow2\", \"virtual-size\": \"big\","
                                             " \"snapshots\": 3, \"virtual-size\": -5}",
                                             &info, &e),
                         0);
        ck_assert_uint_eq(info.virtual_size, 0);
        ck_assert_uint_eq(info.snapshots, 0);
}
END_TEST

START_TEST(test_check_path)
{
        struct stat st;
        struct qt_error e = {};
        ck_assert_int_lt(qt_image_check_path("relative.qcow2", true, &st, &e), 0);
        ck_assert_int_eq(e.code, QT_ERR_NOT_ABSOLUTE);
        e = (struct qt_error){};
        ck_assert_int_lt(qt_image_check_path("/nonexistent/x.qcow2", true, &st, &e), 0);
        ck_assert_int_eq(e.code, QT_ERR_NOT_FOUND);
        e = (struct qt_error){};
        ck_assert_int_lt(qt_image_check_path("/", true, &st, &e), 0);
        ck_assert_int_eq(e.code, QT_ERR_NOT_REGULAR);
        e = (struct qt_error){};
        ck_assert_int_lt(qt_image_check_path("/dev/null", true, &st, &e), 0);
        ck_assert_int_eq(e.code, QT_ERR_NOT_REGULAR);
        ck_assert_int_eq(qt_image_check_path("/proc/self/exe", true, &st, &e), 0);
        /* not followed: a resolved path that is a link now was swapped */
        e = (struct qt_error){};
        ck_assert_int_lt(qt_image_check_path("/proc/self/exe", false, &st, &e), 0);
        ck_assert_int_eq(e.code, QT_ERR_NOT_REGULAR);
}
END_TEST

/* The format rules (image.h): a declared or configured format must match the content; nothing is
 * guessed towards qcow2 for a file whose name says raw. */
START_TEST(test_choose_format)
{
        static const uint8_t qcow2_v3[8] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
        static const uint8_t qcow_v1[8] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 1};
        static const uint8_t mbr[8] = {0xeb, 0x63, 0x90, 0, 0, 0, 0, 0};
        ck_assert_int_eq(qt_image_content_of(qcow2_v3, 8), QT_CONTENT_QCOW2);
        ck_assert_int_eq(qt_image_content_of(qcow_v1, 8), QT_CONTENT_QCOW_MAGIC);
        ck_assert_int_eq(qt_image_content_of(mbr, 8), QT_CONTENT_OTHER);
        ck_assert_int_eq(qt_image_content_of(qcow2_v3, 4), QT_CONTENT_OTHER);

        static const struct {
                const char *path, *declared, *configured;
                enum qt_image_content content;
                const char *want_format; /* NULL: FormatMismatch */
                enum qt_format_source want_source;
        } cases[] = {
            {"/i/vm.qcow2", NULL, NULL, QT_CONTENT_QCOW2, "qcow2", QT_FORMAT_GUESSED},
            {"/i/vm", NULL, NULL, QT_CONTENT_QCOW2, "qcow2", QT_FORMAT_GUESSED},
            {"/i/vm.qcow2", NULL, NULL, QT_CONTENT_OTHER, "", QT_FORMAT_GUESSED},
            {"/i/vm.raw", NULL, NULL, QT_CONTENT_QCOW2, NULL, 0},
            {"/i/vm.IMG", NULL, NULL, QT_CONTENT_QCOW2, NULL, 0},
            {"/i/vm.bin", NULL, NULL, QT_CONTENT_QCOW2, NULL, 0},
            {"/i/vm.raw", NULL, NULL, QT_CONTENT_OTHER, "", QT_FORMAT_GUESSED},
            {"/i/vm.img", "qcow2", NULL, QT_CONTENT_QCOW2, "qcow2", QT_FORMAT_DECLARED},
            {"/i/vm.img", NULL, "qcow2", QT_CONTENT_QCOW2, "qcow2", QT_FORMAT_CONFIGURED},
            {"/i/vm.img", "qcow2", "qcow2", QT_CONTENT_QCOW2, "qcow2", QT_FORMAT_DECLARED},
            {"/i/vm.raw", "raw", NULL, QT_CONTENT_OTHER, "raw", QT_FORMAT_DECLARED},
            {"/i/vm.qcow2", NULL, "raw", QT_CONTENT_OTHER, "raw", QT_FORMAT_CONFIGURED},
            {"/i/vm.raw", "raw", NULL, QT_CONTENT_QCOW2, NULL, 0},
            {"/i/vm.raw", "raw", NULL, QT_CONTENT_QCOW_MAGIC, NULL, 0},
            {"/i/vm.qcow2", NULL, "raw", QT_CONTENT_QCOW2, NULL, 0},
            {"/i/vm.qcow2", "qcow2", NULL, QT_CONTENT_OTHER, NULL, 0},
            {"/i/vm.qcow2", "qcow2", NULL, QT_CONTENT_QCOW_MAGIC, NULL, 0},
            {"/i/vm.qcow2", "qcow2", "raw", QT_CONTENT_QCOW2, NULL, 0},
            {"/i/vm.raw", "raw", "qcow2", QT_CONTENT_OTHER, NULL, 0},
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                struct qt_format_claim claim = {cases[i].declared, cases[i].configured};
                struct qt_error e = {};
                char format[16] = "unset";
                enum qt_format_source source = 99;
                int r = qt_image_choose_format(cases[i].path, &claim, cases[i].content, format,
                                               &source, &e);
                if (!cases[i].want_format) {
                        ck_assert_msg(r < 0 && e.code == QT_ERR_FORMAT_MISMATCH, "case %zu: %d %s",
                                      i, r, e.message);
                        ck_assert_str_eq(format, "unset");
                        continue;
                }
                ck_assert_msg(r == 0, "case %zu: %s", i, e.message);
                ck_assert_str_eq(format, cases[i].want_format);
                ck_assert_int_eq(source, cases[i].want_source);
        }
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("image");
        TCase *tc = tcase_create("info");
        tcase_add_test(tc, test_qcow2_overlay);
        tcase_add_test(tc, test_raw);
        tcase_add_test(tc, test_choose_format);
        tcase_add_test(tc, test_flags_that_refuse);
        tcase_add_test(tc, test_malformed);
        tcase_add_test(tc, test_wrong_types_are_ignored);
        tcase_add_test(tc, test_check_path);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The worker → daemon protocol: what one side emits, the other side must read back exactly. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "check-main.h"
#include "report.h"

/* Emits through a pipe and applies every line to a fresh report, as qtrimd does. */
static void replay(int fd, struct qt_report *into)
{
        char buf[65536];
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        ck_assert_int_gt(n, 0);
        buf[n] = '\0';
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
                const char *property;
                ck_assert_int_eq(qt_report_apply_line(into, line, &property), 0);
        }
}

START_TEST(test_round_trip)
{
        int p[2];
        ck_assert_int_eq(pipe2(p, O_NONBLOCK), 0);
        struct qt_reporter rep = {.fd = p[1]};
        struct qt_fs_result fs = {.name = "p5",
                                  .fstype = "btrfs",
                                  .offset = 1048576,
                                  .size = 1ULL << 33,
                                  .trimmed = 12345,
                                  .state = "skipped",
                                  .message = "cannot mount:\tbad\nsuperblock"};
        struct qt_error err = {.code = QT_ERR_IN_USE, .message = "held by pid 42"};

        qt_emit_phase(&rep, QT_PHASE_TRIM);
        qt_emit_str(&rep, "format", "qcow2");
        qt_emit_str(&rep, "backing-file", "../base image.qcow2");
        qt_emit_str(&rep, "temp-file", "/images/.vm.qcow2.qtrim-a1B2c3");
        qt_emit_u64(&rep, "bytes-before", 10737418240ULL);
        qt_emit_u64(&rep, "converted", 1);
        qt_emit_u64(&rep, "snapshots", 3);
        qt_emit_fs(&rep, &fs);
        qt_emit_phase_time(&rep, QT_PHASE_ATTACH, 250000);
        qt_emit_error(&rep, &err);
        qt_emit_end(&rep);

        struct qt_report got = {};
        replay(p[0], &got);
        ck_assert_int_eq(got.phase, QT_PHASE_TRIM);
        ck_assert_str_eq(got.format, "qcow2");
        ck_assert_str_eq(got.backing_file, "../base image.qcow2");
        ck_assert_str_eq(got.temp_file, "/images/.vm.qcow2.qtrim-a1B2c3");
        ck_assert_uint_eq(got.bytes_before, 10737418240ULL);
        ck_assert(got.converted);
        ck_assert_uint_eq(got.snapshots, 3);
        ck_assert_uint_eq(got.n_fs, 1);
        ck_assert_str_eq(got.fs[0].name, "p5");
        ck_assert_uint_eq(got.fs[0].size, 1ULL << 33);
        ck_assert_uint_eq(got.fs[0].trimmed, 12345);
        /* separators inside a message must not split the line */
        ck_assert_str_eq(got.fs[0].message, "cannot mount: bad superblock");
        ck_assert_uint_eq(got.phase_usec[QT_PHASE_ATTACH], 250000);
        ck_assert_int_eq(got.error.code, QT_ERR_IN_USE);
        ck_assert_str_eq(got.error.message, "held by pid 42");
        ck_assert(got.finished);
        close(p[0]);
        close(p[1]);
}
END_TEST

START_TEST(test_fs_updates_in_place)
{
        struct qt_reporter rep = {.fd = -1};
        struct qt_fs_result fs = {.name = "p1", .state = "found"};
        qt_emit_fs(&rep, &fs);
        strcpy(fs.state, "trimmed");
        fs.trimmed = 99;
        qt_emit_fs(&rep, &fs);
        ck_assert_uint_eq(rep.report.n_fs, 1);
        ck_assert_str_eq(rep.report.fs[0].state, "trimmed");
}
END_TEST

/* A volume's bytes as ranges of the disk: one range, or its extents in the volume's order,
 * from any byte of it. */
START_TEST(test_fs_disk_ranges)
{
        struct qt_range r[QT_FS_EXTENTS_MAX];
        struct qt_fs_result plain = {.offset = 4096, .size = 8192};
        ck_assert_uint_eq(qt_fs_disk_ranges(&plain, 0, r), 1);
        ck_assert_uint_eq(r[0].offset, 4096);
        ck_assert_uint_eq(r[0].size, 8192);
        ck_assert_uint_eq(qt_fs_disk_ranges(&plain, 4096, r), 1);
        ck_assert_uint_eq(r[0].offset, 8192);
        ck_assert_uint_eq(r[0].size, 4096);
        ck_assert_uint_eq(qt_fs_disk_ranges(&plain, 8192, r), 0);
        ck_assert_uint_eq(qt_fs_disk_ranges(&plain, UINT64_MAX, r), 0);

        struct qt_fs_result lv = {.offset = 1000, .size = 600, .n_extents = 3};
        lv.extents[0] = (struct qt_range){1000, 100};
        lv.extents[1] = (struct qt_range){50, 200};
        lv.extents[2] = (struct qt_range){5000, 300};
        ck_assert_uint_eq(qt_fs_disk_ranges(&lv, 0, r), 3);
        ck_assert_uint_eq(r[1].offset, 50);
        ck_assert_uint_eq(r[2].size, 300);
        ck_assert_uint_eq(qt_fs_disk_ranges(&lv, 100, r), 2); /* at a seam */
        ck_assert_uint_eq(r[0].offset, 50);
        ck_assert_uint_eq(qt_fs_disk_ranges(&lv, 150, r), 2);
        ck_assert_uint_eq(r[0].offset, 100);
        ck_assert_uint_eq(r[0].size, 150);
        ck_assert_uint_eq(r[1].offset, 5000);
        ck_assert_uint_eq(qt_fs_disk_ranges(&lv, 599, r), 1);
        ck_assert_uint_eq(r[0].offset, 5299);
        ck_assert_uint_eq(r[0].size, 1);
        ck_assert_uint_eq(qt_fs_disk_ranges(&lv, 600, r), 0);
}
END_TEST

START_TEST(test_property_names)
{
        struct qt_report r = {};
        const char *property;
        ck_assert_int_eq(qt_report_apply_line(&r, "bytes-after\t42", &property), 0);
        ck_assert_str_eq(property, "BytesAfter");
        ck_assert_int_eq(qt_report_apply_line(&r, "progress\t0.5000", &property), 0);
        ck_assert_str_eq(property, "Progress");
        ck_assert_int_eq(qt_report_apply_line(&r, "cluster-size\t65536", &property), 0);
        ck_assert_ptr_null(property); /* known, but not a Job property */
}
END_TEST

START_TEST(test_malformed_lines)
{
        static const char *const bad[] = {
            "",
            "bogus\t1",
            "bytes-before",
            "bytes-before\t-1",
            "bytes-before\t1x",
            "bytes-before\t99999999999999999999",
            "progress\t1.5",
            "progress\tnan",
            "phase\tnope",
            "fs\tp1\text4\t0\t1",
            "fs\tp1\text4\tx\t1\t0\tfound\t",
            "phase-time\ttrim",
        };
        struct qt_report r = {};
        const char *property;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(qt_report_apply_line(&r, bad[i], &property) == -EBADMSG,
                              "accepted \"%s\"", bad[i]);
}
END_TEST

START_TEST(test_nothing_after_end)
{
        struct qt_report r = {};
        const char *property;
        ck_assert_int_eq(qt_report_apply_line(&r, "end", &property), 0);
        ck_assert_int_eq(qt_report_apply_line(&r, "bytes-after\t42", &property), 0);
        ck_assert_uint_eq(r.bytes_after, 0);
}
END_TEST

START_TEST(test_progress_is_monotonic_and_bounded)
{
        struct qt_reporter rep = {.fd = -1};
        qt_emit_phase(&rep, QT_PHASE_TRIM);
        double start = rep.report.progress;
        qt_emit_progress(&rep, 0.5);
        ck_assert(rep.report.progress > start);
        qt_emit_progress(&rep, 7.0);
        ck_assert(rep.report.progress <= 1.0);
        ck_assert_double_eq_tol(qt_phase_progress_start(QT_PHASE_DONE), 1.0, 1e-9);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("report");
        TCase *tc = tcase_create("protocol");
        tcase_add_test(tc, test_round_trip);
        tcase_add_test(tc, test_fs_updates_in_place);
        tcase_add_test(tc, test_property_names);
        tcase_add_test(tc, test_malformed_lines);
        tcase_add_test(tc, test_nothing_after_end);
        tcase_add_test(tc, test_fs_disk_ranges);
        tcase_add_test(tc, test_progress_is_monotonic_and_bounded);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

/* SPDX-License-Identifier: GPL-2.0-or-later */
/* layout.h: where a swap area's header ends, where a GPT's backup begins, and which space
 * outside the partitions is a gap. The GPT comes from sfdisk, not from qtrim's idea of it. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check-main.h"
#include "layout.h"
#include "util.h"

START_TEST(test_swap_header)
{
        _cleanup_free_ uint8_t *buf = calloc(1, QT_SWAP_HEADER_READ_SIZE);
        uint64_t header = 0;
        ck_assert_int_eq(qt_swap_parse(buf, QT_SWAP_HEADER_READ_SIZE, &header), QT_SWAP_NONE);

        memcpy(buf + 4096 - 10, "SWAPSPACE2", 10);
        ck_assert_int_eq(qt_swap_parse(buf, QT_SWAP_HEADER_READ_SIZE, &header), QT_SWAP_AREA);
        ck_assert_uint_eq(header, 4096);
        /* Fewer bytes than the page: no signature can be seen. */
        ck_assert_int_eq(qt_swap_parse(buf, 4095, &header), QT_SWAP_NONE);

        /* A 64 KiB page size (aarch64, ppc64le guests). */
        memset(buf, 0, QT_SWAP_HEADER_READ_SIZE);
        memcpy(buf + 65536 - 10, "SWAPSPACE2", 10);
        ck_assert_int_eq(qt_swap_parse(buf, QT_SWAP_HEADER_READ_SIZE, &header), QT_SWAP_AREA);
        ck_assert_uint_eq(header, 65536);

        /* Hibernation images, with and without NUL padding. */
        static const char *const hibernated[] = {"S1SUSPEND\0", "S2SUSPEND", "ULSUSPEND",
                                                 "LINHIB0001"};
        for (size_t i = 0; i < ELEMENTSOF(hibernated); i++) {
                memset(buf, 0, QT_SWAP_HEADER_READ_SIZE);
                memcpy(buf + 4096 - 10, hibernated[i], strlen(hibernated[i]));
                ck_assert_int_eq(qt_swap_parse(buf, QT_SWAP_HEADER_READ_SIZE, &header),
                                 QT_SWAP_HIBERNATED);
        }
}
END_TEST

/* A GPT as sfdisk writes it on a 64 MiB file: the backup entries start 33 sectors before the
 * end, and last_usable is just before them. */
START_TEST(test_gpt_tail)
{
        char path[] = "/tmp/qtrim-test-layout-XXXXXX";
        int fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, 64 << 20), 0);
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "printf 'label: gpt\\nsize=16MiB\\n' | sfdisk -q %s", path);
        int rc = system(cmd);
        uint8_t hdr[QT_GPT_HEADER_READ_SIZE];
        ssize_t got = pread(fd, hdr, sizeof(hdr), 0);
        close(fd);
        unlink(path);
        ck_assert_int_eq(rc, 0);
        ck_assert_int_eq(got, (ssize_t)sizeof(hdr));

        uint64_t tail = 0;
        ck_assert(qt_gpt_tail(hdr, sizeof(hdr), 64 << 20, &tail));
        ck_assert_uint_eq(tail, (64ULL << 20) - 33 * 512);
        /* The disk is smaller than the header says (a hostile or stale header): refused. */
        ck_assert(!qt_gpt_tail(hdr, sizeof(hdr), 32 << 20, &tail));
        /* A damaged header (its CRC fails). */
        hdr[512 + 40] ^= 1;
        ck_assert(!qt_gpt_tail(hdr, sizeof(hdr), 64 << 20, &tail));
        /* No GPT. */
        memset(hdr, 0, sizeof(hdr));
        ck_assert(!qt_gpt_tail(hdr, sizeof(hdr), 64 << 20, &tail));
}
END_TEST

#define MiB (1ULL << 20)

START_TEST(test_gaps)
{
        struct qt_range gaps[QT_GAPS_MAX];
        /* 1 MiB before p1 is never a gap; 3 MiB between p1 and p2; 4 MiB at the end. */
        struct qt_range used[] = {{10 * MiB, 5 * MiB}, {1 * MiB, 6 * MiB}};
        size_t n = qt_layout_gaps(used, 2, 19 * MiB, gaps);
        ck_assert_uint_eq(n, 2);
        ck_assert_uint_eq(gaps[0].offset, 7 * MiB);
        ck_assert_uint_eq(gaps[0].size, 3 * MiB);
        ck_assert_uint_eq(gaps[1].offset, 15 * MiB);
        ck_assert_uint_eq(gaps[1].size, 4 * MiB);

        /* Overlapping and nested ranges (an extended partition and its logical ones) are one
         * used area; a range past the end is cut at the end. */
        struct qt_range nested[] = {
            {1 * MiB, 10 * MiB}, {2 * MiB, 3 * MiB}, {12 * MiB, UINT64_MAX}};
        n = qt_layout_gaps(nested, 3, 20 * MiB, gaps);
        ck_assert_uint_eq(n, 1);
        ck_assert_uint_eq(gaps[0].offset, 11 * MiB);
        ck_assert_uint_eq(gaps[0].size, 1 * MiB);

        /* Small and unaligned gaps: aligned inwards, dropped under QT_GAP_MIN. */
        struct qt_range small[] = {{1 * MiB, 1 * MiB - 512}, {2 * MiB + 4096, 1 * MiB}};
        n = qt_layout_gaps(small, 2, 3 * MiB + 4096 + 1000, gaps);
        ck_assert_uint_eq(n, 0);

        /* No partitions: no gaps. */
        ck_assert_uint_eq(qt_layout_gaps(NULL, 0, 20 * MiB, gaps), 0);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("layout");
        TCase *tc = tcase_create("layout");
        tcase_add_test(tc, test_swap_header);
        tcase_add_test(tc, test_gpt_tail);
        tcase_add_test(tc, test_gaps);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

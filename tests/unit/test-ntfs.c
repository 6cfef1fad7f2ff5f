/* SPDX-License-Identifier: GPL-2.0-or-later */
/* ntfs.h: to be written. */
#include <check.h>
#include <errno.h>

#include "check-main.h"
#include "ntfs.h"

static int read_none(void *ctx, void *buf, size_t len, uint64_t offset)
{
        return -EIO;
}

START_TEST(test_placeholder)
{
        char why[QT_FREEMAP_WHY_MAX];
        struct qt_volume_reader v = {read_none, NULL, 1 << 20};
        ck_assert_int_lt(qt_ntfs_free_ranges(&v, NULL, NULL, why, sizeof(why)), 0);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("ntfs");
        TCase *tc = tcase_create("ntfs");
        tcase_add_test(tc, test_placeholder);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

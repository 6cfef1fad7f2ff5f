/* SPDX-License-Identifier: GPL-2.0-or-later */
/* estimate.h's arithmetic: what the image holds of a range, what freeing it gives back in whole
 * clusters, free ranges that touch counted as one, and a volume in two places of the disk. The
 * read-only mounts are checked on real images by tests/integration/estimate.sh. */
#include <check.h>

#include "check-main.h"
#include "estimate.h"

#define KiB (1024ULL)
#define C   (64 * KiB) /* a qcow2 cluster */

/* Clusters 0-3 and 8-9 allocated, given as qemu-img map gives them (ascending, some adjacent). */
static void allocate(struct qt_allocation *a)
{
        *a = (struct qt_allocation){.cluster = C};
        qt_allocation_on_extent(0, 2 * C, a);
        qt_allocation_on_extent(2 * C, 2 * C, a);
        qt_allocation_on_extent(8 * C, 2 * C, a);
}

START_TEST(test_held_and_reclaimable)
{
        struct qt_allocation a;
        allocate(&a);
        ck_assert_uint_eq(a.n, 2); /* adjacent ranges merged */
        ck_assert_uint_eq(qt_allocation_held(&a, 0, 16 * C), 6 * C);
        ck_assert_uint_eq(qt_allocation_held(&a, C / 2, C), C);
        ck_assert_uint_eq(qt_allocation_held(&a, 4 * C, 4 * C), 0);
        ck_assert_uint_eq(qt_allocation_held(&a, 9 * C, 10 * C), C);
        /* Only whole clusters: half a cluster at either end gives nothing back. */
        ck_assert_uint_eq(qt_allocation_reclaimable(&a, C / 2, 3 * C), 2 * C);
        ck_assert_uint_eq(qt_allocation_reclaimable(&a, C / 2, C), 0);
        ck_assert_uint_eq(qt_allocation_reclaimable(&a, 0, 16 * C), 6 * C);
        qt_allocation_done(&a);
}
END_TEST

START_TEST(test_not_ascending)
{
        struct qt_allocation a;
        allocate(&a);
        qt_allocation_on_extent(C, C, &a);
        ck_assert(a.unknown);
        qt_allocation_done(&a);
}
END_TEST

/* Two free ranges that meet in the middle of cluster 1 free it together; each alone would not. */
START_TEST(test_tally_merges)
{
        struct qt_allocation a;
        allocate(&a);
        struct qt_fs_result fs = {.offset = 0, .size = 16 * C};
        struct qt_free_tally t = {.alloc = &a, .fs = &fs};
        ck_assert_int_eq(qt_free_tally_add(&t, C / 2, C), 0);
        ck_assert_int_eq(qt_free_tally_add(&t, C + C / 2, C), 0);
        qt_free_tally_add(&t, 9 * C, 4 * KiB); /* part of a cluster */
        qt_free_tally_add(&t, 15 * C, 4 * C);  /* past the volume's end: cut */
        qt_free_tally_end(&t);
        ck_assert_uint_eq(t.free, 2 * C + 4 * KiB + C);
        ck_assert_uint_eq(t.reclaimable, C); /* cluster 1 only: 0 and 2 are half free */
        qt_allocation_done(&a);
}
END_TEST

/* An LV in two places: volume bytes [0, 2C) are disk [8C, 10C), the rest disk [0, 2C). */
START_TEST(test_volume_segments)
{
        struct qt_allocation a;
        allocate(&a);
        struct qt_fs_result fs = {.offset = 8 * C, .size = 4 * C, .n_extents = 2};
        fs.extents[0] = (struct qt_range){8 * C, 2 * C};
        fs.extents[1] = (struct qt_range){0, 2 * C};
        ck_assert_uint_eq(qt_volume_held(&a, &fs, 0), 4 * C);
        ck_assert_uint_eq(qt_volume_reclaimable(&a, &fs, C + C / 2), 2 * C);
        struct qt_free_tally t = {.alloc = &a, .fs = &fs};
        qt_free_tally_add(&t, C, 2 * C); /* across the seam: a cluster on each side */
        qt_free_tally_end(&t);
        ck_assert_uint_eq(t.reclaimable, 2 * C);
        qt_allocation_done(&a);
}
END_TEST

static Suite *estimate_suite(void)
{
        Suite *s = suite_create("estimate");
        TCase *tc = tcase_create("core");
        tcase_add_test(tc, test_held_and_reclaimable);
        tcase_add_test(tc, test_not_ascending);
        tcase_add_test(tc, test_tally_merges);
        tcase_add_test(tc, test_volume_segments);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(estimate_suite)

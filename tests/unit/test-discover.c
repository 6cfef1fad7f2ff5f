/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Discovery (discover.c) on damaged and hostile partition tables, read straight from raw disk
 * files: entries that share sectors (one starting inside another, two identical ones, in MBR and
 * in GPT) must be reported and never handed to the trim, while their neighbours and ordinary
 * tables (adjacent partitions, an extended container around its logical partitions) are not
 * affected. sfdisk refuses to write overlapping entries, so the tests edit them in: MBR entries
 * directly, GPT entries with both headers' CRCs recomputed (primary and backup).
 */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check-main.h"
#include "discover.h"
#include "fixtures.h"
#include "util.h"

#define SECTOR 512ULL

#define OVERLAP(p) "partition overlaps partition " p
#define PAST_END   "partition extends past the end of the disk"

struct part {
        const char *name;
        uint64_t start, sectors;
        const char *fstype; /* NULL: not checked (whatever lies at a bogus start) */
        const char *message;
};

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
        for (unsigned i = 0; i < bytes; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned bytes)
{
        uint64_t v = 0;
        for (unsigned i = bytes; i-- > 0;)
                v = v << 8 | p[i];
        return v;
}

static void read_at(int fd, void *buf, size_t len, uint64_t off)
{
        ck_assert_int_eq(pread(fd, buf, len, (off_t)off), (ssize_t)len);
}

static void write_at(int fd, const void *buf, size_t len, uint64_t off)
{
        ck_assert_int_eq(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
}

static int open_disk(const char *name)
{
        char path[PATH_MAX];
        int fd = open(fx_path(path, name), O_RDWR | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %m", path);
        return fd;
}

/* Sets MBR primary entry index (0..3) to start/sectors. */
static void mbr_set(const char *name, unsigned index, uint64_t start, uint64_t sectors)
{
        uint8_t entry[16];
        int fd = open_disk(name);
        read_at(fd, entry, sizeof(entry), 446 + 16 * index);
        put_le(entry + 8, start, 4);
        put_le(entry + 12, sectors, 4);
        write_at(fd, entry, sizeof(entry), 446 + 16 * index);
        close(fd);
}

/* The CRC-32 GPT uses (IEEE 802.3, reflected). */
static uint32_t crc32(const uint8_t *p, size_t len)
{
        uint32_t crc = 0xffffffffu;
        while (len--) {
                crc ^= *p++;
                for (int k = 0; k < 8; k++)
                        crc = crc >> 1 ^ (0xedb88320u & -(crc & 1));
        }
        return ~crc;
}

/* Sets GPT entry index (0-based) to start/sectors in both copies of the table (the header at LBA
 * 1 and the backup at the last LBA, each naming its own entry array) and reseals both. */
static void gpt_set(const char *name, unsigned index, uint64_t start, uint64_t sectors)
{
        int fd = open_disk(name);
        struct stat st;
        ck_assert_int_eq(fstat(fd, &st), 0);
        uint64_t headers[] = {1, (uint64_t)st.st_size / SECTOR - 1};
        for (size_t h = 0; h < ELEMENTSOF(headers); h++) {
                uint8_t hdr[SECTOR];
                read_at(fd, hdr, sizeof(hdr), headers[h] * SECTOR);
                ck_assert_msg(memcmp(hdr, "EFI PART", 8) == 0, "%s: no GPT header at LBA %llu",
                              name, (unsigned long long)headers[h]);
                uint32_t hdr_size = (uint32_t)get_le(hdr + 12, 4);
                uint64_t entries_lba = get_le(hdr + 72, 8);
                uint32_t n_entries = (uint32_t)get_le(hdr + 80, 4);
                uint32_t entry_size = (uint32_t)get_le(hdr + 84, 4);
                ck_assert(hdr_size >= 92 && hdr_size <= SECTOR && index < n_entries);
                ck_assert(entry_size >= 128 && n_entries * entry_size <= 64 * 1024);

                size_t len = (size_t)n_entries * entry_size;
                _cleanup_free_ uint8_t *entries = malloc(len);
                ck_assert(entries);
                read_at(fd, entries, len, entries_lba * SECTOR);
                put_le(entries + index * entry_size + 32, start, 8);
                put_le(entries + index * entry_size + 40, start + sectors - 1, 8);
                write_at(fd, entries, len, entries_lba * SECTOR);

                put_le(hdr + 88, crc32(entries, len), 4);
                put_le(hdr + 16, 0, 4);
                put_le(hdr + 16, crc32(hdr, hdr_size), 4);
                write_at(fd, hdr, sizeof(hdr), headers[h] * SECTOR);
        }
        close(fd);
}

static void check_discover(const char *name, const char *pttype, const struct part *want,
                           size_t n_want)
{
        char path[PATH_MAX], got_pttype[16];
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        struct qt_error e = {};
        struct stat st;
        size_t n = 0;

        ck_assert_int_eq(stat(fx_path(path, name), &st), 0);
        ck_assert_msg(qt_discover(path, (uint64_t)st.st_size, got_pttype, fs, &n, &e) == 0,
                      "discover %s: %s", name, e.message);
        ck_assert_str_eq(got_pttype, pttype);
        ck_assert_uint_eq(n, n_want);
        for (size_t i = 0; i < n; i++) {
                ck_assert_str_eq(fs[i].name, want[i].name);
                ck_assert_uint_eq(fs[i].offset, want[i].start * SECTOR);
                ck_assert_uint_eq(fs[i].size, want[i].sectors * SECTOR);
                if (want[i].fstype)
                        ck_assert_str_eq(fs[i].fstype, want[i].fstype);
                ck_assert_str_eq(fs[i].state, "found");
                ck_assert_str_eq(fs[i].message, want[i].message);
        }
}

/* Three primaries with ext4 on p1 and p3; p2 is then moved to start 6 MiB into p1. */
static const char mbr_script[] = "label: dos\n"
                                 "unit: sectors\n"
                                 "start=2048, size=20480, type=83\n"
                                 "start=22528, size=20480, type=83\n"
                                 "start=43008, size=16384, type=83\n";

static void make_images(void)
{
        fx_scratch_setup();
        fx_make_partitioned("mbr.raw", 32, mbr_script);
        fx_put_filesystem("mbr.raw", 2048 * SECTOR, 20480 * SECTOR, "mkfs.ext4 -q -F", NULL);
        fx_put_filesystem("mbr.raw", 43008 * SECTOR, 16384 * SECTOR, "mkfs.ext4 -q -F", NULL);

        fx_make_partitioned("gpt.raw", 32,
                            "label: gpt\n"
                            "unit: sectors\n"
                            "start=2048, size=16384\n"
                            "start=18432, size=8192\n"
                            "start=26624, size=8192\n");
        fx_put_filesystem("gpt.raw", 2048 * SECTOR, 16384 * SECTOR, "mkfs.ext4 -q -F", NULL);

        fx_make_partitioned("extended.raw", 32,
                            "label: dos\n"
                            "unit: sectors\n"
                            "start=2048, size=8192, type=83\n"
                            "start=10240, size=43008, type=5\n"
                            "start=12288, size=6144, type=83\n"
                            "start=20480, size=32768, type=83\n");
}

START_TEST(test_mbr_one_starts_inside_another)
{
        fx_sh("cp mbr.raw t.raw");
        mbr_set("t.raw", 1, 2048 + 12288, 20480);
        const struct part want[] = {
            {"p1", 2048, 20480, "ext4", OVERLAP("p2")},
            {"p2", 14336, 20480, NULL, OVERLAP("p1")},
            {"p3", 43008, 16384, "ext4", ""},
            {"gap1", 34816, 8192, "", ""},
            {"gap2", 59392, 6144, "", ""},
        };
        check_discover("t.raw", "dos", want, ELEMENTSOF(want));
}
END_TEST

START_TEST(test_mbr_duplicate_entries)
{
        fx_sh("cp mbr.raw t.raw");
        mbr_set("t.raw", 2, 2048, 20480);
        const struct part want[] = {
            {"p1", 2048, 20480, "ext4", OVERLAP("p3")},
            {"p2", 22528, 20480, "", ""},
            {"p3", 2048, 20480, "ext4", OVERLAP("p1")},
            {"gap1", 43008, 22528, "", ""},
        };
        check_discover("t.raw", "dos", want, ELEMENTSOF(want));
}
END_TEST

/* One sector shared is enough. */
START_TEST(test_mbr_last_sector_shared)
{
        fx_sh("cp mbr.raw t.raw");
        mbr_set("t.raw", 1, 22527, 20481);
        const struct part want[] = {
            {"p1", 2048, 20480, "ext4", OVERLAP("p2")},
            {"p2", 22527, 20481, NULL, OVERLAP("p1")},
            {"p3", 43008, 16384, "ext4", ""},
            {"gap1", 59392, 6144, "", ""},
        };
        check_discover("t.raw", "dos", want, ELEMENTSOF(want));
}
END_TEST

/* A partition past the end is never mounted, so the one it overlaps inside the disk is fine. */
START_TEST(test_mbr_overlap_past_end)
{
        fx_sh("cp mbr.raw t.raw");
        mbr_set("t.raw", 2, 40960, 40960);
        const struct part want[] = {
            {"p1", 2048, 20480, "ext4", ""},
            {"p2", 22528, 20480, "", ""},
            {"p3", 40960, 40960, "", PAST_END},
        };
        check_discover("t.raw", "dos", want, ELEMENTSOF(want));
}
END_TEST

START_TEST(test_gpt_adjacent_is_not_overlap)
{
        const struct part want[] = {
            {"p1", 2048, 16384, "ext4", ""},
            {"p2", 18432, 8192, "", ""},
            {"p3", 26624, 8192, "", ""},
            /* up to the backup GPT: 33 sectors before the end */
            {"gap1", 34816, 65536 - 33 - 34816, "", ""},
        };
        check_discover("gpt.raw", "gpt", want, ELEMENTSOF(want));
}
END_TEST

START_TEST(test_gpt_entries_overlap)
{
        fx_sh("cp gpt.raw t.raw");
        gpt_set("t.raw", 2, 22528, 8192);
        /* The table is still valid for an administrator's tools: both CRCs were resealed. */
        fx_sh("sfdisk -d t.raw | grep -q 'start= *22528, size= *8192'");
        const struct part want[] = {
            {"p1", 2048, 16384, "ext4", ""},
            {"p2", 18432, 8192, "", OVERLAP("p3")},
            {"p3", 22528, 8192, "", OVERLAP("p2")},
            {"gap1", 30720, 65536 - 33 - 30720, "", ""},
        };
        check_discover("t.raw", "gpt", want, ELEMENTSOF(want));
}
END_TEST

/* The container holds its logical partitions: not an overlap. Its EBRs are no gap. */
START_TEST(test_extended_container_is_not_overlap)
{
        const struct part want[] = {
            {"p1", 2048, 8192, "", ""},
            {"p5", 12288, 6144, "", ""},
            {"p6", 20480, 32768, "", ""},
            /* Inside the extended partition, around the EBRs that start it and precede p6 */
            {"gap1", 10241, 2047, "", ""},
            {"gap2", 18433, 2047, "", ""},
            {"gap3", 53248, 12288, "", ""},
        };
        check_discover("extended.raw", "dos", want, ELEMENTSOF(want));
}
END_TEST

static Suite *discover_suite(void)
{
        Suite *s = suite_create("discover");
        TCase *tc = tcase_create("tables");
        tcase_add_unchecked_fixture(tc, make_images, fx_scratch_teardown);
        tcase_set_timeout(tc, 20);
        tcase_add_test(tc, test_mbr_one_starts_inside_another);
        tcase_add_test(tc, test_mbr_duplicate_entries);
        tcase_add_test(tc, test_mbr_last_sector_shared);
        tcase_add_test(tc, test_mbr_overlap_past_end);
        tcase_add_test(tc, test_gpt_adjacent_is_not_overlap);
        tcase_add_test(tc, test_gpt_entries_overlap);
        tcase_add_test(tc, test_extended_container_is_not_overlap);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(discover_suite)

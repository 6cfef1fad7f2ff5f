/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The device-level modules on real images, with real qemu-nbd, FUSE, libblkid, loop devices and
 * mounts: the bridge (nbd-fuse.c), discovery (discover.c), loop devices (loopdev.c) and the trim
 * (trim.c). Each test that mounts works in a private mount namespace, as qtrim's worker does,
 * and checks that nothing is left mounted, attached or running when it is done.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "discover.h"
#include "fixtures.h"
#include "loopdev.h"
#include "nbd-fuse.h"
#include "trim.h"
#include "util.h"

#define MIB    (1ULL << 20)
#define SECTOR 512ULL

/* A partition as it was given to sfdisk (sectors), and what discovery must say of it. */
struct part {
        const char *name;
        uint64_t start, sectors;
        const char *fstype;
        const char *message;
};

/* MBR: a primary ext4, then an extended partition holding a logical ext4 and a logical btrfs. */
#define MBR_DISK_MIB 160
static const char mbr_script[] = "label: dos\n"
                                 "label-id: 0x0a7b1e00\n"
                                 "unit: sectors\n"
                                 "start=2048, size=20480, type=83\n"
                                 "start=22528, size=290816, type=5\n"
                                 "start=24576, size=20480, type=83\n"
                                 "start=47104, size=262144, type=83\n";
static const struct part mbr_parts[] = {
    {"p1", 2048, 20480, "ext4", ""},
    {"p5", 24576, 20480, "ext4", ""},
    {"p6", 47104, 262144, "btrfs", ""},
    /* Outside the partitions: after each EBR, and after p6 to the end of the disk. */
    {"gap1", 22529, 2047, "", ""},
    {"gap2", 45057, 2047, "", ""},
    {"gap3", 309248, 18432, "", ""},
};

/* GPT: an ext4 holding deleted data, a swap area, a filesystem qtrim does not trim, nothing. */
#define GPT_DISK_MIB 32
static const char gpt_script[] = "label: gpt\n"
                                 "label-id: 5A1E0C2D-3B4F-4A6E-8D7C-9F0E1D2C3B4A\n"
                                 "unit: sectors\n"
                                 "start=2048, size=32768\n"
                                 "start=34816, size=16384\n"
                                 "start=51200, size=8192\n"
                                 "start=59392, size=4096\n";
static const struct part gpt_parts[] = {
    {"p1", 2048, 32768, "ext4", ""},
    {"p2", 34816, 16384, "swap", ""},
    {"p3", 51200, 8192, "minix", ""},
    {"p4", 59392, 4096, "", ""},
    {"gap1", 63488, 65536 - 33 - 63488, "", ""}, /* up to the backup GPT */
};
/* Written to the ext4 and deleted again: the space the trim must give back. */
#define JUNK_BYTES (6 * MIB)
/* What mounting and unmounting it may write where the image had holes. */
#define MOUNT_WRITES_MAX (64 * 1024)

/* A table written for a 32 MiB disk whose file was then cut to 12 MiB: p2 runs past the end, p3
 * starts past it. */
#define PAST_END_DISK_MIB 12
static const char past_end_script[] = "label: dos\n"
                                      "label-id: 0x51a7e000\n"
                                      "unit: sectors\n"
                                      "start=2048, size=8192, type=83\n"
                                      "start=10240, size=20480, type=83\n"
                                      "start=57344, size=8192, type=83\n";
static const struct part past_end_parts[] = {
    {"p1", 2048, 8192, "ext4", ""},
    {"p2", 10240, 20480, "", "partition extends past the end of the disk"},
    {"p3", 57344, 8192, "", "partition extends past the end of the disk"},
};

#define WHOLE_DISK_MIB 300 /* the least mkfs.xfs takes */

static void put_partition_fs(const char *image, const struct part *p, const char *mkfs,
                             const char *then)
{
        fx_put_filesystem(image, p->start * SECTOR, p->sectors * SECTOR, mkfs, then);
}

/* Unchecked fixture: every image once, in the parent; tests that write work on copies. */
static void make_images(void)
{
        fx_scratch_setup();

        fx_make_partitioned("mbr.raw", MBR_DISK_MIB, mbr_script);
        put_partition_fs("mbr.raw", &mbr_parts[0], "mkfs.ext4 -q -F", NULL);
        put_partition_fs("mbr.raw", &mbr_parts[1], "mkfs.ext4 -q -F", NULL);
        put_partition_fs("mbr.raw", &mbr_parts[2], "mkfs.btrfs -q -f", NULL);
        fx_sh("qemu-img convert -f raw -O qcow2 mbr.raw mbr.qcow2 && rm mbr.raw");

        fx_make_partitioned("gpt.raw", GPT_DISK_MIB, gpt_script);
        /* The junk is written at mkfs time and deleted with debugfs: no mount needed. */
        fx_sh("mkdir junk && yes qtrim | head -c %llu >junk/junk.bin", JUNK_BYTES);
        put_partition_fs("gpt.raw", &gpt_parts[0], "mkfs.ext4 -q -F -b 4096 -d junk",
                         "debugfs -w -R 'rm junk.bin' \"$fs\" && rm -r junk");
        put_partition_fs("gpt.raw", &gpt_parts[1], "mkswap", NULL);
        put_partition_fs("gpt.raw", &gpt_parts[2], "mkfs.minix", NULL);

        fx_make_partitioned("past-end.raw", 32, past_end_script);
        put_partition_fs("past-end.raw", &past_end_parts[0], "mkfs.ext4 -q -F", NULL);
        fx_sh("truncate -s %uM past-end.raw", PAST_END_DISK_MIB);

        fx_sh("truncate -s %uM whole.raw && mkfs.xfs -q -f whole.raw && "
              "qemu-img convert -f raw -O qcow2 whole.raw whole.qcow2 && rm whole.raw",
              WHOLE_DISK_MIB);
}

/* The bridge as the worker sets it up: private namespace, tmpfs, <tmpfs>/fuse/disk. */
struct bridge {
        char ns[PATH_MAX];
        char mountpoint[PATH_MAX];
        struct qt_nbd_fuse *b;
        const char *disk;
};

static void attach(struct bridge *br, const char *name, const char *format, bool read_only)
{
        char image[PATH_MAX], disk[PATH_MAX], fstype[64];
        struct qt_error e = {};

        fx_enter_private_namespace(br->ns);
        fx_join(br->mountpoint, br->ns, "fuse");
        ck_assert_int_eq(mkdir(br->mountpoint, 0700), 0);
        ck_assert_msg(qt_nbd_fuse_attach(fx_path(image, name), format, read_only, br->mountpoint,
                                         &br->b, &e) == 0,
                      "attach %s: %s", name, e.message);
        ck_assert(!qt_error_is_set(&e));

        br->disk = qt_nbd_fuse_disk_path(br->b);
        ck_assert_str_eq(br->disk, fx_join(disk, br->mountpoint, "disk"));
        ck_assert(fx_is_mount_point(0, br->mountpoint, fstype));
        ck_assert_str_eq(fstype, "fuse.qtrim");
        /* The test runner, in the host's namespace, never sees it. */
        ck_assert(!fx_is_mount_point(getppid(), br->mountpoint, NULL));
        /* The FUSE server, a process of its own (qemu-nbd is its child). */
        ck_assert_uint_eq(fx_count_children("qtrim-fuse"), 1);
        ck_assert_uint_eq(fx_count_children("qemu-nbd"), 0);
}

/* Detaches and checks that the FUSE mount and qemu-nbd are gone, reaped, not a zombie left. */
static void detach(struct bridge *br)
{
        struct qt_error e = {};
        ck_assert_msg(qt_nbd_fuse_detach(br->b, &e) == 0, "detach: %s", e.message);
        br->b = NULL;
        ck_assert(!fx_is_mount_point(0, br->mountpoint, NULL));
        ck_assert_uint_eq(fx_count_children(NULL), 0);
        ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
        ck_assert_int_eq(errno, ECHILD);
}

static void discover(struct bridge *br, const char *pttype, const struct part *want, size_t n_want,
                     struct qt_fs_result fs[QT_MAX_FILESYSTEMS])
{
        char got_pttype[16];
        size_t n = 0;
        struct qt_error e = {};
        ck_assert_msg(qt_discover(br->disk, qt_nbd_fuse_size(br->b), got_pttype, fs, &n, &e) == 0,
                      "discover: %s", e.message);
        ck_assert_str_eq(got_pttype, pttype);
        ck_assert_uint_eq(n, n_want);
        for (size_t i = 0; i < n; i++) {
                ck_assert_str_eq(fs[i].name, want[i].name);
                ck_assert_uint_eq(fs[i].offset, want[i].start * SECTOR);
                ck_assert_uint_eq(fs[i].size, want[i].sectors * SECTOR);
                ck_assert_str_eq(fs[i].fstype, want[i].fstype);
                ck_assert_str_eq(fs[i].state, "found");
                ck_assert_str_eq(fs[i].message, want[i].message);
                ck_assert_uint_eq(fs[i].trimmed, 0);
        }
}

START_TEST(test_discover_mbr_logical)
{
        struct bridge br = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];

        attach(&br, "mbr.qcow2", "qcow2", true);
        ck_assert_uint_eq(qt_nbd_fuse_size(br.b), MBR_DISK_MIB * MIB);
        /* Read-only means no writer gets in, not even root. */
        int fd = open(br.disk, O_RDWR | O_CLOEXEC), err = errno;
        if (fd >= 0)
                close(fd); /* never fail holding the disk open: see the read-write test */
        ck_assert_int_eq(fd, -1);
        ck_assert_int_eq(err, EROFS);
        /* No p2: the extended partition is a container, not a filesystem. */
        discover(&br, "dos", mbr_parts, ELEMENTSOF(mbr_parts), fs);
        detach(&br);
}
END_TEST

START_TEST(test_discover_gpt)
{
        struct bridge br = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];

        attach(&br, "gpt.raw", "raw", true);
        ck_assert_uint_eq(qt_nbd_fuse_size(br.b), GPT_DISK_MIB * MIB);
        discover(&br, "gpt", gpt_parts, ELEMENTSOF(gpt_parts), fs);
        detach(&br);
}
END_TEST

START_TEST(test_discover_whole_disk)
{
        static const struct part whole[] = {{"disk", 0, WHOLE_DISK_MIB * MIB / SECTOR, "xfs", ""}};
        struct bridge br = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];

        attach(&br, "whole.qcow2", "qcow2", true);
        discover(&br, "none", whole, ELEMENTSOF(whole), fs);
        detach(&br);
}
END_TEST

START_TEST(test_discover_partition_past_end)
{
        struct bridge br = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];

        attach(&br, "past-end.raw", "raw", true);
        ck_assert_uint_eq(qt_nbd_fuse_size(br.b), PAST_END_DISK_MIB * MIB);
        discover(&br, "dos", past_end_parts, ELEMENTSOF(past_end_parts), fs);
        detach(&br);
}
END_TEST

/* A file of size bytes, every byte written (allocated), byte i = fill or fx_pattern(i). */
static void write_file(const char *path, uint64_t size, int fill)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        static uint8_t buf[MIB];
        for (uint64_t pos = 0; pos < size; pos += sizeof(buf)) {
                for (size_t i = 0; i < sizeof(buf); i++)
                        buf[i] = fill >= 0 ? (uint8_t)fill : fx_pattern(pos + i);
                ck_assert_int_eq(pwrite(fd, buf, sizeof(buf), (off_t)pos), (ssize_t)sizeof(buf));
        }
        ck_assert_int_eq(fsync(fd), 0);
        ck_assert_int_eq(close(fd), 0);
}

static bool all_zero(const uint8_t *buf, size_t len)
{
        for (size_t i = 0; i < len; i++)
                if (buf[i])
                        return false;
        return true;
}

START_TEST(test_bridge_writes_and_punches_through)
{
        enum { LEN = 100000, HOLE = 4 * MIB, HOLE_LEN = MIB };
        const off_t at = 1234567; /* odd, and across page and cluster boundaries */
        static uint8_t pattern[LEN], back[HOLE_LEN];
        char image[PATH_MAX];
        struct bridge br = {};

        write_file(fx_path(image, "rw.raw"), 8 * MIB, 0x5a);
        uint64_t allocated = fx_allocated(image);
        for (size_t i = 0; i < LEN; i++)
                pattern[i] = fx_pattern(i);

        /* All the I/O through the disk first, the assertions once it is closed: a process that
         * ends holding a file of its own FUSE mount may wait for itself forever. */
        attach(&br, "rw.raw", "raw", false);
        int fd = open(br.disk, O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ssize_t wrote = pwrite(fd, pattern, LEN, at);
        int synced = fsync(fd);
        ssize_t read_back = pread(fd, back, LEN, at);
        bool same = read_back == LEN && memcmp(back, pattern, LEN) == 0;
        int punched = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, HOLE, HOLE_LEN);
        ssize_t read_hole = pread(fd, back, HOLE_LEN, HOLE);
        bool zeros = read_hole == HOLE_LEN && all_zero(back, HOLE_LEN);
        /* Writing past the end of the disk is refused, not extended. */
        ssize_t past_end = pwrite(fd, pattern, 1, 8 * MIB);
        int past_end_errno = errno;
        ck_assert_int_eq(close(fd), 0);

        ck_assert_int_eq(wrote, LEN);
        ck_assert_int_eq(synced, 0);
        ck_assert_int_eq(read_back, LEN);
        ck_assert(same);
        ck_assert_int_eq(punched, 0);
        ck_assert_int_eq(read_hole, HOLE_LEN);
        ck_assert(zeros);
        ck_assert_int_eq(past_end, -1);
        ck_assert_int_eq(past_end_errno, ENOSPC);
        detach(&br);

        /* What the image file itself holds now. */
        fd = open(image, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pread(fd, back, LEN + 2, at - 1), LEN + 2);
        ck_assert_uint_eq(back[0], 0x5a);
        ck_assert_mem_eq(back + 1, pattern, LEN);
        ck_assert_uint_eq(back[LEN + 1], 0x5a);
        ck_assert_int_eq(lseek(fd, HOLE, SEEK_HOLE), HOLE);
        ck_assert_int_eq(lseek(fd, HOLE, SEEK_DATA), HOLE + HOLE_LEN);
        ck_assert_int_eq(pread(fd, back, HOLE_LEN, HOLE), HOLE_LEN);
        ck_assert(all_zero(back, HOLE_LEN));
        ck_assert_int_eq(lseek(fd, 0, SEEK_END), 8 * MIB);
        ck_assert_int_eq(close(fd), 0);
        ck_assert_uint_le(fx_allocated(image), allocated - HOLE_LEN);
}
END_TEST

/* A volume in two places of the disk (an LV's segments, the second before the first) as one
 * file: a write across the seam lands on both extents where the mapping says, a hole punched
 * across it frees both sides and nothing around them, the file ends where they do, and ranges
 * outside the disk or unaligned are refused. */
START_TEST(test_bridge_volume_file)
{
        enum { EXT = 2 * MIB, LEN = 300000, HALF = LEN / 2 };
        const struct qt_range extents[] = {{5 * MIB, EXT}, {1 * MIB, EXT}};
        static uint8_t pattern[LEN], back[LEN], direct[LEN];
        char image[PATH_MAX];
        struct bridge br = {};

        write_file(fx_path(image, "volume.raw"), 8 * MIB, 0x5a);
        for (size_t i = 0; i < LEN; i++)
                pattern[i] = fx_pattern(i);

        attach(&br, "volume.raw", "raw", false);
        const char *bad[] = {
            qt_nbd_fuse_add_volume(br.b, (struct qt_range[]){{7 * MIB, 2 * MIB}}, 1),
            qt_nbd_fuse_add_volume(br.b, (struct qt_range[]){{512, 1000}}, 1),
            qt_nbd_fuse_add_volume(br.b, extents, 0),
        };
        const char *path = qt_nbd_fuse_add_volume(br.b, extents, 2);
        struct stat st = {};
        int stat_r = path ? stat(path, &st) : -1;
        int fd = path ? open(path, O_RDWR | O_CLOEXEC) : -1;
        ssize_t wrote = pwrite(fd, pattern, LEN, EXT - HALF);
        int synced = fsync(fd);
        ssize_t read_back = pread(fd, back, LEN, EXT - HALF);
        bool same = read_back == LEN && memcmp(back, pattern, LEN) == 0;
        /* The image file itself (not the bridge), flushed: the first half at the end of the
         * extent at 5 MiB, the rest at the start of the one at 1 MiB. */
        int image_fd = open(image, O_RDONLY | O_CLOEXEC);
        bool placed = pread(image_fd, direct, HALF, 7 * MIB - HALF) == HALF &&
                      pread(image_fd, direct + HALF, HALF, 1 * MIB) == HALF &&
                      memcmp(direct, pattern, LEN) == 0;
        close(image_fd);
        int punched = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, EXT - MIB, 2 * MIB);
        ssize_t past_end = pwrite(fd, pattern, 1, 2 * EXT);
        if (fd >= 0)
                close(fd);
        detach(&br);

        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                ck_assert_ptr_null(bad[i]);
        ck_assert_ptr_nonnull(path);
        ck_assert_int_eq(stat_r, 0);
        ck_assert_int_eq(st.st_size, 2 * EXT);
        ck_assert_int_eq(wrote, LEN);
        ck_assert_int_eq(synced, 0);
        ck_assert(same);
        ck_assert(placed);
        ck_assert_int_eq(punched, 0);
        ck_assert_int_eq(past_end, -1);

        /* The holes: the last MiB of the extent at 5 MiB, the first of the one at 1 MiB; the
         * fill right after each. */
        fd = open(image, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(lseek(fd, 6 * MIB, SEEK_HOLE), 6 * MIB);
        ck_assert_int_eq(lseek(fd, 6 * MIB, SEEK_DATA), 7 * MIB);
        ck_assert_int_eq(lseek(fd, 1 * MIB, SEEK_HOLE), 1 * MIB);
        ck_assert_int_eq(lseek(fd, 1 * MIB, SEEK_DATA), 2 * MIB);
        ck_assert_int_eq(pread(fd, back, 1, 7 * MIB), 1);
        ck_assert_uint_eq(back[0], 0x5a);
        ck_assert_int_eq(pread(fd, back, 1, 2 * MIB), 1);
        ck_assert_uint_eq(back[0], 0x5a);
        ck_assert_int_eq(close(fd), 0);
}
END_TEST

/* Autoclear: the device lets go of the file once its last user is gone; the kernel may take a
 * moment. Read from sysfs, so that looking does not open (and so clear) the device itself. A
 * device that stays is detached before the test fails: loop devices outlive the test. */
static void assert_loop_released(const char *file)
{
        for (int i = 0; i < 200 && fx_count_loop_devices(file) > 0; i++)
                usleep(10000);
        ck_assert_msg(fx_detach_loop_devices(file) == 0, "a loop device still held %s", file);
}

static void check_loop(bool read_only)
{
        enum { OFFSET = MIB, SIZE = 2 * MIB };
        static uint8_t buf[SIZE], want[SIZE];
        char file[PATH_MAX], dev[QT_LOOP_PATH_MAX];
        struct qt_error e = {};
        struct stat st;

        write_file(fx_path(file, read_only ? "loop-ro.bin" : "loop-rw.bin"), 4 * MIB, -1);
        ck_assert_int_eq(stat(file, &st), 0);
        for (size_t i = 0; i < SIZE; i++)
                want[i] = fx_pattern(OFFSET + i);

        /* Everything through the device first, the assertions once it is released (or detached
         * by force): a device left attached would outlive the test. */
        int fd = qt_loop_attach(file, OFFSET, SIZE, read_only, dev, &e);
        ck_assert_msg(fd >= 0, "%s", e.message);
        unsigned attached = fx_count_loop_devices(file);
        uint64_t size = 0;
        int ro = -1;
        struct loop_info64 info = {};
        int got_size = ioctl(fd, BLKGETSIZE64, &size);
        int got_ro = ioctl(fd, BLKROGET, &ro);
        int got_info = ioctl(fd, LOOP_GET_STATUS64, &info);
        /* The window and nothing else: the file's bytes from OFFSET on, then the end. */
        bool same = pread(fd, buf, SIZE, 0) == SIZE && memcmp(buf, want, SIZE) == 0;
        ssize_t past_end = pread(fd, buf, 1, SIZE);
        ssize_t wrote = read_only ? 0 : pwrite(fd, "qtrim", 5, 0);
        int synced = fsync(fd);
        ck_assert_int_eq(close(fd), 0);
        assert_loop_released(file);

        ck_assert(!qt_error_is_set(&e));
        ck_assert(strncmp(dev, "/dev/loop", strlen("/dev/loop")) == 0);
        ck_assert_uint_eq(attached, 1);
        ck_assert_int_eq(got_size, 0);
        ck_assert_uint_eq(size, SIZE);
        ck_assert_int_eq(got_ro, 0);
        ck_assert_int_eq(ro, read_only);
        ck_assert_int_eq(got_info, 0);
        ck_assert_uint_eq(info.lo_inode, st.st_ino);
        ck_assert_uint_eq(info.lo_offset, OFFSET);
        ck_assert_uint_eq(info.lo_sizelimit, SIZE);
        ck_assert(info.lo_flags & LO_FLAGS_AUTOCLEAR);
        ck_assert_int_eq(!!(info.lo_flags & LO_FLAGS_READ_ONLY), read_only);
        ck_assert(same);
        ck_assert_int_eq(past_end, 0);
        ck_assert_int_eq(wrote, read_only ? 0 : 5);
        ck_assert_int_eq(synced, 0);

        /* A write through the device lands at OFFSET in the file. */
        fd = open(file, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pread(fd, buf, 5, OFFSET), 5);
        ck_assert_int_eq(close(fd), 0);
        ck_assert_mem_eq(buf, read_only ? want : (const uint8_t *)"qtrim", 5);
}

START_TEST(test_loop_window_read_only)
{
        check_loop(true);
}
END_TEST

START_TEST(test_loop_window_read_write)
{
        check_loop(false);
}
END_TEST

struct progress {
        unsigned calls;
        double last;
};

static void on_progress(double fraction, void *userdata)
{
        struct progress *p = userdata;
        p->calls++;
        p->last = fraction;
}

/* Trims fs on <tmpfs>/<name>, as the worker does; whatever the outcome, the mount point is gone
 * and nothing is mounted or attached. */
static void trim(struct bridge *br, struct qt_fs_result *fs, struct progress *progress)
{
        char dir[PATH_MAX];
        fx_join(dir, br->ns, fs->name);
        struct qt_fs_source src = {.disk = br->disk, .offset = fs->offset, .size = fs->size};
        ck_assert_int_eq(qt_trim_filesystem(&src, dir, fs, on_progress, progress), 0);
        ck_assert_int_eq(access(dir, F_OK), -1);
        ck_assert_int_eq(errno, ENOENT);
        ck_assert(!fx_is_mount_point(0, dir, NULL));
        assert_loop_released(br->disk);
}

START_TEST(test_trim)
{
        struct bridge br = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        struct progress progress = {};
        char image[PATH_MAX];

        fx_sh("cp --sparse=always gpt.raw trim.raw");
        uint64_t before = fx_allocated(fx_path(image, "trim.raw"));
        attach(&br, "trim.raw", "raw", false);
        discover(&br, "gpt", gpt_parts, ELEMENTSOF(gpt_parts), fs);

        trim(&br, &fs[0], &progress);
        ck_assert_str_eq(fs[0].state, "trimmed");
        ck_assert_str_eq(fs[0].message, "");
        ck_assert_uint_ge(fs[0].trimmed, JUNK_BYTES);
        ck_assert_uint_le(fs[0].trimmed, fs[0].size);
        ck_assert_uint_ge(progress.calls, 1);
        ck_assert_double_eq_tol(progress.last, 1.0, 1e-9); /* ends at 1, never past it */

        progress = (struct progress){};
        trim(&br, &fs[1], &progress);
        ck_assert_str_eq(fs[1].state, "skipped");
        ck_assert_str_eq(fs[1].message, "swap is not a filesystem qtrim trims");
        trim(&br, &fs[2], &progress);
        ck_assert_str_eq(fs[2].state, "skipped");
        ck_assert_str_eq(fs[2].message, "minix is not a filesystem qtrim trims");
        trim(&br, &fs[3], &progress);
        ck_assert_str_eq(fs[3].state, "skipped");
        ck_assert_str_eq(fs[3].message, "no filesystem found");

        /* A type it trims on a partition that does not hold one: the mount fails, cleanly. */
        struct qt_fs_result wrong = fs[3];
        snprintf(wrong.name, sizeof(wrong.name), "p4-ext4");
        snprintf(wrong.fstype, sizeof(wrong.fstype), "ext4");
        wrong.message[0] = '\0';
        trim(&br, &wrong, &progress);
        ck_assert_str_eq(wrong.state, "skipped");
        ck_assert_msg(strncmp(wrong.message, "cannot mount: ", strlen("cannot mount: ")) == 0,
                      "message: %s", wrong.message);
        for (size_t i = 1; i < 4; i++)
                ck_assert_uint_eq(fs[i].trimmed, 0);
        ck_assert_uint_eq(wrong.trimmed, 0);
        ck_assert_uint_eq(progress.calls, 0);
        detach(&br);

        /* The deleted data left the image, less the few blocks the mount itself wrote (journal,
         * superblock) where the image had holes; the rest of the disk is as it was. */
        ck_assert_uint_ge(before - fx_allocated(image), JUNK_BYTES - MOUNT_WRITES_MAX);
        fx_sh("dd if=trim.raw of=trim-p1.fs bs=512 skip=%llu count=%llu status=none && "
              "e2fsck -fn trim-p1.fs && rm trim-p1.fs",
              (unsigned long long)gpt_parts[0].start, (unsigned long long)gpt_parts[0].sectors);
        fx_sh("cmp -n %llu trim.raw gpt.raw", (unsigned long long)(gpt_parts[0].start * SECTOR));
        fx_sh("cmp -i %llu trim.raw gpt.raw", (unsigned long long)(gpt_parts[1].start * SECTOR));
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("attach");
        TCase *tc = tcase_create("devices");
        tcase_add_unchecked_fixture(tc, make_images, fx_scratch_teardown);
        tcase_set_timeout(tc, 20); /* each takes well under a second */
        tcase_add_test(tc, test_discover_mbr_logical);
        tcase_add_test(tc, test_discover_gpt);
        tcase_add_test(tc, test_discover_whole_disk);
        tcase_add_test(tc, test_discover_partition_past_end);
        tcase_add_test(tc, test_bridge_writes_and_punches_through);
        tcase_add_test(tc, test_bridge_volume_file);
        tcase_add_test(tc, test_loop_window_read_only);
        tcase_add_test(tc, test_loop_window_read_write);
        tcase_add_test(tc, test_trim);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The kernel attach path (nbd-kernel.c, through attach.h) on real images with the host's nbd
 * devices: claiming a free device (and not one someone else holds), the partition nodes checked
 * against what libblkid found, the loop fallback, an LV in two places through a device-mapper
 * device of qtrim's own (and one a killed worker left), a trim through them, and a detach that
 * leaves the device free with no partition node behind. Needs the nbd module: exits 77 (skipped)
 * without it, as on the build machines; tests/vm/payload-kernel-unit.sh runs it in a guest.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "attach.h"
#include "check-main.h"
#include "discover.h"
#include "fixtures.h"
#include "image.h"
#include "nbd-kernel.h"
#include "trim.h"
#include "util.h"

#define MIB    (1ULL << 20)
#define SECTOR 512ULL

struct part {
        const char *name;
        uint64_t start, sectors;
        const char *fstype;
};

/* GPT: an ext4 holding deleted data, a swap area. */
#define GPT_DISK_MIB 48
static const char gpt_script[] = "label: gpt\n"
                                 "unit: sectors\n"
                                 "start=2048, size=32768\n"
                                 "start=34816, size=16384\n";
static const struct part gpt_parts[] = {
    {"p1", 2048, 32768, "ext4"},
    {"p2", 34816, 16384, "swap"},
};
#define JUNK_BYTES (6 * MIB)

/* MBR: a primary ext4, an extended partition with two logical ext4. */
#define MBR_DISK_MIB 64
static const char mbr_script[] = "label: dos\n"
                                 "unit: sectors\n"
                                 "start=2048, size=20480, type=83\n"
                                 "start=22528, size=100352, type=5\n"
                                 "start=24576, size=40960, type=83\n"
                                 "start=67584, size=55296, type=83\n";
static const struct part mbr_parts[] = {
    {"p1", 2048, 20480, "ext4"},
    {"p5", 24576, 40960, "ext4"},
    {"p6", 67584, 55296, "ext4"},
};

#define WHOLE_DISK_MIB 32

/* An LV in two places (an ext4 of 16 MiB holding deleted data: its first half at 40 MiB, its
 * second at 24 MiB), beside a partition p1 with an ext4 of its own. */
#define LINEAR_DISK_MIB 64
static const char linear_script[] = "label: gpt\n"
                                    "unit: sectors\n"
                                    "start=2048, size=20480\n";
static const struct part linear_parts[] = {{"p1", 2048, 20480, "ext4"}};
static const struct qt_range lv_extents[] = {{40 * MIB, 8 * MIB}, {24 * MIB, 8 * MIB}};

static void make_images(void)
{
        fx_scratch_setup();
        char why[128];
        if (!qt_nbd_kernel_available(why, sizeof(why))) {
                fprintf(stderr, "no nbd devices here (%s): nothing to test\n", why);
                fx_scratch_teardown();
                exit(77);
        }

        fx_make_partitioned("gpt.raw", GPT_DISK_MIB, gpt_script);
        fx_sh("mkdir junk && yes qtrim | head -c %llu >junk/junk.bin", JUNK_BYTES);
        fx_put_filesystem("gpt.raw", gpt_parts[0].start * SECTOR, gpt_parts[0].sectors * SECTOR,
                          "mkfs.ext4 -q -F -b 4096 -d junk",
                          "debugfs -w -R 'rm junk.bin' \"$fs\" && rm -r junk");
        fx_put_filesystem("gpt.raw", gpt_parts[1].start * SECTOR, gpt_parts[1].sectors * SECTOR,
                          "mkswap", NULL);

        fx_make_partitioned("mbr.raw", MBR_DISK_MIB, mbr_script);
        for (size_t i = 0; i < ELEMENTSOF(mbr_parts); i++)
                fx_put_filesystem("mbr.raw", mbr_parts[i].start * SECTOR,
                                  mbr_parts[i].sectors * SECTOR, "mkfs.ext4 -q -F", NULL);
        fx_sh("qemu-img convert -f raw -O qcow2 mbr.raw mbr.qcow2 && rm mbr.raw");

        fx_sh("truncate -s %uM whole.raw && mkfs.ext4 -q -F whole.raw", WHOLE_DISK_MIB);

        fx_make_partitioned("linear.raw", LINEAR_DISK_MIB, linear_script);
        fx_put_filesystem("linear.raw", linear_parts[0].start * SECTOR,
                          linear_parts[0].sectors * SECTOR, "mkfs.ext4 -q -F", NULL);
        fx_sh("truncate -s 16M lv.fs && mkdir junk && yes qtrim | head -c %llu >junk/junk.bin && "
              "mkfs.ext4 -q -F -b 4096 -d junk lv.fs && debugfs -w -R 'rm junk.bin' lv.fs && "
              "rm -r junk && "
              "dd if=lv.fs of=linear.raw bs=1M count=8 seek=40 conv=notrunc,sparse status=none && "
              "dd if=lv.fs of=linear.raw bs=1M skip=8 count=8 seek=24 conv=notrunc,sparse "
              "status=none && rm lv.fs",
              JUNK_BYTES);
}

/* An attachment as the worker makes it: private namespace, tmpfs scratch directory. */
struct attached {
        char ns[PATH_MAX];
        struct qt_attachment *a;
        char sysname[16]; /* "nbd3" */
};

/* other_servers: qemu-nbd children of the test's own. */
static void attach_kernel(struct attached *at, const char *name, const char *format, bool read_only,
                          unsigned other_servers)
{
        char image[PATH_MAX], qemu_name[QT_QEMU_NAME_MAX];
        struct qt_error e = {};
        fx_enter_private_namespace(at->ns);
        /* Named to qemu-nbd as the worker names it: by the open file, no lock for a read. */
        _cleanup_(qt_image_file_close) struct qt_image_file f;
        ck_assert_msg(qt_image_open(fx_path(image, name), NULL, &f, &e) == 0, "%s", e.message);
        ck_assert_int_eq(qt_image_qemu_name(&f, NULL, read_only, qemu_name), 0);
        struct qt_attach_request req = {
            .image = qemu_name,
            .format = format,
            .read_only = read_only,
            .backend = QT_ATTACH_KERNEL,
            .scratch_dir = at->ns,
        };
        ck_assert_msg(qt_attach(&req, &at->a, &e) == 0, "attach %s: %s", name, e.message);
        ck_assert_int_eq(qt_attachment_backend(at->a), QT_ATTACH_KERNEL);
        const char *disk = qt_attachment_disk(at->a);
        ck_assert_str_eq(qt_attachment_nbd_device(at->a), disk);
        ck_assert(strncmp(disk, "/dev/nbd", 8) == 0);
        snprintf(at->sysname, sizeof(at->sysname), "%s", disk + 5);
        ck_assert_uint_eq(qt_attachment_fuse_connection(at->a), 0);
        ck_assert_uint_eq(fx_count_children("qemu-nbd"), 1 + other_servers);
}

static bool read_u64_file(const char *path, uint64_t *ret)
{
        char buf[32] = "";
        FILE *f = fopen(path, "re");
        if (!f)
                return false;
        bool ok = fgets(buf, sizeof(buf), f) && sscanf(buf, "%lu", ret) == 1;
        fclose(f);
        return ok;
}

static bool sys_attr(const char *sysname, const char *attr, uint64_t *ret)
{
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "/sys/block/%s/%s", sysname, attr);
        return read_u64_file(path, ret);
}

static unsigned count_partition_nodes(const char *sysname)
{
        char pattern[PATH_MAX];
        glob_t g;
        snprintf(pattern, sizeof(pattern), "/sys/block/%s/%sp*", sysname, sysname);
        if (glob(pattern, 0, NULL, &g) != 0)
                return 0;
        unsigned n = (unsigned)g.gl_pathc;
        globfree(&g);
        return n;
}

/* Free as the next user (and nbd-kernel.c) judges it: no owner, no size, no partitions. */
static bool device_is_free(const char *sysname)
{
        uint64_t pid, size = 1;
        return !sys_attr(sysname, "pid", &pid) && sys_attr(sysname, "size", &size) && size == 0 &&
               count_partition_nodes(sysname) == 0;
}

static void detach_with_others(struct attached *at, unsigned other_children)
{
        struct qt_error e = {};
        ck_assert_msg(qt_detach(at->a, &e) == 0, "detach: %s", e.message);
        at->a = NULL;
        /* Bounded in detach already: free when it returns. */
        ck_assert_msg(device_is_free(at->sysname), "%s is not free after the detach", at->sysname);
        ck_assert_uint_eq(fx_count_children(NULL), other_children);
        if (!other_children)
                ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
}

static void detach(struct attached *at)
{
        detach_with_others(at, 0);
}

static void discover(struct attached *at, const char *pttype, const struct part *want,
                     size_t n_want, struct qt_fs_result fs[QT_MAX_FILESYSTEMS])
{
        char got[16];
        size_t n = 0;
        struct qt_error e = {};
        ck_assert_msg(
            qt_discover(qt_attachment_disk(at->a), qt_attachment_size(at->a), got, fs, &n, &e) == 0,
            "discover: %s", e.message);
        ck_assert_str_eq(got, pttype);
        /* The partitions, then the gaps outside them (test-discover checks where those are). */
        ck_assert_uint_ge(n, n_want);
        for (size_t i = n_want; i < n; i++)
                ck_assert_str_eq(fs[i].kind, "gap");
        for (size_t i = 0; i < n_want; i++) {
                ck_assert_str_eq(fs[i].name, want[i].name);
                ck_assert_uint_eq(fs[i].offset, want[i].start * SECTOR);
                ck_assert_uint_eq(fs[i].size, want[i].sectors * SECTOR);
                ck_assert_str_eq(fs[i].fstype, want[i].fstype);
        }
}

/* The source must be the kernel's node of that very partition: its number as libblkid names
 * it, its sysfs start and size what libblkid found. */
static void assert_partition_source(struct attached *at, const struct qt_fs_result *fs,
                                    const struct qt_fs_source *src)
{
        char want[PATH_MAX], path[PATH_MAX];
        uint64_t start = 0, size = 0;
        ck_assert_ptr_nonnull(src->device);
        snprintf(want, sizeof(want), "/dev/%s%s", at->sysname, fs->name);
        ck_assert_str_eq(src->device, want);
        snprintf(path, sizeof(path), "/sys/class/block/%s%s/start", at->sysname, fs->name);
        ck_assert(read_u64_file(path, &start));
        snprintf(path, sizeof(path), "/sys/class/block/%s%s/size", at->sysname, fs->name);
        ck_assert(read_u64_file(path, &size));
        ck_assert_uint_eq(start * SECTOR, fs->offset);
        ck_assert_uint_eq(size * SECTOR, fs->size);
}

static void trim(struct attached *at, struct qt_fs_result *fs, const struct qt_fs_source *src)
{
        char dir[PATH_MAX];
        fx_join(dir, at->ns, fs->name);
        ck_assert_int_eq(qt_trim_filesystem(src, dir, fs, NULL, NULL), 0);
        ck_assert(!fx_is_mount_point(0, dir, NULL));
}

START_TEST(test_gpt_partitions_and_trim)
{
        struct attached at = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        char image[PATH_MAX];
        uint64_t owner = 0;

        fx_sh("cp --sparse=always gpt.raw trim.raw");
        uint64_t before = fx_allocated(fx_path(image, "trim.raw"));
        attach_kernel(&at, "trim.raw", "raw", false, 0);
        ck_assert_uint_eq(qt_attachment_size(at.a), GPT_DISK_MIB * MIB);
        /* The kernel's owner is qemu-nbd's client thread, as qtrimd will compare it. */
        ck_assert(sys_attr(at.sysname, "pid", &owner));
        ck_assert_uint_eq(owner, qt_attachment_nbd_owner(at.a));
        pid_t server = 0;
        ck_assert_int_eq(qt_nbd_kernel_connection_state(qt_attachment_disk(at.a), owner, &server),
                         QT_NBD_SERVED);
        ck_assert_int_gt(server, 0);
        ck_assert_int_eq(
            qt_nbd_kernel_connection_state(qt_attachment_disk(at.a), owner + 1, &server),
            QT_NBD_RELEASED);

        discover(&at, "gpt", gpt_parts, ELEMENTSOF(gpt_parts), fs);
        struct qt_fs_source src;
        qt_attachment_source(at.a, &fs[0], &src);
        assert_partition_source(&at, &fs[0], &src);
        /* Asked again, the same node (it stays open until detach). */
        struct qt_fs_source again;
        qt_attachment_source(at.a, &fs[0], &again);
        ck_assert_str_eq(again.device, src.device);
        trim(&at, &fs[0], &src);
        ck_assert_str_eq(fs[0].state, "trimmed");
        ck_assert_uint_ge(fs[0].trimmed, JUNK_BYTES);
        /* The swap area's node exists too, but trim only records why it is skipped. */
        qt_attachment_source(at.a, &fs[1], &src);
        assert_partition_source(&at, &fs[1], &src);
        detach(&at);

        ck_assert_uint_ge(before - fx_allocated(image), JUNK_BYTES - 64 * 1024);
        fx_sh("dd if=trim.raw of=trim-p1.fs bs=512 skip=%llu count=%llu status=none && "
              "e2fsck -fn trim-p1.fs && rm trim-p1.fs trim.raw",
              (unsigned long long)gpt_parts[0].start, (unsigned long long)gpt_parts[0].sectors);
}
END_TEST

/* Logical partitions are numbered from 5 by the kernel and by libblkid alike. */
START_TEST(test_mbr_logical_partitions)
{
        struct attached at = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        fx_sh("cp mbr.qcow2 logical.qcow2");
        attach_kernel(&at, "logical.qcow2", "qcow2", false, 0);
        discover(&at, "dos", mbr_parts, ELEMENTSOF(mbr_parts), fs);
        for (size_t i = 0; i < ELEMENTSOF(mbr_parts); i++) {
                struct qt_fs_source src;
                qt_attachment_source(at.a, &fs[i], &src);
                assert_partition_source(&at, &fs[i], &src);
                trim(&at, &fs[i], &src);
                ck_assert_str_eq(fs[i].state, "trimmed");
        }
        detach(&at);
        fx_sh("qemu-img check -q logical.qcow2 && rm logical.qcow2");
}
END_TEST

/* No partition table: the filesystem is the device. */
START_TEST(test_whole_disk_is_the_device)
{
        static const struct part whole[] = {{"disk", 0, WHOLE_DISK_MIB * MIB / SECTOR, "ext4"}};
        struct attached at = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        fx_sh("cp whole.raw whole-rw.raw");
        attach_kernel(&at, "whole-rw.raw", "raw", false, 0);
        discover(&at, "none", whole, 1, fs);
        struct qt_fs_source src;
        qt_attachment_source(at.a, &fs[0], &src);
        ck_assert_ptr_nonnull(src.device);
        ck_assert_str_eq(src.device, qt_attachment_disk(at.a));
        trim(&at, &fs[0], &src);
        ck_assert_str_eq(fs[0].state, "trimmed");
        detach(&at);
        fx_sh("e2fsck -fn whole-rw.raw && rm whole-rw.raw");
}
END_TEST

static int blkpg(const char *disk, int op, int number, uint64_t start, uint64_t sectors)
{
        int fd = open(disk, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        struct blkpg_partition part = {.start = (long long)(start * SECTOR),
                                       .length = (long long)(sectors * SECTOR),
                                       .pno = number};
        struct blkpg_ioctl_arg arg = {.op = op, .datalen = sizeof(part), .data = &part};
        int r = ioctl(fd, BLKPG, &arg) < 0 ? -errno : 0;
        close(fd);
        return r;
}

/* A partition libblkid finds and the kernel does not have (removed here, as a table the kernel
 * reads otherwise would leave it): made with BLKPG, at libblkid's geometry. */
START_TEST(test_missing_partition_is_made)
{
        struct attached at = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        fx_sh("cp --sparse=always gpt.raw missing.raw");
        attach_kernel(&at, "missing.raw", "raw", false, 0);
        discover(&at, "gpt", gpt_parts, ELEMENTSOF(gpt_parts), fs);
        ck_assert_int_eq(blkpg(qt_attachment_disk(at.a), BLKPG_DEL_PARTITION, 1, 0, 0), 0);

        struct qt_fs_source src;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        qt_attachment_source(at.a, &fs[0], &src);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        /* The kernel's scan was complete: no waiting for a node that cannot come. */
        ck_assert_int_lt(t1.tv_sec - t0.tv_sec, 1);
        assert_partition_source(&at, &fs[0], &src);
        trim(&at, &fs[0], &src);
        ck_assert_msg(strcmp(fs[0].state, "trimmed") == 0, "%s: %s", fs[0].state, fs[0].message);
        ck_assert_uint_ge(fs[0].trimmed, JUNK_BYTES);
        detach(&at);
        fx_sh("rm missing.raw");
}
END_TEST

/* The kernel has a partition of its own in the way, in use: no node at libblkid's geometry can
 * be made. A loop device over the nbd device at the offset then, where it can discard; where it
 * cannot (the nbd driver of 6.1 has no write-zeroes), the filesystem is skipped, saying why. */
START_TEST(test_partition_in_the_way)
{
        struct attached at = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        fx_sh("cp --sparse=always gpt.raw conflict.raw");
        attach_kernel(&at, "conflict.raw", "raw", false, 0);
        discover(&at, "gpt", gpt_parts, ELEMENTSOF(gpt_parts), fs);
        const char *disk = qt_attachment_disk(at.a);
        ck_assert_int_eq(blkpg(disk, BLKPG_DEL_PARTITION, 1, 0, 0), 0);
        ck_assert_int_eq(blkpg(disk, BLKPG_ADD_PARTITION, 9, gpt_parts[0].start, 4096), 0);
        char node[64];
        snprintf(node, sizeof(node), "%sp9", disk);
        int holder = -1;
        for (int i = 0; i < 200 && holder < 0; i++) {
                holder = open(node, O_RDONLY | O_CLOEXEC);
                if (holder < 0)
                        usleep(10000);
        }
        ck_assert_int_ge(holder, 0);

        struct qt_fs_source src;
        qt_attachment_source(at.a, &fs[0], &src);
        ck_assert_ptr_null(src.device);
        ck_assert_str_eq(src.disk, disk);
        trim(&at, &fs[0], &src);
        close(holder);
        if (src.unusable) {
                ck_assert_str_eq(fs[0].state, "skipped");
                ck_assert_str_eq(fs[0].message, src.unusable);
        } else {
                ck_assert_msg(strcmp(fs[0].state, "trimmed") == 0, "%s: %s", fs[0].state,
                              fs[0].message);
                /* Autoclear frees the loop device with the mount; it may take a moment. */
                for (int i = 0; i < 200 && fx_count_loop_devices(disk) > 0; i++)
                        usleep(10000);
                ck_assert_uint_eq(fx_detach_loop_devices(disk), 0);
        }
        detach(&at);
        fx_sh("rm conflict.raw");
}
END_TEST

/* Inspection: the device is read-only and qemu's lock on the image is not taken. */
START_TEST(test_read_only)
{
        struct attached at = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        attach_kernel(&at, "mbr.qcow2", "qcow2", true, 0);
        discover(&at, "dos", mbr_parts, ELEMENTSOF(mbr_parts), fs);
        uint64_t ro = 0;
        ck_assert(sys_attr(at.sysname, "ro", &ro));
        ck_assert_uint_eq(ro, 1);
        /* A writer (a VM starting) is not locked out by an inspection. */
        fx_sh("qemu-io -f qcow2 -c 'read 0 512' mbr.qcow2 >/dev/null");
        detach(&at);
}
END_TEST

/* The lowest-numbered free device, where a claim starts. */
static int lowest_free_device(void)
{
        for (int i = 0; i < 64; i++) {
                char sysname[16];
                uint64_t size;
                snprintf(sysname, sizeof(sysname), "nbd%d", i);
                if (!sys_attr(sysname, "size", &size))
                        return -1;
                if (device_is_free(sysname))
                        return i;
        }
        return -1;
}

/* Another qtrim worker's claim (the BSD lock) is respected. */
START_TEST(test_locked_device_is_skipped)
{
        struct attached at = {};
        int first = lowest_free_device();
        ck_assert_int_ge(first, 0);
        char path[32];
        snprintf(path, sizeof(path), "/dev/nbd%d", first);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(flock(fd, LOCK_EX | LOCK_NB), 0);
        attach_kernel(&at, "mbr.qcow2", "qcow2", true, 0);
        close(fd);
        ck_assert_str_ne(qt_attachment_disk(at.a), path);
        detach(&at);
}
END_TEST

/* A device someone else connected (not qtrim: no lock) is not free and is not touched; it is
 * still connected to its owner afterwards. */
START_TEST(test_connected_device_is_skipped)
{
        struct attached at = {};
        int first = lowest_free_device();
        ck_assert_int_ge(first, 0);
        char device[32], sysname[16], image[PATH_MAX], sock[PATH_MAX];
        snprintf(device, sizeof(device), "/dev/nbd%d", first);
        snprintf(sysname, sizeof(sysname), "nbd%d", first);
        fx_path(image, "whole.raw");
        fx_path(sock, "other.sock");
        pid_t parent = getpid();
        pid_t other = fork();
        ck_assert_int_ge(other, 0);
        if (other == 0) {
                /* Gone with the test, however it ends. */
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != parent)
                        _exit(1);
                execlp("qemu-nbd", "qemu-nbd", "-v", "-c", device, "-k", sock, "--read-only", "-f",
                       "raw", image, (char *)NULL);
                _exit(127);
        }
        uint64_t pid = 0;
        for (int i = 0; i < 1000 && !sys_attr(sysname, "pid", &pid); i++)
                usleep(10000);
        ck_assert_uint_gt(pid, 0);

        attach_kernel(&at, "mbr.qcow2", "qcow2", true, 1);
        ck_assert_str_ne(qt_attachment_disk(at.a), device);
        detach_with_others(&at, 1);
        uint64_t still = 0;
        ck_assert(sys_attr(sysname, "pid", &still));
        ck_assert_uint_eq(still, pid);

        kill(other, SIGTERM);
        ck_assert_int_eq(waitpid(other, NULL, 0), other);
        for (int i = 0; i < 500 && !device_is_free(sysname); i++)
                usleep(10000);
}
END_TEST

/* Two attachments at once, as two workers make them: two devices. */
START_TEST(test_two_attachments)
{
        struct attached one = {}, two = {};
        attach_kernel(&one, "mbr.qcow2", "qcow2", true, 0);
        /* Same namespace, so a second scratch directory of its own. */
        struct qt_attachment *a = NULL;
        char image[PATH_MAX], dir[PATH_MAX];
        struct qt_error e = {};
        fx_join(dir, one.ns, "second");
        ck_assert_int_eq(mkdir(dir, 0700), 0);
        struct qt_attach_request req = {.image = fx_path(image, "whole.raw"),
                                        .format = "raw",
                                        .read_only = true,
                                        .backend = QT_ATTACH_KERNEL,
                                        .scratch_dir = dir};
        ck_assert_msg(qt_attach(&req, &a, &e) == 0, "%s", e.message);
        ck_assert_str_ne(qt_attachment_disk(a), qt_attachment_disk(one.a));
        ck_assert_uint_eq(qt_attachment_size(a), WHOLE_DISK_MIB * MIB);
        snprintf(two.sysname, sizeof(two.sysname), "%s", qt_attachment_disk(a) + 5);
        ck_assert_int_eq(qt_detach(a, &e), 0);
        ck_assert(device_is_free(two.sysname));
        detach(&one);
}
END_TEST

/* The LV of linear.raw as discovery reports it. */
static void lv_volume(struct qt_fs_result *fs)
{
        *fs = (struct qt_fs_result){.offset = lv_extents[0].offset, .n_extents = 2};
        snprintf(fs->name, sizeof(fs->name), "vg0-data"); /* the test mounts it by name */
        snprintf(fs->kind, sizeof(fs->kind), "lv");
        snprintf(fs->fstype, sizeof(fs->fstype), "ext4");
        for (size_t i = 0; i < ELEMENTSOF(lv_extents); i++) {
                fs->extents[i] = lv_extents[i];
                fs->size += lv_extents[i].size;
        }
}

/* Device-mapper devices named as qtrim names those over sysname ("qtrim-nbd3-1"). */
static unsigned count_linear(const char *sysname)
{
        char prefix[32], name[160];
        glob_t g;
        unsigned n = 0;
        snprintf(prefix, sizeof(prefix), "qtrim-%s-", sysname);
        if (glob("/sys/block/dm-*/dm/name", 0, NULL, &g) != 0)
                return 0;
        for (size_t i = 0; i < g.gl_pathc; i++) {
                FILE *f = fopen(g.gl_pathv[i], "re");
                if (f && fgets(name, sizeof(name), f) && strncmp(name, prefix, strlen(prefix)) == 0)
                        n++;
                if (f)
                        fclose(f);
        }
        globfree(&g);
        return n;
}

static void read_dm_attr(const char *device, const char *attr, char *buf, size_t size)
{
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "/sys/block/%s/dm/%s", device + 5, attr);
        FILE *f = fopen(path, "re");
        ck_assert_msg(f, "%s: %m", path);
        ck_assert(fgets(buf, (int)size, f));
        fclose(f);
        buf[strcspn(buf, "\n")] = '\0';
}

/* An LV in two places, mounted and trimmed through a linear device of qtrim's own, while a
 * partition of the same disk is mounted too (a map of the whole disk would shut it out). Bad
 * extents are refused before anything is made; detach removes the device. */
START_TEST(test_linear_over_extents)
{
        struct attached at = {};
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS], lv, bad;
        struct qt_fs_source src, psrc;
        char image[PATH_MAX], buf[160], want[64];
        fx_sh("cp --sparse=always linear.raw lin.raw");
        uint64_t before = fx_allocated(fx_path(image, "lin.raw"));
        attach_kernel(&at, "lin.raw", "raw", false, 0);
        discover(&at, "gpt", linear_parts, ELEMENTSOF(linear_parts), fs);
        lv_volume(&lv);

        bad = lv;
        bad.extents[1].offset += 512 / 2;
        qt_attachment_source(at.a, &bad, &src);
        ck_assert(!src.device && src.unusable);
        bad = lv;
        bad.extents[1].offset = (LINEAR_DISK_MIB - 4) * MIB;
        qt_attachment_source(at.a, &bad, &src);
        ck_assert(!src.device && src.unusable);
        bad = lv;
        bad.n_extents = QT_FS_EXTENTS_MAX + 1;
        qt_attachment_source(at.a, &bad, &src);
        ck_assert(!src.device && src.unusable);
        ck_assert_uint_eq(count_linear(at.sysname), 0);

        qt_attachment_source(at.a, &lv, &src);
        ck_assert_msg(src.device && !src.unusable, "no linear device: %s",
                      src.unusable ? src.unusable : "");
        ck_assert_msg(strncmp(src.device, "/dev/dm-", 8) == 0, "%s", src.device);
        read_dm_attr(src.device, "name", buf, sizeof(buf));
        snprintf(want, sizeof(want), "qtrim-%s-", at.sysname);
        ck_assert_msg(strncmp(buf, want, strlen(want)) == 0, "name %s", buf);
        read_dm_attr(src.device, "uuid", buf, sizeof(buf));
        snprintf(want, sizeof(want), "QTRIM-%s-", at.sysname);
        ck_assert_msg(strncmp(buf, want, strlen(want)) == 0, "uuid %s", buf);
        ck_assert_uint_eq(count_linear(at.sysname), 1);

        qt_attachment_source(at.a, &fs[0], &psrc);
        assert_partition_source(&at, &fs[0], &psrc);
        trim(&at, &fs[0], &psrc);
        ck_assert_msg(strcmp(fs[0].state, "trimmed") == 0, "%s: %s", fs[0].state, fs[0].message);
        trim(&at, &lv, &src);
        ck_assert_msg(strcmp(lv.state, "trimmed") == 0, "%s: %s", lv.state, lv.message);
        ck_assert_uint_ge(lv.trimmed, JUNK_BYTES);
        detach(&at);
        ck_assert_uint_eq(count_linear(at.sysname), 0);

        ck_assert_uint_ge(before - fx_allocated(image), JUNK_BYTES - 64 * 1024);
        fx_sh("dd if=lin.raw of=lv.fs bs=1M skip=40 count=8 status=none && "
              "dd if=lin.raw of=lv.fs bs=1M skip=24 count=8 seek=8 status=none && "
              "e2fsck -fn lv.fs && rm lv.fs lin.raw");
}
END_TEST

/* A worker killed with a linear device over its disk (read-only: an inspection's): the device
 * would hold the nbd device forever. qtrimd's calls remove it, and the device is freed. */
START_TEST(test_linear_left_by_dead_worker)
{
        int pfd[2];
        ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
        /* The dead worker's qemu-nbd comes here, to be reaped. */
        ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
        pid_t worker = fork();
        ck_assert_int_ge(worker, 0);
        if (worker == 0) {
                struct attached at = {};
                struct qt_fs_result lv;
                struct qt_fs_source src;
                close(pfd[0]);
                attach_kernel(&at, "linear.raw", "raw", true, 0);
                lv_volume(&lv);
                qt_attachment_source(at.a, &lv, &src);
                if (!src.device)
                        _exit(1);
                dprintf(pfd[1], "%s %llu\n", qt_attachment_disk(at.a),
                        (unsigned long long)qt_attachment_nbd_owner(at.a));
                pause();
                _exit(0);
        }
        close(pfd[1]);
        char line[128] = "", device[32] = "";
        unsigned long long owner = 0;
        FILE *f = fdopen(pfd[0], "re");
        ck_assert(f);
        ck_assert_msg(fgets(line, sizeof(line), f), "the worker made no linear device");
        fclose(f);
        ck_assert_int_eq(sscanf(line, "%31s %llu", device, &owner), 2);
        ck_assert_uint_eq(count_linear(device + 5), 1);
        kill(worker, SIGKILL);
        ck_assert_int_eq(waitpid(worker, NULL, 0), worker);

        /* As daemon/worker.c polls: until the kernel lets go of the device. */
        enum qt_nbd_connection state = QT_NBD_SERVED;
        for (int i = 0; i < 1000 && state != QT_NBD_RELEASED; i++) {
                pid_t server;
                state = qt_nbd_kernel_connection_state(device, owner, &server);
                while (waitpid(-1, NULL, WNOHANG) > 0)
                        ;
                if (state != QT_NBD_RELEASED)
                        usleep(10000);
        }
        ck_assert_msg(state == QT_NBD_RELEASED, "%s still held (state %d)", device, (int)state);
        qt_nbd_kernel_drop_stale_partitions(device);
        ck_assert_uint_eq(count_linear(device + 5), 0);
        ck_assert_msg(device_is_free(device + 5), "%s is not free", device);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("attach-kernel");
        TCase *tc = tcase_create("nbd");
        tcase_add_unchecked_fixture(tc, make_images, fx_scratch_teardown);
        /* Slow guests (TCG) are where this runs. */
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_gpt_partitions_and_trim);
        tcase_add_test(tc, test_mbr_logical_partitions);
        tcase_add_test(tc, test_whole_disk_is_the_device);
        tcase_add_test(tc, test_missing_partition_is_made);
        tcase_add_test(tc, test_partition_in_the_way);
        tcase_add_test(tc, test_read_only);
        tcase_add_test(tc, test_locked_device_is_skipped);
        tcase_add_test(tc, test_connected_device_is_skipped);
        tcase_add_test(tc, test_two_attachments);
        tcase_add_test(tc, test_linear_over_extents);
        tcase_add_test(tc, test_linear_left_by_dead_worker);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

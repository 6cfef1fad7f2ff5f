/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The attach abstraction (attach.h) wherever the tests run: which path auto takes (FUSE on a
 * host without nbd devices, quickly; the kernel's where they exist), a refused kernel attach, the
 * FUSE path through qt_attach with its loop-device sources, the command line both paths give
 * qemu-nbd, and how qtrimd judges the device a dead worker named (nbd-kernel.h). The kernel path
 * itself is test-attach-kernel.c.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "attach.h"
#include "check-main.h"
#include "discover.h"
#include "fixtures.h"
#include "nbd-kernel.h"
#include "qemu-nbd.h"
#include "report.h"
#include "trim.h"
#include "util.h"

#define MIB (1ULL << 20)

static void make_images(void)
{
        fx_scratch_setup();
        /* GPT, one ext4 holding deleted data, then a stretch with no partition. */
        fx_make_partitioned("gpt.raw", 24, "label: gpt\nunit: sectors\nstart=2048, size=32768\n");
        fx_sh("mkdir junk && yes qtrim | head -c 6M >junk/junk.bin");
        fx_put_filesystem("gpt.raw", 2048 * 512, 32768 * 512, "mkfs.ext4 -q -F -b 4096 -d junk",
                          "debugfs -w -R 'rm junk.bin' \"$fs\" && rm -r junk");
}

static double seconds_since(const struct timespec *t0)
{
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static int attach(const char *ns, const char *name, enum qt_attach_backend backend,
                  struct qt_attachment **ret, struct qt_error *e)
{
        char image[PATH_MAX];
        struct qt_attach_request req = {.image = fx_path(image, name),
                                        .format = "raw",
                                        .read_only = false,
                                        .backend = backend,
                                        .scratch_dir = ns};
        return qt_attach(&req, ret, e);
}

/* auto: the kernel's nbd where the host has it, FUSE otherwise; on a host without, choosing
 * costs next to nothing (one modprobe). Then a whole job's device work through the one API. */
START_TEST(test_auto_and_trim)
{
        char ns[PATH_MAX], why[128], dir[PATH_MAX];
        struct qt_attachment *a = NULL;
        struct qt_error e = {};
        struct timespec t0;
        bool kernel = qt_nbd_kernel_available(why, sizeof(why));

        fx_sh("cp --sparse=always gpt.raw auto.raw");
        fx_enter_private_namespace(ns);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        ck_assert_msg(attach(ns, "auto.raw", QT_ATTACH_AUTO, &a, &e) == 0, "%s", e.message);
        double took = seconds_since(&t0);
        ck_assert_int_eq(qt_attachment_backend(a), kernel ? QT_ATTACH_KERNEL : QT_ATTACH_FUSE);
        if (!kernel) {
                ck_assert_msg(took < 2.0, "auto took %.2f s to settle on FUSE", took);
                ck_assert_str_eq(qt_attachment_disk(a), fx_join(dir, ns, "fuse/disk"));
                ck_assert_str_eq(qt_attachment_nbd_device(a), "");
                ck_assert_uint_eq(qt_attachment_nbd_owner(a), 0);
                ck_assert_uint_gt(qt_attachment_fuse_connection(a), 0);
        }
        ck_assert_uint_eq(qt_attachment_size(a), 24 * MIB);

        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        char pttype[16];
        size_t n = 0;
        ck_assert_int_eq(
            qt_discover(qt_attachment_disk(a), qt_attachment_size(a), pttype, fs, &n, &e), 0);
        ck_assert_uint_eq(n, 2); /* p1, and the space after it */
        ck_assert_str_eq(fs[1].kind, "gap");
        char method_why[QT_FS_MESSAGE_MAX];
        ck_assert_int_eq(qt_trim_method(&fs[0], method_why, sizeof(method_why)), QT_TRIM_MOUNT);
        struct qt_fs_source src;
        qt_attachment_source(a, &fs[0], &src);
        ck_assert_str_eq(src.disk, qt_attachment_disk(a));
        if (!kernel)
                ck_assert_ptr_null(src.device); /* a loop device at the offset, as always */
        ck_assert_int_eq(qt_trim_filesystem(&src, fx_join(dir, ns, "p1"), &fs[0], NULL, NULL), 0);
        ck_assert_str_eq(fs[0].state, "trimmed");
        ck_assert_uint_ge(fs[0].trimmed, 6 * MIB);
        /* The loop device clears with the mount; the kernel may take a moment. */
        for (int i = 0; i < 200 && fx_count_loop_devices(qt_attachment_disk(a)) > 0; i++)
                usleep(10000);
        ck_assert_int_eq(qt_detach(a, &e), 0);
        ck_assert(!fx_is_mount_point(0, fx_join(dir, ns, "fuse"), NULL));
        ck_assert_uint_eq(fx_count_children(NULL), 0);
        fx_sh("rm auto.raw");
}
END_TEST

/* The method per volume (trim.h): only what is mounted needs a source (and a partition node
 * pinned); what discovery refused keeps its reason. */
static enum qt_trim_method method_of(const struct qt_fs_result *fs, char why[QT_FS_MESSAGE_MAX])
{
        why[0] = '\0';
        return qt_trim_method(fs, why, QT_FS_MESSAGE_MAX);
}

START_TEST(test_trim_mounts)
{
        char why[QT_FS_MESSAGE_MAX];
        struct qt_fs_result fs = {.fstype = "xfs", .kind = "partition"};
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_MOUNT);
        snprintf(fs.fstype, sizeof(fs.fstype), "swap");
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_SWAP);
        snprintf(fs.fstype, sizeof(fs.fstype), "swsuspend");
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_SKIP);
        ck_assert(strstr(why, "hibernation image"));
        snprintf(fs.fstype, sizeof(fs.fstype), "crypto_LUKS");
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_SKIP);
        ck_assert(strstr(why, "encrypted"));
        /* Read, never mounted: no host driver needed, no hibernated Windows mounted. */
        snprintf(fs.fstype, sizeof(fs.fstype), "vfat");
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_FREEMAP);
        ck_assert_str_eq(qt_trim_method_name(QT_TRIM_FREEMAP), "freemap");
        snprintf(fs.fstype, sizeof(fs.fstype), "ntfs");
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_FREEMAP);
        snprintf(fs.fstype, sizeof(fs.fstype), "exfat");
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_SKIP);
        fs.fstype[0] = '\0';
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_SKIP);
        ck_assert_str_eq(why, "no filesystem found");
        snprintf(fs.kind, sizeof(fs.kind), "gap");
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_DISCARD);
        snprintf(fs.kind, sizeof(fs.kind), "partition");
        snprintf(fs.fstype, sizeof(fs.fstype), "ext4");
        snprintf(fs.message, sizeof(fs.message), "partition extends past the end of the disk");
        ck_assert_int_eq(method_of(&fs, why), QT_TRIM_SKIP);
        ck_assert_str_eq(why, "partition extends past the end of the disk");
        /* Skipped with discovery's reason kept (it once printed the message onto itself). */
        struct qt_fs_source none = {};
        ck_assert_int_eq(qt_trim_filesystem(&none, "/nonexistent", &fs, NULL, NULL), 0);
        ck_assert_str_eq(fs.state, "skipped");
        ck_assert_str_eq(fs.message, "partition extends past the end of the disk");
        /* A source that cannot work says why, in the filesystem's record. */
        struct qt_fs_result ok = {.fstype = "ext4"};
        struct qt_fs_source unusable = {.disk = "/dev/nbd0", .unusable = "no way to discard"};
        ck_assert_int_eq(qt_trim_filesystem(&unusable, "/nonexistent", &ok, NULL, NULL), 0);
        ck_assert_str_eq(ok.state, "skipped");
        ck_assert_str_eq(ok.message, "no way to discard");
}
END_TEST

/* kernel, asked for where there is no nbd: a clear refusal, nothing started. */
START_TEST(test_kernel_refused_without_nbd)
{
        char ns[PATH_MAX], why[128];
        if (qt_nbd_kernel_available(why, sizeof(why)))
                return; /* a host with nbd: test-attach-kernel.c covers it */
        struct qt_attachment *a = NULL;
        struct qt_error e = {};
        fx_enter_private_namespace(ns);
        ck_assert_int_eq(attach(ns, "gpt.raw", QT_ATTACH_KERNEL, &a, &e), -ENODEV);
        ck_assert_ptr_null(a);
        ck_assert_int_eq(e.code, QT_ERR_UNSUPPORTED);
        ck_assert_msg(strstr(e.message, "cannot attach through the kernel: ") == e.message, "%s",
                      e.message);
        ck_assert_uint_eq(fx_count_children(NULL), 0);
}
END_TEST

START_TEST(test_qemu_nbd_image_args)
{
        char *argv[QT_QEMU_NBD_IMAGE_ARGS_MAX];
        size_t n = qt_qemu_nbd_image_args("json:{}", "qcow2", false, argv);
        ck_assert_uint_eq(n, 4);
        ck_assert_str_eq(argv[0], "--format");
        ck_assert_str_eq(argv[1], "qcow2");
        ck_assert_str_eq(argv[2], "--discard=unmap");
        ck_assert_str_eq(argv[3], "json:{}");
        n = qt_qemu_nbd_image_args("json:{}", "raw", true, argv);
        ck_assert_uint_eq(n, 4);
        ck_assert_str_eq(argv[1], "raw");
        /* Never written: no discards either. */
        ck_assert_str_eq(argv[2], "--read-only");
}
END_TEST

/* qtrimd acts only on names a worker could have been given, and only while the connection is
 * the one the worker reported. */
START_TEST(test_connection_state_names)
{
        static const char *const invalid[] = {
            "",
            "nbd0",
            "/dev/sda",
            "/dev/nbd",
            "/dev/nbd1p2",
            "/dev/nbd0/../sda",
            "/dev/nbd-1",
            "/dev/nbd99999999999999999999",
            "/sys/block/nbd0",
        };
        pid_t server = 42;
        for (size_t i = 0; i < ELEMENTSOF(invalid); i++)
                ck_assert_msg(qt_nbd_kernel_connection_state(invalid[i], 1234, &server) ==
                                  QT_NBD_INVALID_NAME,
                              "%s", invalid[i]);
        ck_assert_int_eq(server, 0);
        /* No owner reported: nothing to compare with. */
        ck_assert_int_eq(qt_nbd_kernel_connection_state("/dev/nbd0", 0, &server),
                         QT_NBD_INVALID_NAME);
        /* A device that does not exist, or is not connected to that owner. */
        ck_assert_int_eq(qt_nbd_kernel_connection_state("/dev/nbd4095", 1234, &server),
                         QT_NBD_RELEASED);
}
END_TEST

/* The worker's attachment fields reach qtrimd's report; the owner precedes the device. */
START_TEST(test_report_fields)
{
        int p[2];
        ck_assert_int_eq(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
        struct qt_reporter rep = {.fd = p[1]};
        qt_emit_str(&rep, "attach-backend", "kernel");
        qt_emit_u64(&rep, "nbd-owner", 4242);
        qt_emit_str(&rep, "nbd-device", "/dev/nbd3");
        char buf[512];
        ssize_t n = read(p[0], buf, sizeof(buf) - 1);
        ck_assert_int_gt(n, 0);
        buf[n] = '\0';
        ck_assert_str_eq(buf, "attach-backend\tkernel\nnbd-owner\t4242\nnbd-device\t/dev/nbd3\n");

        struct qt_report got = {};
        const char *property;
        ck_assert_int_eq(qt_report_apply_line(&got, "attach-backend\tkernel", &property), 0);
        ck_assert_str_eq(property, "AttachBackend");
        ck_assert_int_eq(qt_report_apply_line(&got, "nbd-owner\t4242", &property), 0);
        ck_assert_ptr_null(property);
        ck_assert_int_eq(qt_report_apply_line(&got, "nbd-device\t/dev/nbd3", &property), 0);
        ck_assert_str_eq(property, "NbdDevice");
        ck_assert_str_eq(got.attach_backend, "kernel");
        ck_assert_uint_eq(got.nbd_owner, 4242);
        ck_assert_str_eq(got.nbd_device, "/dev/nbd3");
        /* Bounded like every field: a long name is cut, never overflows. */
        char line[128];
        snprintf(line, sizeof(line), "nbd-device\t/dev/nbd%0100d", 7);
        ck_assert_int_eq(qt_report_apply_line(&got, line, &property), 0);
        ck_assert_uint_eq(strlen(got.nbd_device), sizeof(got.nbd_device) - 1);
        ck_assert_int_eq(qt_report_apply_line(&got, "nbd-owner\t-1", &property), -EBADMSG);
        close(p[0]);
        close(p[1]);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("attach-backend");
        TCase *tc = tcase_create("attach");
        tcase_add_unchecked_fixture(tc, make_images, fx_scratch_teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_auto_and_trim);
        tcase_add_test(tc, test_trim_mounts);
        tcase_add_test(tc, test_kernel_refused_without_nbd);
        tcase_add_test(tc, test_qemu_nbd_image_args);
        tcase_add_test(tc, test_connection_state_names);
        tcase_add_test(tc, test_report_fields);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

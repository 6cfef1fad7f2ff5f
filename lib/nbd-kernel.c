/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "nbd-kernel.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libudev.h>
#include <limits.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <linux/nbd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>

#include "cancel.h"
#include "command.h"
#include "qemu-nbd.h"
#include "report.h"
#include "util.h"

#define SECTOR 512u
/* More nbd devices than this are not looked at (the module's default is 16). */
#define MAX_DEVICES 1024
/* Opening a large image takes qemu-nbd a moment; connecting takes milliseconds after that. */
#define CONNECT_TIMEOUT_MS 60000
/* After a disconnect qemu-nbd closes the image (a flush) and exits. */
#define EXIT_TIMEOUT_MS 10000
/* After the last close the kernel frees the device at once, unless someone else (udev, a host
 * tool scanning disks) has it open for a moment. */
#define FREE_TIMEOUT_MS 10000
/* A partition the kernel knows but whose node is not there yet (or is being replaced). */
#define PARTITION_TIMEOUT_MS 2000
/* Between the owner and the size of a new connection: microseconds (an empty image: never). */
#define SIZE_TIMEOUT_MS 1000
/* Partition numbers the kernel takes (DISK_MAX_PARTS). */
#define MAX_PARTITION_NUMBER 256
#define POLL_MS              5

struct pinned_partition {
        uint64_t offset, size;
        char path[QT_NBD_PATH_MAX];
        int fd;
};

struct qt_nbd_kernel {
        char sysname[16];             /* "nbd3" */
        char device[QT_NBD_PATH_MAX]; /* "/dev/nbd3" */
        int fd;                       /* our open of the device: the lock, ioctls, the flush */
        pid_t server;                 /* qemu-nbd, our child */
        uint64_t owner;               /* /sys/block/nbdN/pid once connected, else 0 */
        uint64_t size;
        bool read_only;
        bool partitions_final; /* the kernel's partition scan is done: no waiting */
        struct pinned_partition pinned[QT_MAX_FILESYSTEMS];
        size_t n_pinned;
        char socket_path[PATH_MAX];
        char log_path[PATH_MAX]; /* qemu-nbd's stdout and stderr */
};

static void sleep_ms(unsigned ms)
{
        nanosleep(&(struct timespec){.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000},
                  NULL);
}

/* A small text file (sysfs, procfs) without its trailing newline. */
static int read_text(const char *path, char *buf, size_t size)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n = read(fd, buf, size - 1);
        if (n < 0)
                return -errno;
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
                n--;
        buf[n] = '\0';
        return 0;
}

static int read_u64(const char *path, uint64_t *ret)
{
        char buf[32];
        int r = read_text(path, buf, sizeof(buf));
        return r < 0 ? r : parse_u64(buf, ret);
}

/* An attribute of /sys/block/<sysname>: read fresh each time (libudev caches them). */
static int disk_attr(const char *sysname, const char *attr, uint64_t *ret)
{
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "/sys/block/%s/%s", sysname, attr);
        return read_u64(path, ret);
}

/* Free: nobody connected (the kernel removes the pid attribute when the device's last user lets
 * go) and no size left from a connection. */
static bool disk_is_free(const char *sysname)
{
        uint64_t pid, size;
        return disk_attr(sysname, "pid", &pid) == -ENOENT &&
               disk_attr(sysname, "size", &size) == 0 && size == 0;
}

/* "nbd12" → 12; -1 for anything else (a partition "nbd1p2", junk). */
static int nbd_index(const char *sysname)
{
        if (strncmp(sysname, "nbd", 3) != 0 || !isdigit((unsigned char)sysname[3]))
                return -1;
        uint64_t n;
        if (parse_u64(sysname + 3, &n) < 0 || n >= INT_MAX)
                return -1;
        return (int)n;
}

static int compare_int(const void *a, const void *b)
{
        int x = *(const int *)a, y = *(const int *)b;
        return (x > y) - (x < y);
}

/* The nbd disks the kernel has, by number. */
static size_t list_disks(struct udev *udev, int indices[MAX_DEVICES])
{
        size_t n = 0;
        struct udev_enumerate *en = udev_enumerate_new(udev);
        if (!en)
                return 0;
        struct udev_list_entry *entry;
        if (udev_enumerate_add_match_subsystem(en, "block") >= 0 &&
            udev_enumerate_add_match_sysname(en, "nbd*") >= 0 &&
            udev_enumerate_scan_devices(en) >= 0)
                udev_list_entry_foreach(entry, udev_enumerate_get_list_entry(en))
                {
                        struct udev_device *d =
                            udev_device_new_from_syspath(udev, udev_list_entry_get_name(entry));
                        if (!d)
                                continue;
                        const char *type = udev_device_get_devtype(d);
                        int index = nbd_index(udev_device_get_sysname(d));
                        if (type && strcmp(type, "disk") == 0 && index >= 0 && n < MAX_DEVICES)
                                indices[n++] = index;
                        udev_device_unref(d);
                }
        udev_enumerate_unref(en);
        qsort(indices, n, sizeof(int), compare_int);
        return n;
}

bool qt_nbd_kernel_available(char *why, size_t why_size)
{
        if (access("/sys/block/nbd0", F_OK) == 0 && access("/dev/nbd0", F_OK) == 0)
                return true;
        if (access("/sys/module/nbd", F_OK) == 0) {
                snprintf(why, why_size, "the nbd module is loaded but /dev/nbd0 is missing");
                return false;
        }
        /* The kmod binary rather than libkmod: one call per job, where the module usually is
         * loaded already; not worth a library in the worker. */
        struct qt_command c = {.argv = (char *[]){"modprobe", "-q", "nbd", NULL}};
        int r = qt_command_run(&c);
        int status = c.status;
        qt_command_done(&c);
        if (r < 0 || status != 0) {
                snprintf(why, why_size, "no /dev/nbd0 and `modprobe nbd` failed");
                return false;
        }
        /* devtmpfs makes the nodes as the module registers its disks; allow a udev-made /dev a
         * moment. */
        for (int i = 0; i < 1000 / POLL_MS; i++) {
                if (access("/dev/nbd0", F_OK) == 0)
                        return true;
                sleep_ms(POLL_MS);
        }
        snprintf(why, why_size, "`modprobe nbd` made no /dev/nbd0");
        return false;
}

static bool is_thread_of(pid_t pid, uint64_t tid)
{
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/task/%llu", (int)pid, (unsigned long long)tid);
        return access(path, F_OK) == 0;
}

/* The first line of qemu-nbd's log that says something (not -v's "is now connected"). */
static void server_message(const struct qt_nbd_kernel *k, char *buf, size_t size)
{
        char log[2048];
        buf[0] = '\0';
        if (read_text(k->log_path, log, sizeof(log)) < 0)
                return;
        for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n"))
                if (line[0] && strncmp(line, "NBD device ", strlen("NBD device ")) != 0) {
                        snprintf(buf, size, "%s", line);
                        return;
                }
}

/* Whatever qemu-nbd said beyond -v's greeting goes to the worker's log. */
static void forward_log(const struct qt_nbd_kernel *k)
{
        char msg[512];
        server_message(k, msg, sizeof(msg));
        if (msg[0])
                fprintf(stderr, "qtrim worker %d: qemu-nbd on %s: %s\n", (int)getpid(), k->device,
                        msg);
}

static int start_server(struct qt_nbd_kernel *k, const char *image, const char *format,
                        struct qt_error *e)
{
        char opts[QT_QEMU_NBD_OPTS_MAX];
        char *argv[16] = {"qemu-nbd", "-v", "-c", k->device, "-k", k->socket_path,
                          /* qemu-nbd's default, as on the FUSE path: the kernel's flushes (the
                           * journals', and ours at detach) reach the image as fdatasync. */
                          "--cache=writeback"};
        size_t n = 7;
        n += qt_qemu_nbd_image_args(image, format, k->read_only, opts, argv + n);
        argv[n] = NULL;

        _cleanup_close_ int log = open(k->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (log < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot create %s: %m", k->log_path);
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot start qemu-nbd: %m");
        if (pid == 0) {
                /* SIGTERM: qemu-nbd disconnects the device and closes the image cleanly. */
                qt_child_prepare(parent, SIGTERM);
                if (dup2(log, 1) < 0 || dup2(log, 2) < 0)
                        _exit(127);
                close_range(3, ~0U, 0);
                execvp(argv[0], argv);
                dprintf(2, "cannot run qemu-nbd: %s\n", strerror(errno));
                _exit(127);
        }
        k->server = pid;
        return 0;
}

/* qemu-nbd exits once its client (the kernel) is gone; one that does not is killed. Returns its
 * exit status, 128 + signal, or -1 if it was killed here. */
static int reap_server(struct qt_nbd_kernel *k)
{
        pid_t pid = k->server;
        k->server = 0;
        return qt_qemu_nbd_reap(pid, EXIT_TIMEOUT_MS);
}

static void stop_server(struct qt_nbd_kernel *k)
{
        if (k->server <= 0)
                return;
        kill(k->server, SIGTERM);
        (void)reap_server(k);
}

/* Waits until the kernel names our qemu-nbd as the device's owner. -EBUSY if someone else
 * connected the device first. */
static int wait_connected(struct qt_nbd_kernel *k, struct qt_error *e)
{
        for (int i = 0; i < CONNECT_TIMEOUT_MS / POLL_MS; i++) {
                int status;
                if (waitpid(k->server, &status, WNOHANG) == k->server) {
                        k->server = 0;
                        char msg[QT_ERROR_MESSAGE_MAX - 64];
                        server_message(k, msg, sizeof(msg));
                        /* Someone else connected it first, or is setting it up ("Failed to set
                         * NBD socket": the kernel's EBUSY), where it looked free: try the next.
                         * qemu-nbd opens the image before the device, so an image it cannot
                         * open never says either. */
                        if (!disk_is_free(k->sysname) || strstr(msg, "NBD socket") ||
                            strstr(msg, k->device))
                                return -EBUSY;
                        return qt_error_set(e, QT_ERR_FAILED, EIO, "qemu-nbd -c %s failed: %s",
                                            k->device, msg[0] ? msg : "no message");
                }
                uint64_t owner, size;
                if (disk_attr(k->sysname, "pid", &owner) == 0) {
                        if (!is_thread_of(k->server, owner))
                                return -EBUSY;
                        k->owner = owner;
                        /* The kernel names the owner just before it sets the size. */
                        for (int j = 0; j < SIZE_TIMEOUT_MS / POLL_MS; j++) {
                                if (disk_attr(k->sysname, "size", &size) == 0 && size > 0)
                                        break;
                                sleep_ms(POLL_MS);
                        }
                        return 0;
                }
                if (qt_cancel_requested)
                        return -ECANCELED;
                sleep_ms(POLL_MS);
        }
        return qt_error_set(e, QT_ERR_FAILED, ETIMEDOUT, "qemu-nbd did not connect %s in %d s",
                            k->device, CONNECT_TIMEOUT_MS / 1000);
}

/* Claims /dev/nbd<index> and connects the image to it: 0, -EBUSY (taken: try another), or an
 * error that ends the attach. */
static int try_device(struct qt_nbd_kernel *k, int index, const char *image, const char *format,
                      struct qt_error *e)
{
        snprintf(k->sysname, sizeof(k->sysname), "nbd%d", index);
        snprintf(k->device, sizeof(k->device), "/dev/nbd%d", index);
        if (!disk_is_free(k->sysname))
                return -EBUSY;
        /* O_RDONLY: the lock, ioctls and fsync need no more, and it never conflicts with a
         * read-only connection. */
        k->fd = open(k->device, O_RDONLY | O_CLOEXEC);
        if (k->fd < 0)
                return -EBUSY;
        /* Checked again under the lock: another worker may have connected it in between. */
        if (flock(k->fd, LOCK_EX | LOCK_NB) < 0 || !disk_is_free(k->sysname)) {
                closep(&k->fd);
                return -EBUSY;
        }
        int r = start_server(k, image, format, e);
        if (r >= 0)
                r = wait_connected(k, e);
        if (r < 0) {
                stop_server(k);
                closep(&k->fd);
        }
        return r;
}

int qt_nbd_kernel_attach(const char *image, const char *format, bool read_only,
                         const char *scratch_dir, struct qt_nbd_kernel **ret, struct qt_error *e)
{
        struct qt_nbd_kernel *k = calloc(1, sizeof(*k));
        if (!k)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
        k->fd = -1;
        k->read_only = read_only;
        if (snprintf(k->socket_path, sizeof(k->socket_path), "%s/qemu-nbd.sock", scratch_dir) >=
                (int)sizeof(k->socket_path) ||
            snprintf(k->log_path, sizeof(k->log_path), "%s/qemu-nbd.log", scratch_dir) >=
                (int)sizeof(k->log_path)) {
                free(k);
                return qt_error_set(e, QT_ERR_FAILED, ENAMETOOLONG, "%s: path too long",
                                    scratch_dir);
        }

        int indices[MAX_DEVICES];
        struct udev *udev = udev_new();
        size_t n = udev ? list_disks(udev, indices) : 0;
        udev_unref(udev);

        int r = -EBUSY;
        for (size_t i = 0; i < n && r == -EBUSY; i++) {
                if (qt_cancel_requested)
                        r = -ECANCELED;
                else
                        r = try_device(k, indices[i], image, format, e);
        }
        if (r == -EBUSY)
                r = qt_error_set(e, QT_ERR_FAILED, ENODEV,
                                 n ? "no free nbd device (all %zu in use)" : "no nbd devices", n);
        if (r < 0) {
                free(k);
                return r;
        }

        if (ioctl(k->fd, BLKGETSIZE64, &k->size) < 0) {
                r = qt_error_set(e, QT_ERR_FAILED, errno, "cannot read the size of %s: %m",
                                 k->device);
                qt_nbd_kernel_detach(k, NULL);
                return r;
        }
        /* The partitions as the kernel reads them now, synchronously: the scan the connection
         * asks for would run in whoever opens the device next (qemu-nbd's own thread, a detach
         * right after this one), and nodes left from the device's previous user must go. */
        r = ioctl(k->fd, BLKRRPART) < 0 ? -errno : 0;
        /* EINVAL: the device takes no partitions: nothing to wait for. */
        k->partitions_final = r == 0 || r == -EINVAL;
        *ret = k;
        return 0;
}

const char *qt_nbd_kernel_device(const struct qt_nbd_kernel *k)
{
        return k->device;
}

uint64_t qt_nbd_kernel_size(const struct qt_nbd_kernel *k)
{
        return k->size;
}

uint64_t qt_nbd_kernel_owner(const struct qt_nbd_kernel *k)
{
        return k->owner;
}

/* Whether the partition numbered devnum still has this start and size (sectors). */
static bool partition_is(dev_t devnum, uint64_t start, uint64_t sectors)
{
        char path[PATH_MAX];
        uint64_t s, n;
        snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/start", major(devnum), minor(devnum));
        if (read_u64(path, &s) < 0)
                return false;
        snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/size", major(devnum), minor(devnum));
        return read_u64(path, &n) == 0 && s == start && n == sectors;
}

struct kernel_partition {
        int number;
        uint64_t start, sectors;
        dev_t devnum;
        char node[QT_NBD_PATH_MAX];
};

/* The partitions the kernel has on the disk now, from libudev (sysfs). */
static size_t list_partitions(const struct qt_nbd_kernel *k, struct kernel_partition *out,
                              size_t max)
{
        size_t n = 0;
        struct udev *udev = udev_new();
        struct udev_device *disk =
            udev ? udev_device_new_from_subsystem_sysname(udev, "block", k->sysname) : NULL;
        struct udev_enumerate *en = disk ? udev_enumerate_new(udev) : NULL;
        struct udev_list_entry *entry;
        if (en && udev_enumerate_add_match_parent(en, disk) >= 0 &&
            udev_enumerate_add_match_subsystem(en, "block") >= 0 &&
            udev_enumerate_scan_devices(en) >= 0)
                udev_list_entry_foreach(entry, udev_enumerate_get_list_entry(en))
                {
                        struct udev_device *d =
                            udev_device_new_from_syspath(udev, udev_list_entry_get_name(entry));
                        if (!d)
                                continue;
                        const char *type = udev_device_get_devtype(d);
                        const char *number = udev_device_get_sysattr_value(d, "partition");
                        const char *start = udev_device_get_sysattr_value(d, "start");
                        const char *size = udev_device_get_sysattr_value(d, "size");
                        const char *node = udev_device_get_devnode(d);
                        struct kernel_partition *p = &out[n];
                        uint64_t num;
                        if (n < max && type && strcmp(type, "partition") == 0 && number && start &&
                            size && node && strlen(node) < sizeof(p->node) &&
                            parse_u64(number, &num) == 0 && num < INT_MAX &&
                            parse_u64(start, &p->start) == 0 && parse_u64(size, &p->sectors) == 0) {
                                p->number = (int)num;
                                p->devnum = udev_device_get_devnum(d);
                                snprintf(p->node, sizeof(p->node), "%s", node);
                                n++;
                        }
                        udev_device_unref(d);
                }
        udev_enumerate_unref(en);
        udev_device_unref(disk);
        udev_unref(udev);
        return n;
}

/* Opens the node of a partition the kernel lists and checks it is that partition. */
static int pin(const struct kernel_partition *kp, struct pinned_partition *p)
{
        int fd = open(kp->node, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -EAGAIN; /* not made yet, or removed by a rescan */
        /* Open, the partition cannot be replaced by a rescan any more: check it is still the
         * one we looked at. */
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISBLK(st.st_mode) || st.st_rdev != kp->devnum ||
            !partition_is(kp->devnum, kp->start, kp->sectors)) {
                close(fd);
                return -EAGAIN;
        }
        snprintf(p->path, sizeof(p->path), "%s", kp->node);
        p->fd = fd;
        return 0;
}

/* -ENOENT: the kernel lists no such partition; -EAGAIN: it does, but it could not be opened. */
static int find_partition(const struct qt_nbd_kernel *k, uint64_t start, uint64_t sectors,
                          struct pinned_partition *p)
{
        struct kernel_partition parts[QT_MAX_FILESYSTEMS * 2];
        size_t n = list_partitions(k, parts, ELEMENTSOF(parts));
        for (size_t i = 0; i < n; i++)
                if (parts[i].start == start && parts[i].sectors == sectors)
                        return pin(&parts[i], p);
        return -ENOENT;
}

static bool is_pinned(const struct qt_nbd_kernel *k, uint64_t start, uint64_t sectors)
{
        for (size_t i = 0; i < k->n_pinned; i++)
                if (k->pinned[i].offset == start * SECTOR && k->pinned[i].size == sectors * SECTOR)
                        return true;
        return false;
}

static int blkpg(const struct qt_nbd_kernel *k, int op, int number, uint64_t start,
                 uint64_t sectors)
{
        struct blkpg_partition part = {
            .start = (long long)(start * SECTOR),
            .length = (long long)(sectors * SECTOR),
            .pno = number,
        };
        struct blkpg_ioctl_arg arg = {.op = op, .datalen = sizeof(part), .data = &part};
        return ioctl(k->fd, BLKPG, &arg) < 0 ? -errno : 0;
}

/* The kernel read the table otherwise than libblkid (or not at all): make the partition libblkid
 * found, the kernel's own partitions that overlap it out of the way unless we use them. Numbered
 * as libblkid numbers it where that number is free. */
static int add_partition(struct qt_nbd_kernel *k, int number, uint64_t start, uint64_t sectors)
{
        struct kernel_partition parts[QT_MAX_FILESYSTEMS * 2];
        bool taken[MAX_PARTITION_NUMBER] = {};
        size_t n = list_partitions(k, parts, ELEMENTSOF(parts));
        for (size_t i = 0; i < n; i++) {
                const struct kernel_partition *p = &parts[i];
                bool overlaps = p->start < start + sectors && start < p->start + p->sectors;
                if (overlaps && !is_pinned(k, p->start, p->sectors)) {
                        int r = blkpg(k, BLKPG_DEL_PARTITION, p->number, 0, 0);
                        if (r < 0)
                                return r;
                } else if (p->number > 0 && p->number < MAX_PARTITION_NUMBER)
                        taken[p->number] = true;
        }
        if (number <= 0 || number >= MAX_PARTITION_NUMBER || taken[number])
                for (number = 1; number < MAX_PARTITION_NUMBER && taken[number]; number++)
                        ;
        if (number == MAX_PARTITION_NUMBER)
                return -ENOSPC;
        int r = blkpg(k, BLKPG_ADD_PARTITION, number, start, sectors);
        if (r == 0)
                fprintf(stderr,
                        "qtrim worker %d: the kernel has no partition at sectors %llu+%llu of "
                        "%s, where libblkid found one: added it as partition %d\n",
                        (int)getpid(), (unsigned long long)start, (unsigned long long)sectors,
                        k->device, number);
        return r;
}

int qt_nbd_kernel_hide_partition(struct qt_nbd_kernel *k, uint64_t offset, uint64_t size)
{
        struct kernel_partition parts[QT_MAX_FILESYSTEMS * 2];
        size_t n = list_partitions(k, parts, ELEMENTSOF(parts));
        for (size_t i = 0; i < n; i++)
                if (parts[i].start * SECTOR == offset && parts[i].sectors * SECTOR == size &&
                    !is_pinned(k, parts[i].start, parts[i].sectors))
                        return blkpg(k, BLKPG_DEL_PARTITION, parts[i].number, 0, 0);
        return 0;
}

/* Finds the partition, waiting a little for a node that is being made. */
static int find_partition_waiting(struct qt_nbd_kernel *k, uint64_t start, uint64_t sectors,
                                  bool final, struct pinned_partition *p)
{
        int r = -ENOENT;
        for (int i = 0; i < PARTITION_TIMEOUT_MS / POLL_MS; i++) {
                r = find_partition(k, start, sectors, p);
                /* After a completed scan a partition the kernel does not list never comes. */
                if (r == 0 || (r == -ENOENT && final) || qt_cancel_requested)
                        break;
                sleep_ms(POLL_MS);
        }
        return r;
}

const char *qt_nbd_kernel_partition(struct qt_nbd_kernel *k, int number, uint64_t offset,
                                    uint64_t size)
{
        for (size_t i = 0; i < k->n_pinned; i++)
                if (k->pinned[i].offset == offset && k->pinned[i].size == size)
                        return k->pinned[i].path;
        if (offset % SECTOR || size % SECTOR || size == 0 || k->n_pinned == QT_MAX_FILESYSTEMS)
                return NULL;

        uint64_t start = offset / SECTOR, sectors = size / SECTOR;
        struct pinned_partition *p = &k->pinned[k->n_pinned];
        *p = (struct pinned_partition){.offset = offset, .size = size, .fd = -1};
        int r = find_partition_waiting(k, start, sectors, k->partitions_final, p);
        if (r == -ENOENT && add_partition(k, number, start, sectors) == 0)
                r = find_partition_waiting(k, start, sectors, false, p);
        if (r < 0)
                return NULL;
        k->n_pinned++;
        return p->path;
}

bool qt_nbd_kernel_loop_can_discard(const struct qt_nbd_kernel *k)
{
        uint64_t bytes;
        return disk_attr(k->sysname, "queue/write_zeroes_max_bytes", &bytes) == 0 && bytes > 0;
}

/* The kernel frees the device when its last opener closes: the pid attribute goes. */
static bool wait_free(const struct qt_nbd_kernel *k)
{
        for (int i = 0; i < FREE_TIMEOUT_MS / POLL_MS; i++) {
                uint64_t pid;
                if (disk_attr(k->sysname, "pid", &pid) == -ENOENT)
                        return true;
                sleep_ms(POLL_MS);
        }
        return false;
}

int qt_nbd_kernel_detach(struct qt_nbd_kernel *k, struct qt_error *e)
{
        int r = 0;
        if (!k)
                return 0;
        for (size_t i = 0; i < k->n_pinned; i++)
                closep(&k->pinned[i].fd);

        if (k->server > 0 && k->owner) {
                int status;
                if (waitpid(k->server, &status, WNOHANG) != 0) {
                        /* A server that is gone may have lost writes: that is a failed job, never
                         * one to convert and replace. */
                        k->server = 0;
                        char msg[256];
                        server_message(k, msg, sizeof(msg));
                        r = qt_error_set(e, QT_ERR_FAILED, EIO, "qemu-nbd went away: %s",
                                         msg[0] ? msg : "no message");
                } else {
                        /* Whatever a loop device wrote through the disk's page cache, then the
                         * image itself. */
                        if (!k->read_only && fsync(k->fd) < 0)
                                r = qt_error_set(e, QT_ERR_FAILED, errno,
                                                 "flushing the image failed: %m");
                        /* qemu-nbd's client thread then clears the socket and ends the server;
                         * without the disconnect, SIGTERM does the same. */
                        if (ioctl(k->fd, NBD_DISCONNECT) < 0)
                                kill(k->server, SIGTERM);
                        int exit_status = reap_server(k);
                        if (exit_status != 0)
                                r = qt_error_set(e, QT_ERR_FAILED, EIO,
                                                 "qemu-nbd did not exit cleanly (status %d)",
                                                 exit_status);
                }
        }
        stop_server(k); /* never connected: attach failed half-way */

        if (k->fd >= 0) {
                if (k->owner) {
                        /* Ours is the last open now: clearing the socket drops the size to 0,
                         * and a rescan of an empty disk removes its partition nodes, which would
                         * otherwise stay for udev to probe. Not with a size left (another
                         * opener): the rescan would read a disk that is gone. */
                        uint64_t size = 1;
                        ioctl(k->fd, NBD_CLEAR_SOCK);
                        if (ioctl(k->fd, BLKGETSIZE64, &size) == 0 && size == 0)
                                ioctl(k->fd, BLKRRPART);
                }
                closep(&k->fd);
        }
        if (k->owner && !wait_free(k))
                fprintf(stderr,
                        "qtrim worker %d: %s is still held by another process %d s after the "
                        "disconnect\n",
                        (int)getpid(), k->device, FREE_TIMEOUT_MS / 1000);
        forward_log(k);
        unlink(k->socket_path);
        unlink(k->log_path);
        free(k);
        return r;
}

/* "/dev/nbd<digits>" → "nbd<digits>"; NULL for any other name. */
static const char *device_sysname(const char *device)
{
        if (strncmp(device, "/dev/", 5) != 0 || nbd_index(device + 5) < 0 ||
            strlen(device) >= QT_NBD_PATH_MAX)
                return NULL;
        for (const char *p = device + 8; *p; p++)
                if (!isdigit((unsigned char)*p))
                        return NULL;
        return device + 5;
}

/* The process a thread belongs to, if that process is a qemu-nbd. */
static pid_t server_of_thread(uint64_t tid)
{
        char path[64], buf[4096], digits[24];
        uint64_t pid;
        snprintf(path, sizeof(path), "/proc/%llu/status", (unsigned long long)tid);
        if (tid == 0 || tid > INT_MAX || read_text(path, buf, sizeof(buf)) < 0)
                return 0;
        const char *tgid = strstr(buf, "\nTgid:\t");
        if (!tgid || sscanf(tgid + 7, "%23[0-9]", digits) != 1 || parse_u64(digits, &pid) < 0 ||
            pid == 0 || pid > INT_MAX)
                return 0;
        snprintf(path, sizeof(path), "/proc/%llu/comm", (unsigned long long)pid);
        if (read_text(path, buf, sizeof(buf)) < 0 || strcmp(buf, "qemu-nbd") != 0)
                return 0;
        return (pid_t)pid;
}

enum qt_nbd_connection qt_nbd_kernel_connection_state(const char *device, uint64_t owner,
                                                      pid_t *ret_server)
{
        const char *sysname = device_sysname(device);
        uint64_t pid;
        *ret_server = 0;
        if (!sysname || owner == 0)
                return QT_NBD_INVALID_NAME;
        if (disk_attr(sysname, "pid", &pid) < 0 || pid != owner)
                return QT_NBD_RELEASED;
        *ret_server = server_of_thread(owner);
        return *ret_server ? QT_NBD_SERVED : QT_NBD_LINGERING;
}

const char *qt_nbd_kernel_linear(struct qt_nbd_kernel *k, const struct qt_range *extents, size_t n)
{
        fprintf(stderr, "qtrim worker %d: no device-mapper mapping yet\n", (int)getpid());
        return NULL;
}

void qt_nbd_kernel_drop_stale_partitions(const char *device)
{
        const char *sysname = device_sysname(device);
        if (!sysname)
                return;
        _cleanup_close_ int fd = open(device, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        uint64_t size = 1;
        /* Under the lock, so no worker is claiming it meanwhile; only a free, empty disk. */
        if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0 || !disk_is_free(sysname) ||
            ioctl(fd, BLKGETSIZE64, &size) < 0 || size != 0)
                return;
        (void)ioctl(fd, BLKRRPART);
}

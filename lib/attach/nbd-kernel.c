/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "nbd-kernel.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libudev.h>
#include <limits.h>
#include <linux/blkpg.h>
#include <linux/dm-ioctl.h>
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
        dev_t devnum;
        int fd;
};

/* A device-mapper device of ours over pinned partitions (an LV in several places). */
struct linear_device {
        char name[DM_NAME_LEN];     /* "qtrim-nbd3-1" */
        char path[QT_NBD_PATH_MAX]; /* "/dev/dm-4" */
        bool made_node;             /* /dev had none: we made it, we unlink it */
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
        /* Partitions of volumes and of the extents of linear devices alike. */
        struct pinned_partition pinned[QT_MAX_FILESYSTEMS];
        size_t n_pinned;
        struct linear_device linear[QT_MAX_FILESYSTEMS];
        size_t n_linear;
        unsigned linear_serial; /* the last name's number */
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
        char *argv[16] = {"qemu-nbd", "-v", "-c", k->device, "-k", k->socket_path,
                          /* qemu-nbd's default, as on the FUSE path: the kernel's flushes (the
                           * journals', and ours at detach) reach the image as fdatasync. */
                          "--cache=writeback"};
        size_t n = 7;
        n += qt_qemu_nbd_image_args(image, format, k->read_only, argv + n);
        argv[n] = NULL;

        _cleanup_close_ int log = open(k->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (log < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot create %s: %m", k->log_path);
        pid_t pid = qt_qemu_nbd_spawn(argv, -1, log);
        if (pid < 0)
                return qt_error_set(e, QT_ERR_FAILED, -pid, "cannot start qemu-nbd: %s",
                                    strerror(-pid));
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

/* A free (no connection) and empty disk keeps the partition nodes of its last connection until
 * a rescan: they would wait for udev to probe a disk that is gone. fd: open, under our lock. */
static void drop_partitions_of_free_disk(int fd, const char *sysname)
{
        uint64_t size = 1;
        if (disk_is_free(sysname) && ioctl(fd, BLKGETSIZE64, &size) == 0 && size == 0)
                (void)ioctl(fd, BLKRRPART);
}

/* Claims /dev/nbd<index> and connects the image to it: 0, -EBUSY (taken: try another), or an
 * error that ends the attach. */
static int try_device(struct qt_nbd_kernel *k, int index, const char *image, const char *format,
                      qt_nbd_claim_fn on_claim, void *userdata, struct qt_error *e)
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
        if (on_claim)
                on_claim(k->device, userdata);
        int r = start_server(k, image, format, e);
        if (r >= 0)
                r = wait_connected(k, e);
        if (r < 0) {
                stop_server(k);
                closep(&k->fd);
                /* Canceled (qtrimd gone: our parent-death SIGTERM) or failed in the middle of the
                 * connect: the connection may have come and gone with its partition scan, and
                 * nobody else may be left to drop the nodes. After our close: an open keeps the
                 * device's configuration, and its size, alive. */
                qt_nbd_kernel_drop_stale_partitions(k->device);
        }
        return r;
}

int qt_nbd_kernel_attach(const char *image, const char *format, bool read_only,
                         const char *scratch_dir, qt_nbd_claim_fn on_claim, void *userdata,
                         struct qt_nbd_kernel **ret, struct qt_error *e)
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
                        r = try_device(k, indices[i], image, format, on_claim, userdata, e);
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
        p->devnum = kp->devnum;
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

/* The pinned partition over exactly [offset, +size) of the disk (bytes): found, made or
 * already pinned. NULL if there is none and none can be made. */
static const struct pinned_partition *pin_range(struct qt_nbd_kernel *k, int number,
                                                uint64_t offset, uint64_t size)
{
        for (size_t i = 0; i < k->n_pinned; i++)
                if (k->pinned[i].offset == offset && k->pinned[i].size == size)
                        return &k->pinned[i];
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
        return p;
}

const char *qt_nbd_kernel_partition(struct qt_nbd_kernel *k, int number, uint64_t offset,
                                    uint64_t size)
{
        const struct pinned_partition *p = pin_range(k, number, offset, size);
        return p ? p->path : NULL;
}

bool qt_nbd_kernel_loop_can_discard(const struct qt_nbd_kernel *k)
{
        uint64_t bytes;
        return disk_attr(k->sysname, "queue/write_zeroes_max_bytes", &bytes) == 0 && bytes > 0;
}

/* ---- device-mapper: one device over an LV's extents -------------------------------------- */

/* The node device-mapper's control device has (misc 10:236, devtmpfs's "mapper/control"). */
#define DM_CONTROL_PATH  "/dev/mapper/control"
#define DM_CONTROL_MAJOR 10
#define DM_CONTROL_MINOR 236
/* The interface version asked for: 4.27 (Linux 3.13) has deferred removal. */
#define DM_IOCTL_MINOR 27
/* libdm's udev flags (lvm2's device_mapper/all.h), which the kernel hands to udev in the DM_COOKIE
 * of the uevents of a resume and a remove: skip dm's own rules (no /dev/mapper link), the
 * subsystem's (LVM: no pvscan, no activation), the disk rules (no blkid, no /dev/disk links) and
 * everyone else's. The cookie's lower half, libdm's semaphore for waiting on udev, stays 0: the
 * rules' `dmsetup udevcomplete` then has nothing to signal. */
#define DM_UDEV_FLAGS_SHIFT    16
#define DM_UDEV_NO_DM_RULES    0x0001
#define DM_UDEV_NO_SUBSYSTEM   0x0002
#define DM_UDEV_NO_DISK_RULES  0x0004
#define DM_UDEV_NO_OTHER_RULES 0x0008
#define DM_COOKIE                                                                                  \
        ((uint32_t)(DM_UDEV_NO_DM_RULES | DM_UDEV_NO_SUBSYSTEM | DM_UDEV_NO_DISK_RULES |           \
                    DM_UDEV_NO_OTHER_RULES)                                                        \
         << DM_UDEV_FLAGS_SHIFT)
/* Names "qtrim-nbd3-1", UUIDs "QTRIM-nbd3-<owner>-1": whose it is, for qtrimd after a dead
 * worker; the UUID prefix is no other tool's (LVM's is "LVM-", cryptsetup's "CRYPT-"). */
#define DM_NAME_PREFIX "qtrim-"
#define DM_UUID_PREFIX "QTRIM-"
/* A target's parameters: "<major>:<minor> <sector>", at most 33 characters and a NUL. */
#define DM_PARAMS_MAX 40
/* Names tried when one is taken (a device of ours no cleanup got to). */
#define DM_NAME_TRIES 16
/* After the unmount, the last close of a device can lag a moment (udev, a blkid). */
#define DM_REMOVE_TIMEOUT_MS 2000
/* A listing of every device-mapper device of the host: grown up to this. */
#define DM_LIST_MAX (1u << 20)

static void dm_header(struct dm_ioctl *io, size_t size, const char *name)
{
        memset(io, 0, size);
        io->version[0] = DM_VERSION_MAJOR;
        io->version[1] = DM_IOCTL_MINOR;
        io->data_size = (uint32_t)size;
        io->data_start = sizeof(*io);
        if (name)
                snprintf(io->name, sizeof(io->name), "%s", name);
}

static int dm_call(int control, unsigned long request, struct dm_ioctl *io)
{
        return ioctl(control, request, io) < 0 ? -errno : 0;
}

/* device-mapper's control device. Where /dev has no node for it (no devtmpfs, or dm-mod not
 * loaded yet), it is made: opening it loads the module (the kernel's char-major-10-236 alias). */
static int dm_control_open(void)
{
        int fd = open(DM_CONTROL_PATH, O_RDWR | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
                if (mkdir("/dev/mapper", 0755) < 0 && errno != EEXIST)
                        return -errno;
                if (mknod(DM_CONTROL_PATH, S_IFCHR | 0600,
                          makedev(DM_CONTROL_MAJOR, DM_CONTROL_MINOR)) < 0 &&
                    errno != EEXIST)
                        return -errno;
                fd = open(DM_CONTROL_PATH, O_RDWR | O_CLOEXEC);
        }
        if (fd < 0)
                return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISCHR(st.st_mode) ||
            st.st_rdev != makedev(DM_CONTROL_MAJOR, DM_CONTROL_MINOR)) {
                close(fd);
                return -ENODEV;
        }
        return fd;
}

/* deferred: a device still open goes when its last opener closes it. -ENXIO: no such device. */
static int dm_remove(int control, const char *name, bool deferred)
{
        struct dm_ioctl io;
        dm_header(&io, sizeof(io), name);
        io.event_nr = DM_COOKIE;
        if (deferred)
                io.flags |= DM_DEFERRED_REMOVE;
        return dm_call(control, DM_DEV_REMOVE, &io);
}

/* The table: each extent, a pinned partition exactly over it, one after the other. Through the
 * partitions rather than the whole disk: device-mapper claims what it maps, and a claim of the
 * disk excludes a claim of any of its partitions (a mount), both ways. */
static int dm_load(int control, const char *name, const struct pinned_partition *const *parts,
                   size_t n, bool read_only)
{
        size_t size = sizeof(struct dm_ioctl) + n * (sizeof(struct dm_target_spec) + DM_PARAMS_MAX);
        _cleanup_free_ struct dm_ioctl *io = calloc(1, size);
        if (!io)
                return -ENOMEM;
        dm_header(io, size, name);
        io->target_count = (uint32_t)n;
        if (read_only)
                io->flags |= DM_READONLY_FLAG;
        char *at = (char *)io + io->data_start;
        uint64_t start = 0;
        for (size_t i = 0; i < n; i++) {
                struct dm_target_spec *spec = (struct dm_target_spec *)(void *)at;
                char *params = at + sizeof(*spec);
                spec->sector_start = start;
                spec->length = parts[i]->size / SECTOR;
                snprintf(spec->target_type, sizeof(spec->target_type), "linear");
                int len = snprintf(params, DM_PARAMS_MAX, "%u:%u 0", major(parts[i]->devnum),
                                   minor(parts[i]->devnum));
                /* Each spec 8-byte aligned, as the kernel reads them. */
                spec->next = (uint32_t)(sizeof(*spec) + (((size_t)len + 1 + 7) & ~(size_t)7));
                at += spec->next;
                start += spec->length;
        }
        return dm_call(control, DM_TABLE_LOAD, io);
}

/* Creates the device (a free name of ours), loads its table and resumes it; ret_devnum: its
 * device number. On failure nothing is left. why: a few words for the failing step. */
static int dm_create(struct qt_nbd_kernel *k, int control,
                     const struct pinned_partition *const *parts, size_t n,
                     struct linear_device *ld, dev_t *ret_devnum, const char **why)
{
        struct dm_ioctl io;
        int r = -EBUSY;
        for (int i = 0; i < DM_NAME_TRIES && r == -EBUSY; i++) {
                unsigned serial = ++k->linear_serial;
                dm_header(&io, sizeof(io), NULL);
                snprintf(io.name, sizeof(io.name), DM_NAME_PREFIX "%s-%u", k->sysname, serial);
                snprintf(io.uuid, sizeof(io.uuid), DM_UUID_PREFIX "%s-%llu-%u", k->sysname,
                         (unsigned long long)k->owner, serial);
                io.event_nr = DM_COOKIE;
                r = dm_call(control, DM_DEV_CREATE, &io); /* EBUSY: name or UUID taken */
        }
        if (r < 0) {
                *why = "DM_DEV_CREATE";
                return r;
        }
        snprintf(ld->name, sizeof(ld->name), "%s", io.name);
        r = dm_load(control, ld->name, parts, n, k->read_only);
        if (r < 0)
                *why = "DM_TABLE_LOAD";
        if (r >= 0) {
                dm_header(&io, sizeof(io), ld->name); /* no DM_SUSPEND_FLAG: a resume */
                io.event_nr = DM_COOKIE;
                r = dm_call(control, DM_DEV_SUSPEND, &io);
                if (r < 0)
                        *why = "resuming it";
        }
        if (r < 0) {
                (void)dm_remove(control, ld->name, false);
                return r;
        }
        *ret_devnum = (dev_t)io.dev;
        return 0;
}

/* Opens the device's node, /dev/dm-<minor> as devtmpfs names it (a udev-made /dev follows the
 * kernel's names too), allowing it a moment, else made here: the rules that would make it are
 * the ones the cookie turns off. It stays open until detach, like a pinned partition. */
static int linear_open(struct linear_device *ld, dev_t devnum)
{
        snprintf(ld->path, sizeof(ld->path), "/dev/dm-%u", minor(devnum));
        int fd = -1;
        for (int i = 0; i < PARTITION_TIMEOUT_MS / POLL_MS && fd < 0; i++) {
                fd = open(ld->path, O_RDONLY | O_CLOEXEC);
                if (fd < 0 && errno != ENOENT)
                        return -errno;
                if (fd < 0)
                        sleep_ms(POLL_MS);
        }
        if (fd < 0) {
                if (mknod(ld->path, S_IFBLK | 0600, devnum) < 0)
                        return -errno;
                ld->made_node = true;
                fd = open(ld->path, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        return -errno;
        }
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISBLK(st.st_mode) || st.st_rdev != devnum) {
                close(fd);
                return -ENODEV; /* a node of another device under that name */
        }
        ld->fd = fd;
        return 0;
}

/* Closes and removes ld, retrying while something still has it open, then deferring. */
static void linear_remove(int control, struct linear_device *ld)
{
        closep(&ld->fd);
        int r = control < 0 ? control : -EBUSY;
        for (int i = 0; r == -EBUSY && i < DM_REMOVE_TIMEOUT_MS / POLL_MS; i++) {
                if (i > 0)
                        sleep_ms(POLL_MS);
                r = dm_remove(control, ld->name, false);
        }
        if (r == -EBUSY && dm_remove(control, ld->name, true) == 0)
                fprintf(stderr,
                        "qtrim worker %d: %s (%s) is still open %d s after its unmount: it goes "
                        "when its last user closes it\n",
                        (int)getpid(), ld->name, ld->path, DM_REMOVE_TIMEOUT_MS / 1000);
        else if (r < 0 && r != -ENXIO)
                fprintf(stderr, "qtrim worker %d: cannot remove %s (%s): %s\n", (int)getpid(),
                        ld->name, ld->path, strerror(-r));
        if (ld->made_node)
                unlink(ld->path);
}

static void linear_remove_all(struct qt_nbd_kernel *k)
{
        if (k->n_linear == 0)
                return;
        int control = dm_control_open(); /* a failure: each removal says so */
        while (k->n_linear > 0)
                linear_remove(control, &k->linear[--k->n_linear]);
        if (control >= 0)
                close(control);
}

/* Whether extents[0..n) can be mapped: why not, or NULL. */
static const char *linear_check(const struct qt_nbd_kernel *k, const struct qt_range *extents,
                                size_t n)
{
        if (n == 0 || n > QT_FS_EXTENTS_MAX)
                return "no extents, or more than a volume can have";
        for (size_t i = 0; i < n; i++) {
                const struct qt_range *x = &extents[i];
                if (x->size == 0 || x->offset % SECTOR || x->size % SECTOR)
                        return "an extent is empty or not in whole sectors";
                if (x->offset > k->size || x->size > k->size - x->offset)
                        return "an extent lies past the end of the disk";
        }
        if (k->n_linear == ELEMENTSOF(k->linear))
                return "too many device-mapper devices";
        return NULL;
}

const char *qt_nbd_kernel_linear(struct qt_nbd_kernel *k, const struct qt_range *extents, size_t n)
{
        const char *why = linear_check(k, extents, n);
        int r = 0;
        const struct pinned_partition *parts[QT_FS_EXTENTS_MAX];
        for (size_t i = 0; !why && i < n; i++) {
                parts[i] = pin_range(k, 0, extents[i].offset, extents[i].size);
                if (!parts[i])
                        why = "no partition node over one of its extents";
        }
        _cleanup_close_ int control = -1;
        if (!why) {
                control = dm_control_open();
                r = control < 0 ? control : 0;
                if (r < 0)
                        why = "cannot open " DM_CONTROL_PATH;
        }
        struct linear_device *ld = &k->linear[k->n_linear];
        dev_t devnum = 0;
        if (!why) {
                *ld = (struct linear_device){.fd = -1};
                r = dm_create(k, control, parts, n, ld, &devnum, &why);
        }
        if (!why) {
                r = linear_open(ld, devnum);
                if (r < 0) {
                        why = "cannot open its device node";
                        linear_remove(control, ld);
                }
        }
        if (why) {
                fprintf(stderr,
                        "qtrim worker %d: no device-mapper device over %zu extents of %s: %s%s%s\n",
                        (int)getpid(), n, k->device, why, r < 0 ? ": " : "",
                        r < 0 ? strerror(-r) : "");
                return NULL;
        }
        k->n_linear++;
        return ld->path;
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
        /* The linear devices first: they hold the partitions under them. */
        linear_remove_all(k);
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

/* Whether name is one of ours over sysname: "qtrim-<sysname>-<digits>". */
static bool is_linear_of(const char *name, const char *sysname)
{
        size_t prefix = strlen(DM_NAME_PREFIX), len = strlen(sysname);
        if (strncmp(name, DM_NAME_PREFIX, prefix) != 0 ||
            strncmp(name + prefix, sysname, len) != 0 || name[prefix + len] != '-' ||
            !name[prefix + len + 1])
                return false;
        for (const char *p = name + prefix + len + 1; *p; p++)
                if (!isdigit((unsigned char)*p))
                        return false;
        return true;
}

/* Removes the device-mapper devices a dead worker made over sysname: named as ours and with a
 * UUID of ours. Deferred: one still open (its mount, in a namespace being torn down) goes with
 * its last close, and with it the hold on the nbd device. */
static void drop_stale_linear(const char *sysname)
{
        /* No device-mapper in the kernel, none of ours (and no module to load for a look). */
        if (access("/sys/class/misc/device-mapper", F_OK) < 0)
                return;
        _cleanup_close_ int control = dm_control_open();
        if (control < 0)
                return;
        _cleanup_free_ struct dm_ioctl *io = NULL;
        for (size_t size = 16384; size <= DM_LIST_MAX; size *= 2) {
                free(io);
                io = malloc(size);
                if (!io)
                        return;
                dm_header(io, size, NULL);
                if (dm_call(control, DM_LIST_DEVICES, io) < 0)
                        return;
                if (!(io->flags & DM_BUFFER_FULL_FLAG))
                        break;
        }
        if (io->flags & DM_BUFFER_FULL_FLAG)
                return;
        char uuid_prefix[64];
        snprintf(uuid_prefix, sizeof(uuid_prefix), DM_UUID_PREFIX "%s-", sysname);
        const char *end = (const char *)io + io->data_size;
        const char *at = (const char *)io + io->data_start;
        /* An empty list is one record with device number 0. */
        while (at + sizeof(struct dm_name_list) < end) {
                const struct dm_name_list *nl = (const struct dm_name_list *)(const void *)at;
                if (nl->dev == 0 || !memchr(nl->name, '\0', (size_t)(end - nl->name)))
                        break;
                struct dm_ioctl status;
                dm_header(&status, sizeof(status), nl->name);
                if (is_linear_of(nl->name, sysname) &&
                    dm_call(control, DM_DEV_STATUS, &status) == 0 &&
                    strncmp(status.uuid, uuid_prefix, strlen(uuid_prefix)) == 0) {
                        int r = dm_remove(control, nl->name, true);
                        fprintf(stderr, "qtrimd: %s, left over %s by a dead worker: %s\n", nl->name,
                                sysname,
                                r < 0 ? strerror(-r) : "removed (when its last user closes it)");
                }
                if (nl->next == 0)
                        break;
                at += nl->next;
        }
}

/* drop_stale_linear(), under the nbd device's lock: no live worker holds it. */
static void drop_stale_linear_if_unlocked(const char *device, const char *sysname)
{
        _cleanup_close_ int fd = open(device, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0)
                drop_stale_linear(sysname);
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
        if (*ret_server)
                return QT_NBD_SERVED;
        /* The kernel frees the device when its last opener lets go: never while a linear
         * device of the dead worker's maps it. */
        drop_stale_linear_if_unlocked(device, sysname);
        return QT_NBD_LINGERING;
}

void qt_nbd_kernel_drop_stale_partitions(const char *device)
{
        const char *sysname = device_sysname(device);
        if (!sysname)
                return;
        _cleanup_close_ int fd = open(device, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        /* Under the lock, so no worker is claiming it meanwhile; only a free, empty disk. */
        if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0)
                return;
        drop_stale_linear(sysname);
        drop_partitions_of_free_disk(fd, sysname);
}

void qt_nbd_kernel_drop_all_stale(void)
{
        DIR *d = opendir("/sys/block");
        if (!d)
                return;
        for (struct dirent *de; (de = readdir(d));) {
                char device[QT_NBD_PATH_MAX];
                if (nbd_index(de->d_name) >= 0 &&
                    snprintf(device, sizeof(device), "/dev/%s", de->d_name) < (int)sizeof(device))
                        qt_nbd_kernel_drop_stale_partitions(device);
        }
        closedir(d);
}

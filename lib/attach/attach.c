/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "attach.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "cancel.h"
#include "nbd-fuse.h"
#include "nbd-kernel.h"
#include "util.h"

static const char *const backend_names[] = {
    [QT_ATTACH_AUTO] = "auto",
    [QT_ATTACH_KERNEL] = "kernel",
    [QT_ATTACH_FUSE] = "fuse",
};

const char *qt_attach_backend_name(enum qt_attach_backend b)
{
        return (size_t)b < ELEMENTSOF(backend_names) ? backend_names[b] : "?";
}

int qt_attach_backend_from_name(const char *name, enum qt_attach_backend *ret)
{
        for (size_t i = 0; i < ELEMENTSOF(backend_names); i++)
                if (strcmp(name, backend_names[i]) == 0) {
                        *ret = (enum qt_attach_backend)i;
                        return 0;
                }
        return -EINVAL;
}

struct qt_attachment {
        enum qt_attach_backend backend;
        struct qt_nbd_fuse *bridge; /* fuse */
        struct qt_nbd_kernel *nbd;  /* kernel */
        int discard_fd;             /* the disk, opened by the first discard, until detach */
};

static int attach_fuse(const struct qt_attach_request *req, struct qt_attachment *a,
                       struct qt_error *e)
{
        char dir[PATH_MAX];
        if (snprintf(dir, sizeof(dir), "%s/fuse", req->scratch_dir) >= (int)sizeof(dir) ||
            mkdir(dir, 0700) < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot create %s: %m", dir);
        a->backend = QT_ATTACH_FUSE;
        return qt_nbd_fuse_attach(req->image, req->format, req->read_only, dir, &a->bridge, e);
}

static int attach_kernel(const struct qt_attach_request *req, struct qt_attachment *a,
                         struct qt_error *e)
{
        a->backend = QT_ATTACH_KERNEL;
        return qt_nbd_kernel_attach(req->image, req->format, req->read_only, req->scratch_dir,
                                    req->on_nbd_claim, req->userdata, &a->nbd, e);
}

int qt_attach(const struct qt_attach_request *req, struct qt_attachment **ret, struct qt_error *e)
{
        struct qt_attachment *a = calloc(1, sizeof(*a));
        if (!a)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
        a->discard_fd = -1;
        char why[QT_ERROR_MESSAGE_MAX];
        int r;
        switch (req->backend) {
        case QT_ATTACH_KERNEL:
                if (!qt_nbd_kernel_available(why, sizeof(why)))
                        r = qt_error_set(e, QT_ERR_UNSUPPORTED, ENODEV,
                                         "cannot attach through the kernel: %s", why);
                else
                        r = attach_kernel(req, a, e);
                break;
        case QT_ATTACH_FUSE:
                r = attach_fuse(req, a, e);
                break;
        case QT_ATTACH_AUTO:
        default:
                r = -ENODEV;
                if (qt_nbd_kernel_available(why, sizeof(why))) {
                        /* A device for every job is not guaranteed: with all taken, FUSE. */
                        struct qt_error kernel_error = {};
                        r = attach_kernel(req, a, &kernel_error);
                        if (r < 0 && r != -ENODEV)
                                qt_error_set(e, kernel_error.code, -r, "%s", kernel_error.message);
                        else if (r == -ENODEV)
                                snprintf(why, sizeof(why), "%s", kernel_error.message);
                }
                if (r == -ENODEV) {
                        fprintf(stderr, "qtrim worker %d: attaching through FUSE: %s\n",
                                (int)getpid(), why);
                        r = attach_fuse(req, a, e);
                }
                break;
        }
        if (r < 0) {
                free(a);
                return r;
        }
        *ret = a;
        return 0;
}

enum qt_attach_backend qt_attachment_backend(const struct qt_attachment *a)
{
        return a->backend;
}

const char *qt_attachment_disk(const struct qt_attachment *a)
{
        return a->nbd ? qt_nbd_kernel_device(a->nbd) : qt_nbd_fuse_disk_path(a->bridge);
}

uint64_t qt_attachment_size(const struct qt_attachment *a)
{
        return a->nbd ? qt_nbd_kernel_size(a->nbd) : qt_nbd_fuse_size(a->bridge);
}

unsigned qt_attachment_fuse_connection(const struct qt_attachment *a)
{
        return a->bridge ? qt_nbd_fuse_connection(a->bridge) : 0;
}

const char *qt_attachment_nbd_device(const struct qt_attachment *a)
{
        return a->nbd ? qt_nbd_kernel_device(a->nbd) : "";
}

uint64_t qt_attachment_nbd_owner(const struct qt_attachment *a)
{
        return a->nbd ? qt_nbd_kernel_owner(a->nbd) : 0;
}

void qt_attachment_source(struct qt_attachment *a, const struct qt_fs_result *fs,
                          struct qt_fs_source *ret)
{
        *ret = (struct qt_fs_source){
            .disk = qt_attachment_disk(a), .offset = fs->offset, .size = fs->size};
        if (fs->n_extents) { /* an LV in several places: its extents mapped as one */
                if (a->nbd)
                        ret->device = qt_nbd_kernel_linear(a->nbd, fs->extents, fs->n_extents);
                else
                        ret->disk = qt_nbd_fuse_add_volume(a->bridge, fs->extents, fs->n_extents);
                ret->offset = 0;
                if (a->nbd ? !ret->device : !ret->disk)
                        ret->unusable = "its segments could not be mapped as one device";
                return;
        }
        if (!a->nbd)
                return;
        /* No partition table: the filesystem is the device itself. */
        if (fs->offset == 0 && fs->size == qt_nbd_kernel_size(a->nbd)) {
                ret->device = qt_nbd_kernel_device(a->nbd);
                return;
        }
        /* The kernel's node of a partition; for an LV, a partition node made over its extents
         * (discards go straight to nbd, where a loop device over it could not pass them). */
        ret->device = qt_nbd_kernel_partition(a->nbd, fs->partno, fs->offset, fs->size);
        /* Else the loop device over the nbd device, at the offset libblkid found. */
        if (!ret->device && !qt_nbd_kernel_loop_can_discard(a->nbd))
                ret->unusable = "no partition node for it, and a loop device over the nbd device "
                                "cannot discard on this kernel (Attach=fuse can)";
}

#define DISCARD_STEP (1ULL << 30)

/* Zeroes [offset, +length) for real: the part of an image cluster that a discard would leave
 * as it was (qcow2 frees whole clusters only; a trim is advisory). */
static int zero_range(int fd, bool block, uint64_t offset, uint64_t length)
{
        if (length == 0)
                return 0;
        if (fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)offset,
                      (off_t)length) == 0)
                return 0;
        uint64_t range[2] = {offset, length};
        if (block && (errno == EOPNOTSUPP || errno == EINVAL) && ioctl(fd, BLKZEROOUT, range) == 0)
                return 0;
        return -errno;
}

static int punch_range(int fd, bool block, uint64_t offset, uint64_t length)
{
        /* A block device punches with write-zeroes that may unmap; one without them takes a
         * plain discard, which is all the space needs. */
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset,
                      (off_t)length) == 0)
                return 0;
        uint64_t range[2] = {offset, length};
        if (block && (errno == EOPNOTSUPP || errno == EINVAL) && ioctl(fd, BLKDISCARD, range) == 0)
                return 0;
        return -errno;
}

int qt_attachment_discard(struct qt_attachment *a, uint64_t offset, uint64_t length,
                          uint64_t cluster, qt_progress_fn progress, void *userdata,
                          struct qt_error *e)
{
        uint64_t size = qt_attachment_size(a);
        if (offset % 512 || length % 512 || offset > size || length > size - offset ||
            cluster == 0 || cluster % 4096)
                return qt_error_set(e, QT_ERR_FAILED, EINVAL,
                                    "discard of %llu+%llu outside the disk or unaligned",
                                    (unsigned long long)offset, (unsigned long long)length);
        const char *disk = qt_attachment_disk(a);
        /* One descriptor for every discard of the job: on the FUSE path each close is a flush
         * of the image, and a filesystem's free-space map can make thousands of discards. */
        if (a->discard_fd < 0)
                a->discard_fd = open(disk, O_RDWR | O_CLOEXEC);
        int fd = a->discard_fd;
        if (fd < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot open %s: %m", disk);
        bool block = a->nbd != NULL;
        uint64_t end = offset + length;
        uint64_t head = (offset + cluster - 1) / cluster * cluster;
        uint64_t tail = end / cluster * cluster;
        if (head > end)
                head = end;
        if (tail < head)
                tail = head;
        int r = zero_range(fd, block, offset, head - offset);
        if (r >= 0)
                r = zero_range(fd, block, tail, end - tail);
        for (uint64_t done = head; r >= 0 && done < tail;) {
                if (qt_cancel_requested)
                        return -ECANCELED;
                uint64_t n = tail - done < DISCARD_STEP ? tail - done : DISCARD_STEP;
                r = punch_range(fd, block, done, n);
                done += n;
                if (r >= 0 && progress)
                        progress((double)(done - head) / (double)(tail - head), userdata);
        }
        if (r < 0)
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot discard %s at %llu: %s", disk,
                                    (unsigned long long)offset, strerror(-r));
        return 0;
}

void qt_attachment_hide(struct qt_attachment *a, const struct qt_fs_result *fs)
{
        if (!a->nbd || (strcmp(fs->fstype, "LVM2_member") != 0 &&
                        strcmp(fs->fstype, "linux_raid_member") != 0))
                return;
        int r = qt_nbd_kernel_hide_partition(a->nbd, fs->offset, fs->size);
        if (r < 0)
                fprintf(stderr, "qtrim worker %d: cannot remove the node of %s (%s) on %s: %s\n",
                        (int)getpid(), fs->name, fs->fstype, qt_nbd_kernel_device(a->nbd),
                        strerror(-r));
}

int qt_detach(struct qt_attachment *a, struct qt_error *e)
{
        if (!a)
                return 0;
        closep(&a->discard_fd);
        int r = a->nbd ? qt_nbd_kernel_detach(a->nbd, e) : qt_nbd_fuse_detach(a->bridge, e);
        free(a);
        return r;
}

enum qt_nbd_connection qt_attach_nbd_state(const char *device, uint64_t owner, pid_t *ret_server)
{
        return qt_nbd_kernel_connection_state(device, owner, ret_server);
}

void qt_attach_nbd_drop_stale(const char *device)
{
        qt_nbd_kernel_drop_stale_partitions(device);
}

void qt_attach_nbd_drop_all_stale(void)
{
        qt_nbd_kernel_drop_all_stale();
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "attach.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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
};

size_t qt_qemu_nbd_image_args(const char *image, const char *format, bool read_only,
                              char opts[QT_QEMU_NBD_OPTS_MAX], char *argv[])
{
        size_t n = 0;
        if (!read_only) {
                argv[n++] = "--format";
                argv[n++] = (char *)format;
                argv[n++] = "--discard=unmap";
                argv[n++] = (char *)image;
                return n;
        }
        int k = snprintf(opts, QT_QEMU_NBD_OPTS_MAX,
                         "driver=%s,file.driver=file,file.locking=off,file.filename=", format);
        /* In qemu's option syntax a comma in a value is written twice. */
        for (const char *p = image; *p && (size_t)k + 3 < QT_QEMU_NBD_OPTS_MAX; p++) {
                if (*p == ',')
                        opts[k++] = ',';
                opts[k++] = *p;
        }
        opts[k] = '\0';
        argv[n++] = "--read-only";
        argv[n++] = "--image-opts";
        argv[n++] = opts;
        return n;
}

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
                                    &a->nbd, e);
}

int qt_attach(const struct qt_attach_request *req, struct qt_attachment **ret, struct qt_error *e)
{
        struct qt_attachment *a = calloc(1, sizeof(*a));
        if (!a)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
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
        *ret = (struct qt_fs_source){.disk = qt_attachment_disk(a)};
        if (!a->nbd)
                return;
        /* No partition table: the filesystem is the device itself. */
        if (fs->offset == 0 && fs->size == qt_nbd_kernel_size(a->nbd)) {
                ret->device = qt_nbd_kernel_device(a->nbd);
                return;
        }
        unsigned number = 0;
        if (sscanf(fs->name, "p%u", &number) != 1 || number > INT_MAX)
                number = 0;
        ret->device = qt_nbd_kernel_partition(a->nbd, (int)number, fs->offset, fs->size);
        /* Else the loop device over the nbd device, at the offset libblkid found. */
        if (!ret->device && !qt_nbd_kernel_loop_can_discard(a->nbd))
                ret->unusable = "no partition node for it, and a loop device over the nbd device "
                                "cannot discard on this kernel (Attach=fuse can)";
}

int qt_detach(struct qt_attachment *a, struct qt_error *e)
{
        if (!a)
                return 0;
        int r = a->nbd ? qt_nbd_kernel_detach(a->nbd, e) : qt_nbd_fuse_detach(a->bridge, e);
        free(a);
        return r;
}

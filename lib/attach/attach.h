/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Phase 2, attach: how a worker makes an image's disk readable and trimmable by the host kernel.
 * kernel: qemu-nbd -c /dev/nbdN, partitions as the kernel's own block devices (hypervisor hosts
 * with the nbd module, nbd-kernel.h). fuse: qemu-nbd behind a FUSE file, loop devices at the
 * partitions' offsets (anywhere with FUSE and loop devices, nbd-fuse.h). auto: kernel where
 * /dev/nbd0 exists or the nbd module loads (and a device is free), fuse otherwise.
 *
 * Either way the rest of the job sees one struct qt_attachment: a disk (a file or a block device)
 * for libblkid to read, and for each filesystem libblkid found there, a source to mount.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "nbd-kernel.h"
#include "report.h"
#include "trim.h"

enum qt_attach_backend {
        QT_ATTACH_AUTO,
        QT_ATTACH_KERNEL,
        QT_ATTACH_FUSE,
};

/* "auto", "kernel", "fuse". */
const char *qt_attach_backend_name(enum qt_attach_backend b);
/* -EINVAL for anything else. */
int qt_attach_backend_from_name(const char *name, enum qt_attach_backend *ret);

struct qt_attach_request {
        /* What qemu-nbd opens: qt_image_qemu_name() of the inspected image (a plain path does
         * too), read_only given as no_locking. */
        const char *image;
        const char *format; /* "qcow2" or "raw" */
        bool read_only;     /* inspection: no writes, qemu's lock not taken */
        enum qt_attach_backend backend;
        const char *scratch_dir; /* the worker's private tmpfs: FUSE mount, qemu-nbd's socket */
        qt_nbd_claim_fn on_nbd_claim; /* kernel path: the device claimed, before the connect */
        void *userdata;
};

struct qt_attachment;

/* Call it in the worker's private mount namespace. With QT_ATTACH_AUTO, a host without nbd
 * devices (or with none free) gets the FUSE path and one line on stderr saying why. */
int qt_attach(const struct qt_attach_request *req, struct qt_attachment **ret, struct qt_error *e);

/* QT_ATTACH_KERNEL or QT_ATTACH_FUSE: the path auto chose. */
enum qt_attach_backend qt_attachment_backend(const struct qt_attachment *a);
/* The whole disk, for libblkid: "/dev/nbd3", or "<scratch_dir>/fuse/disk". */
const char *qt_attachment_disk(const struct qt_attachment *a);
uint64_t qt_attachment_size(const struct qt_attachment *a);
/* The FUSE connection's number (0 on the kernel path); what qtrimd must know to clean up after a
 * worker that dies attached (see report.h): the nbd device ("" on the FUSE path) and the
 * kernel's owner of its connection. */
unsigned qt_attachment_fuse_connection(const struct qt_attachment *a);
const char *qt_attachment_nbd_device(const struct qt_attachment *a);
uint64_t qt_attachment_nbd_owner(const struct qt_attachment *a);

/* Where to mount fs (a record of qt_discover on this attachment's disk) from. Kernel: the
 * kernel's partition node if its sysfs start and size are what libblkid found (one is made with
 * BLKPG where there is none, for an LV over its extents, its PV's node out of the way), the
 * whole device for a disk without partition table, else a loop device over the device at fs's
 * offset. FUSE:
 * a loop device over the disk file at fs's offset. Valid until qt_detach. */
void qt_attachment_source(struct qt_attachment *a, const struct qt_fs_result *fs,
                          struct qt_fs_source *ret);

/* Keeps what fs holds from the host's own storage stack while the disk is attached: on the
 * kernel path, the kernel's partition node of a guest's LVM PV or RAID member is removed (the
 * host's LVM would list the guest's VG, a clone of a host VG included, and write backups of it).
 * Nothing to do on the FUSE path, where the host has no device for it. */
void qt_attachment_hide(struct qt_attachment *a, const struct qt_fs_result *fs);

/*
 * Gives [offset, offset + length) of the disk back to the image (offset and length multiples of
 * 512, within the disk): whole clusters of the image (cluster: its cluster size, a multiple of
 * 4 KiB) get a hole punched through the FUSE file (an NBD write-zeroes that may unmap, or a
 * trim) or in the nbd device (write-zeroes, or BLKDISCARD where the device has none); the parts
 * of clusters at either end are written with zeroes, so the whole range reads as zeroes. For
 * space no filesystem describes: swap areas past their header, gaps, free extents. In steps of
 * at most 1 GiB; between steps progress is called and a cancel honoured (-ECANCELED). Returns 0
 * or a negative errno, with e set.
 */
int qt_attachment_discard(struct qt_attachment *a, uint64_t offset, uint64_t length,
                          uint64_t cluster, qt_progress_fn progress, void *userdata,
                          struct qt_error *e);

/* Undoes qt_attach: everything on top (mounts, loop devices) must be gone already. Frees a
 * whatever happens; NULL-safe. A qemu-nbd that died or a flush that failed is an error: the
 * image may have lost writes. */
int qt_detach(struct qt_attachment *a, struct qt_error *e);

/*
 * For qtrimd, after a worker died attached (what it reported of its attachment: report.h's
 * nbd-device and nbd-owner; on the FUSE path the FUSE server ends on its own, nbd-fuse.h):
 * - qt_attach_nbd_state() and qt_attach_nbd_drop_stale() watch and clean the nbd device it held
 *   (nbd-kernel.h: qt_nbd_kernel_connection_state(), qt_nbd_kernel_drop_stale_partitions());
 * - qt_attach_nbd_drop_all_stale(), at qtrimd's start, cleans every free nbd device the same way
 *   (workers that died with an earlier qtrimd).
 */
enum qt_nbd_connection qt_attach_nbd_state(const char *device, uint64_t owner, pid_t *ret_server);
void qt_attach_nbd_drop_stale(const char *device);
void qt_attach_nbd_drop_all_stale(void);

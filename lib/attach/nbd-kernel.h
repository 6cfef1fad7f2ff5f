/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The kernel attach path: `qemu-nbd -v -c /dev/nbdN --discard=unmap`, the image as one of the
 * host's own nbd block devices and its partitions as the kernel's partition nodes. For hypervisor
 * hosts with the nbd module; needs no FUSE.
 *
 * Claiming a device: libudev lists the nbd disks; a free one (no pid attribute, size 0) is opened
 * and locked with flock(LOCK_EX) for the whole attachment. The lock is how qtrim workers tell each
 * other a device is taken (two may find the same one free), and it is udev's convention for "a
 * tool owns this disk": udevd leaves the guest's partitions alone (no blkid, no LVM or RAID
 * auto-activation on the host) while it is held. A device someone else connects between the check
 * and qemu-nbd's NBD_SET_SOCK makes qemu-nbd fail; the next device is tried.
 *
 * qemu-nbd runs in the foreground (-v: without it, -c daemonizes), as the worker's child with a
 * parent-death SIGTERM, on a socket of its own in the worker's private tmpfs (-k; the default
 * /run/lock/qemu-nbd-nbdN is shared by everyone who connects nbdN, and qemu-nbd unlinks what is
 * there before binding). If the worker dies, qemu-nbd gets SIGTERM and disconnects cleanly, and
 * the kernel frees the device once the last mount in the worker's namespace is gone. qtrimd
 * watches over that from outside (daemon/worker.c, qt_nbd_kernel_connection_state()).
 *
 * An LV in several places of the disk is a device-mapper linear device of qtrim's own, made with
 * the DM ioctls (no libdevmapper): "qtrim-nbd3-1", UUID "QTRIM-nbd3-<owner>-1", its uevents
 * flagged so that udev's rules leave it alone (no /dev/mapper link, no blkid, no pvscan). It maps
 * partition nodes made over the extents, not the disk: device-mapper claims what it maps, and a
 * claim of the disk and a mount of any of its partitions exclude each other (measured on 6.1:
 * EBUSY both ways). A dead worker's linear devices would hold the nbd device forever; qtrimd
 * removes them (qt_nbd_kernel_connection_state(), qt_nbd_kernel_drop_stale_partitions()).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"
#include "report.h"

#define QT_NBD_PATH_MAX 32

struct qt_nbd_kernel;

/* Whether this host has nbd devices: /sys/block/nbd0 exists, or `modprobe nbd` makes it exist.
 * If not, why says so in a few words. */
bool qt_nbd_kernel_available(char *why, size_t why_size);

/* Told the device a worker has just claimed (locked), before its qemu-nbd starts: qtrimd must
 * know it from then on, to clean up what a worker killed in the middle of the connect leaves. */
typedef void (*qt_nbd_claim_fn)(const char *device, void *userdata);

/* Connects image (format "qcow2" or "raw") to a free /dev/nbdN (on_claim, if set, hears of each
 * device claimed on the way). scratch_dir is the worker's
 * private tmpfs (qemu-nbd's socket and log go there). -ENODEV (with e set) when every device is
 * taken or there is none; -ECANCELED on a cancel. */
int qt_nbd_kernel_attach(const char *image, const char *format, bool read_only,
                         const char *scratch_dir, qt_nbd_claim_fn on_claim, void *userdata,
                         struct qt_nbd_kernel **ret, struct qt_error *e);

const char *qt_nbd_kernel_device(const struct qt_nbd_kernel *k); /* "/dev/nbd3" */
uint64_t qt_nbd_kernel_size(const struct qt_nbd_kernel *k);
/* The connection's owner as the kernel records it (/sys/block/nbdN/pid: qemu-nbd's client
 * thread); what qtrimd compares to tell this job's connection from a later one. */
uint64_t qt_nbd_kernel_owner(const struct qt_nbd_kernel *k);

/* The kernel's partition node for [offset, offset + size) of the disk (bytes), as libblkid found
 * it (number: libblkid's partition number). Only a partition whose sysfs start and size are
 * exactly that is used; where the kernel has none (it reads the table otherwise), it is made with
 * BLKPG, the kernel's own partitions in its way removed unless in use. It is opened and kept open
 * until detach, so no partition rescan can replace it before it is mounted; the path lives as
 * long. NULL if that fails too: the caller falls back to a loop device over the whole disk. */
const char *qt_nbd_kernel_partition(struct qt_nbd_kernel *k, int number, uint64_t offset,
                                    uint64_t size);

/* A device-mapper linear device of qtrim's own over extents[0..n) of the nbd device (bytes,
 * multiples of 512, within the disk, n 1..QT_FS_EXTENTS_MAX, in the order the volume has them):
 * an LV whose segments lie in several places, as one block device to mount ("/dev/dm-4"). Each
 * extent is a partition node as qt_nbd_kernel_partition() makes them (pinned the same way, and
 * out of the same QT_MAX_FILESYSTEMS slots). Hidden from udev's rules and the host's LVM. The
 * node is kept open until detach, which removes the device (after the mount on it is gone) before
 * the disconnect; the path lives as long. NULL, with a line on stderr saying why, if it cannot be
 * made. */
const char *qt_nbd_kernel_linear(struct qt_nbd_kernel *k, const struct qt_range *extents, size_t n);

/* Removes the kernel's partition node for exactly [offset, offset + size) of the disk, if there
 * is one and it is not in use here: a guest's LVM PV or RAID member that the host's LVM or mdadm
 * would otherwise see (and act on) while the disk is attached. 0 or a negative errno. */
int qt_nbd_kernel_hide_partition(struct qt_nbd_kernel *k, uint64_t offset, uint64_t size);

/* Whether a loop device over the nbd device can discard: a loop device turns discards into
 * write-zeroes on a block device, which the nbd driver has only in newer kernels (not 6.1). */
bool qt_nbd_kernel_loop_can_discard(const struct qt_nbd_kernel *k);

/* Flushes, disconnects, stops qemu-nbd and waits (bounded) for the kernel to free the device.
 * Everything on top (mounts, loop devices) must be gone already. Frees k whatever happens;
 * NULL-safe. */
int qt_nbd_kernel_detach(struct qt_nbd_kernel *k, struct qt_error *e);

/* qtrimd's view of a device a dead worker held, owner as the worker reported it. */
enum qt_nbd_connection {
        QT_NBD_RELEASED,     /* free, or connected by someone else since: nothing of ours */
        QT_NBD_SERVED,       /* still connected; its qemu-nbd (*ret_server) lives */
        QT_NBD_LINGERING,    /* its qemu-nbd is gone; the kernel frees it when the last opener
                              * (a mount in a namespace being torn down) lets go; the worker's
                              * linear devices, which never would, are removed by the call */
        QT_NBD_INVALID_NAME, /* not a /dev/nbdN name: a worker must not make qtrimd act on it */
};
enum qt_nbd_connection qt_nbd_kernel_connection_state(const char *device, uint64_t owner,
                                                      pid_t *ret_server);

/* After a dead worker's device is free again: removes the partition nodes the kernel keeps from
 * that connection (they would wait for udev to probe an empty disk), and any linear device of
 * qtrim's left over it (qtrim-nbdN-*). Only on a device no one holds the lock of (partitions: only
 * on a free one); NULL-safe against names that are not /dev/nbdN. */
void qt_nbd_kernel_drop_stale_partitions(const char *device);
/* The same for every nbd device: what workers that died with their qtrimd left (a qtrimd that
 * starts knows no device of theirs). A device is touched only when free, empty and unlocked. */
void qt_nbd_kernel_drop_all_stale(void);

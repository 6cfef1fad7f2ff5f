/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The fuse attach path: qemu-nbd --discard=unmap (socket-activated, dying with the worker), its
 * export served by libfuse3 as a file, <mountpoint>/disk, on which loop devices can sit (and
 * one more file per volume whose bytes lie in several places of the disk).
 * Works wherever FUSE and loop devices exist; needs no nbd kernel module.
 *
 * Threading: one FUSE thread serves the file (reads, writes, flush, fallocate → NBD trim/zero)
 * while the caller's thread sets up loop devices and mounts on top. libnbd handles are
 * thread-safe; nothing else is shared.
 *
 * Known limit: the FUSE server lives in the process (and mount namespace) whose users it
 * serves. When SIGKILL takes them all at once, the kernel's exit path may need the server it is
 * tearing down: a request pending on the disk file (a FLUSH on close, the unmount of a guest
 * filesystem through its loop device) then waits forever and the worker never finishes dying,
 * until its connection is aborted through fusectl. The tested windows (killed at any phase,
 * filesystems mounted) are safe; killed while the worker itself holds the disk open (blkid in
 * discover, loop setup: milliseconds) is not; nor, now and then (1 in 20 in a stress run), is a
 * kill with filesystems mounted. qtrimd therefore aborts the connection of a worker that has
 * died but does not finish dying (daemon/worker.c). The fix is a server process outside the
 * worker's namespace, handed the /dev/fuse fd after the worker mounted it.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "report.h"

struct qt_nbd_fuse;

/* Starts qemu-nbd on image (format "qcow2" or "raw"), mounts the bridge on mountpoint (an
 * existing directory, in the caller's private mount namespace). */
int qt_nbd_fuse_attach(const char *image, const char *format, bool read_only,
                       const char *mountpoint, struct qt_nbd_fuse **ret, struct qt_error *e);

/* Path of the disk file, e.g. "/run/qtrim/mnt/fuse/disk". */
const char *qt_nbd_fuse_disk_path(const struct qt_nbd_fuse *b);
/* Adds a file whose bytes are extents[0..n) of the disk, in order (an LV whose segments lie in
 * several places, for a loop device to show as one); reads, writes and hole punches go to the
 * disk's bytes they map to. Returns its path, valid until detach, or NULL (ranges outside the
 * disk or not multiples of 512, or too many files). */
const char *qt_nbd_fuse_add_volume(struct qt_nbd_fuse *b, const struct qt_range *extents, size_t n);
uint64_t qt_nbd_fuse_size(const struct qt_nbd_fuse *b);
/* The connection's number under fusectl (/sys/fs/fuse/connections/N), 0 if unknown. */
unsigned qt_nbd_fuse_connection(const struct qt_nbd_fuse *b);

/* Aborts FUSE connection number `connection`: its pending and future requests fail with
 * ENOTCONN. Mounts fusectl on dir for the moment: call it in a private mount namespace. */
int qt_fuse_abort_connection(unsigned connection, const char *dir);

/* Unmounts the bridge, flushes and stops qemu-nbd. Everything on top (loop devices) must be
 * gone already. Frees b whatever happens; NULL-safe. */
int qt_nbd_fuse_detach(struct qt_nbd_fuse *b, struct qt_error *e);

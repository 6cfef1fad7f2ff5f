/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The fuse attach path: qemu-nbd --discard=unmap (socket-activated), its export served by
 * libfuse3 as a file, <mountpoint>/disk, on which loop devices can sit (and one more file per
 * volume whose bytes lie in several places of the disk). Works wherever FUSE and loop devices
 * exist; needs no nbd kernel module.
 *
 * Processes: the worker mounts the bridge (on an open /dev/fuse) in its private mount namespace
 * and hands the descriptor to the FUSE server, a child process of its own ("qtrim-fuse") that
 * leaves the worker's namespace, owns qemu-nbd and serves the file until the connection ends.
 * Whoever dies, the filesystems and loop devices on top are torn down through a live server: a
 * worker killed at any instruction (inside a mount, a read, its namespace's teardown) dies
 * promptly, then the server flushes the image and stops qemu-nbd. Once the worker lets go
 * (detach, or death), the server gives the connection RELEASE_SECONDS (10) to end before it
 * aborts it through fusectl, so nothing waits on it for ever. A server killed itself closes the
 * last /dev/fuse descriptor, which aborts the connection: the worker's I/O fails, the job fails,
 * qemu-nbd (its child) dies with it. The two processes share the table of files (one shared
 * mapping); nothing else.
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

/* Unmounts the bridge and waits (bounded) for the server to end: it flushes and stops qemu-nbd
 * once the connection is gone. Everything on top (loop devices) should be gone already. An error
 * if the server or qemu-nbd died, or the flush failed: the image may have lost writes. Frees b
 * whatever happens; NULL-safe. */
int qt_nbd_fuse_detach(struct qt_nbd_fuse *b, struct qt_error *e);

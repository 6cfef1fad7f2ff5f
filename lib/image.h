/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Phase 1, inspect: is this a disk image qtrim may work on, and what does it look like? Also
 * the host-side facts of the image file (allocation) and the qemu-compatible lock that keeps a
 * VM from starting on an image while qtrim still works on it.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "error.h"

#define QT_IMAGE_STRING_MAX 4096
/* Backing files qtrim follows from an image; a longer chain is refused (qemu has no bound). */
#define QT_BACKING_CHAIN_MAX 256

struct qt_image_info {
        char format[16]; /* "qcow2", "raw" */
        uint64_t virtual_size;
        uint64_t cluster_size;                  /* qcow2 */
        char backing_file[QT_IMAGE_STRING_MAX]; /* as recorded in the image, "" if none */
        char backing_format[16];
        unsigned snapshots; /* internal snapshots (qcow2) */
        unsigned bitmaps;   /* persistent dirty bitmaps (qcow2) */
        bool encrypted, corrupt, has_data_file;
        /* qcow2 creation options, to give the converted copy the same ones */
        char compat[8];
        char compression_type[8];
        bool lazy_refcounts, extended_l2;
        unsigned refcount_bits;
};

/* The path must be absolute, exist and be a regular file. follow: a symbolic link is followed
 * (as the caller named it); otherwise it is refused (a resolved path that became a link since).
 * Fills ret_st. */
int qt_image_check_path(const char *path, bool follow, struct stat *ret_st, struct qt_error *e);

/* Parses `qemu-img info --output=json` (no backing chain). Pure: no I/O; fuzzed. */
int qt_image_parse_info(const char *json, struct qt_image_info *ret, struct qt_error *e);

/* Refuses an image another process uses as qemu does (qemu's lock bytes: a writer, or a reader
 * that forbids writers) with ImageInUse; runs qemu-img info without -U, then
 * refuses what qtrim must not touch: other formats, encryption, a backing chain that is not all
 * local regular files or that loops (followed by qtrim itself, before qemu opens it), corruption
 * (qemu-img check for qcow2; a qcow2 header qemu cannot read), a raw file with neither a
 * partition table nor a filesystem, and a file that cannot be opened for writing. force_share
 * (read-only inspection) reads without qemu's lock, so an image in use can still be looked at,
 * and does not ask for write access. */
int qt_image_probe(const char *path, bool force_share, struct qt_image_info *ret,
                   struct qt_error *e);

/* Bytes the host has allocated to the file (st_blocks * 512). */
uint64_t qt_file_allocated(const struct stat *st);

/*
 * Takes qemu's "write is not shared" lock on the image (an OFD lock on byte 201, the protocol
 * of qemu's file-posix driver), so a VM that starts while qtrim converts and replaces the image
 * fails to open it, as it would if another qemu held it. Call it while qemu-nbd runs: qemu-nbd
 * checks the lock only when it opens the image. Returns the fd holding the lock.
 */
int qt_image_lock_writers_out(const char *path, struct qt_error *e);

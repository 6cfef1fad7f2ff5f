/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Phase 4, trim: mount one guest filesystem read-write and FITRIM its free space, so qemu-nbd
 * (--discard=unmap) deallocates it in the image. Call it inside a private mount namespace. */
#pragma once

#include <stdbool.h>

#include "report.h"

typedef void (*qt_progress_fn)(double fraction, void *userdata);

/* Where a filesystem is mounted from (attach.h decides): a block device that is exactly the
 * filesystem, mounted as it is (a partition node of the kernel path, or a whole nbd device), or a
 * loop device over [fs->offset, fs->offset + fs->size) of a disk (a file or a block device). */
struct qt_fs_source {
        const char *device; /* NULL: use a loop device over [offset, +size) of disk */
        const char *disk;
        uint64_t offset, size;
        const char *unusable; /* if set: why it cannot be trimmed this way (it is skipped) */
};

/* How a volume gives its free space back: one method per kind and type of content. */
enum qt_trim_method {
        QT_TRIM_MOUNT,   /* a filesystem qtrim mounts read-write and FITRIMs */
        QT_TRIM_SWAP,    /* a swap area: its header page kept, the rest discarded */
        QT_TRIM_DISCARD, /* space that holds nothing of the guest's: discarded whole */
        QT_TRIM_FREEMAP, /* a filesystem read, never mounted: the free ranges of its own map
                          * discarded (freemap.h: FAT, NTFS) */
        QT_TRIM_SKIP,    /* left byte for byte as it is; why says why */
};

/* What a swap area holding a hibernation image is told, whoever finds it (blkid, or the swap
 * header itself). */
#define QT_HIBERNATED_SWAP_WHY                                                                     \
        "a swap area holding a hibernation image; left as it is (resume the guest, or boot it "    \
        "without resuming, then run qtrim again)"

/* The outcome of a volume: its state ("trimmed", "discarded", "skipped", "failed") and a
 * message, cut to the record's size. */
void qt_fs_set_outcome(struct qt_fs_result *fs, const char *state, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The method for fs (a record of qt_discover); for QT_TRIM_SKIP, the reason goes into why. */
enum qt_trim_method qt_trim_method(const struct qt_fs_result *fs, char *why, size_t why_size);
/* "mount", "swap", "discard", "freemap", "skip": what a volume record says. */
const char *qt_trim_method_name(enum qt_trim_method m);

/* Trims fs (a record from qt_discover) from src, mounted on mount_dir. The outcome goes into fs:
 * state "trimmed" with trimmed bytes, or "skipped"/"failed" with a message; a filesystem that
 * cannot be trimmed is not an error of the job. Returns -ECANCELED if a cancel arrived (the
 * filesystem is unmounted first), 0 otherwise. */
int qt_trim_filesystem(const struct qt_fs_source *src, const char *mount_dir,
                       struct qt_fs_result *fs, qt_progress_fn progress, void *userdata);

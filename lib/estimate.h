/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Inspect's estimate: how many bytes of the image file a shrink would give back, per volume,
 * with nothing written. Two inputs meet here: what the image file holds of the disk (its
 * allocation, from `qemu-img map`) and what the guest does not use (each volume's free space, as
 * the volume itself describes it). A shrink gives back what lies in both, in whole image
 * clusters: a discard of part of a cluster frees nothing.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "report.h"
#include "trim.h"

/* What the image file holds of the disk: disk ranges in ascending order, adjacent ones merged
 * (qemu-img map reports them in that order). */
struct qt_allocation {
        struct qt_range *ranges;
        size_t n, cap;
        uint64_t cluster; /* what the image gives back in: its cluster, at least 4 KiB */
        bool unknown;     /* out of memory, or more pieces than kept: no estimate */
};

/* A qt_extent_fn (image.h) that adds one allocated range; ranges must come in ascending order. */
void qt_allocation_on_extent(uint64_t offset, uint64_t length, void *userdata);
void qt_allocation_done(struct qt_allocation *a);

/* Bytes the image holds of [offset, +length) of the disk. */
uint64_t qt_allocation_held(const struct qt_allocation *a, uint64_t offset, uint64_t length);
/* What freeing [offset, +length) of the disk would give back: the bytes the image holds of the
 * whole clusters inside it. */
uint64_t qt_allocation_reclaimable(const struct qt_allocation *a, uint64_t offset, uint64_t length);
/* Both, over bytes [from, fs->size) of volume fs (the disk ranges it is made of). */
uint64_t qt_volume_held(const struct qt_allocation *a, const struct qt_fs_result *fs,
                        uint64_t from);
uint64_t qt_volume_reclaimable(const struct qt_allocation *a, const struct qt_fs_result *fs,
                               uint64_t from);

/* Adds up the free ranges of one volume (volume-relative, ascending, as freemap.h's readers and
 * GETFSMAP give them): ranges that touch are merged first, so a cluster that two of them cover
 * together counts. */
struct qt_free_tally {
        const struct qt_allocation *alloc;
        const struct qt_fs_result *fs;
        uint64_t free;        /* bytes the guest does not use */
        uint64_t reclaimable; /* what the image holds of them, in whole clusters */
        uint64_t pending_offset, pending_length; /* the range the next one may continue */
};

/* A qt_free_range_fn (freemap.h); always 0. */
int qt_free_tally_add(void *tally, uint64_t offset, uint64_t length);
/* Counts the last range: call once the walk is over. */
void qt_free_tally_end(struct qt_free_tally *t);

/*
 * A filesystem the shrink mounts (ext2/3/4, xfs, btrfs): mounted from src read-only on
 * mount_dir, with the options that keep the kernel from writing (no journal replay, no log
 * recovery), its used and free bytes from statfs and its reclaimable bytes into fs->used,
 * fs->free, fs->reclaimable. Call it in the worker's private mount namespace, on a read-only
 * attachment. Returns 0, or a negative errno with why set (the volume then has no estimate: a
 * shrink could not mount it either).
 */
int qt_estimate_mounted(const struct qt_fs_source *src, const char *mount_dir,
                        const struct qt_allocation *alloc, struct qt_fs_result *fs, char *why,
                        size_t why_size);

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Free space read from a filesystem's own map, without mounting it: the user-space trim method
 * (trim.h's QT_TRIM_FREEMAP) for filesystems the host kernel may have no driver for (FAT, NTFS)
 * or must never mount read-write (an NTFS that Windows hibernated). The volume is read through a
 * callback at offsets within the volume, so a volume in several places of the disk (an LV's
 * segments) reads as one, and nothing is ever written: qtrim then discards the free ranges
 * through the attachment (attach.h's qt_attachment_discard).
 *
 * Every reader returns 0 once on_free has seen every free range (volume-relative bytes, whole
 * clusters, ascending, adjacent ones merged); -EUCLEAN with why set when the volume must be left
 * alone (its state, or metadata that does not add up: hostile or damaged); another negative errno
 * for a read that failed (why set too); or what on_free returned if it stopped the walk (< 0).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Reads len bytes at offset of the volume into buf: 0, or a negative errno (a short read is
 * -EIO). */
typedef int (*qt_volume_read_fn)(void *ctx, void *buf, size_t len, uint64_t offset);

struct qt_volume_reader {
        qt_volume_read_fn read;
        void *ctx;
        uint64_t size; /* the volume's bytes: nothing past it is read or reported */
};

/* A free range, bytes within the volume; < 0 stops the walk. */
typedef int (*qt_free_range_fn)(void *ctx, uint64_t offset, uint64_t length);

#define QT_FREEMAP_WHY_MAX 200

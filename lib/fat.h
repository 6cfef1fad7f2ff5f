/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FAT12, FAT16 and FAT32 (EFI system partitions, data disks), read without mounting: the boot
 * sector and the FAT, bounded and checked (fuzzed: the bytes are the guest's). A volume whose
 * dirty bit is set, whose FAT copies differ, or whose geometry does not add up is left alone.
 */
#pragma once

#include "freemap.h"

/*
 * The free clusters of the FAT volume v (freemap.h's contract): every cluster whose FAT entry is
 * 0, as byte ranges within v. Reads the first 512 bytes, then the FAT in chunks of at most
 * 64 KiB, twice: a first pass checks everything (the dirty flags, the FAT copies alike, FAT32's
 * root directory cluster in use) before on_free sees anything, so a refusal never follows a
 * range already reported; the second reads the FAT in use and reports. Nothing past the volume
 * the boot sector describes is read. Memory: two chunks. on_free may be NULL (check only).
 *
 * Returns 0; -EUCLEAN with why set when v is not FAT (NTFS, exFAT, anything else), its boot
 * sector's geometry does not add up (or says it is larger than v), its dirty bit is set (the
 * boot sector's, as Linux sets it, or FAT[1]'s, as Windows does), its FAT copies differ, or
 * FAT32's root directory cluster is marked free; -ENOMEM; v's read error (why set); or what
 * on_free returned if < 0.
 *
 * Microsoft's rule decides the FAT type (fewer than 4085 clusters FAT12, 65525 FAT16, else
 * FAT32): a FAT32 layout with fewer clusters (mkfs.fat -F 32 makes one on request, Linux mounts
 * it) is left alone, Windows would read it as FAT16.
 */
int qt_fat_free_ranges(const struct qt_volume_reader *v, qt_free_range_fn on_free, void *ctx,
                       char *why, size_t why_size);

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * FAT12, FAT16 and FAT32 (EFI system partitions, data disks), read without mounting: the boot
 * sector and the FAT, bounded and checked (fuzzed: the bytes are the guest's). A volume whose
 * dirty bit is set, whose FAT copies differ, or whose geometry does not add up is left alone.
 */
#pragma once

#include "freemap.h"

/* The free clusters of the FAT volume v (freemap.h's contract). */
int qt_fat_free_ranges(const struct qt_volume_reader *v, qt_free_range_fn on_free, void *ctx,
                       char *why, size_t why_size);

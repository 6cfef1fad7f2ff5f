/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * NTFS, read without mounting through libntfs-3g, read-only: the volume's state first (a Windows
 * hibernated or with Fast Startup's unclean state, a volume marked dirty, a log that needs
 * replay: left byte for byte alone, never reset, never "fixed"), then $Bitmap's free clusters.
 */
#pragma once

#include "freemap.h"

/* The free clusters of the NTFS volume v (freemap.h's contract). */
int qt_ntfs_free_ranges(const struct qt_volume_reader *v, qt_free_range_fn on_free, void *ctx,
                        char *why, size_t why_size);

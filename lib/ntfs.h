/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * NTFS, read without mounting through libntfs-3g, read-only: the volume's state first (a Windows
 * hibernated or with Fast Startup's unclean state, a volume marked dirty, a log that needs
 * replay: left byte for byte alone, never reset, never "fixed"), then $Bitmap's free clusters.
 *
 * libntfs-3g sees the volume through a device of qtrim's own whose only way to the disk is the
 * reader: it is opened O_RDONLY and mounted NTFS_MNT_RDONLY (never NTFS_MNT_RECOVER), its writes
 * fail with EROFS and are counted, its ioctls fail with ENOTSUP.
 *
 * Threading: one call at a time per process. libntfs-3g's logging is process-wide; the first call
 * sends it to its null handler for good (a hostile volume must not flood the journal).
 */
#pragma once

#include "freemap.h"

/* The free clusters of the NTFS volume v (freemap.h's contract). Refusals (-EUCLEAN), in the
 * order they are checked, with these exact messages in why:
 *  - libntfs-3g cannot mount it read-only, the volume is larger than v->size, or its $Bitmap
 *    does not cover the volume or marks its own metadata ($Boot, $MFT, $MFTMirr, $Bitmap) free:
 *    "not a readable NTFS volume: <what>; left alone" (<what> is libntfs-3g's errno text when it
 *    refused);
 *  - hiberfil.sys at the root starts with "hibr" or "HIBR" or is shorter than its 4 KiB header
 *    (ntfs_volume_check_hiberfile), or the newest $LogFile restart page is version 2.0 (Windows
 *    kept the metadata in its cache, as ntfs-3g refuses it): "Windows is hibernated or Fast
 *    Startup is on; ...";
 *  - VOLUME_IS_DIRTY in $Volume, or a $LogFile that is not clean or not understood
 *    (ntfs_check_logfile, ntfs_is_logfile_clean): "the NTFS volume was not cleanly unmounted
 *    ...".
 * A read through v that failed returns its negative errno; a write libntfs-3g attempted returns
 * -EROFS (neither is expected: why says what happened). */
int qt_ntfs_free_ranges(const struct qt_volume_reader *v, qt_free_range_fn on_free, void *ctx,
                        char *why, size_t why_size);

/* Writes (and read-write opens) libntfs-3g attempted on qtrim's device since the process
 * started, all refused: 0 unless libntfs-3g changed. For tests and diagnostics. */
unsigned long qt_ntfs_write_attempts(void);

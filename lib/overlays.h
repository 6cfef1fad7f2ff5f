/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Is the image the backing file of other qcow2 images (linked clones, external snapshots)?
 * Mounting it read-write writes into clusters those overlays read through to (journal replay,
 * superblock updates, log records) and corrupts every one of them, running or not; qemu's
 * locks only protect against overlays that are open. An overlay records only its backing
 * file's name, so the only way to find one is to look: this module reads the headers of the
 * qcow2 files beside the image.
 *
 * Best effort: overlays elsewhere on the host are not found, nor ones whose header puts the
 * backing name beyond the first 64 KiB, nor any in a directory past its first 10000 entries.
 */
#pragma once

#include <stddef.h>
#include <sys/stat.h>

#include "error.h"
#include "image.h"

/*
 * Looks in the directory holding image (and, if image is a symlink, in the one holding the file
 * it points to; not recursively) for a qcow2 image whose backing chain (up to 16 deep) leads to
 * the file image_st describes, as qemu would resolve the names. image_st: stat() of image.
 * Skipped: files that are raw by their name or by formats (Formats= of qtrimd.conf, may be NULL):
 * their first bytes are the guest's, and a qcow2 header there names nothing qemu would open
 * (image.h); the image itself (also under other hard links), names starting with "." (qtrim's own
 * ".<name>.qtrim-XXXXXX" copies), symlinks, anything that is not a regular file, backing names
 * with a protocol ("nbd:", "json:"; "file:" is a local file), and whatever follows the first 10000
 * entries of a directory.
 * Returns:
 *   1            found one: its path, "<dir>/<name>", is in ret_overlay (cut to size)
 *   0            found none
 *   -errno       a directory could not be read, or the image path resolved (or no memory); e
 *                says why
 */
int qt_find_overlay(const char *image, const struct stat *image_st,
                    const struct qt_format_rules *formats, char *ret_overlay, size_t size,
                    struct qt_error *e);

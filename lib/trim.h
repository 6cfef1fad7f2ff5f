/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Phase 4, trim: mount one guest filesystem read-write and FITRIM its free space, so qemu-nbd
 * (--discard=unmap) deallocates it in the image. Call it inside a private mount namespace. */
#pragma once

#include "report.h"

typedef void (*qt_progress_fn)(double fraction, void *userdata);

/* Trims fs (a record from qt_discover) through a loop device over disk, mounted on mount_dir.
 * The outcome goes into fs: state "trimmed" with trimmed bytes, or "skipped"/"failed" with a
 * message; a filesystem that cannot be trimmed is not an error of the job. Returns -ECANCELED
 * if a cancel arrived (the filesystem is unmounted first), 0 otherwise. */
int qt_trim_filesystem(const char *disk, const char *mount_dir, struct qt_fs_result *fs,
                       qt_progress_fn progress, void *userdata);

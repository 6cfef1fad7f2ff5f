/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Phases 6 and 7: write a compact copy beside the image with qemu-img convert, check it, and
 * rename it over the original. The rename is the only way qtrim replaces an image. */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "trim.h"

/* When a compact copy replaces the trimmed image (Convert= of qtrimd.conf, the convert option). */
struct qt_convert_policy {
        bool never;           /* Convert=never: trim in place only */
        unsigned min_percent; /* Convert=N%: the copy must save N% of the trimmed allocation */
        uint64_t min_bytes;   /* Convert=N[KMGT]: ... or that many bytes */
};

/* Whether the copy is worth keeping under the policy: it saves enough against the trimmed image
 * (host bytes allocated by each). */
bool qt_convert_policy_accepts(const struct qt_convert_policy *p, uint64_t trimmed_bytes,
                               uint64_t copy_bytes);

/* Why a copy is not worth making or must not be made (raw, hard links, snapshots, unknown
 * backing format, too little free space); NULL when it is. st: the image as inspected;
 * needed_bytes: what the copy can take at most. */
const char *qt_convert_refusal(const char *image, const struct qt_image_info *info,
                               const struct stat *st, uint64_t needed_bytes);

/* Creates the empty temporary file "<dir>/.<name>.qtrim-XXXXXX" beside image for the copy. */
int qt_convert_create_temp(const char *image, char ret_tmp[PATH_MAX], struct qt_error *e);
/* Whether path is a name qt_convert_create_temp() gives for image: what qtrimd may delete when
 * a worker died holding it. */
bool qt_convert_is_temp_of(const char *image, const char *path);
/* Deletes every temporary copy of image beside it: what a worker killed before it could say the
 * copy's name leaves. Only for an image no job works on. Returns how many (the first one's path
 * in ret_first, if not NULL), or a negative errno. */
int qt_convert_remove_temps(const char *image, char ret_first[PATH_MAX]);

/* Converts the image (read through the file inspected, not its path) into tmp (from
 * qt_convert_create_temp) with the image's format, creation options, backing file and bitmaps.
 * The caller removes tmp on failure. */
int qt_convert_image(const struct qt_image_file *f, const struct qt_image_info *info,
                     const char *tmp, qt_progress_fn progress, void *userdata, struct qt_error *e);

/* Checks the copy (qemu-img check, same format, virtual size and backing file), gives it the
 * original's owner, mode and extended attributes (ACLs, SELinux label), fsyncs it, renames it
 * over image and fsyncs the directory. image_fd is an open fd of the image as it was checked:
 * if the path now names another file, nothing is replaced. */
int qt_replace_image(const char *image, int image_fd, const char *tmp,
                     const struct qt_image_info *info, struct qt_error *e);

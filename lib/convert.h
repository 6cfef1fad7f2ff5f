/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Phases 6 and 7: write a compact copy beside the image with qemu-img convert, check it, and
 * rename it over the original. The rename is the only way qtrim replaces an image. */
#pragma once

#include <limits.h>
#include <stddef.h>

#include "image.h"
#include "trim.h"

/* Why a copy is not worth making (snapshots, unknown backing format, too little free space);
 * NULL when it is. needed_bytes: what the copy can take at most. */
const char *qt_convert_refusal(const char *image, const struct qt_image_info *info,
                               uint64_t needed_bytes);

/* Converts image to a new temporary file "<dir>/.<name>.qtrim-XXXXXX" with the image's format,
 * creation options, backing file and bitmaps. On failure the temporary file is removed. */
int qt_convert_image(const char *image, const struct qt_image_info *info, char ret_tmp[PATH_MAX],
                     qt_progress_fn progress, void *userdata, struct qt_error *e);

/* Checks the copy (qemu-img check, same format, virtual size and backing file), gives it the
 * original's owner, mode and extended attributes (ACLs, SELinux label), fsyncs it, renames it
 * over image and fsyncs the directory. image_fd is an open fd of the image as it was checked:
 * if the path now names another file, nothing is replaced. */
int qt_replace_image(const char *image, int image_fd, const char *tmp,
                     const struct qt_image_info *info, struct qt_error *e);

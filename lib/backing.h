/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * One step along a qcow2 backing chain, as qemu takes it, for the two places qtrim follows one
 * before any qemu tool does: the image's own chain (image.c: a loop, a device or a protocol is
 * refused) and the chains of the files beside it (overlays.c: does one lead to the image?).
 */
#pragma once

#include <limits.h>
#include <stddef.h>
#include <sys/stat.h>

/*
 * Opens the file that name, recorded as the backing file of the image at of, means to qemu
 * (qcow2-header.h), after looking at it: only a local regular file that is none of seen[], and
 * only the file looked at. Never blocks, never follows a protocol. Returns the fd (O_RDONLY),
 * with the file's path and stat, or:
 *   -EPROTONOSUPPORT   the name has a protocol ("nbd:", "json:{...}")
 *   -ENAMETOOLONG      the path is too long
 *   -ENOENT, -ENOTDIR  there is no such file
 *   -EOPNOTSUPP        not a regular file (a device, FIFO, directory, socket)
 *   -ELOOP             one of seen[]: the chain is a loop
 *   -ESTALE            replaced between the look and the open
 *   -errno             stat() or open() failed otherwise
 */
int qt_backing_open(const char *of, const char *name, const struct stat *seen, size_t n_seen,
                    char ret_path[PATH_MAX], struct stat *ret_st);

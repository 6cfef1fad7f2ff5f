/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Loop devices over a window of a file: how a partition of the FUSE disk becomes mountable on a
 * kernel that parses no partition tables. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

#define QT_LOOP_PATH_MAX 32

/* Attaches a free loop device to [offset, offset + size) of file, with autoclear: the device
 * goes away when the last user (the returned fd, a mount) lets go. Returns the device's fd and
 * its path in ret_path. */
int qt_loop_attach(const char *file, uint64_t offset, uint64_t size, bool read_only,
                   char ret_path[QT_LOOP_PATH_MAX], struct qt_error *e);

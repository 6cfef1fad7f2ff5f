/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Phase 3, discover: the partition table and each partition's filesystem, read by libblkid from
 * the attached disk itself (never from the kernel, which may parse no partition tables). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "report.h"

/* Fills fs[] with one record per partition (state "found"; fstype "" if blkid knows none), or a
 * single "disk" record when there is no partition table. Extended-partition containers are not
 * listed; their logical partitions are. A partition that must not be touched has a message
 * saying why: it extends past the end of the disk (its fstype is not probed), or it shares
 * sectors with another partition. ret_pttype: "gpt", "dos", "none". */
int qt_discover(const char *disk, uint64_t disk_size, char ret_pttype[16],
                struct qt_fs_result fs[QT_MAX_FILESYSTEMS], size_t *ret_n, struct qt_error *e);

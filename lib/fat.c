/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "fat.h"

#include <errno.h>
#include <stdio.h>

int qt_fat_free_ranges(const struct qt_volume_reader *v, qt_free_range_fn on_free, void *ctx,
                       char *why, size_t why_size)
{
        snprintf(why, why_size, "not yet read");
        return -EUCLEAN;
}

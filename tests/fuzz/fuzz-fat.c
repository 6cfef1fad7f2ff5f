/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Fuzzes fat.h: to be written. */
#include <errno.h>
#include <string.h>

#include "fat.h"
#include "fuzz.h"

struct input {
        const uint8_t *data;
        size_t size;
};

static int read_input(void *ctx, void *buf, size_t len, uint64_t offset)
{
        const struct input *in = ctx;
        if (offset > in->size || len > in->size - offset)
                return -EIO;
        memcpy(buf, in->data + offset, len);
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct input in = {data, size};
        struct qt_volume_reader v = {read_input, &in, size};
        char why[QT_FREEMAP_WHY_MAX];
        (void)qt_fat_free_ranges(&v, NULL, NULL, why, sizeof(why));
        return 0;
}

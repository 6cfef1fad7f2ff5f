/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzzes the FAT reader: a guest writes its FAT volumes, and qtrim discards what their FAT says
 * is free. The input is the volume, read twice: as it is, and as the first bytes of a volume of
 * SPARSE_SIZE bytes whose rest reads as zeros, large enough for a FAT32 (65525 clusters of 512
 * bytes), which no input of a few KiB could hold. Neither read may leave the volume; a range
 * reported must be whole clusters of the data region the boot sector describes (worked out here
 * again), ascending and merged; a refusal must say why; and the walk must give the same answer
 * with nothing to report to, and stop when told.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "fat.h"
#include "fuzz.h"

#define SPARSE_SIZE (40u << 20)

struct volume {
        const uint8_t *data;
        size_t size;   /* of data */
        uint64_t span; /* of the volume: size, or more, read as zeros */
};

static int volume_read(void *ctx, void *buf, size_t len, uint64_t offset)
{
        const struct volume *vol = ctx;
        FUZZ_CHECK(offset <= vol->span && len <= vol->span - offset);
        size_t have = offset < vol->size ? vol->size - (size_t)offset : 0;
        if (have > len)
                have = len;
        if (have)
                memcpy(buf, vol->data + offset, have);
        memset((uint8_t *)buf + have, 0, len - have);
        return 0;
}

static uint32_t le(const uint8_t *p, unsigned n)
{
        uint32_t v = 0;
        for (unsigned i = n; i > 0; i--)
                v = v << 8 | p[i - 1];
        return v;
}

struct seen {
        uint64_t data_offset, cluster_size, data_end; /* from the boot sector */
        uint64_t last_end;
        size_t n, cancel_at;
};

/* The data region as Microsoft's specification computes it, from the raw fields. */
static void data_region(const uint8_t *bs, struct seen *s)
{
        uint64_t sector = le(bs + 11, 2), per_cluster = bs[13];
        if (sector == 0 || per_cluster == 0)
                return; /* refused: no range to check against it */
        uint64_t fat_size = le(bs + 22, 2) ?: le(bs + 36, 4);
        uint64_t total = le(bs + 19, 2) ?: le(bs + 32, 4);
        uint64_t first = le(bs + 14, 2) + bs[16] * fat_size + le(bs + 17, 2) * 32 / sector;
        s->data_offset = first * sector;
        s->cluster_size = per_cluster * sector;
        s->data_end = s->data_offset + (total - first) / per_cluster * s->cluster_size;
}

static int check_range(void *ctx, uint64_t offset, uint64_t length)
{
        struct seen *s = ctx;
        FUZZ_CHECK(s->cluster_size > 0);
        FUZZ_CHECK(length > 0 && length % s->cluster_size == 0);
        FUZZ_CHECK(offset >= s->data_offset && (offset - s->data_offset) % s->cluster_size == 0);
        FUZZ_CHECK(offset <= s->data_end && length <= s->data_end - offset);
        FUZZ_CHECK(s->n == 0 || offset > s->last_end); /* ascending, and merged */
        s->last_end = offset + length;
        return ++s->n == s->cancel_at ? -ECANCELED : 0;
}

static void run(const uint8_t *data, size_t size, uint64_t span)
{
        struct volume vol = {data, size, span};
        struct qt_volume_reader v = {volume_read, &vol, span};
        uint8_t bs[512] = {};
        memcpy(bs, data, size < sizeof(bs) ? size : sizeof(bs));
        struct seen s = {};
        data_region(bs, &s);
        char why[QT_FREEMAP_WHY_MAX] = "";

        int r = qt_fat_free_ranges(&v, check_range, &s, why, sizeof(why));
        FUZZ_CHECK(r == 0 || r == -EUCLEAN || r == -ENOMEM);
        FUZZ_CHECK(r == 0 || why[0] != '\0');
        FUZZ_CHECK(r == 0 || s.n == 0); /* a refusal comes before any range */
        FUZZ_CHECK(s.data_end <= span || s.n == 0);
        if (r != 0)
                return;

        char why2[QT_FREEMAP_WHY_MAX] = "";
        FUZZ_CHECK(qt_fat_free_ranges(&v, NULL, NULL, why2, sizeof(why2)) == 0);
        if (s.n > 0) {
                size_t n = s.n;
                s = (struct seen){.cancel_at = 1 + (n - 1) / 2};
                data_region(bs, &s);
                FUZZ_CHECK(qt_fat_free_ranges(&v, check_range, &s, why2, sizeof(why2)) ==
                           -ECANCELED);
                FUZZ_CHECK(s.n == s.cancel_at);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size > SPARSE_SIZE)
                return 0;
        /* Exactly as long as the input, so ASan sees any read past its end. */
        uint8_t *copy = malloc(size ? size : 1);
        if (!copy)
                return 0;
        memcpy(copy, data, size);
        run(copy, size, size);
        run(copy, size, SPARSE_SIZE);
        free(copy);
        return 0;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzzes layout.h: the swap header and the GPT header are the guest's bytes, and the partition
 * ranges the gaps are computed from come from its partition table. A swap header page must lie
 * within what was read; a GPT tail within the disk; every gap within [first partition, end),
 * sector aligned, at least QT_GAP_MIN, outside every used range and in order.
 */
#include <string.h>

#include "fuzz.h"
#include "layout.h"

static uint64_t u64_at(const uint8_t *p)
{
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        uint64_t header = 0;
        enum qt_swap_state st = qt_swap_parse(data, size, &header);
        if (st == QT_SWAP_AREA)
                FUZZ_CHECK(header >= 4096 && header <= size && header <= QT_SWAP_HEADER_READ_SIZE);

        /* The disk is 16 MiB to 64 GiB, its size from the first bytes. */
        uint64_t disk = size >= 8 ? (u64_at(data) % (64ULL << 30)) + (16ULL << 20) : 16ULL << 20;
        uint64_t tail = 0;
        if (qt_gpt_tail(data, size, disk, &tail))
                FUZZ_CHECK(tail > 0 && tail < disk);

        /* The rest as (offset, size) pairs of used ranges. */
        struct qt_range used[32];
        size_t n_used = 0;
        for (size_t i = 8; i + 16 <= size && n_used < 32; i += 16)
                used[n_used++] =
                    (struct qt_range){u64_at(data + i) % (disk + 4096), u64_at(data + i + 8)};
        struct qt_range gaps[QT_GAPS_MAX];
        size_t n = qt_layout_gaps(used, n_used, disk, gaps);
        FUZZ_CHECK(n <= QT_GAPS_MAX);
        uint64_t first = disk;
        for (size_t i = 0; i < n_used; i++)
                if (used[i].size > 0 && used[i].offset < first)
                        first = used[i].offset;
        for (size_t g = 0; g < n; g++) {
                FUZZ_CHECK(gaps[g].offset % 512 == 0 && gaps[g].size % 512 == 0);
                FUZZ_CHECK(gaps[g].size >= QT_GAP_MIN);
                FUZZ_CHECK(gaps[g].offset >= first && gaps[g].offset + gaps[g].size <= disk);
                FUZZ_CHECK(g == 0 || gaps[g].offset >= gaps[g - 1].offset + gaps[g - 1].size);
                for (size_t i = 0; i < n_used; i++) {
                        if (used[i].size == 0 || used[i].offset >= disk)
                                continue;
                        uint64_t end = used[i].offset + used[i].size;
                        if (end < used[i].offset || end > disk)
                                end = disk;
                        FUZZ_CHECK(gaps[g].offset + gaps[g].size <= used[i].offset ||
                                   gaps[g].offset >= end);
                }
        }
        return 0;
}

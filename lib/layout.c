/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "layout.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

#define SWAP_SIGNATURE_LEN 10

enum qt_swap_state qt_swap_parse(const uint8_t *buf, size_t len, uint64_t *ret_header)
{
        static const char *const areas[] = {"SWAPSPACE2", "SWAP-SPACE"};
        static const char *const hibernated[] = {"S1SUSPEND", "S2SUSPEND", "ULSUSPEND",
                                                 "LINHIB0001"};
        /* The smallest page size first: a 4 KiB area's first page is not where a 64 KiB one's
         * signature would be, and its bytes there are swapped-out data. */
        for (size_t page = 4096; page <= QT_SWAP_HEADER_READ_SIZE && page <= len; page *= 2) {
                const uint8_t *sig = buf + page - SWAP_SIGNATURE_LEN;
                for (size_t i = 0; i < ELEMENTSOF(areas); i++)
                        if (memcmp(sig, areas[i], SWAP_SIGNATURE_LEN) == 0) {
                                *ret_header = page;
                                return QT_SWAP_AREA;
                        }
                /* Shorter signatures are NUL-padded to the field's 10 bytes by some writers and
                 * not by others: compare what they have. */
                for (size_t i = 0; i < ELEMENTSOF(hibernated); i++)
                        if (memcmp(sig, hibernated[i], strlen(hibernated[i])) == 0)
                                return QT_SWAP_HIBERNATED;
        }
        return QT_SWAP_NONE;
}

static uint32_t le32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
        return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* CRC-32 (IEEE 802.3, reflected), as the UEFI specification's GPT checksums. */
static uint32_t crc32_ieee(const uint8_t *p, size_t len)
{
        uint32_t crc = 0xffffffffu;
        for (size_t i = 0; i < len; i++) {
                crc ^= p[i];
                for (int k = 0; k < 8; k++)
                        crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
        }
        return ~crc;
}

/* The UEFI GPT header, little-endian. */
#define GPT_SIGNATURE       "EFI PART"
#define GPT_OFF_HEADER_SIZE 12
#define GPT_OFF_HEADER_CRC  16
#define GPT_OFF_MY_LBA      24
#define GPT_OFF_ALT_LBA     32
#define GPT_OFF_LAST_USABLE 48
#define GPT_OFF_N_ENTRIES   80
#define GPT_OFF_ENTRY_SIZE  84
#define GPT_HEADER_MIN      92
#define GPT_ENTRIES_MAX     (1u << 16)

bool qt_gpt_tail(const uint8_t *hdr, size_t len, uint64_t disk_size, uint64_t *ret_tail)
{
        static const uint64_t sector_sizes[] = {512, 4096};
        for (size_t i = 0; i < ELEMENTSOF(sector_sizes); i++) {
                uint64_t ss = sector_sizes[i];
                if (len < 2 * ss || memcmp(hdr + ss, GPT_SIGNATURE, 8) != 0)
                        continue;
                const uint8_t *h = hdr + ss;
                uint32_t size = le32(h + GPT_OFF_HEADER_SIZE);
                if (size < GPT_HEADER_MIN || size > ss)
                        return false;
                uint8_t copy[4096];
                memcpy(copy, h, size);
                memset(copy + GPT_OFF_HEADER_CRC, 0, 4);
                if (crc32_ieee(copy, size) != le32(h + GPT_OFF_HEADER_CRC))
                        return false;
                uint64_t sectors = disk_size / ss;
                uint64_t alt = le64(h + GPT_OFF_ALT_LBA), last = le64(h + GPT_OFF_LAST_USABLE);
                uint32_t n = le32(h + GPT_OFF_N_ENTRIES), entry = le32(h + GPT_OFF_ENTRY_SIZE);
                if (le64(h + GPT_OFF_MY_LBA) != 1 || alt >= sectors || last >= alt ||
                    n > GPT_ENTRIES_MAX || entry < 128 || entry > 4096 || entry % 8)
                        return false;
                uint64_t array = ((uint64_t)n * entry + ss - 1) / ss;
                if (array >= alt)
                        return false;
                uint64_t tail = last + 1;
                if (alt - array < tail)
                        tail = alt - array;
                *ret_tail = tail * ss;
                return true;
        }
        return false;
}

size_t qt_mbr_ebr_chain(qt_sector_read_fn read, void *ctx, uint64_t offset, uint64_t size,
                        uint64_t *ret, size_t max)
{
        uint8_t sector[512];
        uint64_t ebr = offset;
        size_t n = 0;
        while (n < max) {
                for (size_t i = 0; i < n; i++)
                        if (ret[i] == ebr)
                                return n; /* a loop */
                if (read(ctx, sector, ebr) < 0 || sector[510] != 0x55 || sector[511] != 0xaa)
                        return n;
                ret[n++] = ebr;
                /* The second entry links to the next EBR, relative to the extended partition. */
                const uint8_t *link = sector + 446 + 16;
                uint8_t type = link[4];
                uint64_t rel = (uint64_t)le32(link + 8) * 512u;
                if ((type != 0x05 && type != 0x0f && type != 0x85) || rel == 0 || rel >= size)
                        return n;
                ebr = offset + rel;
        }
        return n;
}

static int compare_ranges(const void *a, const void *b)
{
        const struct qt_range *x = a, *y = b;
        return x->offset < y->offset ? -1 : x->offset > y->offset;
}

#define ALIGN 512u /* sectors: whatever a partition table can describe */

static void add_gap(struct qt_range gaps[QT_GAPS_MAX], size_t *n, uint64_t from, uint64_t to)
{
        from = (from + ALIGN - 1) / ALIGN * ALIGN;
        to = to / ALIGN * ALIGN;
        if (*n < QT_GAPS_MAX && to > from && to - from >= QT_GAP_MIN)
                gaps[(*n)++] = (struct qt_range){from, to - from};
}

size_t qt_layout_gaps(const struct qt_range *used, size_t n_used, uint64_t end,
                      struct qt_range gaps[QT_GAPS_MAX])
{
        struct qt_range *sorted = n_used ? calloc(n_used, sizeof(*sorted)) : NULL;
        size_t n = 0, m = 0;
        if (!sorted)
                return 0;
        for (size_t i = 0; i < n_used; i++)
                if (used[i].offset < end && used[i].size > 0)
                        sorted[m++] = used[i];
        qsort(sorted, m, sizeof(*sorted), compare_ranges);
        /* Nothing before the first partition, so the cursor starts at its start. */
        uint64_t cursor = m ? sorted[0].offset : end;
        for (size_t i = 0; i < m; i++) {
                if (sorted[i].offset > cursor)
                        add_gap(gaps, &n, cursor, sorted[i].offset);
                uint64_t stop = sorted[i].offset + sorted[i].size;
                if (stop < sorted[i].offset || stop > end) /* past the end, or wrapped */
                        stop = end;
                if (stop > cursor)
                        cursor = stop;
        }
        if (cursor < end)
                add_gap(gaps, &n, cursor, end);
        free(sorted);
        return n;
}

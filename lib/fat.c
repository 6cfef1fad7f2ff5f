/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "fat.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/*
 * The on-disk layout, little-endian (Microsoft's "FAT: General Overview of On-Disk Format" 1.03,
 * and Linux's fs/fat): a boot sector whose BPB gives the geometry; the reserved sectors, then
 * NumFATs copies of the FAT, then (FAT12/16) the fixed root directory, then the data region of
 * CountofClusters clusters numbered from 2. FAT entry n describes cluster n: 0 free, else in use
 * (a next cluster, end of chain, or bad). Entries 0 and 1 are not clusters: entry 1 carries
 * Windows's clean-shutdown bit on FAT16/32.
 */
#define BS_OEM_NAME      3
#define BPB_BYTS_PER_SEC 11
#define BPB_SEC_PER_CLUS 13
#define BPB_RSVD_SEC_CNT 14
#define BPB_NUM_FATS     16
#define BPB_ROOT_ENT_CNT 17
#define BPB_TOT_SEC16    19
#define BPB_MEDIA        21
#define BPB_FAT_SZ16     22
#define BPB_TOT_SEC32    32
#define BS16_STATE       37 /* BS_Reserved1 of FAT12/16 */
#define BPB32_FAT_SZ32   36
#define BPB32_EXT_FLAGS  40
#define BPB32_FS_VER     42
#define BPB32_ROOT_CLUS  44
#define BS32_STATE       65 /* BS_Reserved1 of FAT32 */
#define BS_SIGNATURE     510
#define BOOT_SECTOR_SIZE 512
#define DIR_ENTRY_SIZE   32

/* Linux's fat driver sets bit 0 of BS_Reserved1 while mounted read-write (FAT_STATE_DIRTY),
 * fsck.fat clears it; Windows clears ClnShutBitMask in FAT[1] instead, and fsck.fat honours
 * that too. The bit beside it (HrdErrBitMask, a disk error seen) is not ours to judge: fsck.fat
 * neither reads nor clears it, so refusing on it would leave a Linux guest stuck. */
#define STATE_DIRTY     0x01
#define FAT16_CLEAN_BIT 0x8000u
#define FAT32_CLEAN_BIT 0x08000000u
#define FAT32_MASK      0x0fffffffu /* the top four bits are reserved */

#define EXT_FLAGS_NO_MIRROR 0x80 /* only the active FAT, bits 0-3, is in use */
#define EXT_FLAGS_ACTIVE    0x0f

/* Microsoft's rule; the highest cluster number, count + 1, stays below the bad-cluster mark. */
#define FAT12_CLUSTERS_MIN 1u
#define FAT16_CLUSTERS_MIN 4085u
#define FAT32_CLUSTERS_MIN 65525u
#define FAT32_CLUSTERS_MAX 0x0ffffff5u

#define FATS_MAX      2      /* Microsoft's drivers use at most two; mkfs.fat -f 1 makes one */
#define CHUNK_ENTRIES 16384u /* 64 KiB of FAT32 */

#define ADVICE "let the guest check it (fsck.vfat, or chkdsk on Windows) first"

struct fat {
        const struct qt_volume_reader *v;
        unsigned bits;         /* 12, 16 or 32 */
        uint32_t count;        /* clusters 2 .. count + 1 */
        uint64_t cluster_size; /* bytes */
        uint64_t data_offset;  /* of cluster 2 */
        uint64_t fat_offset[FATS_MAX];
        unsigned n_fats;
        unsigned active;       /* the FAT read for free clusters */
        bool mirrored;         /* all copies in use, hence alike */
        uint32_t root_cluster; /* FAT32's root directory; 0 on FAT12/16 */
};

static int fail(char *why, size_t why_size, int error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *why, size_t why_size, int error, const char *fmt, ...)
{
        if (why && why_size > 0) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(why, why_size, fmt, ap);
                va_end(ap);
        }
        return error;
}

static int bad_geometry(char *why, size_t why_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad_geometry(char *why, size_t why_size, const char *fmt, ...)
{
        char detail[QT_FREEMAP_WHY_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
        return fail(why, why_size, -EUCLEAN,
                    "its boot sector's geometry is inconsistent (%s); left alone", detail);
}

static uint16_t le16(const uint8_t *p)
{
        return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static bool power_of_two(uint32_t x)
{
        return x && !(x & (x - 1));
}

/* Other filesystems that keep a boot sector with 0x55AA, found by their OEM name. */
static const char *other_filesystem(const uint8_t *bs)
{
        static const struct {
                const char oem[9];
                const char *name;
        } others[] = {
            {"NTFS    ", "NTFS"},
            {"EXFAT   ", "exFAT"},
            {"-FVE-FS-", "BitLocker"},
        };
        for (size_t i = 0; i < ELEMENTSOF(others); i++)
                if (memcmp(bs + BS_OEM_NAME, others[i].oem, 8) == 0)
                        return others[i].name;
        return NULL;
}

/*
 * The geometry of the boot sector bs into *f, checked against itself and against the volume's
 * size: 0, or -EUCLEAN. All sums are of fields of at most 32 bits, so none overflows 64 bits;
 * products with a sector size (at most 4096) neither.
 */
static int parse_boot_sector(const uint8_t *bs, const struct qt_volume_reader *v, struct fat *f,
                             char *why, size_t why_size)
{
        const char *other = other_filesystem(bs);
        if (other)
                return fail(why, why_size, -EUCLEAN,
                            "not a FAT volume (its boot sector is %s's); left alone", other);
        if (bs[BS_SIGNATURE] != 0x55 || bs[BS_SIGNATURE + 1] != 0xaa)
                return fail(why, why_size, -EUCLEAN,
                            "not a FAT volume (no boot sector signature 0x55AA); left alone");
        /* Linux refuses to mount a FAT with another media descriptor. */
        uint8_t media = bs[BPB_MEDIA];
        if (media != 0xf0 && media < 0xf8)
                return fail(why, why_size, -EUCLEAN,
                            "not a FAT volume (media descriptor 0x%02x); left alone", media);

        uint32_t sector_size = le16(bs + BPB_BYTS_PER_SEC);
        uint32_t per_cluster = bs[BPB_SEC_PER_CLUS];
        uint32_t reserved = le16(bs + BPB_RSVD_SEC_CNT);
        uint32_t n_fats = bs[BPB_NUM_FATS];
        uint32_t root_entries = le16(bs + BPB_ROOT_ENT_CNT);
        uint64_t total = le16(bs + BPB_TOT_SEC16) ?: le32(bs + BPB_TOT_SEC32);
        bool fat32_layout = le16(bs + BPB_FAT_SZ16) == 0;
        uint64_t fat_size = fat32_layout ? le32(bs + BPB32_FAT_SZ32) : le16(bs + BPB_FAT_SZ16);

        if (!power_of_two(sector_size) || sector_size < 512 || sector_size > 4096)
                return bad_geometry(why, why_size, "%u bytes per sector", sector_size);
        if (!power_of_two(per_cluster))
                return bad_geometry(why, why_size, "%u sectors per cluster", per_cluster);
        if (reserved == 0)
                return bad_geometry(why, why_size, "no reserved sectors");
        if (n_fats == 0 || n_fats > FATS_MAX)
                return bad_geometry(why, why_size, "%u FATs", n_fats);
        if (fat_size == 0)
                return bad_geometry(why, why_size, "FATs of 0 sectors");
        /* Linux rounds the root directory down to whole sectors, Microsoft up: only whole
         * sectors put the data region where both look for it. */
        if ((uint64_t)root_entries * DIR_ENTRY_SIZE % sector_size != 0)
                return bad_geometry(why, why_size,
                                    "%u root directory entries, not whole %u-byte sectors",
                                    root_entries, sector_size);
        if (fat32_layout && root_entries != 0)
                return bad_geometry(why, why_size, "%u root directory entries on FAT32",
                                    root_entries);
        if (total == 0)
                return bad_geometry(why, why_size, "0 sectors");
        if (total > v->size / sector_size)
                return bad_geometry(why, why_size,
                                    "%llu sectors of %u bytes, past the volume's end at %llu "
                                    "bytes: truncated?",
                                    (unsigned long long)total, sector_size,
                                    (unsigned long long)v->size);

        uint64_t data_start =
            reserved + n_fats * fat_size + (uint64_t)root_entries * DIR_ENTRY_SIZE / sector_size;
        if (data_start >= total)
                return bad_geometry(why, why_size,
                                    "data region at sector %llu, past the end at sector %llu",
                                    (unsigned long long)data_start, (unsigned long long)total);
        uint64_t count = (total - data_start) / per_cluster;
        unsigned bits = count < FAT16_CLUSTERS_MIN ? 12 : count < FAT32_CLUSTERS_MIN ? 16 : 32;
        if (count < FAT12_CLUSTERS_MIN)
                return bad_geometry(why, why_size, "no data clusters");
        if (fat32_layout && bits != 32)
                return bad_geometry(why, why_size,
                                    "a FAT32 layout with %llu clusters, fewer than FAT32's %u",
                                    (unsigned long long)count, FAT32_CLUSTERS_MIN);
        if (!fat32_layout && bits == 32)
                return bad_geometry(why, why_size,
                                    "a FAT12/16 layout with %llu clusters, as many as FAT32's",
                                    (unsigned long long)count);
        if (count > FAT32_CLUSTERS_MAX)
                return bad_geometry(why, why_size, "%llu clusters, more than FAT32 numbers",
                                    (unsigned long long)count);
        uint64_t fat_needed = ((count + 2) * bits + 7) / 8;
        if (fat_size * sector_size < fat_needed)
                return bad_geometry(why, why_size,
                                    "FATs of %llu bytes, short of the %llu for %llu clusters",
                                    (unsigned long long)(fat_size * sector_size),
                                    (unsigned long long)fat_needed, (unsigned long long)count);

        *f = (struct fat){
            .v = v,
            .bits = bits,
            .count = (uint32_t)count,
            .cluster_size = (uint64_t)per_cluster * sector_size,
            .data_offset = data_start * sector_size,
            .n_fats = n_fats,
            .mirrored = n_fats > 1,
        };
        for (unsigned i = 0; i < n_fats; i++)
                f->fat_offset[i] = (reserved + i * fat_size) * sector_size;

        if (bits == 32) {
                uint16_t version = le16(bs + BPB32_FS_VER);
                if (version != 0)
                        return fail(why, why_size, -EUCLEAN,
                                    "its FAT32 version is %u.%u, which qtrim does not know; left "
                                    "alone",
                                    version >> 8, version & 0xff);
                uint16_t flags = le16(bs + BPB32_EXT_FLAGS);
                if (flags & EXT_FLAGS_NO_MIRROR) {
                        f->active = flags & EXT_FLAGS_ACTIVE;
                        f->mirrored = false;
                        if (f->active >= n_fats)
                                return bad_geometry(why, why_size, "active FAT %u of %u",
                                                    f->active + 1, n_fats);
                }
                f->root_cluster = le32(bs + BPB32_ROOT_CLUS);
                if (f->root_cluster < 2 || f->root_cluster - 2 >= count)
                        return bad_geometry(why, why_size,
                                            "root directory at cluster %u, not one of 2 to %llu",
                                            f->root_cluster, (unsigned long long)count + 1);
        }
        return 0;
}

/* Reads entries [first, first + n) of FAT copy into buf; first is even, so that a FAT12 chunk
 * starts on a byte. */
static int read_entries(const struct fat *f, unsigned copy, uint32_t first, uint32_t n,
                        uint8_t *buf, char *why, size_t why_size)
{
        uint64_t from = (uint64_t)first * f->bits / 8;
        uint64_t to = ((uint64_t)first + n) * f->bits / 8 + (f->bits == 12 && n % 2);
        uint64_t offset = f->fat_offset[copy] + from;
        int r = f->v->read(f->v->ctx, buf, (size_t)(to - from), offset);
        if (r < 0)
                return fail(why, why_size, r, "cannot read FAT %u at byte %llu: %s", copy + 1,
                            (unsigned long long)offset, strerror(-r));
        return 0;
}

/* Entry i of a chunk read by read_entries(). */
static uint32_t entry(const struct fat *f, const uint8_t *buf, uint32_t i)
{
        switch (f->bits) {
        case 12: {
                uint16_t two = le16(buf + i + i / 2);
                return i % 2 ? two >> 4 : two & 0xfff;
        }
        case 16:
                return le16(buf + 2 * i);
        default:
                return le32(buf + 4 * i) & FAT32_MASK;
        }
}

static uint32_t chunk_length(const struct fat *f, uint32_t first)
{
        uint32_t left = f->count + 2 - first;
        return left < CHUNK_ENTRIES ? left : CHUNK_ENTRIES;
}

/* Entry n of the FAT in use, read alone. */
static int read_entry(const struct fat *f, uint32_t n, uint32_t *ret, char *why, size_t why_size)
{
        uint8_t buf[8]; /* two entries: FAT12's odd ones share a byte with the even one */
        uint32_t first = n & ~1u;
        int r = read_entries(f, f->active, first, n - first + 1, buf, why, why_size);
        if (r < 0)
                return r;
        *ret = entry(f, buf, n - first);
        return 0;
}

/* Everything that leaves the volume alone, before anything is reported. */
static int check(const struct fat *f, const uint8_t *bs, uint8_t *bufs[FATS_MAX], char *why,
                 size_t why_size)
{
        uint32_t value;
        int r;

        bool dirty = bs[f->bits == 32 ? BS32_STATE : BS16_STATE] & STATE_DIRTY;
        if (!dirty && f->bits != 12) {
                r = read_entry(f, 1, &value, why, why_size);
                if (r < 0)
                        return r;
                dirty = !(value & (f->bits == 16 ? FAT16_CLEAN_BIT : FAT32_CLEAN_BIT));
        }
        if (dirty)
                return fail(why, why_size, -EUCLEAN,
                            "the FAT volume was not cleanly unmounted (dirty bit set); " ADVICE);

        /* A free root directory would be discarded with the rest: the FAT is not what the
         * files are in. */
        if (f->bits == 32) {
                r = read_entry(f, f->root_cluster, &value, why, why_size);
                if (r < 0)
                        return r;
                if (value == 0)
                        return fail(why, why_size, -EUCLEAN,
                                    "its root directory's cluster %u is marked free in the FAT; "
                                    "left alone: " ADVICE,
                                    f->root_cluster);
        }

        if (!f->mirrored)
                return 0;
        for (uint32_t first = 0; first < f->count + 2; first += CHUNK_ENTRIES) {
                uint32_t n = chunk_length(f, first);
                for (unsigned c = 0; c < f->n_fats; c++) {
                        r = read_entries(f, c, first, n, bufs[c], why, why_size);
                        if (r < 0)
                                return r;
                }
                for (uint32_t i = first ? 0 : 2; i < n; i++) {
                        uint32_t e = entry(f, bufs[0], i);
                        for (unsigned c = 1; c < f->n_fats; c++)
                                if (entry(f, bufs[c], i) != e)
                                        return fail(why, why_size, -EUCLEAN,
                                                    "its FAT copies differ (FAT %u at cluster "
                                                    "%u); left alone: " ADVICE,
                                                    c + 1, first + i);
                }
        }
        return 0;
}

/* Free clusters [from, to) to on_free; within the volume, as parse_boot_sector() checked. */
static int report(const struct fat *f, uint32_t from, uint32_t to, qt_free_range_fn on_free,
                  void *ctx)
{
        if (!on_free)
                return 0;
        int r = on_free(ctx, f->data_offset + (uint64_t)(from - 2) * f->cluster_size,
                        (uint64_t)(to - from) * f->cluster_size);
        return r < 0 ? r : 0;
}

static int walk(const struct fat *f, uint8_t *buf, qt_free_range_fn on_free, void *ctx, char *why,
                size_t why_size)
{
        uint32_t run = 0; /* the first cluster of the free run, 0 when in none */
        for (uint32_t first = 0; first < f->count + 2; first += CHUNK_ENTRIES) {
                uint32_t n = chunk_length(f, first);
                int r = read_entries(f, f->active, first, n, buf, why, why_size);
                if (r < 0)
                        return r;
                for (uint32_t i = first ? 0 : 2; i < n; i++) {
                        bool is_free = entry(f, buf, i) == 0;
                        if (is_free && !run)
                                run = first + i;
                        else if (!is_free && run) {
                                r = report(f, run, first + i, on_free, ctx);
                                if (r < 0)
                                        return r;
                                run = 0;
                        }
                }
        }
        return run ? report(f, run, f->count + 2, on_free, ctx) : 0;
}

static void free_bufs(uint8_t *(*bufs)[FATS_MAX])
{
        for (size_t i = 0; i < FATS_MAX; i++)
                free((*bufs)[i]);
}

int qt_fat_free_ranges(const struct qt_volume_reader *v, qt_free_range_fn on_free, void *ctx,
                       char *why, size_t why_size)
{
        if (v->size < BOOT_SECTOR_SIZE)
                return fail(why, why_size, -EUCLEAN,
                            "not a FAT volume (%llu bytes, less than a boot sector); left alone",
                            (unsigned long long)v->size);
        uint8_t bs[BOOT_SECTOR_SIZE];
        int r = v->read(v->ctx, bs, sizeof(bs), 0);
        if (r < 0)
                return fail(why, why_size, r, "cannot read the boot sector: %s", strerror(-r));

        struct fat f;
        r = parse_boot_sector(bs, v, &f, why, why_size);
        if (r < 0)
                return r;

        _cleanup_(free_bufs) uint8_t *bufs[FATS_MAX] = {};
        for (unsigned c = 0; c < (f.mirrored ? f.n_fats : 1); c++) {
                bufs[c] = malloc(CHUNK_ENTRIES * 4);
                if (!bufs[c])
                        return fail(why, why_size, -ENOMEM, "out of memory");
        }
        r = check(&f, bs, bufs, why, why_size);
        if (r < 0)
                return r;
        return walk(&f, bufs[0], on_free, ctx, why, why_size);
}

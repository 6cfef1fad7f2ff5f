/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The FAT reader against volumes that mkfs.vfat made and mtools filled, on sparse files, and
 * against what fsck.fat and mtools say of them: the free bytes they count, and no cluster of a
 * file or directory they list reported free. Then the volumes qtrim must leave alone, made by
 * editing such images as Linux, Windows or damage would: dirty, FAT copies that differ,
 * geometry that does not add up, other filesystems. Needs dosfstools and mtools, not root.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "fat.h"
#include "util.h"

/* Made and removed by the parent (an unchecked fixture), so a test that fails still has its
 * files removed. */
static char scratch[PATH_MAX];

static void scratch_setup(void)
{
        snprintf(scratch, sizeof(scratch), "%s/qtrim-fat.XXXXXX", getenv("TMPDIR") ?: "/var/tmp");
        ck_assert_msg(mkdtemp(scratch), "mkdtemp: %m");
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        return remove(path) < 0 ? -1 : 0;
}

static void scratch_teardown(void)
{
        if (!scratch[0])
                return;
        ck_assert_msg(nftw(scratch, remove_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) == 0,
                      "cannot remove %s: %m", scratch);
        scratch[0] = '\0';
}

/* Runs a shell command line in scratch, mtools' configuration check off, stderr with stdout:
 * its exit status, and its output in *ret. */
static int run(char **ret, const char *line)
{
        _cleanup_free_ char *cmd = NULL;
        ck_assert_int_ge(
            asprintf(&cmd, "cd '%s' && export MTOOLS_SKIP_CHECK=1 && { %s ; } 2>&1", scratch, line),
            0);
        char *out = NULL;
        size_t size = 0;
        FILE *f = popen(cmd, "r");
        ck_assert_ptr_nonnull(f);
        FILE *mem = open_memstream(&out, &size);
        ck_assert_ptr_nonnull(mem);
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
                fwrite(buf, 1, n, mem);
        fclose(mem);
        int status = pclose(f);
        ck_assert_msg(WIFEXITED(status), "`%s` did not exit", line);
        *ret = out;
        return WEXITSTATUS(status);
}

static int sh_status(char **ret, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sh_status(char **ret, const char *fmt, ...)
{
        _cleanup_free_ char *line = NULL;
        va_list ap;
        va_start(ap, fmt);
        ck_assert_int_ge(vasprintf(&line, fmt, ap), 0);
        va_end(ap);
        return run(ret, line);
}

/* The same; the test fails unless it exits 0. ret may be NULL. */
static void sh(char **ret, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sh(char **ret, const char *fmt, ...)
{
        _cleanup_free_ char *line = NULL, *out = NULL;
        va_list ap;
        va_start(ap, fmt);
        ck_assert_int_ge(vasprintf(&line, fmt, ap), 0);
        va_end(ap);
        int status = run(&out, line);
        ck_assert_msg(status == 0, "`%s` failed (status %d): %s", line, status, out);
        if (ret)
                *ret = TAKE_PTR(out);
}

/* ---- the volume: an image file, cut short or failing on request ---- */

struct image {
        int fd;
        unsigned reads;
        unsigned fail_at; /* this read (from 1) and the ones after fail; 0 for none */
};

static int image_read(void *ctx, void *buf, size_t len, uint64_t offset)
{
        struct image *im = ctx;
        if (++im->reads >= im->fail_at && im->fail_at)
                return -EIO;
        ssize_t n = pread(im->fd, buf, len, (off_t)offset);
        return n == (ssize_t)len ? 0 : n < 0 ? -errno : -EIO;
}

struct ranges {
        struct {
                uint64_t offset, length;
        } * r;
        size_t n, cap;
        size_t calls;
        size_t cancel_at; /* on_free returns -ECANCELED on this call (from 1); 0 for never */
};

static int collect(void *ctx, uint64_t offset, uint64_t length)
{
        struct ranges *rs = ctx;
        if (++rs->calls == rs->cancel_at)
                return -ECANCELED;
        if (rs->n == rs->cap) {
                rs->cap = rs->cap ? 2 * rs->cap : 64;
                rs->r = realloc(rs->r, rs->cap * sizeof(*rs->r));
                ck_assert_ptr_nonnull(rs->r);
        }
        rs->r[rs->n].offset = offset;
        rs->r[rs->n].length = length;
        rs->n++;
        return 0;
}

static void ranges_done(struct ranges *rs)
{
        free(rs->r);
        *rs = (struct ranges){};
}

/* The image file name in scratch, opened. */
static int open_image(const char *name, int flags)
{
        _cleanup_free_ char *path = NULL;
        ck_assert_int_ge(asprintf(&path, "%s/%s", scratch, name), 0);
        int fd = open(path, flags | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %m", path);
        return fd;
}

/* The reader over the image file name in scratch, whose volume is size bytes (0: the file's);
 * with fail_at, reads fail from that one on. */
static int read_fat(const char *name, uint64_t size, unsigned fail_at, struct ranges *rs,
                    char why[QT_FREEMAP_WHY_MAX], unsigned *ret_reads)
{
        struct image im = {.fd = open_image(name, O_RDONLY), .fail_at = fail_at};
        struct stat st;
        ck_assert_int_eq(fstat(im.fd, &st), 0);
        struct qt_volume_reader v = {image_read, &im, size ? size : (uint64_t)st.st_size};
        why[0] = '\0';
        int r = qt_fat_free_ranges(&v, rs ? collect : NULL, rs, why, QT_FREEMAP_WHY_MAX);
        close(im.fd);
        if (ret_reads)
                *ret_reads = im.reads;
        return r;
}

/* Writes n bytes at offset of the image name. */
static void poke(const char *name, uint64_t offset, const void *bytes, size_t n)
{
        int fd = open_image(name, O_WRONLY);
        ck_assert_int_eq(pwrite(fd, bytes, n, (off_t)offset), (ssize_t)n);
        close(fd);
}

static void poke8(const char *name, uint64_t offset, uint8_t value)
{
        poke(name, offset, &value, 1);
}

static void poke16(const char *name, uint64_t offset, uint16_t value)
{
        uint8_t b[2] = {value & 0xff, value >> 8};
        poke(name, offset, b, 2);
}

static void poke32(const char *name, uint64_t offset, uint32_t value)
{
        uint8_t b[4] = {value & 0xff, value >> 8 & 0xff, value >> 16 & 0xff, value >> 24};
        poke(name, offset, b, 4);
}

static uint32_t peek32(const char *name, uint64_t offset)
{
        int fd = open_image(name, O_RDONLY);
        uint8_t b[4];
        ck_assert_int_eq(pread(fd, b, 4, (off_t)offset), 4);
        close(fd);
        return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* ---- what fsck.fat and mtools say ---- */

struct geometry {
        unsigned bits, n_fats, root_cluster;
        uint64_t sector_size, sectors, fat_offset, fat_bytes, data_offset, cluster_size, clusters;
        uint64_t used; /* clusters */
};

static uint64_t number_at(const char *p)
{
        unsigned long long value;
        ck_assert_msg(sscanf(p, " %llu", &value) == 1, "no number at: %.40s", p);
        return value;
}

/* The number right after text in out. */
static uint64_t number_after(const char *out, const char *text)
{
        const char *p = strstr(out, text);
        ck_assert_msg(p, "no \"%s\" in: %s", text, out);
        return number_at(p + strlen(text));
}

/* The number that starts the line of text in out. */
static uint64_t number_before(const char *out, const char *text)
{
        const char *p = strstr(out, text);
        ck_assert_msg(p, "no \"%s\" in: %s", text, out);
        while (p > out && p[-1] != '\n')
                p--;
        return number_at(p);
}

static void fsck_geometry(const char *img, struct geometry *g)
{
        _cleanup_free_ char *out = NULL;
        sh(&out, "fsck.fat -n -v '%s'", img);
        *g = (struct geometry){
            .bits = (unsigned)number_after(out, "FATs, "),
            .n_fats = (unsigned)number_before(out, "FATs, "),
            .sector_size = number_before(out, "bytes per logical sector"),
            .sectors = number_before(out, "sectors total"),
            .fat_offset = number_after(out, "First FAT starts at byte"),
            .fat_bytes = number_before(out, "bytes per FAT"),
            .data_offset = number_after(out, "Data area starts at byte"),
            .cluster_size = number_before(out, "bytes per cluster"),
            .clusters = number_before(out, "data clusters"),
            .used = number_after(out, "files, "),
        };
        if (g->bits == 32)
                g->root_cluster = (unsigned)number_after(out, "Root directory start at cluster");
}

static uint64_t mtools_free_bytes(const char *img)
{
        _cleanup_free_ char *out = NULL;
        sh(&out, "mdir -i '%s' :: | grep 'bytes free' | tr -dc 0-9", img);
        return number_at(out);
}

/* Whether any byte of [offset, offset + length) is in a free range. */
static bool overlaps_free(const struct ranges *rs, uint64_t offset, uint64_t length)
{
        size_t lo = 0, hi = rs->n;
        while (lo < hi) { /* the first range that ends after offset */
                size_t mid = (lo + hi) / 2;
                if (rs->r[mid].offset + rs->r[mid].length <= offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo < rs->n && rs->r[lo].offset < offset + length;
}

/* The ranges of img against fsck.fat's and mtools' counts, and every file and directory
 * mtools lists outside them; returns how many clusters those hold. */
static uint64_t verify(const char *img, const struct ranges *rs)
{
        struct geometry g;
        fsck_geometry(img, &g);
        uint64_t total = 0;
        for (size_t i = 0; i < rs->n; i++) {
                uint64_t off = rs->r[i].offset, len = rs->r[i].length;
                ck_assert_uint_ge(off, g.data_offset);
                ck_assert_uint_eq((off - g.data_offset) % g.cluster_size, 0);
                ck_assert_uint_gt(len, 0);
                ck_assert_uint_eq(len % g.cluster_size, 0);
                ck_assert_uint_le(off + len, g.data_offset + g.clusters * g.cluster_size);
                if (i > 0) /* ascending, and merged: a gap between any two */
                        ck_assert_uint_lt(rs->r[i - 1].offset + rs->r[i - 1].length, off);
                total += len;
        }
        ck_assert_uint_eq(total, (g.clusters - g.used) * g.cluster_size);
        ck_assert_uint_eq(total, mtools_free_bytes(img));

        _cleanup_free_ char *out = NULL;
        sh(&out, "mdir -/ -b -i '%s' :: | while read -r p; do mshowfat -i '%s' \"$p\"; done", img,
           img);
        uint64_t clusters = 0;
        for (const char *p = strchr(out, '<'); p; p = strchr(p + 1, '<')) {
                unsigned long long a, b;
                int n = sscanf(p, "<%llu-%llu>", &a, &b);
                ck_assert_int_ge(n, 1);
                if (n == 1)
                        b = a;
                ck_assert_uint_ge(a, 2);
                ck_assert_uint_le(a, b);
                ck_assert_msg(!overlaps_free(rs, g.data_offset + (a - 2) * g.cluster_size,
                                             (b - a + 1) * g.cluster_size),
                              "clusters %llu-%llu of a file reported free", a, b);
                clusters += b - a + 1;
        }
        if (g.bits == 32)
                ck_assert(!overlaps_free(rs, g.data_offset + (g.root_cluster - 2) * g.cluster_size,
                                         g.cluster_size));
        return clusters;
}

/* ---- volumes mkfs.vfat made and mtools filled ---- */

static const struct volume {
        const char *size, *mkfs;
        unsigned unit_kib; /* the files' sizes are small multiples of it */
} volumes[] = {
    {"4M", "-F 12", 8},        {"8M", "-F 12 -S 4096 -f 1", 16}, {"64M", "-F 16", 64},
    {"60M", "-F 16 -s 2", 64}, /* 61 K clusters: a FAT of four chunks */
    {"300M", "-F 32", 64},     {"300M", "-F 32 -s 1", 256}, /* 600 K clusters: 37 chunks, 6 of them
                                                               filled */
};

/* Thirty files of one to seven units, ten in a directory, some deleted (forty-one units), and then
 * one of twelve units that falls into the first holes they left. */
static void fill(const char *img, unsigned unit_kib)
{
        sh(NULL,
           "set -e; u=%u; head -c $((u * 12 * 1024)) /dev/urandom >src; mmd -i '%s' ::dir; "
           "for i in $(seq 1 30); do head -c $(( (i %% 7 + 1) * u * 1024 - i )) src >part; "
           "mcopy -i '%s' part ::f$i; done; "
           "for i in $(seq 1 10); do head -c $(( i * u * 512 + 1 )) src >part; "
           "mcopy -i '%s' part ::dir/g$i; done; "
           "for i in 2 3 6 9 12 15 18 21 22 23 27; do mdel -i '%s' ::f$i; done; mdel -i '%s' "
           "::dir/g4; "
           "mcopy -i '%s' src ::big; rm src part",
           unit_kib, img, img, img, img, img, img);
}

START_TEST(test_volume)
{
        const struct volume *vol = &volumes[_i];
        sh(NULL, "truncate -s %s v.img && mkfs.vfat %s v.img", vol->size, vol->mkfs);

        /* Empty: all but the root directory (FAT32's first cluster) free, in one range. */
        struct ranges rs = {};
        char why[QT_FREEMAP_WHY_MAX];
        ck_assert_int_eq(read_fat("v.img", 0, 0, &rs, why, NULL), 0);
        ck_assert_uint_eq(rs.n, 1);
        verify("v.img", &rs);
        ranges_done(&rs);

        fill("v.img", vol->unit_kib);
        ck_assert_int_eq(read_fat("v.img", 0, 0, &rs, why, NULL), 0);
        ck_assert_uint_ge(rs.n, 6); /* the holes the deleted files left, some merged */
        ck_assert_uint_gt(verify("v.img", &rs), 0);
        ranges_done(&rs);

        /* Check only: the same answer, nothing to report to. */
        ck_assert_int_eq(read_fat("v.img", 0, 0, NULL, why, NULL), 0);
}
END_TEST

/* The refusals start from a filled FAT12, FAT16 or FAT32 volume, made once. */
static const struct volume bases[] = {
    {"4M", "-F 12", 8}, {"64M", "-F 16", 32}, {"300M", "-F 32", 64}};

static void make_bases(void)
{
        scratch_setup();
        for (size_t i = 0; i < ELEMENTSOF(bases); i++) {
                sh(NULL, "truncate -s %s base%zu.img && mkfs.vfat %s base%zu.img", bases[i].size, i,
                   bases[i].mkfs, i);
                char name[32];
                snprintf(name, sizeof(name), "base%zu.img", i);
                fill(name, bases[i].unit_kib);
        }
}

/* v.img: a copy of the base volume of that FAT type, its geometry in *g. */
static void make_filled(unsigned bits, struct geometry *g)
{
        sh(NULL, "cp --sparse=always base%d.img v.img", bits == 12 ? 0 : bits == 16 ? 1 : 2);
        fsck_geometry("v.img", g);
        ck_assert_uint_eq(g->bits, bits);
}

static void expect_refused(const char *img, uint64_t size, const char *what)
{
        struct ranges rs = {};
        char why[QT_FREEMAP_WHY_MAX];
        ck_assert_int_eq(read_fat(img, size, 0, &rs, why, NULL), -EUCLEAN);
        ck_assert_msg(strstr(why, what), "\"%s\" does not say \"%s\"", why, what);
        ck_assert_uint_eq(rs.calls, 0); /* nothing reported before the refusal */
        ranges_done(&rs);
}

static const unsigned all_bits[] = {12, 16, 32};

/* Linux marks a volume mounted read-write in the boot sector; fsck.fat clears the mark. */
START_TEST(test_dirty_boot_sector)
{
        struct geometry g;
        make_filled(all_bits[_i], &g);
        poke8("v.img", g.bits == 32 ? 0x41 : 0x25, 0x01);
        expect_refused("v.img", 0, "not cleanly unmounted (dirty bit set); let the guest check");
        _cleanup_free_ char *out = NULL;
        ck_assert_int_ne(sh_status(&out, "fsck.fat -n v.img"), 0);
        ck_assert_msg(strstr(out, "Dirty bit is set"), "%s", out);
}
END_TEST

/* Windows clears the clean-shutdown bit of FAT[1] while mounted, fsck.fat honours it too; the
 * hard-error bit beside it fsck.fat neither reads nor clears: not a reason to refuse. */
START_TEST(test_dirty_fat)
{
        struct geometry g;
        make_filled(all_bits[_i + 1], &g);
        for (unsigned c = 0; c < g.n_fats; c++) {
                uint64_t at = g.fat_offset + c * g.fat_bytes;
                if (g.bits == 16)
                        poke16("v.img", at + 2, 0xbfff);
                else
                        poke32("v.img", at + 4, 0x0bffffff);
        }
        _cleanup_free_ char *out = NULL;
        sh(&out, "fsck.fat -n v.img");
        ck_assert_msg(!strstr(out, "Dirty"), "%s", out);
        struct ranges rs = {};
        char why[QT_FREEMAP_WHY_MAX];
        ck_assert_int_eq(read_fat("v.img", 0, 0, &rs, why, NULL), 0);
        verify("v.img", &rs);
        ranges_done(&rs);

        for (unsigned c = 0; c < g.n_fats; c++) {
                uint64_t at = g.fat_offset + c * g.fat_bytes;
                if (g.bits == 16)
                        poke16("v.img", at + 2, 0x7fff);
                else
                        poke32("v.img", at + 4, 0x07ffffff);
        }
        expect_refused("v.img", 0, "not cleanly unmounted (dirty bit set)");
        free(out);
        ck_assert_int_ne(sh_status(&out, "fsck.fat -n v.img"), 0);
        ck_assert_msg(strstr(out, "Dirty bit is set"), "%s", out);
}
END_TEST

/* One byte of the second FAT, at the last cluster: refused before any range is reported. */
START_TEST(test_fat_copies_differ)
{
        struct geometry g;
        make_filled(all_bits[_i], &g);
        uint64_t last = g.clusters + 1;
        poke8("v.img", g.fat_offset + g.fat_bytes + last * g.bits / 8, 0x42);
        expect_refused("v.img", 0, "its FAT copies differ");
        _cleanup_free_ char *out = NULL;
        sh_status(&out, "fsck.fat -n v.img");
        ck_assert_msg(strstr(out, "FATs differ"), "%s", out);
}
END_TEST

/* FAT32 with mirroring disabled: only the active FAT counts, whatever the other says. */
START_TEST(test_fat32_active_fat)
{
        struct geometry g;
        make_filled(32, &g);
        struct ranges before = {}, rs = {};
        char why[QT_FREEMAP_WHY_MAX];
        ck_assert_int_eq(read_fat("v.img", 0, 0, &before, why, NULL), 0);
        ck_assert_uint_gt(before.n, 0);

        /* The last cluster, free, marked in use in FAT 1 only. */
        uint64_t last = g.clusters + 1;
        ck_assert_uint_eq(peek32("v.img", g.fat_offset + 4 * last), 0);
        poke32("v.img", g.fat_offset + 4 * last, 0x0fffffff);
        expect_refused("v.img", 0, "its FAT copies differ (FAT 2 at cluster");

        poke16("v.img", 0x28, 0x81); /* FAT 2 active */
        ck_assert_int_eq(read_fat("v.img", 0, 0, &rs, why, NULL), 0);
        ck_assert_uint_eq(rs.n, before.n);
        ck_assert_mem_eq(rs.r, before.r, rs.n * sizeof(*rs.r));
        ranges_done(&rs);

        poke16("v.img", 0x28, 0x80); /* FAT 1 active: the last cluster is no longer free */
        ck_assert_int_eq(read_fat("v.img", 0, 0, &rs, why, NULL), 0);
        ck_assert_uint_eq(rs.n, before.n);
        ck_assert_uint_eq(rs.r[rs.n - 1].length + g.cluster_size, before.r[before.n - 1].length);
        ranges_done(&rs);
        ranges_done(&before);

        poke16("v.img", 0x28, 0x82);
        expect_refused("v.img", 0, "active FAT 3 of 2");
}
END_TEST

/* Fields of a FAT16 boot sector (then a FAT32 one) that do not add up, each alone. */
static const struct {
        unsigned bits;
        unsigned offset, size; /* of the field */
        uint32_t value;
        const char *why;
} bad_fields[] = {
    {16, 0x0d, 1, 0, "(0 sectors per cluster)"},
    {16, 0x0d, 1, 3, "(3 sectors per cluster)"},
    {16, 0x0d, 1, 255, "(255 sectors per cluster)"},
    {16, 0x0d, 1, 1, "as many as FAT32's"}, /* 4 times the clusters, FAT16's FAT */
    {16, 0x0b, 2, 0, "(0 bytes per sector)"},
    {16, 0x0b, 2, 256, "(256 bytes per sector)"},
    {16, 0x0b, 2, 8192, "(8192 bytes per sector)"}, /* 128 * 8 KiB clusters: 1 MiB */
    {16, 0x0b, 2, 3000, "(3000 bytes per sector)"},
    {16, 0x0e, 2, 0, "(no reserved sectors)"},
    {16, 0x10, 1, 0, "(0 FATs)"},
    {16, 0x10, 1, 3, "(3 FATs)"},
    {16, 0x11, 2, 17, "(17 root directory entries, not whole 512-byte sectors)"},
    {16, 0x16, 2, 1, "short of the"},
    {16, 0x16, 2, 0, "on FAT32"}, /* a FAT32 layout then, with a root directory */
    {16, 0x20, 4, 0x01000000, "past the volume's end"},
    {16, 0x13, 2, 100, "past the end at sector 100"},
    {16, 0x15, 1, 0x00, "not a FAT volume (media descriptor 0x00)"},
    {16, 0x1fe, 2, 0, "not a FAT volume (no boot sector signature 0x55AA)"},
    {32, 0x24, 4, 0, "(FATs of 0 sectors)"},
    {32, 0x20, 4, 0, "(0 sectors)"},
    {32, 0x20, 4, 0xffffffff, "past the volume's end"},
    {32, 0x2c, 4, 0, "(root directory at cluster 0, not one of 2 to"},
    {32, 0x2c, 4, 0x0fffffff, "(root directory at cluster 268435455"},
    {32, 0x2a, 2, 0x0100, "its FAT32 version is 1.0"},
    {32, 0x11, 2, 512, "(512 root directory entries on FAT32)"},
    {32, 0x0d, 1, 64, "fewer than FAT32's 65525"},
};

START_TEST(test_bad_geometry)
{
        struct geometry g;
        make_filled(bad_fields[_i].bits, &g);
        if (bad_fields[_i].size == 1)
                poke8("v.img", bad_fields[_i].offset, (uint8_t)bad_fields[_i].value);
        else if (bad_fields[_i].size == 2)
                poke16("v.img", bad_fields[_i].offset, (uint16_t)bad_fields[_i].value);
        else
                poke32("v.img", bad_fields[_i].offset, bad_fields[_i].value);
        expect_refused("v.img", 0, bad_fields[_i].why);
}
END_TEST

/* mkfs.fat makes a FAT32 of too few clusters when asked (and warns); Linux mounts it, Windows
 * would take it for FAT16. */
START_TEST(test_small_fat32)
{
        sh(NULL, "truncate -s 33M v.img && mkfs.vfat -F 32 -s 8 v.img");
        expect_refused("v.img", 0, "(a FAT32 layout with 8426 clusters, fewer than FAT32's 65525)");
}
END_TEST

/* FAT32's root directory must not be discarded as free, whatever the FAT says. */
START_TEST(test_fat32_root_free)
{
        struct geometry g;
        make_filled(32, &g);
        uint32_t last = (uint32_t)g.clusters + 1;
        poke32("v.img", 0x2c, last);
        expect_refused("v.img", 0, "root directory's cluster");
}
END_TEST

/* The volume (a partition, an LV) shorter than its boot sector says. */
START_TEST(test_truncated)
{
        struct geometry g;
        make_filled(all_bits[_i], &g);
        uint64_t size = g.sectors * g.sector_size;
        expect_refused("v.img", size - 1, "past the volume's end");
        expect_refused("v.img", 511, "not a FAT volume (511 bytes, less than a boot sector)");
        /* Exactly the size the boot sector says, or more: nothing past it is read. */
        char why[QT_FREEMAP_WHY_MAX];
        ck_assert_int_eq(read_fat("v.img", size, 0, NULL, why, NULL), 0);
        ck_assert_int_eq(read_fat("v.img", size + (1 << 30), 0, NULL, why, NULL), 0);
}
END_TEST

/* Other filesystems' boot sectors, as blkid might have been told otherwise. */
START_TEST(test_not_fat)
{
        sh(NULL, "rm -f v.img && truncate -s 1M v.img");
        expect_refused("v.img", 0, "not a FAT volume (no boot sector signature 0x55AA)");
        poke16("v.img", 510, 0xaa55);
        poke("v.img", 3, "NTFS    ", 8);
        poke16("v.img", 0x0b, 512);
        poke8("v.img", 0x0d, 8);
        poke8("v.img", 0x15, 0xf8);
        expect_refused("v.img", 0, "not a FAT volume (its boot sector is NTFS's)");
        poke("v.img", 3, "EXFAT   ", 8);
        expect_refused("v.img", 0, "not a FAT volume (its boot sector is exFAT's)");
        poke("v.img", 3, "-FVE-FS-", 8);
        expect_refused("v.img", 0, "not a FAT volume (its boot sector is BitLocker's)");
}
END_TEST

/* on_free stops the walk with its error. */
START_TEST(test_cancel)
{
        struct geometry g;
        make_filled(16, &g);
        struct ranges rs = {.cancel_at = 3};
        char why[QT_FREEMAP_WHY_MAX];
        ck_assert_int_eq(read_fat("v.img", 0, 0, &rs, why, NULL), -ECANCELED);
        ck_assert_uint_eq(rs.calls, 3);
        ck_assert_uint_eq(rs.n, 2);
        ranges_done(&rs);
}
END_TEST

/* A read that fails, at the boot sector, in the check, or in the walk: its error, and why. */
START_TEST(test_read_error)
{
        struct geometry g;
        make_filled(all_bits[_i], &g);
        struct ranges rs = {};
        char why[QT_FREEMAP_WHY_MAX];
        unsigned reads;
        ck_assert_int_eq(read_fat("v.img", 0, 0, &rs, why, &reads), 0);
        size_t n = rs.n;
        ranges_done(&rs);
        ck_assert_uint_ge(reads, 3);

        ck_assert_int_eq(read_fat("v.img", 0, 1, &rs, why, NULL), -EIO);
        ck_assert_str_eq(why, "cannot read the boot sector: Input/output error");
        ck_assert_uint_eq(rs.calls, 0);
        ck_assert_int_eq(read_fat("v.img", 0, 2, &rs, why, NULL), -EIO);
        ck_assert_msg(strstr(why, "cannot read FAT 1 at byte"), "%s", why);
        ck_assert_uint_eq(rs.calls, 0);
        ranges_done(&rs);
        /* The last read is the walk's last chunk: what came before was reported. */
        ck_assert_int_eq(read_fat("v.img", 0, reads, &rs, why, NULL), -EIO);
        ck_assert_msg(strstr(why, "cannot read FAT 1 at byte"), "%s", why);
        ck_assert_uint_le(rs.n, n);
        ranges_done(&rs);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("fat");
        TCase *tc = tcase_create("fat");
        tcase_add_unchecked_fixture(tc, make_bases, scratch_teardown);
        tcase_add_loop_test(tc, test_volume, 0, ELEMENTSOF(volumes));
        tcase_add_loop_test(tc, test_dirty_boot_sector, 0, ELEMENTSOF(all_bits));
        tcase_add_loop_test(tc, test_dirty_fat, 0, 2);
        tcase_add_loop_test(tc, test_fat_copies_differ, 0, ELEMENTSOF(all_bits));
        tcase_add_test(tc, test_fat32_active_fat);
        tcase_add_loop_test(tc, test_bad_geometry, 0, ELEMENTSOF(bad_fields));
        tcase_add_test(tc, test_small_fat32);
        tcase_add_test(tc, test_fat32_root_free);
        tcase_add_loop_test(tc, test_truncated, 0, ELEMENTSOF(all_bits));
        tcase_add_test(tc, test_not_fat);
        tcase_add_test(tc, test_cancel);
        tcase_add_loop_test(tc, test_read_error, 0, ELEMENTSOF(all_bits));
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

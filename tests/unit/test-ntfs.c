/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qt_ntfs_free_ranges against real NTFS volumes made by ntfs-3g's own tools: mkntfs, files written
 * and deleted through the ntfs-3g FUSE driver, hiberfil.sys put in with ntfscp, the dirty flag set
 * by ntfsfix. The free ranges are checked against ntfscluster (free bytes; no inode in any free
 * range) and ntfsinfo (the runs of the files kept). States qtrim must leave alone are made the way
 * Windows leaves them (hiberfil.sys headers, $LogFile restart pages written here); for each the
 * test checks the refusal, its message, the image's bytes and that libntfs-3g never tried to
 * write. Hostile volumes: truncated, a boot sector with garbage, random bytes, a $Bitmap that
 * calls its own metadata free.
 *
 * The images are made once, by an unchecked fixture in the parent, in a scratch directory under
 * /var/tmp; each test works on copies.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ntfs-3g/attrib.h> /* before logfile.h, which uses it */
#include <ntfs-3g/logfile.h>

#include "check-main.h"
#include "ntfs.h"

#define WHY_HIBERNATED                                                                             \
        "Windows is hibernated or Fast Startup is on; shut Windows down fully (\"shutdown /s /t "  \
        "0\") and run qtrim again"
#define WHY_UNCLEAN                                                                                \
        "the NTFS volume was not cleanly unmounted (dirty flag or a log to replay); let Windows "  \
        "check it (chkdsk) and shut down fully, then run qtrim again"

#define MIB (1024 * 1024ULL)

static char scratch[PATH_MAX];

/* The tests run in the scratch directory: the fixture makes it the current one. */
static char *vformat(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static char *vformat(const char *fmt, va_list ap)
{
        char *s;
        ck_assert_int_ge(vasprintf(&s, fmt, ap), 0);
        return s;
}

/* Runs a shell command line; the test fails unless it exits 0. Output goes to ./log. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        char *line = vformat(fmt, ap);
        va_end(ap);
        char *cmd;
        ck_assert_int_ge(asprintf(&cmd, "{ %s\n} >>log 2>&1", line), 0);
        int status = system(cmd);
        ck_assert_msg(status == 0, "failed (%d): %s (see %s/log)", status, line, scratch);
        free(cmd);
        free(line);
}

/* The same, returning its standard output. */
static char *sh_output(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *sh_output(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        char *line = vformat(fmt, ap);
        va_end(ap);
        char *cmd;
        ck_assert_int_ge(asprintf(&cmd, "{ %s\n} 2>>log", line), 0);
        FILE *f = popen(cmd, "r");
        ck_assert_ptr_nonnull(f);
        char *out = NULL;
        size_t size = 0;
        FILE *mem = open_memstream(&out, &size);
        ck_assert_ptr_nonnull(mem);
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
                fwrite(buf, 1, n, mem);
        fclose(mem);
        int status = pclose(f);
        ck_assert_msg(status == 0, "failed (%d): %s (see %s/log)", status, line, scratch);
        free(cmd);
        free(line);
        return out;
}

static uint64_t sh_number(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static uint64_t sh_number(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        char *line = vformat(fmt, ap);
        va_end(ap);
        char *out = sh_output("%s", line);
        char *end;
        uint64_t n = strtoull(out, &end, 0);
        ck_assert_msg(end != out, "not a number from %s: '%s'", line, out);
        free(out);
        free(line);
        return n;
}

static char *sha256(const char *img)
{
        return sh_output("sha256sum '%s' | cut -d' ' -f1", img);
}

/* A volume of mib MiB in img, made by mkntfs with its options, then filled through ntfs-3g's FUSE
 * driver: files of several sizes, every other one deleted again, so free space lies between
 * files kept. */
static void make_volume(const char *img, unsigned mib, const char *mkntfs_options)
{
        sh("truncate -s %uM %s && mkntfs -F -Q -q %s %s", mib, img, mkntfs_options, img);
        sh("set -e\n"
           "mkdir -p mnt\n"
           "ntfs-3g -o no_detach %s mnt & pid=$!\n"
           "trap 'umount mnt 2>/dev/null; wait $pid' EXIT\n"
           "for i in $(seq 100); do mountpoint -q mnt && break; sleep 0.05; done\n"
           "mountpoint -q mnt\n"
           "mkdir mnt/dir\n"
           "for i in $(seq 1 12); do\n"
           "  head -c $((i * 151000 + 1234)) /dev/urandom > mnt/dir/f$i\n"
           "done\n"
           "printf small > mnt/resident\n"
           "head -c 1500000 /dev/urandom > mnt/big\n"
           "for i in 2 4 6 8 10 12; do rm mnt/dir/f$i; done\n"
           "umount mnt\n"
           "wait $pid\n"
           "trap - EXIT\n",
           img);
}

static void make_images(void)
{
        if (geteuid() != 0) {
                fprintf(stderr, "mounts NTFS volumes through FUSE: run as root\n");
                exit(77); /* meson's "skipped" */
        }
        snprintf(scratch, sizeof(scratch), "/var/tmp/qtrim-unit-ntfs.XXXXXX");
        ck_assert_msg(mkdtemp(scratch), "mkdtemp: %m");
        ck_assert_msg(chdir(scratch) == 0, "%s: %m", scratch);
        make_volume("base.img", 32, "");
        make_volume("big-clusters.img", 64, "-c 65536");
}

static void remove_images(void)
{
        char cmd[PATH_MAX + 64];

        if (!scratch[0])
                return;
        if (chdir("/") != 0)
                fprintf(stderr, "chdir /: %m\n");
        snprintf(cmd, sizeof(cmd), "rm -rf --one-file-system -- '%s'", scratch);
        if (system(cmd) != 0)
                fprintf(stderr, "cannot remove %s\n", scratch);
        scratch[0] = '\0';
}

/* The volume reader: a file holding the volume at base, of size bytes. It records reads outside
 * the volume (none may happen) and can be made to fail. */
struct image {
        int fd;
        uint64_t base;
        uint64_t size;
        unsigned long reads;
        bool outside;
        bool fail;
};

static int read_image(void *ctx, void *buf, size_t len, uint64_t offset)
{
        struct image *im = ctx;

        im->reads++;
        if (offset > im->size || len > im->size - offset) {
                im->outside = true;
                return -EIO;
        }
        if (im->fail)
                return -EIO;
        ssize_t n = pread(im->fd, buf, len, (off_t)(im->base + offset));
        if (n < 0)
                return -errno;
        return (size_t)n == len ? 0 : -EIO;
}

static struct image open_image(const char *name, uint64_t base, uint64_t size)
{
        struct image im = {.fd = open(name, O_RDONLY | O_CLOEXEC), .base = base, .size = size};
        ck_assert_msg(im.fd >= 0, "%s: %m", name);
        if (size == 0) {
                off_t end = lseek(im.fd, 0, SEEK_END);
                ck_assert_int_ge(end, 0);
                im.size = (uint64_t)end - base;
        }
        return im;
}

/* What on_free saw, checked as it comes: ascending, never adjacent, whole clusters. */
struct ranges {
        uint64_t (*r)[2];
        size_t n;
        uint64_t cluster_size;
        uint64_t total;
        int stop_with; /* returned from the first call if non-zero */
        unsigned calls;
};

static int collect(void *ctx, uint64_t offset, uint64_t length)
{
        struct ranges *rs = ctx;

        rs->calls++;
        if (rs->stop_with)
                return rs->stop_with;
        ck_assert_uint_gt(length, 0);
        ck_assert_uint_eq(offset % rs->cluster_size, 0);
        ck_assert_uint_eq(length % rs->cluster_size, 0);
        if (rs->n > 0)
                ck_assert_uint_gt(offset, rs->r[rs->n - 1][0] + rs->r[rs->n - 1][1]);
        rs->r = realloc(rs->r, (rs->n + 1) * sizeof(*rs->r));
        ck_assert_ptr_nonnull(rs->r);
        rs->r[rs->n][0] = offset;
        rs->r[rs->n][1] = length;
        rs->n++;
        rs->total += length;
        return 0;
}

static int never(void *ctx, uint64_t offset, uint64_t length)
{
        ck_abort_msg("a free range reported from a volume that must be left alone");
        return 0;
}

/* The runs (first cluster, clusters) of a file's $DATA, from ntfsinfo. */
static char *runs_of(const char *img, const char *path)
{
        return sh_output("ntfsinfo -F '%s' -v %s | awk '/Runlist:/ { f = 1; next } "
                         "f && /^\\t\\t\\t0x/ && $2 !~ /^-/ { print strtonum($2), strtonum($3) } "
                         "/End of inode/ { f = 0 }'",
                         path, img);
}

/* A clean volume: the ranges add up to ntfscluster's free bytes, no inode has a cluster in them,
 * the files kept lie outside them; nothing was written and every read was within the volume. */
static void check_clean(const char *img, uint64_t cluster_size, uint64_t base, bool filled)
{
        const char *name = img;
        char container[64];

        if (base > 0) {
                /* The volume at base of a larger file: reads are volume-relative. */
                snprintf(container, sizeof(container), "in-container-%s", img);
                sh("truncate -s $(( $(stat -c %%s %s) + %" PRIu64 " * 2 )) %s && "
                   "dd if=%s of=%s bs=1M seek=%" PRIu64 "B conv=notrunc,sparse status=none",
                   img, base, container, img, container, base);
                name = container;
        }
        uint64_t volume_size = sh_number("stat -c %%s %s", img);
        /* Not of 10 GiB: the reader opens the file read-only anyway. */
        char *before = volume_size <= 1024 * MIB ? sha256(name) : NULL;
        struct image im = open_image(name, base, volume_size);
        struct ranges rs = {.cluster_size = cluster_size};
        char why[QT_FREEMAP_WHY_MAX] = "unset";

        int r = qt_ntfs_free_ranges(&(struct qt_volume_reader){read_image, &im, im.size}, collect,
                                    &rs, why, sizeof(why));
        ck_assert_msg(r == 0, "%d: %s", r, why);
        ck_assert_uint_eq(qt_ntfs_write_attempts(), 0);
        ck_assert(!im.outside);
        ck_assert_uint_gt(rs.n, 1);
        ck_assert_uint_le(rs.r[rs.n - 1][0] + rs.r[rs.n - 1][1], volume_size);

        uint64_t free_bytes =
            sh_number("ntfscluster -i %s | awk '/bytes of free space/ { print $NF }'", img);
        ck_assert_uint_eq(rs.total, free_bytes);

        /* ntfscluster finds no inode with a cluster in any free range. */
        char *list = NULL;
        size_t list_size = 0;
        FILE *f = open_memstream(&list, &list_size);
        ck_assert_ptr_nonnull(f);
        for (size_t i = 0; i < rs.n; i++)
                fprintf(f, "%" PRIu64 "-%" PRIu64 " ", rs.r[i][0] / cluster_size,
                        (rs.r[i][0] + rs.r[i][1]) / cluster_size - 1);
        fclose(f);
        char *hits = sh_output("for range in %s; do ntfscluster -c $range %s; done | "
                               "grep -v -e '^Searching for cluster' -e '^\\* no inode found' "
                               "|| true",
                               list, img);
        free(list);
        ck_assert_msg(hits[0] == '\0', "in use in a free range:\n%s", hits);
        free(hits);

        /* The files kept: their runs lie outside every free range. */
        const char *kept[] = {"/big", "/dir/f1", "/dir/f3", "/dir/f7", "/dir/f11", "/$MFT"};
        for (size_t k = 0; filled && k < sizeof(kept) / sizeof(kept[0]); k++) {
                char *runs = runs_of(img, kept[k]);
                ck_assert_msg(runs[0] != '\0', "no runs for %s", kept[k]);
                unsigned long long lcn, len;
                int used;
                for (char *p = runs; sscanf(p, "%llu %llu%n", &lcn, &len, &used) == 2; p += used)
                        for (size_t i = 0; i < rs.n; i++) {
                                uint64_t a = lcn * cluster_size, b = (lcn + len) * cluster_size;
                                ck_assert_msg(b <= rs.r[i][0] || a >= rs.r[i][0] + rs.r[i][1],
                                              "%s's clusters %llu+%llu are in a free range",
                                              kept[k], lcn, len);
                        }
                free(runs);
        }

        if (before) {
                char *after = sha256(name);
                ck_assert_str_eq(before, after);
                free(after);
                free(before);
        }
        free(rs.r);
        close(im.fd);
}

START_TEST(test_clean)
{
        check_clean("base.img", 4096, 0, true);
}
END_TEST

START_TEST(test_clean_at_offset)
{
        check_clean("base.img", 4096, 3 * MIB, true);
}
END_TEST

START_TEST(test_clean_64k_clusters)
{
        check_clean("big-clusters.img", 65536, 0, true);
}
END_TEST

START_TEST(test_clean_10g)
{
        /* 2.5 Mi clusters: $Bitmap is read in more than one chunk, and the free run across the
         * chunks' border at 8 GiB is reported as one. */
        sh("truncate -s 10G large.img && mkntfs -F -Q -q large.img");
        check_clean("large.img", 4096, 0, false);
}
END_TEST

/* img must be left alone: expected is returned with want in why (NULL: any message), no free
 * range is reported, no write attempted, the image unchanged. */
static void check_refused(const char *img, uint64_t size, int expected, const char *want)
{
        char *before = sha256(img);
        struct image im = open_image(img, 0, size);
        char why[QT_FREEMAP_WHY_MAX] = "unset";

        int r = qt_ntfs_free_ranges(&(struct qt_volume_reader){read_image, &im, im.size}, never,
                                    NULL, why, sizeof(why));
        ck_assert_msg(r == expected, "%d, not %d: %s", r, expected, why);
        if (want)
                ck_assert_str_eq(why, want);
        else
                ck_assert_msg(strncmp(why, "not a readable NTFS volume: ", 28) == 0 &&
                                  strstr(why, "; left alone"),
                              "%s", why);
        ck_assert_uint_eq(qt_ntfs_write_attempts(), 0);
        ck_assert(!im.outside);
        char *after = sha256(img);
        ck_assert_str_eq(before, after);
        free(before);
        free(after);
        close(im.fd);
}

/* Succeeds on img, reporting some free space, without writing. */
static void check_readable(const char *img)
{
        struct image im = open_image(img, 0, 0);
        struct ranges rs = {.cluster_size = 4096};
        char why[QT_FREEMAP_WHY_MAX] = "unset";

        int r = qt_ntfs_free_ranges(&(struct qt_volume_reader){read_image, &im, im.size}, collect,
                                    &rs, why, sizeof(why));
        ck_assert_msg(r == 0, "%d: %s", r, why);
        ck_assert_uint_gt(rs.total, 0);
        ck_assert_uint_eq(qt_ntfs_write_attempts(), 0);
        free(rs.r);
        close(im.fd);
}

/* hiberfil.sys at the root, its first 4 KiB as Windows leaves them: "hibr" hibernated, "HIBR"
 * Windows 8+ hibernated or shut down with Fast Startup, "wake" resumed, zeros never hibernated;
 * one shorter than its header is taken for hibernated, as ntfs-3g does. */
static const struct {
        const char *header; /* "": zeros */
        unsigned bytes;
        bool refused;
} hiberfiles[] = {
    {"hibr", 8 * MIB, true}, {"HIBR", 8 * MIB, true}, {"wake", 8 * MIB, false},
    {"", 8 * MIB, false},    {"hibr", 100, true},
};

START_TEST(test_hiberfile)
{
        const char *header = hiberfiles[_i].header;

        sh("cp --sparse=always base.img hiber.img && "
           "{ printf '%s'; head -c %u /dev/urandom; } > header && truncate -s %u header && "
           "ntfscp hiber.img header hiberfil.sys",
           header, header[0] ? 4092 : 0, hiberfiles[_i].bytes);
        sh("%sntfs-3g.probe --readwrite hiber.img", hiberfiles[_i].refused ? "! " : "");
        if (hiberfiles[_i].refused)
                check_refused("hiber.img", 0, -EUCLEAN, WHY_HIBERNATED);
        else
                check_readable("hiber.img");
}
END_TEST

START_TEST(test_dirty)
{
        /* ntfsfix schedules a chkdsk: it sets VOLUME_IS_DIRTY in $Volume. */
        sh("cp --sparse=always base.img dirty.img && ntfsfix dirty.img && "
           "ntfsinfo --force -m dirty.img | grep -q 'Volume Flags: 0x0001 DIRTY'");
        check_refused("dirty.img", 0, -EUCLEAN, WHY_UNCLEAN);
}
END_TEST

/* A $LogFile restart page as Windows writes it (version, whether its one client is still open
 * and whether the volume was clean), multi-sector protected, at the start of $LogFile. */
static void write_restart_page(const char *img, int major, int minor, bool clean)
{
        uint64_t lcn = sh_number("ntfsinfo -i 2 -v %s | awk '/Runlist:/ { f = 1; next } "
                                 "f && /^\\t\\t\\t0x/ { print strtonum($2); exit }'",
                                 img);
        uint64_t log_size = sh_number("ntfsinfo -i 2 -v %s | awk '/^\\tData size:/ { n = $3 } "
                                      "END { print n }'",
                                      img);
        ck_assert_uint_ge(log_size, 2 * MIB);

        uint8_t page[4096] = {0};
        RESTART_PAGE_HEADER *rp = (RESTART_PAGE_HEADER *)page;
        rp->magic = magic_RSTR;
        rp->usa_ofs = 0x1e;
        rp->usa_count = 1 + sizeof(page) / 512;
        rp->system_page_size = sizeof(page);
        rp->log_page_size = sizeof(page);
        rp->restart_area_offset = 0x30;
        rp->minor_ver = (sle16)minor;
        rp->major_ver = (sle16)major;

        RESTART_AREA *ra = (RESTART_AREA *)(page + 0x30);
        ra->current_lsn = 0x12345;
        ra->log_clients = 1;
        ra->client_free_list = LOGFILE_NO_CLIENT;
        ra->client_in_use_list = 0;
        ra->flags = clean ? RESTART_VOLUME_IS_CLEAN : 0;
        unsigned bits = 0;
        for (uint64_t s = log_size; s; s >>= 1)
                bits++;
        ra->seq_number_bits = 67 - bits;
        ra->client_array_offset = 0x40;
        ra->restart_area_length = 0x40 + sizeof(LOG_CLIENT_RECORD);
        ra->file_size = (sle64)log_size;
        ra->log_record_header_length = 0x30;
        ra->log_page_data_offset = 0x40;

        LOG_CLIENT_RECORD *cr = (LOG_CLIENT_RECORD *)((uint8_t *)ra + 0x40);
        cr->prev_client = LOGFILE_NO_CLIENT;
        cr->next_client = LOGFILE_NO_CLIENT;
        cr->client_name_length = 8;
        memcpy(cr->client_name, "N\0T\0F\0S\0", 8);

        /* Multi-sector protection: the last word of each sector moves into the array. */
        uint16_t usa[1 + sizeof(page) / 512] = {1};
        for (size_t i = 0; i < sizeof(page) / 512; i++) {
                memcpy(&usa[1 + i], page + (i + 1) * 512 - 2, 2);
                memcpy(page + (i + 1) * 512 - 2, &usa[0], 2);
        }
        memcpy(page + 0x1e, usa, sizeof(usa));

        int fd = open(img, O_WRONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pwrite(fd, page, sizeof(page), (off_t)(lcn * 4096)), sizeof(page));
        close(fd);
}

START_TEST(test_logfile_unclean)
{
        /* Windows cut off while mounted: the client still open, no clean flag. */
        sh("cp --sparse=always base.img log.img");
        write_restart_page("log.img", 1, 1, false);
        sh("! ntfs-3g.probe --readwrite log.img"); /* ntfs-3g would not mount it either */
        check_refused("log.img", 0, -EUCLEAN, WHY_UNCLEAN);
}
END_TEST

START_TEST(test_logfile_cached_metadata)
{
        /* Version 2.0: Windows 8+ kept metadata in its cache (Fast Startup). */
        sh("cp --sparse=always base.img log.img");
        write_restart_page("log.img", 2, 0, true);
        sh("! ntfs-3g.probe --readwrite log.img");
        check_refused("log.img", 0, -EUCLEAN, WHY_HIBERNATED);
}
END_TEST

START_TEST(test_logfile_clean)
{
        /* A Windows XP+ clean shutdown: the client open, the clean flag set. */
        sh("cp --sparse=always base.img log.img");
        write_restart_page("log.img", 1, 1, true);
        sh("ntfs-3g.probe --readwrite log.img");
        check_readable("log.img");
}
END_TEST

/* Hostile or damaged volumes, each made from base.img by a shell line; size is the reader's
 * (0: the file's). */
static const struct {
        const char *what;
        const char *make;
        uint64_t size;
        const char *why; /* NULL: libntfs-3g's refusal */
} hostile[] = {
    {"truncated to a quarter", "cp base.img bad.img", 8 * MIB},
    {"truncated by 4 MiB", "cp base.img bad.img", 28 * MIB,
     "not a readable NTFS volume: it claims 8191 clusters of 4096 bytes, more than the 29360128 "
     "bytes it has; left alone"},
    {"truncated to its boot sector", "cp base.img bad.img", 512},
    {"one byte long", "cp base.img bad.img", 1},
    {"3 sectors per cluster",
     "cp base.img bad.img && printf '\\003' | "
     "dd of=bad.img bs=1 seek=13 conv=notrunc status=none",
     0},
    {"$MFT past the end",
     "cp base.img bad.img && printf '\\377\\377\\377\\377\\377\\000\\000\\000' "
     "| dd of=bad.img bs=1 seek=48 conv=notrunc status=none",
     0},
    {"$MFT on random data",
     "cp base.img bad.img && head -c 1M /dev/urandom | "
     "dd of=bad.img bs=1M seek=20 conv=notrunc status=none && "
     "printf '\\000\\024\\000\\000\\000\\000\\000\\000' | "
     "dd of=bad.img bs=1 seek=48 conv=notrunc status=none",
     0},
    {"random bytes", "head -c 8M /dev/urandom > bad.img", 0},
    {"a boot sector on random bytes",
     "head -c 32M /dev/urandom > bad.img && "
     "dd if=base.img of=bad.img bs=512 count=1 conv=notrunc "
     "status=none",
     0},
    {"$Bitmap marking $Boot and $MFT free",
     "cp base.img bad.img && lcn=$(ntfsinfo -i 6 -v bad.img | awk '/Runlist:/ { f = 1; next } "
     "f && /^\\t\\t\\t0x/ { print strtonum($2); exit }') && "
     "head -c 8 /dev/zero | dd of=bad.img bs=1 seek=$((lcn * 4096)) conv=notrunc status=none",
     0, "not a readable NTFS volume: $Bitmap marks its metadata free; left alone"},
};

START_TEST(test_hostile)
{
        sh("%s", hostile[_i].make);
        check_refused("bad.img", hostile[_i].size, -EUCLEAN, hostile[_i].why);
}
END_TEST

START_TEST(test_read_error)
{
        struct image im = open_image("base.img", 0, 0);
        char why[QT_FREEMAP_WHY_MAX] = "";

        im.fail = true;
        int r = qt_ntfs_free_ranges(&(struct qt_volume_reader){read_image, &im, im.size}, never,
                                    NULL, why, sizeof(why));
        ck_assert_int_eq(r, -EIO);
        ck_assert_str_ne(why, "");
        close(im.fd);
}
END_TEST

START_TEST(test_canceled)
{
        struct image im = open_image("base.img", 0, 0);
        struct ranges rs = {.cluster_size = 4096, .stop_with = -ECANCELED};
        char why[QT_FREEMAP_WHY_MAX] = "";

        int r = qt_ntfs_free_ranges(&(struct qt_volume_reader){read_image, &im, im.size}, collect,
                                    &rs, why, sizeof(why));
        ck_assert_int_eq(r, -ECANCELED);
        ck_assert_uint_eq(rs.calls, 1);
        ck_assert_uint_eq(qt_ntfs_write_attempts(), 0);
        close(im.fd);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("ntfs");
        TCase *tc = tcase_create("ntfs");
        tcase_add_unchecked_fixture(tc, make_images, remove_images);
        tcase_set_timeout(tc, 20);
        tcase_add_test(tc, test_clean);
        tcase_add_test(tc, test_clean_at_offset);
        tcase_add_test(tc, test_clean_64k_clusters);
        tcase_add_test(tc, test_clean_10g);
        tcase_add_loop_test(tc, test_hiberfile, 0, sizeof(hiberfiles) / sizeof(hiberfiles[0]));
        tcase_add_test(tc, test_dirty);
        tcase_add_test(tc, test_logfile_unclean);
        tcase_add_test(tc, test_logfile_cached_metadata);
        tcase_add_test(tc, test_logfile_clean);
        tcase_add_loop_test(tc, test_hostile, 0, sizeof(hostile) / sizeof(hostile[0]));
        tcase_add_test(tc, test_read_error);
        tcase_add_test(tc, test_canceled);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Finding the qcow2 images that read through to an image: the header parser on headers qemu-img
 * wrote (and on every truncation of them), and the directory scan on real chains of overlays.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "overlays.h"
#include "qcow2-header.h"
#include "util.h"

/* Made and removed by the parent (an unchecked fixture); each test works in a directory of its
 * own below it, so a test that fails half-way leaves nothing for the next one to trip over. */
static char scratch[PATH_MAX];

static void scratch_setup(void)
{
        snprintf(scratch, sizeof(scratch), "/var/tmp/qtrim-overlays.XXXXXX");
        ck_assert_msg(mkdtemp(scratch), "mkdtemp: %m");
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        return remove(path) < 0 ? -1 : 0;
}

static void scratch_teardown(void)
{
        if (scratch[0])
                ck_assert_msg(nftw(scratch, remove_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) == 0,
                              "cannot remove %s: %m", scratch);
        scratch[0] = '\0';
}

static char *join(char ret[PATH_MAX], const char *dir, const char *name)
{
        int n = snprintf(ret, PATH_MAX, "%s/%s", dir, name);
        ck_assert(n > 0 && n < PATH_MAX);
        return ret;
}

static void test_dir(char ret[PATH_MAX])
{
        ck_assert_msg(mkdtemp(join(ret, scratch, "t.XXXXXX")), "mkdtemp: %m");
}

/* Runs a shell command line in dir; the test fails unless it exits 0. */
static void sh(const char *dir, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sh(const char *dir, const char *fmt, ...)
{
        _cleanup_free_ char *cmd = NULL, *line = NULL;
        va_list ap;
        va_start(ap, fmt);
        ck_assert_int_ge(vasprintf(&cmd, fmt, ap), 0);
        va_end(ap);
        ck_assert_int_ge(asprintf(&line, "cd '%s' && (%s) >/dev/null", dir, cmd), 0);
        int status = system(line);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "`%s` failed (status %d)", cmd,
                      status);
}

/* dir/name: a qcow2 image as an administrator makes one, 1 MiB or, with a backing file, backed
 * by backing (the name as -b gives it). qemu-img opens the backing file first, so qemu itself
 * resolved the name to an image. */
static void qcow2(const char *dir, const char *name, const char *backing)
{
        if (backing)
                sh(dir, "qemu-img create -q -f qcow2 -F qcow2 -b '%s' '%s'", backing, name);
        else
                sh(dir, "qemu-img create -q -f qcow2 '%s' 1M", name);
}

/* The same without opening the backing file (-u): it may be missing, a FIFO, a loop. */
static void qcow2_unsafe(const char *dir, const char *name, const char *backing_fmt,
                         const char *backing)
{
        sh(dir, "qemu-img create -q -f qcow2 -u -F %s -b '%s' '%s' 1M", backing_fmt, backing, name);
}

/* What qtrim reads of a file: its first 64 KiB. */
static size_t read_head(const char *path, uint8_t buf[QT_QCOW2_HEADER_READ_SIZE])
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        ck_assert_msg(fd >= 0, "%s: %m", path);
        ssize_t n = read(fd, buf, QT_QCOW2_HEADER_READ_SIZE);
        ck_assert_int_ge(n, 0);
        return (size_t)n;
}

/* Parses exactly len bytes from a buffer of that size, so a sanitizer sees any read past it. */
static int parse_exact(const uint8_t *buf, size_t len, char ret[QT_QCOW2_BACKING_NAME_MAX])
{
        _cleanup_free_ uint8_t *copy = malloc(len ? len : 1);
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, buf, len);
        return qt_qcow2_backing_name(copy, len, ret, QT_QCOW2_BACKING_NAME_MAX);
}

static uint8_t head[QT_QCOW2_HEADER_READ_SIZE];

/* The backing name of the file dir/name as the parser reads it; ret_name may be NULL. */
static int parse_file(const char *dir, const char *name, char ret_name[QT_QCOW2_BACKING_NAME_MAX])
{
        char path[PATH_MAX], unused[QT_QCOW2_BACKING_NAME_MAX];
        return parse_exact(head, read_head(join(path, dir, name), head), ret_name ?: unused);
}

START_TEST(test_header_real)
{
        char dir[PATH_MAX], path[PATH_MAX], name[QT_QCOW2_BACKING_NAME_MAX];
        test_dir(dir);
        qcow2(dir, "base.qcow2", NULL);
        qcow2(dir, "v3.qcow2", "base.qcow2");
        qcow2(dir, "abs.qcow2", join(path, dir, "base.qcow2"));
        sh(dir, "qemu-img create -q -f qcow2 -o compat=0.10 v2-base.qcow2 1M");
        sh(dir, "qemu-img create -q -f qcow2 -o compat=0.10 -F qcow2 -b base.qcow2 v2.qcow2");
        sh(dir, "qemu-img create -q -f raw raw.img 1M && echo 'QFI not an image' >text && "
                "printf 'QFI\\373' >magic-only");

        strcpy(name, "junk");
        ck_assert_int_eq(parse_file(dir, "base.qcow2", name), 0);
        ck_assert_str_eq(name, "");
        ck_assert_int_eq(parse_file(dir, "v3.qcow2", name), 1);
        ck_assert_str_eq(name, "base.qcow2");
        ck_assert_int_eq(parse_file(dir, "abs.qcow2", name), 1);
        ck_assert_str_eq(name, path);
        ck_assert_int_eq(parse_file(dir, "v2-base.qcow2", name), 0);
        ck_assert_int_eq(parse_file(dir, "v2.qcow2", name), 1);
        ck_assert_str_eq(name, "base.qcow2");
        ck_assert_int_eq(parse_file(dir, "raw.img", NULL), -EINVAL);
        ck_assert_int_eq(parse_file(dir, "text", NULL), -EINVAL);
        ck_assert_int_eq(parse_file(dir, "magic-only", NULL), -EINVAL);
}
END_TEST

/* Every prefix of a header: -EINVAL while the fixed header or the name is cut, `whole` from
 * where it is complete on. */
static void check_truncations(const char *dir, const char *file, int whole)
{
        char path[PATH_MAX], name[QT_QCOW2_BACKING_NAME_MAX];
        size_t len = read_head(join(path, dir, file), head);
        ck_assert_int_eq(parse_exact(head, len, name), whole);
        size_t name_len = strlen(name);

        /* Every length up to a page past the header and name (beyond, the parse cannot change,
         * and copying 64 KiB 64 Ki times is slow under sanitizers). */
        size_t complete = 0;
        for (size_t i = 0; i <= len && i <= 4096; i++) {
                int r = parse_exact(head, i, name);
                if (r == whole && complete == 0)
                        complete = i;
                ck_assert_msg(r == (complete ? whole : -EINVAL), "%s cut at %zu: %d", file, i, r);
        }
        if (whole == 1) {
                /* The name is the last thing read: the header is complete where it ends. */
                uint64_t offset = 0;
                for (int i = 8; i < 16; i++)
                        offset = offset << 8 | head[i];
                ck_assert_uint_eq(complete, offset + name_len);
        } else
                ck_assert_uint_eq(complete, 104); /* v3's fixed header */
}

START_TEST(test_header_truncated)
{
        char dir[PATH_MAX];
        test_dir(dir);
        qcow2(dir, "base.qcow2", NULL);
        qcow2(dir, "v3.qcow2", "base.qcow2");
        sh(dir, "qemu-img create -q -f qcow2 -o compat=0.10 -F qcow2 -b base.qcow2 v2.qcow2");
        check_truncations(dir, "v3.qcow2", 1);
        check_truncations(dir, "v2.qcow2", 1);
        check_truncations(dir, "base.qcow2", 0);
}
END_TEST

static void put_be32(uint8_t *p, uint32_t v)
{
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put_be64(uint8_t *p, uint64_t v)
{
        put_be32(p, (uint32_t)(v >> 32));
        put_be32(p + 4, (uint32_t)v);
}

/* A v3 header with 64 KiB clusters and a 1023-byte name at 512: the longest qemu allows. */
#define MADE_HEADER_SIZE 2048
static void make_header(uint8_t buf[MADE_HEADER_SIZE])
{
        memset(buf, 0, MADE_HEADER_SIZE);
        memcpy(buf, "QFI\xfb", 4);
        put_be32(buf + 4, 3);     /* version */
        put_be64(buf + 8, 512);   /* backing_file_offset */
        put_be32(buf + 16, 1023); /* backing_file_size */
        put_be32(buf + 20, 16);   /* cluster_bits */
        put_be32(buf + 100, 112); /* header_length */
        memset(buf + 512, 'n', 1023);
}

START_TEST(test_header_inconsistent)
{
        uint8_t buf[MADE_HEADER_SIZE];
        char name[QT_QCOW2_BACKING_NAME_MAX];
        make_header(buf);
        ck_assert_int_eq(parse_exact(buf, sizeof(buf), name), 1);
        ck_assert_uint_eq(strlen(name), 1023);
        ck_assert_int_eq(qt_qcow2_backing_name(buf, sizeof(buf), name, 1023), -ENOBUFS);
        ck_assert_int_eq(qt_qcow2_backing_name(buf, sizeof(buf), NULL, 0), -ENOBUFS);
        ck_assert_int_eq(qt_qcow2_backing_name(NULL, 0, name, sizeof(name)), -EINVAL);

        static const struct {
                size_t at;
                unsigned bytes; /* 1, 4 or 8 */
                uint64_t value;
                const char *what;
        } bad[] = {
            {0, 4, 0x514649fa, "magic"},
            {4, 4, 1, "version 1"},
            {4, 4, 4, "version 4"},
            {16, 4, 0, "a name of size 0 at an offset"},
            {16, 4, 1024, "a name longer than qemu allows"},
            {16, 4, UINT32_MAX, "a size overflowing offset + size"},
            {8, 8, UINT64_MAX, "an offset overflowing offset + size"},
            {8, 8, 65536, "a name outside the first cluster"},
            {8, 8, 65536 - 1000, "a name crossing the first cluster's end"},
            {8, 8, 1536, "a name outside buf"},
            {20, 4, 8, "clusters too small for qemu"},
            {20, 4, 22, "clusters too large for qemu"},
            {20, 4, 9, "512-byte clusters, the name beyond the first"},
            {100, 4, 100, "a v3 header shorter than its fixed part"},
            {100, 4, 65537, "a v3 header longer than a cluster"},
            {512 + 5, 1, 0, "a NUL in the name"},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                make_header(buf);
                if (bad[i].bytes == 8)
                        put_be64(buf + bad[i].at, bad[i].value);
                else if (bad[i].bytes == 4)
                        put_be32(buf + bad[i].at, (uint32_t)bad[i].value);
                else
                        buf[bad[i].at] = (uint8_t)bad[i].value;
                strcpy(name, "untouched");
                ck_assert_msg(parse_exact(buf, sizeof(buf), name) == -EINVAL, "accepted %s",
                              bad[i].what);
                ck_assert_str_eq(name, "untouched");
        }

        /* A v2 header is 72 bytes and has no header_length. */
        make_header(buf);
        put_be32(buf + 4, 2);
        put_be64(buf + 8, 72);
        put_be32(buf + 16, 4);
        memcpy(buf + 72, "base", 4);
        ck_assert_int_eq(parse_exact(buf, 76, name), 1);
        ck_assert_str_eq(name, "base");
        ck_assert_int_eq(parse_exact(buf, 75, name), -EINVAL);
        put_be64(buf + 8, 0);
        ck_assert_int_eq(parse_exact(buf, 72, name), 0);
        ck_assert_int_eq(parse_exact(buf, 71, name), -EINVAL);
}
END_TEST

/* qt_find_overlay for the image dir/name; the test fails on an error. */
static int find(const char *dir, const char *name, char ret[PATH_MAX])
{
        char image[PATH_MAX];
        struct stat st;
        struct qt_error e = {};
        ck_assert_msg(stat(join(image, dir, name), &st) == 0, "%s: %m", image);
        ret[0] = '\0';
        int r = qt_find_overlay(image, &st, NULL, ret, PATH_MAX, &e);
        ck_assert_msg(r >= 0, "qt_find_overlay: %d %s", r, e.message);
        ck_assert(!qt_error_is_set(&e));
        return r;
}

START_TEST(test_no_overlays)
{
        char dir[PATH_MAX], sub[PATH_MAX], found[PATH_MAX];
        test_dir(dir);
        /* Another image and its overlay, a hard link to the base, files that are no images, an
         * overlay in a subdirectory (not scanned). */
        qcow2(dir, "base.qcow2", NULL);
        qcow2(dir, "other.qcow2", NULL);
        qcow2(dir, "other-ov.qcow2", "other.qcow2");
        sh(dir, "ln base.qcow2 base-link.qcow2 && qemu-img create -q -f raw raw.img 1M && "
                "echo text >notes.txt && mkdir sub");
        qcow2(join(sub, dir, "sub"), "ov.qcow2", "../base.qcow2");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 0);
        ck_assert_int_eq(find(dir, "raw.img", found), 0);
}
END_TEST

START_TEST(test_relative)
{
        char dir[PATH_MAX], found[PATH_MAX], want[PATH_MAX];
        test_dir(dir);
        qcow2(dir, "base.qcow2", NULL);
        qcow2(dir, "clone.qcow2", "base.qcow2");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 1);
        ck_assert_str_eq(found, join(want, dir, "clone.qcow2"));
        /* The other way round: the base is no overlay of its clone. */
        ck_assert_int_eq(find(dir, "clone.qcow2", found), 0);
}
END_TEST

START_TEST(test_absolute)
{
        char dir[PATH_MAX], found[PATH_MAX], want[PATH_MAX];
        test_dir(dir);
        qcow2(dir, "base.qcow2", NULL);
        qcow2(dir, "snap.qcow2", join(want, dir, "base.qcow2"));
        ck_assert_int_eq(find(dir, "base.qcow2", found), 1);
        ck_assert_str_eq(found, join(want, dir, "snap.qcow2"));
}
END_TEST

START_TEST(test_raw_base)
{
        char dir[PATH_MAX], found[PATH_MAX], want[PATH_MAX];
        test_dir(dir);
        sh(dir, "qemu-img create -q -f raw base.img 1M && "
                "qemu-img create -q -f qcow2 -F raw -b base.img ov.qcow2");
        ck_assert_int_eq(find(dir, "base.img", found), 1);
        ck_assert_str_eq(found, join(want, dir, "ov.qcow2"));
}
END_TEST

START_TEST(test_overlay_of_overlay)
{
        char dir[PATH_MAX], mid[PATH_MAX], found[PATH_MAX], want[PATH_MAX];
        test_dir(dir);
        /* The middle one elsewhere (a subdirectory is not scanned) names the base relative to
         * its own directory; the top one names it relative to its own. */
        qcow2(dir, "base.qcow2", NULL);
        sh(dir, "mkdir mid");
        qcow2(join(mid, dir, "mid"), "mid.qcow2", "../base.qcow2");
        qcow2(dir, "top.qcow2", "mid/mid.qcow2");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 1);
        ck_assert_str_eq(found, join(want, dir, "top.qcow2"));
}
END_TEST

START_TEST(test_other_backing)
{
        char dir[PATH_MAX], found[PATH_MAX];
        test_dir(dir);
        qcow2(dir, "base.qcow2", NULL);
        qcow2(dir, "other.qcow2", NULL);
        qcow2(dir, "ov.qcow2", "other.qcow2");
        qcow2_unsafe(dir, "gone.qcow2", "qcow2", "missing.qcow2");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 0);
}
END_TEST

START_TEST(test_hidden)
{
        char dir[PATH_MAX], found[PATH_MAX];
        test_dir(dir);
        qcow2(dir, "base.qcow2", NULL);
        qcow2(dir, ".x.qtrim-abc123", "base.qcow2");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 0);
}
END_TEST

START_TEST(test_fifo)
{
        char dir[PATH_MAX], found[PATH_MAX];
        test_dir(dir);
        /* A FIFO in the directory, and an overlay whose backing file is one: neither may block
         * (Check's timeout fails a test that hangs). */
        qcow2(dir, "base.qcow2", NULL);
        sh(dir, "mkfifo fifo");
        qcow2_unsafe(dir, "ov.qcow2", "raw", "fifo");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 0);
}
END_TEST

START_TEST(test_symlinks)
{
        char dir[PATH_MAX], found[PATH_MAX], want[PATH_MAX];
        test_dir(dir);
        /* An overlay outside the directory, there only as a symlink: not followed. */
        qcow2(dir, "base.qcow2", NULL);
        sh(dir, "mkdir out");
        qcow2(dir, "out/ov.qcow2", join(want, dir, "base.qcow2"));
        sh(dir, "ln -s out/ov.qcow2 link.qcow2");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 0);

        /* A backing name that is a symlink to the image is followed, as qemu follows it. */
        sh(dir, "ln -s base.qcow2 base-alias.qcow2");
        qcow2(dir, "ov.qcow2", "base-alias.qcow2");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 1);
        ck_assert_str_eq(found, join(want, dir, "ov.qcow2"));
}
END_TEST

START_TEST(test_image_is_symlink)
{
        char dir[PATH_MAX], real[PATH_MAX], found[PATH_MAX], want[PATH_MAX];
        test_dir(dir);
        /* The image given by a symlink: its overlays sit beside the file it points to. */
        sh(dir, "mkdir real");
        qcow2(join(real, dir, "real"), "base.qcow2", NULL);
        qcow2(real, "clone.qcow2", "base.qcow2");
        sh(dir, "ln -s real/base.qcow2 vm.qcow2");
        ck_assert_int_eq(find(dir, "vm.qcow2", found), 1);
        ck_assert_str_eq(found, join(want, real, "clone.qcow2"));
}
END_TEST

START_TEST(test_protocols)
{
        char dir[PATH_MAX], found[PATH_MAX], want[PATH_MAX], backing[PATH_MAX + 8];
        test_dir(dir);
        qcow2(dir, "base.qcow2", NULL);
        /* Not local files, even where a file of that name exists. */
        sh(dir, "ln -s base.qcow2 nbd:base.qcow2");
        qcow2_unsafe(dir, "nbd.qcow2", "raw", "nbd:base.qcow2");
        qcow2_unsafe(dir, "nbd-tcp.qcow2", "raw", "nbd:localhost:10809");
        qcow2_unsafe(dir, "json.qcow2", "raw",
                     "json:{\"file\": {\"driver\": \"file\", \"filename\": \"base.qcow2\"}}");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 0);

        /* file: is qemu's local-file protocol. */
        snprintf(backing, sizeof(backing), "file:%s", join(want, dir, "base.qcow2"));
        qcow2_unsafe(dir, "file.qcow2", "qcow2", backing);
        ck_assert_int_eq(find(dir, "base.qcow2", found), 1);
        ck_assert_str_eq(found, join(want, dir, "file.qcow2"));
        ck_assert_int_eq(unlink(found), 0);
        /* Relative to qemu's working directory, taken to be the overlay's. */
        qcow2_unsafe(dir, "file-rel.qcow2", "qcow2", "file:base.qcow2");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 1);
        ck_assert_str_eq(found, join(want, dir, "file-rel.qcow2"));
}
END_TEST

START_TEST(test_loops)
{
        char dir[PATH_MAX], found[PATH_MAX];
        test_dir(dir);
        qcow2(dir, "base.qcow2", NULL);
        qcow2_unsafe(dir, "a.qcow2", "qcow2", "b.qcow2");
        qcow2_unsafe(dir, "b.qcow2", "qcow2", "a.qcow2");
        /* qemu-img refuses "self.qcow2" by its name only. */
        qcow2_unsafe(dir, "self.qcow2", "qcow2", "./self.qcow2");
        ck_assert_int_eq(find(dir, "base.qcow2", found), 0);
        /* Not its own overlay: the image itself is skipped. */
        ck_assert_int_eq(find(dir, "self.qcow2", found), 0);
}
END_TEST

/* The image at the end of a chain of `hops` backing files from the one in the scanned
 * directory: chain/c1 is backed by the image, chain/c2 by c1, and so on. */
static int find_at_depth(unsigned hops)
{
        char dir[PATH_MAX], chain[PATH_MAX], found[PATH_MAX], name[32], backing[32];
        test_dir(dir);
        qcow2(dir, "base.qcow2", NULL);
        sh(dir, "mkdir chain");
        qcow2_unsafe(join(chain, dir, "chain"), "c1.qcow2", "qcow2", "../base.qcow2");
        for (unsigned i = 2; i < hops; i++) {
                snprintf(name, sizeof(name), "c%u.qcow2", i);
                snprintf(backing, sizeof(backing), "c%u.qcow2", i - 1);
                qcow2_unsafe(chain, name, "qcow2", backing);
        }
        snprintf(backing, sizeof(backing), "chain/c%u.qcow2", hops - 1);
        qcow2_unsafe(dir, "top.qcow2", "qcow2", backing);
        return find(dir, "base.qcow2", found);
}

START_TEST(test_depth)
{
        ck_assert_int_eq(find_at_depth(16), 1);
        ck_assert_int_eq(find_at_depth(17), 0);
}
END_TEST

START_TEST(test_unreadable_dir)
{
        char found[PATH_MAX];
        struct stat st;
        struct qt_error e = {};
        ck_assert_int_eq(stat("/proc/self/exe", &st), 0);
        ck_assert_int_eq(
            qt_find_overlay("/nonexistent-qtrim/x.qcow2", &st, NULL, found, sizeof(found), &e),
            -ENOENT);
        ck_assert_int_eq(e.code, QT_ERR_FAILED);
        ck_assert(strstr(e.message, "/nonexistent-qtrim"));
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("overlays");
        TCase *tc = tcase_create("header");
        tcase_add_unchecked_fixture(tc, scratch_setup, scratch_teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_header_real);
        tcase_add_test(tc, test_header_truncated);
        tcase_add_test(tc, test_header_inconsistent);
        suite_add_tcase(s, tc);

        tc = tcase_create("find");
        tcase_add_unchecked_fixture(tc, scratch_setup, scratch_teardown);
        /* test_depth makes 35 images. */
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_no_overlays);
        tcase_add_test(tc, test_relative);
        tcase_add_test(tc, test_absolute);
        tcase_add_test(tc, test_raw_base);
        tcase_add_test(tc, test_overlay_of_overlay);
        tcase_add_test(tc, test_other_backing);
        tcase_add_test(tc, test_hidden);
        tcase_add_test(tc, test_fifo);
        tcase_add_test(tc, test_symlinks);
        tcase_add_test(tc, test_image_is_symlink);
        tcase_add_test(tc, test_protocols);
        tcase_add_test(tc, test_loops);
        tcase_add_test(tc, test_depth);
        tcase_add_test(tc, test_unreadable_dir);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

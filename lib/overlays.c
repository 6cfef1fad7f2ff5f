/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "overlays.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backing.h"
#include "image.h"
#include "qcow2-header.h"
#include "util.h"

/* A directory with more entries is not scanned further: this runs before every job, and a
 * directory of a million files (or a slow network mount) must not stall it for minutes. */
#define SCAN_ENTRIES_MAX 10000
/* Backing files followed from a candidate; also what ends a loop the check below misses. */
#define CHAIN_DEPTH_MAX 16

struct scan {
        const struct stat *image_st;
        const struct qt_format_rules *formats; /* Formats=, or NULL */
        uint8_t *buf;                          /* QT_QCOW2_HEADER_READ_SIZE bytes */
};

static void closedirp(DIR **d)
{
        if (*d)
                closedir(*d);
}

/* The backing file name of the qcow2 image open as fd: 1 and the name, 0 if it has none, < 0
 * if it is no qcow2 image or cannot be read. */
static int read_backing_name(int fd, uint8_t *buf, char ret[QT_QCOW2_BACKING_NAME_MAX])
{
        ssize_t got = qt_qcow2_read_header(fd, buf);
        if (got < 0)
                return (int)got;
        return qt_qcow2_backing_name(buf, (size_t)got, ret, QT_QCOW2_BACKING_NAME_MAX);
}

/* Whether the backing chain of the qcow2 image open as fd, found at path, leads to the image.
 * Backing files are followed as qemu follows them (backing.h). */
static bool chain_reaches_image(struct scan *s, int fd, const char *path, const struct stat *st)
{
        struct stat seen[CHAIN_DEPTH_MAX + 1];
        size_t n_seen = 0;
        char cur[PATH_MAX];
        _cleanup_close_ int next_fd = -1;

        seen[n_seen++] = *st;
        snprintf(cur, sizeof(cur), "%s", path);
        for (unsigned depth = 0; depth < CHAIN_DEPTH_MAX; depth++) {
                char name[QT_QCOW2_BACKING_NAME_MAX], next[PATH_MAX];
                struct stat next_st;

                if (read_backing_name(fd, s->buf, name) <= 0)
                        return false;
                closep(&next_fd);
                /* A loop, a device or a protocol: qemu would refuse to open it anyway. */
                next_fd = qt_backing_open(cur, name, seen, n_seen, next, &next_st);
                if (next_fd < 0)
                        return false;
                if (same_file(&next_st, s->image_st))
                        return true;
                seen[n_seen++] = next_st;
                fd = next_fd;
                memcpy(cur, next, sizeof(cur));
        }
        return false;
}

/* Whether the entry name of the directory dir (open as dir_fd) is an overlay of the image. */
static bool is_overlay(struct scan *s, int dir_fd, const char *dir, const struct dirent *de)
{
        struct stat st;
        char path[PATH_MAX];
        int n = snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (n < 0 || n >= (int)sizeof(path))
                return false;
        if (!qt_image_may_be_qcow2(path,
                                   s->formats ? qt_format_rules_match(s->formats, path) : NULL))
                return false;

        /* Without a type from readdir, look before opening: opening a device node can have
         * effects of its own (a tape rewinds). */
        if (de->d_type == DT_UNKNOWN &&
            (fstatat(dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode)))
                return false;
        /* O_NOFOLLOW: a symlink is not an image in this directory. O_NONBLOCK: a FIFO that
         * replaced the file since readdir must not block the open. */
        _cleanup_close_ int fd =
            openat(dir_fd, de->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || same_file(&st, s->image_st))
                return false;
        return chain_reaches_image(s, fd, path, &st);
}

static int scan_dir(struct scan *s, const char *dir, char *ret_overlay, size_t size,
                    struct qt_error *e)
{
        _cleanup_(closedirp) DIR *d = opendir(dir);
        if (!d)
                return qt_error_set(e, QT_ERR_FAILED, errno,
                                    "cannot read %s to look for images backed by this one: %m",
                                    dir);
        for (unsigned entries = 0; entries < SCAN_ENTRIES_MAX; entries++) {
                errno = 0;
                struct dirent *de = readdir(d);
                if (!de) {
                        if (errno == 0)
                                break;
                        return qt_error_set(
                            e, QT_ERR_FAILED, errno,
                            "cannot read %s to look for images backed by this one: %m", dir);
                }
                /* Also skips qtrim's own temporary copies, ".<name>.qtrim-XXXXXX". */
                if (de->d_name[0] == '.')
                        continue;
                if (de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
                        continue;
                if (is_overlay(s, dirfd(d), dir, de)) {
                        if (size > 0)
                                snprintf(ret_overlay, size, "%s/%s", dir, de->d_name);
                        return 1;
                }
        }
        return 0;
}

/* The directory part of path, as qemu would take it to resolve relative names: "/" for "/x",
 * "." for "x". */
static int dir_of(const char *path, char ret[PATH_MAX])
{
        const char *slash = strrchr(path, '/');
        int n;
        if (!slash)
                n = snprintf(ret, PATH_MAX, ".");
        else if (slash == path)
                n = snprintf(ret, PATH_MAX, "/");
        else
                n = snprintf(ret, PATH_MAX, "%.*s", (int)(slash - path), path);
        return n >= 0 && n < PATH_MAX ? 0 : -ENAMETOOLONG;
}

int qt_find_overlay(const char *image, const struct stat *image_st,
                    const struct qt_format_rules *formats, char *ret_overlay, size_t size,
                    struct qt_error *e)
{
        _cleanup_free_ uint8_t *buf = malloc(QT_QCOW2_HEADER_READ_SIZE);
        if (!buf)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
        struct scan s = {.image_st = image_st, .formats = formats, .buf = buf};

        char dir[PATH_MAX], real_dir[PATH_MAX];
        if (dir_of(image, dir) < 0)
                return qt_error_set(e, QT_ERR_FAILED, ENAMETOOLONG, "the image path is too long");
        int r = scan_dir(&s, dir, ret_overlay, size, e);
        if (r != 0)
                return r;

        /* The image given as a symlink: overlays sit beside the file itself too, usually named
         * by its real path. */
        _cleanup_free_ char *real = realpath(image, NULL);
        if (!real)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot resolve the image path: %m");
        struct stat dir_st, real_dir_st;
        if (dir_of(real, real_dir) < 0)
                return 0; /* cannot happen: realpath() returns at most PATH_MAX bytes */
        if (stat(dir, &dir_st) == 0 && stat(real_dir, &real_dir_st) == 0 &&
            same_file(&dir_st, &real_dir_st))
                return 0;
        return scan_dir(&s, real_dir, ret_overlay, size, e);
}

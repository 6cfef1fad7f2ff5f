/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "state-dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "convert.h"
#include "journal.h"
#include "util.h"

#define JOBS   "jobs"
#define SHRUNK "shrunk"

static int make_dirs(const char *state_dir, const char *sub)
{
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/%s", state_dir, sub);
        if ((mkdir(state_dir, 0700) < 0 && errno != EEXIST) ||
            (mkdir(dir, 0700) < 0 && errno != EEXIST))
                return -errno;
        return 0;
}

int state_lock(const char *state_dir, pid_t *ret_holder)
{
        char path[PATH_MAX], text[32];
        *ret_holder = 0;
        if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        if (snprintf(path, sizeof(path), "%s/lock", state_dir) >= (int)sizeof(path))
                return -ENAMETOOLONG;
        _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                int r = -errno;
                ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
                uint64_t pid;
                if (n > 0) {
                        text[n] = '\0';
                        text[strcspn(text, "\n")] = '\0';
                        if (parse_u64(text, &pid) == 0 && pid > 0 && pid < INT32_MAX)
                                *ret_holder = (pid_t)pid;
                }
                return r == -EWOULDBLOCK ? -EBUSY : r;
        }
        int n = snprintf(text, sizeof(text), "%d\n", (int)getpid());
        if (ftruncate(fd, 0) < 0 || pwrite(fd, text, (size_t)n, 0) != n)
                return -errno;
        return TAKE_FD(fd);
}

int state_write_atomic(const char *path, const char *text, mode_t mode)
{
        char tmp[PATH_MAX];
        int n = snprintf(tmp, sizeof(tmp), "%s.new", path);
        if (n < 0 || n >= (int)sizeof(tmp))
                return -ENAMETOOLONG;
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
        if (fd < 0)
                return -errno;
        /* fchmod: the service's UMask= would take from mode what another reader needs. */
        if (fchmod(fd, mode) < 0 || write_all(fd, text, strlen(text)) < 0 || fsync(fd) < 0 ||
            rename(tmp, path) < 0) {
                int r = -errno;
                unlink(tmp);
                return r;
        }
        return 0;
}

static int job_path(const char *state_dir, unsigned job, char buf[PATH_MAX])
{
        int n = snprintf(buf, PATH_MAX, "%s/" JOBS "/%u", state_dir, job);
        return n > 0 && n < PATH_MAX ? 0 : -ENAMETOOLONG;
}

int state_job_set(const char *state_dir, unsigned job, const char *image, const char *temp)
{
        char path[PATH_MAX];
        _cleanup_free_ char *text = NULL;
        int r = job_path(state_dir, job, path);
        if (r >= 0)
                r = make_dirs(state_dir, JOBS);
        if (r < 0)
                return r;
        if (asprintf(&text, "%s\n%s\n", image, temp) < 0)
                return -ENOMEM;
        return state_write_atomic(path, text, 0600);
}

int state_job_end(const char *state_dir, unsigned job)
{
        char path[PATH_MAX];
        int r = job_path(state_dir, job, path);
        if (r < 0)
                return r;
        return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

/* Reads "image\ntemp\n"; anything else is not a record of ours. */
static int read_job(int dir_fd, const char *name, char image[PATH_MAX], char temp[PATH_MAX])
{
        int fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        _cleanup_fclose_ FILE *f = fdopen(fd, "r");
        if (!f) {
                close(fd);
                return -errno;
        }
        if (!fgets(image, PATH_MAX, f) || !fgets(temp, PATH_MAX, f))
                return -EBADMSG;
        image[strcspn(image, "\n")] = '\0';
        temp[strcspn(temp, "\n")] = '\0';
        return 0;
}

unsigned state_jobs_recover(const char *state_dir)
{
        char dir[PATH_MAX], image[PATH_MAX], temp[PATH_MAX];
        unsigned n = 0;
        snprintf(dir, sizeof(dir), "%s/" JOBS, state_dir);
        DIR *d = opendir(dir);
        if (!d)
                return 0;
        struct dirent *de;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                if (strstr(de->d_name, ".new")) {
                        unlinkat(dirfd(d), de->d_name, 0);
                        continue;
                }
                if (read_job(dirfd(d), de->d_name, image, temp) == 0) {
                        n++;
                        /* Also a copy the record does not name: qtrimd and its worker killed
                         * together, after the worker made it and before qtrimd recorded it. */
                        bool removed = qt_convert_remove_temps(image, temp) > 0;
                        journal_job_interrupted(image, de->d_name, removed ? temp : NULL);
                }
                unlinkat(dirfd(d), de->d_name, 0);
        }
        closedir(d);
        return n;
}

/* FNV-1a of the path: a fixed-length file name for any image path. The record holds the path
 * too, so a collision is only a missed skip. */
static int shrunk_path(const char *state_dir, const char *image, char buf[PATH_MAX])
{
        uint64_t h = 0xcbf29ce484222325ULL;
        for (const unsigned char *p = (const unsigned char *)image; *p; p++)
                h = (h ^ *p) * 0x100000001b3ULL;
        int n = snprintf(buf, PATH_MAX, "%s/" SHRUNK "/%016" PRIx64, state_dir, h);
        return n > 0 && n < PATH_MAX ? 0 : -ENAMETOOLONG;
}

#define SHRUNK_FORMAT "%s\n%ju %ju %jd %jd.%09ld\n"

int state_shrunk_set(const char *state_dir, const char *image)
{
        char path[PATH_MAX];
        struct stat st;
        _cleanup_free_ char *text = NULL;
        int r = shrunk_path(state_dir, image, path);
        if (r >= 0)
                r = make_dirs(state_dir, SHRUNK);
        if (r < 0)
                return r;
        if (stat(image, &st) < 0)
                return -errno;
        if (asprintf(&text, SHRUNK_FORMAT, image, (uintmax_t)st.st_dev, (uintmax_t)st.st_ino,
                     (intmax_t)st.st_size, (intmax_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec) < 0)
                return -ENOMEM;
        return state_write_atomic(path, text, 0600);
}

bool state_shrunk_unchanged(const char *state_dir, const char *image, const struct stat *st)
{
        char path[PATH_MAX], *recorded = NULL, *expected = NULL;
        if (shrunk_path(state_dir, image, path) < 0)
                return false;
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        if (!f)
                return false;
        size_t size = 0;
        bool same = false;
        if (getdelim(&recorded, &size, '\0', f) > 0 &&
            asprintf(&expected, SHRUNK_FORMAT, image, (uintmax_t)st->st_dev, (uintmax_t)st->st_ino,
                     (intmax_t)st->st_size, (intmax_t)st->st_mtim.tv_sec, st->st_mtim.tv_nsec) > 0)
                same = strcmp(recorded, expected) == 0;
        free(recorded);
        free(expected);
        return same;
}

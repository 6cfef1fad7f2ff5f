/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "temp-records.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "convert.h"
#include "util.h"

#define RECORDS "temp-files"

static int record_path(const char *state_dir, unsigned job, char buf[PATH_MAX])
{
        int n = snprintf(buf, PATH_MAX, "%s/" RECORDS "/%u", state_dir, job);
        return n > 0 && n < PATH_MAX ? 0 : -ENAMETOOLONG;
}

int temp_record_set(const char *state_dir, unsigned job, const char *image, const char *temp)
{
        char path[PATH_MAX], dir[PATH_MAX];
        int r = record_path(state_dir, job, path);
        if (r < 0)
                return r;
        if (!temp[0])
                return unlink(path) < 0 && errno != ENOENT ? -errno : 0;

        snprintf(dir, sizeof(dir), "%s/" RECORDS, state_dir);
        if ((mkdir(state_dir, 0700) < 0 && errno != EEXIST) ||
            (mkdir(dir, 0700) < 0 && errno != EEXIST))
                return -errno;
        _cleanup_fclose_ FILE *f = fopen(path, "we");
        if (!f)
                return -errno;
        fprintf(f, "%s\n%s\n", image, temp);
        /* Durable before qemu-img writes gigabytes: a power cut must not orphan them either. */
        if (fflush(f) != 0 || fsync(fileno(f)) < 0)
                return -errno;
        return 0;
}

/* Reads "image\ntemp\n"; anything else is not a record of ours. */
static int read_record(int dir_fd, const char *name, char image[PATH_MAX], char temp[PATH_MAX])
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

void temp_records_sweep(const char *state_dir)
{
        char dir[PATH_MAX], image[PATH_MAX], temp[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s/" RECORDS, state_dir);
        DIR *d = opendir(dir);
        if (!d)
                return;
        struct dirent *de;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                if (read_record(dirfd(d), de->d_name, image, temp) == 0 &&
                    qt_convert_is_temp_of(image, temp)) {
                        if (unlink(temp) == 0)
                                fprintf(stderr,
                                        "qtrimd: removed %s, left by a job that died with "
                                        "an earlier qtrimd\n",
                                        temp);
                        else if (errno != ENOENT)
                                fprintf(stderr, "qtrimd: cannot remove %s: %m\n", temp);
                }
                unlinkat(dirfd(d), de->d_name, 0);
        }
        closedir(d);
}

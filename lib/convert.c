/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "convert.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "cancel.h"
#include "command.h"
#include "util.h"

#define FREE_MARGIN_MIN (256ULL << 20)
#define FREE_MARGIN_MAX (4ULL << 30)

const char *qt_convert_refusal(const char *image, const struct qt_image_info *info,
                               const struct stat *st, uint64_t needed_bytes)
{
        if (strcmp(info->format, "raw") == 0)
                return "not converted: a trimmed raw image is already as sparse as a copy would be";
        if (st->st_nlink > 1)
                return "not converted: the image has other hard links, which would keep the old "
                       "file (and its space) alive";
        if (info->snapshots > 0)
                return "not converted: the image has internal snapshots, which a copy would drop";
        if (info->backing_file[0] && !info->backing_format[0])
                return "not converted: the backing file's format is not recorded in the image";

        _cleanup_free_ char *copy = strdup(image);
        struct statvfs sv;
        if (!copy || statvfs(dirname(copy), &sv) < 0)
                return "not converted: cannot tell the free space beside the image";
        /* Running VMs may share this filesystem, and other jobs may be writing copies to it
         * right now: leave a margin free after the copy (5%, 256 MiB to 4 GiB), as well as
         * root's reserve (f_bavail). */
        uint64_t size = (uint64_t)sv.f_blocks * sv.f_frsize;
        uint64_t margin = size / 20;
        if (margin < FREE_MARGIN_MIN)
                margin = FREE_MARGIN_MIN;
        if (margin > FREE_MARGIN_MAX)
                margin = FREE_MARGIN_MAX;
        if ((uint64_t)sv.f_bavail * sv.f_frsize < needed_bytes + margin)
                return "not converted: not enough free space beside the image for the copy and "
                       "a safety margin";
        return NULL;
}

/* "-o" for the copy: the source's qcow2 creation options, so the copy is the same kind of image. */
static void qcow2_options(const struct qt_image_info *info, char *buf, size_t size)
{
        int n = snprintf(buf, size, "cluster_size=%llu", (unsigned long long)info->cluster_size);
        if (info->compat[0])
                n += snprintf(buf + n, size - (size_t)n, ",compat=%s", info->compat);
        if (info->refcount_bits)
                n += snprintf(buf + n, size - (size_t)n, ",refcount_bits=%u", info->refcount_bits);
        /* These need compat 1.1; a 0.10 image has none of them. */
        if (strcmp(info->compat, "0.10") != 0) {
                n +=
                    snprintf(buf + n, size - (size_t)n, ",lazy_refcounts=%s,extended_l2=%s",
                             info->lazy_refcounts ? "on" : "off", info->extended_l2 ? "on" : "off");
                if (info->compression_type[0])
                        snprintf(buf + n, size - (size_t)n, ",compression_type=%s",
                                 info->compression_type);
        }
}

struct convert_progress {
        qt_progress_fn fn;
        void *userdata;
};

/* qemu-img -p redraws "    (12.34/100%)". */
static void on_convert_line(const char *line, void *userdata)
{
        struct convert_progress *p = userdata;
        double percent;
        if (p->fn && sscanf(line, " (%lf/100%%)", &percent) == 1)
                p->fn(percent / 100.0, p->userdata);
}

#define TEMP_INFIX ".qtrim-"

/* btrfs hosts keep images No_COW (chattr +C), or every guest write fragments them; the flag
 * only takes on an empty file, so it is copied before qemu-img writes. */
static void copy_nocow(const char *image, int tmp_fd)
{
        _cleanup_close_ int fd = open(image, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        int flags = 0, tmp_flags = 0;
        if (fd < 0 || ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0 || !(flags & FS_NOCOW_FL))
                return;
        if (ioctl(tmp_fd, FS_IOC_GETFLAGS, &tmp_flags) == 0) {
                tmp_flags |= FS_NOCOW_FL;
                (void)ioctl(tmp_fd, FS_IOC_SETFLAGS, &tmp_flags);
        }
}

int qt_convert_create_temp(const char *image, char ret_tmp[PATH_MAX], struct qt_error *e)
{
        _cleanup_free_ char *dir_copy = strdup(image), *base_copy = strdup(image);
        if (!dir_copy || !base_copy)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
        snprintf(ret_tmp, PATH_MAX, "%s/.%s" TEMP_INFIX "XXXXXX", dirname(dir_copy),
                 basename(base_copy));
        int fd = mkostemp(ret_tmp, O_CLOEXEC);
        if (fd < 0) {
                ret_tmp[0] = '\0';
                return qt_error_set(e, errno == ENOSPC ? QT_ERR_NO_SPACE : QT_ERR_FAILED, errno,
                                    "cannot create a temporary file beside the image: %m");
        }
        copy_nocow(image, fd);
        close(fd);
        return 0;
}

bool qt_convert_is_temp_of(const char *image, const char *path)
{
        char expected[PATH_MAX];
        _cleanup_free_ char *dir_copy = strdup(image), *base_copy = strdup(image);
        if (!dir_copy || !base_copy)
                return false;
        int n = snprintf(expected, sizeof(expected), "%s/.%s" TEMP_INFIX, dirname(dir_copy),
                         basename(base_copy));
        /* The prefix, then mkostemp's six characters and nothing else (no "/.." tricks). */
        return n > 0 && (size_t)n < sizeof(expected) && strncmp(path, expected, (size_t)n) == 0 &&
               strlen(path + n) == 6 && !strchr(path + n, '/');
}

int qt_convert_remove_temps(const char *image, char ret_first[PATH_MAX])
{
        _cleanup_free_ char *dir_copy = strdup(image);
        if (!dir_copy)
                return -ENOMEM;
        const char *dir = dirname(dir_copy);
        DIR *d = opendir(dir);
        if (!d)
                return -errno;
        int n = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
                char path[PATH_MAX];
                int len = snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
                if (len <= 0 || (size_t)len >= sizeof(path) ||
                    !qt_convert_is_temp_of(image, path) || unlinkat(dirfd(d), de->d_name, 0) < 0)
                        continue;
                if (n++ == 0 && ret_first)
                        memcpy(ret_first, path, (size_t)len + 1);
        }
        closedir(d);
        return n;
}

int qt_convert_image(const struct qt_image_file *f, const struct qt_image_info *info,
                     const char *tmp, qt_progress_fn progress, void *userdata, struct qt_error *e)
{
        char name[QT_QEMU_NAME_MAX];
        int r = qt_image_qemu_name(f, info, false, name);
        if (r < 0)
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot name the image to qemu-img: %s",
                                    strerror(-r));
        char options[512] = "";
        char *argv[24] = {"qemu-img", "convert",           "-p", "-f", (char *)info->format,
                          "-O",       (char *)info->format};
        size_t n = 7;
        if (strcmp(info->format, "qcow2") == 0) {
                qcow2_options(info, options, sizeof(options));
                argv[n++] = "-o";
                argv[n++] = options;
                if (info->bitmaps > 0)
                        argv[n++] = "--bitmaps";
        }
        if (info->backing_file[0]) {
                /* Only what the image itself holds is copied; the backing chain stays shared. */
                argv[n++] = "-B";
                argv[n++] = (char *)info->backing_file;
                argv[n++] = "-F";
                argv[n++] = (char *)info->backing_format;
        }
        argv[n++] = name;
        argv[n++] = (char *)tmp;
        argv[n] = NULL;

        struct convert_progress p = {progress, userdata};
        struct qt_command c = {.argv = argv, .on_line = on_convert_line, .userdata = &p};
        r = qt_command_run(&c);
        if (r == -ECANCELED)
                qt_error_set(e, QT_ERR_CANCELED, ECANCELED, "canceled");
        else if (r < 0)
                qt_error_set(e, QT_ERR_FAILED, r, "cannot run qemu-img convert: %s", strerror(-r));
        else if (c.status != 0) {
                _cleanup_free_ char *msg = qt_image_qemu_message(f, name, c.err);
                r = qt_error_set(e, strstr(c.err, "No space") ? QT_ERR_NO_SPACE : QT_ERR_FAILED,
                                 EIO, "qemu-img convert failed: %s", msg ? msg : c.err);
        }
        qt_command_done(&c);
        return r;
}

/* The copy must be the same disk, in the same format, over the same backing file. */
static int check_copy(const char *tmp, const struct qt_image_info *info, struct qt_error *e)
{
        char *check_argv[] = {"qemu-img",           "check",     "-q", "-f",
                              (char *)info->format, (char *)tmp, NULL};
        char *info_argv[] = {"qemu-img",  "info", "--output=json", "-f", (char *)info->format,
                             (char *)tmp, NULL};
        struct qt_command c = {.argv = info_argv};
        struct qt_image_info copy;
        int r = qt_command_run(&c);
        if (r >= 0 && c.status != 0)
                r = qt_error_set(e, QT_ERR_FAILED, EIO, "qemu-img info on the copy failed: %s",
                                 c.err);
        if (r >= 0)
                r = qt_image_parse_info(c.out, &copy, e);
        qt_command_done(&c);
        if (r < 0)
                return r;
        if (copy.virtual_size != info->virtual_size ||
            strcmp(copy.backing_file, info->backing_file) != 0)
                return qt_error_set(
                    e, QT_ERR_FAILED, EIO,
                    "the copy differs from the image (virtual size or backing file)");
        /* What a VM that probes, or that was told the format, must see in the copy: the format
         * the image was opened with; a raw disk stays raw bytes of the same length. */
        struct stat st;
        enum qt_image_content content;
        _cleanup_close_ int fd = open(tmp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0 || fstat(fd, &st) < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot read the copy: %m");
        r = qt_image_read_content(fd, &content);
        if (r < 0)
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot read the copy: %s", strerror(-r));
        bool raw = strcmp(info->format, "raw") == 0;
        if (raw ? content != QT_CONTENT_OTHER || (uint64_t)st.st_size != info->virtual_size
                : content != QT_CONTENT_QCOW2)
                return qt_error_set(e, QT_ERR_FAILED, EIO,
                                    "the copy is not a %s image like the original; not replacing",
                                    info->format);
        if (strcmp(info->format, "qcow2") != 0)
                return 0;

        c = (struct qt_command){.argv = check_argv};
        r = qt_command_run(&c);
        if (r >= 0 && c.status != 0)
                r = qt_error_set(e, QT_ERR_FAILED, EIO, "qemu-img check of the copy failed: %s",
                                 c.err);
        qt_command_done(&c);
        return r;
}

/* Reads all of an xattr list or value, whatever its size is by the time it is read. */
static ssize_t read_sized(int fd, const char *name, char **ret)
{
        for (int attempt = 0; attempt < 8; attempt++) {
                ssize_t len = name ? fgetxattr(fd, name, NULL, 0) : flistxattr(fd, NULL, 0);
                if (len < 0)
                        return -errno;
                char *buf = malloc((size_t)len + 1);
                if (!buf)
                        return -ENOMEM;
                ssize_t got =
                    name ? fgetxattr(fd, name, buf, (size_t)len) : flistxattr(fd, buf, (size_t)len);
                if (got >= 0) {
                        *ret = buf;
                        return got;
                }
                int err = errno;
                free(buf);
                if (err != ERANGE) /* ERANGE: it grew meanwhile, ask again */
                        return -err;
        }
        return -ERANGE;
}

/* Every extended attribute: ACLs and the SELinux label decide whether the VM may use its
 * disk, so one that cannot be copied fails the replace. */
static int copy_xattrs(int from, int to, struct qt_error *e)
{
        _cleanup_free_ char *names = NULL;
        ssize_t len = read_sized(from, NULL, &names);
        if (len == -ENOTSUP)
                return 0;
        if (len < 0)
                return qt_error_set(e, QT_ERR_FAILED, (int)-len,
                                    "cannot list extended attributes: %s", strerror((int)-len));
        for (char *name = names; name < names + len; name += strlen(name) + 1) {
                _cleanup_free_ char *value = NULL;
                ssize_t vlen = read_sized(from, name, &value);
                if (vlen == -ENODATA) /* removed meanwhile */
                        continue;
                if (vlen < 0)
                        return qt_error_set(e, QT_ERR_FAILED, (int)-vlen,
                                            "cannot read extended attribute %s: %s", name,
                                            strerror((int)-vlen));
                if (fsetxattr(to, name, value, (size_t)vlen, 0) < 0)
                        return qt_error_set(e, QT_ERR_FAILED, errno,
                                            "cannot copy extended attribute %s: %m", name);
        }
        return 0;
}

int qt_replace_image(const char *image, int image_fd, const char *tmp,
                     const struct qt_image_info *info, struct qt_error *e)
{
        int r = check_copy(tmp, info, e);
        if (r < 0)
                return r;

        struct stat orig, now;
        if (fstat(image_fd, &orig) < 0 || stat(image, &now) < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot stat: %m");
        if (orig.st_dev != now.st_dev || orig.st_ino != now.st_ino)
                return qt_error_set(e, QT_ERR_FAILED, ESTALE,
                                    "was replaced by another file while qtrim worked on it");

        _cleanup_close_ int fd = open(tmp, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot open %s: %m", tmp);
        /* chown first: it clears set-id bits that chmod then puts back. */
        if (fchown(fd, orig.st_uid, orig.st_gid) < 0 || fchmod(fd, orig.st_mode & 07777) < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot set owner and mode of %s: %m",
                                    tmp);
        r = copy_xattrs(image_fd, fd, e);
        if (r < 0)
                return r;
        if (fsync(fd) < 0)
                return qt_error_set(e, errno == ENOSPC ? QT_ERR_NO_SPACE : QT_ERR_FAILED, errno,
                                    "cannot sync %s: %m", tmp);

        _cleanup_free_ char *dir_copy = strdup(image);
        if (!dir_copy)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
        _cleanup_close_ int dir_fd = open(dirname(dir_copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno,
                                    "cannot open the image's directory: %m");
        /* The point of no return: a cancel that arrived while the copy was checked and synced
         * still counts. */
        if (qt_cancel_requested)
                return qt_error_set(e, QT_ERR_CANCELED, ECANCELED, "canceled before the replace");
        if (rename(tmp, image) < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno,
                                    "cannot rename the copy over the image: %m");
        /* The rename is done; a failed directory sync only weakens durability, not the result. */
        (void)fsync(dir_fd);
        return 0;
}

bool qt_convert_policy_accepts(const struct qt_convert_policy *p, uint64_t trimmed_bytes,
                               uint64_t copy_bytes)
{
        if (p->never)
                return false;
        uint64_t saved = copy_bytes < trimmed_bytes ? trimmed_bytes - copy_bytes : 0;
        if (saved < p->min_bytes)
                return false;
        /* saved / trimmed >= percent / 100, exactly, for any 64-bit sizes */
        return (unsigned __int128)saved * 100 >= (unsigned __int128)trimmed_bytes * p->min_percent;
}

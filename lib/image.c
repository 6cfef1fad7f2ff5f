/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "image.h"

#include <blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <json-c/json.h>
#include <string.h>
#include <unistd.h>

#include "backing.h"
#include "command.h"
#include "qcow2-header.h"
#include "util.h"

/* qemu's file-posix lock protocol: byte 100 + n is held by whoever uses permission n, byte
 * 200 + n by whoever does not let others use it. Permission 1 is "write". */
#define QEMU_LOCK_PERM_BASE   100
#define QEMU_LOCK_SHARED_BASE 200
#define QEMU_PERM_WRITE_BIT   1

int qt_image_check_path(const char *path, bool follow, struct stat *ret_st, struct qt_error *e)
{
        if (!path || path[0] != '/')
                return qt_error_set(e, QT_ERR_NOT_ABSOLUTE, EINVAL,
                                    "the image path must be absolute");
        if ((follow ? stat(path, ret_st) : lstat(path, ret_st)) < 0) {
                int r = errno;
                if (r == ENOENT || r == ENOTDIR)
                        return qt_error_set(e, QT_ERR_NOT_FOUND, r, "no such file");
                /* No file can have such a name: a typed refusal, not a failure of qtrim's. */
                if (r == ENAMETOOLONG)
                        return qt_error_set(e, QT_ERR_NOT_FOUND, r, "the path is too long");
                if (r == ELOOP)
                        return qt_error_set(e, QT_ERR_NOT_REGULAR, r,
                                            "is a loop of symbolic links");
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot stat: %s", strerror(r));
        }
        if (S_ISLNK(ret_st->st_mode))
                return qt_error_set(e, QT_ERR_NOT_REGULAR, ELOOP,
                                    "is a symbolic link now, which it was not when qtrim "
                                    "resolved it");
        if (S_ISDIR(ret_st->st_mode))
                return qt_error_set(e, QT_ERR_NOT_REGULAR, EISDIR, "is a directory");
        if (!S_ISREG(ret_st->st_mode))
                return qt_error_set(e, QT_ERR_NOT_REGULAR, EINVAL,
                                    "is not a regular file (a device node, FIFO or socket)");
        return 0;
}

static const char *get_str(struct json_object *o, const char *key)
{
        struct json_object *v;
        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

static bool get_bool(struct json_object *o, const char *key)
{
        struct json_object *v;
        return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_boolean) &&
               json_object_get_boolean(v);
}

static uint64_t get_u64(struct json_object *o, const char *key)
{
        struct json_object *v;
        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return 0;
        int64_t i = json_object_get_int64(v);
        return i > 0 ? (uint64_t)i : 0;
}

static unsigned get_array_len(struct json_object *o, const char *key)
{
        struct json_object *v;
        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_array))
                return 0;
        return (unsigned)json_object_array_length(v);
}

static void copy_str(char *dst, size_t size, const char *src)
{
        snprintf(dst, size, "%s", src ? src : "");
}

int qt_image_parse_info(const char *json, struct qt_image_info *ret, struct qt_error *e)
{
        enum json_tokener_error jerr;
        struct json_object *root = json_tokener_parse_verbose(json, &jerr);
        int r = 0;

        *ret = (struct qt_image_info){};
        if (!root || !json_object_is_type(root, json_type_object)) {
                r = qt_error_set(e, QT_ERR_FAILED, EBADMSG, "cannot parse qemu-img info output: %s",
                                 root ? "not an object" : json_tokener_error_desc(jerr));
                goto out;
        }
        const char *format = get_str(root, "format");
        if (!format || !format[0]) {
                r = qt_error_set(e, QT_ERR_FAILED, EBADMSG, "qemu-img info names no format");
                goto out;
        }
        copy_str(ret->format, sizeof(ret->format), format);
        ret->virtual_size = get_u64(root, "virtual-size");
        ret->cluster_size = get_u64(root, "cluster-size");
        copy_str(ret->backing_file, sizeof(ret->backing_file), get_str(root, "backing-filename"));
        copy_str(ret->backing_format, sizeof(ret->backing_format),
                 get_str(root, "backing-filename-format"));
        ret->snapshots = get_array_len(root, "snapshots");
        ret->encrypted = get_bool(root, "encrypted");

        struct json_object *specific, *data;
        if (json_object_object_get_ex(root, "format-specific", &specific) &&
            json_object_is_type(specific, json_type_object) &&
            json_object_object_get_ex(specific, "data", &data) &&
            json_object_is_type(data, json_type_object)) {
                copy_str(ret->compat, sizeof(ret->compat), get_str(data, "compat"));
                copy_str(ret->compression_type, sizeof(ret->compression_type),
                         get_str(data, "compression-type"));
                ret->lazy_refcounts = get_bool(data, "lazy-refcounts");
                ret->extended_l2 = get_bool(data, "extended-l2");
                ret->refcount_bits = (unsigned)get_u64(data, "refcount-bits");
                ret->corrupt = get_bool(data, "corrupt");
                ret->bitmaps = get_array_len(data, "bitmaps");
                ret->has_data_file = get_str(data, "data-file") != NULL;
                if (json_object_object_get_ex(data, "encrypt", &specific))
                        ret->encrypted = true;
        }
out:
        json_object_put(root);
        return r;
}

int qt_image_open(const char *path, const struct stat *expected, struct qt_image_file *ret,
                  struct qt_error *e)
{
        *ret = (struct qt_image_file){.path = path, .fd = -1};
        struct stat looked;
        int r = qt_image_check_path(path, false, &looked, e);
        if (r < 0)
                return r;
        /* O_NONBLOCK: a FIFO that took the path since the look must not block the open. */
        _cleanup_close_ int fd =
            open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot open: %m");
        if (fstat(fd, &ret->st) < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot stat: %m");
        if (ret->st.st_dev != looked.st_dev || ret->st.st_ino != looked.st_ino ||
            (expected &&
             (ret->st.st_dev != expected->st_dev || ret->st.st_ino != expected->st_ino)))
                return qt_error_set(e, QT_ERR_FAILED, ESTALE,
                                    "was replaced by another file since qtrim checked it");
        snprintf(ret->by_fd, sizeof(ret->by_fd), "/proc/%d/fd/%d", (int)getpid(), fd);
        ret->fd = TAKE_FD(fd);
        return 0;
}

void qt_image_file_close(struct qt_image_file *f)
{
        if (f->fd >= 0)
                close(f->fd);
        f->fd = -1;
}

static void json_object_putp(struct json_object **o)
{
        json_object_put(*o);
}

/* {"driver": "file", "filename": FILENAME} plus options, as qemu's blockdev options spell it. */
static struct json_object *file_node(const char *filename, bool no_locking)
{
        struct json_object *o = json_object_new_object();
        if (!o)
                return NULL;
        json_object_object_add(o, "driver", json_object_new_string("file"));
        json_object_object_add(o, "filename", json_object_new_string(filename));
        if (no_locking)
                json_object_object_add(o, "locking", json_object_new_string("off"));
        return o;
}

int qt_image_qemu_name(const struct qt_image_file *f, const struct qt_image_info *chain,
                       bool no_locking, char buf[QT_QEMU_NAME_MAX])
{
        _cleanup_(json_object_putp) struct json_object *root = json_object_new_object();
        if (!root)
                return -ENOMEM;
        json_object_object_add(root, "file", file_node(f->by_fd, no_locking));
        if (chain && chain->backing_file[0]) {
                char backing_path[PATH_MAX];
                int r = qt_qcow2_backing_path(f->path, chain->backing_file, backing_path);
                if (r < 0)
                        return r;
                struct json_object *backing = json_object_new_object();
                json_object_object_add(root, "backing", backing);
                /* Not recorded: qemu probes it, as it would (qt_image_probe held it to the rules).
                 */
                if (chain->backing_format[0])
                        json_object_object_add(backing, "driver",
                                               json_object_new_string(chain->backing_format));
                json_object_object_add(backing, "file", file_node(backing_path, no_locking));
        }
        const char *text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
                                                                    JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!text)
                return -ENOMEM;
        int n = snprintf(buf, QT_QEMU_NAME_MAX, "json:%s", text);
        return n < QT_QEMU_NAME_MAX ? 0 : -ENAMETOOLONG;
}

/* Copies s to out, each occurrence of from written as to. */
static void put_replaced(FILE *out, const char *s, const char *from, const char *to)
{
        size_t len = strlen(from);
        for (const char *hit; len && (hit = strstr(s, from)); s = hit + len) {
                fwrite(s, 1, (size_t)(hit - s), out);
                fputs(to, out);
        }
        fputs(s, out);
}

char *qt_image_qemu_message(const struct qt_image_file *f, const char *name, const char *msg)
{
        _cleanup_free_ char *step = NULL;
        char *result = NULL;
        size_t size;
        FILE *out = open_memstream(&step, &size);
        if (!out)
                return NULL;
        put_replaced(out, msg, name, f->path);
        if (fclose(out) != 0)
                return NULL;
        /* qemu also names the file node alone, e.g. "Could not open '/proc/1/fd/5'". */
        out = open_memstream(&result, &size);
        if (!out)
                return NULL;
        put_replaced(out, step, f->by_fd, f->path);
        if (fclose(out) != 0) {
                free(result);
                return NULL;
        }
        return result;
}

/* Is another process using the image the way qemu does? Any of qemu's lock bytes held means a
 * qemu process has it open: a VM (also with the disk read-only, or as its backing file), qemu-nbd,
 * qemu-img. qemu-img info alone notices only the writers. */
static int check_qemu_locks(const struct qt_image_file *f, struct qt_error *e)
{
        struct flock fl = {
            .l_type = F_WRLCK,
            .l_whence = SEEK_SET,
            .l_start = QEMU_LOCK_PERM_BASE,
            .l_len = QEMU_LOCK_SHARED_BASE + 100 - QEMU_LOCK_PERM_BASE,
        };
        /* Our own open file holds no lock: any one reported is another's. */
        if (fcntl(f->fd, F_OFD_GETLK, &fl) < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot test qemu's lock bytes: %m");
        if (fl.l_type != F_UNLCK)
                return qt_error_set(e, QT_ERR_IN_USE, EBUSY,
                                    "is in use: another process (a running VM?) holds qemu's lock "
                                    "on it");
        return 0;
}

#define QCOW2_MAGIC "QFI\xfb"

bool qt_format_is_known(const char *format)
{
        return format && (strcmp(format, "raw") == 0 || strcmp(format, "qcow2") == 0);
}

const char *qt_format_source_name(enum qt_format_source source)
{
        switch (source) {
        case QT_FORMAT_DECLARED:
                return "declared";
        case QT_FORMAT_CONFIGURED:
                return "configured";
        case QT_FORMAT_GUESSED:
                break;
        }
        return "guessed";
}

enum qt_image_content qt_image_content_of(const uint8_t *buf, size_t len)
{
        if (len < 8 || memcmp(buf, QCOW2_MAGIC, 4) != 0)
                return QT_CONTENT_OTHER;
        /* Versions 2 and 3 are the ones qemu's qcow2 driver reads; version 1 is qemu's older
         * "qcow" format. */
        if (buf[4] == 0 && buf[5] == 0 && buf[6] == 0 && (buf[7] == 2 || buf[7] == 3))
                return QT_CONTENT_QCOW2;
        return QT_CONTENT_QCOW_MAGIC;
}

int qt_image_read_content(int fd, enum qt_image_content *ret)
{
        uint8_t buf[8];
        ssize_t got = pread(fd, buf, sizeof(buf), 0);
        if (got < 0)
                return -errno;
        *ret = qt_image_content_of(buf, (size_t)got);
        return 0;
}

/* Names that say "raw disk" by convention; a qcow2 header in such a file is not trusted. */
static bool name_says_raw(const char *path)
{
        static const char *const suffixes[] = {".raw", ".img", ".bin"};
        size_t len = strlen(path);
        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                size_t n = strlen(suffixes[i]);
                if (len > n && strcasecmp(path + len - n, suffixes[i]) == 0)
                        return true;
        }
        return false;
}

bool qt_image_may_be_qcow2(const char *path, const char *configured)
{
        if (configured)
                return strcmp(configured, "qcow2") == 0;
        return !name_says_raw(path);
}

int qt_image_choose_format(const char *path, const struct qt_format_claim *claim,
                           enum qt_image_content content, char ret_format[16],
                           enum qt_format_source *ret_source, struct qt_error *e)
{
        const char *declared = claim ? claim->declared : NULL;
        const char *configured = claim ? claim->configured : NULL;
        if (declared && configured && strcmp(declared, configured) != 0)
                return qt_error_set(e, QT_ERR_FORMAT_MISMATCH, EINVAL,
                                    "declared %s, but qtrimd.conf (Formats=) says it is %s; "
                                    "refusing",
                                    declared, configured);
        const char *want = declared ?: configured;
        enum qt_format_source source = declared     ? QT_FORMAT_DECLARED
                                       : configured ? QT_FORMAT_CONFIGURED
                                                    : QT_FORMAT_GUESSED;
        const char *how = declared ? "declared" : "configured as";
        if (want && strcmp(want, "qcow2") == 0 && content != QT_CONTENT_QCOW2)
                return qt_error_set(e, QT_ERR_FORMAT_MISMATCH, EINVAL,
                                    "%s qcow2, but it has no qcow2 header; refusing", how);
        if (want && strcmp(want, "raw") == 0 && content != QT_CONTENT_OTHER)
                return qt_error_set(e, QT_ERR_FORMAT_MISMATCH, EINVAL,
                                    "%s raw, but its first bytes are a qcow2 header; refusing",
                                    how);
        if (!want && content == QT_CONTENT_QCOW2) {
                if (name_says_raw(path))
                        return qt_error_set(
                            e, QT_ERR_FORMAT_MISMATCH, EINVAL,
                            "its first bytes are a qcow2 header but its name says raw; if it "
                            "is a qcow2 image, say so (qtrimctl --format qcow2, or Formats= in "
                            "qtrimd.conf)");
                want = "qcow2";
        }
        snprintf(ret_format, 16, "%s", want ?: "");
        *ret_source = source;
        return 0;
}

static bool has_qcow2_magic(const struct qt_image_file *f)
{
        enum qt_image_content content;
        return qt_image_read_content(f->fd, &content) == 0 && content != QT_CONTENT_OTHER;
}

/* qemu-img says why it could not open an image only in words; these are its words. */
static int classify_open_failure(const struct qt_image_file *f, const char *name,
                                 const char *qemu_msg, struct qt_error *e)
{
        _cleanup_free_ char *msg = qt_image_qemu_message(f, name, qemu_msg);
        if (!msg)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
        if (strstr(msg, "lock") && strstr(msg, "another process"))
                return qt_error_set(
                    e, QT_ERR_IN_USE, EBUSY,
                    "is in use: another process (a running VM?) holds qemu's lock on it");
        if (strstr(msg, "corrupt") || strstr(msg, "backing file"))
                return qt_error_set(e, QT_ERR_CORRUPT, EUCLEAN, "%s", msg);
        if (strstr(msg, "encrypt"))
                return qt_error_set(e, QT_ERR_ENCRYPTED, EPERM, "%s", msg);
        /* A file that says it is a qcow2 image and that qemu cannot open is a damaged one (a
         * truncated header, sizes or offsets that lie), not some other kind of file. qemu says
         * "Unsupported" for versions and features newer than it knows. */
        if (has_qcow2_magic(f)) {
                if (strstr(msg, "Unsupported"))
                        return qt_error_set(e, QT_ERR_UNSUPPORTED, EOPNOTSUPP,
                                            "is a qcow2 image qemu cannot open: %s", msg);
                return qt_error_set(e, QT_ERR_CORRUPT, EUCLEAN, "is a damaged qcow2 image: %s",
                                    msg);
        }
        return qt_error_set(e, QT_ERR_NOT_AN_IMAGE, EINVAL, "is not a readable disk image: %s",
                            msg);
}

/*
 * Follows the backing chain from the image, name by name, before any qemu tool opens it: qemu
 * follows it without end, so a qcow2 that names itself (or an earlier file of its chain) as its
 * backing file makes qemu-img check and qemu-nbd allocate gigabytes and run for minutes. Every
 * backing file must be a local regular file (never a device, FIFO, "nbd:" or "json:"); a
 * qcow2 one is read on, anything else ends the chain, as does the image's own backing file if
 * the image records it as raw. name, format: the image's backing file name and format ("" if
 * not recorded), as its header records them.
 */
static int check_backing_chain(const struct qt_image_file *f, const char *name, const char *format,
                               struct qt_error *e)
{
        _cleanup_free_ struct stat *seen = calloc(QT_BACKING_CHAIN_MAX + 1, sizeof(*seen));
        _cleanup_free_ uint8_t *buf = malloc(QT_QCOW2_HEADER_READ_SIZE);
        char cur[PATH_MAX], next[PATH_MAX], header_name[QT_QCOW2_BACKING_NAME_MAX];
        size_t n_seen = 0;

        if (!seen || !buf)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
        seen[n_seen++] = f->st;
        if (snprintf(cur, sizeof(cur), "%s", f->path) >= (int)sizeof(cur))
                return qt_error_set(e, QT_ERR_NOT_FOUND, ENAMETOOLONG, "the path is too long");

        for (;;) {
                struct stat st;
                if (n_seen > QT_BACKING_CHAIN_MAX)
                        return qt_error_set(e, QT_ERR_UNSUPPORTED, EOPNOTSUPP,
                                            "its backing chain is longer than %d files",
                                            QT_BACKING_CHAIN_MAX);
                _cleanup_close_ int fd = qt_backing_open(cur, name, seen, n_seen, next, &st);
                switch (fd) {
                case -EPROTONOSUPPORT:
                case -ENAMETOOLONG:
                        return qt_error_set(e, QT_ERR_UNSUPPORTED, EOPNOTSUPP,
                                            "its backing file \"%s\" is not a local file", name);
                case -ENOENT:
                case -ENOTDIR:
                        return qt_error_set(e, QT_ERR_UNSUPPORTED, -fd,
                                            "its backing file \"%s\" does not exist", name);
                case -EOPNOTSUPP:
                        return qt_error_set(e, QT_ERR_UNSUPPORTED, EOPNOTSUPP,
                                            "its backing file \"%s\" is not a regular file", name);
                case -ELOOP:
                        return qt_error_set(e, QT_ERR_CORRUPT, ELOOP,
                                            "its backing chain is a loop: \"%s\" is already in it",
                                            name);
                case -ESTALE:
                        return qt_error_set(e, QT_ERR_FAILED, ESTALE,
                                            "its backing file \"%s\" changed while qtrim read it",
                                            name);
                default:
                        if (fd < 0)
                                return qt_error_set(e, QT_ERR_UNSUPPORTED, -fd,
                                                    "its backing file \"%s\" cannot be read: %s",
                                                    name, strerror(-fd));
                }
                seen[n_seen++] = st;
                if (n_seen == 2 && strcmp(format, "raw") == 0)
                        return 0; /* qemu opens it as raw, whatever its first bytes say */

                ssize_t got = qt_qcow2_read_header(fd, buf);
                if (got < 0)
                        return qt_error_set(e, QT_ERR_UNSUPPORTED, (int)-got,
                                            "its backing file \"%s\" cannot be read: %s", name,
                                            strerror((int)-got));
                enum qt_image_content content = qt_image_content_of(buf, (size_t)got);
                /* qemu probes a backing file whose format the image does not record: the same
                 * rule as for the image itself, for the one level whose record qtrim reads. */
                if (n_seen == 2 && !format[0] && content == QT_CONTENT_QCOW2 && name_says_raw(next))
                        return qt_error_set(e, QT_ERR_FORMAT_MISMATCH, EINVAL,
                                            "its backing file \"%s\" starts with a qcow2 header, "
                                            "but its name says raw and the image does not record "
                                            "its format; refusing",
                                            name);
                if (content != QT_CONTENT_QCOW2)
                        return 0; /* raw, or a format without a backing file of its own */
                int r = qt_qcow2_backing_name(buf, (size_t)got, header_name, sizeof(header_name));
                if (r == 0)
                        return 0;
                if (r < 0)
                        return qt_error_set(e, QT_ERR_CORRUPT, EUCLEAN,
                                            "its backing file \"%s\" has a damaged header", name);
                memcpy(cur, next, sizeof(cur));
                name = header_name;
        }
}

/* qtrim writes the image (the trim, through qemu-nbd): one that cannot be opened for writing
 * (a read-only mount, an immutable or append-only file) is refused now, not by a failed attach
 * once a job runs. Opening does not change the file. */
static int check_writable(const struct qt_image_file *f, struct qt_error *e)
{
        _cleanup_close_ int fd = open(f->by_fd, O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                return qt_error_set(e, QT_ERR_UNSUPPORTED, errno,
                                    "cannot be opened for writing (%m); qtrim trims images in "
                                    "place");
        return 0;
}

/* Whether every byte of the file reads as zero: holes are skipped (SEEK_DATA), data is read up
 * to its first byte that is not. An empty file is no disk at all. 1: all zeroes, 0: not,
 * negative errno. */
static int file_is_all_zeroes(int fd)
{
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (st.st_size == 0)
                return 0;
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        _cleanup_free_ uint8_t *buf = malloc(1u << 20);
        if (!buf)
                return -ENOMEM;
        off_t data = 0;
        for (;;) {
                data = lseek(fd, data, SEEK_DATA);
                if (data < 0)
                        return errno == ENXIO ? 1 : -errno; /* ENXIO: no data after it */
                ssize_t got = pread(fd, buf, 1u << 20, data);
                if (got < 0 && errno == EINTR)
                        continue;
                if (got < 0)
                        return -errno;
                if (got == 0)
                        return 1;
                if (buf[0] != 0 || memcmp(buf, buf + 1, (size_t)got - 1) != 0)
                        return 0;
                data += got;
        }
}

/* A raw file is whatever qemu-img cannot name otherwise; require a partition table or a
 * filesystem, so a text file or random data is refused rather than "shrunk". A file of nothing
 * but zeroes is a blank disk (an unused one in a pool): not refused, *ret_blank says there is
 * nothing to trim. */
static int check_raw_content(const struct qt_image_file *f, bool *ret_blank, struct qt_error *e)
{
        blkid_probe pr = blkid_new_probe();
        if (!pr || blkid_probe_set_device(pr, f->fd, 0, 0) < 0) {
                blkid_free_probe(pr);
                return qt_error_set(e, QT_ERR_FAILED, EIO, "cannot read it for a partition table");
        }
        blkid_probe_enable_partitions(pr, 1);
        blkid_probe_enable_superblocks(pr, 1);
        int r = blkid_do_safeprobe(pr);
        blkid_free_probe(pr);
        /* 1: nothing found; -2: more than one signature, which is still a disk. */
        *ret_blank = false;
        if (r != 1 && r != -1)
                return 0;
        r = file_is_all_zeroes(f->fd);
        if (r < 0)
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot read: %s", strerror(-r));
        if (r == 0)
                return qt_error_set(e, QT_ERR_NOT_AN_IMAGE, EINVAL,
                                    "is not a disk image: no partition table or filesystem found");
        *ret_blank = true;
        return 0;
}

static int check_qcow2_consistency(const struct qt_image_file *f, const struct qt_image_info *info,
                                   bool force_share, struct qt_error *e)
{
        char name[QT_QEMU_NAME_MAX];
        int r = qt_image_qemu_name(f, info, false, name);
        if (r < 0)
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot name the image to qemu-img: %s",
                                    strerror(-r));
        /* With force_share (read-only inspection), without asking for qemu's lock. */
        char *argv[8] = {"qemu-img", "check", "-q", "-f", "qcow2"};
        size_t n = 5;
        if (force_share)
                argv[n++] = "-U";
        argv[n++] = name;
        argv[n] = NULL;
        struct qt_command c = {.argv = argv};
        r = qt_command_run(&c);
        if (r < 0) {
                qt_command_done(&c);
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot run qemu-img check: %s",
                                    strerror(-r));
        }
        /* 0: clean; 3: leaked clusters only, harmless and dropped by the convert. */
        if (c.status == 0 || c.status == 3)
                r = 0;
        else if (c.status == 2) {
                /* One line for the user: the first error, and whether there are more. */
                char *nl = strchr(c.err, '\n');
                bool more = nl && nl[1];
                if (nl)
                        *nl = '\0';
                _cleanup_free_ char *msg = qt_image_qemu_message(f, name, c.err);
                r = qt_error_set(e, QT_ERR_CORRUPT, EUCLEAN, "is corrupt (qemu-img check): %s%s",
                                 msg && msg[0] ? msg : "errors found",
                                 more ? " (and more errors)" : "");
        } else
                r = classify_open_failure(f, name, c.err, e);
        qt_command_done(&c);
        return r;
}

int qt_image_probe(const struct qt_image_file *f, const struct qt_format_claim *claim,
                   bool force_share, struct qt_image_info *ret, struct qt_error *e)
{
        int r = force_share ? 0 : check_qemu_locks(f, e);
        if (r < 0)
                return r;
        /* The format first, from what qtrim reads itself: qemu-img is told it, never asked. */
        enum qt_image_content content;
        r = qt_image_read_content(f->fd, &content);
        if (r < 0)
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot read: %s", strerror(-r));
        char format[16];
        enum qt_format_source source;
        r = qt_image_choose_format(f->path, claim, content, format, &source, e);
        if (r < 0)
                return r;
        char name[QT_QEMU_NAME_MAX];
        r = qt_image_qemu_name(f, NULL, false, name);
        if (r < 0)
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot name the image to qemu-img: %s",
                                    strerror(-r));

        char *argv[8] = {"qemu-img", "info", "--output=json"};
        size_t n = 3;
        if (format[0]) {
                argv[n++] = "-f";
                argv[n++] = format;
        }
        if (force_share)
                argv[n++] = "-U";
        argv[n++] = name;
        argv[n] = NULL;
        struct qt_command c = {.argv = argv};
        r = qt_command_run(&c);
        if (r < 0) {
                qt_command_done(&c);
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot run qemu-img: %s", strerror(-r));
        }
        if (c.status != 0)
                r = classify_open_failure(f, name, c.err, e);
        else
                r = qt_image_parse_info(c.out, ret, e);
        qt_command_done(&c);
        if (r < 0)
                return r;
        /* Undeclared and not qcow2 by content: qemu may name other formats (refused below), but
         * never qcow2, which the content ruled out a moment ago; if it does, the file changed. */
        if (!format[0] && strcmp(ret->format, "qcow2") == 0)
                return qt_error_set(e, QT_ERR_FORMAT_MISMATCH, EINVAL,
                                    "its content changed while qtrim looked at it; refusing");
        ret->format_source = source;

        if (strcmp(ret->format, "luks") == 0 || ret->encrypted)
                return qt_error_set(e, QT_ERR_ENCRYPTED, EPERM,
                                    "is encrypted; qtrim cannot read encrypted images");
        if (strcmp(ret->format, "qcow2") != 0 && strcmp(ret->format, "raw") != 0)
                return qt_error_set(e, QT_ERR_UNSUPPORTED, EOPNOTSUPP,
                                    "is a %s image; qtrim handles qcow2 and raw", ret->format);
        if (ret->has_data_file)
                return qt_error_set(
                    e, QT_ERR_UNSUPPORTED, EOPNOTSUPP,
                    "keeps its data in an external data file, which qtrim does not handle");
        /* What root opens on the image's word: local regular files only, and a chain that
         * ends. Before qemu-img check, which opens the chain. */
        if (ret->backing_file[0]) {
                r = check_backing_chain(f, ret->backing_file, ret->backing_format, e);
                if (r < 0)
                        return r;
        }
        if (ret->corrupt)
                return qt_error_set(e, QT_ERR_CORRUPT, EUCLEAN,
                                    "is marked corrupt; repair it with qemu-img check -r first");
        if (strcmp(ret->format, "raw") == 0)
                r = check_raw_content(f, &ret->blank, e);
        else
                r = check_qcow2_consistency(f, ret, force_share, e);
        if (r < 0 || force_share)
                return r;
        return check_writable(f, e);
}

struct map_walk {
        qt_extent_fn fn;
        void *userdata;
        bool host_only;
        bool bad; /* a line that is not an extent: the map cannot be trusted */
};

/* One line of `qemu-img map --output=json`: "[{ ... }," then "{ ... }," and "{ ... }]". */
static void on_map_line(const char *line, void *userdata)
{
        struct map_walk *w = userdata;
        const char *open = strchr(line, '{'), *close = strrchr(line, '}');
        if (!open || !close || close < open) {
                if (strspn(line, " []\r") != strlen(line))
                        w->bad = true;
                return;
        }
        char buf[512];
        size_t len = (size_t)(close - open) + 1;
        if (len >= sizeof(buf)) {
                w->bad = true;
                return;
        }
        memcpy(buf, open, len);
        buf[len] = '\0';
        struct json_object *e = json_tokener_parse(buf);
        if (!e || !json_object_is_type(e, json_type_object)) {
                w->bad = true;
                json_object_put(e);
                return;
        }
        if (get_bool(e, "data") && get_u64(e, "depth") == 0 &&
            !(w->host_only && get_bool(e, "zero")))
                w->fn(get_u64(e, "start"), get_u64(e, "length"), w->userdata);
        json_object_put(e);
}

int qt_image_map(const char *name, const char *format, bool host_only, qt_extent_fn fn,
                 void *userdata, struct qt_error *e)
{
        char *argv[] = {"qemu-img", "map",          "--output=json", "-U",
                        "-f",       (char *)format, (char *)name,    NULL};
        struct map_walk w = {.fn = fn, .userdata = userdata, .host_only = host_only};
        struct qt_command c = {.argv = argv, .on_line = on_map_line, .userdata = &w};
        int r = qt_command_run(&c);
        if (r >= 0 && (c.status != 0 || w.bad))
                r = qt_error_set(e, QT_ERR_FAILED, EIO, "qemu-img map failed: %s",
                                 c.status != 0 ? c.err : "unexpected output");
        else if (r < 0)
                r = qt_error_set(e, QT_ERR_FAILED, r, "cannot run qemu-img map: %s", strerror(-r));
        qt_command_done(&c);
        return r;
}

uint64_t qt_file_allocated(const struct stat *st)
{
        return (uint64_t)st->st_blocks * 512u;
}

int qt_image_lock_writers_out(const struct qt_image_file *f, struct qt_error *e)
{
        struct flock fl = {
            .l_type = F_RDLCK,
            .l_whence = SEEK_SET,
            .l_start = QEMU_LOCK_SHARED_BASE + QEMU_PERM_WRITE_BIT,
            .l_len = 1,
        };
        /* An open file of its own (qemu's protocol is OFD locks, held per open file), of the
         * inode inspected, not of whatever the path names now. */
        _cleanup_close_ int fd = open(f->by_fd, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot open: %m");
        if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
                return qt_error_set(e, QT_ERR_IN_USE, errno, "cannot take qemu's lock bytes: %m");
        return TAKE_FD(fd);
}

const char *qt_format_rule_format(const char *rule, size_t *ret_pattern_len)
{
        const char *colon = strrchr(rule, ':');
        if (!colon || colon == rule || !qt_format_is_known(colon + 1))
                return NULL;
        *ret_pattern_len = (size_t)(colon - rule);
        return colon + 1;
}

const char *qt_format_rules_match(const struct qt_format_rules *r, const char *path)
{
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        for (size_t i = 0; i < r->n; i++) {
                size_t len;
                const char *format = qt_format_rule_format(r->rules[i], &len);
                char pattern[PATH_MAX];
                if (!format || len >= sizeof(pattern))
                        continue;
                memcpy(pattern, r->rules[i], len);
                pattern[len] = '\0';
                bool whole_path = memchr(pattern, '/', len) != NULL;
                if (fnmatch(pattern, whole_path ? path : base, whole_path ? FNM_PATHNAME : 0) == 0)
                        return format;
        }
        return NULL;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Phases 6 and 7 on real images: the compact copy must be the same kind of image as the original
 * (qcow2 creation options, backing file, bitmaps), hold the same data, and take the original's
 * place only through one checked rename that keeps owner, mode and extended attributes.
 * Every image is made by qemu-img and read back by qemu-img, never by qtrim.
 */
#include <check.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <linux/posix_acl.h>
#include <linux/posix_acl_xattr.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "check-main.h"
#include "convert.h"
#include "fixtures.h"
#include "image.h"
#include "util.h"

#define MIB (1ULL << 20)

/* How the test makes each image's directory: name, then the shell that fills it. */
static void make_dir(char ret_dir[PATH_MAX], const char *name, const char *script)
{
        fx_sh("mkdir %1$s && cd %1$s && %2$s", name, script);
        fx_path(ret_dir, name);
}

/* As qtrim's inspect phase opens an image. */
static void open_image(const char *image, struct qt_image_file *ret)
{
        struct qt_error e = {};
        ck_assert_msg(qt_image_open(image, NULL, ret, &e) == 0, "open %s: %s", image, e.message);
}

/* As qtrim's inspect phase sees an image. */
static void probe(const char *image, struct qt_image_info *ret)
{
        _cleanup_(qt_image_file_close) struct qt_image_file f;
        struct qt_error e = {};
        open_image(image, &f);
        ck_assert_msg(qt_image_probe(&f, NULL, false, ret, &e) == 0, "probe %s: %s", image,
                      e.message);
}

/* As qemu-img itself describes an image, through the same parser. */
static void qemu_img_info(const char *image, struct qt_image_info *ret, char **ret_json)
{
        _cleanup_free_ char *json =
            fx_sh_output("qemu-img info --output=json -f qcow2 '%s'", image);
        struct qt_error e = {};
        ck_assert_msg(qt_image_parse_info(json, ret, &e) == 0, "%s", e.message);
        if (ret_json)
                *ret_json = TAKE_PTR(json);
}

struct progress {
        unsigned calls;
        double first, last;
        bool monotonic;
};

static void on_progress(double fraction, void *userdata)
{
        struct progress *p = userdata;
        if (p->calls++ == 0)
                p->first = fraction;
        else if (fraction < p->last)
                p->monotonic = false;
        p->last = fraction;
}

/* The temporary file beside image, then the copy in it. */
static void convert(const char *image, const struct qt_image_info *info, char tmp[PATH_MAX],
                    struct progress *progress)
{
        _cleanup_(qt_image_file_close) struct qt_image_file f;
        struct qt_error e = {};
        open_image(image, &f);
        ck_assert_msg(qt_convert_create_temp(image, tmp, &e) == 0, "%s", e.message);
        ck_assert(qt_convert_is_temp_of(image, tmp));
        ck_assert_msg(qt_convert_image(&f, info, tmp, on_progress, progress, &e) == 0, "%s",
                      e.message);
        ck_assert(!qt_error_is_set(&e));
}

/* The names in dir, sorted, separated by spaces. */
static char *list_dir(const char *dir)
{
        return fx_sh_output("cd '%s' && ls -A | tr '\\n' ' '", dir);
}

static const struct qcow2_case {
        const char *options;
        /* what qemu-img info then reports */
        uint64_t cluster_size;
        const char *compat, *compression_type;
        bool lazy_refcounts, extended_l2;
        unsigned refcount_bits;
} qcow2_cases[] = {
    {"cluster_size=131072,compression_type=zstd,lazy_refcounts=on,refcount_bits=32", 131072, "1.1",
     "zstd", true, false, 32},
    {"compat=0.10", 65536, "0.10", "zlib", false, false, 16},
    {"cluster_size=32768,extended_l2=on,refcount_bits=64", 32768, "1.1", "zlib", false, true, 64},
};

START_TEST(test_convert_keeps_qcow2_options)
{
        const struct qcow2_case *c = &qcow2_cases[_i];
        char dir[PATH_MAX], image[PATH_MAX], tmp[PATH_MAX], name[32];
        struct qt_image_info info, copy;
        struct progress progress = {.monotonic = true};

        snprintf(name, sizeof(name), "options-%d", _i);
        _cleanup_free_ char *script = NULL;
        ck_assert_int_ge(asprintf(&script,
                                  "qemu-img create -q -f qcow2 -o %s img.qcow2 16M && "
                                  "qemu-io -c 'write -P 0xab 1M 2M' -c 'write -P 0xcd 9M 64k' "
                                  "img.qcow2",
                                  c->options),
                         0);
        make_dir(dir, name, script);
        fx_join(image, dir, "img.qcow2");
        probe(image, &info);
        convert(image, &info, tmp, &progress);

        qemu_img_info(tmp, &copy, NULL);
        ck_assert_str_eq(copy.format, "qcow2");
        ck_assert_uint_eq(copy.virtual_size, 16 * MIB);
        ck_assert_uint_eq(copy.cluster_size, c->cluster_size);
        ck_assert_str_eq(copy.compat, c->compat);
        ck_assert_str_eq(copy.compression_type, c->compression_type);
        ck_assert_int_eq(copy.lazy_refcounts, c->lazy_refcounts);
        ck_assert_int_eq(copy.extended_l2, c->extended_l2);
        ck_assert_uint_eq(copy.refcount_bits, c->refcount_bits);
        /* and so the same as the original */
        ck_assert_uint_eq(copy.cluster_size, info.cluster_size);
        ck_assert_str_eq(copy.compat, info.compat);
        ck_assert_str_eq(copy.compression_type, info.compression_type);
        ck_assert_int_eq(copy.lazy_refcounts, info.lazy_refcounts);
        ck_assert_int_eq(copy.extended_l2, info.extended_l2);
        ck_assert_uint_eq(copy.refcount_bits, info.refcount_bits);

        ck_assert_uint_ge(progress.calls, 2);
        ck_assert(progress.monotonic);
        ck_assert_double_ge(progress.first, 0.0);
        ck_assert_double_eq_tol(progress.last, 1.0, 1e-9);
        fx_sh("qemu-img compare -q -f qcow2 -F qcow2 '%s' '%s'", image, tmp);
        ck_assert_int_eq(unlink(tmp), 0);
}
END_TEST

/* Bytes the image itself holds data for (depth 0), from qemu-img map. */
static uint64_t own_data_bytes(const char *image)
{
        _cleanup_free_ char *json = fx_sh_output("qemu-img map --output=json -f qcow2 '%s'", image);
        struct json_object *map = json_tokener_parse(json);
        ck_assert_msg(map && json_object_is_type(map, json_type_array), "%s", json);
        uint64_t bytes = 0;
        for (size_t i = 0; i < json_object_array_length(map); i++) {
                struct json_object *m = json_object_array_get_idx(map, i), *depth, *data, *length;
                ck_assert(json_object_object_get_ex(m, "depth", &depth));
                ck_assert(json_object_object_get_ex(m, "data", &data));
                ck_assert(json_object_object_get_ex(m, "length", &length));
                if (json_object_get_int(depth) == 0 && json_object_get_boolean(data))
                        bytes += (uint64_t)json_object_get_int64(length);
        }
        json_object_put(map);
        return bytes;
}

START_TEST(test_convert_keeps_backing_file)
{
        char dir[PATH_MAX], image[PATH_MAX], tmp[PATH_MAX];
        struct qt_image_info info, copy;
        struct progress progress = {.monotonic = true};

        /* The overlay names its base relatively, as images moved between hosts do. */
        make_dir(dir, "backing",
                 "qemu-img create -q -f qcow2 base.qcow2 16M && "
                 "qemu-io -c 'write -P 0xcd 0 4M' base.qcow2 && "
                 "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2 && "
                 "qemu-io -c 'write -P 0xab 1M 1M' overlay.qcow2");
        fx_join(image, dir, "overlay.qcow2");
        probe(image, &info);
        ck_assert_str_eq(info.backing_file, "base.qcow2");
        ck_assert_str_eq(info.backing_format, "qcow2");
        convert(image, &info, tmp, &progress);

        qemu_img_info(tmp, &copy, NULL);
        ck_assert_str_eq(copy.backing_file, "base.qcow2");
        ck_assert_str_eq(copy.backing_format, "qcow2");
        fx_sh("qemu-img compare -q -f qcow2 -F qcow2 '%s' '%s'", image, tmp);
        /* Only the overlay's own megabyte was copied; the base stays shared. */
        ck_assert_uint_eq(own_data_bytes(tmp), MIB);
        ck_assert_int_eq(unlink(tmp), 0);
}
END_TEST

/* "name/granularity/flags;..." of the image's persistent bitmaps, from qemu-img info. */
static void bitmaps_of(const char *image, char *buf, size_t size)
{
        struct qt_image_info info;
        _cleanup_free_ char *json = NULL;
        qemu_img_info(image, &info, &json);
        struct json_object *root = json_tokener_parse(json), *bitmaps;
        ck_assert_ptr_nonnull(root);
        ck_assert(json_pointer_get(root, "/format-specific/data/bitmaps", &bitmaps) == 0);
        buf[0] = '\0';
        for (size_t i = 0; i < json_object_array_length(bitmaps); i++) {
                struct json_object *b = json_object_array_get_idx(bitmaps, i), *v;
                size_t n = strlen(buf);
                ck_assert(json_object_object_get_ex(b, "name", &v));
                n += (size_t)snprintf(buf + n, size - n, "%s/", json_object_get_string(v));
                ck_assert(json_object_object_get_ex(b, "granularity", &v));
                n += (size_t)snprintf(buf + n, size - n, "%" PRId64 "/", json_object_get_int64(v));
                ck_assert(json_object_object_get_ex(b, "flags", &v));
                snprintf(buf + n, size - n, "%s;", json_object_to_json_string(v));
        }
        ck_assert_uint_eq(info.bitmaps, json_object_array_length(bitmaps));
        json_object_put(root);
}

START_TEST(test_convert_keeps_bitmaps)
{
        char dir[PATH_MAX], image[PATH_MAX], tmp[PATH_MAX], before[512], after[512];
        struct qt_image_info info, copy;
        struct progress progress = {.monotonic = true};

        make_dir(dir, "bitmaps",
                 "qemu-img create -q -f qcow2 img.qcow2 16M && "
                 "qemu-img bitmap --add img.qcow2 b0 && "
                 "qemu-img bitmap --add -g 131072 img.qcow2 backup-1 && "
                 "qemu-img bitmap --add --disable img.qcow2 frozen && "
                 "qemu-io -c 'write -P 0xab 2M 1M' img.qcow2");
        fx_join(image, dir, "img.qcow2");
        probe(image, &info);
        ck_assert_uint_eq(info.bitmaps, 3);
        convert(image, &info, tmp, &progress);

        qemu_img_info(tmp, &copy, NULL);
        ck_assert_uint_eq(copy.bitmaps, 3);
        bitmaps_of(image, before, sizeof(before));
        bitmaps_of(tmp, after, sizeof(after));
        ck_assert_str_eq(after, before);
        ck_assert_ptr_nonnull(strstr(after, "backup-1/131072/"));
        fx_sh("qemu-img compare -q -f qcow2 -F qcow2 '%s' '%s'", image, tmp);
        ck_assert_int_eq(unlink(tmp), 0);
}
END_TEST

/* An access ACL granting user 4321 read, in the kernel's xattr format; mode 0640 agrees. */
struct acl {
        struct posix_acl_xattr_header header;
        struct posix_acl_xattr_entry entries[5];
} __attribute__((packed));

static struct acl make_acl(void)
{
        static const struct {
                uint16_t tag, perm;
                uint32_t id;
        } entries[5] = {
            {ACL_USER_OBJ, ACL_READ | ACL_WRITE, (uint32_t)ACL_UNDEFINED_ID},
            {ACL_USER, ACL_READ, 4321},
            {ACL_GROUP_OBJ, ACL_READ, (uint32_t)ACL_UNDEFINED_ID},
            {ACL_MASK, ACL_READ, (uint32_t)ACL_UNDEFINED_ID},
            {ACL_OTHER, 0, (uint32_t)ACL_UNDEFINED_ID},
        };
        struct acl acl = {.header = {htole32(POSIX_ACL_XATTR_VERSION)}};
        for (size_t i = 0; i < ELEMENTSOF(entries); i++)
                acl.entries[i] = (struct posix_acl_xattr_entry){
                    htole16(entries[i].tag), htole16(entries[i].perm), htole32(entries[i].id)};
        return acl;
}

START_TEST(test_replace_keeps_owner_mode_xattrs)
{
        char dir[PATH_MAX], image[PATH_MAX], tmp[PATH_MAX], value[256];
        struct qt_image_info info;
        struct progress progress = {.monotonic = true};
        struct qt_error e = {};
        struct stat st, copy_st, old_st;
        struct acl acl = make_acl();

        make_dir(dir, "replace",
                 "qemu-img create -q -f qcow2 img.qcow2 16M && "
                 "qemu-io -c 'write -P 0xab 1M 2M' img.qcow2 && cp img.qcow2 ../replace-ref.qcow2");
        fx_join(image, dir, "img.qcow2");
        ck_assert_int_eq(chown(image, 1234, 5678), 0);
        ck_assert_int_eq(chmod(image, 0640), 0);
        ck_assert_int_eq(setxattr(image, "user.qtrim.test", "kept", 4, 0), 0);
        ck_assert_int_eq(setxattr(image, "system.posix_acl_access", &acl, sizeof(acl), 0), 0);

        int image_fd = open(image, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(image_fd, 0);
        ck_assert_int_eq(fstat(image_fd, &old_st), 0);
        probe(image, &info);
        convert(image, &info, tmp, &progress);
        ck_assert_int_eq(stat(tmp, &copy_st), 0);

        ck_assert_msg(qt_replace_image(image, image_fd, tmp, &info, &e) == 0, "%s", e.message);
        ck_assert(!qt_error_is_set(&e));
        ck_assert_int_eq(stat(image, &st), 0);
        ck_assert_uint_eq(st.st_ino, copy_st.st_ino);
        ck_assert_uint_eq(st.st_uid, 1234);
        ck_assert_uint_eq(st.st_gid, 5678);
        ck_assert_uint_eq(st.st_mode & 07777, 0640);
        ck_assert_int_eq(getxattr(image, "user.qtrim.test", value, sizeof(value)), 4);
        ck_assert_mem_eq(value, "kept", 4);
        ck_assert_int_eq(getxattr(image, "system.posix_acl_access", value, sizeof(value)),
                         sizeof(acl));
        ck_assert_mem_eq(value, &acl, sizeof(acl));

        /* The original is unlinked, held only by image_fd; no temporary file is left. */
        ck_assert_int_eq(fstat(image_fd, &old_st), 0);
        ck_assert_uint_eq(old_st.st_nlink, 0);
        ck_assert_int_eq(close(image_fd), 0);
        _cleanup_free_ char *names = list_dir(dir);
        ck_assert_str_eq(names, "img.qcow2 ");
        fx_sh("qemu-img compare -q -f qcow2 -F qcow2 replace-ref.qcow2 '%s'", image);
}
END_TEST

START_TEST(test_replace_refuses_swapped_file)
{
        char dir[PATH_MAX], image[PATH_MAX], tmp[PATH_MAX];
        struct qt_image_info info;
        struct progress progress = {.monotonic = true};
        struct qt_error e = {};
        struct stat swapped_st, tmp_st, st;

        make_dir(dir, "swapped",
                 "qemu-img create -q -f qcow2 img.qcow2 16M && "
                 "qemu-io -c 'write -P 0xab 1M 2M' img.qcow2 && "
                 "qemu-img create -q -f qcow2 other.qcow2 16M && "
                 "qemu-io -c 'write -P 0x77 0 1M' other.qcow2 && "
                 "cp other.qcow2 ../swapped-other.qcow2");
        fx_join(image, dir, "img.qcow2");
        int image_fd = open(image, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(image_fd, 0);
        probe(image, &info);
        convert(image, &info, tmp, &progress);
        fx_sh("cp '%s' swapped-copy.qcow2", tmp);

        /* Someone puts another image in its place while qtrim works. */
        fx_sh("cd swapped && mv other.qcow2 img.qcow2");
        ck_assert_int_eq(stat(image, &swapped_st), 0);
        ck_assert_int_eq(stat(tmp, &tmp_st), 0);

        ck_assert_int_eq(qt_replace_image(image, image_fd, tmp, &info, &e), -ESTALE);
        ck_assert_int_eq(e.code, QT_ERR_FAILED);
        ck_assert_str_eq(e.message, "was replaced by another file while qtrim worked on it");

        /* Both files as they were: same inodes, bytes, owner and mode. */
        ck_assert_int_eq(stat(image, &st), 0);
        ck_assert_uint_eq(st.st_ino, swapped_st.st_ino);
        ck_assert_uint_eq(st.st_mode, swapped_st.st_mode);
        fx_sh("cmp swapped-other.qcow2 swapped/img.qcow2");
        ck_assert_int_eq(stat(tmp, &st), 0);
        ck_assert_uint_eq(st.st_ino, tmp_st.st_ino);
        ck_assert_uint_eq(st.st_mode & 07777, 0600);
        ck_assert_uint_eq(st.st_uid, 0);
        fx_sh("cmp swapped-copy.qcow2 '%s'", tmp);
        ck_assert_int_eq(close(image_fd), 0);
        ck_assert_int_eq(unlink(tmp), 0);
}
END_TEST

/* A copy of another format, or a raw copy of another length, never replaces an image: a VM told
 * (or probing) the original's format must see the same disk. */
START_TEST(test_replace_refuses_other_format)
{
        char dir[PATH_MAX], image[PATH_MAX], tmp[PATH_MAX];
        struct qt_error e = {};

        make_dir(dir, "format",
                 "truncate -s 16M img.raw && qemu-img create -q -f qcow2 ../format-h.qcow2 1M && "
                 "truncate -s 16M .img.raw.qtrim-q2 && "
                 "dd if=../format-h.qcow2 of=.img.raw.qtrim-q2 conv=notrunc status=none && "
                 "truncate -s 17M .img.raw.qtrim-long && cp img.raw ../format-ref.raw");
        fx_join(image, dir, "img.raw");
        struct qt_image_info info = {.format = "raw", .virtual_size = 16u << 20};
        int image_fd = open(image, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(image_fd, 0);

        /* Raw bytes of the same length, but a qcow2 header first: what a VM probing it sees. */
        fx_join(tmp, dir, ".img.raw.qtrim-q2");
        ck_assert_int_lt(qt_replace_image(image, image_fd, tmp, &info, &e), 0);
        ck_assert_str_eq(e.message, "the copy is not a raw image like the original; not replacing");
        e = (struct qt_error){};
        fx_join(tmp, dir, ".img.raw.qtrim-long");
        ck_assert_int_lt(qt_replace_image(image, image_fd, tmp, &info, &e), 0);
        ck_assert_str_eq(e.message,
                         "the copy differs from the image (virtual size or backing file)");
        fx_sh("cmp format-ref.raw format/img.raw");
        ck_assert_int_eq(close(image_fd), 0);
}
END_TEST

START_TEST(test_convert_failure)
{
        char dir[PATH_MAX], image[PATH_MAX], tmp[PATH_MAX];
        struct qt_image_info info;
        struct progress progress = {.monotonic = true};
        struct qt_error e = {};

        make_dir(dir, "failure",
                 "qemu-img create -q -f qcow2 base.qcow2 16M && "
                 "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2");
        fx_join(image, dir, "overlay.qcow2");
        probe(image, &info);
        snprintf(info.backing_format, sizeof(info.backing_format), "bogus");

        _cleanup_(qt_image_file_close) struct qt_image_file f;
        open_image(image, &f);
        ck_assert_msg(qt_convert_create_temp(image, tmp, &e) == 0, "%s", e.message);
        ck_assert_int_lt(qt_convert_image(&f, &info, tmp, on_progress, &progress, &e), 0);
        ck_assert_int_eq(e.code, QT_ERR_FAILED);
        ck_assert_msg(strncmp(e.message, "qemu-img convert failed: ",
                              strlen("qemu-img convert failed: ")) == 0 &&
                          strstr(e.message, "bogus"),
                      "message: %s", e.message);
        /* Removing the temporary file is the caller's part (qemu-img may have done it already
         * when creating the copy failed); then nothing is left behind. */
        ck_assert(qt_convert_is_temp_of(image, tmp));
        if (unlink(tmp) < 0)
                ck_assert_int_eq(errno, ENOENT);
        _cleanup_free_ char *names = list_dir(dir);
        ck_assert_str_eq(names, "base.qcow2 overlay.qcow2 ");
}
END_TEST

START_TEST(test_temp_file_names)
{
        char tmp[PATH_MAX];
        struct qt_error e = {};
        struct stat st;
        char image[PATH_MAX];

        fx_path(image, "missing/vm.qcow2");
        ck_assert_int_lt(qt_convert_create_temp(image, tmp, &e), 0);
        ck_assert_str_eq(tmp, "");
        ck_assert(qt_error_is_set(&e));

        char real[PATH_MAX], prefix[PATH_MAX];
        fx_path(real, "vm.qcow2");
        e = (struct qt_error){};
        ck_assert_msg(qt_convert_create_temp(real, tmp, &e) == 0, "%s", e.message);
        fx_path(prefix, ".vm.qcow2.qtrim-");
        ck_assert_uint_eq(strlen(tmp), strlen(prefix) + 6);
        ck_assert(strncmp(tmp, prefix, strlen(prefix)) == 0);
        ck_assert_int_eq(stat(tmp, &st), 0);
        ck_assert(S_ISREG(st.st_mode));
        ck_assert_uint_eq(st.st_mode & 07777, 0600);
        ck_assert_int_eq(st.st_size, 0);
        ck_assert(qt_convert_is_temp_of(real, tmp));
        ck_assert_int_eq(unlink(tmp), 0);
}
END_TEST

/* Everything after the open reaches the file opened, whatever the path names by then: the
 * probe, qemu-img check and the copy read the original overlay (relative backing file and a
 * name with quotes and commas, which the json: name qemu is given must carry), while another
 * image has taken its path. */
START_TEST(test_image_reached_by_fd)
{
        char dir[PATH_MAX], image[PATH_MAX], tmp[PATH_MAX], moved[PATH_MAX];
        struct qt_image_info info, copy;
        struct progress progress = {.monotonic = true};
        _cleanup_(qt_image_file_close) struct qt_image_file f;
        struct qt_error e = {};

        make_dir(dir, "by-fd",
                 "qemu-img create -q -f qcow2 base.qcow2 16M && "
                 "qemu-io -c 'write -P 0xcd 0 4M' base.qcow2 && "
                 "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 'o,v\"e\\r.qcow2' && "
                 "qemu-io -c 'write -P 0xab 1M 1M' 'o,v\"e\\r.qcow2' && "
                 "qemu-img create -q -f qcow2 other.qcow2 16M && "
                 "qemu-io -c 'write -P 0x11 0 2M' other.qcow2");
        fx_join(image, dir, "o,v\"e\\r.qcow2");
        fx_join(moved, dir, "moved.qcow2");
        open_image(image, &f);
        fx_sh("cd '%s' && mv 'o,v\"e\\r.qcow2' moved.qcow2 && cp other.qcow2 'o,v\"e\\r.qcow2'",
              dir);
        ck_assert_msg(qt_image_probe(&f, NULL, false, &info, &e) == 0, "%s", e.message);
        ck_assert_str_eq(info.backing_file, "base.qcow2");
        ck_assert_msg(qt_convert_create_temp(image, tmp, &e) == 0, "%s", e.message);
        ck_assert_msg(qt_convert_image(&f, &info, tmp, on_progress, &progress, &e) == 0, "%s",
                      e.message);
        qemu_img_info(tmp, &copy, NULL);
        ck_assert_str_eq(copy.backing_file, "base.qcow2");
        fx_sh("qemu-img compare -q -f qcow2 -F qcow2 '%s' '%s'", moved, tmp);
        ck_assert_uint_eq(own_data_bytes(tmp), MIB);
        ck_assert_int_eq(unlink(tmp), 0);

        /* qemu's words name the image by its path, never by the name qtrim gave qemu. */
        snprintf(info.backing_format, sizeof(info.backing_format), "bogus");
        ck_assert_msg(qt_convert_create_temp(image, tmp, &e) == 0, "%s", e.message);
        ck_assert_int_lt(qt_convert_image(&f, &info, tmp, on_progress, &progress, &e), 0);
        ck_assert_msg(!strstr(e.message, "json:") && !strstr(e.message, "/proc/"), "%s", e.message);
        unlink(tmp);
}
END_TEST

/* What the open refuses: a link (the path was resolved by qtrimd, a link now is a swap), and a
 * file that is not the one qtrimd resolved. */
START_TEST(test_image_open_refusals)
{
        char image[PATH_MAX], link[PATH_MAX];
        struct qt_image_file f;
        struct stat st;
        struct qt_error e = {};

        fx_sh("qemu-img create -q -f qcow2 '%s/open.qcow2' 1M && ln -s open.qcow2 '%s/link.qcow2'",
              fx_scratch, fx_scratch);
        fx_path(image, "open.qcow2");
        fx_path(link, "link.qcow2");
        ck_assert_int_lt(qt_image_open(link, NULL, &f, &e), 0);
        ck_assert_int_eq(e.code, QT_ERR_NOT_REGULAR);
        ck_assert_int_eq(f.fd, -1);

        ck_assert_int_eq(stat("/proc/self/exe", &st), 0);
        e = (struct qt_error){};
        ck_assert_int_lt(qt_image_open(image, &st, &f, &e), 0);
        ck_assert_msg(strstr(e.message, "replaced by another file"), "%s", e.message);
        ck_assert_int_eq(f.fd, -1);

        ck_assert_int_eq(stat(image, &st), 0);
        e = (struct qt_error){};
        ck_assert_msg(qt_image_open(image, &st, &f, &e) == 0, "%s", e.message);
        ck_assert_int_ge(f.fd, 0);
        qt_image_file_close(&f);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("convert");
        TCase *tc = tcase_create("copy");
        tcase_add_unchecked_fixture(tc, fx_scratch_setup, fx_scratch_teardown);
        tcase_set_timeout(tc, 20); /* each takes well under a second */
        tcase_add_loop_test(tc, test_convert_keeps_qcow2_options, 0, ELEMENTSOF(qcow2_cases));
        tcase_add_test(tc, test_convert_keeps_backing_file);
        tcase_add_test(tc, test_convert_keeps_bitmaps);
        tcase_add_test(tc, test_replace_keeps_owner_mode_xattrs);
        tcase_add_test(tc, test_replace_refuses_swapped_file);
        tcase_add_test(tc, test_replace_refuses_other_format);
        tcase_add_test(tc, test_convert_failure);
        tcase_add_test(tc, test_image_reached_by_fd);
        tcase_add_test(tc, test_image_open_refusals);
        tcase_add_test(tc, test_temp_file_names);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

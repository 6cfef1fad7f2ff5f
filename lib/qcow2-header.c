/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "qcow2-header.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The header's fields, big-endian (qemu's docs/interop/qcow2.txt). */
#define QCOW2_MAGIC             "QFI\xfb"
#define OFF_VERSION             4
#define OFF_BACKING_FILE_OFFSET 8
#define OFF_BACKING_FILE_SIZE   16
#define OFF_CLUSTER_BITS        20
#define OFF_HEADER_LENGTH       100 /* v3 only */
#define HEADER_V2_SIZE          72
#define HEADER_V3_MIN_SIZE      104
/* qemu's MIN_CLUSTER_BITS and MAX_CLUSTER_BITS */
#define CLUSTER_BITS_MIN     9
#define CLUSTER_BITS_MAX     21
#define BACKING_NAME_LEN_MAX (QT_QCOW2_BACKING_NAME_MAX - 1)

static uint32_t be32(const uint8_t *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p)
{
        return (uint64_t)be32(p) << 32 | be32(p + 4);
}

int qt_qcow2_backing_name(const uint8_t *buf, size_t len, char *ret, size_t ret_size)
{
        /* The fixed part of the header first: every field read below lies within it. */
        if (!buf || len < HEADER_V2_SIZE || memcmp(buf, QCOW2_MAGIC, 4) != 0)
                return -EINVAL;
        uint32_t version = be32(buf + OFF_VERSION);
        if (version != 2 && version != 3)
                return -EINVAL;
        uint32_t cluster_bits = be32(buf + OFF_CLUSTER_BITS);
        if (cluster_bits < CLUSTER_BITS_MIN || cluster_bits > CLUSTER_BITS_MAX)
                return -EINVAL;
        uint64_t cluster_size = UINT64_C(1) << cluster_bits;
        if (version == 3) {
                if (len < HEADER_V3_MIN_SIZE)
                        return -EINVAL;
                uint32_t header_length = be32(buf + OFF_HEADER_LENGTH);
                if (header_length < HEADER_V3_MIN_SIZE || header_length > cluster_size)
                        return -EINVAL;
        }

        uint64_t offset = be64(buf + OFF_BACKING_FILE_OFFSET);
        uint32_t size = be32(buf + OFF_BACKING_FILE_SIZE);
        if (offset == 0) {
                if (ret && ret_size > 0)
                        ret[0] = '\0';
                return 0;
        }
        /* As qemu checks them: the name lies within the first cluster and is at most 1023 bytes
         * long. Both bounds are small, so the sums below cannot overflow. */
        if (size == 0 || size > BACKING_NAME_LEN_MAX || offset > cluster_size ||
            size > cluster_size - offset)
                return -EINVAL;
        if (offset > len || size > len - offset)
                return -EINVAL;
        const uint8_t *name = buf + offset;
        if (memchr(name, '\0', size))
                return -EINVAL;
        if (!ret || ret_size <= size)
                return -ENOBUFS;
        memcpy(ret, name, size);
        ret[size] = '\0';
        return 1;
}

/*
 * The file qemu opens as the backing file `name` of the image at `of`: an absolute name as is,
 * a relative one from the directory of `of` as given (qemu does not resolve symlinks first).
 * A name with a protocol ("nbd:", "json:{...}", anything before a ':' and the first '/') is not
 * a local file: -EPROTONOSUPPORT. Except "file:", qemu's local-file protocol, which qemu strips;
 * qemu resolves a relative name after it from its own working directory, which cannot be known
 * here: the overlay's directory is the likely one (whoever wrote such a name worked there).
 */
int qt_qcow2_backing_path(const char *of, const char *name, char ret[PATH_MAX])
{
        if (strncmp(name, "file:", 5) == 0)
                name += 5;
        else if (name[strcspn(name, ":/")] == ':')
                return -EPROTONOSUPPORT;
        int n;
        if (name[0] == '/')
                n = snprintf(ret, PATH_MAX, "%s", name);
        else {
                const char *slash = strrchr(of, '/');
                int dir_len = slash ? (int)(slash - of + 1) : 0;
                n = snprintf(ret, PATH_MAX, "%.*s%s", dir_len, of, name);
        }
        return n >= 0 && n < PATH_MAX ? 0 : -ENAMETOOLONG;
}

ssize_t qt_qcow2_read_header(int fd, uint8_t *buf)
{
        size_t got = 0;
        while (got < QT_QCOW2_HEADER_READ_SIZE) {
                ssize_t n = pread(fd, buf + got, QT_QCOW2_HEADER_READ_SIZE - got, (off_t)got);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        break;
                got += (size_t)n;
        }
        return (ssize_t)got;
}

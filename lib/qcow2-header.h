/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The one thing qtrim reads from a qcow2 header itself, without qemu-img: the name of the
 * image's backing file, to find the images that read through to the one qtrim would mount
 * read-write (see overlays.h). Pure and bounds-checked: fuzzed.
 */
#pragma once

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* qemu refuses backing file names longer than 1023 bytes; with the NUL, ret_size this big
 * always suffices. */
#define QT_QCOW2_BACKING_NAME_MAX 1024

/* What a caller reads from the start of a file before parsing it. qemu requires the name to lie
 * within the first cluster (512 B to 2 MiB); qemu-img writes it right after the header and its
 * extensions, a few hundred bytes in, so in practice it lies within the first 64 KiB. A name
 * beyond that is reported as -EINVAL (outside buf) and such an image is not recognised. */
#define QT_QCOW2_HEADER_READ_SIZE (64u * 1024u)

/* Reads up to QT_QCOW2_HEADER_READ_SIZE bytes from the start of fd into buf: how many, or a
 * negative errno. */
ssize_t qt_qcow2_read_header(int fd, uint8_t *buf);

/*
 * Reads the backing file name from the start of a qcow2 file, buf[0..len), as qemu reads it.
 * Returns:
 *   1        the image has a backing file; its name, NUL-terminated, is in ret
 *   0        the image has none; ret is "" (if ret_size > 0)
 *   -EINVAL  buf is not a qcow2 (v2 or v3) header, or its backing file fields are inconsistent:
 *            the name lies outside buf or its first cluster, its size is 0 or over 1023, or it
 *            contains a NUL
 *   -ENOBUFS the name does not fit in ret (ret_size <= its length); ret is left untouched
 * Reads nothing outside [buf, buf + len); ret is only written on success.
 */
int qt_qcow2_backing_name(const uint8_t *buf, size_t len, char *ret, size_t ret_size);

/* The local file qemu opens as the backing file `name` of the image at `of`: an absolute name
 * as is, a relative one from the directory of `of` ("file:" stripped). Returns 0, or
 * -EPROTONOSUPPORT for a name with a protocol ("nbd:", "json:{...}"), -ENAMETOOLONG. */
int qt_qcow2_backing_path(const char *of, const char *name, char ret[PATH_MAX]);

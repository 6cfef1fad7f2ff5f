/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Phase 1, inspect: is this a disk image qtrim may work on, and what does it look like? Also
 * the host-side facts of the image file (allocation) and the qemu-compatible lock that keeps a
 * VM from starting on an image while qtrim still works on it.
 */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "error.h"

#define QT_IMAGE_STRING_MAX 4096
/* Backing files qtrim follows from an image; a longer chain is refused (qemu has no bound). */
#define QT_BACKING_CHAIN_MAX 256

/* Formats= of qtrimd.conf: "PATTERN:FORMAT" rules; the first whose pattern matches an image
 * decides its format ("raw", "qcow2"). A pattern with a '/' matches the whole path, others the
 * file name. */
#define QT_FORMAT_RULES_MAX 16

struct qt_format_rules {
        char *rules[QT_FORMAT_RULES_MAX];
        size_t n;
};

/* The format a rule names (what follows its last colon, so a pattern may hold colons), and its
 * pattern's length; NULL for a rule without a known format or without a pattern. */
const char *qt_format_rule_format(const char *rule, size_t *ret_pattern_len);
/* The format the rules give the image at path (absolute, resolved), NULL if none matches. */
const char *qt_format_rules_match(const struct qt_format_rules *r, const char *path);

/* Where the format qtrim opens an image with came from (README, "Disk formats"). */
enum qt_format_source {
        QT_FORMAT_GUESSED,  /* nothing declared it: read from the content, in the safe direction */
        QT_FORMAT_DECLARED, /* the caller: the "format" option, qtrimctl --format */
        QT_FORMAT_CONFIGURED, /* qtrimd.conf's Formats= */
};

/* What the caller and the configuration say an image's format is: "raw", "qcow2", or NULL for
 * nothing said. */
struct qt_format_claim {
        const char *declared;
        const char *configured;
};

struct qt_image_info {
        char format[16]; /* "qcow2", "raw": the format every qemu tool is told (-f) */
        enum qt_format_source format_source;
        uint64_t virtual_size;
        uint64_t cluster_size;                  /* qcow2 */
        char backing_file[QT_IMAGE_STRING_MAX]; /* as recorded in the image, "" if none */
        char backing_format[16];
        unsigned snapshots; /* internal snapshots (qcow2) */
        unsigned bitmaps;   /* persistent dirty bitmaps (qcow2) */
        bool encrypted, corrupt, has_data_file;
        bool blank; /* raw, no partition table, no filesystem, all zeroes: nothing to trim */
        /* qcow2 creation options, to give the converted copy the same ones */
        char compat[8];
        char compression_type[8];
        bool lazy_refcounts, extended_l2;
        unsigned refcount_bits;
};

/* The path must be absolute, exist and be a regular file. follow: a symbolic link is followed
 * (as the caller named it); otherwise it is refused (a resolved path that became a link since).
 * Fills ret_st. */
int qt_image_check_path(const char *path, bool follow, struct stat *ret_st, struct qt_error *e);

/*
 * The image as a worker holds it from inspection on: opened once by its path, then reached only
 * through that open file (qtrim's own reads, and every qemu tool by by_fd, the same inode), so
 * a path swapped for another file meanwhile cannot put that file in its place. The path stays
 * for messages, the directory beside it and the final rename, which checks it still names st.
 */
struct qt_image_file {
        const char *path; /* absolute, resolved by qtrimd */
        int fd;           /* read-only, close-on-exec; -1 when closed */
        struct stat st;
        char by_fd[48]; /* "/proc/PID/fd/N": opens this inode for any process of the worker */
};

/* Opens the image at path (qt_image_check_path without following links, then the open file
 * checked to be what was looked at). expected: the file qtrimd resolved and authorized (dev
 * and inode), or NULL; another file at the path now is refused. */
int qt_image_open(const char *path, const struct stat *expected, struct qt_image_file *ret,
                  struct qt_error *e);
void qt_image_file_close(struct qt_image_file *f);

/* A json: filename can be long: the image's by_fd and a backing path, escaped. */
#define QT_QEMU_NAME_MAX (2 * PATH_MAX + 256)

/*
 * The name a qemu tool is given for the image: a json: filename over f->by_fd (format: -f
 * says it, as before). chain: for tools that open the backing chain (check, map, convert,
 * qemu-nbd), the image's backing file named explicitly, resolved beside f->path as qemu
 * would, since qemu looks for a relative backing file beside the name it opened; NULL for
 * qemu-img info, which does not open it. no_locking: without qemu's locks (read-only
 * inspection of an image in use). -ENAMETOOLONG if it does not fit.
 */
int qt_image_qemu_name(const struct qt_image_file *f, const struct qt_image_info *chain,
                       bool no_locking, char buf[QT_QEMU_NAME_MAX]);

/* A qemu tool's message with the name it was given (qt_image_qemu_name) put back as the image's
 * path, for the user; malloc'd, NULL when out of memory. */
char *qt_image_qemu_message(const struct qt_image_file *f, const char *name, const char *msg);

/* Whether a format name is one qtrim handles ("raw", "qcow2"). */
bool qt_format_is_known(const char *format);
const char *qt_format_source_name(enum qt_format_source source);

/* What a file's first bytes say it is. */
enum qt_image_content {
        QT_CONTENT_OTHER,      /* no qcow2 magic: a raw disk, or another format qemu may know */
        QT_CONTENT_QCOW2,      /* a qcow2 header qemu's qcow2 driver reads (version 2 or 3) */
        QT_CONTENT_QCOW_MAGIC, /* qemu's "QFI\xfb" magic with another version (qcow 1, or junk) */
};
enum qt_image_content qt_image_content_of(const uint8_t *buf, size_t len);
/* Reads the first bytes of the file at fd and classifies them; a negative errno on failure. */
int qt_image_read_content(int fd, enum qt_image_content *ret);

/*
 * Decides the format an image is opened with, before any qemu tool opens it (a format qemu
 * probes is one the guest chose: a raw disk whose guest wrote a qcow2 header would be opened
 * as qcow2, backing file and all). Pure; unit-tested. The rules:
 *   - a declared and a configured format must agree;
 *   - a declared or configured format must match the content: qcow2 needs a qcow2 header, raw
 *     must not start with qemu's qcow magic;
 *   - with nothing declared, a qcow2 header makes the image qcow2 unless its name says raw
 *     (.raw, .img, .bin): then nothing may be guessed.
 * Each refusal is QT_ERR_FORMAT_MISMATCH with a message that says what to do. On success
 * ret_format is "raw" or "qcow2", or "" when nothing declared it and the content is not qcow2:
 * qemu-img may probe then, and only "raw" is accepted from it.
 */
int qt_image_choose_format(const char *path, const struct qt_format_claim *claim,
                           enum qt_image_content content, char ret_format[16],
                           enum qt_format_source *ret_source, struct qt_error *e);

/* Whether a file that nobody declared may be read as qcow2 at all, by the rules above:
 * configured ("raw", "qcow2" or NULL) decides if set, else the name. For the files qtrim reads
 * beside an image (overlays.h), which no caller declared. */
bool qt_image_may_be_qcow2(const char *path, const char *configured);

/* Parses `qemu-img info --output=json` (no backing chain). Pure: no I/O; fuzzed. */
int qt_image_parse_info(const char *json, struct qt_image_info *ret, struct qt_error *e);

/* Refuses an image another process uses as qemu does (qemu's lock bytes: a writer, or a reader
 * that forbids writers) with ImageInUse; runs qemu-img info without -U, then
 * refuses what qtrim must not touch: other formats, encryption, a backing chain that is not all
 * local regular files or that loops (followed by qtrim itself, before qemu opens it), corruption
 * (qemu-img check for qcow2; a qcow2 header qemu cannot read), a raw file with neither a
 * partition table nor a filesystem, and a file that cannot be opened for writing. force_share
 * (read-only inspection) reads without qemu's lock, so an image in use can still be looked at,
 * and does not ask for write access. The format is chosen first (qt_image_choose_format), and
 * is the one every qemu tool is given from then on. */
int qt_image_probe(const struct qt_image_file *f, const struct qt_format_claim *claim,
                   bool force_share, struct qt_image_info *ret, struct qt_error *e);

/* Called for each range of the virtual disk whose data this image file itself holds. */
typedef void (*qt_extent_fn)(uint64_t offset, uint64_t length, void *userdata);

/* Walks `qemu-img map` of the image (name: qt_image_qemu_name with its chain; read without
 * qemu's lock, in the format given), one extent at a time, so its size is not bounded by what
 * fits in memory. Extents that read through to a backing file, or read as zeroes without data,
 * are not this file's and are not reported. host_only: nor are clusters the image maps where
 * the host file has a hole (qemu says data and zero: preallocated metadata, a sparse copy),
 * which hold no host bytes; a discard of them still frees the image's own metadata. */
int qt_image_map(const char *name, const char *format, bool host_only, qt_extent_fn fn,
                 void *userdata, struct qt_error *e);

/* Bytes the host has allocated to the file (st_blocks * 512). */
uint64_t qt_file_allocated(const struct stat *st);

/*
 * Takes qemu's "write is not shared" lock on the image (an OFD lock on byte 201, the protocol
 * of qemu's file-posix driver), so a VM that starts while qtrim converts and replaces the image
 * fails to open it, as it would if another qemu held it. Call it while qemu-nbd runs: qemu-nbd
 * checks the lock only when it opens the image. Returns the fd holding the lock.
 */
int qt_image_lock_writers_out(const struct qt_image_file *f, struct qt_error *e);

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What a job has found and done so far, and the line protocol that carries it from the worker
 * process to qtrimd. The worker emits one line per change ("key\tvalue\n"); the daemon applies
 * each line to its own copy of struct qt_report and publishes the D-Bus property the field
 * table names. One table describes every field, so the two sides cannot drift apart.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "phase.h"

#define QT_FS_NAME_MAX     128 /* "vg/lv" cut to fit; discovery keeps names unique */
#define QT_FS_KIND_MAX     16
#define QT_FS_LABEL_MAX    64 /* ext4 16, xfs 12, btrfs 256 (cut), swap 16, vfat 11 */
#define QT_FS_UUID_MAX     40
#define QT_FS_TYPE_MAX     32
#define QT_FS_STATE_MAX    16
#define QT_FS_MESSAGE_MAX  200
#define QT_MAX_FILESYSTEMS 64

/* One range of the disk, bytes. */
struct qt_range {
        uint64_t offset, size;
};

/* An LV's segments may lie in several places of the disk; lvextend makes a few at most. */
#define QT_FS_EXTENTS_MAX 16

/* One volume of the guest disk: a partition, the whole disk, a logical volume, or space that
 * belongs to nothing (a gap outside the partitions, a VG's free extents). */
struct qt_fs_result {
        char name[QT_FS_NAME_MAX]; /* "p1", "p5", "disk", "gap1" */
        char kind[QT_FS_KIND_MAX]; /* "partition", "disk", "lv", "gap", "free" (VG extents) */
        int partno;                /* kind "partition": its number in the table; not reported */
        char fstype[QT_FS_TYPE_MAX];
        char method[QT_FS_KIND_MAX]; /* qt_trim_method_name(): "mount", "swap", "discard", "skip" */
        char label[QT_FS_LABEL_MAX]; /* as blkid reads them, "" if none */
        char uuid[QT_FS_UUID_MAX];
        uint64_t offset, size, trimmed;
        /* n_extents 0: the volume is [offset, +size) of the disk. Else its bytes are these
         * ranges of the disk, in order (offset is then the first one's, size their sum). The
         * worker's alone: not in the line protocol or on D-Bus. */
        struct qt_range extents[QT_FS_EXTENTS_MAX];
        unsigned n_extents;
        /* "found", "trimmed" (FITRIM), "discarded" (freed directly), "skipped", "failed" */
        char state[QT_FS_STATE_MAX];
        char message[QT_FS_MESSAGE_MAX];
        /* Inspect's estimate (estimate.h), when asked: the guest's used and free bytes, and what
         * the image holds of the free ones in whole clusters (what a shrink gives back). */
        uint64_t used, free, reclaimable;
};

/* The ranges of the disk that bytes [from, fs->size) of volume fs are, in the volume's order;
 * returns how many (at most QT_FS_EXTENTS_MAX, 0 when from is past the end). */
size_t qt_fs_disk_ranges(const struct qt_fs_result *fs, uint64_t from,
                         struct qt_range ret[QT_FS_EXTENTS_MAX]);

#define QT_REPORT_STRING_MAX 4096

/* The image states of struct qt_report (the Job's ImageState). */
#define QT_IMAGE_UNTOUCHED "untouched"
#define QT_IMAGE_TRIMMED   "trimmed"
#define QT_IMAGE_COMPACTED "compacted"

struct qt_report {
        /* Inspect */
        char format[16];
        char format_source[16]; /* qt_format_source_name() */
        uint64_t virtual_size;
        uint64_t bytes_before, apparent_before; /* host allocation and st_size */
        uint64_t cluster_size;
        char backing_file[QT_REPORT_STRING_MAX];
        char backing_format[16];
        uint32_t snapshots, bitmaps;
        char partition_table[16];
        bool estimated; /* fs[].used, free and reclaimable are Inspect's estimate */

        /* Progress */
        enum qt_phase phase;
        double progress; /* 0..1 over the whole job */
        uint64_t phase_usec[_QT_PHASE_MAX];

        /* Outcome */
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        size_t n_fs;
        uint64_t bytes_trimmed;
        uint64_t bytes_after, apparent_after;
        bool converted;
        /* What was written to the image: QT_IMAGE_UNTOUCHED until the trim begins, then
         * QT_IMAGE_TRIMMED, QT_IMAGE_COMPACTED once the compact copy replaced it. */
        char image_state[16];
        bool nothing_to_trim; /* a blank disk: done without writing anything */
        char message[QT_REPORT_STRING_MAX];
        /* The compact copy while it exists: whoever sees the worker die deletes it. */
        char temp_file[QT_REPORT_STRING_MAX];
        /* The attach path the job took: "kernel" or "fuse" ("" before the attach). */
        char attach_backend[8];
        /* The nbd device the worker holds ("/dev/nbd3", "" when none) and the kernel's owner of
         * its connection (its pid attribute): what qtrimd makes sure is released when the worker
         * dies attached (see nbd-kernel.h). The owner is sent first. */
        char nbd_device[32];
        uint64_t nbd_owner;
        struct qt_error error;
        bool finished; /* the worker said "end": anything after it is ignored */
};

/* Worker side: where events go. fd < 0 discards them (a report kept only in memory). */
struct qt_reporter {
        int fd;
        struct qt_report report; /* the worker's own view, updated by every emit */
};

void qt_emit_phase(struct qt_reporter *r, enum qt_phase phase);
void qt_emit_progress(struct qt_reporter *r, double fraction);
void qt_emit_phase_time(struct qt_reporter *r, enum qt_phase phase, uint64_t usec);
void qt_emit_fs(struct qt_reporter *r, const struct qt_fs_result *fs);
/* The estimate of a volume emitted with qt_emit_fs before: its used, free, reclaimable. */
void qt_emit_estimate(struct qt_reporter *r, const struct qt_fs_result *fs);
void qt_emit_error(struct qt_reporter *r, const struct qt_error *e);
void qt_emit_end(struct qt_reporter *r);
/* The scalar fields, by protocol key ("bytes-before", "message", ...); see report.c's table. */
void qt_emit_u64(struct qt_reporter *r, const char *key, uint64_t value);
void qt_emit_str(struct qt_reporter *r, const char *key, const char *value);

/* Daemon side. Applies one line (without its newline) to a report. Returns the D-Bus property
 * the line changed (e.g. "BytesBefore"), NULL if none is exposed, or an error: -EBADMSG for a
 * line that does not parse. The filesystem list changes "Filesystems". */
int qt_report_apply_line(struct qt_report *report, const char *line, const char **ret_property);

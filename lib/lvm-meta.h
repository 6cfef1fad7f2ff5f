/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A reader of the LVM2 on-disk format, to find the logical volumes inside a guest's physical
 * volumes without the host's LVM: no lvm tool, no device-mapper, nothing written. The guest
 * wrote every byte read here, so everything is bounded and checked, and the parsers are pure
 * (fuzzed). Two steps: qt_lvm_read_label() reads what one PV says about itself and the newest
 * VG metadata text it holds; qt_lvm_parse_metadata() turns that text into the VG's PVs and LVs
 * and validates them, so that a caller may map each LV to PV extents and discard the free ones.
 * Not thread-safe per object; the functions keep no state of their own.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The caps every input is held to. Beyond them the input is refused as -EUCLEAN, never read
 * in part. lvm2's own default metadata area is 1 MiB, of which the text may use half. */
#define QT_LVM_METADATA_MAX  (1024u * 1024u) /* bytes of metadata text */
#define QT_LVM_DEPTH_MAX     8               /* nesting of sections; a VG uses 5 */
#define QT_LVM_PVS_MAX       1024
#define QT_LVM_LVS_MAX       8192
#define QT_LVM_SEGMENTS_MAX  65536 /* in all LVs together */
#define QT_LVM_AREAS_MAX     65536 /* PV extent ranges, in all segments together */
#define QT_LVM_STRING_MAX    16384 /* bytes of one string value */
#define QT_LVM_NAME_MAX      128   /* lvm2's NAME_LEN, with the NUL */
#define QT_LVM_UUID_LEN      32    /* without lvm2's dashes */
#define QT_LVM_SECTOR_SIZE   512
#define QT_LVM_LABEL_SECTORS 4 /* the label lies in one of the first four */

/* Reads len bytes at offset of the device holding the PV into buf: 0, or a negative errno. A
 * short read (the end of the device) is an error; the reader checks offsets against the device
 * size before it asks. */
typedef int (*qt_lvm_read_fn)(void *ctx, void *buf, size_t len, uint64_t offset);

/* What one PV says about itself: its label, pv_header and metadata areas. */
struct qt_lvm_pv_label {
        char pv_uuid[QT_LVM_UUID_LEN + 1]; /* as in the label: 32 characters, no dashes */
        uint64_t device_size;              /* bytes, as the pv_header says */
        uint64_t data_offset;              /* bytes: the first data area (pe_start) */
        char *metadata;      /* the newest metadata text, NUL-terminated; NULL when the PV has
                                no metadata area or none in use */
        size_t metadata_len; /* up to its first NUL */
};

/*
 * Reads the LVM2 label of the device of device_size bytes read through read(ctx), its
 * pv_header and the committed metadata text of each metadata area (lvm2 writes at most two;
 * when both hold text and it differs, the one with the higher seqno wins). Returns:
 *   1        a PV; ret is filled (release it with qt_lvm_pv_label_done())
 *   0        no LVM label in sectors 0..3 (or a device shorter than one sector)
 *   -EUCLEAN a damaged or hostile PV; why says what: a label or mda header whose crc fails, a
 *            label of another type, pv_header lists past the label sector, areas past the
 *            device, an mda header that disagrees with the label, metadata over
 *            QT_LVM_METADATA_MAX or outside its area, text whose crc fails
 *   -ENOMEM
 *   <0       what read() returned
 * ret is written only on 1. why (may be NULL) is set on -EUCLEAN.
 */
int qt_lvm_read_label(qt_lvm_read_fn read, void *ctx, uint64_t device_size,
                      struct qt_lvm_pv_label *ret, char *why, size_t why_size);
/* Frees what qt_lvm_read_label() allocated; NULL-safe, idempotent. */
void qt_lvm_pv_label_done(struct qt_lvm_pv_label *l);

/* What qtrim may do with an LV: trim the filesystem of a visible LINEAR one only. */
enum {
        QT_LVM_LV_LINEAR,    /* segments of type "striped" with one stripe each, on PVs */
        QT_LVM_LV_STRIPED,   /* "striped" with more than one stripe */
        QT_LVM_LV_THIN,      /* "thin": its blocks live in a pool */
        QT_LVM_LV_THIN_POOL, /* "thin-pool" */
        QT_LVM_LV_SNAPSHOT,  /* "snapshot", or the linear COW store a snapshot names */
        QT_LVM_LV_ORIGIN,    /* linear, but the origin of a snapshot or of a thin LV: a discard
                                that bypasses them would change what they see */
        QT_LVM_LV_RAID,      /* "raid0", "raid1", "raid5_ls", ... */
        QT_LVM_LV_MIRROR,    /* "mirror" (also pvmove's) */
        QT_LVM_LV_CACHE,     /* "cache", "cache-pool", "writecache" */
        QT_LVM_LV_COMPONENT, /* linear, but another LV is built on it (a pool's data or
                                metadata, a raid or mirror image, a cached origin) */
        QT_LVM_LV_OTHER,     /* anything else ("vdo", "integrity", "error", a segment over an
                                LV rather than a PV, ...) */
};

/* One segment of a LINEAR LV: extents [start_extent, +extent_count) of the LV are extents
 * [pv_start_extent, +extent_count) of vg->pvs[pv]. */
struct qt_lvm_segment {
        uint64_t start_extent, extent_count;
        unsigned pv;
        uint64_t pv_start_extent;
};

struct qt_lvm_lv {
        char name[QT_LVM_NAME_MAX];
        bool visible;      /* "VISIBLE" in its status; hidden ones are parts of others */
        int kind;          /* QT_LVM_LV_* */
        char segtype[32];  /* of the first non-linear segment, for the skip message; "" when
                              LINEAR or COMPONENT/ORIGIN/SNAPSHOT by reference ("striped") */
        size_t n_segments; /* LINEAR only (0 otherwise), sorted, contiguous from extent 0 */
        struct qt_lvm_segment *segments;
};

struct qt_lvm_pv {
        char id[QT_LVM_NAME_MAX];       /* the section's name: "pv0" */
        char uuid[QT_LVM_UUID_LEN + 1]; /* dashes removed, to match a label's pv_uuid */
        uint64_t pe_start;              /* sectors, as in the text */
        uint64_t pe_count;
        uint64_t dev_size; /* sectors, 0 when the text does not say */
};

/* Extents of a PV that one segment area uses, whatever the segment type. */
struct qt_lvm_area {
        unsigned pv, lv; /* indexes into vg->pvs and vg->lvs */
        uint64_t start, count;
};

struct qt_lvm_extent_range {
        uint64_t start, count;
};

struct qt_lvm_vg {
        char name[QT_LVM_NAME_MAX];
        char uuid[QT_LVM_UUID_LEN + 1];
        uint64_t seqno;
        uint64_t extent_size; /* sectors */
        size_t n_pvs, n_lvs, n_areas;
        struct qt_lvm_pv *pvs;
        struct qt_lvm_lv *lvs;
        struct qt_lvm_area *areas; /* sorted by pv, then start; no two overlap */
};

/*
 * Parses and validates the metadata text of one VG, text[0..len) (the lvm2 text format: `key =
 * value`, `name { ... }` sections, "strings", integers, [lists], # comments; the text ends at
 * len or at its first NUL). Returns:
 *   0        ret is filled (release it with qt_lvm_vg_done())
 *   -EUCLEAN why says what: a syntax error (with its line), nesting, a count or a string over
 *            the caps above, a missing or duplicate key, an extent_size lvm2 does not allow, a
 *            segment past its PV's pe_count, segments of an LV with gaps or overlaps, two
 *            segment areas on the same PV extents, a reference to an unknown PV or LV, a PV
 *            named outside an area list, sizes in bytes that overflow 64 bits
 *   -ENOMEM
 * ret is written only on 0. why (may be NULL) is set on -EUCLEAN.
 */
int qt_lvm_parse_metadata(const char *text, size_t len, struct qt_lvm_vg *ret, char *why,
                          size_t why_size);
/* Frees what qt_lvm_parse_metadata() allocated; NULL-safe, idempotent. */
void qt_lvm_vg_done(struct qt_lvm_vg *vg);

/* The extents of vg->pvs[pv] that no segment of any LV uses (of any type, hidden or not), as
 * sorted ranges in *ret (malloc'd; NULL when there are none). Returns how many, -EINVAL for a
 * pv out of range, or -ENOMEM. */
ssize_t qt_lvm_free_extents(const struct qt_lvm_vg *vg, unsigned pv,
                            struct qt_lvm_extent_range **ret);

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The parts of a guest disk that hold no filesystem and that qtrim reads itself, without
 * mounting: swap areas (whose header page carries the label and UUID a guest's fstab names)
 * and the space outside every partition. Pure and bounds-checked: these read the guest's bytes
 * and are fuzzed.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "report.h"

/* What qtrim reads from the start of a swap area: enough for a 64 KiB page size. */
#define QT_SWAP_HEADER_READ_SIZE (64u * 1024u)

enum qt_swap_state {
        QT_SWAP_NONE,       /* no swap signature at the end of any page size's first page */
        QT_SWAP_AREA,       /* a swap area: everything after its header page is free */
        QT_SWAP_HIBERNATED, /* a hibernation image lives in it: not one byte may change */
};

/*
 * Reads the first bytes of a swap area, buf[0..len). The signature sits in the last 10 bytes of
 * the first page, whose size is the guest's page size (4 KiB on x86, up to 64 KiB elsewhere):
 * "SWAPSPACE2" or "SWAP-SPACE" for a swap area, the signatures of the kernel's and uswsusp's
 * hibernation ("S1SUSPEND", "S2SUSPEND", "ULSUSPEND", "LINHIB0001") for a hibernated one.
 * ret_header: the header page's length (the page size where the signature sits), for an area.
 */
enum qt_swap_state qt_swap_parse(const uint8_t *buf, size_t len, uint64_t *ret_header);

/* Where the GPT's backup lives: everything from the returned offset to the end of the disk is
 * the backup header and its entries (and any space after the last usable sector). Reads the
 * primary header from hdr (the disk's first 8 KiB: LBA 1 at 512 or at 4096 bytes). Returns
 * false if the header is missing or makes no sense: then no gap may be discarded. */
#define QT_GPT_HEADER_READ_SIZE 8192u
bool qt_gpt_tail(const uint8_t *hdr, size_t len, uint64_t disk_size, uint64_t *ret_tail);

/* Reads the 512-byte sector at offset of the disk: 0 or a negative errno. */
typedef int (*qt_sector_read_fn)(void *ctx, uint8_t buf[512], uint64_t offset);

/*
 * Follows the chain of EBRs (the boot records that describe the logical partitions of an MBR
 * extended partition) from the extended partition at [offset, +size): each EBR's byte offset
 * goes into ret, at most max. Stops at the end of the chain, at an EBR without the 0x55AA
 * signature, at a link outside the extended partition or back to an EBR already seen. Returns
 * how many were found; the caller compares with the logical partitions libblkid found, and
 * takes the whole extended partition as used space when they disagree.
 */
size_t qt_mbr_ebr_chain(qt_sector_read_fn read, void *ctx, uint64_t offset, uint64_t size,
                        uint64_t *ret, size_t max);

/* Gaps smaller than this are alignment padding: left alone, not worth a request. */
#define QT_GAP_MIN  (64u * 1024u)
#define QT_GAPS_MAX 64

/*
 * The space outside the partitions that may be discarded: from the end of the first-starting
 * partition to end, minus every used range. used[]: every partition (and extended container:
 * its EBRs live in it, so none of it is a gap) as found, overlapping or not; ranges past end are
 * cut. Nothing before the first partition (boot code, the partition table, GRUB's embedding
 * area) is ever a gap. end: the disk size (dos) or the GPT tail (gpt). Gaps below QT_GAP_MIN
 * are dropped, the others aligned inwards to 512-byte sectors. Returns how many went into gaps.
 */
size_t qt_layout_gaps(const struct qt_range *used, size_t n_used, uint64_t end,
                      struct qt_range gaps[QT_GAPS_MAX]);

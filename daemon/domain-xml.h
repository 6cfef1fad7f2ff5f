/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What a libvirt domain's XML says about its disks, and what qtrim makes of it: which disks a
 * shrink takes (and why not the others) and whether the guest's discards reach each image. Pure:
 * no libvirt, no I/O, so it is tested on XML text alone. Runs in the child that talks to libvirt
 * (domain.c), never in qtrimd's event loop.
 */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#define DOMAIN_MAX_DISKS 64

struct domain_disk {
        char target[32];       /* <target dev=>: "vda", "sdb" */
        char device[16];       /* <disk device=>: "disk" (the default), "cdrom", "floppy", "lun" */
        char bus[16];          /* <target bus=>: "virtio", "scsi", "sata", "ide", ... */
        char type[16];         /* <disk type=>: "file" (the default), "block", "network", ... */
        char source[PATH_MAX]; /* the file, or a volume's path once resolved; "" when none */
        char pool[256];        /* type "volume": <source pool= volume=> */
        char volume[256];
        char format[16];        /* <driver type=>; "" when the XML does not say */
        char discard[16];       /* <driver discard=>; "" when unset (libvirt's default: ignore) */
        char detect_zeroes[16]; /* <driver detect_zeroes=>; "" when unset */
        bool readonly, shareable;
        /* For a running domain's disk: its discard in the domain's definition (the inactive
         * XML), which takes effect at the next start. */
        bool has_defined_discard;
        char defined_discard[16];
        char skip[256];    /* why a shrink leaves it alone, "" when it takes it */
        char verdict[512]; /* whether the guest's discards reach the image; "" for a CD-ROM */
};

/* Reads the <disk> elements of a domain's XML (len bytes) into disks (at most max). Returns 0
 * with their number in *ret_n, or -EINVAL with why for text that is not a domain's XML, or -E2BIG
 * for more than max disks. */
int domain_xml_read_disks(const char *xml, size_t len, struct domain_disk *disks, unsigned max,
                          unsigned *ret_n, char *why, size_t why_size);

/* Sets d->skip (unless already set, e.g. an unresolved volume) and d->verdict. domain names it
 * in the advice; hypervisor_version is QEMU's as libvirt reports it (major * 1000000 + minor *
 * 1000 + micro), 0 if unknown; active: the domain runs (its XML is the live one). */
void domain_disk_judge(struct domain_disk *d, const char *domain,
                       unsigned long long hypervisor_version, bool active);

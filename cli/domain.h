/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimctl inspect --domain and shrink --domain: a libvirt domain's disks, by the domain's name
 * (qtrimd asks libvirt; InspectDomain and ShrinkDomain in org.qtrim1.xml).
 */
#pragma once

#include <stdbool.h>
#include <systemd/sd-bus.h>

struct shrink_options;

/* Prints the domain's state and, per disk, its bus, format, discard settings, source and the
 * verdict on whether the guest's discards reach it (or a skip reason), as a table or JSON.
 * Returns EXIT_SUCCESS or a negative errno (already reported). */
int inspect_domain(sd_bus *bus, const char *name, bool json);

/* Queues a shrink of each disk of a shut-off domain, says which disks are skipped and why and
 * which were refused, then follows the jobs as shrink does (opts->convert, keep_gaps, json,
 * block). Returns wait_jobs()'s exit status, EXIT_FAILURE if a disk was refused, or a negative
 * errno (reported) when the domain could not be shrunk at all. */
int shrink_domain(sd_bus *bus, const char *name, const struct shrink_options *opts);

/* Which libvirt domains use which image files (ListDomainImages). */
struct domain_image {
        char *image; /* canonical */
        char *domain;
        char *state; /* virsh's words: "running", "shut off", ... */
};
struct domain_images {
        bool known; /* false: qtrimd has no libvirt support, or libvirt could not be asked */
        struct domain_image *items;
        size_t n;
};

/* Asks qtrimd. Never fails the caller's work: when libvirt cannot be asked, *ret is not known
 * (and the reason goes to stderr only with --verbose). Returns 0 or -ENOMEM. */
int domain_images_load(sd_bus *bus, struct domain_images *ret);
void domain_images_done(struct domain_images *l);
/* The first record from *i on that names image (any path to it, as qtrimd lists them
 * canonical), with *i past it; NULL when there is none left. */
const struct domain_image *domain_images_next(const struct domain_images *l, const char *image,
                                              size_t *i);
/* The domains that use image, as "web01 (running), web02 (shut off)"; "" for none. Returns the
 * number of domains. */
size_t domain_images_describe(const struct domain_images *l, const char *image, char *buf,
                              size_t size);

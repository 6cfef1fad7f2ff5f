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

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimctl shrink: queues one qtrimd job per image, then follows the jobs to their end with a
 * progress display on stderr and reports each image's result.
 */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-bus.h>

/* What a sweep adds up over its batches of images. */
struct domain_images;

struct shrink_totals {
        unsigned shrunk, skipped, failed, canceled;
        unsigned online;          /* domains whose guests trimmed online (SweepOnline=) */
        int64_t reclaimed;        /* host bytes, over the images that were shrunk */
        struct json_object *json; /* --json: an array each image's object is added to */
};

struct shrink_options {
        bool block;         /* wait for the jobs and report them, rather than print their paths */
        bool convert;       /* let qtrimd write a compact copy after the trim */
        bool json;          /* report as a JSON array on stdout */
        const char *format; /* declared for every image ("raw", "qcow2"), NULL: not declared */
        bool keep_gaps;     /* leave the space outside the partitions alone */
        bool dry_run;       /* only print the estimate of what a shrink would give back */
        bool online;        /* --domain: the domain runs, its guest trims through its agent */
        /* The images come from a sweep: each is shrunk only if written to since qtrim last
         * shrank it, and a refusal that means "not now" (in use, unchanged, a backing file,
         * already queued) is a skip, not a failure. Results are added to *totals. */
        bool sweep;
        struct shrink_totals *totals;
        /* A sweep: which domains use which images, so an image in use names its domain. */
        const struct domain_images *domains;
};

/* Returns EXIT_SUCCESS if every image was shrunk (or, in a sweep, skipped), EXIT_FAILURE if any
 * was refused or failed, EXIT_CANCELED if none of those but some were canceled, or a negative
 * errno (already reported) if qtrimctl itself could not go on. */
int shrink_images(sd_bus *bus, char **images, size_t n_images, const struct shrink_options *opts);

/* qtrimctl wait: follows jobs that exist already (object paths) to their end and reports them
 * as shrink does, with the same exit statuses; a job that does not exist is a failure. An
 * interrupt stops the waiting and leaves the jobs alone. */
int wait_jobs(sd_bus *bus, char **paths, size_t n_paths, bool json);
/* The same for jobs a command queued: opts->json, and opts->totals (a sweep: the outcomes are
 * added there rather than printed as JSON; opts->online: the jobs are online trims, each a
 * domain). */
int follow_job_paths(sd_bus *bus, char **paths, size_t n_paths, const struct shrink_options *opts);

/* qtrimctl shrink --all: every image in qtrimd's ImageDirectories whose name matches its
 * SweepPatterns, one line each and a summary. EXIT_FAILURE if any failed. */
int sweep_image_directories(sd_bus *bus, const struct shrink_options *opts);

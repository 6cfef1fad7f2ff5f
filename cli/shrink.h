/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimctl shrink: queues one qtrimd job per image, then follows the jobs to their end with a
 * progress display on stderr and reports each image's result.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <systemd/sd-bus.h>

struct shrink_options {
        bool block;   /* wait for the jobs and report them, rather than print their paths */
        bool convert; /* let qtrimd write a compact copy after the trim */
        bool json;    /* report as a JSON array on stdout */
};

/* Returns EXIT_SUCCESS if every image was shrunk, EXIT_FAILURE if any was refused, failed or was
 * canceled, or a negative errno (already reported) if qtrimctl itself could not go on. */
int shrink_images(sd_bus *bus, char **images, size_t n_images, const struct shrink_options *opts);

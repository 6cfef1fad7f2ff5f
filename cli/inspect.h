/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimctl inspect: asks qtrimd to describe one image without changing it and prints the answer.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <systemd/sd-bus.h>

struct shrink_options;

/* Inspects the image named by argument (made absolute here), format declared or NULL, with the
 * estimate of what a shrink would give back. Prints a table, or JSON on stdout. Returns
 * EXIT_SUCCESS or a negative errno (already reported). */
int inspect_image(sd_bus *bus, const char *argument, const char *format, bool json);

/* shrink --dry-run: per image "IMG: ≈ N reclaimable of A allocated (would be ≈ B)", or with
 * opts->json one JSON array of {image, allocated_bytes, reclaimable_bytes, would_be_bytes,
 * volumes: [{name, used_bytes, free_bytes, reclaimable_bytes}]}; opts->format is declared for
 * every image, opts->keep_gaps counts the gaps out, and with opts->sweep an image unchanged since
 * qtrim last shrank it is "IMG: skipped: WHY" ({image, skipped: WHY} in JSON), as the sweep
 * would skip it. Nothing is changed. Returns EXIT_SUCCESS, or
 * EXIT_FAILURE if any image could not be inspected (each reported as "qtrimctl: IMG: ..."), or a
 * negative errno (reported) if qtrimctl itself could not go on. */
int estimate_images(sd_bus *bus, char **images, size_t n_images, const struct shrink_options *opts);

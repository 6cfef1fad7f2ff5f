/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimctl inspect: asks qtrimd to describe one image without changing it and prints the answer.
 */
#pragma once

#include <stdbool.h>
#include <systemd/sd-bus.h>

/* Inspects the image named by argument (made absolute here), format declared or NULL. Prints a
 * table, or JSON on stdout. Returns EXIT_SUCCESS or a negative errno (already reported). */
int inspect_image(sd_bus *bus, const char *argument, const char *format, bool json);

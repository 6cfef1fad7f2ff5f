/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the Manager and Job objects both put on or take from the bus. */
#pragma once

#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "report.h"

/* Appends report's filesystems as QTRIM_FS_ARRAY_SIGNATURE. */
int bus_append_filesystems(sd_bus_message *m, const struct qt_report *report);
/* The effective uid of the caller of msg. */
int bus_sender_uid(sd_bus_message *msg, uid_t *ret);

/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What the Manager and Job objects both put on or take from the bus. */
#pragma once

#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "report.h"

/* Appends report's filesystems as QTRIM_FS_ARRAY_SIGNATURE. */
int bus_append_filesystems(sd_bus_message *m, const struct qt_report *report);
/* Asks the bus driver for the uid of msg's sender (GetConnectionUnixUser) without waiting:
 * qtrimd's loop serves others meanwhile. on_reply gets the answer, read with
 * bus_read_sender_uid(). */
int bus_ask_sender_uid(sd_bus_message *msg, sd_bus_message_handler_t on_reply, void *userdata,
                       sd_bus_slot **ret_slot);
/* The uid in that answer; a negative errno for an error (the caller left the bus). */
int bus_read_sender_uid(sd_bus_message *reply, uid_t *ret);

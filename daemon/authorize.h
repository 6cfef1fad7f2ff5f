/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Who may make qtrimd act. Root may do anything. Any other caller needs polkit's yes for the
 * action (org.qtrim1.shrink, org.qtrim1.cancel-any); without polkit on the bus, nobody else
 * may. polkit may have to ask the user for a password, so the answer comes later, from the
 * event loop.
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#define QTRIM_ACTION_SHRINK     "org.qtrim1.shrink"
#define QTRIM_ACTION_CANCEL_ANY "org.qtrim1.cancel-any"

/* allowed, or why not ("polkit is not running: ...", "not authorized"). */
typedef void (*authorize_done_fn)(bool allowed, const char *why, void *userdata);

/* uid is the caller's (bus_ask_sender_uid(), asked once per call, without waiting).
 * Returns 1 when it is root (allowed, done is not called), 0 when polkit was asked (done is
 * called with its answer unless *ret_slot is unreferenced first), or a negative errno. image, if
 * not NULL, is passed to polkit as the detail "image" for rules to look at. */
int authorize(sd_bus_message *call, uid_t uid, const char *action, const char *image,
              authorize_done_fn done, void *userdata, sd_bus_slot **ret_slot);

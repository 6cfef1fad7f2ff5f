/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "bus-util.h"

#include <errno.h>

#include "dbus-api.h"

int bus_append_filesystems(sd_bus_message *m, const struct qt_report *report)
{
        int r = sd_bus_message_open_container(m, 'a', QTRIM_FS_SIGNATURE);
        for (size_t i = 0; r >= 0 && i < report->n_fs; i++) {
                const struct qt_fs_result *fs = &report->fs[i];
                r = sd_bus_message_append(m, QTRIM_FS_SIGNATURE, fs->name, fs->fstype, fs->offset,
                                          fs->size, fs->trimmed, fs->state, fs->message, fs->kind,
                                          fs->method, fs->label, fs->uuid);
        }
        return r < 0 ? r : sd_bus_message_close_container(m);
}

int bus_ask_sender_uid(sd_bus_message *msg, sd_bus_message_handler_t on_reply, void *userdata,
                       sd_bus_slot **ret_slot)
{
        return sd_bus_call_method_async(sd_bus_message_get_bus(msg), ret_slot,
                                        "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                        "org.freedesktop.DBus", "GetConnectionUnixUser", on_reply,
                                        userdata, "s", sd_bus_message_get_sender(msg));
}

int bus_read_sender_uid(sd_bus_message *reply, uid_t *ret)
{
        const sd_bus_error *e = sd_bus_message_get_error(reply);
        if (e)
                return -sd_bus_error_get_errno(e) ?: -ESRCH;
        uint32_t uid;
        int r = sd_bus_message_read(reply, "u", &uid);
        if (r >= 0)
                *ret = uid;
        return r;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "bus-util.h"

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

int bus_sender_uid(sd_bus_message *msg, uid_t *ret)
{
        sd_bus_creds *creds = NULL;
        int r = sd_bus_query_sender_creds(msg, SD_BUS_CREDS_EUID, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, ret);
        sd_bus_creds_unref(creds);
        return r;
}

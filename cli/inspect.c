/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimctl inspect: what qtrimd found in an image, as a table or JSON.
 */
#include "inspect.h"

#include <errno.h>
#include <string.h>
#include <sys/param.h>

#include "common.h"
#include "dbus-api.h"
#include "util.h"

/* The basic types a value of Inspect's "info" may have; others are left out of the output. */
union basic_value {
        int b;
        int32_t i;
        uint32_t u;
        int64_t x;
        uint64_t t;
        double d;
        const char *s;
};

static struct json_object *basic_value_to_json(char type, const union basic_value *v)
{
        switch (type) {
        case 'b':
                return json_object_new_boolean(v->b);
        case 'i':
                return json_object_new_int64(v->i);
        case 'u':
                return json_object_new_int64(v->u);
        case 'x':
                return json_object_new_int64(v->x);
        case 't':
                return json_object_new_uint64(v->t);
        case 'd':
                return json_object_new_double(v->d);
        default: /* 's', 'o', 'g': read_info_value() lets nothing else through */
                return json_object_new_string(v->s);
        }
}

/* Keeps every key of "info", including keys a newer qtrimd adds, for --json. */
static int read_info_value(sd_bus_message *m, const char *key, void *userdata)
{
        struct json_object *info = userdata;
        union basic_value value;
        const char *contents;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (strlen(contents) != 1 || !strchr("biuxtdsog", contents[0]))
                return sd_bus_message_skip(m, "v");

        r = sd_bus_message_enter_container(m, 'v', contents);
        if (r < 0)
                return r;
        r = sd_bus_message_read_basic(m, contents[0], &value);
        if (r < 0)
                return r;
        json_object_object_add(info, key, basic_value_to_json(contents[0], &value));
        return sd_bus_message_exit_container(m);
}

static const struct info_line {
        const char *key;
        const char *label;
        bool bytes;
        bool only_if_set; /* left out when empty or zero, e.g. no backing file */
} info_lines[] = {
    {"Format", "Format:", false, false},
    {"FormatSource", "Format from:", false, false},
    {"VirtualSize", "Virtual size:", true, false},
    {"AllocatedBytes", "Allocated:", true, false},
    {"ApparentSize", "Apparent size:", true, false},
    {"ClusterSize", "Cluster size:", true, true},
    {"BackingFile", "Backing file:", false, true},
    {"BackingFormat", "Backing format:", false, true},
    {"Snapshots", "Snapshots:", false, false},
    {"Bitmaps", "Bitmaps:", false, false},
    {"PartitionTable", "Partition table:", false, false},
};

static bool json_value_is_unset(struct json_object *value)
{
        if (json_object_is_type(value, json_type_string))
                return json_object_get_string_len(value) == 0;
        return json_object_get_uint64(value) == 0;
}

static void print_image_info(struct json_object *info)
{
        for (size_t i = 0; i < ELEMENTSOF(info_lines); i++) {
                const struct info_line *line = &info_lines[i];
                char bytes[FORMAT_BYTES_MAX];
                struct json_object *value;

                if (!json_object_object_get_ex(info, line->key, &value))
                        continue;
                if (line->only_if_set && json_value_is_unset(value))
                        continue;
                printf("%-17s%s\n", line->label,
                       line->bytes ? format_bytes(bytes, json_object_get_uint64(value))
                                   : json_object_get_string(value));
        }
}

static void print_filesystem_table(const struct filesystem_list *filesystems)
{
        int name_width = (int)strlen("NAME"), fstype_width = (int)strlen("FSTYPE");

        printf("\n");
        if (filesystems->n == 0) {
                printf("No filesystems found.\n");
                return;
        }

        for (size_t i = 0; i < filesystems->n; i++) {
                name_width = MAX(name_width, (int)strlen(filesystems->items[i].name));
                fstype_width = MAX(fstype_width, (int)strlen(filesystems->items[i].fstype));
        }

        printf("%-*s  %-*s  %10s  %10s  %s\n", name_width, "NAME", fstype_width, "FSTYPE", "OFFSET",
               "SIZE", "A SHRINK WOULD");
        for (size_t i = 0; i < filesystems->n; i++) {
                const struct filesystem *fs = &filesystems->items[i];
                char offset[FORMAT_BYTES_MAX], size[FORMAT_BYTES_MAX];

                printf("%-*s  %-*s  %10s  %10s  %s\n", name_width, fs->name, fstype_width,
                       *fs->fstype ? fs->fstype : "-", format_bytes(offset, fs->offset),
                       format_bytes(size, fs->size), fs->message);
        }
}

static void print_inspect_json(struct json_object *info, const struct filesystem_list *filesystems)
{
        _cleanup_(json_object_putp) struct json_object *o = json_object_new_object();

        json_object_object_add(o, "info", json_object_get(info));
        json_object_object_add(o, "filesystems", filesystems_to_json(filesystems));
        json_print(o);
}

int inspect_image(sd_bus *bus, const char *argument, const char *format, bool json)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(json_object_putp) struct json_object *info = json_object_new_object();
        _cleanup_(filesystem_list_done) struct filesystem_list filesystems = {};
        _cleanup_free_ char *image = NULL;
        int r;

        if (!info)
                return log_errno(-ENOMEM, "failed to inspect %s", argument);

        r = image_path_absolute(argument, &image);
        if (r < 0)
                return log_errno(r, "failed to make %s an absolute path", argument);

        r = bus_call_method(bus, argument, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE, "Inspect", NULL,
                            &reply, "sa{sv}", image, format ? 1 : 0, QTRIM_OPT_FORMAT, "s", format);
        if (r < 0)
                return r;

        r = bus_read_dict(reply, read_info_value, info);
        if (r >= 0)
                r = bus_read_filesystems(reply, &filesystems);
        if (r < 0)
                return log_errno(r, "failed to read the reply to Inspect");

        if (json)
                print_inspect_json(info, &filesystems);
        else {
                print_image_info(info);
                print_filesystem_table(&filesystems);
        }
        return EXIT_SUCCESS;
}

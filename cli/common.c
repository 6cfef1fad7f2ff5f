/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <systemd/sd-bus-protocol.h>

#include "dbus-api.h"
#include "error.h"
#include "util.h"

/* Inspect and Shrink check the image before they reply, which can take a while. */
#define METHOD_CALL_TIMEOUT_USEC (120 * UINT64_C(1000000))

int log_errno(int r, const char *fmt, ...)
{
        va_list ap;

        fputs("qtrimctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, ": %s\n", strerror(-r));
        return r;
}

void print_bus_error(const sd_bus_error *error, int r, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        if (sd_bus_error_is_set(error))
                fprintf(stderr, ": %s (%s)\n", error->message ?: "no message", error->name);
        else
                fprintf(stderr, ": %s\n", strerror(-r));
}

int bus_connect(sd_bus **ret_bus)
{
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        r = sd_bus_open_system(&bus);
        if (r < 0)
                return log_errno(r, "failed to connect to the system bus");

        r = sd_bus_set_method_call_timeout(bus, METHOD_CALL_TIMEOUT_USEC);
        if (r < 0)
                return log_errno(r, "failed to set the method call timeout");

        /* Someone at a terminal can answer a polkit agent's password prompt. */
        r = sd_bus_set_allow_interactive_authorization(bus, isatty(STDIN_FILENO));
        if (r < 0)
                return log_errno(r, "failed to allow interactive authorization");

        *ret_bus = TAKE_PTR(bus);
        return 0;
}

int bus_call_method(sd_bus *bus, const char *what, const char *path, const char *interface,
                    const char *member, sd_bus_error *ret_error, sd_bus_message **ret_reply,
                    const char *types, ...)
{
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;
        int r;

        va_start(ap, types);
        r = sd_bus_call_methodv(bus, QTRIM_BUS_NAME, path, interface, member, &error, ret_reply,
                                types, ap);
        va_end(ap);
        if (r < 0) {
                if (what)
                        print_bus_error(&error, r, "%s", what);
                if (ret_error)
                        sd_bus_error_move(ret_error, &error);
        }
        return r;
}

bool bus_error_is_job_gone(const sd_bus_error *error)
{
        return sd_bus_error_has_names(error, SD_BUS_ERROR_UNKNOWN_OBJECT,
                                      SD_BUS_ERROR_UNKNOWN_INTERFACE);
}

int bus_read_dict(sd_bus_message *m,
                  int (*read_value)(sd_bus_message *m, const char *key, void *userdata),
                  void *userdata)
{
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;

        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key;

                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                r = read_value(m, key, userdata);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;

        return sd_bus_message_exit_container(m);
}

/* The string fields of a record, in the order of QTRIM_FS_SIGNATURE's strings. */
#define FILESYSTEM_STRINGS(fs)                                                                     \
        {                                                                                          \
                &(fs)->name, &(fs)->fstype, &(fs)->state, &(fs)->message, &(fs)->kind,             \
                    &(fs)->method, &(fs)->label, &(fs)->uuid                                       \
        }

void filesystem_list_done(struct filesystem_list *list)
{
        for (size_t i = 0; i < list->n; i++) {
                char **strings[] = FILESYSTEM_STRINGS(&list->items[i]);
                for (size_t k = 0; k < ELEMENTSOF(strings); k++)
                        free(*strings[k]);
        }
        free(list->items);
        *list = (struct filesystem_list){};
}

int bus_read_filesystems(sd_bus_message *m, struct filesystem_list *ret)
{
        _cleanup_(filesystem_list_done) struct filesystem_list list = {};
        int r;

        r = sd_bus_message_enter_container(m, 'a', QTRIM_FS_SIGNATURE);
        if (r < 0)
                return r;

        for (;;) {
                const char *text[8];
                struct filesystem fs = {};

                r = sd_bus_message_read(m, QTRIM_FS_SIGNATURE, &text[0], &text[1], &fs.offset,
                                        &fs.size, &fs.trimmed, &text[2], &text[3], &text[4],
                                        &text[5], &text[6], &text[7]);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;

                struct filesystem *items = reallocarray(list.items, list.n + 1, sizeof(*items));
                if (!items)
                        return -ENOMEM;
                list.items = items;
                items[list.n] = fs;
                char **strings[] = FILESYSTEM_STRINGS(&items[list.n]);
                list.n++;
                for (size_t k = 0; k < ELEMENTSOF(strings); k++)
                        if (!(*strings[k] = strdup(text[k])))
                                return -ENOMEM;
        }

        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        *ret = list;
        list = (struct filesystem_list){};
        return 0;
}

struct json_object *filesystems_to_json(const struct filesystem_list *list)
{
        struct json_object *array = json_object_new_array();

        for (size_t i = 0; i < list->n; i++) {
                const struct filesystem *fs = &list->items[i];
                struct json_object *o = json_object_new_object();

                json_object_object_add(o, "name", json_object_new_string(fs->name));
                json_object_object_add(o, "fstype", json_object_new_string(fs->fstype));
                json_object_object_add(o, "offset", json_object_new_uint64(fs->offset));
                json_object_object_add(o, "size", json_object_new_uint64(fs->size));
                json_object_object_add(o, "trimmed", json_object_new_uint64(fs->trimmed));
                json_object_object_add(o, "state", json_object_new_string(fs->state));
                json_object_object_add(o, "message", json_object_new_string(fs->message));
                json_object_object_add(o, "kind", json_object_new_string(fs->kind));
                json_object_object_add(o, "method", json_object_new_string(fs->method));
                json_object_object_add(o, "label", json_object_new_string(fs->label));
                json_object_object_add(o, "uuid", json_object_new_string(fs->uuid));
                json_object_array_add(array, o);
        }
        return array;
}

int image_path_absolute(const char *path, char **ret)
{
        _cleanup_free_ char *cwd = NULL;
        char *absolute;

        if (path[0] == '/')
                absolute = strdup(path);
        else {
                cwd = get_current_dir_name();
                if (!cwd)
                        return -errno;
                /* Only the root directory ends in a slash. */
                const char *separator = cwd[1] == '\0' ? "" : "/";
                if (asprintf(&absolute, "%s%s%s", cwd, separator, path) < 0)
                        absolute = NULL;
        }
        if (!absolute)
                return -ENOMEM;

        *ret = absolute;
        return 0;
}

struct json_object *json_string_or_null(const char *s)
{
        return s ? json_object_new_string(s) : NULL;
}

void json_print(struct json_object *o)
{
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                   JSON_C_TO_STRING_NOSLASHESCAPE));
}

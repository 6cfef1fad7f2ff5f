/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What more than one qtrimctl verb needs: the bus connection, method calls that report their own
 * errors, guest filesystem records, JSON output and error messages.
 */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>

/* Exit status for a command line qtrimctl does not understand. */
#define EXIT_USAGE 2

/* Prints "qtrimctl: FMT: strerror(-r)" on stderr and returns r, for tail calls. */
int log_errno(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "WHAT: MESSAGE (ERROR NAME)" on stderr, or "WHAT: strerror(-r)" when the error carries
 * no name. */
void print_bus_error(const sd_bus_error *error, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS if set), with a method call timeout long
 * enough for qtrimd to check an image before it replies. */
int bus_connect(sd_bus **ret_bus);

/* Calls a method of qtrimd. A failure is printed as "WHAT: MESSAGE (ERROR NAME)" (unless what is
 * NULL) and, if ret_error is not NULL, handed to the caller too. */
int bus_call_method(sd_bus *bus, const char *what, const char *path, const char *interface,
                    const char *member, sd_bus_error *ret_error, sd_bus_message **ret_reply,
                    const char *types, ...);

/* True for the errors that mean a job object is gone: it ended while we were looking at it. */
bool bus_error_is_job_gone(const sd_bus_error *error);

/* Reads an a{sv} at the current position of m; read_value is called for each key with the
 * message positioned at the variant, and must consume it. */
int bus_read_dict(sd_bus_message *m,
                  int (*read_value)(sd_bus_message *m, const char *key, void *userdata),
                  void *userdata);

/* One record of QTRIM_FS_ARRAY_SIGNATURE, see dbus-api.h. */
struct filesystem {
        char *name;
        char *fstype;
        uint64_t offset;
        uint64_t size;
        uint64_t trimmed;
        char *state;
        char *message;
        char *kind;
        char *method;
        char *label;
        char *uuid;
};

struct filesystem_list {
        struct filesystem *items;
        size_t n;
};

/* Reads a QTRIM_FS_ARRAY_SIGNATURE array at the current position of m. */
int bus_read_filesystems(sd_bus_message *m, struct filesystem_list *ret);
void filesystem_list_done(struct filesystem_list *list);
struct json_object *filesystems_to_json(const struct filesystem_list *list);

/* An image path as qtrimd wants it: absolute, made so against the working directory. Symlinks
 * are left alone; what the path means is for qtrimd to decide. */
int image_path_absolute(const char *path, char **ret);

static inline void json_object_putp(struct json_object **o)
{
        json_object_put(*o);
}

/* json_object_new_string() does not take NULL; JSON null stands for "not known" here. */
struct json_object *json_string_or_null(const char *s);

/* Prints o on stdout, followed by a newline. */
void json_print(struct json_object *o);

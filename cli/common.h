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

/* Exit statuses besides EXIT_SUCCESS and EXIT_FAILURE; qtrimctl(1) lists them all. */
#define EXIT_USAGE    2 /* a command line qtrimctl does not understand */
#define EXIT_CANCELED 3 /* jobs were canceled, none failed */

/* --verbose: error lines also name the D-Bus error. */
extern bool log_verbose;

/* Prints "qtrimctl: FMT: strerror(-r)" on stderr and returns r, for tail calls. */
int log_errno(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "qtrimctl: WHAT: MESSAGE; WHAT TO DO" on stderr (the advice only where the message has
 * none), with " (ERROR NAME)" under --verbose, or "qtrimctl: WHAT: strerror(-r)" when the error
 * carries no name. An error meaning qtrimd is missing is said as such, without WHAT. */
void print_bus_error(const sd_bus_error *error, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* True when org.qtrim1 has no owner and could not be started: no use asking again. */
bool bus_error_is_daemon_missing(const sd_bus_error *error);

/* Characters beyond ASCII, or their ASCII stand-ins when the locale's charset is not UTF-8.
 * glyphs_init() decides, after setlocale(). */
struct glyphs {
        const char *arrow;    /* "→" or "->" */
        const char *bar_full; /* one column of a progress bar */
        const char *bar_empty;
        const char *ellipsis; /* where a name was cut */
        const char *approx;   /* "≈" or "~" */
        bool utf8;
};
extern struct glyphs glyphs;
void glyphs_init(void);

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
/* The Job properties shared by shrink, wait, status and list (see org.qtrim1.xml); strings are
 * NULL until received. A property an older qtrimd lacks keeps its zero value. */
struct job_properties {
        char *image;
        char *state;
        char *phase;
        double progress;
        char *format;
        uint64_t virtual_size;
        uint64_t bytes_before;
        uint64_t bytes_after;
        uint64_t bytes_trimmed;
        int64_t bytes_reclaimed;
        bool has_bytes_reclaimed; /* BytesReclaimed was received */
        char *image_state;
        bool nothing_to_trim;
        bool converted;
        char *message;
        struct filesystem_list filesystems;
        struct json_object *phase_seconds;           /* PhaseTimes as {phase: seconds} */
        uint64_t queued_at, started_at, finished_at; /* CLOCK_REALTIME µs, 0: not yet */
        char *error;
        char *error_message;
};

/* Reads every property of the job at path. Returns 1, 0 if the job does not exist (any more), or
 * a negative errno (reported). */
int job_get_properties(sd_bus *bus, const char *path, struct job_properties *ret);

/* The job's time in its state so far, from StartedAt (running) or QueuedAt (queued); 0 if not
 * known. */
uint64_t job_elapsed_usec(const struct job_properties *p);

/* The time the job waited in qtrimd's queue: until StartedAt, or until now while queued; 0 if
 * not known. */
uint64_t job_queued_usec(const struct job_properties *p);

/* For bus_read_dict(): reads one Job property into a struct job_properties. */
int read_job_property(sd_bus_message *m, const char *key, void *userdata);
void job_properties_done(struct job_properties *props);

/* What a job gave back: BytesReclaimed, or before minus after from an older qtrimd. Negative:
 * the image grew (Message says why). */
int64_t job_bytes_reclaimed(const struct job_properties *p);

/* How far a running job is through its phase, in bytes: its overall Progress, less the phases
 * before, over the share of the bar its phase has (phase.h). What a byte is depends on the
 * phase. Trim: bytes of the guest volumes walked through, each volume counted at its whole size
 * (a trim or a discard covers a volume end to end, whatever it frees), out of all volumes'
 * sizes. Convert: bytes of the virtual disk that qemu-img has read through, out of VirtualSize.
 * False in the other phases (they are short and have no bytes to count), or while the sizes are
 * not known yet. */
bool job_phase_bytes(const struct job_properties *p, uint64_t *ret_done, uint64_t *ret_total);

/* Seconds with a fixed three decimals, so JSON shows 41.235 rather than 41.234999999999999. */
struct json_object *json_seconds(uint64_t usec);

/* An image path as qtrimd wants it: absolute, made so against the working directory. Symlinks
 * are left alone; what the path means is for qtrimd to decide. */
int image_path_absolute(const char *path, char **ret);

static inline void json_object_putp(struct json_object **o)
{
        json_object_put(*o);
}

/* Replaces *s with a copy of value; -ENOMEM leaves *s as it was. */
int set_string(char **s, const char *value);
const char *empty_to_null(const char *s);

/* A NULL-terminated array of strings and the array, freed. */
void strv_free(char **v);
static inline void strv_freep(char ***v)
{
        strv_free(*v);
}

/* "12" of a job object path ".../job/12". */
const char *job_id_of(const char *path);

/* json_object_new_string() does not take NULL; JSON null stands for "not known" here. */
struct json_object *json_string_or_null(const char *s);

/* Prints o on stdout, followed by a newline. */
void json_print(struct json_object *o);

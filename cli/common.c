/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "common.h"

#include <errno.h>
#include <langinfo.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/param.h>
#include <systemd/sd-bus-protocol.h>
#include <time.h>

#include "dbus-api.h"
#include "error.h"
#include "phase.h"
#include "util.h"

/* Inspect and Shrink check the image before they reply, which can take a while. */
#define METHOD_CALL_TIMEOUT_USEC (120 * UINT64_C(1000000))

bool log_verbose = false;

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

/* What to do about an error, for the errors where the user can do something. */
static const struct {
        enum qt_error_code code;
        const char *advice;
} error_advice[] = {
    {QT_ERR_NOT_FOUND, "check the path"},
    {QT_ERR_NOT_REGULAR, "name an image file"},
    {QT_ERR_NOT_AN_IMAGE, "qtrim shrinks qcow2 and raw disk images only"},
    {QT_ERR_IN_USE, "shut the virtual machine down first"},
    {QT_ERR_ENCRYPTED, "qtrim cannot shrink encrypted images"},
    {QT_ERR_CORRUPT, "repair it first (qemu-img check -r)"},
    {QT_ERR_HAS_OVERLAYS, "shrink its overlays instead, or commit them first"},
    {QT_ERR_TOO_MANY, "try again when some jobs have ended"},
    {QT_ERR_NO_SPACE, "free space beside the image, or shrink with --no-convert"},
    {QT_ERR_NO_SUCH_JOB, "see qtrimctl list"},
    {QT_ERR_FORMAT_MISMATCH, "declare the format the VM uses with --format=raw|qcow2"},
    {QT_ERR_NO_SUCH_DOMAIN, "see virsh list --all"},
    {QT_ERR_LIBVIRT, "is libvirtd running? (qtrimd asks LibvirtURI= in qtrimd.conf)"},
};

static const char *advice_for(const sd_bus_error *error)
{
        if (sd_bus_error_has_name(error, SD_BUS_ERROR_ACCESS_DENIED))
                return "run qtrimctl as root, or ask for the polkit action org.qtrim1.shrink";
        if (sd_bus_error_has_names(error, SD_BUS_ERROR_UNKNOWN_OBJECT, SD_BUS_ERROR_UNKNOWN_METHOD))
                return "see qtrimctl list";
        enum qt_error_code code = qt_error_from_dbus_name(error->name);
        for (size_t i = 0; i < ELEMENTSOF(error_advice); i++)
                if (error_advice[i].code == code)
                        return error_advice[i].advice;
        return NULL;
}

bool bus_error_is_daemon_missing(const sd_bus_error *error)
{
        return sd_bus_error_has_names(error, SD_BUS_ERROR_SERVICE_UNKNOWN,
                                      SD_BUS_ERROR_NAME_HAS_NO_OWNER) ||
               (error->name && strncmp(error->name, "org.freedesktop.DBus.Error.Spawn.", 33) == 0);
}

static void print_error_name(const sd_bus_error *error)
{
        if (log_verbose && error->name)
                fprintf(stderr, " (%s)", error->name);
        fputc('\n', stderr);
}

void print_bus_error(const sd_bus_error *error, int r, const char *fmt, ...)
{
        va_list ap;

        if (sd_bus_error_is_set(error) && bus_error_is_daemon_missing(error)) {
                /* dbus-daemon's "The name org.qtrim1 was not provided by any .service files"
                 * means no activation file: qtrim is not installed, or not on this bus. */
                fprintf(stderr, "qtrimctl: qtrimd is not running and cannot be started: %s",
                        sd_bus_error_has_name(error, SD_BUS_ERROR_SERVICE_UNKNOWN)
                            ? "org.qtrim1 has no D-Bus activation file; check that qtrim is "
                              "installed"
                            : error->message ?: "its activation failed");
                print_error_name(error);
                return;
        }

        fputs("qtrimctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        if (!sd_bus_error_is_set(error)) {
                fprintf(stderr, ": %s\n", strerror(-r));
                return;
        }
        const char *message = error->message ?: "no message";
        const char *advice = advice_for(error);
        fprintf(stderr, ": %s", message);
        if (advice && !strchr(message, ';'))
                fprintf(stderr, "; %s", advice);
        print_error_name(error);
}

struct glyphs glyphs;

void glyphs_init(void)
{
        bool utf8 = strcmp(nl_langinfo(CODESET), "UTF-8") == 0;

        glyphs = utf8 ? (struct glyphs){"→", "█", "░", "…", "≈", true}
                      : (struct glyphs){"->", "#", ".", "...", "~", false};
}

int bus_connect(sd_bus **ret_bus)
{
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        r = sd_bus_open_system(&bus);
        if (r < 0) {
                fprintf(stderr,
                        "qtrimctl: cannot connect to the system bus: %s; check that dbus is "
                        "running\n",
                        strerror(-r));
                return r;
        }

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

int set_string(char **s, const char *value)
{
        char *copy = strdup(value);
        if (!copy)
                return -ENOMEM;
        free(*s);
        *s = copy;
        return 0;
}

/* Job properties: one reader per D-Bus type, one table entry per property. */

static int read_string(sd_bus_message *m, void *field)
{
        const char *value;
        int r;

        r = sd_bus_message_read_basic(m, 's', &value);
        if (r < 0)
                return r;
        return set_string(field, value);
}

static int read_u64(sd_bus_message *m, void *field)
{
        return sd_bus_message_read_basic(m, 't', field);
}

static int read_i64(sd_bus_message *m, void *field)
{
        return sd_bus_message_read_basic(m, 'x', field);
}

static int read_double(sd_bus_message *m, void *field)
{
        return sd_bus_message_read_basic(m, 'd', field);
}

static int read_bool(sd_bus_message *m, void *field)
{
        int value, r;

        r = sd_bus_message_read_basic(m, 'b', &value);
        if (r < 0)
                return r;
        *(bool *)field = value;
        return 0;
}

static int read_filesystems(sd_bus_message *m, void *field)
{
        struct filesystem_list *list = field, received;
        int r;

        r = bus_read_filesystems(m, &received);
        if (r < 0)
                return r;
        filesystem_list_done(list);
        *list = received;
        return 0;
}

struct json_object *json_seconds(uint64_t usec)
{
        char text[32];

        snprintf(text, sizeof(text), "%.3f", (double)usec / 1e6);
        return json_object_new_double_s((double)usec / 1e6, text);
}

static int read_phase_seconds(sd_bus_message *m, void *field)
{
        _cleanup_(json_object_putp) struct json_object *phases = json_object_new_object();
        struct json_object **ret = field;
        /* The element type: the array signature without its 'a'. */
        const char *element = QTRIM_PHASE_TIME_ELEMENT;
        const char *phase;
        uint64_t usec;
        int r;

        if (!phases)
                return -ENOMEM;

        r = sd_bus_message_enter_container(m, 'a', element);
        if (r < 0)
                return r;
        while ((r = sd_bus_message_read(m, element, &phase, &usec)) > 0)
                json_object_object_add(phases, phase, json_seconds(usec));
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        json_object_put(*ret);
        *ret = TAKE_PTR(phases);
        return 0;
}

struct job_property {
        const char *name;
        const char *signature;
        int (*read)(sd_bus_message *m, void *field);
        size_t offset;
};

#define JOB_FIELD(name) offsetof(struct job_properties, name)

static const struct job_property job_property_table[] = {
    {"Image", "s", read_string, JOB_FIELD(image)},
    {"State", "s", read_string, JOB_FIELD(state)},
    {"Phase", "s", read_string, JOB_FIELD(phase)},
    {"Progress", "d", read_double, JOB_FIELD(progress)},
    {"Format", "s", read_string, JOB_FIELD(format)},
    {"VirtualSize", "t", read_u64, JOB_FIELD(virtual_size)},
    {"BytesBefore", "t", read_u64, JOB_FIELD(bytes_before)},
    {"BytesAfter", "t", read_u64, JOB_FIELD(bytes_after)},
    {"BytesTrimmed", "t", read_u64, JOB_FIELD(bytes_trimmed)},
    {"BytesReclaimed", "x", read_i64, JOB_FIELD(bytes_reclaimed)},
    {"ImageState", "s", read_string, JOB_FIELD(image_state)},
    {"NothingToTrim", "b", read_bool, JOB_FIELD(nothing_to_trim)},
    {"QueuedAt", "t", read_u64, JOB_FIELD(queued_at)},
    {"StartedAt", "t", read_u64, JOB_FIELD(started_at)},
    {"FinishedAt", "t", read_u64, JOB_FIELD(finished_at)},
    {"Converted", "b", read_bool, JOB_FIELD(converted)},
    {"Message", "s", read_string, JOB_FIELD(message)},
    {"Filesystems", QTRIM_FS_ARRAY_SIGNATURE, read_filesystems, JOB_FIELD(filesystems)},
    {"PhaseTimes", QTRIM_PHASE_TIME_SIGNATURE, read_phase_seconds, JOB_FIELD(phase_seconds)},
    {"Error", "s", read_string, JOB_FIELD(error)},
    {"ErrorMessage", "s", read_string, JOB_FIELD(error_message)},
};

int read_job_property(sd_bus_message *m, const char *key, void *userdata)
{
        struct job_properties *props = userdata;
        int r;

        for (size_t i = 0; i < ELEMENTSOF(job_property_table); i++) {
                const struct job_property *p = &job_property_table[i];

                if (strcmp(p->name, key) != 0)
                        continue;

                r = sd_bus_message_enter_container(m, 'v', p->signature);
                if (r < 0)
                        return r;
                r = p->read(m, (char *)props + p->offset);
                if (r < 0)
                        return r;
                if (p->offset == JOB_FIELD(bytes_reclaimed))
                        props->has_bytes_reclaimed = true;
                return sd_bus_message_exit_container(m);
        }

        /* Properties qtrimctl does not show, or that a newer qtrimd added. */
        return sd_bus_message_skip(m, "v");
}

void job_properties_done(struct job_properties *props)
{
        free(props->image);
        free(props->state);
        free(props->image_state);
        free(props->phase);
        free(props->format);
        free(props->message);
        filesystem_list_done(&props->filesystems);
        json_object_put(props->phase_seconds);
        free(props->error);
        free(props->error_message);
}

bool job_phase_bytes(const struct job_properties *p, uint64_t *ret_done, uint64_t *ret_total)
{
        int phase = p->phase ? qt_phase_from_name(p->phase) : -EINVAL;
        uint64_t total = 0;

        if (phase != QT_PHASE_TRIM && phase != QT_PHASE_CONVERT)
                return false;
        double fraction =
            (p->progress - qt_phase_progress_start(phase)) / qt_phase_progress_span(phase);
        fraction = isnan(fraction) ? 0 : MAX(0.0, MIN(fraction, 1.0));

        if (phase == QT_PHASE_CONVERT) {
                if (p->virtual_size == 0)
                        return false;
                *ret_done = (uint64_t)(fraction * (double)p->virtual_size);
                *ret_total = p->virtual_size;
                return true;
        }

        /* The trim's progress moves by one volume's worth per volume, in the Filesystems
         * order: (index + fraction of that volume) / volumes. */
        size_t n = p->filesystems.n;
        if (n == 0)
                return false;
        double at = fraction * (double)n;
        uint64_t done = 0;
        for (size_t i = 0; i < n; i++) {
                uint64_t size = p->filesystems.items[i].size;
                total += size;
                if ((double)(i + 1) <= at)
                        done += size;
                else if ((double)i < at)
                        done += (uint64_t)((at - (double)i) * (double)size);
        }
        *ret_done = done;
        *ret_total = total;
        return total > 0;
}

int job_get_properties(sd_bus *bus, const char *path, struct job_properties *ret)
{
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_call_method(bus, QTRIM_BUS_NAME, path, "org.freedesktop.DBus.Properties",
                               "GetAll", &error, &reply, "s", QTRIM_JOB_IFACE);
        if (r < 0 && bus_error_is_job_gone(&error))
                return 0;
        if (r < 0) {
                print_bus_error(&error, r, "cannot read the job %s", path);
                return r;
        }
        r = bus_read_dict(reply, read_job_property, ret);
        if (r < 0)
                return log_errno(r, "failed to read the properties of %s", path);
        return 1;
}

uint64_t job_elapsed_usec(const struct job_properties *p)
{
        uint64_t since = p->started_at ?: p->queued_at, now = realtime_usec();

        return since > 0 && now > since ? now - since : 0;
}

uint64_t job_queued_usec(const struct job_properties *p)
{
        if (p->queued_at == 0)
                return 0;
        if (p->started_at == 0)
                return job_elapsed_usec(p);
        return p->started_at > p->queued_at ? p->started_at - p->queued_at : 0;
}

int64_t job_bytes_reclaimed(const struct job_properties *p)
{
        if (p->has_bytes_reclaimed)
                return p->bytes_reclaimed;
        return (int64_t)p->bytes_before - (int64_t)p->bytes_after;
}

void strv_free(char **v)
{
        for (char **p = v; p && *p; p++)
                free(*p);
        free(v);
}

const char *job_id_of(const char *path)
{
        return strrchr(path, '/') + 1;
}

const char *empty_to_null(const char *s)
{
        return s && *s ? s : NULL;
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

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
#include "domain.h"
#include "error.h"
#include "shrink.h"
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

/* The estimate's records (QTRIM_ESTIMATE_SIGNATURE) as a JSON array. */
static int read_estimate(sd_bus_message *m, struct json_object **ret)
{
        _cleanup_(json_object_putp) struct json_object *volumes = json_object_new_array();
        const char *name;
        uint64_t used, free, reclaimable;
        int r;

        if (!volumes)
                return -ENOMEM;
        r = sd_bus_message_enter_container(m, 'v', QTRIM_ESTIMATE_ARRAY_SIGNATURE);
        if (r >= 0)
                r = sd_bus_message_enter_container(m, 'a', QTRIM_ESTIMATE_SIGNATURE);
        while (r >= 0 && (r = sd_bus_message_read(m, QTRIM_ESTIMATE_SIGNATURE, &name, &used, &free,
                                                  &reclaimable)) > 0) {
                struct json_object *v = json_object_new_object();
                if (!v)
                        return -ENOMEM;
                json_object_object_add(v, "name", json_object_new_string(name));
                json_object_object_add(v, "used_bytes", json_object_new_uint64(used));
                json_object_object_add(v, "free_bytes", json_object_new_uint64(free));
                json_object_object_add(v, "reclaimable_bytes", json_object_new_uint64(reclaimable));
                json_object_array_add(volumes, v);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(volumes);
        return 0;
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
        if (strcmp(key, QTRIM_INFO_ESTIMATE) == 0 &&
            strcmp(contents, QTRIM_ESTIMATE_ARRAY_SIGNATURE) == 0) {
                struct json_object *volumes = NULL;
                r = read_estimate(m, &volumes);
                if (r >= 0)
                        json_object_object_add(info, key, volumes);
                return r;
        }
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

/* The estimate of volume name from Inspect's info, NULL if there is none. */
static struct json_object *volume_estimate(struct json_object *info, const char *name)
{
        struct json_object *volumes, *v, *n;
        if (!json_object_object_get_ex(info, QTRIM_INFO_ESTIMATE, &volumes))
                return NULL;
        for (size_t i = 0; i < json_object_array_length(volumes); i++) {
                v = json_object_array_get_idx(volumes, i);
                if (json_object_object_get_ex(v, "name", &n) &&
                    strcmp(json_object_get_string(n), name) == 0)
                        return v;
        }
        return NULL;
}

static uint64_t json_u64(struct json_object *o, const char *key)
{
        struct json_object *v;
        return json_object_object_get_ex(o, key, &v) ? json_object_get_uint64(v) : 0;
}

static const char *json_string(struct json_object *o, const char *key)
{
        struct json_object *v;
        return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

/* "≈ N reclaimable of A allocated (would be ≈ B)": what the estimate says of the image. */
static void format_estimate(struct json_object *info, char *buf, size_t size)
{
        if (!json_object_object_get_ex(info, QTRIM_INFO_RECLAIMABLE, NULL)) {
                snprintf(buf, size, "no estimate: the image's allocation could not be read");
                return;
        }
        uint64_t allocated = json_u64(info, "AllocatedBytes");
        uint64_t reclaimable = json_u64(info, QTRIM_INFO_RECLAIMABLE);
        char n[FORMAT_BYTES_MAX], a[FORMAT_BYTES_MAX], b[FORMAT_BYTES_MAX];
        /* The image's own metadata is in the allocation, not in the estimate: never below 0. */
        uint64_t after = allocated > reclaimable ? allocated - reclaimable : 0;
        snprintf(buf, size, "%s %s reclaimable of %s allocated (would be %s %s)", glyphs.approx,
                 format_bytes(n, reclaimable), format_bytes(a, allocated), glyphs.approx,
                 format_bytes(b, after));
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
        if (json_object_object_get_ex(info, QTRIM_INFO_RECLAIMABLE, NULL)) {
                char estimate[256];
                format_estimate(info, estimate, sizeof(estimate));
                printf("%-17s%s\n", "A shrink:", estimate);
        }
}

/* USED, FREE and RECLAIMABLE of a volume: "-" where the estimate has nothing (a volume left
 * alone, or one that could not be read). */
static void format_volume_estimate(struct json_object *info, const char *name,
                                   char used[FORMAT_BYTES_MAX], char free[FORMAT_BYTES_MAX],
                                   char reclaimable[FORMAT_BYTES_MAX + 8])
{
        struct json_object *v = volume_estimate(info, name);
        uint64_t u = json_u64(v, "used_bytes"), f = json_u64(v, "free_bytes");
        char r[FORMAT_BYTES_MAX];
        snprintf(used, FORMAT_BYTES_MAX, "-");
        snprintf(free, FORMAT_BYTES_MAX, "-");
        snprintf(reclaimable, FORMAT_BYTES_MAX + 8, "-");
        if (!v || (u == 0 && f == 0))
                return;
        format_bytes(used, u);
        format_bytes(free, f);
        snprintf(reclaimable, FORMAT_BYTES_MAX + 8, "%s %s", glyphs.approx,
                 format_bytes(r, json_u64(v, "reclaimable_bytes")));
}

static void print_filesystem_table(struct json_object *info,
                                   const struct filesystem_list *filesystems)
{
        bool estimated = json_object_object_get_ex(info, QTRIM_INFO_ESTIMATE, NULL);
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

        printf("%-*s  %-*s  %10s  %10s", name_width, "NAME", fstype_width, "FSTYPE", "OFFSET",
               "SIZE");
        if (estimated)
                printf("  %10s  %10s  %11s", "USED", "FREE", "RECLAIMABLE");
        printf("  %s\n", "A SHRINK WOULD");
        for (size_t i = 0; i < filesystems->n; i++) {
                const struct filesystem *fs = &filesystems->items[i];
                char offset[FORMAT_BYTES_MAX], size[FORMAT_BYTES_MAX];

                printf("%-*s  %-*s  %10s  %10s", name_width, fs->name, fstype_width,
                       *fs->fstype ? fs->fstype : "-", format_bytes(offset, fs->offset),
                       format_bytes(size, fs->size));
                if (estimated) {
                        char used[FORMAT_BYTES_MAX], free[FORMAT_BYTES_MAX],
                            reclaimable[FORMAT_BYTES_MAX + 8];
                        format_volume_estimate(info, fs->name, used, free, reclaimable);
                        /* printf pads bytes, not columns: "≈" is one column of three bytes. */
                        int pad = glyphs.utf8 ? 11 + (int)strlen(glyphs.approx) - 1 : 11;
                        printf("  %10s  %10s  %*s", used, free, pad, reclaimable);
                }
                printf("  %s\n", fs->message);
        }
}

/* The libvirt domains that use the image: "used_by" in JSON, an array of {domain, state}, or
 * null when libvirt could not be asked. */
static struct json_object *used_by_to_json(const struct domain_images *domains, const char *image)
{
        if (!domains->known)
                return NULL;
        struct json_object *a = json_object_new_array();
        const struct domain_image *d;
        size_t i = 0;
        while ((d = domain_images_next(domains, image, &i))) {
                struct json_object *o = json_object_new_object();
                json_object_object_add(o, "domain", json_object_new_string(d->domain));
                json_object_object_add(o, "state", json_object_new_string(d->state));
                json_object_array_add(a, o);
        }
        return a;
}

static void print_used_by(const struct domain_images *domains, const char *image)
{
        char names[1024];
        if (!domains->known)
                return;
        if (domain_images_describe(domains, image, names, sizeof(names)) == 0)
                printf("%-17s%s\n", "Used by:", "no libvirt domain");
        else
                printf("%-17sdomain %s\n", "Used by:", names);
}

static void print_inspect_json(struct json_object *info, const struct filesystem_list *filesystems,
                               struct json_object *used_by)
{
        _cleanup_(json_object_putp) struct json_object *o = json_object_new_object();

        json_object_object_add(o, "info", json_object_get(info));
        json_object_object_add(o, "used_by", used_by);
        json_object_object_add(o, "filesystems", filesystems_to_json(filesystems));
        json_print(o);
}

/* Asks qtrimd to inspect the image named by argument, with the estimate; fills info (every key
 * of the answer's "info") and filesystems. opts: the shrink's format, keep_gaps and sweep (an
 * image unchanged since its last shrink is refused, as the sweep would skip it). Returns 0, 1 if
 * a sweep would skip the image (why in info's "Skipped"), or a negative errno (reported). */
static int call_inspect(sd_bus *bus, const char *argument, const struct shrink_options *opts,
                        struct json_object *info, struct filesystem_list *filesystems)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *image = NULL;
        int r;

        r = image_path_absolute(argument, &image);
        if (r < 0)
                return log_errno(r, "%s: cannot make it an absolute path", argument);

        /* The format last: it is sent only when declared. */
        r = bus_call_method(bus, NULL, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE, "Inspect", &error,
                            &reply, "sa{sv}", image, opts->format ? 4 : 3, QTRIM_OPT_ESTIMATE, "b",
                            1, QTRIM_OPT_TRIM_GAPS, "b", !opts->keep_gaps, QTRIM_OPT_IF_CHANGED,
                            "b", opts->sweep, QTRIM_OPT_FORMAT, "s", opts->format);
        if (r < 0 && sd_bus_error_has_name(&error, qt_error_dbus_name(QT_ERR_UNCHANGED))) {
                json_object_object_add(info, "Skipped",
                                       json_object_new_string(error.message ?: "unchanged"));
                return 1;
        }
        if (r < 0) {
                print_bus_error(&error, r, "%s", argument);
                return r;
        }
        r = bus_read_dict(reply, read_info_value, info);
        if (r >= 0)
                r = bus_read_filesystems(reply, filesystems);
        if (r < 0)
                return log_errno(r, "%s: cannot read the reply to Inspect", argument);
        return 0;
}

int inspect_image(sd_bus *bus, const char *argument, const char *format, bool json)
{
        _cleanup_(json_object_putp) struct json_object *info = json_object_new_object();
        _cleanup_(filesystem_list_done) struct filesystem_list filesystems = {};
        _cleanup_(domain_images_done) struct domain_images domains = {};
        int r;

        if (!info)
                return log_errno(-ENOMEM, "%s", argument);
        r = call_inspect(bus, argument, &(struct shrink_options){.format = format}, info,
                         &filesystems);
        if (r < 0)
                return r;
        r = domain_images_load(bus, &domains);
        if (r < 0)
                return log_errno(r, "%s", argument);

        if (json)
                print_inspect_json(info, &filesystems, used_by_to_json(&domains, argument));
        else {
                print_image_info(info);
                print_used_by(&domains, argument);
                print_filesystem_table(info, &filesystems);
        }
        return EXIT_SUCCESS;
}

/* One image's estimate for --json: what the dry run of a shrink says. */
static struct json_object *estimate_to_json(const char *argument, struct json_object *info)
{
        struct json_object *o = json_object_new_object(), *volumes;
        uint64_t allocated = json_u64(info, "AllocatedBytes");
        uint64_t reclaimable = json_u64(info, QTRIM_INFO_RECLAIMABLE);
        if (!o)
                return NULL;
        bool known = json_object_object_get_ex(info, QTRIM_INFO_RECLAIMABLE, NULL);
        json_object_object_add(o, "image", json_object_new_string(argument));
        json_object_object_add(o, "allocated_bytes", json_object_new_uint64(allocated));
        /* null: no estimate (the image's allocation could not be read) */
        json_object_object_add(o, "reclaimable_bytes",
                               known ? json_object_new_uint64(reclaimable) : NULL);
        json_object_object_add(
            o, "would_be_bytes",
            known ? json_object_new_uint64(allocated > reclaimable ? allocated - reclaimable : 0)
                  : NULL);
        if (json_object_object_get_ex(info, QTRIM_INFO_ESTIMATE, &volumes))
                json_object_object_add(o, "volumes", json_object_get(volumes));
        return o;
}

int estimate_images(sd_bus *bus, char **images, size_t n_images, const struct shrink_options *opts)
{
        _cleanup_(json_object_putp) struct json_object *results = json_object_new_array();
        bool failed = false;

        if (!results)
                return log_errno(-ENOMEM, "cannot estimate");
        for (size_t i = 0; i < n_images; i++) {
                _cleanup_(json_object_putp) struct json_object *info = json_object_new_object();
                _cleanup_(filesystem_list_done) struct filesystem_list filesystems = {};
                if (!info)
                        return log_errno(-ENOMEM, "%s", images[i]);
                int r = call_inspect(bus, images[i], opts, info, &filesystems);
                const char *skipped = r > 0 ? json_string(info, "Skipped") : NULL;
                if (skipped && opts->json) {
                        struct json_object *o = json_object_new_object();
                        json_object_object_add(o, "image", json_object_new_string(images[i]));
                        json_object_object_add(o, "skipped", json_object_new_string(skipped));
                        json_object_array_add(results, o);
                        continue;
                }
                if (skipped) {
                        printf("%s: skipped: %s\n", images[i], skipped);
                        continue;
                }
                if (r < 0) {
                        /* Not worth asking about the others. */
                        if (r == -ENOMEM)
                                return r;
                        failed = true;
                        continue;
                }
                if (opts->json) {
                        json_object_array_add(results, estimate_to_json(images[i], info));
                        continue;
                }
                char estimate[256];
                format_estimate(info, estimate, sizeof(estimate));
                printf("%s: %s\n", images[i], estimate);
        }
        if (opts->json)
                json_print(results);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

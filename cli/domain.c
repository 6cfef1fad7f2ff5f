/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "domain.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/param.h>

#include "common.h"
#include "dbus-api.h"
#include "shrink.h"
#include "util.h"

/* One record of QTRIM_DOMAIN_DISK_SIGNATURE; the strings point into the reply. */
struct domain_disk {
        const char *target, *device, *bus, *type, *source, *format, *discard, *detect_zeroes, *skip,
            *verdict;
};

struct domain_info {
        const char *name, *uuid, *state, *hypervisor_version;
        int active;
};

static int read_info_value(sd_bus_message *m, const char *key, void *userdata)
{
        struct domain_info *info = userdata;
        const char **s = strcmp(key, "Name") == 0                ? &info->name
                         : strcmp(key, "UUID") == 0              ? &info->uuid
                         : strcmp(key, "State") == 0             ? &info->state
                         : strcmp(key, "HypervisorVersion") == 0 ? &info->hypervisor_version
                                                                 : NULL;
        if (s)
                return sd_bus_message_read(m, "v", "s", s);
        if (strcmp(key, "Active") == 0)
                return sd_bus_message_read(m, "v", "b", &info->active);
        /* A key a newer qtrimd added. */
        return sd_bus_message_skip(m, "v");
}

static const char *dash_if_empty(const char *s)
{
        return s && *s ? s : "-";
}

static struct json_object *disk_to_json(const struct domain_disk *d)
{
        struct json_object *o = json_object_new_object();
        if (!o)
                return NULL;
        json_object_object_add(o, "target", json_object_new_string(d->target));
        json_object_object_add(o, "device", json_object_new_string(d->device));
        json_object_object_add(o, "bus", json_object_new_string(d->bus));
        json_object_object_add(o, "type", json_object_new_string(d->type));
        json_object_object_add(o, "source", json_string_or_null(empty_to_null(d->source)));
        json_object_object_add(o, "format", json_string_or_null(empty_to_null(d->format)));
        json_object_object_add(o, "discard", json_string_or_null(empty_to_null(d->discard)));
        json_object_object_add(o, "detect_zeroes",
                               json_string_or_null(empty_to_null(d->detect_zeroes)));
        json_object_object_add(o, "skip", json_string_or_null(empty_to_null(d->skip)));
        json_object_object_add(o, "verdict", json_string_or_null(empty_to_null(d->verdict)));
        return o;
}

static int print_json(const struct domain_info *info, const struct domain_disk *disks, size_t n)
{
        _cleanup_(json_object_putp) struct json_object *o = json_object_new_object();
        struct json_object *array = json_object_new_array();
        if (!o || !array) {
                json_object_put(array);
                return log_errno(-ENOMEM, "failed to make the JSON output");
        }
        json_object_object_add(o, "domain", json_string_or_null(info->name));
        json_object_object_add(o, "uuid", json_string_or_null(info->uuid));
        json_object_object_add(o, "state", json_string_or_null(info->state));
        json_object_object_add(o, "active", json_object_new_boolean(info->active));
        json_object_object_add(o, "hypervisor_version",
                               json_string_or_null(empty_to_null(info->hypervisor_version)));
        json_object_object_add(o, "disks", array);
        for (size_t i = 0; i < n; i++) {
                struct json_object *d = disk_to_json(&disks[i]);
                if (!d)
                        return log_errno(-ENOMEM, "failed to make the JSON output");
                json_object_array_add(array, d);
        }
        json_print(o);
        return EXIT_SUCCESS;
}

static void print_table(const struct domain_info *info, const struct domain_disk *disks, size_t n)
{
        int target_w = (int)strlen("TARGET"), bus_w = (int)strlen("BUS"),
            format_w = (int)strlen("FORMAT"), discard_w = (int)strlen("DISCARD"),
            zeroes_w = (int)strlen("ZEROES");
        printf("Domain:  %s (%s)\n", info->name ?: "?", info->state ?: "?");
        if (info->hypervisor_version && *info->hypervisor_version)
                printf("QEMU:    %s\n", info->hypervisor_version);
        if (n == 0) {
                printf("No disks.\n");
                return;
        }
        for (size_t i = 0; i < n; i++) {
                target_w = MAX(target_w, (int)strlen(disks[i].target));
                bus_w = MAX(bus_w, (int)strlen(disks[i].bus));
                format_w = MAX(format_w, (int)strlen(dash_if_empty(disks[i].format)));
                discard_w = MAX(discard_w, (int)strlen(dash_if_empty(disks[i].discard)));
                zeroes_w = MAX(zeroes_w, (int)strlen(dash_if_empty(disks[i].detect_zeroes)));
        }
        printf("\n%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", target_w, "TARGET", bus_w, "BUS", format_w,
               "FORMAT", discard_w, "DISCARD", zeroes_w, "ZEROES", "SOURCE");
        for (size_t i = 0; i < n; i++) {
                const struct domain_disk *d = &disks[i];
                printf("%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", target_w, d->target, bus_w, d->bus,
                       format_w, dash_if_empty(d->format), discard_w, dash_if_empty(d->discard),
                       zeroes_w, dash_if_empty(d->detect_zeroes), dash_if_empty(d->source));
        }
        /* The sentences last, one per disk: too long for a column. */
        printf("\n");
        for (size_t i = 0; i < n; i++) {
                const struct domain_disk *d = &disks[i];
                if (*d->verdict)
                        printf("%-*s  %s\n", target_w, d->target, d->verdict);
                if (*d->skip)
                        printf("%-*s  a shrink skips it: %s\n", target_w, d->target, d->skip);
        }
}

int inspect_domain(sd_bus *bus, const char *name, bool json)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        struct domain_info info = {};
        struct domain_disk *disks = NULL;
        size_t n = 0;
        int r = bus_call_method(bus, name, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE, "InspectDomain",
                                NULL, &reply, "sa{sv}", name, 0);
        if (r < 0)
                return r;
        r = bus_read_dict(reply, read_info_value, &info);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', QTRIM_DOMAIN_DISK_SIGNATURE);
        while (r >= 0) {
                struct domain_disk d;
                r = sd_bus_message_read(reply, QTRIM_DOMAIN_DISK_SIGNATURE, &d.target, &d.device,
                                        &d.bus, &d.type, &d.source, &d.format, &d.discard,
                                        &d.detect_zeroes, &d.skip, &d.verdict);
                if (r <= 0)
                        break;
                struct domain_disk *grown = reallocarray(disks, n + 1, sizeof(*disks));
                if (!grown) {
                        r = -ENOMEM;
                        break;
                }
                disks = grown;
                disks[n++] = d;
        }
        if (r < 0) {
                free(disks);
                return log_errno(r, "%s: failed to read the reply to InspectDomain", name);
        }
        if (json)
                r = print_json(&info, disks, n);
        else {
                print_table(&info, disks, n);
                r = EXIT_SUCCESS;
        }
        free(disks);
        return r;
}

static bool job_listed(char **paths, size_t n_paths, const char *job)
{
        for (size_t i = 0; i < n_paths; i++)
                if (strcmp(paths[i], job) == 0)
                        return true;
        return false;
}

int shrink_domain(sd_bus *bus, const char *name, const struct shrink_options *opts)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char **paths = NULL;
        size_t n_paths = 0;
        bool refused = false;
        const char *target, *source, *job, *error, *message;
        int r = bus_call_method(bus, name, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE, "ShrinkDomain",
                                NULL, &reply, "sa{sv}", name, 3, QTRIM_OPT_CONVERT, "b",
                                opts->convert, QTRIM_OPT_TRIM_GAPS, "b", !opts->keep_gaps,
                                QTRIM_OPT_ONLINE, "b", opts->online);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', QTRIM_DOMAIN_SHRUNK_SIGNATURE);
        while (r >= 0 && (r = sd_bus_message_read(reply, QTRIM_DOMAIN_SHRUNK_SIGNATURE, &target,
                                                  &source, &job, &error, &message)) > 0) {
                if (*error) {
                        /* Said as shrink says a refused image, with its advice. */
                        const sd_bus_error e = SD_BUS_ERROR_MAKE_CONST(error, message);
                        print_bus_error(&e, -EIO, "%s %s (%s)", name, target, source);
                        refused = true;
                } else if (strcmp(job, "/") == 0) {
                        /* Beside the summaries; with --json, stdout is the jobs' array alone. */
                        fprintf(opts->json ? stderr : stdout, "%s%s %s%s%s%s: skipped: %s\n",
                                opts->json ? "qtrimctl: " : "", name, target, *source ? " (" : "",
                                source, *source ? ")" : "", message);
                } else if (!job_listed(paths, n_paths, job)) {
                        /* An online trim is one job for all the disks it measures. */
                        char **grown = reallocarray(paths, n_paths + 1, sizeof(*paths));
                        if (!grown)
                                return log_errno(-ENOMEM, "failed to follow the jobs");
                        paths = grown;
                        /* Points into the reply, which lives until the jobs are followed. */
                        paths[n_paths++] = (char *)job;
                }
        }
        if (r < 0)
                return log_errno(r, "%s: failed to read the reply to ShrinkDomain", name);

        int status = EXIT_SUCCESS;
        if (!opts->block)
                for (size_t i = 0; i < n_paths; i++)
                        puts(paths[i]);
        else if (n_paths > 0)
                status = follow_job_paths(bus, paths, n_paths, opts);
        else if (opts->json) {
                /* None to follow: still JSON. */
                _cleanup_(json_object_putp) struct json_object *none = json_object_new_array();
                json_print(none);
        }
        if (status < 0)
                return status;
        return refused && status != EXIT_FAILURE ? EXIT_FAILURE : status;
}

int domain_images_load(sd_bus *bus, struct domain_images *ret)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *image, *domain, *state;
        *ret = (struct domain_images){};
        int r = bus_call_method(bus, NULL, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE,
                                "ListDomainImages", &error, &reply, NULL);
        if (r < 0) {
                if (log_verbose)
                        fprintf(stderr, "qtrimctl: which domains use the images is unknown: %s\n",
                                error.message ?: strerror(-r));
                return 0;
        }
        r = sd_bus_message_enter_container(reply, 'a', QTRIM_DOMAIN_IMAGE_SIGNATURE);
        while (r >= 0 && (r = sd_bus_message_read(reply, QTRIM_DOMAIN_IMAGE_SIGNATURE, &image,
                                                  &domain, &state)) > 0) {
                struct domain_image *grown =
                    reallocarray(ret->items, ret->n + 1, sizeof(*ret->items));
                if (!grown) {
                        domain_images_done(ret);
                        return -ENOMEM;
                }
                ret->items = grown;
                struct domain_image *d = &ret->items[ret->n];
                *d = (struct domain_image){strdup(image), strdup(domain), strdup(state)};
                ret->n++;
                if (!d->image || !d->domain || !d->state) {
                        domain_images_done(ret);
                        return -ENOMEM;
                }
        }
        if (r < 0) {
                domain_images_done(ret);
                return 0;
        }
        ret->known = true;
        return 0;
}

void domain_images_done(struct domain_images *l)
{
        for (size_t i = 0; i < l->n; i++) {
                free(l->items[i].image);
                free(l->items[i].domain);
                free(l->items[i].state);
        }
        free(l->items);
        *l = (struct domain_images){};
}

const struct domain_image *domain_images_next(const struct domain_images *l, const char *image,
                                              size_t *i)
{
        _cleanup_free_ char *canonical = realpath(image, NULL);
        for (; *i < l->n; (*i)++) {
                const struct domain_image *d = &l->items[*i];
                if (strcmp(d->image, canonical ?: image) != 0)
                        continue;
                /* A domain with the image twice (a disk and a CD-ROM) is named once. */
                bool named = false;
                for (size_t k = 0; k < *i && !named; k++)
                        named = strcmp(l->items[k].image, d->image) == 0 &&
                                strcmp(l->items[k].domain, d->domain) == 0;
                if (!named) {
                        (*i)++;
                        return d;
                }
        }
        return NULL;
}

size_t domain_images_describe(const struct domain_images *l, const char *image, char *buf,
                              size_t size)
{
        const struct domain_image *d;
        size_t found = 0, used = 0, i = 0;
        buf[0] = '\0';
        while ((d = domain_images_next(l, image, &i))) {
                if (used < size)
                        used += (size_t)snprintf(buf + used, size - used, "%s%s (%s)",
                                                 found ? ", " : "", d->domain, d->state);
                found++;
        }
        return found;
}

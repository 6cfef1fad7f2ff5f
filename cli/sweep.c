/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimctl shrink --all, what qtrim-sweep.service runs: asks qtrimd where images live
 * (ImageDirectories) and which files are images (SweepPatterns), and shrinks those written to
 * since qtrim last shrank them, in batches small enough for qtrimd's queue.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "dbus-api.h"
#include "domain.h"
#include "inspect.h"
#include "shrink.h"
#include "util.h"

/* Below qtrimd's MAX_JOBS, so a sweep never fills the queue others use too. */
#define SWEEP_BATCH 16

struct image_list {
        char **paths;
        size_t n, allocated;
};

static void image_list_done(struct image_list *l)
{
        for (size_t i = 0; i < l->n; i++)
                free(l->paths[i]);
        free(l->paths);
}

static int image_list_add(struct image_list *l, const char *dir, const char *name)
{
        if (l->n == l->allocated) {
                size_t n = l->allocated ? 2 * l->allocated : 16;
                char **p = realloc(l->paths, n * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                l->paths = p;
                l->allocated = n;
        }
        if (asprintf(&l->paths[l->n], "%s/%s", dir, name) < 0)
                return -ENOMEM;
        l->n++;
        return 0;
}

static int get_strv_property(sd_bus *bus, const char *property, char ***ret)
{
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_strv(bus, QTRIM_BUS_NAME, QTRIM_MANAGER_PATH,
                                         QTRIM_MANAGER_IFACE, property, &error, ret);
        if (r < 0)
                print_bus_error(&error, r, "cannot read qtrimd's %s", property);
        return r;
}

static bool matches_any(char **patterns, const char *name)
{
        for (char **p = patterns; *p; p++)
                if (fnmatch(*p, name, 0) == 0)
                        return true;
        return false;
}

/* Regular files matching a pattern, directly in dir; not hidden ones (qtrim's own temporary
 * copies are ".NAME.qtrim-XXXXXX"). A directory that cannot be read is a failure. */
static int collect(const char *dir, char **patterns, bool json, struct image_list *images)
{
        DIR *d = opendir(dir);
        if (!d && errno == ENOENT) {
                /* The default, /var/lib/libvirt/images, on a host without libvirt. */
                if (!json)
                        printf("%s: does not exist, skipped\n", dir);
                return 0;
        }
        if (!d) {
                int r = -errno;
                fprintf(stderr,
                        "qtrimctl: %s: cannot read the directory: %s; check ImageDirectories= in "
                        "qtrimd.conf\n",
                        dir, strerror(errno));
                return r;
        }
        struct dirent *de;
        int r = 0;
        while (r >= 0 && (de = readdir(d))) {
                struct stat st;
                if (de->d_name[0] == '.' || !matches_any(patterns, de->d_name))
                        continue;
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
                    !S_ISREG(st.st_mode))
                        continue;
                r = image_list_add(images, dir, de->d_name);
        }
        closedir(d);
        return r;
}

/* Whether image is a disk of domain, by ListDomainImages. */
static bool used_by(const struct domain_images *domains, const char *domain, const char *image)
{
        const struct domain_image *d;
        size_t at = 0;
        while ((d = domain_images_next(domains, image, &at)))
                if (strcmp(d->domain, domain) == 0)
                        return true;
        return false;
}

static bool uses_any(const struct domain_images *domains, const char *domain,
                     const struct image_list *images)
{
        for (size_t i = 0; i < images->n; i++)
                if (used_by(domains, domain, images->paths[i]))
                        return true;
        return false;
}

/* Takes the images domain uses out of the list: its online trim covered them. */
static void drop_images_of(const struct domain_images *domains, const char *domain,
                           struct image_list *images)
{
        size_t kept = 0;
        for (size_t i = 0; i < images->n; i++) {
                if (used_by(domains, domain, images->paths[i]))
                        free(images->paths[i]);
                else
                        images->paths[kept++] = images->paths[i];
        }
        images->n = kept;
}

/* SweepOnline=: each running domain it names whose disks are among the images has its guest
 * trim online (as shrink --domain --online), and once that is done its images leave the list
 * rather than being skipped as in use. A domain that cannot be trimmed is a failure of the
 * sweep, not its end, and its images are skipped as in use. */
static int sweep_online(sd_bus *bus, const struct shrink_options *batch,
                        const struct domain_images *domains, struct image_list *images)
{
        char **patterns = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        /* A qtrimd without the property has no such setting. */
        if (sd_bus_get_property_strv(bus, QTRIM_BUS_NAME, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE,
                                     "SweepOnline", &error, &patterns) < 0 ||
            !patterns)
                return 0;
        struct shrink_options online = *batch;
        online.online = true;
        int r = 0;
        for (size_t i = 0; r >= 0 && patterns[0] && i < domains->n; i++) {
                const char *name = domains->items[i].domain;
                /* One record per disk: a domain is tried once. */
                bool seen = false;
                for (size_t k = 0; k < i && !seen; k++)
                        seen = strcmp(domains->items[k].domain, name) == 0;
                if (seen || strcmp(domains->items[i].state, "running") != 0 ||
                    !matches_any(patterns, name) || !uses_any(domains, name, images))
                        continue;
                r = shrink_domain(bus, name, &online);
                if (r == EXIT_SUCCESS)
                        drop_images_of(domains, name, images);
                /* A job that failed is counted by its outcome; a call refused, here. */
                if (r < 0 && r != -ENOMEM)
                        batch->totals->failed++;
                if (r != -ENOMEM)
                        r = 0;
        }
        strv_free(patterns);
        return r;
}

static int compare_paths(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

int sweep_image_directories(sd_bus *bus, const struct shrink_options *opts)
{
        char **dirs = NULL, **patterns = NULL;
        struct image_list images = {};
        struct shrink_totals totals = {};
        struct domain_images domains = {};
        unsigned unreadable = 0;
        uint64_t started = now_usec();
        int r = get_strv_property(bus, "ImageDirectories", &dirs);
        if (r >= 0)
                r = get_strv_property(bus, "SweepPatterns", &patterns);
        for (char **d = dirs; r >= 0 && *d; d++) {
                r = collect(*d, patterns, opts->json, &images);
                if (r == -ENOMEM)
                        break;
                if (r < 0) {
                        unreadable++;
                        r = 0;
                }
        }
        if (r < 0)
                goto out;
        qsort(images.paths, images.n, sizeof(*images.paths), compare_paths);

        struct shrink_options batch = *opts;
        batch.sweep = true;
        /* What the sweep would give back: the images it would shrink estimated, the others
         * skipped as the sweep would skip them. */
        if (opts->dry_run) {
                r = estimate_images(bus, images.paths, images.n, &batch);
                goto out;
        }
        batch.totals = &totals;
        r = domain_images_load(bus, &domains);
        if (r < 0)
                goto out;
        batch.domains = &domains;
        size_t n_found = images.n;
        r = sweep_online(bus, &batch, &domains, &images);
        if (r < 0)
                goto out;
        if (opts->json && !(totals.json = json_object_new_array())) {
                r = log_errno(-ENOMEM, "failed to sweep");
                goto out;
        }
        /* Ctrl-C (or systemctl stop) cancels the batch under way and ends the sweep. */
        for (size_t i = 0; i < images.n && totals.canceled == 0; i += SWEEP_BATCH) {
                size_t n = images.n - i < SWEEP_BATCH ? images.n - i : SWEEP_BATCH;
                r = shrink_images(bus, images.paths + i, n, &batch);
                if (r < 0)
                        goto out;
        }

        uint64_t took_usec = now_usec() - started;
        if (opts->json) {
                struct json_object *o = json_object_new_object();
                json_object_object_add(o, "images", json_object_get(totals.json));
                json_object_object_add(o, "shrunk", json_object_new_int64(totals.shrunk));
                json_object_object_add(o, "skipped", json_object_new_int64(totals.skipped));
                json_object_object_add(o, "failed", json_object_new_int64(totals.failed));
                json_object_object_add(o, "canceled", json_object_new_int64(totals.canceled));
                json_object_object_add(o, "online_domains", json_object_new_int64(totals.online));
                json_object_object_add(o, "trimmed_online",
                                       json_object_new_int64((int64_t)(n_found - images.n)));
                json_object_object_add(o, "bytes_reclaimed",
                                       json_object_new_int64(totals.reclaimed));
                json_object_object_add(o, "seconds", json_seconds(took_usec));
                json_object_object_add(o, "unreadable_directories",
                                       json_object_new_int64(unreadable));
                json_print(o);
                json_object_put(o);
        } else {
                char amount[FORMAT_BYTES_MAX], took[FORMAT_DURATION_MAX];
                bool grew = totals.reclaimed < 0;
                uint64_t amount_bytes = (uint64_t)(grew ? -totals.reclaimed : totals.reclaimed);
                char online[64] = "";
                if (n_found > images.n)
                        snprintf(online, sizeof(online), ", %zu trimmed online (%u domain(s))",
                                 n_found - images.n, totals.online);
                printf(
                    "sweep: %zu image(s): %u shrunk, %u skipped%s, %u failed; %s%s%s in %s%s%s\n",
                    n_found, totals.shrunk, totals.skipped, online, totals.failed,
                    grew ? "grew by " : "", format_bytes(amount, amount_bytes),
                    grew ? "" : " reclaimed", format_duration(took, took_usec),
                    totals.canceled ? "; canceled" : "",
                    unreadable ? "; some image directories could not be read" : "");
        }
        r = totals.failed || unreadable ? EXIT_FAILURE
            : totals.canceled           ? EXIT_CANCELED
                                        : EXIT_SUCCESS;
out:
        json_object_put(totals.json);
        domain_images_done(&domains);
        image_list_done(&images);
        strv_free(dirs);
        strv_free(patterns);
        return r;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * org.qtrim1.Manager. Every method has the same shape: read the arguments, validate, authorize,
 * act, reply. Shrink and Inspect reply only once a worker has looked at the image (a "request"),
 * so a bad image is refused with a typed error before any job exists.
 */
#include "manager.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "authorize.h"
#include "bus-util.h"
#include "config.h"
#include "dbus-api.h"
#include "domain-hook.h"
#include "domain.h"
#include "error.h"
#include "image.h"
#include "job.h"
#include "state-dir.h"
#include "util.h"
#include "worker.h"

/* A Shrink or Inspect call waiting for its worker. */
struct request {
        struct manager *manager;
        struct request *next;
        sd_bus_message *call;
        enum qt_job_kind kind;
        char *image;
        dev_t dev;
        ino_t ino;
        uid_t uid;
        bool if_changed;
        bool estimate; /* Inspect: with the estimate of what a shrink would give back */
        struct job_options options;
        sd_bus_slot *pending; /* the bus call awaited: the caller's uid, then polkit's answer */
        struct worker *worker;
        struct qt_report report;
        struct domain_call *domain;  /* InspectDomain, ShrinkDomain: image is the domain's name */
        struct domain_call *disk_of; /* a disk ShrinkDomain queues: its outcome goes there */
        unsigned disk_index;
};

/* The options of Shrink and Inspect. */
struct shrink_options {
        bool convert, if_changed, trim_gaps, estimate, online;
        const char *format; /* "" when not declared; points into the message */
};

enum {
        OPTION_CONVERT = 1 << 0,
        OPTION_IF_CHANGED = 1 << 1,
        OPTION_FORMAT = 1 << 2,
        OPTION_TRIM_GAPS = 1 << 3,
        OPTION_ESTIMATE = 1 << 4,
        OPTION_ONLINE = 1 << 5,
};

/* Answers a request with an error: its caller, or for a disk of ShrinkDomain, the domain call. */
static int request_reply_errorf(struct request *q, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int request_reply_errorf(struct request *q, const char *name, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        int r = 0;
        if (q->disk_of) {
                char message[QT_ERROR_MESSAGE_MAX];
                vsnprintf(message, sizeof(message), fmt, ap);
                domain_call_disk_done(q->disk_of, q->disk_index, NULL, name, message);
        } else
                r = sd_bus_reply_method_errorfv(q->call, name, fmt, ap);
        va_end(ap);
        return r;
}

static void request_free(struct request *q)
{
        struct manager *m = q->manager;
        for (struct request **p = &m->requests; *p; p = &(*p)->next)
                if (*p == q) {
                        *p = q->next;
                        m->n_requests--;
                        break;
                }
        sd_bus_slot_unref(q->pending);
        worker_free(q->worker);
        domain_call_unref(q->domain);
        domain_call_unref(q->disk_of);
        sd_bus_message_unref(q->call);
        free(q->image);
        free(q);
}

/* Inspect's estimate, when it was asked for (it costs a read-only mount of each filesystem):
 * the total, and per volume its used, free and reclaimable bytes. A new key rather than more
 * fields in the volume records, whose signature the Job's Filesystems property shares. */
static int append_estimate(sd_bus_message *reply, const struct qt_report *rep)
{
        uint64_t total = 0;
        for (size_t i = 0; i < rep->n_fs; i++)
                total += rep->fs[i].reclaimable;
        int r = sd_bus_message_append(reply, "{sv}", QTRIM_INFO_RECLAIMABLE, "t", total);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(reply, "s", QTRIM_INFO_ESTIMATE);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'v', QTRIM_ESTIMATE_ARRAY_SIGNATURE);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', QTRIM_ESTIMATE_SIGNATURE);
        for (size_t i = 0; r >= 0 && i < rep->n_fs; i++)
                r = sd_bus_message_append(reply, QTRIM_ESTIMATE_SIGNATURE, rep->fs[i].name,
                                          rep->fs[i].used, rep->fs[i].free, rep->fs[i].reclaimable);
        for (int depth = 0; r >= 0 && depth < 3; depth++)
                r = sd_bus_message_close_container(reply);
        return r;
}

static int reply_inspect(sd_bus_message *call, const struct qt_report *rep)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r = sd_bus_message_new_method_return(call, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r >= 0)
                r = sd_bus_message_append(
                    reply, "{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}", "Format", "s",
                    rep->format, "FormatSource", "s", rep->format_source, "VirtualSize", "t",
                    rep->virtual_size, "AllocatedBytes", "t", rep->bytes_before, "ApparentSize",
                    "t", rep->apparent_before, "ClusterSize", "t", rep->cluster_size, "BackingFile",
                    "s", rep->backing_file, "BackingFormat", "s", rep->backing_format, "Snapshots",
                    "u", rep->snapshots, "Bitmaps", "u", rep->bitmaps, "PartitionTable", "s",
                    rep->partition_table);
        if (r >= 0 && rep->estimated)
                r = append_estimate(reply, rep);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = bus_append_filesystems(reply, rep);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        return r;
}

/* The probe passed: queue the job, unless the same image got one meanwhile. */
static int reply_shrink(struct request *q, const struct qt_report *rep)
{
        struct manager *m = q->manager;
        struct job *j;
        if (job_find_by_file(m, q->dev, q->ino))
                return request_reply_errorf(q, qt_error_dbus_name(QT_ERR_ALREADY_RUNNING),
                                            "%s already has a job", q->image);
        /* It started while the probe looked. */
        const char *starting = domain_hook_starting_with(q->dev, q->ino);
        if (starting)
                return request_reply_errorf(q, qt_error_dbus_name(QT_ERR_IN_USE),
                                            "domain %s is starting; its disks are left to it",
                                            starting);
        if (m->n_jobs >= MAX_JOBS)
                return request_reply_errorf(q, qt_error_dbus_name(QT_ERR_TOO_MANY),
                                            "too many jobs (%u); try again later", MAX_JOBS);
        int r = job_new(m, q->image, q->dev, q->ino, q->uid, &q->options, rep, &j);
        if (r < 0)
                return request_reply_errorf(q, qt_error_dbus_name(QT_ERR_FAILED),
                                            "cannot create the job: %s", strerror(-r));
        if (q->disk_of)
                domain_call_disk_done(q->disk_of, q->disk_index, j->path, NULL, NULL);
        else
                r = sd_bus_reply_method_return(q->call, "o", j->path);
        manager_dispatch_queue(m);
        return r;
}

static void on_request_exit(struct worker *w, void *userdata)
{
        struct request *q = userdata;
        struct manager *m = q->manager;
        const struct qt_report *rep = &q->report;

        int r;
        if (qt_error_is_set(&rep->error))
                r = request_reply_errorf(q, qt_error_dbus_name(rep->error.code), "%s",
                                         rep->error.message);
        else if (q->kind == QT_JOB_INSPECT)
                r = reply_inspect(q->call, rep);
        else
                r = reply_shrink(q, rep);
        /* The caller must never wait for its timeout: say something. */
        if (r < 0)
                request_reply_errorf(q, qt_error_dbus_name(QT_ERR_FAILED),
                                     "cannot send the reply: %s", strerror(-r));
        request_free(q);
        manager_check_exit(m);
}

static const struct worker_callbacks request_worker_callbacks = {.on_exit = on_request_exit};

static bool request_pending_for(struct manager *m, dev_t dev, ino_t ino)
{
        for (struct request *q = m->requests; q; q = q->next)
                if (q->kind == QT_JOB_PROBE && q->dev == dev && q->ino == ino)
                        return true;
        return false;
}

/* A link out of a directory is caught by the check of the resolved path. */
bool manager_in_image_directories(const struct manager *m, const char *path)
{
        if (path[0] != '/' || strstr(path, "/../") || strstr(path, "/./"))
                return false;
        for (size_t i = 0; i < m->config.n_image_dirs; i++) {
                const char *dir = m->config.image_dirs[i];
                size_t len = strlen(dir);
                if (strncmp(path, dir, len) == 0 && path[len] == '/' && path[len + 1])
                        return true;
        }
        return false;
}

/* Replies with the error and ends the request: for steps that run after the method returned. */
static void request_fail(struct request *q, const char *name, const char *message)
{
        request_reply_errorf(q, name, "%s", message);
        struct manager *m = q->manager;
        request_free(q);
        manager_check_exit(m);
}

/* The caller may act: check the file, resolve it, and start the worker that answers the call. */
static void on_domain_read(void *userdata)
{
        struct request *q = userdata;
        struct manager *m = q->manager;
        request_free(q);
        manager_check_exit(m);
}

static void request_continue(struct request *q)
{
        struct manager *m = q->manager;
        struct qt_error e = {};
        struct stat st;
        if (q->domain)
                return domain_call_start(q->domain, m, q->call, q->uid, on_domain_read, q);
        if (qt_image_check_path(q->image, true, &st, &e) < 0)
                return request_fail(q, qt_error_dbus_name(e.code), e.message);
        if (q->kind == QT_JOB_PROBE && (job_find_by_file(m, st.st_dev, st.st_ino) ||
                                        request_pending_for(m, st.st_dev, st.st_ino)))
                return request_fail(q, qt_error_dbus_name(QT_ERR_ALREADY_RUNNING),
                                    "already has a job");
        /* Between libvirt's hook and QEMU's open, the image is the domain's. */
        const char *starting = domain_hook_starting_with(st.st_dev, st.st_ino);
        if (starting) {
                char why[QT_ERROR_MESSAGE_MAX];
                snprintf(why, sizeof(why), "domain %s is starting; its disks are left to it",
                         starting);
                return request_fail(q, qt_error_dbus_name(QT_ERR_IN_USE), why);
        }

        /* From here on, the file itself: a symbolic link is followed once, here, so the copy
         * replaces the file it names (not the link), beside it, on its filesystem. */
        char *canonical = realpath(q->image, NULL);
        if (!canonical)
                return request_fail(q, qt_error_dbus_name(QT_ERR_NOT_FOUND),
                                    "cannot resolve the path");
        free(q->image);
        q->image = canonical;
        if (q->uid != 0 && !manager_in_image_directories(m, q->image))
                return request_fail(q, SD_BUS_ERROR_ACCESS_DENIED,
                                    "resolves to a file outside the image directories");
        if (q->if_changed && state_shrunk_unchanged(m->state_dir, q->image, &st))
                return request_fail(q, qt_error_dbus_name(QT_ERR_UNCHANGED),
                                    "unchanged since qtrim last shrank it");
        q->dev = st.st_dev;
        q->ino = st.st_ino;
        /* The administrator's word on the file itself, as resolved. */
        snprintf(q->options.format.configured, sizeof(q->options.format.configured), "%s",
                 qt_format_rules_match(&m->config.formats, q->image) ?: "");

        struct qt_shrink_request req = {.kind = q->kind,
                                        .image = q->image,
                                        .dev = q->dev,
                                        .ino = q->ino,
                                        .format = job_format_claim(&q->options.format),
                                        .formats = &m->config.formats,
                                        .keep_gaps = q->options.keep_gaps,
                                        .estimate = q->estimate,
                                        .attach = m->config.attach,
                                        .scratch_dir = m->scratch_dir};
        int r = worker_start(m->event, &req, &q->report, &request_worker_callbacks, q, &q->worker);
        if (r < 0)
                request_fail(q, qt_error_dbus_name(QT_ERR_FAILED), "cannot start a worker");
}

static void on_authorized(bool allowed, const char *why, void *userdata)
{
        struct request *q = userdata;
        q->pending = sd_bus_slot_unref(q->pending);
        if (!allowed)
                return request_fail(q, SD_BUS_ERROR_ACCESS_DENIED, why);
        request_continue(q);
}

/* The caller's uid is known: images outside the image directories are root's, then polkit. */
static int on_sender_uid(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error)
{
        struct request *q = userdata;
        struct manager *m = q->manager;
        q->pending = sd_bus_slot_unref(q->pending);
        if (bus_read_sender_uid(reply, &q->uid) < 0) {
                request_fail(q, SD_BUS_ERROR_ACCESS_DENIED,
                             "cannot tell who is calling (the caller left the bus?)");
                return 0;
        }
        /* A domain's disks are checked one by one once they are known. */
        if (q->uid != 0 && !q->domain && !manager_in_image_directories(m, q->image)) {
                request_fail(q, SD_BUS_ERROR_ACCESS_DENIED,
                             "only root may name images outside the image directories "
                             "(ImageDirectories= in qtrimd.conf)");
                return 0;
        }
        int r = authorize(q->call, q->uid, QTRIM_ACTION_SHRINK, q->domain ? NULL : q->image,
                          on_authorized, q, &q->pending);
        if (r < 0)
                request_fail(q, qt_error_dbus_name(QT_ERR_FAILED), "cannot ask polkit");
        else if (r > 0)
                request_continue(q);
        return 0;
}

/* Shrink and Inspect: who asks, for what, then (once authorized) the image itself. The reply
 * comes when the worker is done, or sooner with an error. Nothing here waits on the bus: the
 * caller's uid is asked of the bus driver, like polkit's answer, without blocking the loop. */
/* A probe request for call on image (a path, or a domain's name for domain, which it takes), in
 * the manager's list. NULL with -EBUSY at the limit (checked first: under a flood, refusing must
 * cost no round trip to the bus) or -ENOMEM, domain dropped. */
static struct request *request_add(struct manager *m, sd_bus_message *call, const char *image,
                                   struct domain_call *domain, int *ret_error)
{
        struct request *q = m->n_requests < MAX_REQUESTS ? calloc(1, sizeof(*q)) : NULL;
        if (!q || !(q->image = strdup(image))) {
                *ret_error = m->n_requests < MAX_REQUESTS ? -ENOMEM : -EBUSY;
                free(q);
                domain_call_unref(domain);
                return NULL;
        }
        q->manager = m;
        q->call = sd_bus_message_ref(call);
        q->kind = QT_JOB_PROBE;
        q->domain = domain;
        q->next = m->requests;
        m->requests = q;
        m->n_requests++;
        manager_update_idle(m);
        return q;
}

static int start_request(struct manager *m, sd_bus_message *call, enum qt_job_kind kind,
                         const char *image, const struct shrink_options *o,
                         struct domain_call *domain, sd_bus_error *error)
{
        int r = 0;
        struct request *q = request_add(m, call, image, domain, &r);
        if (r == -EBUSY)
                return sd_bus_error_setf(error, qt_error_dbus_name(QT_ERR_TOO_MANY),
                                         "too many requests in progress (%u); try again later",
                                         MAX_REQUESTS);
        if (!q)
                return r;
        q->kind = kind;
        q->options.convert = o->convert;
        q->options.keep_gaps = !o->trim_gaps;
        q->if_changed = o->if_changed;
        q->estimate = o->estimate;
        q->options.sweep = o->if_changed;
        snprintf(q->options.format.declared, sizeof(q->options.format.declared), "%s", o->format);

        r = bus_ask_sender_uid(call, on_sender_uid, q, &q->pending);
        if (r < 0) {
                request_free(q);
                return r;
        }
        return 1; /* the reply comes later */
}

/* Reads the a{sv} of options: only known keys that the method takes (allowed), each once and
 * of its type. */
static int read_options(sd_bus_message *msg, unsigned allowed, struct shrink_options *o,
                        sd_bus_error *error)
{
        static const struct {
                const char *key;
                unsigned flag;
                char type;
        } known[] = {
            {QTRIM_OPT_CONVERT, OPTION_CONVERT, 'b'},
            {QTRIM_OPT_IF_CHANGED, OPTION_IF_CHANGED, 'b'},
            {QTRIM_OPT_FORMAT, OPTION_FORMAT, 's'},
            {QTRIM_OPT_TRIM_GAPS, OPTION_TRIM_GAPS, 'b'},
            {QTRIM_OPT_ESTIMATE, OPTION_ESTIMATE, 'b'},
            {QTRIM_OPT_ONLINE, OPTION_ONLINE, 'b'},
        };
        int r = sd_bus_message_enter_container(msg, 'a', "{sv}");
        if (r < 0)
                return r;
        unsigned seen = 0;
        while ((r = sd_bus_message_enter_container(msg, 'e', "sv")) > 0) {
                const char *key;
                r = sd_bus_message_read(msg, "s", &key);
                if (r < 0)
                        return r;
                size_t i = 0;
                while (i < ELEMENTSOF(known) &&
                       !(strcmp(key, known[i].key) == 0 && (known[i].flag & allowed)))
                        i++;
                if (i == ELEMENTSOF(known))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "unknown option \"%.64s\"", key);
                /* Clients disagree on which of two copies wins: take neither. */
                if (seen & known[i].flag)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "option \"%s\" given twice", key);
                seen |= known[i].flag;
                if (known[i].type == 'b') {
                        int b;
                        r = sd_bus_message_read(msg, "v", "b", &b);
                        if (r < 0)
                                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                         "option \"%s\" must be a boolean", key);
                        if (known[i].flag == OPTION_CONVERT)
                                o->convert = b;
                        else if (known[i].flag == OPTION_IF_CHANGED)
                                o->if_changed = b;
                        else if (known[i].flag == OPTION_ESTIMATE)
                                o->estimate = b;
                        else if (known[i].flag == OPTION_ONLINE)
                                o->online = b;
                        else
                                o->trim_gaps = b;
                } else {
                        const char *s;
                        r = sd_bus_message_read(msg, "v", "s", &s);
                        if (r < 0 || !qt_format_is_known(s))
                                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                         "option \"%s\" must be \"raw\" or "
                                                         "\"qcow2\"",
                                                         key);
                        o->format = s;
                }
                r = sd_bus_message_exit_container(msg);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(msg);
}

static int method_shrink(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        struct manager *m = userdata;
        const char *image;
        struct shrink_options o = {.convert = true, .trim_gaps = true, .format = ""};
        int r = sd_bus_message_read(msg, "s", &image);
        if (r < 0)
                return r;
        r = read_options(msg, OPTION_CONVERT | OPTION_IF_CHANGED | OPTION_FORMAT | OPTION_TRIM_GAPS,
                         &o, error);
        if (r < 0)
                return r;
        /* The administrator's Convert=never outranks a caller's wish for a copy, and
         * TrimGaps=no a caller's wish for the gaps. */
        o.convert = o.convert && !m->config.convert.never;
        o.trim_gaps = o.trim_gaps && m->config.trim_gaps;
        return start_request(m, msg, QT_JOB_PROBE, image, &o, NULL, error);
}

static int method_inspect(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        struct manager *m = userdata;
        const char *image;
        struct shrink_options o = {.trim_gaps = true, .format = ""};
        int r = sd_bus_message_read(msg, "s", &image);
        if (r < 0)
                return r;
        /* if-changed: a sweep's dry run leaves out what the sweep would. */
        r = read_options(
            msg, OPTION_FORMAT | OPTION_TRIM_GAPS | OPTION_IF_CHANGED | OPTION_ESTIMATE, &o, error);
        if (r < 0)
                return r;
        /* The estimate counts the gaps as the shrink would: TrimGaps=no wins here too. */
        o.trim_gaps = o.trim_gaps && m->config.trim_gaps;
        return start_request(m, msg, QT_JOB_INSPECT, image, &o, NULL, error);
}

/* InspectDomain and ShrinkDomain (domain.h): authorized as Inspect and Shrink are, then the
 * domain is read in a child of qtrimd. */
static int method_domain(sd_bus_message *msg, struct manager *m, enum domain_verb verb,
                         sd_bus_error *error)
{
        const char *name;
        struct shrink_options o = {.convert = true, .trim_gaps = true, .format = ""};
        int r = sd_bus_message_read(msg, "s", &name);
        if (r < 0)
                return r;
        r = read_options(msg,
                         verb == DOMAIN_SHRINK
                             ? OPTION_CONVERT | OPTION_IF_CHANGED | OPTION_TRIM_GAPS | OPTION_ONLINE
                             : 0,
                         &o, error);
        if (r < 0)
                return r;
        if (!name[0] || strlen(name) > 255)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "name a domain (up to 255 bytes)");
        const struct job_options options = {
            .convert = o.convert && !m->config.convert.never,
            .keep_gaps = !(o.trim_gaps && m->config.trim_gaps),
            .sweep = o.if_changed,
        };
        struct domain_call *c;
        r = domain_call_new(verb, name, &options, o.if_changed, &c);
        if (r == -EOPNOTSUPP)
                return sd_bus_error_set(error, qt_error_dbus_name(QT_ERR_UNSUPPORTED),
                                        "libvirt support is not built in");
        if (r < 0)
                return r;
        if (o.online)
                domain_call_set_online(c);
        return start_request(m, msg, QT_JOB_PROBE, name, &o, c, error);
}

static int method_inspect_domain(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        return method_domain(msg, userdata, DOMAIN_INSPECT, error);
}

static int method_shrink_domain(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        return method_domain(msg, userdata, DOMAIN_SHRINK, error);
}

/* Which domains use which files: authorized as InspectDomain, read in a child the same way. */
static int method_list_domain_images(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        struct manager *m = userdata;
        const struct shrink_options o = {.format = ""};
        const struct job_options options = {};
        struct domain_call *c;
        int r = domain_call_new(DOMAIN_LIST, "*", &options, false, &c);
        if (r == -EOPNOTSUPP)
                return sd_bus_error_set(error, qt_error_dbus_name(QT_ERR_UNSUPPORTED),
                                        "libvirt support is not built in");
        if (r < 0)
                return r;
        return start_request(m, msg, QT_JOB_PROBE, "*", &o, c, error);
}

void manager_shrink_disk(struct manager *m, sd_bus_message *call, uid_t uid, const char *image,
                         const struct job_options *options, bool if_changed, struct domain_call *c,
                         unsigned index)
{
        int r;
        struct request *q = request_add(m, call, image, NULL, &r);
        if (!q)
                return domain_call_disk_done(c, index, NULL, qt_error_dbus_name(QT_ERR_TOO_MANY),
                                             "too many requests in progress; try again later");
        q->uid = uid;
        q->options = *options;
        q->if_changed = if_changed;
        q->disk_of = domain_call_ref(c);
        q->disk_index = index;
        request_continue(q);
}

int manager_start_domain_call(struct manager *m, sd_bus_message *call, const char *name,
                              struct domain_call *c)
{
        int r;
        struct request *q = request_add(m, call, name, c, &r);
        if (!q)
                return r;
        q->uid = 0;
        request_continue(q);
        return 0;
}

unsigned manager_cancel_requests_on_file(struct manager *m, dev_t dev, ino_t ino)
{
        unsigned n = 0;
        for (struct request *q = m->requests; q; q = q->next)
                if (!q->domain && q->worker && q->dev == dev && q->ino == ino) {
                        worker_cancel(q->worker);
                        n++;
                }
        return n;
}

static int method_list_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        struct manager *m = userdata;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(usso)");
        for (struct job *j = m->jobs; r >= 0 && j; j = j->next)
                r = sd_bus_message_append(reply, "(usso)", j->id, j->image,
                                          job_state_name(j->state), j->path);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                       sd_bus_message *reply, void *userdata, sd_bus_error *error)
{
        return sd_bus_message_append(reply, "s", QTRIM_VERSION);
}

static int append_strv(sd_bus_message *reply, char *const *list, size_t n)
{
        int r = sd_bus_message_open_container(reply, 'a', "s");
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append(reply, "s", list[i]);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

static int get_image_directories(sd_bus *bus, const char *path, const char *interface,
                                 const char *property, sd_bus_message *reply, void *userdata,
                                 sd_bus_error *error)
{
        const struct manager *m = userdata;
        return append_strv(reply, m->config.image_dirs, m->config.n_image_dirs);
}

static int get_sweep_patterns(sd_bus *bus, const char *path, const char *interface,
                              const char *property, sd_bus_message *reply, void *userdata,
                              sd_bus_error *error)
{
        const struct manager *m = userdata;
        return append_strv(reply, m->config.sweep_patterns, m->config.n_sweep_patterns);
}

static int get_sweep_online(sd_bus *bus, const char *path, const char *interface,
                            const char *property, sd_bus_message *reply, void *userdata,
                            sd_bus_error *error)
{
        const struct manager *m = userdata;
        return append_strv(reply, m->config.sweep_online_domains, m->config.n_sweep_online_domains);
}

static int get_attach_backend(sd_bus *bus, const char *path, const char *interface,
                              const char *property, sd_bus_message *reply, void *userdata,
                              sd_bus_error *error)
{
        const struct manager *m = userdata;
        return sd_bus_message_append(reply, "s", qt_attach_backend_name(m->config.attach));
}

static const sd_bus_vtable manager_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("Version", "s", get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("MaxParallelJobs", "u", NULL,
                    offsetof(struct manager, config.max_parallel_jobs),
                    SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("ImageDirectories", "as", get_image_directories, 0,
                    SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("SweepPatterns", "as", get_sweep_patterns, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("SweepOnline", "as", get_sweep_online, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("AttachBackend", "s", get_attach_backend, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_METHOD_WITH_ARGS("Shrink", SD_BUS_ARGS("s", image, "a{sv}", options),
                            SD_BUS_RESULT("o", job), method_shrink, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Inspect", SD_BUS_ARGS("s", image, "a{sv}", options),
                            SD_BUS_RESULT("a{sv}", info, QTRIM_FS_ARRAY_SIGNATURE, volumes),
                            method_inspect, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("InspectDomain", SD_BUS_ARGS("s", name, "a{sv}", options),
                            SD_BUS_RESULT("a{sv}", info, QTRIM_DOMAIN_DISK_ARRAY_SIGNATURE, disks),
                            method_inspect_domain, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("ShrinkDomain", SD_BUS_ARGS("s", name, "a{sv}", options),
                            SD_BUS_RESULT(QTRIM_DOMAIN_SHRUNK_ARRAY_SIGNATURE, disks),
                            method_shrink_domain, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("DomainStopped", SD_BUS_ARGS("s", name, "s", xml),
                            SD_BUS_RESULT(QTRIM_DOMAIN_SHRUNK_ARRAY_SIGNATURE, disks),
                            domain_hook_stopped, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("DomainStarting", SD_BUS_ARGS("s", name, "s", xml),
                            SD_BUS_RESULT("ao", canceled), domain_hook_starting,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("ListDomainImages", SD_BUS_NO_ARGS,
                            SD_BUS_RESULT(QTRIM_DOMAIN_IMAGE_ARRAY_SIGNATURE, images),
                            method_list_domain_images, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("ListJobs", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(usso)", jobs),
                            method_list_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_SIGNAL_WITH_ARGS("JobNew", SD_BUS_ARGS("u", id, "o", job, "s", image), 0),
    SD_BUS_SIGNAL_WITH_ARGS("JobRemoved", SD_BUS_ARGS("u", id, "o", job, "s", image, "s", result),
                            0),
    SD_BUS_VTABLE_END,
};

int manager_add_bus_objects(struct manager *m)
{
        int r = sd_bus_add_object_vtable(m->bus, NULL, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE,
                                         manager_vtable, m);
        if (r >= 0)
                r = sd_bus_add_fallback_vtable(m->bus, NULL, QTRIM_JOB_PATH_PREFIX, QTRIM_JOB_IFACE,
                                               job_vtable, job_object_find, m);
        if (r >= 0)
                r = sd_bus_add_node_enumerator(m->bus, NULL, QTRIM_JOB_PATH_PREFIX,
                                               job_node_enumerator, m);
        if (r >= 0)
                r = sd_bus_add_object_manager(m->bus, NULL, QTRIM_MANAGER_PATH);
        return r;
}

void manager_dispatch_queue(struct manager *m)
{
        for (struct job *j = m->jobs; j && !m->exiting; j = j->next)
                if (m->n_running >= m->config.max_parallel_jobs)
                        break;
                else if (j->state == JOB_QUEUED) {
                        job_start(j);
                        /* job_start may have failed and freed j: the list changed, look again */
                        manager_dispatch_queue(m);
                        return;
                }
}

/* How long running jobs get to tear down when qtrimd is stopped (below systemd's
 * TimeoutStopSec, after which it kills what is left). */
#define EXIT_GRACE_USEC (60 * 1000000ULL)

static int on_exit_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
        fprintf(stderr, "qtrimd: jobs did not stop in time; exiting, workers clean up alone\n");
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

void manager_stop(struct manager *m, const char *why)
{
        if (m->exiting)
                return;
        m->exiting = true;
        sd_notify(0, "STOPPING=1");
        fprintf(stderr, "qtrimd: stopping (%s); canceling %u job(s)\n", why, m->n_jobs);
        for (struct job *j = m->jobs, *next; j; j = next) {
                next = j->next; /* a queued job is freed by its cancel */
                job_cancel(j);
        }
        sd_event_add_time_relative(m->event, NULL, CLOCK_MONOTONIC, EXIT_GRACE_USEC, 0,
                                   on_exit_timeout, m);
        manager_check_exit(m);
}

void manager_free_requests(struct manager *m)
{
        while (m->requests)
                request_free(m->requests);
        domain_hook_free_all();
}

void manager_check_exit(struct manager *m)
{
        if (m->exiting && m->n_running == 0 && m->n_requests == 0)
                sd_event_exit(m->event, 0);
        manager_update_idle(m);
}

static int on_idle(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct manager *m = userdata;
        /* Give the name back first: a call from now on starts a new qtrimd by D-Bus activation
         * instead of reaching one that is about to exit. */
        sd_bus_release_name(m->bus, QTRIM_BUS_NAME);
        manager_stop(m, "idle");
        return 0;
}

void manager_update_idle(struct manager *m)
{
        bool idle =
            !m->exiting && m->n_jobs == 0 && m->n_requests == 0 && m->config.idle_exit_usec > 0;
        if (!idle) {
                sd_event_source_set_enabled(m->idle_timer, SD_EVENT_OFF);
                return;
        }
        if (!m->idle_timer) {
                if (sd_event_add_time_relative(m->event, &m->idle_timer, CLOCK_MONOTONIC,
                                               m->config.idle_exit_usec, 0, on_idle, m) < 0)
                        fprintf(stderr, "qtrimd: cannot arm the idle timer; staying up\n");
                return;
        }
        sd_event_source_set_time_relative(m->idle_timer, m->config.idle_exit_usec);
        sd_event_source_set_enabled(m->idle_timer, SD_EVENT_ONESHOT);
}

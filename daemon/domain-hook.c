/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "domain-hook.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus-util.h"
#include "config.h"
#include "dbus-api.h"
#include "domain-xml.h"
#include "domain.h"
#include "error.h"
#include "job.h"
#include "manager.h"
#include "util.h"

/* How often a DomainStarting looks whether the jobs it canceled have ended: a cancel takes a
 * worker a fraction of a second to tear down, and the start waits for it. */
#define START_POLL_USEC 50000ULL
/* Where libvirt's QEMU driver (system instance) keeps managed saves: its localstatedir's. */
#define LIBVIRT_QEMU_SAVE_DIR "/var/lib/libvirt/qemu/save"

/* A file a starting domain's disk names. */
struct hook_file {
        dev_t dev;
        ino_t ino;
};

/* A DomainStopped or DomainStarting call, from the caller's uid on. */
struct hook_call {
        struct hook_call *next;
        struct manager *manager;
        sd_bus_message *call;
        bool starting;
        char *name;
        char *xml;
        sd_bus_slot *pending; /* the caller's uid, asked of the bus */

        /* DomainStarting, once the uid is root: the files, the jobs it canceled, the wait. */
        struct hook_file files[DOMAIN_MAX_DISKS];
        unsigned n_files;
        unsigned canceled[DOMAIN_MAX_DISKS]; /* job ids */
        char *canceled_paths[DOMAIN_MAX_DISKS];
        unsigned n_canceled;
        sd_event_source *timer;
        uint64_t deadline;
};

/* A file refused to new requests while its domain starts (the hold). */
struct hold {
        struct hold *next;
        dev_t dev;
        ino_t ino;
        char *domain;
        uint64_t until; /* CLOCK_MONOTONIC */
};

/* One qtrimd, one manager: the calls waiting and the holds are the module's. */
static struct hook_call *calls;
static struct hold *holds;

static void hook_call_free(struct hook_call *h)
{
        for (struct hook_call **p = &calls; *p; p = &(*p)->next)
                if (*p == h) {
                        *p = h->next;
                        break;
                }
        sd_bus_slot_unref(h->pending);
        sd_event_source_disable_unref(h->timer);
        sd_bus_message_unref(h->call);
        for (unsigned i = 0; i < h->n_canceled; i++)
                free(h->canceled_paths[i]);
        free(h->name);
        free(h->xml);
        free(h);
}

static void reply_error(struct hook_call *h, const char *name, const char *message)
{
        sd_bus_reply_method_errorf(h->call, name, "%s", message);
        hook_call_free(h);
}

static void hold_free(struct hold *o)
{
        free(o->domain);
        free(o);
}

/* Drops the holds that have run out, and all of domain's (a domain that stopped is not
 * starting any more; NULL: none). */
static void holds_drop(const char *domain)
{
        uint64_t now = now_usec();
        for (struct hold **p = &holds; *p;) {
                struct hold *o = *p;
                if (o->until > now && !(domain && strcmp(o->domain, domain) == 0)) {
                        p = &o->next;
                        continue;
                }
                *p = o->next;
                hold_free(o);
        }
}

const char *domain_hook_starting_with(dev_t dev, ino_t ino)
{
        holds_drop(NULL);
        for (struct hold *o = holds; o; o = o->next)
                if (o->dev == dev && o->ino == ino)
                        return o->domain;
        return NULL;
}

/* Holds the file for the domain until then; a hold it has already is extended. */
static void hold_file(const char *domain, const struct hook_file *f, uint64_t until)
{
        for (struct hold *o = holds; o; o = o->next)
                if (o->dev == f->dev && o->ino == f->ino && strcmp(o->domain, domain) == 0) {
                        o->until = until;
                        return;
                }
        struct hold *o = calloc(1, sizeof(*o));
        if (!o || !(o->domain = strdup(domain))) {
                free(o);
                fprintf(stderr, "qtrimd: domain %s is starting: out of memory for its hold\n",
                        domain);
                return;
        }
        o->dev = f->dev;
        o->ino = f->ino;
        o->until = until;
        o->next = holds;
        holds = o;
}

static bool job_exists(const struct manager *m, unsigned id)
{
        for (const struct job *j = m->jobs; j; j = j->next)
                if (j->id == id)
                        return true;
        return false;
}

/* What DomainStarting still waits for: jobs it canceled, requests on its files. */
static unsigned starting_pending(struct hook_call *h)
{
        unsigned n = 0;
        for (unsigned i = 0; i < h->n_canceled; i++)
                n += job_exists(h->manager, h->canceled[i]);
        for (unsigned i = 0; i < h->n_files; i++)
                n += manager_cancel_requests_on_file(h->manager, h->files[i].dev, h->files[i].ino);
        return n;
}

/* Holds the domain's files from now on: while DomainStarting waits, and from its answer on. */
static void hold_files(struct hook_call *h)
{
        uint64_t until = now_usec() + HOOK_START_HOLD_USEC;
        for (unsigned i = 0; i < h->n_files; i++)
                hold_file(h->name, &h->files[i], until);
}

/* The jobs have ended (or the wait is over): the start may go on. The hold starts again, so
 * QEMU gets the whole of it to open the images. */
static void answer_starting(struct hook_call *h, unsigned still)
{
        if (still > 0)
                fprintf(stderr,
                        "qtrimd: domain %s is starting: %u job(s) or request(s) on its disks did "
                        "not end within %llu s; its start may fail\n",
                        h->name, still, (unsigned long long)(HOOK_START_WAIT_USEC / 1000000));
        hold_files(h);

        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r = sd_bus_message_new_method_return(h->call, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "o");
        for (unsigned i = 0; r >= 0 && i < h->n_canceled; i++)
                r = sd_bus_message_append(reply, "o", h->canceled_paths[i]);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0)
                sd_bus_reply_method_errorf(h->call, qt_error_dbus_name(QT_ERR_FAILED),
                                           "cannot send the reply: %s", strerror(-r));
        hook_call_free(h);
}

static int on_starting_poll(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct hook_call *h = userdata;
        unsigned still = starting_pending(h);
        if (still == 0 || now_usec() >= h->deadline) {
                answer_starting(h, still);
                return 0;
        }
        sd_event_source_set_time_relative(s, START_POLL_USEC);
        sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return 0;
}

/* The files the domain's disks name, each once. A disk whose file is not there has no job.
 * -EOPNOTSUPP without libvirt support (its XML reader). */
static int read_files(struct hook_call *h)
{
#if QTRIM_LIBVIRT
        struct domain_disk *disks = calloc(DOMAIN_MAX_DISKS, sizeof(*disks));
        if (!disks)
                return -ENOMEM;
        unsigned n = 0;
        char why[256];
        int r = domain_xml_read_disks(h->xml, strlen(h->xml), disks, DOMAIN_MAX_DISKS, &n, why,
                                      sizeof(why));
        if (r < 0)
                fprintf(stderr, "qtrimd: domain %s is starting: its XML: %s\n", h->name, why);
        for (unsigned i = 0; r >= 0 && i < n; i++) {
                struct stat st;
                if (strcmp(disks[i].type, "file") != 0 || !disks[i].source[0] ||
                    stat(disks[i].source, &st) < 0 || !S_ISREG(st.st_mode))
                        continue;
                unsigned k = 0;
                while (k < h->n_files &&
                       !(h->files[k].dev == st.st_dev && h->files[k].ino == st.st_ino))
                        k++;
                if (k == h->n_files)
                        h->files[h->n_files++] = (struct hook_file){st.st_dev, st.st_ino};
        }
        free(disks);
        return r;
#else
        return -EOPNOTSUPP;
#endif
}

/* Root says the domain is starting: cancel what works on its files, wait for it to end. */
static void start_starting(struct hook_call *h)
{
        struct manager *m = h->manager;
        int r = read_files(h);
        if (r == -EOPNOTSUPP)
                return reply_error(h, qt_error_dbus_name(QT_ERR_UNSUPPORTED),
                                   "libvirt support is not built in");
        if (r < 0)
                return reply_error(h, qt_error_dbus_name(QT_ERR_LIBVIRT),
                                   "cannot read the domain's disks from its XML");
        /* No new work on them from here on. */
        hold_files(h);
        for (unsigned i = 0; i < h->n_files; i++) {
                struct job *j = job_find_by_file(m, h->files[i].dev, h->files[i].ino);
                if (!j)
                        continue;
                char *path = strdup(j->path);
                if (!path)
                        return reply_error(h, qt_error_dbus_name(QT_ERR_FAILED), "out of memory");
                fprintf(stderr, "%s: domain %s is starting: canceling job %u\n", j->image, h->name,
                        j->id);
                h->canceled[h->n_canceled] = j->id;
                h->canceled_paths[h->n_canceled++] = path;
                job_cancel(j); /* a queued job ends here and now */
        }
        unsigned still = starting_pending(h);
        if (still == 0)
                return answer_starting(h, 0);
        h->deadline = now_usec() + HOOK_START_WAIT_USEC;
        r = sd_event_add_time_relative(m->event, &h->timer, CLOCK_MONOTONIC, START_POLL_USEC, 0,
                                       on_starting_poll, h);
        if (r < 0)
                answer_starting(h, still);
}

/* Whether the domain stopped because libvirt saved its memory (virsh managedsave, which
 * libvirt-guests does at the host's shutdown): its saved guest holds its filesystems as they
 * were, which a trim could contradict. libvirt writes the save before it stops QEMU, so the file
 * is there when the hook runs. A save to a file of one's own choosing (virsh save FILE) cannot be
 * told from a shutdown here. */
static bool managed_save_exists(const char *domain)
{
        char path[PATH_MAX];
        int n = snprintf(path, sizeof(path), "%s/%s.save", LIBVIRT_QEMU_SAVE_DIR, domain);
        return n > 0 && n < (int)sizeof(path) && !strchr(domain, '/') && access(path, F_OK) == 0;
}

/* Root says the domain has stopped: its disks are queued if ShrinkOnShutdown= names it. */
static void start_stopped(struct hook_call *h)
{
        struct manager *m = h->manager;
        holds_drop(h->name);
        bool wanted = qt_config_shrinks_on_shutdown(&m->config, h->name);
        if (wanted && managed_save_exists(h->name)) {
                fprintf(stderr,
                        "qtrimd: domain %s stopped with its memory saved (virsh managedsave): "
                        "its disks are left alone\n",
                        h->name);
                wanted = false;
        }
        if (!wanted) {
                sd_bus_reply_method_return(h->call, QTRIM_DOMAIN_SHRUNK_ARRAY_SIGNATURE, 0);
                return hook_call_free(h);
        }
        /* What a sweep asks: nothing happens to an image nothing wrote to since qtrim shrank it. */
        const struct job_options options = {
            .convert = !m->config.convert.never,
            .keep_gaps = !m->config.trim_gaps,
            .sweep = true,
        };
        struct domain_call *c;
        int r = domain_call_new(DOMAIN_SHRINK, h->name, &options, true, &c);
        if (r == -EOPNOTSUPP)
                return reply_error(h, qt_error_dbus_name(QT_ERR_UNSUPPORTED),
                                   "libvirt support is not built in");
        if (r >= 0 && (r = domain_call_set_xml(c, h->xml)) < 0)
                domain_call_unref(c);
        if (r >= 0)
                r = manager_start_domain_call(m, h->call, h->name, c);
        if (r == -EBUSY)
                return reply_error(h, qt_error_dbus_name(QT_ERR_TOO_MANY),
                                   "too many requests in progress; try again later");
        if (r < 0)
                return reply_error(h, qt_error_dbus_name(QT_ERR_FAILED), strerror(-r));
        fprintf(stderr, "qtrimd: domain %s stopped: shrinking its disks (ShrinkOnShutdown=)\n",
                h->name);
        hook_call_free(h);
}

static int on_sender_uid(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error)
{
        struct hook_call *h = userdata;
        uid_t uid;
        h->pending = sd_bus_slot_unref(h->pending);
        if (bus_read_sender_uid(reply, &uid) < 0 || uid != 0) {
                reply_error(h, SD_BUS_ERROR_ACCESS_DENIED,
                            "only root (libvirt's hook) may say a domain starts or stopped");
                return 0;
        }
        if (h->starting)
                start_starting(h);
        else
                start_stopped(h);
        return 0;
}

static int hook_method(sd_bus_message *msg, struct manager *m, bool starting, sd_bus_error *error)
{
        const char *name, *xml;
        int r = sd_bus_message_read(msg, "ss", &name, &xml);
        if (r < 0)
                return r;
        if (!name[0] || strlen(name) > 255)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "name a domain (up to 255 bytes)");
        struct hook_call *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->next = calls;
        calls = h;
        h->manager = m;
        h->call = sd_bus_message_ref(msg);
        h->starting = starting;
        h->name = strdup(name);
        h->xml = strdup(xml);
        r = h->name && h->xml ? bus_ask_sender_uid(msg, on_sender_uid, h, &h->pending) : -ENOMEM;
        if (r < 0) {
                hook_call_free(h);
                return r;
        }
        return 1; /* the reply comes later */
}

int domain_hook_stopped(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        return hook_method(msg, userdata, false, error);
}

int domain_hook_starting(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        return hook_method(msg, userdata, true, error);
}

void domain_hook_free_all(void)
{
        /* A start waiting on its jobs goes on: they were canceled, and qtrimd is leaving. */
        while (calls) {
                if (calls->timer)
                        answer_starting(calls, 0);
                else
                        reply_error(calls, qt_error_dbus_name(QT_ERR_FAILED), "qtrimd is stopping");
        }
        while (holds) {
                struct hold *o = holds;
                holds = o->next;
                hold_free(o);
        }
}

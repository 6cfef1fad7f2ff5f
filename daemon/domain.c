/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "domain.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "dbus-api.h"
#include "error.h"
#include "manager.h"
#include "util.h"

#define SNAPSHOT_FD 3

/* What ShrinkDomain says of one disk. */
struct disk_outcome {
        char job[64]; /* the job's object path, "/" when none */
        char error[128];
        char message[QT_ERROR_MESSAGE_MAX];
};

struct domain_call {
        unsigned n_ref;
        enum domain_verb verb;
        char *name;
        struct job_options options;
        bool if_changed;

        struct manager *manager;
        sd_bus_message *call;
        uid_t uid;
        void (*done)(void *userdata); /* the reading is over */
        void *done_userdata;

        /* The child reading the domain (its own process group). */
        pid_t pid;
        int memfd;
        sd_event_source *child, *timer;
        bool timed_out;

        char *xml;   /* the domain as libvirt's hook gave it (domain_call_set_xml), or NULL */
        bool online; /* ShrinkDomain: trim the running guest through its agent */
        struct domain_snapshot *snapshot;
        struct disk_outcome *outcomes; /* ShrinkDomain: one per disk of the snapshot */
        unsigned n_pending;            /* disks whose probe has not answered yet */
        bool queuing;                  /* still starting the probes: do not answer yet */
        bool answered;
};

int domain_call_new(enum domain_verb verb, const char *name, const struct job_options *options,
                    bool if_changed, struct domain_call **ret)
{
        if (!QTRIM_LIBVIRT)
                return -EOPNOTSUPP;
        struct domain_call *c = calloc(1, sizeof(*c));
        if (!c || !(c->name = strdup(name))) {
                free(c);
                return -ENOMEM;
        }
        c->n_ref = 1;
        c->verb = verb;
        c->options = *options;
        c->if_changed = if_changed;
        c->memfd = -1;
        *ret = c;
        return 0;
}

struct domain_call *domain_call_ref(struct domain_call *c)
{
        if (c)
                c->n_ref++;
        return c;
}

/* Kills and reaps what is left of the reading child (at qtrimd's exit, or after a timeout). */
static void stop_reader(struct domain_call *c)
{
        c->child = sd_event_source_disable_unref(c->child);
        c->timer = sd_event_source_disable_unref(c->timer);
        if (c->pid > 0) {
                kill(-c->pid, SIGKILL);
                /* The child itself: it was killed, and its exit is not watched any more. */
                waitpid(c->pid, NULL, 0);
                c->pid = 0;
        }
}

struct domain_call *domain_call_unref(struct domain_call *c)
{
        if (!c || --c->n_ref > 0)
                return NULL;
        stop_reader(c);
        closep(&c->memfd);
        sd_bus_message_unref(c->call);
        free(c->xml);
        free(c->snapshot);
        free(c->outcomes);
        free(c->name);
        free(c);
        return NULL;
}

static void answer_error(struct domain_call *c, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void answer_error(struct domain_call *c, const char *name, const char *fmt, ...)
{
        char message[QT_ERROR_MESSAGE_MAX];
        va_list ap;
        if (c->answered)
                return;
        c->answered = true;
        va_start(ap, fmt);
        vsnprintf(message, sizeof(message), fmt, ap);
        va_end(ap);
        sd_bus_reply_method_errorf(c->call, name, "%s", utf8_sanitize(message));
}

/* Sends reply, or says why it could not be made: the caller must never wait for its timeout. */
static void answer(struct domain_call *c, sd_bus_message *reply, int r)
{
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0)
                answer_error(c, qt_error_dbus_name(QT_ERR_FAILED), "cannot send the reply: %s",
                             strerror(-r));
        c->answered = true;
}

static void finish_reading(struct domain_call *c)
{
        void (*done)(void *) = c->done;
        c->done = NULL;
        if (done)
                done(c->done_userdata);
}

/* The child: connect, read, write the snapshot, exit. Never returns. */
_Noreturn static void run_reader(enum domain_verb verb, const char *uri, const char *name,
                                 int memfd, pid_t parent)
{
        setpgid(0, 0);
        /* A reader qtrimd no longer waits for is of no use. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
                _exit(1);
        struct sigaction sa = {.sa_handler = SIG_DFL};
        for (int sig = 1; sig < _NSIG; sig++)
                sigaction(sig, &sa, NULL); /* fails harmlessly for SIGKILL, SIGSTOP, RT gaps */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* Only the memfd and the standard streams: not the bus connection. */
        if (dup2(memfd, SNAPSHOT_FD) < 0)
                _exit(1);
        close_range(SNAPSHOT_FD + 1, ~0U, 0);

        struct domain_snapshot *s = calloc(1, sizeof(*s));
        if (!s)
                _exit(1);
#if QTRIM_LIBVIRT
        if (verb == DOMAIN_LIST)
                domain_list_read(uri, s, SNAPSHOT_FD, sizeof(*s));
        else
                domain_snapshot_read(uri, name, s);
#endif
        /* At offset 0, before the records a list wrote behind it. */
        _exit(pwrite(SNAPSHOT_FD, s, sizeof(*s), 0) == (ssize_t)sizeof(*s) ? 0 : 1);
}

/* The snapshot comes from our own fork, but is read as bytes from a file: every string ends. */
static void terminate_strings(struct domain_snapshot *s)
{
#define TERMINATE(buf) ((buf)[sizeof(buf) - 1] = '\0')
        TERMINATE(s->error);
        TERMINATE(s->name);
        TERMINATE(s->uuid);
        TERMINATE(s->state);
        for (unsigned i = 0; i < s->n_disks; i++) {
                struct domain_disk *d = &s->disks[i];
                TERMINATE(d->target);
                TERMINATE(d->device);
                TERMINATE(d->bus);
                TERMINATE(d->type);
                TERMINATE(d->source);
                TERMINATE(d->pool);
                TERMINATE(d->volume);
                TERMINATE(d->format);
                TERMINATE(d->discard);
                TERMINATE(d->detect_zeroes);
                TERMINATE(d->defined_discard);
                TERMINATE(d->skip);
                TERMINATE(d->verdict);
        }
#undef TERMINATE
}

static int read_snapshot(struct domain_call *c)
{
        struct domain_snapshot *s = malloc(sizeof(*s));
        if (!s)
                return -ENOMEM;
        ssize_t n = pread(c->memfd, s, sizeof(*s), 0);
        if (n != (ssize_t)sizeof(*s) || s->n_disks > DOMAIN_MAX_DISKS) {
                free(s);
                return -EIO;
        }
        terminate_strings(s);
        c->snapshot = s;
        return 0;
}

static void answer_inspect(struct domain_call *c)
{
        const struct domain_snapshot *s = c->snapshot;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        char version[32] = "";
        if (s->hypervisor_version)
                snprintf(version, sizeof(version), "%llu.%llu.%llu",
                         s->hypervisor_version / 1000000, s->hypervisor_version / 1000 % 1000,
                         s->hypervisor_version % 1000);
        int r = sd_bus_message_new_method_return(c->call, &reply);
        if (r >= 0)
                r = sd_bus_message_append(reply, "a{sv}", 5, "Name", "s", s->name, "UUID", "s",
                                          s->uuid, "State", "s", s->state, "Active", "b", s->active,
                                          "HypervisorVersion", "s", version);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', QTRIM_DOMAIN_DISK_SIGNATURE);
        for (unsigned i = 0; r >= 0 && i < s->n_disks; i++) {
                const struct domain_disk *d = &s->disks[i];
                r = sd_bus_message_append(reply, QTRIM_DOMAIN_DISK_SIGNATURE, d->target, d->device,
                                          d->bus, d->type, d->source, d->format, d->discard,
                                          d->detect_zeroes, d->skip, d->verdict);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        answer(c, reply, r);
}

/* The records domain_list_read() wrote after the snapshot: image, name, state, NUL-ended. */
static void answer_list(struct domain_call *c)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        struct stat st;
        char *records = NULL;
        size_t size = 0;
        int r = fstat(c->memfd, &st) < 0 ? -errno : 0;
        if (r == 0 && st.st_size > (off_t)sizeof(struct domain_snapshot)) {
                size = (size_t)st.st_size - sizeof(struct domain_snapshot);
                records = malloc(size + 1);
                if (!records)
                        r = -ENOMEM;
                else if (pread(c->memfd, records, size, sizeof(struct domain_snapshot)) !=
                         (ssize_t)size)
                        r = -EIO;
        }
        if (r == 0)
                r = sd_bus_message_new_method_return(c->call, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', QTRIM_DOMAIN_IMAGE_SIGNATURE);
        size_t at = 0;
        while (r >= 0 && at < size) {
                char *field[3];
                for (int i = 0; i < 3; i++) {
                        const char *end = at < size ? memchr(records + at, '\0', size - at) : NULL;
                        field[i] = end ? records + at : (char *)"";
                        at = end ? (size_t)(end - records) + 1 : size;
                }
                r = sd_bus_message_append(reply, QTRIM_DOMAIN_IMAGE_SIGNATURE,
                                          utf8_sanitize(field[0]), utf8_sanitize(field[1]),
                                          utf8_sanitize(field[2]));
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        free(records);
        answer(c, reply, r);
}

static void answer_shrink(struct domain_call *c)
{
        const struct domain_snapshot *s = c->snapshot;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r = sd_bus_message_new_method_return(c->call, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', QTRIM_DOMAIN_SHRUNK_SIGNATURE);
        for (unsigned i = 0; r >= 0 && i < s->n_disks; i++) {
                const struct disk_outcome *o = &c->outcomes[i];
                r = sd_bus_message_append(reply, QTRIM_DOMAIN_SHRUNK_SIGNATURE, s->disks[i].target,
                                          s->disks[i].source, o->job, o->error, o->message);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        answer(c, reply, r);
}

void domain_call_disk_done(struct domain_call *c, unsigned index, const char *job_path,
                           const char *error_name, const char *message)
{
        struct disk_outcome *o = &c->outcomes[index];
        snprintf(o->job, sizeof(o->job), "%s", job_path ?: "/");
        snprintf(o->error, sizeof(o->error), "%s", error_name ?: "");
        snprintf(o->message, sizeof(o->message), "%s", message ?: "");
        c->n_pending--;
        if (c->n_pending == 0 && !c->queuing)
                answer_shrink(c);
}

/* A running domain, online: one job for the whole guest, which every disk it measures names. */
static void queue_online(struct domain_call *c)
{
        const struct domain_snapshot *s = c->snapshot;
        if (!s->active)
                return answer_error(c, qt_error_dbus_name(QT_ERR_DOMAIN_NOT_RUNNING),
                                    "the domain is %s; an online trim needs it running (without "
                                    "--online, qtrim shrinks a shut-off domain's disks)",
                                    s->state);
        if (job_find_online(c->manager, s->name))
                return answer_error(c, qt_error_dbus_name(QT_ERR_ALREADY_RUNNING),
                                    "the domain already has an online trim");
        c->outcomes = calloc(s->n_disks ?: 1, sizeof(*c->outcomes));
        if (!c->outcomes)
                return answer_error(c, qt_error_dbus_name(QT_ERR_FAILED), "out of memory");
        unsigned measured = 0;
        for (unsigned i = 0; i < s->n_disks; i++) {
                const struct domain_disk *d = &s->disks[i];
                if (!domain_disk_online(d))
                        continue;
                measured++;
                /* As for ShrinkDomain: a non-root caller acts on ImageDirectories= only. */
                if (c->uid != 0 && !manager_in_image_directories(c->manager, d->source))
                        return answer_error(c, SD_BUS_ERROR_ACCESS_DENIED,
                                            "%s (%s) lies outside the image directories "
                                            "(ImageDirectories= in qtrimd.conf): root's",
                                            d->target, d->source);
        }
        if (measured == 0)
                return answer_error(c, qt_error_dbus_name(QT_ERR_UNSUPPORTED),
                                    "the domain has no file-backed disk an online trim could "
                                    "shrink");
        struct job *j;
        int r = job_new_online(c->manager, s, c->uid, &j);
        if (r < 0)
                return answer_error(c, qt_error_dbus_name(QT_ERR_FAILED),
                                    "cannot create the job: %s", strerror(-r));
        for (unsigned i = 0; i < s->n_disks; i++) {
                const struct domain_disk *d = &s->disks[i];
                struct disk_outcome *o = &c->outcomes[i];
                snprintf(o->job, sizeof(o->job), "%s", domain_disk_online(d) ? j->path : "/");
                if (!domain_disk_online(d))
                        snprintf(o->message, sizeof(o->message), "%s",
                                 d->skip[0] ? d->skip : "not a file the guest writes");
        }
        answer_shrink(c);
        manager_dispatch_queue(c->manager);
}

/* A shut-off domain: every disk a shrink takes goes through the probe as Shrink's image would. */
static void queue_disks(struct domain_call *c)
{
        const struct domain_snapshot *s = c->snapshot;
        /* A running guest can trim itself through its agent; a paused one cannot. */
        if (s->active)
                return answer_error(
                    c, qt_error_dbus_name(QT_ERR_DOMAIN_RUNNING),
                    "the domain is %s; shut it down first%s", s->state,
                    strcmp(s->state, "running") == 0 ? ", or trim it online (--online)" : "");
        /* Its saved memory holds filesystems as the guest last saw them, which a trim of what
         * the disks say is free could contradict: as with a hibernated guest, hands off. */
        if (s->managed_save)
                return answer_error(c, qt_error_dbus_name(QT_ERR_DOMAIN_RUNNING),
                                    "the domain's memory is saved (virsh managedsave); start it "
                                    "and shut it down first, or drop the saved state "
                                    "(virsh managedsave-remove)");
        c->outcomes = calloc(s->n_disks ?: 1, sizeof(*c->outcomes));
        if (!c->outcomes)
                return answer_error(c, qt_error_dbus_name(QT_ERR_FAILED), "out of memory");

        c->queuing = true;
        for (unsigned i = 0; i < s->n_disks; i++) {
                const struct domain_disk *d = &s->disks[i];
                struct disk_outcome *o = &c->outcomes[i];
                if (d->skip[0]) {
                        snprintf(o->job, sizeof(o->job), "/");
                        snprintf(o->message, sizeof(o->message), "%s", d->skip);
                        continue;
                }
                struct job_options options = c->options;
                /* The format QEMU uses for the disk: declared, never guessed. */
                snprintf(options.format.declared, sizeof(options.format.declared), "%s", d->format);
                c->n_pending++;
                manager_shrink_disk(c->manager, c->call, c->uid, d->source, &options, c->if_changed,
                                    c, i);
        }
        c->queuing = false;
        if (c->n_pending == 0)
                answer_shrink(c);
}

static void on_snapshot(struct domain_call *c)
{
        const struct domain_snapshot *s = c->snapshot;
        const char *uri = c->manager->config.libvirt_uri;
        switch (s->status) {
        case DOMAIN_OK:
                break;
        case DOMAIN_NO_LIBVIRT:
                return answer_error(c, qt_error_dbus_name(QT_ERR_LIBVIRT),
                                    "cannot connect to libvirt at %s: %s; is libvirtd running? "
                                    "(LibvirtURI= in qtrimd.conf)",
                                    uri, s->error);
        case DOMAIN_NOT_FOUND:
                return answer_error(c, qt_error_dbus_name(QT_ERR_NO_SUCH_DOMAIN),
                                    "no such domain at %s", uri);
        default:
                return answer_error(c, qt_error_dbus_name(QT_ERR_LIBVIRT), "%s", s->error);
        }
        if (c->verb == DOMAIN_INSPECT)
                answer_inspect(c);
        else if (c->verb == DOMAIN_LIST)
                answer_list(c);
        else if (c->online)
                queue_online(c);
        else
                queue_disks(c);
}

static int on_reader_exit(sd_event_source *source, const siginfo_t *si, void *userdata)
{
        struct domain_call *c = domain_call_ref(userdata);
        bool exited_ok = si->si_code == CLD_EXITED && si->si_status == 0;
        int status = si->si_code == CLD_EXITED ? si->si_status : 128 + si->si_status;
        /* Whatever it started (a remote URI's ssh) goes with it. */
        c->pid = 0;
        kill(-si->si_pid, SIGKILL);
        while (waitpid(-si->si_pid, NULL, WNOHANG) > 0)
                ;
        stop_reader(c);

        if (c->timed_out)
                answer_error(c, qt_error_dbus_name(QT_ERR_LIBVIRT),
                             "libvirt at %s did not answer within %llu s",
                             c->manager->config.libvirt_uri,
                             (unsigned long long)(DOMAIN_READ_TIMEOUT_USEC / 1000000));
        else if (!exited_ok || read_snapshot(c) < 0)
                answer_error(c, qt_error_dbus_name(QT_ERR_FAILED),
                             "reading the domain failed (status %d)", status);
        else
                on_snapshot(c);
        finish_reading(c);
        domain_call_unref(c);
        return 0;
}

static int on_reader_timeout(sd_event_source *source, uint64_t usec, void *userdata)
{
        struct domain_call *c = userdata;
        c->timed_out = true;
        /* Its exit, seen by on_reader_exit, answers the call. */
        if (c->pid > 0)
                kill(-c->pid, SIGKILL);
        return 0;
}

void domain_call_set_online(struct domain_call *c)
{
        c->online = true;
}

bool domain_disk_online(const struct domain_disk *d)
{
        return strcmp(d->device, "disk") == 0 && d->source[0] &&
               (strcmp(d->type, "file") == 0 || strcmp(d->type, "volume") == 0);
}

int domain_call_set_xml(struct domain_call *c, const char *xml)
{
        free(c->xml);
        c->xml = strdup(xml);
        return c->xml ? 0 : -ENOMEM;
}

/* The hook's domain: shut off (it has stopped), its disks judged as the reader judges them. The
 * XML is parsed here, in the loop: it is bounded by the bus's message size, and the parser is
 * the fuzzed one the reader uses. Volumes are not resolved: that would be a call to libvirt,
 * which a hook must never make. */
static void snapshot_from_xml(struct domain_call *c)
{
#if QTRIM_LIBVIRT
        struct domain_snapshot *s = calloc(1, sizeof(*s));
        if (!s)
                return answer_error(c, qt_error_dbus_name(QT_ERR_FAILED), "out of memory");
        c->snapshot = s;
        snprintf(s->name, sizeof(s->name), "%s", c->name);
        snprintf(s->state, sizeof(s->state), "shut off");
        char why[256];
        if (domain_xml_read_disks(c->xml, strlen(c->xml), s->disks, DOMAIN_MAX_DISKS, &s->n_disks,
                                  why, sizeof(why)) < 0)
                return answer_error(c, qt_error_dbus_name(QT_ERR_LIBVIRT), "%s", why);
        for (unsigned i = 0; i < s->n_disks; i++) {
                struct domain_disk *d = &s->disks[i];
                if (strcmp(d->type, "volume") == 0 && strcmp(d->device, "disk") == 0) {
                        char why_skip[sizeof(d->skip)];
                        snprintf(why_skip, sizeof(why_skip),
                                 "volume %s of pool %s: not resolved from libvirt's hook",
                                 d->volume, d->pool);
                        memcpy(d->skip, why_skip, sizeof(why_skip));
                }
                domain_disk_judge(d, s->name, 0, false);
        }
        on_snapshot(c);
#endif
}

void domain_call_start(struct domain_call *c, struct manager *m, sd_bus_message *call, uid_t uid,
                       void (*done)(void *userdata), void *userdata)
{
        c->manager = m;
        c->call = sd_bus_message_ref(call);
        c->uid = uid;
        c->done = done;
        c->done_userdata = userdata;
        if (c->xml) {
                domain_call_ref(c);
                snapshot_from_xml(c);
                finish_reading(c);
                domain_call_unref(c);
                return;
        }

        domain_call_ref(c);
        c->memfd = memfd_create("qtrim-domain", MFD_CLOEXEC);
        pid_t parent = getpid();
        pid_t pid = c->memfd < 0 ? -1 : fork();
        if (pid == 0)
                run_reader(c->verb, m->config.libvirt_uri, c->name, c->memfd, parent);
        int r = pid < 0 ? -errno : 0;
        if (pid > 0) {
                c->pid = pid;
                /* Also here, so the timeout's kill reaches the group whichever runs first. */
                setpgid(pid, pid);
                r = sd_event_add_child(m->event, &c->child, pid, WEXITED, on_reader_exit, c);
                if (r >= 0)
                        r = sd_event_add_time_relative(m->event, &c->timer, CLOCK_MONOTONIC,
                                                       DOMAIN_READ_TIMEOUT_USEC, 0,
                                                       on_reader_timeout, c);
        }
        if (r < 0) {
                stop_reader(c);
                answer_error(c, qt_error_dbus_name(QT_ERR_FAILED),
                             "cannot start the reader of the domain: %s", strerror(-r));
                finish_reading(c);
        }
        domain_call_unref(c);
}

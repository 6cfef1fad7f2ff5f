/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "job.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "authorize.h"
#include "bus-util.h"
#include "config.h"
#include "convert.h"
#include "dbus-api.h"
#include "domain.h"
#include "journal.h"
#include "metrics.h"
#include "state-dir.h"
#include "util.h"

static const char *const state_names[] = {
    [JOB_QUEUED] = QTRIM_STATE_QUEUED,     [JOB_RUNNING] = QTRIM_STATE_RUNNING,
    [JOB_DONE] = QTRIM_STATE_DONE,         [JOB_FAILED] = QTRIM_STATE_FAILED,
    [JOB_CANCELED] = QTRIM_STATE_CANCELED,
};

const char *job_state_name(enum job_state state)
{
        return state_names[state];
}

static void emit_changed(struct job *j, const char *property)
{
        if (property)
                sd_bus_emit_properties_changed(j->manager->bus, j->path, QTRIM_JOB_IFACE, property,
                                               NULL);
}

struct qt_format_claim job_format_claim(const struct job_format *f)
{
        return (struct qt_format_claim){
            .declared = f->declared[0] ? f->declared : NULL,
            .configured = f->configured[0] ? f->configured : NULL,
        };
}

int job_new(struct manager *m, const char *image, dev_t dev, ino_t ino, uid_t uid,
            const struct job_options *options, const struct qt_report *probed, struct job **ret)
{
        struct job *j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        j->manager = m;
        j->id = ++m->next_job_id;
        j->dev = dev;
        j->ino = ino;
        j->uid = uid;
        j->options = *options;
        j->state = JOB_QUEUED;
        j->report = *probed;
        j->report.finished = false;
        j->report.phase = QT_PHASE_QUEUED;
        j->report.progress = 0;
        snprintf(j->report.image_state, sizeof(j->report.image_state), QT_IMAGE_UNTOUCHED);
        j->queued_at = realtime_usec();
        j->queued_usec = now_usec();
        j->image = strdup(image);
        if (!j->image || asprintf(&j->path, QTRIM_JOB_PATH_PREFIX "/%u", j->id) < 0) {
                free(j->image);
                free(j);
                return -ENOMEM;
        }

        struct job **tail = &m->jobs;
        while (*tail)
                tail = &(*tail)->next;
        *tail = j;
        m->n_jobs++;
        sd_bus_emit_signal(m->bus, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE, "JobNew", "uos", j->id,
                           j->path, j->image);
        *ret = j;
        return 0;
}

/* "1.2 GiB reclaimed", "grew by 4.1 MiB", "nothing reclaimed": allocation before minus after,
 * the one meaning of "reclaimed" on the bus, in the journal and in qtrimctl. */
static char *format_reclaimed(char buf[FORMAT_BYTES_MAX + 16], int64_t reclaimed)
{
        char bytes[FORMAT_BYTES_MAX];
        if (reclaimed > 0)
                snprintf(buf, FORMAT_BYTES_MAX + 16, "%s reclaimed",
                         format_bytes(bytes, (uint64_t)reclaimed));
        else if (reclaimed < 0)
                snprintf(buf, FORMAT_BYTES_MAX + 16, "grew by %s",
                         format_bytes(bytes, (uint64_t)-reclaimed));
        else
                snprintf(buf, FORMAT_BYTES_MAX + 16, "nothing reclaimed");
        return buf;
}

static void log_result(const struct job *j)
{
        char before[FORMAT_BYTES_MAX], after[FORMAT_BYTES_MAX], trimmed[FORMAT_BYTES_MAX],
            reclaimed[FORMAT_BYTES_MAX + 16], took[FORMAT_DURATION_MAX],
            queued[FORMAT_DURATION_MAX + 16] = "", message[QT_REPORT_STRING_MAX + 256];
        const struct qt_report *r = &j->report;
        /* The run time counts from the worker's start; time spent waiting is said apart. */
        uint64_t waited = (j->started_usec ? j->started_usec : now_usec()) - j->queued_usec;
        if (waited >= 1000000u) {
                char d[FORMAT_DURATION_MAX];
                snprintf(queued, sizeof(queued), " after %s queued", format_duration(d, waited));
        }
        if (j->state == JOB_DONE && r->nothing_to_trim)
                snprintf(message, sizeof(message), "%s", r->message);
        else if (j->state == JOB_DONE)
                snprintf(message, sizeof(message),
                         "%s → %s allocated (%s), %s trimmed in the guest, in %s%s%s%s",
                         format_bytes(before, r->bytes_before), format_bytes(after, r->bytes_after),
                         format_reclaimed(reclaimed, j->bytes_reclaimed),
                         format_bytes(trimmed, r->bytes_trimmed),
                         format_duration(took, now_usec() - j->started_usec), queued,
                         r->message[0] ? "; " : "", r->message);
        else if (j->state == JOB_CANCELED) /* "canceled; the image is ..." */
                snprintf(message, sizeof(message), "%s", r->error.message);
        else
                snprintf(message, sizeof(message), "%s: %s", job_state_name(j->state),
                         r->error.message);
        journal_job(&(struct journal_job){
            .job_id = j->id,
            .image = j->image,
            .result = job_state_name(j->state),
            .image_state = r->image_state,
            .bytes_before = r->bytes_before,
            .bytes_after = r->bytes_after,
            .bytes_reclaimed = j->bytes_reclaimed,
            .message = message,
        });
        for (size_t i = 0; i < r->n_fs; i++)
                if (strcmp(r->fs[i].state, "skipped") == 0 || strcmp(r->fs[i].state, "failed") == 0)
                        fprintf(stderr, "%s: %s (%s): %s: %s\n", j->image, r->fs[i].name,
                                r->fs[i].fstype[0] ? r->fs[i].fstype : "unknown", r->fs[i].state,
                                r->fs[i].message);
}

/* The numbers a job ends with. A job whose worker never said what the host holds (canceled in
 * the queue, a worker that died) is measured here. A cancel says what it left. */
static void settle_outcome(struct job *j)
{
        struct qt_report *r = &j->report;
        struct stat st;
        /* An online job's image is a domain's name, not a file. */
        if (!j->bytes_after_known)
                r->bytes_after = !j->online && stat(j->image, &st) == 0 ? qt_file_allocated(&st)
                                                                        : r->bytes_before;
        j->bytes_reclaimed = (int64_t)r->bytes_before - (int64_t)r->bytes_after;
        if (j->state != JOB_CANCELED)
                return;
        r->error = (struct qt_error){};
        if (j->online)
                qt_error_set(&r->error, QT_ERR_CANCELED, ECANCELED,
                             "canceled; the guest may go on trimming until its fstrim ends");
        else if (strcmp(r->image_state, QT_IMAGE_TRIMMED) == 0)
                qt_error_set(&r->error, QT_ERR_CANCELED, ECANCELED,
                             "canceled; the image was trimmed in place, not converted");
        else
                qt_error_set(&r->error, QT_ERR_CANCELED, ECANCELED,
                             "canceled; the image is untouched");
}

/* The end of a job: publish the final state, say JobRemoved, drop the object. */
static void job_finish(struct job *j, enum job_state state)
{
        struct manager *m = j->manager;
        j->state = state;
        j->finished_at = realtime_usec();
        settle_outcome(j);
        if (state == JOB_DONE) {
                j->report.phase = QT_PHASE_DONE;
                j->report.progress = 1.0;
        }
        log_result(j);
        metrics_job_ended(m->metrics, &(struct metrics_job){
                                          .image = j->image,
                                          .result = job_state_name(state),
                                          .bytes_before = j->report.bytes_before,
                                          .bytes_after = j->report.bytes_after,
                                          .finished_at = j->finished_at,
                                          .sweep = j->options.sweep,
                                      });
        /* if-changed is about images a shrink compacted: not a domain's trim. */
        int r = state == JOB_DONE && !j->online ? state_shrunk_set(m->state_dir, j->image) : 0;
        if (r < 0)
                fprintf(stderr, "%s: cannot record the shrink in %s: %s\n", j->image, m->state_dir,
                        strerror(-r));
        state_job_end(m->state_dir, j->id);

        sd_bus_emit_properties_changed_strv(m->bus, j->path, QTRIM_JOB_IFACE, NULL);
        sd_bus_emit_signal(m->bus, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE, "JobRemoved", "uoss",
                           j->id, j->path, j->image, job_state_name(state));

        for (struct job **p = &m->jobs; *p; p = &(*p)->next)
                if (*p == j) {
                        *p = j->next;
                        break;
                }
        m->n_jobs--;
        if (j->worker)
                m->n_running--;
        job_free(j);
        manager_dispatch_queue(m);
        manager_check_exit(m);
}

/* Keeps the crash record in step with the worker's temporary copy. */
static void record_temp_file(struct job *j)
{
        const char *now = j->report.temp_file;
        if (strcmp(now, j->recorded_temp ? j->recorded_temp : "") == 0)
                return;
        int r = state_job_set(j->manager->state_dir, j->id, j->image, now);
        if (r < 0)
                fprintf(stderr, "%s: cannot record the temporary copy %s: %s, continuing\n",
                        j->image, now, strerror(-r));
        free(j->recorded_temp);
        j->recorded_temp = now[0] ? strdup(now) : NULL;
}

static void on_worker_change(struct worker *w, const char *property, void *userdata)
{
        struct job *j = userdata;
        record_temp_file(j);
        if (property && strcmp(property, "BytesAfter") == 0)
                j->bytes_after_known = true;
        emit_changed(j, property);
        if (property && strcmp(property, "Error") == 0)
                emit_changed(j, "ErrorMessage");
        /* A new phase starts the progress where that phase begins: clients must see both. */
        if (property && strcmp(property, "Phase") == 0)
                emit_changed(j, "Progress");
}

static void on_worker_exit(struct worker *w, void *userdata)
{
        struct job *j = userdata;
        /* A worker that was killed could not delete its copy, nor always say its name first:
         * every copy of the image goes (the job owns the image, and its processes are gone). */
        char removed[PATH_MAX];
        int n = j->online ? 0 : qt_convert_remove_temps(j->image, removed);
        if (n > 0)
                fprintf(stderr, "%s: removed %s%s left by the dead worker\n", j->image, removed,
                        n > 1 ? " and more copies" : "");
        j->report.temp_file[0] = '\0';
        record_temp_file(j);
        /* The worker's word decides: a cancel that came after the rename changed nothing. */
        enum job_state state = JOB_DONE;
        if (j->report.error.code == QT_ERR_CANCELED)
                state = JOB_CANCELED;
        else if (qt_error_is_set(&j->report.error))
                state = JOB_FAILED;
        job_finish(j, state);
}

static const struct worker_callbacks job_worker_callbacks = {
    .on_change = on_worker_change,
    .on_exit = on_worker_exit,
};

int job_new_online(struct manager *m, const struct domain_snapshot *s, uid_t uid, struct job **ret)
{
        const struct job_options none = {};
        const struct qt_report probed = {};
        struct domain_snapshot *copy = malloc(sizeof(*copy));
        if (!copy)
                return -ENOMEM;
        *copy = *s;
        int r = job_new(m, s->name, 0, 0, uid, &none, &probed, ret);
        if (r < 0) {
                free(copy);
                return r;
        }
        (*ret)->online = copy;
        return 0;
}

static int run_online_trim(const void *arg, struct qt_reporter *r)
{
#if QTRIM_LIBVIRT
        const struct job *j = arg;
        return domain_online_trim(j->manager->config.libvirt_uri, j->online, r);
#else
        return -EOPNOTSUPP; /* never queued: ShrinkDomain answers Unsupported */
#endif
}

int job_start(struct job *j)
{
        struct qt_shrink_request req = {
            .kind = QT_JOB_SHRINK,
            .image = j->image,
            .dev = j->dev,
            .ino = j->ino,
            .format = job_format_claim(&j->options.format),
            .formats = &j->manager->config.formats,
            .convert = j->options.convert,
            .keep_gaps = j->options.keep_gaps,
            .convert_policy = j->manager->config.convert,
            .attach = j->manager->config.attach,
            .scratch_dir = j->manager->scratch_dir,
        };
        /* Before anything happens to the image: a crash of qtrimd from here on is reported
         * by the next one. */
        int r = state_job_set(j->manager->state_dir, j->id, j->image, "");
        if (r < 0)
                fprintf(stderr, "%s: cannot record the job in %s: %s, continuing\n", j->image,
                        j->manager->state_dir, strerror(-r));
        /* The worker's lines go straight into the job's report, over the probe's facts. */
        if (j->online)
                r = worker_start_task(j->manager->event, run_online_trim, j, &j->report,
                                      &job_worker_callbacks, j, &j->worker);
        else
                r = worker_start(j->manager->event, &req, &j->report, &job_worker_callbacks, j,
                                 &j->worker);
        if (r < 0) {
                qt_error_set(&j->report.error, QT_ERR_FAILED, r, "cannot start a worker: %s",
                             strerror(-r));
                job_finish(j, JOB_FAILED);
                return r;
        }
        j->manager->n_running++;
        j->state = JOB_RUNNING;
        j->started_at = realtime_usec();
        j->started_usec = now_usec();
        sd_bus_emit_properties_changed(j->manager->bus, j->path, QTRIM_JOB_IFACE, "State",
                                       "StartedAt", NULL);
        return 0;
}

void job_cancel(struct job *j)
{
        if (j->state == JOB_QUEUED) {
                job_finish(j, JOB_CANCELED);
                return;
        }
        j->cancel_requested = true;
        worker_cancel(j->worker);
}

struct job *job_find_by_file(struct manager *m, dev_t dev, ino_t ino)
{
        for (struct job *j = m->jobs; j; j = j->next)
                if (!j->online && j->dev == dev && j->ino == ino)
                        return j;
        return NULL;
}

struct job *job_find_online(struct manager *m, const char *domain)
{
        for (struct job *j = m->jobs; j; j = j->next)
                if (j->online && strcmp(j->image, domain) == 0)
                        return j;
        return NULL;
}

void job_free(struct job *j)
{
        if (!j)
                return;
        worker_free(j->worker);
        free(j->online);
        free(j->recorded_temp);
        free(j->image);
        free(j->path);
        free(j);
}

/* D-Bus */

/* A Cancel(), waiting for the caller's uid, then (somebody else's job) for polkit. The job may
 * end meanwhile: it is found again by id. */
struct cancel_call {
        struct manager *manager;
        unsigned job_id;
        sd_bus_message *call;
        sd_bus_slot *pending; /* the bus call awaited */
};

static struct job *cancel_call_job(const struct cancel_call *c)
{
        for (struct job *k = c->manager->jobs; k; k = k->next)
                if (k->id == c->job_id)
                        return k;
        return NULL;
}

static void cancel_call_free(struct cancel_call *c)
{
        sd_bus_slot_unref(c->pending);
        sd_bus_message_unref(c->call);
        free(c);
}

static void on_cancel_authorized(bool allowed, const char *why, void *userdata)
{
        struct cancel_call *c = userdata;
        struct job *j = cancel_call_job(c);
        if (!allowed)
                sd_bus_reply_method_errorf(c->call, SD_BUS_ERROR_ACCESS_DENIED,
                                           "only root or the job's owner may cancel it: %s", why);
        else {
                if (j)
                        job_cancel(j);
                sd_bus_reply_method_return(c->call, NULL);
        }
        /* The slot is being dispatched: sd-bus holds its own reference until the call returns. */
        cancel_call_free(c);
}

/* The caller's uid is known: its own job, root, or polkit's answer for somebody else's. */
static int on_cancel_uid(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error)
{
        struct cancel_call *c = userdata;
        c->pending = sd_bus_slot_unref(c->pending);
        struct job *j = cancel_call_job(c);
        uid_t uid;
        int r = bus_read_sender_uid(reply, &uid);
        if (r < 0 || !j) {
                if (r < 0)
                        sd_bus_reply_method_errorf(c->call, SD_BUS_ERROR_ACCESS_DENIED,
                                                   "cannot tell who is calling (the caller left "
                                                   "the bus?)");
                else /* it ended meanwhile: nothing left to cancel */
                        sd_bus_reply_method_return(c->call, NULL);
                cancel_call_free(c);
                return 0;
        }
        if (uid != j->uid) {
                r = authorize(c->call, uid, QTRIM_ACTION_CANCEL_ANY, j->image, on_cancel_authorized,
                              c, &c->pending);
                if (r == 0)
                        return 0; /* polkit answers later */
                if (r < 0) {
                        sd_bus_reply_method_errnof(c->call, r, "cannot ask polkit: %m");
                        cancel_call_free(c);
                        return 0;
                }
        }
        on_cancel_authorized(true, NULL, c); /* its own job, or root */
        return 0;
}

static int method_cancel(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        struct job *j = userdata;
        struct cancel_call *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (struct cancel_call){
            .manager = j->manager, .job_id = j->id, .call = sd_bus_message_ref(msg)};
        int r = bus_ask_sender_uid(msg, on_cancel_uid, c, &c->pending);
        if (r < 0) {
                cancel_call_free(c);
                return r;
        }
        return 1; /* the reply comes with the caller's uid, or polkit's answer */
}

static int get_state(sd_bus *bus, const char *path, const char *interface, const char *property,
                     sd_bus_message *reply, void *userdata, sd_bus_error *error)
{
        return sd_bus_message_append(reply, "s", job_state_name(((struct job *)userdata)->state));
}

static int get_phase(sd_bus *bus, const char *path, const char *interface, const char *property,
                     sd_bus_message *reply, void *userdata, sd_bus_error *error)
{
        return sd_bus_message_append(reply, "s",
                                     qt_phase_name(((struct job *)userdata)->report.phase));
}

/* For char arrays inside struct qt_report (sd-bus's default getter wants a char *). */
static int get_chars(sd_bus *bus, const char *path, const char *interface, const char *property,
                     sd_bus_message *reply, void *userdata, sd_bus_error *error)
{
        return sd_bus_message_append(reply, "s", (const char *)userdata);
}

/* For bools (sd-bus's default getter reads an int). */
static int get_bool(sd_bus *bus, const char *path, const char *interface, const char *property,
                    sd_bus_message *reply, void *userdata, sd_bus_error *error)
{
        return sd_bus_message_append(reply, "b", (int)*(bool *)userdata);
}

static int get_error_name(sd_bus *bus, const char *path, const char *interface,
                          const char *property, sd_bus_message *reply, void *userdata,
                          sd_bus_error *error)
{
        const struct qt_error *e = &((struct job *)userdata)->report.error;
        return sd_bus_message_append(reply, "s",
                                     qt_error_is_set(e) ? qt_error_dbus_name(e->code) : "");
}

static int get_filesystems(sd_bus *bus, const char *path, const char *interface,
                           const char *property, sd_bus_message *reply, void *userdata,
                           sd_bus_error *error)
{
        return bus_append_filesystems(reply, &((struct job *)userdata)->report);
}

static int get_phase_times(sd_bus *bus, const char *path, const char *interface,
                           const char *property, sd_bus_message *reply, void *userdata,
                           sd_bus_error *error)
{
        const struct qt_report *rep = &((struct job *)userdata)->report;
        int r = sd_bus_message_open_container(reply, 'a', QTRIM_PHASE_TIME_ELEMENT);
        for (int p = QT_PHASE_INSPECT; r >= 0 && p < QT_PHASE_DONE; p++)
                if (rep->phase_usec[p] > 0)
                        r = sd_bus_message_append(reply, QTRIM_PHASE_TIME_ELEMENT, qt_phase_name(p),
                                                  rep->phase_usec[p]);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

#define REPORT(member) offsetof(struct job, report) + offsetof(struct qt_report, member)
#define CHANGE         SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE
#define CONST          SD_BUS_VTABLE_PROPERTY_CONST

const sd_bus_vtable job_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("Id", "u", NULL, offsetof(struct job, id), CONST),
    SD_BUS_PROPERTY("Image", "s", NULL, offsetof(struct job, image), CONST),
    SD_BUS_PROPERTY("State", "s", get_state, 0, CHANGE),
    SD_BUS_PROPERTY("Phase", "s", get_phase, 0, CHANGE),
    SD_BUS_PROPERTY("Progress", "d", NULL, REPORT(progress), CHANGE),
    SD_BUS_PROPERTY("StartedByUID", "u", NULL, offsetof(struct job, uid), CONST),
    SD_BUS_PROPERTY("Convert", "b", get_bool, offsetof(struct job, options.convert), CONST),
    SD_BUS_PROPERTY("Format", "s", get_chars, REPORT(format), CHANGE),
    SD_BUS_PROPERTY("FormatSource", "s", get_chars, REPORT(format_source), CHANGE),
    SD_BUS_PROPERTY("VirtualSize", "t", NULL, REPORT(virtual_size), CHANGE),
    SD_BUS_PROPERTY("BytesBefore", "t", NULL, REPORT(bytes_before), CHANGE),
    SD_BUS_PROPERTY("BytesAfter", "t", NULL, REPORT(bytes_after), CHANGE),
    SD_BUS_PROPERTY("BytesTrimmed", "t", NULL, REPORT(bytes_trimmed), CHANGE),
    SD_BUS_PROPERTY("BytesReclaimed", "x", NULL, offsetof(struct job, bytes_reclaimed), CHANGE),
    SD_BUS_PROPERTY("Converted", "b", get_bool, REPORT(converted), CHANGE),
    SD_BUS_PROPERTY("ImageState", "s", get_chars, REPORT(image_state), CHANGE),
    SD_BUS_PROPERTY("NothingToTrim", "b", get_bool, REPORT(nothing_to_trim), CHANGE),
    SD_BUS_PROPERTY("Message", "s", get_chars, REPORT(message), CHANGE),
    SD_BUS_PROPERTY("Filesystems", QTRIM_FS_ARRAY_SIGNATURE, get_filesystems, 0, CHANGE),
    SD_BUS_PROPERTY("PhaseTimes", QTRIM_PHASE_TIME_SIGNATURE, get_phase_times, 0, CHANGE),
    SD_BUS_PROPERTY("AttachBackend", "s", get_chars, REPORT(attach_backend), CHANGE),
    SD_BUS_PROPERTY("NbdDevice", "s", get_chars, REPORT(nbd_device), CHANGE),
    SD_BUS_PROPERTY("Error", "s", get_error_name, 0, CHANGE),
    SD_BUS_PROPERTY("ErrorMessage", "s", get_chars, REPORT(error.message), CHANGE),
    /* Never changes, but rides along with the final PropertiesChanged all the same. */
    SD_BUS_PROPERTY("QueuedAt", "t", NULL, offsetof(struct job, queued_at), CHANGE),
    SD_BUS_PROPERTY("StartedAt", "t", NULL, offsetof(struct job, started_at), CHANGE),
    SD_BUS_PROPERTY("FinishedAt", "t", NULL, offsetof(struct job, finished_at), CHANGE),
    SD_BUS_METHOD("Cancel", NULL, NULL, method_cancel, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

int job_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                    void **ret_found, sd_bus_error *error)
{
        struct manager *m = userdata;
        for (struct job *j = m->jobs; j; j = j->next)
                if (strcmp(j->path, path) == 0) {
                        *ret_found = j;
                        return 1;
                }
        return 0;
}

int job_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes,
                        sd_bus_error *error)
{
        struct manager *m = userdata;
        char **nodes = calloc(m->n_jobs + 1, sizeof(char *));
        if (!nodes)
                return -ENOMEM;
        size_t n = 0;
        for (struct job *j = m->jobs; j; j = j->next)
                if (!(nodes[n++] = strdup(j->path))) {
                        for (size_t i = 0; i < n; i++)
                                free(nodes[i]);
                        free(nodes);
                        return -ENOMEM;
                }
        *ret_nodes = nodes;
        return 0;
}

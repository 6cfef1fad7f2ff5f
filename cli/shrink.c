/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * How no event is lost: the matches for the jobs' PropertiesChanged, the manager's JobRemoved and
 * qtrimd's NameOwnerChanged are in place before the first Shrink call, so every signal about a job
 * is either queued while we wait for a Shrink reply or arrives later. Each job's properties are
 * then fetched once with an asynchronous GetAll: its reply is dispatched in bus order among the
 * signals, so an older snapshot never overwrites a newer change. A job ends when its JobRemoved
 * arrives; the PropertiesChanged just before it carries the final properties.
 *
 * Everything runs on one sd-event loop: bus messages, and SIGINT/SIGTERM, which cancel our jobs.
 */
#include "shrink.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/param.h>
#include <sys/signalfd.h>
#include <systemd/sd-event.h>

#include "common.h"
#include "dbus-api.h"
#include "error.h"
#include "util.h"

#define PROPERTIES_CHANGED_MATCH                                                                   \
        "type='signal',sender='" QTRIM_BUS_NAME "',"                                               \
        "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"                  \
        "path_namespace='" QTRIM_JOB_PATH_PREFIX "',arg0='" QTRIM_JOB_IFACE "'"

#define NAME_OWNER_CHANGED_MATCH                                                                   \
        "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"                \
        "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='" QTRIM_BUS_NAME "'"

enum job_result {
        JOB_UNSUBMITTED, /* Shrink not called (yet) */
        JOB_PENDING,     /* queued or running in qtrimd */
        JOB_DONE,
        JOB_FAILED,
        JOB_CANCELED,
        JOB_REFUSED, /* Shrink returned an error: no job exists */
        JOB_SKIPPED, /* a sweep's image refused for a reason that is no failure */
};

/* JobRemoved's result strings, which are also what --json reports. */
static const char *const job_result_names[] = {
    [JOB_UNSUBMITTED] = "unsubmitted",
    [JOB_PENDING] = "pending",
    [JOB_DONE] = QTRIM_STATE_DONE,
    [JOB_FAILED] = QTRIM_STATE_FAILED,
    [JOB_CANCELED] = QTRIM_STATE_CANCELED,
    [JOB_REFUSED] = "refused",
    [JOB_SKIPPED] = "skipped",
};

/* The Job properties qtrimctl shows (see org.qtrim1.xml); strings are NULL until received. */
struct job_properties {
        char *phase;
        double progress;
        char *format;
        uint64_t virtual_size;
        uint64_t bytes_before;
        uint64_t bytes_after;
        uint64_t bytes_trimmed;
        bool converted;
        char *message;
        struct filesystem_list filesystems;
        struct json_object *phase_seconds; /* PhaseTimes as {phase: seconds} */
        char *error;
        char *error_message;
};

struct shrink_run;

struct job {
        struct shrink_run *run;
        const char *name; /* the image as the user wrote it, for messages */
        char *image;      /* the absolute path sent to qtrimd */
        char *path;       /* the job object; NULL if none was created */
        enum job_result result;
        uint64_t started_usec; /* wall time from the Shrink call to JobRemoved */
        uint64_t ended_usec;
        struct job_properties props;
        char *shown_phase; /* the last phase written to a stderr that is not a terminal */
        sd_bus_slot *get_all_call;
        sd_bus_slot *cancel_call;
};

struct shrink_run {
        sd_bus *bus;
        sd_event *event;
        bool convert;
        const char *format; /* declared, or NULL */
        bool keep_gaps;
        bool sweep;
        struct job *jobs;
        size_t n_jobs;
        size_t n_pending; /* jobs in state JOB_PENDING */
        bool canceling;
        bool tty;                /* stderr is a terminal: draw progress bars there */
        unsigned progress_lines; /* lines of progress bars now on the terminal */
        sd_bus_slot *properties_changed_match;
        sd_bus_slot *job_removed_match;
        sd_bus_slot *name_owner_changed_match;
};

static const char *empty_to_null(const char *s)
{
        return s && *s ? s : NULL;
}

static int set_string(char **s, const char *value)
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

/* Seconds with a fixed three decimals, so JSON shows 41.235 rather than 41.234999999999999. */
static struct json_object *json_seconds(uint64_t usec)
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
    {"Phase", "s", read_string, JOB_FIELD(phase)},
    {"Progress", "d", read_double, JOB_FIELD(progress)},
    {"Format", "s", read_string, JOB_FIELD(format)},
    {"VirtualSize", "t", read_u64, JOB_FIELD(virtual_size)},
    {"BytesBefore", "t", read_u64, JOB_FIELD(bytes_before)},
    {"BytesAfter", "t", read_u64, JOB_FIELD(bytes_after)},
    {"BytesTrimmed", "t", read_u64, JOB_FIELD(bytes_trimmed)},
    {"Converted", "b", read_bool, JOB_FIELD(converted)},
    {"Message", "s", read_string, JOB_FIELD(message)},
    {"Filesystems", QTRIM_FS_ARRAY_SIGNATURE, read_filesystems, JOB_FIELD(filesystems)},
    {"PhaseTimes", QTRIM_PHASE_TIME_SIGNATURE, read_phase_seconds, JOB_FIELD(phase_seconds)},
    {"Error", "s", read_string, JOB_FIELD(error)},
    {"ErrorMessage", "s", read_string, JOB_FIELD(error_message)},
};

static int read_job_property(sd_bus_message *m, const char *key, void *userdata)
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
                return sd_bus_message_exit_container(m);
        }

        /* Properties qtrimctl does not show, or that a newer qtrimd added. */
        return sd_bus_message_skip(m, "v");
}

static void job_properties_done(struct job_properties *props)
{
        free(props->phase);
        free(props->format);
        free(props->message);
        filesystem_list_done(&props->filesystems);
        json_object_put(props->phase_seconds);
        free(props->error);
        free(props->error_message);
}

static void job_done(struct job *job)
{
        free(job->image);
        free(job->path);
        job_properties_done(&job->props);
        free(job->shown_phase);
        sd_bus_slot_unref(job->get_all_call);
        sd_bus_slot_unref(job->cancel_call);
}

static void shrink_run_done(struct shrink_run *run)
{
        for (size_t i = 0; i < run->n_jobs; i++)
                job_done(&run->jobs[i]);
        free(run->jobs);

        sd_bus_slot_unref(run->properties_changed_match);
        sd_bus_slot_unref(run->job_removed_match);
        sd_bus_slot_unref(run->name_owner_changed_match);
        if (run->event) {
                /* The connection outlives this run: leave it as it was given to us. */
                sd_bus_set_exit_on_disconnect(run->bus, false);
                sd_bus_detach_event(run->bus);
                sd_event_unref(run->event);
        }
}

/* Among jobs that have not ended: qtrimd may reuse an ended job's path. */
static struct job *find_pending_job(struct shrink_run *run, const char *path)
{
        for (size_t i = 0; i < run->n_jobs; i++) {
                struct job *job = &run->jobs[i];

                if (job->result == JOB_PENDING && strcmp(job->path, path) == 0)
                        return job;
        }
        return NULL;
}

/* Progress: bars redrawn in place on a terminal, a line per phase change otherwise. */

#define BAR_WIDTH 20
/* What a bar line holds besides the image name: "  [", the bar, "]  ", "100%", "  ", and the
 * longest phase name, "discover". */
#define BAR_LINE_OVERHEAD (3 + BAR_WIDTH + 3 + 4 + 2 + 8)
#define NAME_WIDTH_MIN    12

static size_t terminal_columns(void)
{
        struct winsize ws;

        if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_col == 0)
                return 80;
        return ws.ws_col;
}

/* A line that is wider than the terminal wraps and breaks the cursor arithmetic, so long names
 * lose their beginning: the file name at the end is what tells images apart. */
static size_t name_column_width(const struct shrink_run *run)
{
        size_t longest = 0;

        for (size_t i = 0; i < run->n_jobs; i++)
                if (run->jobs[i].result == JOB_PENDING)
                        longest = MAX(longest, strlen(run->jobs[i].name));

        size_t columns = terminal_columns();
        size_t room = columns > BAR_LINE_OVERHEAD + NAME_WIDTH_MIN ? columns - BAR_LINE_OVERHEAD - 1
                                                                   : NAME_WIDTH_MIN;
        return MIN(longest, room);
}

static void write_name_column(FILE *f, const char *name, size_t width)
{
        size_t len = strlen(name);

        if (len <= width)
                fprintf(f, "%-*s", (int)width, name);
        else
                fprintf(f, "...%s", name + len - (width - 3));
}

static void write_bar_line(FILE *f, const struct job *job, size_t name_width)
{
        double fraction = isnan(job->props.progress) ? 0 : job->props.progress;
        fraction = MAX(0.0, MIN(fraction, 1.0));
        unsigned filled = (unsigned)(fraction * BAR_WIDTH);

        write_name_column(f, job->name, name_width);
        fputs("  [", f);
        for (unsigned i = 0; i < BAR_WIDTH; i++)
                fputc(i < filled ? '#' : '.', f);
        fprintf(f, "]  %3u%%  %s\n", (unsigned)(fraction * 100), job->props.phase ?: "");
}

static void write_bars_erase(FILE *f, unsigned lines)
{
        /* Cursor up to the first bar, then clear to the end of the screen. */
        if (lines > 0)
                fprintf(f, "\033[%uA\033[J", lines);
}

/* Builds the whole frame in memory so the terminal gets it in one write and does not flicker. */
static void progress_redraw(struct shrink_run *run)
{
        _cleanup_free_ char *frame = NULL;
        size_t frame_size = 0;
        _cleanup_fclose_ FILE *f = open_memstream(&frame, &frame_size);
        if (!f)
                return; /* a missed frame is no reason to stop */

        write_bars_erase(f, run->progress_lines);
        run->progress_lines = 0;

        size_t name_width = name_column_width(run);
        for (size_t i = 0; i < run->n_jobs; i++) {
                const struct job *job = &run->jobs[i];

                if (job->result == JOB_PENDING) {
                        write_bar_line(f, job, name_width);
                        run->progress_lines++;
                }
        }

        if (fflush(f) == 0)
                (void)write_all(STDERR_FILENO, frame, frame_size);
}

/* Called before anything else is written to stderr or stdout while bars may be shown. */
static void progress_clear(struct shrink_run *run)
{
        write_bars_erase(stderr, run->progress_lines);
        run->progress_lines = 0;
}

static void progress_show(struct shrink_run *run, struct job *job)
{
        if (run->tty) {
                progress_redraw(run);
                return;
        }
        /* A sweep's log (the journal) gets one line per image, not one per phase. */
        if (run->sweep)
                return;

        const char *phase = job->props.phase;
        if (!phase || (job->shown_phase && strcmp(job->shown_phase, phase) == 0))
                return;
        if (set_string(&job->shown_phase, phase) >= 0)
                fprintf(stderr, "%s: %s\n", job->name, phase);
}

/* Job lifecycle. */

static void job_end(struct shrink_run *run, struct job *job, enum job_result result)
{
        job->result = result;
        job->ended_usec = now_usec();
        run->n_pending--;
        if (run->tty)
                progress_redraw(run);
}

static void exit_when_all_ended(struct shrink_run *run)
{
        if (run->n_pending == 0)
                sd_event_exit(run->event, 0);
}

static void fail_pending_jobs(struct shrink_run *run, const char *message)
{
        for (size_t i = 0; i < run->n_jobs; i++) {
                struct job *job = &run->jobs[i];

                if (job->result != JOB_PENDING)
                        continue;
                /* On allocation failure the job is still reported failed, only without why. */
                (void)set_string(&job->props.error, qt_error_dbus_name(QT_ERR_FAILED));
                (void)set_string(&job->props.error_message, message);
                job_end(run, job, JOB_FAILED);
        }
}

static enum job_result job_result_from_string(const char *s)
{
        for (enum job_result r = JOB_DONE; r <= JOB_CANCELED; r++)
                if (strcmp(job_result_names[r], s) == 0)
                        return r;
        return JOB_FAILED; /* a result this client does not know is not a success */
}

/* Bus and signal handlers. They return 0 even on errors: a negative return would make sd-bus
 * close the connection, and one unreadable message is no reason to stop following the jobs. */

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
        struct shrink_run *run = userdata;
        struct job *job = find_pending_job(run, sd_bus_message_get_path(m));
        int r;

        if (!job)
                return 0; /* somebody else's job */

        r = sd_bus_message_skip(m, "s"); /* the interface, already matched by arg0 */
        if (r >= 0)
                r = bus_read_dict(m, read_job_property, &job->props);
        if (r < 0) {
                progress_clear(run);
                log_errno(r, "failed to read the properties of %s, ignoring", job->path);
                return 0;
        }

        progress_show(run, job);
        return 0;
}

static int on_get_all_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error)
{
        struct job *job = userdata;
        const sd_bus_error *error = sd_bus_message_get_error(reply);
        int r;

        /* A job that is already gone has told us everything through the queued signals. */
        if (error) {
                if (!bus_error_is_job_gone(error)) {
                        progress_clear(job->run);
                        print_bus_error(error, sd_bus_message_get_errno(reply),
                                        "qtrimctl: failed to get the properties of %s, ignoring",
                                        job->path);
                }
                return 0;
        }

        r = bus_read_dict(reply, read_job_property, &job->props);
        if (r < 0) {
                progress_clear(job->run);
                log_errno(r, "failed to read the properties of %s, ignoring", job->path);
                return 0;
        }

        progress_show(job->run, job);
        return 0;
}

static int on_job_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
        struct shrink_run *run = userdata;
        const char *path, *image, *result;
        uint32_t id;
        int r;

        r = sd_bus_message_read(m, "uoss", &id, &path, &image, &result);
        if (r < 0) {
                progress_clear(run);
                log_errno(r, "failed to read a JobRemoved signal, ignoring");
                return 0;
        }

        struct job *job = find_pending_job(run, path);
        if (!job)
                return 0;

        job_end(run, job, job_result_from_string(result));
        exit_when_all_ended(run);
        return 0;
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
        struct shrink_run *run = userdata;
        const char *name, *old_owner, *new_owner;
        int r;

        r = sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner);
        if (r < 0) {
                progress_clear(run);
                log_errno(r, "failed to read a NameOwnerChanged signal, ignoring");
                return 0;
        }

        if (*new_owner != '\0')
                return 0; /* qtrimd started, e.g. activated by our Shrink call */

        fail_pending_jobs(run, "qtrimd left the bus before the job ended");
        exit_when_all_ended(run);
        return 0;
}

static int on_cancel_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error)
{
        struct job *job = userdata;
        const sd_bus_error *error = sd_bus_message_get_error(reply);

        /* A job that ended meanwhile needs no cancelling; its JobRemoved is on the way. */
        if (error && !bus_error_is_job_gone(error)) {
                progress_clear(job->run);
                print_bus_error(error, sd_bus_message_get_errno(reply),
                                "qtrimctl: failed to cancel %s", job->name);
        }
        return 0;
}

static int on_interrupt(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        struct shrink_run *run = userdata;
        int r;

        /* A second one: the user will not wait (a qtrimd that does not answer). The jobs were
         * asked to cancel already and go on tearing down without us. */
        if (run->canceling) {
                progress_clear(run);
                fprintf(stderr, "qtrimctl: not waiting any longer; the jobs are being canceled\n");
                _exit(130);
        }
        run->canceling = true;

        progress_clear(run);
        fprintf(stderr,
                "qtrimctl: SIG%s received, canceling the jobs and waiting for them to end "
                "(again to stop waiting)\n",
                sigabbrev_np((int)si->ssi_signo));

        for (size_t i = 0; i < run->n_jobs; i++) {
                struct job *job = &run->jobs[i];

                if (job->result != JOB_PENDING)
                        continue;
                r = sd_bus_call_method_async(run->bus, &job->cancel_call, QTRIM_BUS_NAME, job->path,
                                             QTRIM_JOB_IFACE, "Cancel", on_cancel_reply, job, NULL);
                if (r < 0)
                        log_errno(r, "failed to cancel %s", job->name);
        }
        return 0;
}

/* Setting up. */

static int add_jobs(struct shrink_run *run, char **images, size_t n_images)
{
        int r;

        run->jobs = calloc(n_images, sizeof(*run->jobs));
        if (!run->jobs)
                return log_errno(-ENOMEM, "failed to allocate the jobs");
        run->n_jobs = n_images;

        for (size_t i = 0; i < n_images; i++) {
                struct job *job = &run->jobs[i];

                job->run = run;
                job->name = images[i];
                r = image_path_absolute(images[i], &job->image);
                if (r < 0)
                        return log_errno(r, "failed to make %s an absolute path", images[i]);
        }
        return 0;
}

static int setup_event_loop(struct shrink_run *run)
{
        static const int interrupts[] = {SIGINT, SIGTERM};
        sigset_t mask;
        int r;

        r = sd_event_new(&run->event);
        if (r < 0)
                return log_errno(r, "failed to allocate an event loop");

        /* Blocked from here until qtrimctl exits: an interrupt that arrives while the Shrink calls
         * are being made stays pending for the loop (see interrupt_pending()), and one that comes
         * too late to cancel anything must not kill qtrimctl before it has reported. */
        sigemptyset(&mask);
        for (size_t i = 0; i < ELEMENTSOF(interrupts); i++)
                sigaddset(&mask, interrupts[i]);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_errno(-errno, "failed to block SIGINT and SIGTERM");

        for (size_t i = 0; i < ELEMENTSOF(interrupts); i++) {
                r = sd_event_add_signal(run->event, NULL, interrupts[i], on_interrupt, run);
                if (r < 0)
                        return log_errno(r, "failed to watch for SIG%s",
                                         sigabbrev_np(interrupts[i]));
        }

        r = sd_bus_attach_event(run->bus, run->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_errno(r, "failed to attach the bus to the event loop");

        /* Losing the bus ends the loop; the jobs still pending are then reported failed. */
        r = sd_bus_set_exit_on_disconnect(run->bus, true);
        if (r < 0)
                return log_errno(r, "failed to set exit on disconnect");
        return 0;
}

static int add_matches(struct shrink_run *run)
{
        int r;

        r = sd_bus_add_match(run->bus, &run->properties_changed_match, PROPERTIES_CHANGED_MATCH,
                             on_properties_changed, run);
        if (r < 0)
                return log_errno(r, "failed to subscribe to job property changes");

        r = sd_bus_match_signal(run->bus, &run->job_removed_match, QTRIM_BUS_NAME,
                                QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE, "JobRemoved",
                                on_job_removed, run);
        if (r < 0)
                return log_errno(r, "failed to subscribe to JobRemoved");

        r = sd_bus_add_match(run->bus, &run->name_owner_changed_match, NAME_OWNER_CHANGED_MATCH,
                             on_name_owner_changed, run);
        if (r < 0)
                return log_errno(r, "failed to subscribe to qtrimd leaving the bus");
        return 0;
}

/* Submitting. */

/* In a sweep: refusals that only mean "nothing to do here now". */
static bool refusal_is_skip(const sd_bus_error *error)
{
        return sd_bus_error_has_names(
            error, qt_error_dbus_name(QT_ERR_IN_USE), qt_error_dbus_name(QT_ERR_UNCHANGED),
            qt_error_dbus_name(QT_ERR_HAS_OVERLAYS), qt_error_dbus_name(QT_ERR_ALREADY_RUNNING));
}

static int job_refused(struct shrink_run *run, struct job *job, const sd_bus_error *error)
{
        int r;

        job->result = JOB_REFUSED;
        if (run->sweep && refusal_is_skip(error)) {
                job->result = JOB_SKIPPED;
                printf("%s: skipped: %s\n", job->name, error->message ?: "");
        } else if (run->sweep) {
                fprintf(stderr, "%s: failed: %s (%s)\n", job->name, error->message ?: "",
                        error->name ?: "");
        }
        job->ended_usec = now_usec();
        r = set_string(&job->props.error, error->name ?: "");
        if (r >= 0)
                r = set_string(&job->props.error_message, error->message ?: "");
        return r < 0 ? log_errno(r, "failed to record why %s was refused", job->name) : 0;
}

/* Calls Shrink; a refusal is reported and recorded in the job, and is not an error here. */
static int submit_job(struct shrink_run *run, struct job *job)
{
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path;
        int r;

        job->started_usec = now_usec();
        /* A sweep says what a refusal means itself (job_refused). */
        r = bus_call_method(run->bus, run->sweep ? NULL : job->name, QTRIM_MANAGER_PATH,
                            QTRIM_MANAGER_IFACE, "Shrink", &error, &reply, "sa{sv}", job->image,
                            /* the format option last, and only when declared */
                            run->format ? 4 : 3, QTRIM_OPT_CONVERT, "b", run->convert,
                            QTRIM_OPT_IF_CHANGED, "b", run->sweep, QTRIM_OPT_TRIM_GAPS, "b",
                            !run->keep_gaps, QTRIM_OPT_FORMAT, "s", run->format);
        if (r < 0)
                return job_refused(run, job, &error);

        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                return log_errno(r, "failed to read the reply to Shrink for %s", job->name);
        r = set_string(&job->path, path);
        if (r < 0)
                return log_errno(r, "failed to record the job of %s", job->name);

        job->result = JOB_PENDING;
        run->n_pending++;
        return 0;
}

static int fetch_job_properties(struct shrink_run *run, struct job *job)
{
        int r;

        r = sd_bus_call_method_async(run->bus, &job->get_all_call, QTRIM_BUS_NAME, job->path,
                                     "org.freedesktop.DBus.Properties", "GetAll", on_get_all_reply,
                                     job, "s", QTRIM_JOB_IFACE);
        if (r < 0)
                return log_errno(r, "failed to ask for the properties of %s", job->path);
        return 0;
}

static bool interrupt_pending(void)
{
        sigset_t pending;

        return sigpending(&pending) == 0 &&
               (sigismember(&pending, SIGINT) == 1 || sigismember(&pending, SIGTERM) == 1);
}

static int submit_and_watch_jobs(struct shrink_run *run)
{
        int r;

        for (size_t i = 0; i < run->n_jobs; i++) {
                struct job *job = &run->jobs[i];

                /* After Ctrl-C, queue nothing more; the loop then cancels what was queued. */
                if (interrupt_pending()) {
                        job->result = JOB_CANCELED;
                        continue;
                }

                r = submit_job(run, job);
                if (r < 0)
                        return r;
                if (job->result == JOB_PENDING) {
                        r = fetch_job_properties(run, job);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int wait_for_jobs(struct shrink_run *run)
{
        int r;

        if (run->n_pending == 0)
                return 0;

        if (run->tty)
                progress_redraw(run);

        r = sd_event_loop(run->event);
        if (r < 0)
                return log_errno(r, "failed to run the event loop");

        /* The loop also ends when the connection to the bus is lost. */
        fail_pending_jobs(run, "lost the connection to the bus before the job ended");
        progress_clear(run);
        return 0;
}

/* Reporting. */

/* One line per volume: what was done with it, or why not. A volume without a filesystem (a
 * gap, free extents) is named with where it lies. */
static void print_volume(const struct filesystem *fs)
{
        char bytes[FORMAT_BYTES_MAX], size[FORMAT_BYTES_MAX], offset[FORMAT_BYTES_MAX];

        printf("  %s", fs->name);
        if (*fs->fstype)
                printf(" (%s)", fs->fstype);
        else
                printf(" (%s at %s)", format_bytes(size, fs->size),
                       format_bytes(offset, fs->offset));
        if (strcmp(fs->state, "trimmed") == 0 || strcmp(fs->state, "discarded") == 0)
                printf(": %s %s", format_bytes(bytes, fs->trimmed), fs->state);
        else
                printf(": %s", fs->state);
        if (*fs->message)
                printf(strcmp(fs->state, "discarded") == 0 ? ", %s" : ": %s", fs->message);
        printf("\n");
}

static void print_done_job(const struct job *job)
{
        const struct job_properties *p = &job->props;
        char before[FORMAT_BYTES_MAX], after[FORMAT_BYTES_MAX], reclaimed[FORMAT_BYTES_MAX];
        char duration[FORMAT_DURATION_MAX];

        printf("%s: %s → %s allocated", job->name, format_bytes(before, p->bytes_before),
               format_bytes(after, p->bytes_after));
        if (p->bytes_after < p->bytes_before)
                printf(" (%s reclaimed)",
                       format_bytes(reclaimed, p->bytes_before - p->bytes_after));
        else
                printf(" (nothing reclaimed)");
        printf(" in %s\n", format_duration(duration, job->ended_usec - job->started_usec));

        for (size_t i = 0; i < p->filesystems.n; i++)
                print_volume(&p->filesystems.items[i]);

        if (empty_to_null(p->message))
                printf("  note: %s\n", p->message);
}

/* Failures go to stderr whatever the output format; --json replaces the summary on stdout. */
static void report_job(const struct job *job, bool json)
{
        switch (job->result) {
        case JOB_DONE:
                if (!json)
                        print_done_job(job);
                break;
        case JOB_FAILED:
                fprintf(stderr, "%s: failed: %s (%s)\n", job->name, job->props.error_message ?: "",
                        job->props.error ?: "");
                break;
        case JOB_CANCELED:
                fprintf(stderr, "%s: canceled\n", job->name);
                break;
        case JOB_REFUSED: /* said when Shrink returned */
        case JOB_SKIPPED:
                break;
        case JOB_UNSUBMITTED: /* none left once the jobs have been waited for */
        case JOB_PENDING:
                break;
        }
}

static struct json_object *job_to_json(const struct job *job)
{
        const struct job_properties *p = &job->props;
        /* A refused image, or one never submitted, has no job and so no sizes: null. */
        bool had_job = job->path != NULL;
        struct json_object *o = json_object_new_object();

        json_object_object_add(o, "image", json_object_new_string(job->image));
        json_object_object_add(o, "result", json_object_new_string(job_result_names[job->result]));
        json_object_object_add(o, "error", json_string_or_null(empty_to_null(p->error)));
        json_object_object_add(o, "error_message",
                               json_string_or_null(empty_to_null(p->error_message)));
        json_object_object_add(o, "bytes_before",
                               had_job ? json_object_new_uint64(p->bytes_before) : NULL);
        json_object_object_add(o, "bytes_after",
                               had_job ? json_object_new_uint64(p->bytes_after) : NULL);
        json_object_object_add(o, "bytes_trimmed",
                               had_job ? json_object_new_uint64(p->bytes_trimmed) : NULL);
        json_object_object_add(o, "virtual_size",
                               had_job ? json_object_new_uint64(p->virtual_size) : NULL);
        json_object_object_add(o, "format", json_string_or_null(p->format));
        json_object_object_add(o, "converted",
                               had_job ? json_object_new_boolean(p->converted) : NULL);
        json_object_object_add(o, "message", json_string_or_null(p->message));
        json_object_object_add(o, "seconds", json_seconds(job->ended_usec - job->started_usec));
        json_object_object_add(o, "phases",
                               p->phase_seconds ? json_object_get(p->phase_seconds)
                                                : json_object_new_object());
        json_object_object_add(o, "filesystems", filesystems_to_json(&p->filesystems));
        return o;
}

static void print_json(const struct shrink_run *run)
{
        _cleanup_(json_object_putp) struct json_object *array = json_object_new_array();

        for (size_t i = 0; i < run->n_jobs; i++)
                json_object_array_add(array, job_to_json(&run->jobs[i]));
        json_print(array);
}

static int exit_status(const struct shrink_run *run)
{
        for (size_t i = 0; i < run->n_jobs; i++)
                if (run->jobs[i].result != JOB_DONE && run->jobs[i].result != JOB_SKIPPED)
                        return EXIT_FAILURE;
        return EXIT_SUCCESS;
}

static void add_totals(const struct shrink_run *run, struct shrink_totals *t)
{
        for (size_t i = 0; i < run->n_jobs; i++) {
                const struct job *job = &run->jobs[i];
                const struct job_properties *p = &job->props;
                if (job->result == JOB_DONE) {
                        t->shrunk++;
                        if (p->bytes_after < p->bytes_before)
                                t->reclaimed += p->bytes_before - p->bytes_after;
                } else if (job->result == JOB_SKIPPED) {
                        t->skipped++;
                } else if (job->result == JOB_CANCELED) {
                        t->canceled++;
                } else {
                        t->failed++;
                }
        }
}

/* --no-block: queue the jobs and print their object paths. */
static int submit_jobs_and_print_paths(struct shrink_run *run)
{
        int r, status = EXIT_SUCCESS;

        for (size_t i = 0; i < run->n_jobs; i++) {
                struct job *job = &run->jobs[i];

                r = submit_job(run, job);
                if (r < 0)
                        return r;
                if (job->result == JOB_PENDING)
                        puts(job->path);
                else
                        status = EXIT_FAILURE;
        }
        return status;
}

int shrink_images(sd_bus *bus, char **images, size_t n_images, const struct shrink_options *opts)
{
        _cleanup_(shrink_run_done) struct shrink_run run = {
            .bus = bus,
            .convert = opts->convert,
            .format = opts->format,
            .keep_gaps = opts->keep_gaps,
            .sweep = opts->sweep,
            .tty = isatty(STDERR_FILENO),
        };
        int r;

        r = add_jobs(&run, images, n_images);
        if (r < 0)
                return r;

        if (!opts->block)
                return submit_jobs_and_print_paths(&run);

        r = setup_event_loop(&run);
        if (r < 0)
                return r;
        r = add_matches(&run);
        if (r < 0)
                return r;
        r = submit_and_watch_jobs(&run);
        if (r < 0)
                return r;
        r = wait_for_jobs(&run);
        if (r < 0)
                return r;

        for (size_t i = 0; i < run.n_jobs; i++)
                report_job(&run.jobs[i], opts->json);
        if (opts->json)
                print_json(&run);
        if (opts->totals)
                add_totals(&run, opts->totals);

        return exit_status(&run);
}

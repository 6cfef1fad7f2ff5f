/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * How no event is lost: the matches for the jobs' PropertiesChanged, the manager's JobRemoved and
 * qtrimd's NameOwnerChanged are in place before the first Shrink call, so every signal about a job
 * is either queued while we wait for a Shrink reply or arrives later. Each job's properties are
 * then fetched once with an asynchronous GetAll: its reply is dispatched in bus order among the
 * signals, so an older snapshot never overwrites a newer change. A job ends when its JobRemoved
 * arrives; the PropertiesChanged just before it carries the final properties.
 *
 * Everything runs on one sd-event loop: bus messages, SIGINT/SIGTERM, which cancel our jobs,
 * SIGWINCH and a one-second tick, which redraw the progress lines.
 *
 * qtrimctl wait follows jobs that exist already the same way: the matches first, then GetAll.
 */
#include "shrink.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/param.h>
#include <sys/signalfd.h>
#include <systemd/sd-event.h>
#include <wchar.h>

#include "common.h"
#include "dbus-api.h"
#include "domain.h"
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
        JOB_GONE,    /* wait: the job named did not exist (any more) */
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
    [JOB_GONE] = "gone",
};

struct shrink_run;

struct job {
        struct shrink_run *run;
        char *name;  /* the image as the user wrote it (wait: as qtrimd has it), for messages */
        char *image; /* the absolute path sent to qtrimd */
        char *path;  /* the job object; NULL if none was created */
        enum job_result result;
        bool reported;         /* its outcome has been printed */
        uint64_t started_usec; /* wall time from the Shrink call to JobRemoved */
        uint64_t ended_usec;
        struct job_properties props;
        char *shown_phase; /* the last phase written to a stderr that is not a terminal */
        /* Where the job was when its phase was first seen, for the rate: the bytes of the phase
         * done (job_phase_bytes) and the time. */
        char *sampled_phase;
        uint64_t sampled_bytes, sampled_usec;
        char status[160]; /* this frame's status text (format_job_status), measured then drawn */
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
        bool json;
        bool adopted; /* wait: the jobs were not started here, an interrupt leaves them alone */
        struct job *jobs;
        size_t n_jobs;
        size_t n_pending; /* jobs in state JOB_PENDING */
        bool canceling;
        bool tty;             /* stderr is a terminal: draw progress lines there */
        size_t columns;       /* its width, read again on SIGWINCH */
        size_t *drawn_widths; /* the columns of each progress line now on the terminal */
        size_t n_drawn;
        sd_event_source *tick;
        struct shrink_totals *totals;        /* sweep */
        const struct domain_images *domains; /* sweep, or NULL */
        bool online; /* the jobs are online trims (counted as such in totals) */
        sd_bus_slot *properties_changed_match;
        sd_bus_slot *job_removed_match;
        sd_bus_slot *name_owner_changed_match;
};

static void job_done(struct job *job)
{
        free(job->name);
        free(job->image);
        free(job->path);
        job_properties_done(&job->props);
        free(job->shown_phase);
        free(job->sampled_phase);
        sd_bus_slot_unref(job->get_all_call);
        sd_bus_slot_unref(job->cancel_call);
}

static void shrink_run_done(struct shrink_run *run)
{
        for (size_t i = 0; i < run->n_jobs; i++)
                job_done(&run->jobs[i]);
        free(run->jobs);
        free(run->drawn_widths);

        sd_bus_slot_unref(run->properties_changed_match);
        sd_bus_slot_unref(run->job_removed_match);
        sd_bus_slot_unref(run->name_owner_changed_match);
        sd_event_source_disable_unref(run->tick);
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

/* Progress: a line per running job redrawn in place on a terminal, a line per phase change
 * otherwise. A line never reaches the last column: one that did would wrap, or leave the cursor
 * waiting to wrap, and the next redraw would move up too few lines. */

#define BAR_WIDTH_MAX  20
#define BAR_WIDTH_MIN  10
#define NAME_WIDTH_MIN 12

static size_t terminal_columns(void)
{
        struct winsize ws;

        if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_col == 0)
                return 80;
        return ws.ws_col;
}

/* How many bytes of s fit in max_columns display columns; *ret_columns: how many they take. A
 * byte that is not a character in the locale counts as one column, as terminals show one. */
static size_t fit_columns(const char *s, size_t max_columns, size_t *ret_columns)
{
        mbstate_t state = {};
        size_t at = 0, used = 0, len = strlen(s);

        while (at < len) {
                wchar_t wc;
                size_t n = mbrtowc(&wc, s + at, len - at, &state);
                int width = 1;

                if (n == (size_t)-1 || n == (size_t)-2) {
                        n = 1;
                        memset(&state, 0, sizeof(state));
                } else if (n == 0) {
                        break;
                } else {
                        width = MAX(wcwidth(wc), 0);
                }
                if (used + (size_t)width > max_columns)
                        break;
                used += (size_t)width;
                at += n;
        }
        if (ret_columns)
                *ret_columns = used;
        return at;
}

static size_t text_columns(const char *s)
{
        size_t columns;

        fit_columns(s, SIZE_MAX, &columns);
        return columns;
}

/* The name padded or cut to width columns: a cut name keeps its end, which tells images apart. */
static void write_name_column(FILE *f, const char *name, size_t width)
{
        size_t columns = text_columns(name);

        if (columns <= width) {
                fprintf(f, "%s%*s", name, (int)(width - columns), "");
                return;
        }
        size_t ellipsis = text_columns(glyphs.ellipsis);
        size_t keep = width > ellipsis ? width - ellipsis : 0;
        /* Skip the characters that leave more than keep columns. */
        size_t skip = fit_columns(name, columns - keep, &columns);
        size_t kept_columns = text_columns(name + skip);
        fprintf(f, "%s%s%*s", glyphs.ellipsis, name + skip,
                (int)(kept_columns < keep ? keep - kept_columns : 0), "");
}

/* "43%  trim  1.2 GiB/4.0 GiB  120.0 MiB/s  ETA 32 s": what a line says besides the name and the
 * bar. The rate is the phase's average since qtrimctl first saw the job in it. */
static void format_job_status(const struct job *job, char *buf, size_t size)
{
        const struct job_properties *p = &job->props;
        double fraction = isnan(p->progress) ? 0 : MAX(0.0, MIN(p->progress, 1.0));
        uint64_t done, total;
        int n = snprintf(buf, size, "%3u%%  %s", (unsigned)(fraction * 100), p->phase ?: "");

        if (n < 0 || (size_t)n >= size || !job_phase_bytes(p, &done, &total))
                return;
        char done_text[FORMAT_BYTES_MAX], total_text[FORMAT_BYTES_MAX];
        n += snprintf(buf + n, size - (size_t)n, "  %s/%s", format_bytes(done_text, done),
                      format_bytes(total_text, total));

        uint64_t elapsed = now_usec() - job->sampled_usec;
        if (!job->sampled_phase || elapsed < 1000000 || done <= job->sampled_bytes ||
            (size_t)n >= size)
                return;
        double rate = (double)(done - job->sampled_bytes) / ((double)elapsed / 1e6);
        char rate_text[FORMAT_BYTES_MAX], eta_text[FORMAT_DURATION_MAX];
        n += snprintf(buf + n, size - (size_t)n, "  %s/s", format_bytes(rate_text, (uint64_t)rate));
        if ((size_t)n < size && total > done)
                snprintf(
                    buf + n, size - (size_t)n, "  ETA %s",
                    format_duration(eta_text, (uint64_t)((double)(total - done) / rate * 1e6)));
}

/* Remembers where a job's phase began, as qtrimctl saw it, for the rate. */
static void sample_phase(struct job *job)
{
        uint64_t done, total;

        if (!job->props.phase ||
            (job->sampled_phase && strcmp(job->sampled_phase, job->props.phase) == 0))
                return;
        if (set_string(&job->sampled_phase, job->props.phase) < 0)
                return;
        job->sampled_bytes = job_phase_bytes(&job->props, &done, &total) ? done : 0;
        job->sampled_usec = now_usec();
}

static void write_bar(FILE *f, double progress, size_t width)
{
        double fraction = isnan(progress) ? 0 : MAX(0.0, MIN(progress, 1.0));
        size_t filled = (size_t)(fraction * (double)width);

        fputc('[', f);
        for (size_t i = 0; i < width; i++)
                fputs(i < filled ? glyphs.bar_full : glyphs.bar_empty, f);
        fputs("]  ", f);
}

/* Writes one job's line (its status as formatted for this frame), cut to max_columns, and returns
 * the columns it took. */
static size_t write_job_line(FILE *f, const struct job *job, size_t name_width, size_t bar_width,
                             size_t max_columns)
{
        _cleanup_free_ char *line = NULL;
        size_t line_size = 0;
        FILE *m = open_memstream(&line, &line_size);
        if (!m)
                return 0;

        write_name_column(m, job->name, name_width);
        fputs("  ", m);
        if (bar_width > 0)
                write_bar(m, job->props.progress, bar_width);
        fputs(job->status, m);
        if (fclose(m) != 0)
                return 0;

        size_t columns;
        size_t bytes = fit_columns(line, max_columns, &columns);
        fwrite(line, 1, bytes, f);
        fputs("\033[K\n", f);
        return columns;
}

/* Moves the cursor back to where the first progress line began and clears from there. The \r
 * first: the terminal may have echoed "^C" after the last line. Lines drawn for a wider terminal
 * take more rows once it shrank, as terminals re-wrap them. */
static void write_erase(FILE *f, struct shrink_run *run)
{
        size_t rows = 0;

        for (size_t i = 0; i < run->n_drawn; i++)
                rows += run->drawn_widths[i] == 0
                            ? 1
                            : (run->drawn_widths[i] + run->columns - 1) / run->columns;
        fputc('\r', f);
        if (rows > 0)
                fprintf(f, "\033[%zuA", rows);
        fputs("\033[J", f);
        run->n_drawn = 0;
}

/* Builds the whole frame in memory so the terminal gets it in one write and does not flicker. */
static void progress_redraw(struct shrink_run *run)
{
        _cleanup_free_ char *frame = NULL;
        size_t frame_size = 0;
        _cleanup_fclose_ FILE *f = open_memstream(&frame, &frame_size);
        if (!f)
                return; /* a missed frame is no reason to stop */

        write_erase(f, run);

        /* The same layout for every line: names padded to the longest, then the bar, which
         * shrinks or goes before the names are cut; what still does not fit is cut at the
         * end. */
        size_t longest_name = 0, longest_status = 0, max_columns = run->columns - 1;
        for (size_t i = 0; i < run->n_jobs; i++) {
                struct job *job = &run->jobs[i];

                if (job->result != JOB_PENDING)
                        continue;
                /* Once per frame: the rate and ETA move with the clock, and the widths measured
                 * here must be those of the text drawn. */
                format_job_status(job, job->status, sizeof(job->status));
                longest_name = MAX(longest_name, text_columns(job->name));
                longest_status = MAX(longest_status, text_columns(job->status));
        }
        size_t name_width = longest_name, bar_width = BAR_WIDTH_MAX;
        size_t rest = 2 + longest_status; /* "  " after the name */
        while (bar_width > BAR_WIDTH_MIN && name_width + rest + bar_width + 4 > max_columns)
                bar_width--;
        if (name_width + rest + bar_width + 4 > max_columns)
                bar_width = 0;
        if (bar_width == 0 && name_width + rest > max_columns)
                name_width = MAX(MIN(longest_name, (size_t)NAME_WIDTH_MIN),
                                 max_columns > rest ? max_columns - rest : 0);

        for (size_t i = 0; i < run->n_jobs; i++) {
                const struct job *job = &run->jobs[i];

                if (job->result == JOB_PENDING)
                        run->drawn_widths[run->n_drawn++] =
                            write_job_line(f, job, name_width, bar_width, max_columns);
        }

        if (fflush(f) == 0)
                (void)write_all(STDERR_FILENO, frame, frame_size);
}

/* Called before anything else is written to stderr or stdout while progress lines may be
 * shown. */
static void progress_clear(struct shrink_run *run)
{
        if (!run->tty)
                return;
        write_erase(stderr, run);
        fflush(stderr);
}

static void progress_show(struct shrink_run *run, struct job *job)
{
        sample_phase(job);
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

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct shrink_run *run = userdata;

        progress_redraw(run);
        (void)sd_event_source_set_time_relative(s, 1000000);
        return sd_event_source_set_enabled(s, SD_EVENT_ON);
}

static int on_window_change(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        struct shrink_run *run = userdata;

        run->columns = terminal_columns();
        progress_redraw(run);
        return 0;
}

/* Reporting: each job as soon as it ends. */

/* One line per volume: what was done with it, or why not. A volume without a filesystem (a
 * gap, free extents) is named with where it lies. */
static void print_volume(const struct filesystem *fs)
{
        char bytes[FORMAT_BYTES_MAX], size[FORMAT_BYTES_MAX], offset[FORMAT_BYTES_MAX];

        /* An online trim's: what the guest says it trimmed, and what each disk gave back. */
        if (strcmp(fs->kind, "guest") == 0) {
                printf("  guest %s: ", fs->name);
                if (strcmp(fs->state, "trimmed") == 0)
                        printf("%s trimmed", format_bytes(bytes, fs->trimmed));
                else
                        printf("%s", fs->state);
                printf("%s%s\n", *fs->message ? ": " : "", fs->message);
                return;
        }
        if (strcmp(fs->kind, "image") == 0) {
                printf("  %s (%s, %s allocated): ", fs->name, *fs->fstype ? fs->fstype : "?",
                       format_bytes(size, fs->size));
                if (fs->trimmed)
                        printf("%s freed on the host\n", format_bytes(bytes, fs->trimmed));
                else
                        printf("%s\n", *fs->message ? fs->message : "nothing came back");
                return;
        }
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

/* "in 41 s", and ", after 3 s queued" when it waited more than a second: the time the job
 * worked, from qtrimd's StartedAt and FinishedAt (the wall time here from an older qtrimd). */
static void print_job_time(const struct job *job)
{
        const struct job_properties *p = &job->props;
        char took[FORMAT_DURATION_MAX], queued[FORMAT_DURATION_MAX];

        if (p->started_at == 0 || p->finished_at < p->started_at) {
                printf(" in %s", format_duration(took, job->ended_usec - job->started_usec));
                return;
        }
        printf(" in %s", format_duration(took, p->finished_at - p->started_at));
        if (job_queued_usec(p) > 1000000)
                printf(", after %s queued", format_duration(queued, job_queued_usec(p)));
}

static void print_done_job(const struct job *job)
{
        const struct job_properties *p = &job->props;
        char before[FORMAT_BYTES_MAX], after[FORMAT_BYTES_MAX], amount[FORMAT_BYTES_MAX];
        int64_t reclaimed = job_bytes_reclaimed(p);
        const char *message = empty_to_null(p->message);

        if (p->nothing_to_trim) {
                /* qtrimd's Message says it already, with why. */
                if (message && strncmp(message, "nothing to trim", 15) == 0)
                        printf("%s: %s\n", job->name, message);
                else
                        printf("%s: nothing to trim%s%s\n", job->name, message ? ": " : "",
                               message ?: "");
                return;
        }

        printf("%s: %s %s %s allocated", job->name, format_bytes(before, p->bytes_before),
               glyphs.arrow, format_bytes(after, p->bytes_after));
        if (reclaimed > 0)
                printf(" (%s reclaimed)", format_bytes(amount, (uint64_t)reclaimed));
        else if (reclaimed < 0)
                printf(" (grew by %s%s%s)", format_bytes(amount, (uint64_t)-reclaimed),
                       message ? ": " : "", message ?: "");
        else
                printf(" (nothing reclaimed)");
        print_job_time(job);
        printf("\n");

        for (size_t i = 0; i < p->filesystems.n; i++)
                print_volume(&p->filesystems.items[i]);

        if (message && reclaimed >= 0)
                printf("  note: %s\n", message);
}

/* What a canceled job left: qtrimd's ImageState. */
static const char *canceled_image_state(const char *image_state)
{
        if (!image_state)
                return NULL;
        if (strcmp(image_state, "untouched") == 0)
                return "the image is as it was";
        if (strcmp(image_state, "trimmed") == 0)
                return "trimmed in place, not converted";
        if (strcmp(image_state, "compacted") == 0)
                return "already replaced by its compact copy";
        return image_state;
}

/* Failures go to stderr whatever the output format; --json replaces the summary on stdout. */
static void report_job(const struct job *job, bool json)
{
        const struct job_properties *p = &job->props;

        switch (job->result) {
        case JOB_DONE:
                if (!json)
                        print_done_job(job);
                break;
        case JOB_FAILED: {
                const sd_bus_error error = SD_BUS_ERROR_MAKE_CONST(
                    empty_to_null(p->error) ?: qt_error_dbus_name(QT_ERR_FAILED),
                    empty_to_null(p->error_message) ?: "no reason given");
                print_bus_error(&error, -EIO, "%s: failed", job->name);
                break;
        }
        case JOB_CANCELED: {
                const char *state = canceled_image_state(empty_to_null(p->image_state));
                fprintf(stderr, "qtrimctl: %s: canceled%s%s\n", job->name, state ? "; " : "",
                        state ?: "");
                break;
        }
        case JOB_GONE:
                fprintf(stderr,
                        "qtrimctl: %s: no such job (it has ended, or never existed); see "
                        "qtrimctl list\n",
                        job->name);
                break;
        case JOB_REFUSED: /* said when Shrink returned */
        case JOB_SKIPPED:
        case JOB_UNSUBMITTED: /* none left once the jobs have been waited for */
        case JOB_PENDING:
                break;
        }
        fflush(stdout);
}

/* Job lifecycle. */

static void job_end(struct shrink_run *run, struct job *job, enum job_result result)
{
        job->result = result;
        job->ended_usec = now_usec();
        run->n_pending--;
        progress_clear(run);
        report_job(job, run->json);
        job->reported = true;
        if (run->tty && run->n_pending > 0)
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

        /* A job that is already gone has told us everything through the queued signals; one
         * still pending here never existed for us (wait named an ended job). */
        if (error) {
                if (!bus_error_is_job_gone(error)) {
                        progress_clear(job->run);
                        print_bus_error(error, sd_bus_message_get_errno(reply),
                                        "failed to get the properties of %s, ignoring", job->path);
                } else if (job->result == JOB_PENDING) {
                        job_end(job->run, job, JOB_GONE);
                        exit_when_all_ended(job->run);
                }
                return 0;
        }

        r = bus_read_dict(reply, read_job_property, &job->props);
        if (r < 0) {
                progress_clear(job->run);
                log_errno(r, "failed to read the properties of %s, ignoring", job->path);
                return 0;
        }
        /* wait: the job is named by its image from now on. */
        if (job->run->adopted && job->props.image)
                (void)set_string(&job->name, job->props.image);

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
                print_bus_error(error, sd_bus_message_get_errno(reply), "%s: cannot cancel",
                                job->name);
        }
        return 0;
}

static int on_interrupt(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        struct shrink_run *run = userdata;
        int r;

        /* wait: the jobs are not ours to cancel. */
        if (run->adopted) {
                progress_clear(run);
                fprintf(stderr, "qtrimctl: stopped waiting; the jobs go on (qtrimctl cancel JOB "
                                "stops one)\n");
                fflush(stdout);
                _exit(130);
        }

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
                job->name = strdup(images[i]);
                if (!job->name)
                        return log_errno(-ENOMEM, "failed to allocate the jobs");
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
         * too late to cancel anything must not kill qtrimctl before it has reported. SIGWINCH
         * is read by the loop too. */
        sigemptyset(&mask);
        for (size_t i = 0; i < ELEMENTSOF(interrupts); i++)
                sigaddset(&mask, interrupts[i]);
        sigaddset(&mask, SIGWINCH);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_errno(-errno, "failed to block SIGINT, SIGTERM and SIGWINCH");

        for (size_t i = 0; i < ELEMENTSOF(interrupts); i++) {
                r = sd_event_add_signal(run->event, NULL, interrupts[i], on_interrupt, run);
                if (r < 0)
                        return log_errno(r, "failed to watch for SIG%s",
                                         sigabbrev_np(interrupts[i]));
        }

        if (run->tty) {
                r = sd_event_add_signal(run->event, NULL, SIGWINCH, on_window_change, run);
                if (r < 0)
                        return log_errno(r, "failed to watch for SIGWINCH");
                /* The rate and the ETA move when the job does not: redraw every second. */
                r = sd_event_add_time_relative(run->event, &run->tick, CLOCK_MONOTONIC, 1000000, 0,
                                               on_tick, run);
                if (r < 0)
                        return log_errno(r, "failed to add a timer");
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

/* The job qtrimd has for image, from ListJobs, which names images as qtrimd resolved them.
 * Returns 1 with its id and state, 0 if there is none (the duplicate is a request still being
 * checked, or the job ended meanwhile), or a negative errno. */
static int find_job_of_image(sd_bus *bus, const char *image, uint32_t *ret_id, char **ret_state)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *resolved = realpath(image, NULL);
        const char *listed, *state, *path;
        uint32_t id;
        int r;

        r = bus_call_method(bus, NULL, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE, "ListJobs", NULL,
                            &reply, NULL);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "(usso)");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_read(reply, "(usso)", &id, &listed, &state, &path)) > 0)
                if (strcmp(listed, image) == 0 || (resolved && strcmp(listed, resolved) == 0)) {
                        *ret_id = id;
                        return set_string(ret_state, state) < 0 ? -ENOMEM : 1;
                }
        return r;
}

/* "already has a job": qtrimd says which image, the user wants to know which job. */
static void print_already_running(struct shrink_run *run, struct job *job,
                                  const sd_bus_error *error)
{
        _cleanup_free_ char *state = NULL;
        uint32_t id;

        if (find_job_of_image(run->bus, job->image, &id, &state) <= 0) {
                if (run->sweep)
                        printf("%s: skipped: %s\n", job->name, error->message ?: "");
                else
                        print_bus_error(error, -EBUSY, "%s", job->name);
        } else if (run->sweep) {
                printf("%s: skipped: already has job %" PRIu32 " (%s)\n", job->name, id, state);
        } else {
                fprintf(stderr,
                        "qtrimctl: %s: already has job %" PRIu32 " (%s); follow it with qtrimctl "
                        "wait %" PRIu32 "\n",
                        job->name, id, state, id);
        }
}

/* An image in use, in a sweep: the libvirt domain that holds it, when one does. */
static const char *in_use_by(const struct shrink_run *run, const struct job *job,
                             const sd_bus_error *error, char *buf, size_t size)
{
        char names[256];
        if (!run->domains || !sd_bus_error_has_name(error, qt_error_dbus_name(QT_ERR_IN_USE)) ||
            domain_images_describe(run->domains, job->image, names, sizeof(names)) == 0)
                return error->message;
        snprintf(buf, size, "in use by domain %s", names);
        return buf;
}

/* Records a refusal and says it. Returns 0, or a negative errno when qtrimctl cannot go on:
 * qtrimd is missing (said once), or out of memory. */
static int job_refused(struct shrink_run *run, struct job *job, const sd_bus_error *error, int r)
{
        char why[QT_ERROR_MESSAGE_MAX];
        const char *message = in_use_by(run, job, error, why, sizeof(why));

        if (bus_error_is_daemon_missing(error)) {
                print_bus_error(error, r, "%s", job->name);
                return -EHOSTDOWN;
        }

        job->result = run->sweep && refusal_is_skip(error) ? JOB_SKIPPED : JOB_REFUSED;
        /* Under --json a skip is said by its result. */
        if (job->result != JOB_SKIPPED || !run->json) {
                if (sd_bus_error_has_name(error, qt_error_dbus_name(QT_ERR_ALREADY_RUNNING)))
                        print_already_running(run, job, error);
                else if (job->result == JOB_SKIPPED)
                        printf("%s: skipped: %s\n", job->name, message ?: "");
                else
                        print_bus_error(error, r, run->sweep ? "%s: failed" : "%s", job->name);
        }
        job->reported = true;
        job->ended_usec = now_usec();
        r = set_string(&job->props.error, error->name ?: "");
        if (r >= 0)
                r = set_string(&job->props.error_message, message ?: "");
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
        /* job_refused() says what a refusal means. */
        r = bus_call_method(run->bus, NULL, QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE, "Shrink",
                            &error, &reply, "sa{sv}", job->image,
                            /* the format option last, and only when declared */
                            run->format ? 4 : 3, QTRIM_OPT_CONVERT, "b", run->convert,
                            QTRIM_OPT_IF_CHANGED, "b", run->sweep, QTRIM_OPT_TRIM_GAPS, "b",
                            !run->keep_gaps, QTRIM_OPT_FORMAT, "s", run->format);
        if (r < 0)
                return job_refused(run, job, &error, r);

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
                        if (set_string(&job->props.image_state, "untouched") < 0)
                                return log_errno(-ENOMEM, "failed to record %s", job->name);
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

static struct json_object *job_to_json(const struct job *job)
{
        const struct job_properties *p = &job->props;
        /* A refused image, or one never submitted, has no job and so no sizes: null. */
        bool had_job = job->path != NULL;
        struct json_object *o = json_object_new_object();

        json_object_object_add(o, "image", json_string_or_null(job->image ?: job->props.image));
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
        /* The one definition of reclaimed (negative: the image grew), as in the summary. */
        json_object_object_add(o, "bytes_reclaimed",
                               had_job ? json_object_new_int64(job_bytes_reclaimed(p)) : NULL);
        json_object_object_add(o, "image_state",
                               json_string_or_null(empty_to_null(p->image_state)));
        json_object_object_add(o, "nothing_to_trim",
                               had_job ? json_object_new_boolean(p->nothing_to_trim) : NULL);
        json_object_object_add(o, "virtual_size",
                               had_job ? json_object_new_uint64(p->virtual_size) : NULL);
        json_object_object_add(o, "format", json_string_or_null(p->format));
        json_object_object_add(o, "converted",
                               had_job ? json_object_new_boolean(p->converted) : NULL);
        json_object_object_add(o, "message", json_string_or_null(p->message));
        json_object_object_add(o, "seconds", json_seconds(job->ended_usec - job->started_usec));
        bool timed = p->started_at > 0 && p->finished_at >= p->started_at;
        json_object_object_add(o, "work_seconds",
                               timed ? json_seconds(p->finished_at - p->started_at) : NULL);
        json_object_object_add(o, "queued_seconds",
                               timed && p->queued_at > 0 ? json_seconds(job_queued_usec(p)) : NULL);
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

/* Failed (or refused, or gone) beats canceled, which beats done. */
static int exit_status(const struct shrink_run *run)
{
        int status = EXIT_SUCCESS;

        for (size_t i = 0; i < run->n_jobs; i++)
                switch (run->jobs[i].result) {
                case JOB_DONE:
                case JOB_SKIPPED:
                        break;
                case JOB_CANCELED:
                        status = EXIT_CANCELED;
                        break;
                default:
                        return EXIT_FAILURE;
                }
        return status;
}

static void add_totals(const struct shrink_run *run, struct shrink_totals *t)
{
        for (size_t i = 0; i < run->n_jobs; i++) {
                const struct job *job = &run->jobs[i];
                if (job->result == JOB_DONE && job->props.nothing_to_trim) {
                        t->skipped++;
                } else if (job->result == JOB_DONE && run->online) {
                        t->online++;
                        t->reclaimed += job_bytes_reclaimed(&job->props);
                } else if (job->result == JOB_DONE) {
                        t->shrunk++;
                        t->reclaimed += job_bytes_reclaimed(&job->props);
                } else if (job->result == JOB_SKIPPED) {
                        t->skipped++;
                } else if (job->result == JOB_CANCELED) {
                        t->canceled++;
                } else {
                        t->failed++;
                }
                if (t->json)
                        json_object_array_add(t->json, job_to_json(job));
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

static int follow_jobs(struct shrink_run *run)
{
        int r;

        run->columns = terminal_columns();
        run->drawn_widths = calloc(run->n_jobs, sizeof(*run->drawn_widths));
        if (!run->drawn_widths)
                return log_errno(-ENOMEM, "failed to allocate the progress lines");

        r = setup_event_loop(run);
        if (r < 0)
                return r;
        r = add_matches(run);
        if (r < 0)
                return r;
        if (run->adopted) {
                for (size_t i = 0; i < run->n_jobs; i++) {
                        run->jobs[i].result = JOB_PENDING;
                        run->n_pending++;
                        r = fetch_job_properties(run, &run->jobs[i]);
                        if (r < 0)
                                return r;
                }
        } else {
                r = submit_and_watch_jobs(run);
                if (r < 0)
                        return r;
        }
        r = wait_for_jobs(run);
        if (r < 0)
                return r;

        /* What ended without a JobRemoved: images never submitted after an interrupt. */
        for (size_t i = 0; i < run->n_jobs; i++)
                if (!run->jobs[i].reported)
                        report_job(&run->jobs[i], run->json);
        if (run->totals)
                add_totals(run, run->totals);
        else if (run->json)
                print_json(run);
        return exit_status(run);
}

int shrink_images(sd_bus *bus, char **images, size_t n_images, const struct shrink_options *opts)
{
        _cleanup_(shrink_run_done) struct shrink_run run = {
            .bus = bus,
            .convert = opts->convert,
            .format = opts->format,
            .keep_gaps = opts->keep_gaps,
            .sweep = opts->sweep,
            .json = opts->json,
            .totals = opts->totals,
            .domains = opts->domains,
            .tty = isatty(STDERR_FILENO),
        };
        int r;

        r = add_jobs(&run, images, n_images);
        if (r < 0)
                return r;

        if (!opts->block)
                return submit_jobs_and_print_paths(&run);
        return follow_jobs(&run);
}

int follow_job_paths(sd_bus *bus, char **paths, size_t n_paths, const struct shrink_options *opts)
{
        _cleanup_(shrink_run_done) struct shrink_run run = {
            .bus = bus,
            .json = opts->json,
            .adopted = true,
            .tty = isatty(STDERR_FILENO),
            .totals = opts->totals,
            .online = opts->online,
        };

        run.jobs = calloc(n_paths, sizeof(*run.jobs));
        if (!run.jobs)
                return log_errno(-ENOMEM, "failed to allocate the jobs");
        run.n_jobs = n_paths;
        for (size_t i = 0; i < n_paths; i++) {
                struct job *job = &run.jobs[i];
                const char *id = job_id_of(paths[i]);

                job->run = &run;
                job->started_usec = now_usec();
                /* Named by its image once GetAll has said which. */
                if (asprintf(&job->name, "job %s", id) < 0 || !(job->path = strdup(paths[i])))
                        return log_errno(-ENOMEM, "failed to allocate the jobs");
        }
        return follow_jobs(&run);
}

int wait_jobs(sd_bus *bus, char **paths, size_t n_paths, bool json)
{
        return follow_job_paths(bus, paths, n_paths, &(const struct shrink_options){.json = json});
}

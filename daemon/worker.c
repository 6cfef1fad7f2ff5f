/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "attach.h"
#include "cancel.h"
#include "config.h"
#include "util.h"

#define REPORT_FD 3
/* A worker that died holding an nbd device: how often qtrimd looks whether the kernel freed it,
 * when it kills a qemu-nbd that still serves it (it had its parent-death SIGTERM long before),
 * and when it stops waiting for the last opener. */
#define RELEASE_POLL_USEC     20000ULL
#define RELEASE_ACCURACY_USEC 1000ULL /* sd-event's default would be 250 ms */
#define RELEASE_KILL_USEC     5000000ULL
#define RELEASE_GIVE_UP_USEC  15000000ULL
/* A dead worker's other processes (its process group, which qtrimd inherits as subreaper): how
 * often qtrimd reaps them, when it kills those still there (they had their parent-death signals;
 * the FUSE server cuts its connection 10 s after the worker let go), and when it stops waiting. */
#define DRAIN_POLL_USEC    20000ULL
#define DRAIN_KILL_USEC    15000000ULL
#define DRAIN_GIVE_UP_USEC 20000000ULL
/* A line is never longer than this; a worker that sends longer is broken. */
#define LINE_MAX_BYTES (QT_REPORT_STRING_MAX + 1024)

struct worker {
        struct qt_report *report;
        const struct worker_callbacks *cb;
        void *userdata;
        pid_t pid;
        int fd;
        sd_event *event;
        sd_event_source *io, *child;
        /* After it died: waiting for the rest of its process group (group: its pid). */
        pid_t group;
        sd_event_source *drain;
        uint64_t drain_start;
        bool drain_killed, drained;
        /* After it died holding an nbd device: waiting for the device to be free. */
        sd_event_source *release;
        uint64_t release_start;
        bool release_killed, released;
        bool eof, exited;
        int exit_status; /* as waitid's si_code/si_status say: exit code, or 128 + signal */
        char buf[LINE_MAX_BYTES];
        size_t len;
};

static void on_sigterm(int sig)
{
        qt_cancel_requested = 1;
}

/* In the child: become a worker and never return. */
_Noreturn static void run_child(worker_task task, const void *arg, int report_fd, pid_t parent)
{
        /* A process group of its own: what it starts is found (and waited for) by it. */
        setpgid(0, 0);
        /* Die with qtrimd, but through the cancel path so nothing stays attached. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
                _exit(1);

        struct sigaction sa = {.sa_handler = on_sigterm};
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sa.sa_handler = SIG_DFL;
        sigaction(SIGCHLD, &sa, NULL);
        /* With qtrimd gone, report lines go nowhere; the write must fail, not kill us before we
         * have torn down. */
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);

        /* Only the report pipe and the standard streams: not the bus connection, whose owner
         * must be able to go away without us. */
        if (dup2(report_fd, REPORT_FD) < 0)
                _exit(1);
        close_range(REPORT_FD + 1, ~0U, 0);
        fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC);

        struct qt_reporter rep = {.fd = REPORT_FD};
        int r = task(arg, &rep);
        _exit(r < 0 ? 1 : 0);
}

static void start_release(struct worker *w);
static void release_done(struct worker *w);
static void start_drain(struct worker *w);

static void maybe_finish(struct worker *w)
{
        if (!w->eof || !w->exited)
                return;
        /* The job is not over while the device it held is not free (its qemu-nbd is seen to
         * and killed if it must be, on_release)... */
        bool claimed = w->report->nbd_device[0] && !w->released;
        if (claimed && w->report->nbd_owner) {
                start_release(w);
                return;
        }
        /* ...nor while any other process it started lives: a qemu-nbd started before the
         * worker could report its connection may still hold the image... */
        if (!w->drained) {
                start_drain(w);
                return;
        }
        /* ...and a device it claimed but died connecting: with its processes gone, the
         * connection is too; what can be left are the partition nodes of its first scan. */
        if (claimed) {
                qt_attach_nbd_drop_stale(w->report->nbd_device);
                release_done(w);
                return;
        }
        if (!w->report->finished && !qt_error_is_set(&w->report->error))
                qt_error_set(&w->report->error, QT_ERR_FAILED, EIO,
                             "the worker died unexpectedly (status %d)", w->exit_status);
        else if (!qt_error_is_set(&w->report->error) && w->exit_status != 0)
                qt_error_set(&w->report->error, QT_ERR_FAILED, EIO, "the worker failed (status %d)",
                             w->exit_status);
        w->cb->on_exit(w, w->userdata);
}

static void apply_lines(struct worker *w)
{
        char *start = w->buf, *nl;
        while ((nl = memchr(start, '\n', w->len - (size_t)(start - w->buf)))) {
                *nl = '\0';
                const char *property = NULL;
                if (qt_report_apply_line(w->report, start, &property) < 0)
                        fprintf(stderr, "qtrimd: ignoring a malformed line from worker %d\n",
                                (int)w->pid);
                else if (w->cb->on_change)
                        w->cb->on_change(w, property, w->userdata);
                start = nl + 1;
        }
        w->len -= (size_t)(start - w->buf);
        memmove(w->buf, start, w->len);
        if (w->len == sizeof(w->buf)) /* no newline in a full buffer: drop it */
                w->len = 0;
}

static void release_done(struct worker *w)
{
        w->release = sd_event_source_disable_unref(w->release);
        w->released = true;
        w->report->nbd_device[0] = '\0';
        w->report->nbd_owner = 0;
        if (w->cb->on_change)
                w->cb->on_change(w, "NbdDevice", w->userdata);
        maybe_finish(w);
}

/* The worker died with an nbd device connected (nbd-kernel.h). Its qemu-nbd had a parent-death
 * SIGTERM and disconnects; the kernel frees the device once the dead worker's mounts are gone.
 * Make sure of both: a qemu-nbd that does not exit (stopped, stuck) is killed, and the job ends
 * when the device is free, or after a bounded wait for someone else's open of it. */
static int on_release(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct worker *w = userdata;
        pid_t server;
        const char *device = w->report->nbd_device;
        enum qt_nbd_connection state = qt_attach_nbd_state(device, w->report->nbd_owner, &server);
        uint64_t waited = now_usec() - w->release_start;

        if (state == QT_NBD_SERVED && waited >= RELEASE_KILL_USEC && !w->release_killed) {
                fprintf(stderr,
                        "qtrimd: the qemu-nbd (%d) of a dead worker still serves %s; killing it\n",
                        (int)server, device);
                kill(server, SIGKILL);
                w->release_killed = true;
        }
        if (state == QT_NBD_RELEASED)
                qt_attach_nbd_drop_stale(device);
        else if (state == QT_NBD_INVALID_NAME)
                fprintf(stderr, "qtrimd: ignoring the nbd device a worker named: %s\n", device);
        else if (waited >= RELEASE_GIVE_UP_USEC)
                fprintf(stderr,
                        "qtrimd: %s is still held %llu s after its worker died; giving up\n",
                        device, (unsigned long long)(RELEASE_GIVE_UP_USEC / 1000000));
        else
                return sd_event_source_set_time_relative(s, RELEASE_POLL_USEC) < 0
                           ? 0
                           : sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        release_done(w);
        return 0;
}

static void start_release(struct worker *w)
{
        if (w->release)
                return;
        w->release_start = now_usec();
        /* Looked at once right away: usually the device is free by now. */
        if (sd_event_add_time_relative(w->event, &w->release, CLOCK_MONOTONIC, 0,
                                       RELEASE_ACCURACY_USEC, on_release, w) < 0) {
                fprintf(stderr, "qtrimd: cannot watch %s after its worker died\n",
                        w->report->nbd_device);
                release_done(w);
        }
}

/* Reaps what has ended of the group; true once none of it is left. */
static bool reap_group(pid_t group)
{
        for (;;) {
                pid_t p = waitpid(-group, NULL, WNOHANG);
                if (p > 0)
                        continue;
                return p < 0 && errno == ECHILD;
        }
}

static int on_drain(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct worker *w = userdata;
        uint64_t waited = now_usec() - w->drain_start;
        if (!reap_group(w->group)) {
                if (waited >= DRAIN_KILL_USEC && !w->drain_killed) {
                        fprintf(stderr,
                                "qtrimd: processes of dead worker %d still run after %llu s; "
                                "killing them\n",
                                (int)w->group, (unsigned long long)(DRAIN_KILL_USEC / 1000000));
                        kill(-w->group, SIGKILL);
                        w->drain_killed = true;
                }
                if (waited < DRAIN_GIVE_UP_USEC)
                        return sd_event_source_set_time_relative(s, DRAIN_POLL_USEC) < 0
                                   ? 0
                                   : sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
                /* Unkillable (stuck in the kernel): said, and the job ends all the same. */
                fprintf(stderr, "qtrimd: processes of dead worker %d do not end; giving up\n",
                        (int)w->group);
                if (!qt_error_is_set(&w->report->error))
                        qt_error_set(&w->report->error, QT_ERR_FAILED, EIO,
                                     "processes of the job (process group %d) did not end",
                                     (int)w->group);
        }
        w->drain = sd_event_source_disable_unref(w->drain);
        w->drained = true;
        maybe_finish(w);
        return 0;
}

static void start_drain(struct worker *w)
{
        if (w->drain)
                return;
        w->drain_start = now_usec();
        /* From the event loop, not from here: the worker's own exit is its child source's to
         * reap. Usually nothing is left by then. */
        if (sd_event_add_time_relative(w->event, &w->drain, CLOCK_MONOTONIC, 0,
                                       RELEASE_ACCURACY_USEC, on_drain, w) < 0) {
                w->drained = true;
                maybe_finish(w);
        }
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
        struct worker *w = userdata;
        ssize_t n = read(fd, w->buf + w->len, sizeof(w->buf) - w->len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (n > 0) {
                w->len += (size_t)n;
                apply_lines(w);
                return 0;
        }
        w->io = sd_event_source_disable_unref(w->io);
        w->eof = true;
        maybe_finish(w);
        return 0;
}

static int on_child(sd_event_source *s, const siginfo_t *si, void *userdata)
{
        struct worker *w = userdata;
        w->exit_status = si->si_code == CLD_EXITED ? si->si_status : 128 + si->si_status;
        w->exited = true;
        w->pid = 0;
        maybe_finish(w);
        return 0;
}

int worker_start_task(sd_event *event, worker_task task, const void *arg, struct qt_report *report,
                      const struct worker_callbacks *cb, void *userdata, struct worker **ret)
{
        int pipe_fds[2];
        struct worker *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->report = report;
        w->event = event;
        w->cb = cb;
        w->userdata = userdata;
        w->fd = -1;
        if (pipe2(pipe_fds, O_CLOEXEC) < 0) {
                free(w);
                return -errno;
        }
        pid_t parent = getpid();
        w->pid = fork();
        if (w->pid < 0) {
                int r = -errno;
                close(pipe_fds[0]);
                close(pipe_fds[1]);
                free(w);
                return r;
        }
        if (w->pid == 0)
                run_child(task, arg, pipe_fds[1], parent);
        /* Also here, so no process it starts can be outside the group (whichever runs first). */
        setpgid(w->pid, w->pid);
        w->group = w->pid;
        close(pipe_fds[1]);
        w->fd = pipe_fds[0];
        fcntl(w->fd, F_SETFL, O_NONBLOCK);

        int r = sd_event_add_io(event, &w->io, w->fd, EPOLLIN, on_io, w);
        if (r >= 0)
                r = sd_event_add_child(event, &w->child, w->pid, WEXITED, on_child, w);
        if (r < 0) {
                kill(w->pid, SIGKILL);
                waitpid(w->pid, NULL, 0);
                w->pid = 0;
                worker_free(w);
                return r;
        }
        *ret = w;
        return 0;
}

static int run_shrink(const void *req, struct qt_reporter *r)
{
        return qt_shrink_run(req, r);
}

int worker_start(sd_event *event, const struct qt_shrink_request *req, struct qt_report *report,
                 const struct worker_callbacks *cb, void *userdata, struct worker **ret)
{
        return worker_start_task(event, run_shrink, req, report, cb, userdata, ret);
}

void worker_cancel(struct worker *w)
{
        if (w && w->pid > 0)
                kill(w->pid, SIGTERM);
}

struct worker *worker_free(struct worker *w)
{
        if (!w)
                return NULL;
        /* Only at daemon exit can a worker still run here; it cleans up after itself. */
        if (w->pid > 0)
                kill(w->pid, SIGTERM);
        sd_event_source_disable_unref(w->io);
        sd_event_source_disable_unref(w->child);
        sd_event_source_disable_unref(w->release);
        sd_event_source_disable_unref(w->drain);
        closep(&w->fd);
        free(w);
        return NULL;
}

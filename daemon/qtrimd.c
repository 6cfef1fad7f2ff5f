/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimd: owns org.qtrim1 on the system bus and runs shrink jobs, each in a worker process.
 * Single-threaded on sd-event. run() reads top to bottom: arguments, event loop, bus, ready,
 * loop until told to stop (then cancel running jobs and wait for their workers to tear down).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "dbus-api.h"
#include "job.h"
#include "manager.h"
#include "util.h"

/* How long running jobs get to tear down when the daemon is stopped. */
#define EXIT_GRACE_USEC (60 * 1000000ULL)

static void help(void)
{
        printf("Usage: qtrimd [OPTIONS]\n\n"
               "Shrinks QEMU disk images on request over D-Bus (org.qtrim1 on the system bus;\n"
               "DBUS_SYSTEM_BUS_ADDRESS is honoured). Runs in the foreground.\n\n"
               "  -j, --max-parallel-jobs=N  run at most N jobs at once (default 2)\n"
               "  -h, --help                 show this help\n"
               "      --version              show the version\n");
}

static int parse_args(int argc, char **argv, struct manager *m)
{
        static const struct option options[] = {
            {"max-parallel-jobs", required_argument, NULL, 'j'},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},
            {},
        };
        int c;
        while ((c = getopt_long(argc, argv, "j:h", options, NULL)) >= 0)
                switch (c) {
                case 'j': {
                        uint64_t n;
                        if (parse_u64(optarg, &n) < 0 || n < 1 || n > 64) {
                                fprintf(stderr, "qtrimd: --max-parallel-jobs takes 1 to 64\n");
                                return -EINVAL;
                        }
                        m->max_parallel_jobs = (unsigned)n;
                        break;
                }
                case 'h':
                        help();
                        return 0;
                case 'V':
                        printf("qtrimd %s\n", QTRIM_VERSION);
                        return 0;
                default:
                        return -EINVAL;
                }
        if (optind < argc) {
                fprintf(stderr, "qtrimd: unexpected argument %s\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

static int on_exit_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
        fprintf(stderr, "qtrimd: jobs did not stop in time; exiting, workers clean up alone\n");
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

/* SIGTERM/SIGINT: refuse new work, cancel what runs, exit when the workers are gone. */
static int on_stop_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        struct manager *m = userdata;
        if (m->exiting)
                return 0;
        m->exiting = true;
        fprintf(stderr, "qtrimd: stopping; canceling %u running job(s)\n", m->n_running);
        for (struct job *j = m->jobs; j; j = j->next)
                if (j->state == JOB_RUNNING)
                        job_cancel(j);
        sd_event_add_time_relative(m->event, NULL, CLOCK_MONOTONIC, EXIT_GRACE_USEC, 0,
                                   on_exit_timeout, m);
        manager_check_exit(m);
        return 0;
}

static void manager_done(struct manager *m)
{
        while (m->jobs) {
                struct job *j = m->jobs;
                m->jobs = j->next;
                job_free(j);
        }
        sd_bus_flush_close_unref(m->bus);
        sd_event_unref(m->event);
}

static int run(int argc, char **argv)
{
        struct manager m = {.max_parallel_jobs = 2, .scratch_dir = QTRIM_RUNTIME_DIR "/mnt"};
        int r = parse_args(argc, argv, &m);
        if (r <= 0)
                return r;

        /* sd-event handles these through signalfd and child sources. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        if (mkdir(QTRIM_RUNTIME_DIR, 0755) < 0 && errno != EEXIST) {
                fprintf(stderr, "qtrimd: cannot create %s: %m\n", QTRIM_RUNTIME_DIR);
                return -errno;
        }

        r = sd_event_default(&m.event);
        if (r >= 0)
                r = sd_event_add_signal(m.event, NULL, SIGTERM, on_stop_signal, &m);
        if (r >= 0)
                r = sd_event_add_signal(m.event, NULL, SIGINT, on_stop_signal, &m);
        if (r < 0) {
                fprintf(stderr, "qtrimd: cannot set up the event loop: %s\n", strerror(-r));
                goto out;
        }

        r = sd_bus_open_system(&m.bus);
        if (r < 0) {
                fprintf(stderr, "qtrimd: cannot connect to the system bus: %s\n", strerror(-r));
                goto out;
        }
        /* Without the bus nobody can see or cancel jobs: stop (and so cancel them). */
        r = sd_bus_set_exit_on_disconnect(m.bus, true);
        if (r >= 0)
                r = manager_add_bus_objects(&m);
        if (r >= 0)
                r = sd_bus_attach_event(m.bus, m.event, SD_EVENT_PRIORITY_NORMAL);
        if (r >= 0)
                r = sd_bus_request_name(m.bus, QTRIM_BUS_NAME, 0);
        if (r < 0) {
                fprintf(stderr, "qtrimd: cannot serve %s: %s\n", QTRIM_BUS_NAME, strerror(-r));
                goto out;
        }

        sd_notify(0, "READY=1\nSTATUS=Waiting for requests");
        fprintf(stderr, "qtrimd %s: serving %s, at most %u job(s) at once\n", QTRIM_VERSION,
                QTRIM_BUS_NAME, m.max_parallel_jobs);
        r = sd_event_loop(m.event);
        sd_notify(0, "STOPPING=1");
out:
        manager_done(&m);
        return r;
}

int main(int argc, char **argv)
{
        return run(argc, argv) < 0 ? 1 : 0;
}

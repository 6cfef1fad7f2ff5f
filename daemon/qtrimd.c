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
#include "temp-records.h"
#include "util.h"

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

static int on_stop_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        manager_stop(userdata, si->ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
        return 0;
}

/* Without the bus nobody can see or cancel jobs: stop as on SIGTERM, cleanly. */
static int on_disconnected(sd_bus_message *msg, void *userdata, sd_bus_error *error)
{
        manager_stop(userdata, "lost the bus");
        return 0;
}

static void manager_done(struct manager *m)
{
        manager_free_requests(m);
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
        /* systemd's StateDirectory= says where; tests give each daemon its own. */
        const char *state_dir = getenv("STATE_DIRECTORY");
        struct manager m = {
            .max_parallel_jobs = 2,
            .scratch_dir = QTRIM_RUNTIME_DIR "/mnt",
            .state_dir = state_dir && state_dir[0] == '/' ? state_dir : QTRIM_STATE_DIR,
        };
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

        /* Copies a crash of an earlier qtrimd and its workers left behind. */
        temp_records_sweep(m.state_dir);

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
        r = sd_bus_match_signal(m.bus, NULL, "org.freedesktop.DBus.Local",
                                "/org/freedesktop/DBus/Local", "org.freedesktop.DBus.Local",
                                "Disconnected", on_disconnected, &m);
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
out:
        manager_done(&m);
        return r;
}

int main(int argc, char **argv)
{
        return run(argc, argv) < 0 ? 1 : 0;
}

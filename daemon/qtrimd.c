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
#include <sys/prctl.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "attach.h"
#include "conf-file.h"
#include "config.h"
#include "dbus-api.h"
#include "job.h"
#include "manager.h"
#include "metrics.h"
#include "state-dir.h"
#include "util.h"

static void help(void)
{
        printf("Usage: qtrimd [OPTIONS]\n\n"
               "Shrinks QEMU disk images on request over D-Bus (org.qtrim1 on the system bus;\n"
               "DBUS_SYSTEM_BUS_ADDRESS is honoured). Runs in the foreground. Options override\n"
               "the configuration file (qtrimd.conf(5)).\n\n"
               "      --config=FILE          read FILE instead of " QTRIM_CONFIG_PATH "\n"
               "  -j, --max-parallel-jobs=N  run at most N jobs at once (1-64)\n"
               "      --attach=BACKEND       auto, kernel (/dev/nbdN) or fuse\n"
               "      --idle-exit-sec=N      exit after N idle seconds (0: never)\n"
               "  -h, --help                 show this help\n"
               "      --version              show the version\n");
}

/* What the command line says; applied over the configuration file it names. */
struct arguments {
        const char *config_path;
        const char *max_parallel_jobs, *attach, *idle_exit_sec;
};

static int parse_args(int argc, char **argv, struct arguments *a)
{
        enum { ARG_CONFIG = 0x100, ARG_ATTACH, ARG_IDLE_EXIT_SEC, ARG_VERSION };
        static const struct option options[] = {
            {"config", required_argument, NULL, ARG_CONFIG},
            {"max-parallel-jobs", required_argument, NULL, 'j'},
            {"attach", required_argument, NULL, ARG_ATTACH},
            {"idle-exit-sec", required_argument, NULL, ARG_IDLE_EXIT_SEC},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, ARG_VERSION},
            {},
        };
        int c;
        while ((c = getopt_long(argc, argv, "j:h", options, NULL)) >= 0)
                switch (c) {
                case ARG_CONFIG:
                        a->config_path = optarg;
                        break;
                case 'j':
                        a->max_parallel_jobs = optarg;
                        break;
                case ARG_ATTACH:
                        a->attach = optarg;
                        break;
                case ARG_IDLE_EXIT_SEC:
                        a->idle_exit_sec = optarg;
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
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

static void on_config_warning(unsigned line, const char *message, void *userdata)
{
        fprintf(stderr, "qtrimd: %s:%u: %s\n", (const char *)userdata, line, message);
}

/* The file, then the command line over it, each value with the file's own syntax. */
static int load_config(const struct arguments *a, struct qt_config *c)
{
        const char *path = a->config_path ? a->config_path : QTRIM_CONFIG_PATH;
        char err[QT_CONFIG_ERROR_MAX] = "";
        int r = qt_config_init(c);
        if (r < 0)
                return r;
        r = qt_config_load(c, path, a->config_path != NULL, on_config_warning, (void *)path, err);
        if (r < 0) {
                fprintf(stderr, "qtrimd: %s: %s\n", path, err);
                qt_config_free(c);
                return r;
        }
        const struct {
                const char *option, *key, *value;
        } overrides[] = {
            {"--max-parallel-jobs", "MaxParallelJobs", a->max_parallel_jobs},
            {"--attach", "Attach", a->attach},
            {"--idle-exit-sec", "IdleExitSec", a->idle_exit_sec},
        };
        for (size_t i = 0; i < ELEMENTSOF(overrides); i++) {
                const char *why;
                if (overrides[i].value &&
                    qt_config_set(c, overrides[i].key, overrides[i].value, &why) < 0) {
                        fprintf(stderr, "qtrimd: %s=%s: %s\n", overrides[i].option,
                                overrides[i].value, why);
                        qt_config_free(c);
                        return -EINVAL;
                }
        }
        return 0;
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
        sd_event_source_unref(m->idle_timer);
        metrics_free(m->metrics);
        sd_bus_flush_close_unref(m->bus);
        sd_event_unref(m->event);
        qt_config_free(&m->config);
        closep(&m->state_lock_fd);
}

static int run(int argc, char **argv)
{
        /* systemd's StateDirectory= says where; tests give each daemon its own. */
        const char *state_dir = getenv("STATE_DIRECTORY");
        struct manager m = {
            .state_lock_fd = -1,
            .scratch_dir = QTRIM_RUNTIME_DIR "/mnt",
            .state_dir = state_dir && state_dir[0] == '/' ? state_dir : QTRIM_STATE_DIR,
        };
        struct arguments args = {};
        int r = parse_args(argc, argv, &args);
        if (r <= 0)
                return r;
        r = load_config(&args, &m.config);
        if (r < 0)
                return r;

        /* A dead worker's processes (qemu-nbd, the FUSE server, qemu-img) become ours, so a
         * job ends only once they are gone too (worker.c). */
        if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
                fprintf(stderr, "qtrimd: PR_SET_CHILD_SUBREAPER: %m\n");
        /* sd-event handles these through signalfd and child sources. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        if (mkdir(QTRIM_RUNTIME_DIR, 0755) < 0 && errno != EEXIST) {
                r = -errno;
                fprintf(stderr, "qtrimd: cannot create %s: %m\n", QTRIM_RUNTIME_DIR);
                goto out;
        }

        /* Before anything reads the state directory: a second qtrimd (an administrator trying
         * the binary beside the service) must not take the first one's jobs for a crash's. */
        pid_t holder;
        m.state_lock_fd = state_lock(m.state_dir, &holder);
        if (m.state_lock_fd == -EBUSY) {
                r = -EBUSY;
                if (holder > 0)
                        fprintf(stderr, "qtrimd: another qtrimd (pid %d) is already running\n",
                                (int)holder);
                else
                        fprintf(stderr,
                                "qtrimd: another qtrimd is already running (%s is "
                                "locked)\n",
                                m.state_dir);
                goto out;
        }
        if (m.state_lock_fd < 0) {
                r = m.state_lock_fd;
                fprintf(stderr, "qtrimd: cannot use the state directory %s: %s\n", m.state_dir,
                        strerror(-r));
                goto out;
        }

        /* Copies a crash of an earlier qtrimd and its workers left behind, and what they left on
         * nbd devices (partition nodes, linear devices of qtrim's), known to no record. */
        unsigned interrupted = state_jobs_recover(m.state_dir);
        qt_attach_nbd_drop_all_stale();
        if (interrupted)
                fprintf(stderr, "qtrimd: %u job(s) of an earlier qtrimd were interrupted\n",
                        interrupted);

        r = sd_event_default(&m.event);
        if (r >= 0)
                r = sd_event_add_signal(m.event, NULL, SIGTERM, on_stop_signal, &m);
        if (r >= 0)
                r = sd_event_add_signal(m.event, NULL, SIGINT, on_stop_signal, &m);
        if (r < 0) {
                fprintf(stderr, "qtrimd: cannot set up the event loop: %s\n", strerror(-r));
                goto out;
        }
        r = metrics_new(m.event, m.config.metrics_file, &m.metrics);
        if (r < 0) {
                fprintf(stderr, "qtrimd: cannot keep metrics for %s: %s\n", m.config.metrics_file,
                        strerror(-r));
                goto out;
        }
        metrics_jobs_interrupted(m.metrics, interrupted);

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
        fprintf(stderr, "qtrimd %s: serving %s, at most %u job(s) at once, attach: %s\n",
                QTRIM_VERSION, QTRIM_BUS_NAME, m.config.max_parallel_jobs,
                qt_attach_backend_name(m.config.attach));
        manager_update_idle(&m);
        r = sd_event_loop(m.event);
out:
        manager_done(&m);
        return r;
}

int main(int argc, char **argv)
{
        return run(argc, argv) < 0 ? 1 : 0;
}

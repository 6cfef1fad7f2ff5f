/* SPDX-License-Identifier: GPL-2.0-or-later */
/* qtrimd's state: the bus, the event loop, the jobs, and requests still being checked. */
#pragma once

#include <stdbool.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "conf-file.h"

struct job;
struct request;

/* Limits on what callers can make the daemon hold. */
#define MAX_JOBS     64 /* queued + running */
#define MAX_REQUESTS 32 /* Shrink/Inspect calls whose image is still being checked */

struct manager {
        sd_event *event;
        sd_bus *bus;
        struct qt_config config;
        const char *scratch_dir; /* where workers mount their private tmpfs */
        const char *state_dir;   /* what must survive a crash of qtrimd (state-dir.h) */
        int state_lock_fd;       /* held while qtrimd runs: one qtrimd per state directory */

        struct job *jobs; /* in the order they were queued */
        unsigned n_jobs, n_running, next_job_id;
        struct request *requests;
        unsigned n_requests;
        bool exiting;
        sd_event_source *idle_timer; /* armed while there is no job and no request */
        struct metrics *metrics;     /* MetricsFile=, NULL when off */
};

int manager_add_bus_objects(struct manager *m);
/* Starts queued jobs while fewer than max_parallel_jobs run. */
void manager_dispatch_queue(struct manager *m);
/* Called when a job or request ends: at exit, the loop stops once nothing is left. */
void manager_check_exit(struct manager *m);
/* Arms the idle-exit timer when nothing is left to do, disarms it otherwise. */
void manager_update_idle(struct manager *m);
/* Refuses new work, cancels queued and running jobs, and exits once their workers are gone. */
void manager_stop(struct manager *m, const char *why);
/* Frees what is left at exit (requests whose workers never ended). */
void manager_free_requests(struct manager *m);
/* Whether path (absolute) lies inside one of ImageDirectories=, where non-root callers may act.
 * Lexical: callers check the path as given and again once resolved. */
bool manager_in_image_directories(const struct manager *m, const char *path);

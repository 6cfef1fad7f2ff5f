/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * One worker process per piece of work (a probe, an inspection, a shrink). It is forked from
 * qtrimd, dies with it (PDEATHSIG SIGTERM, which it treats as a cancel), works in its own mount
 * namespace and tells qtrimd what happens in report lines (lib/report.h) over a pipe.
 */
#pragma once

#include <systemd/sd-event.h>

#include "report.h"
#include "shrink.h"

struct worker;

struct worker_callbacks {
        /* A report line was applied to the report; property is the Job property it changed,
         * or NULL. */
        void (*on_change)(struct worker *w, const char *property, void *userdata);
        /* The worker has exited and all its lines were read. The report's error is set if it
         * failed, also when it died without saying why. */
        void (*on_exit)(struct worker *w, void *userdata);
};

/* What a worker runs: emits to r, returns 0 or a negative errno. arg is the caller's, read in
 * the forked child. */
typedef int (*worker_task)(const void *arg, struct qt_reporter *r);

/* Forks a worker that runs task(arg). Its report lines are applied to report, which the caller
 * owns and keeps until the worker is freed. */
int worker_start_task(sd_event *event, worker_task task, const void *arg, struct qt_report *report,
                      const struct worker_callbacks *cb, void *userdata, struct worker **ret);
/* The engine's work (qt_shrink_run) for req. */
int worker_start(sd_event *event, const struct qt_shrink_request *req, struct qt_report *report,
                 const struct worker_callbacks *cb, void *userdata, struct worker **ret);
/* Asks the worker to stop at the next safe point (it tears down in order). */
void worker_cancel(struct worker *w);
struct worker *worker_free(struct worker *w);

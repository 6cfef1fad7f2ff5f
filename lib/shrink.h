/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * One job, phase by phase (DESIGN.md): inspect, attach, discover, trim, detach, convert,
 * replace, report. Runs in a worker process; everything it learns and does goes out through a
 * reporter as it happens. The phases are in qt_shrink_run(), in the order they run.
 */
#pragma once

#include <stdbool.h>

#include "attach.h"
#include "convert.h"
#include "image.h"
#include "report.h"

enum qt_job_kind {
        QT_JOB_PROBE,   /* inspect only: is this an image qtrim may work on? */
        QT_JOB_INSPECT, /* and attach read-only to list partitions and filesystems */
        QT_JOB_SHRINK,  /* the whole job */
};

struct qt_shrink_request {
        enum qt_job_kind kind;
        const char *image;             /* absolute path */
        dev_t dev;                     /* the file qtrimd resolved it to, checked at inspect */
        ino_t ino;                     /* (0: not known) */
        struct qt_format_claim format; /* what the caller and qtrimd.conf say its format is */
        const struct qt_format_rules *formats; /* Formats=, for the files beside it (or NULL) */
        bool convert;   /* QT_JOB_SHRINK: make a compact copy after the trim */
        bool keep_gaps; /* leave the space outside the partitions alone */
        /* QT_JOB_INSPECT: estimate what a shrink would give back (mounts read-only the
         * filesystems a shrink would mount: estimate.h) */
        bool estimate;
        struct qt_convert_policy convert_policy; /* and keep it only if it saves enough */
        enum qt_attach_backend attach;
        const char
            *scratch_dir; /* where the worker mounts its private tmpfs, e.g. /run/qtrim/mnt */
};

/* Returns 0, or a negative errno with the error in r->report.error (already emitted). Emits the
 * "done" phase on success only (a failed job keeps the phase it failed in), then the end marker. */
int qt_shrink_run(const struct qt_shrink_request *req, struct qt_reporter *r);

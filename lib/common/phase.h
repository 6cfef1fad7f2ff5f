/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A job's phases: their names (the Job's Phase property) and the share of its progress each
 * has, which the worker uses to make Progress and qtrimctl to turn Progress back into a phase's
 * own fraction.
 */
#pragma once

enum qt_phase {
        QT_PHASE_QUEUED,
        QT_PHASE_INSPECT,
        QT_PHASE_ONLINE_TRIM, /* a running domain's guest trims, through its agent (no attach) */
        QT_PHASE_ATTACH,
        QT_PHASE_DISCOVER,
        QT_PHASE_TRIM,
        QT_PHASE_DETACH,
        QT_PHASE_CONVERT,
        QT_PHASE_REPLACE,
        QT_PHASE_DONE,
        _QT_PHASE_MAX,
};

const char *qt_phase_name(enum qt_phase phase);
/* The phase of a name, or -EINVAL. */
int qt_phase_from_name(const char *name);

/* Overall progress at the start of a phase, so progress moves evenly across a job: the trim
 * and convert phases take most of the time and most of the bar. */
double qt_phase_progress_start(enum qt_phase phase);
double qt_phase_progress_span(enum qt_phase phase);

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "phase.h"

#include <errno.h>
#include <string.h>

static const char *const phase_names[_QT_PHASE_MAX] = {
    [QT_PHASE_QUEUED] = "queued",           [QT_PHASE_INSPECT] = "inspect",
    [QT_PHASE_ONLINE_TRIM] = "online-trim", [QT_PHASE_ATTACH] = "attach",
    [QT_PHASE_DISCOVER] = "discover",       [QT_PHASE_TRIM] = "trim",
    [QT_PHASE_DETACH] = "detach",           [QT_PHASE_CONVERT] = "convert",
    [QT_PHASE_REPLACE] = "replace",         [QT_PHASE_DONE] = "done",
};

/* Share of the progress bar per phase (sums to 1). Trim and convert are where time goes. An
 * online trim has no measure of its progress (the guest agent says nothing until it is done): its
 * phase has no share, so the bar waits where the measuring left it. */
static const double phase_weight[_QT_PHASE_MAX] = {
    [QT_PHASE_INSPECT] = 0.02, [QT_PHASE_ATTACH] = 0.03, [QT_PHASE_DISCOVER] = 0.02,
    [QT_PHASE_TRIM] = 0.45,    [QT_PHASE_DETACH] = 0.03, [QT_PHASE_CONVERT] = 0.43,
    [QT_PHASE_REPLACE] = 0.02,
};

const char *qt_phase_name(enum qt_phase phase)
{
        return (unsigned)phase < _QT_PHASE_MAX ? phase_names[phase] : "unknown";
}

int qt_phase_from_name(const char *name)
{
        for (int p = 0; p < _QT_PHASE_MAX; p++)
                if (strcmp(name, phase_names[p]) == 0)
                        return p;
        return -EINVAL;
}

double qt_phase_progress_start(enum qt_phase phase)
{
        double sum = 0;
        for (int p = 0; p < (int)phase && p < _QT_PHASE_MAX; p++)
                sum += phase_weight[p];
        return sum;
}

double qt_phase_progress_span(enum qt_phase phase)
{
        return (unsigned)phase < _QT_PHASE_MAX ? phase_weight[phase] : 0;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Pause points for tests, compiled only into builds configured with -Dtest_hooks=true (the test
 * build; never a release). With QTRIM_TEST_PAUSE=<point> in qtrimd's environment, a worker that
 * reaches <point> waits there (up to a minute) until it is canceled or killed, or until the file
 * QTRIM_TEST_RESUME names exists, so a test can act at a phase it chose instead of racing it.
 * Points: the phase names ("inspect", "attach", ..., "replace"), each at the start of its phase;
 * "trim-mounted", with the first filesystem mounted; "convert-write", with the temporary copy
 * created and qemu-img about to write it; "online-trim", an online trim's worker about to ask the
 * guest agent (daemon/domain-libvirt.c).
 */
#pragma once

#include "config.h"

#if QTRIM_TEST_HOOKS
/* Returns -ECANCELED if a cancel arrived while paused, 0 otherwise. */
int qt_test_pause(const char *point);
#else
static inline int qt_test_pause(const char *point)
{
        (void)point;
        return 0;
}
#endif

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "test-hooks.h"

#if QTRIM_TEST_HOOKS
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cancel.h"
#include "util.h"

int qt_test_pause(const char *point)
{
        const char *want = getenv("QTRIM_TEST_PAUSE");
        if (!want || strcmp(want, point) != 0)
                return 0;
        const char *resume = getenv("QTRIM_TEST_RESUME");
        fprintf(stderr, "qtrim worker %d: paused at %s (QTRIM_TEST_PAUSE)\n", (int)getpid(), point);
        for (int i = 0; i < 6000 && !qt_cancel_requested; i++) {
                if (resume && access(resume, F_OK) == 0)
                        break;
                nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
        }
        return qt_cancel_requested ? -ECANCELED : 0;
}
#endif

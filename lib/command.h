/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Running qemu-img and friends: capture what they print, follow progress, stop on cancel. */
#pragma once

#include <stddef.h>
#include <sys/types.h>

struct qt_command {
        char *const *argv; /* argv[0] is looked up in PATH */
        /* Called for each line of standard output (split at '\n' or '\r', which is how qemu-img
         * -p redraws); NULL collects standard output in out instead. */
        void (*on_line)(const char *line, void *userdata);
        void *userdata;

        char *out;  /* collected standard output, NUL-terminated (on_line == NULL) */
        char *err;  /* collected standard error, NUL-terminated, trailing newline removed */
        int status; /* exit status, or 128 + signal number */
};

/* Runs the command to its end. Returns 0 when it ran (whatever its exit status), -ECANCELED if
 * qt_cancel_requested was set while it ran (the child is then terminated and reaped), or a
 * negative errno if it could not be started. Output beyond a few MiB per stream is dropped. */
int qt_command_run(struct qt_command *c);
void qt_command_done(struct qt_command *c);

/* In a child just forked from a worker, before exec: dies with the worker (death_signal), gets
 * default signal handling and an empty signal mask, and /dev/null as standard input. */
void qt_child_prepare(pid_t parent, int death_signal);

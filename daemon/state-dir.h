/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What qtrimd keeps under its state directory ($STATE_DIRECTORY, /var/lib/qtrim), so that it
 * survives a crash or a restart:
 *  - jobs/N: a running job's image and, while it exists, its temporary copy. A record left at
 *    start is a job that died with an earlier qtrimd: its copy is deleted (only a name qtrim
 *    makes for that image) and the loss is logged. A worker that dies while qtrimd lives is
 *    cleaned up at once (job.c); this is for when nobody was left to do it.
 *  - shrunk/HASH: the image as a finished shrink left it (inode, size, mtime), so a sweep can
 *    skip images nobody wrote to since.
 */
#pragma once

#include <stdbool.h>
#include <sys/stat.h>
#include <sys/types.h>

/*
 * One qtrimd per state directory: an exclusive lock on its "lock" file (with the holder's pid in
 * it), taken before anything else reads or changes the directory, held until exit (workers do
 * not inherit it). Returns the fd holding it; -EBUSY if another process holds it, its pid in
 * *ret_holder (0 if unknown); another negative errno if the directory cannot be used.
 */
int state_lock(const char *state_dir, pid_t *ret_holder);

/* Writes text to path through PATH.new and a rename, fsynced first: a crash leaves the old file
 * or the new one, durable before whatever it records happens. mode: the file's, whatever the
 * umask. */
int state_write_atomic(const char *path, const char *text, mode_t mode);

/* Records that job works on image with its copy at temp ("" while there is none). */
int state_job_set(const char *state_dir, unsigned job, const char *image, const char *temp);
/* The job ended, whatever its outcome: forget it. */
int state_job_end(const char *state_dir, unsigned job);
/* At start: for every job an earlier qtrimd left, logs that it was interrupted and deletes its
 * copy. Returns how many there were. */
unsigned state_jobs_recover(const char *state_dir);

/* Remembers image as it is now, after a shrink that succeeded. */
int state_shrunk_set(const char *state_dir, const char *image);
/* Whether st (image now) is exactly the file the last shrink left: nothing wrote to it since. */
bool state_shrunk_unchanged(const char *state_dir, const char *image, const struct stat *st);

/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Small helpers every module uses: scope-bound cleanup, byte and time formatting. */
#pragma once

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define _cleanup_(f)     __attribute__((cleanup(f)))
#define _cleanup_free_   _cleanup_(freep)
#define _cleanup_close_  _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

static inline void freep(void *p)
{
        free(*(void **)p);
}

static inline void closep(int *fd)
{
        if (*fd >= 0)
                close(*fd);
        *fd = -1;
}

static inline void fclosep(FILE **f)
{
        if (*f)
                fclose(*f);
        *f = NULL;
}

/* Hands a cleanup-owned pointer over to the caller. */
#define TAKE_PTR(p)                                                                                \
        ({                                                                                         \
                __typeof__(p) _taken = (p);                                                        \
                (p) = NULL;                                                                        \
                _taken;                                                                            \
        })
#define TAKE_FD(fd)                                                                                \
        ({                                                                                         \
                int _taken = (fd);                                                                 \
                (fd) = -1;                                                                         \
                _taken;                                                                            \
        })

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/* Whether two stat() results are of one file (under any of its names). */
static inline bool same_file(const struct stat *a, const struct stat *b)
{
        return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* "1.5 GiB", "512 B": binary units, one decimal. Returns buf. */
#define FORMAT_BYTES_MAX 16
char *format_bytes(char buf[FORMAT_BYTES_MAX], uint64_t bytes);
/* "41 s", "2 min 05 s", "1.2 s" for under ten seconds. Returns buf. */
#define FORMAT_DURATION_MAX 32
char *format_duration(char buf[FORMAT_DURATION_MAX], uint64_t usec);

uint64_t now_usec(void);      /* CLOCK_MONOTONIC */
uint64_t realtime_usec(void); /* CLOCK_REALTIME: moments others compare (the Job's QueuedAt...) */

/* Parses a whole decimal uint64; -EINVAL on anything else (sign, junk, overflow, empty). */
int parse_u64(const char *s, uint64_t *ret);

/* Replaces, in place, every byte that does not start a valid UTF-8 sequence (including one cut
 * short by truncation) with '?': D-Bus refuses strings that are not UTF-8, and qemu-img and
 * guest filesystems hand us bytes. Returns s. */
char *utf8_sanitize(char *s);

/* Writes all of buf, retrying on EINTR and short writes. */
int write_all(int fd, const void *buf, size_t len);

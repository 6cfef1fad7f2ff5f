/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <time.h>

char *format_bytes(char buf[FORMAT_BYTES_MAX], uint64_t bytes)
{
        static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};

        if (bytes < 1024) {
                snprintf(buf, FORMAT_BYTES_MAX, "%" PRIu64 " B", bytes);
                return buf;
        }
        double v = (double)bytes / 1024.0;
        size_t u = 0;
        while (v >= 1024.0 && u + 1 < ELEMENTSOF(units)) {
                v /= 1024.0;
                u++;
        }
        snprintf(buf, FORMAT_BYTES_MAX, "%.1f %s", v, units[u]);
        return buf;
}

char *format_duration(char buf[FORMAT_DURATION_MAX], uint64_t usec)
{
        uint64_t s = (usec + 500000) / 1000000;

        if (usec < 10000000)
                snprintf(buf, FORMAT_DURATION_MAX, "%.1f s", (double)usec / 1e6);
        else if (s < 60)
                snprintf(buf, FORMAT_DURATION_MAX, "%" PRIu64 " s", s);
        else if (s < 3600)
                snprintf(buf, FORMAT_DURATION_MAX, "%" PRIu64 " min %02" PRIu64 " s", s / 60,
                         s % 60);
        else
                snprintf(buf, FORMAT_DURATION_MAX, "%" PRIu64 " h %02" PRIu64 " min", s / 3600,
                         (s % 3600) / 60);
        return buf;
}

volatile sig_atomic_t qt_cancel_requested;

uint64_t now_usec(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int parse_u64(const char *s, uint64_t *ret)
{
        if (!s || *s < '0' || *s > '9')
                return -EINVAL;
        uint64_t v = 0;
        for (; *s; s++) {
                if (*s < '0' || *s > '9')
                        return -EINVAL;
                unsigned d = (unsigned)(*s - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -EINVAL;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

int write_all(int fd, const void *buf, size_t len)
{
        const char *p = buf;
        while (len > 0) {
                ssize_t n = write(fd, p, len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
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

static uint64_t clock_usec(clockid_t clock)
{
        struct timespec ts;
        clock_gettime(clock, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t now_usec(void)
{
        return clock_usec(CLOCK_MONOTONIC);
}

uint64_t realtime_usec(void)
{
        return clock_usec(CLOCK_REALTIME);
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

/* Length of the valid UTF-8 sequence at s (no overlongs, surrogates or code points past
 * U+10FFFF), or 0. */
static size_t utf8_sequence_length(const unsigned char *s)
{
        unsigned c = s[0];
        size_t len;
        unsigned min, cp;

        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                len = 2, min = 0x80, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
                len = 3, min = 0x800, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
                len = 4, min = 0x10000, cp = c & 0x07;
        else
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return len;
}

char *utf8_sanitize(char *s)
{
        unsigned char *in = (unsigned char *)s, *out = (unsigned char *)s;
        while (*in) {
                size_t len = utf8_sequence_length(in);
                if (len == 0) {
                        *out++ = '?';
                        in++;
                        continue;
                }
                memmove(out, in, len);
                out += len;
                in += len;
        }
        *out = '\0';
        return s;
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

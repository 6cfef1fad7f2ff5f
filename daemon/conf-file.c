/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "conf-file.h"

#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "image.h"
#include "util.h"

/* No sane configuration comes near this; a bigger file is a mistake (or /dev/zero). */
#define CONFIG_FILE_MAX (64u << 10)

int qt_config_init(struct qt_config *c)
{
        *c = (struct qt_config){
            .max_parallel_jobs = 2,
            .attach = QT_ATTACH_AUTO,
            .idle_exit_usec = 60 * 1000000ULL,
            .trim_gaps = true,
            .libvirt_uri = "qemu:///system",
        };
        static const char *const patterns[] = {"*.qcow2", "*.img", "*.raw"};
        c->image_dirs[c->n_image_dirs++] = strdup("/var/lib/libvirt/images");
        for (size_t i = 0; i < ELEMENTSOF(patterns); i++)
                c->sweep_patterns[c->n_sweep_patterns++] = strdup(patterns[i]);
        for (size_t i = 0; i < c->n_sweep_patterns; i++)
                if (!c->sweep_patterns[i] || !c->image_dirs[0]) {
                        qt_config_free(c);
                        return -ENOMEM;
                }
        return 0;
}

static void free_list(char **list, size_t *n)
{
        for (size_t i = 0; i < *n; i++)
                free(list[i]);
        *n = 0;
}

void qt_config_free(struct qt_config *c)
{
        free_list(c->image_dirs, &c->n_image_dirs);
        free_list(c->sweep_patterns, &c->n_sweep_patterns);
        free_list(c->formats.rules, &c->formats.n);
        free_list(c->shutdown_domains, &c->n_shutdown_domains);
        free_list(c->sweep_online_domains, &c->n_sweep_online_domains);
        free(c->metrics_file);
        c->metrics_file = NULL;
}

/* A number with an optional binary suffix: 512, 64K, 100M, 2G, 1T (also "MiB"-style). */
static int parse_size(const char *s, uint64_t *ret)
{
        char digits[24];
        size_t n = strspn(s, "0123456789");
        if (n == 0 || n >= sizeof(digits))
                return -EINVAL;
        memcpy(digits, s, n);
        digits[n] = '\0';
        uint64_t v;
        if (parse_u64(digits, &v) < 0)
                return -EINVAL;
        static const struct {
                const char *suffix;
                unsigned shift;
        } units[] = {
            {"", 0},     {"B", 0},  {"K", 10},   {"KiB", 10}, {"M", 20},
            {"MiB", 20}, {"G", 30}, {"GiB", 30}, {"T", 40},   {"TiB", 40},
        };
        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (strcmp(s + n, units[i].suffix) == 0) {
                        if (v > (UINT64_MAX >> units[i].shift))
                                return -ERANGE;
                        *ret = v << units[i].shift;
                        return 0;
                }
        return -EINVAL;
}

int qt_parse_convert_policy(const char *s, struct qt_convert_policy *ret)
{
        struct qt_convert_policy p = {};
        size_t len = strlen(s);
        if (strcmp(s, "always") == 0) {
                /* nothing to require */
        } else if (strcmp(s, "never") == 0) {
                p.never = true;
        } else if (len > 1 && s[len - 1] == '%') {
                char digits[8];
                uint64_t v;
                if (len - 1 >= sizeof(digits))
                        return -EINVAL;
                memcpy(digits, s, len - 1);
                digits[len - 1] = '\0';
                if (parse_u64(digits, &v) < 0 || v > 100)
                        return -EINVAL;
                p.min_percent = (unsigned)v;
        } else if (parse_size(s, &p.min_bytes) < 0) {
                return -EINVAL;
        }
        *ret = p;
        return 0;
}

int qt_parse_seconds(const char *s, uint64_t *ret_usec)
{
        uint64_t v;
        /* A week is plenty for an idle timeout; the bound keeps the microseconds from overflowing.
         */
        if (parse_u64(s, &v) < 0 || v > 7 * 24 * 3600)
                return -EINVAL;
        *ret_usec = v * 1000000ULL;
        return 0;
}

/* Splits value on blanks into list, replacing what it held. */
static int set_list(char **list, size_t *n, size_t max, const char *value)
{
        char *copies[QT_CONFIG_MAX_DIRS > QT_CONFIG_MAX_PATTERNS ? QT_CONFIG_MAX_DIRS
                                                                 : QT_CONFIG_MAX_PATTERNS];
        _Static_assert(QT_FORMAT_RULES_MAX <= QT_CONFIG_MAX_PATTERNS, "Formats= uses set_list too");
        size_t count = 0;
        for (const char *p = value; *p;) {
                p += strspn(p, " \t");
                size_t len = strcspn(p, " \t");
                if (len == 0)
                        break;
                if (count == max) {
                        free_list(copies, &count);
                        return -E2BIG;
                }
                copies[count] = strndup(p, len);
                if (!copies[count]) {
                        free_list(copies, &count);
                        return -ENOMEM;
                }
                count++;
                p += len;
        }
        free_list(list, n);
        memcpy(list, copies, count * sizeof(*copies));
        *n = count;
        return 0;
}

/* Absolute, and no "." or ".." component: "inside this directory" is a prefix test. */
static bool is_plain_absolute(const char *d)
{
        if (d[0] != '/')
                return false;
        for (const char *p = d; *p;) {
                p += strspn(p, "/");
                size_t len = strcspn(p, "/");
                if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
                        return false;
                p += len;
        }
        return true;
}

static int set_image_dirs(struct qt_config *c, const char *value)
{
        int r = set_list(c->image_dirs, &c->n_image_dirs, QT_CONFIG_MAX_DIRS, value);
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->n_image_dirs; i++) {
                char *d = c->image_dirs[i];
                if (!is_plain_absolute(d))
                        return -EINVAL;
                for (size_t len = strlen(d); len > 1 && d[len - 1] == '/'; len--)
                        d[len - 1] = '\0';
        }
        return 0;
}

static int set_format_rules(struct qt_config *c, const char *value)
{
        int r = set_list(c->formats.rules, &c->formats.n, QT_FORMAT_RULES_MAX, value);
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->formats.n; i++) {
                size_t len;
                if (!qt_format_rule_format(c->formats.rules[i], &len))
                        return -EINVAL;
        }
        return 0;
}

int qt_config_set(struct qt_config *c, const char *key, const char *value, const char **why)
{
        uint64_t n;
        *why = NULL;
        if (strcmp(key, "ImageDirectories") == 0) {
                *why = "takes absolute directory paths, separated by spaces";
                return set_image_dirs(c, value);
        }
        if (strcmp(key, "SweepPatterns") == 0) {
                *why = "takes file name patterns, separated by spaces";
                return set_list(c->sweep_patterns, &c->n_sweep_patterns, QT_CONFIG_MAX_PATTERNS,
                                value);
        }
        if (strcmp(key, "Formats") == 0) {
                *why = "takes PATTERN:FORMAT pairs (FORMAT raw or qcow2), separated by spaces";
                return set_format_rules(c, value);
        }
        if (strcmp(key, "MaxParallelJobs") == 0) {
                *why = "takes a number from 1 to 64";
                if (parse_u64(value, &n) < 0 || n < 1 || n > 64)
                        return -EINVAL;
                c->max_parallel_jobs = (unsigned)n;
                return 0;
        }
        if (strcmp(key, "Convert") == 0) {
                *why = "takes always, never, a percentage (10%) or a size (256M)";
                return qt_parse_convert_policy(value, &c->convert);
        }
        if (strcmp(key, "Attach") == 0) {
                *why = "takes auto, kernel or fuse";
                return qt_attach_backend_from_name(value, &c->attach);
        }
        if (strcmp(key, "TrimGaps") == 0) {
                *why = "takes yes or no";
                if (strcmp(value, "yes") == 0 || strcmp(value, "no") == 0) {
                        c->trim_gaps = value[0] == 'y';
                        return 0;
                }
                return -EINVAL;
        }
        if (strcmp(key, "MetricsFile") == 0) {
                *why = "takes an absolute file path, or nothing for no metrics";
                size_t len = strlen(value);
                if (len > 0 &&
                    (!is_plain_absolute(value) || value[len - 1] == '/' || len >= PATH_MAX))
                        return -EINVAL;
                char *copy = len > 0 ? strdup(value) : NULL;
                if (len > 0 && !copy)
                        return -ENOMEM;
                free(c->metrics_file);
                c->metrics_file = copy;
                return 0;
        }
        if (strcmp(key, "LibvirtURI") == 0) {
                *why = "takes a libvirt connection URI (qemu:///system)";
                if (!value[0] || strlen(value) >= sizeof(c->libvirt_uri) || strchr(value, ' '))
                        return -EINVAL;
                snprintf(c->libvirt_uri, sizeof(c->libvirt_uri), "%s", value);
                return 0;
        }
        if (strcmp(key, "ShrinkOnShutdown") == 0) {
                *why = "takes domain name patterns, separated by spaces, or nothing for none";
                return set_list(c->shutdown_domains, &c->n_shutdown_domains, QT_CONFIG_MAX_PATTERNS,
                                value);
        }
        if (strcmp(key, "SweepOnline") == 0) {
                *why = "takes domain name patterns, separated by spaces, or nothing for none";
                return set_list(c->sweep_online_domains, &c->n_sweep_online_domains,
                                QT_CONFIG_MAX_PATTERNS, value);
        }
        if (strcmp(key, "IdleExitSec") == 0) {
                *why = "takes a number of seconds (0: never exit when idle)";
                return qt_parse_seconds(value, &c->idle_exit_usec);
        }
        return -ENOENT;
}

bool qt_config_shrinks_on_shutdown(const struct qt_config *c, const char *domain)
{
        for (size_t i = 0; i < c->n_shutdown_domains; i++)
                if (fnmatch(c->shutdown_domains[i], domain, 0) == 0)
                        return true;
        return false;
}

static void warn(qt_config_warn_fn fn, void *userdata, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void warn(qt_config_warn_fn fn, void *userdata, unsigned line, const char *fmt, ...)
{
        char msg[QT_CONFIG_ERROR_MAX];
        va_list ap;
        if (!fn)
                return;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        fn(line, utf8_sanitize(msg), userdata);
}

static char *strip(char *s)
{
        s += strspn(s, " \t\r");
        size_t len = strlen(s);
        while (len > 0 && strchr(" \t\r", s[len - 1]))
                s[--len] = '\0';
        return s;
}

int qt_config_parse(struct qt_config *c, const char *text, size_t len, qt_config_warn_fn warn_fn,
                    void *userdata, char err[QT_CONFIG_ERROR_MAX])
{
        _cleanup_free_ char *buf = strndup(text, len);
        if (!buf)
                return -ENOMEM;
        if (strlen(buf) != len) {
                snprintf(err, QT_CONFIG_ERROR_MAX, "the file contains a NUL byte");
                return -EINVAL;
        }
        bool in_daemon = false;
        unsigned lineno = 0;
        for (char *next = buf; next;) {
                char *line = next;
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                lineno++;
                line = strip(line);
                if (!line[0] || line[0] == '#' || line[0] == ';')
                        continue;
                if (line[0] == '[') {
                        in_daemon = strcmp(line, "[Daemon]") == 0;
                        if (!in_daemon)
                                warn(warn_fn, userdata, lineno, "unknown section %.64s, ignored",
                                     line);
                        continue;
                }
                char *eq = strchr(line, '=');
                if (!eq) {
                        snprintf(err, QT_CONFIG_ERROR_MAX, "line %u: expected Key=Value", lineno);
                        utf8_sanitize(err);
                        return -EINVAL;
                }
                *eq = '\0';
                const char *key = strip(line), *value = strip(eq + 1);
                if (!in_daemon) {
                        warn(warn_fn, userdata, lineno, "%.64s outside [Daemon], ignored", key);
                        continue;
                }
                const char *why;
                int r = qt_config_set(c, key, value, &why);
                if (r == -ENOENT) {
                        warn(warn_fn, userdata, lineno, "unknown key %.64s, ignored", key);
                        continue;
                }
                if (r == -ENOMEM)
                        return r;
                if (r < 0) {
                        snprintf(err, QT_CONFIG_ERROR_MAX, "line %u: %.64s=%.64s: %s%s", lineno,
                                 key, value, r == -E2BIG ? "too many entries; " : "", why);
                        utf8_sanitize(err);
                        return -EINVAL;
                }
        }
        return 0;
}

int qt_config_load(struct qt_config *c, const char *path, bool must_exist,
                   qt_config_warn_fn warn_fn, void *userdata, char err[QT_CONFIG_ERROR_MAX])
{
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT && !must_exist)
                        return 0;
                int r = -errno;
                snprintf(err, QT_CONFIG_ERROR_MAX, "cannot open %s: %s", path, strerror(errno));
                return r;
        }
        _cleanup_free_ char *text = malloc(CONFIG_FILE_MAX + 1);
        if (!text)
                return -ENOMEM;
        size_t len = fread(text, 1, CONFIG_FILE_MAX + 1, f);
        if (ferror(f)) {
                snprintf(err, QT_CONFIG_ERROR_MAX, "cannot read %s", path);
                return -EIO;
        }
        if (len > CONFIG_FILE_MAX) {
                snprintf(err, QT_CONFIG_ERROR_MAX, "%s is larger than %u KiB", path,
                         CONFIG_FILE_MAX >> 10);
                return -EFBIG;
        }
        return qt_config_parse(c, text, len, warn_fn, userdata, err);
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * /etc/qtrim/qtrimd.conf: the administrator's policy for qtrimd, one "[Daemon]" section of
 * Key=Value lines (qtrimd.conf(5)). Parsing is separate from reading the file so that the
 * parser, which reads bytes root wrote but a package or a careless edit may have mangled, can be
 * fuzzed on its own.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attach.h"
#include "convert.h"
#include "image.h"

#define QT_CONFIG_MAX_DIRS     32
#define QT_CONFIG_MAX_PATTERNS 16
#define QT_CONFIG_ERROR_MAX    256

struct qt_config {
        char *image_dirs[QT_CONFIG_MAX_DIRS]; /* absolute, no trailing slash */
        size_t n_image_dirs;
        char *sweep_patterns[QT_CONFIG_MAX_PATTERNS]; /* fnmatch(3) patterns of file names */
        size_t n_sweep_patterns;
        struct qt_format_rules formats; /* Formats= */
        unsigned max_parallel_jobs;
        struct qt_convert_policy convert;
        enum qt_attach_backend attach;
        uint64_t idle_exit_usec; /* 0: never */
        bool trim_gaps;          /* TrimGaps=: discard the space outside the partitions */
        char *metrics_file;      /* MetricsFile=: node_exporter's textfile format, NULL: off */
        char libvirt_uri[512];   /* LibvirtURI=: where the domain verbs ask libvirt */
        /* ShrinkOnShutdown=: fnmatch(3) patterns of domain names whose disks libvirt's hook has
         * shrunk when they stop; none: off */
        char *shutdown_domains[QT_CONFIG_MAX_PATTERNS];
        size_t n_shutdown_domains;
        /* SweepOnline=: fnmatch(3) patterns of domain names whose guests the sweep trims online
         * when they run, rather than skipping their images; none: off */
        char *sweep_online_domains[QT_CONFIG_MAX_PATTERNS];
        size_t n_sweep_online_domains;
};

/* Called for each line that is ignored but worth telling the administrator about. */
typedef void (*qt_config_warn_fn)(unsigned line, const char *message, void *userdata);

/* The defaults, as if the file were empty. Free with qt_config_free(). */
int qt_config_init(struct qt_config *c);
void qt_config_free(struct qt_config *c);

/* Applies text (len bytes, need not be NUL-terminated) over c. On a bad value returns -EINVAL
 * with "line N: ..." in err, and c keeps what the lines before it set. */
int qt_config_parse(struct qt_config *c, const char *text, size_t len, qt_config_warn_fn warn,
                    void *userdata, char err[QT_CONFIG_ERROR_MAX]);

/* Reads and parses path over c. A missing file is not an error when must_exist is false. */
int qt_config_load(struct qt_config *c, const char *path, bool must_exist, qt_config_warn_fn warn,
                   void *userdata, char err[QT_CONFIG_ERROR_MAX]);

/* Sets one key from its text (the command line uses the file's syntax): -ENOENT for an unknown
 * key, -EINVAL/-E2BIG for a bad value, with what the key takes in *ret_why. */
int qt_config_set(struct qt_config *c, const char *key, const char *value, const char **ret_why);

/* Whether ShrinkOnShutdown= names the domain. */
bool qt_config_shrinks_on_shutdown(const struct qt_config *c, const char *domain);

/* Parsers of single values. */
int qt_parse_convert_policy(const char *s, struct qt_convert_policy *ret);
int qt_parse_seconds(const char *s, uint64_t *ret_usec);

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzzes qt_config_parse(): /etc/qtrim/qtrimd.conf is root's, but a package, a configuration
 * manager or a careless edit can leave anything in it, and qtrimd (as root) must refuse it with a
 * message, never misbehave. Whatever the parser accepts must be a configuration qtrimd can run
 * with: every image directory absolute and without dot components, limits in range.
 */
#include <string.h>

#include "conf-file.h"
#include "fuzz.h"

static void check_config(const struct qt_config *c)
{
        FUZZ_CHECK(c->max_parallel_jobs >= 1 && c->max_parallel_jobs <= 64);
        FUZZ_CHECK(c->n_image_dirs <= QT_CONFIG_MAX_DIRS);
        FUZZ_CHECK(c->n_sweep_patterns <= QT_CONFIG_MAX_PATTERNS);
        FUZZ_CHECK(c->convert.min_percent <= 100);
        FUZZ_CHECK(c->attach == QT_ATTACH_AUTO || c->attach == QT_ATTACH_KERNEL ||
                   c->attach == QT_ATTACH_FUSE);
        for (size_t i = 0; i < c->n_image_dirs; i++) {
                const char *d = c->image_dirs[i];
                size_t len = strlen(d);
                FUZZ_CHECK(d[0] == '/' && !strstr(d, "/../") && !strstr(d, "/./"));
                FUZZ_CHECK(!(len >= 2 && strcmp(d + len - 2, "/.") == 0));
                FUZZ_CHECK(!(len >= 3 && strcmp(d + len - 3, "/..") == 0));
                FUZZ_CHECK(len == 1 || d[len - 1] != '/');
                FUZZ_CHECK(!strchr(d, ' ') && !strchr(d, '\t') && !strchr(d, '\n'));
        }
        for (size_t i = 0; i < c->n_sweep_patterns; i++)
                FUZZ_CHECK(c->sweep_patterns[i][0] && !strchr(c->sweep_patterns[i], '\n'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct qt_config c;
        char err[QT_CONFIG_ERROR_MAX];
        if (qt_config_init(&c) < 0)
                return 0;
        int r = qt_config_parse(&c, (const char *)data, size, NULL, NULL, err);
        if (r == 0)
                check_config(&c);
        else
                FUZZ_CHECK(memchr(err, '\0', sizeof(err)) && err[0]);
        qt_config_free(&c);
        return 0;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzzes qt_convert_is_temp_of(): when a worker dies, qtrimd (as root) unlinks the temporary
 * file the worker last reported, if this check says the name is one the worker could have made
 * for the image. The name comes from a possibly compromised worker. Input: the image path, a
 * newline, the reported name. Whatever it accepts must be a dotfile directly in the image's
 * directory and never the image itself.
 */
#include <libgen.h>
#include <string.h>

#include "convert.h"
#include "fuzz.h"
#include "util.h"

static char *dup_bytes(const uint8_t *data, size_t size)
{
        char *s = malloc(size + 1);
        if (s) {
                memcpy(s, data, size);
                s[size] = '\0';
        }
        return s;
}

static void check_accepted(const char *image, const char *path)
{
        _cleanup_free_ char *dir_copy = strdup(image), *base_copy = strdup(image);
        if (!dir_copy || !base_copy)
                return;
        const char *dir = dirname(dir_copy), *base = basename(base_copy);

        FUZZ_CHECK(strcmp(path, image) != 0);
        /* "/" and the like: a directory, which no job is about. */
        if (strchr(base, '/'))
                return;
        size_t dir_len = strlen(dir);
        FUZZ_CHECK(strncmp(path, dir, dir_len) == 0 && path[dir_len] == '/');
        const char *name = path + dir_len + 1;
        /* ".<image name>.qtrim-" and mkostemp's six characters. */
        FUZZ_CHECK(!strchr(name, '/') && name[0] == '.' && strcmp(name, base) != 0);
        FUZZ_CHECK(strlen(name) == 1 + strlen(base) + strlen(".qtrim-") + 6);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const uint8_t *nl = memchr(data, '\n', size);
        if (!nl)
                return 0;
        size_t image_len = (size_t)(nl - data);
        _cleanup_free_ char *image = dup_bytes(data, image_len);
        _cleanup_free_ char *path = dup_bytes(nl + 1, size - image_len - 1);
        if (image && path && qt_convert_is_temp_of(image, path))
                check_accepted(image, path);
        return 0;
}

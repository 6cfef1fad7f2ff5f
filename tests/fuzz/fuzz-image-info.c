/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzzes qt_image_parse_info(): qemu-img info's JSON echoes strings the image itself holds
 * (backing file names, bitmap and snapshot names), and what qtrim reads from it decides what it
 * does to the image. Whatever the input, a success must leave a usable description and a
 * failure a typed error with a one-line message.
 */
#include <string.h>

#include "fuzz.h"
#include "image.h"

#define CHECK_BOUNDED(s) FUZZ_CHECK(memchr((s), '\0', sizeof(s)))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        /* qemu-img's output as qt_command_run() collects it: NUL-terminated, exactly sized. */
        char *json = malloc(size + 1);
        if (!json)
                return 0;
        memcpy(json, data, size);
        json[size] = '\0';

        struct qt_image_info info;
        struct qt_error e = {};
        /* Garbage in the output, so a field the parser forgets to set shows as unterminated. */
        memset(&info, 0xa5, sizeof(info));
        int r = qt_image_parse_info(json, &info, &e);
        free(json);

        /* Every outcome leaves every string terminated: a failure clears the output too. */
        CHECK_BOUNDED(info.format);
        CHECK_BOUNDED(info.backing_file);
        CHECK_BOUNDED(info.backing_format);
        CHECK_BOUNDED(info.compat);
        CHECK_BOUNDED(info.compression_type);
        CHECK_BOUNDED(e.message);

        if (r == 0) {
                FUZZ_CHECK(info.format[0] != '\0');
                FUZZ_CHECK(!qt_error_is_set(&e));
        } else {
                FUZZ_CHECK(r < 0);
                FUZZ_CHECK(qt_error_is_set(&e) && (unsigned)e.code < _QT_ERR_MAX);
                FUZZ_CHECK(e.message[0] != '\0' && !strchr(e.message, '\n'));
        }
        return 0;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzzes qt_qcow2_backing_name() and qt_qcow2_backing_path(): before a job, qtrim reads the
 * headers of the qcow2 files beside the image, any of which whoever can write there may have
 * crafted, and follows their backing file names. The input is the start of such a file, as
 * overlays.c reads it. The parser must read nothing outside it, write the name only on
 * success, and a name it returns must resolve to a bounded local path or be refused.
 */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "qcow2-header.h"

#define SENTINEL 0x5a

static void check_untouched(const char *ret, size_t size)
{
        for (size_t i = 0; i < size; i++)
                FUZZ_CHECK((unsigned char)ret[i] == SENTINEL);
}

/* The path qemu would open, from the image at of: absolute when of is, ending in the name. */
static void check_path(const char *of, const char *name)
{
        char path[PATH_MAX];
        memset(path, SENTINEL, sizeof(path));
        int r = qt_qcow2_backing_path(of, name, path);
        FUZZ_CHECK(r == 0 || r == -EPROTONOSUPPORT || r == -ENAMETOOLONG);
        if (r == -EPROTONOSUPPORT) {
                /* Only a name with a protocol, and "file:" is none. */
                FUZZ_CHECK(strncmp(name, "file:", 5) != 0 && name[strcspn(name, ":/")] == ':');
                return;
        }
        if (r < 0)
                return;
        /* A local file: no "nbd:", "json:{...}" or other protocol before the first '/'. */
        FUZZ_CHECK(strncmp(name, "file:", 5) == 0 || name[strcspn(name, ":/")] != ':');
        FUZZ_CHECK(memchr(path, '\0', sizeof(path)));
        FUZZ_CHECK(path[0] == '/');
        const char *local = strncmp(name, "file:", 5) == 0 ? name + 5 : name;
        size_t path_len = strlen(path), local_len = strlen(local);
        FUZZ_CHECK(path_len >= local_len && strcmp(path + path_len - local_len, local) == 0);

        /* One more step down a chain: the next image's name resolved from this one's path. */
        char next[PATH_MAX];
        if (qt_qcow2_backing_path(path, name, next) == 0)
                FUZZ_CHECK(memchr(next, '\0', sizeof(next)) && next[0] == '/');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        /* Exactly as long as the input, so ASan sees any read past its end. */
        uint8_t *buf = malloc(size ? size : 1);
        if (!buf)
                return 0;
        memcpy(buf, data, size);

        char name[QT_QCOW2_BACKING_NAME_MAX];
        memset(name, SENTINEL, sizeof(name));
        int r = qt_qcow2_backing_name(buf, size, name, sizeof(name));
        FUZZ_CHECK(r == 1 || r == 0 || r == -EINVAL);
        FUZZ_CHECK(qt_qcow2_backing_name(buf, size, NULL, 0) == (r == 1 ? -ENOBUFS : r));

        if (r < 0) {
                check_untouched(name, sizeof(name));
        } else if (r == 0) {
                FUZZ_CHECK(name[0] == '\0');
        } else {
                const char *end = memchr(name, '\0', sizeof(name));
                FUZZ_CHECK(end && end > name);
                size_t len = (size_t)(end - name);
                /* Read from the input, not made up. */
                FUZZ_CHECK(memmem(buf, size, name, len));

                /* Exactly one byte too small is refused and leaves ret alone; just enough fits. */
                char small[QT_QCOW2_BACKING_NAME_MAX];
                memset(small, SENTINEL, sizeof(small));
                FUZZ_CHECK(qt_qcow2_backing_name(buf, size, small, len) == -ENOBUFS);
                check_untouched(small, sizeof(small));
                FUZZ_CHECK(qt_qcow2_backing_name(buf, size, small, len + 1) == 1);
                FUZZ_CHECK(strcmp(small, name) == 0);

                check_path("/images/vm.qcow2", name);
        }
        free(buf);
        return 0;
}

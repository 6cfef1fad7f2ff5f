/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "attach.h"

#include <errno.h>
#include <string.h>

#include "util.h"

static const char *const backend_names[] = {
    [QT_ATTACH_AUTO] = "auto",
    [QT_ATTACH_KERNEL] = "kernel",
    [QT_ATTACH_FUSE] = "fuse",
};

const char *qt_attach_backend_name(enum qt_attach_backend b)
{
        return (size_t)b < ELEMENTSOF(backend_names) ? backend_names[b] : "?";
}

int qt_attach_backend_from_name(const char *name, enum qt_attach_backend *ret)
{
        for (size_t i = 0; i < ELEMENTSOF(backend_names); i++)
                if (strcmp(name, backend_names[i]) == 0) {
                        *ret = (enum qt_attach_backend)i;
                        return 0;
                }
        return -EINVAL;
}

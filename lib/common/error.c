/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define PREFIX "org.qtrim1.Error."

static const char *const dbus_names[_QT_ERR_MAX] = {
    [QT_OK] = "",
    [QT_ERR_FAILED] = PREFIX "Failed",
    [QT_ERR_NOT_ABSOLUTE] = PREFIX "NotAbsolute",
    [QT_ERR_NOT_FOUND] = PREFIX "NotFound",
    [QT_ERR_NOT_REGULAR] = PREFIX "NotRegularFile",
    [QT_ERR_NOT_AN_IMAGE] = PREFIX "NotAnImage",
    [QT_ERR_UNSUPPORTED] = PREFIX "Unsupported",
    [QT_ERR_IN_USE] = PREFIX "ImageInUse",
    [QT_ERR_ENCRYPTED] = PREFIX "Encrypted",
    [QT_ERR_CORRUPT] = PREFIX "Corrupt",
    [QT_ERR_HAS_OVERLAYS] = PREFIX "HasOverlays",
    [QT_ERR_ALREADY_RUNNING] = PREFIX "AlreadyRunning",
    [QT_ERR_TOO_MANY] = PREFIX "TooManyJobs",
    [QT_ERR_NO_SPACE] = PREFIX "NoSpace",
    [QT_ERR_CANCELED] = PREFIX "Canceled",
    [QT_ERR_NO_SUCH_JOB] = PREFIX "NoSuchJob",
    [QT_ERR_UNCHANGED] = PREFIX "Unchanged",
    [QT_ERR_FORMAT_MISMATCH] = PREFIX "FormatMismatch",
    [QT_ERR_NO_SUCH_DOMAIN] = PREFIX "NoSuchDomain",
    [QT_ERR_DOMAIN_RUNNING] = PREFIX "DomainRunning",
    [QT_ERR_LIBVIRT] = PREFIX "Libvirt",
    [QT_ERR_DOMAIN_NOT_RUNNING] = PREFIX "DomainNotRunning",
    [QT_ERR_NO_GUEST_AGENT] = PREFIX "NoGuestAgent",
};

const char *qt_error_dbus_name(enum qt_error_code code)
{
        if ((unsigned)code >= _QT_ERR_MAX)
                code = QT_ERR_FAILED;
        return dbus_names[code];
}

enum qt_error_code qt_error_from_dbus_name(const char *name)
{
        for (int c = QT_ERR_FAILED; c < _QT_ERR_MAX; c++)
                if (name && strcmp(name, dbus_names[c]) == 0)
                        return c;
        return QT_ERR_FAILED;
}

int qt_error_set(struct qt_error *e, enum qt_error_code code, int err, const char *fmt, ...)
{
        if (err > 0)
                err = -err;
        if (err == 0)
                err = -EIO;
        if (!e || e->code != QT_OK)
                return err;

        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->message, sizeof(e->message), fmt, ap);
        va_end(ap);
        /* One line: a message is shown as the tail of "image: error" in the CLI and journal. */
        for (char *p = e->message; *p; p++)
                if (*p == '\n' || *p == '\t')
                        *p = ' ';
        utf8_sanitize(e->message);
        /* A step stopped by a cancel failed because of it: the job was canceled, whatever the
         * step calls its failure. */
        e->code = err == -ECANCELED ? QT_ERR_CANCELED : code;
        return err;
}

bool qt_error_is_set(const struct qt_error *e)
{
        return e && e->code != QT_OK;
}

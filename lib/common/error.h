/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrim's typed errors: what a caller can branch on. Each code has exactly one D-Bus error name
 * (org.qtrim1.Error.*); the table lives in error.c and is the only place the two are paired.
 *
 * The one convention for failure, in every layer: a function that can fail returns 0 (or a
 * count) on success and a negative errno on failure, for the caller's control flow. What the
 * user reads travels beside it: a struct qt_error where the failure ends a phase or a job (the
 * engine's steps, attach, convert), or a short reason buffer (why, why_size) where it only
 * decides how one volume or one input is handled (the pure readers of guest bytes: lvm-meta.h,
 * layout.h, fat.h, ntfs.h, which answer -EUCLEAN and why for bytes they refuse, and so are
 * fuzzed without any of the engine).
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>

enum qt_error_code {
        QT_OK = 0,
        QT_ERR_FAILED,          /* anything not listed below; the message says what */
        QT_ERR_NOT_ABSOLUTE,    /* image path is relative */
        QT_ERR_NOT_FOUND,       /* image path does not exist */
        QT_ERR_NOT_REGULAR,     /* a directory, device node, FIFO, socket */
        QT_ERR_NOT_AN_IMAGE,    /* qemu-img cannot read it as a disk image */
        QT_ERR_UNSUPPORTED,     /* an image format or feature qtrim does not handle */
        QT_ERR_IN_USE,          /* another process holds qemu's lock on the image */
        QT_ERR_ENCRYPTED,       /* encrypted image: qtrim has no key and will not ask */
        QT_ERR_CORRUPT,         /* qcow2 marked corrupt or failing qemu-img check */
        QT_ERR_HAS_OVERLAYS,    /* the backing file of other images, which its trim would corrupt */
        QT_ERR_ALREADY_RUNNING, /* a job for the same image is queued or running */
        QT_ERR_TOO_MANY,        /* a limit on jobs or pending requests was reached */
        QT_ERR_NO_SPACE,        /* not enough room for the converted copy */
        QT_ERR_CANCELED,        /* the job was cancelled */
        QT_ERR_NO_SUCH_JOB,     /* Cancel() or a lookup named a job that does not exist */
        QT_ERR_UNCHANGED,       /* if-changed: nothing wrote to the image since qtrim shrank it */
        QT_ERR_FORMAT_MISMATCH, /* the declared format, the configured one, the content or the
                                   name disagree: qtrim will not guess (image.h) */
        QT_ERR_NO_SUCH_DOMAIN,  /* libvirt knows no domain of that name */
        QT_ERR_DOMAIN_RUNNING,  /* the domain runs, is paused or has its memory saved */
        QT_ERR_LIBVIRT,         /* libvirt cannot be reached, failed, or did not answer in time */
        QT_ERR_DOMAIN_NOT_RUNNING, /* an online trim of a domain that is not running */
        QT_ERR_NO_GUEST_AGENT,     /* the domain has no guest agent channel, or none answers */
        _QT_ERR_MAX,
};

#define QT_ERROR_MESSAGE_MAX 512

struct qt_error {
        enum qt_error_code code;
        char message[QT_ERROR_MESSAGE_MAX];
};

/* The D-Bus error name of a code, e.g. "org.qtrim1.Error.ImageInUse". */
const char *qt_error_dbus_name(enum qt_error_code code);
/* The code for a D-Bus error name; QT_ERR_FAILED for names not in the table. */
enum qt_error_code qt_error_from_dbus_name(const char *name);

/* Records the first failure only: later calls keep what was already said, so the error the user
 * sees is the cause, not a consequence. Returns -err (a negative errno) for tail calls. */
int qt_error_set(struct qt_error *e, enum qt_error_code code, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
bool qt_error_is_set(const struct qt_error *e);

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "qemu-nbd.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>

#define POLL_MS 5

size_t qt_qemu_nbd_image_args(const char *image, const char *format, bool read_only,
                              char opts[QT_QEMU_NBD_OPTS_MAX], char *argv[])
{
        size_t n = 0;
        if (!read_only) {
                argv[n++] = "--format";
                argv[n++] = (char *)format;
                argv[n++] = "--discard=unmap";
                argv[n++] = (char *)image;
                return n;
        }
        int k = snprintf(opts, QT_QEMU_NBD_OPTS_MAX,
                         "driver=%s,file.driver=file,file.locking=off,file.filename=", format);
        /* In qemu's option syntax a comma in a value is written twice. */
        for (const char *p = image; *p && (size_t)k + 3 < QT_QEMU_NBD_OPTS_MAX; p++) {
                if (*p == ',')
                        opts[k++] = ',';
                opts[k++] = *p;
        }
        opts[k] = '\0';
        argv[n++] = "--read-only";
        argv[n++] = "--image-opts";
        argv[n++] = opts;
        return n;
}

int qt_qemu_nbd_reap(pid_t pid, unsigned timeout_ms)
{
        for (unsigned waited = 0; waited < timeout_ms; waited += POLL_MS) {
                int status;
                pid_t p = waitpid(pid, &status, WNOHANG);
                if (p == pid)
                        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                if (p < 0 && errno != EINTR)
                        return -1;
                nanosleep(&(struct timespec){.tv_nsec = POLL_MS * 1000 * 1000}, NULL);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "loopdev.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "util.h"

/* Other workers (and anyone on the host) race for the same free device; retry that often. */
#define ATTACH_ATTEMPTS 64

static int configure(int loop_fd, int file_fd, uint64_t offset, uint64_t size, bool read_only)
{
        struct loop_config config = {
            .fd = (unsigned)file_fd,
            .info =
                {
                    .lo_offset = offset,
                    .lo_sizelimit = size,
                    .lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0),
                },
        };
        if (ioctl(loop_fd, LOOP_CONFIGURE, &config) == 0)
                return 0;
        if (errno != EINVAL && errno != ENOTTY)
                return -errno;

        /* Kernels before 5.8: the old two-step way. */
        if (ioctl(loop_fd, LOOP_SET_FD, file_fd) < 0)
                return -errno;
        if (ioctl(loop_fd, LOOP_SET_STATUS64, &config.info) < 0) {
                int r = -errno;
                ioctl(loop_fd, LOOP_CLR_FD, 0);
                return r;
        }
        return 0;
}

int qt_loop_attach(const char *file, uint64_t offset, uint64_t size, bool read_only,
                   char ret_path[QT_LOOP_PATH_MAX], struct qt_error *e)
{
        int mode = read_only ? O_RDONLY : O_RDWR;
        _cleanup_close_ int file_fd = open(file, mode | O_CLOEXEC);
        if (file_fd < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot open %s: %m", file);
        _cleanup_close_ int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
        if (control < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot open /dev/loop-control: %m");

        int r = -EBUSY;
        for (int attempt = 0; attempt < ATTACH_ATTEMPTS && r == -EBUSY; attempt++) {
                int n = ioctl(control, LOOP_CTL_GET_FREE);
                if (n < 0)
                        return qt_error_set(e, QT_ERR_FAILED, errno, "no free loop device: %m");
                snprintf(ret_path, QT_LOOP_PATH_MAX, "/dev/loop%d", n);
                _cleanup_close_ int loop_fd = open(ret_path, mode | O_CLOEXEC);
                if (loop_fd < 0) {
                        r = -errno;
                        if (r == -ENOENT || r == -ENXIO)
                                r = -EBUSY; /* removed under us; ask for another */
                        continue;
                }
                r = configure(loop_fd, file_fd, offset, size, read_only);
                if (r == 0)
                        return TAKE_FD(loop_fd);
        }
        return qt_error_set(e, QT_ERR_FAILED, r, "cannot attach a loop device to %s: %s", file,
                            strerror(-r));
}

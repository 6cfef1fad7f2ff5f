/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "backing.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "qcow2-header.h"
#include "util.h"

int qt_backing_open(const char *of, const char *name, const struct stat *seen, size_t n_seen,
                    char ret_path[PATH_MAX], struct stat *ret_st)
{
        struct stat st, fd_st;
        int r = qt_qcow2_backing_path(of, name, ret_path);
        if (r < 0)
                return r;
        /* Look before opening: opening a device node can have effects of its own. */
        if (stat(ret_path, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EOPNOTSUPP;
        for (size_t i = 0; i < n_seen; i++)
                if (same_file(&seen[i], &st))
                        return -ELOOP;
        /* O_NONBLOCK: a FIFO that replaced the file since the stat must not block the open. */
        _cleanup_close_ int fd = open(ret_path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &fd_st) < 0)
                return -errno;
        if (!same_file(&fd_st, &st))
                return -ESTALE;
        *ret_st = st;
        return TAKE_FD(fd);
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "qemu-nbd.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "command.h"

#define POLL_MS 5

pid_t qt_qemu_nbd_spawn(char *const argv[], int listen_fd, int output_fd)
{
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid > 0)
                return pid;
        qt_child_prepare(parent, SIGTERM);
        if (output_fd >= 0 && (dup2(output_fd, 1) < 0 || dup2(output_fd, 2) < 0))
                _exit(127);
        if (listen_fd >= 0) {
                /* dup2 onto itself would keep close-on-exec */
                if (listen_fd == 3 ? fcntl(3, F_SETFD, 0) < 0 : dup2(listen_fd, 3) < 0)
                        _exit(127);
                char pid_text[16];
                snprintf(pid_text, sizeof(pid_text), "%d", (int)getpid());
                setenv("LISTEN_PID", pid_text, 1);
                setenv("LISTEN_FDS", "1", 1);
                unsetenv("LISTEN_FDNAMES");
        }
        close_range(listen_fd >= 0 ? 4 : 3, ~0U, 0);
        execvp(argv[0], argv);
        dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
}

size_t qt_qemu_nbd_image_args(const char *image, const char *format, bool read_only, char *argv[])
{
        size_t n = 0;
        argv[n++] = "--format";
        argv[n++] = (char *)format;
        argv[n++] = read_only ? "--read-only" : "--discard=unmap";
        argv[n++] = (char *)image;
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

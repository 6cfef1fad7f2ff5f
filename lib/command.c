/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "command.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "cancel.h"
#include "util.h"

#define STREAM_MAX (4u << 20)

struct stream {
        int fd;
        char *buf;
        size_t len, cap;
};

static void stream_append(struct stream *s, const char *data, size_t n)
{
        if (s->len + n + 1 > STREAM_MAX)
                n = s->len + 1 < STREAM_MAX ? STREAM_MAX - s->len - 1 : 0;
        if (s->len + n + 1 > s->cap) {
                size_t cap = s->cap ? s->cap : 4096;
                while (cap < s->len + n + 1)
                        cap *= 2;
                char *p = realloc(s->buf, cap);
                if (!p)
                        return;
                s->buf = p;
                s->cap = cap;
        }
        memcpy(s->buf + s->len, data, n);
        s->len += n;
        s->buf[s->len] = '\0';
}

/* Hands complete lines to the callback and forgets them, so a long convert uses no memory. */
static void stream_flush_lines(struct stream *s, struct qt_command *c)
{
        size_t i = 0, start = 0;
        for (; i < s->len; i++)
                if (s->buf[i] == '\n' || s->buf[i] == '\r') {
                        s->buf[i] = '\0';
                        if (i > start)
                                c->on_line(s->buf + start, c->userdata);
                        start = i + 1;
                }
        memmove(s->buf, s->buf + start, s->len - start);
        s->len -= start;
        if (s->buf)
                s->buf[s->len] = '\0';
}

void qt_child_prepare(pid_t parent, int death_signal)
{
        /* It must not outlive a worker that is killed, also one killed before this line. */
        prctl(PR_SET_PDEATHSIG, death_signal);
        if (getppid() != parent)
                _exit(127);
        /* The worker ignores SIGPIPE and may block signals; a program starts with neither. */
        signal(SIGPIPE, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null < 0 || dup2(null, 0) < 0)
                _exit(127);
}

static void child_exec(struct qt_command *c, int out_w, int err_w, pid_t parent)
{
        qt_child_prepare(parent, SIGKILL);
        if (dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0)
                _exit(127);
        execvp(c->argv[0], c->argv);
        dprintf(2, "cannot run %s: %s", c->argv[0], strerror(errno));
        _exit(127);
}

int qt_command_run(struct qt_command *c)
{
        int out[2], err[2];
        if (pipe2(out, O_CLOEXEC) < 0)
                return -errno;
        if (pipe2(err, O_CLOEXEC) < 0) {
                int r = -errno;
                close(out[0]);
                close(out[1]);
                return r;
        }
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) {
                int r = -errno;
                close(out[0]), close(out[1]), close(err[0]), close(err[1]);
                return r;
        }
        if (pid == 0)
                child_exec(c, out[1], err[1], parent);
        close(out[1]);
        close(err[1]);

        struct stream streams[2] = {{.fd = out[0]}, {.fd = err[0]}};
        bool canceled = false;
        int open_streams = 2;
        while (open_streams > 0) {
                struct pollfd pfd[2] = {{.fd = streams[0].fd, .events = POLLIN},
                                        {.fd = streams[1].fd, .events = POLLIN}};
                /* Wake now and then to notice a cancel even if the child is silent. */
                int n = poll(pfd, 2, 200);
                if (qt_cancel_requested && !canceled) {
                        canceled = true;
                        kill(pid, SIGTERM);
                }
                if (n < 0 && errno != EINTR) {
                        /* Cannot follow its output any more: stop it rather than spin. */
                        kill(pid, SIGKILL);
                        break;
                }
                if (n <= 0)
                        continue;
                for (int i = 0; i < 2; i++) {
                        if (streams[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                                continue;
                        char buf[8192];
                        ssize_t k = read(streams[i].fd, buf, sizeof(buf));
                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k <= 0) {
                                close(streams[i].fd);
                                streams[i].fd = -1;
                                pfd[i].fd = -1;
                                open_streams--;
                                continue;
                        }
                        stream_append(&streams[i], buf, (size_t)k);
                        if (i == 0 && c->on_line)
                                stream_flush_lines(&streams[0], c);
                }
        }

        for (int i = 0; i < 2; i++)
                if (streams[i].fd >= 0)
                        close(streams[i].fd);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR) {
                        status = W_EXITCODE(127, 0);
                        break;
                }
        c->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (c->on_line)
                free(streams[0].buf);
        else
                c->out = streams[0].buf ? streams[0].buf : strdup("");
        c->err = streams[1].buf ? streams[1].buf : strdup("");
        size_t l = strlen(c->err);
        while (l > 0 && (c->err[l - 1] == '\n' || c->err[l - 1] == '\r'))
                c->err[--l] = '\0';
        return canceled ? -ECANCELED : 0;
}

void qt_command_done(struct qt_command *c)
{
        free(c->out);
        free(c->err);
        c->out = c->err = NULL;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * An LD_PRELOAD library for running qtrimd under valgrind 3.19 (Debian 12's); used by
 * tools/valgrind.sh only. A worker serves its image through FUSE from a thread of its own, and
 * valgrind runs one thread at a time: a thread in a system call that valgrind does not expect to
 * block keeps the others from running, so a call that waits on the worker's own FUSE file never
 * returns. --sim-hints=fuse-compatible covers open, stat, close and the like; two gaps remain,
 * bridged here without changing what the calls do:
 *
 * - umount2/umount are not among them, and unmounting a filesystem whose loop device reads the
 *   FUSE file flushes through it. They run in a child process while this one waits in read,
 *   which valgrind knows may block (same mount namespace, so the same effect).
 * - With fuse-compatible, valgrind 3.19 aborts (an assertion in its wrapper) on close_range and
 *   readlink. close_range() here closes the open descriptors of the range one by one; readlink()
 *   asks readlinkat, and realpath() (glibc's calls readlink inside) asks the kernel for the path
 *   of the file it opened.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

int close_range(unsigned int first, unsigned int last, int flags);
int umount2(const char *target, int flags);
int umount(const char *target);
ssize_t readlink(const char *path, char *buf, size_t size);
char *realpath(const char *path, char *resolved);
char *canonicalize_file_name(const char *path);

int close_range(unsigned int first, unsigned int last, int flags)
{
        if (first > last || (flags & ~(int)CLOSE_RANGE_CLOEXEC)) {
                errno = EINVAL;
                return -1;
        }
        /* The open descriptors, not every number up to ~0U; valgrind's own sit above the limit
         * it shows the program. */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
            last >= rl.rlim_cur)
                last = (unsigned int)rl.rlim_cur - 1;
        DIR *d = opendir("/proc/self/fd");
        if (!d)
                return -1;
        int own = dirfd(d);
        struct dirent *e;
        while ((e = readdir(d))) {
                char *end;
                unsigned long fd = strtoul(e->d_name, &end, 10);
                if (*end || end == e->d_name || fd < first || fd > last || (int)fd == own)
                        continue;
                if (flags & CLOSE_RANGE_CLOEXEC)
                        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
                else
                        close((int)fd);
        }
        closedir(d);
        return 0;
}

int umount2(const char *target, int flags)
{
        /* The child's result comes through a pipe: under valgrind its exit status is valgrind's
         * (--error-exitcode) if this process had errors before the fork. */
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
                return -1;
        pid_t pid = fork();
        if (pid < 0) {
                close(p[0]);
                close(p[1]);
                return -1;
        }
        if (pid == 0) {
                int err = syscall(SYS_umount2, target, flags) < 0 ? errno : 0;
                _exit(write(p[1], &err, sizeof(err)) == sizeof(err) ? 0 : 1);
        }
        close(p[1]);
        int err = EIO;
        ssize_t n;
        while ((n = read(p[0], &err, sizeof(err))) < 0 && errno == EINTR)
                ;
        if (n != sizeof(err))
                err = EIO;
        close(p[0]);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
        if (err) {
                errno = err;
                return -1;
        }
        return 0;
}

int umount(const char *target)
{
        return umount2(target, 0);
}

ssize_t readlink(const char *path, char *buf, size_t size)
{
        return syscall(SYS_readlinkat, AT_FDCWD, path, buf, size);
}

char *realpath(const char *path, char *resolved)
{
        if (!path) {
                errno = EINVAL;
                return NULL;
        }
        int fd = open(path, O_PATH | O_CLOEXEC);
        if (fd < 0)
                return NULL;
        char link[64], buf[PATH_MAX];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = syscall(SYS_readlinkat, AT_FDCWD, link, buf, sizeof(buf) - 1);
        int err = errno;
        close(fd);
        if (n < 0 || n >= (ssize_t)sizeof(buf) - 1) {
                errno = n < 0 ? err : ENAMETOOLONG;
                return NULL;
        }
        buf[n] = '\0';
        if (!resolved)
                return strdup(buf);
        memcpy(resolved, buf, (size_t)n + 1);
        return resolved;
}

char *canonicalize_file_name(const char *path)
{
        return realpath(path, NULL);
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
#define FUSE_USE_VERSION 35

#include "nbd-fuse.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <libnbd.h>
#include <limits.h>
#include <linux/falloc.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "command.h"
#include "qemu-nbd.h"
#include "report.h"
#include "util.h"

#define DISK_NAME   "disk"
#define SERVER_NAME "qtrim-fuse"
/* NBD requests carry 32-bit lengths; trim and zero in pieces well below that. */
#define MAX_TRIM_REQUEST (1ULL << 30)
/* How long the server keeps serving after the worker let go of the bridge (detached, or died),
 * before it cuts the connection: what the unmounts through loop devices on the disk file, or the
 * teardown of a dead worker's namespace, may take. */
#define RELEASE_SECONDS 10

/* A file of the bridge: ranges of the disk, in order. File 0 is the disk itself; the others are
 * volumes in several places (an LV's segments), named v1, v2, ... */
#define MAX_FILES (1 + QT_MAX_FILESYSTEMS)

struct file {
        char name[16];
        uint64_t size;
        size_t n_extents;
        struct qt_range extents[QT_FS_EXTENTS_MAX];
        char path[PATH_MAX];
};

/* What the worker and the server process share (one MAP_SHARED page run): the files the server
 * serves, which the worker adds to; the server's one message when it fails. n_files is
 * published with a release and read with an acquire: files are added, never changed. */
struct shared {
        size_t n_files;
        struct file files[MAX_FILES];
        unsigned connection; /* the FUSE connection's number under fusectl, set by the worker */
        pid_t qemu_nbd;      /* the server's child, set by the server */
        char error[QT_ERROR_MESSAGE_MAX];
};

/* The server process's own state. */
struct server {
        struct shared *sh;
        struct nbd_handle *nbd;
        pid_t qemu_nbd;
        bool read_only;
        bool fast_zero; /* the server can zero in metadata, or say it cannot */
        int release_fd; /* EOF: the worker let go */
        const char *mountpoint;
        pthread_mutex_t lock;
        pthread_cond_t ended;
        bool loop_ended;
};

/* The worker's side. */
struct qt_nbd_fuse {
        struct shared *sh;
        pid_t server;
        int status_fd;   /* the server's: a byte once it serves, EOF once it has exited */
        int release_fd;  /* ours: closed (by detach, or by our death), the server's clock starts */
        int qemu_nbd_fd; /* a pidfd of the server's qemu-nbd: gone before detach returns */
        bool mounted;
        char mountpoint[PATH_MAX];
};

static struct server *bridge(void)
{
        return fuse_get_context()->private_data;
}

/* libnbd sets errno and keeps a message; FUSE wants -errno. */
static int nbd_errno(void)
{
        int err = nbd_get_errno();
        return err > 0 ? -err : -EIO;
}

static size_t n_files(const struct shared *sh)
{
        return __atomic_load_n(&sh->n_files, __ATOMIC_ACQUIRE);
}

static const struct file *find_file(const struct shared *sh, const char *path)
{
        size_t n = n_files(sh);
        for (size_t i = 0; path[0] == '/' && i < n; i++)
                if (strcmp(path + 1, sh->files[i].name) == 0)
                        return &sh->files[i];
        return NULL;
}

/* The file an open gave its handle to. */
static const struct file *opened(struct fuse_file_info *fi)
{
        return &bridge()->sh->files[fi->fh];
}

/* Calls fn on each piece of [off, off + len) of f as a range of the disk, in order, with how
 * many bytes of the request came before it; stops at the first error. The request lies within
 * the file. */
typedef int (*piece_fn)(struct server *b, uint64_t pos, uint64_t n, uint64_t done, void *ctx);

static int for_each_piece(struct server *b, const struct file *f, uint64_t off, uint64_t len,
                          piece_fn fn, void *ctx)
{
        uint64_t done = 0;
        for (size_t i = 0; i < f->n_extents && done < len; i++) {
                const struct qt_range *x = &f->extents[i];
                if (off >= x->size) {
                        off -= x->size;
                        continue;
                }
                uint64_t n = x->size - off < len - done ? x->size - off : len - done;
                int r = fn(b, x->offset + off, n, done, ctx);
                if (r < 0)
                        return r;
                done += n;
                off = 0;
        }
        return 0;
}

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
        *st = (struct stat){.st_uid = 0, .st_gid = 0, .st_nlink = 1};
        if (strcmp(path, "/") == 0) {
                st->st_mode = S_IFDIR | 0700;
                st->st_nlink = 2;
                return 0;
        }
        const struct file *f = find_file(bridge()->sh, path);
        if (!f)
                return -ENOENT;
        st->st_mode = S_IFREG | (bridge()->read_only ? 0400 : 0600);
        st->st_size = (off_t)f->size;
        return 0;
}

static int op_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
        if (strcmp(path, "/") != 0)
                return -ENOTDIR;
        fill(buf, ".", NULL, 0, 0);
        fill(buf, "..", NULL, 0, 0);
        const struct shared *sh = bridge()->sh;
        size_t n = n_files(sh);
        for (size_t i = 0; i < n; i++)
                fill(buf, sh->files[i].name, NULL, 0, 0);
        return 0;
}

static int op_open(const char *path, struct fuse_file_info *fi)
{
        const struct file *f = find_file(bridge()->sh, path);
        if (!f)
                return -ENOENT;
        if (bridge()->read_only && (fi->flags & O_ACCMODE) != O_RDONLY)
                return -EROFS;
        fi->fh = (uint64_t)(f - bridge()->sh->files);
        /* No page cache for the disk: the loop device above has its own, and dirty pages of a
         * FUSE file under a loop device are how the reclaim deadlock starts. */
        fi->direct_io = 1;
        fi->keep_cache = 0;
        /* Known limit (see nbd-fuse.h): FLUSH on close stays on. Without it, a worker killed
         * with filesystems mounted deadlocks in its own exit; with it, one killed in the few
         * milliseconds it holds the disk open itself (blkid, loop setup) can. */
        return 0;
}

static int read_piece(struct server *b, uint64_t pos, uint64_t n, uint64_t done, void *buf)
{
        return nbd_pread(b->nbd, (char *)buf + done, n, pos, 0) < 0 ? nbd_errno() : 0;
}

static int write_piece(struct server *b, uint64_t pos, uint64_t n, uint64_t done, void *buf)
{
        return nbd_pwrite(b->nbd, (const char *)buf + done, n, pos, 0) < 0 ? nbd_errno() : 0;
}

static int op_read(const char *path, char *buf, size_t len, off_t off, struct fuse_file_info *fi)
{
        const struct file *f = opened(fi);
        if ((uint64_t)off >= f->size)
                return 0;
        if ((uint64_t)off + len > f->size)
                len = (size_t)(f->size - (uint64_t)off);
        int r = for_each_piece(bridge(), f, (uint64_t)off, len, read_piece, buf);
        return r < 0 ? r : (int)len;
}

static int op_write(const char *path, const char *buf, size_t len, off_t off,
                    struct fuse_file_info *fi)
{
        const struct file *f = opened(fi);
        if ((uint64_t)off + len > f->size)
                return -ENOSPC;
        int r = for_each_piece(bridge(), f, (uint64_t)off, len, write_piece, (void *)buf);
        return r < 0 ? r : (int)len;
}

static int op_flush(const char *path, struct fuse_file_info *fi)
{
        if (bridge()->read_only)
                return 0;
        return nbd_flush(bridge()->nbd, 0) < 0 ? nbd_errno() : 0;
}

static int op_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
        return op_flush(path, fi);
}

/* A punched hole must read back as zeroes, which an NBD trim does not promise (qcow2 keeps
 * partial clusters): punch with a write-zeroes that may unmap, which frees whole clusters like a
 * trim. FAST_ZERO makes qemu refuse rather than write real zeroes where it cannot do it in
 * metadata (a compat=0.10 qcow2 would grow by every byte "punched"); there, and for partial
 * clusters, the trim is the fallback, advisory as a discard is. During a trim session the
 * punches are FITRIM's discards, which promise nothing. */
static int punch(struct server *b, uint64_t pos, uint64_t n)
{
        if (b->fast_zero) {
                if (nbd_zero(b->nbd, n, pos, LIBNBD_CMD_FLAG_FAST_ZERO) == 0)
                        return 0;
                int err = nbd_get_errno();
                if (err != ENOTSUP && err != EOPNOTSUPP)
                        return err > 0 ? -err : -EIO;
        }
        if (nbd_trim(b->nbd, n, pos, 0) == 0)
                return 0;
        /* Trim is advisory: only these mean the image is in trouble. */
        int err = nbd_get_errno();
        return err == EIO || err == EPERM || err == EROFS ? -err : 0;
}

/* A piece of a fallocate: punched (ctx non-NULL) or zeroed, in requests NBD can carry. */
static int fallocate_piece(struct server *b, uint64_t pos, uint64_t len, uint64_t done,
                           void *punching)
{
        for (uint64_t end = pos + len; pos < end;) {
                uint64_t n = end - pos < MAX_TRIM_REQUEST ? end - pos : MAX_TRIM_REQUEST;
                int r =
                    punching
                        ? punch(b, pos, n)
                        : (nbd_zero(b->nbd, n, pos, LIBNBD_CMD_FLAG_NO_HOLE) < 0 ? nbd_errno() : 0);
                if (r < 0)
                        return r;
                pos += n;
        }
        return 0;
}

/* The loop device turns a discard (and write-zeroes that may unmap) into PUNCH_HOLE, and
 * write-zeroes that must not unmap into ZERO_RANGE. */
static int op_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
        const struct file *f = opened(fi);
        bool punching = mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
        bool zeroing = (mode & ~FALLOC_FL_KEEP_SIZE) == FALLOC_FL_ZERO_RANGE;

        if (!punching && !zeroing)
                return -EOPNOTSUPP;
        if (off < 0 || len < 0 || (uint64_t)off > f->size)
                return -EINVAL;
        uint64_t end = (uint64_t)len < f->size - (uint64_t)off ? (uint64_t)(off + len) : f->size;
        return for_each_piece(bridge(), f, (uint64_t)off, end - (uint64_t)off, fallocate_piece,
                              punching ? (void *)1 : NULL);
}

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
        cfg->direct_io = 1;
        cfg->attr_timeout = 3600;
        cfg->entry_timeout = 3600;
        return fuse_get_context()->private_data;
}

static const struct fuse_operations operations = {
    .init = op_init,
    .getattr = op_getattr,
    .readdir = op_readdir,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .fsync = op_fsync,
    .fallocate = op_fallocate,
};

/* Socket activation by hand: libnbd's own gives qemu-nbd no parent-death signal, so a server
 * killed while qemu-nbd opens a large image would leave it listening, holding the image's lock.
 * qemu-nbd gets a listening socket as fd 3 (LISTEN_FDS), already holding our connection. */
static int spawn_server(char *const argv[], pid_t *ret_pid, int *ret_fd)
{
        struct sockaddr_un addr = {.sun_family = AF_UNIX};
        /* Abstract: nothing to remove from the filesystem however the worker ends. */
        int n =
            snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "qtrim-nbd-%d", (int)getpid());
        socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);

        _cleanup_close_ int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listener < 0 || bind(listener, (struct sockaddr *)&addr, len) < 0 ||
            listen(listener, 1) < 0)
                return -errno;
        _cleanup_close_ int client = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (client < 0 || connect(client, (struct sockaddr *)&addr, len) < 0)
                return -errno;

        pid_t pid = qt_qemu_nbd_spawn(argv, listener, -1);
        if (pid < 0)
                return pid;
        *ret_pid = pid;
        *ret_fd = TAKE_FD(client);
        return 0;
}

/* In the server: qemu-nbd started and connected, the disk file's size known. 0, or -1 with the
 * reason in the shared page. */
static int start_qemu_nbd(struct server *srv, const char *image, const char *format)
{
        struct shared *sh = srv->sh;
        /* No --persistent: qemu-nbd must exit when its one client goes, so a killed server
         * leaves no server holding the image. */
        char *argv[1 + QT_QEMU_NBD_IMAGE_ARGS_MAX + 1] = {"qemu-nbd"};
        size_t n = 1 + qt_qemu_nbd_image_args(image, format, srv->read_only, argv + 1);
        argv[n] = NULL;

        srv->nbd = nbd_create();
        if (!srv->nbd)
                goto nbd_failed;
        int fd = -1, r = spawn_server(argv, &srv->qemu_nbd, &fd);
        sh->qemu_nbd = srv->qemu_nbd;
        if (r < 0) {
                snprintf(sh->error, sizeof(sh->error), "cannot start qemu-nbd: %s", strerror(-r));
                return -1;
        }
        if (nbd_connect_socket(srv->nbd, fd) < 0) /* takes fd, also on failure */
                goto nbd_failed;
        int64_t size = nbd_get_size(srv->nbd);
        if (size < 0)
                goto nbd_failed;
        srv->fast_zero = nbd_can_zero(srv->nbd) == 1 && nbd_can_fast_zero(srv->nbd) == 1;
        if (!srv->read_only && nbd_can_trim(srv->nbd) != 1) {
                snprintf(sh->error, sizeof(sh->error), "qemu-nbd offers no trim for it");
                return -1;
        }
        struct file *disk = &sh->files[0];
        snprintf(disk->name, sizeof(disk->name), DISK_NAME);
        disk->size = (uint64_t)size;
        disk->n_extents = 1;
        disk->extents[0] = (struct qt_range){0, (uint64_t)size};
        __atomic_store_n(&sh->n_files, 1, __ATOMIC_RELEASE);
        return 0;

nbd_failed:
        snprintf(sh->error, sizeof(sh->error), "qemu-nbd: %s",
                 nbd_get_error() ? nbd_get_error() : "cannot connect");
        return -1;
}

int qt_fuse_abort_connection(unsigned connection, const char *dir)
{
        char path[PATH_MAX];
        if (mount("fusectl", dir, "fusectl", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
                return -errno;
        int r = 0;
        int n = snprintf(path, sizeof(path), "%s/%u/abort", dir, connection);
        int fd = n > 0 && (size_t)n < sizeof(path) ? open(path, O_WRONLY | O_CLOEXEC) : -1;
        if (fd < 0 || write(fd, "1", 1) != 1)
                r = -errno;
        if (fd >= 0)
                close(fd);
        umount2(dir, MNT_DETACH);
        return r;
}

/* The server's watch over its end: once the worker has let go (closed its end of the release
 * pipe: detached, or died), the connection ends when the last mount and loop device on the disk
 * file are gone, a dead worker's through the teardown of its namespace, which this process
 * serves. If that takes longer than RELEASE_SECONDS (something on the host still holds the
 * file, a filesystem stuck), the connection is cut: its requests fail with ENOTCONN, and no one
 * waits on it for ever. */
static void *watch_release(void *userdata)
{
        struct server *srv = userdata;
        char c;
        while (read(srv->release_fd, &c, 1) > 0 || errno == EINTR)
                ;
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += RELEASE_SECONDS;
        pthread_mutex_lock(&srv->lock);
        int r = 0;
        while (!srv->loop_ended && r != ETIMEDOUT)
                r = pthread_cond_timedwait(&srv->ended, &srv->lock, &deadline);
        bool ended = srv->loop_ended;
        pthread_mutex_unlock(&srv->lock);
        if (!ended) {
                fprintf(stderr,
                        SERVER_NAME " %d: the disk file is still in use %d s after the worker "
                                    "let go; aborting the FUSE connection\n",
                        (int)getpid(), RELEASE_SECONDS);
                /* fusectl goes on the bridge's directory, free in this process's namespace. */
                (void)qt_fuse_abort_connection(srv->sh->connection, srv->mountpoint);
        }
        return NULL;
}

/* The connection is gone: everything written is flushed, qemu-nbd stopped. 0, or -1 with the
 * reason in the shared page: a server that went away, or a flush that failed, may have lost
 * writes. */
static int stop_qemu_nbd(struct server *srv)
{
        int r = 0;
        if (!nbd_aio_is_ready(srv->nbd)) {
                snprintf(srv->sh->error, sizeof(srv->sh->error), "qemu-nbd went away: %s",
                         nbd_get_error() ? nbd_get_error() : "connection lost");
                r = -1;
        } else if (!srv->read_only && nbd_flush(srv->nbd, 0) < 0) {
                snprintf(srv->sh->error, sizeof(srv->sh->error), "flushing the image failed: %s",
                         nbd_get_error());
                r = -1;
        } else {
                nbd_shutdown(srv->nbd, 0);
        }
        nbd_close(srv->nbd);
        /* qemu-nbd exits once its only client has gone; one that does not is killed. */
        (void)qt_qemu_nbd_reap(srv->qemu_nbd, 10000);
        return r;
}

/*
 * The FUSE server, a process of its own (the worker's child) that serves the bridge until its
 * connection ends, whoever ends it: the worker detaching, or the kernel tearing down a killed
 * worker's namespace, whose unmounts go through the disk file and need a live server. It leaves
 * the worker's mount namespace (a copy of its own without the bridge's mount, which would keep
 * the connection alive), ignores the signals that stop the worker, and owns qemu-nbd, which dies
 * with it. Reports readiness with one byte on status_fd; its exit status says whether the image
 * is whole.
 */
_Noreturn static void run_server(struct server *srv, int fuse_fd, int status_fd, const char *image,
                                 const char *format)
{
        prctl(PR_SET_NAME, SERVER_NAME);
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        signal(SIGPIPE, SIG_IGN);
        /* Writes of the filesystems on top depend on this process: reclaim must not wait on
         * them from here. */
        (void)prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);
        if (unshare(CLONE_NEWNS) < 0 || umount2(srv->mountpoint, MNT_DETACH) < 0) {
                snprintf(srv->sh->error, sizeof(srv->sh->error),
                         "cannot leave the worker's mount namespace: %s", strerror(errno));
                _exit(1);
        }
        if (start_qemu_nbd(srv, image, format) < 0)
                _exit(1);

        char fd_path[32];
        snprintf(fd_path, sizeof(fd_path), "/dev/fd/%d", fuse_fd);
        char *argv[] = {SERVER_NAME, NULL};
        struct fuse_args args = FUSE_ARGS_INIT(1, argv);
        struct fuse *fuse = fuse_new(&args, &operations, sizeof(operations), srv);
        pthread_t watcher;
        if (!fuse || fuse_mount(fuse, fd_path) < 0 ||
            pthread_create(&watcher, NULL, watch_release, srv) != 0) {
                snprintf(srv->sh->error, sizeof(srv->sh->error), "cannot serve the FUSE bridge");
                _exit(1);
        }
        pthread_detach(watcher);
        if (write(status_fd, "r", 1) != 1) {
                /* The worker is gone already: serve its namespace's teardown all the same. */
        }
        fuse_loop(fuse);

        pthread_mutex_lock(&srv->lock);
        srv->loop_ended = true;
        pthread_cond_signal(&srv->ended);
        pthread_mutex_unlock(&srv->lock);
        _exit(stop_qemu_nbd(srv) < 0 ? 1 : 0);
}

/* The minor of the device of the mount on mountpoint (a FUSE connection's number), from the
 * mount table: a stat would be a request no one serves yet. 0 if not found. */
static unsigned mount_minor(const char *mountpoint)
{
        _cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
        char line[4096];
        unsigned found = 0;
        while (f && fgets(line, sizeof(line), f)) {
                unsigned major, minor;
                char path[PATH_MAX];
                /* "ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...": the last match is the top mount.
                 * Mount points with blanks are escaped (\040); qtrim's have none. */
                if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &major, &minor, path) == 3 &&
                    strcmp(path, mountpoint) == 0)
                        found = minor;
        }
        return found;
}

/* The worker mounts the bridge itself, on an open /dev/fuse, in its own namespace; the server
 * process is handed the descriptor. */
static int mount_bridge(struct qt_nbd_fuse *b, int *ret_fuse_fd, struct qt_error *e)
{
        _cleanup_close_ int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot open /dev/fuse: %m");
        char options[128];
        snprintf(options, sizeof(options), "fd=%d,rootmode=40000,user_id=0,group_id=0", fd);
        if (mount("qtrim", b->mountpoint, "fuse.qtrim", MS_NOSUID | MS_NODEV | MS_NOEXEC, options) <
            0)
                return qt_error_set(e, QT_ERR_FAILED, errno,
                                    "cannot mount the FUSE bridge on %s: %m", b->mountpoint);
        b->mounted = true;
        b->sh->connection = mount_minor(b->mountpoint);
        *ret_fuse_fd = TAKE_FD(fd);
        return 0;
}

static int start_server(struct qt_nbd_fuse *b, const char *image, const char *format,
                        bool read_only, int fuse_fd, struct qt_error *e)
{
        int status[2], release[2];
        if (pipe2(status, O_CLOEXEC) < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "pipe: %m");
        if (pipe2(release, O_CLOEXEC) < 0) {
                int err = errno;
                close(status[0]);
                close(status[1]);
                return qt_error_set(e, QT_ERR_FAILED, err, "pipe: %m");
        }
        pid_t pid = fork();
        if (pid == 0) {
                close(status[0]);
                close(release[1]);
                struct server srv = {
                    .sh = b->sh,
                    .read_only = read_only,
                    .release_fd = release[0],
                    .mountpoint = b->mountpoint,
                    .lock = PTHREAD_MUTEX_INITIALIZER,
                    .ended = PTHREAD_COND_INITIALIZER,
                };
                run_server(&srv, fuse_fd, status[1], image, format);
        }
        int err = errno;
        close(status[1]);
        close(release[0]);
        b->status_fd = status[0];
        b->release_fd = release[1];
        if (pid < 0)
                return qt_error_set(e, QT_ERR_FAILED, err, "cannot start the FUSE server: %s",
                                    strerror(err));
        b->server = pid;
        return 0;
}

/* Waits for the server's byte (it serves) or its end (EOF: it has exited); -1 after timeout_ms
 * (< 0: none). */
static int wait_status(struct qt_nbd_fuse *b, int timeout_ms, char *ret)
{
        struct pollfd p = {.fd = b->status_fd, .events = POLLIN};
        int r;
        while ((r = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR)
                ;
        if (r <= 0)
                return -1;
        ssize_t n;
        while ((n = read(b->status_fd, ret, 1)) < 0 && errno == EINTR)
                ;
        return n == 1 ? 1 : 0;
}

/* Whether the process of pidfd has exited, waiting up to timeout_ms. */
static bool wait_pidfd(int pidfd, int timeout_ms)
{
        struct pollfd p = {.fd = pidfd, .events = POLLIN};
        int r;
        while ((r = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR)
                ;
        return r != 0;
}

/* Waits for the server's exit; an error unless it ended well. */
static int reap_server(struct qt_nbd_fuse *b, struct qt_error *e)
{
        int status = 0;
        while (waitpid(b->server, &status, 0) < 0 && errno == EINTR)
                ;
        b->server = 0;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
                return 0;
        if (b->sh->error[0])
                return qt_error_set(e, QT_ERR_FAILED, EIO, "%s", b->sh->error);
        return qt_error_set(e, QT_ERR_FAILED, EIO, "the FUSE server died (%s %d)",
                            WIFSIGNALED(status) ? "signal" : "status",
                            WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}

int qt_nbd_fuse_attach(const char *image, const char *format, bool read_only,
                       const char *mountpoint, struct qt_nbd_fuse **ret, struct qt_error *e)
{
        struct qt_nbd_fuse *b = calloc(1, sizeof(*b));
        if (!b)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
        b->status_fd = b->release_fd = b->qemu_nbd_fd = -1;
        snprintf(b->mountpoint, sizeof(b->mountpoint), "%s", mountpoint);
        b->sh =
            mmap(NULL, sizeof(*b->sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (b->sh == MAP_FAILED) {
                b->sh = NULL;
                qt_nbd_fuse_detach(b, NULL);
                return qt_error_set(e, QT_ERR_FAILED, errno, "mmap: %m");
        }
        snprintf(b->sh->files[0].path, sizeof(b->sh->files[0].path), "%s/" DISK_NAME, mountpoint);

        int fuse_fd = -1;
        int r = mount_bridge(b, &fuse_fd, e);
        if (r >= 0) {
                r = start_server(b, image, format, read_only, fuse_fd, e);
                close(fuse_fd); /* the server's now: the connection lives as long as it serves */
        }
        char c;
        if (r >= 0 && wait_status(b, -1, &c) == 1)
                /* Serving, so its qemu-nbd lives and is not reaped: the pid is that process. */
                b->qemu_nbd_fd = (int)syscall(SYS_pidfd_open, b->sh->qemu_nbd, 0);
        else if (r >= 0) {
                r = reap_server(b, e);
                if (r >= 0) /* cannot be: it said nothing and ended well */
                        r = qt_error_set(e, QT_ERR_FAILED, EIO, "the FUSE server ended at once");
        }
        if (r < 0) {
                qt_nbd_fuse_detach(b, NULL);
                return r;
        }
        *ret = b;
        return 0;
}

const char *qt_nbd_fuse_disk_path(const struct qt_nbd_fuse *b)
{
        return b->sh->files[0].path;
}

const char *qt_nbd_fuse_add_volume(struct qt_nbd_fuse *b, const struct qt_range *extents, size_t n)
{
        struct shared *sh = b->sh;
        size_t i = sh->n_files; /* only this process adds */
        uint64_t size = sh->files[0].size;
        if (i == MAX_FILES || n == 0 || n > QT_FS_EXTENTS_MAX)
                return NULL;
        struct file *f = &sh->files[i];
        *f = (struct file){.n_extents = n};
        for (size_t k = 0; k < n; k++) {
                const struct qt_range *x = &extents[k];
                if (x->offset % 512 || x->size % 512 || x->size == 0 || x->offset > size ||
                    x->size > size - x->offset)
                        return NULL;
                f->extents[k] = *x;
                f->size += x->size;
        }
        char name[sizeof(f->name)];
        snprintf(name, sizeof(name), "v%zu", i);
        memcpy(f->name, name, sizeof(name));
        if ((size_t)snprintf(f->path, sizeof(f->path), "%s/%s", b->mountpoint, name) >=
            sizeof(f->path))
                return NULL;
        __atomic_store_n(&sh->n_files, i + 1, __ATOMIC_RELEASE);
        return f->path;
}

uint64_t qt_nbd_fuse_size(const struct qt_nbd_fuse *b)
{
        return b->sh->files[0].size;
}

unsigned qt_nbd_fuse_connection(const struct qt_nbd_fuse *b)
{
        return b->sh->connection;
}

int qt_nbd_fuse_detach(struct qt_nbd_fuse *b, struct qt_error *e)
{
        int r = 0;
        if (!b)
                return 0;
        /* Let go first: the server's clock runs from here (RELEASE_SECONDS). */
        closep(&b->release_fd);
        /* Unmounted lazily, the connection ends when the last user of the disk file lets go,
         * and with it the server's loop. */
        if (b->mounted && umount2(b->mountpoint, MNT_DETACH) < 0)
                r = qt_error_set(e, QT_ERR_FAILED, errno, "cannot unmount %s: %m", b->mountpoint);
        if (b->server > 0) {
                char c;
                /* It aborts the connection itself after RELEASE_SECONDS; one that does not end
                 * even then is killed, which aborts it too. */
                if (wait_status(b, (RELEASE_SECONDS + 5) * 1000, &c) < 0) {
                        fprintf(stderr,
                                "qtrim worker %d: the FUSE server %d does not end; killing it\n",
                                (int)getpid(), (int)b->server);
                        kill(b->server, SIGKILL);
                }
                int rs = reap_server(b, r < 0 ? NULL : e);
                if (r >= 0)
                        r = rs;
        }
        closep(&b->status_fd);
        /* A server that died leaves its qemu-nbd to its parent-death SIGTERM: the image is not
         * free, nor the job over, until that has exited too. */
        if (b->qemu_nbd_fd >= 0 && !wait_pidfd(b->qemu_nbd_fd, 10000)) {
                fprintf(stderr, "qtrim worker %d: qemu-nbd %d does not exit; killing it\n",
                        (int)getpid(), (int)b->sh->qemu_nbd);
                syscall(SYS_pidfd_send_signal, b->qemu_nbd_fd, SIGKILL, NULL, 0);
                (void)wait_pidfd(b->qemu_nbd_fd, 5000);
        }
        closep(&b->qemu_nbd_fd);
        if (b->sh)
                munmap(b->sh, sizeof(*b->sh));
        free(b);
        return r;
}

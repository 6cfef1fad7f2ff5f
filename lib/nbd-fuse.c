/* SPDX-License-Identifier: GPL-2.0-or-later */
#define FUSE_USE_VERSION 35

#include "nbd-fuse.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <libnbd.h>
#include <limits.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "command.h"
#include "qemu-nbd.h"
#include "report.h"
#include "util.h"

#define DISK_NAME "disk"
/* NBD requests carry 32-bit lengths; trim and zero in pieces well below that. */
#define MAX_TRIM_REQUEST (1ULL << 30)
/* How long detach waits for the last user of the disk file before cutting the connection. */
#define DETACH_WAIT_SECONDS 10

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

struct qt_nbd_fuse {
        struct nbd_handle *nbd;
        pid_t server; /* qemu-nbd */
        struct fuse *fuse;
        pthread_t thread;
        bool serving;
        bool read_only;
        bool fast_zero;   /* the server can zero in metadata, or say it cannot */
        dev_t connection; /* the FUSE mount's device: its fusectl entry */
        uint64_t size;
        char mountpoint[PATH_MAX];
        /* The FUSE thread reads n_files with acquire, the caller's thread publishes a filled
         * entry with a release: files are added, never changed or removed. */
        size_t n_files;
        struct file files[MAX_FILES];
};

static struct qt_nbd_fuse *bridge(void)
{
        return fuse_get_context()->private_data;
}

/* libnbd sets errno and keeps a message; FUSE wants -errno. */
static int nbd_errno(void)
{
        int err = nbd_get_errno();
        return err > 0 ? -err : -EIO;
}

static size_t n_files(const struct qt_nbd_fuse *b)
{
        return __atomic_load_n(&b->n_files, __ATOMIC_ACQUIRE);
}

static const struct file *find_file(const struct qt_nbd_fuse *b, const char *path)
{
        size_t n = n_files(b);
        for (size_t i = 0; path[0] == '/' && i < n; i++)
                if (strcmp(path + 1, b->files[i].name) == 0)
                        return &b->files[i];
        return NULL;
}

/* The file an open gave its handle to. */
static const struct file *opened(struct fuse_file_info *fi)
{
        return &bridge()->files[fi->fh];
}

/* Calls fn on each piece of [off, off + len) of f as a range of the disk, in order, with how
 * many bytes of the request came before it; stops at the first error. The request lies within
 * the file. */
typedef int (*piece_fn)(struct qt_nbd_fuse *b, uint64_t pos, uint64_t n, uint64_t done, void *ctx);

static int for_each_piece(struct qt_nbd_fuse *b, const struct file *f, uint64_t off, uint64_t len,
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
        const struct file *f = find_file(bridge(), path);
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
        size_t n = n_files(bridge());
        for (size_t i = 0; i < n; i++)
                fill(buf, bridge()->files[i].name, NULL, 0, 0);
        return 0;
}

static int op_open(const char *path, struct fuse_file_info *fi)
{
        const struct file *f = find_file(bridge(), path);
        if (!f)
                return -ENOENT;
        if (bridge()->read_only && (fi->flags & O_ACCMODE) != O_RDONLY)
                return -EROFS;
        fi->fh = (uint64_t)(f - bridge()->files);
        /* No page cache for the disk: the loop device above has its own, and dirty pages of a
         * FUSE file under a loop device are how the reclaim deadlock starts. */
        fi->direct_io = 1;
        fi->keep_cache = 0;
        /* Known limit (see nbd-fuse.h): FLUSH on close stays on. Without it, a worker killed
         * with filesystems mounted deadlocks in its own exit; with it, one killed in the few
         * milliseconds it holds the disk open itself (blkid, loop setup) can. */
        return 0;
}

static int read_piece(struct qt_nbd_fuse *b, uint64_t pos, uint64_t n, uint64_t done, void *buf)
{
        return nbd_pread(b->nbd, (char *)buf + done, n, pos, 0) < 0 ? nbd_errno() : 0;
}

static int write_piece(struct qt_nbd_fuse *b, uint64_t pos, uint64_t n, uint64_t done, void *buf)
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
static int punch(struct qt_nbd_fuse *b, uint64_t pos, uint64_t n)
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
static int fallocate_piece(struct qt_nbd_fuse *b, uint64_t pos, uint64_t len, uint64_t done,
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

/* The worker set PR_SET_IO_FLUSHER before attaching; this thread inherits it. */
static void *serve(void *userdata)
{
        struct qt_nbd_fuse *b = userdata;
        fuse_loop(b->fuse);
        return NULL;
}

/* Socket activation by hand: libnbd's own gives qemu-nbd no parent-death signal, so a worker
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

        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                qt_child_prepare(parent, SIGTERM);
                /* dup2 onto itself would keep close-on-exec */
                if (listener == 3 ? fcntl(3, F_SETFD, 0) < 0 : dup2(listener, 3) < 0)
                        _exit(127);
                close_range(4, ~0U, 0);
                char pid_text[16];
                snprintf(pid_text, sizeof(pid_text), "%d", (int)getpid());
                setenv("LISTEN_PID", pid_text, 1);
                setenv("LISTEN_FDS", "1", 1);
                unsetenv("LISTEN_FDNAMES");
                execvp(argv[0], argv);
                _exit(127);
        }
        *ret_pid = pid;
        *ret_fd = TAKE_FD(client);
        return 0;
}

static int start_qemu_nbd(struct qt_nbd_fuse *b, const char *image, const char *format,
                          struct qt_error *e)
{
        /* No --persistent: qemu-nbd must exit when its one client goes, so a killed worker
         * leaves no server holding the image. */
        char opts[QT_QEMU_NBD_OPTS_MAX];
        char *argv[1 + QT_QEMU_NBD_IMAGE_ARGS_MAX + 1] = {"qemu-nbd"};
        size_t n = 1 + qt_qemu_nbd_image_args(image, format, b->read_only, opts, argv + 1);
        argv[n] = NULL;

        b->nbd = nbd_create();
        if (!b->nbd)
                return qt_error_set(e, QT_ERR_FAILED, nbd_get_errno(), "libnbd: %s",
                                    nbd_get_error());
        int fd = -1, r = spawn_server(argv, &b->server, &fd);
        if (r < 0)
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot start qemu-nbd: %s", strerror(-r));
        if (nbd_connect_socket(b->nbd, fd) < 0) /* takes fd, also on failure */
                return qt_error_set(e, QT_ERR_FAILED, nbd_get_errno(), "qemu-nbd: %s",
                                    nbd_get_error());
        int64_t size = nbd_get_size(b->nbd);
        if (size < 0)
                return qt_error_set(e, QT_ERR_FAILED, nbd_get_errno(), "qemu-nbd: %s",
                                    nbd_get_error());
        b->size = (uint64_t)size;
        b->fast_zero = nbd_can_zero(b->nbd) == 1 && nbd_can_fast_zero(b->nbd) == 1;
        if (!b->read_only && nbd_can_trim(b->nbd) != 1)
                return qt_error_set(e, QT_ERR_UNSUPPORTED, EOPNOTSUPP,
                                    "qemu-nbd offers no trim for it");
        return 0;
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

/* Something on the host still holds the disk file (a tool that opened a loop device, a guest
 * filesystem whose lazy unmount is still busy): cut the connection, so its I/O fails with
 * ENOTCONN instead of the job waiting for it forever. fusectl goes on the (now free) bridge
 * directory of the worker's private namespace. */
static void abort_connection(struct qt_nbd_fuse *b)
{
        fprintf(stderr,
                "qtrim worker %d: the disk file is still in use after %d s; aborting the "
                "FUSE connection\n",
                (int)getpid(), DETACH_WAIT_SECONDS);
        (void)qt_fuse_abort_connection(qt_nbd_fuse_connection(b), b->mountpoint);
}

static int mount_bridge(struct qt_nbd_fuse *b, struct qt_error *e)
{
        char *argv[] = {"qtrim", "-o", "subtype=qtrim,fsname=qtrim", NULL};
        struct fuse_args args = FUSE_ARGS_INIT(3, argv);

        b->fuse = fuse_new(&args, &operations, sizeof(operations), b);
        fuse_opt_free_args(&args);
        if (!b->fuse)
                return qt_error_set(e, QT_ERR_FAILED, EIO, "cannot set up the FUSE bridge");
        if (fuse_mount(b->fuse, b->mountpoint) < 0)
                return qt_error_set(e, QT_ERR_FAILED, EIO, "cannot mount the FUSE bridge on %s",
                                    b->mountpoint);
        int r = pthread_create(&b->thread, NULL, serve, b);
        if (r != 0) {
                fuse_unmount(b->fuse);
                return qt_error_set(e, QT_ERR_FAILED, r, "cannot start the FUSE thread: %s",
                                    strerror(r));
        }
        b->serving = true;
        /* The connection's number in fusectl is the mount's device minor. Only now: a stat is
         * a request the FUSE thread must answer. */
        struct stat st;
        if (stat(b->mountpoint, &st) == 0)
                b->connection = st.st_dev;
        return 0;
}

int qt_nbd_fuse_attach(const char *image, const char *format, bool read_only,
                       const char *mountpoint, struct qt_nbd_fuse **ret, struct qt_error *e)
{
        struct qt_nbd_fuse *b = calloc(1, sizeof(*b));
        if (!b)
                return qt_error_set(e, QT_ERR_FAILED, ENOMEM, "out of memory");
        b->read_only = read_only;
        snprintf(b->mountpoint, sizeof(b->mountpoint), "%s", mountpoint);

        int r = start_qemu_nbd(b, image, format, e);
        if (r >= 0) {
                struct file *disk = &b->files[0];
                snprintf(disk->name, sizeof(disk->name), DISK_NAME);
                snprintf(disk->path, sizeof(disk->path), "%s/" DISK_NAME, mountpoint);
                disk->size = b->size;
                disk->n_extents = 1;
                disk->extents[0] = (struct qt_range){0, b->size};
                b->n_files = 1; /* before the FUSE thread starts */
        }
        if (r >= 0)
                r = mount_bridge(b, e);
        if (r < 0) {
                qt_nbd_fuse_detach(b, NULL);
                return r;
        }
        *ret = b;
        return 0;
}

const char *qt_nbd_fuse_disk_path(const struct qt_nbd_fuse *b)
{
        return b->files[0].path;
}

const char *qt_nbd_fuse_add_volume(struct qt_nbd_fuse *b, const struct qt_range *extents, size_t n)
{
        size_t i = b->n_files; /* only this thread adds */
        if (i == MAX_FILES || n == 0 || n > QT_FS_EXTENTS_MAX)
                return NULL;
        struct file *f = &b->files[i];
        *f = (struct file){.n_extents = n};
        for (size_t k = 0; k < n; k++) {
                const struct qt_range *x = &extents[k];
                if (x->offset % 512 || x->size % 512 || x->size == 0 || x->offset > b->size ||
                    x->size > b->size - x->offset)
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
        __atomic_store_n(&b->n_files, i + 1, __ATOMIC_RELEASE);
        return f->path;
}

uint64_t qt_nbd_fuse_size(const struct qt_nbd_fuse *b)
{
        return b->size;
}

unsigned qt_nbd_fuse_connection(const struct qt_nbd_fuse *b)
{
        return b->connection ? minor(b->connection) : 0;
}

int qt_nbd_fuse_detach(struct qt_nbd_fuse *b, struct qt_error *e)
{
        int r = 0;
        if (!b)
                return 0;
        if (b->serving) {
                /* Unmounted lazily, the connection ends when the last user of the disk file
                 * lets go, and with it the FUSE thread's loop. */
                if (umount2(b->mountpoint, MNT_DETACH) < 0)
                        r = qt_error_set(e, QT_ERR_FAILED, errno, "cannot unmount %s: %m",
                                         b->mountpoint);
                fuse_exit(b->fuse);
                struct timespec deadline;
                clock_gettime(CLOCK_REALTIME, &deadline);
                deadline.tv_sec += DETACH_WAIT_SECONDS;
                if (pthread_timedjoin_np(b->thread, NULL, &deadline) != 0) {
                        abort_connection(b);
                        pthread_join(b->thread, NULL);
                }
        }
        if (b->fuse) {
                fuse_unmount(b->fuse); /* already gone; frees what libfuse keeps of the mount */
                fuse_destroy(b->fuse);
        }
        if (b->nbd) {
                /* A server that is gone may have lost writes: that is a failed job, never one
                 * to convert and replace. */
                if (!nbd_aio_is_ready(b->nbd))
                        r = qt_error_set(e, QT_ERR_FAILED, EIO, "qemu-nbd went away: %s",
                                         nbd_get_error() ? nbd_get_error() : "connection lost");
                else if (!b->read_only && nbd_flush(b->nbd, 0) < 0)
                        r = qt_error_set(e, QT_ERR_FAILED, nbd_get_errno(),
                                         "flushing the image failed: %s", nbd_get_error());
                else
                        nbd_shutdown(b->nbd, 0);
                nbd_close(b->nbd);
        }
        if (b->server > 0)
                /* qemu-nbd exits once its only client has gone; one that does not is killed. */
                (void)qt_qemu_nbd_reap(b->server, 10000);
        free(b);
        return r;
}

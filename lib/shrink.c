/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "shrink.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>

#include "cancel.h"
#include "convert.h"
#include "discover.h"
#include "estimate.h"
#include "fat.h"
#include "image.h"
#include "layout.h"
#include "ntfs.h"
#include "overlays.h"
#include "test-hooks.h"
#include "trim.h"
#include "util.h"

struct shrink {
        const struct qt_shrink_request *req;
        struct qt_reporter *rep;
        struct qt_error error;

        struct qt_image_info info;
        /* The image as inspected: every later step reaches it through this open file, and
         * file.st is what its path must still name at the end. */
        struct qt_image_file file;
        char qemu_name[QT_QEMU_NAME_MAX]; /* how qemu tools open it, its backing file explicit */
        struct qt_attachment *attachment;
        int image_lock_fd;         /* qemu's lock held against writers from attach to replace */
        char tmp[PATH_MAX];        /* the compact copy while it exists */
        size_t trim_index;         /* which filesystem the trim is on, for progress */
        struct held *held;         /* trim: what the image holds of the volumes it discards */
        uint64_t l2_tables_before; /* qcow2: as inspected, to explain a growth */
};

typedef int (*phase_fn)(struct shrink *s);

/* qcow2: how many L2 tables the file holds (its L1 table's entries in use); 0 for another
 * format or when it cannot tell. qemu gives every region of the disk a discard touches an L2
 * table (a cluster; it maps cluster_size / 8 clusters: 512 MiB of disk with 64 KiB clusters),
 * also where the image holds nothing: a trim in place grows a compact image by those. */
static uint64_t qcow2_l2_tables(int fd)
{
        uint8_t h[48];
        if (fd < 0 || pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
            memcmp(h, "QFI\xfb", 4) != 0)
                return 0;
        uint32_t l1_size;
        uint64_t l1_offset, entries[512], n = 0;
        memcpy(&l1_size, h + 36, sizeof(l1_size));
        memcpy(&l1_offset, h + 40, sizeof(l1_offset));
        l1_size = be32toh(l1_size);
        l1_offset = be64toh(l1_offset);
        if (l1_size > (32u << 20) / 8) /* qemu's own limit */
                return 0;
        for (uint32_t i = 0; i < l1_size;) {
                size_t want = l1_size - i < ELEMENTSOF(entries) ? l1_size - i : ELEMENTSOF(entries);
                if (pread(fd, entries, want * 8, (off_t)(l1_offset + (uint64_t)i * 8)) !=
                    (ssize_t)(want * 8))
                        return 0;
                for (size_t k = 0; k < want; k++)
                        n += (be64toh(entries[k]) & UINT64_C(0x00fffffffffffe00)) != 0;
                i += (uint32_t)want;
        }
        return n;
}

/* A blank disk, or one with neither a partition table nor a filesystem: done, nothing written
 * (no trim, no copy), which a sweep over a pool with an unused disk in it must not call a
 * failure. */
static void say_nothing_to_trim(struct shrink *s)
{
        qt_emit_u64(s->rep, "nothing-to-trim", 1);
        qt_emit_str(s->rep, "message", "nothing to trim: no partition table or filesystem found");
}

/* What discovery found on a disk that inspection could not call blank (a qcow2): no table, and
 * the whole disk with no filesystem on it. */
static bool found_nothing(const struct qt_report *r)
{
        return strcmp(r->partition_table, "none") == 0 &&
               (r->n_fs == 0 || (r->n_fs == 1 && !r->fs[0].fstype[0]));
}

/* Runs one phase: announces it, times it, and makes sure a failure carries a message. */
static int run_phase(struct shrink *s, enum qt_phase phase, phase_fn fn)
{
        uint64_t start = now_usec();
        qt_emit_phase(s->rep, phase);
        /* Jobs pause for tests; the probe that answers Shrink() must not. */
        int r = s->req->kind == QT_JOB_SHRINK ? qt_test_pause(qt_phase_name(phase)) : 0;
        /* Detach runs whatever happened, also after a cancel: nothing may stay attached. */
        if (r >= 0 || phase == QT_PHASE_DETACH) {
                int k = fn(s);
                if (r >= 0)
                        r = k;
        }
        qt_emit_phase_time(s->rep, phase, now_usec() - start);
        if (r == -ECANCELED && !qt_error_is_set(&s->error))
                qt_error_set(&s->error, QT_ERR_CANCELED, r, "canceled during %s",
                             qt_phase_name(phase));
        else if (r < 0 && !qt_error_is_set(&s->error))
                qt_error_set(&s->error, QT_ERR_FAILED, r, "%s failed: %s", qt_phase_name(phase),
                             strerror(-r));
        return r;
}

static int scratch_path(const struct shrink *s, const char *name, char buf[PATH_MAX])
{
        int n = snprintf(buf, PATH_MAX, "%s/%s", s->req->scratch_dir, name);
        return n < PATH_MAX ? 0 : -ENAMETOOLONG;
}

/* 1. Inspect: refuse early what must not be touched. */
static int inspect(struct shrink *s)
{
        struct qt_reporter *rep = s->rep;
        /* qtrimd resolved the path: from here on a symbolic link is a swap, not an image, and
         * another file than the one qtrimd checked is refused. */
        struct stat resolved = {.st_dev = s->req->dev, .st_ino = s->req->ino};
        int r = qt_image_open(s->req->image, s->req->ino ? &resolved : NULL, &s->file, &s->error);
        if (r < 0)
                return r;
        r = qt_image_probe(&s->file, &s->req->format, s->req->kind == QT_JOB_INSPECT, &s->info,
                           &s->error);
        if (r < 0)
                return r;
        r = qt_image_qemu_name(&s->file, &s->info, false, s->qemu_name);
        if (r < 0)
                return qt_error_set(&s->error, QT_ERR_FAILED, r,
                                    "cannot name the image to qemu: %s", strerror(-r));
        if (s->req->kind != QT_JOB_INSPECT) {
                /* Mounting a backing file read-write writes (journal, superblock, log) into
                 * clusters its overlays read through to. */
                char overlay[PATH_MAX];
                r = qt_find_overlay(s->req->image, &s->file.st, s->req->formats, overlay,
                                    sizeof(overlay), &s->error);
                if (r < 0)
                        return r;
                if (r > 0)
                        return qt_error_set(&s->error, QT_ERR_HAS_OVERLAYS, EBUSY,
                                            "is the backing file of %s; trimming it would corrupt "
                                            "that image",
                                            overlay);
        }
        qt_emit_str(rep, "format", s->info.format);
        qt_emit_str(rep, "format-source", qt_format_source_name(s->info.format_source));
        qt_emit_u64(rep, "virtual-size", s->info.virtual_size);
        qt_emit_u64(rep, "bytes-before", qt_file_allocated(&s->file.st));
        qt_emit_u64(rep, "apparent-before", (uint64_t)s->file.st.st_size);
        qt_emit_u64(rep, "cluster-size", s->info.cluster_size);
        qt_emit_str(rep, "backing-file", s->info.backing_file);
        qt_emit_str(rep, "backing-format", s->info.backing_format);
        qt_emit_u64(rep, "snapshots", s->info.snapshots);
        qt_emit_u64(rep, "bitmaps", s->info.bitmaps);
        /* Only a shrink explains a growth with it (explain_growth). */
        if (s->req->kind == QT_JOB_SHRINK)
                s->l2_tables_before = qcow2_l2_tables(s->file.fd);
        if (s->info.blank)
                say_nothing_to_trim(s);
        return 0;
}

/* A mount namespace of the worker's own: mounts are invisible to the host and vanish with the
 * worker, however it dies. A tmpfs holds its mount points. */
static int enter_private_namespace(struct shrink *s)
{
        if (mkdir(s->req->scratch_dir, 0700) < 0 && errno != EEXIST)
                return qt_error_set(&s->error, QT_ERR_FAILED, errno, "cannot create %s: %m",
                                    s->req->scratch_dir);
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                return qt_error_set(&s->error, QT_ERR_FAILED, errno,
                                    "cannot make a private mount namespace: %m");
        if (mount("qtrim", s->req->scratch_dir, "tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC,
                  "mode=0700,size=1m") < 0)
                return qt_error_set(&s->error, QT_ERR_FAILED, errno,
                                    "cannot mount a tmpfs on %s: %m", s->req->scratch_dir);
        return 0;
}

/* What qtrimd must know to clean up after this worker if it dies attached, while it is (a = the
 * attachment) and once it is no more (a = NULL, kernel: whether the nbd fields were set). The
 * nbd owner goes before the device, so a device qtrimd sees always comes with its owner. */
static void emit_attachment(struct shrink *s, const struct qt_attachment *a, bool kernel)
{
        if (kernel) {
                qt_emit_u64(s->rep, "nbd-owner", a ? qt_attachment_nbd_owner(a) : 0);
                qt_emit_str(s->rep, "nbd-device", a ? qt_attachment_nbd_device(a) : "");
        }
}

/* Kernel path: the device is reported the moment it is claimed, its connection's owner not yet
 * known (0): if the worker dies in the middle of the connect, qtrimd still knows which device to
 * clean (daemon/worker.c). */
static void on_nbd_claim(const char *device, void *userdata)
{
        struct shrink *s = userdata;
        qt_emit_u64(s->rep, "nbd-owner", 0);
        qt_emit_str(s->rep, "nbd-device", device);
}

/* 2. Attach: qemu-nbd --discard=unmap, through the kernel's nbd or a FUSE file (attach.h). */
static int attach(struct shrink *s)
{
        bool read_only = s->req->kind != QT_JOB_SHRINK;
        int r = enter_private_namespace(s);
        if (r < 0)
                return r;
        /* qemu-nbd and the FUSE thread do I/O for block devices the kernel may write back to
         * while reclaiming memory; neither may wait on that reclaim. Inherited by qemu-nbd.
         * It needs CAP_SYS_RESOURCE, which a container may withhold: then direct I/O on the
         * FUSE file (no dirty pages of ours to reclaim) is the defence left. */
        if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) < 0)
                fprintf(stderr, "qtrim worker %d: PR_SET_IO_FLUSHER: %m, continuing without\n",
                        (int)getpid());
        /* A read-only look takes no lock of qemu's: an image in use may still be inspected. */
        char name[QT_QEMU_NAME_MAX];
        r = qt_image_qemu_name(&s->file, &s->info, read_only, name);
        if (r < 0)
                return qt_error_set(&s->error, QT_ERR_FAILED, r,
                                    "cannot name the image to qemu-nbd: %s", strerror(-r));
        struct qt_attach_request req = {
            .image = name,
            .format = s->info.format,
            .read_only = read_only,
            .backend = s->req->attach,
            .scratch_dir = s->req->scratch_dir,
            .on_nbd_claim = on_nbd_claim,
            .userdata = s,
        };
        r = qt_attach(&req, &s->attachment, &s->error);
        if (r < 0) {
                /* A device claimed on the way was let go of (its qemu-nbd stopped). */
                if (s->rep->report.nbd_device[0])
                        emit_attachment(s, NULL, true);
                return r;
        }
        enum qt_attach_backend backend = qt_attachment_backend(s->attachment);
        qt_emit_str(s->rep, "attach-backend", qt_attach_backend_name(backend));
        emit_attachment(s, s->attachment, backend == QT_ATTACH_KERNEL);
        if (read_only)
                return 0;

        /* qemu-nbd holds the image now (the file inspected, by its open file); keep VMs out
         * until the very end. */
        s->image_lock_fd = qt_image_lock_writers_out(&s->file, &s->error);
        return s->image_lock_fd < 0 ? s->image_lock_fd : 0;
}

/* The part of [offset, +length) that lies in r, if any. */
static bool overlap(uint64_t offset, uint64_t length, const struct qt_range *r,
                    struct qt_range *ret)
{
        uint64_t lo = offset > r->offset ? offset : r->offset;
        uint64_t hi = offset + length < r->offset + r->size ? offset + length : r->offset + r->size;
        if (hi <= lo)
                return false;
        *ret = (struct qt_range){lo, hi - lo};
        return true;
}

static int read_free_map(struct shrink *s, const struct qt_fs_result *fs, qt_free_range_fn on_free,
                         void *ctx, char why[QT_FREEMAP_WHY_MAX]);

/* Inspect, for a volume read rather than mounted: its map read now (nothing written), so a
 * volume that would be left alone says why before anyone runs a shrink. The estimate is exact
 * here: the free ranges the trim would discard, met with the image's allocation. */
static const char *describe_free_map(struct shrink *s, struct qt_fs_result *fs,
                                     const struct qt_allocation *alloc, char why[QT_FS_MESSAGE_MAX])
{
        struct qt_free_tally t = {.alloc = alloc, .fs = fs};
        char reason[QT_FREEMAP_WHY_MAX], bytes[FORMAT_BYTES_MAX];
        int r = read_free_map(s, fs, qt_free_tally_add, &t, reason);
        qt_free_tally_end(&t);
        if (r < 0) {
                snprintf(why, QT_FS_MESSAGE_MAX, "would be left alone: %.170s", reason);
                fs->used = fs->size;
                return why;
        }
        fs->free = t.free;
        fs->used = fs->size - t.free;
        fs->reclaimable = t.reclaimable;
        snprintf(why, QT_FS_MESSAGE_MAX, "read, not mounted: %s free in its map, discarded",
                 format_bytes(bytes, t.free));
        return why;
}

static int read_swap_header(struct shrink *s, const struct qt_fs_result *fs, uint64_t *ret_header);

/* Inspect's estimate for a volume the shrink would not mount (mounted ones: estimate_mounted):
 * what the method of trim() would discard, met with the image's allocation. */
static void estimate_unmounted(struct shrink *s, struct qt_fs_result *fs, enum qt_trim_method m,
                               const struct qt_allocation *alloc)
{
        uint64_t header = 0;
        switch (m) {
        case QT_TRIM_DISCARD:
                fs->free = fs->size;
                if (!s->req->keep_gaps)
                        fs->reclaimable = qt_volume_reclaimable(alloc, fs, 0);
                break;
        case QT_TRIM_SWAP:
                /* A hibernation image is the guest's, whole; so is what cannot be read. */
                fs->used = fs->size;
                if (read_swap_header(s, fs, &header) == QT_SWAP_AREA) {
                        fs->used = header;
                        fs->free = fs->size - header;
                        fs->reclaimable = qt_volume_reclaimable(alloc, fs, header);
                }
                break;
        case QT_TRIM_MOUNT:   /* estimate_mounted */
        case QT_TRIM_FREEMAP: /* describe_free_map */
        case QT_TRIM_SKIP:    /* left as it is: nothing to give back, used and free unknown */
                break;
        }
}

/* Inspect's estimate for a filesystem the shrink would mount and FITRIM: mounted read-only,
 * its free space read (estimate.h). */
static void estimate_mounted(struct shrink *s, struct qt_fs_result *fs, size_t index,
                             const struct qt_allocation *alloc)
{
        struct qt_fs_source src = {};
        char dir[PATH_MAX], name[32], why[QT_FS_MESSAGE_MAX];
        qt_attachment_source(s->attachment, fs, &src);
        snprintf(name, sizeof(name), "volume%zu", index);
        if (scratch_path(s, name, dir) < 0 ||
            qt_estimate_mounted(&src, dir, alloc, fs, why, sizeof(why)) < 0)
                fprintf(stderr, "qtrim worker %d: %s: no estimate: %s\n", (int)getpid(), fs->name,
                        why);
}

/* Inspect: how each volume would be handled, and how much of it the image file holds (what a
 * shrink can give back is at most that); with the estimate, how much it would give back. */
static void describe_volumes(struct shrink *s, struct qt_fs_result *fs, size_t n,
                             const struct qt_allocation *alloc)
{
        bool mapped = !alloc->unknown;
        for (size_t i = 0; i < n; i++) {
                char why[QT_FS_MESSAGE_MAX], held[FORMAT_BYTES_MAX];
                const char *how = why;
                switch (qt_trim_method(&fs[i], why, sizeof(why))) {
                case QT_TRIM_MOUNT:
                        how = "mounted and trimmed";
                        break;
                case QT_TRIM_SWAP:
                        how = "header page kept, the rest discarded";
                        break;
                case QT_TRIM_DISCARD:
                        how = "discarded";
                        break;
                case QT_TRIM_FREEMAP:
                        how = describe_free_map(s, &fs[i], alloc, why);
                        break;
                case QT_TRIM_SKIP:
                        break;
                }
                char message[QT_FS_MESSAGE_MAX];
                if (mapped)
                        snprintf(message, sizeof(message), "%.150s; %s in the image", how,
                                 format_bytes(held, qt_volume_held(alloc, &fs[i], 0)));
                else
                        snprintf(message, sizeof(message), "%.190s", how);
                memcpy(fs[i].message, message, sizeof(fs[i].message));
        }
}

/* 3. Discover: partitions and filesystems, from the disk itself. */
static int discover(struct shrink *s)
{
        struct qt_fs_result fs[QT_MAX_FILESYSTEMS];
        char pttype[16];
        size_t n = 0;
        int r = qt_discover(qt_attachment_disk(s->attachment), qt_attachment_size(s->attachment),
                            pttype, fs, &n, &s->error);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                char why[QT_FS_MESSAGE_MAX];
                snprintf(fs[i].method, sizeof(fs[i].method), "%s",
                         qt_trim_method_name(qt_trim_method(&fs[i], why, sizeof(why))));
                qt_attachment_hide(s->attachment, &fs[i]);
        }
        bool estimated = false;
        if (s->req->kind == QT_JOB_INSPECT) {
                /* What the image holds, as qemu-img map says: only whole clusters are given
                 * back (at least 4 KiB, a raw file's host blocks). */
                struct qt_allocation alloc = {
                    .cluster = s->info.cluster_size >= 4096 ? s->info.cluster_size : 4096};
                struct qt_error e = {};
                if (qt_image_map(s->qemu_name, s->info.format, true, qt_allocation_on_extent,
                                 &alloc, &e) < 0) {
                        fprintf(stderr, "qtrim worker %d: %s, continuing without\n", (int)getpid(),
                                e.message);
                        alloc.unknown = true;
                }
                /* Before describe_volumes: each record's message still says only what
                 * discovery found, which decides the method. */
                /* Without the map there is no estimate: none is sent, rather than zeroes. */
                estimated = s->req->estimate && !alloc.unknown;
                if (estimated)
                        for (size_t i = 0; i < n; i++) {
                                char why[QT_FS_MESSAGE_MAX];
                                enum qt_trim_method m = qt_trim_method(&fs[i], why, sizeof(why));
                                if (m == QT_TRIM_MOUNT)
                                        estimate_mounted(s, &fs[i], i, &alloc);
                                else
                                        estimate_unmounted(s, &fs[i], m, &alloc);
                        }
                describe_volumes(s, fs, n, &alloc);
                qt_allocation_done(&alloc);
        }
        qt_emit_str(s->rep, "partition-table", pttype);
        for (size_t i = 0; i < n; i++)
                qt_emit_fs(s->rep, &fs[i]);
        if (estimated)
                for (size_t i = 0; i < n; i++)
                        qt_emit_estimate(s->rep, &fs[i]);
        return 0;
}

static void on_trim_progress(double fraction, void *userdata)
{
        struct shrink *s = userdata;
        qt_emit_progress(s->rep, ((double)s->trim_index + fraction) / (double)s->rep->report.n_fs);
}

/* What the image file itself holds of the volumes that are discarded rather than trimmed (gaps,
 * free extents, swap areas), from `qemu-img map` before anything is written: only those bytes
 * are worth a request, however large the volume (a disk grown to terabytes without its
 * partitions has a gap that size). Without a map, whole volumes are discarded. */
#define HELD_RANGES_MAX (1u << 20)

struct held {
        /* the disk ranges of the volumes discarded, not trimmed */
        struct qt_range volumes[QT_MAX_FILESYSTEMS * QT_FS_EXTENTS_MAX];
        size_t n_volumes;
        struct qt_range *ranges; /* in the order qemu-img map reports them */
        size_t n, cap;
        bool unknown; /* no map, or too many pieces: discard whole volumes */
};

static void on_held_extent(uint64_t offset, uint64_t length, void *userdata)
{
        struct held *h = userdata;
        for (size_t i = 0; i < h->n_volumes && !h->unknown; i++) {
                struct qt_range piece;
                if (!overlap(offset, length, &h->volumes[i], &piece))
                        continue;
                if (h->n == h->cap) {
                        size_t cap = h->cap ? h->cap * 2 : 256;
                        struct qt_range *r = cap <= HELD_RANGES_MAX
                                                 ? reallocarray(h->ranges, cap, sizeof(*r))
                                                 : NULL;
                        if (!r) {
                                h->unknown = true;
                                return;
                        }
                        h->ranges = r;
                        h->cap = cap;
                }
                h->ranges[h->n++] = piece;
        }
}

static void held_free(struct held *h)
{
        if (h)
                free(h->ranges);
        free(h);
}

static struct held *held_map(struct shrink *s)
{
        struct held *h = calloc(1, sizeof(*h));
        if (!h)
                return NULL;
        const struct qt_report *report = &s->rep->report;
        for (size_t i = 0; i < report->n_fs; i++) {
                char why[QT_FS_MESSAGE_MAX];
                enum qt_trim_method m = qt_trim_method(&report->fs[i], why, sizeof(why));
                if (m == QT_TRIM_DISCARD || m == QT_TRIM_SWAP)
                        h->n_volumes +=
                            qt_fs_disk_ranges(&report->fs[i], 0, h->volumes + h->n_volumes);
        }
        struct qt_error e = {};
        if (qt_image_map(s->qemu_name, s->info.format, false, on_held_extent, h, &e) < 0) {
                fprintf(stderr, "qtrim worker %d: %s; discarding whole volumes\n", (int)getpid(),
                        e.message);
                h->unknown = true;
        }
        return h;
}

struct discard_progress {
        struct shrink *s;
        uint64_t done, total, piece;
};

static void on_piece_progress(double fraction, void *userdata)
{
        struct discard_progress *p = userdata;
        if (p->total)
                on_trim_progress(((double)p->done + fraction * (double)p->piece) / (double)p->total,
                                 p->s);
}

/* Discards what the image holds of bytes [from, fs->size) of volume fs: space whose content the
 * guest no longer needs. */
static int discard_volume(struct shrink *s, struct qt_fs_result *fs, uint64_t from,
                          const char *message)
{
        struct qt_range targets[QT_FS_EXTENTS_MAX];
        size_t n_targets = qt_fs_disk_ranges(fs, from, targets);
        /* qcow2 frees whole clusters; a raw file, whole blocks of the host's filesystem. */
        uint64_t cluster = s->info.cluster_size >= 4096 ? s->info.cluster_size : 4096;
        struct discard_progress p = {.s = s};
        for (int pass = 0; pass < 2; pass++) { /* what there is to do, then do it */
                for (size_t t = 0; t < n_targets; t++) {
                        const struct qt_range *pieces = &targets[t];
                        size_t n = 1;
                        if (s->held && !s->held->unknown) {
                                pieces = s->held->ranges;
                                n = s->held->n;
                        }
                        for (size_t i = 0; i < n; i++) {
                                struct qt_range piece;
                                if (!overlap(pieces[i].offset, pieces[i].size, &targets[t], &piece))
                                        continue;
                                uint64_t lo = (piece.offset + 511) / 512 * 512;
                                uint64_t hi = (piece.offset + piece.size) / 512 * 512;
                                if (hi <= lo)
                                        continue;
                                if (pass == 0) {
                                        p.total += hi - lo;
                                        continue;
                                }
                                struct qt_error e = {};
                                p.piece = hi - lo;
                                int r = qt_attachment_discard(s->attachment, lo, hi - lo, cluster,
                                                              on_piece_progress, &p, &e);
                                if (r == -ECANCELED) {
                                        qt_fs_set_outcome(fs, "failed", "canceled");
                                        return r;
                                }
                                if (r < 0) {
                                        qt_fs_set_outcome(fs, "failed", "%s", e.message);
                                        return 0;
                                }
                                p.done += hi - lo;
                        }
                }
        }
        fs->trimmed = p.done;
        qt_fs_set_outcome(fs, "discarded", "%s", message);
        return 0;
}

/* A swap area: the header page (signature, label, UUID, version) stays as it is, so the guest's
 * fstab still finds it; everything after it is stale swapped-out data. */
/* What the swap area fs holds (enum qt_swap_state), and the bytes of its header; -EIO if it
 * cannot be read. */
static int read_swap_header(struct shrink *s, const struct qt_fs_result *fs, uint64_t *ret_header)
{
        _cleanup_free_ uint8_t *buf = malloc(QT_SWAP_HEADER_READ_SIZE);
        const char *disk = qt_attachment_disk(s->attachment);
        _cleanup_close_ int fd = open(disk, O_RDONLY | O_CLOEXEC);
        /* The header lies in the area's first extent, which discovery probed too. */
        uint64_t first = fs->n_extents ? fs->extents[0].size : fs->size;
        size_t want = first < QT_SWAP_HEADER_READ_SIZE ? (size_t)first : QT_SWAP_HEADER_READ_SIZE;
        ssize_t got = buf && fd >= 0 ? pread(fd, buf, want, (off_t)fs->offset) : -1;
        if (got < 0)
                return -EIO;
        return (int)qt_swap_parse(buf, (size_t)got, ret_header);
}

static int trim_swap(struct shrink *s, struct qt_fs_result *fs)
{
        uint64_t header = 0;
        int state = read_swap_header(s, fs, &header);
        if (state < 0) {
                qt_fs_set_outcome(fs, "failed", "cannot read the swap header");
                return 0;
        }
        switch ((enum qt_swap_state)state) {
        case QT_SWAP_AREA:
                return discard_volume(s, fs, header, "header page (label, UUID) kept");
        case QT_SWAP_HIBERNATED:
                qt_fs_set_outcome(fs, "skipped", "%s", QT_HIBERNATED_SWAP_WHY);
                return 0;
        case QT_SWAP_NONE:
                break;
        }
        qt_fs_set_outcome(fs, "skipped", "no swap signature where a swap area keeps it");
        return 0;
}

/* The user-space method (freemap.h): a volume's bytes read through the attachment's disk, at
 * the disk offsets they are (a volume in several places reads as one). */
struct volume_read {
        int fd;
        const struct qt_fs_result *fs;
};

static int read_volume(void *ctx, void *buf, size_t len, uint64_t offset)
{
        const struct volume_read *v = ctx;
        struct qt_range r[QT_FS_EXTENTS_MAX];
        size_t n = qt_fs_disk_ranges(v->fs, offset, r);
        char *p = buf;
        for (size_t i = 0; i < n && len > 0; i++) {
                for (uint64_t done = 0; done < r[i].size && len > 0;) {
                        ssize_t got =
                            pread(v->fd, p, len < r[i].size - done ? len : r[i].size - done,
                                  (off_t)(r[i].offset + done));
                        if (got < 0 && errno == EINTR)
                                continue;
                        if (got <= 0)
                                return got < 0 ? -errno : -EIO;
                        p += got;
                        len -= (size_t)got;
                        done += (uint64_t)got;
                }
        }
        return len > 0 ? -EIO : 0;
}

/* Runs the reader of fs's type over it; on_free sees its free ranges (volume-relative). */
static int read_free_map(struct shrink *s, const struct qt_fs_result *fs, qt_free_range_fn on_free,
                         void *ctx, char why[QT_FREEMAP_WHY_MAX])
{
        const char *disk = qt_attachment_disk(s->attachment);
        _cleanup_close_ int fd = open(disk, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                snprintf(why, QT_FREEMAP_WHY_MAX, "cannot open %s: %s", disk, strerror(errno));
                return -errno;
        }
        struct volume_read vr = {fd, fs};
        struct qt_volume_reader v = {read_volume, &vr, fs->size};
        why[0] = '\0';
        if (strcmp(fs->fstype, "ntfs") == 0)
                return qt_ntfs_free_ranges(&v, on_free, ctx, why, QT_FREEMAP_WHY_MAX);
        return qt_fat_free_ranges(&v, on_free, ctx, why, QT_FREEMAP_WHY_MAX);
}

struct freemap_trim {
        struct shrink *s;
        const struct qt_fs_result *fs;
        uint64_t cluster; /* the image's: only whole ones are given back */
        uint64_t discarded;
        double reported; /* the progress last emitted: a fragmented map has ranges by the
                          * thousand, and each emit is a line to qtrimd and a D-Bus signal */
        struct qt_error error;
};

/* One free range of the filesystem: the whole image clusters in it are discarded. The parts of
 * clusters at its ends stay as they are: the guest's used clusters share them, and an advisory
 * discard needs no zeroes (nothing here must read back as zeroes, unlike swap and gaps). */
static int on_free_range(void *userdata, uint64_t offset, uint64_t length)
{
        struct freemap_trim *t = userdata;
        if (qt_cancel_requested)
                return -ECANCELED;
        struct qt_range r[QT_FS_EXTENTS_MAX];
        size_t n = qt_fs_disk_ranges(t->fs, offset, r);
        for (size_t i = 0; i < n && length > 0; i++) {
                uint64_t len = r[i].size < length ? r[i].size : length;
                uint64_t lo = (r[i].offset + t->cluster - 1) / t->cluster * t->cluster;
                uint64_t hi = (r[i].offset + len) / t->cluster * t->cluster;
                length -= len;
                if (hi <= lo)
                        continue;
                int ret = qt_attachment_discard(t->s->attachment, lo, hi - lo, t->cluster, NULL,
                                                NULL, &t->error);
                if (ret < 0)
                        return ret;
                t->discarded += hi - lo;
        }
        /* The ranges come in order: how far into the volume is how far along. */
        double fraction = (double)(offset + 1) / (double)t->fs->size;
        if (fraction - t->reported >= 0.01) {
                on_trim_progress(fraction, t->s);
                t->reported = fraction;
        }
        return 0;
}

/* A FAT or NTFS volume, never mounted: its own map of free space read, the free ranges
 * discarded. A volume whose state or metadata forbids it (a hibernated Windows, a dirty
 * filesystem, FAT copies that differ, hostile geometry) is left byte for byte as it is. */
static int trim_freemap(struct shrink *s, struct qt_fs_result *fs)
{
        struct freemap_trim t = {.s = s, .fs = fs};
        t.cluster = s->info.cluster_size >= 4096 ? s->info.cluster_size : 4096;
        char why[QT_FREEMAP_WHY_MAX];
        int r = read_free_map(s, fs, on_free_range, &t, why);
        fs->trimmed = t.discarded;
        if (r == -ECANCELED) {
                qt_fs_set_outcome(fs, "failed", "canceled");
                return r;
        }
        if (r == -EUCLEAN && t.discarded == 0)
                qt_fs_set_outcome(fs, "skipped", "%s", why);
        else if (r < 0)
                qt_fs_set_outcome(fs, "failed", "%s",
                                  qt_error_is_set(&t.error) ? t.error.message : why);
        else
                qt_fs_set_outcome(fs, "discarded",
                                  "free clusters read from its own map, not mounted");
        return 0;
}

/* 4. Trim: every volume, by the method its kind and content call for (trim.h); one that cannot
 * be trimmed is reported, not fatal, unless none could: a job that trimmed nothing because
 * everything failed did not succeed. */
static int trim(struct shrink *s)
{
        struct qt_report *report = &s->rep->report;
        uint64_t total = 0;
        const struct qt_fs_result *first_failure = NULL;
        bool any_trimmed = false;

        int err = 0;

        /* From here on the image may be written in place (mounts, discards). */
        qt_emit_str(s->rep, "image-state", QT_IMAGE_TRIMMED);
        /* Before anything is written: the map then is the image as the guest left it. */
        s->held = held_map(s);
        for (s->trim_index = 0; s->trim_index < report->n_fs; s->trim_index++) {
                struct qt_fs_result fs = report->fs[s->trim_index];
                char why[QT_FS_MESSAGE_MAX] = "";
                int r = 0;
                switch (qt_trim_method(&fs, why, sizeof(why))) {
                case QT_TRIM_MOUNT: {
                        struct qt_fs_source src = {};
                        char dir[PATH_MAX];
                        qt_attachment_source(s->attachment, &fs, &src);
                        char name[32]; /* volume names may hold slashes (vg/lv) */
                        snprintf(name, sizeof(name), "volume%zu", s->trim_index);
                        r = scratch_path(s, name, dir);
                        if (r >= 0)
                                r = qt_trim_filesystem(&src, dir, &fs, on_trim_progress, s);
                        break;
                }
                case QT_TRIM_SWAP:
                        r = trim_swap(s, &fs);
                        break;
                case QT_TRIM_FREEMAP:
                        r = trim_freemap(s, &fs);
                        break;
                case QT_TRIM_DISCARD:
                        if (s->req->keep_gaps)
                                qt_fs_set_outcome(&fs, "skipped",
                                                  "kept: the space outside the partitions is left "
                                                  "alone (TrimGaps=no, or the trim-gaps option)");
                        else
                                r = discard_volume(s, &fs, 0, "");
                        break;
                case QT_TRIM_SKIP:
                        qt_fs_set_outcome(&fs, "skipped", "%s", why);
                        break;
                }
                qt_emit_fs(s->rep, &fs);
                total += fs.trimmed;
                if (r < 0) {
                        err = r;
                        break;
                }
                any_trimmed |=
                    strcmp(fs.state, "trimmed") == 0 || strcmp(fs.state, "discarded") == 0;
                if (!first_failure && strcmp(fs.state, "failed") == 0)
                        first_failure = &report->fs[s->trim_index];
        }
        held_free(TAKE_PTR(s->held));
        if (err < 0)
                return err;
        qt_emit_u64(s->rep, "bytes-trimmed", total);
        if (first_failure && !any_trimmed)
                return qt_error_set(&s->error, QT_ERR_FAILED, EIO,
                                    "no filesystem could be trimmed: %s: %s", first_failure->name,
                                    first_failure->message);
        return 0;
}

static int stat_image(struct shrink *s, struct stat *st)
{
        if (stat(s->req->image, st) < 0)
                return qt_error_set(&s->error, QT_ERR_FAILED, errno, "cannot stat: %m");
        return 0;
}

/* 5. Detach: everything on the disk is gone already (each trim unmounts its filesystem, and
 * its loop device clears with the mount); flush, stop qemu-nbd, release the disk. */
static int detach(struct shrink *s)
{
        bool kernel = s->attachment && qt_attachment_backend(s->attachment) == QT_ATTACH_KERNEL;
        int r = qt_detach(s->attachment, &s->error);
        s->attachment = NULL;
        emit_attachment(s, NULL, kernel);
        /* qemu-nbd trimmed the file it opened at attach: if the path names another one now, that
         * one was not trimmed, and is not ours to copy, replace or report on. */
        struct stat st;
        if (r < 0 || s->req->kind != QT_JOB_SHRINK)
                return r;
        r = stat_image(s, &st);
        if (r >= 0 && (st.st_dev != s->file.st.st_dev || st.st_ino != s->file.st.st_ino))
                r = qt_error_set(&s->error, QT_ERR_FAILED, ESTALE,
                                 "was replaced by another file while qtrim worked on it");
        return r;
}

static void drop_temp(struct shrink *s)
{
        if (!s->tmp[0])
                return;
        unlink(s->tmp);
        s->tmp[0] = '\0';
        qt_emit_str(s->rep, "temp-file", "");
}

static void on_convert_progress(double fraction, void *userdata)
{
        struct shrink *s = userdata;
        qt_emit_progress(s->rep, fraction);
}

/* The copy is worth keeping if it allocates fewer bytes, or as many (give or take metadata) in
 * a shorter file: a trimmed qcow2 is full of holes, which not every tool that copies images
 * keeps, and its clusters are scattered. It is weighed against the trimmed image, not the one
 * before the trim: that one is gone, the trimmed one is the other choice left. Whether the
 * result is smaller than before is for the report to say (explain_growth), not for this. */
static bool copy_is_smaller(const struct stat *copy, const struct stat *trimmed)
{
        uint64_t c = qt_file_allocated(copy), t = qt_file_allocated(trimmed);
        return c < t || (c <= t + t / 100 + (1u << 20) && copy->st_size < trimmed->st_size);
}

/* 6. Convert: a compact copy beside the image, kept only if it is smaller. */
static int convert(struct shrink *s)
{
        struct stat trimmed, copy;
        int r = stat_image(s, &trimmed);
        if (r < 0)
                return r;
        /* The copy holds at most what the trimmed image holds, plus metadata. */
        uint64_t needed =
            qt_file_allocated(&trimmed) + qt_file_allocated(&trimmed) / 32 + (16u << 20);
        const char *refusal = qt_convert_refusal(s->req->image, &s->info, &s->file.st, needed);
        if (refusal) {
                qt_emit_str(s->rep, "message", refusal);
                return 0;
        }
        r = qt_convert_create_temp(s->req->image, s->tmp, &s->error);
        if (r < 0)
                return r;
        qt_emit_str(s->rep, "temp-file", s->tmp);
        r = qt_test_pause("convert-write");
        if (r >= 0)
                r = qt_convert_image(&s->file, &s->info, s->tmp, on_convert_progress, s, &s->error);
        if (r < 0)
                return r;
        if (stat(s->tmp, &copy) < 0)
                return qt_error_set(&s->error, QT_ERR_FAILED, errno, "cannot stat %s: %m", s->tmp);
        if (!copy_is_smaller(&copy, &trimmed)) {
                qt_emit_str(s->rep, "message",
                            "kept the trimmed image: the compact copy was not smaller");
                drop_temp(s);
        } else if (!qt_convert_policy_accepts(&s->req->convert_policy, qt_file_allocated(&trimmed),
                                              qt_file_allocated(&copy))) {
                char saved[FORMAT_BYTES_MAX];
                uint64_t t = qt_file_allocated(&trimmed), c = qt_file_allocated(&copy);
                char msg[128];
                snprintf(msg, sizeof(msg),
                         "kept the trimmed image: the compact copy saved only %s (Convert= policy)",
                         format_bytes(saved, c < t ? t - c : 0));
                qt_emit_str(s->rep, "message", msg);
                drop_temp(s);
        } else if (qt_file_allocated(&copy) > qt_file_allocated(&trimmed)) {
                char more[FORMAT_BYTES_MAX], msg[160];
                snprintf(
                    msg, sizeof(msg),
                    "replaced by its compact copy, a shorter file without holes, though it "
                    "allocates %s more than the trimmed image",
                    format_bytes(more, qt_file_allocated(&copy) - qt_file_allocated(&trimmed)));
                qt_emit_str(s->rep, "message", msg);
        }
        return 0;
}

/* 7. Replace: one checked rename. */
static int replace(struct shrink *s)
{
        int r = qt_replace_image(s->req->image, s->image_lock_fd, s->tmp, &s->info, &s->error);
        if (r < 0)
                return r;
        s->tmp[0] = '\0'; /* it is the image now */
        qt_emit_str(s->rep, "temp-file", "");
        qt_emit_u64(s->rep, "converted", 1);
        qt_emit_str(s->rep, "image-state", QT_IMAGE_COMPACTED);
        return 0;
}

/* Why the image holds more than before, appended to the job's message: what qtrim caused
 * (qcow2 tables for discards, what mounting writes) said as such, never left unexplained. */
static void explain_growth(struct shrink *s, uint64_t after, uint64_t l2_tables_after)
{
        const struct qt_report *rep = &s->rep->report;
        uint64_t grown = after - qt_file_allocated(&s->file.st);
        uint64_t added =
            l2_tables_after > s->l2_tables_before ? l2_tables_after - s->l2_tables_before : 0;
        uint64_t in_tables = added * s->info.cluster_size;
        uint64_t rest = grown > in_tables ? grown - in_tables : 0;
        char grew[FORMAT_BYTES_MAX], tables[FORMAT_BYTES_MAX], written[FORMAT_BYTES_MAX];
        char why[512] = "";
        int n = 0;
        if (strcmp(rep->image_state, QT_IMAGE_UNTOUCHED) == 0)
                n = snprintf(why, sizeof(why), "written by something else: qtrim wrote nothing");
        if (!n && added) {
                char region[FORMAT_BYTES_MAX];
                n = snprintf(why, sizeof(why),
                             "%" PRIu64 " new qcow2 L2 table(s) (%s; qemu adds one for each %s "
                             "of the disk a discard or a write reaches where the image held "
                             "nothing%s)",
                             added, format_bytes(tables, in_tables),
                             format_bytes(region, s->info.cluster_size * s->info.cluster_size / 8),
                             s->req->convert ? ""
                                             : "; the convert --no-convert skipped drops them");
        }
        if (n >= (int)sizeof(why))
                n = (int)sizeof(why) - 1;
        if (rest && strcmp(rep->image_state, QT_IMAGE_UNTOUCHED) != 0)
                snprintf(why + n, sizeof(why) - (size_t)n, "%s%s %s", n ? "; " : "",
                         format_bytes(written, rest),
                         s->info.backing_file[0]
                             ? "of clusters that mounting the guest's filesystems wrote to "
                               "(journal, superblock), copied up from the backing file"
                             : "that mounting the guest's filesystems wrote (journal, superblock, "
                               "log) where the image held nothing");
        char message[QT_REPORT_STRING_MAX];
        snprintf(message, sizeof(message), "%.2048s%sgrew by %s: %s", rep->message,
                 rep->message[0] ? "; " : "", format_bytes(grew, grown), why);
        qt_emit_str(s->rep, "message", message);
}

/* 8. Report: what the host holds now. */
static void report_result(struct shrink *s)
{
        struct stat st;
        if (stat_image(s, &st) < 0)
                return;
        qt_emit_u64(s->rep, "apparent-after", (uint64_t)st.st_size);
        qt_emit_u64(s->rep, "bytes-after", qt_file_allocated(&st));
        /* (format: the inspection got as far as the numbers before) */
        if (s->rep->report.format[0] && qt_file_allocated(&st) > qt_file_allocated(&s->file.st)) {
                _cleanup_close_ int fd = open(s->req->image, O_RDONLY | O_CLOEXEC);
                explain_growth(s, qt_file_allocated(&st), qcow2_l2_tables(fd));
        }
}

int qt_shrink_run(const struct qt_shrink_request *req, struct qt_reporter *rep)
{
        struct shrink s = {.req = req, .rep = rep, .image_lock_fd = -1, .file.fd = -1};
        bool shrinking = req->kind == QT_JOB_SHRINK;

        const bool *nothing_to_trim = &rep->report.nothing_to_trim;
        /* Said from the start, so what reads it (explain_growth) never sees it unset. */
        if (shrinking)
                qt_emit_str(rep, "image-state", QT_IMAGE_UNTOUCHED);
        int r = run_phase(&s, QT_PHASE_INSPECT, inspect);
        if (r >= 0 && req->kind != QT_JOB_PROBE && !(shrinking && *nothing_to_trim)) {
                r = run_phase(&s, QT_PHASE_ATTACH, attach);
                if (r >= 0)
                        r = run_phase(&s, QT_PHASE_DISCOVER, discover);
                if (r >= 0 && shrinking && found_nothing(&rep->report))
                        say_nothing_to_trim(&s);
                if (r >= 0 && shrinking && !*nothing_to_trim)
                        r = run_phase(&s, QT_PHASE_TRIM, trim);
                /* Always, whatever failed: nothing may stay attached. */
                int k = run_phase(&s, QT_PHASE_DETACH, detach);
                if (r >= 0)
                        r = k;
        }
        if (r >= 0 && shrinking && !req->convert && !*nothing_to_trim)
                qt_emit_str(rep, "message",
                            "not converted (--no-convert): the image was trimmed in place");
        if (r >= 0 && shrinking && req->convert && !*nothing_to_trim) {
                r = run_phase(&s, QT_PHASE_CONVERT, convert);
                if (r >= 0 && s.tmp[0])
                        r = run_phase(&s, QT_PHASE_REPLACE, replace);
        }
        drop_temp(&s);
        closep(&s.image_lock_fd);
        qt_image_file_close(&s.file);

        if (shrinking)
                report_result(&s);
        /* A job that failed keeps the phase it failed in: that is where to look. */
        if (r < 0)
                qt_emit_error(rep, &s.error);
        else
                qt_emit_phase(rep, QT_PHASE_DONE);
        qt_emit_end(rep);
        return r;
}

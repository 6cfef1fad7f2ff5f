/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Why each step is as it is (what libntfs-3g 2022.10.3 does, read in its volume.c):
 *  - ntfs_device_mount() with NTFS_MNT_RDONLY opens the device O_RDONLY, never checks
 *    hiberfil.sys or $LogFile, never resets the log and never touches $TXF_DATA: those are its
 *    read-write path. So a read-only mount succeeds on the volumes qtrim must leave alone, and the
 *    checks are ours, after it, through functions that only read.
 *  - ntfs_umount() closes and frees the device it was given; a failed mount closes it but leaves
 *    it to us.
 *  - Release syncs the device even after a read-only mount: a sync of nothing written succeeds.
 */
#include "ntfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <ntfs-3g/attrib.h>
#include <ntfs-3g/device.h>
#include <ntfs-3g/inode.h>
#include <ntfs-3g/logfile.h>
#include <ntfs-3g/logging.h>
#include <ntfs-3g/volume.h>

#include "util.h"

#define WHY_HIBERNATED                                                                             \
        "Windows is hibernated or Fast Startup is on; shut Windows down fully (\"shutdown /s /t "  \
        "0\") and run qtrim again"
#define WHY_UNCLEAN                                                                                \
        "the NTFS volume was not cleanly unmounted (dirty flag or a log to replay); let Windows "  \
        "check it (chkdsk) and shut down fully, then run qtrim again"

/* Bytes of $Bitmap read at a time: 2 Mi clusters, 8 GiB of a volume with 4 KiB clusters. */
#define BITMAP_CHUNK (256 * 1024)

static unsigned long write_attempts;

unsigned long qt_ntfs_write_attempts(void)
{
        return write_attempts;
}

/* The device libntfs-3g reads through: the reader, a position for read/seek, what went wrong. */
struct device {
        const struct qt_volume_reader *v;
        uint64_t pos;
        int read_error;       /* the first failed read's negative errno */
        unsigned long writes; /* writes attempted through this device */
};

static struct device *device_of(struct ntfs_device *dev)
{
        return dev->d_private;
}

static int refuse_write(struct ntfs_device *dev)
{
        device_of(dev)->writes++;
        write_attempts++;
        errno = EROFS;
        return -1;
}

static int device_open(struct ntfs_device *dev, int flags)
{
        if ((flags & O_ACCMODE) != O_RDONLY)
                return refuse_write(dev);
        device_of(dev)->pos = 0;
        NDevSetOpen(dev);
        NDevSetReadOnly(dev);
        return 0;
}

static int device_close(struct ntfs_device *dev)
{
        NDevClearOpen(dev);
        return 0;
}

static s64 device_seek(struct ntfs_device *dev, s64 offset, int whence)
{
        struct device *d = device_of(dev);
        uint64_t base;

        switch (whence) {
        case SEEK_SET:
                base = 0;
                break;
        case SEEK_CUR:
                base = d->pos;
                break;
        case SEEK_END:
                base = d->v->size;
                break;
        default:
                errno = EINVAL;
                return -1;
        }
        if ((offset < 0 && (uint64_t)-offset > base) ||
            (offset > 0 && (uint64_t)offset > (uint64_t)INT64_MAX - base)) {
                errno = EINVAL;
                return -1;
        }
        d->pos = base + (uint64_t)offset;
        return (s64)d->pos;
}

/* Reads within the volume only: at or past its end is end of file, a read across it is short. */
static s64 device_pread(struct ntfs_device *dev, void *buf, s64 count, s64 offset)
{
        struct device *d = device_of(dev);

        if (count < 0 || offset < 0) {
                errno = EINVAL;
                return -1;
        }
        if ((uint64_t)offset >= d->v->size || count == 0)
                return 0;
        uint64_t n = (uint64_t)count;
        if (n > d->v->size - (uint64_t)offset)
                n = d->v->size - (uint64_t)offset;
        int r = d->v->read(d->v->ctx, buf, n, (uint64_t)offset);
        if (r < 0) {
                if (d->read_error == 0)
                        d->read_error = r;
                errno = -r;
                return -1;
        }
        return (s64)n;
}

static s64 device_read(struct ntfs_device *dev, void *buf, s64 count)
{
        struct device *d = device_of(dev);

        if (d->pos > INT64_MAX) {
                errno = EINVAL;
                return -1;
        }
        s64 n = device_pread(dev, buf, count, (s64)d->pos);
        if (n > 0)
                d->pos += (uint64_t)n;
        return n;
}

static s64 device_write(struct ntfs_device *dev, const void *buf, s64 count)
{
        return refuse_write(dev);
}

static s64 device_pwrite(struct ntfs_device *dev, const void *buf, s64 count, s64 offset)
{
        return refuse_write(dev);
}

static int device_sync(struct ntfs_device *dev)
{
        if (device_of(dev)->writes == 0)
                return 0;
        errno = EROFS;
        return -1;
}

static int device_stat(struct ntfs_device *dev, struct stat *buf)
{
        errno = ENOTSUP;
        return -1;
}

static int device_ioctl(struct ntfs_device *dev, unsigned long request, void *argp)
{
        errno = ENOTSUP;
        return -1;
}

static struct ntfs_device_operations device_ops = {
    .open = device_open,
    .close = device_close,
    .seek = device_seek,
    .read = device_read,
    .write = device_write,
    .pread = device_pread,
    .pwrite = device_pwrite,
    .sync = device_sync,
    .stat = device_stat,
    .ioctl = device_ioctl,
};

static void ntfs_device_freep(struct ntfs_device **dev)
{
        if (*dev)
                ntfs_device_free(*dev);
}

static void ntfs_inode_closep(ntfs_inode **ni)
{
        if (*ni)
                ntfs_inode_close(*ni);
}

static void ntfs_attr_closep(ntfs_attr **na)
{
        if (*na)
                ntfs_attr_close(*na);
}

static int set_why(int r, char *why, size_t why_size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int set_why(int r, char *why, size_t why_size, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        if (why_size > 0)
                vsnprintf(why, why_size, fmt, ap);
        va_end(ap);
        return r;
}

/* After a libntfs-3g call failed with err: a failed read of the reader is the cause if there was
 * one, otherwise the volume is not one qtrim can read. */
static int unreadable(const struct device *d, int err, char *why, size_t why_size)
{
        if (d->read_error < 0)
                return set_why(d->read_error, why, why_size, "reading the NTFS volume failed: %s",
                               strerror(-d->read_error));
        return set_why(-EUCLEAN, why, why_size, "not a readable NTFS volume: %s; left alone",
                       strerror(err > 0 ? err : EIO));
}

/* $LogFile: a restart page of version 2.0 means Windows kept metadata in its cache (Fast Startup,
 * or a Windows 8+ cut off); otherwise the log must be understood and clean. Only reads. */
static int check_logfile(ntfs_volume *vol, const struct device *d, char *why, size_t why_size)
{
        _cleanup_(ntfs_inode_closep) ntfs_inode *ni = ntfs_inode_open(vol, FILE_LogFile);
        if (!ni)
                return unreadable(d, errno, why, why_size);
        _cleanup_(ntfs_attr_closep) ntfs_attr *na = ntfs_attr_open(ni, AT_DATA, AT_UNNAMED, 0);
        if (!na)
                return unreadable(d, errno, why, why_size);

        _cleanup_free_ RESTART_PAGE_HEADER *rp = NULL;
        bool understood = ntfs_check_logfile(na, &rp);
        if (d->read_error < 0)
                return unreadable(d, EIO, why, why_size);
        if (rp && rp->major_ver == const_cpu_to_sle16(2) && rp->minor_ver == const_cpu_to_sle16(0))
                return set_why(-EUCLEAN, why, why_size, WHY_HIBERNATED);
        if (!understood || !ntfs_is_logfile_clean(na, rp))
                return set_why(-EUCLEAN, why, why_size, WHY_UNCLEAN);
        return 0;
}

/* Whether $Bitmap marks clusters [lcn, lcn + count) in use. */
static int marked_used(ntfs_volume *vol, const struct device *d, int64_t lcn, int64_t count,
                       bool *ret_used, char *why, size_t why_size)
{
        uint8_t buf[512];

        while (count > 0) {
                int64_t byte = lcn / 8;
                int64_t n = (int64_t)sizeof(buf);
                if (n > (lcn + count + 7) / 8 - byte)
                        n = (lcn + count + 7) / 8 - byte;
                if (ntfs_attr_pread(vol->lcnbmp_na, byte, n, buf) != n)
                        return unreadable(d, errno, why, why_size);
                for (int64_t i = 0; i < n * 8 && count > 0; i++) {
                        int64_t bit = byte * 8 + i;
                        if (bit < lcn)
                                continue;
                        if (!(buf[i / 8] >> (i % 8) & 1)) {
                                *ret_used = false;
                                return 0;
                        }
                        lcn++;
                        count--;
                }
        }
        *ret_used = true;
        return 0;
}

/* The clusters the volume cannot be read without ($Boot's first, $MFT, $MFTMirr, $Bitmap) lie
 * within it and are marked in use: a $Bitmap that says otherwise is damaged or hostile, and
 * discarding what it calls free would destroy the volume. */
static int check_metadata_used(ntfs_volume *vol, const struct device *d, char *why, size_t why_size)
{
        ntfs_attr *attrs[] = {vol->mft_na, vol->mftmirr_na, vol->lcnbmp_na};
        bool used;
        int r;

        r = marked_used(vol, d, 0, 1, &used, why, why_size);
        if (r < 0)
                return r;
        for (size_t i = 0; used && i < ELEMENTSOF(attrs); i++) {
                if (!NAttrNonResident(attrs[i]))
                        continue;
                if (ntfs_attr_map_whole_runlist(attrs[i]) < 0)
                        return unreadable(d, errno, why, why_size);
                for (const runlist_element *rl = attrs[i]->rl; used && rl && rl->length > 0; rl++) {
                        if (rl->lcn < 0)
                                continue;
                        if (rl->lcn >= vol->nr_clusters || rl->length > vol->nr_clusters - rl->lcn)
                                return set_why(-EUCLEAN, why, why_size,
                                               "not a readable NTFS volume: its metadata lies "
                                               "outside it; left alone");
                        r = marked_used(vol, d, rl->lcn, rl->length, &used, why, why_size);
                        if (r < 0)
                                return r;
                }
        }
        if (!used)
                return set_why(-EUCLEAN, why, why_size,
                               "not a readable NTFS volume: $Bitmap marks its metadata free; left "
                               "alone");
        return 0;
}

struct walk {
        qt_free_range_fn on_free;
        void *ctx;
        uint64_t cluster_size;
        uint64_t run_start; /* first cluster of the free run being gathered, or NO_RUN */
};

#define NO_RUN UINT64_MAX

static int end_run(struct walk *w, uint64_t end)
{
        if (w->run_start == NO_RUN)
                return 0;
        uint64_t start = w->run_start;
        w->run_start = NO_RUN;
        int r = w->on_free(w->ctx, start * w->cluster_size, (end - start) * w->cluster_size);
        return r < 0 ? r : 0;
}

/* $Bitmap's clear bits below nr_clusters, in chunks, as merged runs. */
static int walk_bitmap(ntfs_volume *vol, const struct device *d, uint64_t nr_clusters,
                       qt_free_range_fn on_free, void *ctx, char *why, size_t why_size)
{
        struct walk w = {on_free, ctx, vol->cluster_size, NO_RUN};
        uint64_t bytes = (nr_clusters + 7) / 8;
        int r;

        _cleanup_free_ uint8_t *buf = malloc(BITMAP_CHUNK);
        if (!buf)
                return set_why(-ENOMEM, why, why_size, "out of memory reading $Bitmap");

        for (uint64_t pos = 0; pos < bytes; pos += BITMAP_CHUNK) {
                uint64_t n = bytes - pos < BITMAP_CHUNK ? bytes - pos : BITMAP_CHUNK;
                if (ntfs_attr_pread(vol->lcnbmp_na, (s64)pos, (s64)n, buf) != (s64)n)
                        return unreadable(d, errno, why, why_size);

                uint64_t first = pos * 8;
                uint64_t end = first + n * 8 < nr_clusters ? first + n * 8 : nr_clusters;
                for (uint64_t c = first; c < end;) {
                        uint8_t byte = buf[(c - first) / 8];
                        if (c % 8 == 0 && end - c >= 8 && (byte == 0x00 || byte == 0xff)) {
                                if (byte == 0xff) {
                                        r = end_run(&w, c);
                                        if (r < 0)
                                                return r;
                                } else if (w.run_start == NO_RUN)
                                        w.run_start = c;
                                c += 8;
                                continue;
                        }
                        if (byte >> (c % 8) & 1) {
                                r = end_run(&w, c);
                                if (r < 0)
                                        return r;
                        } else if (w.run_start == NO_RUN)
                                w.run_start = c;
                        c++;
                }
        }
        return end_run(&w, nr_clusters);
}

/* The mounted volume: its size, its state, its metadata, then its free clusters. */
static int read_volume(ntfs_volume *vol, const struct device *d, qt_free_range_fn on_free,
                       void *ctx, char *why, size_t why_size)
{
        const struct qt_volume_reader *v = d->v;
        int r;

        if (vol->cluster_size == 0 || vol->nr_clusters <= 0 ||
            (uint64_t)vol->nr_clusters > v->size / vol->cluster_size)
                return set_why(-EUCLEAN, why, why_size,
                               "not a readable NTFS volume: it claims %lld clusters of %u bytes, "
                               "more than the %llu bytes it has; left alone",
                               (long long)vol->nr_clusters, (unsigned)vol->cluster_size,
                               (unsigned long long)v->size);

        if (ntfs_volume_check_hiberfile(vol, 0) < 0) {
                if (errno == EPERM && d->read_error == 0)
                        return set_why(-EUCLEAN, why, why_size, WHY_HIBERNATED);
                return unreadable(d, errno, why, why_size);
        }
        if (vol->flags & VOLUME_IS_DIRTY)
                return set_why(-EUCLEAN, why, why_size, WHY_UNCLEAN);
        r = check_logfile(vol, d, why, why_size);
        if (r < 0)
                return r;

        uint64_t nr_clusters = (uint64_t)vol->nr_clusters;
        if (vol->lcnbmp_na->data_size < 0 ||
            (uint64_t)vol->lcnbmp_na->data_size < (nr_clusters + 7) / 8)
                return set_why(-EUCLEAN, why, why_size,
                               "not a readable NTFS volume: $Bitmap is shorter than the volume; "
                               "left alone");
        r = check_metadata_used(vol, d, why, why_size);
        if (r < 0)
                return r;
        if (d->writes > 0)
                return set_why(
                    -EROFS, why, why_size,
                    "libntfs-3g tried to write to the NTFS volume (refused); left alone");

        return walk_bitmap(vol, d, nr_clusters, on_free, ctx, why, why_size);
}

int qt_ntfs_free_ranges(const struct qt_volume_reader *v, qt_free_range_fn on_free, void *ctx,
                        char *why, size_t why_size)
{
        struct device d = {.v = v};
        int r;

        if (why_size > 0)
                why[0] = '\0';
        ntfs_log_set_handler(ntfs_log_handler_null);
        ntfs_log_clear_levels(UINT32_MAX);

        _cleanup_(ntfs_device_freep) struct ntfs_device *dev =
            ntfs_device_alloc("qtrim-volume", 0, &device_ops, &d);
        if (!dev)
                return set_why(-errno, why, why_size, "out of memory opening the NTFS volume");

        ntfs_volume *vol = ntfs_device_mount(dev, NTFS_MNT_RDONLY | NTFS_MNT_FORENSIC);
        if (!vol)
                return unreadable(&d, errno, why, why_size);
        /* From here on ntfs_umount frees dev. */
        dev = NULL;

        r = read_volume(vol, &d, on_free, ctx, why, why_size);
        ntfs_umount(vol, FALSE);
        if (r >= 0 && d.writes > 0)
                return set_why(-EROFS, why, why_size,
                               "libntfs-3g tried to write to the NTFS volume (refused)");
        return r;
}

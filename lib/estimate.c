/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "estimate.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fsmap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include "loopdev.h"
#include "util.h"

/* As many pieces as the trim keeps of the volumes it discards (shrink.c): 16 MiB. */
#define ALLOCATION_RANGES_MAX (1u << 20)

void qt_allocation_on_extent(uint64_t offset, uint64_t length, void *userdata)
{
        struct qt_allocation *a = userdata;
        if (a->unknown || length == 0)
                return;
        if (a->n > 0) {
                struct qt_range *last = &a->ranges[a->n - 1];
                if (offset < last->offset + last->size) { /* not ascending: no estimate */
                        a->unknown = true;
                        return;
                }
                if (offset == last->offset + last->size) {
                        last->size += length;
                        return;
                }
        }
        if (a->n == a->cap) {
                size_t cap = a->cap ? a->cap * 2 : 256;
                struct qt_range *r =
                    cap <= ALLOCATION_RANGES_MAX ? reallocarray(a->ranges, cap, sizeof(*r)) : NULL;
                if (!r) {
                        a->unknown = true;
                        return;
                }
                a->ranges = r;
                a->cap = cap;
        }
        a->ranges[a->n++] = (struct qt_range){offset, length};
}

void qt_allocation_done(struct qt_allocation *a)
{
        free(a->ranges);
        *a = (struct qt_allocation){};
}

uint64_t qt_allocation_held(const struct qt_allocation *a, uint64_t offset, uint64_t length)
{
        uint64_t end = offset + length, held = 0;
        /* The first range that ends past offset. */
        size_t lo = 0, hi = a->n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (a->ranges[mid].offset + a->ranges[mid].size <= offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        for (size_t i = lo; i < a->n && a->ranges[i].offset < end; i++) {
                uint64_t from = a->ranges[i].offset > offset ? a->ranges[i].offset : offset;
                uint64_t to = a->ranges[i].offset + a->ranges[i].size;
                held += (to < end ? to : end) - from;
        }
        return held;
}

uint64_t qt_allocation_reclaimable(const struct qt_allocation *a, uint64_t offset, uint64_t length)
{
        uint64_t c = a->cluster;
        uint64_t lo = (offset + c - 1) / c * c, hi = (offset + length) / c * c;
        return hi > lo ? qt_allocation_held(a, lo, hi - lo) : 0;
}

static uint64_t volume_sum(const struct qt_allocation *a, const struct qt_fs_result *fs,
                           uint64_t from,
                           uint64_t (*count)(const struct qt_allocation *, uint64_t, uint64_t))
{
        struct qt_range r[QT_FS_EXTENTS_MAX];
        size_t n = qt_fs_disk_ranges(fs, from, r);
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++)
                sum += count(a, r[i].offset, r[i].size);
        return sum;
}

uint64_t qt_volume_held(const struct qt_allocation *a, const struct qt_fs_result *fs, uint64_t from)
{
        return volume_sum(a, fs, from, qt_allocation_held);
}

uint64_t qt_volume_reclaimable(const struct qt_allocation *a, const struct qt_fs_result *fs,
                               uint64_t from)
{
        return volume_sum(a, fs, from, qt_allocation_reclaimable);
}

/* One merged free range of the volume: the whole clusters of each disk piece it is made of. */
static void tally_range(struct qt_free_tally *t, uint64_t offset, uint64_t length)
{
        struct qt_range r[QT_FS_EXTENTS_MAX];
        size_t n = qt_fs_disk_ranges(t->fs, offset, r);
        t->free += length;
        for (size_t i = 0; i < n && length > 0; i++) {
                uint64_t len = r[i].size < length ? r[i].size : length;
                t->reclaimable += qt_allocation_reclaimable(t->alloc, r[i].offset, len);
                length -= len;
        }
}

int qt_free_tally_add(void *tally, uint64_t offset, uint64_t length)
{
        struct qt_free_tally *t = tally;
        if (offset >= t->fs->size || length == 0)
                return 0;
        if (length > t->fs->size - offset)
                length = t->fs->size - offset;
        if (t->pending_length && offset == t->pending_offset + t->pending_length) {
                t->pending_length += length;
                return 0;
        }
        qt_free_tally_end(t);
        t->pending_offset = offset;
        t->pending_length = length;
        return 0;
}

void qt_free_tally_end(struct qt_free_tally *t)
{
        if (t->pending_length)
                tally_range(t, t->pending_offset, t->pending_length);
        t->pending_length = 0;
}

/* Read-only mounts that write nothing, not even what a read-only mount of a dirty filesystem
 * would: ext3/4 noload (no journal replay), xfs norecovery (no log recovery; nouuid as for the
 * trim: a clone's UUID may be mounted on the host), btrfs rescue=nologreplay (no log tree
 * replay). The attachment is read-only besides, so a write would fail rather than land. */
static const struct {
        const char *fstype;
        const char *options;
} readonly_mounts[] = {
    {"ext4", "noload"},
    {"ext3", "noload"},
    {"ext2", ""},
    {"xfs", "norecovery,nouuid"},
    {"btrfs", "rescue=nologreplay"},
};

#define FSMAP_BATCH 1024

/* The free extents from FS_IOC_GETFSMAP (ext4 and xfs report free space as records of owner
 * FMR_OWN_FREE, bytes from the start of the device, ascending): the same free space FITRIM
 * walks, so the estimate is what the trim discards. -EOPNOTSUPP or -ENOTTY where the
 * filesystem has no GETFSMAP (btrfs). */
static int tally_fsmap(int fd, struct qt_free_tally *t)
{
        _cleanup_free_ struct fsmap_head *head =
            calloc(1, sizeof(*head) + FSMAP_BATCH * sizeof(struct fsmap));
        if (!head)
                return -ENOMEM;
        head->fmh_count = FSMAP_BATCH;
        /* Everything: the low key all zeros, the high key all ones. */
        struct fsmap *high = &head->fmh_keys[1];
        high->fmr_device = UINT32_MAX;
        high->fmr_flags = UINT32_MAX;
        high->fmr_physical = high->fmr_owner = high->fmr_offset = UINT64_MAX;
        for (;;) {
                if (ioctl(fd, FS_IOC_GETFSMAP, head) < 0)
                        return -errno;
                if (head->fmh_entries == 0)
                        break;
                const struct fsmap *last = &head->fmh_recs[head->fmh_entries - 1];
                for (unsigned i = 0; i < head->fmh_entries; i++) {
                        const struct fsmap *rec = &head->fmh_recs[i];
                        if ((rec->fmr_flags & FMR_OF_SPECIAL_OWNER) &&
                            rec->fmr_owner == FMR_OWN_FREE)
                                qt_free_tally_add(t, rec->fmr_physical, rec->fmr_length);
                }
                if (last->fmr_flags & FMR_OF_LAST)
                        break;
                head->fmh_keys[0] = *last; /* go on after the last record */
        }
        qt_free_tally_end(t);
        return 0;
}

int qt_estimate_mounted(const struct qt_fs_source *src, const char *mount_dir,
                        const struct qt_allocation *alloc, struct qt_fs_result *fs, char *why,
                        size_t why_size)
{
        const char *options = NULL;
        for (size_t i = 0; i < ELEMENTSOF(readonly_mounts); i++)
                if (strcmp(fs->fstype, readonly_mounts[i].fstype) == 0)
                        options = readonly_mounts[i].options;
        if (!options) {
                snprintf(why, why_size, "%s is not a filesystem qtrim mounts", fs->fstype);
                return -EOPNOTSUPP;
        }
        if (src->unusable) {
                snprintf(why, why_size, "%s", src->unusable);
                return -EOPNOTSUPP;
        }
        char loop[QT_LOOP_PATH_MAX];
        const char *device = src->device;
        _cleanup_close_ int loop_fd = -1;
        if (!device) {
                struct qt_error e = {};
                loop_fd = qt_loop_attach(src->disk, src->offset, src->size, true, loop, &e);
                if (loop_fd < 0) {
                        snprintf(why, why_size, "%s", e.message);
                        return loop_fd;
                }
                device = loop;
        }
        if (mkdir(mount_dir, 0700) < 0 && errno != EEXIST) {
                snprintf(why, why_size, "cannot create %s: %s", mount_dir, strerror(errno));
                return -errno;
        }
        if (mount(device, mount_dir, fs->fstype, MS_RDONLY | MS_NODEV | MS_NOSUID | MS_NOEXEC,
                  options) < 0) {
                int r = -errno;
                snprintf(why, why_size, "cannot mount read-only: %s", strerror(errno));
                rmdir(mount_dir);
                return r;
        }
        /* The mount holds the device now; autoclear frees a loop device with the mount. */
        closep(&loop_fd);

        int r = 0;
        struct statfs sf;
        _cleanup_close_ int fd = open(mount_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fstatfs(fd, &sf) < 0) {
                r = -errno;
                snprintf(why, why_size, "cannot read its free space: %s", strerror(errno));
        } else {
                uint64_t bsize = (uint64_t)sf.f_bsize;
                fs->used = ((uint64_t)sf.f_blocks - (uint64_t)sf.f_bfree) * bsize;
                fs->free = (uint64_t)sf.f_bfree * bsize;
                struct qt_free_tally t = {.alloc = alloc, .fs = fs};
                r = tally_fsmap(fd, &t);
                if (r >= 0)
                        fs->reclaimable = t.reclaimable;
                else if (r == -EOPNOTSUPP || r == -ENOTTY) {
                        /* btrfs: no map of its free space to read. What the image holds of the
                         * volume beyond what the guest uses; an upper bound, since clusters
                         * that free space shares with used data stay. */
                        uint64_t held = qt_volume_held(alloc, fs, 0);
                        fs->reclaimable = held > fs->used ? held - fs->used : 0;
                        r = 0;
                } else
                        snprintf(why, why_size, "GETFSMAP failed: %s", strerror(-r));
        }
        closep(&fd);
        if (umount2(mount_dir, 0) < 0)
                umount2(mount_dir, MNT_DETACH); /* the namespace goes with the worker */
        rmdir(mount_dir);
        return r;
}

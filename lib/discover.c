/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "discover.h"

#include <blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>

#include "util.h"

/* The filesystem (or swap, LUKS, LVM...) signature in [offset, offset + size) of the disk. */
static void probe_fstype(int fd, uint64_t offset, uint64_t size, char fstype[QT_FS_TYPE_MAX])
{
        fstype[0] = '\0';
        blkid_probe pr = blkid_new_probe();
        if (!pr)
                return;
        if (blkid_probe_set_device(pr, fd, (blkid_loff_t)offset, (blkid_loff_t)size) == 0) {
                blkid_probe_enable_superblocks(pr, 1);
                blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE);
                const char *type;
                if (blkid_do_safeprobe(pr) == 0 &&
                    blkid_probe_lookup_value(pr, "TYPE", &type, NULL) == 0)
                        snprintf(fstype, QT_FS_TYPE_MAX, "%s", type);
        }
        blkid_free_probe(pr);
}

static void add_fs(struct qt_fs_result *fs, const char *name, uint64_t offset, uint64_t size)
{
        *fs = (struct qt_fs_result){.offset = offset, .size = size};
        snprintf(fs->name, sizeof(fs->name), "%s", name);
        snprintf(fs->state, sizeof(fs->state), "found");
}

static bool past_end(const struct qt_fs_result *fs, uint64_t disk_size)
{
        return fs->offset >= disk_size || fs->size > disk_size - fs->offset;
}

/* Two entries that share sectors (a damaged or hostile table) would be two read-write mounts of
 * the same blocks, each filesystem writing over the other's: neither is touched. Both are
 * within the disk here, so the sums cannot overflow. Partitions of a table nested in another's
 * partition (BSD, Solaris, Minix subpartitions) overlap their parent too and are kept out the
 * same way; qtrim trims none of their filesystems anyway. */
static void mark_overlaps(struct qt_fs_result *fs, size_t n, uint64_t disk_size)
{
        for (size_t i = 0; i < n; i++) {
                if (past_end(&fs[i], disk_size))
                        continue;
                for (size_t j = 0; j < n; j++) {
                        if (j == i || past_end(&fs[j], disk_size))
                                continue;
                        if (fs[i].offset < fs[j].offset + fs[j].size &&
                            fs[j].offset < fs[i].offset + fs[i].size) {
                                snprintf(fs[i].message, sizeof(fs[i].message),
                                         "partition overlaps partition %s", fs[j].name);
                                break;
                        }
                }
        }
}

int qt_discover(const char *disk, uint64_t disk_size, char ret_pttype[16],
                struct qt_fs_result fs[QT_MAX_FILESYSTEMS], size_t *ret_n, struct qt_error *e)
{
        _cleanup_close_ int fd = open(disk, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return qt_error_set(e, QT_ERR_FAILED, errno, "cannot open %s: %m", disk);
        blkid_probe pr = blkid_new_probe();
        if (!pr || blkid_probe_set_device(pr, fd, 0, (blkid_loff_t)disk_size) < 0) {
                blkid_free_probe(pr);
                return qt_error_set(e, QT_ERR_FAILED, EIO, "libblkid cannot probe %s", disk);
        }
        blkid_probe_enable_partitions(pr, 1);
        blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);

        size_t n = 0;
        blkid_partlist list = blkid_probe_get_partitions(pr);
        blkid_parttable table = list ? blkid_partlist_get_table(list) : NULL;
        int count = list ? blkid_partlist_numof_partitions(list) : 0;

        if (!table || count <= 0) {
                snprintf(ret_pttype, 16, "none");
                add_fs(&fs[n], "disk", 0, disk_size);
                probe_fstype(fd, 0, disk_size, fs[n].fstype);
                n++;
        } else {
                snprintf(ret_pttype, 16, "%s", blkid_parttable_get_type(table));
                for (int i = 0; i < count && n < QT_MAX_FILESYSTEMS; i++) {
                        blkid_partition p = blkid_partlist_get_partition(list, i);
                        if (!p || blkid_partition_is_extended(p))
                                continue;
                        blkid_loff_t start = blkid_partition_get_start(p);
                        blkid_loff_t sectors = blkid_partition_get_size(p);
                        if (start < 0 || sectors <= 0)
                                continue;
                        char name[QT_FS_NAME_MAX];
                        snprintf(name, sizeof(name), "p%d", blkid_partition_get_partno(p));
                        add_fs(&fs[n], name, (uint64_t)start * 512u, (uint64_t)sectors * 512u);
                        /* A table may claim more than the disk has: report, never touch. */
                        if (past_end(&fs[n], disk_size))
                                snprintf(fs[n].message, sizeof(fs[n].message),
                                         "partition extends past the end of the disk");
                        else
                                probe_fstype(fd, fs[n].offset, fs[n].size, fs[n].fstype);
                        n++;
                }
                mark_overlaps(fs, n, disk_size);
        }
        blkid_free_probe(pr);
        *ret_n = n;
        return 0;
}

/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "discover.h"

#include <blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "layout.h"
#include "lvm-meta.h"
#include "util.h"

/* The filesystem (or swap, LUKS, LVM...) signature in the volume's range of the disk, with the
 * label and UUID it carries. */
static void probe_volume(int fd, struct qt_fs_result *fs)
{
        fs->fstype[0] = fs->label[0] = fs->uuid[0] = '\0';
        blkid_probe pr = blkid_new_probe();
        if (!pr)
                return;
        /* A volume in several places is probed in its first: every signature qtrim acts on
         * lies in a volume's first 64 KiB, and the bytes after that extent are not the next
         * bytes of the disk. */
        uint64_t size = fs->n_extents ? fs->extents[0].size : fs->size;
        if (blkid_probe_set_device(pr, fd, (blkid_loff_t)fs->offset, (blkid_loff_t)size) == 0) {
                blkid_probe_enable_superblocks(pr, 1);
                blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL |
                                                          BLKID_SUBLKS_UUID);
                static const struct {
                        const char *key;
                        size_t offset, size;
                } values[] = {
                    {"TYPE", offsetof(struct qt_fs_result, fstype), QT_FS_TYPE_MAX},
                    {"LABEL", offsetof(struct qt_fs_result, label), QT_FS_LABEL_MAX},
                    {"UUID", offsetof(struct qt_fs_result, uuid), QT_FS_UUID_MAX},
                };
                const char *value;
                if (blkid_do_safeprobe(pr) == 0)
                        for (size_t i = 0; i < ELEMENTSOF(values); i++)
                                if (blkid_probe_lookup_value(pr, values[i].key, &value, NULL) == 0)
                                        snprintf((char *)fs + values[i].offset, values[i].size,
                                                 "%s", value);
        }
        blkid_free_probe(pr);
}

static void add_fs(struct qt_fs_result *fs, const char *name, const char *kind, uint64_t offset,
                   uint64_t size)
{
        *fs = (struct qt_fs_result){.offset = offset, .size = size};
        snprintf(fs->name, sizeof(fs->name), "%s", name);
        snprintf(fs->kind, sizeof(fs->kind), "%s", kind);
        snprintf(fs->state, sizeof(fs->state), "found");
}

/* Metadata that lives outside every partition on purpose: on such a disk no gap is free. A
 * Windows dynamic disk keeps its LDM database in the last MiB of an MBR disk (type 0x42) or in
 * a GPT partition of its own; md (0.90, 1.0) and DDF RAID superblocks sit at the disk's end. */
#define GPT_TYPE_LDM_METADATA "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3"

static const char *gaps_forbidden(int fd, uint64_t disk_size, blkid_partlist list)
{
        int count = blkid_partlist_numof_partitions(list);
        for (int i = 0; i < count; i++) {
                blkid_partition p = blkid_partlist_get_partition(list, i);
                const char *type = p ? blkid_partition_get_type_string(p) : NULL;
                if (p && (blkid_partition_get_type(p) == 0x42 ||
                          (type && strcasecmp(type, GPT_TYPE_LDM_METADATA) == 0)))
                        return "a Windows dynamic disk (LDM) keeps its database outside the "
                               "partitions";
        }
        blkid_probe pr = blkid_new_probe();
        const char *raid = NULL, *type;
        if (pr && blkid_probe_set_device(pr, fd, 0, (blkid_loff_t)disk_size) == 0) {
                blkid_probe_enable_superblocks(pr, 1);
                blkid_probe_filter_superblocks_usage(pr, BLKID_FLTR_ONLYIN, BLKID_USAGE_RAID);
                blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE);
                /* -2: more than one; any is a reason */
                int r = blkid_do_safeprobe(pr);
                if (r == -2 || (r == 0 && blkid_probe_lookup_value(pr, "TYPE", &type, NULL) == 0))
                        raid = "a RAID superblock on the whole disk may lie outside the partitions";
        }
        blkid_free_probe(pr);
        return raid;
}

static int count_logicals(blkid_partlist list)
{
        int n = 0, count = blkid_partlist_numof_partitions(list);
        for (int i = 0; i < count; i++) {
                blkid_partition p = blkid_partlist_get_partition(list, i);
                n += p && blkid_partition_is_logical(p);
        }
        return n;
}

static int read_sector(void *ctx, uint8_t buf[512], uint64_t offset)
{
        ssize_t got = pread(*(const int *)ctx, buf, 512, (off_t)offset);
        return got == 512 ? 0 : got < 0 ? -errno : -EIO;
}

/* The used space of an extended partition: its EBRs (its logical partitions are listed on
 * their own), or all of it when the chain is not the one libblkid read. */
static size_t extended_used(int fd, uint64_t offset, uint64_t size, int logicals,
                            struct qt_range *used, size_t room)
{
        uint64_t ebrs[QT_MAX_FILESYSTEMS];
        size_t n = qt_mbr_ebr_chain(read_sector, &fd, offset, size, ebrs, ELEMENTSOF(ebrs));
        if (n != (size_t)logicals || n > room) {
                if (room == 0)
                        return 0;
                used[0] = (struct qt_range){offset, size};
                return 1;
        }
        for (size_t i = 0; i < n; i++)
                used[i] = (struct qt_range){ebrs[i], 512};
        return n;
}

/* The space outside the partitions, as volumes of kind "gap"; or one record saying why there is
 * none to discard. used: every partition entry and EBR, or NULL if not all could be kept. */
static size_t add_gaps(int fd, uint64_t disk_size, const char *pttype, blkid_partlist list,
                       const struct qt_range *used, size_t n_used, struct qt_fs_result *fs,
                       size_t room)
{
        const char *why = used ? gaps_forbidden(fd, disk_size, list)
                               : "more partitions than qtrim keeps track of";
        uint64_t end = disk_size;
        if (!why && strcmp(pttype, "gpt") == 0) {
                uint8_t hdr[QT_GPT_HEADER_READ_SIZE];
                ssize_t got = pread(fd, hdr, sizeof(hdr), 0);
                if (got < 0 || !qt_gpt_tail(hdr, (size_t)got, disk_size, &end))
                        why = "the GPT header cannot be read, so its backup cannot be located";
        }
        if (why) {
                if (room == 0)
                        return 0;
                add_fs(&fs[0], "gaps", "gap", 0, 0);
                snprintf(fs[0].message, sizeof(fs[0].message), "not discarded: %s", why);
                return 1;
        }
        struct qt_range gaps[QT_GAPS_MAX];
        size_t n = qt_layout_gaps(used, n_used, end, gaps);
        if (n > room)
                n = room;
        for (size_t i = 0; i < n; i++) {
                char name[QT_FS_NAME_MAX];
                snprintf(name, sizeof(name), "gap%zu", i + 1);
                add_fs(&fs[i], name, "gap", gaps[i].offset, gaps[i].size);
        }
        return n;
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
                                         "partition overlaps partition %.32s", fs[j].name);
                                break;
                        }
                }
        }
}

/* LVM: the VGs whose PVs are on this disk, read with lvm-meta.h (nothing written, the host's
 * LVM never involved). Each visible linear LV becomes a volume of kind "lv" at the bytes of the
 * disk its extents are, each range of free extents one of kind "free". */

struct pv_read {
        int fd;
        uint64_t base; /* the PV's offset in the disk */
};

static int read_pv(void *ctx, void *buf, size_t len, uint64_t offset)
{
        const struct pv_read *p = ctx;
        ssize_t got = pread(p->fd, buf, len, (off_t)(p->base + offset));
        if (got < 0)
                return -errno;
        return (size_t)got == len ? 0 : -EIO;
}

/* A PV found on the disk: the volume record it is, and what its label says. */
struct found_pv {
        struct qt_fs_result *volume;
        struct qt_lvm_pv_label label;
        bool done;  /* its VG was handled already */
        bool clone; /* another label carries its PV UUID: none of the two is used */
};

static const char *lv_skip_reason(int kind)
{
        switch (kind) {
        case QT_LVM_LV_THIN:
                return "a thin LV: its blocks live in its pool, which qtrim does not trim yet";
        case QT_LVM_LV_THIN_POOL:
                return "a thin pool: not trimmed yet";
        case QT_LVM_LV_SNAPSHOT:
                return "a snapshot: trimming it would change what it records";
        case QT_LVM_LV_ORIGIN:
                return "the origin of a snapshot: a discard under the snapshot would change "
                       "what it records";
        case QT_LVM_LV_STRIPED:
                return "a striped LV: not trimmed yet";
        case QT_LVM_LV_RAID:
        case QT_LVM_LV_MIRROR:
                return "a RAID or mirror LV: not trimmed yet";
        case QT_LVM_LV_CACHE:
                return "a cached LV: not trimmed yet";
        default:
                return "an LV of a kind qtrim does not trim";
        }
}

/* The bytes of the disk that extents [start, +count) of PV i of vg are, if they lie within its
 * volume. */
static bool extents_range(const struct qt_lvm_vg *vg, const struct found_pv *pv, unsigned i,
                          uint64_t start, uint64_t count, struct qt_range *ret)
{
        const struct qt_fs_result *v = pv->volume;
        const uint64_t sector = 512, ext = vg->extent_size * sector;
        uint64_t pe_start = vg->pvs[i].pe_start;
        if (pe_start > v->size / sector || start > UINT64_MAX / ext || count > UINT64_MAX / ext)
                return false;
        uint64_t off = pe_start * sector, from = start * ext, len = count * ext;
        if (from > v->size - off || len > v->size - off - from)
                return false;
        *ret = (struct qt_range){v->offset + off + from, len};
        return true;
}

/* The bytes of a linear LV: its segments as ranges of the disk, one range for segments that
 * follow each other on a PV (lvextend usually places them so). 1, or 0 for an LV in more places
 * than a volume holds, -1 for extents outside their PV. */
static int lv_extents(const struct qt_lvm_vg *vg, const struct found_pv *by_pv[],
                      const struct qt_lvm_lv *lv, struct qt_fs_result *v)
{
        if (lv->n_segments == 0)
                return -1;
        v->n_extents = 0;
        v->size = 0;
        for (size_t k = 0; k < lv->n_segments; k++) {
                const struct qt_lvm_segment *g = &lv->segments[k];
                const struct found_pv *pv = by_pv[g->pv];
                struct qt_range r;
                if (!pv || !extents_range(vg, pv, g->pv, g->pv_start_extent, g->extent_count, &r))
                        return -1;
                struct qt_range *last = v->n_extents ? &v->extents[v->n_extents - 1] : NULL;
                if (last && last->offset + last->size == r.offset)
                        last->size += r.size;
                else if (v->n_extents == QT_FS_EXTENTS_MAX)
                        return 0;
                else
                        v->extents[v->n_extents++] = r;
                v->size += r.size;
        }
        v->offset = v->extents[0].offset;
        if (v->n_extents == 1)
                v->n_extents = 0; /* one range: a volume like any other */
        return 1;
}

static void add_vg_volumes(int fd, const struct qt_lvm_vg *vg, const struct found_pv *by_pv[],
                           struct qt_fs_result *fs, size_t *n)
{
        for (size_t i = 0; i < vg->n_lvs && *n < QT_MAX_FILESYSTEMS; i++) {
                const struct qt_lvm_lv *lv = &vg->lvs[i];
                if (!lv->visible)
                        continue; /* part of another LV, which says what it is */
                char name[QT_FS_NAME_MAX];
                snprintf(name, sizeof(name), "%.60s/%.60s", vg->name, lv->name);
                struct qt_fs_result *v = &fs[*n];
                add_fs(v, name, "lv", 0, 0);
                int r;
                if (lv->kind != QT_LVM_LV_LINEAR) {
                        snprintf(v->message, sizeof(v->message), "%s", lv_skip_reason(lv->kind));
                } else if ((r = lv_extents(vg, by_pv, lv, v)) <= 0) {
                        v->offset = v->size = 0;
                        v->n_extents = 0;
                        if (r == 0)
                                snprintf(v->message, sizeof(v->message),
                                         "its segments lie in more than %d places; left alone",
                                         QT_FS_EXTENTS_MAX);
                        else
                                snprintf(v->message, sizeof(v->message),
                                         "its extents lie outside its PV's partition; left alone");
                } else {
                        probe_volume(fd, v);
                }
                (*n)++;
        }
        unsigned k = 0;
        for (unsigned p = 0; p < vg->n_pvs; p++) {
                struct qt_lvm_extent_range *free_ranges = NULL;
                ssize_t m = by_pv[p] ? qt_lvm_free_extents(vg, p, &free_ranges) : 0;
                for (ssize_t j = 0; j < m && *n < QT_MAX_FILESYSTEMS; j++) {
                        struct qt_range range;
                        if (!extents_range(vg, by_pv[p], p, free_ranges[j].start,
                                           free_ranges[j].count, &range))
                                continue;
                        char name[QT_FS_NAME_MAX];
                        snprintf(name, sizeof(name), "%.60s free%u", vg->name, ++k);
                        add_fs(&fs[(*n)++], name, "free", range.offset, range.size);
                }
                free(free_ranges);
        }
}

/* Handles the VG whose metadata pvs[first] holds, with every PV of it found on this disk. */
static void add_vg(int fd, struct found_pv *pvs, size_t n_pvs, size_t first,
                   struct qt_fs_result *fs, size_t *n)
{
        _cleanup_(qt_lvm_vg_done) struct qt_lvm_vg vg = {};
        char why[QT_FS_MESSAGE_MAX] = "";
        struct found_pv *self = &pvs[first];
        self->done = true;
        int r = qt_lvm_parse_metadata(self->label.metadata, self->label.metadata_len, &vg, why,
                                      sizeof(why));
        if (r < 0) {
                snprintf(self->volume->message, sizeof(self->volume->message),
                         "LVM metadata refused: %s", r == -ENOMEM ? "out of memory" : why);
                return;
        }
        _cleanup_free_ const struct found_pv **by_pv = calloc(vg.n_pvs, sizeof(*by_pv));
        const char *missing = NULL;
        for (size_t p = 0; by_pv && p < vg.n_pvs; p++) {
                for (size_t j = 0; j < n_pvs; j++)
                        if (!pvs[j].clone && strcmp(pvs[j].label.pv_uuid, vg.pvs[p].uuid) == 0) {
                                by_pv[p] = &pvs[j];
                                pvs[j].done = true;
                        }
                if (!by_pv[p] && !missing)
                        missing = vg.pvs[p].id;
        }
        /* lvm2 writes the same text to every PV of a VG; PVs that disagree are a VG half
         * changed, or crafted: which one says where the LVs are is not known. Extents start
         * where each PV's label says its data does: never over its label and metadata area. */
        bool disagree = false, over_metadata = false;
        for (size_t p = 0; by_pv && !missing && p < vg.n_pvs; p++) {
                const struct qt_lvm_pv_label *l = &by_pv[p]->label;
                disagree |= l->metadata &&
                            (l->metadata_len != self->label.metadata_len ||
                             memcmp(l->metadata, self->label.metadata, l->metadata_len) != 0);
                over_metadata |= vg.pvs[p].pe_start < l->data_offset / 512 ||
                                 vg.pvs[p].pe_start < QT_LVM_LABEL_SECTORS;
        }
        if (!by_pv || missing || disagree || over_metadata)
                snprintf(
                    self->volume->message, sizeof(self->volume->message), "VG %.64s: %s", vg.name,
                    !by_pv     ? "out of memory"
                    : missing  ? "a PV of it is not on this disk; its LVs are left alone"
                    : disagree ? "its PVs hold different metadata; its LVs are left alone"
                               : "its extents start over a PV's label or metadata; left alone");
        else
                add_vg_volumes(fd, &vg, by_pv, fs, n);
}

static void add_lvm_volumes(int fd, struct qt_fs_result *fs, size_t *n)
{
        struct found_pv pvs[QT_MAX_FILESYSTEMS];
        size_t n_pvs = 0, n_volumes = *n;
        for (size_t i = 0; i < n_volumes; i++) {
                if (strcmp(fs[i].fstype, "LVM2_member") != 0 || fs[i].message[0])
                        continue;
                struct pv_read ctx = {fd, fs[i].offset};
                char why[QT_FS_MESSAGE_MAX] = "";
                struct found_pv *pv = &pvs[n_pvs];
                *pv = (struct found_pv){.volume = &fs[i]};
                int r = qt_lvm_read_label(read_pv, &ctx, fs[i].size, &pv->label, why, sizeof(why));
                if (r <= 0)
                        snprintf(fs[i].message, sizeof(fs[i].message), "LVM label refused: %s",
                                 r == 0          ? "no label"
                                 : r == -EUCLEAN ? why
                                                 : strerror(-r));
                else
                        n_pvs++;
        }
        /* Two labels with one PV UUID: a copied PV, or a guest that wants the extents of one
         * mapped onto the bytes of the other. Neither is trusted. */
        for (size_t j = 0; j < n_pvs; j++)
                for (size_t k = 0; k < n_pvs; k++)
                        if (k != j && strcmp(pvs[j].label.pv_uuid, pvs[k].label.pv_uuid) == 0) {
                                pvs[j].clone = pvs[j].done = true;
                                snprintf(pvs[j].volume->message, sizeof(pvs[j].volume->message),
                                         "its LVM PV UUID is also on %.32s (a copied PV?); its "
                                         "VG is left alone",
                                         pvs[k].volume->name);
                        }
        /* One VG at a time, from the metadata of one of its PVs (the others must hold the same
         * text; a PV without metadata areas is handled with the VG that names it). */
        for (;;) {
                size_t best = n_pvs;
                for (size_t j = 0; j < n_pvs; j++)
                        if (!pvs[j].done && pvs[j].label.metadata &&
                            (best == n_pvs || pvs[j].label.metadata_len > 0))
                                best = j;
                if (best == n_pvs)
                        break;
                add_vg(fd, pvs, n_pvs, best, fs, n);
        }
        for (size_t j = 0; j < n_pvs; j++) {
                if (!pvs[j].done)
                        snprintf(pvs[j].volume->message, sizeof(pvs[j].volume->message),
                                 "an LVM PV without metadata of its own whose VG is not on "
                                 "this disk");
                qt_lvm_pv_label_done(&pvs[j].label);
        }
}

/* Names are how a volume's record is found again (report.h): one that repeats an earlier one
 * (LV names cut to fit) is named by its index instead, a name no other volume can have (LVs
 * have a slash in theirs, the others are p1, disk, gap1, "VG free1"). */
static void make_names_unique(struct qt_fs_result *fs, size_t n)
{
        for (size_t i = 1; i < n; i++)
                for (size_t j = 0; j < i; j++)
                        if (strcmp(fs[i].name, fs[j].name) == 0) {
                                snprintf(fs[i].name, sizeof(fs[i].name), "volume%zu", i);
                                break;
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
                add_fs(&fs[n], "disk", "disk", 0, disk_size);
                probe_volume(fd, &fs[n]);
                n++;
                add_lvm_volumes(fd, fs, &n);
        } else {
                /* Every partition and EBR, or no gap is known for sure. */
                struct qt_range used[2 * QT_MAX_FILESYSTEMS];
                size_t n_used = 0;
                bool used_overflow = false;
                snprintf(ret_pttype, 16, "%s", blkid_parttable_get_type(table));
                for (int i = 0; i < count; i++) {
                        blkid_partition p = blkid_partlist_get_partition(list, i);
                        if (!p)
                                continue;
                        blkid_loff_t start = blkid_partition_get_start(p);
                        blkid_loff_t sectors = blkid_partition_get_size(p);
                        if (start < 0 || sectors <= 0)
                                continue;
                        /* Every entry is space of the guest's; of an extended partition,
                         * the EBRs in it. */
                        if (blkid_partition_is_extended(p)) {
                                size_t k = extended_used(
                                    fd, (uint64_t)start * 512u, (uint64_t)sectors * 512u,
                                    count_logicals(list), used + n_used, ELEMENTSOF(used) - n_used);
                                used_overflow |= k == 0;
                                n_used += k;
                                continue;
                        }
                        if (n_used == ELEMENTSOF(used))
                                used_overflow = true;
                        else
                                used[n_used++] = (struct qt_range){(uint64_t)start * 512u,
                                                                   (uint64_t)sectors * 512u};
                        if (n == QT_MAX_FILESYSTEMS)
                                continue; /* in the used space, but not listed */
                        char name[QT_FS_NAME_MAX];
                        snprintf(name, sizeof(name), "p%d", blkid_partition_get_partno(p));
                        add_fs(&fs[n], name, "partition", (uint64_t)start * 512u,
                               (uint64_t)sectors * 512u);
                        fs[n].partno = blkid_partition_get_partno(p);
                        /* A table may claim more than the disk has: report, never touch. */
                        if (past_end(&fs[n], disk_size))
                                snprintf(fs[n].message, sizeof(fs[n].message),
                                         "partition extends past the end of the disk");
                        else
                                probe_volume(fd, &fs[n]);
                        n++;
                }
                mark_overlaps(fs, n, disk_size);
                add_lvm_volumes(fd, fs, &n);
                n += add_gaps(fd, disk_size, ret_pttype, list, used_overflow ? NULL : used, n_used,
                              fs + n, QT_MAX_FILESYSTEMS - n);
        }
        blkid_free_probe(pr);
        make_names_unique(fs, n);
        *ret_n = n;
        return 0;
}

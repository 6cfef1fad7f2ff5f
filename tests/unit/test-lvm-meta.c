/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The LVM2 reader against PVs that lvm2 itself wrote, on loop devices over sparse files, and
 * against what lvm2's own pvs and lvs say of them; then against hand-written hostile text. The
 * lvm2 used here sees only the test's loop devices: every call runs with a private
 * LVM_SYSTEM_DIR (its own lvm.conf: a filter of those devices only, no udev, no hints, no
 * devices file, no activation, no backups) and --devices, as the shared LAYOUT-TESTING notes say.
 * Needs root (losetup) and lvm2.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "lvm-meta.h"
#include "util.h"

/* Made and removed by the parent (an unchecked fixture), so a test that fails or times out
 * still has its loop devices detached and its files removed: the teardown detaches every loop
 * device whose backing file lies below scratch, and nothing else. */
static char scratch[PATH_MAX];

static void scratch_setup(void)
{
        snprintf(scratch, sizeof(scratch), "/var/tmp/qtrim-lvm-meta.XXXXXX");
        ck_assert_msg(mkdtemp(scratch), "mkdtemp: %m");
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        return remove(path) < 0 ? -1 : 0;
}

static void scratch_teardown(void)
{
        if (!scratch[0])
                return;
        char cmd[PATH_MAX + 256];
        snprintf(cmd, sizeof(cmd),
                 "losetup -n -O NAME,BACK-FILE | while read -r dev file; do "
                 "case $file in '%s'/*) losetup -d \"$dev\";; esac; done",
                 scratch);
        ck_assert_int_eq(system(cmd), 0);
        ck_assert_msg(nftw(scratch, remove_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) == 0,
                      "cannot remove %s: %m", scratch);
        scratch[0] = '\0';
}

/* Runs a shell command line; the test fails unless it exits 0. With ret, its stdout. */
static void sh(char **ret, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sh(char **ret, const char *fmt, ...)
{
        _cleanup_free_ char *cmd = NULL;
        va_list ap;
        va_start(ap, fmt);
        ck_assert_int_ge(vasprintf(&cmd, fmt, ap), 0);
        va_end(ap);
        _cleanup_free_ char *out = NULL;
        size_t size = 0;
        FILE *f = popen(cmd, "r");
        ck_assert_ptr_nonnull(f);
        FILE *mem = open_memstream(&out, &size);
        ck_assert_ptr_nonnull(mem);
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
                fwrite(buf, 1, n, mem);
        fclose(mem);
        int status = pclose(f);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "`%s` failed (status %d)", cmd,
                      status);
        if (ret)
                *ret = TAKE_PTR(out);
}

/* A guest's disks: sparse files on loop devices, and a private lvm2 that sees only them. */
#define DISKS_MAX 2
struct guest {
        char dir[PATH_MAX];
        char file[DISKS_MAX][PATH_MAX];
        char dev[DISKS_MAX][32];
        int n;
        char devices[DISKS_MAX * 48]; /* " --devices /dev/loopN" for each */
};

static void guest_make(struct guest *g, int n, unsigned mib)
{
        memset(g, 0, sizeof(*g));
        int n_ = snprintf(g->dir, sizeof(g->dir), "%s/t.XXXXXX", scratch);
        ck_assert(n_ > 0 && (size_t)n_ < sizeof(g->dir));
        ck_assert_msg(mkdtemp(g->dir), "mkdtemp: %m");
        _cleanup_free_ char *filter = NULL;
        for (int i = 0; i < n; i++) {
                n_ = snprintf(g->file[i], sizeof(g->file[i]), "%s/disk%d.img", g->dir, i);
                ck_assert(n_ > 0 && (size_t)n_ < sizeof(g->file[i]));
                _cleanup_free_ char *out = NULL;
                sh(&out, "truncate -s %uM '%s' && losetup -f --show '%s'", mib, g->file[i],
                   g->file[i]);
                out[strcspn(out, "\n")] = '\0';
                snprintf(g->dev[i], sizeof(g->dev[i]), "%s", out);
                snprintf(g->devices + strlen(g->devices), sizeof(g->devices) - strlen(g->devices),
                         " --devices %s", g->dev[i]);
                char *f = NULL;
                ck_assert_int_ge(asprintf(&f, "%s\"a|^%s$|\", ", filter ?: "", g->dev[i]), 0);
                free(filter);
                filter = f;
        }
        g->n = n;
        sh(NULL,
           "mkdir -p '%s/lvm/lock' && cat >'%s/lvm/lvm.conf' <<'EOF'\n"
           "devices {\n"
           "  filter = [ %s\"r|.*|\" ]\n"
           "  global_filter = [ %s\"r|.*|\" ]\n"
           "  use_devicesfile = 0\n"
           "  obtain_device_list_from_udev = 0\n"
           "  hints = \"none\"\n"
           "  scan_lvs = 0\n"
           "  md_component_detection = 0\n"
           "  multipath_component_detection = 0\n"
           "  fw_raid_component_detection = 0\n"
           "}\n"
           "global {\n"
           "  activation = 0\n"
           "  locking_dir = \"%s/lvm/lock\"\n"
           "  event_activation = 0\n"
           "  use_lvmlockd = 0\n"
           "}\n"
           "backup {\n  backup = 0\n  archive = 0\n}\n"
           "activation {\n  udev_sync = 0\n  udev_rules = 0\n  monitoring = 0\n}\n"
           "EOF",
           g->dir, g->dir, filter, filter, g->dir);
}

/* Runs `lvm COMMAND --devices ... ARGS` of the guest's private lvm2; with ret, its stdout. */
static void lvm(struct guest *g, char **ret, const char *command, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void lvm(struct guest *g, char **ret, const char *command, const char *fmt, ...)
{
        _cleanup_free_ char *args = NULL;
        va_list ap;
        va_start(ap, fmt);
        ck_assert_int_ge(vasprintf(&args, fmt, ap), 0);
        va_end(ap);
        sh(ret, "LVM_SYSTEM_DIR='%s/lvm' LVM_SUPPRESS_FD_WARNINGS=1 lvm %s%s %s 2>/dev/null",
           g->dir, command, g->devices, args);
}

/* The device of a PV, read through the reader's callback; patches make it damaged. */
struct dev {
        int fd;
        uint64_t size;
        int n_patches;
        uint64_t patch_at[4];
        uint8_t patch[4];
};

static int dev_read(void *ctx, void *buf, size_t len, uint64_t offset)
{
        struct dev *d = ctx;
        ck_assert_msg(offset <= d->size && len <= d->size - offset, "read past the device");
        ssize_t n = pread(d->fd, buf, len, (off_t)offset);
        if (n < 0)
                return -errno;
        if ((size_t)n != len)
                return -EIO;
        for (int i = 0; i < d->n_patches; i++)
                if (d->patch_at[i] >= offset && d->patch_at[i] < offset + len)
                        ((uint8_t *)buf)[d->patch_at[i] - offset] = d->patch[i];
        return 0;
}

static void dev_open(struct dev *d, const char *file)
{
        memset(d, 0, sizeof(*d));
        d->fd = open(file, O_RDONLY | O_CLOEXEC);
        ck_assert_msg(d->fd >= 0, "%s: %m", file);
        struct stat st;
        ck_assert_int_eq(fstat(d->fd, &st), 0);
        d->size = (uint64_t)st.st_size;
}

static void read_pv(struct guest *g, int disk, struct qt_lvm_pv_label *ret)
{
        struct dev d;
        char why[256] = "";
        dev_open(&d, g->file[disk]);
        int r = qt_lvm_read_label(dev_read, &d, d.size, ret, why, sizeof(why));
        close(d.fd);
        ck_assert_msg(r == 1, "%s: %d %s", g->file[disk], r, why);
}

static void parse(const struct qt_lvm_pv_label *l, struct qt_lvm_vg *ret)
{
        char why[256] = "";
        ck_assert_ptr_nonnull(l->metadata);
        int r = qt_lvm_parse_metadata(l->metadata, l->metadata_len, ret, why, sizeof(why));
        ck_assert_msg(r == 0, "%d %s", r, why);
}

static void undash(char *s)
{
        char *o = s;
        for (; *s; s++)
                if (*s != '-')
                        *o++ = *s;
        *o = '\0';
}

static void strip_brackets(char *s)
{
        size_t n = strlen(s);
        if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
                memmove(s, s + 1, n - 2);
                s[n - 2] = '\0';
        }
}

static long pv_by_uuid(const struct qt_lvm_vg *vg, const char *uuid)
{
        for (size_t i = 0; i < vg->n_pvs; i++)
                if (strcmp(vg->pvs[i].uuid, uuid) == 0)
                        return (long)i;
        return -1;
}

static const struct qt_lvm_lv *lv_by_name(const struct qt_lvm_vg *vg, const char *name)
{
        for (size_t i = 0; i < vg->n_lvs; i++)
                if (strcmp(vg->lvs[i].name, name) == 0)
                        return &vg->lvs[i];
        ck_abort_msg("no LV %s", name);
        return NULL;
}

/*
 * What lvm2 says against what the reader made of the same PVs: each PV's pe_start and
 * pe_count (pvs), every PV segment, used by which LV or free (pvs --segments), and every linear
 * segment's mapping (lvs --segments). labels[] are the PVs' labels as read.
 */
static void compare_with_lvm(struct guest *g, const struct qt_lvm_vg *vg,
                             const struct qt_lvm_pv_label *labels)
{
        char devname[DISKS_MAX][32], devuuid[DISKS_MAX][40];
        _cleanup_free_ char *pvs = NULL, *pvsegs = NULL, *lvsegs = NULL;
        lvm(g, &pvs, "pvs",
            "--noheadings --separator ';' --units b --nosuffix -o pv_name,pv_uuid,pe_start,"
            "pv_pe_count");
        int n_devs = 0;
        for (char *save = NULL, *line = strtok_r(pvs, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
                char name[32], uuid[40];
                unsigned long long pe_start, pe_count;
                ck_assert_int_eq(
                    sscanf(line, " %31[^;];%39[^;];%llu;%llu", name, uuid, &pe_start, &pe_count),
                    4);
                undash(uuid);
                long pv = pv_by_uuid(vg, uuid);
                ck_assert_msg(pv >= 0, "lvm's PV %s is not in the parsed VG", uuid);
                ck_assert_uint_eq(vg->pvs[pv].pe_start * 512, pe_start);
                ck_assert_uint_eq(vg->pvs[pv].pe_count, pe_count);
                for (int i = 0; i < g->n; i++)
                        if (strcmp(g->dev[i], name) == 0) {
                                ck_assert_str_eq(labels[i].pv_uuid, uuid);
                                ck_assert_uint_eq(labels[i].data_offset, pe_start);
                        }
                ck_assert_int_lt(n_devs, DISKS_MAX);
                snprintf(devname[n_devs], sizeof(devname[n_devs]), "%s", name);
                snprintf(devuuid[n_devs], sizeof(devuuid[n_devs]), "%s", uuid);
                n_devs++;
        }
        ck_assert_uint_eq((size_t)n_devs, vg->n_pvs);

        /* Each PV segment lvm2 lists is, in order, either one free range or one area. */
        lvm(g, &pvsegs, "pvs",
            "--segments --noheadings --separator ';' -o pv_uuid,pvseg_start,pvseg_size,lv_name");
        size_t used = 0, free_seen[DISKS_MAX] = {};
        for (char *save = NULL, *line = strtok_r(pvsegs, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
                char uuid[40], lv[QT_LVM_NAME_MAX + 2] = "";
                unsigned long long start, size;
                ck_assert_int_ge(sscanf(line, " %39[^;];%llu;%llu;%129s", uuid, &start, &size, lv),
                                 3);
                undash(uuid);
                strip_brackets(lv);
                long pv = pv_by_uuid(vg, uuid);
                ck_assert_int_ge(pv, 0);
                if (!lv[0]) {
                        _cleanup_free_ struct qt_lvm_extent_range *ranges = NULL;
                        ssize_t n = qt_lvm_free_extents(vg, (unsigned)pv, &ranges);
                        ck_assert_int_gt(n, (ssize_t)free_seen[pv]);
                        ck_assert_uint_eq(ranges[free_seen[pv]].start, start);
                        ck_assert_uint_eq(ranges[free_seen[pv]].count, size);
                        free_seen[pv]++;
                        continue;
                }
                bool found = false;
                for (size_t i = 0; i < vg->n_areas; i++) {
                        const struct qt_lvm_area *a = &vg->areas[i];
                        if (a->pv == (unsigned)pv && a->start == start) {
                                ck_assert_uint_eq(a->count, size);
                                ck_assert_str_eq(vg->lvs[a->lv].name, lv);
                                found = true;
                        }
                }
                ck_assert_msg(found, "lvm's segment %s:%llu of %s not found", uuid, start, lv);
                used++;
        }
        ck_assert_uint_eq(used, vg->n_areas);
        for (size_t pv = 0; pv < vg->n_pvs; pv++) {
                _cleanup_free_ struct qt_lvm_extent_range *ranges = NULL;
                ck_assert_int_eq(qt_lvm_free_extents(vg, (unsigned)pv, &ranges),
                                 (ssize_t)free_seen[pv]);
        }

        /* Every linear segment of lvs is the segment of a linear LV, or of one that another
         * is built on. */
        lvm(g, &lvsegs, "lvs",
            "-a --segments --noheadings --separator ';' -o "
            "lv_name,seg_start_pe,seg_size_pe,segtype,seg_pe_ranges");
        for (char *save = NULL, *line = strtok_r(lvsegs, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
                char name[QT_LVM_NAME_MAX + 2], type[32], dev[32] = "";
                unsigned long long start, size, pe_first = 0, pe_last = 0;
                ck_assert_int_ge(sscanf(line, " %129[^;];%llu;%llu;%31[^;];%31[^:]:%llu-%llu", name,
                                        &start, &size, type, dev, &pe_first, &pe_last),
                                 4);
                strip_brackets(name);
                const struct qt_lvm_lv *lv = lv_by_name(vg, name);
                if (strcmp(type, "linear") != 0) {
                        ck_assert_int_ne(lv->kind, QT_LVM_LV_LINEAR);
                        ck_assert_str_eq(lv->segtype, type);
                        continue;
                }
                if (lv->kind != QT_LVM_LV_LINEAR)
                        continue;
                long pv = -1;
                for (int i = 0; i < n_devs; i++)
                        if (strcmp(devname[i], dev) == 0)
                                pv = pv_by_uuid(vg, devuuid[i]);
                ck_assert_int_ge(pv, 0);
                bool found = false;
                for (size_t i = 0; i < lv->n_segments; i++) {
                        const struct qt_lvm_segment *s = &lv->segments[i];
                        if (s->start_extent != start)
                                continue;
                        ck_assert_uint_eq(s->extent_count, size);
                        ck_assert_uint_eq(s->pv, (unsigned)pv);
                        ck_assert_uint_eq(s->pv_start_extent, pe_first);
                        ck_assert_uint_eq(pe_last - pe_first + 1, size);
                        found = true;
                }
                ck_assert_msg(found, "%s: lvm's segment at %llu not parsed", name, start);
        }
}

#define LVCREATE "--zero n --wipesignatures n -y"

START_TEST(test_root_swap)
{
        struct guest g;
        guest_make(&g, 1, 64);
        lvm(&g, NULL, "pvcreate", "%s", g.dev[0]);
        lvm(&g, NULL, "vgcreate", "-s 1M guestvg %s", g.dev[0]);
        lvm(&g, NULL, "lvcreate", LVCREATE " -n root -L 24M guestvg");
        lvm(&g, NULL, "lvcreate", LVCREATE " -n scratch -L 8M guestvg");
        lvm(&g, NULL, "lvcreate", LVCREATE " -n swap -L 8M guestvg");
        lvm(&g, NULL, "lvremove", "-y guestvg/scratch");

        struct qt_lvm_pv_label l;
        struct qt_lvm_vg vg;
        read_pv(&g, 0, &l);
        parse(&l, &vg);
        ck_assert_str_eq(vg.name, "guestvg");
        ck_assert_uint_eq(vg.extent_size, 2048);
        ck_assert_uint_eq(vg.n_pvs, 1);
        ck_assert_str_eq(vg.pvs[0].uuid, l.pv_uuid);
        ck_assert_uint_eq(vg.n_lvs, 2);
        const struct qt_lvm_lv *root = lv_by_name(&vg, "root");
        ck_assert(root->visible);
        ck_assert_int_eq(root->kind, QT_LVM_LV_LINEAR);
        ck_assert_uint_eq(root->n_segments, 1);
        ck_assert_uint_eq(root->segments[0].extent_count, 24);
        ck_assert_int_eq(lv_by_name(&vg, "swap")->kind, QT_LVM_LV_LINEAR);

        /* Where scratch was, and after swap to the end. */
        _cleanup_free_ struct qt_lvm_extent_range *ranges = NULL;
        ck_assert_int_eq(qt_lvm_free_extents(&vg, 0, &ranges), 2);
        ck_assert_uint_eq(ranges[0].start, 24);
        ck_assert_uint_eq(ranges[0].count, 8);
        ck_assert_uint_eq(ranges[1].start, 40);
        ck_assert_uint_eq(ranges[1].count, vg.pvs[0].pe_count - 40);
        compare_with_lvm(&g, &vg, &l);

        _cleanup_free_ char *seqno = NULL;
        lvm(&g, &seqno, "vgs", "--noheadings -o seqno guestvg");
        ck_assert_uint_eq(vg.seqno, strtoull(seqno, NULL, 10));
        qt_lvm_vg_done(&vg);
        qt_lvm_pv_label_done(&l);
}
END_TEST

START_TEST(test_two_pvs)
{
        struct guest g;
        guest_make(&g, 2, 32);
        lvm(&g, NULL, "pvcreate", "%s %s", g.dev[0], g.dev[1]);
        lvm(&g, NULL, "vgcreate", "-s 4M vg2 %s %s", g.dev[0], g.dev[1]);
        lvm(&g, NULL, "lvcreate", LVCREATE " -n small -L 8M vg2 %s", g.dev[0]);
        /* More than is left on the first PV: a second segment on the other one. */
        lvm(&g, NULL, "lvcreate", LVCREATE " -n big -L 32M vg2 %s %s", g.dev[0], g.dev[1]);

        struct qt_lvm_pv_label l[2];
        struct qt_lvm_vg vg, vg1;
        read_pv(&g, 0, &l[0]);
        read_pv(&g, 1, &l[1]);
        ck_assert_str_ne(l[0].pv_uuid, l[1].pv_uuid);
        /* Both PVs carry the VG's metadata, the same. */
        ck_assert_str_eq(l[0].metadata, l[1].metadata);
        parse(&l[0], &vg);
        parse(&l[1], &vg1);
        ck_assert_uint_eq(vg.seqno, vg1.seqno);
        const struct qt_lvm_lv *big = lv_by_name(&vg, "big");
        ck_assert_int_eq(big->kind, QT_LVM_LV_LINEAR);
        ck_assert_uint_eq(big->n_segments, 2);
        ck_assert_uint_ne(big->segments[0].pv, big->segments[1].pv);
        ck_assert_uint_eq(big->segments[1].start_extent, big->segments[0].extent_count);
        ck_assert_uint_eq(big->segments[0].extent_count + big->segments[1].extent_count, 8);
        compare_with_lvm(&g, &vg, l);
        qt_lvm_vg_done(&vg);
        qt_lvm_vg_done(&vg1);
        qt_lvm_pv_label_done(&l[0]);
        qt_lvm_pv_label_done(&l[1]);
}
END_TEST

/* lvm2 creates neither thin pools nor snapshots without device-mapper; vgcfgrestore writes
 * them from text, as lvcreate would have (the layout of lvm2 2.03's own output). */
static const char thin_and_snapshot[] =
    "\t\tpool {\n\t\t\tid = \"pOoLpO-oLpO-oLpO-oLpO-oLpO-oLpO-oLpOo1\"\n"
    "\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\t\t\tflags = []\n"
    "\t\t\tsegment_count = 1\n\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n"
    "\t\t\t\textent_count = 8\n\t\t\t\ttype = \"thin-pool\"\n"
    "\t\t\t\tmetadata = \"pool_tmeta\"\n\t\t\t\tpool = \"pool_tdata\"\n"
    "\t\t\t\ttransaction_id = 1\n\t\t\t\tchunk_size = 128\n"
    "\t\t\t\tdiscards = \"passdown\"\n\t\t\t\tzero_new_blocks = 1\n\t\t\t}\n\t\t}\n"
    "\t\tthin1 {\n\t\t\tid = \"tHiNtH-iNtH-iNtH-iNtH-iNtH-iNtH-iNtHi1\"\n"
    "\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\t\t\tflags = []\n"
    "\t\t\tsegment_count = 1\n\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n"
    "\t\t\t\textent_count = 20\n\t\t\t\ttype = \"thin\"\n\t\t\t\tthin_pool = \"pool\"\n"
    "\t\t\t\ttransaction_id = 0\n\t\t\t\tdevice_id = 1\n\t\t\t}\n\t\t}\n"
    "\t\tlvol0_pmspare {\n\t\t\tid = \"sPaRes-PaRe-sPaR-esPa-ReSp-aReS-pArEs1\"\n"
    "\t\t\tstatus = [\"READ\", \"WRITE\"]\n\t\t\tflags = []\n\t\t\tsegment_count = 1\n"
    "\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n\t\t\t\textent_count = 1\n"
    "\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n"
    "\t\t\t\tstripes = [\n\t\t\t\t\t\"pv0\", 16\n\t\t\t\t]\n\t\t\t}\n\t\t}\n"
    "\t\tpool_tmeta {\n\t\t\tid = \"tMeTaT-mEtA-tMeT-aTmE-tAtM-eTaT-mEtAt1\"\n"
    "\t\t\tstatus = [\"READ\", \"WRITE\"]\n\t\t\tflags = []\n\t\t\tsegment_count = 1\n"
    "\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n\t\t\t\textent_count = 1\n"
    "\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n"
    "\t\t\t\tstripes = [\n\t\t\t\t\t\"pv0\", 17\n\t\t\t\t]\n\t\t\t}\n\t\t}\n"
    "\t\tpool_tdata {\n\t\t\tid = \"tDaTaT-dAtA-tDaT-aTdA-tAtD-aTaT-dAtAt1\"\n"
    "\t\t\tstatus = [\"READ\", \"WRITE\"]\n\t\t\tflags = []\n\t\t\tsegment_count = 1\n"
    "\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n\t\t\t\textent_count = 8\n"
    "\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n"
    "\t\t\t\tstripes = [\n\t\t\t\t\t\"pv0\", 18\n\t\t\t\t]\n\t\t\t}\n\t\t}\n"
    "\t\tsnapcow {\n\t\t\tid = \"sNaPcO-wSnA-pCoW-sNaP-cOwS-nApC-oWsNa1\"\n"
    "\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\t\t\tflags = []\n"
    "\t\t\tsegment_count = 1\n\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n"
    "\t\t\t\textent_count = 4\n\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n"
    "\t\t\t\tstripes = [\n\t\t\t\t\t\"pv0\", 30\n\t\t\t\t]\n\t\t\t}\n\t\t}\n"
    "\t\tsnapshot0 {\n\t\t\tid = \"sNaPsH-oTsN-aPsH-oTsN-aPsH-oTsN-aPsHo1\"\n"
    "\t\t\tstatus = [\"READ\"]\n\t\t\tflags = []\n\t\t\tsegment_count = 1\n"
    "\t\t\tsegment1 {\n\t\t\t\tstart_extent = 0\n\t\t\t\textent_count = 8\n"
    "\t\t\t\ttype = \"snapshot\"\n\t\t\t\tchunk_size = 8\n\t\t\t\torigin = \"root\"\n"
    "\t\t\t\tcow_store = \"snapcow\"\n\t\t\t}\n\t\t}\n";

START_TEST(test_thin_snapshot)
{
        struct guest g;
        guest_make(&g, 1, 64);
        lvm(&g, NULL, "pvcreate", "%s", g.dev[0]);
        lvm(&g, NULL, "vgcreate", "-s 1M tvg %s", g.dev[0]);
        lvm(&g, NULL, "lvcreate", LVCREATE " -n root -L 8M tvg");
        lvm(&g, NULL, "lvcreate", LVCREATE " -n swap -L 4M tvg");
        char backup[PATH_MAX];
        int n = snprintf(backup, sizeof(backup), "%s/tvg.vg", g.dir);
        ck_assert(n > 0 && (size_t)n < sizeof(backup));
        lvm(&g, NULL, "vgcfgbackup", "-f '%s' tvg", backup);

        /* The new LVs go at the end of logical_volumes, the last section in tvg's. */
        _cleanup_free_ char *text = NULL, *edited = NULL;
        sh(&text, "cat '%s'", backup);
        char *end = strstr(text, "\n\t}\n\n}");
        ck_assert_ptr_nonnull(end);
        ck_assert_int_ge(
            asprintf(&edited, "%.*s\n%s%s", (int)(end - text), text, thin_and_snapshot, end + 1),
            0);
        FILE *f = fopen(backup, "w");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_ge(fputs(edited, f), 0);
        ck_assert_int_eq(fclose(f), 0);
        /* --force: lvm2 cannot check that no thin LV is active without device-mapper. */
        lvm(&g, NULL, "vgcfgrestore", "--force -f '%s' tvg", backup);

        struct qt_lvm_pv_label l;
        struct qt_lvm_vg vg;
        read_pv(&g, 0, &l);
        parse(&l, &vg);
        static const struct {
                const char *name;
                int kind;
                bool visible;
        } want[] = {
            {"root", QT_LVM_LV_ORIGIN, true},
            {"swap", QT_LVM_LV_LINEAR, true},
            {"pool", QT_LVM_LV_THIN_POOL, true},
            {"thin1", QT_LVM_LV_THIN, true},
            {"lvol0_pmspare", QT_LVM_LV_LINEAR, false},
            {"pool_tmeta", QT_LVM_LV_COMPONENT, false},
            {"pool_tdata", QT_LVM_LV_COMPONENT, false},
            /* lvm2 drops VISIBLE from a COW store: the snapshot is what users see of it */
            {"snapcow", QT_LVM_LV_SNAPSHOT, false},
            {"snapshot0", QT_LVM_LV_SNAPSHOT, false},
        };
        ck_assert_uint_eq(vg.n_lvs, ELEMENTSOF(want));
        for (size_t i = 0; i < ELEMENTSOF(want); i++) {
                const struct qt_lvm_lv *lv = lv_by_name(&vg, want[i].name);
                ck_assert_msg(lv->kind == want[i].kind, "%s: kind %d", lv->name, lv->kind);
                ck_assert_msg(lv->visible == want[i].visible, "%s: visible", lv->name);
                ck_assert_uint_eq(lv->n_segments, lv->kind == QT_LVM_LV_LINEAR ? 1 : 0);
        }
        ck_assert_str_eq(lv_by_name(&vg, "pool")->segtype, "thin-pool");
        ck_assert_str_eq(lv_by_name(&vg, "thin1")->segtype, "thin");

        /* The pool's hidden data and metadata hold extents 16..25: never free. */
        _cleanup_free_ struct qt_lvm_extent_range *ranges = NULL;
        ck_assert_int_eq(qt_lvm_free_extents(&vg, 0, &ranges), 3);
        ck_assert_uint_eq(ranges[0].start, 12);
        ck_assert_uint_eq(ranges[0].count, 4);
        ck_assert_uint_eq(ranges[1].start, 26);
        ck_assert_uint_eq(ranges[1].count, 4);
        ck_assert_uint_eq(ranges[2].start, 34);
        compare_with_lvm(&g, &vg, &l);
        qt_lvm_vg_done(&vg);
        qt_lvm_pv_label_done(&l);
}
END_TEST

/* The first metadata area's raw_locn[0]: whether the text wraps around the area's end. */
static bool text_wraps(const char *file, uint64_t mda_start)
{
        uint8_t h[512];
        _cleanup_close_ int fd = open(file, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pread(fd, h, sizeof(h), (off_t)mda_start), (ssize_t)sizeof(h));
        uint64_t size = 0, offset = 0, len = 0;
        for (int i = 7; i >= 0; i--) {
                size = size << 8 | h[32 + i];
                offset = offset << 8 | h[40 + i];
                len = len << 8 | h[48 + i];
        }
        return offset + len > size;
}

START_TEST(test_wrapped)
{
        struct guest g;
        guest_make(&g, 1, 32);
        /* A small area (pe_start rounds it up to 60 KiB), twice: at the start and at the end
         * of the PV. */
        lvm(&g, NULL, "pvcreate", "--metadatasize 32k --dataalignment 64k --pvmetadatacopies 2 %s",
            g.dev[0]);
        lvm(&g, NULL, "vgcreate", "-s 1M wvg %s", g.dev[0]);
        lvm(&g, NULL, "lvcreate", LVCREATE " -n root -L 4M wvg");
        /* Each update writes the whole text after the previous one, until it wraps; four
         * long tags each make that take about 14. */
        char tail[101];
        memset(tail, 'x', 100);
        tail[100] = '\0';
        int updates = 0;
        while (!text_wraps(g.file[0], 4096)) {
                ck_assert_int_lt(updates, 40);
                lvm(&g, NULL, "vgchange",
                    "--addtag a%d%s --addtag b%d%s --addtag c%d%s --addtag d%d%s wvg", updates,
                    tail, updates, tail, updates, tail, updates, tail);
                updates++;
        }

        struct qt_lvm_pv_label l;
        struct qt_lvm_vg vg;
        read_pv(&g, 0, &l);
        parse(&l, &vg);
        _cleanup_free_ char *seqno = NULL;
        lvm(&g, &seqno, "vgs", "--noheadings -o seqno wvg");
        ck_assert_uint_eq(vg.seqno, strtoull(seqno, NULL, 10));
        char tag[128];
        snprintf(tag, sizeof(tag), "\"d%d%s\"", updates - 1, tail);
        ck_assert_ptr_nonnull(strstr(l.metadata, tag));
        compare_with_lvm(&g, &vg, &l);

        /* Damage: a label byte, an mda header byte, a byte of the wrapped part of the text. */
        struct dev d;
        char why[256];
        struct qt_lvm_pv_label bad;
        dev_open(&d, g.file[0]);
        static const struct {
                uint64_t at;
                const char *why;
        } damage[] = {
            {512 + 100, "label in sector 1: bad crc"},
            {4096 + 100, "metadata area 0: bad mda header crc"},
            {4096 + 512, "metadata area 0: bad metadata text crc (text wraps"},
        };
        for (size_t i = 0; i < ELEMENTSOF(damage); i++) {
                d.n_patches = 1;
                d.patch_at[0] = damage[i].at;
                d.patch[0] = 0xa5;
                why[0] = '\0';
                ck_assert_int_eq(qt_lvm_read_label(dev_read, &d, d.size, &bad, why, sizeof(why)),
                                 -EUCLEAN);
                ck_assert_msg(strstr(why, damage[i].why), "%s", why);
        }
        /* A device cut short: the second area lies past its end. */
        d.n_patches = 0;
        ck_assert_int_eq(qt_lvm_read_label(dev_read, &d, d.size - 4096, &bad, why, sizeof(why)),
                         -EUCLEAN);
        ck_assert_msg(strstr(why, "past the"), "%s", why);
        close(d.fd);
        qt_lvm_vg_done(&vg);
        qt_lvm_pv_label_done(&l);
}
END_TEST

static int mem_read(void *ctx, void *buf, size_t len, uint64_t offset)
{
        const uint8_t *mem = ctx;
        memcpy(buf, mem + offset, len);
        return 0;
}

START_TEST(test_no_label)
{
        uint8_t zeros[8192] = {};
        struct qt_lvm_pv_label l;
        ck_assert_int_eq(qt_lvm_read_label(mem_read, zeros, sizeof(zeros), &l, NULL, 0), 0);
        ck_assert_int_eq(qt_lvm_read_label(mem_read, zeros, 511, &l, NULL, 0), 0);
        /* In sector 4, where lvm2 does not look. */
        memcpy(zeros + 4 * 512, "LABELONE", 8);
        ck_assert_int_eq(qt_lvm_read_label(mem_read, zeros, sizeof(zeros), &l, NULL, 0), 0);
}
END_TEST

#define PV0                                                                                        \
        "pv0 { id = \"aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\" status = [\"ALLOCATABLE\"] "        \
        "dev_size = 131072 pe_start = 2048 pe_count = 63 }\n"
#define LV(name, start, count, pv, pv_start)                                                       \
        name " { status = [\"READ\", \"WRITE\", \"VISIBLE\"] segment_count = 1\n"                  \
             "segment1 { start_extent = " #start " extent_count = " #count                         \
             " type = \"striped\" stripe_count = 1 stripes = [\"" pv "\", " #pv_start "] } }\n"
#define VG(pvs, lvs)                                                                               \
        "# comment\nvg {\nid = \"bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb\"\nseqno = 3\n"            \
        "extent_size = 2048\nphysical_volumes {\n" pvs "}\nlogical_volumes {\n" lvs "}\n}\n"       \
        "contents = \"Text Format Volume Group\"\nversion = 1\n"

static int parse_text(const char *text, char *why, size_t why_size)
{
        struct qt_lvm_vg vg;
        /* Exactly as long as the text, so a sanitizer sees any read past it. */
        size_t len = strlen(text);
        _cleanup_free_ char *copy = malloc(len ? len : 1);
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, text, len);
        why[0] = '\0';
        int r = qt_lvm_parse_metadata(copy, len, &vg, why, why_size);
        if (r == 0)
                qt_lvm_vg_done(&vg);
        return r;
}

START_TEST(test_text_good)
{
        static const char text[] = VG(PV0, LV("a", 0, 10, "pv0", 0) LV("b", 0, 5, "pv0", 20));
        struct qt_lvm_vg vg;
        char why[256];
        ck_assert_int_eq(qt_lvm_parse_metadata(text, sizeof(text) - 1, &vg, why, sizeof(why)), 0);
        ck_assert_str_eq(vg.uuid, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
        ck_assert_uint_eq(vg.n_areas, 2);
        _cleanup_free_ struct qt_lvm_extent_range *r = NULL;
        ck_assert_int_eq(qt_lvm_free_extents(&vg, 0, &r), 2);
        ck_assert_uint_eq(r[0].start, 10);
        ck_assert_uint_eq(r[0].count, 10);
        ck_assert_uint_eq(r[1].start, 25);
        ck_assert_uint_eq(r[1].count, 38);
        ck_assert_int_eq(qt_lvm_free_extents(&vg, 1, &r), -EINVAL);
        qt_lvm_vg_done(&vg);
        qt_lvm_vg_done(&vg); /* idempotent */

        /* Every prefix of it: refused with a reason, or (once the VG section is complete)
         * the same VG, never a read past the end. */
        for (size_t i = 0; i < sizeof(text) - 1; i++) {
                char cut[sizeof(text)];
                memcpy(cut, text, i);
                cut[i] = '\0';
                int r2 = parse_text(cut, why, sizeof(why));
                ck_assert_msg(r2 == 0 || (r2 == -EUCLEAN && why[0]), "cut at %zu: %d", i, r2);
        }
}
END_TEST

/* prefix, n items, suffix; an item is `before`, its index if numbered, `after`. */
static char *repeat(const char *prefix, const char *before, bool numbered, const char *after, int n,
                    const char *suffix)
{
        char *out = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&out, &size);
        ck_assert_ptr_nonnull(f);
        fputs(prefix, f);
        for (int i = 0; i < n; i++) {
                fputs(before, f);
                if (numbered)
                        fprintf(f, "%d", i);
                fputs(after, f);
        }
        fputs(suffix, f);
        fclose(f);
        return out;
}

START_TEST(test_text_bad)
{
        static const struct {
                const char *text, *why;
        } bad[] = {
            {"vg {\nid = \"x\"\n", "line 3: missing '}' of section vg from line 1"},
            {"vg { } }", "'}' without a section"},
            {"vg { id = \"abc }\n", "line 1: string not terminated"},
            {"vg { seqno = 12a }", "line 1: malformed number"},
            {"vg { seqno = 012 }", "malformed number"},
            {"vg { seqno = 99999999999999999999 }", "integer out of range"},
            {"vg { seqno = [1, 2", "line 1: list not closed"},
            {"vg { seqno = [1, 2 }", "line 1: expected a value"},
            {"vg { seqno 1 }", "expected '=' or '{' after seqno"},
            {"vg { = 1 }", "line 1: expected a name"},
            {"vg { a = b }", "unexpected 'b'"},
            {"vg { a = 1.5 }", "malformed number"},
            {"", "0 sections at the top"},
            {VG(PV0, "") "vg2 { }", "2 sections at the top"},
            {VG(PV0, LV("a", 0, 64, "pv0", 0)), "a/segment1: extents 0..63 of pv0, past its "
                                                "pe_count 63"},
            {VG(PV0, LV("a", 0, 10, "pv0", 0) LV("b", 0, 10, "pv0", 5)),
             "extent 5 of pv0 is used by both a and b"},
            {VG(PV0, LV("a", 0, 10, "pv0", 0) LV("a", 0, 10, "pv0", 20)), "logical volume a twice"},
            {VG(PV0, LV("a", 0, 10, "pv1", 0)), "no volume pv1 in this VG"},
            {VG(PV0, LV("a", 1, 10, "pv0", 0)), "a: gap at extent 1, expected 0"},
            {VG(PV0, "a { status = [] segment_count = 2 "
                     "s1 { start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 1 "
                     "stripes = [\"pv0\", 0] } "
                     "s2 { start_extent = 2 extent_count = 4 type = \"striped\" stripe_count = 1 "
                     "stripes = [\"pv0\", 10] } }"),
             "a: overlapping segment at extent 2, expected 4"},
            {VG(PV0, "a { status = [] segment_count = 2 "
                     "s1 { start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 1 "
                     "stripes = [\"pv0\", 0] } }"),
             "a: segment_count 2, 1 segments"},
            {VG(PV0, "a { status = [] segment_count = 1 "
                     "s1 { start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 1 "
                     "stripes = [\"pv0\", 0] } "
                     "s1 { start_extent = 0 extent_count = 4 type = \"striped\" stripe_count = 1 "
                     "stripes = [\"pv0\", 0] } }"),
             "a: segment_count 1, 2 segments"},
            {VG(PV0, "a { status = [] segment_count = 1 "
                     "s1 { start_extent = 0 extent_count = 4 type = \"weird\" "
                     "data = [\"pv0\", 0] } }"),
             "a/s1: data names pv0 outside an area list"},
            {VG(PV0, "a { status = [] segment_count = 1 "
                     "s1 { start_extent = 0 extent_count = 5 type = \"striped\" stripe_count = 2 "
                     "stripes = [\"pv0\", 0, \"pv0\", 10] } }"),
             "a/s1: 5 extents do not make 2 stripes"},
            {VG(PV0, "a { status = [] segment_count = 1 "
                     "s1 { start_extent = 0 extent_count = 4 extent_count = 4 type = \"striped\" "
                     "stripe_count = 1 stripes = [\"pv0\", 0] } }"),
             "extent_count twice"},
            {VG(PV0, "a { status = [] segment_count = 1 s1 { start_extent = 0 "
                     "extent_count = 4294967296 type = \"striped\" } }"),
             "a/s1: extent_count out of range"},
            {VG("pv0 { id = \"aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\" pe_start = "
                "9223372036854775807 pe_count = 1 }",
                ""),
             "pv0: pe_start + pe_count * extent_size overflows"},
            {VG("pv0 { id = \"aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\" dev_size = 1000 "
                "pe_start = 2048 pe_count = 1 }",
                ""),
             "pv0: extents end at sector 4096, past dev_size 1000"},
            {VG("pv0 { id = \"short\" pe_start = 2048 pe_count = 1 }", ""), "pv0: malformed id"},
            {VG(PV0 "pv1 { id = \"aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\" pe_start = 2048 "
                    "pe_count = 1 }",
                ""),
             "pv0 and pv1 have the same id"},
            {"vg { id = \"bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb\" seqno = 1 extent_size = 3000 }",
             "extent_size 3000 is neither a power of 2 nor a multiple of 128 KiB"},
            {"vg { id = \"bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb\" seqno = 1 extent_size = 0 }",
             "extent_size 0"},
            {"vg { id = \"bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb\" extent_size = 8 }", "no seqno"},
        };
        char why[256];
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int r = parse_text(bad[i].text, why, sizeof(why));
                ck_assert_msg(r == -EUCLEAN && strstr(why, bad[i].why),
                              "case %zu: %d \"%s\", expected \"%s\"", i, r, why, bad[i].why);
        }
        /* extent_size 3 * 128 KiB is allowed, as lvm2 allows it. */
        ck_assert_int_eq(parse_text(VG(PV0, ""), why, sizeof(why)), 0);

        /* Over the caps: counts, nesting, string length, text size. */
        _cleanup_free_ char *pvs =
            repeat("vg { id = \"bbbbbb-bbbb-bbbb-bbbb-bbbb-bbbb-bbbbbb\" seqno = 1 extent_size = 8 "
                   "physical_volumes {",
                   "pv", true,
                   " { id = \"aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa\" pe_start = 1 pe_count = 1 }",
                   QT_LVM_PVS_MAX + 1, "} }");
        ck_assert_int_eq(parse_text(pvs, why, sizeof(why)), -EUCLEAN);
        ck_assert_msg(strstr(why, "1025 physical volumes (1 to 1024 allowed)"), "%s", why);
        _cleanup_free_ char *deep = repeat("", "a", true, " {", 20, "");
        ck_assert_int_eq(parse_text(deep, why, sizeof(why)), -EUCLEAN);
        ck_assert_msg(strstr(why, "nested deeper than 7"), "%s", why);
        _cleanup_free_ char *values = repeat("vg { x = [", "1,", false, "", 300000, "] }");
        ck_assert_int_eq(parse_text(values, why, sizeof(why)), -EUCLEAN);
        ck_assert_msg(strstr(why, "more than 262144 keys, sections and values"), "%s", why);
        _cleanup_free_ char *longstr =
            repeat("vg { x = \"", "x", false, "", QT_LVM_STRING_MAX + 1, "\" }");
        ck_assert_int_eq(parse_text(longstr, why, sizeof(why)), -EUCLEAN);
        ck_assert_msg(strstr(why, "line 1: a string longer than 16384 bytes"), "%s", why);
        _cleanup_free_ char *longname = repeat("vg { ", "x", false, "", QT_LVM_NAME_MAX, " = 1 }");
        ck_assert_int_eq(parse_text(longname, why, sizeof(why)), -EUCLEAN);
        ck_assert_msg(strstr(why, "a name longer than 127 bytes"), "%s", why);
        _cleanup_free_ char *huge = repeat("#", "", true, "", 200000, "");
        ck_assert_int_eq(parse_text(huge, why, sizeof(why)), -EUCLEAN);
        ck_assert_msg(strstr(why, "more than 1048576"), "%s", why);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("lvm-meta");
        TCase *tc = tcase_create("text");
        tcase_set_timeout(tc, 20);
        tcase_add_test(tc, test_no_label);
        tcase_add_test(tc, test_text_good);
        tcase_add_test(tc, test_text_bad);
        suite_add_tcase(s, tc);

        /* Real PVs: lvm2 takes a few tenths of a second per command. */
        tc = tcase_create("lvm2");
        tcase_add_unchecked_fixture(tc, scratch_setup, scratch_teardown);
        tcase_set_timeout(tc, 25);
        tcase_add_test(tc, test_root_swap);
        tcase_add_test(tc, test_two_pvs);
        tcase_add_test(tc, test_thin_snapshot);
        tcase_add_test(tc, test_wrapped);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)

/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzzes the LVM2 reader: a guest writes its PVs, and qtrim reads their labels and metadata to
 * find the LVs to trim and the free extents to discard. The input is both the metadata text
 * (qt_lvm_parse_metadata()) and a device (qt_lvm_read_label()), whose metadata is then parsed
 * in turn. Neither may read outside its input, and a VG that parses must be consistent: no
 * extent both used and free, no segment past its PV, every LINEAR LV tiled by its segments.
 */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "lvm-meta.h"

struct mem {
        const uint8_t *data;
        size_t size;
};

static int mem_read(void *ctx, void *buf, size_t len, uint64_t offset)
{
        const struct mem *m = ctx;
        FUZZ_CHECK(offset <= m->size && len <= m->size - offset);
        memcpy(buf, m->data + offset, len);
        return 0;
}

static void check_vg(const struct qt_lvm_vg *vg)
{
        FUZZ_CHECK(vg->n_pvs >= 1 && vg->n_pvs <= QT_LVM_PVS_MAX);
        FUZZ_CHECK(vg->n_lvs <= QT_LVM_LVS_MAX && vg->n_areas <= QT_LVM_AREAS_MAX);
        FUZZ_CHECK(strlen(vg->uuid) == QT_LVM_UUID_LEN);
        for (size_t i = 0; i < vg->n_areas; i++) {
                const struct qt_lvm_area *a = &vg->areas[i];
                FUZZ_CHECK(a->pv < vg->n_pvs && a->lv < vg->n_lvs && a->count > 0);
                FUZZ_CHECK(a->start + a->count <= vg->pvs[a->pv].pe_count);
                if (i > 0 && vg->areas[i - 1].pv == a->pv)
                        FUZZ_CHECK(vg->areas[i - 1].start + vg->areas[i - 1].count <= a->start);
        }
        for (size_t i = 0; i < vg->n_lvs; i++) {
                const struct qt_lvm_lv *lv = &vg->lvs[i];
                FUZZ_CHECK(memchr(lv->name, '\0', sizeof(lv->name)));
                FUZZ_CHECK((lv->kind == QT_LVM_LV_LINEAR) == (lv->n_segments > 0));
                uint64_t next = 0;
                for (size_t s = 0; s < lv->n_segments; s++) {
                        const struct qt_lvm_segment *seg = &lv->segments[s];
                        FUZZ_CHECK(seg->start_extent == next && seg->extent_count > 0);
                        FUZZ_CHECK(seg->pv < vg->n_pvs);
                        FUZZ_CHECK(seg->pv_start_extent + seg->extent_count <=
                                   vg->pvs[seg->pv].pe_count);
                        next += seg->extent_count;
                }
        }
        /* Free and used extents of each PV partition it. */
        for (unsigned pv = 0; pv < vg->n_pvs; pv++) {
                struct qt_lvm_extent_range *free_ranges = NULL;
                ssize_t n = qt_lvm_free_extents(vg, pv, &free_ranges);
                FUZZ_CHECK(n >= 0 || n == -ENOMEM);
                uint64_t total = 0;
                for (ssize_t i = 0; i < n; i++) {
                        FUZZ_CHECK(free_ranges[i].count > 0);
                        FUZZ_CHECK(free_ranges[i].start + free_ranges[i].count <=
                                   vg->pvs[pv].pe_count);
                        if (i > 0)
                                FUZZ_CHECK(free_ranges[i - 1].start + free_ranges[i - 1].count <
                                           free_ranges[i].start);
                        total += free_ranges[i].count;
                }
                for (size_t i = 0; i < vg->n_areas; i++)
                        if (vg->areas[i].pv == pv)
                                total += vg->areas[i].count;
                FUZZ_CHECK(n < 0 || total == vg->pvs[pv].pe_count);
                free(free_ranges);
        }
        struct qt_lvm_extent_range *none = NULL;
        FUZZ_CHECK(qt_lvm_free_extents(vg, (unsigned)vg->n_pvs, &none) == -EINVAL);
}

static void parse(const char *text, size_t len)
{
        struct qt_lvm_vg vg;
        char why[256] = "";
        int r = qt_lvm_parse_metadata(text, len, &vg, why, sizeof(why));
        FUZZ_CHECK(r == 0 || r == -EUCLEAN || r == -ENOMEM);
        if (r == -EUCLEAN)
                FUZZ_CHECK(why[0] != '\0');
        if (r == 0) {
                check_vg(&vg);
                qt_lvm_vg_done(&vg);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        /* Exactly as long as the input, so ASan sees any read past its end. */
        char *text = malloc(size ? size : 1);
        if (!text)
                return 0;
        memcpy(text, data, size);
        parse(text, size);

        struct mem m = {(const uint8_t *)text, size};
        struct qt_lvm_pv_label l;
        char why[256] = "";
        int r = qt_lvm_read_label(mem_read, &m, size, &l, why, sizeof(why));
        FUZZ_CHECK(r == 1 || r == 0 || r == -EUCLEAN || r == -ENOMEM);
        if (r == -EUCLEAN)
                FUZZ_CHECK(why[0] != '\0');
        if (r == 1) {
                FUZZ_CHECK(strlen(l.pv_uuid) == QT_LVM_UUID_LEN);
                FUZZ_CHECK(l.data_offset > 0 && l.data_offset <= size);
                if (l.metadata) {
                        FUZZ_CHECK(l.metadata_len <= QT_LVM_METADATA_MAX);
                        FUZZ_CHECK(strlen(l.metadata) == l.metadata_len);
                        parse(l.metadata, l.metadata_len);
                }
                qt_lvm_pv_label_done(&l);
        }
        free(text);
        return 0;
}

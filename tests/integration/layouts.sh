#!/bin/bash
# Guest disks shaped like real installs (tests/lib/layouts.sh), each shrunk once, each checked
# independently of qtrim (offsets from sfdisk and lvm2, kept files' checksums, ranges that must
# stay byte-identical or read back as zeros):
#   fedora-like: GPT, ESP, /boot ext4, garbage between partitions and after the last one, an
#     LVM PV with root xfs, a swap LV and free extents that held data;
#   mbr-swap-gaps: MBR with a swap partition, a hibernated swap partition, logical partitions
#     (EBRs), garbage between and after partitions and inside the extended partition;
#   lvm-two-pvs: a VG over two partitions, an LV in two segments (one on each) and a linear one;
#   ldm: a Windows dynamic disk (type 0x42): every gap left alone, the Linux filesystem trimmed;
#   thin: a thin pool and a thin LV (skipped, their extents untouched) beside a linear LV.
# The host's LVM state (/etc/lvm, /run/lvm) must not change.
# QT_LAYOUTS (default "fedora mbr twopvs ldm thin") picks the disks, e.g. for the VM suite.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/layouts.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/layouts.sh"

qt_scenario_start layouts
qt_need lvm mkfs.vfat mcopy

host_lvm_state() { { find /etc/lvm /run/lvm -type f -exec sha256sum {} + 2>/dev/null || true; } | sort; }
host_lvm_before=$(host_lvm_state)

failures=()
# shrink IMG: shrink_json, with the checks every fully built layout shares before and after.
shrink() {
        local img=$1 before
        before=$(allocated_bytes "$img")
        assert_dirty "$img"
        assert_not_zeroed "$img"
        shrink_json "$img"
        assert_preserved "$img"
        assert_zeroed "$img"
        verify_files "$img"
        assert_qemu_img_check "$img"
        assert_shrunk "$img"
        qt_ok "$(basename -- "$img"): $(qt_human "$before") -> $(qt_human "$(allocated_bytes "$img")") allocated"
}

layout_fedora() {
        qt_step "fedora-like: ESP, /boot, LVM (root xfs, swap LV, free extents), gaps"
        make_fedora_like "$QT_IMAGES/fedora.qcow2"
        qt_expect_files
        shrink "$QT_IMAGES/fedora.qcow2"
        local j=$QT_WORK/fedora.json
        expect_volume "$j" p1 discarded "free clusters read from its own map"
        expect_volume "$j" p2 trimmed
        expect_volume "$j" p3 skipped "an LVM physical volume"
        expect_volume "$j" fedora/root trimmed
        expect_volume "$j" fedora/swap discarded "header page"
        # The record says what the volume is and how it was handled, label and UUID as blkid
        # reads them from the header that was kept.
        local swap
        swap=$(jq -r '.[0].filesystems[] | select(.name == "fedora/swap") | "\(.kind) \(.method) \(.label) \(.uuid)"' "$j")
        [[ $swap == "lv swap fedora-swap $QT_SWAP_UUID_FEDORA" ]] ||
                failures+=("fedora/swap record: '$swap', expected 'lv swap fedora-swap $QT_SWAP_UUID_FEDORA'")
        expect_volume "$j" "fedora free1" discarded
        expect_volume "$j" gap1 discarded
        expect_volume "$j" gap2 discarded
        [[ $(jq -r '[.[0].filesystems[] | select(.name | startswith("gap")) | .kind] | unique | join(" ")' "$j") == gap ]] ||
                failures+=("fedora: gaps are not of kind gap")
}

layout_mbr() {
        qt_step "MBR: swap, hibernated swap, logical partitions, gaps inside and outside the extended partition"
        make_mbr_swap_gaps "$QT_IMAGES/mbr.qcow2"
        qt_clone_image "$QT_IMAGES/mbr.qcow2" "$QT_IMAGES/mbr-keep-gaps.qcow2"
        qt_expect_files
        # Inspect says what a shrink would do with each volume and how much of it the image
        # holds: the 48 MiB of garbage between p1 and p2 are all allocated.
        qt_qtrimctl inspect --json "$QT_IMAGES/mbr.qcow2" >"$QT_WORK/mbr-inspect.json"
        local gap
        gap=$(jq -r '.filesystems[] | select(.name == "gap1") | "\(.offset) \(.size) \(.method) \(.message)"' "$QT_WORK/mbr-inspect.json")
        [[ $gap == "$((201 * MiB)) $((48 * MiB)) discard discarded; 48.0 MiB in the image" ]] ||
                failures+=("mbr: Inspect says of gap1 '$gap'")
        shrink "$QT_IMAGES/mbr.qcow2"
        local j=$QT_WORK/mbr.json
        expect_volume "$j" p1 trimmed
        expect_volume "$j" p2 discarded "header page"
        expect_volume "$j" p3 skipped "hibernation image"
        expect_volume "$j" p5 trimmed
        expect_volume "$j" p6 trimmed

        qt_step "the same disk with --keep-gaps: every gap byte-identical, the rest trimmed"
        shrink_json "$QT_IMAGES/mbr-keep-gaps.qcow2" --keep-gaps
        j=$QT_WORK/mbr-keep-gaps.json
        expect_volume "$j" gap1 skipped "kept"
        expect_volume "$j" p1 trimmed
        # The swap area is no gap: zeroed all the same. Every gap still holds its garbage.
        jq '.zeroed |= map(select(.what | test("^swap area") | not))' \
                "$(qt_manifest "$QT_IMAGES/mbr-keep-gaps.qcow2")" >"$QT_WORK/keep-gaps.manifest"
        assert_not_zeroed "$QT_IMAGES/mbr-keep-gaps.qcow2" "$QT_WORK/keep-gaps.manifest"
        assert_preserved "$QT_IMAGES/mbr-keep-gaps.qcow2"
        verify_files "$QT_IMAGES/mbr-keep-gaps.qcow2"
}

layout_twopvs() {
        qt_step "a VG over two partitions: an LV in two segments on both PVs and a linear one, trimmed"
        local img=$QT_IMAGES/twopvs.qcow2 before segs data_before data_after
        make_lvm_two_pvs "$img"
        qt_expect_files
        before=$(allocated_bytes "$img")
        # vg0/data's segments as lvm2 placed them (the manifest), not as qtrim reads them.
        segs=$(jq -c '.filesystems[] | select(.name == "vg0/data") | .segments' "$(qt_manifest "$img")")
        [[ $(jq length <<<"$segs") == 2 ]] || qt_fail "twopvs: vg0/data has no two segments: $segs"
        data_before=$(_qt_allocated_in_ranges "$img" "$segs")
        shrink_json "$img"
        expect_volume "$QT_WORK/twopvs.json" vg0/logs trimmed
        expect_volume "$QT_WORK/twopvs.json" vg0/data trimmed
        assert_preserved "$img"
        verify_files "$img"
        assert_qemu_img_check "$img"
        ((before > $(allocated_bytes "$img"))) || failures+=("twopvs: nothing reclaimed")
        # 240 MiB of its files were deleted, across both segments.
        data_after=$(_qt_allocated_in_ranges "$img" "$segs")
        if ((data_before - data_after >= 200 * MiB)); then
                qt_ok "vg0/data's segments: $(qt_human "$data_before") → $(qt_human "$data_after") allocated"
        else
                failures+=("twopvs: vg0/data's segments hold $(qt_human "$data_after") (were $(qt_human "$data_before"))")
        fi
}

layout_ldm() {
        qt_step "a Windows dynamic disk (LDM): no gap discarded, the Linux filesystem trimmed"
        make_ldm_disk "$QT_IMAGES/ldm.qcow2"
        qt_expect_files
        shrink_json "$QT_IMAGES/ldm.qcow2"
        expect_volume "$QT_WORK/ldm.json" p2 trimmed
        expect_volume "$QT_WORK/ldm.json" gaps skipped "Windows dynamic disk"
        assert_preserved "$QT_IMAGES/ldm.qcow2"
        verify_files "$QT_IMAGES/ldm.qcow2"
}

layout_thin() {
        qt_step "a thin pool: thin LVs skipped with the reason, the linear LV trimmed"
        make_thin_pool_disk "$QT_IMAGES/thin.qcow2"
        qt_expect_files
        shrink_json "$QT_IMAGES/thin.qcow2"
        local j=$QT_WORK/thin.json
        expect_volume "$j" vgt/plain trimmed
        expect_volume "$j" vgt/pool skipped "thin pool"
        expect_volume "$j" vgt/thin1 skipped "thin LV"
        assert_preserved "$QT_IMAGES/thin.qcow2"
        verify_files "$QT_IMAGES/thin.qcow2"
}

for layout in ${QT_LAYOUTS:-fedora mbr twopvs ldm thin}; do
        declare -F "layout_$layout" >/dev/null || qt_fail "no layout $layout"
        "layout_$layout"
done

qt_step "the host's LVM state"
[[ $(host_lvm_state) == "$host_lvm_before" ]] || failures+=("/etc/lvm or /run/lvm changed")
qt_ok "/etc/lvm and /run/lvm unchanged"

if ((${#failures[@]} > 0)); then
        printf '  - %s\n' "${failures[@]}" >&2
        qt_fail "${#failures[@]} layout check(s) failed"
fi
qt_scenario_end

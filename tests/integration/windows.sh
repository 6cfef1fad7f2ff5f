#!/bin/bash
# Windows-shaped disks (tests/lib/windows.sh), each shrunk once: FAT and NTFS volumes are trimmed
# from their own free-space map (method "freemap", never mounted), and refused when their state
# or their metadata forbids it. Checked independently of qtrim: kept files read back with
# ntfscat and mtools, ntfsfix -n and fsck.vfat -n clean, ranges that must stay byte-identical,
# and qemu-img map's allocation inside each volume, which must fall by at least 80 % of what was
# deleted there.
#   windows-mbr: "System Reserved" and C: NTFS on MBR, both trimmed;
#   windows-gpt: ESP (FAT32), MSR (random, untouched), C: NTFS;
#   hibernated: System Reserved trimmed, a hibernated C: (hiberfil.sys "HIBR") and a D: with
#     VOLUME_IS_DIRTY set, both skipped with the reason and byte-identical;
#   fat: FAT12, FAT16 and FAT32 trimmed; a FAT16 with its dirty bit set and one whose two FATs
#     differ, skipped and byte-identical;
#   whole: a FAT32 over a whole disk without partition table, trimmed;
#   lv: an NTFS LV and a FAT32 LV in a VG on a GPT disk, trimmed;
#   hostile: boot sectors that do not add up (FAT32 and NTFS claiming more than their partition,
#     FAT16 with 0 sectors per cluster, NTFS whose $MFT is random bytes): skipped, byte-identical,
#     the healthy FAT16 beside them trimmed.
# QT_WINDOWS (default "mbr gpt hibernated fat whole lv hostile") picks the disks.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/windows.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/windows.sh"

qt_scenario_start windows
qt_need ntfs-3g mkntfs ntfscp ntfscat ntfsfix ntfsinfo fusermount mcopy mtype mdel mdir mmd mkfs.vfat fsck.vfat lvm

failures=()
# expect_freemap JSON NAME FSTYPE: trimmed from its own map: fstype, method "freemap", state
# "discarded", more than 0 bytes.
expect_freemap() {
        local got
        got=$(jq -r --arg n "$2" '.[0].filesystems[] | select(.name == $n)
                | "\(.fstype) \(.method) \(.state) \(.trimmed > 0)"' "$1")
        if [[ $got == "$3 freemap discarded true" ]]; then
                qt_ok "$2: $got ($(jq -r --arg n "$2" '.[0].filesystems[] | select(.name == $n) | .trimmed' "$1") bytes)"
        else
                failures+=("$(basename -- "$1" .json): $2 is '${got:-missing}', expected '$3 freemap discarded true'")
        fi
}

# The ranges of a manifest's filesystem NAME ({offset,size}: its segments, or itself), as JSON.
fs_ranges() { # IMG NAME
        jq -c --arg n "$2" '.filesystems[] | select(.name == $n) | .segments // [{ offset, size }]' "$(qt_manifest "$1")"
}
# Allocation inside each listed filesystem, before the shrink: "NAME BYTES" lines in $QT_WORK.
record_allocation() { # IMG NAME...
        local img=$1 n
        for n in "${@:2}"; do
                printf '%s %s\n' "$n" "$(_qt_allocated_in_ranges "$img" "$(fs_ranges "$img" "$n")")"
        done >"$QT_WORK/$(basename -- "$img" .qcow2).alloc"
}
# expect_reclaimed IMG: each recorded filesystem's allocation fell by at least 80 % of its
# deleted_bytes (qemu-img map, clipped to the volume).
expect_reclaimed() {
        local img=$1 n before after deleted msg
        while read -r n before; do
                after=$(_qt_allocated_in_ranges "$img" "$(fs_ranges "$img" "$n")")
                deleted=$(jq --arg n "$n" '.filesystems[] | select(.name == $n) | .deleted_bytes' "$(qt_manifest "$img")")
                if ((before - after >= deleted * 8 / 10)); then
                        qt_ok "$n: $(qt_human "$before") -> $(qt_human "$after") allocated ($(qt_human "$deleted") deleted)"
                else
                        msg="$n allocates $(qt_human "$after"), was $(qt_human "$before"): less than 80 %"
                        failures+=("$(basename -- "$img" .qcow2): $msg of the $(qt_human "$deleted") deleted given back")
                fi
        done <"$QT_WORK/$(basename -- "$img" .qcow2).alloc"
}
# A copy of IMG's manifest with only the named filesystems (the others stay byte-identical and
# are checked as preserved ranges): printed is its path.
manifest_only() { # IMG NAME...
        local out
        out=$QT_WORK/$(basename -- "$1" .qcow2).only.json
        jq --args '.filesystems |= map(select(.name as $n | $ARGS.positional | index($n)))
                | .guest_used_bytes = (.filesystems | map(.used_bytes) | add)' "${@:2}" <"$(qt_manifest "$1")" >"$out"
        printf '%s\n' "$out"
}
# build NAME BUILDER: the disk $QT_IMAGES/NAME.qcow2, timed.
build() {
        local t
        t=$(qt_now)
        "$2" "$QT_IMAGES/$1.qcow2"
        qt_expect_files
        qt_info "$1 built in $(qt_since "$t") s: $(qt_human "$(allocated_bytes "$QT_IMAGES/$1.qcow2")") allocated"
}

windows_mbr() {
        qt_step "MBR: System Reserved and C: NTFS, trimmed from their \$Bitmap"
        local img=$QT_IMAGES/windows-mbr.qcow2 j=$QT_WORK/windows-mbr.json
        build windows-mbr make_windows_mbr
        assert_dirty "$img"
        record_allocation "$img" p1 p2
        shrink_json "$img"
        expect_freemap "$j" p1 ntfs
        expect_freemap "$j" p2 ntfs
        assert_preserved "$img"
        verify_files "$img"
        assert_qemu_img_check "$img"
        expect_reclaimed "$img"
        assert_shrunk "$img"
}

windows_gpt() {
        qt_step "GPT: ESP (FAT32), MSR left alone, C: NTFS"
        local img=$QT_IMAGES/windows-gpt.qcow2 j=$QT_WORK/windows-gpt.json
        build windows-gpt make_windows_gpt
        assert_dirty "$img"
        record_allocation "$img" p1 p3
        shrink_json "$img"
        expect_freemap "$j" p1 vfat
        expect_volume "$j" p2 skipped 'no filesystem found'
        expect_freemap "$j" p3 ntfs
        assert_preserved "$img"
        verify_files "$img"
        assert_qemu_img_check "$img"
        expect_reclaimed "$img"
        # The MSR's 16 MiB of random bytes stay, as they must.
        assert_shrunk "$img"
}

windows_hibernated() {
        qt_step "hibernated C: and dirty D: skipped whole, System Reserved trimmed"
        local img=$QT_IMAGES/hibernated.qcow2 j=$QT_WORK/hibernated.json
        build hibernated make_ntfs_hibernated
        record_allocation "$img" p1
        shrink_json "$img"
        expect_freemap "$j" p1 ntfs
        expect_volume "$j" p2 skipped 'Windows is hibernated or Fast Startup is on; shut Windows down fully \("shutdown /s /t 0"\)'
        expect_volume "$j" p3 skipped 'the NTFS volume was not cleanly unmounted \(dirty flag or a log to replay\)'
        assert_preserved "$img"
        # D: is marked dirty, which ntfscat refuses; its bytes are checked whole above.
        verify_files "$img" "$(manifest_only "$img" p1 p2)"
        assert_qemu_img_check "$img"
        expect_reclaimed "$img"
}

windows_fat() {
        qt_step "FAT12, FAT16, FAT32 trimmed; a dirty FAT16 and one whose FATs differ skipped whole"
        local img=$QT_IMAGES/fat.qcow2 j=$QT_WORK/fat.json
        build fat make_fat_variants
        record_allocation "$img" p1 p2 p3
        shrink_json "$img"
        expect_freemap "$j" p1 vfat
        expect_freemap "$j" p2 vfat
        expect_freemap "$j" p3 vfat
        expect_volume "$j" p5 skipped 'the FAT volume was not cleanly unmounted \(dirty bit set\)'
        expect_volume "$j" p6 skipped 'its FAT copies differ'
        assert_preserved "$img"
        # fsck.vfat -n fails on p5 and p6 by design (checked when built); their bytes are checked.
        verify_files "$img" "$(manifest_only "$img" p1 p2 p3)"
        assert_qemu_img_check "$img"
        expect_reclaimed "$img"
}

windows_whole() {
        qt_step "a FAT32 over a whole disk, no partition table"
        local img=$QT_IMAGES/fat-whole.qcow2 j=$QT_WORK/fat-whole.json
        build fat-whole make_fat_whole_disk
        record_allocation "$img" disk
        shrink_json "$img"
        expect_freemap "$j" disk vfat
        verify_files "$img"
        assert_qemu_img_check "$img"
        expect_reclaimed "$img"
}

windows_lv() {
        qt_step "an NTFS LV and a FAT32 LV, trimmed from their maps"
        local img=$QT_IMAGES/lv.qcow2 j=$QT_WORK/lv.json
        build lv make_ntfs_fat_in_lv
        assert_dirty "$img"
        record_allocation "$img" vgwin/windows vgwin/shared
        shrink_json "$img"
        expect_freemap "$j" vgwin/windows ntfs
        expect_freemap "$j" vgwin/shared vfat
        assert_preserved "$img"
        verify_files "$img"
        assert_qemu_img_check "$img"
        expect_reclaimed "$img"
        assert_shrunk "$img"
}

windows_hostile() {
        qt_step "boot sectors that do not add up: skipped, byte-identical; the healthy FAT16 trimmed"
        local img=$QT_IMAGES/hostile.qcow2 j=$QT_WORK/hostile.json
        build hostile make_hostile_windows
        record_allocation "$img" p6
        shrink_json "$img"
        expect_volume "$j" p1 skipped "its boot sector's geometry is inconsistent \(.*\); left alone"
        # libblkid itself finds no FAT with 0 sectors per cluster: no reader is asked.
        expect_volume "$j" p2 skipped 'no filesystem found'
        expect_volume "$j" p3 skipped 'not a readable NTFS volume: .*; left alone'
        expect_volume "$j" p5 skipped 'not a readable NTFS volume: .*; left alone'
        expect_freemap "$j" p6 vfat
        assert_preserved "$img"
        verify_files "$img"
        assert_qemu_img_check "$img"
        expect_reclaimed "$img"
}

for disk in ${QT_WINDOWS:-mbr gpt hibernated fat whole lv hostile}; do
        declare -F "windows_$disk" >/dev/null || qt_fail "no disk $disk"
        "windows_$disk"
done

if ((${#failures[@]} > 0)); then
        printf '  - %s\n' "${failures[@]}" >&2
        qt_fail "${#failures[@]} check(s) failed"
fi
qt_scenario_end

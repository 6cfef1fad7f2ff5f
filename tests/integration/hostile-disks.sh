#!/bin/bash
# Hostile and damaged guest disks, inside valid images: the job runs, and touches only what is
# safe to touch. A GPT whose entries overlap (resealed, valid to every tool): both partitions
# are reported and left byte for byte as they were, their neighbour is trimmed. An MBR whose
# entries run past the end of the disk, or start there: reported, never touched. Filesystems
# that refuse to mount (ext4 whose block count exceeds its partition, xfs with an unknown
# incompatible feature) and a swap area: skipped with the kernel's reason, left as they were;
# the ext4 beside them is trimmed. An ext4 with a dirty journal and an xfs with a dirty log (as
# a host crash leaves them, checked dirty before): replayed, trimmed, every file there,
# including those only the journal held. A raw image of the largest size qemu opens (8 EiB less
# 1 GiB, sparse, on a tmpfs): trimmed. Ends with the tally of bad inputs tried.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/hostile.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/hostile.sh"

qt_need xfs_io xfs_logprint xfs_db dumpe2fs debugfs mkswap gzip
qt_scenario_start hostile-disks
d=$QT_IMAGES
S=512 # sfdisk's sectors

# fs_is JSON NAME STATE [MESSAGE-PREFIX]: what the job said of filesystem NAME.
fs_is() {
        local got
        got=$(hx_json_fs "$1" "$2")
        if [[ ${got%% *} == "$3" && ${got#* } == "${4:-}"* ]]; then
                qt_ok "$2: $got"
        else
                hx_failed "$(basename -- "$1" .json): $2 is '$got', expected '$3 ${4:-}...'"
        fi
}
# Keep only the named filesystems in an image's manifest: the others are not to be touched,
# and are checked byte for byte instead.
manifest_keep() { # IMG NAME...
        local m names
        m=$(qt_manifest "$1")
        names=$(printf '%s\n' "${@:2}" | jq -R . | jq -s .)
        jq --argjson keep "$names" '.filesystems |= map(select(.name as $n | $keep | index($n)))
                | .guest_used_bytes = (.filesystems | map(.used_bytes) | add)' "$m" >"$m.new"
        mv -f -- "$m.new" "$m"
}
# inspected_is IMG NAME MESSAGE: what Inspect() (discovery alone, nothing trimmed) says it would
# do with NAME (without the "; N in the image" that follows).
inspected_is() {
        local got
        got=$(busctl --system --json=short call org.qtrim1 /org/qtrim1 org.qtrim1.Manager Inspect sa{sv} "$1" 0 |
                jq -r --arg n "$2" '.data[1][] | select(.[0] == $n) | .[6] | sub("; [^;]* in the image$"; "")')
        if [[ $got == "$3" ]]; then
                qt_ok "Inspect: $2: $got"
        else
                hx_failed "Inspect $(basename -- "$1"): $2 says '$got', expected '$3'"
        fi
}
# shrink IMG: qtrimctl shrink --json; the JSON lands in $QT_WORK/NAME.json, its result in $result.
shrink() {
        json=$QT_WORK/$(basename -- "$1").json
        before=$(allocated_bytes "$1")
        hx_shrink_json "$json" "$1"
        result=$(hx_json "$json" .result)
        qt_info "$(basename -- "$1"): $result$(hx_json "$json" .error_message | sed 's/^./: &/')"
        [[ $result == "done" ]] || hx_failed "$(basename -- "$1"): $result: $(cat "$json.err")"
}
# A filesystem made in a file of its own and copied into a raw disk at OFFSET.
put_fs() { # RAW OFFSET SIZE MKFS [THEN...]
        local raw=$1 off=$2 size=$3 mkfs=$4 f=$QT_SCRATCH/fs.img
        shift 4
        rm -f -- "$f"
        truncate -s "$size" -- "$f"
        $mkfs "$f" >/dev/null 2>&1 || qt_fail "$mkfs failed"
        (($# == 0)) || "$@" "$f" >/dev/null 2>&1 || qt_fail "$* failed"
        dd if="$f" of="$raw" bs=1M oflag=seek_bytes seek="$off" conv=notrunc,sparse status=none
        rm -f -- "$f"
}

qt_step "GPT with overlapping entries: p2 moved to start in the middle of p1"
img=$d/overlap.qcow2
raw=$QT_SCRATCH/overlap.raw
frag=$QT_SCRATCH/overlap.frag
truncate -s 512M -- "$raw"
printf 'label: gpt\nsize=160MiB, type=L\nsize=160MiB, type=L\nsize=160MiB, type=L\n' | sfdisk -q -- "$raw" >/dev/null
_qt_populate_part "$frag" "$raw" 1 ext4 96 4K 1M 8M
_qt_populate_part "$frag" "$raw" 2 ext4 96 8K 2M
_qt_populate_part "$frag" "$raw" 3 ext4 96 12K 3M 6M
p1_start=$((1 << 20))
hx_gpt_set "$raw" 1 $(((p1_start + (80 << 20)) / S)) $(((160 << 20) / S))
sfdisk -d -- "$raw" | grep -q "start= *$(((p1_start + (80 << 20)) / S)), size= *$(((160 << 20) / S))" ||
        qt_fail "the edited GPT does not read back as edited"
_qt_finish_qcow2 "$raw" "$img" full
_qt_write_manifest "$img" qcow2 gpt "$frag"
manifest_keep "$img" p3
qt_expect_files
span=$(((80 + 160) << 20)) # p1 and the moved p2 together
sha=$(hx_disk_range_sha "$img" "$p1_start" "$span")
inspected_is "$img" p1 "partition overlaps partition p2"
inspected_is "$img" p2 "partition overlaps partition p1"
inspected_is "$img" p3 "mounted and trimmed"
shrink "$img"
fs_is "$json" p1 skipped "partition overlaps partition p2"
fs_is "$json" p2 skipped "partition overlaps partition p1"
fs_is "$json" p3 trimmed
hx_tally "GPT, p2 starting inside p1" "$result: $(jq -r '[.[0].filesystems[] | "\(.name) \(.state)"] | join(", ")' "$json")"
[[ $(hx_disk_range_sha "$img" "$p1_start" "$span") == "$sha" ]] ||
        hx_failed "overlap: the overlapping partitions changed"
qt_ok "p1 and p2 byte for byte as they were"
verify_files "$img" >/dev/null
qt_ok "p3 intact after its trim"

qt_step "MBR with entries past the end of the disk: p2 runs past it, p3 starts past it"
img=$d/past-end.qcow2
raw=$QT_SCRATCH/past-end.raw
frag=$QT_SCRATCH/past-end.frag
truncate -s 1G -- "$raw"
printf 'label: dos\n,200MiB,L\n,400MiB,L\n,300MiB,L\n' | sfdisk -q -- "$raw" >/dev/null
_qt_populate_part "$frag" "$raw" 1 ext4 128 4K 2M 9M
truncate -s 400M -- "$raw"
_qt_finish_qcow2 "$raw" "$img" full
_qt_write_manifest "$img" qcow2 dos "$frag"
qt_expect_files
inspected_is "$img" p2 "partition extends past the end of the disk"
inspected_is "$img" p3 "partition extends past the end of the disk"
shrink "$img"
fs_is "$json" p1 trimmed
fs_is "$json" p2 skipped "partition extends past the end of the disk"
fs_is "$json" p3 skipped "partition extends past the end of the disk"
hx_tally "MBR, p2 past the end, p3 starting past it" "$result: $(jq -r '[.[0].filesystems[] | "\(.name) \(.state)"] | join(", ")' "$json")"
[[ $(qemu-img info -U --output=json -- "$img" | jq '."virtual-size"') == $((400 << 20)) ]] ||
        hx_failed "past-end: the virtual size changed"
verify_files "$img" >/dev/null
qt_ok "p1 intact after its trim"

qt_step "filesystems that refuse to mount, and a swap area, beside a dirty ext4"
img=$d/no-mount.qcow2
raw=$QT_SCRATCH/no-mount.raw
frag=$QT_SCRATCH/no-mount.frag
truncate -s 800M -- "$raw"
printf 'label: gpt\nsize=64MiB, type=L\nsize=320MiB, type=L\nsize=32MiB, type=S\nsize=240MiB, type=L\n' |
        sfdisk -q -- "$raw" >/dev/null
read -r off1 _ < <(_qt_part_geometry "$raw" 1)
read -r off2 size2 < <(_qt_part_geometry "$raw" 2)
read -r off3 size3 < <(_qt_part_geometry "$raw" 3)
# ext4 whose superblock claims more blocks than its partition has ("bad geometry").
put_fs "$raw" "$off1" $((64 << 20)) "mkfs.ext4 -q -F" debugfs -w -R 'ssv blocks_count 99999999'
# xfs with an incompatible feature bit no kernel knows ("unknown incompatible features").
put_fs "$raw" "$off2" "$size2" "mkfs.xfs -q -f" xfs_db -x -c 'sb 0' -c 'write -d features_incompat 0x80000000'
put_fs "$raw" "$off3" "$size3" mkswap
for n in 1 2; do
        read -r off size < <(_qt_part_geometry "$raw" "$n")
        qt_loop_attach dev "$raw" "$off" "$size" ro
        t=$(blkid -p -o value -s TYPE -- "$dev")
        qt_loop_detach "$dev"
        [[ $t == ext4 || $t == xfs ]] || qt_fail "no-mount: p$n reads as '$t' to blkid"
done
_qt_populate_part "$frag" "$raw" 4 ext4 128 4K 3M
_qt_finish_qcow2 "$raw" "$img" full
_qt_write_manifest "$img" qcow2 gpt "$frag"
qt_expect_files
span=$((off3 + size3 - off1))
sha=$(hx_disk_range_sha "$img" "$off1" "$span")
shrink "$img"
fs_is "$json" p1 skipped "cannot mount"
fs_is "$json" p2 skipped "cannot mount"
# The swap area's header page kept, the rest (zeroes, here) discarded: the bytes read the same.
fs_is "$json" p3 discarded "header page (label, UUID) kept"
fs_is "$json" p4 trimmed
hx_tally "ext4 with a bad block count" "$result: p1 $(hx_json_fs "$json" p1 | cut -d' ' -f1)"
hx_tally "xfs with an unknown incompatible feature" "$result: p2 $(hx_json_fs "$json" p2 | cut -d' ' -f1)"
hx_tally "swap area" "$result: p3 $(hx_json_fs "$json" p3 | cut -d' ' -f1)"
[[ $(hx_disk_range_sha "$img" "$off1" "$span") == "$sha" ]] ||
        hx_failed "no-mount: the partitions that did not mount changed"
qt_ok "p1 to p3 read byte for byte as they were"
verify_files "$img" >/dev/null
qt_ok "p4 intact after its trim"

qt_step "an ext4 with a dirty journal and an xfs with a dirty log"
img=$d/dirty-logs.qcow2
raw=$QT_SCRATCH/dirty-logs.raw
frag=$QT_SCRATCH/dirty-logs.frag
truncate -s 1G -- "$raw"
printf 'label: gpt\nsize=400MiB, type=L\nsize=400MiB, type=L\n' | sfdisk -q -- "$raw" >/dev/null
_qt_populate_part "$frag" "$raw" 1 ext4 128 4K 1M 8M
_qt_populate_part "$frag" "$raw" 2 xfs 128 12K 3M 16M
_qt_write_manifest "$raw" raw gpt "$frag"
m=$(qt_manifest "$raw")
for n in 1 2; do
        fstype=$(jq -r ".filesystems[$((n - 1))].fstype" "$m")
        read -r off size < <(_qt_part_geometry "$raw" "$n")
        qt_loop_attach dev "$raw" "$off" "$size"
        mnt=$QT_SCRATCH/mnt-dirty-$n
        qt_mount "$dev" "$mnt" "$(qt_rw_opts "$fstype")" "$fstype"
        # Junk written and deleted, a kept file deleted, a new one written: all of it synced to
        # the journal, nothing after; then the crash.
        head -c 48M /dev/urandom >"$mnt/junk.bin"
        sync -f "$mnt"
        rm -f -- "$mnt/junk.bin" "$mnt/keep/k0.bin"
        head -c 2M /dev/urandom >"$mnt/keep/in-journal.bin"
        sync -f "$mnt"
        sum=$(qt_sha256 "$mnt/keep/in-journal.bin")
        hx_shut_down "$mnt"
        hx_needs_recovery "$dev" "$fstype" || qt_fail "p$n ($fstype) is not dirty after the shutdown"
        # What a mount that does not replay sees: informational, the journal may be checkpointed.
        qt_mount "$dev" "$mnt" "$(qt_ro_opts "$fstype")" "$fstype"
        if [[ -e $mnt/keep/in-journal.bin ]]; then
                qt_info "p$n ($fstype): dirty; the new file is already in place too"
        else
                qt_info "p$n ($fstype): dirty; the new file exists only in the journal"
        fi
        qt_umount "$mnt"
        qt_loop_detach "$dev"
        jq --argjson i $((n - 1)) --arg sha "$sum" '.filesystems[$i].files |=
                (map(select(.path != "keep/k0.bin")) + [{ path: "keep/in-journal.bin", size: 2097152, sha256: $sha }])' \
                "$m" >"$m.new"
        mv -f -- "$m.new" "$m"
done
_qt_finish_qcow2 "$raw" "$img" full
jq --arg image "$img" '.image = $image' "$m" >"$(qt_manifest "$img")"
rm -f -- "$m"
qt_expect_files
shrink "$img"
fs_is "$json" p1 trimmed
fs_is "$json" p2 trimmed
hx_tally "ext4 with a dirty journal" "$result: p1 $(hx_json_fs "$json" p1 | cut -d' ' -f1)"
hx_tally "xfs with a dirty log" "$result: p2 $(hx_json_fs "$json" p2 | cut -d' ' -f1)"
qt_check_shrunk "$img" "$before" qcow2 >/dev/null
qt_ok "dirty-logs: shrunk, every file there (read without replay), fsck clean"
check=$QT_SCRATCH/dirty-after.raw
qemu-img convert -U -O raw -- "$img" "$check"
for n in 1 2; do
        fstype=$(jq -r ".filesystems[$((n - 1))].fstype" "$(qt_manifest "$img")")
        read -r off size < <(_qt_part_geometry "$check" "$n")
        qt_loop_attach dev "$check" "$off" "$size" ro
        ! hx_needs_recovery "$dev" "$fstype" || hx_failed "dirty-logs: p$n ($fstype) still needs recovery"
        qt_loop_detach "$dev"
done
rm -f -- "$check"
qt_ok "both journals replayed: nothing left to recover"

qt_step "a raw image of 8 EiB less 1 GiB (the most qemu opens), sparse, on a tmpfs"
huge_dir=$QT_WORK/huge
qt_mount qtrim-test-tmpfs "$huge_dir" size=400m tmpfs
img=$huge_dir/huge.raw
frag=$QT_SCRATCH/huge.frag
truncate -s $(((1 << 63) - (1 << 30))) -- "$img"
printf 'label: gpt\nsize=160MiB, type=L\n' | sfdisk -q -- "$img" >/dev/null
_qt_populate_part "$frag" "$img" 1 ext4 96 4K 2M 7M
_qt_write_manifest "$img" raw gpt "$frag"
inode=$(stat -c %i -- "$img")
shrink "$img"
fs_is "$json" p1 trimmed
hx_tally "raw image of 8 EiB - 1 GiB" "$result: p1 $(hx_json_fs "$json" p1 | cut -d' ' -f1)"
after=$(allocated_bytes "$img")
((after < before)) || hx_failed "huge: allocation did not fall ($(qt_human "$before") -> $(qt_human "$after"))"
[[ $(stat -c %i -- "$img") == "$inode" && $(stat -c %s -- "$img") == $(((1 << 63) - (1 << 30))) ]] ||
        hx_failed "huge: the image was replaced or resized"
qt_ok "huge: $(qt_human "$before") -> $(qt_human "$after") allocated, same file, same size"
hx_verify_raw_in_place "$img"
rm -f -- "$img"
qt_umount "$huge_dir"

hx_report
qt_scenario_end

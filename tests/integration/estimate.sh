#!/bin/bash
# The estimate before a shrink: `qtrimctl inspect` (Inspect with "estimate") says per image how
# many allocated bytes hold space the guest does not use, and a real shrink then reclaims that
# much: |estimate - reclaimed| <= 5 % of reclaimed, with reclaimed = allocation before minus
# after (stat's blocks), for the shrink with and without --no-convert. Inspect and
# `shrink --dry-run` leave the image byte-identical, mtime and inode included.
#   fedora-like: GPT, ESP (FAT32, its own map), /boot ext4, gaps, LVM: root xfs, swap LV, free
#     extents (tests/lib/layouts.sh);
#   windows-gpt: ESP FAT32, MSR, C: NTFS (tests/lib/windows.sh);
#   gpt-ext4-xfs: plain GPT, ext4 and xfs with deleted data, as a VM's image holds it (sparse), and
#     as images.sh builds it, every cluster allocated, shrunk with --no-convert only: there a
#     compact copy would also drop the zeros the guest keeps (xfs log, zero-filled files), which
#     no estimate of free space sees; and that image with its zeroed clusters dug out as host
#     holes (a sparse copy), which hold no host bytes to reclaim.
# Each disk is built once and copied for the second shrink.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/layouts.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/layouts.sh"
# shellcheck source=tests/lib/windows.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/windows.sh"

qt_scenario_start estimate
qt_need lvm mkfs.vfat mcopy mkntfs ntfs-3g ntfscp

failures=()
table=()

# untouched_by IMG COMMAND...: runs a qtrimctl command that must not change IMG at all.
untouched_by() {
        local img=$1 before
        shift
        before=$(qt_file_fingerprint "$img")
        qt_qtrimctl "$@" >"$QT_WORK/out" || qt_fail "qtrimctl $* failed: $(cat "$QT_WORK/out")"
        [[ $(qt_file_fingerprint "$img") == "$before" ]] ||
                failures+=("$(basename -- "$img"): changed by qtrimctl $*")
}

# estimate_then_shrink IMG [SHRINK-OPTION...]: the estimate, then the shrink, compared.
estimate_then_shrink() {
        local img=$1 name estimate dry before after reclaimed error
        name=$(basename -- "$img" .qcow2)
        untouched_by "$img" inspect --json "$img"
        estimate=$(jq '.info.ReclaimableBytes' "$QT_WORK/out")
        jq -r '.info.Estimate[] | "    | \(.name) used \(.used_bytes) free \(.free_bytes) reclaimable \(.reclaimable_bytes)"' "$QT_WORK/out"
        # The dry run of a shrink says the same, and changes nothing either.
        untouched_by "$img" shrink --dry-run --json "$img"
        dry=$(jq '.[0].reclaimable_bytes' "$QT_WORK/out")
        [[ $dry == "$estimate" ]] || failures+=("$name: shrink --dry-run says $dry, inspect $estimate")
        before=$(allocated_bytes "$img")
        shrink_json "$img" "${@:2}"
        after=$(allocated_bytes "$img")
        reclaimed=$((before - after))
        error=$(awk -v e="$estimate" -v r="$reclaimed" 'BEGIN { printf "%.2f", r ? 100 * (e - r) / r : 100 }')
        table+=("$(printf '%-22s %-12s estimate %11d reclaimed %11d error %6s %%' "$name" "${2:-convert}" "$estimate" "$reclaimed" "$error")")
        qt_ok "${table[-1]}"
        awk -v e="$error" 'BEGIN { exit !(e <= 5 && e >= -5) }' ||
                failures+=("$name ${2:-convert}: estimate $estimate, reclaimed $reclaimed ($error %)")
}

qt_step "fedora-like: ESP, /boot, LVM (root xfs, swap LV, free extents), gaps"
make_fedora_like "$QT_IMAGES/fedora.qcow2"
qt_clone_image "$QT_IMAGES/fedora.qcow2" "$QT_IMAGES/fedora-nc.qcow2"
# The table says it too: a line for the image, a column per volume ("~" for "≈": LC_ALL=C).
untouched_by "$QT_IMAGES/fedora.qcow2" inspect "$QT_IMAGES/fedora.qcow2"
sed 's/^/    | /' "$QT_WORK/out"
grep -qE '^A shrink: +~ [0-9.]+ [KMG]iB reclaimable of [0-9.]+ [KMG]iB allocated \(would be ~ [0-9.]+ [KMG]iB\)$' "$QT_WORK/out" ||
        failures+=("fedora: inspect has no 'A shrink: ~ N reclaimable of A allocated (would be ~ B)' line")
grep -qE '^fedora/root +xfs .* ~ [0-9.]+ [KMG]iB +mounted and trimmed' "$QT_WORK/out" ||
        failures+=("fedora: inspect's row of fedora/root has no USED, FREE, RECLAIMABLE")
estimate_then_shrink "$QT_IMAGES/fedora.qcow2"
estimate_then_shrink "$QT_IMAGES/fedora-nc.qcow2" --no-convert

qt_step "windows-gpt: ESP (FAT32), MSR, C: NTFS"
make_windows_gpt "$QT_IMAGES/windows.qcow2"
qt_clone_image "$QT_IMAGES/windows.qcow2" "$QT_IMAGES/windows-nc.qcow2"
estimate_then_shrink "$QT_IMAGES/windows.qcow2"
estimate_then_shrink "$QT_IMAGES/windows-nc.qcow2" --no-convert

qt_step "plain GPT: ext4 and xfs with deleted data"
make_gpt_ext4_xfs "$QT_IMAGES/full.qcow2"
# The same guest disk as a VM's image holds it: what the guest wrote, no more.
qt_clone_image "$QT_IMAGES/full.qcow2" "$QT_IMAGES/gpt.qcow2"
qemu-img convert -f qcow2 -O qcow2 -- "$QT_IMAGES/full.qcow2" "$QT_IMAGES/gpt.qcow2"
qt_clone_image "$QT_IMAGES/gpt.qcow2" "$QT_IMAGES/gpt-nc.qcow2"
estimate_then_shrink "$QT_IMAGES/gpt.qcow2"
estimate_then_shrink "$QT_IMAGES/gpt-nc.qcow2" --no-convert
# The same, every cluster mapped but the zeroed ones holes in the host file (what cp makes of
# a preallocated image): clusters that hold no host bytes are not counted as reclaimable.
qt_clone_image "$QT_IMAGES/full.qcow2" "$QT_IMAGES/holes.qcow2"
fallocate --dig-holes -- "$QT_IMAGES/holes.qcow2"
estimate_then_shrink "$QT_IMAGES/holes.qcow2" --no-convert
# Every cluster allocated: the trim's part is as exact, only a compact copy would drop more.
estimate_then_shrink "$QT_IMAGES/full.qcow2" --no-convert

qt_step "estimate vs reclaimed (bound: 5 % of reclaimed)"
printf '    %s\n' "${table[@]}"
if ((${#failures[@]})); then
        printf '    FAILED: %s\n' "${failures[@]}" >&2
        qt_fail "${#failures[@]} estimate check(s) failed"
fi
qt_scenario_end

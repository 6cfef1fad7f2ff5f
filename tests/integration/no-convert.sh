#!/bin/bash
# qtrimctl --no-convert shrink: the image is trimmed in place and nothing more. Allocation falls,
# the file is the same inode (no copy was renamed over it), qemu-img check stays clean and every
# kept file is intact.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start no-convert

img=$QT_IMAGES/gpt.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2"
make_gpt_ext4_xfs "$img"
assert_dirty "$img"
qt_expect_files
before=$(allocated_bytes "$img")
inode=$(stat -c %i -- "$img")
size=$(stat -c %s -- "$img")

qt_step "qtrimctl --no-convert --json shrink"
json=$QT_WORK/shrink.json
rc=0
qt_qtrimctl --no-convert --json shrink "$img" >"$json" 2>"$QT_WORK/shrink.err" || rc=$?
cat "$QT_WORK/shrink.err"
((rc == 0)) || qt_fail "qtrimctl --no-convert shrink exited with $rc"
jq -c '.[] | del(.filesystems)' "$json" | sed 's/^/    | /'

qt_step "check the result"
jq -e '.[0].result == "done" and .[0].converted == false' "$json" >/dev/null ||
        qt_fail "JSON: expected result done and converted false"
after=$(allocated_bytes "$img")
((after < before)) || qt_fail "allocation did not fall: $(qt_human "$before") -> $(qt_human "$after")"
qt_ok "trimmed in place: $(qt_human "$before") -> $(qt_human "$after") allocated"
jq -e --argjson a "$after" '.[0].bytes_after == $a' "$json" >/dev/null ||
        qt_fail "JSON bytes_after $(jq '.[0].bytes_after' "$json") is not the allocation measured now ($after)"
[[ $(stat -c %i -- "$img") == "$inode" ]] || qt_fail "the image was replaced (new inode) despite --no-convert"
[[ $(stat -c %s -- "$img") == "$size" ]] || qt_fail "the image's length changed despite --no-convert"
qt_ok "same inode, same length: not replaced"
# In place, the zeros the guest keeps stay allocated (only a convert drops them): the 1.10 x
# bound is reported, not required.
used=$(jq '.guest_used_bytes' "$(qt_manifest "$img")")
qt_info "allocation is $(awk -v a="$after" -v u="$used" 'BEGIN { printf "%.2f", a / u }') x guest used ($(qt_human "$used"))"
assert_qemu_img_check "$img"
verify_files "$img"

qt_scenario_end

#!/bin/bash
# qtrimctl --json shrink on a qcow2 with an MBR: primary p1 ext4, logical p5 ext4 and p6 btrfs
# in an extended partition. Checks the result and the JSON report against what the image holds.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start shrink-mbr-logical

img=$QT_IMAGES/mbr.qcow2
manifest=$(qt_manifest "$img")
qt_step "build a dirty MBR qcow2 with logical partitions (ext4, ext4, btrfs)"
make_mbr_logical "$img"
assert_dirty "$img"
qt_expect_files
before=$(allocated_bytes "$img")

qt_step "qtrimctl --json shrink"
json=$QT_WORK/shrink.json
rc=0
qt_qtrimctl --json shrink "$img" >"$json" 2>"$QT_WORK/shrink.err" || rc=$?
cat "$QT_WORK/shrink.err"
((rc == 0)) || qt_fail "qtrimctl --json shrink exited with $rc"
jq . "$json" >/dev/null || qt_fail "qtrimctl --json printed no valid JSON: $(head -c 500 "$json")"
jq -c '.[] | del(.filesystems)' "$json" | sed 's/^/    | /'

qt_step "check the JSON report"
after=$(allocated_bytes "$img")
jq -e 'type == "array" and length == 1' "$json" >/dev/null || qt_fail "expected a JSON array of one job"
jq -e --arg img "$img" '.[0].image == $img' "$json" >/dev/null || qt_fail "JSON image is not $img"
jq -e '.[0].result == "done"' "$json" >/dev/null || qt_fail "JSON result is $(jq -c '.[0].result' "$json"), expected \"done\""
jq -e '.[0].error == null' "$json" >/dev/null || qt_fail "JSON error is set: $(jq -c '.[0].error' "$json")"
jq -e '.[0].bytes_after < .[0].bytes_before' "$json" >/dev/null || qt_fail "JSON bytes_after is not below bytes_before"
jq -e --argjson b "$before" '.[0].bytes_before == $b' "$json" >/dev/null ||
        qt_fail "JSON bytes_before $(jq '.[0].bytes_before' "$json") is not the allocation measured before ($before)"
jq -e --argjson a "$after" '.[0].bytes_after == $a' "$json" >/dev/null ||
        qt_fail "JSON bytes_after $(jq '.[0].bytes_after' "$json") is not the allocation measured now ($after)"
jq -e '.[0].converted == true and .[0].format == "qcow2"' "$json" >/dev/null || qt_fail "JSON: not converted, or format not qcow2"
jq -e --argjson v "$(jq .virtual_size "$manifest")" '.[0].virtual_size == $v' "$json" >/dev/null || qt_fail "JSON virtual_size is wrong"
# Every filesystem of the image was found where it is, and trimmed.
for name in $(jq -r '.filesystems[].name' "$manifest"); do
        jq -e --arg n "$name" --slurpfile m "$manifest" '
                ($m[0].filesystems[] | select(.name == $n)) as $want
                | [.[0].filesystems[] | select(.name == $n)] | length == 1 and
                  (.[0] | .fstype == $want.fstype and .offset == $want.offset and .size == $want.size
                          and .state == "trimmed" and .trimmed > 0)' "$json" >/dev/null ||
                qt_fail "JSON filesystem $name: $(jq -c --arg n "$name" '[.[0].filesystems[] | select(.name == $n)]' "$json"), expected trimmed $(jq -c --arg n "$name" '.filesystems[] | select(.name == $n) | {fstype, offset, size}' "$manifest")"
        qt_ok "$name: $(jq -r --arg n "$name" '.[0].filesystems[] | select(.name == $n) | "\(.fstype) trimmed \(.trimmed) bytes"' "$json")"
done
jq -e '.[0].bytes_trimmed == ([.[0].filesystems[].trimmed] | add)' "$json" >/dev/null ||
        qt_fail "JSON bytes_trimmed is not the sum over filesystems"
qt_ok "JSON report matches"

qt_step "check the result"
qt_check_shrunk "$img" "$before" qcow2

qt_scenario_end

#!/bin/bash
# qtrimctl shrink on qcow2 overlays: one whose backing reference is relative, one absolute. The
# overlay shrinks, keeps its backing reference and format exactly, and the backing file is not
# touched (same sha256, same mtime).
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start shrink-overlay

base=$QT_IMAGES/base.qcow2
rel=$QT_IMAGES/overlay-rel.qcow2
abs=$QT_IMAGES/overlay-abs.qcow2
qt_step "build a base and a dirty overlay on it (relative reference), clone it with an absolute one"
make_overlay "$base" "$rel" base.qcow2
qt_clone_image "$rel" "$abs"
qemu-img rebase -u -b "$base" -F qcow2 -- "$abs"
jq --arg ref "$base" '.backing.ref = $ref' "$(qt_manifest "$abs")" >"$QT_SCRATCH/m" && mv -- "$QT_SCRATCH/m" "$(qt_manifest "$abs")"
for img in "$rel" "$abs"; do
        assert_dirty "$img"
        verify_files "$img"
done
qt_expect_files
base_print=$(qt_file_fingerprint "$base")
declare -A before
for img in "$rel" "$abs"; do before[$img]=$(allocated_bytes "$img"); done

qt_step "qtrimctl shrink (both overlays)"
qt_qtrimctl_ok shrink "$rel" "$abs"

qt_step "check the result"
for img in "$rel" "$abs"; do
        qt_check_shrunk "$img" "${before[$img]}" qcow2
        info=$(qemu-img info -U --output=json -- "$img")
        ref=$(jq -r '.backing.ref' "$(qt_manifest "$img")")
        [[ $(jq -r '."backing-filename" // ""' <<<"$info") == "$ref" ]] ||
                qt_fail "$(basename -- "$img"): backing reference is now '$(jq -r '."backing-filename" // ""' <<<"$info")', was '$ref'"
        [[ $(jq -r '."backing-filename-format" // ""' <<<"$info") == qcow2 ]] ||
                qt_fail "$(basename -- "$img"): backing format is now '$(jq -r '."backing-filename-format" // ""' <<<"$info")'"
        qt_ok "$(basename -- "$img"): backing reference '$ref' (qcow2) unchanged"
done
[[ $(qt_file_fingerprint "$base") == "$base_print" ]] || qt_fail "the backing file changed"
[[ $(qt_sha256 "$base") == "$(jq -r '.backing.sha256' "$(qt_manifest "$rel")")" ]] || qt_fail "the backing file's sha256 changed"
qt_ok "backing file unchanged (sha256, mtime, inode)"

qt_scenario_end

#!/bin/bash
# A compat=0.10 (qcow2 v2) image has no zero clusters: a punched hole cannot be recorded in
# metadata there, and writing real zeroes instead would grow the image by every byte trimmed.
# Trimmed in place it must shrink, and the compact copy must stay compat=0.10, files intact.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start shrink-compat010

img=$QT_IMAGES/v2.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2 and turn it into compat=0.10"
make_gpt_ext4_xfs "$QT_SCRATCH/v3.qcow2"
qemu-img convert -S 0 -O qcow2 -o compat=0.10 "$QT_SCRATCH/v3.qcow2" "$img"
cp -- "$(qt_manifest "$QT_SCRATCH/v3.qcow2")" "$(qt_manifest "$img")"
qt_expect_files
before=$(allocated_bytes "$img")

qt_step "qtrimctl shrink --no-convert: trimmed in place"
qt_qtrimctl_ok shrink --no-convert "$img"
trimmed=$(allocated_bytes "$img")
((trimmed < before)) || qt_fail "allocation did not fall: $(qt_human "$before") -> $(qt_human "$trimmed")"
qt_ok "$(qt_human "$before") -> $(qt_human "$trimmed") allocated in place"

qt_step "qtrimctl shrink: the copy keeps compat=0.10"
qt_qtrimctl_ok shrink "$img"
compat=$(qemu-img info --output=json -- "$img" | jq -r '."format-specific".data.compat')
[[ $compat == 0.10 ]] || qt_fail "the copy is compat=$compat, expected 0.10"
qt_ok "compat=0.10 kept, $(qt_human "$(allocated_bytes "$img")") allocated"
assert_shrunk "$img"
assert_qemu_img_check "$img"
verify_files "$img"

qt_scenario_end

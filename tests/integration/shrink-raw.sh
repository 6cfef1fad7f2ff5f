#!/bin/bash
# qtrimctl shrink on a raw image with ext4 on the whole disk (no partition table): it stays raw,
# same virtual size, sparse, with the kept files intact.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start shrink-raw

img=$QT_IMAGES/disk.raw
qt_step "build a dirty raw image, ext4 on the whole disk"
make_raw_whole "$img"
assert_dirty "$img"
qt_expect_files
before=$(allocated_bytes "$img")
size=$(stat -c %s -- "$img")

qt_step "qtrimctl shrink"
qt_qtrimctl_ok shrink "$img"

qt_step "check the result"
qt_check_shrunk "$img" "$before" raw
[[ $(stat -c %s -- "$img") == "$size" ]] || qt_fail "raw image size changed: $size -> $(stat -c %s -- "$img")"
qt_ok "raw image keeps its size ($size bytes)"

qt_scenario_end

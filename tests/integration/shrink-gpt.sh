#!/bin/bash
# qtrimctl shrink on a qcow2 with a GPT, ext4 on p1 and xfs on p2, a lot deleted on both: the
# image must end up compact, check clean, with every kept file intact and nothing left behind.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start shrink-gpt

img=$QT_IMAGES/gpt.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2"
make_gpt_ext4_xfs "$img"
assert_dirty "$img"
qt_expect_files
before=$(allocated_bytes "$img")
inode=$(stat -c %i -- "$img")

qt_step "qtrimctl shrink"
qt_qtrimctl_ok shrink "$img"

qt_step "check the result"
qt_check_shrunk "$img" "$before" qcow2
# The compact copy was renamed over the image: a new inode at the same path.
[[ $(stat -c %i -- "$img") != "$inode" ]] || qt_fail "image was not replaced by a converted copy"
qt_ok "image replaced by its converted copy"

qt_scenario_end

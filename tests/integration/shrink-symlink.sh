#!/bin/bash
# An image named through a symbolic link (as storage pools often do): the file it names is
# shrunk, beside itself, and the link stays a link to it.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start shrink-symlink

target_dir=$QT_WORK/pool
mkdir -- "$target_dir"
target=$target_dir/vm.qcow2
link=$QT_IMAGES/vm.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2 in another directory and link to it"
make_gpt_ext4_xfs "$target"
ln -s -- "$target" "$link"
qt_expect_files
before=$(allocated_bytes "$target")

qt_step "qtrimctl shrink through the link"
qt_qtrimctl_ok shrink "$link"

qt_step "check the result"
[[ -L $link && $(readlink -- "$link") == "$target" ]] || qt_fail "the link was replaced or changed"
qt_ok "the link is still a link to $target"
left=$(find "$target_dir" -name '.*.qtrim-*')
[[ -z $left ]] || qt_fail "temporary copy left beside the target: $left"
qt_check_shrunk "$target" "$before" qcow2

qt_scenario_end

#!/bin/bash
# Images kept on a btrfs host filesystem, No_COW (chattr +C) as such hosts keep them: the copy
# that replaces the image must be No_COW too (or every guest write fragments it), and qtrim's
# temporary copy lives beside the image on that filesystem.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start shrink-on-btrfs-host

qt_step "a btrfs host filesystem for the image directory"
host_fs=$QT_SCRATCH/host-btrfs.img
truncate -s 3G -- "$host_fs"
mkfs.btrfs -q -f -- "$host_fs" >/dev/null
qt_loop_attach dev "$host_fs" 0 $((3 << 30))
pool=$QT_WORK/pool
qt_mount "$dev" "$pool" rw btrfs
chattr +C -- "$pool" # the image is made No_COW by being created in a +C directory

img=$pool/vm.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2 on it"
make_gpt_ext4_xfs "$img"
lsattr -- "$img" | grep -q '^[^ ]*C' || qt_fail "the image was not created No_COW in a +C directory"
# From here new files in the directory are not No_COW: only qtrim can make its copy so.
chattr -C -- "$pool"
inode=$(stat -c %i -- "$img")
before=$(allocated_bytes "$img")

qt_step "qtrimctl shrink"
qt_qtrimctl_ok shrink "$img"

qt_step "check the result"
[[ $(stat -c %i -- "$img") != "$inode" ]] || qt_fail "the image was not replaced by its copy"
lsattr -- "$img" | grep -q '^[^ ]*C' || qt_fail "the copy lost No_COW: $(lsattr -- "$img")"
qt_ok "the copy is No_COW like the original"
left=$(find "$pool" -name '.*.qtrim-*')
[[ -z $left ]] || qt_fail "temporary copy left: $left"
qt_check_shrunk "$img" "$before" qcow2
# The test's own host filesystem goes before the leftover checks look.
qt_undo umount -- "$pool"
qt_undo losetup -d "$dev"

qt_scenario_end

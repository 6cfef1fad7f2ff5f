#!/usr/bin/env bash
# qtrim's main job, end to end, on a sample image it makes itself: installs what is missing,
# builds, starts a private system bus and qtrimd on it, builds a dirty 1 GiB qcow2 (GPT, ext4 +
# xfs, a few hundred MiB written and deleted), shows it, shrinks it with qtrimctl, shows it
# again and checks the kept files independently. Leaves nothing behind. Run as root.
set -euo pipefail
top=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

if [[ $EUID != 0 ]]; then
        echo "demo.sh: qtrim attaches loop devices and mounts guest filesystems; run as root" >&2
        exit 1
fi
"$top/tools/install-deps.sh"
export BUILD_DIR=${BUILD_DIR:-$top/build}
[[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" "$top" >/dev/null
ninja -C "$BUILD_DIR" >/dev/null

# shellcheck source=tests/lib/bus.sh
source "$top/tests/lib/bus.sh"
# shellcheck source=tests/lib/images.sh
source "$top/tests/lib/images.sh"
# shellcheck source=tests/lib/verify.sh
source "$top/tests/lib/verify.sh"

qt_init_workdir demo
qt_step "making a sample dirty image"
img=$QT_IMAGES/vm1.qcow2
make_gpt_ext4_xfs "$img"

show() {
        qt_info "$(qemu-img info -U -- "$img" | grep -E '^(virtual size|disk size)' | paste -sd ';')"
        qt_info "allocated on the host: $(qt_human "$(allocated_bytes "$img")"), file length $(qt_human "$(stat -c %s "$img")")"
}
qt_step "before"
show
qt_info "the guest filesystems use $(qt_human "$(jq .guest_used_bytes "$(qt_manifest "$img")")")"

qt_step "starting a private system bus and qtrimd"
qt_bus_start
qt_daemon_start

qt_step "qtrimctl inspect $img"
"$QT_QTRIMCTL" inspect "$img"
qt_step "qtrimctl shrink $img"
"$QT_QTRIMCTL" shrink "$img"

qt_step "after"
show
qt_step "checking the guest's kept files without qtrim (qemu-img convert -O raw, read-only loop mounts)"
verify_files "$img" "$(qt_manifest "$img")"
assert_qemu_img_check "$img"
qt_daemon_stop
assert_no_leftovers
qt_step "done: everything was cleaned up"

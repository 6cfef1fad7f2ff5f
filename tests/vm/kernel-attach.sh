#!/bin/bash
# The kernel-nbd attach path (qemu-nbd -c /dev/nbdN), which the build machines' kernel cannot run
# (no nbd module): boots a script-mode guest (run-guest.sh), loads nbd there and runs the
# integration tests shrink-gpt, shrink-mbr-logical, shrink-raw and layouts (guest-shaped disks:
# swap, EBRs, gaps, an LV in two places; QT_LAYOUTS picks its disks, default "mbr twopvs"),
# unchanged, with every qtrimd started as `qtrimd --attach=kernel`. Then no /dev/nbdN may still be
# connected, no qemu-nbd may run and no device-mapper device may be left, and an nbd device must
# have been connected while they ran (the kernel path was taken).
#
# QT_VM_ATTACH=fuse runs the same tests on the FUSE path in the same guest (nbd not loaded,
# --attach=fuse, no nbd device may ever connect): the harness's own check. QT_VM_TESTS overrides
# the list of integration tests. Host side: as meson runs it (BUILD_DIR, SOURCE_DIR), results in
# $BUILD_DIR/vm/results/kernel-attach[-fuse].
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
attach=${QT_VM_ATTACH:-kernel}
tests=${QT_VM_TESTS:-shrink-gpt shrink-mbr-logical shrink-raw layouts}
# layouts.sh's disks: mbr (swap, hibernated swap, logical partitions and their EBRs, gaps, and
# --keep-gaps) is what the kernel path does with partition nodes, BLKDISCARD and write-zeroes on
# the nbd device. twopvs (an LV in two segments, mounted through a device-mapper linear device of
# qtrim's own over partition nodes made at its extents) is where the kernel path differs from the
# FUSE file. fedora (LVs through partition nodes qtrim makes over their extents) runs in
# vm-kernel-host-lvm, with a host VG of the same name; ldm and thin are lvm-meta.c's decisions,
# the same on both paths. Each disk costs minutes of TCG time (mbr ~5 min, fedora ~7 min):
# QT_LAYOUTS adds them.
layouts=${QT_LAYOUTS:-mbr twopvs}

# ---- on the host: boot the guest with this script as its payload --------------------------
if [[ -z ${QTRIM_VM_GUEST:-} ]]; then
        build_dir=${BUILD_DIR:-$here/../../build}
        name=kernel-attach
        [[ $attach == kernel ]] || name+=-$attach
        export QT_VM_ENV="${QT_VM_ENV:-} QT_VM_ATTACH QT_VM_TESTS QT_LAYOUTS"
        export QT_VM_ATTACH=$attach QT_VM_TESTS=$tests QT_LAYOUTS=$layouts
        exec "$here/run-guest.sh" script "${BASH_SOURCE[0]}" "$build_dir/vm/results/$name"
fi

# ---- in the guest (PID 1's child, script mode) ---------------------------------------------
say() { printf '==> %s\n' "$*"; }
fail() {
        printf 'FAIL: %s\n' "$*" >&2
        exit 1
}

# device-mapper devices (dm-N): none of this guest's own, so every one is a leftover.
dm_devices() {
        local d
        for d in /sys/block/dm-*; do
                [[ -e $d ]] && printf '%s(%s)\n' "${d##*/}" "$(<"$d/dm/name")"
        done
        return 0
}

# Connected nbd devices: the kernel shows a pid file only while a client holds the device.
connected_nbds() {
        local f
        for f in /sys/block/nbd*/pid; do
                [[ -e $f ]] && printf '%s\n' "${f%/pid}"
        done
        return 0
}

# Records every nbd device seen connected, while the tests run. Builtins only, even to wait
# (read -t on a pipe nobody writes): a sleep(1) every 0.2 s is an exec, 0.1 s of CPU under TCG.
start_nbd_watch() {
        local log=$1
        (
                exec {fd}<> <(:)
                while :; do
                        for f in /sys/block/nbd*/pid; do
                                [[ -e $f ]] && printf '%s\n' "${f%/pid}"
                        done
                        read -r -t 0.2 -u "$fd" _ || true
                done
        ) >"$log" 2>/dev/null &
        watch_pid=$!
}

case $attach in
kernel)
        say "modprobe nbd dm-mod"
        modprobe nbd || fail "modprobe nbd failed"
        [[ -b /dev/nbd0 ]] || fail "no /dev/nbd0 after modprobe nbd"
        # An LV in several places is a device-mapper device: qtrim opens /dev/mapper/control, which
        # devtmpfs makes when the module loads (no udev here to load it on demand).
        modprobe dm-mod || fail "modprobe dm-mod failed"
        [[ -c /dev/mapper/control ]] || fail "no /dev/mapper/control after modprobe dm-mod"
        extra=--attach=kernel
        ;;
fuse) extra=--attach=fuse ;;
auto) extra= ;;
*) fail "QT_VM_ATTACH must be kernel, fuse or auto, not '$attach'" ;;
esac
export QT_QTRIMD_EXTRA_ARGS="${QT_QTRIMD_EXTRA_ARGS:+$QT_QTRIMD_EXTRA_ARGS }$extra"
# What lvm2's tmpfiles.d makes at boot on a real host (script mode has a fresh /run): layouts.sh
# fingerprints /run/lvm before and after.
mkdir -p /run/lvm /run/lock/lvm
chmod 0700 /run/lvm /run/lock/lvm
# Nothing else runs in this guest: every loop device, FUSE mount and qemu-nbd is a leftover.
export QT_STRICT_LEFTOVERS=1
say "attach path $attach: QT_QTRIMD_EXTRA_ARGS='$QT_QTRIMD_EXTRA_ARGS', work dirs in $TMPDIR ($(stat -f -c %T -- "$TMPDIR"))"
[[ $(stat -f -c %T -- "$TMPDIR") == tmpfs ]] || fail "TMPDIR $TMPDIR is not a tmpfs"

# On the guest's tmpfs (each write to the results share is a round trip), copied there after.
watch_log=$TMPDIR/nbd-seen.log
start_nbd_watch "$watch_log"

failed=() passed=() skipped=()
for t in $tests; do
        say "$t"
        t0=$(date +%s.%N)
        rc=0
        "$SOURCE_DIR/tests/integration/$t.sh" || rc=$?
        secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
        case $rc in
        0) passed+=("$t (${secs}s)") ;;
        77) skipped+=("$t") ;;
        *) failed+=("$t (exit $rc, ${secs}s)") ;;
        esac
done

kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true

say "after the tests"
left=$(connected_nbds)
[[ -z $left ]] || failed+=("nbd devices still connected: $(tr '\n' ' ' <<<"$left")")
left=$(dm_devices)
[[ -z $left ]] || failed+=("device-mapper devices left: $(tr '\n' ' ' <<<"$left")")
if pgrep -x qemu-nbd >/dev/null; then
        failed+=("qemu-nbd still running: $(pgrep -a -x qemu-nbd | tr '\n' ';')")
fi
cp -- "$watch_log" "$QTRIM_VM_RESULTS/nbd-seen.log" || true
seen=$(sort -u -- "$watch_log" | tr '\n' ' ')
case $attach in
kernel)
        # Only if a test got as far as a shrink: then the job must have gone through /dev/nbdN.
        if ((${#passed[@]} > 0)) && [[ -z $seen ]]; then
                failed+=("no nbd device was ever connected: the kernel attach path was not taken")
        fi
        ;;
fuse) [[ -z $seen ]] || failed+=("nbd devices connected on the FUSE path: $seen") ;;
esac
printf '    nbd devices seen connected: %s\n' "${seen:-none}"

printf 'passed: %s\n' "${passed[*]:-none}"
printf 'skipped: %s\n' "${skipped[*]:-none}"
if ((${#failed[@]} > 0)); then
        printf 'FAILED: %s\n' "${failed[@]}" >&2
        exit 1
fi
((${#passed[@]} > 0)) || exit 77
printf 'PASS kernel-attach (%s path)\n' "$attach"

#!/bin/bash
# qtrimctl shrink --all (what qtrim-sweep.service runs) over a configured image directory:
#   1st sweep: two dirty images shrunk, one held by a running qemu-nbd skipped (and
#      byte-identical), files that do not match SweepPatterns and hidden files left alone;
#      exit 0, a summary line.
#   2nd sweep: nothing written since: all skipped, nothing touched.
#   3rd sweep: qemu-nbd gone, one image touched, a broken image added: the two shrunk, the
#      broken one failed, exit 1.
# Then qtrimd, left idle, exits by itself (IdleExitSec=) with status 0 and gives up its name.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start sweep
qt_daemon_stop
printf '[Daemon]\nIdleExitSec=0\nImageDirectories=%s %s/missing-dir\nSweepPatterns=*.qcow2 *.img\nFormats=*.img:qcow2\n' \
        "$QT_IMAGES" "$QT_WORK" >"$QT_DAEMON_CONFIG"
qt_daemon_start

a=$QT_IMAGES/a.qcow2
b=$QT_IMAGES/b.img
busy=$QT_IMAGES/busy.qcow2
qt_step "three dirty images, one of them served by qemu-nbd; and files the sweep must not take"
make_gpt_ext4_xfs "$a"
qt_clone_image "$a" "$b"
qt_clone_image "$a" "$busy"
cp -- "$a" "$QT_IMAGES/.hidden.qcow2"
cp -- "$a" "$QT_IMAGES/not-matched.raw"
qt_expect_files
qemu-nbd --persistent --socket="$QT_WORK/busy.sock" -f qcow2 -- "$busy" >/dev/null 2>&1 &
nbd_pid=$!
qt_defer qt_kill_wait "$nbd_pid" 5
for ((i = 0; i < 50; i++)); do [[ -S $QT_WORK/busy.sock ]] && break; sleep 0.1; done
[[ -S $QT_WORK/busy.sock ]] || qt_fail "qemu-nbd did not start"
sums=$QT_WORK/sums
sha256sum "$busy" "$QT_IMAGES/.hidden.qcow2" "$QT_IMAGES/not-matched.raw" >"$sums"
before_a=$(allocated_bytes "$a")
before_b=$(allocated_bytes "$b")

# Runs the sweep; sets out (its output) and rc.
sweep() {
        out=$QT_WORK/sweep.out
        rc=0
        qt_info "\$ qtrimctl shrink --all --verbose"
        qt_qtrimctl shrink --all --verbose >"$out" 2>&1 || rc=$?
        sed 's/^/    | /' "$out"
}
expect_line() { # PATTERN WHAT
        grep -qE -- "$1" "$out" || qt_fail "the sweep did not say: $2"
}

qt_step "first sweep"
sweep
((rc == 0)) || qt_fail "the sweep exited $rc"
expect_line "^$a: .* (→|->) .* allocated \(.* reclaimed\)" "a.qcow2 shrunk"
expect_line "^$b: .* (→|->) .* allocated \(.* reclaimed\)" "b.img shrunk"
expect_line "^$busy: skipped: .*" "busy.qcow2 skipped"
expect_line "missing-dir: does not exist, skipped" "the missing directory does not exist"
expect_line '^sweep: 3 image\(s\): 2 shrunk, 1 skipped, 0 failed; .* reclaimed' "the summary"
grep -q 'hidden\|not-matched' "$out" && qt_fail "the sweep took a hidden or unmatched file"
sha256sum --quiet -c "$sums" || qt_fail "the busy image or a file the sweep must not take changed"
qt_ok "the busy image and the files outside the patterns are byte-identical"
qt_check_shrunk "$a" "$before_a" qcow2
qt_check_shrunk "$b" "$before_b" qcow2

qt_step "second sweep: nothing written since"
inode_a=$(stat -c %i "$a")
sweep
((rc == 0)) || qt_fail "the sweep exited $rc"
expect_line "^$a: skipped: unchanged since qtrim last shrank it" "a.qcow2 unchanged"
expect_line "^$b: skipped: unchanged since qtrim last shrank it" "b.img unchanged"
expect_line '^sweep: 3 image\(s\): 0 shrunk, 3 skipped, 0 failed' "the summary"
[[ $(stat -c %i "$a") == "$inode_a" ]] || qt_fail "a.qcow2 was replaced by a sweep that skipped it"

qt_step "third sweep: qemu-nbd gone, a.qcow2 written to, a broken image added"
qt_undo qt_kill_wait "$nbd_pid" 5
touch "$a"
head -c 1M /dev/urandom >"$QT_IMAGES/broken.qcow2"
before_busy=$(allocated_bytes "$busy")
sweep
((rc == 1)) || qt_fail "the sweep exited $rc with a failed image, expected 1"
expect_line "^qtrimctl: $QT_IMAGES/broken.qcow2: failed: .*\(org.qtrim1.Error" "broken.qcow2 failed with a typed error"
expect_line "^$busy: .* (→|->) .* allocated" "busy.qcow2 shrunk"
expect_line "^$b: skipped: unchanged" "b.img unchanged"
expect_line '^sweep: 4 image\(s\): 2 shrunk, 1 skipped, 1 failed' "the summary"
qt_check_shrunk "$busy" "$before_busy" qcow2
rm -f -- "$QT_IMAGES/broken.qcow2"

qt_step "qtrimd exits when idle"
qt_daemon_stop
qt_daemon_start --idle-exit-sec=2
sleep 1
qt_name_has_owner org.qtrim1 || qt_fail "qtrimd left before IdleExitSec"
qt_wait_pid_gone "$QT_DAEMON_PID" 10 || qt_fail "qtrimd still runs 10 s into a 2 s idle timeout"
qt_undefer qt_kill_wait "$QT_DAEMON_PID" "$QT_DAEMON_STOP_TIMEOUT"
grep -q 'stopping (idle)' "$QT_DAEMON_LOG" || qt_fail "qtrimd did not say it stopped for idleness"
qt_name_has_owner org.qtrim1 && qt_fail "org.qtrim1 still has an owner"
QT_DAEMON_PID=
qt_ok "qtrimd exited after 2 s idle and released org.qtrim1"

qt_scenario_end

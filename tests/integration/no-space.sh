#!/bin/bash
# The image directory's filesystem fills up: (1) before the convert (too little room for the
# copy and its safety margin): the job still succeeds, trimmed in place, and says why there is no
# copy; (2) while qemu-img writes the copy: the job fails with NoSpace, the temporary copy is
# gone and the image is the trimmed original, whole. Needs -Dtest_hooks=true (pause points, to
# fill the disk at the right moment); skipped (77) otherwise.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

if ! grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" 2>/dev/null; then
        printf 'SKIP: %s is not built with -Dtest_hooks=true: no pause points\n' "$QT_BUILD_DIR"
        exit 77
fi
qt_scenario_start no-space
export QTRIM_TEST_RESUME=$QT_WORK/resume

qt_step "a small ext4 host filesystem for the image directory"
host_fs=$QT_SCRATCH/host-ext4.img
truncate -s 1600M -- "$host_fs"
mkfs.ext4 -q -F -m 0 -- "$host_fs"
qt_loop_attach dev "$host_fs" 0 $((1600 << 20))
pool=$QT_WORK/pool
qt_mount "$dev" "$pool" rw ext4
master=$QT_SCRATCH/master.qcow2
make_gpt_ext4_xfs "$master"
qt_watch_job_removed

# Runs a shrink that pauses at POINT, fills the pool but for KEEP_MIB, resumes it; sets $job.
fill_at() { # POINT KEEP_MIB
        local i free
        img=$pool/vm.qcow2
        rm -f -- "$QTRIM_TEST_RESUME" "$pool/filler"
        cp -- "$master" "$img"
        cp -- "$(qt_manifest "$master")" "$(qt_manifest "$img")"
        qt_daemon_stop >/dev/null
        QTRIM_TEST_PAUSE=$1 qt_daemon_start >/dev/null
        inode=$(stat -c %i -- "$img")
        job=$(qt_qtrimctl shrink --no-block "$img")
        for ((i = 0; i < 300; i++)); do
                grep -qE "paused at $1( |$)" "$QT_DAEMON_LOG" && break
                sleep 0.1
        done
        ((i < 300)) || qt_fail "job never paused at $1"
        free=$(($(stat -f -c '%a * %S' -- "$pool") - ($2 << 20)))
        ((free > 0)) && fallocate -l "$free" -- "$pool/filler"
        qt_info "paused at $1; $(df -h --output=avail -- "$pool" | tail -n 1 | tr -d ' ') left free"
        touch -- "$QTRIM_TEST_RESUME"
        qt_wait_job_gone "$job" 120
}

check_intact() {
        [[ $(stat -c %i -- "$img") == "$inode" ]] || qt_fail "the image was replaced"
        [[ -z $(find "$pool" -name '.*.qtrim-*') ]] || qt_fail "temporary copy left: $(find "$pool" -name '.*.qtrim-*')"
        assert_qemu_img_check "$img" >/dev/null
        verify_files "$img" >/dev/null
        qt_ok "the image is the trimmed original, whole; no temporary copy left"
}

qt_step "full before the convert: no copy, the job still succeeds"
fill_at convert 64
result=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved for $job"
[[ $result == done ]] || qt_fail "JobRemoved says '$result', expected done (trimmed in place)"
grep -q 'not enough free space' "$QT_DAEMON_LOG" || qt_fail "qtrimd did not say why there is no copy"
qt_ok "done, trimmed in place, and it said why there is no copy"
check_intact

qt_step "full while qemu-img writes the copy: NoSpace, nothing left"
fill_at convert-write 4
result=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved for $job"
[[ $result == failed ]] || qt_fail "JobRemoved says '$result', expected failed"
grep -q 'NoSpace\|No space' "$QT_DAEMON_LOG" || qt_fail "the failure does not say the disk is full"
qt_ok "failed with a full disk"
check_intact

rm -f -- "$pool/filler" "$img" "$(qt_manifest "$img")"
qt_undo umount -- "$pool"
qt_undo losetup -d "$dev"
qt_scenario_end

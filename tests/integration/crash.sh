#!/bin/bash
# A job's worker killed with SIGKILL while the guest filesystems are mounted, then qtrimd itself
# killed with SIGKILL at the same point and started again: each time the image must stay
# consistent with every kept file intact, and no mount, loop device, FUSE mount, qemu-nbd or
# temporary copy may outlive the crash. Needs a build with -Dtest_hooks=true (tools/test.sh's);
# skipped (77) otherwise.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

if ! grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" 2>/dev/null; then
        printf 'SKIP: %s is not built with -Dtest_hooks=true: no pause points to crash at\n' "$QT_BUILD_DIR"
        exit 77
fi
export QTRIM_TEST_PAUSE=trim-mounted
qt_scenario_start crash

master=$QT_SCRATCH/master.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2"
make_gpt_ext4_xfs "$master"
qt_watch_job_removed

start_paused_job() { # NAME
        local i
        img=$QT_IMAGES/$1.qcow2
        qt_clone_image "$master" "$img"
        qt_expect_files
        : >"$QT_DAEMON_LOG"
        job=$(qt_qtrimctl shrink --no-block "$img") || qt_fail "qtrimctl shrink --no-block failed: $job"
        for ((i = 0; i < 300; i++)); do
                grep -qE 'paused at trim-mounted( |$)' "$QT_DAEMON_LOG" && break
                sleep 0.1
        done
        ((i < 300)) || qt_fail "job never paused at trim-mounted"
        worker=$(pgrep -P "$QT_DAEMON_PID" | head -n 1)
        [[ -n $worker ]] || qt_fail "no worker process under qtrimd"
        qt_ok "job $job paused with its filesystems mounted (worker pid $worker)"
}

check_image() {
        assert_qemu_img_check "$img"
        verify_files "$img"
        assert_no_leftovers
        rm -f -- "$img" "$(qt_manifest "$img")"
        qt_expect_files
}

qt_step "SIGKILL the worker"
start_paused_job crash-worker
kill -KILL "$worker"
qt_wait_job_gone "$job" 60
result=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved signal for $job"
[[ $result == failed ]] || qt_fail "JobRemoved says '$result' for a job whose worker was killed, expected failed"
qt_ok "job ended: $result"
check_image

qt_step "SIGKILL qtrimd, start it again"
start_paused_job crash-daemon
qt_daemon_kill9
qt_ok "qtrimd killed"
# Its worker notices (parent-death signal) and tears down on its own.
qt_wait_pid_gone "$worker" 60 || qt_fail "worker $worker still runs 60 s after qtrimd died"
qt_ok "worker exited after qtrimd died"
qt_daemon_start
check_image

qt_scenario_end

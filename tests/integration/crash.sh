#!/bin/bash
# The kill matrix: a job's worker killed with SIGKILL at every pause point (the start of each
# phase, filesystems mounted, the copy being written, the copy complete before the rename);
# qtrimd itself killed with SIGKILL at every pause point, then started again; both killed at
# once with the copy on disk, which only the restarted qtrimd can delete; a loop device held by a
# host process during a cancel; the bus killed under a job. Each time
# the image must stay consistent with every kept file intact, the job must end "failed", and no
# mount, loop device, FUSE mount, qemu-nbd or temporary copy may outlive the crash. Needs a build
# with -Dtest_hooks=true (tools/test.sh's); skipped (77) otherwise.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

if ! grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" 2>/dev/null; then
        printf 'SKIP: %s is not built with -Dtest_hooks=true: no pause points to crash at\n' "$QT_BUILD_DIR"
        exit 77
fi
# Rounds per pause point: tools/stress-crash.sh runs many; CI runs one.
rounds=${QT_CRASH_ROUNDS:-1}
qt_scenario_start crash

master=$QT_SCRATCH/master.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2"
make_gpt_ext4_xfs "$master"
qt_watch_job_removed

# A qtrimd whose workers pause at POINT (QTRIM_TEST_PAUSE is read by the worker it forks).
restart_daemon_pausing_at() { # POINT
        qt_daemon_stop >/dev/null
        QTRIM_TEST_PAUSE=$1 qt_daemon_start >/dev/null
}

# How often qtrimd had to cut the FUSE connection of a worker stuck in its exit (nbd-fuse.h):
# counted before each round truncates the log, reported at the end.
stuck=0
count_stuck() {
        [[ -f $QT_DAEMON_LOG ]] || return 0
        stuck=$((stuck + $(grep -a -c 'is stuck dying' "$QT_DAEMON_LOG" || true)))
}

start_paused_job() { # POINT
        local i
        img=$QT_IMAGES/crash.qcow2
        qt_clone_image "$master" "$img"
        qt_expect_files
        count_stuck
        : >"$QT_DAEMON_LOG"
        job=$(qt_qtrimctl shrink --no-block "$img") || qt_fail "qtrimctl shrink --no-block failed: $job"
        for ((i = 0; i < 300; i++)); do
                grep -qE "paused at $1( |$)" "$QT_DAEMON_LOG" && break
                sleep 0.1
        done
        ((i < 300)) || qt_fail "job never paused at $1"
        worker=$(pgrep -P "$QT_DAEMON_PID" | head -n 1)
        [[ -n $worker ]] || qt_fail "no worker process under qtrimd"
}

check_image() {
        assert_qemu_img_check "$img" >/dev/null
        verify_files "$img" >/dev/null
        assert_no_leftovers >/dev/null
        rm -f -- "$img" "$(qt_manifest "$img")"
        qt_expect_files
}

# QT_CRASH_POINTS narrows the matrix (tools/stress-crash.sh, to hammer one point).
read -r -a points <<<"${QT_CRASH_POINTS:-inspect attach discover trim trim-mounted detach convert convert-write replace}"
for point in "${points[@]}"; do
        qt_step "SIGKILL the worker at $point ($rounds round(s))"
        restart_daemon_pausing_at "$point"
        for ((round = 1; round <= rounds; round++)); do
                start_paused_job "$point"
                kill -KILL "$worker"
                qt_wait_job_gone "$job" 60
                result=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved signal for $job"
                [[ $result == failed ]] || qt_fail "JobRemoved says '$result' for a job whose worker was killed, expected failed"
                check_image
        done
        qt_ok "image intact, job failed, nothing left ($rounds round(s))"
done

for point in "${points[@]}"; do
        qt_step "SIGKILL qtrimd at $point, start it again ($rounds round(s))"
        for ((round = 1; round <= rounds; round++)); do
                restart_daemon_pausing_at "$point"
                start_paused_job "$point"
                qt_daemon_kill9
                # Its worker notices (parent-death signal) and tears down on its own.
                qt_wait_pid_gone "$worker" 60 || qt_fail "worker $worker still runs 60 s after qtrimd died"
                qt_daemon_start >/dev/null
                grep -q 'failed: interrupted when an earlier qtrimd stopped unexpectedly' "$QT_DAEMON_LOG" ||
                        qt_fail "the restarted qtrimd did not report the job the dead one was running"
                check_image
        done
        qt_ok "worker tore down after qtrimd died; image intact, nothing left ($rounds round(s))"
done

qt_step "SIGKILL qtrimd and its worker together at replace, start qtrimd again ($rounds round(s))"
for ((round = 1; round <= rounds; round++)); do
        restart_daemon_pausing_at replace
        start_paused_job replace
        # Stopped, the worker cannot react to qtrimd's death (its parent-death SIGTERM) before
        # its own SIGKILL, and qtrimd is gone before it could see the worker die.
        kill -STOP "$worker"
        qt_daemon_kill9
        kill -KILL "$worker"
        qt_wait_pid_gone "$worker" 10 || qt_fail "worker $worker survived SIGKILL"
        # Nobody was left to delete the copy: the restarted qtrimd must, from its records.
        qt_daemon_start >/dev/null
        grep -q 'interrupted when an earlier qtrimd stopped unexpectedly.*removed its temporary copy' \
                "$QT_DAEMON_LOG" || qt_fail "the restarted qtrimd did not report the interrupted job and its removed copy"
        check_image
done
qt_ok "the restarted qtrimd removed the copy; image intact, nothing left ($rounds round(s))"

qt_step "a host process holds a job's loop device open: the cancel still ends the job"
restart_daemon_pausing_at trim-mounted
start_paused_job trim-mounted
loop=$(losetup -n -O NAME -j /run/qtrim/mnt/fuse/disk | head -n 1)
[[ -n $loop ]] || qt_fail "no loop device over the job's FUSE disk"
sleep 120 <"$loop" &
holder=$!
qt_defer qt_kill_wait "$holder" 5
qt_qtrimctl cancel "$job" >/dev/null
# The worker waits 10 s for the holder, then cuts the FUSE connection: the job must end.
qt_wait_job_gone "$job" 60
result=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved signal for $job"
[[ $result == canceled ]] || qt_fail "JobRemoved says '$result', expected canceled"
grep -q 'aborting the FUSE connection' "$QT_DAEMON_LOG" || qt_fail "the worker did not say it cut the connection"
qt_undo qt_kill_wait "$holder" 5
# The loop device clears itself (autoclear) once its holder is gone.
for ((i = 0; i < 50; i++)); do
        [[ -z $(losetup -n -O NAME -j /run/qtrim/mnt/fuse/disk) ]] && break
        sleep 0.1
done
check_image
qt_ok "canceled with the loop device held; after the holder left, nothing remains"

qt_step "SIGKILL the bus with filesystems mounted: qtrimd cancels, tears down and exits"
restart_daemon_pausing_at trim-mounted
start_paused_job trim-mounted
daemon=$QT_DAEMON_PID
kill -KILL "$QT_BUS_PID"
qt_wait_pid_gone "$daemon" 60 || qt_fail "qtrimd still runs 60 s after losing the bus"
rc=0
wait "$daemon" 2>/dev/null || rc=$?
((rc == 0 || rc == 127)) || qt_fail "qtrimd exited with status $rc after losing the bus"
grep -q 'stopping (lost the bus)' "$QT_DAEMON_LOG" || qt_fail "qtrimd did not say it lost the bus"
QT_DAEMON_PID=
check_image
qt_bus_start >/dev/null
qt_daemon_start >/dev/null
qt_ok "qtrimd canceled the job and exited; image intact, nothing left"

count_stuck
qt_ok "workers stuck in their exit that qtrimd freed by aborting their FUSE connection: $stuck"

qt_scenario_end

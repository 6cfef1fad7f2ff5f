#!/bin/bash
# The kill matrix: a job's worker killed with SIGKILL at every pause point (the start of each
# phase, filesystems mounted, the copy being written, the copy complete before the rename), then
# the worker and the FUSE server each killed at moments spread over a whole shrink, qtrimd alone
# and together with its worker at moments spread likewise;
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

start_paused_job() { # POINT
        local i
        img=$QT_IMAGES/crash.qcow2
        qt_clone_image "$master" "$img"
        qt_expect_files
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
# shellcheck disable=SC2217 # the open stdin holds the loop device: that is the point
sleep 120 <"$loop" &
holder=$!
qt_defer qt_kill_wait "$holder" 5
qt_qtrimctl cancel "$job" >/dev/null
# The FUSE server waits 10 s for the holder once the worker let go, then cuts the connection:
# the job must end.
qt_wait_job_gone "$job" 60
result=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved signal for $job"
[[ $result == canceled ]] || qt_fail "JobRemoved says '$result', expected canceled"
grep -q 'aborting the FUSE connection' "$QT_DAEMON_LOG" || qt_fail "the FUSE server did not say it cut the connection"
qt_undo qt_kill_wait "$holder" 5
# The loop device clears itself (autoclear) once its holder is gone.
for ((i = 0; i < 50; i++)); do
        [[ -z $(losetup -n -O NAME -j /run/qtrim/mnt/fuse/disk) ]] && break
        sleep 0.1
done
check_image
qt_ok "canceled with the loop device held; after the holder left, nothing remains"

# ---- kills anywhere, not at pause points -------------------------------------------------
# SIGKILL at moments spread evenly over a whole shrink (its duration measured first), so that
# kills land inside mounts, reads, FITRIM, the namespace's teardown, the convert: the victim is
# the worker, or the job's FUSE server (nbd-fuse.h). After each, within 10 s no process of the
# job may live, the job is reported, the image passes qemu-img check with every kept file intact,
# and nothing is left attached, mounted or on disk. QT_CRASH_SPREAD kills per victim (CI 20).
spread=${QT_CRASH_SPREAD:-20}
qt_daemon_stop >/dev/null
qt_daemon_start >/dev/null

img=$QT_IMAGES/crash.qcow2
qt_clone_image "$master" "$img"
qt_expect_files
t0=$(qt_now)
qt_qtrimctl shrink "$img" >/dev/null || qt_fail "the unkilled shrink failed"
duration=$(qt_since "$t0")
check_image
qt_info "an unkilled shrink takes ${duration}s: kills at $spread moments over it"

# The pid of the job's victim (worker or FUSE server), waiting for it to appear ("" if the job
# ended first).
victim_pid() { # worker|server
        local i pid=
        for ((i = 0; i < 200; i++)); do
                pid=$(pgrep -P "$QT_DAEMON_PID" | head -n 1)
                [[ $1 == server && -n $pid ]] && pid=$(pgrep -x -P "$pid" qtrim-fuse | head -n 1)
                [[ -n $pid ]] && break
                qt_job_exists "$job" || break
                sleep 0.01
        done
        printf '%s' "$pid"
}

for victim in worker server; do
        qt_step "SIGKILL the $victim at $spread moments spread over a shrink"
        declare -A outcomes=()
        slowest=0
        for ((k = 1; k <= spread; k++)); do
                img=$QT_IMAGES/crash.qcow2
                : >"$QT_DAEMON_LOG"
                qt_spread_shrink "$master" "$img" "$k" "$spread" "$duration" victim_pid "$victim"
                pid=$QT_SPREAD_PID
                killed_at=$(qt_now)
                if [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null; then
                        qt_wait_pid_gone "$pid" 10 || qt_fail "the $victim ($pid) outlived its SIGKILL by 10 s"
                        qt_wait_job_gone "$job" 10
                        ended=$(qt_since "$killed_at")
                        awk -v a="$ended" -v b="$slowest" 'BEGIN { exit !(a > b) }' && slowest=$ended
                        result=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved signal for $job"
                else
                        qt_wait_job_gone "$job" 60
                        result="$(qt_job_removed_result "$job" 10 "$img") (ended before the kill)"
                fi
                [[ $result == failed* || $result == done* ]] || qt_fail "kill $k at ${at}s: the job ended '$result'"
                outcomes[$result]=$((${outcomes[$result]:-0} + 1))
                # Nothing of the job may live 10 s after the kill (assert_no_leftovers waits 5 s).
                check_image
        done
        qt_ok "$spread kills of the $victim: $(qt_outcome_summary outcomes); every image intact, nothing left; the slowest job ended ${slowest}s after its kill"
        unset outcomes
done

# qtrimd killed at moments spread over a shrink, alone and together with its worker: the
# worker and its FUSE server follow it by their parent-death chain within 10 s, and qtrimd,
# started again, reports the job from its records as interrupted (or its JobRemoved came before
# qtrimd died: the job had ended, or qtrimd saw its killed worker first). QT_CRASH_DAEMON_SPREAD kills per victim (CI 5).
daemon_spread=${QT_CRASH_DAEMON_SPREAD:-5}
for victim in qtrimd both; do
        qt_step "SIGKILL $victim at $daemon_spread moments spread over a shrink (both: qtrimd and the worker at once)"
        declare -A outcomes=()
        slowest=0
        for ((k = 1; k <= daemon_spread; k++)); do
                # A name of its own: job ids start again with each qtrimd.
                img=$QT_IMAGES/crash-$victim-$k.qcow2
                qt_spread_shrink "$master" "$img" "$k" "$daemon_spread" "$duration" victim_pid worker
                pid=$QT_SPREAD_PID
                qt_kill_daemon "$victim" "$pid"
                if [[ -n $QT_WORKER_GONE_AFTER ]] &&
                        awk -v a="$QT_WORKER_GONE_AFTER" -v b="$slowest" 'BEGIN { exit !(a > b) }'; then
                        slowest=$QT_WORKER_GONE_AFTER
                fi
                # Reported before qtrimd died: the job had ended, or (both) qtrimd saw its worker
                # die first.
                qt_daemon_restart_report "$job" "$img"
                outcomes[$QT_KILLED_RESULT]=$((${outcomes[$QT_KILLED_RESULT]:-0} + 1))
                check_image
        done
        qt_ok "$daemon_spread kills of $victim: $(qt_outcome_summary outcomes); every image intact, nothing left; the slowest worker was gone ${slowest}s after the kill"
        unset outcomes
done

# Last: the bus it kills is the one the JobRemoved watch listens on.
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

qt_scenario_end

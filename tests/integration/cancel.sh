#!/bin/bash
# Cancel a running shrink (qtrimctl shrink --no-block, then Job.Cancel): the job ends "canceled"
# and disappears, the image was not replaced, is check clean with every kept file intact, and no
# mount, loop device, qemu-nbd or temporary copy is left. While it runs, a second Shrink() of the
# same image is refused with AlreadyRunning.
#
# With a build configured -Dtest_hooks=true (tools/test.sh's), jobs are paused at chosen points
# (QTRIM_TEST_PAUSE) and canceled there: with filesystems mounted during the trim, at the start
# of the convert, and before the replace (the compact copy written). Otherwise the test polls
# the job's Phase and cancels once it reads "trim", and is skipped (77) if the job finishes first.
# With hooks, also: a second qtrimd started beside the running one while a job waits before its
# replace exits at once with "another qtrimd (pid N) is already running", touching nothing (the
# job's copy stays, the job ends done and verifies).
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

hooks=0
grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" 2>/dev/null && hooks=1
if ((hooks)); then
        export QTRIM_TEST_PAUSE=trim-mounted
fi
qt_scenario_start cancel

master=$QT_SCRATCH/master.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2"
make_gpt_ext4_xfs "$master"
qt_watch_job_removed

# Start a job on a fresh copy of the master image; sets img, job, inode, before.
start_job() { # NAME
        img=$QT_IMAGES/$1.qcow2
        qt_clone_image "$master" "$img"
        qt_expect_files
        inode=$(stat -c %i -- "$img")
        before=$(allocated_bytes "$img")
        job=$(qt_qtrimctl shrink --no-block "$img") || qt_fail "qtrimctl shrink --no-block failed: $job"
        [[ $job =~ ^/org/qtrim1/job/[0-9]+$ ]] || qt_fail "qtrimctl shrink --no-block printed '$job', not a job path"
        qt_ok "job $job for $(basename -- "$img")"
}

# The canceled job's image: not replaced, consistent, files intact, nothing left around it.
check_after_cancel() { # TRIMMED(yes|maybe)
        local result after
        qt_wait_job_gone "$job" 60
        result=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved signal for $job"
        [[ $result == canceled ]] || qt_fail "JobRemoved says '$result', expected canceled"
        qt_ok "job ended: JobRemoved result $result, object gone"
        [[ $(stat -c %i -- "$img") == "$inode" ]] || qt_fail "the image was replaced although the job was canceled"
        qt_ok "image not replaced (same inode)"
        after=$(allocated_bytes "$img")
        qt_info "allocated: $(qt_human "$before") -> $(qt_human "$after")"
        if [[ $1 == yes ]]; then
                ((after < before)) || qt_fail "canceled after the trim, but the image is not trimmed in place"
                qt_ok "trimmed in place before the cancel"
        fi
        assert_qemu_img_check "$img"
        verify_files "$img"
        assert_no_leftovers
        rm -f -- "$img" "$(qt_manifest "$img")"
        qt_expect_files
}

# Wait until the worker sits at a pause point, and the job says which phase that is.
wait_paused() { # POINT PHASE
        local i
        for ((i = 0; i < 300; i++)); do
                grep -qE "paused at $1( |\$)" "$QT_DAEMON_LOG" 2>/dev/null && break
                qt_job_exists "$job" || qt_fail "job $job ended before reaching $1"
                sleep 0.1
        done
        ((i < 300)) || qt_fail "job never paused at $1"
        [[ $(qt_job_prop "$job" Phase) == "$2" && $(qt_job_prop "$job" State) == running ]] ||
                qt_fail "paused at $1 but Phase=$(qt_job_prop "$job" Phase) State=$(qt_job_prop "$job" State)"
        qt_ok "job paused at $1 (Phase $2, State running)"
        # Clear the log line so the next round waits for its own.
        : >"$QT_DAEMON_LOG"
}

restart_daemon() { # PAUSE-POINT
        qt_daemon_stop
        QTRIM_TEST_PAUSE=$1
        qt_daemon_start
}

if ((hooks)); then
        qt_step "cancel with the filesystems mounted, during the trim (busctl Cancel)"
        start_job cancel-trim
        got=$(qt_shrink_error_name "$img")
        [[ $got == org.qtrim1.Error.AlreadyRunning ]] || qt_fail "second Shrink() of a running image gave '$got', expected AlreadyRunning"
        qt_ok "second Shrink() of the same image: $got"
        wait_paused trim-mounted trim
        busctl --system call org.qtrim1 "$job" org.qtrim1.Job Cancel
        check_after_cancel maybe

        qt_step "cancel at the start of the convert (qtrimctl cancel PATH)"
        restart_daemon convert
        start_job cancel-convert
        wait_paused convert convert
        qt_qtrimctl_ok cancel "$job"
        check_after_cancel yes

        qt_step "cancel before the replace, the compact copy written (qtrimctl cancel ID)"
        restart_daemon replace
        start_job cancel-replace
        wait_paused replace replace
        qt_qtrimctl_ok cancel "${job##*/}"
        check_after_cancel yes

        qt_step "a second qtrimd while a job waits before its replace: it exits, touching nothing"
        qt_daemon_stop
        QTRIM_TEST_PAUSE=replace QTRIM_TEST_RESUME=$QT_WORK/resume qt_daemon_start
        start_job second-daemon
        wait_paused replace replace
        copies=$(find "$QT_IMAGES" -maxdepth 1 -name '.second-daemon.qcow2.qtrim-*' | wc -l)
        ((copies == 1)) || qt_fail "expected the job's compact copy beside the image, found $copies"
        rc=0
        out=$(STATE_DIRECTORY=$QT_WORK/state timeout 10 "$QT_QTRIMD" --config="$QT_DAEMON_CONFIG" 2>&1) || rc=$?
        ((rc == 1)) || qt_fail "the second qtrimd exited $rc, expected 1: $out"
        [[ $out == "qtrimd: another qtrimd (pid $QT_DAEMON_PID) is already running" ]] ||
                qt_fail "the second qtrimd said: $out"
        qt_ok "the second qtrimd exited 1: $out"
        copies=$(find "$QT_IMAGES" -maxdepth 1 -name '.second-daemon.qcow2.qtrim-*' | wc -l)
        ((copies == 1)) || qt_fail "the running job's compact copy is gone after the second qtrimd"
        [[ $(qt_job_prop "$job" State) == running ]] || qt_fail "the job is $(qt_job_prop "$job" State) after the second qtrimd"
        touch -- "$QT_WORK/resume"
        qt_wait_job_gone "$job" 60
        result=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved signal for $job"
        [[ $result == done ]] || qt_fail "JobRemoved says '$result', expected done"
        qt_check_shrunk "$img" "$before" qcow2
        rm -f -- "$QT_WORK/resume"
else
        qt_step "no test hooks in this build: cancel once the job's Phase reads trim"
        start_job cancel-trim
        got=$(qt_shrink_error_name "$img")
        [[ $got == org.qtrim1.Error.AlreadyRunning ]] || qt_fail "second Shrink() of a running image gave '$got', expected AlreadyRunning"
        qt_ok "second Shrink() of the same image: $got"
        phase=
        deadline=$((SECONDS + 60))
        while ((SECONDS < deadline)) && phase=$(qt_job_prop "$job" Phase 2>/dev/null); do
                case $phase in trim | detach | convert | replace | done) break ;; esac
        done
        if [[ $phase != trim ]]; then
                qt_wait_job_gone "$job" 60
                printf 'SKIP: the job left the trim phase before it was seen (phase "%s"); build with -Dtest_hooks=true\n' "$phase"
                exit 77
        fi
        busctl --system call org.qtrim1 "$job" org.qtrim1.Job Cancel
        check_after_cancel maybe
fi

qt_scenario_end

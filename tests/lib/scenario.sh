# shellcheck shell=bash
# What every integration scenario does: a work dir, a private bus with qtrimd on it, and the
# checks after a shrink. Source this one file from a test script.

_qt_lib=$(dirname -- "${BASH_SOURCE[0]}")
# shellcheck source=tests/lib/images.sh
source "$_qt_lib/images.sh"
# shellcheck source=tests/lib/verify.sh
source "$_qt_lib/verify.sh"
# shellcheck source=tests/lib/bus.sh
source "$_qt_lib/bus.sh"
unset _qt_lib

# qt_scenario_start NAME: work dir + trap, bus, qtrimd (extra arguments from $QTRIMD_ARGS).
qt_scenario_start() {
        QT_T0=$(qt_now)
        QT_SCENARIO=$1
        qt_need qemu-img qemu-nbd sfdisk losetup jq busctl dbus-daemon
        qt_init_workdir "$1"
        qt_step "$1: work dir $QT_WORK"
        qt_bus_start
        local args=()
        # shellcheck disable=SC2206 # word splitting is the point: QTRIMD_ARGS="-j 4"
        [[ -n "${QTRIMD_ARGS:-}" ]] && args=($QTRIMD_ARGS)
        qt_daemon_start "${args[@]}"
}

# qt_scenario_end: qtrimd must stop on SIGTERM, and nothing may be left behind.
qt_scenario_end() {
        qt_step "stop qtrimd, look for leftovers"
        assert_no_leftovers
        qt_daemon_stop
        assert_no_leftovers
        qt_bus_stop
        printf 'PASS %s (%ss)\n' "$QT_SCENARIO" "$(qt_since "$QT_T0")"
}

# Copy an image under a new name, with its manifest: a clone, same filesystem UUIDs. cp's
# default keeps a dense (fully allocated) image dense and a sparse one sparse.
qt_clone_image() { # SRC DST
        cp -- "$1" "$2"
        jq --arg image "$2" '.image = $image' "$(qt_manifest "$1")" >"$(qt_manifest "$2")"
}

# Everything a finished shrink must satisfy. BEFORE is the allocation measured before the job.
qt_check_shrunk() { # IMG BEFORE [FORMAT]
        local img=$1 before=$2 format=${3:-} after vsize
        after=$(allocated_bytes "$img")
        ((after < before)) ||
                qt_fail "$(basename -- "$img"): allocation did not fall ($(qt_human "$before") -> $(qt_human "$after"))"
        qt_ok "$(basename -- "$img"): $(qt_human "$before") -> $(qt_human "$after") allocated"
        assert_shrunk "$img"
        if [[ -n $format ]]; then
                [[ $(qt_image_format "$img") == "$format" ]] ||
                        qt_fail "$(basename -- "$img") is now $(qt_image_format "$img"), was $format"
        fi
        vsize=$(qemu-img info -U --output=json -- "$img" | jq '."virtual-size"')
        [[ $vsize == "$(jq '.virtual_size' "$(qt_manifest "$img")")" ]] ||
                qt_fail "$(basename -- "$img"): virtual size changed to $vsize"
        assert_qemu_img_check "$img"
        verify_files "$img"
}

# Run qtrimctl, echo the command, keep its output in the work dir, and fail on a non-zero exit.
qt_qtrimctl_ok() {
        local out=$QT_WORK/qtrimctl.out rc=0
        qt_info "\$ qtrimctl $*"
        qt_qtrimctl "$@" >"$out" 2>&1 || rc=$?
        sed 's/^/    | /' "$out"
        ((rc == 0)) || qt_fail "qtrimctl $* exited with $rc"
}

# qt_sample_jobs_start FILE: records ListJobs every 50 ms (one JSON line each) until
# qt_sample_jobs_stop, to see which jobs ran at the same time.
qt_sample_jobs_start() {
        (
                while :; do
                        busctl --system --json=short call org.qtrim1 /org/qtrim1 org.qtrim1.Manager ListJobs 2>/dev/null || true
                        sleep 0.05
                done
        ) >"$1" &
        QT_SAMPLER_PID=$!
        qt_defer qt_kill_wait "$QT_SAMPLER_PID" 2
}
qt_sample_jobs_stop() { qt_undo qt_kill_wait "$QT_SAMPLER_PID" 2; }

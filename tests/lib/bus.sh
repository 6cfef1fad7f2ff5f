# shellcheck shell=bash
# A private system bus and a qtrimd on it, for the integration tests. Nothing here touches the
# machine's real system bus: DBUS_SYSTEM_BUS_ADDRESS points every client (qtrimctl, busctl,
# gdbus, dbus-monitor) and qtrimd at a socket in the test's work dir.
#
#   qt_init_workdir NAME; qt_bus_start; qt_daemon_start [QTRIMD ARGS...]; ...; qt_daemon_stop
#
# Both are registered for cleanup, so a failing test still stops them; on failure the end of
# qtrimd's log is printed.

# shellcheck source=tests/lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

QT_QTRIMD=${QT_QTRIMD:-$QT_BUILD_DIR/daemon/qtrimd}
QT_QTRIMCTL=${QT_QTRIMCTL:-$QT_BUILD_DIR/cli/qtrimctl}
# How every test's qtrimd runs, from outside the test: QT_QTRIMD_WRAPPER is a command to run it
# under (e.g. "valgrind --error-exitcode=99"), QT_QTRIMD_EXTRA_ARGS options added to each start
# (e.g. "--attach=kernel" in the VM suite). Both are split on spaces.
QT_QTRIMD_WRAPPER=${QT_QTRIMD_WRAPPER:-}
QT_QTRIMD_EXTRA_ARGS=${QT_QTRIMD_EXTRA_ARGS:-}

# Seconds to wait for qtrimd to own its name, and to exit after SIGTERM.
QT_DAEMON_START_TIMEOUT=${QT_DAEMON_START_TIMEOUT:-15}
QT_DAEMON_STOP_TIMEOUT=${QT_DAEMON_STOP_TIMEOUT:-30}

# Wait until a pid has exited, polling every 0.1 s for at most TIMEOUT seconds. Reaps it if it is
# our child. Returns 1 on timeout.
qt_wait_pid_gone() { # PID TIMEOUT
        local pid=$1 n=$(($2 * 10)) i
        for ((i = 0; i < n; i++)); do
                kill -0 "$pid" 2>/dev/null || {
                        wait "$pid" 2>/dev/null || true
                        return 0
                }
                sleep 0.1
        done
        return 1
}

# SIGTERM, bounded wait, then SIGKILL. For cleanup: never fails.
qt_kill_wait() { # PID TIMEOUT
        kill -TERM "$1" 2>/dev/null || return 0
        qt_wait_pid_gone "$1" "$2" && return 0
        kill -KILL "$1" 2>/dev/null || true
        qt_wait_pid_gone "$1" 5 || true
}

qt_bus_start() {
        qt_need dbus-daemon busctl
        local sock=$QT_WORK/system_bus_socket i
        dbus-daemon --config-file="$QT_LIB_DIR/system-bus.conf" --address="unix:path=$sock" \
                --nofork --nopidfile --nosyslog >"$QT_WORK/dbus-daemon.log" 2>&1 &
        QT_BUS_PID=$!
        qt_defer qt_kill_wait "$QT_BUS_PID" 5
        for ((i = 0; i < 100; i++)); do
                [[ -S $sock ]] && busctl --address="unix:path=$sock" status org.freedesktop.DBus >/dev/null 2>&1 && break
                kill -0 "$QT_BUS_PID" 2>/dev/null || {
                        cat "$QT_WORK/dbus-daemon.log" >&2
                        qt_fail "dbus-daemon exited at start"
                }
                sleep 0.1
        done
        ((i < 100)) || qt_fail "private bus did not come up at $sock"
        export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$sock
        # Nothing in a test may reach the session bus either.
        unset DBUS_SESSION_BUS_ADDRESS
        qt_info "private system bus at $sock (pid $QT_BUS_PID)"
}

qt_name_has_owner() {
        [[ $(busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
                NameHasOwner s "$1" 2>/dev/null) == "b true" ]]
}

# qt_daemon_start [QTRIMD ARGS...]
# shellcheck disable=SC2120 # the arguments are optional
qt_daemon_start() {
        [[ -n "${DBUS_SYSTEM_BUS_ADDRESS:-}" && -n "${QT_BUS_PID:-}" ]] || qt_fail "qt_daemon_start: start the bus first"
        [[ -x $QT_QTRIMD ]] || qt_fail "qtrimd not built: $QT_QTRIMD (set BUILD_DIR)"
        local i n=$((QT_DAEMON_START_TIMEOUT * 10))
        QT_DAEMON_LOG=$QT_WORK/qtrimd.log
        # Its own crash records, as systemd's StateDirectory= would give it: a restarted qtrimd
        # of this test finds them, no other test's qtrimd does.
        # Never the machine's /etc/qtrim/qtrimd.conf; and a test's qtrimd does not exit when
        # idle (nothing would start it again on a private bus). A test may write its own first.
        QT_DAEMON_CONFIG=${QT_DAEMON_CONFIG:-$QT_WORK/qtrimd.conf}
        [[ -e $QT_DAEMON_CONFIG ]] || printf '[Daemon]\nIdleExitSec=0\n' >"$QT_DAEMON_CONFIG"
        # shellcheck disable=SC2086 # wrapper and extra arguments are word lists
        STATE_DIRECTORY=$QT_WORK/state $QT_QTRIMD_WRAPPER "$QT_QTRIMD" --config="$QT_DAEMON_CONFIG" \
                "$@" $QT_QTRIMD_EXTRA_ARGS >"$QT_DAEMON_LOG" 2>&1 &
        QT_DAEMON_PID=$!
        export QT_DAEMON_PID QT_DAEMON_LOG
        qt_defer qt_kill_wait "$QT_DAEMON_PID" "$QT_DAEMON_STOP_TIMEOUT"
        for ((i = 0; i < n; i++)); do
                qt_name_has_owner org.qtrim1 && break
                if ! kill -0 "$QT_DAEMON_PID" 2>/dev/null; then
                        wait "$QT_DAEMON_PID" || true
                        qt_fail "qtrimd exited before taking org.qtrim1"
                fi
                sleep 0.1
        done
        ((i < n)) || qt_fail "qtrimd did not own org.qtrim1 within ${QT_DAEMON_START_TIMEOUT}s"
        qt_info "qtrimd running (pid $QT_DAEMON_PID, log $QT_DAEMON_LOG)"
}

# Stop qtrimd as systemd would (SIGTERM) and fail if it does not exit in time or exits non-zero.
qt_daemon_stop() {
        local rc=0
        [[ -n "${QT_DAEMON_PID:-}" ]] || return 0
        qt_undefer qt_kill_wait "$QT_DAEMON_PID" "$QT_DAEMON_STOP_TIMEOUT"
        kill -TERM "$QT_DAEMON_PID" 2>/dev/null || true
        if ! qt_wait_pid_gone "$QT_DAEMON_PID" "$QT_DAEMON_STOP_TIMEOUT"; then
                kill -KILL "$QT_DAEMON_PID" 2>/dev/null || true
                qt_fail "qtrimd did not exit within ${QT_DAEMON_STOP_TIMEOUT}s of SIGTERM"
        fi
        # qt_wait_pid_gone reaped it already; wait again only to learn the status if it did not.
        wait "$QT_DAEMON_PID" 2>/dev/null || rc=$?
        ((rc == 0 || rc == 127)) || qt_fail "qtrimd exited with status $rc after SIGTERM"
        QT_DAEMON_PID=
        qt_ok "qtrimd stopped on SIGTERM"
}

# Crash qtrimd (SIGKILL): what a daemon bug or the OOM killer would do.
qt_daemon_kill9() {
        [[ -n "${QT_DAEMON_PID:-}" ]] || return 0
        qt_undefer qt_kill_wait "$QT_DAEMON_PID" "$QT_DAEMON_STOP_TIMEOUT"
        kill -KILL "$QT_DAEMON_PID" 2>/dev/null || true
        wait "$QT_DAEMON_PID" 2>/dev/null || true
        QT_DAEMON_PID=
}

# One kill of a spread (tests/integration/crash.sh, tests/vm/payload-kernel-crash.sh): MASTER
# cloned as IMG and shrunk with --no-block, the victim's pid found by VICTIM_CMD (which may read
# $job), then a sleep until moment K of N spread over DURATION s from the shrink's start. Sets
# job, at, and QT_SPREAD_PID (what VICTIM_CMD printed: "" if the job ended first).
# shellcheck disable=SC2034 # at and QT_SPREAD_PID are the caller's
qt_spread_shrink() { # MASTER IMG K N DURATION VICTIM_CMD...
        local master=$1 img=$2 k=$3 n=$4 duration=$5 t0
        shift 5
        qt_clone_image "$master" "$img"
        qt_expect_files
        at=$(qt_spread_moment "$k" "$n" "$duration")
        t0=$(qt_now)
        job=$(qt_qtrimctl shrink --no-block "$img") || qt_fail "qtrimctl shrink --no-block failed: $job"
        QT_SPREAD_PID=$("$@")
        qt_sleep_until "$t0" "$at"
}

# qt_kill_daemon VICTIM WORKER: SIGKILL qtrimd ("qtrimd"), or WORKER and qtrimd at once ("both");
# WORKER ("" if none) must be gone within 10 s (its parent-death chain). Sets
# QT_WORKER_GONE_AFTER: seconds from the kill until it was ("" without a worker).
# shellcheck disable=SC2034 # QT_WORKER_GONE_AFTER is the caller's
qt_kill_daemon() {
        local victim=$1 worker=$2 killed_at
        killed_at=$(qt_now)
        # Both in one kill: qtrimd must not have the time to see its worker die first.
        if [[ $victim == both && -n $worker ]]; then
                kill -KILL "$worker" "$QT_DAEMON_PID" 2>/dev/null || true # the worker may have ended
        fi
        qt_daemon_kill9
        QT_WORKER_GONE_AFTER=
        [[ -n $worker ]] || return 0
        qt_wait_pid_gone "$worker" 10 || qt_fail "the worker ($worker) outlived qtrimd's death by 10 s"
        QT_WORKER_GONE_AFTER=$(qt_since "$killed_at")
}

# qt_daemon_restart_report JOB IMG [QTRIMD-ARGS...]: qtrimd started again after qt_kill_daemon;
# sets QT_KILLED_RESULT to the job's JobRemoved result if it came before qtrimd died, else to
# "interrupted", which the new qtrimd must report from its records.
qt_daemon_restart_report() {
        local job=$1 img=$2
        shift 2
        : >"$QT_WORK/qtrimd.log"
        if QT_KILLED_RESULT=$(qt_job_removed_result "$job" 1 "$img"); then
                QT_KILLED_RESULT+=" (reported before qtrimd died)"
                qt_daemon_start "$@" >/dev/null
                return 0
        fi
        qt_daemon_start "$@" >/dev/null
        grep -q "$img: failed: interrupted when an earlier qtrimd stopped unexpectedly" "$QT_DAEMON_LOG" ||
                qt_fail "the restarted qtrimd did not report the interrupted job on $img"
        QT_KILLED_RESULT=interrupted
}

qt_bus_stop() {
        [[ -n "${QT_BUS_PID:-}" ]] || return 0
        qt_undo qt_kill_wait "$QT_BUS_PID" 5
        QT_BUS_PID=
        unset DBUS_SYSTEM_BUS_ADDRESS
}

# Called by qt_cleanup when a test fails: what qtrimd said is the first thing to read.
qt_on_failure() {
        if [[ -s "${QT_DAEMON_LOG:-}" ]]; then
                printf -- '--- last lines of qtrimd.log ---\n' >&2
                tail -n 40 -- "$QT_DAEMON_LOG" >&2
                printf -- '---\n' >&2
        fi
}

# ---- talking to qtrimd -------------------------------------------------------------------

qt_qtrimctl() { "$QT_QTRIMCTL" "$@"; }

# Runs qtrimctl expecting exit status WANT, shows its output; the output is left in
# $QT_WORK/out and $QT_WORK/err.
qt_qtrimctl_status() { # WANT ARGS...
        local want=$1 rc=0
        shift
        qt_info "\$ qtrimctl $*"
        qt_qtrimctl "$@" >"$QT_WORK/out" 2>"$QT_WORK/err" || rc=$?
        sed 's/^/    | /' "$QT_WORK/out" "$QT_WORK/err"
        ((rc == want)) || qt_fail "qtrimctl $* exited with $rc, not $want"
}

# One property of a job object, as plain text (strings unquoted, numbers as digits).
qt_job_prop() { # JOB PROPERTY
        busctl --system --json=short get-property org.qtrim1 "$1" org.qtrim1.Job "$2" | jq -r '.data'
}

qt_job_exists() {
        busctl --system introspect org.qtrim1 "$1" org.qtrim1.Job >/dev/null 2>&1
}

qt_wait_job_gone() { # JOB TIMEOUT
        local n=$(($2 * 10)) i
        for ((i = 0; i < n; i++)); do
                qt_job_exists "$1" || return 0
                sleep 0.1
        done
        qt_fail "job $1 still exists after $2 s"
}

# Shrink() straight over D-Bus. Prints the D-Bus error name (or "ok JOBPATH" on success).
# gdbus, not busctl: busctl prints only an error's message, never its name.
qt_shrink_error_name() { # IMAGE [GVARIANT-OPTIONS]
        local img=$1 opts=${2:-"@a{sv} {}"} out
        qt_need gdbus
        if out=$(gdbus call --system --dest org.qtrim1 --object-path /org/qtrim1 \
                --method org.qtrim1.Manager.Shrink "'${img//\'/\\\'}'" "$opts" 2>&1); then
                printf 'ok %s\n' "$(sed -E "s/^\(objectpath '([^']*)',\)$/\1/" <<<"$out")"
                return 0
        fi
        sed -nE 's/.*GDBus\.Error:([A-Za-z0-9_.]+):.*/\1/p' <<<"$out" | head -n 1 | grep . ||
                printf 'unparsed: %s\n' "$out"
}

# Record JobRemoved signals in a log (dbus-monitor's text), read by qt_job_removed_result.
# Start it before the job, or a fast job's signal is missed.
qt_watch_job_removed() {
        local i
        qt_need dbus-monitor
        QT_MONITOR_RAW=$QT_WORK/job-removed.log
        dbus-monitor --system "type='signal',interface='org.qtrim1.Manager',member='JobRemoved'" \
                >"$QT_MONITOR_RAW" 2>&1 &
        QT_MONITOR_PID=$!
        qt_defer qt_kill_wait "$QT_MONITOR_PID" 2
        # dbus-monitor prints its own NameAcquired/NameLost once it has become a monitor.
        for ((i = 0; i < 50; i++)); do
                grep -q 'member=Name' "$QT_MONITOR_RAW" 2>/dev/null && return 0
                sleep 0.1
        done
        qt_fail "dbus-monitor did not start: $(head -c 300 "$QT_MONITOR_RAW")"
}

# The result JobRemoved gave for JOB ("done", "failed", "canceled"), waiting up to TIMEOUT s.
# IMAGE, if given, must match too: job numbers start again at 1 when qtrimd restarts.
qt_job_removed_result() { # JOB TIMEOUT [IMAGE]
        local job=$1 n=$(($2 * 10)) img=${3:-} i res
        for ((i = 0; i < n; i++)); do
                res=$(awk -v job="$job" -v img="$img" '
                        /member=JobRemoved/ { n = 0; inside = 1; next }
                        inside && /^ +(uint32|object path|string) / {
                                v = $0; sub(/^ +(uint32|object path|string) /, "", v); gsub(/^"|"$/, "", v)
                                f[++n] = v
                                if (n == 4) {
                                        if (f[2] == job && (img == "" || f[3] == img)) r = f[4]
                                        inside = 0
                                }
                        }
                        END { if (r != "") print r }' "$QT_MONITOR_RAW")
                [[ -n $res ]] && {
                        printf '%s\n' "$res"
                        return 0
                }
                sleep 0.1
        done
        return 1
}

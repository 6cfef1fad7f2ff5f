#!/bin/bash
# What qtrimctl says, word for word where it matters, against a real qtrimd on a private bus:
# - command-line mistakes (a misspelt command gets "did you mean", an unknown option, a missing
#   value, an empty image name): "qtrimctl: ...; see qtrimctl --help", exit status 2;
# - no qtrimd and no activation file: "qtrimd is not running and cannot be started";
# - a job paused in its trim (-Dtest_hooks=true): a second shrink of its image names the job;
#   status (text and --json) and list (PHASE, ELAPSED; --json) show where it is; wait follows it
#   while cancel stops it ("canceling"), and wait ends "canceled; trimmed in place, not
#   converted" with exit status 3; cancel, wait and status of a job that does not exist say so;
# - a refusal names its D-Bus error only with --verbose;
# - wait on a --no-block job prints the summary shrink prints; a blank raw disk has "nothing to
#   trim"; a fresh overlay's summary says the same reclaimed (or "grew by") as its --json;
# - shrink --all --dry-run: an estimate per image, nothing changed; shrink --all --json: one
#   object, the blank disk counted as skipped.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" 2>/dev/null ||
        qt_fail "needs a build with -Dtest_hooks=true (a job paused in its trim)"

qt_scenario_start messages
failures=()

# run NAME ARGS...: qtrimctl ARGS, its stdout in $QT_WORK/NAME.out, stderr in NAME.err, exit
# status in $rc.
run() {
        local name=$1
        shift
        rc=0
        qt_qtrimctl "$@" >"$QT_WORK/$name.out" 2>"$QT_WORK/$name.err" || rc=$?
        qt_info "\$ qtrimctl $* -> $rc"
        sed 's/^/    | /' "$QT_WORK/$name.out" "$QT_WORK/$name.err"
}
# expect NAME STATUS STREAM PATTERN: the exit status and a line of out/err matching the ERE.
expect() {
        ((rc == $2)) || failures+=("$1: exit status $rc, expected $2")
        grep -qE -- "$4" "$QT_WORK/$1.$3" || failures+=("$1: no line of std$3 matches '$4'")
}

qt_step "command-line mistakes: exit status 2, what is wrong, see --help"
run verb shirnk a.qcow2
expect verb 2 err '^qtrimctl: unknown command "shirnk"; did you mean "shrink"\? See qtrimctl --help$'
run option list --bogus
expect option 2 err '^qtrimctl: unknown option --bogus; see qtrimctl --help$'
run value shrink --format
expect value 2 err '^qtrimctl: --format needs a value; see qtrimctl --help$'
run empty shrink ''
expect empty 2 err '^qtrimctl: shrink: argument 1 is empty; name an image file$'
run notjob cancel frob
expect notjob 2 err '^qtrimctl: frob: not a job id or object path; see qtrimctl list$'
run help help wait
expect help 0 out '^qtrimctl wait \[OPTIONS...\] JOB...$'

qt_step "no qtrimd on the bus, and none to activate"
qt_daemon_stop
run nodaemon list
expect nodaemon 1 err '^qtrimctl: qtrimd is not running and cannot be started: org.qtrim1 has no D-Bus activation file; check that qtrim is installed$'
grep -q 'org.freedesktop.DBus.Error' "$QT_WORK/nodaemon.err" && failures+=("nodaemon: the D-Bus error name without --verbose")

qt_step "a job paused in its trim: duplicate, status, list, wait and cancel"
QTRIM_TEST_PAUSE=trim-mounted QTRIM_TEST_RESUME=$QT_WORK/resume qt_daemon_start
master=$QT_SCRATCH/master.qcow2
make_whole_qcow2 "$master"
img=$QT_IMAGES/paused.qcow2
qt_clone_image "$master" "$img"
job=$(qt_qtrimctl shrink --no-block "$img")
id=${job##*/}
for ((i = 0; i < 300; i++)); do
        grep -q 'paused at trim-mounted' "$QT_DAEMON_LOG" && break
        sleep 0.1
done
((i < 300)) || qt_fail "the job never paused in its trim"
run duplicate shrink "$img"
expect duplicate 1 err "^qtrimctl: $img: already has job $id \(running\); follow it with qtrimctl wait $id\$"
run status status "$id"
expect status 0 out "^job $id: $img\$"
expect status 0 out '^  state: +running$'
expect status 0 out '^  phase: +trim, [0-9]+% of the job, .* of .* of its volumes trimmed through$'
expect status 0 out '^  elapsed: +[0-9.]+ (s|min)'
run statusjson status --json "$job"
jq -e --argjson id "$id" '.id == $id and .state == "running" and .phase == "trim" and .phase_bytes_total > 0 and .seconds >= 0' \
        "$QT_WORK/statusjson.out" >/dev/null || failures+=("status --json: $(cat "$QT_WORK/statusjson.out")")
run list list
expect list 0 out '^ID +STATE +PHASE +PROGRESS +ELAPSED +IMAGE$'
expect list 0 out "^ *$id +running +trim +[0-9]+% +[0-9.]+ (s|min).* $img\$"
run listjson list --json
jq -e --argjson id "$id" '.[] | select(.id == $id) | .phase == "trim"' "$QT_WORK/listjson.out" >/dev/null ||
        failures+=("list --json has no job $id in its trim")
wait_rc=0
qt_qtrimctl wait "$id" >"$QT_WORK/wait.out" 2>"$QT_WORK/wait.err" &
wait_pid=$!
qt_defer qt_kill_wait "$wait_pid" 2
sleep 1
run cancel cancel "$id"
expect cancel 0 out "^job $id \($img\): canceling; it ends once its worker has cleaned up\$"
wait "$wait_pid" || wait_rc=$?
qt_undefer qt_kill_wait "$wait_pid" 2
rc=$wait_rc
sed 's/^/    | /' "$QT_WORK/wait.out" "$QT_WORK/wait.err"
expect wait 3 err "^qtrimctl: $img: canceled; trimmed in place, not converted\$"
for verb in cancel wait status; do
        run "gone-$verb" "$verb" 99
        expect "gone-$verb" 1 err '^qtrimctl: job 99: no such job \(it has ended, or never existed\); see qtrimctl list$'
done

qt_step "a refusal: the D-Bus error name only with --verbose"
junk=$QT_IMAGES/junk.qcow2
head -c 1M /dev/urandom >"$junk"
run refused shrink "$junk"
expect refused 1 err "^qtrimctl: $junk: "
grep -q 'org.qtrim1.Error' "$QT_WORK/refused.err" && failures+=("refused: the D-Bus error name without --verbose")
run refusedv shrink --verbose "$junk"
expect refusedv 1 err "^qtrimctl: $junk: .* \(org\.qtrim1\.Error\.[A-Za-z]+\)\$"
rm -f -- "$junk"

qt_step "wait on a --no-block job; a blank raw disk; a fresh overlay"
touch "$QT_WORK/resume"
img=$QT_IMAGES/waited.qcow2
qt_clone_image "$master" "$img"
job=$(qt_qtrimctl shrink --no-block "$img")
run waited wait "$job"
expect waited 0 out "^$img: [0-9.]+ [KMG]?i?B (→|->) [0-9.]+ [KMG]?i?B allocated \([0-9.]+ [KMG]?i?B reclaimed\) in "
blank=$QT_IMAGES/blank.raw
truncate -s 64M -- "$blank"
run blank shrink "$blank"
expect blank 0 out "^$blank: nothing to trim"
for n in 1 2; do
        qemu-img create -q -f qcow2 -b "$master" -F qcow2 -- "$QT_IMAGES/overlay$n.qcow2"
done
run overlay1 shrink --json "$QT_IMAGES/overlay1.qcow2"
reclaimed=$(jq '.[0].bytes_reclaimed' "$QT_WORK/overlay1.out")
run overlay2 shrink "$QT_IMAGES/overlay2.qcow2"
if ((reclaimed < 0)); then
        expect overlay2 0 out "^$QT_IMAGES/overlay2.qcow2: .* allocated \(grew by [0-9.]+ [KMG]?i?B: .+\) in "
else
        expect overlay2 0 out "^$QT_IMAGES/overlay2.qcow2: .* allocated \((.* reclaimed|nothing reclaimed)\) in "
fi
qt_ok "a fresh overlay: --json says $reclaimed bytes reclaimed, the summary the same"

qt_step "shrink --all --json: one object, the blank disk skipped"
sweep_dir=$QT_IMAGES/sweep
mkdir -p -- "$sweep_dir"
truncate -s 64M -- "$sweep_dir/blank.raw"
qt_clone_image "$master" "$sweep_dir/vm.qcow2"
qt_daemon_stop
printf '[Daemon]\nIdleExitSec=0\nImageDirectories=%s\n' "$sweep_dir" >"$QT_DAEMON_CONFIG"
qt_daemon_start
fingerprint=$(qt_file_fingerprint "$sweep_dir/vm.qcow2")
run sweepdry shrink --all --dry-run
expect sweepdry 0 out "^$sweep_dir/vm.qcow2: (≈|~) [0-9.]+ [KMG]?i?B reclaimable of [0-9.]+ [KMG]?i?B allocated"
[[ $(qt_file_fingerprint "$sweep_dir/vm.qcow2") == "$fingerprint" ]] || failures+=("shrink --all --dry-run changed vm.qcow2")
run sweep shrink --all --json
((rc == 0)) || failures+=("sweep --json: exit status $rc")
jq -e --arg blank "$sweep_dir/blank.raw" '.shrunk == 1 and .skipped == 1 and .failed == 0 and .bytes_reclaimed > 0
        and ([.images[] | select(.image == $blank and .result == "done" and .nothing_to_trim)] | length) == 1' \
        "$QT_WORK/sweep.out" >/dev/null || failures+=("sweep --json: not 1 shrunk and the blank disk skipped")

if ((${#failures[@]} > 0)); then
        printf '  - %s\n' "${failures[@]}" >&2
        qt_fail "${#failures[@]} message check(s) failed"
fi
qt_ok "every message as expected"
qt_scenario_end

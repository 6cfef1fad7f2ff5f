#!/bin/bash
# 1000 calls at once on the bus. qtrimd must answer every one (no caller waits for its timeout),
# refuse what is over its limits with org.qtrim1.Error.TooManyJobs instead of queueing it (at
# most MAX_REQUESTS images checked at once and MAX_JOBS jobs, daemon/manager.h), keep answering
# ListJobs, and stay bounded in memory and in worker processes. Every job it accepts ends "done"
# with its image shrunk and intact, never two at once for one image; the images it refused or
# only inspected are unchanged; nothing is left attached.
#
#   1. qtrimd full: every request slot held by an Inspect whose qemu-img waits (a PATH shim);
#      1000 calls, each Shrink and Inspect refused with TooManyJobs, ListJobs answered in time.
#   2. qtrimd idle: the same 1000 calls; jobs are accepted, run and end.
#   3. The job table: jobs held at their attach, Shrink() is accepted for MAX_JOBS images and
#      refused after; all are canceled at once and their images are unchanged.
#   4. Step 2 again: qtrimd's memory must not keep growing with the calls.
# 3 needs the pause points of a -Dtest_hooks=true build (tools/test.sh's); skipped without.
#
# Bounds, widened under QT_QTRIMD_WRAPPER (valgrind), and overridable: QT_FLOOD_LISTJOBS_MAX_MS
# (ListJobs while full), QT_FLOOD_BUSY_LISTJOBS_MAX_MS (while workers run: the D-Bus default
# call timeout), QT_FLOOD_RSS_GROWTH_MIB (peak memory, end vs start), QT_FLOOD_RSS_STEADY_MIB
# (step 4 vs step 2), QT_FLOOD_CALL_TIMEOUT and QT_FLOOD_JOBS_TIMEOUT (seconds).
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

calls=${QT_FLOOD_CALLS:-1000}
connections=16 # 1000 / 16 = 63 pending calls each, below dbus-daemon's 128 per connection
if [[ -n $QT_QTRIMD_WRAPPER ]]; then
        listjobs_max_ms=${QT_FLOOD_LISTJOBS_MAX_MS:-30000}
        busy_listjobs_max_ms=${QT_FLOOD_BUSY_LISTJOBS_MAX_MS:-120000}
        rss_growth_mib=${QT_FLOOD_RSS_GROWTH_MIB:-64}
        rss_steady_mib=${QT_FLOOD_RSS_STEADY_MIB:-16}
        call_timeout=${QT_FLOOD_CALL_TIMEOUT:-300}
        jobs_timeout=${QT_FLOOD_JOBS_TIMEOUT:-900}
else
        listjobs_max_ms=${QT_FLOOD_LISTJOBS_MAX_MS:-5000}
        busy_listjobs_max_ms=${QT_FLOOD_BUSY_LISTJOBS_MAX_MS:-25000}
        rss_growth_mib=${QT_FLOOD_RSS_GROWTH_MIB:-16}
        rss_steady_mib=${QT_FLOOD_RSS_STEADY_MIB:-4}
        call_timeout=${QT_FLOOD_CALL_TIMEOUT:-120}
        jobs_timeout=${QT_FLOOD_JOBS_TIMEOUT:-300}
fi
max_parallel=2
hooks=0
grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" 2>/dev/null && hooks=1
flood=$QT_BUILD_DIR/tests/tools/bus-flood
[[ -x $flood ]] || qt_fail "bus-flood not built: $flood"
limit() { awk -v n="$1" '$1 == "#define" && $2 == n { print $3 }' "$QT_SOURCE_DIR/daemon/manager.h"; }
max_requests=$(limit MAX_REQUESTS)
max_jobs=$(limit MAX_JOBS)
[[ $max_requests =~ ^[0-9]+$ && $max_jobs =~ ^[0-9]+$ ]] || qt_fail "cannot read MAX_REQUESTS and MAX_JOBS from daemon/manager.h"

# ASan's quarantine keeps freed memory for a while: it would count as memory qtrimd holds.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=1
QTRIMD_ARGS="--max-parallel-jobs=$max_parallel" qt_scenario_start flood
d=$QT_IMAGES
# Step 1 holds every request: workers run qemu-img from PATH, and this one waits while $hold
# exists. Step 3 holds jobs: they pause at the start of their attach while $resume is missing
# (lib/test-hooks.h).
hold=$QT_WORK/hold resume=$QT_WORK/resume
mkdir -- "$QT_WORK/bin"
printf '#!/bin/sh\nwhile [ -e %q ]; do sleep 0.05; done\nexec %q "$@"\n' "$hold" "$(command -v qemu-img)" \
        >"$QT_WORK/bin/qemu-img"
chmod +x -- "$QT_WORK/bin/qemu-img"
touch -- "$resume"
qt_step "restart qtrimd with a qemu-img that can be held, and jobs' pause point (test builds)"
qt_daemon_stop
PATH=$QT_WORK/bin:$PATH QTRIM_TEST_PAUSE=attach QTRIM_TEST_RESUME=$resume qt_daemon_start "--max-parallel-jobs=$max_parallel"
pid=$QT_DAEMON_PID
[[ -r /proc/$pid/task/$pid/children ]] || qt_fail "no /proc/PID/task/TID/children on this kernel (CONFIG_PROC_CHILDREN)"

# ---- helpers ------------------------------------------------------------------------------

mem_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
mem_line() { printf 'VmRSS %s KiB, VmHWM %s KiB' "$(mem_kib VmRSS)" "$(mem_kib VmHWM)"; }

# Samples how many children of qtrimd are alive (workers: qemu-img and qemu-nbd are theirs, not
# its), every 20 ms, one number per line, until stopped. Zombies do not count: a worker's exit is
# handled before it is reaped, and the worker started in its place may come first.
children_start() { # FILE
        (
                f=/proc/$pid/task/$pid/children
                while kill -0 "$pid" 2>/dev/null; do
                        n=0 kids=()
                        read -r -a kids <"$f" 2>/dev/null || true
                        for c in "${kids[@]}"; do
                                read -r _ _ state _ <"/proc/$c/stat" 2>/dev/null && [[ $state != Z ]] && n=$((n + 1))
                        done
                        printf '%s\n' "$n"
                        sleep 0.02
                done
        ) >"$1" 2>/dev/null &
        children_pid=$!
        qt_defer qt_kill_wait "$children_pid" 2
}
children_stop() { # FILE -> the most seen
        qt_undo qt_kill_wait "$children_pid" 2
        sort -n "$1" | tail -n 1
}

# run_flood NAME [BUS-FLOOD OPTIONS]: the plan is $QT_WORK/NAME.plan; results in NAME.jsonl,
# summary in NAME.json.
run_flood() {
        local name=$1 rc=0
        shift
        "$flood" -o "$QT_WORK/$name.jsonl" -t "$call_timeout" "$@" <"$QT_WORK/$name.plan" >"$QT_WORK/$name.json" || rc=$?
        ((rc == 0)) || qt_fail "bus-flood $name exited $rc: $(cat "$QT_WORK/$name.json")"
        qt_info "$(jq -c . "$QT_WORK/$name.json")"
}

# Outcomes counted by call and result, one line each.
outcome_table() { # NAME
        jq -rs 'group_by([.call, .result]) | .[] | "\(.[0].call) \(.[0].result): \(length)"' \
                "$QT_WORK/$1.jsonl" | sed 's/^/      /'
}

jobs_listed() { busctl --system --json=short call org.qtrim1 /org/qtrim1 org.qtrim1.Manager ListJobs | jq '.data[0] | length'; }

wait_no_jobs() { # TIMEOUT
        local deadline=$((SECONDS + $1))
        while (($(jobs_listed) > 0)); do
                ((SECONDS < deadline)) || qt_fail "jobs still listed after $1 s: $(busctl --system call org.qtrim1 /org/qtrim1 org.qtrim1.Manager ListJobs)"
                sleep 0.5
        done
}

# JobNew and JobRemoved in order, to see which jobs lived at the same time.
watch_jobs_start() {
        dbus-monitor --system "type='signal',interface='org.qtrim1.Manager',member='JobNew'" \
                "type='signal',interface='org.qtrim1.Manager',member='JobRemoved'" >"$QT_WORK/jobs.log" 2>&1 &
        qt_defer qt_kill_wait "$!" 2
}
# Images that had two jobs at once, from watch_jobs_start's log; call once every job has ended.
overlapping_jobs() {
        awk '/member=Job(New|Removed)/ { kind = /JobNew/ ? 1 : -1; field = 0; next }
             kind && /^ +(uint32|object path|string) / && ++field == 3 {
                img = $0; sub(/^ +string "/, "", img); sub(/"$/, "", img)
                live[img] += kind; if (live[img] > 1) twice[img] = 1; kind = 0 }
             END { for (i in twice) print i }' "$QT_WORK/jobs.log"
}

# Each accepted Shrink's job ended with the result JobRemoved must report.
check_job_results() { # NAME WANT
        local job img res n=0
        while read -r job img; do
                res=$(qt_job_removed_result "$job" 10 "$img") || qt_fail "no JobRemoved for $job ($img)"
                [[ $res == "$2" ]] || qt_fail "$job ($(basename -- "$img")) ended '$res', expected $2"
                n=$((n + 1))
        done < <(jq -r 'select(.call == "shrink" and .result == "ok") | "\(.value) \(.arg)"' "$QT_WORK/$1.jsonl")
        qt_ok "$n accepted job(s) ended $2 (JobRemoved)"
}

# A small qcow2, ext4 on the whole disk: SIZE_MIB, JUNK_MIB written and deleted, kept files.
make_small() { # IMG SIZE_MIB JUNK_MIB KEEP_SIZE...
        local img=$1 size=$2 junk=$3 raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        shift 3
        rm -f -- "$raw" "$frag"
        truncate -s "${size}M" -- "$raw"
        _qt_populate_fs "$frag" "$raw" disk ext4 0 $((size * MiB)) "$junk" "$@"
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_manifest "$img" qcow2 none "$frag"
}

# ---- images -------------------------------------------------------------------------------

qt_step "build the images: 3 dirty, 8 + 2 + $((max_jobs + 6)) small clean ones, bad inputs"
make_small "$QT_SCRATCH/dirty.qcow2" 256 160 4K 256K 2M
make_small "$QT_SCRATCH/small.qcow2" 48 0 4K 64K
dirty=() small=() targets=() pool=()
for i in 0 1 2; do
        dirty+=("$d/dirty-$i.qcow2")
        qt_clone_image "$QT_SCRATCH/dirty.qcow2" "${dirty[-1]}"
done
assert_dirty "${dirty[0]}"
for i in {0..7}; do
        small+=("$d/small-$i.qcow2")
        qt_clone_image "$QT_SCRATCH/small.qcow2" "${small[-1]}"
done
for i in 0 1; do
        targets+=("$d/inspect-$i.qcow2")
        qt_clone_image "$QT_SCRATCH/small.qcow2" "${targets[-1]}"
done
if ((hooks)); then
        for ((i = 0; i < max_jobs + 6; i++)); do
                pool+=("$d/pool-$i.qcow2")
                cp -- "$QT_SCRATCH/small.qcow2" "${pool[-1]}"
        done
fi
mkdir -- "$d/a-directory"
printf 'not a disk image\n' >"$d/notes.txt"
head -c 1M /dev/urandom >"$d/garbage.img"
qt_expect_files
valid=("${dirty[@]}" "${small[@]}")
declare -A fingerprint before inode
for f in "${valid[@]}" "${targets[@]}" "${pool[@]}" "$d/notes.txt" "$d/garbage.img"; do
        fingerprint[$f]=$(qt_file_fingerprint "$f")
        before[$f]=$(allocated_bytes "$f")
        inode[$f]=$(stat -c %i -- "$f")
done
# The image's convert option: dirty-2 and the odd small ones are only trimmed.
noconvert() { [[ $1 == */dirty-2.qcow2 || $1 =~ /small-[1357]\.qcow2$ ]]; }

# ---- the flood ----------------------------------------------------------------------------

# What each call may be answered with: a Shrink or Inspect may find qtrimd full, a Shrink the
# image already taken; otherwise each path gets its own answer.
full='"org.qtrim1.Error.TooManyJobs"'
busy="$full, \"org.qtrim1.Error.AlreadyRunning\""
expect=$(
        {
                for f in "${valid[@]}"; do printf '{"shrink %s": ["ok", %s]}\n' "$f" "$busy"; done
                for f in "${targets[@]}"; do printf '{"inspect %s": ["ok", %s]}\n' "$f" "$full"; done
                printf '{"shrink %s": ["org.qtrim1.Error.NotAnImage", %s]}\n' "$d/notes.txt" "$busy" "$d/garbage.img" "$busy"
                printf '{"shrink %s": ["org.qtrim1.Error.NotFound", %s]}\n' "$d/no-such-image.qcow2" "$full"
                printf '{"shrink %s": ["org.qtrim1.Error.NotRegularFile", %s]}\n' "$d/a-directory" "$full" /dev/null "$full"
                printf '{"shrink %s": ["org.qtrim1.Error.NotAbsolute", %s]}\n' images/relative.qcow2 "$full"
                printf '{"%s": ["ok"]}\n' listjobs get-manager
                # Jobs come and go: a job object may not exist (yet, or any more).
                printf '{"%s": ["ok", "org.freedesktop.DBus.Error.UnknownObject"]}\n' get-job getall-job
        } | jq -s 'add'
)
invalid=("$d/notes.txt" "$d/no-such-image.qcow2" "$d/a-directory" /dev/null images/relative.qcow2 "$d/garbage.img")

# The dirty images first, so that in step 2 they find qtrimd idle and get their jobs; then a
# mix of every call.
# Property reads go to job objects FIRST_JOB to FIRST_JOB + 15: those the flood's Shrinks create.
make_plan() { # CALLS FIRST_JOB
        local i vi=0 ii=0 ti=0 ji=0 f
        for f in "${dirty[@]}"; do
                if noconvert "$f"; then printf 'shrink\t%s\tnoconvert\n' "$f"; else printf 'shrink\t%s\n' "$f"; fi
        done
        for ((i = ${#dirty[@]}; i < $1; i++)); do
                case $((i % 10)) in
                0 | 1 | 9)
                        f=${valid[vi++ % ${#valid[@]}]}
                        if noconvert "$f"; then printf 'shrink\t%s\tnoconvert\n' "$f"; else printf 'shrink\t%s\n' "$f"; fi
                        ;;
                2) printf 'shrink\t%s\n' "${invalid[ii++ % ${#invalid[@]}]}" ;;
                3 | 4) printf 'inspect\t%s\n' "${targets[ti++ % ${#targets[@]}]}" ;;
                5) printf 'listjobs\n' ;;
                6) printf 'get\t/org/qtrim1/job/%d\torg.qtrim1.Job\tState\n' $((ji++ % 16 + $2)) ;;
                7) printf 'getall\t/org/qtrim1/job/%d\torg.qtrim1.Job\n' $((ji++ % 16 + $2)) ;;
                8) printf 'get\t/org/qtrim1\torg.qtrim1.Manager\tVersion\n' ;;
                esac
        done
}

# Unexpected answers, as "call arg: result (message)" lines.
unexpected() { # NAME
        jq -r --argjson expect "$expect" '
                (if .call == "shrink" or .call == "inspect" then "\(.call) \(.arg)"
                 elif .call == "get" or .call == "getall" then
                        (if .arg == "/org/qtrim1" then "get-manager" else "\(.call)-job" end)
                 else .call end) as $key
                | .result as $r
                | select(($expect[$key] // []) | any(.[]; . == $r) | not)
                | "\(.call) \(.arg): \(.result) (\(.message))"' "$QT_WORK/$1.jsonl"
}

# Every call answered with an answer it may get, and TooManyJobs said clearly.
check_answers() { # NAME
        local bad unclear
        [[ $(jq '.answered' "$QT_WORK/$1.json") == "$calls" ]] ||
                qt_fail "only $(jq '.answered' "$QT_WORK/$1.json") of $calls calls answered"
        bad=$(unexpected "$1")
        [[ -z $bad ]] || qt_fail "unexpected answers ($(wc -l <<<"$bad")):"$'\n'"$(head -n 20 <<<"$bad")"
        unclear=$(jq -rs '[.[] | select(.result == "org.qtrim1.Error.TooManyJobs" and (.message | test("^too many .*try again later$") | not)) | .message] | unique | .[]' "$QT_WORK/$1.jsonl")
        [[ -z $unclear ]] || qt_fail "TooManyJobs with an unclear message: $unclear"
        qt_ok "every call answered, each as it may be (no timeout, no bus limit hit)"
}

count() { jq -s "[.[] | select($2)] | length" "$QT_WORK/$1.jsonl"; } # NAME JQ-CONDITION

# ListJobs latency: the flood's own calls (sent with it, answered in turn) and a separate
# connection's, every 50 ms while the flood lasts. Sets lj_max (ms).
listjobs_latency() { # NAME BOUND_MS
        local own probe summary=$QT_WORK/$1.json
        own=$(jq -s '[.[] | select(.call == "listjobs") | .ms] | max' "$QT_WORK/$1.jsonl")
        probe=$(jq '.listjobs.max_ms' "$summary")
        (($(jq '.listjobs.samples' "$summary") > 0 && $(jq '.listjobs.errors' "$summary") == 0)) ||
                qt_fail "the ListJobs sampler got no answer during the flood: $(jq -c .listjobs "$summary")"
        lj_max=$(jq -n "[$own, $probe] | max")
        awk -v a="$lj_max" -v b="$2" 'BEGIN { exit !(a <= b) }' ||
                qt_fail "ListJobs took $lj_max ms during the flood (bound $2 ms)"
        qt_ok "ListJobs during the flood: at most $own ms among the flood's calls, $probe ms from another connection (mean $(jq '.listjobs.mean_ms' "$summary") ms; bound $2 ms)"
}

# At most a worker per request and per running job, and the helper qtrimd forks to cut the
# FUSE connection of a worker stuck in its exit (daemon/worker.c).
workers_bounded() { # CHILDREN-FILE
        local most
        most=$(children_stop "$1")
        ((most <= max_requests + max_parallel + 1)) ||
                qt_fail "qtrimd had $most children at once, more than $max_requests requests + $max_parallel jobs + 1"
        qt_ok "at most $most worker(s) at once (bound: $max_requests requests + $max_parallel running jobs + 1)"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

qt_watch_job_removed
watch_jobs_start
# The number the next job gets: one more than the last JobNew said.
next_job() { awk '/member=JobNew/ { getline; n = $2 } END { print n + 1 }' "$QT_WORK/jobs.log"; }

qt_step "warm up: one call of each kind, then read qtrimd's memory"
printf 'listjobs\ninspect\t%s\nshrink\t%s\nget\t/org/qtrim1\torg.qtrim1.Manager\tVersion\n' \
        "${targets[0]}" "$d/notes.txt" >"$QT_WORK/warmup.plan"
run_flood warmup -c 1 -l 0
rss0=$(mem_kib VmRSS) hwm0=$(mem_kib VmHWM)
qt_info "qtrimd before the floods: $(mem_line)"

# ---- 1. qtrimd full -----------------------------------------------------------------------

qt_step "1. hold all $max_requests request slots: Inspect calls whose qemu-img waits"
touch -- "$hold"
qt_defer rm -f -- "$hold"
for ((i = 0; i < max_requests; i++)); do printf 'inspect\t%s\n' "${targets[i % 2]}"; done >"$QT_WORK/hold.plan"
"$flood" -c 1 -l 0 -t "$call_timeout" -o "$QT_WORK/hold.jsonl" <"$QT_WORK/hold.plan" >"$QT_WORK/hold.json" &
hold_pid=$!
qt_defer qt_kill_wait "$hold_pid" 5
children_start "$QT_WORK/children-full"
for ((i = 0; i < 600; i++)); do
        (($(wc -w <"/proc/$pid/task/$pid/children") >= max_requests)) && break
        kill -0 "$hold_pid" 2>/dev/null || qt_fail "the Inspect calls ended before all were held: $(cat "$QT_WORK/hold.json")"
        sleep 0.1
done
((i < 600)) || qt_fail "qtrimd never had $max_requests Inspect workers at once"
qt_ok "$max_requests Inspect workers held"

qt_step "1. $calls calls at once on $connections connections while qtrimd is full"
make_plan "$calls" 1 >"$QT_WORK/full.plan"
run_flood full -c "$connections" -l 50
outcome_table full
rss1=$(mem_kib VmRSS)
qt_info "qtrimd right after the flood: $(mem_line)"
check_answers full
# Only paths refused before qtrimd counts its requests may get another error.
slots=$(count full '(.call == "shrink" or .call == "inspect") and .result != "org.qtrim1.Error.TooManyJobs"
        and (.result | test("NotFound|NotRegularFile|NotAbsolute") | not)')
((slots == 0)) || qt_fail "$slots Shrink/Inspect call(s) got past a full qtrimd: $(jq -rs '[.[] | select((.call == "shrink" or .call == "inspect") and .result != "org.qtrim1.Error.TooManyJobs") | .result] | unique | join(", ")' "$QT_WORK/full.jsonl")"
full_refused=$(count full '.result == "org.qtrim1.Error.TooManyJobs"')
(($(jq .listjobs.max_jobs "$QT_WORK/full.json") == 0)) || qt_fail "a job was listed during the flood"
qt_ok "$full_refused Shrink/Inspect calls refused with TooManyJobs ($(jq -rs '[.[] | select(.result == "org.qtrim1.Error.TooManyJobs") | .message] | unique | join("; ")' "$QT_WORK/full.jsonl")), no job created"
listjobs_latency full "$listjobs_max_ms"
full_lj=$lj_max full_seconds=$(jq .seconds "$QT_WORK/full.json")

qt_undo rm -f -- "$hold"
rc=0
wait "$hold_pid" || rc=$?
qt_undefer qt_kill_wait "$hold_pid" 5
((rc == 0)) || qt_fail "the held Inspect calls: bus-flood exited $rc"
held_ok=$(count hold '.result == "ok"')
((held_ok == max_requests)) || qt_fail "of the held Inspect calls, only $held_ok answered ok: $(jq -rs 'map(.result) | unique | join(", ")' "$QT_WORK/hold.jsonl")"
qt_ok "the $max_requests held Inspect calls answered once released"
workers_bounded "$QT_WORK/children-full"

# ---- 2. qtrimd idle -----------------------------------------------------------------------

qt_step "2. $calls calls at once on $connections connections while qtrimd is idle"
make_plan "$calls" "$(next_job)" >"$QT_WORK/idle.plan"
children_start "$QT_WORK/children-idle"
run_flood idle -c "$connections" -l 50
outcome_table idle
check_answers idle
qt_ok "$(count idle '.result == "org.qtrim1.Error.TooManyJobs"') call(s) refused with TooManyJobs"
listjobs_latency idle "$busy_listjobs_max_ms"
idle_lj=$lj_max idle_seconds=$(jq .seconds "$QT_WORK/idle.json")
accepted=$(count idle '.call == "shrink" and .result == "ok"')
dirty_ok=$(count idle '.call == "shrink" and .result == "ok" and (.arg | test("/dirty-"))')
((dirty_ok > 0)) || qt_fail "no dirty image got a job"
qt_ok "$accepted job(s) accepted ($dirty_ok of them on dirty images)"

qt_step "2. wait for the accepted jobs to end"
wait_no_jobs "$jobs_timeout"
workers_bounded "$QT_WORK/children-idle"
check_job_results idle "done"
dups=$(overlapping_jobs)
[[ -z $dups ]] || qt_fail "two jobs at once for: $dups"
qt_ok "never two jobs at once for one image (JobNew and JobRemoved)"

qt_step "2. check the images"
declare -A got_job
while read -r f; do got_job[$f]=1; done < <(jq -r 'select(.call == "shrink" and .result == "ok") | .arg' "$QT_WORK/idle.jsonl")
for f in "${valid[@]}"; do
        name=$(basename -- "$f")
        if [[ -z ${got_job[$f]:-} ]]; then
                [[ $(qt_file_fingerprint "$f") == "${fingerprint[$f]}" ]] || qt_fail "$name had no job but changed"
                qt_ok "$name: no job, unchanged"
        elif [[ $f == */dirty-* ]] && ! noconvert "$f"; then
                qt_check_shrunk "$f" "${before[$f]}" qcow2
        else
                after=$(allocated_bytes "$f")
                if [[ $f == */dirty-* ]]; then
                        ((after < before[$f])) || qt_fail "$name: allocation did not fall"
                        qt_ok "$name: $(qt_human "${before[$f]}") -> $(qt_human "$after") allocated"
                fi
                if noconvert "$f"; then
                        [[ $(stat -c %i -- "$f") == "${inode[$f]}" ]] || qt_fail "$name was replaced although its job did not convert"
                fi
                assert_qemu_img_check "$f"
                verify_files "$f"
        fi
done
for f in "${targets[@]}" "$d/notes.txt" "$d/garbage.img"; do
        [[ $(qt_file_fingerprint "$f") == "${fingerprint[$f]}" ]] || qt_fail "$(basename -- "$f") changed, though only inspected or refused"
done
qt_ok "inspected and refused files unchanged"
assert_no_leftovers
rss2=$(mem_kib VmRSS)
qt_info "qtrimd after the jobs: $(mem_line)"

# ---- 3. the job table ---------------------------------------------------------------------

if ((hooks)); then
        qt_step "3. job table: ${#pool[@]} Shrink() calls, $max_requests at a time, jobs held at attach"
        rm -f -- "$resume"
        qt_defer touch -- "$resume"
        for f in "${pool[@]}"; do printf 'shrink\t%s\n' "$f"; done >"$QT_WORK/fill.plan"
        children_start "$QT_WORK/children-fill"
        run_flood fill -c 4 -w "$max_requests" -l 0
        outcome_table fill
        ok=$(count fill '.result == "ok"')
        refused=$(count fill '.result == "org.qtrim1.Error.TooManyJobs" and (.message | test("too many jobs"))')
        ((ok == max_jobs && refused == ${#pool[@]} - max_jobs)) ||
                qt_fail "expected $max_jobs accepted and $((${#pool[@]} - max_jobs)) refused with TooManyJobs, got $ok and $refused"
        qt_ok "$ok accepted, $refused refused: $(jq -rs '[.[] | select(.result != "ok") | .message] | unique | join("; ")' "$QT_WORK/fill.jsonl")"
        listing=$(busctl --system --json=short call org.qtrim1 /org/qtrim1 org.qtrim1.Manager ListJobs)
        running=$(jq '[.data[0][] | select(.[2] == "running")] | length' <<<"$listing")
        queued=$(jq '[.data[0][] | select(.[2] == "queued")] | length' <<<"$listing")
        ((running == max_parallel && queued == max_jobs - max_parallel)) ||
                qt_fail "ListJobs shows $running running and $queued queued, expected $max_parallel and $((max_jobs - max_parallel))"
        qt_ok "ListJobs: $running running (held at attach), $queued queued"
        rss3=$(mem_kib VmRSS)
        qt_info "qtrimd holding $max_jobs jobs: $(mem_line)"

        qt_step "3. cancel all $max_jobs jobs at once"
        jq -r 'select(.result == "ok") | "cancel\t\(.value)"' "$QT_WORK/fill.jsonl" >"$QT_WORK/cancel.plan"
        run_flood cancel -c 4 -l 0
        bad=$(jq -r 'select(.result != "ok") | "\(.arg): \(.result) (\(.message))"' "$QT_WORK/cancel.jsonl")
        [[ -z $bad ]] || qt_fail "Cancel failed: $bad"
        wait_no_jobs 120
        workers_bounded "$QT_WORK/children-fill"
        check_job_results fill canceled
        qt_undo touch -- "$resume"
        for f in "${pool[@]}"; do
                [[ $(qt_file_fingerprint "$f") == "${fingerprint[$f]}" ]] || qt_fail "$(basename -- "$f") changed, though its job was canceled before its attach"
        done
        qt_ok "${#pool[@]} images unchanged"
        assert_no_leftovers
        qt_info "qtrimd after the cancels: $(mem_line)"
else
        qt_info "step 3 skipped: this build has no test hooks (-Dtest_hooks=true)"
fi

# ---- 4. again -----------------------------------------------------------------------------

qt_step "4. step 2 again: memory must not keep growing"
make_plan "$calls" "$(next_job)" >"$QT_WORK/again.plan"
children_start "$QT_WORK/children-again"
run_flood again -c "$connections" -l 50
outcome_table again
check_answers again
wait_no_jobs "$jobs_timeout"
workers_bounded "$QT_WORK/children-again"
check_job_results again "done"
dups=$(overlapping_jobs)
[[ -z $dups ]] || qt_fail "two jobs at once for: $dups"
assert_no_leftovers
rss4=$(mem_kib VmRSS) hwm4=$(mem_kib VmHWM)
qt_info "qtrimd after it: $(mem_line)"

qt_step "qtrimd's memory and latency"
qt_info "VmRSS: before $(mib "$rss0") MiB, right after step 1 $(mib "$rss1"), after step 2 $(mib "$rss2")${rss3:+, holding $max_jobs jobs $(mib "$rss3")}, after step 4 $(mib "$rss4"); VmHWM $(mib "$hwm0") -> $(mib "$hwm4") MiB"
qt_info "ListJobs: at most $full_lj ms while full ($calls calls answered in $full_seconds s), at most $idle_lj ms while workers ran ($calls calls in ${idle_seconds} s)"
((hwm4 - hwm0 <= rss_growth_mib * 1024)) ||
        qt_fail "qtrimd's peak memory grew by $(mib $((hwm4 - hwm0))) MiB (bound $rss_growth_mib MiB)"
((rss4 - rss2 <= rss_steady_mib * 1024)) ||
        qt_fail "qtrimd's memory grew by $(mib $((rss4 - rss2))) MiB from step 2 to step 4 (bound $rss_steady_mib MiB): it keeps something per call"
qt_ok "peak memory grew $(mib $((hwm4 - hwm0))) MiB (bound $rss_growth_mib), steps 3 and 4 added $(mib $((rss4 - rss2))) MiB (bound $rss_steady_mib)"

qt_scenario_end

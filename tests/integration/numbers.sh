#!/bin/bash
# Honest numbers, read from what qtrimd publishes (the Job objects' final PropertiesChanged and
# MetricsFile=), not from qtrimctl's text:
#   - a sweep over a blank raw disk, a blank qcow2 and a fresh overlay: the blank ones end done
#     with NothingToTrim, ImageState untouched and not a byte changed; the overlay, which
#     mounting its filesystem makes grow, has a negative BytesReclaimed and a Message that
#     says why; every sweep job's QueuedAt <= StartedAt < FinishedAt (qtrimd -j 1: the later
#     ones wait queued);
#   - a raw file of random bytes is still refused (NotAnImage) and not written;
#   - a job canceled at the start of the convert says the image was trimmed in place, one
#     canceled in the queue that it is untouched;
#   - the metrics file parses as Prometheus text (prometheus_client's parser) and its numbers
#     are the jobs' own; a restarted qtrimd keeps counting from them.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/hostile.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/hostile.sh"

hx_have_test_hooks || {
        echo "SKIP: needs a build with -Dtest_hooks=true (a job paused at its convert)"
        exit 77
}
# Debian's parser is a package of the system's python3 (tools/install-deps.sh).
PY=/usr/bin/python3
"$PY" -c 'import prometheus_client.parser' 2>/dev/null || qt_fail "python3-prometheus-client is not installed (tools/install-deps.sh)"

qt_scenario_start numbers
qt_daemon_stop
metrics=$QT_WORK/metrics/qtrim.prom
mkdir -p -- "$(dirname -- "$metrics")"
printf '[Daemon]\nIdleExitSec=0\nMaxParallelJobs=1\nImageDirectories=%s\nSweepPatterns=*.qcow2 *.raw\nMetricsFile=%s\n' \
        "$QT_IMAGES" "$metrics" >"$QT_DAEMON_CONFIG"

# Every PropertiesChanged of the jobs, one JSON message a line: the final one, sent before
# JobRemoved, holds every property's last value. Emptied when qtrimd restarts, which numbers
# its jobs from 1 again (appended to: the monitor's writes then go to the new start).
props=$QT_WORK/props.jsonl
busctl --system monitor --json=short \
        --match="type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',arg0='org.qtrim1.Job'" \
        >>"$props" 2>"$QT_WORK/monitor.err" &
monitor_pid=$!
qt_defer qt_kill_wait "$monitor_pid" 2
qt_watch_job_removed
qt_daemon_start

# The last value JOB's PropertiesChanged gave PROPERTY (JSON: strings quoted).
final() { # JOB PROPERTY
        jq -s -c --arg job "$1" --arg p "$2" \
                '[.[] | select(.path == $job) | .payload.data[1][$p] | select(. != null) | .data] | last' "$props"
}
# The job path of IMAGE's last job, from the JobRemoved log.
job_of() { # IMAGE
        # (the image by the environment: awk -v would read its backslashes as escapes)
        IMG=$1 awk '
                BEGIN { img = ENVIRON["IMG"] }
                /member=JobRemoved/ { n = 0; inside = 1; next }
                inside && /^ +(uint32|object path|string) / {
                        v = $0; sub(/^ +(uint32|object path|string) /, "", v); gsub(/^"|"$/, "", v)
                        f[++n] = v
                        if (n == 4) { if (f[3] == img) job = f[2]; inside = 0 }
                }
                END { print job }' "$QT_MONITOR_RAW"
}

# Every job's final properties, its image and whether a sweep asked for it, one JSON object a
# line, for the metrics check to compare with.
jobs_lines=$QT_WORK/jobs.jsonl
jobs=$QT_WORK/jobs.json
record_jobs() { # SWEEP(true|false) IMAGE...
        local sweep=$1 img
        shift
        for img; do
                jq -s -c --arg job "$(job_of "$img")" --arg img "$img" --argjson sweep "$sweep" \
                        '[.[] | select(.path == $job) | .payload.data[1] | map_values(.data)] | add
                        | . + {image: $img, sweep: $sweep}' "$props" >>"$jobs_lines"
        done
}
# The final value of PROPERTY must be VALUE (JSON).
expect() { # JOB PROPERTY VALUE
        local got
        got=$(final "$1" "$2")
        [[ $got == "$3" ]] || qt_fail "$1: $2 is $got, expected $3"
}
# The final numbers and words of JOB, on one line.
summary() { # JOB
        qt_info "$1: $(jq -s -c --arg job "$1" '[.[] | select(.path == $job) | .payload.data[1]
                | with_entries(select(.key | test("^(State|ImageState|NothingToTrim|BytesBefore|BytesAfter|BytesReclaimed|Converted|Message|ErrorMessage)$"))
                | .value = .value.data)] | add' "$props")"
}

base=$QT_SCRATCH/base.qcow2
ovl=$QT_IMAGES/fresh-overlay.qcow2
blank_raw=$QT_IMAGES/blank.raw
# A name the metrics file must escape (a label value's quote and backslash).
odd=$QT_IMAGES/'blank "odd" \ name.raw'
blank_qcow2=$QT_IMAGES/blank.qcow2
garbage=$QT_SCRATCH/garbage.raw
qt_step "a fresh overlay on an ext4 base, a blank raw (holes and written zeroes), a blank qcow2"
make_overlay "$base" "$QT_SCRATCH/unused-overlay.qcow2"
qemu-img create -q -f qcow2 -b "$base" -F qcow2 -- "$ovl"
truncate -s 256M -- "$blank_raw"
dd if=/dev/zero of="$blank_raw" bs=1M count=4 seek=100 conv=notrunc status=none
qemu-img create -q -f qcow2 -- "$blank_qcow2" 256M
cp -- "$blank_raw" "$odd"
head -c 1M /dev/urandom >"$garbage"
sums=$QT_WORK/sums
sha256sum -- "$blank_raw" "$blank_qcow2" "$odd" "$garbage" >"$sums"

qt_step "a raw file of random bytes is still refused, and not written"
got=$(qt_shrink_error_name "$garbage")
[[ $got == org.qtrim1.Error.NotAnImage ]] || qt_fail "Shrink() of random bytes gave '$got', expected NotAnImage"
qt_ok "random bytes: $got"

qt_step "sweep: qtrimctl shrink --all (qtrimd -j 1: the jobs queue)"
rc=0
qt_qtrimctl shrink --all >"$QT_WORK/sweep.out" 2>&1 || rc=$?
sed 's/^/    | /' "$QT_WORK/sweep.out"
((rc == 0)) || qt_fail "the sweep exited $rc: a blank disk must not fail it"
sha256sum --quiet -c "$sums" || qt_fail "a blank image or the random file changed"
qt_ok "the blank images and the random file are byte-identical"
for img in "$blank_raw" "$blank_qcow2" "$odd"; do
        job=$(job_of "$img")
        [[ -n $job ]] || qt_fail "no JobRemoved for $img"
        summary "$job"
        expect "$job" State '"done"'
        expect "$job" NothingToTrim true
        expect "$job" ImageState '"untouched"'
        expect "$job" Message '"nothing to trim: no partition table or filesystem found"'
        expect "$job" BytesReclaimed 0
        qt_ok "$(basename -- "$img"): done, nothing to trim, untouched"
done
job=$(job_of "$ovl")
summary "$job"
expect "$job" State '"done"'
reclaimed=$(final "$job" BytesReclaimed)
((reclaimed < 0)) || qt_fail "the fresh overlay reclaimed $reclaimed, expected a negative number (it grows)"
((reclaimed == $(final "$job" BytesBefore) - $(final "$job" BytesAfter))) || qt_fail "BytesReclaimed is not BytesBefore - BytesAfter"
message=$(final "$job" Message | jq -r .)
[[ $message =~ grew\ by\ [0-9.]+\ [KMG]?i?B:\ .*(L2\ table|mounting) ]] || qt_fail "the overlay's Message does not say why it grew: $message"
qt_ok "fresh overlay: BytesReclaimed $reclaimed; $message"

# qtrimd -j 1: the job that started last waited in the queue while another ran.
jq -s -e '[.[] | select(.payload.data[1].FinishedAt) | .payload.data[1] | map_values(.data)] as $j
        | ($j | max_by(.StartedAt)) as $last
        | all($j[]; .QueuedAt <= .StartedAt and .StartedAt < .FinishedAt)
          and $last.QueuedAt < ([$j[] | select(.StartedAt < $last.StartedAt) | .FinishedAt] | max)
          and ([$j[] | select(.StartedAt < $last.StartedAt) | .FinishedAt] | max) <= $last.StartedAt' "$props" >/dev/null ||
        qt_fail "QueuedAt <= StartedAt < FinishedAt does not hold, or no job was seen waiting queued"
qt_ok "QueuedAt <= StartedAt < FinishedAt for every job; the last one waited queued"

record_jobs true "$blank_raw" "$blank_qcow2" "$odd" "$ovl"

qt_step "cancels: one at the start of its convert, one still queued behind it"
: >"$props"
hx_daemon_pausing_at convert
trimmed=$QT_SCRATCH/whole.qcow2
make_whole_qcow2 "$trimmed"
queued=$QT_SCRATCH/queued.qcow2
cp -- "$trimmed" "$queued"
sha_queued=$(qt_sha256 "$queued")
inode=$(stat -c %i -- "$trimmed")
hx_start_paused convert "$QT_WORK/canceled.json" "$trimmed"
job=$HX_JOB
job_queued=$(qt_qtrimctl shrink --no-block "$queued")
[[ $(qt_job_prop "$job_queued" State) == queued ]] || qt_fail "the second job is $(qt_job_prop "$job_queued" State), expected queued"
busctl --system call org.qtrim1 "$job_queued" org.qtrim1.Job Cancel
qt_wait_job_gone "$job_queued" 30
busctl --system call org.qtrim1 "$job" org.qtrim1.Job Cancel
qt_wait_job_gone "$job" 60
qt_wait_pid_gone "$HX_CTL_PID" 10 || qt_fail "qtrimctl still waits for the canceled job"
qt_undefer qt_kill_wait "$HX_CTL_PID" 5
summary "$job"
expect "$job" State '"canceled"'
expect "$job" ImageState '"trimmed"'
expect "$job" ErrorMessage '"canceled; the image was trimmed in place, not converted"'
(($(final "$job" BytesReclaimed) > 0)) || qt_fail "canceled after its trim, but nothing reclaimed"
[[ $(stat -c %i -- "$trimmed") == "$inode" ]] || qt_fail "the image canceled before its replace was replaced"
qt_ok "canceled at the convert: trimmed in place, not converted"
summary "$job_queued"
expect "$job_queued" State '"canceled"'
expect "$job_queued" ImageState '"untouched"'
expect "$job_queued" ErrorMessage '"canceled; the image is untouched"'
expect "$job_queued" BytesReclaimed 0
expect "$job_queued" StartedAt 0
[[ $(qt_sha256 "$queued") == "$sha_queued" ]] || qt_fail "the job canceled in the queue changed its image"
qt_ok "canceled in the queue: untouched, byte-identical"

qt_step "the metrics file: Prometheus text with the jobs' own numbers"
record_jobs false "$trimmed" "$queued"
jq -s . "$jobs_lines" >"$jobs"
check_metrics() {
        [[ $(stat -c %a -- "$metrics") == 644 ]] || qt_fail "the metrics file has mode $(stat -c %a -- "$metrics"), expected 644"
        [[ $(find "$(dirname -- "$metrics")" -mindepth 1 | wc -l) == 1 ]] || qt_fail "files beside the metrics file: $(ls -A "$(dirname -- "$metrics")")"
        "$PY" - "$metrics" "$jobs" <<'PY' || qt_fail "the metrics file does not hold the jobs' numbers"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
jobs = json.load(open(sys.argv[2]))
samples = {}
for fam in text_string_to_metric_families(text):
    assert fam.name.startswith("qtrim_"), fam.name
    for s in fam.samples:
        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
def get(name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]
bad = []
def check(what, got, want):
    if abs(got - want) > 1e-6 * max(1, abs(want)):
        bad.append(f"{what}: {got}, expected {want}")
for result in ("done", "failed", "canceled", "interrupted"):
    check(f"jobs_total{{{result}}}", get("qtrim_jobs_total", result=result),
          sum(1 for j in jobs if j["State"] == result))
reclaimed = [j["BytesBefore"] - j["BytesAfter"] for j in jobs]
check("reclaimed_bytes_total", get("qtrim_reclaimed_bytes_total"), sum(r for r in reclaimed if r > 0))
check("grown_bytes_total", get("qtrim_grown_bytes_total"), sum(-r for r in reclaimed if r < 0))
check("last_sweep", get("qtrim_last_sweep_timestamp_seconds"),
      max(j["FinishedAt"] for j in jobs if j["sweep"]) / 1e6)
for j in jobs:
    check(f"{j['image']} before", get("qtrim_image_allocated_before_bytes", image=j["image"]), j["BytesBefore"])
    check(f"{j['image']} after", get("qtrim_image_allocated_after_bytes", image=j["image"]), j["BytesAfter"])
    check(f"{j['image']} at", get("qtrim_image_last_job_timestamp_seconds", image=j["image"]), j["FinishedAt"] / 1e6)
for b in bad:
    print("    " + b, file=sys.stderr)
print(f"    {len(samples)} samples, all as the jobs said" if not bad else "", end="")
sys.exit(1 if bad else 0)
PY
        echo
}
check_metrics
qt_ok "the metrics file parses and holds the jobs' numbers"
qt_daemon_stop
qt_daemon_start
check_metrics
qt_ok "a restarted qtrimd keeps them"

qt_scenario_end

#!/bin/bash
# VM payload (tests/vm/run-guest.sh script tests/vm/payload-kernel-crash.sh RESULTS): the kernel
# attach path (qemu-nbd -c /dev/nbdN) where it can run, a guest with the nbd module.
#
#  - Attach=auto chooses it here: the worker's filesystems are mounted from /dev/nbdNpM, no FUSE;
#    a cancel leaves the device free with no partition node behind.
#  - The worker SIGKILLed at each pause point from attach to detach: the job fails, and when
#    JobRemoved arrives no nbd device is connected and no qemu-nbd runs; the image is intact.
#  - The worker SIGKILLed at 20 moments spread over a whole shrink (not at pause points).
#  - The worker SIGKILLed while its qemu-nbd is stopped (it cannot act on its parent-death
#    signal): qtrimd kills that qemu-nbd and the job ends only once the device is free.
#  - qtrimd SIGKILLed with filesystems mounted: the worker tears down and frees the device; and
#    at 5 moments spread over a whole shrink, alone and together with the worker.
#  - Two jobs at once get two devices; with every device taken, auto attaches through FUSE and
#    kernel fails with a clear message.
#
# Needs root, the nbd module and a -Dtest_hooks=true build (skipped, 77, without the hooks).
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

if ! grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" 2>/dev/null; then
        printf 'SKIP: %s is not built with -Dtest_hooks=true: no pause points\n' "$QT_BUILD_DIR"
        exit 77
fi
modprobe nbd || qt_fail "modprobe nbd failed: this payload needs the nbd module"
[[ -e /dev/nbd0 ]] || qt_fail "no /dev/nbd0 after modprobe nbd"
# This payload picks the attach path of each qtrimd itself.
QT_QTRIMD_EXTRA_ARGS=

qt_scenario_start kernel-crash

# ---- nbd devices as the kernel shows them -----------------------------------------------------

# Connected devices ("nbd3"), and partition nodes ("nbd3p1") of any device.
nbd_connected() {
        local d
        for d in /sys/block/nbd*; do
                [[ -e $d/pid ]] && printf '%s\n' "${d##*/}"
        done
        return 0
}
nbd_partitions() {
        local p
        for p in /sys/block/nbd*/nbd*p*; do
                [[ -e $p ]] && printf '%s\n' "${p##*/}"
        done
        return 0
}

# Nothing of any job may be left on the nbd side: no device connected and no partition node
# (but on the devices the test itself holds, in $occupied), no qemu-nbd of a job.
# The jobs' qemu-nbd processes: they name the image by their worker's /proc/PID/fd path (or by
# its own, in the images dir); not the test's own (occupied devices).
job_qemu_nbds() {
        local d
        for d in $(pgrep -x qemu-nbd || true); do
                tr '\0' ' ' <"/proc/$d/cmdline" 2>/dev/null | grep -qE -- "/proc/[0-9]+/fd/|$QT_IMAGES" && printf '%s\n' "$d"
        done
        return 0
}

assert_nbd_free() { # WHAT
        local d held
        for d in $(nbd_connected) $(nbd_partitions); do
                held=0
                for o in "${occupied[@]}"; do
                        [[ $d == "$o" || $d == "$o"p* ]] && held=1
                done
                ((held)) || qt_fail "$1: $d is still there (connected: $(nbd_connected | xargs); partitions: $(nbd_partitions | xargs))"
        done
        for d in $(job_qemu_nbds); do
                qt_fail "$1: qemu-nbd $d still runs: $(tr '\0' ' ' <"/proc/$d/cmdline")"
        done
        return 0
}

# The nbd device whose connection belongs to a qemu-nbd child of PID ("nbd3"), if any.
nbd_of_worker() { # PID
        local d owner tgid ppid
        for d in $(nbd_connected); do
                owner=$(<"/sys/block/$d/pid")
                tgid=$(awk '/^Tgid:/ { print $2 }' "/proc/$owner/status" 2>/dev/null) || continue
                ppid=$(awk '/^PPid:/ { print $2 }' "/proc/$tgid/status" 2>/dev/null) || continue
                [[ $ppid == "$1" ]] && printf '%s\n' "$d"
        done
        return 0
}

# ---- images and jobs --------------------------------------------------------------------------

# qcow2, 320 MiB, every cluster allocated: GPT, p1 and p2 ext4 with deleted data. Small: under
# TCG every image costs.
make_small_gpt() {
        local img=$1 raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        rm -f -- "$raw" "$frag"
        truncate -s 320M -- "$raw"
        printf 'label: gpt\nsize=150MiB, type=L\nsize=150MiB, type=L\n' | sfdisk -q -- "$raw" >/dev/null
        _qt_populate_part "$frag" "$raw" 1 ext4 64 4K 100K 1M
        _qt_populate_part "$frag" "$raw" 2 ext4 48 12K 2M
        _qt_finish_qcow2 "$raw" "$img" full
        _qt_write_manifest "$img" qcow2 gpt "$frag"
}

restart_daemon() { # PAUSE-POINT ATTACH
        qt_daemon_stop >/dev/null
        QTRIM_TEST_PAUSE=$1 qt_daemon_start "--attach=$2" >/dev/null
}

# The workers that said they paused at POINT, one per line, in the order they did.
paused_workers() { # POINT
        grep -aoE "qtrim worker [0-9]+: paused at $1( |\$)" "$QT_DAEMON_LOG" 2>/dev/null |
                awk '{ sub(":", "", $3); print $3 }' || true
}

# Starts a shrink of a fresh clone of the master, waits until its worker pauses; sets img, job,
# worker.
start_paused_job() { # POINT [NAME]
        local i w name=${2:-crash}
        img=$QT_IMAGES/$name.qcow2
        qt_clone_image "$master" "$img"
        qt_expect_files
        job=$(qt_qtrimctl shrink --no-block "$img") || qt_fail "qtrimctl shrink --no-block failed: $job"
        worker=
        for ((i = 0; i < 600; i++)); do
                for w in $(paused_workers "$1"); do
                        [[ " ${seen_workers[*]} " == *" $w "* ]] || worker=$w
                done
                [[ -n $worker ]] && break
                sleep 0.1
        done
        [[ -n $worker ]] || qt_fail "job for $name never paused at $1"
        seen_workers+=("$worker")
}

# The worker qtrimd started for a job just queued, waiting up to 5 s for it ("" if none came).
first_worker() {
        local i pid=
        for ((i = 0; i < 500; i++)); do
                pid=$(pgrep -P "$QT_DAEMON_PID" | head -n 1)
                [[ -z $pid ]] || break
                sleep 0.01
        done
        printf '%s' "$pid"
}

check_image() {
        assert_qemu_img_check "$img" >/dev/null
        verify_files "$img" >/dev/null
        rm -f -- "$img" "$(qt_manifest "$img")"
        qt_expect_files
}

# How the job ended. Job paths and image names repeat across qtrimd restarts: wait until this
# job is gone, so its own JobRemoved is the last of that name in the log.
job_result() { # JOB
        qt_wait_job_gone "$1" 60
        qt_job_removed_result "$1" 10 "$img" || qt_fail "no JobRemoved signal for $1"
}

occupied=()
seen_workers=()
master=$QT_SCRATCH/master.qcow2
qt_step "build a small dirty GPT ext4+ext4 qcow2"
make_small_gpt "$master"
qt_watch_job_removed

qt_step "Attach=auto chooses the kernel path here"
restart_daemon trim-mounted auto
start_paused_job trim-mounted
dev=$(nbd_of_worker "$worker")
[[ -n $dev ]] || qt_fail "worker $worker holds no nbd device (connected: $(nbd_connected | xargs))"
[[ -z $(qt_list_fuse_mounts | grep -vxF -f "$QT_WORK/.baseline-fuse" || true) ]] ||
        qt_fail "a FUSE mount exists: auto took the FUSE path"
grep -q " /dev/${dev}p1 " "/proc/$worker/mountinfo" ||
        qt_fail "the worker did not mount /dev/${dev}p1: $(grep qtrim "/proc/$worker/mountinfo" || true)"
# The host sees neither the mount nor the worker's scratch tmpfs.
! grep -q "/dev/${dev}p" /proc/self/mountinfo || qt_fail "the worker's mount is visible to the host"
qt_qtrimctl cancel "$job" >/dev/null
result=$(job_result "$job")
[[ $result == canceled ]] || qt_fail "JobRemoved says '$result', expected canceled"
assert_nbd_free "after the cancel"
check_image
qt_ok "worker mounted /dev/${dev}p1 through /dev/$dev; canceled, device free, image intact"

# QT_KERNEL_CRASH_POINTS narrows the matrix (to hammer one point).
read -r -a points <<<"${QT_KERNEL_CRASH_POINTS:-attach discover trim trim-mounted detach}"
for point in "${points[@]}"; do
        qt_step "SIGKILL the worker at $point (kernel path)"
        restart_daemon "$point" kernel
        start_paused_job "$point"
        [[ $point == attach || -n $(nbd_of_worker "$worker") ]] ||
                qt_fail "worker $worker holds no nbd device at $point"
        kill -KILL "$worker"
        result=$(job_result "$job")
        [[ $result == failed ]] || qt_fail "JobRemoved says '$result', expected failed"
        # No waiting: the job ends only once its device is free.
        assert_nbd_free "at JobRemoved after SIGKILL at $point"
        check_image
        qt_ok "job failed; at JobRemoved no device connected, no partition node, no qemu-nbd; image intact"
done

# Kills anywhere, not at pause points: the worker SIGKILLed at moments spread evenly over a
# whole kernel-path shrink (its duration measured first): inside the connect, the partition
# scan, a mount, FITRIM, the unmounts, the disconnect, the convert. QT_KERNEL_CRASH_SPREAD kills
# (CI 20). Each: the job ends reported, no device connected and no qemu-nbd at JobRemoved, the
# image intact.
spread=${QT_KERNEL_CRASH_SPREAD:-20}
restart_daemon "" kernel
img=$QT_IMAGES/crash.qcow2
# The shorter of two unkilled shrinks: the first, with cold caches under TCG, can take three
# times as long, and most kills would then come after the job's end.
duration=
for _ in 1 2; do
        qt_clone_image "$master" "$img"
        qt_expect_files
        t0=$(qt_now)
        qt_qtrimctl shrink "$img" >/dev/null || qt_fail "the unkilled kernel-path shrink failed"
        took=$(qt_since "$t0")
        if [[ -z $duration ]] || awk -v a="$took" -v b="$duration" 'BEGIN { exit !(a < b) }'; then
                duration=$took
        fi
        check_image
done
qt_step "SIGKILL the worker at $spread moments spread over a ${duration}s shrink (kernel path)"
declare -A outcomes=()
for ((k = 1; k <= spread; k++)); do
        img=$QT_IMAGES/crash.qcow2
        qt_spread_shrink "$master" "$img" "$k" "$spread" "$duration" first_worker
        worker=$QT_SPREAD_PID
        if [[ -n $worker ]] && kill -KILL "$worker" 2>/dev/null; then
                result=$(job_result "$job")
        else
                result="$(job_result "$job") (ended before the kill)"
        fi
        [[ $result == failed* || $result == done* ]] || qt_fail "kill $k at ${at}s: the job ended '$result'"
        outcomes[$result]=$((${outcomes[$result]:-0} + 1))
        assert_nbd_free "at JobRemoved after the kill at ${at}s"
        check_image
done
qt_ok "$spread kills: $(qt_outcome_summary outcomes); at each JobRemoved no device connected, no qemu-nbd; every image intact"

qt_step "SIGKILL the worker while its qemu-nbd is stopped: qtrimd kills that qemu-nbd"
restart_daemon trim-mounted kernel
start_paused_job trim-mounted
dev=$(nbd_of_worker "$worker")
[[ -n $dev ]] || qt_fail "worker $worker holds no nbd device"
server=$(pgrep -x -P "$worker" qemu-nbd)
kill -STOP "$server"
t0=$(qt_now)
kill -KILL "$worker"
result=$(job_result "$job")
[[ $result == failed ]] || qt_fail "JobRemoved says '$result', expected failed"
assert_nbd_free "at JobRemoved, qemu-nbd stopped when its worker died"
grep -q "qemu-nbd ($server) of a dead worker still serves /dev/$dev; killing it" "$QT_DAEMON_LOG" ||
        qt_fail "qtrimd did not say it killed qemu-nbd $server: $(tail -5 "$QT_DAEMON_LOG")"
qt_info "JobRemoved $(qt_since "$t0") s after the worker died"
# qemu-nbd was killed, not stopped cleanly: leaked clusters are possible, corruption is not.
out=$(qemu-img check -f qcow2 -- "$img" 2>&1) && rc=0 || rc=$?
((rc == 0 || rc == 3)) || qt_fail "qemu-img check after a killed qemu-nbd: exit $rc: $out"
verify_files "$img" >/dev/null
rm -f -- "$img" "$(qt_manifest "$img")"
qt_expect_files
qt_ok "qtrimd killed the stopped qemu-nbd; device free at JobRemoved; files intact (qemu-img check exit $rc)"

qt_step "SIGKILL qtrimd with filesystems mounted: the worker detaches on its own"
restart_daemon trim-mounted kernel
start_paused_job trim-mounted
qt_daemon_kill9
qt_wait_pid_gone "$worker" 60 || qt_fail "worker $worker still runs 60 s after qtrimd died"
assert_nbd_free "after the orphaned worker tore down"
qt_daemon_start --attach=kernel >/dev/null
check_image
qt_ok "the worker tore down after qtrimd died; device free; image intact"

# qtrimd killed at moments spread over a kernel-path shrink, alone and together with its worker
# (QT_KERNEL_CRASH_DAEMON_SPREAD each, CI 5): within 10 s the worker is gone and no device and no
# qemu-nbd of the job is left, nor a partition node where the worker outlived qtrimd (with both
# dead, the next qtrimd drops them as it starts); qtrimd, started again, reports the job as
# interrupted from its records (or its JobRemoved came before qtrimd died); the image is intact.
daemon_spread=${QT_KERNEL_CRASH_DAEMON_SPREAD:-5}
for victim in qtrimd both; do
        qt_step "SIGKILL $victim at $daemon_spread moments spread over a ${duration}s shrink (kernel path; both: qtrimd and the worker at once)"
        restart_daemon "" kernel
        declare -A outcomes=()
        for ((k = 1; k <= daemon_spread; k++)); do
                # A name of its own: job ids start again with each qtrimd.
                img=$QT_IMAGES/crash-$victim-$k.qcow2
                qt_spread_shrink "$master" "$img" "$k" "$daemon_spread" "$duration" first_worker
                worker=$QT_SPREAD_PID
                qt_kill_daemon "$victim" "$worker"
                # Within 10 s qemu-nbd is gone and the device free (its parent-death signal). The
                # partition nodes of the connection go with them when the worker lives to drop
                # them (qtrimd alone); with both dead, the next qtrimd drops them at its start.
                for ((i = 0; i < 100; i++)); do
                        [[ -z $(nbd_connected) && -z $(job_qemu_nbds) && ($victim == both || -z $(nbd_partitions)) ]] && break
                        sleep 0.1
                done
                if [[ $victim == qtrimd ]]; then
                        assert_nbd_free "10 s after SIGKILL of qtrimd at ${at}s"
                elif [[ -n $(nbd_connected) || -n $(job_qemu_nbds) ]]; then
                        qt_fail "10 s after SIGKILL of both at ${at}s: connected: $(nbd_connected | xargs); qemu-nbd: $(pgrep -a qemu-nbd || true)"
                fi
                qt_daemon_restart_report "$job" "$img" --attach=kernel
                assert_nbd_free "after qtrimd started again (SIGKILL of $victim at ${at}s)"
                outcomes[$QT_KILLED_RESULT]=$((${outcomes[$QT_KILLED_RESULT]:-0} + 1))
                check_image
        done
        qt_ok "$daemon_spread kills of $victim: $(qt_outcome_summary outcomes); within 10 s no device connected and no qemu-nbd, no partition node once qtrimd runs again; every image intact"
        unset outcomes
done

qt_step "two jobs at once: two devices"
restart_daemon trim-mounted kernel
start_paused_job trim-mounted one
job1=$job img1=$img worker1=$worker
start_paused_job trim-mounted two
dev1=$(nbd_of_worker "$worker1") dev2=$(nbd_of_worker "$worker")
[[ -n $dev1 && -n $dev2 && $dev1 != "$dev2" ]] || qt_fail "two jobs hold '$dev1' and '$dev2'"
qt_qtrimctl cancel "$job1" >/dev/null
qt_qtrimctl cancel "$job" >/dev/null
[[ $(job_result "$job") == canceled ]] || qt_fail "the second job did not end canceled"
img=$img1
[[ $(job_result "$job1") == canceled ]] || qt_fail "the first job did not end canceled"
assert_nbd_free "after both cancels"
check_image
img=$QT_IMAGES/two.qcow2
check_image
qt_ok "jobs held $dev1 and $dev2; both free after the cancels"

qt_step "every nbd device taken: auto attaches through FUSE, kernel fails clearly"
qt_daemon_stop >/dev/null
assert_nbd_free "before reloading nbd"
modprobe -r nbd || qt_fail "cannot unload nbd to load it with 2 devices"
qt_defer modprobe nbd
modprobe nbd nbds_max=2
truncate -s 16M "$QT_SCRATCH/tiny.raw"
for d in nbd0 nbd1; do
        qemu-nbd -c "/dev/$d" -k "$QT_SCRATCH/$d.sock" --read-only -f raw "$QT_SCRATCH/tiny.raw"
        qt_defer qemu-nbd -d "/dev/$d"
        occupied+=("$d")
done
qt_daemon_start --attach=auto >/dev/null
img=$QT_IMAGES/fallback.qcow2
qt_clone_image "$master" "$img"
qt_expect_files
qt_qtrimctl_ok shrink --no-convert "$img"
grep -q "attaching through FUSE: no free nbd device (all 2 in use)" "$QT_DAEMON_LOG" ||
        qt_fail "the worker did not say why it took FUSE: $(tail -5 "$QT_DAEMON_LOG")"
check_image
qt_daemon_stop >/dev/null
qt_daemon_start --attach=kernel >/dev/null
img=$QT_IMAGES/refused.qcow2
qt_clone_image "$master" "$img"
qt_expect_files
out=$(qt_qtrimctl shrink "$img" 2>&1) && qt_fail "a kernel-only shrink succeeded with no free device: $out"
grep -q "no free nbd device (all 2 in use)" <<<"$out" || qt_fail "unclear failure: $out"
check_image
for d in nbd0 nbd1; do
        qt_undo qemu-nbd -d "/dev/$d" >/dev/null
done
occupied=()
qt_daemon_stop >/dev/null
for ((i = 0; i < 50; i++)); do
        [[ -z $(nbd_connected) ]] && break
        sleep 0.1
done
modprobe -r nbd && qt_undo modprobe nbd
qt_daemon_start --attach=kernel >/dev/null
qt_ok "auto fell back to FUSE and said why; kernel failed with \"no free nbd device\""

assert_nbd_free "at the end"
qt_scenario_end

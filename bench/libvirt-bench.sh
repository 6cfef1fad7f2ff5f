#!/bin/bash
# Benchmark (not a test): qtrim's libvirt verbs against their peers, with a real libvirtd
# (tests/lib/libvirt.sh: started here, stopped at exit) and qtrimd on a private bus with
# libvirt's qemu hook installed for it (as tests/integration/libvirt-shutdown.sh does). Each case
# ROUNDS times, alternating which goes first; medians with min and max:
#
#   online    a running TCG guest with a real qemu-ga (tests/lib/agent-guest.sh): vda qcow2,
#             discard='unmap', ext4 mounted. Each run, the guest writes ONLINE_MIB MiB of random
#             data and deletes it, then either qtrimctl shrink --domain D --online or
#             virsh domfstrim D: wall time, host bytes freed (stat %b of the image
#             before/after), and what qtrim said (host freed, and the guest's own "trimmed",
#             from --json). vdb, raw with discard='ignore', is written to in one more run of
#             each: domfstrim exits 0 and frees nothing, qtrim says why. The guest's first
#             trim after its boot (all its free space) is not counted.
#   shutdown  shrink on shutdown: from virsh destroy of a domain ShrinkOnShutdown= names (no
#             OS, a dirty 1 GiB qcow2) to its disk's JobRemoved (the signal's own time), against
#             the same by hand: virsh destroy of a domain it does not name, then
#             qtrimctl shrink IMG at once (to its JobRemoved). The difference is the hook's cost.
#   start     virsh start of a no-OS domain with no qtrim job, against a start while a qtrim
#             job on its disk is paused in its trim phase (QTRIM_TEST_PAUSE=trim-mounted): the
#             start cancels it and waits for it.
#   offline   qtrimctl shrink --domain D of a shut-off domain with 2 disks (1 GiB qcow2 GPT
#             ext4+xfs, 256 MiB qcow2 ext4, both dirty), with and without --no-convert, against
#             virt-sparsify --in-place on each disk (libguestfs, direct backend, TCG), on fresh
#             copies of the same disks: time and the resulting allocation.
#
# Every timing is a wall clock around the whole command (its process start included). Round 1
# also checks results without failing the benchmark (kept files, qemu-img check): checks.tsv.
# Prints a table of medians; every run is in a TSV, copied with the logs and qtrim's JSON to
# KEEP_DIR (default $TMPDIR/qtrim-libvirt-bench-DATE, a few KiB) as the work dir goes at exit.
#
# Needs a build with -Dtest_hooks=true (the pause point) and libvirt support, in BUILD_DIR as
# for the tests; for figures of the product as shipped, one without sanitizers:
#   meson setup build-bench -Db_sanitize=none -Dbuildtype=release -Dtest_hooks=true
# Uses libvirtd, loop devices and QEMU machine-wide: run it alone, as the integration tests run.
# About 6 minutes on 2 cores with ROUNDS=5 (virt-sparsify under TCG is most of it).
# Usage (as root, from anywhere):
#   BUILD_DIR=build-bench bench/libvirt-bench.sh
#   ROUNDS=3 ONLINE_MIB=128 PARTS="online start" BUILD_DIR=... bench/libvirt-bench.sh
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
top=$here/..
rounds=${ROUNDS:-5}
online_mib=${ONLINE_MIB:-256}
parts=${PARTS:-online shutdown start offline}
vs_timeout=${VS_TIMEOUT:-600}
keep_dir=${KEEP_DIR:-${TMPDIR:-/var/tmp}/qtrim-libvirt-bench-$(date +%Y%m%d-%H%M%S)}
bench_t0=$(date +%s.%N)

"$top/tools/install-deps.sh"
if [[ $parts == *offline* ]] && ! command -v virt-sparsify >/dev/null; then
        echo "libvirt-bench: installing libguestfs-tools"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libguestfs-tools >/dev/null
fi
# libguestfs: qemu directly (no libvirtd), and TCG only: KVM hangs on these machines.
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg

# shellcheck source=tests/lib/scenario.sh
source "$top/tests/lib/scenario.sh"
# shellcheck source=tests/lib/agent-guest.sh
source "$top/tests/lib/agent-guest.sh"
# shellcheck source=tests/lib/hostile.sh
source "$top/tests/lib/hostile.sh"

[[ -f $QT_BUILD_DIR/build.ninja ]] || qt_fail "no build in $QT_BUILD_DIR (set BUILD_DIR; see the header)"
ninja -C "$QT_BUILD_DIR" >/dev/null
hx_have_test_hooks || qt_fail "$QT_BUILD_DIR is not built with -Dtest_hooks=true (the start case's pause point)"
hook=$QT_BUILD_DIR/cli/qtrim-libvirt-hook
[[ -x $hook ]] || qt_fail "the hook is not built: $hook (libvirt support off?)"
build_options=$(meson introspect --buildoptions "$QT_BUILD_DIR" |
        jq -r 'map({(.name): .value}) | add | "buildtype=\(.buildtype), b_sanitize=\(.b_sanitize), test_hooks=\(.test_hooks)"')

qt_need qemu-img jq busctl dbus-daemon dbus-monitor
qt_init_workdir libvirt-bench
load_start=$(uptime)

# ---- qtrimd, the hook, libvirtd -------------------------------------------------------------

qt_bus_start
qt_watch_job_removed
QT_DAEMON_CONFIG=$QT_WORK/qtrimd.conf
# The online trim asks the guest agent through libvirt's read-write socket.
printf '[Daemon]\nIdleExitSec=0\nLibvirtURI=qemu+unix:///system?socket=%s\nShrinkOnShutdown=qtrim-test-bench-shut\n' \
        "$QT_WORK/libvirt/sock/libvirt-sock" >"$QT_DAEMON_CONFIG"
qt_daemon_start >/dev/null
# libvirtd runs hooks without this bus's address: the installed hook is a wrapper that gives it.
hooks_dir=/etc/libvirt/hooks/qemu.d
if [[ ! -d $hooks_dir ]]; then
        mkdir -p -- "$hooks_dir"
        qt_defer rmdir -- "$hooks_dir"
fi
printf '#!/bin/sh\nexport DBUS_SYSTEM_BUS_ADDRESS=%q\nexec %q "$@"\n' "$DBUS_SYSTEM_BUS_ADDRESS" "$hook" >"$hooks_dir/qtrim-bench"
chmod 755 "$hooks_dir/qtrim-bench"
qt_defer rm -f -- "$hooks_dir/qtrim-bench"
qt_libvirt_start >/dev/null

results=$QT_WORK/results.tsv
checks=$QT_WORK/checks.tsv
logs=$QT_WORK/logs
mkdir -p -- "$logs"
# reported: what qtrim said it freed on the host; guest: what the guest said it trimmed;
# aux: the seconds of a step inside the run (virsh destroy; start -> JobRemoved canceled).
printf 'part\tround\tcase\tstatus\tseconds\tbefore\tafter\treported\tguest\taux\n' >"$results"
printf 'part\tcase\tcheck\tresult\n' >"$checks"
record() { (IFS=$'\t' && printf '%s\n' "$*") >>"$results"; }
# A round-1 check: CMD... in a subshell (the tests' checks exit on failure), never fatal.
check() { # PART CASE WHAT CMD...
        local part=$1 tool=$2 what=$3 result=ok
        shift 3
        ("$@") >>"$logs/checks.log" 2>&1 || result=FAILED
        printf '%s\t%s\t%s\t%s\n' "$part" "$tool" "$what" "$result" >>"$checks"
        [[ $result == ok ]] || qt_warn "$part $tool: $what FAILED (see checks.log)"
}
sum_alloc() {
        local f n=0
        for f; do n=$((n + $(allocated_bytes "$f"))); done
        echo "$n"
}
delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# The JobRemoved signals seen so far for IMAGE, one "TIME RESULT" line each: TIME is the signal's
# (dbus-monitor's time=), the same clock as qt_now.
removed_of() { # IMAGE
        awk -v img="$1" '
                /member=JobRemoved/ { n = 0; inside = 1; t = $2; sub(/^time=/, "", t); next }
                inside && /^ +(uint32|object path|string) / {
                        v = $0; sub(/^ +(uint32|object path|string) /, "", v); gsub(/^"|"$/, "", v)
                        f[++n] = v
                        if (n == 4) { if (f[3] == img) print t, f[4]; inside = 0 }
                }' "$QT_MONITOR_RAW"
}
# Waits for IMAGE's JobRemoved number N+1 (N: how many there were before), at most TIMEOUT s,
# and prints its "TIME RESULT"; fails if none came.
wait_removed() { # IMAGE N TIMEOUT
        local i line
        for ((i = 0; i < $3 * 20; i++)); do
                line=$(removed_of "$1" | sed -n "$(($2 + 1))p")
                [[ -n $line ]] && {
                        echo "$line"
                        return 0
                }
                sleep 0.05
        done
        return 1
}
n_removed() { removed_of "$1" | wc -l; }

master_gpt=$QT_SCRATCH/master-gpt.qcow2
master_whole=$QT_SCRATCH/master-whole.qcow2
need_masters() {
        [[ -f $master_gpt ]] && return 0
        qt_step "building the dirty masters (1 GiB qcow2 GPT ext4+xfs, 256 MiB qcow2 ext4)"
        make_gpt_ext4_xfs "$master_gpt"
        make_whole_qcow2 "$master_whole"
        qt_info "$(qt_human "$(allocated_bytes "$master_gpt")") and $(qt_human "$(allocated_bytes "$master_whole")") allocated"
}

# ---- 1. online trim against virsh domfstrim -------------------------------------------------

# An ext4 filesystem on a whole 1 GiB disk, nothing written: IMG FORMAT.
make_empty_ext4() {
        local raw=$QT_SCRATCH/${1##*/}.raw
        truncate -s 1G -- "$raw"
        mkfs.ext4 -q -F -- "$raw"
        if [[ $2 == qcow2 ]]; then
                qemu-img convert -f raw -O qcow2 -- "$raw" "$1"
                rm -f -- "$raw"
        else
                mv -- "$raw" "$1"
        fi
}

online_dom=qtrim-test-bench-agent
# One run: the guest writes and deletes on MOUNT, then TOOL trims (recorded as WHAT); IMG's allocation is measured.
online_run() { # ROUND TOOL WHAT MOUNT TARGET IMG
        local round=$1 tool=$2 what=$3 mount=$4 target=$5 img=$6 before after t0 s rc=0 log reported=- guest=-
        log=$logs/online-r$round-$what
        qt_agent_exec "$online_dom" "head -c ${online_mib}M /dev/urandom >$mount/bench.bin && sync && rm $mount/bench.bin && sync"
        before=$(allocated_bytes "$img")
        t0=$(qt_now)
        if [[ $tool == qtrim ]]; then
                "$QT_QTRIMCTL" --json shrink --domain "$online_dom" --online >"$log.json" 2>"$log.err" || rc=$?
        else
                qt_virsh domfstrim "$online_dom" >"$log.out" 2>"$log.err" || rc=$?
        fi
        s=$(qt_since "$t0")
        after=$(allocated_bytes "$img")
        if [[ $tool == qtrim && -s $log.json ]]; then
                reported=$(jq --arg t "$target" '.[0].filesystems[] | select(.kind == "image" and .name == $t) | .trimmed' "$log.json")
                guest=$(jq --arg m "$mount" '.[0].filesystems[] | select(.kind == "guest" and .name == $m) | .trimmed' "$log.json")
        fi
        record online "$round" "$what" "$rc" "$s" "$before" "$after" "$reported" "$guest" -
        qt_info "$what: ${s}s, exit $rc, host freed $(qt_human $((before - after)))$([[ $reported == - ]] || echo ", qtrim says $(qt_human "$reported") freed, guest trimmed $(qt_human "$guest")")"
}

part_online() {
        local unmap=$QT_IMAGES/online-unmap.qcow2 ignore=$QT_IMAGES/online-ignore.raw round
        qt_step "online: 1 GiB ext4 disks (vda qcow2 discard='unmap', vdb raw discard='ignore'), booting the agent guest"
        qt_agent_boot_files
        make_empty_ext4 "$unmap" qcow2
        make_empty_ext4 "$ignore" raw
        qt_agent_domain_xml "$online_dom" \
                "$(qt_agent_disk vda "$unmap" qcow2 unmap unmap)" \
                "$(qt_agent_disk vdb "$ignore" raw ignore ignore)" >"$QT_WORK/$online_dom.xml"
        qt_domain_define "$online_dom" "$QT_WORK/$online_dom.xml"
        qt_agent_start "$online_dom"
        # Neither tool's first trim counts: the guest's ext4 trims all its free space once.
        qt_virsh domfstrim "$online_dom" >/dev/null
        for ((round = 1; round <= rounds; round++)); do
                qt_step "online: round $round of $rounds (${online_mib} MiB written and deleted before each)"
                if ((round % 2)); then order=(qtrim virsh); else order=(virsh qtrim); fi
                for tool in "${order[@]}"; do
                        online_run "$round" "$tool" "$tool" /mnt/unmap vda "$unmap"
                done
        done
        qt_step "online: discard='ignore' (vdb), one run each"
        online_run 1 virsh virsh-ignore /mnt/ignore vdb "$ignore"
        online_run 1 qtrim qtrim-ignore /mnt/ignore vdb "$ignore"
        jq -r '.[0].filesystems[] | select(.kind == "image" and .name == "vdb") | "\(.state): \(.message)"' \
                "$logs/online-r1-qtrim-ignore.json" >"$logs/online-ignore-says.txt" || true
        qt_agent_shutdown "$online_dom" >/dev/null
        check online qtrim "qemu-img check of vda after the runs" assert_qemu_img_check "$unmap"
}

# ---- 2. shrink on shutdown against the same by hand -----------------------------------------

part_shutdown() {
        local round tool img dom before after t0 took n line rc
        need_masters
        qt_step "shutdown: two no-OS domains, each a copy of the 1 GiB dirty disk"
        for tool in hook hand; do
                dom=qtrim-test-bench-$([[ $tool == hook ]] && echo shut || echo hand)
                qt_domain_xml "$dom" "$(qt_domain_disk vda virtio "$QT_IMAGES/shutdown-$tool.qcow2" qcow2 unmap)" >"$QT_WORK/$dom.xml"
                qt_domain_define "$dom" "$QT_WORK/$dom.xml"
        done
        for ((round = 1; round <= rounds; round++)); do
                qt_step "shutdown: round $round of $rounds"
                if ((round % 2)); then order=(hook hand); else order=(hand hook); fi
                for tool in "${order[@]}"; do
                        dom=qtrim-test-bench-$([[ $tool == hook ]] && echo shut || echo hand)
                        img=$QT_IMAGES/shutdown-$tool.qcow2
                        qt_clone_image "$master_gpt" "$img"
                        qt_virsh start "$dom" >/dev/null || qt_fail "virsh start $dom failed"
                        before=$(allocated_bytes "$img")
                        n=$(n_removed "$img")
                        sync
                        rc=0
                        t0=$(qt_now)
                        qt_virsh destroy "$dom" >/dev/null || qt_fail "virsh destroy $dom failed"
                        took=$(qt_since "$t0")
                        if [[ $tool == hand ]]; then
                                "$QT_QTRIMCTL" --json shrink "$img" >"$logs/shutdown-r$round-hand.json" 2>"$logs/shutdown-r$round-hand.err" || rc=$?
                        fi
                        if line=$(wait_removed "$img" "$n" 120); then
                                [[ ${line#* } == "done" ]] || rc=1
                        else
                                rc=1 line="$(qt_now) none"
                        fi
                        s=$(delta "$t0" "${line%% *}")
                        after=$(allocated_bytes "$img")
                        record shutdown "$round" "$tool" "$rc" "$s" "$before" "$after" - - "$took"
                        qt_info "$tool: destroy -> JobRemoved ${line#* } in ${s}s (destroy ${took}s): $(qt_human "$before") -> $(qt_human "$after")"
                        if ((round == 1)); then
                                check shutdown "$tool" "kept files" verify_files "$img"
                                check shutdown "$tool" "qemu-img check" assert_qemu_img_check "$img"
                        fi
                done
        done
}

# ---- 3. a start that cancels a job ----------------------------------------------------------

part_start() {
        local round tool dom=qtrim-test-bench-busy img=$QT_IMAGES/busy.qcow2 t0 s n line rc aux
        need_masters
        qt_step "start: qtrimd again, its workers pausing in their trim (QTRIM_TEST_PAUSE=trim-mounted)"
        HX_RESUME=$QT_WORK/resume
        touch -- "$HX_RESUME"
        qt_daemon_stop >/dev/null
        QTRIM_TEST_PAUSE=trim-mounted QTRIM_TEST_RESUME=$HX_RESUME qt_daemon_start >/dev/null
        qt_clone_image "$master_whole" "$img"
        qt_domain_xml "$dom" "$(qt_domain_disk vda virtio "$img" qcow2 unmap)" >"$QT_WORK/$dom.xml"
        qt_domain_define "$dom" "$QT_WORK/$dom.xml"
        for ((round = 1; round <= rounds; round++)); do
                qt_step "start: round $round of $rounds"
                if ((round % 2)); then order=(no-job job); else order=(job no-job); fi
                for tool in "${order[@]}"; do
                        rc=0 aux=-
                        if [[ $tool == job ]]; then
                                n=$(n_removed "$img")
                                hx_start_paused trim-mounted "$logs/start-r$round.json" "$img" >/dev/null
                        fi
                        t0=$(qt_now)
                        qt_virsh start "$dom" >/dev/null || rc=$?
                        s=$(qt_since "$t0")
                        [[ $(qt_virsh domstate "$dom") == running ]] || rc=1
                        if [[ $tool == job ]]; then
                                if line=$(wait_removed "$img" "$n" 30); then
                                        [[ ${line#* } == canceled ]] || rc=1
                                        aux=$(delta "$t0" "${line%% *}")
                                else
                                        rc=1
                                fi
                                qt_wait_pid_gone "$HX_CTL_PID" 10 || rc=1
                                qt_undefer qt_kill_wait "$HX_CTL_PID" 5
                        fi
                        qt_virsh destroy "$dom" >/dev/null
                        record start "$round" "$tool" "$rc" "$s" - - - - "$aux"
                        qt_info "$tool: virsh start ${s}s (exit $rc)$([[ $aux == - ]] || echo ", the job canceled ${aux}s after the start began")"
                        if ((round == 1)) && [[ $tool == job ]]; then
                                check start job "kept files after the cancel" verify_files "$img"
                                check start job "qemu-img check after the cancel" assert_qemu_img_check "$img"
                        fi
                done
        done
        qt_daemon_stop >/dev/null
        qt_daemon_start >/dev/null
}

# ---- 4. offline: shrink --domain against virt-sparsify --in-place ---------------------------

# Anything libguestfs left running on an image of ours (a timed out virt-sparsify): found by its
# command line, killed by pid. libvirt's QEMUs (-name guest=NAME) go with their domains.
kill_appliances() {
        local p comm cmd
        for p in /proc/[0-9]*; do
                { read -r comm <"$p/comm"; } 2>/dev/null || continue
                [[ $comm == qemu-system* || $comm == virt-sparsify ]] || continue
                cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
                [[ $cmd == *"$QT_WORK"* && $cmd != *guest=qtrim-test-* ]] || continue
                kill -KILL "${p#/proc/}" 2>/dev/null || true
        done
}

part_offline() {
        local round tool dom=qtrim-test-bench-off d1=$QT_IMAGES/off-gpt.qcow2 d2=$QT_IMAGES/off-whole.qcow2
        local before after t0 s rc img
        need_masters
        qt_defer kill_appliances
        qt_step "offline: libguestfs warm-up (a virt-sparsify --in-place on a scratch copy, not counted)"
        cp -- "$master_whole" "$QT_SCRATCH/warmup.qcow2"
        t0=$(qt_now)
        timeout "$vs_timeout" virt-sparsify --in-place --format qcow2 -- "$QT_SCRATCH/warmup.qcow2" >"$logs/warmup.log" 2>&1 ||
                qt_fail "virt-sparsify does not work here: $(tail -n 5 "$logs/warmup.log")"
        qt_info "warm-up: $(qt_since "$t0")s"
        rm -f -- "$QT_SCRATCH/warmup.qcow2"
        qt_domain_xml "$dom" "$(qt_domain_disk vda virtio "$d1" qcow2 unmap)" \
                "$(qt_domain_disk vdb virtio "$d2" qcow2 unmap)" >"$QT_WORK/$dom.xml"
        qt_domain_define "$dom" "$QT_WORK/$dom.xml"
        for ((round = 1; round <= rounds; round++)); do
                qt_step "offline: round $round of $rounds"
                if ((round % 2)); then order=(qtrim qtrim-no-convert virt-sparsify); else order=(virt-sparsify qtrim-no-convert qtrim); fi
                for tool in "${order[@]}"; do
                        qt_clone_image "$master_gpt" "$d1"
                        qt_clone_image "$master_whole" "$d2"
                        before=$(sum_alloc "$d1" "$d2")
                        sync
                        rc=0
                        t0=$(qt_now)
                        case $tool in
                        qtrim) "$QT_QTRIMCTL" --json shrink --domain "$dom" >"$logs/offline-r$round-$tool.json" 2>"$logs/offline-r$round-$tool.err" || rc=$? ;;
                        qtrim-no-convert) "$QT_QTRIMCTL" --json shrink --no-convert --domain "$dom" >"$logs/offline-r$round-$tool.json" 2>"$logs/offline-r$round-$tool.err" || rc=$? ;;
                        virt-sparsify)
                                for img in "$d1" "$d2"; do
                                        timeout "$vs_timeout" virt-sparsify --in-place --format qcow2 -- "$img" \
                                                >>"$logs/offline-r$round-$tool.log" 2>&1 || rc=$?
                                done
                                ((rc == 0)) || kill_appliances
                                ;;
                        esac
                        sync -- "$d1" "$d2"
                        s=$(qt_since "$t0")
                        after=$(sum_alloc "$d1" "$d2")
                        record offline "$round" "$tool" "$rc" "$s" "$before" "$after" - - -
                        qt_info "$tool: ${s}s (exit $rc): $(qt_human "$before") -> $(qt_human "$after")"
                        if ((round == 1)); then
                                for img in "$d1" "$d2"; do
                                        check offline "$tool" "kept files, ${img##*/}" verify_files "$img"
                                        check offline "$tool" "qemu-img check, ${img##*/}" assert_qemu_img_check "$img"
                                done
                        fi
                done
        done
}

for part in $parts; do
        case $part in
        online | shutdown | start | offline) "part_$part" ;;
        *) qt_fail "unknown part $part (online shutdown start offline)" ;;
        esac
done
load_end=$(uptime)

# ---- report ---------------------------------------------------------------------------------

# "median min max n" of FIGURE over the successful runs of PART's CASE ("nan nan nan 0": none).
# FIGURE is a column of results.tsv (seconds) or the difference of two (before-after).
stats() { # PART CASE FIGURE
        awk -F'\t' -v p="$1" -v k="$2" -v fig="$3" '
                NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; n = split(fig, f, "-"); next }
                $1 == p && $3 == k && $4 == 0 { print (n == 2) ? $col[f[1]] - $col[f[2]] : $col[f[1]] }' "$results" |
                sort -g | awk '{ v[NR] = $1 } END {
                        if (NR == 0) { print "nan nan nan 0"; exit }
                        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                        print m, v[1], v[NR], NR }'
}
med() { stats "$@" | cut -d' ' -f1; }
runs() { echo "$(stats "$1" "$2" seconds | cut -d' ' -f4)/$(awk -F'\t' -v p="$1" -v k="$2" 'NR > 1 && $1 == p && $3 == k { n++ } END { print n + 0 }' "$results")"; }
# Seconds as "median [min-max]".
secs() { # PART CASE [FIGURE]
        stats "$1" "$2" "${3:-seconds}" | awk '{ if ($4 == 0) print "-"; else printf "%.2f [%.2f-%.2f]", $1, $2, $3 }'
}
hum() { if [[ $1 == nan || $1 == - ]]; then echo -; else qt_human "${1%.*}"; fi; }
# Bytes as "median [min-max]".
bytes() { # PART CASE FIGURE
        local m lo hi n
        read -r m lo hi n < <(stats "$1" "$2" "$3")
        if ((n == 0)); then echo -; else echo "$(hum "$m") [$(hum "$lo")-$(hum "$hi")]"; fi
}
# The median of FIGURE over PART's CASE A minus that over CASE B, signed.
diff_med() { # PART A B FIGURE
        awk -v a="$(med "$1" "$2" "$4")" -v b="$(med "$1" "$3" "$4")" 'BEGIN { if (a == "nan" || b == "nan") print "-"; else printf "%+.2f", a - b }'; }
# A column of the one online run CASE, whatever its status.
field() { # CASE COLUMN
        awk -F'\t' -v k="$1" -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
                $1 == "online" && $3 == k { print $col[name] }' "$results"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.2f", a / b }'; }

echo
echo "libvirt-bench: $rounds round(s) per case, alternating which goes first; medians [min-max] over successful runs"
echo "build: $QT_BUILD_DIR ($build_options); TCG guests; $(nproc) cores"
echo "load at start: ${load_start#*load average: }; at end: ${load_end#*load average: }"
if [[ $parts == *online* ]]; then
        echo
        echo "== online: running guest, vda qcow2 discard='unmap', ext4; ${online_mib} MiB written and deleted in the guest before each run"
        printf '%-36s %-22s %-30s %-30s %-30s %s\n' "" "seconds" "host freed (stat)" "qtrim says host freed" "guest says trimmed" runs
        printf '%-36s %-22s %-30s %-30s %-30s %s\n' "qtrimctl shrink --domain --online" "$(secs online qtrim)" \
                "$(bytes online qtrim before-after)" "$(bytes online qtrim reported)" "$(bytes online qtrim guest)" "$(runs online qtrim)"
        printf '%-36s %-22s %-30s %-30s %-30s %s\n' "virsh domfstrim" "$(secs online virsh)" \
                "$(bytes online virsh before-after)" "(says nothing)" "(says nothing)" "$(runs online virsh)"
        echo "(the guest's figure is more than was deleted: ext4 trims again all the free space of a block group it freed blocks in)"
        echo "time qtrim / domfstrim: $(ratio "$(med online qtrim seconds)" "$(med online virsh seconds)");" \
                "host bytes freed qtrim / domfstrim: $(ratio "$(med online qtrim before-after)" "$(med online virsh before-after)")"
        echo "vdb raw discard='ignore', ${online_mib} MiB written and deleted before each (1 run each):"
        printf '  virsh domfstrim: exit %s, %ss, host freed %s, output: "%s"\n' "$(field virsh-ignore status)" "$(field virsh-ignore seconds)" \
                "$(hum "$(med online virsh-ignore before-after)")" "$(cat "$logs/online-r1-virsh-ignore.out" "$logs/online-r1-virsh-ignore.err" | tr '\n' ' ' | sed 's/ *$//')"
        printf '  qtrimctl --online: exit %s, %ss, host freed %s; qtrim says the guest trimmed %s on /mnt/ignore, and vdb %s\n' \
                "$(field qtrim-ignore status)" "$(field qtrim-ignore seconds)" "$(hum "$(med online qtrim-ignore before-after)")" \
                "$(hum "$(field qtrim-ignore guest)")" "$(cat "$logs/online-ignore-says.txt")"
fi
if [[ $parts == *shutdown* ]]; then
        echo
        echo "== shutdown: virsh destroy of a no-OS domain, 1 GiB qcow2 GPT ext4+xfs disk; until its JobRemoved (trim + convert)"
        printf '%-44s %-22s %-22s %-24s %-30s %s\n' "" "destroy -> shrunk (s)" "of it virsh destroy" "then until shrunk" "allocated after" runs
        for tool in hook hand; do
                printf '%-44s %-22s %-22s %-24s %-30s %s\n' \
                        "$([[ $tool == hook ]] && echo "ShrinkOnShutdown= (the hook queues it)" || echo "by hand (destroy, then qtrimctl shrink IMG)")" \
                        "$(secs shutdown $tool)" "$(secs shutdown $tool aux)" "$(secs shutdown $tool seconds-aux)" \
                        "$(bytes shutdown $tool after)" "$(runs shutdown $tool)"
        done
        echo "before: $(bytes shutdown hook before); hook / by hand: $(ratio "$(med shutdown hook seconds)" "$(med shutdown hand seconds)");" \
                "the hook's cost (difference of the medians): $(diff_med shutdown hook hand seconds) s;" \
                "in virsh destroy $(diff_med shutdown hook hand aux) s, after it $(diff_med shutdown hook hand seconds-aux) s"
fi
if [[ $parts == *start* ]]; then
        echo
        echo "== start: virsh start of a no-OS domain (256 MiB qcow2 disk); qtrimd asked by the hook either way"
        printf '%-52s %-22s %-26s %s\n' "" "virsh start (s)" "start -> JobRemoved (s)" runs
        printf '%-52s %-22s %-26s %s\n' "no qtrim job" "$(secs start no-job)" - "$(runs start no-job)"
        printf '%-52s %-22s %-26s %s\n' "a job paused in its trim (canceled, waited for)" "$(secs start job)" "$(secs start job aux)" "$(runs start job)"
        echo "with a job / without: $(ratio "$(med start job seconds)" "$(med start no-job seconds)")"
fi
if [[ $parts == *offline* ]]; then
        echo
        echo "== offline: shut-off domain, 2 disks (1 GiB qcow2 GPT ext4+xfs + 256 MiB qcow2 ext4), fresh copies each run"
        printf '%-40s %-22s %-30s %s\n' "" "seconds" "allocated after (2 disks)" runs
        printf '%-40s %-22s %-30s\n' "before" "" "$(bytes offline qtrim before)"
        for c in qtrim qtrim-no-convert virt-sparsify; do
                printf '%-40s %-22s %-30s %s\n' \
                        "$(case $c in qtrim) echo "qtrimctl shrink --domain" ;; qtrim-no-convert) echo "qtrimctl shrink --domain --no-convert" ;; *) echo "virt-sparsify --in-place (each disk)" ;; esac)" \
                        "$(secs offline "$c")" "$(bytes offline "$c" after)" "$(runs offline "$c")"
        done
        echo "time virt-sparsify / qtrim: $(ratio "$(med offline virt-sparsify seconds)" "$(med offline qtrim seconds)") (converted)," \
                "$(ratio "$(med offline virt-sparsify seconds)" "$(med offline qtrim-no-convert seconds)") (--no-convert, both in place);" \
                "allocated qtrim / virt-sparsify: $(ratio "$(med offline qtrim after)" "$(med offline virt-sparsify after)")," \
                "$(ratio "$(med offline qtrim-no-convert after)" "$(med offline virt-sparsify after)") (in place)"
fi
echo
if [[ $(tail -n +2 "$checks" | wc -l) -gt 0 ]]; then
        echo "round-1 checks: $(tail -n +2 "$checks" | awk -F'\t' '{ n[$4]++ } END { for (r in n) printf "%s %d ", r, n[r] }')($keep_dir/checks.tsv)"
fi
# The work dir goes at exit: the TSVs and logs (a few KiB) are copied out of it.
mkdir -p -- "$keep_dir"
cp -- "$results" "$checks" "$keep_dir/"
cp -r -- "$logs" "$keep_dir/"
echo "every run: $keep_dir/results.tsv (logs and qtrim's JSON: $keep_dir/logs)"
echo "whole benchmark: $(qt_since "$bench_t0") s"

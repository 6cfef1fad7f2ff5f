#!/bin/bash
# Online trims of a running domain through its guest agent (qtrimctl shrink --domain --online),
# against a real libvirtd (tests/lib/libvirt.sh) and a real TCG guest running qemu-ga
# (tests/lib/agent-guest.sh) with three ext4 disks holding deleted data, mounted in the guest:
# - vda, qcow2 with discard='unmap': the guest trims and the image's host allocation falls by
#   what the guest trimmed; qtrimctl's figures (before, after, freed) are stat's;
# - vdb, raw with discard='ignore', and vdc, qcow2 with discard unset (QEMU ignores discards
#   then): the guest trims, the host gets nothing back, and the report says why (discard) and
#   how to fix it (virt-xml ... --disk discard=unmap);
# - the text report, after more data was written and deleted in the running guest: the disks,
#   what was freed, the advice;
# - the sweep (qtrimctl shrink --all) over the disks' directory with SweepOnline= naming the
#   domain: the guest trims online, the disks are counted as trimmed online, none skipped;
# - a second online trim of the domain while one runs: refused; the first canceled at its pause
#   point, then one whose worker is killed: canceled and failed, at once;
# - after the guest shut down, qemu-img check and the kept files' checksums;
# - a shut-off domain: refused, it is not running; a running domain without an agent channel:
#   refused, the guest agent named.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/agent-guest.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/agent-guest.sh"

QT_T0=$(qt_now)
QT_SCENARIO=libvirt-online
qt_need qemu-img jq busctl dbus-daemon
qt_init_workdir libvirt-online
qt_step "libvirt-online: work dir $QT_WORK"
qt_bus_start
# An online trim asks the guest agent, through libvirt's read-write socket.
QT_DAEMON_CONFIG=$QT_WORK/qtrimd.conf
# The sweep covers the guest's disks, and trims the guest online (SweepOnline=).
printf '[Daemon]\nIdleExitSec=0\nLibvirtURI=qemu+unix:///system?socket=%s\nImageDirectories=%s\nSweepOnline=qtrim-test-a*\n' \
        "$QT_WORK/libvirt/sock/libvirt-sock" "$QT_IMAGES" >"$QT_DAEMON_CONFIG"
qt_daemon_start
qt_libvirt_start

# Two figures of the same allocation, qtrimctl's and stat's, agree within a few clusters: the
# guest's filesystems and qcow2's metadata may move that much between the two looks.
near() { # WHAT GOT WANT
        local d=$(($2 - $3))
        ((d < 0)) && d=$((-d))
        ((d <= 256 * 1024)) || qt_fail "$1: qtrimctl says $2, stat says $3"
}

qt_step "build the guest's disks, boot it"
qt_agent_boot_files
unmap=$QT_IMAGES/unmap.qcow2
ignore=$QT_IMAGES/ignore.raw
unset_=$QT_IMAGES/unset.qcow2
make_whole_qcow2 "$unmap"
make_raw_whole "$ignore"
make_whole_qcow2 "$unset_"
for img in "$unmap" "$ignore" "$unset_"; do assert_dirty "$img"; done
dom=qtrim-test-agent
qt_agent_domain_xml "$dom" \
        "$(qt_agent_disk vda "$unmap" qcow2 unmap unmap)" \
        "$(qt_agent_disk vdb "$ignore" raw ignore ignore)" \
        "$(qt_agent_disk vdc "$unset_" qcow2 '' unset)" >"$QT_WORK/$dom.xml"
qt_domain_define "$dom" "$QT_WORK/$dom.xml"
qt_agent_start "$dom"

qt_step "(a) shrink --domain --online --json: vda's allocation falls, vdb's and vdc's do not and the report says why"
unmap0=$(allocated_bytes "$unmap")
ignore0=$(allocated_bytes "$ignore")
unset0=$(allocated_bytes "$unset_")
t=$(qt_now)
qt_qtrimctl_status 0 shrink --domain "$dom" --online --json
online_seconds=$(qt_since "$t")
unmap1=$(allocated_bytes "$unmap")
ignore1=$(allocated_bytes "$ignore")
unset1=$(allocated_bytes "$unset_")
qt_info "vda: $(qt_human "$unmap0") -> $(qt_human "$unmap1"), vdb: $(qt_human "$ignore0") -> $(qt_human "$ignore1"), vdc: $(qt_human "$unset0") -> $(qt_human "$unset1") (stat)"
jq -e 'length == 1 and .[0].result == "done"' "$QT_WORK/out" >/dev/null ||
        qt_fail "--json is not one job that is done"
job() { jq -r ".[0] | $1" "$QT_WORK/out"; }
image_fs() { jq -r --arg n "$1" ".[0].filesystems[] | select(.kind == \"image\" and .name == \$n) | $2" "$QT_WORK/out"; }
guest_fs() { jq -r --arg n "$1" ".[0].filesystems[] | select(.kind == \"guest\" and .name == \$n) | $2" "$QT_WORK/out"; }

# Independently of qtrim: the deleted data (96 MiB and the never-written space of a fully
# allocated image) left vda.
unmap_freed=$((unmap0 - unmap1))
((unmap_freed >= 96 * MiB)) || qt_fail "vda gave back only $(qt_human "$unmap_freed") of its 96 MiB deleted"
qt_ok "vda gave back $(qt_human "$unmap_freed")"

near "bytes_before" "$(job .bytes_before)" $((unmap0 + ignore0 + unset0))
near "bytes_after" "$(job .bytes_after)" $((unmap1 + ignore1 + unset1))
[[ $(job .bytes_reclaimed) == $(($(job .bytes_before) - $(job .bytes_after))) ]] ||
        qt_fail "bytes_reclaimed is not bytes_before - bytes_after"
near "vda's size" "$(image_fs vda .size)" "$unmap0"
near "vda's trimmed" "$(image_fs vda .trimmed)" "$unmap_freed"
[[ $(image_fs vda .state) == trimmed ]] || qt_fail "vda: state '$(image_fs vda .state)', not trimmed"
qt_ok "the job's figures are stat's: $(qt_human "$(job .bytes_before)") -> $(qt_human "$(job .bytes_after)")"

# A disk that gave nothing back, by stat and by qtrimctl, which says why and how to fix it.
nothing_back() { # TARGET BEFORE AFTER
        local message advice="virt-xml $dom --edit target=$1 --disk discard=unmap"
        (($2 - $3 < MiB)) || qt_fail "$1 gave back $(qt_human $(($2 - $3))) with discards ignored"
        near "$1's size" "$(image_fs "$1" .size)" "$2"
        near "$1's trimmed" "$(image_fs "$1" .trimmed)" 0
        message=$(image_fs "$1" .message)
        [[ $message == "discards do not reach this image: discard is not 'unmap'"* && $message == *"$advice"* ]] ||
                qt_fail "$1's message does not say why and how to fix it: '$message'"
        [[ $(image_fs "$1" .state) == unchanged ]] || qt_fail "$1: state '$(image_fs "$1" .state)', not unchanged"
        qt_ok "$1 gave nothing back: $message"
}
nothing_back vdb "$ignore0" "$ignore1"
nothing_back vdc "$unset0" "$unset1"

# The guest trimmed every filesystem; what it trimmed on vda reached the image.
for m in /mnt/unmap /mnt/ignore /mnt/unset; do
        [[ $(guest_fs "$m" .state) == trimmed ]] || qt_fail "$m: state '$(guest_fs "$m" .state)', not trimmed"
        (($(guest_fs "$m" .trimmed) > 0)) || qt_fail "$m: the guest trimmed nothing"
done
jq -e '.[0] | .bytes_trimmed == ([.filesystems[] | select(.kind == "guest") | .trimmed] | add)' \
        "$QT_WORK/out" >/dev/null || qt_fail "bytes_trimmed is not what the guest trimmed"
guest_unmap=$(guest_fs /mnt/unmap .trimmed)
((unmap_freed >= guest_unmap * 9 / 10)) ||
        qt_fail "vda gave back $(qt_human "$unmap_freed") of the $(qt_human "$guest_unmap") the guest trimmed on it"
qt_ok "the guest trimmed $(qt_human "$guest_unmap") on /mnt/unmap, the host got $(qt_human "$unmap_freed") back"
qt_ok "the guest trimmed $(qt_human "$(guest_fs /mnt/ignore .trimmed)") on /mnt/ignore and $(qt_human "$(guest_fs /mnt/unset .trimmed)") on /mnt/unset, the host got nothing back"
qt_info "online trim took $online_seconds s"

qt_step "(b) the text report, after the running guest wrote and deleted 32 MiB more on vda and vdb"
# shellcheck disable=SC2016 # $m is the guest shell's
qt_agent_exec "$dom" 'for m in /mnt/unmap /mnt/ignore; do head -c 32M /dev/urandom >$m/junk; done; sync; rm /mnt/unmap/junk /mnt/ignore/junk; sync'
unmap0=$(allocated_bytes "$unmap")
qt_qtrimctl_status 0 shrink --domain "$dom" --online
unmap1=$(allocated_bytes "$unmap")
((unmap0 - unmap1 >= 30 * MiB)) || qt_fail "vda gave back only $(qt_human $((unmap0 - unmap1))) of 32 MiB deleted"
grep -Eq '^  vda \(qcow2, .*\): [0-9.]+ MiB freed on the host$' "$QT_WORK/out" ||
        qt_fail "the report does not say what vda gave back"
grep -q "^  vdb (raw, .*: discards do not reach this image: discard is not 'unmap' (virt-xml $dom --edit target=vdb --disk discard=unmap" "$QT_WORK/out" ||
        qt_fail "the report does not say why vdb gave nothing back and how to fix it"
grep -Eq '^  guest /mnt/unmap: [0-9.]+ MiB trimmed$' "$QT_WORK/out" ||
        qt_fail "the report does not say what the guest trimmed on /mnt/unmap"
qt_ok "the report names both disks, what vda gave back ($(qt_human $((unmap0 - unmap1))) by stat) and the fix for vdb"

qt_step "(b2) the sweep trims the running guest online (SweepOnline=) rather than skipping its disks"
# shellcheck disable=SC2016 # $m is the guest shell's
qt_agent_exec "$dom" 'head -c 32M /dev/urandom >/mnt/unmap/junk; sync; rm /mnt/unmap/junk; sync'
unmap0=$(allocated_bytes "$unmap")
qt_qtrimctl_status 0 shrink --all
unmap1=$(allocated_bytes "$unmap")
((unmap0 - unmap1 >= 30 * MiB)) || qt_fail "the sweep got back only $(qt_human $((unmap0 - unmap1))) of 32 MiB deleted"
grep -Eq "^$dom: .* allocated \([0-9.]+ MiB reclaimed\)" "$QT_WORK/out" || qt_fail "the sweep does not report the online trim"
grep -Eq '^sweep: [0-9]+ image\(s\): .*, 3 trimmed online \(1 domain\(s\)\), 0 failed;' "$QT_WORK/out" ||
        qt_fail "the sweep's summary does not count the 3 disks trimmed online"
! grep -q 'in use' "$QT_WORK/out" || qt_fail "the sweep skipped a disk of the domain it trimmed online"
qt_ok "the sweep trimmed $dom online: $(qt_human $((unmap0 - unmap1))) back on vda by stat"

qt_step "(b3) one online trim per domain; a cancel or a killed worker ends it at once"
qt_watch_job_removed
qt_daemon_stop >/dev/null
QTRIM_TEST_PAUSE=online-trim qt_daemon_start >/dev/null
# Queues the online trim and waits until its worker is about to ask the agent.
start_paused_online() {
        local i
        : >"$QT_DAEMON_LOG"
        job=$(qt_qtrimctl shrink --domain "$dom" --online --no-block) || qt_fail "shrink --online --no-block failed: $job"
        for ((i = 0; i < 300; i++)); do
                grep -q "paused at online-trim" "$QT_DAEMON_LOG" && return 0
                sleep 0.1
        done
        qt_fail "the online trim never paused"
}
start_paused_online
qt_qtrimctl_status 1 shrink --domain "$dom" --online
grep -qF "qtrimctl: $dom: the domain already has an online trim" "$QT_WORK/err" || qt_fail "a second online trim was not refused"
qt_qtrimctl cancel "$job"
[[ $(qt_job_removed_result "$job" 10 "$dom") == canceled ]] || qt_fail "the canceled online trim did not end canceled"
qt_ok "a second online trim of $dom refused while one runs; the first canceled"
start_paused_online
worker=$(pgrep -P "$QT_DAEMON_PID" | head -n 1)
[[ -n $worker ]] || qt_fail "no worker under qtrimd"
kill -KILL "$worker"
[[ $(qt_job_removed_result "$job" 10 "$dom") == failed ]] || qt_fail "the online trim whose worker was killed did not fail"
qt_qtrimctl list | grep -q "No jobs." || qt_fail "a job is left after the killed worker"
qt_ok "a killed online-trim worker fails its job, qtrimd goes on"
qt_daemon_stop >/dev/null
qt_daemon_start >/dev/null

qt_step "(c) shut the guest down: its images are sound, the kept files intact"
qt_agent_shutdown "$dom"
for img in "$unmap" "$ignore" "$unset_"; do
        assert_qemu_img_check "$img"
        verify_files "$img"
done

qt_step "(d) no agent channel, or not running: refused"
noagent=qtrim-test-noagent
qemu-img create -q -f qcow2 "$QT_IMAGES/noagent.qcow2" 64M
qt_domain_xml "$noagent" "$(qt_domain_disk vda virtio "$QT_IMAGES/noagent.qcow2" qcow2 unmap)" >"$QT_WORK/$noagent.xml"
qt_domain_define "$noagent" "$QT_WORK/$noagent.xml"
qt_qtrimctl_status 1 shrink --domain "$noagent" --online
grep -q "$noagent: the domain is shut off; an online trim needs it running" "$QT_WORK/err" ||
        qt_fail "a shut-off domain's refusal does not say it must run"
qt_ok "shut off: refused, it must run"
qt_virsh start "$noagent" >/dev/null || qt_fail "virsh start $noagent failed"
qt_qtrimctl_status 1 shrink --domain "$noagent" --online
grep 'guest agent' "$QT_WORK/err" | grep -q 'org.qemu.guest_agent.0' ||
        qt_fail "a domain without an agent channel is not refused for that, with the channel to add"
qt_ok "no agent channel: refused, the guest agent and its channel named"
[[ -z $(qt_qtrimctl list --json | jq '.[]') ]] || qt_fail "a job exists after the refusals"

qt_info "the guest's agent answered $QT_AGENT_BOOT_SECONDS s after virsh start"
qt_scenario_end

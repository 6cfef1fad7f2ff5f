#!/bin/bash
# VM payload (tests/vm/run-guest.sh systemd tests/vm/payload-kernel-host-lvm.sh RESULTS): a guest
# disk whose VG has the name of a VG the host has, shrunk on the kernel attach path, with the
# host's LVM live around it: systemd as PID 1, udevd with lvm2's rules (69-lvm.rules: pvscan
# --cache and event autoactivation of every complete VG that appears on an added block device).
#
#  1. make_fedora_like builds the guest disk (its VG "fedora" in the builder's private lvm
#     sandbox), udevd's event queue stopped meanwhile: a loop device holding a PV is the
#     builder's exposure, not qtrim's (tests/lib/layouts.sh); nothing of it may reach dm or /dev.
#  2. The "host" VG: a real VG named "fedora" (the name make_fedora_like gives the guest's VG) on a
#     loop device over a file on the guest's tmpfs, its LV fedora/root active (device-mapper),
#     ext4 mounted, a file on it. Recorded: vgs, lvs -a, pvs (every PV) with UUIDs, dmsetup ls/table, the LV's
#     sha256 and the file's, /etc/lvm/{archive,backup} and /run/lvm (every file's sha256, every
#     name).
#  3. qtrimd --attach=kernel shrinks it; the worker pauses at the start of its detach phase (after
#     discover and trim: the guest's partitions /dev/nbdNpM existed the whole time). There, the
#     host state as recorded (dmsetup ls, /etc/lvm, /run/lvm, the host VG's lvs/vgs, its LV and
#     mount), no pvscan or lvm-activate-* in the journal since the job began (udev's
#     autoactivation), and the host's lvm (its own configuration on a copy of /etc/lvm, hints off
#     so the probe writes nothing to /run/lvm) must not list the guest's PV or a second VG
#     "fedora", nor write to (the copy of) /etc/lvm.
#  4. After the job (done; every volume as layouts.sh's fedora expects, fedora/root trimmed from
#     a partition node qtrim made over its extents; files intact, preserved ranges
#     byte-identical, zeroed ones zero, the compact size) and after udev settled the events it
#     held back while qtrim had the nbd device locked: the same checks once more, and pvs,
#     vgs, lvs -a, dmsetup ls show nothing of the guest's VG.
# Without -Dtest_hooks=true the pause in 3 is not possible: the job runs through and only 1, 2
# and 4 are checked. Needs root, the nbd and dm-mod modules, lvm2, dosfstools, mtools.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/layouts.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/layouts.sh"
# shellcheck source=tests/lib/hostile.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/hostile.sh"

failures=()
failed() {
        failures+=("$*")
        printf '    FAILED: %s\n' "$*" >&2
}
t_start=$(qt_now)
stamp() { printf '    [%ss] %s\n' "$(qt_since "$t_start")" "$*"; }

modprobe -a nbd dm-mod || qt_fail "modprobe nbd dm-mod failed"
[[ -b /dev/nbd0 && -c /dev/mapper/control ]] || qt_fail "no /dev/nbd0 or /dev/mapper/control"
qt_need lvm dmsetup udevadm mkfs.vfat mcopy
export QT_QTRIMD_EXTRA_ARGS="${QT_QTRIMD_EXTRA_ARGS:+$QT_QTRIMD_EXTRA_ARGS }--attach=kernel"
udev=no
udevadm control --ping -t 5 2>/dev/null && udev=yes
stamp "udevd running: $udev; lvm2's udev rules: $(ls /lib/udev/rules.d/69-lvm.rules 2>/dev/null || echo none)"

# The probes of the host's LVM: its own lvm.conf, hints off (a probe must not write
# /run/lvm/hints: that file is part of the state compared).
# During the job they run on a copy of /etc/lvm (LVM_SYSTEM_DIR=$probe_etc): what a host's lvm
# command would write there (a backup of the other VG "fedora") is a finding of its own, and the
# real /etc/lvm stays what qtrim and udev left.
LVMP=(--config 'devices { hints = "none" }')
probe_etc=
lvmp() { if [[ -n $probe_etc ]]; then LVM_SYSTEM_DIR=$probe_etc "$@"; else "$@"; fi; }
host_vgs() { lvmp vgs "${LVMP[@]}" --noheadings -o vg_name,vg_uuid,pv_count,lv_count,vg_attr,vg_size,vg_free,vg_seqno 2>&1; }
host_lvs() { lvmp lvs -a "${LVMP[@]}" --noheadings -o vg_name,lv_name,lv_uuid,lv_attr,lv_size,devices 2>&1; }
host_pvs() { lvmp pvs "${LVMP[@]}" --noheadings -o pv_name,vg_name,pv_uuid,vg_uuid 2>&1; }
# Every file under /etc/lvm/archive, /etc/lvm/backup and /run/lvm with its sha256, and every name.
lvm_files() {
        local d
        for d in /etc/lvm/archive /etc/lvm/backup /run/lvm; do
                [[ -d $d ]] || {
                        echo "missing $d"
                        continue
                }
                find "$d" -mindepth 1 -printf '%y %p\n' | sort
                find "$d" -type f -exec sha256sum {} + | sort
        done
}

hooks=0
hx_have_test_hooks && hooks=1
qt_scenario_start kernel-host-lvm

# Built first: lvm2's vgcreate refuses a VG name whose /dev/NAME exists, even in the builder's
# sandbox (activation off, its own devices), so the guest's "fedora" cannot be made once the
# host's is active.
qt_step "build the guest disk (VG fedora), udevd's queue stopped meanwhile"
t0=$(qt_now)
[[ $udev == yes ]] && udevadm control --stop-exec-queue
make_fedora_like "$QT_IMAGES/fedora.qcow2"
if [[ $udev == yes ]]; then
        udevadm control --start-exec-queue
        udevadm settle -t 30 || true
fi
qt_expect_files
stamp "built in $(qt_since "$t0")s"
! dmsetup ls 2>/dev/null | grep -qv '^No devices found' && [[ ! -e /dev/fedora ]] ||
        qt_fail "the builder's VG reached device-mapper or /dev: $(dmsetup ls | tr '\n' ';')"
qt_ok "nothing of the builder's VG in device-mapper or /dev"

host=$TMPDIR/host-lvm
mkdir -p -- "$host"
mnt=/mnt/host-fedora-root

qt_step "the host's VG \"fedora\": a PV on a loop device, fedora/root active, ext4 mounted, a file"
truncate -s 96M -- "$host/pv.img"
host_loop=$(losetup --show -f -- "$host/pv.img") || qt_fail "losetup failed"
pvcreate -q -y "$host_loop" >/dev/null || qt_fail "pvcreate $host_loop failed"
vgcreate -q -s 4M fedora "$host_loop" >/dev/null || qt_fail "vgcreate fedora failed"
lvcreate -q -y -n root -L 64M fedora >/dev/null || qt_fail "lvcreate fedora/root failed"
# No lazy init: the LV's bytes stay the same while it is mounted and idle.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -L host-root /dev/fedora/root ||
        qt_fail "mkfs.ext4 on fedora/root failed"
mkdir -p -- "$mnt"
mount /dev/fedora/root "$mnt" || qt_fail "mount fedora/root failed"
head -c 3M /dev/urandom >"$mnt/host-file"
sync
file_sum=$(sha256sum <"$mnt/host-file")
# udev's own processing of the new PV and LV (69-lvm.rules: pvscan, lvm-activate-fedora) ends
# before the state is recorded.
udevadm settle -t 30 || true
for ((i = 0; i < 100; i++)); do
        [[ -z $(systemctl list-units --no-legend --state=activating,active 'lvm-activate-*' 2>/dev/null) ]] && break
        sleep 0.1
done
sync
record() { # PREFIX: the host state into $host/PREFIX.*
        host_vgs >"$host/$1.vgs"
        host_lvs >"$host/$1.lvs"
        host_pvs >"$host/$1.pvs"
        dmsetup ls >"$host/$1.dmls" 2>&1
        dmsetup table >"$host/$1.dmtable" 2>&1
        lvm_files >"$host/$1.files"
}
record before
lv_sum=$(sha256sum </dev/fedora/root)
sed 's/^/    | /' "$host/before.vgs" "$host/before.lvs" "$host/before.pvs" "$host/before.dmls"
qt_info "/etc/lvm/{archive,backup}, /run/lvm: $(grep -c '^f ' "$host/before.files") file(s)"
stamp "host VG ready"

# compare WHEN: the host state now (lvm's reports, dm, the files again, the mount, the LV's bytes)
# against the recorded one.
compare() {
        local when=$1 what
        record now
        for what in vgs lvs pvs dmls dmtable files; do
                if ! cmp -s "$host/before.$what" "$host/now.$what"; then
                        failed "$when: $what changed: $(diff "$host/before.$what" "$host/now.$what" | grep '^[<>]' | tr '\n' ';')"
                else
                        qt_ok "$when: host $what as before"
                fi
        done
        grep -q 'nbd' "$host/now.pvs" && failed "$when: the host's lvm lists a PV on an nbd device: $(grep nbd "$host/now.pvs" | tr '\n' ';')"
        grep -qi 'duplicate\|used by VGs' "$host/now.vgs" "$host/now.lvs" "$host/now.pvs" &&
                failed "$when: the host's lvm warns of a duplicate VG: $(grep -hi 'duplicate\|used by VGs' "$host"/now.{vgs,lvs,pvs} | sort -u | tr '\n' ';')"
        if ! mountpoint -q "$mnt" || [[ $(findmnt -n -o SOURCE "$mnt") != /dev/mapper/fedora-root ]]; then
                failed "$when: fedora/root is no longer mounted at $mnt ($(findmnt -n -o SOURCE "$mnt" || true))"
        elif [[ $(sha256sum <"$mnt/host-file") != "$file_sum" ]]; then
                failed "$when: the file on the host's fedora/root changed"
        else
                qt_ok "$when: fedora/root still mounted, its file intact"
        fi
        if [[ $(sha256sum </dev/fedora/root) != "$lv_sum" ]]; then
                failed "$when: the bytes of the host's LV fedora/root changed"
        else
                qt_ok "$when: the host's LV fedora/root byte-identical"
        fi
}
# Journal lines since the job began of pvscan, vgchange or lvm-activate-* runs (udev's
# 69-lvm.rules), and any that names an nbd partition.
journal_lvm_events() {
        journalctl --no-pager -q --after-cursor="$cursor" -o short-monotonic 2>/dev/null |
                grep -E 'pvscan|vgchange|lvm-activate|nbd[0-9]+p' || true
}
check_events() { # WHEN
        local ev
        ev=$(journal_lvm_events)
        if grep -qE 'pvscan|vgchange|lvm-activate' <<<"$ev"; then
                failed "$1: LVM ran on udev's events since the job began: $(tr '\n' ';' <<<"$ev")"
        else
                qt_ok "$1: no pvscan, vgchange or lvm-activate-* in the journal since the job began"
        fi
        [[ -n $ev ]] && printf '    | %s\n' "${ev//$'\n'/$'\n'    | }"
        return 0
}
# The files first, before any lvm probe of this round.
check_files() { # WHEN
        lvm_files >"$host/files.$1"
        if cmp -s "$host/before.files" "$host/files.$1"; then
                qt_ok "$1: /etc/lvm/{archive,backup} and /run/lvm unchanged"
        else
                failed "$1: /etc/lvm or /run/lvm changed: $(diff "$host/before.files" "$host/files.$1" | grep '^[<>]' | tr '\n' ';')"
        fi
}
# What udev recorded of the nbd device's partitions: whether it probed them (ID_FS_TYPE).
udev_view() { # WHEN
        local p
        for p in /sys/block/nbd0/nbd0p*; do
                [[ -e $p ]] || continue
                printf '    udev db %s: %s\n' "${p##*/}" \
                        "$(udevadm info -q property -n "/dev/${p##*/}" 2>/dev/null | grep -E '^(ID_FS_TYPE|SYSTEMD_READY|LVM_VG_NAME_COMPLETE)=' | tr '\n' ' ')"
        done
}

# The host's loop device belongs to the baseline of leftovers.
qt_record_baseline

cursor=$(journalctl --show-cursor -n 0 -q 2>/dev/null | sed -n 's/^-- cursor: //p')
[[ -n $cursor ]] || failed "no journal cursor: udev's LVM events cannot be checked"
img=$QT_IMAGES/fedora.qcow2
json=$QT_WORK/fedora.json
t0=$(qt_now)
if ((hooks)); then
        qt_step "shrink on the kernel path, paused at the start of the detach phase"
        hx_daemon_pausing_at detach
        hx_start_paused detach "$json" "$img"
        stamp "paused after $(qt_since "$t0")s"
        nbd=$(cat /sys/block/nbd*/pid 2>/dev/null | head -n 1)
        [[ -n $nbd ]] || failed "paused: no nbd device connected (kernel path not taken?)"
        qt_info "nbd connected: $(grep -l . /sys/block/nbd*/pid 2>/dev/null | tr '\n' ' ')partitions: $(cd /sys/block/nbd0 && echo nbd0p*)"
        qt_info "nbd0 write_zeroes_max_bytes $(cat /sys/block/nbd0/queue/write_zeroes_max_bytes), discard_max_bytes $(cat /sys/block/nbd0/queue/discard_max_bytes)"
        # udev had the partitions' add events since the attach: give it a moment more.
        sleep 3
        check_files "during the job"
        check_events "during the job"
        udev_view
        rm -rf -- "$host/etc-lvm"
        cp -a /etc/lvm "$host/etc-lvm"
        probe_etc=$host/etc-lvm
        compare "during the job"
        probe_etc=
        if diff -r /etc/lvm "$host/etc-lvm" >"$host/probe-writes" 2>&1; then
                qt_ok "during the job: the host's vgs/lvs/pvs wrote nothing to /etc/lvm"
        else
                failed "during the job: the host's vgs/lvs/pvs wrote to /etc/lvm (a copy here): $(tr '\n' ';' <"$host/probe-writes")"
                diff "$host/etc-lvm/backup/fedora" /etc/lvm/backup/fedora | grep -E '^[<>].*(id = |seqno|contents|creation_host)' | head -n 8 | sed 's/^/    | /' || true
        fi
        hx_resume_and_wait 300
else
        qt_step "shrink on the kernel path (no test hooks in this build: no pause)"
        hx_shrink_json "$json" "$img"
fi
stamp "job ended after $(qt_since "$t0")s"
jq -r '.[0].filesystems[] | "    | \(.name) \(.fstype) \(.state) \(.trimmed) \(.message)"' "$json"
[[ $(hx_json "$json" .result) == "done" ]] || failed "the job ended '$(hx_json "$json" .result)': $(jq -c '.[0]' "$json")"
expect() { # NAME STATE-REGEX [MESSAGE-REGEX]
        local got
        got=$(hx_json_fs "$json" "$1")
        if [[ $got =~ ^$2( |$) && $got =~ ${3:-} ]]; then qt_ok "$1: $got"; else failed "$1 is '${got:-missing}', expected $2 ${3:-}"; fi
}
# fedora/root is xfs in an LV: mounted from a partition node over its extents (BLKPG), whose
# discards go straight to the nbd device.
expect fedora/root trimmed
# The ESP (FAT32) read from /dev/nbdN, never mounted.
expect p1 discarded "free clusters read from its own map"
expect p2 trimmed
expect p3 skipped "an LVM physical volume"
expect fedora/swap discarded "header page"
expect "fedora free1" discarded
expect gap1 discarded
expect gap2 discarded
assert_preserved "$img"
assert_zeroed "$img"
verify_files "$img"
assert_qemu_img_check "$img"
assert_shrunk "$img"

qt_step "after the job, udev's held-back events settled"
udevadm settle -t 30 || qt_info "udevadm settle timed out"
sleep 2
check_files "after the job"
check_events "after the job"
compare "after the job"
grep -q nbd "$host/now.dmtable" && failed "after the job: a dm table maps an nbd device"
dmsetup ls | grep -v '^fedora-root[[:space:]]' | grep -q . && failed "after the job: dm devices other than the host's: $(dmsetup ls | tr '\n' ';')"
sed 's/^/    | /' "$host/now.vgs" "$host/now.lvs" "$host/now.pvs" "$host/now.dmls"

qt_scenario_end
{ umount "$mnt" && vgchange -q -an fedora && losetup -d "$host_loop"; } >/dev/null 2>&1 || true
stamp "total"
if ((${#failures[@]} > 0)); then
        printf '  - %s\n' "${failures[@]}" >&2
        qt_fail "${#failures[@]} check(s) failed"
fi
printf 'PASS kernel-host-lvm (udevd running: %s, test hooks: %s)\n' "$udev" "$hooks"

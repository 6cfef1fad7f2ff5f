#!/bin/bash
# Domains by name, against a real libvirtd (tests/lib/libvirt.sh):
# - a libvirt that accepts and never answers: qtrimd answers other calls at once meanwhile, and
#   the domain call fails after its 30 s;
# - no libvirtd yet: inspect --domain says libvirt cannot be reached;
# - a shut-off domain with a qcow2 and a raw disk holding deleted data and a CD-ROM: shrink
#   --domain shrinks both disks (allocation falls, qemu-img check, kept files' checksums), the
#   CD-ROM file is untouched and the domain's XML is unchanged;
# - a running domain (TCG, no OS: SeaBIOS holds it, QEMU holds its image's lock): shrink
#   --domain is refused by name, the image untouched (paused too, and once shut off with its
#   memory saved); inspect reads the live XML, and says a discard='unmap' set in the definition
#   only takes effect at the next start;
# - inspect --domain's verdicts for virtio-blk, virtio-scsi and SATA disks with and without
#   discard='unmap';
# - the reasons a shrink skips a disk (read-only, shareable, vmdk, no format, block, network,
#   floppy), and a disk whose file is missing refused; the raw disk of the first domain is a volume, found through its pool;
# - a caller who is not root, without polkit; an unknown domain.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/libvirt.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/libvirt.sh"

QT_T0=$(qt_now)
QT_SCENARIO=libvirt
qt_need qemu-img qemu-nbd jq busctl dbus-daemon gdbus python3 runuser
qt_init_workdir libvirt
qt_step "libvirt: work dir $QT_WORK"
qt_bus_start
# The sockets' place is known before libvirtd starts: qtrimd is started once, before it.
QT_DAEMON_CONFIG=$QT_WORK/qtrimd.conf
# The sweep's directory holds the running domain's image and one no domain uses.
printf '[Daemon]\nIdleExitSec=0\nLibvirtURI=qemu+unix:///system?socket=%s\nImageDirectories=%s\n' \
        "$QT_WORK/libvirt/sock/libvirt-sock-ro" "$QT_IMAGES/sweep" >"$QT_DAEMON_CONFIG"
qt_daemon_start

qt_step "a libvirt that never answers: qtrimd's loop goes on, the call fails after 30 s"
# A socket where libvirtd's will be, which accepts connections and never says anything.
mkdir -p -- "$QT_WORK/libvirt/sock"
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
held = []
while True:
    held.append(s.accept()[0])
' "$QT_WORK/libvirt/sock/libvirt-sock-ro" &
mute_pid=$!
qt_defer qt_kill_wait "$mute_pid" 5
for ((i = 0; i < 50; i++)); do
        [[ -S $QT_WORK/libvirt/sock/libvirt-sock-ro ]] && break
        sleep 0.1
done
t=$(qt_now)
qt_qtrimctl inspect --domain qtrim-test-off >"$QT_WORK/mute.out" 2>&1 &
inspect_pid=$!
sleep 1
for _ in 1 2 3; do
        t2=$(qt_now)
        busctl --system call org.qtrim1 /org/qtrim1 org.qtrim1.Manager ListJobs >/dev/null
        answered=$(qt_since "$t2")
        awk -v a="$answered" 'BEGIN { exit !(a < 1) }' || qt_fail "ListJobs took ${answered} s while a domain call waited on libvirt"
        sleep 2
done
qt_ok "ListJobs answered at once (last in ${answered} s) while the domain call waited"
rc=0
wait "$inspect_pid" || rc=$?
took=$(qt_since "$t")
cat "$QT_WORK/mute.out"
if ((rc != 1)) || ! grep -q 'did not answer within 30 s' "$QT_WORK/mute.out"; then
        qt_fail "the call on a mute libvirt did not fail with the timeout (exit $rc)"
fi
qt_ok "the call failed after ${took} s"
qt_undo qt_kill_wait "$mute_pid" 5
rm -f -- "$QT_WORK/libvirt/sock/libvirt-sock-ro"

qt_step "no libvirtd: a clear error"
qt_qtrimctl_status 1 inspect --domain qtrim-test-off
grep -q 'cannot connect to libvirt at qemu+unix:///system' "$QT_WORK/err" ||
        qt_fail "no 'cannot connect to libvirt' in: $(cat "$QT_WORK/err")"
qt_ok "libvirt not running: said so"

qt_step "start libvirtd, build the images"
qt_libvirt_start
qcow2=$QT_IMAGES/off-root.qcow2
raw=$QT_IMAGES/off-data.raw
iso=$QT_IMAGES/install.iso
make_whole_qcow2 "$qcow2"
make_raw_whole "$raw"
head -c 4M /dev/urandom >"$iso"
assert_dirty "$qcow2"
assert_dirty "$raw"
before_qcow2=$(allocated_bytes "$qcow2")
before_raw=$(allocated_bytes "$raw")
iso_print=$(qt_file_fingerprint "$iso")

qt_step "(a) a shut-off domain: two disks shrunk, the CD-ROM left alone, the XML unchanged"
# The raw disk is a volume of a directory pool: its file is found through libvirt.
qt_pool_define qtrim-test-pool "$QT_IMAGES"
qt_domain_xml qtrim-test-off \
        "$(qt_domain_disk vda virtio "$qcow2" qcow2 unmap)" \
        "$(qt_domain_volume_disk sda sata qtrim-test-pool "$(basename -- "$raw")" raw)" \
        "$(qt_domain_disk sdb sata "$iso" raw '' cdrom)" >"$QT_WORK/off.xml"
qt_domain_define qtrim-test-off "$QT_WORK/off.xml"
qt_virsh dumpxml --inactive qtrim-test-off >"$QT_WORK/off-before.xml"
t=$(qt_now)
qt_qtrimctl_status 0 shrink --domain qtrim-test-off --json
qt_info "shrink --domain took $(qt_since "$t") s"
grep -qF "qtrimctl: qtrim-test-off sdb ($iso): skipped: a CD-ROM" "$QT_WORK/err" ||
        qt_fail "the CD-ROM's skip is not reported"
jq -e --arg q "$qcow2" --arg r "$raw" '[.[].image] | sort == ([$q, $r] | sort)' "$QT_WORK/out" >/dev/null ||
        qt_fail "--json does not list the two disks' jobs alone"
qt_check_shrunk "$qcow2" "$before_qcow2" qcow2
qt_check_shrunk "$raw" "$before_raw" raw
[[ $(qt_file_fingerprint "$iso") == "$iso_print" ]] || qt_fail "the CD-ROM image changed"
qt_ok "the CD-ROM image is untouched"
qt_virsh dumpxml --inactive qtrim-test-off >"$QT_WORK/off-after.xml"
diff -u "$QT_WORK/off-before.xml" "$QT_WORK/off-after.xml" || qt_fail "the domain's XML changed"
qt_ok "the domain's XML is unchanged"

qt_step "(b) a running domain: shrink --domain refused by name, the image untouched"
mkdir -p -- "$QT_IMAGES/sweep"
run_img=$QT_IMAGES/sweep/run.qcow2
qemu-img create -q -f qcow2 "$run_img" 64M
qt_domain_xml qtrim-test-run "$(qt_domain_disk vda virtio "$run_img" qcow2 ignore)" >"$QT_WORK/run.xml"
qt_domain_define qtrim-test-run "$QT_WORK/run.xml"
qt_virsh start qtrim-test-run >/dev/null || qt_fail "virsh start failed: $(tail -n 5 /var/log/libvirt/qemu/qtrim-test-run.log)"
[[ $(qt_virsh domstate qtrim-test-run) == running ]] || qt_fail "the domain does not run"
run_print=$(qt_file_fingerprint "$run_img")
qt_qtrimctl_status 1 shrink --domain qtrim-test-run
grep -qF "qtrimctl: qtrim-test-run: the domain is running; shut it down first, or trim it online (--online)" "$QT_WORK/err" ||
        qt_fail "the refusal does not name the running domain"
[[ $(qt_file_fingerprint "$run_img") == "$run_print" ]] || qt_fail "the running domain's image changed"
[[ -z $(qt_qtrimctl list --json | jq '.[]') ]] || qt_fail "a job exists after the refusal"
qt_ok "refused by name, no job, the image untouched"
# Over D-Bus, the refusal is typed.
err=$(gdbus call --system --dest org.qtrim1 --object-path /org/qtrim1 \
        --method org.qtrim1.Manager.ShrinkDomain qtrim-test-run '@a{sv} {}' 2>&1 || true)
[[ $err == *org.qtrim1.Error.DomainRunning* ]] || qt_fail "ShrinkDomain's error is not DomainRunning: $err"
qt_ok "ShrinkDomain answers org.qtrim1.Error.DomainRunning"

qt_step "(b2) which domain uses an image: inspect names it, the sweep skips it by name"
qt_qtrimctl_status 0 inspect "$run_img"
grep -qF "Used by:         domain qtrim-test-run (running)" "$QT_WORK/out" ||
        qt_fail "inspect does not name the running domain that uses the image"
# The shut-off domain's raw disk is a volume: found through its pool.
qt_qtrimctl_status 0 inspect "$raw" --json
jq -e '.used_by == [{"domain": "qtrim-test-off", "state": "shut off"}]' "$QT_WORK/out" >/dev/null ||
        qt_fail "inspect --json does not name the shut-off domain whose volume the image is"
orphan=$QT_IMAGES/sweep/orphan.qcow2
qemu-img create -q -f qcow2 "$orphan" 64M
qt_qtrimctl_status 0 inspect "$orphan"
grep -qF "Used by:         no libvirt domain" "$QT_WORK/out" || qt_fail "inspect does not say no domain uses the image"
qt_ok "inspect names the domain using an image (running, or shut off through a volume), or none"
qt_qtrimctl_status 0 shrink --all
grep -qF "$run_img: skipped: in use by domain qtrim-test-run (running)" "$QT_WORK/out" ||
        qt_fail "the sweep does not name the running domain that holds the image"
[[ $(qt_file_fingerprint "$run_img") == "$run_print" ]] || qt_fail "the sweep changed the running domain's image"
qt_ok "the sweep skips the image in use by the running domain, by its name"
qt_virsh suspend qtrim-test-run >/dev/null
qt_qtrimctl_status 1 shrink --domain qtrim-test-run
grep -qxF "qtrimctl: qtrim-test-run: the domain is paused; shut it down first" "$QT_WORK/err" ||
        qt_fail "a paused domain is not refused as such"
qt_virsh resume qtrim-test-run >/dev/null

# The definition gets discard='unmap'; the running QEMU keeps what it started with.
qt_virsh dumpxml --inactive qtrim-test-run | sed "s/discard='ignore'/discard='unmap'/" >"$QT_WORK/run2.xml"
qt_virsh define "$QT_WORK/run2.xml" >/dev/null
qt_qtrimctl_status 0 inspect --domain qtrim-test-run --json
jq -e '.state == "running" and .active and (.disks[0].discard == "ignore")' "$QT_WORK/out" >/dev/null ||
        qt_fail "inspect of the running domain does not show its live XML"
jq -e '.disks[0].verdict | startswith("they do not until qtrim-test-run restarts")' "$QT_WORK/out" >/dev/null ||
        qt_fail "the verdict does not say the definition's discard waits for a restart"
qt_ok "live XML read; the definition's discard='unmap' waits for a restart"
# Shut off with its memory saved: its filesystems are as the saved guest left them.
qt_virsh managedsave qtrim-test-run >/dev/null || qt_fail "virsh managedsave failed"
[[ $(qt_virsh domstate qtrim-test-run) == "shut off" ]] || qt_fail "the saved domain is not shut off"
qt_qtrimctl_status 1 shrink --domain qtrim-test-run
grep -qF "the domain's memory is saved (virsh managedsave)" "$QT_WORK/err" ||
        qt_fail "a domain with a saved state is not refused"
[[ $(qt_file_fingerprint "$run_img") == "$run_print" ]] || qt_fail "the saved domain's image changed"
qt_ok "a shut-off domain with a saved state is refused, its image untouched"
qt_undo qt_domain_undefine qtrim-test-run

qt_step "(c) inspect --domain: verdicts per bus, with and without discard='unmap'"
d=$QT_IMAGES
qt_domain_xml qtrim-test-buses \
        "$(qt_domain_disk vda virtio "$d/a.qcow2" qcow2 unmap)" \
        "$(qt_domain_disk vdb virtio "$d/b.qcow2" qcow2)" \
        "$(qt_domain_disk sda scsi "$d/c.raw" raw unmap)" \
        "$(qt_domain_disk sdb scsi "$d/d.raw" raw ignore)" \
        "$(qt_domain_disk sdc sata "$d/e.qcow2" qcow2 unmap)" \
        "$(qt_domain_disk sdd sata "$d/f.qcow2" qcow2)" \
        "$(qt_domain_disk sde sata "$d/g.iso" raw '' cdrom)" >"$QT_WORK/buses.xml"
qt_domain_define qtrim-test-buses "$QT_WORK/buses.xml"
qt_qtrimctl_status 0 inspect --domain qtrim-test-buses --json
verdict() { jq -r --arg t "$1" '.disks[] | select(.target == $t) | .verdict' "$QT_WORK/out"; }
expect_verdict() { # TARGET START
        local v
        v=$(verdict "$1")
        [[ $v == "$2"* ]] || qt_fail "$1: verdict '$v', wanted '$2...'"
        qt_ok "$1: $v"
}
unmap_hint="they do not: discard is not 'unmap' (virt-xml qtrim-test-buses --edit target="
expect_verdict vda "discards reach this image if the guest kernel is >= 5.0"
expect_verdict vdb "${unmap_hint}vdb --disk discard=unmap, then restart)"
expect_verdict sda "discards reach this image"
expect_verdict sdb "${unmap_hint}sdb --disk discard=unmap, then restart)"
expect_verdict sdc "discards reach this image"
expect_verdict sdd "${unmap_hint}sdd --disk discard=unmap, then restart)"
jq -e '.state == "shut off" and (.disks[] | select(.target == "sde") | .skip == "a CD-ROM" and .verdict == null)' \
        "$QT_WORK/out" >/dev/null || qt_fail "the CD-ROM is not shown as skipped"
jq -e '[.disks[] | select(.target != "sde") | .skip] | all(. == null)' "$QT_WORK/out" >/dev/null ||
        qt_fail "a disk a shrink takes has a skip reason"
qt_qtrimctl_status 0 inspect --domain qtrim-test-buses
grep -q '^vdb  *virtio  *qcow2  *-  ' "$QT_WORK/out" || qt_fail "the table has no vdb row"

qt_step "(d) what a shrink skips, and why"
qt_domain_xml qtrim-test-skips \
        "$(qt_domain_disk vda virtio "$d/ro.qcow2" qcow2 unmap | sed 's|</disk>|  <readonly/>\n    </disk>|')" \
        "$(qt_domain_disk vdb virtio "$d/shared.raw" raw unmap | sed 's|</disk>|  <shareable/>\n    </disk>|')" \
        "$(qt_domain_disk vdc virtio "$d/old.vmdk" vmdk)" \
        "    <disk type='file' device='disk'><source file='$d/unsaid.img'/><target dev='vdd' bus='virtio'/></disk>" \
        "    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/qtrim-test-none'/><target dev='vde' bus='virtio'/></disk>" \
        "    <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name='export'><host name='localhost' port='10809'/></source><target dev='vdf' bus='virtio'/></disk>" \
        "    <disk type='file' device='floppy'><driver name='qemu' type='raw'/><source file='$d/boot.img'/><target dev='fda' bus='fdc'/></disk>" \
        >"$QT_WORK/skips.xml"
qt_domain_define qtrim-test-skips "$QT_WORK/skips.xml"
qt_qtrimctl_status 0 inspect --domain qtrim-test-skips --json
expect_skip() { # TARGET REASON
        local got
        got=$(jq -r --arg t "$1" '.disks[] | select(.target == $t) | .skip' "$QT_WORK/out")
        [[ $got == "$2" ]] || qt_fail "$1: skipped for '$got', wanted '$2'"
        qt_ok "$1: skipped: $got"
}
expect_skip vda "read-only in the domain"
expect_skip vdb "shared with other domains"
expect_skip vdc "format vmdk: qtrim shrinks raw and qcow2"
# A disk without a driver type is raw to libvirt (it never probes), so to qtrim too.
jq -e '.disks[] | select(.target == "vdd") | .format == "raw" and .skip == null' "$QT_WORK/out" >/dev/null ||
        qt_fail "vdd: a disk libvirt calls raw is not taken as raw"
qt_ok "vdd: no driver type in the definition: raw, as libvirt says"
expect_skip vde "a block device, not an image file"
expect_skip vdf "a network disk: its storage is not a file here"
expect_skip fda "a floppy"
qt_qtrimctl_status 1 shrink --domain qtrim-test-skips
[[ $(grep -c ': skipped: ' "$QT_WORK/out") == 6 ]] || qt_fail "shrink --domain did not say why each disk is skipped"
grep -qF "qtrimctl: qtrim-test-skips vdd ($d/unsaid.img): no such file" "$QT_WORK/err" ||
        qt_fail "vdd's refusal is not said"
qt_ok "shrink --domain: each skipped disk's reason, the missing image refused"

qt_step "a caller who is not root, without polkit: refused"
chmod 755 "$QT_WORK"
rc=0
runuser -u nobody -- env DBUS_SYSTEM_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" \
        "$QT_QTRIMCTL" --verbose shrink --domain qtrim-test-off >"$QT_WORK/out" 2>&1 || rc=$?
if ((rc != 1)) || ! grep -q 'AccessDenied' "$QT_WORK/out"; then
        qt_fail "a non-root caller was not refused (exit $rc): $(cat "$QT_WORK/out")"
fi
qt_ok "refused: $(cat "$QT_WORK/out")"

qt_step "an unknown domain"
qt_qtrimctl_status 1 inspect --domain qtrim-test-none
grep -qF 'qtrimctl: qtrim-test-none: no such domain at ' "$QT_WORK/err" || qt_fail "an unknown domain is not said so"
qt_ok "an unknown domain is said so"

qt_scenario_end

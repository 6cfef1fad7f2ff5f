# shellcheck shell=bash
# A real libvirtd for the domain tests: virtlogd and libvirtd run in the foreground by the test,
# libvirtd's sockets in the test's work dir (QT_LIBVIRT_URI, QT_LIBVIRT_URI_RO). What libvirtd
# keeps is the machine's (run as root it has no other place): domain definitions in
# /etc/libvirt/qemu, pools in /etc/libvirt/storage, run state in /run/libvirt, logs in
# /var/log/libvirt/qemu, QEMU's capabilities in /var/cache/libvirt (kept: a cache, and it saves
# seconds at the next start). So the tests refuse to run beside a libvirtd or virtlogd of the
# machine's, name their domains and pools qtrim-test-*, and at cleanup destroy and undefine them,
# stop both daemons and remove what they created (/run/libvirt, /etc/libvirt/secrets and
# /etc/libvirt/storage when they were not there, the domains' logs). Domains run under TCG (type 'qemu'):
# KVM is not usable on every test machine.
#
#   qt_init_workdir NAME; qt_libvirt_start; qt_domain_define NAME XML; ...

# shellcheck source=tests/lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

QT_LIBVIRT_START_TIMEOUT=${QT_LIBVIRT_START_TIMEOUT:-30}

# Waits until CMD... succeeds, for at most TIMEOUT seconds, failing with WHAT.
_qt_libvirt_wait() { # TIMEOUT WHAT PID CMD...
        local n=$(($1 * 10)) what=$2 pid=$3 i
        shift 3
        for ((i = 0; i < n; i++)); do
                "$@" >/dev/null 2>&1 && return 0
                kill -0 "$pid" 2>/dev/null || qt_fail "$what exited at start: $(tail -n 5 -- "$QT_LIBVIRT_DIR"/*.log)"
                sleep 0.1
        done
        qt_fail "$what did not come up within $1 s"
}

qt_libvirt_start() {
        qt_need libvirtd virtlogd virsh qemu-system-x86_64
        if pgrep -x libvirtd >/dev/null || pgrep -x virtlogd >/dev/null; then
                qt_fail "a libvirtd or virtlogd already runs on this machine; these tests start their own (stop it first)"
        fi
        QT_LIBVIRT_DIR=$QT_WORK/libvirt
        mkdir -p -- "$QT_LIBVIRT_DIR/sock"
        # Registered first, so it runs after both daemons are stopped.
        # What libvirtd creates when it is not there: its run state, the secret driver's and
        # the storage driver's definitions.
        local dir
        for dir in /run/libvirt /etc/libvirt/secrets /etc/libvirt/storage; do
                [[ -e $dir ]] || qt_defer rm -rf --one-file-system "$dir"
        done
        cat >"$QT_LIBVIRT_DIR/libvirtd.conf" <<EOF
unix_sock_dir = "$QT_LIBVIRT_DIR/sock"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr"
EOF
        # The qemu driver reaches virtlogd at its fixed socket, /run/libvirt/virtlogd-sock.
        virtlogd -p "$QT_LIBVIRT_DIR/virtlogd.pid" >"$QT_LIBVIRT_DIR/virtlogd.log" 2>&1 &
        QT_VIRTLOGD_PID=$!
        qt_defer qt_kill_wait "$QT_VIRTLOGD_PID" 10
        _qt_libvirt_wait "$QT_LIBVIRT_START_TIMEOUT" virtlogd "$QT_VIRTLOGD_PID" test -S /run/libvirt/virtlogd-sock

        # No system bus for libvirtd: not the test's private one (it would exit with it, before
        # the cleanup's undefine), nor the machine's (it would register the test's domains with
        # systemd-machined and ask firewalld).
        DBUS_SYSTEM_BUS_ADDRESS=unix:path=$QT_LIBVIRT_DIR/no-bus \
                libvirtd -f "$QT_LIBVIRT_DIR/libvirtd.conf" -p "$QT_LIBVIRT_DIR/libvirtd.pid" \
                >"$QT_LIBVIRT_DIR/libvirtd.log" 2>&1 &
        QT_LIBVIRTD_PID=$!
        qt_defer qt_kill_wait "$QT_LIBVIRTD_PID" 30
        QT_LIBVIRT_URI="qemu+unix:///system?socket=$QT_LIBVIRT_DIR/sock/libvirt-sock"
        QT_LIBVIRT_URI_RO="qemu+unix:///system?socket=$QT_LIBVIRT_DIR/sock/libvirt-sock-ro"
        export QT_LIBVIRT_URI QT_LIBVIRT_URI_RO
        _qt_libvirt_wait "$QT_LIBVIRT_START_TIMEOUT" libvirtd "$QT_LIBVIRTD_PID" virsh -c "$QT_LIBVIRT_URI" version
        qt_info "libvirtd running (pid $QT_LIBVIRTD_PID, $QT_LIBVIRT_URI)"
        # What a test killed before its cleanup left: libvirtd loaded it from /etc/libvirt/qemu.
        local stale
        for stale in $(qt_virsh list --all --name | grep '^qtrim-test-' || true); do
                qt_warn "undefining domain $stale, left by an earlier test"
                qt_domain_undefine "$stale"
        done
        for stale in $(qt_virsh pool-list --all --name | grep '^qtrim-test-' || true); do
                qt_warn "undefining pool $stale, left by an earlier test"
                qt_pool_undefine "$stale"
        done
}

qt_virsh() { virsh -q -c "$QT_LIBVIRT_URI" "$@"; }

# qt_domain_define NAME XMLFILE: defines a domain (NAME must start with qtrim-test-), undefined
# at cleanup (destroyed first if it runs).
qt_domain_define() {
        [[ $1 == qtrim-test-* ]] || qt_fail "qt_domain_define: test domains are named qtrim-test-*, not $1"
        qt_virsh define "$2" >/dev/null || qt_fail "virsh define $2 failed"
        qt_defer qt_domain_undefine "$1"
}

qt_domain_undefine() {
        local pid
        qt_virsh destroy "$1" >/dev/null 2>&1 || true
        # A QEMU its libvirtd lost track of (the daemon died first) would outlive the test.
        if [[ -r /run/libvirt/qemu/$1.pid ]] && read -r pid <"/run/libvirt/qemu/$1.pid"; then
                kill -KILL "$pid" 2>/dev/null || true
        fi
        qt_virsh undefine --managed-save "$1" >/dev/null 2>&1 || true
        rm -f -- "/var/log/libvirt/qemu/$1.log"
}

# qt_pool_define NAME DIR: a started directory pool (NAME starts with qtrim-test-), undefined at
# cleanup. libvirt keeps its definition in /etc/libvirt/storage.
qt_pool_define() {
        [[ $1 == qtrim-test-* ]] || qt_fail "qt_pool_define: test pools are named qtrim-test-*, not $1"
        qt_virsh pool-define-as "$1" dir --target "$2" >/dev/null || qt_fail "virsh pool-define-as $1 failed"
        qt_defer qt_pool_undefine "$1"
        qt_virsh pool-start "$1" >/dev/null || qt_fail "virsh pool-start $1 failed"
}

qt_pool_undefine() {
        qt_virsh pool-destroy "$1" >/dev/null 2>&1 || true
        qt_virsh pool-undefine "$1" >/dev/null 2>&1 || true
}

# A volume disk: qt_domain_volume_disk TARGET BUS POOL VOLUME FORMAT
qt_domain_volume_disk() {
        printf "    <disk type='volume' device='disk'>\n"
        printf "      <driver name='qemu' type='%s'/>\n" "$5"
        printf "      <source pool='%s' volume='%s'/>\n" "$3" "$4"
        printf "      <target dev='%s' bus='%s'/>\n" "$1" "$2"
        printf '    </disk>\n'
}

# A disk element: qt_domain_disk TARGET BUS FILE FORMAT [DISCARD] [DEVICE]
qt_domain_disk() {
        local target=$1 bus=$2 file=$3 format=$4 discard=${5:-} device=${6:-disk}
        printf "    <disk type='file' device='%s'>\n" "$device"
        local discard_attribute=
        [[ -n $discard ]] && discard_attribute=" discard='$discard'"
        printf "      <driver name='qemu' type='%s'%s/>\n" "$format" "$discard_attribute"
        printf "      <source file='%s'/>\n" "$file"
        printf "      <target dev='%s' bus='%s'/>\n" "$target" "$bus"
        [[ $device == cdrom ]] && printf '      <readonly/>\n'
        printf '    </disk>\n'
}

# qt_domain_xml NAME DISK-XML...: a TCG domain with no OS (SeaBIOS finds nothing to boot and
# holds it running), 64 MiB, a virtio-scsi controller for scsi disks. QEMU runs as root and
# libvirt leaves the images' owners and labels alone: they are the test's files.
qt_domain_xml() {
        local name=$1
        shift
        cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
$(printf '%s\n' "$@")
    <controller type='scsi' model='virtio-scsi'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

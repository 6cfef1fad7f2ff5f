#!/bin/bash
# Boots a throw-away guest and runs a payload in it as root:
#
#   tests/vm/run-guest.sh MODE PAYLOAD RESULTS_DIR        MODE: script | systemd
#
# The guest is Debian's linux-image-amd64 kernel under qemu-system-x86_64 -accel tcg (never kvm:
# it hangs on these machines), a busybox initramfs, and this machine's own root shared read-only
# by 9p under a tmpfs overlay: every path of the host, the build and the payload included, is the
# same path in the guest, and anything the guest writes stays in the guest. RESULTS_DIR is shared
# writable at the same path; the payload's output lands in RESULTS_DIR/payload.log, its exit
# status in RESULTS_DIR/rc, the serial console in RESULTS_DIR/console.log (also journal.log in
# systemd mode, dmesg.log in both). Exits with the payload's status; if the guest never wrote
# one, prints the end of the console and fails.
#
#   script   the payload runs from PID 1 (no systemd, no udev) right after switch_root: /proc,
#            /sys, /dev, /run (with /run/lock) mounted; loop and fuse loaded, the rest on demand
#   systemd  systemd is PID 1 and boots qtrim-vm.target: basic.target (dbus, udevd, journald)
#            plus the payload as a oneshot service; the wrapper powers off when the payload ends
#
# In both, /var/tmp is a guest tmpfs and TMPDIR points there: work dirs and images belong there.
# The payload gets BUILD_DIR, SOURCE_DIR, ASAN_OPTIONS, UBSAN_OPTIONS, LSAN_OPTIONS, QTRIMD_ARGS,
# QT_QTRIMD_*, QT_KEEP_WORK, QT_STRICT_LEFTOVERS, QT_VERIFY_FSCK and every variable named in
# QT_VM_ENV (space-separated) from the caller, plus QTRIM_VM_GUEST=1, QTRIM_VM_MODE and
# QTRIM_VM_RESULTS. The kernel and initramfs are built once into $BUILD_DIR/vm/ (rebuilt when
# the kernel, busybox or the initramfs's init change). Knobs: QT_VM_TIMEOUT (seconds, whole
# run, default 1200), QT_VM_MEM (default 4G), QT_VM_CPUS (default 2), QT_VM_CPU (qemu's -cpu).
set -euo pipefail
export LC_ALL=C

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
source_dir=${SOURCE_DIR:-$(cd -- "$here/../.." && pwd)}
build_dir=${BUILD_DIR:-$source_dir/build}
vm_dir=$build_dir/vm
timeout_s=${QT_VM_TIMEOUT:-1200}
mem=${QT_VM_MEM:-4G}
cpus=${QT_VM_CPUS:-2}
# ERMS/FSRM make the guest kernel clear and copy pages with rep stosb/movsb, which TCG runs one
# byte per iteration: without them writing to tmpfs is 2-3x faster.
cpu=${QT_VM_CPU:-max,-erms,-fsrm}

log() { printf 'run-guest: %s\n' "$*"; }
die() {
        printf 'run-guest: %s\n' "$*" >&2
        exit 1
}
# meson counts 77 as skipped.
skip() {
        printf 'SKIP: %s\n' "$*"
        exit 77
}

usage() { die "usage: run-guest.sh script|systemd PAYLOAD RESULTS_DIR, or run-guest.sh boot-files"; }

# The newest installed kernel that has its modules (the nbd driver among them).
pick_kernel() {
        local v best=
        for v in /boot/vmlinuz-*; do
                [[ -e $v ]] || continue
                v=${v#/boot/vmlinuz-}
                [[ -e /lib/modules/$v/kernel/drivers/block/nbd.ko ]] || continue
                best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -n 1)
        done
        printf '%s\n' "$best"
}

# The PVH ELF inside the bzImage: booting it directly skips the real-mode setup and the
# decompressor, ~2 s of TCG time per boot. The payload is the first XZ stream in the file.
extract_vmlinux() { # VMLINUZ OUT
        local off
        off=$(grep -obUaP '\xfd7zXZ\x00' -- "$1" | head -n 1 | cut -d: -f1)
        [[ -n $off ]] || die "$1: no XZ stream found (not an XZ-compressed bzImage?)"
        tail -c +"$((off + 1))" -- "$1" | xz -dc --single-stream >"$2.tmp" 2>/dev/null || true
        [[ $(head -c 4 -- "$2.tmp" | od -An -c | tr -d ' ') == '177ELF' ]] || die "$1: the XZ stream is not an ELF kernel"
        mv -f -- "$2.tmp" "$2"
}

# busybox, /init, and the modules needed to reach the host root (virtio, 9p, overlay), in load
# order. Uncompressed: decompressing under TCG costs more than reading a few MB.
build_initramfs() { # KVER OUT
        local kver=$1 out=$2 tmp m
        tmp=$(mktemp -d "$vm_dir/initramfs.XXXXXX")
        mkdir -p "$tmp/bin" "$tmp/modules"
        cp -- "$(command -v busybox)" "$tmp/bin/busybox"
        cp -- "$here/initramfs-init.sh" "$tmp/init"
        chmod 0755 "$tmp/init" "$tmp/bin/busybox"
        : >"$tmp/modules.order"
        for m in virtio_pci 9pnet_virtio 9p overlay; do
                modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
        done | awk '!seen[$0]++' | while read -r m; do
                [[ -e $tmp/modules/${m##*/} ]] || cp -- "$m" "$tmp/modules/"
                printf '%s\n' "${m##*/}" >>"$tmp/modules.order"
        done
        [[ -s $tmp/modules.order ]] || die "no modules found for kernel $kver"
        (cd -- "$tmp" && find . -mindepth 1 | busybox cpio -o -H newc 2>/dev/null) >"$out.tmp"
        rm -rf -- "$tmp"
        mv -f -- "$out.tmp" "$out"
}

# The kernel and initramfs, cached in $BUILD_DIR/vm; the key names every input.
prepare_boot_files() {
        local kver key
        kver=$(pick_kernel)
        [[ -n $kver ]] || skip "no kernel with modules in /boot (install linux-image-amd64: tools/install-deps.sh)"
        key=$(
                printf 'kernel %s %s\n' "$kver" "$(stat -c '%s %Y' -- "/boot/vmlinuz-$kver")"
                printf 'modules.dep %s\n' "$(stat -c '%s %Y' -- "/lib/modules/$kver/modules.dep")"
                printf 'busybox %s\n' "$(stat -L -c '%s %Y' -- "$(command -v busybox)")"
                sha256sum -- "$here/initramfs-init.sh" "${BASH_SOURCE[0]}" | cut -d' ' -f1
        )
        mkdir -p -- "$vm_dir"
        exec 8>"$vm_dir/.lock"
        flock 8
        if [[ ! -f $vm_dir/key || $(<"$vm_dir/key") != "$key" || ! -f $vm_dir/vmlinux || ! -f $vm_dir/initramfs.cpio ]]; then
                log "building vmlinux and initramfs for $kver in $vm_dir"
                rm -f -- "$vm_dir/key"
                extract_vmlinux "/boot/vmlinuz-$kver" "$vm_dir/vmlinux"
                build_initramfs "$kver" "$vm_dir/initramfs.cpio"
                printf '%s\n' "$key" >"$vm_dir/key"
        fi
        flock -u 8
        exec 8>&-
}

# Shell that sets the payload's environment in the guest.
write_conf() { # MODE PAYLOAD RESULTS
        local v names=(BUILD_DIR SOURCE_DIR ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS QTRIMD_ARGS
                QT_QTRIMD_WRAPPER QT_QTRIMD_EXTRA_ARGS QT_DAEMON_START_TIMEOUT QT_DAEMON_STOP_TIMEOUT
                QT_KEEP_WORK QT_STRICT_LEFTOVERS QT_VERIFY_FSCK)
        # shellcheck disable=SC2206 # a list of names
        names+=(${QT_VM_ENV:-})
        {
                printf 'MODE=%q\nPAYLOAD=%q\n' "$1" "$2"
                printf 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n'
                printf 'export HOME=/root LC_ALL=C TMPDIR=/var/tmp QTRIM_VM_GUEST=1\n'
                printf 'export QTRIM_VM_MODE=%q QTRIM_VM_RESULTS=%q\n' "$1" "$3"
                printf 'export BUILD_DIR=%q SOURCE_DIR=%q\n' "$build_dir" "$source_dir"
                for v in "${names[@]}"; do
                        if [[ -v $v ]]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
                done
        } >"$3/.vm/conf"
}

# What systemd mode puts over the guest's root, staged here (on the host, where a file costs
# nothing; in the guest each exec costs 0.1-0.3 s): qtrim-vm.target = basic.target + the payload
# service, and nothing a test does not need: each masked unit or generator is time under TCG.
stage_systemd_root() { # RESULTS
        local root=$1/.vm/root u g
        local etc=$root/etc/systemd/system
        mkdir -p -- "$etc" "$root/etc/systemd/system-generators" "$root/etc/systemd/journald.conf.d" \
                "$root/etc/tmpfiles.d"
        cat >"$etc/qtrim-vm.target" <<EOF
[Unit]
Description=qtrim VM test
Requires=basic.target qtrim-vm-payload.service
After=basic.target qtrim-vm-payload.service
AllowIsolate=yes
EOF
        cat >"$etc/qtrim-vm-payload.service" <<EOF
[Unit]
Description=qtrim VM test payload
After=basic.target dbus.socket

[Service]
Type=oneshot
ExecStart=/bin/bash $here/guest-init.sh --payload
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
EOF
        for u in systemd-timesyncd.service systemd-journal-flush.service lvm2-monitor.service \
                systemd-random-seed.service e2scrub_reap.service e2scrub_all.timer \
                apt-daily.timer apt-daily-upgrade.timer man-db.timer fstrim.timer logrotate.timer \
                dpkg-db-backup.timer systemd-tmpfiles-clean.timer \
                systemd-update-utmp.service systemd-pstore.service systemd-binfmt.service \
                proc-sys-fs-binfmt_misc.automount sys-kernel-config.mount sys-kernel-debug.mount \
                sys-kernel-tracing.mount sys-fs-fuse-connections.mount dev-hugepages.mount \
                dev-mqueue.mount systemd-hwdb-update.service systemd-machine-id-commit.service \
                systemd-firstboot.service systemd-sysusers.service ldconfig.service \
                systemd-journal-catalog-update.service systemd-update-done.service \
                systemd-boot-system-token.service systemd-repart.service cryptsetup.target \
                remote-fs.target swap.target getty.target systemd-ask-password-console.path \
                systemd-ask-password-wall.path systemd-initctl.socket systemd-journald-audit.socket \
                systemd-pcrphase.service systemd-pcrphase-sysinit.service integritysetup.target \
                veritysetup.target; do
                ln -sf /dev/null "$etc/$u"
        done
        for g in /lib/systemd/system-generators/*; do
                ln -sf /dev/null "$root/etc/systemd/system-generators/${g##*/}"
        done
        printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/qtrim-vm.conf"
        # Debian's tmp.conf empties /tmp at boot, across mounts: the results share may be there.
        ln -sf /dev/null "$root/etc/tmpfiles.d/tmp.conf"
}

main() {
        # For guests booted by others (libvirt's, tests/lib/agent-guest.sh): the kernel and
        # initramfs, built or found current, their paths on standard output.
        if [[ ${1:-} == boot-files && $# == 1 ]]; then
                prepare_boot_files >&2
                printf '%s\n' "$vm_dir/vmlinux" "$vm_dir/initramfs.cpio"
                exit 0
        fi
        (($# == 3)) || usage
        local mode=$1 payload=$2 results=$3 p
        [[ $mode == script || $mode == systemd ]] || usage
        ((EUID == 0)) || skip "the guest shares this machine's root: run as root"
        command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 missing (tools/install-deps.sh)"
        command -v busybox >/dev/null || skip "busybox missing (busybox-static, tools/install-deps.sh)"
        [[ -f $payload ]] || die "no payload $payload"
        payload=$(readlink -f -- "$payload")
        mkdir -p -- "$results"
        results=$(readlink -f -- "$results")
        # Paths go on the kernel command line and into qemu's option syntax.
        for p in "$results" "$here/guest-init.sh" "$payload"; do
                [[ $p =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "unsupported characters in path '$p'"
        done
        [[ $results != / && $results != "$build_dir" && $results != "$source_dir" ]] ||
                die "RESULTS_DIR must be a directory of its own"
        # The guest mounts file systems of its own there.
        [[ ! $results =~ ^/(run|proc|sys|dev)(/|$) ]] || die "RESULTS_DIR cannot be under /run, /proc, /sys or /dev"
        # RESULTS_DIR is emptied: only if it is new or was ours before.
        if [[ -n $(ls -A -- "$results") && ! -e $results/.qtrim-vm-results ]]; then
                die "$results is not empty and not a previous results dir; refusing to empty it"
        fi
        find "$results" -mindepth 1 -delete
        touch -- "$results/.qtrim-vm-results"
        mkdir -p -- "$results/.vm"

        prepare_boot_files
        write_conf "$mode" "$payload" "$results"
        mkdir -p -- "$results/.vm/root"
        [[ $mode == systemd ]] && stage_systemd_root "$results"

        local append="console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init"
        append+=" qtrim.results=$results qtrim.init=$here/guest-init.sh"
        # Nothing the tests need: no security module, no probing of legacy hardware.
        append+=" apparmor=0 modprobe.blacklist=kvm,kvm_intel,kvm_amd,floppy,pcspkr,parport,parport_pc,ata_piix,psmouse"
        append+=" 8250.nr_uarts=1"
        # The TSC is the host's, but the guest calibrates it against the emulated PIT, wrongly when the
        # host is busy (3x off was seen): guest time then runs fast, and every timeout in a test with
        # it. HPET is emulated on the host's clock.
        append+=" clocksource=hpet tsc=unstable"
        # A throw-away guest running only the test: no retpolines or RSB filling to emulate.
        append+=" mitigations=off"
        if [[ $mode == systemd ]]; then
                append+=" systemd.unit=qtrim-vm.target systemd.show_status=error"
        fi
        local qemu=(qemu-system-x86_64 -accel tcg -M q35 -cpu "$cpu" -smp "$cpus" -m "$mem"
                -kernel "$vm_dir/vmlinux" -initrd "$vm_dir/initramfs.cpio" -append "$append"
                -display none -nodefaults -no-user-config -no-reboot
                -serial "file:$results/console.log"
                -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
                -virtfs "local,path=$results,mount_tag=results,security_model=none,multidevs=remap")

        log "$mode mode: $payload (results in $results, limit ${timeout_s}s)"
        local t0 t_end qrc=0 boot='?' ran='?' poller qpid
        t0=$(date +%s.%N)
        # Boot time as the host sees it: qemu start until the guest touches .vm/started.
        (
                while [[ ! -e $results/.vm/started ]]; do sleep 0.05; done
                date +%s.%N >"$results/.vm/started.host"
        ) &
        poller=$!
        # timeout runs in a process group of its own: if this script is killed (meson's timeout),
        # the trap passes the signal on, or qemu would run on until its own limit.
        timeout -k 10 "$timeout_s" "${qemu[@]}" </dev/null >"$results/qemu.log" 2>&1 &
        qpid=$!
        trap 'kill -TERM "$qpid" "$poller" 2>/dev/null; exit 143' TERM INT HUP
        wait "$qpid" || qrc=$?
        trap - TERM INT HUP
        t_end=$(date +%s.%N)
        kill "$poller" 2>/dev/null || true
        wait "$poller" 2>/dev/null || true

        [[ -f $results/.vm/started.host ]] && boot=$(awk -v a="$t0" -v b="$(<"$results/.vm/started.host")" 'BEGIN { printf "%.2f", b - a }')
        [[ -f $results/.vm/payload-seconds ]] && ran=$(<"$results/.vm/payload-seconds")
        local total
        total=$(awk -v a="$t0" -v b="$t_end" 'BEGIN { printf "%.2f", b - a }')
        printf 'mode=%s boot=%s payload=%s total=%s\n' "$mode" "$boot" "$ran" "$total" >"$results/timing"

        if [[ -f $results/payload.log ]]; then
                log "--- payload output ---"
                cat -- "$results/payload.log"
                log "---"
        fi
        log "$mode guest: boot ${boot}s (qemu start -> payload start), payload ${ran}s, total ${total}s"
        if [[ ! -f $results/rc ]]; then
                if ((qrc == 124 || qrc == 137)); then
                        log "qemu killed after ${timeout_s}s"
                elif ((qrc != 0)); then
                        log "qemu exited with $qrc: $(tail -n 5 -- "$results/qemu.log")"
                fi
                log "--- last lines of the serial console ---"
                tail -n 60 -- "$results/console.log" 2>/dev/null || true
                echo
                die "the guest wrote no exit status"
        fi
        ((qrc == 0)) || log "qemu exited with $qrc after the payload finished: $(tail -n 3 -- "$results/qemu.log")"
        local rc
        rc=$(<"$results/rc")
        [[ $rc =~ ^[0-9]+$ ]] || die "bad exit status '$rc' in $results/rc"
        log "payload exit status $rc"
        exit "$rc"
}

main "$@"

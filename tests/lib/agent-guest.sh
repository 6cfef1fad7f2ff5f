# shellcheck shell=bash
# A running libvirt domain with a real guest agent, for the online trim tests. The domain (TCG,
# type 'qemu') boots Debian's kernel directly with the VM suite's busybox initramfs
# (tests/vm/run-guest.sh builds both into $BUILD_DIR/vm), which mounts this machine's root
# read-only over 9p (tag hostroot) under a tmpfs overlay and switch_roots into the suite's
# tests/vm/guest-init.sh, which runs agent-guest-payload.sh in script mode: it mounts each virtio
# disk that has a serial at /mnt/SERIAL and runs this machine's qemu-ga on the channel
# org.qemu.guest_agent.0 until the agent's guest-shutdown. The payload's output, exit status and
# the guest's dmesg land in the domain's results share, $(qt_agent_results NAME).
#
#   qt_init_workdir NAME; qt_libvirt_start; qt_agent_boot_files
#   qt_agent_domain_xml NAME "$(qt_agent_disk vda IMG qcow2 unmap unmap)" ... >XML
#   qt_domain_define NAME XML; qt_agent_start NAME; ...; qt_agent_shutdown NAME

# shellcheck source=tests/lib/libvirt.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/libvirt.sh"

# Seconds from virsh start until the agent answers (8-10 s under TCG here), and from an
# agent-requested shutdown until the domain is off.
QT_AGENT_TIMEOUT=${QT_AGENT_TIMEOUT:-120}
QT_AGENT_SHUTDOWN_TIMEOUT=${QT_AGENT_SHUTDOWN_TIMEOUT:-60}

# Sets QT_AGENT_KERNEL and QT_AGENT_INITRD: the VM suite's, which run-guest.sh builds (or finds
# current) in the build dir.
qt_agent_boot_files() {
        local log=$QT_WORK/boot-files.log files
        qt_need qemu-system-x86_64 busybox qemu-ga
        if ! files=$(BUILD_DIR=$QT_BUILD_DIR SOURCE_DIR=$QT_SOURCE_DIR \
                "$QT_SOURCE_DIR/tests/vm/run-guest.sh" boot-files 2>"$log"); then
                qt_fail "tests/vm/run-guest.sh could not build the guest's kernel and initramfs: $(tail -n 20 -- "$log")"
        fi
        { read -r QT_AGENT_KERNEL && read -r QT_AGENT_INITRD; } <<<"$files"
}

# A virtio-blk disk the guest mounts at /mnt/NAME (its serial): qt_agent_disk TARGET FILE FORMAT
# DISCARD NAME
qt_agent_disk() {
        qt_domain_disk "$1" virtio "$2" "$3" "$4" | sed "s|^    </disk>|      <serial>$5</serial>\n    </disk>|"
}

qt_agent_console() { printf '%s/%s.console\n' "$QT_WORK" "$1"; }
qt_agent_results() { printf '%s/%s.results\n' "$QT_WORK" "$1"; }

# The end of a domain's serial console and of its payload's output, for failure messages.
qt_agent_console_tail() {
        printf -- '--- last lines of %s'"'"'s console ---\n' "$1"
        tail -n 30 -- "$(qt_agent_console "$1")" 2>/dev/null || true
        printf -- '--- and of its payload'"'"'s output ---\n'
        tail -n 10 -- "$(qt_agent_results "$1")/payload.log" 2>/dev/null || true
        printf -- '---\n'
}

# qt_agent_domain_xml NAME DISK-XML...: 512 MiB, one vCPU, the agent's channel, the host root
# (read-only) and $(qt_agent_results NAME) over 9p, the console in $(qt_agent_console NAME).
# QEMU runs as root (the host root is shared) and libvirt leaves the images' owners and labels
# alone.
qt_agent_domain_xml() {
        local name=$1 cmdline
        shift
        # As run-guest.sh boots its guests: no security module, nothing legacy probed, the
        # clock on the emulated HPET (a TSC calibrated on a busy host runs fast), no mitigations.
        cmdline="console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init"
        cmdline+=" qtrim.init=$QT_SOURCE_DIR/tests/vm/guest-init.sh qtrim.results=$(qt_agent_results "$name")"
        cmdline+=" apparmor=0 modprobe.blacklist=kvm,kvm_intel,kvm_amd,floppy,pcspkr,parport,parport_pc,ata_piix,psmouse"
        cmdline+=" 8250.nr_uarts=1 clocksource=hpet tsc=unstable mitigations=off"
        cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$QT_AGENT_KERNEL</kernel>
    <initrd>$QT_AGENT_INITRD</initrd>
    <cmdline>$cmdline</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'><timer name='hpet' present='yes'/></clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
$(printf '%s\n' "$@")
    <filesystem type='mount' accessmode='passthrough' multidevs='remap'>
      <source dir='/'/>
      <target dir='hostroot'/>
      <readonly/>
    </filesystem>
    <filesystem type='mount' accessmode='passthrough' multidevs='remap'>
      <source dir='$(qt_agent_results "$name")'/>
      <target dir='results'/>
    </filesystem>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <serial type='file'><source path='$(qt_agent_console "$name")'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# qt_agent_start NAME: starts the domain and waits until its agent answers a guest-ping. Sets
# QT_AGENT_BOOT_SECONDS (virsh start until the first answer).
qt_agent_start() {
        local name=$1 results t0 deadline
        # What guest-init.sh runs, in the form run-guest.sh gives it (.vm/conf).
        results=$(qt_agent_results "$name")
        rm -rf -- "$results"
        mkdir -p -- "$results/.vm"
        printf 'MODE=script\nPAYLOAD=%q\n' "$QT_LIB_DIR/agent-guest-payload.sh" >"$results/.vm/conf"
        t0=$(qt_now)
        qt_virsh start "$name" >/dev/null ||
                qt_fail "virsh start $name failed: $(tail -n 5 -- "/var/log/libvirt/qemu/$name.log")"
        deadline=$((SECONDS + QT_AGENT_TIMEOUT))
        # Until qemu-ga opens its port, libvirt says at once that the agent is not connected.
        until qt_virsh qemu-agent-command --timeout 5 "$name" '{"execute":"guest-ping"}' >/dev/null 2>&1; do
                [[ $(qt_virsh domstate "$name") == running ]] ||
                        qt_fail "$name stopped before its guest agent answered"$'\n'"$(qt_agent_console_tail "$name")"
                ((SECONDS < deadline)) ||
                        qt_fail "$name's guest agent did not answer within $QT_AGENT_TIMEOUT s"$'\n'"$(qt_agent_console_tail "$name")"
                sleep 0.5
        done
        QT_AGENT_BOOT_SECONDS=$(qt_since "$t0")
        qt_info "$name: guest agent answers, $QT_AGENT_BOOT_SECONDS s after virsh start"
}

# qt_agent_shutdown NAME: the agent's guest-shutdown; the guest unmounts its disks and powers off.
qt_agent_shutdown() {
        local name=$1 deadline=$((SECONDS + QT_AGENT_SHUTDOWN_TIMEOUT))
        qt_virsh shutdown --mode agent "$name" >/dev/null || qt_fail "virsh shutdown --mode agent $name failed"
        until [[ $(qt_virsh domstate "$name") == "shut off" ]]; do
                ((SECONDS < deadline)) ||
                        qt_fail "$name did not shut down within $QT_AGENT_SHUTDOWN_TIMEOUT s"$'\n'"$(qt_agent_console_tail "$name")"
                sleep 0.2
        done
        if [[ $(cat -- "$(qt_agent_results "$name")/rc" 2>/dev/null) != 0 ]] ||
                ! grep -qx 'disks unmounted' -- "$(qt_agent_results "$name")/payload.log"; then
                qt_fail "$name powered off without unmounting its disks"$'\n'"$(qt_agent_console_tail "$name")"
        fi
        qt_info "$name shut down, its disks unmounted"
}

# qt_agent_exec NAME SCRIPT: runs SCRIPT with /bin/sh in the guest through its agent
# (guest-exec) and waits for it, at most 60 s; fails with its output unless it exits 0.
qt_agent_exec() {
        local name=$1 request pid status deadline=$((SECONDS + 60))
        request=$(jq -cn --arg s "$2" \
                '{execute: "guest-exec", arguments: {path: "/bin/sh", arg: ["-c", $s], "capture-output": true}}')
        pid=$(qt_virsh qemu-agent-command "$name" "$request" | jq -er '.return.pid') ||
                qt_fail "guest-exec in $name failed"
        request="{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}"
        until status=$(qt_virsh qemu-agent-command "$name" "$request") &&
                [[ $(jq -r '.return.exited' <<<"$status") == true ]]; do
                ((SECONDS < deadline)) || qt_fail "in $name, '$2' did not end within 60 s"
                sleep 0.2
        done
        jq -e '.return.exitcode == 0' <<<"$status" >/dev/null ||
                qt_fail "in $name, '$2' failed: $(jq -r '[.return["out-data"], .return["err-data"]] | map(. // "" | @base64d) | add' <<<"$status")"
}

#!/bin/bash
# PID 1 of the guest agent's test domain (tests/lib/agent-guest.sh), after the initramfs of
# tests/vm/run-guest.sh has switch_rooted into an overlay over this machine's root: mounts each
# virtio disk that has a serial at /mnt/SERIAL (ext4) and runs this machine's qemu-ga on the
# virtio-serial port named org.qemu.guest_agent.0. No udev: the modules are loaded here and
# devtmpfs makes the nodes. A disk that cannot be mounted, or no agent port, powers the guest
# off: the host sees it stop, with the reason on the console.
#
# The agent's guest-shutdown (virsh shutdown --mode agent) runs /sbin/shutdown, which in this
# guest signals PID 1: qemu-ga stops, the disks are unmounted cleanly, the guest powers off.
# Not set -e: PID 1 must never exit, a failure ends in a power-off.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

say() {
        local up='?' _
        { read -r up _ </proc/uptime; } 2>/dev/null
        printf 'agent-guest: [%s] %s\n' "$up" "$*" >/dev/console
}

power_off() {
        sync
        busybox poweroff -f
        sleep 1000
}

agent_pid=

# On SIGUSR2 from the /sbin/shutdown below.
shut_down() {
        local m
        say "shutdown requested"
        [[ -n $agent_pid ]] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid"
        for m in /mnt/*; do
                mountpoint -q "$m" && { umount "$m" || say "cannot unmount $m"; }
        done
        say "disks unmounted, powering off"
        power_off
}

mountpoint -q /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock
echo qtrim-agent-guest >/proc/sys/kernel/hostname
modprobe -a virtio_blk virtio_console ext4 || say "modprobe virtio_blk virtio_console ext4 failed"

# noinit_itable: ext4's lazy inode-table zeroing would write to the disks in the background.
for dev in /sys/block/vd*; do
        [[ -r $dev/serial ]] || continue
        serial=$(<"$dev/serial")
        [[ -n $serial ]] || continue
        mkdir -p "/mnt/$serial"
        if ! mount -t ext4 -o rw,noinit_itable "/dev/${dev##*/}" "/mnt/$serial"; then
                say "cannot mount ${dev##*/} at /mnt/$serial"
                power_off
        fi
        say "${dev##*/} mounted at /mnt/$serial"
done

port=
for p in /sys/class/virtio-ports/*; do
        [[ -r $p/name && $(<"$p/name") == org.qemu.guest_agent.0 ]] && port=/dev/${p##*/}
done
if [[ -z $port ]]; then
        say "no virtio-serial port named org.qemu.guest_agent.0"
        power_off
fi

# Over the overlay only: the host's /sbin/shutdown is untouched.
rm -f /sbin/shutdown
printf '#!/bin/sh\nkill -USR2 1\n' >/sbin/shutdown
chmod 0755 /sbin/shutdown
trap shut_down USR2

qemu-ga -m virtio-serial -p "$port" </dev/null >/dev/console 2>&1 &
agent_pid=$!
say "qemu-ga started on $port (pid $agent_pid)"
# A trapped signal ends the wait; orphans are reaped by bash meanwhile.
while :; do
        sleep 1000 &
        wait $!
done

#!/bin/bash
# The payload of the guest agent's test domain (tests/lib/agent-guest.sh), run as root by
# tests/vm/guest-init.sh in script mode (no udev, no systemd): mounts each virtio disk that has a
# serial at /mnt/SERIAL (ext4) and runs this machine's qemu-ga on the virtio-serial port named
# org.qemu.guest_agent.0 until the agent's guest-shutdown (virsh shutdown --mode agent); then
# unmounts the disks and exits, and guest-init.sh powers the guest off. Its output is
# payload.log on the results share. A disk that cannot be mounted, or no agent port, ends it
# (and the guest) before the agent answers.
set -euo pipefail

modprobe -a virtio_blk virtio_console ext4

# noinit_itable: ext4's lazy inode-table zeroing would write to the disks in the background.
for dev in /sys/block/vd*; do
        [[ -r $dev/serial ]] || continue
        serial=$(<"$dev/serial")
        [[ -n $serial ]] || continue
        mkdir -p "/mnt/$serial"
        mount -t ext4 -o rw,noinit_itable "/dev/${dev##*/}" "/mnt/$serial"
        echo "${dev##*/} mounted at /mnt/$serial"
done

port=
for p in /sys/class/virtio-ports/*; do
        [[ -r $p/name && $(<"$p/name") == org.qemu.guest_agent.0 ]] && port=/dev/${p##*/}
done
[[ -n $port ]] || {
        echo "no virtio-serial port named org.qemu.guest_agent.0"
        exit 1
}

# shellcheck disable=SC2317 # run by the trap below
shut_down() {
        local m
        echo "shutdown requested"
        kill -TERM "$agent_pid"
        wait "$agent_pid" || true
        for m in /mnt/*; do
                if mountpoint -q "$m"; then umount "$m"; fi
        done
        echo "disks unmounted"
        exit 0
}

# The agent's guest-shutdown runs /sbin/shutdown: here (over the guest's overlay only) it
# signals this script.
rm -f /sbin/shutdown
printf '#!/bin/sh\nkill -USR2 %d\n' "$$" >/sbin/shutdown
chmod 0755 /sbin/shutdown
trap shut_down USR2

qemu-ga -m virtio-serial -p "$port" &
agent_pid=$!
echo "qemu-ga started on $port (pid $agent_pid)"
# A trapped signal ends the wait and runs shut_down, which exits.
rc=0
wait "$agent_pid" || rc=$?
echo "qemu-ga exited with status $rc"
exit 1

#!/bin/busybox sh
# shellcheck shell=dash
# /init of the test guest's initramfs (busybox, built by run-guest.sh): load the virtio, 9p and
# overlay modules, mount the host's root read-only with a tmpfs overlay on top and switch_root
# into guest-init.sh, which the kernel command line names (qtrim.init=). guest-init.sh mounts the
# results share itself, after its own tmpfs mounts, which could hide it.
# Busybox sh, not bash: nothing of the host is reachable until the overlay is mounted.

/bin/busybox --install -s /bin
export PATH=/bin

# PID 1 must not exit (the kernel would panic): report and power off instead.
fail() {
        echo "qtrim-vm initramfs: $*" >/dev/console
        sync
        poweroff -f
        sleep 1000
}

mkdir -p /proc /sys /dev /lower /ovl /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# In modprobe --show-depends order, one path per line (relative to /modules).
while read -r m; do
        insmod "/modules/$m" || fail "insmod $m failed"
done </modules.order

init=
# shellcheck disable=SC2013 # the command line is words
for w in $(cat /proc/cmdline); do
        case $w in
        qtrim.init=*) init=${w#*=} ;;
        esac
done
[ -n "$init" ] || fail "qtrim.init= must be on the command line"

# cache=loose: the lower layer is read-only, nothing on the host changes it during a run.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower ||
        fail "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /ovl || fail "tmpfs for the overlay"
mkdir -p /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/lower,upperdir=/ovl/upper,workdir=/ovl/work overlay /newroot ||
        fail "overlay mount failed"

for d in dev proc sys; do
        mount --move "/$d" "/newroot/$d" || fail "cannot move /$d"
done
exec switch_root /newroot "$init"

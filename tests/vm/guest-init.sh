#!/bin/bash
# Inside the test guest (tests/vm/run-guest.sh boots it). Two roles:
#
#   guest-init.sh            PID 1 after the initramfs's switch_root: prepares the overlay root,
#                            then, in script mode, runs the payload itself and powers off; in
#                            systemd mode, installs the target that runs the payload as a service
#                            (staged by run-guest.sh) and execs systemd.
#   guest-init.sh --payload  the body of that service (and of script mode): run the payload with
#                            the environment run-guest.sh recorded, keep its log and exit status
#                            on the results share, power off.
#
# What the host asked for is in $results/.vm/conf (shell: MODE, PAYLOAD, exported variables);
# $results is the writable share, mounted at the host's own path (qtrim.results= on the kernel
# command line). Not set -e: PID 1 must never exit, a failure here must end in a power-off.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

# On the console, with the guest's uptime: where boot time goes.
say() {
        local up='?' _
        { read -r up _ </proc/uptime; } 2>/dev/null
        printf 'qtrim-vm: [%s] %s\n' "$up" "$*" >/dev/console
}

# reboot(2) straight away: everything worth keeping is on the results share already.
power_off() {
        sync
        if [[ -d /run/systemd/system ]]; then
                systemctl poweroff --force --force
        fi
        busybox poweroff -f
        sleep 1000
}

results_dir() {
        local w
        for w in $(</proc/cmdline); do
                [[ $w == qtrim.results=* ]] && printf '%s\n' "${w#*=}"
        done
}

# Whether DIR is a mount point, from /proc/self/mountinfo: builtins only, every exec costs under
# TCG (the binary and its libraries come over 9p the first time).
mounted() {
        local _ _ _ _ mnt _
        [[ -r /proc/self/mountinfo ]] || return 1
        while read -r _ _ _ _ mnt _; do
                [[ $mnt == "$1" ]] && return 0
        done </proc/self/mountinfo
        return 1
}

# The kernel file systems and tmpfs mounts both modes need; systemd keeps mounts it finds.
# /var/tmp is a tmpfs of its own: tests make their work dirs there (TMPDIR), and images must live
# on a guest tmpfs (holes punched on the 9p share do not reach the host's file).
base_mounts() {
        mounted /proc || mount -t proc proc /proc
        mounted /sys || mount -t sysfs sysfs /sys
        mounted /dev || mount -t devtmpfs devtmpfs /dev
        mkdir -p /dev/pts /dev/shm
        # What udev or systemd would make: bash's <(...) needs /dev/fd.
        [[ -e /dev/fd ]] || ln -s /proc/self/fd /dev/fd
        mounted /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
        mounted /dev/shm || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
        mounted /var/tmp || mount -t tmpfs -o mode=1777,nosuid,nodev,size=90% tmpfs /var/tmp
}

# The writable share, at the host's path. After base_mounts: the /var/tmp tmpfs would hide a
# results dir below /var/tmp.
# No cache: the host reads the rc and logs as the guest writes them.
mount_results() { # DIR
        mkdir -p -- "$1"
        mounted "$1" || mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$1" ||
                say "cannot mount the results share at $1"
}

# systemd and the tests must not believe they run in the host's container.
scrub_root() {
        rm -f /.dockerenv /run/.containerenv
}

# Script mode: a bare system, PID 1 is this script. /run fresh (qemu-nbd -c wants /run/lock),
# loop and fuse loaded up front (no udev to load them on demand).
script_mode_setup() {
        mounted /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
        mkdir -p /run/lock /run/user
        mounted /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true
        echo qtrim-vm >/proc/sys/kernel/hostname
        # Their device nodes must exist before the first open; file systems load on mount.
        modprobe -a loop fuse || say "modprobe loop fuse failed"
}

# systemd mode: the units and configuration run-guest.sh staged on the host (.vm/root: the
# payload's target and service, masked units and generators) go over the root in one copy.
systemd_mode_setup() { # RESULTS
        cp -a -- "$1/.vm/root/." / || say "cannot copy $1/.vm/root into the guest's root"
}

# Run the payload with the recorded environment; its output goes to the results share. Also
# writes started (for the boot time) and rc, last, so a missing rc means "never finished".
run_payload() {
        local results=$1 rc=0 t0
        mkdir -p -- "$results/.vm"
        touch -- "$results/.vm/started"
        say "payload starts"
        t0=$(date +%s.%N)
        (
                cd / || exit 1
                # shellcheck source=/dev/null
                source "$results/.vm/conf"
                exec /bin/bash -- "$PAYLOAD"
        ) </dev/null >"$results/payload.log" 2>&1 &
        wait $! || rc=$?
        awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f\n", b - a }' >"$results/.vm/payload-seconds"
        if [[ -d /run/systemd/system ]]; then
                journalctl -b --no-pager -o short-monotonic >"$results/journal.log" 2>&1 || true
        fi
        dmesg >"$results/dmesg.log" 2>&1 || true
        printf '%s\n' "$rc" >"$results/rc.new"
        sync
        mv -f -- "$results/rc.new" "$results/rc"
        sync
        say "payload exited with $rc"
}

main() {
        local results mode
        results=$(results_dir)
        if [[ ${1:-} == --payload ]]; then
                run_payload "$results"
                power_off
        fi
        say "guest-init started"
        base_mounts
        mount_results "$results"
        scrub_root
        # shellcheck source=/dev/null
        # shellcheck disable=SC2153 # MODE comes from the conf file
        mode=$(source "$results/.vm/conf" && printf '%s' "$MODE")
        case $mode in
        script)
                script_mode_setup
                run_payload "$results"
                power_off
                ;;
        systemd)
                systemd_mode_setup "$results"
                exec /lib/systemd/systemd
                ;;
        *)
                say "unknown mode '$mode' in $results/.vm/conf"
                power_off
                ;;
        esac
}

main "$@"

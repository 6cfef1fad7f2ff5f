#!/usr/bin/env bash
# Installs everything qtrim needs to build, run and be tested, from Debian 12's archive.
# The one list of qtrim's packages; the demo, the tests and CI all call this.
set -euo pipefail

packages=(
  # build
  gcc meson ninja-build pkg-config
  libnbd-dev libmount-dev libblkid-dev libudev-dev libsystemd-dev libfuse3-dev libjson-c-dev check
  ntfs-3g-dev # lib/ntfs.c reads NTFS volumes read-only, without mounting
  # run
  qemu-utils fuse3 dbus-daemon
  # tests and benchmarks: real filesystems, partitioning, bus clients (busctl, gdbus,
  # dbus-monitor), the manual recipe's nbdfuse
  e2fsprogs xfsprogs btrfs-progs fdisk util-linux procps jq libnbd-bin
  systemd libglib2.0-bin dbus-bin
  inotify-tools # formats.sh: proves that no process opens a file a hostile header names
  lvm2 # test-lvm-meta and tests/lib/layouts.sh build guest PVs and VGs, under a private lvm.conf
  dosfstools mtools # tests/lib/layouts.sh: an EFI system partition with files
  ntfs-3g # tests/lib/layouts.sh: Windows-like NTFS volumes (mkntfs, a FUSE mount to fill them)
  # VM tests (tests/vm, bench/attach-bench.sh): a TCG guest booting Debian's kernel (nbd,
  # partition parsing and module loading, which the build machines' kernel lacks) from a busybox
  # initramfs over this machine's root; systemd as the guest's PID 1 with the system bus, polkit
  # for the authorization checks, man pages for systemd-analyze verify's Documentation= check
  linux-image-amd64 qemu-system-x86 busybox-static xz-utils
  dbus polkitd man-db
  # tools/valgrind.sh: memcheck, and glibc's symbols so it can name glibc's frames
  valgrind libc6-dbg
  # the Debian package (debian/): dpkg-buildpackage and its checks
  build-essential debhelper lintian
  # tests of the terminal output (a real terminal of a given width) and of the metrics file
  tmux python3-prometheus-client
  # libvirt support (daemon/ domain verbs: optional at build time) and its tests: a real
  # libvirtd run in the foreground, with virtlogd, domains under TCG; qemu-ga for the online
  # trim's guest (tests/lib/agent-guest.sh: the guest runs this machine's binary over 9p)
  libvirt-dev libxml2-dev libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
  qemu-guest-agent
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

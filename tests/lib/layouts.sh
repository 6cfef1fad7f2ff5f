# shellcheck shell=bash
# Builders of guest-shaped disks beyond "partitions holding filesystems": LVM (linear LVs, a VG
# over two PVs, a thin pool), swap partitions and LVs, a hibernated swap, an ESP, logical
# partitions, a Windows LDM disk, and random garbage between and after partitions. Each writes
# a manifest ($(qt_manifest IMG)) computed with sfdisk and lvm2, never with qtrim, with the keys
# of images.sh's builders plus:
#
#   filesystems[]: entries of LVs carry  kind: "lv", lv: "VG/LV", name: "VG/LV", and offset/size
#       the LV's absolute byte range in the disk. An LV of several segments also has
#       segments: [ { offset, size } ] in LV order; its offset is then the first segment's and its
#       size the LV's total, and its content is the concatenation of the segments.
#   preserved: [ { what, offset, size, sha256 } ]  byte ranges that must stay byte-identical
#       (boot area and GPT, backup GPT, EBRs, swap headers, hibernated swap, PV label and
#       metadata, ESP, BIOS boot partition, LDM data, thin pool).
#   zeroed: [ { what, offset, size } ]  ranges that hold random garbage when built and that a
#       complete shrink leaves reading as zeros (gaps between and after partitions, swap areas
#       after their header page, free extents that held data).
#   preserved_used_bytes: bytes of the fresh qcow2 allocated inside the preserved ranges
#       (qemu-img map, clipped to each range), already included in guest_used_bytes.
#
# guest_used_bytes = sum of used_bytes of the filesystems (statfs after the deletion)
#                  + preserved_used_bytes (what a compact image must keep of the preserved
#                    ranges: GPT, ESP files, LVM metadata, swap headers, hibernation image, ...).
# Zeroed ranges, deleted data and never-written space count for nothing.
#
# LVM runs without device-mapper and out of the host's sight: every lvm call gets a private
# LVM_SYSTEM_DIR (its lvm.conf accepts only the builder's loop devices, no udev, no hints, no
# activation, locking dir, backups and archives inside it) and --devices for each PV; LVs are
# created with --zero n --wipesignatures n and reached by a loop device at partition offset +
# pe_start + first extent x extent size. /etc/lvm and /run/lvm are left as they were.
#
# qcow2 images are made with a sparse qemu-img convert: what was never written (or written as
# zeros) is not allocated; junk, garbage and deleted data are random, so they are.
#
# Needs: lvm2, dosfstools (mkfs.vfat), mtools (mcopy, mmd), util-linux (sfdisk, mkswap, losetup),
# e2fsprogs, xfsprogs, qemu-utils, jq.

# shellcheck source=tests/lib/images.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/images.sh"

# Fixed identifiers, so every build of a layout looks the same to blkid and lvm.
QT_SWAP_UUID_FEDORA=5f2b9c3e-6a1d-4e8f-9b7a-0c1d2e3f4a5b
QT_SWAP_UUID_P2=1b6e1f0a-3c4d-4e5f-8a9b-0c1d2e3f4a01
QT_SWAP_UUID_P3=1b6e1f0a-3c4d-4e5f-8a9b-0c1d2e3f4a02

# ---- byte ranges --------------------------------------------------------------------------

# _qt_range_read RAW OFFSET SIZE: the bytes of RAW[OFFSET, +SIZE) on stdout.
_qt_range_read() {
        dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none
}

# _qt_random_fill RAW OFFSET SIZE: random bytes over RAW[OFFSET, +SIZE).
_qt_random_fill() {
        dd if=/dev/urandom of="$1" iflag=fullblock,count_bytes count="$3" oflag=seek_bytes seek="$2" \
                bs=1M conv=notrunc status=none || qt_fail "cannot write random data to $1 at $2"
}

# _qt_garbage ZFRAG RAW WHAT OFFSET SIZE: random garbage over the range, listed as to be zeroed.
_qt_garbage() {
        _qt_random_fill "$2" "$4" "$5"
        _qt_zeroed "$1" "$3" "$4" "$5"
}

# _qt_zeroed ZFRAG WHAT OFFSET SIZE: list a range (already holding garbage) as to be zeroed.
_qt_zeroed() {
        jq -n -c --arg what "$2" --argjson offset "$3" --argjson size "$4" \
                '{ what: $what, offset: $offset, size: $size }' >>"$1"
}

# _qt_preserve PFRAG RAW WHAT OFFSET SIZE: list a range as preserved, with its sha256 now. Call
# it once RAW is final.
_qt_preserve() {
        local sha
        sha=$(_qt_range_read "$2" "$4" "$5" | sha256sum | cut -d' ' -f1)
        jq -n -c --arg what "$3" --argjson offset "$4" --argjson size "$5" --arg sha "$sha" \
                '{ what: $what, offset: $offset, size: $size, sha256: $sha }' >>"$1"
}

# Start of the backup GPT (its partition entries) in a GPT disk, as sfdisk reads the header: the
# sector after the last usable LBA.
_qt_gpt_backup_offset() { # RAW
        sfdisk -J -- "$1" | jq '.partitiontable | (.lastlba + 1) * .sectorsize'
}

# EBR sectors of a dos disk's logical partitions, by walking the chain from the extended
# partition's start (entry 2 of each EBR links the next, relative to the extended partition).
_qt_ebr_offsets() { # RAW -> one byte offset a line
        local raw=$1 ext lba rel
        ext=$(sfdisk -J -- "$raw" | jq '.partitiontable.partitions[]
                | select(.type == "5" or .type == "f" or .type == "85") | .start')
        [[ -n $ext ]] || return 0
        lba=$ext
        while :; do
                printf '%d\n' $((lba * 512))
                rel=$(od -An -tu4 -j $((lba * 512 + 446 + 16 + 8)) -N4 -- "$raw" | tr -d ' ')
                ((rel != 0)) || break
                lba=$((ext + rel))
        done
}

# ---- LVM in a private sandbox -------------------------------------------------------------

# _qt_lvm_sandbox DIRVAR RAW PART...: attaches a loop device at each partition (number) of RAW,
# writes a private lvm.conf that sees only those devices, and sets DIRVAR to its directory. The
# directory holds "pvs" lines "DEVICE PART_OFFSET PART_SIZE"; _qt_lvm_sandbox_end detaches.
_qt_lvm_sandbox() {
        local -n _qt_dir=$1
        local raw=$2 n geo dev filter=
        shift 2
        _qt_dir=$(mktemp -d "$QT_SCRATCH/lvm.XXXXXX")
        mkdir -p -- "$_qt_dir/lock"
        : >"$_qt_dir/pvs"
        for n in "$@"; do
                geo=$(_qt_part_geometry "$raw" "$n")
                [[ -n $geo ]] || qt_fail "$raw has no partition $n"
                qt_loop_attach dev "$raw" "${geo% *}" "${geo#* }"
                printf '%s %s\n' "$dev" "$geo" >>"$_qt_dir/pvs"
                filter+="\"a|^$dev\$|\", "
        done
        cat >"$_qt_dir/lvm.conf" <<EOF
devices {
  filter = [ ${filter}"r|.*|" ]
  global_filter = [ ${filter}"r|.*|" ]
  use_devicesfile = 0
  obtain_device_list_from_udev = 0
  hints = "none"
  scan_lvs = 0
  md_component_detection = 0
  multipath_component_detection = 0
  fw_raid_component_detection = 0
}
global {
  activation = 0
  locking_dir = "$_qt_dir/lock"
  event_activation = 0
  use_lvmlockd = 0
}
backup {
  backup = 0
  archive = 0
}
activation {
  udev_sync = 0
  udev_rules = 0
  monitoring = 0
}
EOF
}

_qt_lvm_sandbox_end() { # DIR
        local dev rest
        while read -r dev rest; do
                qt_loop_detach "$dev"
        done <"$1/pvs"
        rm -rf -- "$1"
}

# _qt_lvm DIR COMMAND ARGS...: lvm COMMAND in the sandbox, with --devices for each of its PVs.
# stdout is the command's; its stderr is shown only if it fails.
_qt_lvm() {
        local dir=$1 cmd=$2 devs=() dev rest rc=0
        shift 2
        while read -r dev rest; do devs+=(--devices "$dev"); done <"$dir/pvs"
        LVM_SYSTEM_DIR=$dir LVM_SUPPRESS_FD_WARNINGS=1 lvm "$cmd" "${devs[@]}" "$@" 2>"$dir/err" || rc=$?
        if ((rc != 0)); then
                sed 's/^/    lvm: /' "$dir/err" >&2
                qt_fail "lvm $cmd $* failed (exit $rc)"
        fi
}

# The device of the sandbox's Nth PV (1-based, in the order given to _qt_lvm_sandbox).
_qt_lvm_dev() { sed -n "$2{s/ .*//;p}" "$1/pvs"; }

# _qt_lv_ranges DIR VG/LV: "offset size" lines, absolute in the raw disk, one per segment in LV
# order, from lvm2's own report (pvs pe_start, lvs seg_pe_ranges, vg_extent_size); hidden LVs
# (a thin pool's components) too, by their name without brackets.
_qt_lv_ranges() {
        local dir=$1 vg=${2%/*} lv=${2#*/} pvs segs
        pvs=$(_qt_lvm "$dir" pvs --reportformat json --units b --nosuffix -o pv_name,pe_start)
        segs=$(_qt_lvm "$dir" lvs -a --reportformat json --units b --nosuffix --segments \
                -o lv_name,seg_start_pe,seg_pe_ranges,seg_size_pe,vg_extent_size "$vg")
        jq -r -n --argjson pvs "$pvs" --argjson segs "$segs" --arg lv "$lv" --rawfile map "$dir/pvs" '
                ($map | split("\n") | map(select(length > 0) | split(" ") | {(.[0]): (.[1] | tonumber)}) | add) as $poff
                | ($pvs.report[0].pv | map({(.pv_name): (.pe_start | tonumber)}) | add) as $pe
                | [$segs.report[0].seg[] | select((.lv_name | ltrimstr("[") | rtrimstr("]")) == $lv)] | sort_by(.seg_start_pe | tonumber)[]
                | (.vg_extent_size | tonumber) as $ext
                | (.seg_pe_ranges | capture("^(?<dev>[^:]+):(?<first>[0-9]+)-(?<last>[0-9]+)$")) as $r
                | "\($poff[$r.dev] + $pe[$r.dev] + ($r.first | tonumber) * $ext) \((.seg_size_pe | tonumber) * $ext)"'
}

# _qt_lv_range DIR VG/LV OFFVAR SIZEVAR: offset and size of a single-segment LV; fails on more.
_qt_lv_range() {
        local -n _qt_o=$3 _qt_s=$4
        local r
        r=$(_qt_lv_ranges "$1" "$2") || qt_fail "cannot read the segments of LV $2"
        [[ -n $r && $r != *$'\n'* ]] || qt_fail "LV $2 is not a single segment: ${r//$'\n'/, }"
        read -r _qt_o _qt_s <<<"$r"
}

_qt_lvcreate() { # DIR VG LV SIZE [PV_DEVICE...]
        local dir=$1 vg=$2 lv=$3 size=$4
        shift 4
        _qt_lvm "$dir" lvcreate --zero n --wipesignatures n -y -n "$lv" -L "$size" "$vg" "$@" >/dev/null
}

# _qt_populate_lv FRAGMENT RAW VG/LV OFFSET SIZE FSTYPE JUNK_MIB KEEP_SIZE...: _qt_populate_fs
# on an LV's range, its manifest entry named after the LV and marked kind "lv".
_qt_populate_lv() {
        local frag=$1 raw=$2 lv=$3 tmp=$QT_SCRATCH/lv-frag.$$
        shift 3
        rm -f -- "$tmp"
        # The fs label (and scratch names) from the LV's name alone: xfs labels hold 12 bytes.
        _qt_populate_fs "$tmp" "$raw" "lv-${lv#*/}" "$3" "$1" "$2" "${@:4}"
        jq -c --arg lv "$lv" '.name = $lv | .kind = "lv" | .lv = $lv' "$tmp" >>"$frag"
        rm -f -- "$tmp"
}

# _qt_mkswap RAW OFFSET SIZE LABEL UUID: mkswap through a loop device at the range.
_qt_mkswap() {
        local dev
        qt_loop_attach dev "$1" "$2" "$3"
        mkswap -q -L "$4" -U "$5" -- "$dev" >/dev/null || qt_fail "mkswap on $1 at $2 failed"
        qt_loop_detach "$dev"
}

# ---- manifest -----------------------------------------------------------------------------

# Bytes of IMG allocated inside each of RANGES (a JSON array of {offset,size}), as qemu-img map
# reports data (allocated, not a zero cluster), clipped to each range; prints their sum.
_qt_allocated_in_ranges() { # IMG RANGES_JSON
        # Through a pipe, not an argument: a map can exceed the kernel's 128 KiB per argument.
        qemu-img map --output=json -U -- "$1" | jq --argjson r "$2" '
                [ .[] | select(.data) | { s: .start, e: (.start + .length) } ] as $d
                | [ $r[] | (.offset) as $o | (.offset + .size) as $e
                    | $d[] | select(.s < $e and .e > $o)
                    | ([.e, $e] | min) - ([.s, $o] | max) ] | add // 0'
}

# _qt_write_layout_manifest IMG TABLE FRAG PFRAG ZFRAG: _qt_write_manifest plus preserved,
# zeroed and the preserved ranges' allocation added to guest_used_bytes (see the top).
_qt_write_layout_manifest() {
        local img=$1 table=$2 frag=$3 pfrag=$4 zfrag=$5 m pres pused
        m=$(qt_manifest "$img")
        _qt_write_manifest "$img" qcow2 "$table" "$frag"
        touch -- "$pfrag" "$zfrag"
        pres=$(jq -s -c '.' "$pfrag")
        pused=$(_qt_allocated_in_ranges "$img" "$pres")
        jq --argjson p "$pres" --slurpfile z "$zfrag" --argjson pused "$pused" '
                .preserved = $p | .zeroed = $z | .preserved_used_bytes = $pused
                | .guest_used_bytes += $pused' "$m" >"$m.new"
        mv -f -- "$m.new" "$m"
        rm -f -- "$pfrag" "$zfrag"
}

_qt_layout_files() { # IMG -> sets raw frag pfrag zfrag in the caller
        raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        pfrag=$QT_SCRATCH/${1##*/}.pres zfrag=$QT_SCRATCH/${1##*/}.zero
        rm -f -- "$raw" "$frag" "$pfrag" "$zfrag"
}

# ---- builders -----------------------------------------------------------------------------

# make_fedora_like IMG: qcow2, 3 GiB virtual, sparse, GPT shaped like a Fedora install:
#   [0, 1 MiB)       protective MBR, GPT, random bytes after the entries (boot-loader area)  preserved
#   p4  1 MiB        BIOS boot (listed 4th, lies first), random                             preserved
#   p1  64 MiB       ESP, vfat (FAT32) with a few files                                     preserved
#   p2  256 MiB      /boot ext4, 128 MiB deleted                                            filesystems "p2"
#   32 MiB gap       random garbage                                                         zeroed
#   p3  2621 MiB     LVM PV, VG "fedora", 4 MiB extents; label + metadata                   preserved
#       root  1.25 GiB xfs, 320 MiB deleted                                                 filesystems "fedora/root"
#       (256 MiB)    LV "scratch" filled with random data then lvremoved: free extents      zeroed
#       swap  256 MiB  random, then mkswap -L fedora-swap: header page preserved, rest      zeroed
#       the remaining free extents were never written (zeros, unlisted)
#   ~97 MiB          random garbage up to the backup GPT                                    zeroed
#   backup GPT (last 33 sectors)                                                            preserved
make_fedora_like() {
        local img=$1 raw frag pfrag zfrag lvm esp boot pv gpt2 off size dev
        _qt_layout_files "$img"
        truncate -s 3G -- "$raw"
        printf 'label: gpt\nstart=2MiB, size=64MiB, type=U, name="EFI System Partition"\nsize=256MiB, type=L, name=boot\nstart=354MiB, size=2621MiB, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=lvm\n' |
                sfdisk -q -- "$raw" >/dev/null
        printf 'start=1MiB, size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=biosboot\n' |
                sfdisk -q --append -- "$raw" >/dev/null
        esp=$(_qt_part_geometry "$raw" 1) boot=$(_qt_part_geometry "$raw" 2)
        pv=$(_qt_part_geometry "$raw" 3) gpt2=$(_qt_gpt_backup_offset "$raw")

        # Boot-loader bytes: after the GPT entries, and the BIOS boot partition (GRUB's core.img).
        _qt_random_fill "$raw" $((34 * 512)) $((MiB - 34 * 512))
        _qt_random_fill "$raw" "$MiB" "$MiB"

        # ESP: FAT32 made on a loop device, files written with mtools (no vfat driver here).
        qt_loop_attach dev "$raw" "${esp% *}" "${esp#* }"
        mkfs.vfat -F 32 -n ESP -i 0E5F0001 -- "$dev" >/dev/null || qt_fail "mkfs.vfat failed"
        qt_loop_detach "$dev"
        head -c 700K /dev/urandom >"$QT_SCRATCH/shimx64.efi"
        head -c 1500K /dev/urandom >"$QT_SCRATCH/grubx64.efi"
        printf 'set timeout=5\nsearch --no-floppy --fs-uuid --set=dev qt-p2\n' >"$QT_SCRATCH/grub.cfg"
        (
                export MTOOLS_SKIP_CHECK=1
                i=$raw@@${esp% *}
                mmd -i "$i" ::EFI ::EFI/BOOT ::EFI/fedora &&
                        mcopy -i "$i" "$QT_SCRATCH/shimx64.efi" ::EFI/BOOT/BOOTX64.EFI &&
                        mcopy -i "$i" "$QT_SCRATCH/shimx64.efi" "$QT_SCRATCH/grubx64.efi" "$QT_SCRATCH/grub.cfg" ::EFI/fedora/
        ) || qt_fail "mtools could not write the ESP"
        rm -f -- "$QT_SCRATCH/shimx64.efi" "$QT_SCRATCH/grubx64.efi" "$QT_SCRATCH/grub.cfg"

        _qt_populate_part "$frag" "$raw" 2 ext4 128 4K 300K 5M 12M
        _qt_garbage "$zfrag" "$raw" "gap p2-p3" $((${boot% *} + ${boot#* })) $((${pv% *} - ${boot% *} - ${boot#* }))

        _qt_lvm_sandbox lvm "$raw" 3
        _qt_lvm "$lvm" pvcreate -y "$(_qt_lvm_dev "$lvm" 1)" >/dev/null
        _qt_lvm "$lvm" vgcreate -s 4M fedora "$(_qt_lvm_dev "$lvm" 1)" >/dev/null
        _qt_lvcreate "$lvm" fedora root 1280M
        _qt_lvcreate "$lvm" fedora scratch 256M
        _qt_lvcreate "$lvm" fedora swap 256M

        _qt_lv_range "$lvm" fedora/scratch off size
        _qt_garbage "$zfrag" "$raw" "free extents of fedora (was LV scratch)" "$off" "$size"
        _qt_lvm "$lvm" lvremove -y fedora/scratch >/dev/null

        _qt_lv_range "$lvm" fedora/swap off size
        _qt_random_fill "$raw" "$off" "$size"
        _qt_mkswap "$raw" "$off" "$size" fedora-swap "$QT_SWAP_UUID_FEDORA"
        _qt_zeroed "$zfrag" "swap area of fedora/swap" $((off + 4096)) $((size - 4096))
        local swap_off=$off

        _qt_lv_range "$lvm" fedora/root off size
        local pe_start
        pe_start=$(_qt_lvm "$lvm" pvs --noheadings --units b --nosuffix -o pe_start | tr -d ' ')
        # The PV's loop device goes before the long part: the host's lvm could see the VG meanwhile.
        _qt_lvm_sandbox_end "$lvm"
        _qt_populate_lv "$frag" "$raw" fedora/root "$off" "$size" xfs 320 8K 1M 6M 20M 40M

        _qt_garbage "$zfrag" "$raw" "after p3" $((${pv% *} + ${pv#* })) $((gpt2 - ${pv% *} - ${pv#* }))

        _qt_preserve "$pfrag" "$raw" "protective MBR, GPT, boot-loader area" 0 "$MiB"
        _qt_preserve "$pfrag" "$raw" "p4 BIOS boot" "$MiB" "$MiB"
        _qt_preserve "$pfrag" "$raw" "p1 ESP (vfat)" "${esp% *}" "${esp#* }"
        _qt_preserve "$pfrag" "$raw" "p3 PV label and metadata" "${pv% *}" "$pe_start"
        _qt_preserve "$pfrag" "$raw" "fedora/swap header page" "$swap_off" 4096
        _qt_preserve "$pfrag" "$raw" "backup GPT" "$gpt2" $((3 * GiB - gpt2))
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" gpt "$frag" "$pfrag" "$zfrag"
}

# make_lvm_two_pvs IMG: qcow2, 2 GiB virtual, sparse, GPT:
#   p1 200 MiB /boot ext4 (96 MiB deleted)                                  filesystems "p1"
#   p2 800 MiB PV, p3 the rest PV: VG "vg0" (4 MiB extents) over both       label+metadata preserved
#     data  ext4, TWO segments: 160 MiB on p2 then 240 MiB on p3,           filesystems "vg0/data"
#           240 MiB deleted; offset = first segment's, segments[] lists both
#     logs  ext4 128 MiB on p2, 64 MiB deleted                              filesystems "vg0/logs"
# The multi-segment filesystem is made in a scratch file of the LV's size and copied (sparse)
# into its segments, since without device-mapper nothing can map them as one device.
make_lvm_two_pvs() {
        local img=$1 raw frag pfrag zfrag lvm p2 p3 gpt2 off size segs tmp pe2 pe3 i
        _qt_layout_files "$img"
        truncate -s 2G -- "$raw"
        printf 'label: gpt\nsize=200MiB, type=L, name=boot\nsize=800MiB, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=pv0\ntype=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=pv1\n' |
                sfdisk -q -- "$raw" >/dev/null
        p2=$(_qt_part_geometry "$raw" 2) p3=$(_qt_part_geometry "$raw" 3) gpt2=$(_qt_gpt_backup_offset "$raw")
        _qt_populate_part "$frag" "$raw" 1 ext4 96 4K 500K 6M

        _qt_lvm_sandbox lvm "$raw" 2 3
        _qt_lvm "$lvm" pvcreate -y "$(_qt_lvm_dev "$lvm" 1)" "$(_qt_lvm_dev "$lvm" 2)" >/dev/null
        _qt_lvm "$lvm" vgcreate -s 4M vg0 "$(_qt_lvm_dev "$lvm" 1)" "$(_qt_lvm_dev "$lvm" 2)" >/dev/null
        _qt_lvcreate "$lvm" vg0 data 160M "$(_qt_lvm_dev "$lvm" 1)"
        _qt_lvcreate "$lvm" vg0 logs 128M "$(_qt_lvm_dev "$lvm" 1)"
        _qt_lvm "$lvm" lvextend -L +240M vg0/data "$(_qt_lvm_dev "$lvm" 2)" >/dev/null

        local loff lsize
        _qt_lv_range "$lvm" vg0/logs loff lsize
        segs=$(_qt_lv_ranges "$lvm" vg0/data)
        pe2=$(_qt_lvm "$lvm" pvs --noheadings --units b --nosuffix -o pe_start "$(_qt_lvm_dev "$lvm" 1)" | tr -d ' ')
        pe3=$(_qt_lvm "$lvm" pvs --noheadings --units b --nosuffix -o pe_start "$(_qt_lvm_dev "$lvm" 2)" | tr -d ' ')
        _qt_lvm_sandbox_end "$lvm"

        _qt_populate_lv "$frag" "$raw" vg0/logs "$loff" "$lsize" ext4 64 4K 2M 9M
        (($(wc -l <<<"$segs") == 2)) || qt_fail "vg0/data should have two segments: $segs"
        size=$(awk '{ s += $2 } END { print s }' <<<"$segs")
        tmp=$QT_SCRATCH/vg0-data.lv
        rm -f -- "$tmp"
        truncate -s "$size" -- "$tmp"
        _qt_populate_lv "$frag.data" "$tmp" vg0/data 0 "$size" ext4 240 4K 1M 7M 18M
        i=0
        while read -r off size; do
                dd if="$tmp" of="$raw" iflag=skip_bytes,count_bytes skip="$i" count="$size" \
                        oflag=seek_bytes seek="$off" bs=1M conv=sparse,notrunc status=none ||
                        qt_fail "copy of vg0/data's segment to $off failed"
                i=$((i + size))
        done <<<"$segs"
        rm -f -- "$tmp"
        jq -c --rawfile segs <(printf '%s\n' "$segs") '
                ($segs | split("\n") | map(select(length > 0) | split(" ") | map(tonumber)
                                          | { offset: .[0], size: .[1] })) as $s
                | .offset = $s[0].offset | .segments = $s' "$frag.data" >>"$frag"
        rm -f -- "$frag.data"

        _qt_preserve "$pfrag" "$raw" "protective MBR and GPT" 0 "$MiB"
        _qt_preserve "$pfrag" "$raw" "p2 PV label and metadata" "${p2% *}" "$pe2"
        _qt_preserve "$pfrag" "$raw" "p3 PV label and metadata" "${p3% *}" "$pe3"
        _qt_preserve "$pfrag" "$raw" "backup GPT" "$gpt2" $((2 * GiB - gpt2))
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" gpt "$frag" "$pfrag" "$zfrag"
}

# make_mbr_swap_gaps IMG: qcow2, 1 GiB virtual, sparse, MBR (dos):
#   [0, 1 MiB)   MBR, random bytes in sectors 1-2047 (GRUB's embedding area)          preserved
#   p1  200 MiB  ext4, 128 MiB deleted                                                filesystems "p1"
#   48 MiB gap   random garbage                                                       zeroed
#   p2  128 MiB  swap (type 82): random, then mkswap -L swap0; header page            preserved, rest zeroed
#   p3   64 MiB  hibernated swap: random, mkswap, signature S1SUSPEND (blkid: swsuspend) preserved whole
#   p4  519 MiB  extended:
#     EBR, p5 160 MiB ext4 (96 MiB deleted)                                           EBR preserved, "p5"
#     32 MiB gap inside the extended partition, random garbage                        zeroed
#     EBR, p6 325 MiB ext4 (192 MiB deleted)                                          EBR preserved, "p6"
#   64 MiB       random garbage after the extended partition to the end               zeroed
make_mbr_swap_gaps() {
        local img=$1 raw frag pfrag zfrag p1 p2 p3 p4 p5 e ebrs
        _qt_layout_files "$img"
        truncate -s 1G -- "$raw"
        printf 'label: dos\nstart=1MiB, size=200MiB, type=83\nstart=249MiB, size=128MiB, type=82\nsize=64MiB, type=82\nsize=519MiB, type=5\nsize=160MiB, type=83\nstart=635MiB, type=83\n' |
                sfdisk -q -- "$raw" >/dev/null
        p1=$(_qt_part_geometry "$raw" 1) p2=$(_qt_part_geometry "$raw" 2)
        p3=$(_qt_part_geometry "$raw" 3) p4=$(_qt_part_geometry "$raw" 4) p5=$(_qt_part_geometry "$raw" 5)
        mapfile -t ebrs < <(_qt_ebr_offsets "$raw")
        ((${#ebrs[@]} == 2)) || qt_fail "expected 2 EBRs, found ${#ebrs[@]}"

        _qt_random_fill "$raw" 512 $((MiB - 512))
        _qt_populate_part "$frag" "$raw" 1 ext4 128 4K 1M 8M
        _qt_garbage "$zfrag" "$raw" "gap p1-p2" $((${p1% *} + ${p1#* })) $((${p2% *} - ${p1% *} - ${p1#* }))

        _qt_random_fill "$raw" "${p2% *}" "${p2#* }"
        _qt_mkswap "$raw" "${p2% *}" "${p2#* }" swap0 "$QT_SWAP_UUID_P2"
        _qt_zeroed "$zfrag" "swap area of p2" $((${p2% *} + 4096)) $((${p2#* } - 4096))

        _qt_random_fill "$raw" "${p3% *}" "${p3#* }"
        _qt_mkswap "$raw" "${p3% *}" "${p3#* }" swap1 "$QT_SWAP_UUID_P3"
        # A hibernation image: the kernel replaces SWAPSPACE2 (page size - 10) with its own magic.
        printf 'S1SUSPEND\0' | dd of="$raw" oflag=seek_bytes seek=$((${p3% *} + 4086)) conv=notrunc status=none

        _qt_populate_part "$frag" "$raw" 5 ext4 96 4K 600K 5M
        _qt_garbage "$zfrag" "$raw" "gap p5-p6 (inside p4)" $((${p5% *} + ${p5#* })) $((ebrs[1] - ${p5% *} - ${p5#* }))
        _qt_populate_part "$frag" "$raw" 6 ext4 192 8K 2M 10M
        e=$((${p4% *} + ${p4#* }))
        _qt_garbage "$zfrag" "$raw" "after p4" "$e" $((GiB - e))

        _qt_preserve "$pfrag" "$raw" "MBR and boot-loader area" 0 "$MiB"
        _qt_preserve "$pfrag" "$raw" "p2 swap header page" "${p2% *}" 4096
        _qt_preserve "$pfrag" "$raw" "p3 hibernated swap" "${p3% *}" "${p3#* }"
        _qt_preserve "$pfrag" "$raw" "EBR of p5" "${ebrs[0]}" 512
        _qt_preserve "$pfrag" "$raw" "EBR of p6" "${ebrs[1]}" 512
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" dos "$frag" "$pfrag" "$zfrag"
}

# make_ldm_disk IMG: qcow2, 512 MiB virtual, sparse, MBR of a Windows dynamic disk: qtrim must
# leave everything outside the Linux filesystem alone, gaps included.
#   [0, 1 MiB)    MBR                                                            preserved
#   p1  128 MiB   type 0x42 (LDM data), its first 48 MiB random                  preserved
#   16 MiB gap    random garbage                                                 preserved
#   p2  256 MiB   type 83, ext4, 192 MiB deleted                                 filesystems "p2"
#   8 MiB         random garbage after p2, then zeros                            preserved
#   last MiB      LDM database, random                                           preserved
make_ldm_disk() {
        local img=$1 raw frag pfrag zfrag p1 p2 e
        _qt_layout_files "$img"
        truncate -s 512M -- "$raw"
        printf 'label: dos\nstart=1MiB, size=128MiB, type=42\nstart=145MiB, size=256MiB, type=83\n' |
                sfdisk -q -- "$raw" >/dev/null
        p1=$(_qt_part_geometry "$raw" 1) p2=$(_qt_part_geometry "$raw" 2)
        _qt_random_fill "$raw" "${p1% *}" $((48 * MiB))
        e=$((${p1% *} + ${p1#* }))
        _qt_random_fill "$raw" "$e" $((${p2% *} - e))
        _qt_populate_part "$frag" "$raw" 2 ext4 192 4K 1M 9M
        e=$((${p2% *} + ${p2#* }))
        _qt_random_fill "$raw" "$e" $((8 * MiB))
        _qt_random_fill "$raw" $((511 * MiB)) "$MiB"

        _qt_preserve "$pfrag" "$raw" "MBR" 0 "${p1% *}"
        _qt_preserve "$pfrag" "$raw" "p1 LDM data partition" "${p1% *}" "${p1#* }"
        _qt_preserve "$pfrag" "$raw" "gap p1-p2" $((${p1% *} + ${p1#* })) $((${p2% *} - ${p1% *} - ${p1#* }))
        _qt_preserve "$pfrag" "$raw" "after p2" "$e" $((511 * MiB - e))
        _qt_preserve "$pfrag" "$raw" "LDM database (last MiB)" $((511 * MiB)) "$MiB"
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" dos "$frag" "$pfrag" "$zfrag"
}

# make_thin_pool_disk IMG: qcow2, 1 GiB virtual, sparse, GPT, p1 an LVM PV with VG "vgt"
# (4 MiB extents):
#   plain       256 MiB ext4, 192 MiB deleted                                  filesystems "vgt/plain"
#   pool        thin pool: pool_tmeta 1 extent, pool_tdata 128 MiB (random),   both preserved
#               lvol0_pmspare 1 extent (never written)
#   thin1       thin LV of 512 MiB virtual in pool
# lvm2 cannot create thin pools without device-mapper: the pool, its components and the thin LV
# are appended to the VG's metadata text (vgcfgbackup) and written back with vgcfgrestore --force,
# as lvcreate would have written them; their extents are then filled with random data.
make_thin_pool_disk() {
        local img=$1 raw frag pfrag zfrag lvm pv gpt2 off size e vgfile pe_start
        _qt_layout_files "$img"
        truncate -s 1G -- "$raw"
        printf 'label: gpt\ntype=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=pv0\n' | sfdisk -q -- "$raw" >/dev/null
        pv=$(_qt_part_geometry "$raw" 1) gpt2=$(_qt_gpt_backup_offset "$raw")

        _qt_lvm_sandbox lvm "$raw" 1
        _qt_lvm "$lvm" pvcreate -y "$(_qt_lvm_dev "$lvm" 1)" >/dev/null
        _qt_lvm "$lvm" vgcreate -s 4M vgt "$(_qt_lvm_dev "$lvm" 1)" >/dev/null
        _qt_lvcreate "$lvm" vgt plain 256M
        e=$(_qt_lvm "$lvm" lvs --noheadings -o seg_size_pe vgt/plain | tr -d ' ')
        vgfile=$lvm/vgt.vg
        _qt_lvm "$lvm" vgcfgbackup -f "$vgfile" vgt >/dev/null
        # logical_volumes is the VG's last section: the new LVs go before its closing brace.
        grep -q $'^\t}$' "$vgfile" || qt_fail "unexpected layout of lvm2's metadata text"
        _qt_thin_lvs_text "$e" >"$lvm/thin.txt"
        awk -v add="$lvm/thin.txt" '{ l[NR] = $0 } $0 == "\t}" { last = NR }
                END { for (i = 1; i <= NR; i++) { if (i == last) while ((getline x < add) > 0) print x; print l[i] } }' \
                "$vgfile" >"$vgfile.new"
        # --force: lvm2 cannot check that no thin LV is active without device-mapper.
        _qt_lvm "$lvm" vgcfgrestore --force -f "$vgfile.new" vgt >/dev/null
        _qt_lvm "$lvm" lvs -a --noheadings -o lv_name,segtype vgt | awk '$1 == "thin1" && $2 == "thin" { ok = 1 } END { exit !ok }' ||
                qt_fail "vgcfgrestore did not make the thin LV"

        local toff tsize moff msize
        _qt_lv_range "$lvm" vgt/pool_tdata toff tsize
        _qt_lv_range "$lvm" vgt/pool_tmeta moff msize
        _qt_random_fill "$raw" "$toff" "$tsize"
        _qt_random_fill "$raw" "$moff" "$msize"

        _qt_lv_range "$lvm" vgt/plain off size
        pe_start=$(_qt_lvm "$lvm" pvs --noheadings --units b --nosuffix -o pe_start | tr -d ' ')
        _qt_lvm_sandbox_end "$lvm"
        _qt_populate_lv "$frag" "$raw" vgt/plain "$off" "$size" ext4 192 4K 1M 9M

        _qt_preserve "$pfrag" "$raw" "protective MBR and GPT" 0 "$MiB"
        _qt_preserve "$pfrag" "$raw" "p1 PV label and metadata" "${pv% *}" "$pe_start"
        _qt_preserve "$pfrag" "$raw" "vgt/pool data (pool_tdata)" "$toff" "$tsize"
        _qt_preserve "$pfrag" "$raw" "vgt/pool metadata (pool_tmeta)" "$moff" "$msize"
        _qt_preserve "$pfrag" "$raw" "backup GPT" "$gpt2" $((GiB - gpt2))
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" gpt "$frag" "$pfrag" "$zfrag"
}

# The thin pool's LVs in lvm2 2.03's metadata text, their extents from FIRST on: pmspare (1),
# pool_tmeta (1), pool_tdata (32 = 128 MiB); thin1 512 MiB virtual.
_qt_thin_lvs_text() { # FIRST_FREE_EXTENT
        local f=$1
        _qt_lv_text pool '"READ", "WRITE", "VISIBLE"' 32 \
                $'type = "thin-pool"\nmetadata = "pool_tmeta"\npool = "pool_tdata"\ntransaction_id = 1\nchunk_size = 128\ndiscards = "passdown"\nzero_new_blocks = 1'
        _qt_lv_text thin1 '"READ", "WRITE", "VISIBLE"' 128 \
                $'type = "thin"\nthin_pool = "pool"\ntransaction_id = 0\ndevice_id = 1'
        _qt_lv_text lvol0_pmspare '"READ", "WRITE"' 1 \
                "$(printf 'type = "striped"\nstripe_count = 1\nstripes = [\n"pv0", %d\n]' "$f")"
        _qt_lv_text pool_tmeta '"READ", "WRITE"' 1 \
                "$(printf 'type = "striped"\nstripe_count = 1\nstripes = [\n"pv0", %d\n]' $((f + 1)))"
        _qt_lv_text pool_tdata '"READ", "WRITE"' 32 \
                "$(printf 'type = "striped"\nstripe_count = 1\nstripes = [\n"pv0", %d\n]' $((f + 2)))"
}

# One LV section: NAME STATUS EXTENT_COUNT SEGMENT_BODY; its id made from its name (32 chars).
_qt_lv_text() {
        local id
        id=$(printf '%s' "qtrimtestlv-$1" | sha256sum | tr -dc 'a-zA-Z0-9' | head -c 32)
        id="${id:0:6}-${id:6:4}-${id:10:4}-${id:14:4}-${id:18:4}-${id:22:4}-${id:26:6}"
        printf '\n%s {\nid = "%s"\nstatus = [%s]\nflags = []\nsegment_count = 1\n\nsegment1 {\nstart_extent = 0\nextent_count = %d\n\n%s\n}\n}\n' \
                "$1" "$id" "$2" "$3" "$4"
}

# ---- checking a shrink's report (tests/integration/layouts.sh, windows.sh) ---------------
# Failed checks are collected in the caller's failures array; the test fails at its end with all
# of them listed, so one run shows every volume that went wrong.

# volume_state JSON NAME: "STATE MESSAGE" of volume NAME in a qtrimctl --json report.
volume_state() {
        jq -r --arg n "$2" '.[0].filesystems[] | select(.name == $n) | "\(.state) \(.message)"' "$1"
}
expect_volume() { # JSON NAME STATE-REGEX [MESSAGE-REGEX]
        local got
        got=$(volume_state "$1" "$2")
        if [[ $got =~ ^$3( |$) && $got =~ ${4:-} ]]; then
                qt_ok "$2: $got"
        else
                failures+=("$(basename -- "$1" .json): $2 is '${got:-missing}', expected $3 ${4:-}")
        fi
}

# shrink_json IMG [OPTION...]: qtrimctl shrink --json IMG into $QT_WORK/NAME.json, its volumes
# shown; the job must end done.
shrink_json() {
        local json
        json=$QT_WORK/$(basename -- "$1" .qcow2).json
        qt_qtrimctl shrink --json "${@:2}" "$1" >"$json" || qt_fail "qtrimctl shrink $1 failed: $(cat "$json")"
        jq -r '.[0].filesystems[] | "    | \(.name) \(.fstype) \(.method) \(.state) \(.trimmed) \(.message)"' "$json"
        [[ $(jq -r '.[0].result' "$json") == "done" ]] || qt_fail "$1: $(jq -c '.[0]' "$json")"
}

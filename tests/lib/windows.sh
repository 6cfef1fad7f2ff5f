# shellcheck shell=bash
# Builders of Windows-shaped disks: NTFS and FAT (12/16/32) volumes in MBR and GPT disks and in
# LVs, some in a state qtrim must refuse (Windows hibernated, NTFS and FAT not cleanly unmounted,
# FAT copies that differ) or hostile (boot sectors that do not add up). Source it after
# layouts.sh. Each builder writes a manifest in layouts.sh's format, computed with sfdisk, lvm2,
# the filesystems' own tools and the builder's host copies of the kept files, never with qtrim.
# Their filesystems[] entries have fstype "ntfs" or "vfat" (as blkid names them) and one more key:
#
#   deleted_bytes: bytes of random data written to the volume and deleted, less the 2 MiB of
#       keep/late.bin written into the freed space afterwards: what is left of the deleted data
#       in free clusters at most, which a trim gives back (the tests ask for 80 % of it).
#
# Files go in through libntfs-3g and mtools, never a kernel driver (this host has neither):
# the bulk with ntfscp and mcopy (ntfscp writes 100 MiB in 0.35 s where ntfs-3g's FUSE mount
# took 3 s here), then one ntfs-3g mount per NTFS volume moves the kept files in place, deletes
# the junk, writes a file into the freed space and says what is used (statfs). ntfs-3g runs in
# the foreground of a background job (-o no_detach), so its pid is ours to wait for after the
# unmount: its loop device is detached only once it is gone.
#
# Needs: ntfs-3g (ntfs-3g, mkntfs, ntfscp), mtools, dosfstools, lvm2, util-linux, qemu-utils, jq.

# shellcheck source=tests/lib/layouts.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/layouts.sh"
# shellcheck source=tests/lib/hostile.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/hostile.sh"

# GPT partition types of a Windows install.
QT_GPT_MSR=E3C9E316-0B5C-4DB8-817D-F92DF00215AE
QT_GPT_BASIC_DATA=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7

# mtools on a partition of a disk image: no check of the geometry a floppy would have.
# shellcheck disable=SC2031 # layouts.sh sets it in a subshell of its own; this one is for all
export MTOOLS_SKIP_CHECK=1

# ---- ntfs-3g mounts -----------------------------------------------------------------------

# _qt_ntfs3g_mount PIDVAR DEV MNT [OPTIONS]: ntfs-3g DEV on MNT; PIDVAR is its pid. Returns once
# MNT is mounted, fails if ntfs-3g exits first. Registered for cleanup (unmount, then the pid).
_qt_ntfs3g_mount() {
        local -n _qt_pid=$1
        local dev=$2 mnt=$3 opts=${4:-rw} i
        mkdir -p -- "$mnt"
        ntfs-3g -o "no_detach,$opts" "$dev" "$mnt" >"$mnt.log" 2>&1 &
        _qt_pid=$!
        qt_defer _qt_ntfs3g_stop "$_qt_pid" "$mnt"
        for ((i = 0; i < 200; i++)); do
                mountpoint -q -- "$mnt" && return 0
                if ! kill -0 "$_qt_pid" 2>/dev/null; then
                        sed 's/^/    ntfs-3g: /' "$mnt.log" >&2
                        qt_fail "ntfs-3g $dev exited before mounting it"
                fi
                sleep 0.05
        done
        qt_fail "ntfs-3g $dev did not mount in 10 s"
}

# _qt_ntfs3g_umount PID MNT: unmount and wait for ntfs-3g to have written everything and exited
# (status 0), so its device can go.
_qt_ntfs3g_umount() {
        local pid=$1 mnt=$2 i rc=0
        for ((i = 0; i < 50; i++)); do
                fusermount -u -- "$mnt" 2>/dev/null && break
                sleep 0.1
        done
        ((i < 50)) || qt_fail "cannot unmount ntfs-3g from $mnt"
        wait "$pid" || rc=$?
        qt_undefer _qt_ntfs3g_stop "$pid" "$mnt"
        ((rc == 0)) || {
                sed 's/^/    ntfs-3g: /' "$mnt.log" >&2
                qt_fail "ntfs-3g on $mnt exited with $rc"
        }
        rm -f -- "$mnt.log"
        rmdir -- "$mnt"
}

# For cleanup: lazy unmount, then TERM and at most 10 s for the process; never fails.
_qt_ntfs3g_stop() { # PID MNT
        local i
        fusermount -u -z -- "$2" 2>/dev/null || true
        kill -TERM "$1" 2>/dev/null || return 0
        for ((i = 0; i < 100; i++)); do
                kill -0 "$1" 2>/dev/null || return 0
                sleep 0.1
        done
        kill -KILL "$1" 2>/dev/null || true
}

# ---- filling volumes ----------------------------------------------------------------------

# _qt_keep_files DIR SIZE...: the kept files' host copies, DIR/keep/kN.bin (random) and a note;
# DIR/keep/late.bin is made too, for the builder to write once the junk is gone.
_qt_keep_files() {
        local dir=$1 k=0 size
        shift
        rm -rf -- "$dir"
        mkdir -p -- "$dir/keep/sub/dir"
        for size in "$@"; do
                head -c "$size" /dev/urandom >"$dir/keep/k$k.bin"
                k=$((k + 1))
        done
        printf 'qtrim test file on %s\r\n' "${dir##*/}" >"$dir/keep/sub/dir/note.txt"
        head -c 2M /dev/urandom >"$dir/keep/late.bin"
}

# _qt_junk_file PATH MIB: MIB MiB of random bytes (one source of junk, reused: nothing in the
# image dedups, and each volume's junk only has to be allocated and deleted).
_qt_junk_file() {
        [[ -f $1 && $(stat -c %s -- "$1") == $(($2 * MiB)) ]] && return 0
        head -c "$(($2 * MiB))" /dev/urandom >"$1"
}

# _qt_win_entry FRAG NAME FSTYPE OFFSET SIZE USED DELETED DIR: a filesystems[] entry, the kept
# files' sha256 from their host copies under DIR (paths relative to DIR).
_qt_win_entry() {
        local frag=$1 dir=$8
        (cd -- "$dir" && find keep -type f -print0 | sort -z | xargs -0 sha256sum) >"$dir.sums"
        (cd -- "$dir" && find keep -type f -printf '%s %p\n' | sort -k2) >"$dir.sizes"
        jq -n -c --arg name "$2" --arg fstype "$3" --argjson offset "$4" --argjson size "$5" \
                --argjson used "$6" --argjson deleted "$7" \
                --rawfile sums "$dir.sums" --rawfile sizes "$dir.sizes" '
                ($sizes | split("\n") | map(select(length > 0) | split(" ") | {(.[1]): (.[0] | tonumber)}) | add) as $sz
                | { name: $name, fstype: $fstype, offset: $offset, size: $size, used_bytes: $used,
                    deleted_bytes: $deleted,
                    files: ($sums | split("\n") | map(select(length > 0) | capture("^(?<sha256>[0-9a-f]{64})  (?<path>.*)$")
                                                      | {path, size: $sz[.path], sha256})) }' >>"$frag"
        rm -rf -- "$dir" "$dir.sums" "$dir.sizes"
}

# _qt_populate_ntfs FRAG RAW NAME OFFSET SIZE LABEL HIDDEN JUNK_MIB KEEP_SIZE...
# mkntfs on RAW[OFFSET, +SIZE) (HIDDEN: the sectors before it, as Windows' boot code reads them),
# JUNK_MIB MiB of junk in 16 MiB files with the kept files between them (ntfscp), then through
# ntfs-3g: kept files moved under keep/, junk deleted, keep/late.bin written into the freed space.
# Appends the manifest entry to FRAG.
_qt_populate_ntfs() {
        local frag=$1 raw=$2 name=$3 off=$4 size=$5 label=$6 hidden=$7 junk_mib=$8
        shift 8
        local dev dir=$QT_SCRATCH/files-$name mnt=$QT_SCRATCH/mnt-$name junk=$QT_SCRATCH/junk16
        local i k=0 nk=$# n_junk=$(((junk_mib + 15) / 16)) last pid used
        _qt_keep_files "$dir" "$@"
        _qt_junk_file "$junk" 16
        qt_loop_attach dev "$raw" "$off" "$size"
        mkntfs -Q -q -F -p "$hidden" -H 255 -S 63 -L "$label" "$dev" >/dev/null ||
                qt_fail "mkntfs on $name failed"
        for ((i = 0; i < n_junk; i++)); do
                last=$((junk_mib - 16 * i))
                if ((last < 16)); then
                        head -c $((last * MiB)) -- "$junk" >"$junk.part"
                        ntfscp -q "$dev" "$junk.part" "j$i.bin" || qt_fail "ntfscp to $name failed"
                        rm -f -- "$junk.part"
                else
                        ntfscp -q "$dev" "$junk" "j$i.bin" || qt_fail "ntfscp to $name failed"
                fi
                if ((k < nk)); then
                        ntfscp -q "$dev" "$dir/keep/k$k.bin" "k$k.bin" || qt_fail "ntfscp to $name failed"
                        k=$((k + 1))
                fi
        done
        for (( ; k < nk; k++)); do
                ntfscp -q "$dev" "$dir/keep/k$k.bin" "k$k.bin" || qt_fail "ntfscp to $name failed"
        done

        _qt_ntfs3g_mount pid "$dev" "$mnt"
        (
                set -e
                mkdir -p -- "$mnt/keep/sub/dir"
                for ((k = 0; k < nk; k++)); do mv -- "$mnt/k$k.bin" "$mnt/keep/"; done
                cp -- "$dir/keep/sub/dir/note.txt" "$mnt/keep/sub/dir/"
                rm -f -- "$mnt"/j*.bin
                sync -f "$mnt"
                cp -- "$dir/keep/late.bin" "$mnt/keep/"
                sync -f "$mnt"
        ) || qt_fail "cannot arrange the files of $name through ntfs-3g"
        used=$(stat -f -c '%b %f %S' -- "$mnt" | awk '{ printf "%d", ($1 - $2) * $3 }')
        _qt_ntfs3g_umount "$pid" "$mnt"
        qt_loop_detach "$dev"
        _qt_win_entry "$frag" "$name" ntfs "$off" "$size" "$used" $(((junk_mib - 2) * MiB)) "$dir"
}

# _qt_ntfs_hibernate RAW OFFSET SIZE NAME MIB: a hiberfil.sys of MIB MiB at the root of the NTFS
# at RAW[OFFSET, +SIZE), its first bytes "HIBR" (the rest random): what Windows leaves when it
# hibernates or shuts down with Fast Startup. ntfs-3g refuses it read-write from then on (and
# mounts it read-only, exit 0): its log must say so.
_qt_ntfs_hibernate() {
        local raw=$1 off=$2 size=$3 name=$4 mib=$5 dev pid mnt=$QT_SCRATCH/mnt-$4
        qt_loop_attach dev "$raw" "$off" "$size"
        _qt_ntfs3g_mount pid "$dev" "$mnt"
        { printf 'HIBR' && head -c $((mib * MiB - 4)) /dev/urandom; } >"$mnt/hiberfil.sys" ||
                qt_fail "cannot write hiberfil.sys on $name"
        _qt_ntfs3g_umount "$pid" "$mnt"
        _qt_ntfs3g_mount pid "$dev" "$mnt"
        grep -q 'hibernated' "$mnt.log" || qt_fail "ntfs-3g does not see $name as hibernated"
        _qt_ntfs3g_umount "$pid" "$mnt"
        qt_loop_detach "$dev"
}

# _qt_ntfs_geometry RAW OFFSET: "CLUSTER_BYTES MFT_RECORD_BYTES MFT_LCN MFTMIRR_LCN SECTORS
# SECTOR_BYTES" from the NTFS boot sector at OFFSET.
_qt_ntfs_geometry() {
        local raw=$1 off=$2 bps spc cpr rec
        [[ $(dd if="$raw" iflag=skip_bytes,count_bytes skip=$((off + 3)) count=8 status=none) == "NTFS    " ]] ||
                qt_fail "no NTFS boot sector at byte $off"
        bps=$(hx_get_le "$raw" $((off + 0x0b)) 2) spc=$(hx_get_le "$raw" $((off + 0x0d)) 1)
        cpr=$(hx_get_le "$raw" $((off + 0x40)) 1)
        # Clusters per MFT record; negative: the record is 2^-n bytes.
        if ((cpr >= 128)); then rec=$((1 << (256 - cpr))); else rec=$((cpr * bps * spc)); fi
        printf '%d %d %d %d %d %d\n' $((bps * spc)) "$rec" "$(hx_get_le "$raw" $((off + 0x30)) 8)" \
                "$(hx_get_le "$raw" $((off + 0x38)) 8)" "$(hx_get_le "$raw" $((off + 0x28)) 8)" "$bps"
}

# _qt_ntfs_set_dirty RAW OFFSET: sets VOLUME_IS_DIRTY (0x0001) in $Volume's (MFT record 3)
# $VOLUME_INFORMATION, in $MFT and in $MFTMirr (ntfs-3g compares them), as Windows leaves a
# volume it did not close. No tool writes this flag, so the record is edited in place; the flags
# must not sit in a sector's last two bytes (those hold the update sequence number, the real
# bytes are in the update sequence array): checked, never met with mkntfs's layout. libntfs-3g's
# tools (ntfsinfo, ntfscat) then refuse the volume without --force; ntfs-3g 2022.10.3 itself
# mounts it read-write all the same ("Dirty volume mount was forced"): not a test of the flag.
_qt_ntfs_set_dirty() {
        local raw=$1 off=$2 cluster rec mft mirr _s _b base a type len voff flags
        read -r cluster rec mft mirr _s _b < <(_qt_ntfs_geometry "$raw" "$off")
        for base in "$mft" "$mirr"; do
                a=$((off + base * cluster + 3 * rec))
                [[ $(dd if="$raw" iflag=skip_bytes,count_bytes skip="$a" count=4 status=none) == FILE ]] ||
                        qt_fail "no MFT record 3 at byte $a"
                a=$((a + $(hx_get_le "$raw" $((a + 0x14)) 2)))
                while :; do
                        type=$(hx_get_le "$raw" "$a" 4) len=$(hx_get_le "$raw" $((a + 4)) 4)
                        ((type != 0xffffffff && len > 0)) || qt_fail "\$Volume has no \$VOLUME_INFORMATION"
                        ((type == 0x70)) && break
                        a=$((a + len))
                done
                voff=$(hx_get_le "$raw" $((a + 0x14)) 2)
                flags=$((a + voff + 0x0a))
                (((flags % 512) < 510)) || qt_fail "\$Volume's flags sit under an update sequence number"
                hx_put_le "$raw" "$flags" 2 $(($(hx_get_le "$raw" "$flags" 2) | 1))
        done
}

# _qt_fat_geometry RAW OFFSET: "SECTOR_BYTES RESERVED_SECTORS FATS SECTORS_PER_FAT
# ROOT_ENTRIES SECTORS_PER_CLUSTER TOTAL_SECTORS" from the FAT boot sector at OFFSET.
_qt_fat_geometry() {
        local raw=$1 off=$2 fatsz total
        fatsz=$(hx_get_le "$raw" $((off + 0x16)) 2)
        ((fatsz != 0)) || fatsz=$(hx_get_le "$raw" $((off + 0x24)) 4)
        total=$(hx_get_le "$raw" $((off + 0x13)) 2)
        ((total != 0)) || total=$(hx_get_le "$raw" $((off + 0x20)) 4)
        printf '%d %d %d %d %d %d %d\n' "$(hx_get_le "$raw" $((off + 0x0b)) 2)" \
                "$(hx_get_le "$raw" $((off + 0x0e)) 2)" "$(hx_get_le "$raw" $((off + 0x10)) 1)" \
                "$fatsz" "$(hx_get_le "$raw" $((off + 0x11)) 2)" "$(hx_get_le "$raw" $((off + 0x0d)) 1)" "$total"
}

# Bytes of a FAT volume before its data area: boot sector, reserved sectors, FATs, FAT12/16 root
# directory. qtrim reads them and never writes them.
_qt_fat_meta_bytes() { # RAW OFFSET
        local bps res nfats fatsz roots _spc _t
        read -r bps res nfats fatsz roots _spc _t < <(_qt_fat_geometry "$1" "$2")
        printf '%d\n' $(((res + nfats * fatsz + (roots * 32 + bps - 1) / bps) * bps))
}

# _qt_populate_fat FRAG RAW NAME OFFSET SIZE BITS LABEL HIDDEN JUNK_MIB KEEP_SIZE...
# mkfs.vfat -F BITS on RAW[OFFSET, +SIZE), then with mtools: JUNK_MIB MiB of junk in 16 MiB files
# (the last one shorter) with the kept files between them, the junk deleted, keep/late.bin
# written into the freed space. Appends the manifest entry to FRAG.
_qt_populate_fat() {
        local frag=$1 raw=$2 name=$3 off=$4 size=$5 bits=$6 label=$7 hidden=$8 junk_mib=$9
        shift 9
        local dev dir=$QT_SCRATCH/files-$name junk=$QT_SCRATCH/junk16 i=$raw@@$off
        local j k=0 nk=$# n_junk=$(((junk_mib + 15) / 16)) last free
        _qt_keep_files "$dir" "$@"
        _qt_junk_file "$junk" 16
        qt_loop_attach dev "$raw" "$off" "$size"
        mkfs.vfat -F "$bits" -n "$label" -h "$hidden" -- "$dev" >/dev/null || qt_fail "mkfs.vfat on $name failed"
        qt_loop_detach "$dev"
        mmd -i "$i" ::keep ::keep/sub ::keep/sub/dir || qt_fail "mmd on $name failed"
        for ((j = 0; j < n_junk; j++)); do
                last=$((junk_mib - 16 * j))
                if ((last < 16)); then
                        head -c $((last * MiB)) -- "$junk" >"$junk.part"
                        mcopy -i "$i" "$junk.part" "::j$j.bin" || qt_fail "mcopy to $name failed"
                        rm -f -- "$junk.part"
                else
                        mcopy -i "$i" "$junk" "::j$j.bin" || qt_fail "mcopy to $name failed"
                fi
                if ((k < nk)); then
                        mcopy -i "$i" "$dir/keep/k$k.bin" ::keep/ || qt_fail "mcopy to $name failed"
                        k=$((k + 1))
                fi
        done
        for (( ; k < nk; k++)); do
                mcopy -i "$i" "$dir/keep/k$k.bin" ::keep/ || qt_fail "mcopy to $name failed"
        done
        mcopy -i "$i" "$dir/keep/sub/dir/note.txt" ::keep/sub/dir/ || qt_fail "mcopy to $name failed"
        ((n_junk == 0)) || mdel -i "$i" '::j*.bin' || qt_fail "mdel on $name failed"
        mcopy -i "$i" "$dir/keep/late.bin" ::keep/ || qt_fail "mcopy to $name failed"
        free=$(mdir -i "$i" :: | awk '/bytes free/ { gsub(/[^0-9]/, ""); print }')
        [[ -n $free ]] || qt_fail "mdir cannot say what is free on $name"
        _qt_win_entry "$frag" "$name" vfat "$off" "$size" $((size - free)) $(((junk_mib - 2) * MiB)) "$dir"
}

# _qt_fat_set_dirty RAW OFFSET: the volume is marked as not cleanly unmounted the two ways
# FAT16 has: the boot sector's dirty bit (byte 0x25, bit 0: what Linux and fsck.fat use) and the
# clean-shutdown bit (15) of FAT entry 1 cleared, in every FAT copy alike.
_qt_fat_set_dirty() {
        local raw=$1 off=$2 bps res nfats fatsz _r _s _t f
        read -r bps res nfats fatsz _r _s _t < <(_qt_fat_geometry "$raw" "$off")
        hx_put_le "$raw" $((off + 0x25)) 1 $(($(hx_get_le "$raw" $((off + 0x25)) 1) | 1))
        for ((f = 0; f < nfats; f++)); do
                local e=$((off + (res + f * fatsz) * bps + 2))
                hx_put_le "$raw" "$e" 2 $(($(hx_get_le "$raw" "$e" 2) & 0x7fff))
        done
}

# _qt_fat16_copies_differ RAW OFFSET: FAT #2 says something else than FAT #1 about the volume's
# last cluster, which is free (its entry 0 in both, checked): the volume is otherwise fine.
_qt_fat16_copies_differ() {
        local raw=$1 off=$2 bps res nfats fatsz roots spc total clusters e
        read -r bps res nfats fatsz roots spc total < <(_qt_fat_geometry "$raw" "$off")
        ((nfats == 2)) || qt_fail "the FAT at $off has $nfats copies"
        clusters=$(((total - res - nfats * fatsz - (roots * 32 + bps - 1) / bps) / spc))
        e=$((off + res * bps + (clusters + 1) * 2))
        (($(hx_get_le "$raw" "$e" 2) == 0 && $(hx_get_le "$raw" $((e + fatsz * bps)) 2) == 0)) ||
                qt_fail "the last cluster of the FAT at $off is not free"
        hx_put_le "$raw" $((e + fatsz * bps)) 2 0x00ff
}

# _qt_check_damage RAW OFFSET SIZE REGEX COMMAND...: COMMAND on a read-only loop device over the
# range (appended as its last argument) must say REGEX: the builder made the damage it meant to,
# as another tool than qtrim sees it.
_qt_check_damage() {
        local raw=$1 off=$2 size=$3 re=$4 dev out
        shift 4
        qt_loop_attach dev "$raw" "$off" "$size" ro
        out=$("$@" "$dev" 2>&1 || true)
        qt_loop_detach "$dev"
        [[ $out =~ $re ]] || {
                printf '%s\n' "$out" | sed 's/^/    | /' >&2
                qt_fail "$* does not say /$re/ of the volume at $off"
        }
}

# _qt_preserve_ntfs_boot PFRAG RAW WHAT OFFSET SIZE: the NTFS boot file's first 8 KiB and the
# backup boot sector (the partition's last sector, past the volume), both left as they were.
_qt_preserve_ntfs_boot() {
        _qt_preserve "$1" "$2" "$3 NTFS \$Boot" "$4" 8192
        _qt_preserve "$1" "$2" "$3 NTFS backup boot sector" $(($4 + $5 - 512)) 512
}

_qt_preserve_fat_meta() { # PFRAG RAW WHAT OFFSET
        _qt_preserve "$1" "$2" "$3 FAT boot sector, reserved sectors and FATs" "$4" "$(_qt_fat_meta_bytes "$2" "$4")"
}

# ---- builders -----------------------------------------------------------------------------

# make_windows_mbr IMG: qcow2, 1.5 GiB virtual, sparse, MBR as Windows 7-10 install on BIOS:
#   [0, 1 MiB)   MBR                                                    preserved
#   p1  100 MiB  "System Reserved" NTFS (boot flag, type 7), 48 MiB deleted   filesystems "p1"
#   p2  rest     "Windows" NTFS (C:), 288 MiB deleted                          filesystems "p2"
#   each NTFS's $Boot and backup boot sector                                    preserved
make_windows_mbr() {
        local img=$1 raw frag pfrag zfrag p1 p2
        _qt_layout_files "$img"
        truncate -s 1536M -- "$raw"
        printf 'label: dos\nstart=1MiB, size=100MiB, type=7, bootable\ntype=7\n' | sfdisk -q -- "$raw" >/dev/null
        p1=$(_qt_part_geometry "$raw" 1) p2=$(_qt_part_geometry "$raw" 2)
        _qt_populate_ntfs "$frag" "$raw" p1 "${p1% *}" "${p1#* }" "System Reserved" $((${p1% *} / 512)) 48 400K 1M
        _qt_populate_ntfs "$frag" "$raw" p2 "${p2% *}" "${p2#* }" Windows $((${p2% *} / 512)) 288 4K 1M 7M 24M
        _qt_preserve "$pfrag" "$raw" "MBR" 0 "$MiB"
        _qt_preserve_ntfs_boot "$pfrag" "$raw" p1 "${p1% *}" "${p1#* }"
        _qt_preserve_ntfs_boot "$pfrag" "$raw" p2 "${p2% *}" "${p2#* }"
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" dos "$frag" "$pfrag" "$zfrag"
}

# make_windows_gpt IMG: qcow2, 1.5 GiB virtual, sparse, GPT as Windows 10/11 installs on UEFI:
#   p1  260 MiB  ESP, FAT32 (512-byte clusters), EFI/... files, 96 MiB deleted   filesystems "p1"
#                its boot sector, reserved sectors and FATs                       preserved
#   p2   16 MiB  Microsoft reserved partition (MSR), random bytes                 preserved
#   p3  rest     C: NTFS, 256 MiB deleted; $Boot and backup boot sector           filesystems "p3"
#   protective MBR and GPT, backup GPT                                            preserved
make_windows_gpt() {
        local img=$1 raw frag pfrag zfrag p1 p2 p3 gpt2
        _qt_layout_files "$img"
        truncate -s 1536M -- "$raw"
        printf 'label: gpt\nsize=260MiB, type=U, name="EFI system partition"\nsize=16MiB, type=%s, name="Microsoft reserved partition"\ntype=%s, name="Basic data partition"\n' \
                "$QT_GPT_MSR" "$QT_GPT_BASIC_DATA" | sfdisk -q -- "$raw" >/dev/null
        p1=$(_qt_part_geometry "$raw" 1) p2=$(_qt_part_geometry "$raw" 2) p3=$(_qt_part_geometry "$raw" 3)
        gpt2=$(_qt_gpt_backup_offset "$raw")
        _qt_populate_fat "$frag" "$raw" p1 "${p1% *}" "${p1#* }" 32 SYSTEM $((${p1% *} / 512)) 96 1500K 300K 12K
        _qt_random_fill "$raw" "${p2% *}" "${p2#* }"
        _qt_populate_ntfs "$frag" "$raw" p3 "${p3% *}" "${p3#* }" Windows $((${p3% *} / 512)) 256 4K 2M 9M 20M
        _qt_preserve "$pfrag" "$raw" "protective MBR and GPT" 0 "$MiB"
        _qt_preserve_fat_meta "$pfrag" "$raw" p1 "${p1% *}"
        _qt_preserve "$pfrag" "$raw" "p2 Microsoft reserved partition" "${p2% *}" "${p2#* }"
        _qt_preserve_ntfs_boot "$pfrag" "$raw" p3 "${p3% *}" "${p3#* }"
        _qt_preserve "$pfrag" "$raw" "backup GPT" "$gpt2" $((1536 * MiB - gpt2))
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" gpt "$frag" "$pfrag" "$zfrag"
}

# make_ntfs_hibernated IMG: qcow2, 768 MiB virtual, sparse, MBR:
#   p1  100 MiB  "System Reserved" NTFS, 48 MiB deleted                  filesystems "p1"
#   p2  352 MiB  C: NTFS, 96 MiB deleted, hiberfil.sys (8 MiB, "HIBR")   filesystems "p2", preserved whole
#   p3  rest     D: NTFS, 96 MiB deleted, VOLUME_IS_DIRTY set            filesystems "p3", preserved whole
# p2 and p3 have their entries (kept files, deleted_bytes) but must not be trimmed at all.
make_ntfs_hibernated() {
        local img=$1 raw frag pfrag zfrag p1 p2 p3
        _qt_layout_files "$img"
        truncate -s 768M -- "$raw"
        printf 'label: dos\nstart=1MiB, size=100MiB, type=7, bootable\nsize=352MiB, type=7\ntype=7\n' | sfdisk -q -- "$raw" >/dev/null
        p1=$(_qt_part_geometry "$raw" 1) p2=$(_qt_part_geometry "$raw" 2) p3=$(_qt_part_geometry "$raw" 3)
        _qt_populate_ntfs "$frag" "$raw" p1 "${p1% *}" "${p1#* }" "System Reserved" $((${p1% *} / 512)) 48 400K 1M
        _qt_populate_ntfs "$frag" "$raw" p2 "${p2% *}" "${p2#* }" Windows $((${p2% *} / 512)) 96 4K 1M 7M
        _qt_ntfs_hibernate "$raw" "${p2% *}" "${p2#* }" p2 8
        _qt_populate_ntfs "$frag" "$raw" p3 "${p3% *}" "${p3#* }" Data $((${p3% *} / 512)) 96 8K 3M
        _qt_ntfs_set_dirty "$raw" "${p3% *}"
        _qt_check_damage "$raw" "${p3% *}" "${p3#* }" 'Volume Flags: 0x0001 DIRTY' ntfsinfo -f -m
        _qt_preserve "$pfrag" "$raw" "MBR" 0 "$MiB"
        _qt_preserve_ntfs_boot "$pfrag" "$raw" p1 "${p1% *}" "${p1#* }"
        _qt_preserve "$pfrag" "$raw" "p2 hibernated NTFS" "${p2% *}" "${p2#* }"
        _qt_preserve "$pfrag" "$raw" "p3 dirty NTFS" "${p3% *}" "${p3#* }"
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" dos "$frag" "$pfrag" "$zfrag"
}

# make_fat_whole_disk IMG: qcow2, 200 MiB virtual, no partition table: one FAT32 over the whole
# disk (a data disk formatted without partitions), 96 MiB of junk deleted.     filesystems "disk"
make_fat_whole_disk() {
        local img=$1 raw frag pfrag zfrag
        _qt_layout_files "$img"
        truncate -s 200M -- "$raw"
        _qt_populate_fat "$frag" "$raw" disk 0 $((200 * MiB)) 32 DATA 0 96 4K 3M
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" none "$frag" "$pfrag" "$zfrag"
}

# make_fat_variants IMG: qcow2, 512 MiB virtual, sparse, MBR:
#   p1    8 MiB  FAT12 (type 1), 5 MiB deleted                           filesystems "p1"
#   p2   64 MiB  FAT16 (type 6), 40 MiB deleted                          filesystems "p2"
#   p3  300 MiB  FAT32 (type c), 160 MiB deleted                         filesystems "p3"
#   p4  extended: EBRs                                                   preserved
#     p5  48 MiB FAT16, 24 MiB deleted, dirty bit set                    filesystems "p5", preserved whole
#     p6  rest   FAT16, 24 MiB deleted, FAT #2 differs on a free cluster filesystems "p6", preserved whole
#   each healthy FAT's boot sector, reserved sectors and FATs            preserved
make_fat_variants() {
        local img=$1 raw frag pfrag zfrag p n ebrs e
        _qt_layout_files "$img"
        truncate -s 512M -- "$raw"
        printf 'label: dos\nstart=1MiB, size=8MiB, type=1\nsize=64MiB, type=6\nsize=300MiB, type=c\ntype=5\nsize=48MiB, type=6\ntype=6\n' |
                sfdisk -q -- "$raw" >/dev/null
        local -A bits=([1]=12 [2]=16 [3]=32 [5]=16 [6]=16) junk=([1]=5 [2]=40 [3]=160 [5]=24 [6]=24)
        local -A keep=([1]="2K 700K" [2]="4K 1M 6M" [3]="4K 3M 17M" [5]="16K 2M" [6]="16K 2M")
        for n in 1 2 3 5 6; do
                p=$(_qt_part_geometry "$raw" "$n")
                # shellcheck disable=SC2086 # the kept sizes are words
                _qt_populate_fat "$frag" "$raw" "p$n" "${p% *}" "${p#* }" "${bits[$n]}" "FAT${bits[$n]}-P$n" \
                        $((${p% *} / 512)) "${junk[$n]}" ${keep[$n]}
        done
        p=$(_qt_part_geometry "$raw" 5)
        _qt_fat_set_dirty "$raw" "${p% *}"
        _qt_check_damage "$raw" "${p% *}" "${p#* }" 'Dirty bit is set' fsck.vfat -n
        p=$(_qt_part_geometry "$raw" 6)
        _qt_fat16_copies_differ "$raw" "${p% *}"
        _qt_check_damage "$raw" "${p% *}" "${p#* }" 'FATs differ' fsck.vfat -n

        _qt_preserve "$pfrag" "$raw" "MBR" 0 "$MiB"
        mapfile -t ebrs < <(_qt_ebr_offsets "$raw")
        for e in "${ebrs[@]}"; do _qt_preserve "$pfrag" "$raw" "EBR at $e" "$e" 512; done
        for n in 1 2 3; do
                p=$(_qt_part_geometry "$raw" "$n")
                _qt_preserve_fat_meta "$pfrag" "$raw" "p$n" "${p% *}"
        done
        p=$(_qt_part_geometry "$raw" 5)
        _qt_preserve "$pfrag" "$raw" "p5 FAT16 with its dirty bit set" "${p% *}" "${p#* }"
        p=$(_qt_part_geometry "$raw" 6)
        _qt_preserve "$pfrag" "$raw" "p6 FAT16 whose copies differ" "${p% *}" "${p#* }"
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" dos "$frag" "$pfrag" "$zfrag"
}

# make_ntfs_fat_in_lv IMG: qcow2, 1 GiB virtual, sparse, GPT, p1 an LVM PV, VG "vgwin" (4 MiB
# extents):
#   windows  400 MiB NTFS, 192 MiB deleted                              filesystems "vgwin/windows"
#   shared   320 MiB FAT32, 160 MiB deleted                             filesystems "vgwin/shared"
#   PV label and metadata, protective MBR and GPT, backup GPT           preserved
make_ntfs_fat_in_lv() {
        local img=$1 raw frag pfrag zfrag lvm pv gpt2 pe_start woff wsize soff ssize
        _qt_layout_files "$img"
        truncate -s 1G -- "$raw"
        printf 'label: gpt\ntype=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=pv0\n' | sfdisk -q -- "$raw" >/dev/null
        pv=$(_qt_part_geometry "$raw" 1) gpt2=$(_qt_gpt_backup_offset "$raw")
        _qt_lvm_sandbox lvm "$raw" 1
        _qt_lvm "$lvm" pvcreate -y "$(_qt_lvm_dev "$lvm" 1)" >/dev/null
        _qt_lvm "$lvm" vgcreate -s 4M vgwin "$(_qt_lvm_dev "$lvm" 1)" >/dev/null
        _qt_lvcreate "$lvm" vgwin windows 400M
        _qt_lvcreate "$lvm" vgwin shared 320M
        _qt_lv_range "$lvm" vgwin/windows woff wsize
        _qt_lv_range "$lvm" vgwin/shared soff ssize
        pe_start=$(_qt_lvm "$lvm" pvs --noheadings --units b --nosuffix -o pe_start | tr -d ' ')
        _qt_lvm_sandbox_end "$lvm"

        _qt_populate_ntfs "$frag.lv" "$raw" lv-windows "$woff" "$wsize" Windows 0 192 4K 1M 11M
        _qt_populate_fat "$frag.lv" "$raw" lv-shared "$soff" "$ssize" 32 SHARED 0 160 8K 2M 13M
        jq -c '(.name |= "vgwin/" + ltrimstr("lv-")) | .kind = "lv" | .lv = .name' "$frag.lv" >>"$frag"
        rm -f -- "$frag.lv"

        _qt_preserve "$pfrag" "$raw" "protective MBR and GPT" 0 "$MiB"
        _qt_preserve "$pfrag" "$raw" "p1 PV label and metadata" "${pv% *}" "$pe_start"
        _qt_preserve "$pfrag" "$raw" "backup GPT" "$gpt2" $((GiB - gpt2))
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" gpt "$frag" "$pfrag" "$zfrag"
}

# make_hostile_windows IMG: qcow2, 512 MiB virtual, sparse, MBR; volumes whose boot sectors do
# not add up, each filled and its junk deleted before the damage, each preserved whole:
#   p1  100 MiB  FAT32 whose total sectors (boot sector and its backup) claim 4x the partition
#   p2   64 MiB  FAT16 with 0 sectors per cluster
#   p3   96 MiB  NTFS whose $MFT (boot sector and backup) lies in the middle of the volume, over
#                1 MiB of random bytes with "FILE" where records 0 and 3 would start: blkid
#                still calls it NTFS, so its records reach libntfs-3g
#   p4  extended: EBRs                                                  preserved
#     p5  96 MiB NTFS whose total sectors (boot sector and backup) claim 4x the partition
#     p6  rest   FAT16, healthy, 48 MiB deleted                         filesystems "p6"
make_hostile_windows() {
        local img=$1 raw frag pfrag zfrag p1 p2 p3 p5 p6 e ebrs mft cluster rec _m _mi _s _b s backup
        _qt_layout_files "$img"
        truncate -s 512M -- "$raw"
        printf 'label: dos\nstart=1MiB, size=100MiB, type=c\nsize=64MiB, type=6\nsize=96MiB, type=7\ntype=5\nsize=96MiB, type=7\ntype=6\n' |
                sfdisk -q -- "$raw" >/dev/null
        p1=$(_qt_part_geometry "$raw" 1) p2=$(_qt_part_geometry "$raw" 2) p3=$(_qt_part_geometry "$raw" 3)
        p5=$(_qt_part_geometry "$raw" 5) p6=$(_qt_part_geometry "$raw" 6)
        # Their entries go to a fragment of their own: only p6 is in the manifest's filesystems.
        _qt_populate_fat "$frag.bad" "$raw" p1 "${p1% *}" "${p1#* }" 32 TOOMANY $((${p1% *} / 512)) 48 4K 1M
        _qt_populate_fat "$frag.bad" "$raw" p2 "${p2% *}" "${p2#* }" 16 SPC0 $((${p2% *} / 512)) 32 4K 1M
        _qt_populate_ntfs "$frag.bad" "$raw" p3 "${p3% *}" "${p3#* }" BadMFT $((${p3% *} / 512)) 48 4K 1M
        _qt_populate_ntfs "$frag.bad" "$raw" p5 "${p5% *}" "${p5#* }" TooBig $((${p5% *} / 512)) 48 4K 1M
        _qt_populate_fat "$frag" "$raw" p6 "${p6% *}" "${p6#* }" 16 HEALTHY $((${p6% *} / 512)) 48 4K 1M 5M
        rm -f -- "$frag.bad"

        s=$((${p1#* } * 4 / 512))
        backup=$(hx_get_le "$raw" $((${p1% *} + 0x32)) 2)
        hx_put_le "$raw" $((${p1% *} + 0x20)) 4 "$s"
        hx_put_le "$raw" $((${p1% *} + backup * 512 + 0x20)) 4 "$s"
        hx_put_le "$raw" $((${p2% *} + 0x0d)) 1 0
        read -r cluster rec _m _mi _s _b < <(_qt_ntfs_geometry "$raw" "${p3% *}")
        mft=$((${p3#* } / cluster / 2))
        e=$((${p3% *} + mft * cluster))
        _qt_random_fill "$raw" "$e" "$MiB"
        printf 'FILE' | dd of="$raw" oflag=seek_bytes seek="$e" conv=notrunc status=none
        printf 'FILE' | dd of="$raw" oflag=seek_bytes seek=$((e + 3 * rec)) conv=notrunc status=none
        hx_put_le "$raw" $((${p3% *} + 0x30)) 8 "$mft"
        hx_put_le "$raw" $((${p3% *} + ${p3#* } - 512 + 0x30)) 8 "$mft"
        _qt_check_damage "$raw" "${p3% *}" "${p3#* }" '^ntfs$' blkid -p -o value -s TYPE
        s=$((${p5#* } * 4 / 512))
        hx_put_le "$raw" $((${p5% *} + 0x28)) 8 "$s"
        hx_put_le "$raw" $((${p5% *} + ${p5#* } - 512 + 0x28)) 8 "$s"

        _qt_preserve "$pfrag" "$raw" "MBR" 0 "$MiB"
        mapfile -t ebrs < <(_qt_ebr_offsets "$raw")
        for e in "${ebrs[@]}"; do _qt_preserve "$pfrag" "$raw" "EBR at $e" "$e" 512; done
        _qt_preserve "$pfrag" "$raw" "p1 FAT32 claiming more clusters than it holds" "${p1% *}" "${p1#* }"
        _qt_preserve "$pfrag" "$raw" "p2 FAT16 with 0 sectors per cluster" "${p2% *}" "${p2#* }"
        _qt_preserve "$pfrag" "$raw" "p3 NTFS with its \$MFT on garbage" "${p3% *}" "${p3#* }"
        _qt_preserve "$pfrag" "$raw" "p5 NTFS claiming more sectors than it holds" "${p5% *}" "${p5#* }"
        _qt_preserve_fat_meta "$pfrag" "$raw" p6 "${p6% *}"
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_layout_manifest "$img" dos "$frag" "$pfrag" "$zfrag"
}

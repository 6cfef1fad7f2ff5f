# shellcheck shell=bash
# Builders of "dirty" disk images for qtrim's tests: guest filesystems on which a lot of random
# data was written and then deleted, so the image still holds (allocates) the deleted data — what
# qtrim is there to give back. Sizes are fixed, so every run builds the same layout; content is
# random so nothing compresses or deduplicates away.
#
# Each builder writes a JSON manifest ($(qt_manifest IMG)) describing what must survive:
#   { image, format, table ("gpt"|"dos"|"none"), virtual_size, guest_used_bytes,
#     filesystems: [ { name ("p1","p5","disk"), fstype, offset, size, used_bytes,
#                      files: [ { path, size, sha256 } ] } ],
#     backing: { file, ref, format, sha256 } (overlays only) }
# used_bytes is what df reports used after the deletion; guest_used_bytes is their sum.
#
# Needs qt_init_workdir (common.sh) first: intermediates go to $QT_SCRATCH, and every loop device
# and mount is registered for cleanup.

# shellcheck source=tests/lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

qt_manifest() { printf '%s/manifests/%s.json\n' "$QT_WORK" "$(basename -- "$1")"; }

# _qt_populate_fs FRAGMENT RAW NAME FSTYPE OFFSET SIZE JUNK_MIB KEEP_SIZE...
# Makes FSTYPE on RAW[OFFSET, +SIZE), writes JUNK_MIB MiB of random junk in 16 MiB files with the
# kept files interleaved (so kept data sits among deleted data), deletes the junk, commits the
# deletion, then writes one more kept file into the freed space. Appends the filesystem's
# manifest entry (JSON) to FRAGMENT.
_qt_populate_fs() {
        local frag=$1 raw=$2 name=$3 fstype=$4 off=$5 size=$6 junk_mib=$7
        shift 7
        local keep=("$@") dev mnt=$QT_SCRATCH/mnt-$name-$$ i n_junk k=0 used
        n_junk=$(((junk_mib + 15) / 16))

        qt_loop_attach dev "$raw" "$off" "$size"
        case $fstype in
        ext2 | ext3 | ext4) "mkfs.$fstype" -q -F -T default -L "qt-$name" "$dev" ;;
        xfs) mkfs.xfs -q -f -L "qt-$name" "$dev" ;;
        btrfs) mkfs.btrfs -q -f -L "qt-$name" "$dev" >/dev/null ;;
        *) qt_fail "unsupported fstype $fstype" ;;
        esac
        qt_mount "$dev" "$mnt" "$(qt_rw_opts "$fstype")" "$fstype"
        mkdir -p -- "$mnt/junk" "$mnt/keep/sub/dir"

        for ((i = 0; i < n_junk; i++)); do
                head -c 16M /dev/urandom >"$mnt/junk/j$i.bin"
                if ((k < ${#keep[@]})); then
                        head -c "${keep[k]}" /dev/urandom >"$mnt/keep/k$k.bin"
                        k=$((k + 1))
                fi
        done
        for (( ; k < ${#keep[@]}; k++)); do
                head -c "${keep[k]}" /dev/urandom >"$mnt/keep/k$k.bin"
        done
        printf 'qtrim test file on %s (%s)\n' "$name" "$fstype" >"$mnt/keep/sub/dir/note.txt"
        # Zeros the guest wrote: allocated in a real image, kept by a trim, dropped by a convert.
        head -c 8M /dev/zero >"$mnt/keep/zeros.bin"
        # Written back before the delete, or the junk never leaves the page cache.
        sync -f "$mnt"

        rm -rf -- "$mnt/junk"
        # ext4 trims only blocks whose free was committed; a syncfs commits it.
        sync -f "$mnt"
        # Reuses freed blocks: data qtrim must not trim away.
        head -c 2M /dev/urandom >"$mnt/keep/late.bin"
        sync -f "$mnt"

        used=$(stat -f -c '%b %f %S' -- "$mnt" | awk '{ printf "%d", ($1 - $2) * $3 }')
        (cd -- "$mnt" && find keep -type f -print0 | sort -z | xargs -0 sha256sum) >"$QT_SCRATCH/sums-$name"
        (cd -- "$mnt" && find keep -type f -printf '%s %p\n' | sort -k2) >"$QT_SCRATCH/sizes-$name"

        qt_umount "$mnt"
        rmdir -- "$mnt"
        qt_loop_detach "$dev"

        jq -n --arg name "$name" --arg fstype "$fstype" \
                --argjson offset "$off" --argjson size "$size" --argjson used "$used" \
                --rawfile sums "$QT_SCRATCH/sums-$name" --rawfile sizes "$QT_SCRATCH/sizes-$name" '
                ($sizes | split("\n") | map(select(length > 0) | split(" ") | {(.[1]): (.[0] | tonumber)}) | add) as $sz
                | { name: $name, fstype: $fstype, offset: $offset, size: $size, used_bytes: $used,
                    files: ($sums | split("\n") | map(select(length > 0) | capture("^(?<sha256>[0-9a-f]{64})  (?<path>.*)$")
                                                      | {path, size: $sz[.path], sha256})) }' >>"$frag"
        rm -f -- "$QT_SCRATCH/sums-$name" "$QT_SCRATCH/sizes-$name"
}

# Byte offset and size of partition N of a raw disk, as sfdisk reads the table.
_qt_part_geometry() { # RAW N -> "offset size"
        sfdisk -J -- "$1" | jq -r --arg n "$2" '
                .partitiontable as $t
                | $t.partitions[] | select(.node | test("[^0-9]" + $n + "$"))
                | "\(.start * $t.sectorsize) \(.size * $t.sectorsize)"'
}

# _qt_populate_part FRAGMENT RAW N FSTYPE JUNK_MIB KEEP_SIZE...: _qt_populate_fs on partition N.
_qt_populate_part() {
        local frag=$1 raw=$2 n=$3 geo
        shift 3
        geo=$(_qt_part_geometry "$raw" "$n")
        [[ -n $geo ]] || qt_fail "$raw has no partition $n"
        _qt_populate_fs "$frag" "$raw" "p$n" "$1" "${geo% *}" "${geo#* }" "${@:2}"
}

# _qt_write_manifest IMG FORMAT TABLE FRAGMENT [BACKING_JSON]
_qt_write_manifest() {
        local img=$1 format=$2 table=$3 frag=$4 backing=${5:-null} vsize
        vsize=$(qemu-img info -U --output=json -- "$img" | jq '."virtual-size"')
        jq -s --arg image "$img" --arg format "$format" --arg table "$table" \
                --argjson vsize "$vsize" --argjson backing "$backing" '
                { image: $image, format: $format, table: $table, virtual_size: $vsize,
                  guest_used_bytes: (map(.used_bytes) | add),
                  filesystems: . } + (if $backing then { backing: $backing } else {} end)' \
                "$frag" >"$(qt_manifest "$img")"
        rm -f -- "$frag"
}

# The raw disk has random data in deleted blocks and holes elsewhere; converting it keeps the
# data, so the qcow2 allocates the deleted data just as a guest's image would.
# "full" (-S 0) allocates every cluster, zeros and never-written space included: an image a VM
# has used for years, or a preallocated one. A trim gives the free space back but the zeros the
# guest keeps (xfs log, zeros.bin) stay allocated until qemu-img convert drops them, so the
# compact copy is smaller and qtrim's replace step runs.
_qt_finish_qcow2() { # RAW IMG [full]
        local sparse=()
        [[ ${3:-} == full ]] && sparse=(-S 0)
        qemu-img convert "${sparse[@]}" -f raw -O qcow2 -- "$1" "$2"
        rm -f -- "$1"
}

# qcow2, 1 GiB virtual, every cluster allocated: GPT, p1 ext4 400 MiB, p2 xfs 400 MiB (its log
# takes 64 MiB), 288 and 240 MiB of random data deleted, ~220 MiB unpartitioned at the end.
# make_gpt_ext2_ext3 IMG: qcow2, 1 GiB, GPT, p1 ext2 and p2 ext3 (the older ext kinds qtrim trims).
make_gpt_ext2_ext3() {
        local img=$1 raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        rm -f -- "$raw" "$frag"
        truncate -s 1G -- "$raw"
        printf 'label: gpt\nsize=400MiB, type=L, name=old\nsize=400MiB, type=L, name=older\n' | sfdisk -q -- "$raw" >/dev/null
        _qt_populate_part "$frag" "$raw" 1 ext2 240 4K 100K 1M 8M
        _qt_populate_part "$frag" "$raw" 2 ext3 240 12K 300K 3M 16M
        _qt_finish_qcow2 "$raw" "$img" full
        _qt_write_manifest "$img" qcow2 gpt "$frag"
}

make_gpt_ext4_xfs() {
        local img=$1 raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        rm -f -- "$raw" "$frag"
        truncate -s 1G -- "$raw"
        printf 'label: gpt\nsize=400MiB, type=L, name=root\nsize=400MiB, type=L, name=data\n' | sfdisk -q -- "$raw" >/dev/null
        _qt_populate_part "$frag" "$raw" 1 ext4 288 4K 100K 1M 8M 24M
        _qt_populate_part "$frag" "$raw" 2 xfs 240 12K 300K 3M 16M 20M
        _qt_finish_qcow2 "$raw" "$img" full
        _qt_write_manifest "$img" qcow2 gpt "$frag"
}

# qcow2, 800 MiB virtual, every cluster allocated: MBR with primary p1 ext4 200 MiB and
# extended p2 holding logical p5 ext4 200 MiB and p6 btrfs (the rest, ~397 MiB).
make_mbr_logical() {
        local img=$1 raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        rm -f -- "$raw" "$frag"
        truncate -s 800M -- "$raw"
        printf 'label: dos\n,200MiB,L\n,,E\n,200MiB,L\n,,L\n' | sfdisk -q -- "$raw" >/dev/null
        _qt_populate_part "$frag" "$raw" 1 ext4 128 4K 1M 12M
        _qt_populate_part "$frag" "$raw" 5 ext4 128 8K 2M 10M
        _qt_populate_part "$frag" "$raw" 6 btrfs 192 16K 3M 20M
        _qt_finish_qcow2 "$raw" "$img" full
        _qt_write_manifest "$img" qcow2 dos "$frag"
}

# qcow2, 256 MiB virtual, every cluster allocated: ext4 on the whole disk, 96 MiB deleted.
make_whole_qcow2() {
        local img=$1 raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        rm -f -- "$raw" "$frag"
        truncate -s 256M -- "$raw"
        _qt_populate_fs "$frag" "$raw" disk ext4 0 $((256 * MiB)) 96 4K 512K 3M
        _qt_finish_qcow2 "$raw" "$img" full
        _qt_write_manifest "$img" qcow2 none "$frag"
}

# raw (sparse), 512 MiB: ext4 on the whole disk, no partition table.
make_raw_whole() {
        local img=$1 frag=$QT_SCRATCH/${1##*/}.frag
        rm -f -- "$img" "$frag"
        truncate -s 512M -- "$img"
        _qt_populate_fs "$frag" "$img" disk ext4 0 $((512 * MiB)) 320 4K 512K 6M 30M
        _qt_write_manifest "$img" raw none "$frag"
}

# make_overlay BASE OVERLAY [BACKING_REF]
# BASE: qcow2, 512 MiB virtual, ext4 on the whole disk with some files. OVERLAY: qcow2 on BASE
# (-b BACKING_REF -F qcow2; BACKING_REF defaults to BASE's absolute path, pass a name relative
# to OVERLAY's directory to test relative references) holding what the guest wrote on top:
# more files kept, ~250 MiB written and deleted. BASE is not changed by building or by qtrim;
# its sha256 goes to the manifest's "backing" entry.
#
# The overlay is made the way qemu-img would store the guest's writes: the guest's final disk is
# built as raw and converted with -B, which writes exactly the clusters that differ from BASE.
make_overlay() {
        local base=$1 img=$2 ref=${3:-}
        local raw=$QT_SCRATCH/${2##*/}.raw frag=$QT_SCRATCH/${2##*/}.frag
        local bfrag=$QT_SCRATCH/${1##*/}.frag braw=$QT_SCRATCH/${1##*/}.raw
        local dev mnt=$QT_SCRATCH/mnt-ovl-$$ used backing
        [[ -n $ref ]] || ref=$(realpath -- "$(dirname -- "$base")")/$(basename -- "$base")
        rm -f -- "$raw" "$frag" "$bfrag" "$braw" "$img"

        # The base: a few kept files, nothing deleted (a fresh template).
        truncate -s 512M -- "$braw"
        _qt_populate_fs "$bfrag" "$braw" disk ext4 0 $((512 * MiB)) 0 8K 1M 16M 24M
        qemu-img convert -f raw -O qcow2 -- "$braw" "$base"
        _qt_write_manifest "$base" qcow2 none "$bfrag"

        # The guest's view after its writes: the base plus new files, junk written and deleted.
        mv -- "$braw" "$raw"
        qt_loop_attach dev "$raw" 0 $((512 * MiB))
        qt_mount "$dev" "$mnt" "$(qt_rw_opts ext4)" ext4
        mkdir -p -- "$mnt/junk" "$mnt/keep/overlay"
        local i
        for ((i = 0; i < 16; i++)); do
                head -c 16M /dev/urandom >"$mnt/junk/o$i.bin"
                ((i % 5 == 0)) && head -c $(((i + 1) * 700))K /dev/urandom >"$mnt/keep/overlay/n$i.bin"
        done
        sync -f "$mnt"
        rm -f -- "$mnt/keep/k1.bin" # a base file the guest deleted
        rm -rf -- "$mnt/junk"
        sync -f "$mnt"
        head -c 3M /dev/urandom >"$mnt/keep/overlay/late.bin"
        sync -f "$mnt"
        used=$(stat -f -c '%b %f %S' -- "$mnt" | awk '{ printf "%d", ($1 - $2) * $3 }')
        (cd -- "$mnt" && find keep -type f -print0 | sort -z | xargs -0 sha256sum) >"$QT_SCRATCH/sums-ovl"
        (cd -- "$mnt" && find keep -type f -printf '%s %p\n' | sort -k2) >"$QT_SCRATCH/sizes-ovl"
        qt_umount "$mnt"
        rmdir -- "$mnt"
        qt_loop_detach "$dev"

        qemu-img convert -f raw -O qcow2 -B "$ref" -F qcow2 -- "$raw" "$img"
        rm -f -- "$raw"
        jq -n --argjson used "$used" --rawfile sums "$QT_SCRATCH/sums-ovl" --rawfile sizes "$QT_SCRATCH/sizes-ovl" '
                ($sizes | split("\n") | map(select(length > 0) | split(" ") | {(.[1]): (.[0] | tonumber)}) | add) as $sz
                | { name: "disk", fstype: "ext4", offset: 0, size: (512 * 1048576), used_bytes: $used,
                    files: ($sums | split("\n") | map(select(length > 0) | capture("^(?<sha256>[0-9a-f]{64})  (?<path>.*)$")
                                                      | {path, size: $sz[.path], sha256})) }' >"$frag"
        rm -f -- "$QT_SCRATCH/sums-ovl" "$QT_SCRATCH/sizes-ovl"
        backing=$(jq -n --arg file "$base" --arg ref "$ref" --arg sha "$(qt_sha256 "$base")" \
                '{ file: $file, ref: $ref, format: "qcow2", sha256: $sha }')
        _qt_write_manifest "$img" qcow2 none "$frag" "$backing"
}

# For bench/: qcow2 (sparse: allocates what was written), 4 GiB virtual, GPT p1 ext4 2 GiB +
# p2 xfs ~2 GiB; ~1.2 GiB written, ~1 GiB of it deleted (512 MiB on each filesystem).
make_bench_image() {
        local img=$1 raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        rm -f -- "$raw" "$frag"
        truncate -s 4G -- "$raw"
        printf 'label: gpt\nsize=2GiB, type=L, name=root\ntype=L, name=data\n' | sfdisk -q -- "$raw" >/dev/null
        _qt_populate_part "$frag" "$raw" 1 ext4 512 4K 1M 16M 32M 48M
        _qt_populate_part "$frag" "$raw" 2 xfs 512 8K 2M 16M 32M 48M
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_manifest "$img" qcow2 gpt "$frag"
}

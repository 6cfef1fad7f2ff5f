# shellcheck shell=bash
# Checks on images that use only standard tools (qemu-img, sfdisk, losetup, mount, fsck), never
# qtrim's own code, so a bug in qtrim cannot hide itself.

# shellcheck source=tests/lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

# Host bytes allocated to a file (what du counts, what qtrim is meant to lower).
allocated_bytes() { stat -c '%b %B' -- "$1" | awk '{ printf "%d\n", $1 * $2 }'; }

# The same as qemu sees it ("actual-size"); -U so it works while something holds the image.
qemu_actual_size() { qemu-img info -U --output=json -- "$1" | jq '."actual-size"'; }

qt_image_format() { qemu-img info -U --output=json -- "$1" | jq -r '.format'; }

# Read-only consistency check of the filesystem on a block device.
_qt_fsck_ro() { # DEV FSTYPE NAME
        local out rc=0
        case $2 in
        ext2 | ext3 | ext4) out=$(e2fsck -f -n -- "$1" 2>&1) || rc=$? ;;
        xfs) out=$(xfs_repair -n -- "$1" 2>&1) || rc=$? ;;
        btrfs) out=$(btrfs check --readonly -- "$1" 2>&1) || rc=$? ;;
        vfat) out=$(fsck.vfat -n -- "$1" 2>&1) || rc=$? ;;
        ntfs) out=$(ntfsfix -n "$1" 2>&1) || rc=$? ;;
        *) return 0 ;;
        esac
        if ((rc != 0)); then
                printf '%s\n' "$out" | tail -n 20 >&2
                qt_fail "fsck of $3 ($2) reports problems (exit $rc)"
        fi
}

# verify_files IMG [MANIFEST]: every kept file of the manifest is intact, on the partition the
# manifest says, and each filesystem passes a read-only fsck (QT_VERIFY_FSCK=0 skips the fsck).
# Entries of kind "lv" are read at their offset and size (or the concatenation of their
# segments), with no partition-table lookup. vfat and ntfs are never mounted (no kernel driver on
# the test machines): their files are read with mtools and ntfscat, their fsck is fsck.vfat -n and
# ntfsfix -n.
# Works on a raw copy so the image itself is opened read-only once, by qemu-img.
verify_files() {
        local img=$1 manifest=${2:-$(qt_manifest "$1")}
        local tmp raw table n i name fstype off size poff psize dev mnt json kind safe src nseg soff ssize
        [[ -f $manifest ]] || qt_fail "verify_files: no manifest $manifest"
        tmp=$(mktemp -d "${QT_SCRATCH:-${TMPDIR:-/var/tmp}}/verify.XXXXXX")
        qt_defer rm -rf -- "$tmp"
        raw=$tmp/disk.raw
        qemu-img convert -U -O raw -- "$img" "$raw" || qt_fail "qemu-img convert of $img failed"

        table=$(jq -r '.table' "$manifest")
        if [[ $table == none ]]; then
                json='{"partitiontable":{"label":"none","sectorsize":512,"partitions":[]}}'
        else
                json=$(sfdisk -J -- "$raw") || qt_fail "$img: sfdisk cannot read a partition table"
                [[ $(jq -r '.partitiontable.label' <<<"$json") == "$table" ]] ||
                        qt_fail "$img: partition table is $(jq -r '.partitiontable.label' <<<"$json"), expected $table"
        fi

        n=$(jq '.filesystems | length' "$manifest")
        for ((i = 0; i < n; i++)); do
                name=$(jq -r ".filesystems[$i].name" "$manifest")
                fstype=$(jq -r ".filesystems[$i].fstype" "$manifest")
                off=$(jq -r ".filesystems[$i].offset" "$manifest")
                size=$(jq -r ".filesystems[$i].size" "$manifest")
                kind=$(jq -r ".filesystems[$i].kind // \"part\"" "$manifest")
                # An LV's name is VG/LV: file names below use it with the slash replaced.
                safe=${name//\//_}
                src=$raw
                if [[ $kind == lv ]]; then
                        # No table lookup: the manifest's range came from lvm2 when it was built,
                        # and the PV's metadata is checked by assert_preserved.
                        nseg=$(jq ".filesystems[$i].segments // [] | length" "$manifest")
                        if ((nseg > 0)); then
                                # Several segments: their concatenation, copied out of the raw copy.
                                src=$tmp/lv-$safe.raw off=0 size=0
                                : >"$src"
                                while read -r soff ssize; do
                                        dd if="$raw" of="$src" iflag=skip_bytes,count_bytes skip="$soff" count="$ssize" \
                                                oflag=seek_bytes seek="$size" conv=sparse,notrunc bs=1M status=none ||
                                                qt_fail "$img: cannot copy a segment of $name"
                                        size=$((size + ssize))
                                done < <(jq -r ".filesystems[$i].segments[] | \"\(.offset) \(.size)\"" "$manifest")
                                truncate -s "$size" -- "$src"
                        fi
                        ((off + size <= $(stat -c %s -- "$raw"))) || qt_fail "$img: $name ends past the disk"
                        poff=$off psize=$size
                elif [[ $name == disk ]]; then
                        poff=0 psize=$(stat -c %s -- "$raw")
                else
                        read -r poff psize < <(jq -r --arg n "${name#p}" '
                                .partitiontable as $t | $t.partitions[] | select(.node | test("[^0-9]" + $n + "$"))
                                | "\(.start * $t.sectorsize) \(.size * $t.sectorsize)"' <<<"$json") ||
                                qt_fail "$img: partition $name is missing from the table"
                fi
                [[ $poff == "$off" && $psize == "$size" ]] ||
                        qt_fail "$img: $name is at $poff+$psize, expected $off+$size"

                qt_loop_attach dev "$src" "$off" "$size" ro
                local found
                found=$(blkid -p -o value -s TYPE -- "$dev" || true)
                [[ $found == "$fstype" ]] || qt_fail "$img: $name holds '${found:-nothing}', expected $fstype"
                local note=
                if [[ ${QT_VERIFY_FSCK:-1} != 0 ]]; then
                        _qt_fsck_ro "$dev" "$fstype" "$img:$name"
                        note=", fsck clean"
                fi
                mnt=$tmp/mnt-$safe
                jq -r ".filesystems[$i].files[] | \"\(.sha256)  \(.path)\"" "$manifest" >"$tmp/sums-$safe"
                case $fstype in
                vfat | ntfs)
                        # No kernel driver here: each file read by the filesystem's own tools.
                        _qt_check_sums_user "$dev" "$fstype" "$tmp/sums-$safe" ||
                                qt_fail "$img: kept files on $name ($fstype) are damaged"
                        ;;
                *)
                        qt_mount "$dev" "$mnt" "$(qt_ro_opts "$fstype")" "$fstype"
                        if ! (cd -- "$mnt" && sha256sum --quiet --strict -c -- "$tmp/sums-$safe"); then
                                qt_fail "$img: kept files on $name ($fstype) are damaged"
                        fi
                        qt_umount "$mnt"
                        ;;
                esac
                qt_info "$name ($fstype): $(wc -l <"$tmp/sums-$safe") files intact$note"
                qt_loop_detach "$dev"
                [[ $src == "$raw" ]] || rm -f -- "$src"
        done
        qt_undo rm -rf -- "$tmp"
        qt_ok "$(basename -- "$img"): files intact on $n filesystem(s)"
}

# _qt_check_sums_user DEV FSTYPE SUMS: each "SHA256  PATH" of SUMS read from the FAT (mtools) or
# NTFS (ntfscat, which refuses a volume marked dirty) on read-only DEV; says which differ.
_qt_check_sums_user() {
        local dev=$1 fstype=$2 want path got nbad=0
        while read -r want path; do
                if [[ $fstype == vfat ]]; then
                        # mtools warns that a loop device has no geometry: only the bytes count.
                        got=$(MTOOLS_SKIP_CHECK=1 mtype -i "$dev" "::$path" 2>/dev/null | sha256sum)
                else
                        got=$(ntfscat "$dev" "$path" | sha256sum)
                fi
                [[ ${got%% *} == "$want" ]] || {
                        printf '    %s: %s differs\n' "$dev" "$path" >&2
                        nbad=$((nbad + 1))
                }
        done <"$3"
        ((nbad == 0))
}

# assert_shrunk IMG [MANIFEST]: the image allocates no more than 110% of what its guest
# filesystems use, plus 16 MiB for metadata and partial clusters.
assert_shrunk() {
        local img=$1 manifest=${2:-$(qt_manifest "$1")} alloc used limit
        alloc=$(allocated_bytes "$img")
        used=$(jq '.guest_used_bytes' "$manifest")
        limit=$((used * 110 / 100 + 16 * MiB))
        if ((alloc > limit)); then
                qt_fail "$(basename -- "$img") allocates $(qt_human "$alloc"), more than 1.10 x guest used $(qt_human "$used") + 16 MiB = $(qt_human "$limit")"
        fi
        qt_ok "$(basename -- "$img") allocates $(qt_human "$alloc") <= $(qt_human "$limit") (guest uses $(qt_human "$used"))"
}

# The opposite, for freshly built images: they must hold much more than their guest uses, or a
# test could pass without qtrim doing anything.
assert_dirty() {
        local img=$1 manifest=${2:-$(qt_manifest "$1")} alloc used limit
        alloc=$(allocated_bytes "$img")
        used=$(jq '.guest_used_bytes' "$manifest")
        limit=$((used * 110 / 100 + 16 * MiB))
        ((alloc > limit + 64 * MiB)) ||
                qt_fail "test image $(basename -- "$img") is not dirty: allocates $(qt_human "$alloc"), guest uses $(qt_human "$used")"
        qt_ok "$(basename -- "$img") is dirty: allocates $(qt_human "$alloc"), guest uses $(qt_human "$used")"
}

assert_qemu_img_check() {
        local img=$1 out rc=0
        [[ $(qt_image_format "$img") == qcow2 ]] || {
                qt_info "$(basename -- "$img"): not qcow2, no qemu-img check"
                return 0
        }
        # No -U: a leftover holder of the image lock must fail this too.
        out=$(qemu-img check -f qcow2 -- "$img" 2>&1) || rc=$?
        if ((rc != 0)) || ! grep -q '^No errors were found' <<<"$out"; then
                printf '%s\n' "$out" >&2
                qt_fail "qemu-img check $(basename -- "$img") is not clean (exit $rc)"
        fi
        qt_ok "qemu-img check $(basename -- "$img") clean"
}

# Remember the names in the image directory; assert_no_leftovers expects exactly these later.
# shellcheck disable=SC2120 # the argument is optional
qt_expect_files() {
        local dir=${1:-$QT_IMAGES}
        (cd -- "$dir" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | sort) >"$QT_WORK/.expected-files"
}

# assert_no_leftovers [WORKDIR]: nothing outlives a job. Loop devices and FUSE mounts are compared
# with the baseline taken by qt_init_workdir; qemu-nbd, nbdfuse, qemu-io and qemu-img processes
# count if their command line names WORKDIR (with QT_STRICT_LEFTOVERS=1, for machines that run
# nothing else, every loop device, FUSE mount and qemu-nbd counts). Mounts under WORKDIR,
# children of qtrimd, files in the image directory other than those qt_expect_files recorded,
# and temporary copies (.NAME.qtrim-*) anywhere under WORKDIR are leftovers too.
# shellcheck disable=SC2120 # the argument is optional
assert_no_leftovers() {
        local work=${1:-$QT_WORK} bad=() x tries
        # A worker is reaped and its qemu-nbd exits just after the job is removed: give it a moment.
        for ((tries = 0; tries < 50; tries++)); do
                bad=()
                _qt_collect_leftovers "$work"
                ((${#bad[@]} == 0)) && break
                sleep 0.1
        done
        if ((${#bad[@]} > 0)); then
                for x in "${bad[@]}"; do printf '    leftover: %s\n' "$x" >&2; done
                qt_fail "leftovers after the job (${#bad[@]})"
        fi
        qt_ok "no loop device, FUSE mount, qemu-nbd, mount or temp file left"
}

_qt_collect_leftovers() { # fills the caller's bad[]
        local work=$1 x
        local strict=${QT_STRICT_LEFTOVERS:-0}
        while read -r x; do
                [[ -n $x ]] && bad+=("loop device $x ($(losetup -n -O BACK-FILE -- "$x" 2>/dev/null))")
        done < <(_qt_new_since "$work/.baseline-loops" qt_list_loops "$strict")
        while read -r x; do
                [[ -n $x ]] && bad+=("FUSE mount $x")
        done < <(_qt_new_since "$work/.baseline-fuse" qt_list_fuse_mounts "$strict")
        # A qemu-nbd (or nbdfuse, qemu-io, qemu-img) left by a job names its image, which is
        # under the work dir: that tells ours from other users' on a shared machine.
        while read -r x; do
                [[ -n $x ]] && bad+=("process $x: $(tr '\0' ' ' <"/proc/$x/cmdline" 2>/dev/null)")
        done < <(QT_WORK=$work qt_pids_using_workdir)
        if [[ $strict == 1 ]]; then
                while read -r x; do
                        [[ -n $x ]] && bad+=("qemu-nbd pid $x: $(tr '\0' ' ' <"/proc/$x/cmdline" 2>/dev/null)")
                done < <(_qt_new_since "$work/.baseline-qemu-nbd" "qt_list_pids qemu-nbd" "$strict")
        fi
        # A job's FUSE server (nbd-fuse.h) outlives its worker only until its connection ends.
        while read -r x; do
                [[ -n $x ]] && bad+=("FUSE server pid $x (qtrim-fuse)")
        done < <(_qt_new_since "$work/.baseline-qtrim-fuse" "qt_list_pids qtrim-fuse" "$strict")
        while read -r x; do
                [[ -n $x ]] && bad+=("mount under the work dir: $x")
        done < <(qt_mounts_under "$work")
        if [[ -n "${QT_DAEMON_PID:-}" ]] && kill -0 "$QT_DAEMON_PID" 2>/dev/null; then
                while read -r x; do
                        [[ -n $x ]] && bad+=("qtrimd child pid $x: $(tr '\0' ' ' <"/proc/$x/cmdline" 2>/dev/null)")
                done < <(pgrep -P "$QT_DAEMON_PID" || true)
        fi
        if [[ -f $work/.expected-files ]]; then
                while read -r x; do
                        [[ -n $x ]] && bad+=("unexpected file in the image dir: $x")
                done < <(comm -13 "$work/.expected-files" <(cd -- "$work/images" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | sort))
                while read -r x; do
                        [[ -n $x ]] && bad+=("missing file in the image dir: $x")
                done < <(comm -23 "$work/.expected-files" <(cd -- "$work/images" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | sort))
        fi
        # The daemon's temp copies, wherever an image lived.
        while read -r x; do
                [[ -n $x ]] && bad+=("temporary copy $x")
        done < <(find "$work" -xdev -name '.*.qtrim-*' 2>/dev/null)
}

_qt_new_since() { # BASELINE LISTER STRICT
        if [[ $3 == 1 ]]; then
                $2
        else
                comm -13 "$1" <($2)
        fi
}

# ---- preserved and zeroed ranges (manifests of layouts.sh) --------------------------------

# _qt_raw_copy IMG TMPVAR RAWVAR: a raw copy of IMG in a new temp dir (registered for cleanup).
_qt_raw_copy() {
        local -n _qt_t=$2 _qt_r=$3
        _qt_t=$(mktemp -d "${QT_SCRATCH:-${TMPDIR:-/var/tmp}}/ranges.XXXXXX")
        qt_defer rm -rf -- "$_qt_t"
        _qt_r=$_qt_t/disk.raw
        qemu-img convert -U -O raw -- "$1" "$_qt_r" || qt_fail "qemu-img convert of $1 failed"
}

# Bytes that are not zero in RAW[OFFSET, +SIZE).
_qt_nonzero_bytes() { # RAW OFFSET SIZE
        dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none | tr -d '\0' | wc -c
}

# Ranges of a manifest list (preserved or zeroed), one "offset size what" line each.
_qt_ranges() { # MANIFEST KEY
        jq -r --arg k "$2" '.[$k] // [] | .[] | "\(.offset) \(.size) \(.what)"' "$1"
}

# assert_preserved IMG [MANIFEST]: every preserved range is byte-identical to the built image's.
assert_preserved() {
        local img=$1 manifest=${2:-$(qt_manifest "$1")} tmp raw i n off size what want got nbad=0
        [[ -f $manifest ]] || qt_fail "assert_preserved: no manifest $manifest"
        _qt_raw_copy "$img" tmp raw
        n=$(jq '.preserved // [] | length' "$manifest")
        for ((i = 0; i < n; i++)); do
                read -r off size want < <(jq -r ".preserved[$i] | \"\(.offset) \(.size) \(.sha256)\"" "$manifest")
                what=$(jq -r ".preserved[$i].what" "$manifest")
                got=$(dd if="$raw" iflag=skip_bytes,count_bytes skip="$off" count="$size" bs=1M status=none | sha256sum | cut -d' ' -f1)
                if [[ $got != "$want" ]]; then
                        printf '    changed: %s [%d, +%d), %d bytes non-zero now\n' "$what" "$off" "$size" \
                                "$(_qt_nonzero_bytes "$raw" "$off" "$size")" >&2
                        nbad=$((nbad + 1))
                fi
        done
        qt_undo rm -rf -- "$tmp"
        ((nbad == 0)) || qt_fail "$(basename -- "$img"): $nbad of $n preserved range(s) changed"
        qt_ok "$(basename -- "$img"): $n preserved range(s) byte-identical"
}

# _qt_zeroed_ranges IMG MANIFEST WANT: counts the zeroed ranges whose non-zero bytes are not what
# WANT asks (zeros: none; garbage: at least 99%, as random data has 1/256 zeros), says which on
# stderr, and sets _qt_n (ranges) and _qt_nbad (those that fail).
_qt_zeroed_ranges() {
        local img=$1 manifest=$2 want=$3 tmp raw off size what nz
        [[ -f $manifest ]] || qt_fail "zeroed ranges: no manifest $manifest"
        _qt_raw_copy "$img" tmp raw
        _qt_n=0 _qt_nbad=0
        while read -r off size what; do
                _qt_n=$((_qt_n + 1))
                nz=$(_qt_nonzero_bytes "$raw" "$off" "$size")
                if [[ $want == zeros ]] && ((nz != 0)); then
                        printf '    not zeroed: %s [%d, +%d): %d bytes non-zero\n' "$what" "$off" "$size" "$nz" >&2
                        _qt_nbad=$((_qt_nbad + 1))
                elif [[ $want == garbage ]] && ((nz < size * 99 / 100)); then
                        printf '    not garbage: %s [%d, +%d): only %d bytes non-zero\n' "$what" "$off" "$size" "$nz" >&2
                        _qt_nbad=$((_qt_nbad + 1))
                fi
        done < <(_qt_ranges "$manifest" zeroed)
        qt_undo rm -rf -- "$tmp"
}

# assert_zeroed IMG [MANIFEST]: every zeroed range reads as zeros (a complete shrink's result).
assert_zeroed() {
        local _qt_n _qt_nbad
        _qt_zeroed_ranges "$1" "${2:-$(qt_manifest "$1")}" zeros
        ((_qt_nbad == 0)) || qt_fail "$(basename -- "$1"): $_qt_nbad of $_qt_n zeroed range(s) hold data"
        qt_ok "$(basename -- "$1"): $_qt_n zeroed range(s) read as zeros"
}

# assert_not_zeroed IMG [MANIFEST]: the opposite, for a freshly built image: every zeroed range
# still holds its random garbage, so a test cannot pass assert_zeroed without the tool doing
# anything.
assert_not_zeroed() {
        local _qt_n _qt_nbad
        _qt_zeroed_ranges "$1" "${2:-$(qt_manifest "$1")}" garbage
        ((_qt_nbad == 0)) || qt_fail "test image $(basename -- "$1"): $_qt_nbad of $_qt_n zeroed range(s) hold no garbage"
        qt_ok "$(basename -- "$1"): $_qt_n zeroed range(s) hold garbage"
}

# zeroed_allocated_bytes IMG [MANIFEST]: bytes of IMG allocated inside its zeroed ranges
# (qemu-img map: data, not zero clusters or holes; clipped to each range).
zeroed_allocated_bytes() {
        local img=$1 manifest=${2:-$(qt_manifest "$1")}
        # Through a pipe, not an argument: a map can exceed the kernel's 128 KiB per argument.
        qemu-img map --output=json -U -- "$img" | jq --slurpfile m "$manifest" '
                [ .[] | select(.data) | { s: .start, e: (.start + .length) } ] as $d
                | [ $m[0].zeroed // [] | .[] | (.offset) as $o | (.offset + .size) as $e
                    | $d[] | select(.s < $e and .e > $o)
                    | ([.e, $e] | min) - ([.s, $o] | max) ] | add // 0'
}

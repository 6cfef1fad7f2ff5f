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
        *) return 0 ;;
        esac
        if ((rc != 0)); then
                printf '%s\n' "$out" | tail -n 20 >&2
                qt_fail "fsck of $3 ($2) reports problems (exit $rc)"
        fi
}

# verify_files IMG [MANIFEST]: every kept file of the manifest is intact, on the partition the
# manifest says, and each filesystem passes a read-only fsck (QT_VERIFY_FSCK=0 skips the fsck).
# Works on a raw copy so the image itself is opened read-only once, by qemu-img.
verify_files() {
        local img=$1 manifest=${2:-$(qt_manifest "$1")}
        local tmp raw table n i name fstype off size poff psize dev mnt json
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
                if [[ $name == disk ]]; then
                        poff=0 psize=$(stat -c %s -- "$raw")
                else
                        read -r poff psize < <(jq -r --arg n "${name#p}" '
                                .partitiontable as $t | $t.partitions[] | select(.node | test("[^0-9]" + $n + "$"))
                                | "\(.start * $t.sectorsize) \(.size * $t.sectorsize)"' <<<"$json") ||
                                qt_fail "$img: partition $name is missing from the table"
                fi
                [[ $poff == "$off" && $psize == "$size" ]] ||
                        qt_fail "$img: $name is at $poff+$psize, expected $off+$size"

                qt_loop_attach dev "$raw" "$off" "$size" ro
                local found
                found=$(blkid -p -o value -s TYPE -- "$dev" || true)
                [[ $found == "$fstype" ]] || qt_fail "$img: $name holds '${found:-nothing}', expected $fstype"
                local note=
                if [[ ${QT_VERIFY_FSCK:-1} != 0 ]]; then
                        _qt_fsck_ro "$dev" "$fstype" "$img:$name"
                        note=", fsck clean"
                fi
                mnt=$tmp/mnt-$name
                qt_mount "$dev" "$mnt" "$(qt_ro_opts "$fstype")" "$fstype"
                jq -r ".filesystems[$i].files[] | \"\(.sha256)  \(.path)\"" "$manifest" >"$tmp/sums-$name"
                if ! (cd -- "$mnt" && sha256sum --quiet --strict -c -- "$tmp/sums-$name"); then
                        qt_fail "$img: kept files on $name ($fstype) are damaged"
                fi
                qt_info "$name ($fstype): $(wc -l <"$tmp/sums-$name") files intact$note"
                qt_umount "$mnt"
                qt_loop_detach "$dev"
        done
        qt_undo rm -rf -- "$tmp"
        qt_ok "$(basename -- "$img"): files intact on $n filesystem(s)"
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

#!/bin/bash
# The baseline qtrim is measured against: what an administrator does by hand today to give back
# the space deleted guest files hold in a VM's image, on a machine without the nbd kernel module.
#
#   nbdfuse over qemu-nbd --discard=unmap  ->  a loop device per partition  ->  mount  ->  fstrim
#   ->  umount, detach  ->  qemu-img convert to a copy  ->  mv over the image
#
# Usage: bench/manual-recipe.sh [--no-convert] IMAGE
# IMAGE is changed in place (trimmed, then replaced by its converted copy): run it on a copy.
# Prints the time of each step and the bytes allocated before and after; the last line is
# machine-readable: "RESULT seconds=<total> before=<bytes> after=<bytes>".
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/common.sh
source "$here/../tests/lib/common.sh"

convert=1
if [[ ${1:-} == --no-convert ]]; then
        convert=0
        shift
fi
(($# == 1)) || {
        printf 'usage: %s [--no-convert] IMAGE\n' "$0" >&2
        exit 2
}
img=$(realpath -- "$1")
[[ -f $img ]] || qt_fail "$img: not a regular file"
qt_need qemu-img qemu-nbd nbdfuse fusermount3 sfdisk losetup blkid fstrim jq

qt_init_workdir manual
fmt=$(qemu-img info --output=json -- "$img" | jq -r '.format')
alloc() { stat -c '%b %B' -- "$1" | awk '{ printf "%d\n", $1 * $2 }'; }
before=$(alloc "$img")
t_all=$(qt_now)

step_start() {
        step_name=$1
        t_step=$(qt_now)
}
step_end() { printf '%-10s %6ss\n' "$step_name" "$(qt_since "$t_step")"; }

# 1. Attach: nbdfuse serves the image as one file; qemu-nbd passes discards through.
step_start attach
fuse=$QT_SCRATCH/fuse
mkdir -p -- "$fuse"
nbdfuse -P "$QT_SCRATCH/nbdfuse.pid" "$fuse/disk" \
        [ qemu-nbd -f "$fmt" --discard=unmap -- "$img" ] &
qt_defer fusermount3 -u "$fuse"
for ((i = 0; i < 100; i++)); do
        [[ -s $QT_SCRATCH/nbdfuse.pid ]] && break
        sleep 0.1
done
[[ -s $QT_SCRATCH/nbdfuse.pid ]] || qt_fail "nbdfuse did not come up"
disk=$fuse/disk
step_end

# 2. Partitions: the kernel here parses no partition tables, so a loop device per partition
#    at its offset.
step_start loop
parts=()
if table=$(sfdisk -J -- "$disk" 2>/dev/null); then
        while read -r start size type; do
                # Skip extended partitions (containers of logical ones).
                case $type in 5 | f | 85) continue ;; esac
                parts+=("$start $size")
        done < <(jq -r '.partitiontable as $t | $t.partitions[]
                        | "\(.start * $t.sectorsize) \(.size * $t.sectorsize) \(.type)"' <<<"$table")
else
        parts+=("0 $(stat -c %s -- "$disk")")
fi
devs=()
for p in "${parts[@]}"; do
        qt_loop_attach dev "$disk" "${p% *}" "${p#* }"
        devs+=("$dev")
done
step_end

# 3. Mount each filesystem found.
step_start mount
mnts=()
for dev in "${devs[@]}"; do
        type=$(blkid -p -o value -s TYPE -- "$dev" || true)
        case $type in
        ext2 | ext3 | ext4 | btrfs) opts=rw ;;
        xfs) opts=rw,nouuid ;; # clones share a UUID
        *)
                printf '  %s: %s, not trimmed\n' "$dev" "${type:-no filesystem}"
                continue
                ;;
        esac
        mnt=$QT_SCRATCH/mnt${#mnts[@]}
        qt_mount "$dev" "$mnt" "$opts" "$type"
        mnts+=("$mnt")
done
step_end

# 4. fstrim.
step_start fstrim
for mnt in "${mnts[@]}"; do
        fstrim -v -- "$mnt" | sed 's/^/  /'
done
step_end

# 5. Detach: unmount, free the loop devices, unmount FUSE (which stops qemu-nbd).
step_start detach
for mnt in "${mnts[@]}"; do qt_umount "$mnt"; done
for dev in "${devs[@]}"; do qt_loop_detach "$dev"; done
qt_undo fusermount3 -u "$fuse"
nbdfuse_pid=$(cat "$QT_SCRATCH/nbdfuse.pid")
for ((i = 0; i < 100; i++)); do
        kill -0 "$nbdfuse_pid" 2>/dev/null || break
        sleep 0.1
done
wait || true
step_end
trimmed=$(alloc "$img")

# 6. Convert to a compact copy beside the image, keeping a backing file if there is one.
if ((convert)); then
        step_start convert
        tmp=$(dirname -- "$img")/.$(basename -- "$img").manual-tmp
        qt_defer rm -f -- "$tmp"
        info=$(qemu-img info --output=json -- "$img")
        args=(-f "$fmt" -O "$fmt")
        if [[ $(jq -r '."backing-filename" // ""' <<<"$info") != "" ]]; then
                args+=(-B "$(jq -r '."backing-filename"' <<<"$info")"
                        -F "$(jq -r '."backing-filename-format" // "qcow2"' <<<"$info")")
        fi
        qemu-img convert "${args[@]}" -- "$img" "$tmp"
        step_end

        # 7. Replace.
        step_start replace
        sync -- "$tmp"
        mv -f -- "$tmp" "$img"
        qt_undefer rm -f -- "$tmp"
        sync -- "$(dirname -- "$img")"
        step_end
fi

after=$(alloc "$img")
total=$(qt_since "$t_all")
printf '%-10s %6ss\n' total "$total"
printf 'allocated before: %s (%d)\n' "$(qt_human "$before")" "$before"
printf 'after trim:       %s (%d)\n' "$(qt_human "$trimmed")" "$trimmed"
printf 'after:            %s (%d)\n' "$(qt_human "$after")" "$after"
printf 'RESULT seconds=%s before=%d after=%d\n' "$total" "$before" "$after"

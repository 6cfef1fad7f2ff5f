# shellcheck shell=bash
# Helpers for the tests of hostile input and resource faults (hostile-images.sh,
# hostile-disks.sh, faults.sh): editing qcow2 headers and partition tables in place with
# standard tools, a tally of every bad input tried and its outcome, shrinks run to their end
# (as qtrimctl --json reports them) or paused at a chosen point, and checks of byte ranges.
# Source it after scenario.sh.

# shellcheck source=tests/lib/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

# ---- the tally and the failures -----------------------------------------------------------

# hx_tally CASE OUTCOME: one bad input tried, and what qtrim made of it (an error name, a job
# result...). hx_report prints them all, and how many, at the end of a test.
hx_tally() { printf '%s\t%s\n' "$1" "$2" >>"$QT_WORK/.tally"; }

# hx_failed WHAT: a check failed; the test goes on with the next case and fails at the end.
HX_FAILURES=()
hx_failed() {
        HX_FAILURES+=("$*")
        printf '    FAILED: %s\n' "$*" >&2
}

# hx_expect CASE GOT WANT: GOT must be WANT (an error name or a result); tallied either way.
hx_expect() {
        hx_tally "$1" "$2"
        if [[ $2 == "$3" ]]; then
                qt_ok "$1: $2"
        else
                hx_failed "$1: got '$2', expected '$3'"
        fi
}

hx_report() {
        local f=$QT_WORK/.tally
        [[ -s $f ]] || return 0
        qt_step "bad inputs tried"
        awk -F'\t' '{ printf "    %-64s %s\n", $1, $2 }' "$f"
        printf '    %d bad inputs tried; outcomes: %s\n' "$(wc -l <"$f")" \
                "$(cut -f2 "$f" | sort | uniq -c | sort -rn | sed -E 's/^ *([0-9]+) (.*)$/\2 x\1/' | paste -sd';' | sed 's/;/; /g')"
        if ((${#HX_FAILURES[@]} > 0)); then
                printf '  - %s\n' "${HX_FAILURES[@]}" >&2
                qt_fail "${#HX_FAILURES[@]} check(s) failed"
        fi
}

# ---- binary edits -------------------------------------------------------------------------

# Unsigned integers of 1 to 8 bytes at a byte offset of a file, big- or little-endian.
hx_get_be() { od -An -tu"$3" --endian=big -j "$2" -N "$3" -- "$1" | tr -d ' '; }
hx_get_le() { od -An -tu"$3" --endian=little -j "$2" -N "$3" -- "$1" | tr -d ' '; }

# hx_put_hex FILE OFFSET HEX: writes the bytes HEX spells (two digits each) in place.
hx_put_hex() {
        local hex=$3 esc='' i
        for ((i = 0; i < ${#hex}; i += 2)); do esc+="\\x${hex:i:2}"; done
        # shellcheck disable=SC2059 # the escapes are the format
        printf "$esc" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# hx_put_be / hx_put_le FILE OFFSET BYTES VALUE (VALUE may be 0x..., up to 2^64 - 1).
hx_put_be() {
        local hex
        printf -v hex '%016x' "$(($4))"
        hx_put_hex "$1" "$2" "${hex:$((16 - 2 * $3))}"
}
hx_put_le() {
        local hex le='' i
        printf -v hex '%016x' "$(($4))"
        hex=${hex:$((16 - 2 * $3))}
        for ((i = ${#hex} - 2; i >= 0; i -= 2)); do le+=${hex:i:2}; done
        hx_put_hex "$1" "$2" "$le"
}

# The CRC-32 of LEN bytes at OFFSET (IEEE 802.3, as GPT and zlib use it): gzip's trailer holds it.
hx_crc32() { # FILE OFFSET LEN
        dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=64K status=none | gzip -c |
                tail -c 8 | od -An -tu4 -N 4 --endian=little | tr -d ' '
}

# hx_mbr_set RAW INDEX START SECTORS: MBR primary entry INDEX (0..3) now says START+SECTORS.
# sfdisk refuses to write overlapping entries; a damaged or hostile table has them anyway.
hx_mbr_set() {
        hx_put_le "$1" $((446 + 16 * $2 + 8)) 4 "$3"
        hx_put_le "$1" $((446 + 16 * $2 + 12)) 4 "$4"
}

# hx_gpt_set RAW INDEX START SECTORS: GPT entry INDEX (0-based) now says START+SECTORS, in the
# primary table and in the backup, each header resealed with its CRCs: a table every tool
# accepts as valid, whatever its entries say.
hx_gpt_set() {
        local raw=$1 idx=$2 start=$3 sectors=$4 hdr hsize elba n esize
        for hdr in 512 $(($(stat -c %s -- "$raw") - 512)); do
                [[ $(head -c $((hdr + 8)) -- "$raw" | tail -c 8) == "EFI PART" ]] ||
                        qt_fail "hx_gpt_set: no GPT header at byte $hdr of $raw"
                hsize=$(hx_get_le "$raw" $((hdr + 12)) 4)
                elba=$(hx_get_le "$raw" $((hdr + 72)) 8)
                n=$(hx_get_le "$raw" $((hdr + 80)) 4)
                esize=$(hx_get_le "$raw" $((hdr + 84)) 4)
                hx_put_le "$raw" $((elba * 512 + idx * esize + 32)) 8 "$start"
                hx_put_le "$raw" $((elba * 512 + idx * esize + 40)) 8 $((start + sectors - 1))
                hx_put_le "$raw" $((hdr + 88)) 4 "$(hx_crc32 "$raw" $((elba * 512)) $((n * esize)))"
                hx_put_le "$raw" $((hdr + 16)) 4 0
                hx_put_le "$raw" $((hdr + 16)) 4 "$(hx_crc32 "$raw" "$hdr" "$hsize")"
        done
}

# A valid qcow2 with 1 MiB of data, and one with an ext4 on the whole disk.
hx_small_qcow2() { # PATH [SIZE]
        qemu-img create -q -f qcow2 -- "$1" "${2:-64M}"
        qemu-io -f qcow2 -c 'write -P 0xa5 0 1M' -- "$1" >/dev/null
}
hx_ext4_qcow2() { # PATH
        local raw=$QT_SCRATCH/${1##*/}.raw
        truncate -s 64M -- "$raw"
        mkfs.ext4 -q -F -- "$raw"
        qemu-img convert -f raw -O qcow2 -- "$raw" "$1"
        rm -f -- "$raw"
}

# sha256 of LEN bytes at OFFSET of the disk an image holds (any format), read with qemu-img.
hx_disk_range_sha() { # IMG OFFSET LEN
        local raw=$QT_SCRATCH/range.raw
        qemu-img convert -U -O raw -- "$1" "$raw" || qt_fail "qemu-img convert of $1 failed"
        dd if="$raw" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none |
                sha256sum | cut -d' ' -f1
        rm -f -- "$raw"
}

# ---- filesystems left as a crash leaves them --------------------------------------------

# hx_shut_down DIR: stop the filesystem mounted on DIR as a host crash would, after its
# journal or log got what was synced (FS_IOC_SHUTDOWN with a log flush: xfs, and ext4, which
# takes the same ioctl), then unmount it: it needs recovery now.
hx_shut_down() {
        xfs_io -x -c 'shutdown -f' -- "$1" || qt_fail "cannot shut down the filesystem on $1"
        qt_umount "$1"
}

# Whether the filesystem on DEV (ext4 or xfs) has a journal or log to replay.
hx_needs_recovery() { # DEV FSTYPE
        case $2 in
        ext4) dumpe2fs -h -- "$1" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery' ;;
        xfs) xfs_logprint -t -- "$1" 2>/dev/null | grep -q 'state: <DIRTY>' ;;
        *) return 1 ;;
        esac
}

# ---- jobs -----------------------------------------------------------------------------------

# hx_shrink_json OUT IMG [QTRIMCTL-OPTIONS...]: qtrimctl shrink --json to its end; the JSON
# array goes to OUT, what it said on stderr to OUT.err. Never fails: the caller judges.
hx_shrink_json() {
        local out=$1 img=$2
        shift 2
        qt_qtrimctl shrink --json "$@" "$img" >"$out" 2>"$out.err" || true
}

# A field of the first job in such a JSON file (jq syntax, e.g. .result, .error).
hx_json() { jq -r ".[0]$2 // \"\"" "$1"; }

# "STATE MESSAGE" of filesystem NAME in such a JSON file.
hx_json_fs() { jq -r --arg n "$2" '.[0].filesystems[] | select(.name == $n) | "\(.state) \(.message)"' "$1"; }

# qtrimd with its workers pausing at POINT (needs -Dtest_hooks=true); the file HX_RESUME names
# (in the work dir unless set) resumes them.
hx_daemon_pausing_at() { # POINT
        : "${HX_RESUME:=$QT_WORK/resume}"
        qt_daemon_stop >/dev/null
        rm -f -- "$HX_RESUME"
        QTRIM_TEST_PAUSE=$1 QTRIM_TEST_RESUME=$HX_RESUME qt_daemon_start >/dev/null
}

hx_have_test_hooks() { grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" 2>/dev/null; }

# hx_start_paused POINT OUT IMG [QTRIMCTL-OPTIONS...]: qtrimctl shrink --json in the
# background (to OUT), and wait until its job's worker pauses at POINT. Sets HX_CTL_PID,
# HX_WORKER (the worker's pid) and HX_JOB.
hx_start_paused() {
        local point=$1 out=$2 img=$3 i
        shift 3
        : "${HX_RESUME:=$QT_WORK/resume}"
        : >"$QT_DAEMON_LOG"
        rm -f -- "$HX_RESUME"
        qt_qtrimctl shrink --json "$@" "$img" >"$out" 2>"$out.err" &
        HX_CTL_PID=$!
        qt_defer qt_kill_wait "$HX_CTL_PID" 5
        for ((i = 0; i < 600; i++)); do
                grep -aqE "paused at $point( |\$)" "$QT_DAEMON_LOG" && break
                kill -0 "$HX_CTL_PID" 2>/dev/null || qt_fail "qtrimctl ended before its job paused at $point: $(cat "$out.err")"
                sleep 0.1
        done
        ((i < 600)) || qt_fail "the job never paused at $point"
        HX_WORKER=$(grep -a -m 1 -oE "qtrim worker [0-9]+: paused at $point" "$QT_DAEMON_LOG" | awk '{ print $3 }')
        HX_WORKER=${HX_WORKER%:}
        HX_JOB=$(busctl --system --json=short call org.qtrim1 /org/qtrim1 org.qtrim1.Manager ListJobs |
                jq -r --arg img "$img" 'first(.data[0][] | select(.[1] == $img) | .[3]) // ""')
        qt_info "paused at $point: worker $HX_WORKER, job ${HX_JOB:-?}"
}

# Let the paused job go on, and wait for qtrimctl to report its end.
# shellcheck disable=SC2120 # the timeout is optional
hx_resume_and_wait() { # [TIMEOUT]
        touch -- "$HX_RESUME"
        qt_wait_pid_gone "$HX_CTL_PID" "${1:-120}" || qt_fail "qtrimctl still waits ${1:-120} s after the resume"
        qt_undefer qt_kill_wait "$HX_CTL_PID" 5
}

# The processes a worker runs (qemu-nbd, qemu-img): pids of its children called NAME.
hx_worker_child() { pgrep -o -P "$1" -x "$2"; }
# hx_job_qemu_nbd WORKER: the job's qemu-nbd: the worker's child on the kernel path, its FUSE
# server's (qtrim-fuse) on the FUSE path.
hx_job_qemu_nbd() {
        local server
        if server=$(hx_worker_child "$1" qtrim-fuse); then
                hx_worker_child "$server" qemu-nbd
        else
                hx_worker_child "$1" qemu-nbd
        fi
}

# hx_verify_raw_in_place IMG: verify_files for a raw image too big to copy (its partitions are
# read through read-only loop devices on the image itself), e.g. one of 8 EiB on a tmpfs.
hx_verify_raw_in_place() {
        local img=$1 manifest n i name fstype off size dev mnt
        manifest=$(qt_manifest "$img")
        n=$(jq '.filesystems | length' "$manifest")
        for ((i = 0; i < n; i++)); do
                name=$(jq -r ".filesystems[$i].name" "$manifest")
                fstype=$(jq -r ".filesystems[$i].fstype" "$manifest")
                off=$(jq -r ".filesystems[$i].offset" "$manifest")
                size=$(jq -r ".filesystems[$i].size" "$manifest")
                qt_loop_attach dev "$img" "$off" "$size" ro
                [[ $(blkid -p -o value -s TYPE -- "$dev" || true) == "$fstype" ]] ||
                        qt_fail "$img: $name does not hold $fstype any more"
                _qt_fsck_ro "$dev" "$fstype" "$img:$name"
                mnt=$QT_SCRATCH/verify-$name
                qt_mount "$dev" "$mnt" "$(qt_ro_opts "$fstype")" "$fstype"
                jq -r ".filesystems[$i].files[] | \"\(.sha256)  \(.path)\"" "$manifest" >"$QT_SCRATCH/sums-$name"
                (cd -- "$mnt" && sha256sum --quiet --strict -c -- "$QT_SCRATCH/sums-$name") ||
                        qt_fail "$img: kept files on $name ($fstype) are damaged"
                qt_umount "$mnt"
                qt_loop_detach "$dev"
                qt_info "$name ($fstype): $(wc -l <"$QT_SCRATCH/sums-$name") files intact, fsck clean"
        done
}

# hx_verify_replayed IMG: verify_files on a raw copy of IMG whose filesystems were each mounted
# read-write once first (a journal or log replay, what the guest's next boot does): for images
# left as a crash leaves them. Says which filesystems needed the replay.
hx_verify_replayed() {
        local img=$1 copy=$QT_SCRATCH/replayed.raw m n i fstype off size dev mnt
        m=$(qt_manifest "$img")
        qemu-img convert -U -O raw -- "$img" "$copy" || qt_fail "qemu-img convert of $img failed"
        n=$(jq '.filesystems | length' "$m")
        for ((i = 0; i < n; i++)); do
                fstype=$(jq -r ".filesystems[$i].fstype" "$m")
                off=$(jq -r ".filesystems[$i].offset" "$m")
                size=$(jq -r ".filesystems[$i].size" "$m")
                qt_loop_attach dev "$copy" "$off" "$size"
                if hx_needs_recovery "$dev" "$fstype"; then
                        qt_info "$(jq -r ".filesystems[$i].name" "$m") ($fstype) needed its journal replayed"
                        mnt=$QT_SCRATCH/replay-$i
                        qt_mount "$dev" "$mnt" "$(qt_rw_opts "$fstype")" "$fstype"
                        qt_umount "$mnt"
                fi
                qt_loop_detach "$dev"
        done
        jq --arg image "$copy" '.image = $image' "$m" >"$(qt_manifest "$copy")"
        verify_files "$copy" >/dev/null
        rm -f -- "$copy" "$(qt_manifest "$copy")"
}

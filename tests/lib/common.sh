# shellcheck shell=bash
# Shared plumbing for qtrim's integration tests and benchmarks: logging, a per-test work
# directory, and a cleanup registry so a failing test still unmounts, detaches and stops what
# it started. Source it (images.sh, verify.sh and bus.sh do); it does not change shell options.

if [[ -n "${QT_COMMON_SH_LOADED:-}" ]]; then
        return 0
fi
QT_COMMON_SH_LOADED=1

QT_LIB_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
QT_SOURCE_DIR=${SOURCE_DIR:-$(cd -- "$QT_LIB_DIR/../.." && pwd)}
# shellcheck disable=SC2034 # used by bus.sh and the scripts that source this file
QT_BUILD_DIR=${BUILD_DIR:-$QT_SOURCE_DIR/build}
export LC_ALL=C

MiB=$((1024 * 1024))
# shellcheck disable=SC2034 # used by the scripts that source this file
GiB=$((1024 * MiB))

# Test output goes to stdout so meson's log shows what was checked, failures to stderr.
qt_step() { printf '==> %s\n' "$*"; }
qt_info() { printf '    %s\n' "$*"; }
qt_ok() { printf '    ok: %s\n' "$*"; }
qt_warn() { printf '    WARNING: %s\n' "$*" >&2; }
qt_fail() {
        printf 'FAIL: %s\n' "$*" >&2
        exit 1
}

qt_need() {
        local c
        for c in "$@"; do
                command -v "$c" >/dev/null 2>&1 || qt_fail "required tool '$c' is not installed"
        done
}

qt_now() { date +%s.%N; }
# Seconds since a qt_now timestamp, with 2 decimals.
qt_since() { awk -v a="$1" -v b="$(qt_now)" 'BEGIN { printf "%.2f", b - a }'; }
# Kills spread over a job (crash.sh, the VM suite's kernel-path crash payload): the moment of
# kill K of N spread evenly over DURATION seconds, and a sleep until AT seconds after T0 (a
# qt_now timestamp; none if that has passed).
qt_spread_moment() { awk -v k="$1" -v n="$2" -v d="$3" 'BEGIN { printf "%.3f", d * k / (n + 1) }'; }
# "result N, result M" of an associative array (by name) that counts the outcomes of kills.
qt_outcome_summary() {
        local -n _qt_outcomes=$1
        local r summary=
        for r in "${!_qt_outcomes[@]}"; do summary+="${summary:+, }$r ${_qt_outcomes[$r]}"; done
        printf '%s' "$summary"
}
qt_sleep_until() { # T0 AT
        sleep "$(awk -v at="$2" -v el="$(qt_since "$1")" 'BEGIN { s = at - el; printf "%.3f", (s > 0 ? s : 0) }')"
}

qt_human() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }

# ---- cleanup registry -------------------------------------------------------------------
# One shell command per line in $QT_WORK/.cleanup, run last-in first-out by qt_cleanup. A file
# rather than an array so functions that run in a subshell ($(...)) can register too.

qt_defer() {
        [[ -n "${QT_WORK:-}" ]] || qt_fail "qt_defer: no work dir (call qt_init_workdir first)"
        local line
        printf -v line '%q ' "$@"
        printf '%s\n' "${line% }" >>"$QT_WORK/.cleanup"
}

# Forget a registered command (it was undone on the normal path). Same arguments as qt_defer.
qt_undefer() {
        local line f=$QT_WORK/.cleanup
        printf -v line '%q ' "$@"
        line=${line% }
        [[ -f $f ]] || return 0
        # Drop the last matching line only: the same command may be registered twice.
        tac -- "$f" | awk -v l="$line" '!done && $0 == l { done = 1; next } { print }' | tac >"$f.new"
        mv -f -- "$f.new" "$f"
}

# Run a registered command now and forget it.
qt_undo() {
        qt_undefer "$@"
        "$@"
}

qt_run_cleanup_registry() {
        local f=$QT_WORK/.cleanup line
        [[ -f $f ]] || return 0
        while IFS= read -r line; do
                [[ -n $line ]] || continue
                eval "$line" >/dev/null 2>&1 || printf '    cleanup: "%s" failed\n' "$line" >&2
        done < <(tac -- "$f")
        : >"$f"
}

# Safety net after the registry: anything that still refers to this test's work dir (a loop
# device over one of its files, a mount under it, a qemu-nbd/nbdfuse serving one of its
# images) is ours and is removed, by device or by pid.
qt_sweep_workdir() {
        local dev back mnt pid comm
        while read -r mnt; do
                umount -l -- "$mnt" 2>/dev/null || true
        done < <(qt_mounts_under "$QT_WORK" | sort -r)
        while read -r dev back; do
                [[ $back == "$QT_WORK"/* ]] && losetup -d "$dev" 2>/dev/null
        done < <(losetup -n -l -O NAME,BACK-FILE 2>/dev/null)
        for pid in $(qt_pids_using_workdir); do
                { read -r comm <"/proc/$pid/comm"; } 2>/dev/null || continue
                printf '    cleanup: killing leftover %s (pid %s)\n' "$comm" "$pid" >&2
                kill -KILL "$pid" 2>/dev/null || true
        done
}

# Pids of qemu-nbd, qemu-io, qemu-img and nbdfuse processes whose command line names the work dir.
qt_pids_using_workdir() {
        local p comm
        for p in /proc/[0-9]*; do
                # read, not $(cat): no fork per process, this runs in every cleanup.
                { read -r comm <"$p/comm"; } 2>/dev/null || continue
                case $comm in qemu-nbd | qemu-io | qemu-img | nbdfuse) ;; *) continue ;; esac
                if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qF -- "$QT_WORK"; then
                        printf '%s\n' "${p#/proc/}"
                fi
        done
}

# Mount points (from this process's mount namespace) at or below a directory.
qt_mounts_under() {
        local dir=$1
        awk -v d="$dir" '{ m = $5; gsub(/\\040/, " ", m); if (m == d || index(m, d "/") == 1) print m }' \
                /proc/self/mountinfo
}

qt_cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        set +e
        if [[ -n "${QT_WORK:-}" && -d "${QT_WORK:-}" ]]; then
                if ((rc != 0)) && declare -F qt_on_failure >/dev/null; then
                        qt_on_failure
                fi
                qt_run_cleanup_registry
                qt_sweep_workdir
                if ((rc != 0)) && [[ -n "${QT_KEEP_WORK:-}" ]]; then
                        printf 'work dir kept: %s\n' "$QT_WORK" >&2
                else
                        rm -rf --one-file-system -- "$QT_WORK"
                fi
        fi
        exit "$rc"
}

# Make this test's work dir (on disk, not tmpfs: images are sparse but large) and arm the trap.
# Sets QT_WORK, QT_IMAGES (where the images live: the daemon's temp copies appear here),
# QT_SCRATCH (intermediates, mount points) and records the baseline for qt leftovers checks.
qt_init_workdir() {
        local name=${1:-test} base=${TMPDIR:-/var/tmp}
        if ((EUID != 0)); then
                # meson counts 77 as skipped: the unit tests still run for a non-root user.
                printf 'SKIP: these tests need root (loop devices, mounts, a system bus)\n'
                exit 77
        fi
        QT_WORK=$(mktemp -d "$base/qtrim-$name.XXXXXX")
        QT_IMAGES=$QT_WORK/images
        QT_SCRATCH=$QT_WORK/scratch
        mkdir -p -- "$QT_IMAGES" "$QT_SCRATCH" "$QT_WORK/manifests"
        : >"$QT_WORK/.cleanup"
        export QT_WORK QT_IMAGES QT_SCRATCH
        trap qt_cleanup EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        qt_record_baseline
}

# What was there before the test: leftovers are judged against it, so a loop device or FUSE
# mount that someone else on the machine owns does not fail the test. QT_STRICT_LEFTOVERS=1
# (for CI machines that run nothing else) treats every loop device and FUSE mount as a leftover.
qt_record_baseline() {
        qt_list_loops >"$QT_WORK/.baseline-loops"
        qt_list_fuse_mounts >"$QT_WORK/.baseline-fuse"
        qt_list_pids qemu-nbd >"$QT_WORK/.baseline-qemu-nbd"
        qt_list_pids qtrim-fuse >"$QT_WORK/.baseline-qtrim-fuse"
}

qt_list_loops() { losetup -n -l -O NAME 2>/dev/null | sort || true; }
qt_list_fuse_mounts() {
        awk '{ for (i = 7; $i != "-"; i++); if ($(i + 1) ~ /^fuse/) print $5 }' /proc/self/mountinfo | sort
}
qt_list_pids() { pgrep -x "$1" | sort || true; }

# ---- loop devices and mounts, registered for cleanup --------------------------------------

# qt_loop_attach VAR FILE OFFSET SIZE [ro]: a loop device over FILE[OFFSET, OFFSET+SIZE).
# Partitions are reached this way because the test machines' kernel parses no partition tables.
qt_loop_attach() {
        local -n _qt_dev=$1
        local file=$2 off=$3 size=$4 ro=${5:-}
        local args=(--find --show --offset "$off" --sizelimit "$size")
        [[ $ro == ro ]] && args+=(--read-only)
        _qt_dev=$(losetup "${args[@]}" -- "$file") || qt_fail "losetup $file at $off failed"
        qt_defer losetup -d "$_qt_dev"
}

qt_loop_detach() {
        qt_undo losetup -d "$1"
}

qt_mount() { # DEV DIR OPTIONS [FSTYPE]
        local dev=$1 dir=$2 opts=$3 type=${4:-}
        mkdir -p -- "$dir"
        mount ${type:+-t "$type"} -o "$opts" -- "$dev" "$dir" || qt_fail "mount $dev ($type, $opts) failed"
        qt_defer umount -- "$dir"
}

# A loop device just detached may hold its backing file for a moment more (the kernel releases
# it asynchronously): an unmount of the filesystem holding that file waits for it.
qt_umount() {
        local i
        for ((i = 0; i < 50; i++)); do
                if umount -- "$1" 2>/dev/null; then
                        qt_undefer umount -- "$1"
                        return 0
                fi
                sleep 0.1
        done
        qt_undo umount -- "$1"
}

# Mount options per filesystem for writing test data. nodiscard: btrfs turns on async discard
# by default and would punch out the deleted data we want to keep allocated; noinit_itable keeps
# ext4's lazy inode-table zeroing from writing in the background.
qt_rw_opts() {
        case $1 in
        ext4) printf 'rw,nodiscard,noinit_itable' ;;
        ext2 | ext3) printf 'rw' ;;
        xfs) printf 'rw,nodiscard,nouuid' ;;
        btrfs) printf 'rw,nodiscard' ;;
        *) qt_fail "no mount options for fstype '$1'" ;;
        esac
}

# Read-only mount options that never write, not even a journal replay.
qt_ro_opts() {
        case $1 in
        ext3 | ext4) printf 'ro,noload' ;;
        ext2) printf 'ro' ;;
        xfs) printf 'ro,norecovery,nouuid' ;;
        btrfs) printf 'ro,rescue=nologreplay' ;;
        *) qt_fail "no mount options for fstype '$1'" ;;
        esac
}

qt_sha256() { sha256sum -- "$1" | cut -d' ' -f1; }

# Everything about a file that must not change when qtrim refuses it: content, mtime, inode.
qt_file_fingerprint() {
        local f=$1
        if [[ -f $f ]]; then
                printf '%s %s\n' "$(qt_sha256 "$f")" "$(stat -c '%y %i %s' -- "$f")"
        else
                stat -c '%F %y %i' -- "$f"
        fi
}

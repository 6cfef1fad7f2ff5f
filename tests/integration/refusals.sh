#!/bin/bash
# Shrink() must refuse bad input with the right org.qtrim1.Error.* name, before any job exists,
# without changing the file: nonexistent, directory, device node, FIFO, not an image, symbolic
# links (to a text file, to /etc/shadow, a loop), in use (held by a writer, held by a reader),
# encrypted (luks, aes), corrupt (flag set, damaged L1 table), the backing file of a clone, a
# device or a network protocol as backing file, relative path, bad options.
# qtrimctl must exit non-zero on each.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start refusals
d=$QT_IMAGES

# Big-endian 64-bit integer at a byte offset of a file: read, and write in place.
get_be64() { od -An -tu8 --endian=big -j "$2" -N 8 -- "$1" | tr -d ' '; }
put_be64() {
        local hex esc=
        printf -v hex '%016x' "$3"
        for ((i = 0; i < 16; i += 2)); do esc+="\\x${hex:i:2}"; done
        # shellcheck disable=SC2059 # the escapes are the format
        printf "$esc" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
small_qcow2() { # PATH: a valid qcow2 with 1 MiB of data in its first cluster(s)
        qemu-img create -q -f qcow2 -- "$1" 64M
        qemu-io -f qcow2 -c 'write -P 0xa5 0 1M' -- "$1" >/dev/null
}

qt_step "make the bad inputs"
mkdir -- "$d/a-directory"
printf 'this is a text file, not a disk image\n' >"$d/notes.txt"
mkfifo -- "$d/a-fifo"
ln -s -- notes.txt "$d/link-to-notes"
ln -s -- /etc/shadow "$d/link-to-shadow"
ln -s -- loop-b "$d/loop-a"
ln -s -- loop-a "$d/loop-b"
small_qcow2 "$d/held-rw.qcow2"
small_qcow2 "$d/held-ro.qcow2"
small_qcow2 "$d/plain.qcow2"
small_qcow2 "$d/base.qcow2"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -- "$d/clone-of-base.qcow2"
# Backing files root must not open on an image's word (-u: qemu-img does not look at them).
qemu-img create -q -f qcow2 -u -b /dev/zero -F raw -- "$d/backing-device.qcow2" 64M
qemu-img create -q -f qcow2 -u -b nbd://127.0.0.1:1/x -F raw -- "$d/backing-nbd.qcow2" 64M
# qemu times its PBKDF with the thread's CPU clock and gives up ("Unable to get accurate CPU
# usage") when a coarse clock reads 0 ms for the first round, which happens now and then on VMs:
# retry. iter-time=10 keeps each try short.
for ((try = 1; ; try++)); do
        qemu-img create -q -f qcow2 --object secret,id=s0,data=x \
                -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 -- "$d/encrypted-luks.qcow2" 64M \
                2>"$QT_SCRATCH/luks.err" && break
        ((try < 20)) || qt_fail "cannot create a LUKS qcow2: $(cat "$QT_SCRATCH/luks.err")"
done
qemu-img create -q -f qcow2 --object secret,id=s0,data=x \
        -o encrypt.format=aes,encrypt.key-secret=s0 -- "$d/encrypted-aes.qcow2" 64M
# The qcow2 "corrupt" bit: incompatible_features (header offset 72) bit 1.
small_qcow2 "$d/corrupt-flag.qcow2"
put_be64 "$d/corrupt-flag.qcow2" 72 $(($(get_be64 "$d/corrupt-flag.qcow2" 72) | 2))
qemu-img info --output=json -- "$d/corrupt-flag.qcow2" | jq -e '."format-specific".data.corrupt == true' >/dev/null ||
        qt_fail "could not make a qcow2 marked corrupt"
# An L1 entry pointing at an unaligned L2 table: qemu-img check finds it, no flag is set.
small_qcow2 "$d/corrupt-l1.qcow2"
l1=$(get_be64 "$d/corrupt-l1.qcow2" 40)
put_be64 "$d/corrupt-l1.qcow2" "$l1" $(($(get_be64 "$d/corrupt-l1.qcow2" "$l1") + 512))
rc=0
qemu-img check -q -- "$d/corrupt-l1.qcow2" >/dev/null 2>&1 || rc=$?
((rc == 2)) || qt_fail "could not make a qcow2 that qemu-img check finds corrupt (check exit $rc)"

# Holders of qemu's image locks, as a running VM would be: one writer, one reader.
holders=()
for mode in rw ro; do
        args=()
        [[ $mode == ro ]] && args=(--read-only)
        qemu-nbd "${args[@]}" --fork --persistent -f qcow2 --pid-file "$QT_SCRATCH/nbd-$mode.pid" \
                -k "$QT_SCRATCH/nbd-$mode.sock" -- "$d/held-$mode.qcow2"
        holders+=("$(cat "$QT_SCRATCH/nbd-$mode.pid")")
        qt_defer qt_kill_wait "${holders[-1]}" 5
done
qt_expect_files

# name | path given to Shrink | expected error | check qtrimctl too (no: it makes paths absolute)
cases=(
        "nonexistent|$d/no-such-image.qcow2|org.qtrim1.Error.NotFound|yes"
        "directory|$d/a-directory|org.qtrim1.Error.NotRegularFile|yes"
        "device node|/dev/null|org.qtrim1.Error.NotRegularFile|yes"
        "text file|$d/notes.txt|org.qtrim1.Error.NotAnImage|yes"
        "FIFO|$d/a-fifo|org.qtrim1.Error.NotRegularFile|yes"
        "symlink to a text file|$d/link-to-notes|org.qtrim1.Error.NotAnImage|yes"
        "symlink to /etc/shadow|$d/link-to-shadow|org.qtrim1.Error.NotAnImage|yes"
        "loop of symlinks|$d/loop-a|org.qtrim1.Error.NotRegularFile|yes"
        "held by a writer|$d/held-rw.qcow2|org.qtrim1.Error.ImageInUse|yes"
        "held by a reader|$d/held-ro.qcow2|org.qtrim1.Error.ImageInUse|yes"
        "encrypted (luks)|$d/encrypted-luks.qcow2|org.qtrim1.Error.Encrypted|yes"
        "encrypted (legacy aes)|$d/encrypted-aes.qcow2|org.qtrim1.Error.Encrypted|yes"
        "corrupt flag|$d/corrupt-flag.qcow2|org.qtrim1.Error.Corrupt|yes"
        "damaged L1 table|$d/corrupt-l1.qcow2|org.qtrim1.Error.Corrupt|yes"
        "backing file of a clone|$d/base.qcow2|org.qtrim1.Error.HasOverlays|yes"
        "a device as backing file|$d/backing-device.qcow2|org.qtrim1.Error.Unsupported|yes"
        "an nbd:// backing file|$d/backing-nbd.qcow2|org.qtrim1.Error.Unsupported|yes"
        "relative path|images/plain.qcow2|org.qtrim1.Error.NotAbsolute|no"
)

failures=()
no_jobs() {
        [[ $(busctl --system call org.qtrim1 /org/qtrim1 org.qtrim1.Manager ListJobs) == "a(usso) 0" ]]
}
fingerprint() { if [[ -e $1 ]]; then qt_file_fingerprint "$1"; else printf 'absent\n'; fi; }

for c in "${cases[@]}"; do
        IFS='|' read -r what path want cli <<<"$c"
        qt_step "$what: $path -> $want"
        real=$path
        [[ $path == /* ]] || real=$QT_WORK/$path
        fp=$(fingerprint "$real")

        got=$(cd / && qt_shrink_error_name "$path")
        if [[ $got == "$want" ]]; then
                qt_ok "Shrink() failed with $got"
        else
                failures+=("$what: Shrink() gave '$got', expected $want")
                printf '    FAILED: Shrink() gave %s, expected %s\n' "$got" "$want" >&2
        fi
        # The same through busctl, as an admin would call it.
        rc=0
        err=$(cd / && busctl --system call org.qtrim1 /org/qtrim1 org.qtrim1.Manager Shrink 'sa{sv}' "$path" 0 2>&1 >/dev/null) || rc=$?
        if ((rc != 0)) && [[ -n $err ]]; then
                qt_ok "busctl call failed (exit $rc): $err"
        else
                failures+=("$what: busctl call exited $rc with '$err'")
        fi
        no_jobs || failures+=("$what: a job exists after the refusal")
        if [[ $cli == yes ]]; then
                rc=0
                out=$(qt_qtrimctl shrink "$path" 2>&1) || rc=$?
                if ((rc != 0)); then
                        qt_ok "qtrimctl shrink exited $rc: $out"
                else
                        failures+=("$what: qtrimctl shrink exited 0: $out")
                fi
                no_jobs || failures+=("$what: a job exists after qtrimctl's refusal")
        fi
        if [[ $(fingerprint "$real") == "$fp" ]]; then
                qt_ok "unchanged (content, mtime, inode)"
        else
                failures+=("$what: $real changed")
        fi
done

qt_step "malformed options"
for opts in "@a{sv} {'convert': <'yes'>}" "@a{sv} {'no-such-option': <true>}"; do
        got=$(qt_shrink_error_name "$d/plain.qcow2" "$opts")
        if [[ $got == org.freedesktop.DBus.Error.InvalidArgs ]]; then
                qt_ok "$opts: $got"
        else
                failures+=("options $opts: got '$got', expected org.freedesktop.DBus.Error.InvalidArgs")
        fi
        no_jobs || failures+=("options $opts: a job exists after the refusal")
done

# The holders are ours, not leftovers of qtrimd: stop them before looking for leftovers.
for pid in "${holders[@]}"; do qt_undo qt_kill_wait "$pid" 5; done

if ((${#failures[@]} > 0)); then
        printf '  - %s\n' "${failures[@]}" >&2
        qt_fail "${#failures[@]} refusal check(s) failed"
fi
qt_scenario_end

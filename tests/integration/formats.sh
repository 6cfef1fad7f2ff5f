#!/bin/bash
# Never guess a disk's format. A raw guest disk whose guest wrote a qcow2 header at offset 0,
# naming another VM's image as its backing file, must never be opened as qcow2: refused with
# FormatMismatch through Shrink, Inspect, qtrimctl and the sweep, both files byte-identical and
# the other VM's image never opened. A declared format is used end to end; content that
# disagrees with it, or a configuration (Formats=) that disagrees with the caller, is refused.
# A real qcow2 named .img is shrunk once its format is declared or configured; a raw disk
# declared raw is trimmed.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start formats
qt_need inotifywait
d=$QT_IMAGES
sweep_dir=$d/sweep
mkdir -- "$sweep_dir"
qt_daemon_stop
# Per directory: *.img there are qcow2 (outside it the name rule holds); one file is raw.
printf '[Daemon]\nIdleExitSec=0\nImageDirectories=%s\nFormats=%s/*.img:qcow2 %s/nested.qcow2:raw\n' \
        "$sweep_dir" "$sweep_dir" "$sweep_dir" >"$QT_DAEMON_CONFIG"
qt_daemon_start

qt_step "another VM's disk, and raw disks whose guest wrote a qcow2 header naming it as backing"
other=$d/other-vm.qcow2
mkdir -- "$QT_SCRATCH/other-files"
head -c 3M /dev/urandom >"$QT_SCRATCH/other-files/tenant-data.bin"
truncate -s 64M -- "$QT_SCRATCH/other.raw"
mkfs.ext4 -q -F -d "$QT_SCRATCH/other-files" -- "$QT_SCRATCH/other.raw"
qemu-img convert -f raw -O qcow2 -- "$QT_SCRATCH/other.raw" "$other"
rm -f -- "$QT_SCRATCH/other.raw"
qemu-img create -q -f qcow2 -b "$other" -F qcow2 -- "$QT_SCRATCH/header.qcow2"
hostile() { # PATH: a 128 MiB raw disk that starts with that qcow2 header
        truncate -s 128M -- "$1"
        dd if="$QT_SCRATCH/header.qcow2" of="$1" conv=notrunc status=none
}
hostile "$d/vm.raw"
hostile "$sweep_dir/hostile.raw"
hostile "$sweep_dir/nested.qcow2" # the name says qcow2; Formats= says raw
# What qemu would make of vm.raw if asked to guess: the attack this test is about.
[[ $(qemu-img info -U --output=json -- "$d/vm.raw" | jq -r '."backing-filename"') == "$other" ]] ||
        qt_fail "the hostile disk does not look like a qcow2 overlay of the other VM's image to qemu"
qt_expect_files

sums=$QT_WORK/sums
for f in "$other" "$d/vm.raw" "$sweep_dir/hostile.raw" "$sweep_dir/nested.qcow2"; do
        qt_file_fingerprint "$f"
done >"$sums"
# Anything that opens the other VM's image from here on is a failure (inotify sees every open).
opens=$QT_WORK/other-opens
inotifywait -m -e open --format '%e %w' -- "$other" >"$opens" 2>"$QT_WORK/inotify.err" &
watch_pid=$!
qt_defer qt_kill_wait "$watch_pid" 5
for ((i = 0; i < 100; i++)); do grep -q 'Watches established' "$QT_WORK/inotify.err" && break; sleep 0.1; done
# Prove that it sees an open; what it records after that one is qtrim's.
cat -- "$other" >/dev/null
for ((i = 0; i < 100; i++)); do [[ -s $opens ]] && break; sleep 0.1; done
[[ $(wc -l <"$opens") == 1 ]] || qt_fail "inotifywait does not see opens of $other"

failures=()
expect() { # WHAT GOT WANT
        if [[ $2 == "$3" ]]; then qt_ok "$1: $2"; else failures+=("$1: got '$2', expected '$3'"); fi
}
inspect_error() { # IMAGE [GVARIANT-OPTIONS]
        local out
        if out=$(gdbus call --system --dest org.qtrim1 --object-path /org/qtrim1 \
                --method org.qtrim1.Manager.Inspect "'$1'" "${2:-@a{sv\} {\}}" 2>&1); then
                printf 'ok\n'
        else
                sed -nE 's/.*GDBus\.Error:([A-Za-z0-9_.]+):.*/\1/p' <<<"$out" | head -n 1
        fi
}
mismatch=org.qtrim1.Error.FormatMismatch

qt_step "the hostile raw disk: nothing declared, declared raw; Shrink, Inspect and qtrimctl"
expect "Shrink vm.raw" "$(qt_shrink_error_name "$d/vm.raw")" "$mismatch"
expect "Inspect vm.raw" "$(inspect_error "$d/vm.raw")" "$mismatch"
expect "Shrink vm.raw format=raw" "$(qt_shrink_error_name "$d/vm.raw" "@a{sv} {'format': <'raw'>}")" "$mismatch"
expect "Inspect vm.raw format=raw" "$(inspect_error "$d/vm.raw" "@a{sv} {'format': <'raw'>}")" "$mismatch"
rc=0
out=$(qt_qtrimctl shrink "$d/vm.raw" 2>&1) || rc=$?
qt_info "qtrimctl shrink vm.raw: $out"
expect "qtrimctl shrink vm.raw exit status" "$rc" 1
[[ $out == *"its first bytes are a qcow2 header but its name says raw"* ]] ||
        failures+=("qtrimctl shrink vm.raw did not say why: $out")
rc=0
out=$(qt_qtrimctl shrink --format raw "$d/vm.raw" 2>&1) || rc=$?
qt_info "qtrimctl shrink --format raw vm.raw: $out"
expect "qtrimctl shrink --format raw vm.raw exit status" "$rc" 1
[[ $out == *"declared raw, but its first bytes are a qcow2 header; refusing"* ]] ||
        failures+=("qtrimctl shrink --format raw did not say why: $out")

qt_step "the sweep: Formats= says nested.qcow2 is raw, the name says hostile.raw is"
make_whole_qcow2 "$sweep_dir/real.img"
qt_expect_files
before_real=$(allocated_bytes "$sweep_dir/real.img")
rc=0
qt_qtrimctl shrink --all --verbose >"$QT_WORK/sweep.out" 2>&1 || rc=$?
sed 's/^/    | /' "$QT_WORK/sweep.out"
expect "sweep exit status" "$rc" 1
grep -qE "^qtrimctl: $sweep_dir/hostile.raw: failed: its first bytes are a qcow2 header but its name says raw.*\($mismatch\)" "$QT_WORK/sweep.out" ||
        failures+=("the sweep did not refuse hostile.raw with FormatMismatch")
grep -qE "^qtrimctl: $sweep_dir/nested.qcow2: failed: configured as raw, but its first bytes are a qcow2 header; refusing \($mismatch\)" "$QT_WORK/sweep.out" ||
        failures+=("the sweep did not refuse nested.qcow2 (configured raw) with FormatMismatch")
grep -qE "^$sweep_dir/real.img: .* (→|->) .* allocated" "$QT_WORK/sweep.out" ||
        failures+=("the sweep did not shrink real.img (qcow2, configured by Formats=*.img:qcow2)")
grep -qE '^sweep: 3 image\(s\): 1 shrunk, 0 skipped, 2 failed' "$QT_WORK/sweep.out" ||
        failures+=("the sweep's summary is not 1 shrunk, 2 failed")
qt_check_shrunk "$sweep_dir/real.img" "$before_real" qcow2

qt_step "a declared format that the configuration contradicts"
expect "Shrink nested.qcow2 format=qcow2 (Formats= says raw)" \
        "$(qt_shrink_error_name "$sweep_dir/nested.qcow2" "@a{sv} {'format': <'qcow2'>}")" "$mismatch"

qt_step "the other VM's image was never opened, every hostile file byte-identical"
qt_undo qt_kill_wait "$watch_pid" 5
if [[ $(wc -l <"$opens") != 1 ]]; then
        failures+=("the other VM's image was opened $(($(wc -l <"$opens") - 1)) time(s)")
else
        qt_ok "no process opened $(basename -- "$other")"
fi
for f in "$other" "$d/vm.raw" "$sweep_dir/hostile.raw" "$sweep_dir/nested.qcow2"; do
        qt_file_fingerprint "$f"
done | diff -u -- "$sums" - || failures+=("a hostile file or the other VM's image changed")

qt_step "a real qcow2 named .img outside Formats=: refused until declared, then shrunk"
make_whole_qcow2 "$d/legacy.img"
qt_expect_files
before=$(allocated_bytes "$d/legacy.img")
fp=$(qt_file_fingerprint "$d/legacy.img")
expect "Shrink legacy.img (qcow2 named .img, nothing declared)" "$(qt_shrink_error_name "$d/legacy.img")" "$mismatch"
[[ $(qt_file_fingerprint "$d/legacy.img") == "$fp" ]] || failures+=("legacy.img changed on a refusal")
qt_qtrimctl inspect --format qcow2 --json "$d/legacy.img" >"$QT_WORK/inspect.json" ||
        failures+=("qtrimctl inspect --format qcow2 legacy.img failed")
expect "inspect --format qcow2: format and its source" \
        "$(jq -r '.info | "\(.Format) \(.FormatSource)"' "$QT_WORK/inspect.json")" "qcow2 declared"
qt_qtrimctl_ok shrink --format qcow2 "$d/legacy.img"
qt_check_shrunk "$d/legacy.img" "$before" qcow2

qt_step "a real qcow2 named .qcow2: guessed, and said so"
make_whole_qcow2 "$d/plain.qcow2"
qt_expect_files
qt_qtrimctl inspect "$d/plain.qcow2" >"$QT_WORK/inspect.txt" || failures+=("inspect plain.qcow2 failed")
sed 's/^/    | /' "$QT_WORK/inspect.txt"
grep -qE '^Format from: +guessed$' "$QT_WORK/inspect.txt" || failures+=("inspect does not say the format was guessed")

qt_step "a raw disk: declared qcow2 refused, declared raw trimmed"
make_raw_whole "$d/disk.raw"
qt_expect_files
fp=$(qt_file_fingerprint "$d/disk.raw")
expect "Shrink disk.raw format=qcow2" "$(qt_shrink_error_name "$d/disk.raw" "@a{sv} {'format': <'qcow2'>}")" "$mismatch"
[[ $(qt_file_fingerprint "$d/disk.raw") == "$fp" ]] || failures+=("disk.raw changed on a refusal")
rc=0
out=$(qt_qtrimctl shrink --format qcow2 "$d/disk.raw" 2>&1) || rc=$?
[[ $rc == 1 && $out == *"declared qcow2, but it has no qcow2 header; refusing"* ]] ||
        failures+=("qtrimctl shrink --format qcow2 disk.raw: exit $rc, $out")
before=$(allocated_bytes "$d/disk.raw")
qt_qtrimctl_ok shrink --format raw "$d/disk.raw"
qt_check_shrunk "$d/disk.raw" "$before" raw

qt_step "option errors"
expect "Shrink format=vmdk" "$(qt_shrink_error_name "$d/plain.qcow2" "@a{sv} {'format': <'vmdk'>}")" \
        org.freedesktop.DBus.Error.InvalidArgs
expect "Inspect convert=false (not an Inspect option)" "$(inspect_error "$d/plain.qcow2" "@a{sv} {'convert': <false>}")" \
        org.freedesktop.DBus.Error.InvalidArgs
rc=0
qt_qtrimctl shrink --format vmdk "$d/plain.qcow2" >/dev/null 2>&1 || rc=$?
expect "qtrimctl --format vmdk exit status" "$rc" 2

if ((${#failures[@]} > 0)); then
        printf '  - %s\n' "${failures[@]}" >&2
        qt_fail "${#failures[@]} format check(s) failed"
fi
qt_scenario_end

#!/bin/bash
# Hostile and malformed files and calls, beyond refusals.sh: each must end in a typed D-Bus
# error, from Shrink() (and from Inspect(), which reads the same files, for those that a qemu
# tool would open), before any job exists, with the file byte-identical (content, mtime,
# inode) and no process left: a socket, links to a socket, a directory, a device, a FIFO and
# nowhere; names no file can have; empty and random files; qcow2 files cut short or whose
# header lies (sizes, offsets, cluster size, version, features, snapshot table, backing name);
# backing chains that are missing, loop (a qcow2 that names itself makes qemu-img check eat
# gigabytes), run through a FIFO or a directory, or are too long; a data file elsewhere (one
# naming /etc/shadow); malformed a{sv} options and calls of the wrong signature. Then what is
# accepted and must stay harmless (a raw backing file that is /etc/shadow: read, never
# written), and, with -Dtest_hooks=true, the same image asked for twice at once and through
# other names while its job runs. Ends with the tally of bad inputs tried.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/hostile.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/hostile.sh"

qt_need gdbus dbus-send perl
qt_scenario_start hostile-images
d=$QT_IMAGES
other=$QT_WORK/elsewhere # outside the image directory: no HasOverlays to hide a loop
mkdir -- "$other"

# The D-Bus error name a call ends with, or "ok" and its reply. gdbus, not busctl: busctl
# prints only an error's message, never its name.
call_error() { # METHOD GVARIANT-ARGS...
        local method=$1 out
        shift
        if out=$(timeout 120 gdbus call --system --dest org.qtrim1 --object-path /org/qtrim1 \
                --method "org.qtrim1.Manager.$method" "$@" 2>&1); then
                printf 'ok %s\n' "$out"
                return 0
        fi
        sed -nE 's/.*GDBus\.Error:([A-Za-z0-9_.]+):.*/\1/p' <<<"$out" | head -n 1 | grep . ||
                printf 'unparsed: %s\n' "${out:0:300}"
}
# The same with dbus-send, which sends whatever signature it is told to.
send_error() { # DBUS-SEND-ARGS...
        local out
        if out=$(timeout 60 dbus-send --system --print-reply --dest=org.qtrim1 /org/qtrim1 \
                org.qtrim1.Manager.Shrink "$@" 2>&1); then
                printf 'ok\n'
                return 0
        fi
        sed -nE 's/^Error ([A-Za-z0-9_.]+):.*/\1/p' <<<"$out" | head -n 1 | grep . ||
                printf 'unparsed: %s\n' "${out:0:300}"
}
gv_string() { printf "'%s'" "${1//\'/\\\'}"; }
no_jobs() {
        [[ $(busctl --system call org.qtrim1 /org/qtrim1 org.qtrim1.Manager ListJobs) == "a(usso) 0" ]]
}
fingerprint() { if [[ -e $1 || -L $1 ]]; then qt_file_fingerprint "$1"; else printf 'absent\n'; fi; }

# refuse NAME PATH WANT [inspect]: Shrink() (and Inspect(), if asked) of PATH end in WANT, no
# job is left, and PATH (and /etc/shadow) did not change.
refuse() {
        local what=$1 path=$2 want=$3 inspect=${4:-} fp shadow got t0
        qt_step "$what -> $want"
        fp=$(fingerprint "$path")
        shadow=$(qt_file_fingerprint /etc/shadow)
        t0=$SECONDS
        got=$(call_error Shrink "$(gv_string "$path")" "@a{sv} {}")
        if [[ -n $inspect ]]; then
                local got_inspect
                got_inspect=$(call_error Inspect "$(gv_string "$path")" '@a{sv} {}')
                [[ $got_inspect == "$got" ]] || got+=" (Inspect: $got_inspect)"
        fi
        # One input, one line in the tally: Shrink's answer, and Inspect's if it differs.
        hx_expect "$what" "$got" "$want"
        ((SECONDS - t0 < 60)) || hx_failed "$what: took $((SECONDS - t0)) s to refuse"
        no_jobs || hx_failed "$what: a job exists after the refusal"
        [[ $(fingerprint "$path") == "$fp" ]] || hx_failed "$what: $path changed"
        [[ $(qt_file_fingerprint /etc/shadow) == "$shadow" ]] || hx_failed "$what: /etc/shadow changed"
}

qt_step "make the hostile files"
base=$QT_SCRATCH/base.qcow2
hx_small_qcow2 "$base"
# A copy of the valid qcow2 with one header field overwritten (qemu's docs/interop/qcow2.txt).
patched() { # NAME OFFSET BYTES VALUE
        cp -- "$base" "$d/$1"
        hx_put_be "$d/$1" "$2" "$3" "$4"
}
perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => $ARGV[0]) or die "$!\n"' \
        "$d/a-socket"
[[ -S $d/a-socket ]] || qt_fail "could not make a socket"
ln -s -- a-socket "$d/link-to-socket"
mkdir -- "$d/a-directory"
ln -s -- a-directory "$d/link-to-directory"
ln -s -- no-such-file.qcow2 "$d/dangling-link"
ln -s -- /dev/zero "$d/link-to-device"
mkfifo -- "$d/a-fifo"
ln -s -- a-fifo "$d/link-to-fifo"
: >"$d/empty.img"
head -c 1M /dev/urandom >"$d/random.img"
printf 'not an image\n' >"$d/"$'new\nline\ttab.img'

for n in 4 50 200; do
        cp -- "$base" "$d/cut-$n.qcow2"
        truncate -s "$n" -- "$d/cut-$n.qcow2"
done
cp -- "$base" "$d/cut-data.qcow2"
truncate -s $(($(stat -c %s -- "$base") - 512 * 1024)) -- "$d/cut-data.qcow2"
patched size-16eib.qcow2 24 8 0xffffffffffffffff
patched size-4eib.qcow2 24 8 $((1 << 62))
patched size-1tib.qcow2 24 8 $((1 << 40)) # the L1 table still covers 64 MiB
patched l1-size-huge.qcow2 36 4 $((1 << 30))
patched l1-offset-past-end.qcow2 40 8 $((1 << 40))
patched refcount-offset-past-end.qcow2 48 8 $((1 << 40))
patched refcount-clusters-huge.qcow2 56 4 $((1 << 24))
patched cluster-bits-31.qcow2 20 4 31
patched snapshots-huge.qcow2 60 4 $((1 << 20))
hx_put_be "$d/snapshots-huge.qcow2" 64 8 $((1 << 40))
patched header-length-huge.qcow2 100 4 $((1 << 20))
patched backing-name-size-lies.qcow2 8 8 512
hx_put_be "$d/backing-name-size-lies.qcow2" 16 4 100000
patched version-4.qcow2 4 4 4
patched unknown-incompatible-feature.qcow2 72 8 $((1 << 62))

backed() { # NAME BACKING-NAME BACKING-FORMAT: a qcow2 recording that backing file (-u: unopened)
        qemu-img create -q -f qcow2 -u -b "$2" -F "$3" -- "$d/$1" 64M
}
backed missing-backing.qcow2 no-such-base.qcow2 qcow2
backed self-backed.qcow2 self-backed.qcow2 qcow2
qemu-img create -q -f qcow2 -u -b ../elsewhere/loop-b.qcow2 -F qcow2 -- "$d/loop-a.qcow2" 64M
qemu-img create -q -f qcow2 -u -b ../images/loop-a.qcow2 -F qcow2 -- "$other/loop-b.qcow2" 64M
# qemu resolves this pair by appending "../sub/" for ever, until the name is too long.
mkdir -- "$other/sub"
qemu-img create -q -f qcow2 -u -b ../elsewhere/sub/growing-b.qcow2 -F qcow2 -- "$d/growing-a.qcow2" 64M
qemu-img create -q -f qcow2 -u -b ../../images/growing-a.qcow2 -F qcow2 -- "$other/sub/growing-b.qcow2" 64M
# 257 backing files below the image: one more than qtrim follows.
chain=$other/chain
mkdir -- "$chain"
qemu-img create -q -f qcow2 -- "$chain/0.qcow2" 64M
for ((i = 1; i <= 256; i++)); do
        qemu-img create -q -f qcow2 -u -b "$((i - 1)).qcow2" -F qcow2 -- "$chain/$i.qcow2" 64M
done
backed chain-too-long.qcow2 "$chain/256.qcow2" qcow2
mkfifo -- "$other/fifo"
backed fifo-backing.qcow2 "$other/fifo" raw
backed directory-backing.qcow2 "$other" raw
printf 'text, not qcow2\n' >"$other/notes.txt"
backed text-backing.qcow2 "$other/notes.txt" qcow2
# An external data file: qemu-nbd would write the guest's data into it. Made with a harmless
# name of the same length, then renamed to /etc/shadow in the header.
(cd -- "$d" && qemu-img create -q -f qcow2 -o data_file=datafile.xx -- data-file.qcow2 64M)
(cd -- "$d" && qemu-img create -q -f qcow2 -o data_file=shadow-ab.x -- data-file-shadow.qcow2 64M)
rm -f -- "$d/shadow-ab.x"
off=$(grep -m 1 -boa 'shadow-ab.x' "$d/data-file-shadow.qcow2" | cut -d: -f1)
printf '/etc/shadow' | dd of="$d/data-file-shadow.qcow2" bs=1 seek="$off" conv=notrunc status=none
[[ $(qemu-img info -U --output=json -- "$d/data-file-shadow.qcow2" | jq -r '."format-specific".data."data-file"') == /etc/shadow ]] ||
        qt_fail "could not make a qcow2 whose data file is /etc/shadow"
qt_expect_files

qt_step "files that are no image at all"
refuse "socket" "$d/a-socket" org.qtrim1.Error.NotRegularFile
refuse "symlink to a socket" "$d/link-to-socket" org.qtrim1.Error.NotRegularFile
refuse "symlink to a directory" "$d/link-to-directory" org.qtrim1.Error.NotRegularFile
refuse "dangling symlink" "$d/dangling-link" org.qtrim1.Error.NotFound
refuse "symlink to /dev/zero" "$d/link-to-device" org.qtrim1.Error.NotRegularFile
refuse "symlink to a FIFO (must not block)" "$d/link-to-fifo" org.qtrim1.Error.NotRegularFile
refuse "empty file" "$d/empty.img" org.qtrim1.Error.NotAnImage inspect
refuse "1 MiB of random bytes" "$d/random.img" org.qtrim1.Error.NotAnImage inspect
refuse "text file named with a newline and a tab" "$d/"$'new\nline\ttab.img' org.qtrim1.Error.NotAnImage
long=$d/$(printf 'd%.0s/' {1..2500})x
refuse "path longer than PATH_MAX" "$long" org.qtrim1.Error.NotFound
refuse "path component longer than NAME_MAX" "$d/$(printf 'x%.0s' {1..300})" org.qtrim1.Error.NotFound
refuse "100 KB path" "/$(head -c 100000 /dev/zero | tr '\0' a)" org.qtrim1.Error.NotFound
refuse "empty path" "" org.qtrim1.Error.NotAbsolute

qt_step "qcow2 files cut short or whose header lies"
refuse "qcow2 cut to its magic (4 bytes)" "$d/cut-4.qcow2" org.qtrim1.Error.NotAnImage inspect
refuse "qcow2 cut inside its header (50 bytes)" "$d/cut-50.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 cut after its header (200 bytes)" "$d/cut-200.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 missing its last 512 KiB of data" "$d/cut-data.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 claiming 16 EiB" "$d/size-16eib.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 claiming 4 EiB" "$d/size-4eib.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 claiming 1 TiB with a 64 MiB L1 table" "$d/size-1tib.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 L1 size 2^30" "$d/l1-size-huge.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 L1 table past the end of the file" "$d/l1-offset-past-end.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 refcount table past the end" "$d/refcount-offset-past-end.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 refcount table of 2^24 clusters" "$d/refcount-clusters-huge.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 cluster_bits 31" "$d/cluster-bits-31.qcow2" org.qtrim1.Error.Unsupported inspect
refuse "qcow2 with 2^20 snapshots past the end" "$d/snapshots-huge.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 header_length 1 MiB" "$d/header-length-huge.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 backing name of 100000 bytes" "$d/backing-name-size-lies.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "qcow2 version 4" "$d/version-4.qcow2" org.qtrim1.Error.Unsupported inspect
refuse "qcow2 with an unknown incompatible feature" "$d/unknown-incompatible-feature.qcow2" org.qtrim1.Error.Unsupported inspect

qt_step "backing chains"
refuse "missing backing file" "$d/missing-backing.qcow2" org.qtrim1.Error.Unsupported inspect
refuse "qcow2 backed by itself" "$d/self-backed.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "backing loop through another directory" "$d/loop-a.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "backing loop whose names grow" "$d/growing-a.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "backing chain of 257 files" "$d/chain-too-long.qcow2" org.qtrim1.Error.Unsupported inspect
refuse "FIFO as backing file (must not block)" "$d/fifo-backing.qcow2" org.qtrim1.Error.Unsupported inspect
refuse "directory as backing file" "$d/directory-backing.qcow2" org.qtrim1.Error.Unsupported inspect
refuse "text file as qcow2 backing file" "$d/text-backing.qcow2" org.qtrim1.Error.Corrupt inspect
refuse "external data file" "$d/data-file.qcow2" org.qtrim1.Error.Unsupported inspect
refuse "/etc/shadow as data file" "$d/data-file-shadow.qcow2" org.qtrim1.Error.Unsupported inspect
# The probes ran qemu tools on all of these; none may still run.
[[ -z $(qt_pids_using_workdir) ]] || hx_failed "qemu processes left: $(qt_pids_using_workdir)"

qt_step "malformed options and calls"
img=$d/plain.qcow2
hx_small_qcow2 "$img"
qt_expect_files
fp=$(qt_file_fingerprint "$img")
huge=$(head -c 100000 /dev/zero | tr '\0' k)
opt() { # CASE GVARIANT-OPTIONS
        hx_expect "options $1" "$(call_error Shrink "$(gv_string "$img")" "$2")" org.freedesktop.DBus.Error.InvalidArgs
        no_jobs || hx_failed "options $1: a job exists after the refusal"
}
opt "convert as int32" "@a{sv} {'convert': <int32 1>}"
opt "convert as a nested variant" "@a{sv} {'convert': <<true>>}"
opt "convert as an array" "@a{sv} {'convert': <[true]>}"
opt "convert as a 100 KB string" "@a{sv} {'convert': <'$huge'>}"
opt "100 KB unknown key" "@a{sv} {'$huge': <true>}"
opt "empty key" "@a{sv} {'': <true>}"
opt "valid key then unknown key" "@a{sv} {'convert': <true>, 'Convert': <true>}"
sig() { # CASE DBUS-SEND-ARGS...
        local what=$1
        shift
        hx_expect "call $what" "$(send_error "$@")" org.freedesktop.DBus.Error.InvalidArgs
        no_jobs || hx_failed "call $what: a job exists after the refusal"
}
sig "options as a{ss}" "string:$img" dict:string:string:convert,yes
sig "no options" "string:$img"
sig "an extra argument" "string:$img" dict:string:string: int32:1
sig "image as int32" int32:7 dict:string:string:
sig "no arguments at all"
[[ $(qt_file_fingerprint "$img") == "$fp" ]] || hx_failed "plain.qcow2 changed under malformed calls"
# Not malformed on the wire, but ambiguous: a{sv} readers differ on which of two equal keys
# counts (GLib's lookup takes the first), so qtrimd takes neither.
sig_dup=$(call_error Shrink "$(gv_string "$img")" "@a{sv} {'convert': <false>, 'convert': <true>}")
hx_expect "options: convert given twice" "$sig_dup" org.freedesktop.DBus.Error.InvalidArgs
no_jobs || hx_failed "options given twice: a job exists after the refusal"

qt_step "accepted, and harmless: a raw backing file that is /etc/shadow (read, never written)"
shadow=$(qt_file_fingerprint /etc/shadow)
backed shadow-backing.qcow2 /etc/shadow raw
qt_expect_files
hx_shrink_json "$QT_WORK/shadow.json" "$d/shadow-backing.qcow2"
hx_tally "/etc/shadow as raw backing file" "$(hx_json "$QT_WORK/shadow.json" .result)"
[[ $(hx_json "$QT_WORK/shadow.json" .result) == "done" ]] ||
        hx_failed "shadow backing: $(cat "$QT_WORK/shadow.json" "$QT_WORK/shadow.json.err")"
[[ $(qt_file_fingerprint /etc/shadow) == "$shadow" ]] || hx_failed "/etc/shadow changed"
[[ $(qemu-img info -U --output=json -- "$d/shadow-backing.qcow2" | jq -r '."backing-filename"') == /etc/shadow ]] ||
        hx_failed "the shadow-backed image lost or changed its backing file"
qt_ok "job $(hx_json "$QT_WORK/shadow.json" .result); /etc/shadow unchanged"
assert_no_leftovers >/dev/null

if hx_have_test_hooks; then
        qt_step "the same image twice at once, and through other names while its job runs"
        img=$d/twice.qcow2
        hx_ext4_qcow2 "$img"
        ln -s -- twice.qcow2 "$d/twice-symlink.qcow2"
        ln -- "$img" "$QT_WORK/twice-hardlink.qcow2"
        qt_expect_files
        hx_daemon_pausing_at trim-mounted
        qt_watch_job_removed
        call_error Shrink "$(gv_string "$img")" "@a{sv} {}" >"$QT_WORK/twice-1" &
        p1=$!
        call_error Shrink "$(gv_string "$img")" "@a{sv} {}" >"$QT_WORK/twice-2" &
        p2=$!
        wait "$p1" "$p2"
        results=$(cat "$QT_WORK/twice-1" "$QT_WORK/twice-2" | sed -E 's/^(ok) .*/\1/' | sort | tr '\n' ' ')
        hx_expect "the same image twice at once" "$results" "ok org.qtrim1.Error.AlreadyRunning "
        job=$(sed -nE "s/^ok \(objectpath '([^']*)',\)$/\1/p" "$QT_WORK/twice-1" "$QT_WORK/twice-2")
        got=$(call_error Shrink "$(gv_string "$d/twice-symlink.qcow2")" "@a{sv} {}")
        hx_expect "the running image again, through a symlink" "$got" org.qtrim1.Error.AlreadyRunning
        got=$(call_error Shrink "$(gv_string "$QT_WORK/twice-hardlink.qcow2")" "@a{sv} {}")
        hx_expect "the running image again, through a hard link" "$got" org.qtrim1.Error.AlreadyRunning
        if [[ -n $job ]]; then
                qt_qtrimctl cancel "$job" >/dev/null
                qt_wait_job_gone "$job" 60
                result=$(qt_job_removed_result "$job" 10 "$img") || result=none
                [[ $result == canceled ]] || hx_failed "the job of the twice-asked image ended '$result', expected canceled"
        fi
        assert_qemu_img_check "$img" >/dev/null
        rm -f -- "$QT_WORK/twice-hardlink.qcow2"
else
        qt_info "no test hooks in this build: the same-image-twice cases need a job held at a pause point"
fi

hx_report
qt_scenario_end

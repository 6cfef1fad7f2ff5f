#!/bin/bash
# Resource faults and an image changed under a running job (jobs held at pause points: needs
# -Dtest_hooks=true, skipped (77) otherwise). Each time: the original is intact (consistent,
# every kept file there, after the journal replay a crash would need), the error is clear,
# nothing is left (no mount, loop device, qemu-nbd or temporary copy).
#  - qemu-nbd killed with the filesystems mounted, before their trim: the job fails;
#  - the image directory cannot take the copy (immutable): trimmed in place, the job fails
#    saying it cannot create the copy;
#  - the image on a read-only mount, or immutable, or append-only: refused at Shrink()
#    (Unsupported), and still inspected;
#  - the image made immutable with its filesystems mounted: the job fails, nothing replaced;
#  - mode and owner changed by an administrator before the replace: the new file has them (the
#    replace copies the original's attributes as they are at that moment, not as inspected);
#  - the path swapped for another image between Shrink() and the worker's inspection, at
#    attach, in the trim, and before the replace, and for a link to /etc/shadow (a raw image,
#    which qemu-nbd would open as raw); deleted in the trim: the job fails, the file put in its
#    place is byte for byte as it was (the worker reaches the file it inspected by its open file,
#    and refuses at inspection a file qtrimd did not resolve);
#  - no loop device to be had: qtrimd runs with /dev/loop-control hidden (a /dev/null bind in its
#    own mount namespace); each filesystem fails saying so, the image is intact. Exhausting the real ones cannot be done safely on a shared machine:
#    /dev/loop-control makes a new device on every request (up to the minor number limit), and
#    every other user of the machine would run out too.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/hostile.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/hostile.sh"

if ! hx_have_test_hooks; then
        printf 'SKIP: %s is not built with -Dtest_hooks=true: no pause points\n' "$QT_BUILD_DIR"
        exit 77
fi
qt_need chattr unshare
qt_scenario_start faults
d=$QT_IMAGES

master=$QT_SCRATCH/master.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2"
make_gpt_ext4_xfs "$master"
other=$QT_SCRATCH/other.qcow2
hx_ext4_qcow2 "$other"
# What takes the image's path in the swaps: compact already, so a copy of it is never smaller
# and nothing but a check of the file's identity can notice the swap before the job ends.
swap_in=$QT_SCRATCH/swap-in.qcow2
hx_small_qcow2 "$swap_in"

# A fresh copy of the master at IMG; sets img, inode, before.
fresh() { # NAME
        img=$d/$1.qcow2
        qt_clone_image "$master" "$img"
        inode=$(stat -c %i -- "$img")
        before=$(allocated_bytes "$img")
        qt_expect_files
}
# What the job ended with, as qtrimctl --json said: "RESULT ERROR-NAME".
outcome() { printf '%s %s\n' "$(hx_json "$1" .result)" "$(hx_json "$1" .error)"; }
# expect_end CASE JSON RESULT ERROR-NAME [MESSAGE-PART]
expect_end() {
        local msg
        msg=$(hx_json "$2" .error_message)
        hx_expect "$1" "$(outcome "$2")" "$3 $4"
        qt_info "error message: ${msg:-none}; job message: $(hx_json "$2" .message)"
        [[ -z ${5:-} || $msg == *"$5"* ]] || hx_failed "$1: the error message does not say '$5': $msg"
}
not_replaced() { # CASE
        [[ $(stat -c %i -- "$img") == "$inode" ]] || hx_failed "$1: the image was replaced"
}
no_temp() { # CASE
        local left
        left=$(find "$QT_WORK" -xdev -name '.*.qtrim-*')
        [[ -z $left ]] || hx_failed "$1: temporary copy left: $left"
}
done_with() { # IMG: remove an image and its manifest, and expect the directory without it
        rm -f -- "$1" "$(qt_manifest "$1")"
        qt_expect_files
}

qt_step "qemu-nbd killed with the filesystems mounted"
hx_daemon_pausing_at trim-mounted
fresh nbd-killed
hx_start_paused trim-mounted "$QT_WORK/nbd-killed.json" "$img"
nbd=$(hx_job_qemu_nbd "$HX_WORKER")
[[ -n $nbd ]] || qt_fail "no qemu-nbd of worker $HX_WORKER"
kill -KILL "$nbd"
hx_resume_and_wait
expect_end "qemu-nbd killed mid-trim" "$QT_WORK/nbd-killed.json" failed org.qtrim1.Error.Failed
jq -r '.[0].filesystems[] | "    \(.name): \(.state) \(.message)"' "$QT_WORK/nbd-killed.json"
not_replaced "qemu-nbd killed"
no_temp "qemu-nbd killed"
assert_qemu_img_check "$img" >/dev/null
hx_verify_replayed "$img"
assert_no_leftovers >/dev/null
qt_ok "image consistent, files intact, nothing left"
done_with "$img"

qt_step "the image directory cannot take the copy (immutable directory)"
hx_daemon_pausing_at none
fresh dir-immutable
chattr +i -- "$d"
qt_defer chattr -i -- "$d"
hx_shrink_json "$QT_WORK/dir-immutable.json" "$img"
qt_undo chattr -i -- "$d"
jq -r '.[0] | "    \(.result) \(.error // "") \(.error_message // "") \(.message // "")"' "$QT_WORK/dir-immutable.json"
expect_end "image directory immutable" "$QT_WORK/dir-immutable.json" failed org.qtrim1.Error.Failed "temporary"
not_replaced "immutable directory"
no_temp "immutable directory"
after=$(allocated_bytes "$img")
((after < before)) || hx_failed "immutable directory: not trimmed in place ($(qt_human "$before") -> $(qt_human "$after"))"
assert_qemu_img_check "$img" >/dev/null
verify_files "$img" >/dev/null
qt_ok "trimmed in place ($(qt_human "$before") -> $(qt_human "$after")), files intact"
done_with "$img"

qt_step "images that cannot be written: refused at Shrink(), still inspected"
refused() { # CASE IMG
        local fp got
        fp=$(qt_file_fingerprint "$2")
        got=$(qt_shrink_error_name "$2")
        hx_expect "$1" "$got" org.qtrim1.Error.Unsupported
        [[ $(qt_file_fingerprint "$2") == "$fp" ]] || hx_failed "$1: the image changed"
        busctl --system call org.qtrim1 /org/qtrim1 org.qtrim1.Manager Inspect sa{sv} "$2" 0 >/dev/null ||
                hx_failed "$1: Inspect() failed on a read-only image"
}
ro_dir=$QT_WORK/ro-pool
mkdir -- "$ro_dir"
cp -- "$other" "$ro_dir/vm.qcow2"
mount --bind -- "$ro_dir" "$ro_dir"
qt_defer umount -- "$ro_dir"
mount -o remount,bind,ro -- "$ro_dir"
refused "image on a read-only mount" "$ro_dir/vm.qcow2"
qt_undo umount -- "$ro_dir"
cp -- "$other" "$d/immutable.qcow2"
cp -- "$other" "$d/append-only.qcow2"
qt_expect_files
chattr +i -- "$d/immutable.qcow2"
qt_defer chattr -i -- "$d/immutable.qcow2"
chattr +a -- "$d/append-only.qcow2"
qt_defer chattr -a -- "$d/append-only.qcow2"
refused "immutable image" "$d/immutable.qcow2"
refused "append-only image" "$d/append-only.qcow2"
qt_undo chattr -i -- "$d/immutable.qcow2"
qt_undo chattr -a -- "$d/append-only.qcow2"
done_with "$d/immutable.qcow2"
done_with "$d/append-only.qcow2"

qt_step "the image made immutable with its filesystems mounted"
hx_daemon_pausing_at trim-mounted
fresh made-immutable
hx_start_paused trim-mounted "$QT_WORK/made-immutable.json" "$img"
chattr +i -- "$img"
qt_defer chattr -i -- "$img"
hx_resume_and_wait
jq -r '.[0] | "    \(.result) \(.error // "") \(.error_message // "")", (.filesystems[] | "    \(.name): \(.state) \(.message)")' \
        "$QT_WORK/made-immutable.json"
expect_end "image made immutable mid-trim" "$QT_WORK/made-immutable.json" failed org.qtrim1.Error.Failed
qt_undo chattr -i -- "$img"
not_replaced "made immutable"
no_temp "made immutable"
assert_qemu_img_check "$img" >/dev/null
hx_verify_replayed "$img"
assert_no_leftovers >/dev/null
qt_ok "not replaced, consistent, files intact, nothing left"
done_with "$img"

qt_step "mode and owner changed by an administrator before the replace"
hx_daemon_pausing_at replace
fresh chmod
chmod 0600 -- "$img"
hx_start_paused replace "$QT_WORK/chmod.json" "$img"
chown 4242:4343 -- "$img"
chmod 0640 -- "$img"
hx_resume_and_wait
expect_end "mode and owner changed mid-job" "$QT_WORK/chmod.json" "done" ""
[[ $(stat -c %i -- "$img") != "$inode" ]] || hx_failed "chmod: the image was not replaced"
[[ $(stat -c '%a %u %g' -- "$img") == "640 4242 4343" ]] ||
        hx_failed "chmod: the replaced image has mode/owner $(stat -c '%a %u %g' -- "$img"), not the administrator's 640 4242 4343"
qt_check_shrunk "$img" "$before" qcow2 >/dev/null
qt_ok "replaced, with the administrator's mode 0640 and owner 4242:4343"
done_with "$img"

qt_step "the path swapped for another image"
# swap CASE POINT: at POINT, the image moves aside and another image takes its path; the job
# must fail, the other image must stay byte for byte as it was, the original must be whole.
swap() {
        local what=$1 point=$2 json=$QT_WORK/swap-$2.json fp_other
        hx_daemon_pausing_at "$point"
        fresh "swap-$point"
        hx_start_paused "$point" "$json" "$img"
        mv -- "$img" "$img.moved"
        cp -- "$swap_in" "$img"
        fp_other=$(qt_file_fingerprint "$img")
        hx_resume_and_wait
        expect_end "$what" "$json" failed org.qtrim1.Error.Failed "replaced"
        [[ $(qt_file_fingerprint "$img") == "$fp_other" ]] || hx_failed "$what: the image swapped in changed"
        [[ $(stat -c %i -- "$img.moved") == "$inode" ]] || hx_failed "$what: the original was replaced"
        no_temp "$what"
        mv -f -- "$img.moved" "$img"
        assert_qemu_img_check "$img" >/dev/null
        verify_files "$img" >/dev/null
        assert_no_leftovers >/dev/null
        qt_ok "failed; the image swapped in untouched, the original whole"
        done_with "$img"
}
swap "path swapped before the worker's inspection" inspect
swap "path swapped before the attach" attach
swap "path swapped in the trim" trim-mounted
swap "path swapped before the replace" replace

qt_step "a raw image's path swapped for a link to /etc/shadow before the attach"
hx_daemon_pausing_at attach
img=$d/swap-shadow.raw
truncate -s 64M -- "$img"
mkfs.ext4 -q -F -- "$img"
qt_expect_files
shadow=$(qt_file_fingerprint /etc/shadow)
hx_start_paused attach "$QT_WORK/swap-shadow.json" "$img"
mv -- "$img" "$img.moved"
ln -s -- /etc/shadow "$img"
hx_resume_and_wait
expect_end "raw image swapped for a link to /etc/shadow" "$QT_WORK/swap-shadow.json" failed org.qtrim1.Error.Failed
[[ $(qt_file_fingerprint /etc/shadow) == "$shadow" ]] || hx_failed "/etc/shadow changed"
[[ -L $img ]] || hx_failed "the link to /etc/shadow was replaced"
no_temp "swap to /etc/shadow"
rm -f -- "$img" "$img.moved"
qt_expect_files
assert_no_leftovers >/dev/null
qt_ok "failed; /etc/shadow unchanged; nothing left"

qt_step "the image deleted in the trim"
hx_daemon_pausing_at trim-mounted
fresh deleted
hx_start_paused trim-mounted "$QT_WORK/deleted.json" "$img"
rm -f -- "$img"
qt_expect_files
hx_resume_and_wait
expect_end "image deleted mid-trim" "$QT_WORK/deleted.json" failed org.qtrim1.Error.Failed
[[ ! -e $img ]] || hx_failed "deleted: something is at the image's path again"
no_temp "deleted"
assert_no_leftovers >/dev/null
qt_ok "failed; nothing put back, nothing left"
rm -f -- "$(qt_manifest "$img")"

qt_step "no loop device to be had (/dev/loop-control hidden from qtrimd)"
if [[ " ${QT_QTRIMD_EXTRA_ARGS:-} " == *" --attach=kernel "* ]]; then
        qt_info "skipped: this run attaches through /dev/nbdN, which needs no loop device"
        hx_report
        qt_scenario_end
        exit 0
fi
wrapper=$QT_WORK/no-loop-control.sh
printf '#!/bin/sh\n# /dev/null in place of /dev/loop-control, in this mount namespace only.\nmount --bind /dev/null /dev/loop-control && exec "$@"\n' >"$wrapper"
chmod +x -- "$wrapper"
qt_daemon_stop >/dev/null
# FUSE attach, where loop devices are what mounts the guest's filesystems.
QT_QTRIMD_WRAPPER="unshare --mount --propagation private $wrapper" qt_daemon_start --attach=fuse >/dev/null
fresh no-loop
hx_shrink_json "$QT_WORK/no-loop.json" "$img"
jq -r '.[0] | "    \(.result) \(.error // "") \(.error_message // "") \(.message // "")", (.filesystems[] | "    \(.name): \(.state) \(.message)")' \
        "$QT_WORK/no-loop.json"
for fs in p1 p2; do
        got=$(hx_json_fs "$QT_WORK/no-loop.json" "$fs")
        [[ $got == "failed "*"loop"* ]] || hx_failed "no loop device: $fs says '$got'"
done
hx_tally "no loop device to be had" "$(outcome "$QT_WORK/no-loop.json" | sed 's/ $//'): p1, p2 failed"
no_temp "no loop device"
assert_qemu_img_check "$img" >/dev/null
verify_files "$img" >/dev/null
assert_no_leftovers >/dev/null
qt_ok "filesystems failed with a clear message; image intact; nothing left"
qt_daemon_stop >/dev/null
qt_daemon_start >/dev/null
done_with "$img"

hx_report
qt_scenario_end

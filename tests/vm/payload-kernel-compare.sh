#!/bin/bash
# VM payload (tests/vm/run-guest.sh script tests/vm/payload-kernel-compare.sh RESULTS): the two
# attach paths on the same image, in a guest that has both (nbd module, FUSE, loop devices).
#
#  - Same result: clones of one dirty GPT ext4+xfs qcow2 shrunk with --attach=fuse and
#    --attach=kernel trim the same filesystems, free (nearly) the same host space, keep every file,
#    check clean; the compact copies allocate the same.
#  - Speed: QT_COMPARE_ROUNDS (default 5) --no-convert shrinks per path, alternating, each on a
#    fresh clone; the medians of attach, discover, trim and detach (the job's PhaseTimes) per path.
#    Written to $QTRIM_VM_RESULTS/attach-compare.json when run by run-guest.sh.
#
# Needs root and the nbd module. Under TCG the absolute times are the emulator's; the ratio
# between the paths is what to read.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

modprobe nbd || qt_fail "modprobe nbd failed: this payload needs the nbd module"
QT_QTRIMD_EXTRA_ARGS=
rounds=${QT_COMPARE_ROUNDS:-5}
out_dir=${QTRIM_VM_RESULTS:-}

qt_scenario_start kernel-compare

# qcow2, 640 MiB, every cluster allocated: GPT, p1 ext4 and p2 xfs (the least mkfs.xfs takes),
# each with deleted data among kept files. Small enough for two copies on the guest's tmpfs.
make_compare_image() {
        local img=$1 raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        rm -f -- "$raw" "$frag"
        truncate -s 640M -- "$raw"
        printf 'label: gpt\nsize=310MiB, type=L\nsize=310MiB, type=L\n' | sfdisk -q -- "$raw" >/dev/null
        _qt_populate_part "$frag" "$raw" 1 ext4 160 4K 100K 1M 8M
        _qt_populate_part "$frag" "$raw" 2 xfs 128 12K 300K 3M
        _qt_finish_qcow2 "$raw" "$img" full
        _qt_write_manifest "$img" qcow2 gpt "$frag"
}

use_path() { # fuse|kernel
        qt_daemon_stop >/dev/null
        qt_daemon_start "--attach=$1" >/dev/null
}

# One shrink of a fresh clone; its --json report goes to $QT_WORK/NAME.json.
shrink_clone() { # PATH NAME [qtrimctl options]
        local path=$1 name=$2
        shift 2
        img=$QT_IMAGES/$name.qcow2
        qt_clone_image "$master" "$img"
        qt_qtrimctl shrink --json "$@" "$img" >"$QT_WORK/$name.json" ||
                qt_fail "$path: qtrimctl shrink $* failed: $(cat "$QT_WORK/$name.json")"
        jq -e '.[0].result == "done"' "$QT_WORK/$name.json" >/dev/null ||
                qt_fail "$path: job did not end done: $(cat "$QT_WORK/$name.json")"
}

master=$QT_SCRATCH/master.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2 (640 MiB)"
make_compare_image "$master"
before=$(allocated_bytes "$master")
qt_info "master allocates $(qt_human "$before")"

qt_step "same image, both paths: the trim"
declare -A alloc trimmed
for path in fuse kernel; do
        use_path "$path"
        shrink_clone "$path" "trim-$path" --no-convert
        if [[ $path == kernel ]]; then
                grep -q 'attaching through FUSE' "$QT_DAEMON_LOG" && qt_fail "kernel run went through FUSE"
        fi
        alloc[$path]=$(allocated_bytes "$img")
        trimmed[$path]=$(jq -r '[.[0].filesystems[] | "\(.name)=\(.state):\(.trimmed)"] | join(" ")' "$QT_WORK/trim-$path.json")
        assert_qemu_img_check "$img" >/dev/null
        verify_files "$img" >/dev/null
        qt_info "$path: $(qt_human "$before") -> $(qt_human "${alloc[$path]}") allocated; ${trimmed[$path]}"
done
# FITRIM reports what the filesystem discarded: the same free space either way.
[[ ${trimmed[fuse]} == "${trimmed[kernel]}" ]] ||
        qt_fail "the paths trimmed differently: fuse ${trimmed[fuse]}, kernel ${trimmed[kernel]}"
# The kernel path sends NBD trims, the FUSE path write-zeroes that may unmap (nbd-fuse.c):
# whole clusters go either way; only partial clusters at the edges of free extents may differ.
diff=$((alloc[fuse] - alloc[kernel]))
((diff < 0)) && diff=$((-diff))
((diff <= 4 * MiB)) ||
        qt_fail "allocation after the trim differs by $(qt_human "$diff"): fuse $(qt_human "${alloc[fuse]}"), kernel $(qt_human "${alloc[kernel]}")"
if qemu-img compare -q "$QT_IMAGES/trim-fuse.qcow2" "$QT_IMAGES/trim-kernel.qcow2"; then
        same_content=identical
else
        same_content="different (free space only: every kept file verified on both)"
fi
qt_ok "same filesystems trimmed, same bytes; allocation within $(qt_human "$diff"); guest-visible content $same_content"
rm -f -- "$QT_IMAGES"/trim-*.qcow2

qt_step "same image, both paths: the whole shrink (trim, compact copy, replace)"
declare -A after
for path in fuse kernel; do
        use_path "$path"
        shrink_clone "$path" "full-$path"
        qt_check_shrunk "$img" "$before" qcow2 >/dev/null
        after[$path]=$(allocated_bytes "$img")
        qt_info "$path: $(qt_human "$before") -> $(qt_human "${after[$path]}")"
done
diff=$((after[fuse] - after[kernel]))
((diff < 0)) && diff=$((-diff))
((diff <= MiB)) || qt_fail "the compact copies differ by $(qt_human "$diff")"
qemu-img compare -q "$QT_IMAGES/full-fuse.qcow2" "$QT_IMAGES/full-kernel.qcow2" && content=identical ||
        content="different in free space"
qt_ok "compact copies: fuse $(qt_human "${after[fuse]}"), kernel $(qt_human "${after[kernel]}"); content $content"
rm -f -- "$QT_IMAGES"/full-*.qcow2
qt_expect_files

qt_step "speed: $rounds --no-convert shrinks per path, alternating"
: >"$QT_WORK/times"
for ((r = 1; r <= rounds; r++)); do
        for path in fuse kernel; do
                use_path "$path"
                shrink_clone "$path" "bench" --no-convert
                jq -r --arg path "$path" '.[0].phases | "\($path) \(.attach) \(.discover) \(.trim) \(.detach)"' \
                        "$QT_WORK/bench.json" >>"$QT_WORK/times"
                rm -f -- "$img" "$(qt_manifest "$img")"
        done
done
qt_expect_files
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
summary='{}'
for path in fuse kernel; do
        line=$path
        for col in 2 3 4 5; do
                m=$(awk -v p="$path" -v c="$col" '$1 == p { print $c }' "$QT_WORK/times" | median)
                line+=" $m"
        done
        at=$(awk -v p="$path" '$1 == p { print $2 + $4 }' "$QT_WORK/times" | median)
        all=$(awk -v p="$path" '$1 == p { print $2 + $3 + $4 + $5 }' "$QT_WORK/times" | median)
        read -r _ a d t x <<<"$line"
        qt_info "$path (median of $rounds): attach ${a}s discover ${d}s trim ${t}s detach ${x}s; attach+trim ${at}s; attach..detach ${all}s"
        summary=$(jq --arg p "$path" --argjson a "$a" --argjson d "$d" --argjson t "$t" --argjson x "$x" \
                --argjson at "$at" --argjson all "$all" --argjson n "$rounds" \
                '. + {($p): {rounds: $n, attach: $a, discover: $d, trim: $t, detach: $x, attach_plus_trim: $at, attach_to_detach: $all}}' <<<"$summary")
done
qt_info "every round: $(tr '\n' ';' <"$QT_WORK/times")"
if [[ -n $out_dir && -d $out_dir ]]; then
        printf '%s\n' "$summary" >"$out_dir/attach-compare.json"
fi
qt_ok "timings recorded"

qt_scenario_end

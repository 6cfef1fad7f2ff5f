#!/bin/bash
# Benchmark (not a test): qtrim's two attach paths on copies of the same dirty image, inside a
# script-mode guest (tests/vm/run-guest.sh: this machine's kernel has no nbd). Each round shrinks
# one copy with `qtrimd --attach=kernel` (qemu-nbd -c /dev/nbdN) and one with --attach=fuse
# (qemu-nbd + libnbd + FUSE), alternating, with --no-convert so only attach, discover, trim and
# detach differ. Image: make_gpt_ext4_xfs (1 GiB qcow2, GPT, ext4 + xfs, ~530 MiB deleted).
# Prints per round and the medians of each phase. Under TCG the absolute figures are 10-20x a
# real machine's; the ratio between the paths is the point.
#
# Usage (as root): bench/attach-bench.sh        ROUNDS=3 bench/attach-bench.sh
# Builds build-bench (release, no sanitizers) unless BUILD_DIR names another build.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
top=$(cd -- "$here/.." && pwd)

# ---- on the host: build, boot a guest with this script as its payload ----------------------
if [[ -z ${QTRIM_VM_GUEST:-} ]]; then
        "$top/tools/install-deps.sh"
        export BUILD_DIR=${BUILD_DIR:-$top/build-bench} SOURCE_DIR=$top
        [[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" "$top" --buildtype=release -Dtests=false >/dev/null
        ninja -C "$BUILD_DIR" >/dev/null
        export ROUNDS=${ROUNDS:-2}
        export QT_VM_ENV="${QT_VM_ENV:-} ROUNDS"
        exec "$top/tests/vm/run-guest.sh" script "${BASH_SOURCE[0]}" "$BUILD_DIR/vm/results/attach-bench"
fi

# ---- in the guest ---------------------------------------------------------------------------
# shellcheck source=tests/lib/scenario.sh
source "$top/tests/lib/scenario.sh"

rounds=${ROUNDS:-2}
phases=(attach discover trim detach)
modprobe nbd || qt_fail "modprobe nbd failed"
qt_init_workdir attach-bench
qt_bus_start

qt_step "building the image"
master=$QT_IMAGES/master.qcow2
make_gpt_ext4_xfs "$master"
qt_info "$(qt_human "$(allocated_bytes "$master")") allocated, guest uses $(qt_human "$(jq .guest_used_bytes "$(qt_manifest "$master")")")"

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
results=$QT_WORK/results.tsv
: >"$results"
for ((round = 1; round <= rounds; round++)); do
        qt_step "round $round of $rounds"
        for backend in kernel fuse; do
                img=$QT_IMAGES/$backend.qcow2
                qt_clone_image "$master" "$img"
                sync
                qt_daemon_start --attach="$backend"
                t0=$(qt_now)
                "$QT_QTRIMCTL" --json --no-convert shrink "$img" >"$QT_WORK/out.json"
                seconds=$(qt_since "$t0")
                qt_daemon_stop
                row="$backend	$seconds"
                for p in "${phases[@]}"; do
                        row+="	$(jq --arg p "$p" '.[0].phases[$p] // 0' "$QT_WORK/out.json")"
                done
                row+="	$(jq '.[0].bytes_trimmed' "$QT_WORK/out.json")"
                printf '%s\n' "$row" >>"$results"
                qt_info "$backend: ${seconds}s, $(jq -c '.[0].phases' "$QT_WORK/out.json")"
                rm -f -- "$img"
        done
done

col() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t { print $c }' "$results" | median; }
echo
echo "image: 1 GiB qcow2, GPT ext4 + xfs, --no-convert; $rounds rounds, medians (s), in a TCG guest"
printf '%-7s %8s' backend total
for p in "${phases[@]}"; do printf ' %8s' "$p"; done
printf ' %12s\n' "attach+trim"
for b in kernel fuse; do
        printf '%-7s %8.2f' "$b" "$(col "$b" 2)"
        for i in "${!phases[@]}"; do printf ' %8.2f' "$(col "$b" $((3 + i)))"; done
        printf ' %12.2f\n' "$(awk -F'\t' -v t="$b" '$1 == t { print $3 + $4 + $5 + $6 }' "$results" | median)"
done
printf 'bytes trimmed: kernel %s, fuse %s\n' "$(qt_human "$(col kernel 7)")" "$(qt_human "$(col fuse 7)")"

#!/bin/bash
# Benchmark (not a test): qtrim against the manual recipe on copies of the same dirty image, in
# one invocation, alternating, ROUNDS times. Image: 4 GiB virtual qcow2, GPT, ext4 + xfs, about
# 1 GiB written and deleted (make_bench_image). Prints per round and the medians: allocated bytes
# before/after, the guest's used bytes, qtrim's time per phase, and qtrim's time over the
# manual recipe's.
#
# Usage (as root, from anywhere): bench/shrink-bench.sh            ROUNDS=5 bench/shrink-bench.sh
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
top=$here/..
rounds=${ROUNDS:-3}

"$top/tools/install-deps.sh"
# An optimized build without sanitizers: the figures are for the product as shipped.
export BUILD_DIR=${BUILD_DIR:-$top/build-bench}
[[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" "$top" --buildtype=release -Dtests=false >/dev/null
ninja -C "$BUILD_DIR" >/dev/null

# shellcheck source=tests/lib/bus.sh
source "$top/tests/lib/bus.sh"
# shellcheck source=tests/lib/images.sh
source "$top/tests/lib/images.sh"
# shellcheck source=tests/lib/verify.sh
source "$top/tests/lib/verify.sh"

qt_init_workdir bench
qt_step "building the benchmark image"
master=$QT_IMAGES/master.qcow2
make_bench_image "$master"
guest_used=$(jq '.guest_used_bytes' "$(qt_manifest "$master")")
qt_bus_start
qt_daemon_start

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
results=$QT_WORK/results.tsv
: >"$results"
phases=(inspect attach discover trim detach convert replace)

for ((round = 1; round <= rounds; round++)); do
        qt_step "round $round of $rounds"
        for tool in qtrim manual; do
                img=$QT_IMAGES/$tool.qcow2
                cp --sparse=always -- "$master" "$img"
                cp -- "$(qt_manifest "$master")" "$(qt_manifest "$img")"
                before=$(allocated_bytes "$img")
                sync
                t0=$(qt_now)
                if [[ $tool == qtrim ]]; then
                        "$QT_QTRIMCTL" --json shrink "$img" >"$QT_WORK/qtrim.json"
                else
                        "$here/manual-recipe.sh" "$img" >"$QT_WORK/manual.log"
                fi
                seconds=$(qt_since "$t0")
                after=$(allocated_bytes "$img")
                row="$tool	$seconds	$before	$after"
                if [[ $tool == qtrim ]]; then
                        for p in "${phases[@]}"; do
                                row+="	$(jq --arg p "$p" '.[0].phases[$p] // 0' "$QT_WORK/qtrim.json")"
                        done
                fi
                printf '%s\n' "$row" >>"$results"
                qt_info "$tool: $(qt_human "$before") → $(qt_human "$after") in ${seconds}s"
                # Both must have kept every file: a fast tool that loses data wins nothing.
                verify_files "$img" "$(qt_manifest "$img")" >/dev/null
                rm -f -- "$img"
        done
done

col() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t { print $c }' "$results" | median; }
q_time=$(col qtrim 2) m_time=$(col manual 2)
echo
echo "image: 4.0 GiB virtual qcow2, GPT ext4 + xfs; guest uses $(qt_human "$guest_used"); $rounds rounds, medians"
printf '%-8s %10s %14s %14s\n' tool seconds before after
for tool in qtrim manual; do
        printf '%-8s %10.2f %14s %14s\n' "$tool" "$(col "$tool" 2)" "$(qt_human "$(col "$tool" 3)")" \
                "$(qt_human "$(col "$tool" 4)")"
done
printf 'qtrim phases (s):'
for i in "${!phases[@]}"; do
        printf ' %s %.2f' "${phases[i]}" "$(col qtrim $((5 + i)))"
done
echo
awk -v q="$q_time" -v m="$m_time" 'BEGIN { printf "qtrim / manual time: %.2f\n", q / m }'

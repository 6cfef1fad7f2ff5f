#!/bin/bash
# Benchmark (not a test): qtrim against virt-sparsify --in-place, and against the floor, on
# guest-shaped disks (tests/lib/layouts.sh, tests/lib/images.sh). For each image, on copies of
# the same master built once, ROUNDS times, alternating which tool goes first:
#
#   qtrim        qtrimctl shrink IMG (trim + convert, the default)
#   qtrim-inplace  qtrimctl shrink --no-convert IMG (trim only: the same form of result as
#                virt-sparsify --in-place's, the file's own clusters punched, nothing rewritten)
#   vs-inplace   virt-sparsify --in-place IMG (libguestfs, direct backend, TCG)
#   vs+convert   the same copy, then qemu-img convert -O qcow2 and rename over it (what a user
#                does next: in-place never shortens the file); its time is in-place + convert
#   floor        the manifest's guest_used_bytes (filesystems' used bytes + the allocated bytes
#                of ranges that must stay: GPT, ESP, LVM metadata, swap headers, ...)
#
# Each timing ends with an fsync of the image. Bytes are the file's allocated bytes (stat %b).
# In round 1 (VERIFY=1, the default) each result is also checked with tests/lib/verify.sh's
# tools, without failing the benchmark: every kept file intact (verify_files), the preserved
# ranges byte-identical, and how much of the manifest's zeroed ranges (garbage) stays allocated.
#
# Prints a table of medians per image and keeps every run in a TSV in the work dir; as the work
# dir is removed at exit, the TSVs, the tools' logs and qtrim's JSON are copied to KEEP_DIR
# (default $TMPDIR/qtrim-layouts-bench-DATE, a few KiB) and the path printed.
#
# Usage (as root, from anywhere):
#   bench/layouts-bench.sh
#   ROUNDS=5 LAYOUTS="fedora-like mbr-swap-gaps lvm-two-pvs bench-4g windows-mbr windows-gpt ldm thin" bench/layouts-bench.sh
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
top=$here/..
rounds=${ROUNDS:-3}
layouts=${LAYOUTS:-fedora-like mbr-swap-gaps lvm-two-pvs bench-4g windows-mbr windows-gpt}
verify=${VERIFY:-1}
vs_timeout=${VS_TIMEOUT:-1200}
keep_dir=${KEEP_DIR:-${TMPDIR:-/var/tmp}/qtrim-layouts-bench-$(date +%Y%m%d-%H%M%S)}

"$top/tools/install-deps.sh"
if ! command -v virt-sparsify >/dev/null || ! command -v libguestfs-test-tool >/dev/null; then
        echo "layouts-bench: installing libguestfs-tools"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libguestfs-tools >/dev/null
fi
# An optimized build without sanitizers: the figures are for the product as shipped.
export BUILD_DIR=${BUILD_DIR:-$top/build-bench}
[[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" "$top" --buildtype=release -Dtests=false >/dev/null
ninja -C "$BUILD_DIR" >/dev/null

# libguestfs: qemu directly (no libvirtd), and TCG only: KVM hangs on these machines.
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg

# shellcheck source=tests/lib/bus.sh
source "$top/tests/lib/bus.sh"
# shellcheck source=tests/lib/layouts.sh
source "$top/tests/lib/layouts.sh"
# shellcheck source=tests/lib/verify.sh
source "$top/tests/lib/verify.sh"
# shellcheck source=tests/lib/windows.sh
source "$top/tests/lib/windows.sh"

qt_init_workdir layouts-bench
load_start=$(uptime)

# Anything libguestfs started on an image of ours (a qemu-system left by a timed out
# virt-sparsify): found by its command line, killed by pid.
_lb_kill_appliances() {
        local p comm
        for p in /proc/[0-9]*; do
                { read -r comm <"$p/comm"; } 2>/dev/null || continue
                [[ $comm == qemu-system* || $comm == virt-sparsify ]] || continue
                tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qF -- "$QT_WORK" || continue
                kill -KILL "${p#/proc/}" 2>/dev/null || true
        done
}
qt_defer _lb_kill_appliances

# The first libguestfs run builds the supermin appliance (cached in $TMPDIR/.guestfs-$UID): not
# counted. libguestfs-test-tool also shows the appliance boots with TCG here.
qt_step "warming up libguestfs (appliance build and first boot, not counted)"
t0=$(qt_now)
libguestfs-test-tool >"$QT_WORK/libguestfs-test-tool.log" 2>&1 ||
        qt_fail "libguestfs-test-tool failed: see the end of it: $(tail -n 5 "$QT_WORK/libguestfs-test-tool.log")"
grep -q 'accel=tcg' "$QT_WORK/libguestfs-test-tool.log" || qt_fail "libguestfs did not run qemu with accel=tcg"
qt_info "libguestfs ready in $(qt_since "$t0")s (TCG)"

qt_bus_start
qt_daemon_start

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
results=$QT_WORK/results.tsv
checks=$QT_WORK/checks.tsv
printf 'image\tround\ttool\tstatus\tseconds\tbefore\tafter\tzeroed_alloc\tfloor\n' >"$results"
printf 'image\ttool\tfiles\tpreserved_changed\tzeroed_alloc\n' >"$checks"
mkdir -p -- "$QT_WORK/logs"

# Preserved ranges of MANIFEST that differ in IMG: "what" names, comma-separated ("" if none).
preserved_changed() { # IMG MANIFEST
        local img=$1 m=$2 tmp raw n i off size want got out=
        n=$(jq '.preserved // [] | length' "$m")
        ((n > 0)) || return 0
        _qt_raw_copy "$img" tmp raw
        for ((i = 0; i < n; i++)); do
                read -r off size want < <(jq -r ".preserved[$i] | \"\(.offset) \(.size) \(.sha256)\"" "$m")
                got=$(dd if="$raw" iflag=skip_bytes,count_bytes skip="$off" count="$size" bs=1M status=none | sha256sum | cut -d' ' -f1)
                [[ $got == "$want" ]] || out+="${out:+, }$(jq -r ".preserved[$i].what" "$m")"
        done
        qt_undo rm -rf -- "$tmp"
        printf '%s' "$out"
}

# Round-1 checks of a result, recorded in checks.tsv and never fatal.
check_result() { # NAME TOOL IMG MANIFEST
        local files changed
        if (verify_files "$3" "$4") >"$QT_WORK/logs/$1-$2-verify.log" 2>&1; then files=ok; else files=FAILED; fi
        changed=$(preserved_changed "$3" "$4")
        printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$files" "${changed:--}" "$(zeroed_allocated_bytes "$3" "$4")" >>"$checks"
}

describe() {
        case $1 in
        fedora-like) echo "3 GiB qcow2, GPT: BIOS boot, ESP, /boot ext4, LVM (xfs root, swap LV, freed LV), garbage in gaps" ;;
        mbr-swap-gaps) echo "1 GiB qcow2, MBR: ext4, swap, hibernated swap, logical ext4 x2, garbage in gaps" ;;
        lvm-two-pvs) echo "2 GiB qcow2, GPT: /boot ext4, VG over 2 PVs (2-segment ext4 LV + ext4 LV)" ;;
        bench-4g) echo "4 GiB qcow2, GPT: ext4 + xfs, ~1 GiB written and deleted (make_bench_image)" ;;
        ldm) echo "512 MiB qcow2, MBR Windows dynamic disk + ext4 (gaps must stay)" ;;
        thin) echo "1 GiB qcow2, GPT: VG with ext4 LV + thin pool (skipped by qtrim)" ;;
        windows-mbr) echo "MBR Windows: System Reserved NTFS + C: NTFS, data written and deleted (make_windows_mbr)" ;;
        windows-gpt) echo "GPT Windows: ESP FAT32, MSR, C: NTFS, data written and deleted (make_windows_gpt)" ;;
        esac
}

build() { # NAME IMG
        case $1 in
        fedora-like) make_fedora_like "$2" ;;
        mbr-swap-gaps) make_mbr_swap_gaps "$2" ;;
        lvm-two-pvs) make_lvm_two_pvs "$2" ;;
        bench-4g) make_bench_image "$2" ;;
        ldm) make_ldm_disk "$2" ;;
        thin) make_thin_pool_disk "$2" ;;
        windows-mbr) make_windows_mbr "$2" ;;
        windows-gpt) make_windows_gpt "$2" ;;
        *) qt_fail "unknown layout $1 (fedora-like mbr-swap-gaps lvm-two-pvs bench-4g ldm thin windows-mbr windows-gpt)" ;;
        esac
}

# One run of TOOL (qtrim or vs) on a fresh copy of MASTER; appends its rows to results.tsv.
run_one() { # NAME ROUND TOOL MASTER FLOOR
        local name=$1 round=$2 tool=$3 master=$4 floor=$5 img before t0 s1 s2 rc after log
        img=$QT_IMAGES/$name-$tool.qcow2
        cp --sparse=always -- "$master" "$img"
        cp -- "$(qt_manifest "$master")" "$(qt_manifest "$img")"
        before=$(allocated_bytes "$img")
        log=$QT_WORK/logs/$name-r$round-$tool
        sync
        if [[ $tool == qtrim* ]]; then
                local options=()
                [[ $tool == qtrim ]] || options=(--no-convert)
                rc=0
                t0=$(qt_now)
                "$QT_QTRIMCTL" --json shrink "${options[@]}" "$img" >"$log.json" 2>"$log.err" || rc=$?
                sync -- "$img"
                s1=$(qt_since "$t0")
                after=$(allocated_bytes "$img")
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$tool" "$rc" "$s1" "$before" "$after" \
                        "$(zeroed_allocated_bytes "$img" "$(qt_manifest "$img")")" "$floor" >>"$results"
                qt_info "$tool: $(qt_human "$before") → $(qt_human "$after") in ${s1}s (exit $rc)"
                if ((round == 1 && verify)); then check_result "$name" "$tool" "$img" "$(qt_manifest "$img")"; fi
        else
                rc=0
                t0=$(qt_now)
                timeout "$vs_timeout" virt-sparsify --in-place --format qcow2 -- "$img" >"$log.log" 2>&1 || rc=$?
                sync -- "$img"
                s1=$(qt_since "$t0")
                after=$(allocated_bytes "$img")
                printf '%s\t%s\tvs-inplace\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$rc" "$s1" "$before" "$after" \
                        "$(zeroed_allocated_bytes "$img" "$(qt_manifest "$img")")" "$floor" >>"$results"
                qt_info "virt-sparsify --in-place: $(qt_human "$before") → $(qt_human "$after") in ${s1}s (exit $rc)"
                if ((rc != 0)); then
                        _lb_kill_appliances
                        tail -n 5 "$log.log" | sed 's/^/      /'
                fi
                if ((round == 1 && verify)); then check_result "$name" vs-inplace "$img" "$(qt_manifest "$img")"; fi
                t0=$(qt_now)
                if ! { qemu-img convert -f qcow2 -O qcow2 -- "$img" "$img.conv" && sync -- "$img.conv" &&
                        mv -f -- "$img.conv" "$img"; }; then
                        [[ $rc != 0 ]] || rc=1
                fi
                s2=$(qt_since "$t0")
                after=$(allocated_bytes "$img")
                printf '%s\t%s\tvs+convert\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$rc" \
                        "$(awk -v a="$s1" -v b="$s2" 'BEGIN { printf "%.2f", a + b }')" "$before" "$after" \
                        "$(zeroed_allocated_bytes "$img" "$(qt_manifest "$img")")" "$floor" >>"$results"
                qt_info "  + qemu-img convert: → $(qt_human "$after") in ${s2}s more"
        fi
        rm -f -- "$img" "$img.conv"
}

for name in $layouts; do
        master=$QT_IMAGES/$name-master.qcow2
        qt_step "$name: building the master image"
        t0=$(qt_now)
        build "$name" "$master"
        floor=$(jq '.guest_used_bytes' "$(qt_manifest "$master")")
        qt_info "built in $(qt_since "$t0")s: $(qt_human "$(allocated_bytes "$master")") allocated, floor $(qt_human "$floor")"
        for ((round = 1; round <= rounds; round++)); do
                qt_step "$name: round $round of $rounds"
                if ((round % 2)); then order=(qtrim qtrim-inplace vs); else order=(vs qtrim-inplace qtrim); fi
                for tool in "${order[@]}"; do
                        run_one "$name" "$round" "$tool" "$master" "$floor"
                done
        done
        rm -f -- "$master"
done
load_end=$(uptime)

# ---- report -------------------------------------------------------------------------------

# Median of column C over the successful runs of TOOL on image I.
col() { awk -F'\t' -v i="$1" -v t="$2" -v c="$3" 'NR > 1 && $1 == i && $3 == t && $4 == 0 { print $c }' "$results" | median; }
nruns() { awk -F'\t' -v i="$1" -v t="$2" 'NR > 1 && $1 == i && $3 == t && $4 == 0 { n++ } END { print n + 0 }' "$results"; }
hum() { if [[ $1 == nan ]]; then echo -; else qt_human "${1%.*}"; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.2f", a / b }'; }

echo
echo "load at start: ${load_start#*load average: }; at end: ${load_end#*load average: } ($(nproc) cores)"
echo "$rounds round(s) per image, medians over successful runs; bytes allocated on the host (stat %b)"
for name in $layouts; do
        floor=$(col "$name" qtrim 9)
        [[ $floor != nan ]] || floor=$(col "$name" vs-inplace 9)
        before=$(col "$name" qtrim 6)
        echo
        echo "== $name: $(describe "$name")"
        printf '%-26s %11s %9s %10s %10s %5s\n' "" allocated "x floor" "zeroed*" seconds runs
        printf '%-26s %11s\n' "before" "$(hum "$before")"
        for t in qtrim qtrim-inplace vs-inplace vs+convert; do
                a=$(col "$name" "$t" 7)
                printf '%-26s %11s %9s %10s %10s %5s\n' \
                        "$(case $t in qtrim) echo "qtrim shrink" ;; qtrim-inplace) echo "qtrim shrink --no-convert" ;; vs-inplace) echo "virt-sparsify --in-place" ;; *) echo "virt-sparsify + convert" ;; esac)" \
                        "$(hum "$a")" "$(ratio "$a" "$floor")" "$(hum "$(col "$name" "$t" 8)")" \
                        "$(awk -v s="$(col "$name" "$t" 5)" 'BEGIN { if (s == "nan") print "-"; else printf "%.1f", s }')" \
                        "$(nruns "$name" "$t")/$rounds"
        done
        printf '%-26s %11s %9s\n' "floor (guest_used_bytes)" "$(hum "$floor")" 1.00
        echo "(*) bytes still allocated inside the manifest's zeroed ranges (garbage in gaps, swap, freed extents)"
        q=$(col "$name" qtrim 7) qi=$(col "$name" qtrim-inplace 7) vi=$(col "$name" vs-inplace 7) vc=$(col "$name" vs+convert 7)
        qs=$(col "$name" qtrim 5) vis=$(col "$name" vs-inplace 5) vcs=$(col "$name" vs+convert 5)
        echo "bytes qtrim / virt-sparsify: $(ratio "$q" "$vc") (both converted), $(ratio "$qi" "$vi") (both in place)"
        echo "time: qtrim is $(ratio "$vis" "$qs")x as fast as virt-sparsify --in-place, $(ratio "$vcs" "$qs")x as fast as in-place + convert"
        if ((verify)); then
                while IFS=$'\t' read -r i t files changed z; do
                        [[ $i == "$name" ]] || continue
                        printf 'round-1 check %-10s files %-6s zeroed ranges still allocated %9s; preserved ranges changed: %s\n' \
                                "$t" "$files" "$(qt_human "$z")" "$changed"
                done <"$checks"
                # What qtrim did with each volume (round 1).
                printf 'qtrim volumes:'
                jq -r '.[0].filesystems[] | " \(.name)\(if .fstype == "" then "" else " " + .fstype end) \(.state)\(if .message == "" or .state == "trimmed" then "" else " (" + .message + ")" end);"' \
                        "$QT_WORK/logs/$name-r1-qtrim.json" | tr -d '\n'
                echo
        fi
done
# The work dir goes at exit: the TSVs and logs (a few KiB) are copied out of it.
mkdir -p -- "$keep_dir"
cp -- "$results" "$checks" "$keep_dir/"
cp -r -- "$QT_WORK/logs" "$keep_dir/"
echo
echo "every run: $keep_dir/results.tsv (in the work dir: $results; round-1 checks: $keep_dir/checks.tsv; logs and qtrim's JSON: $keep_dir/logs)"

#!/usr/bin/env bash
# Fuzzes qtrim's parsers of untrusted input (tests/fuzz/) with libFuzzer, ASan and UBSan.
# Installs clang if missing, sets up build-fuzz/ (clang, -Dfuzz=true), builds the targets and
# runs each in turn for SECONDS (default 60) on a scratch corpus, build-fuzz/fuzz-runs/<target>/,
# which starts from the checked-in seeds and keeps what earlier runs found. Prints per target
# what the run did; exits 1 if any target crashed, and says where the input is.
#
#   tools/fuzz.sh [--keep-going] [SECONDS] [TARGET...]
#       --keep-going: go on after a crash (libFuzzer's -fork=1 -ignore_crashes=1) and collect
#       every crashing input, for a long run while a known crash is still unfixed.
#   tools/fuzz.sh --merge [TARGET...]
#       minimizes what earlier runs found into tests/fuzz/corpus/ (-merge=1: only inputs that
#       reach new code). The checked-in corpus changes this way only, and only when asked.
#
# One target at a time, niced: fuzzing fills a core, and others may be using the machine.
set -euo pipefail
top=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
build=${FUZZ_BUILD_DIR:-$top/build-fuzz}
work=$build/fuzz-runs
max_len=16384 # room for the 4 KiB strings of a report line and of qemu-img's JSON

usage() {
        sed -n '/^#   tools\/fuzz.sh \[--keep/,/^#$/s/^# \{0,1\}//p' "$0" >&2
        exit 2
}

mode=run keep_going=false seconds=60 targets=()
while [[ $# -gt 0 ]]; do
        case $1 in
        --merge) mode=merge ;;
        --keep-going) keep_going=true ;;
        -h | --help) usage ;;
        [0-9]*)
                [[ $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || usage
                seconds=$1
                ;;
        fuzz-*) targets+=("$1") ;;
        *) usage ;;
        esac
        shift
done
if [[ ${#targets[@]} -eq 0 ]]; then
        for f in "$top"/tests/fuzz/fuzz-*.c; do
                targets+=("$(basename "$f" .c)")
        done
fi
for t in "${targets[@]}"; do
        [[ -f $top/tests/fuzz/$t.c ]] || { echo "fuzz.sh: no target $t in tests/fuzz/" >&2; exit 2; }
done

installed() {
        dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_clang() {
        local missing=()
        command -v clang >/dev/null || missing+=(clang)
        installed libclang-rt-14-dev || missing+=(libclang-rt-14-dev)
        [[ ${#missing[@]} -gt 0 ]] || return 0
        echo "fuzz.sh: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # An image without package lists (a fresh container) needs them first.
        if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
                apt-get update -qq
        fi
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
                { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

setup_and_build() {
        "$top/tools/install-deps.sh"
        install_clang
        if [[ ! -f $build/build.ninja ]]; then
                CC=clang meson setup "$build" "$top" -Dfuzz=true -Db_lundef=false >/dev/null
        fi
        # Only the fuzz targets: a warning elsewhere in the project must not stop a fuzz run.
        ninja -C "$build" "${targets[@]/#/tests/fuzz/}" >/dev/null
}

count_files() {
        find "$1" -maxdepth 1 -type f 2>/dev/null | wc -l
}

# Last value of "key: N" (or "key N") in a libFuzzer log.
log_value() {
        grep -oE "$2:? +[0-9]+" "$1" | tail -n 1 | grep -oE '[0-9]+$' || true
}

# Replays crashing inputs and counts them by the first line that says what went wrong.
triage() {
        local t=$1 f reason
        shift
        for f in "$@"; do
                reason=$(timeout 20 "$build/tests/fuzz/$t" "$f" 2>&1 |
                        grep -E 'invariant violated|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error' |
                        head -n 1 | sed -E 's/^==[0-9]+== ?//; s/ on (address|unknown address) .*//') || true
                echo "${reason:-(no reason printed; it does not crash when replayed alone)}"
        done | sort | uniq -c | sort -rn
}

run_target() {
        local t=$1 dir=$work/$1
        mkdir -p "$dir/corpus" "$dir/crashes"
        cp -n "$top/tests/fuzz/corpus/$t/"* "$dir/corpus/"
        local corpus_before
        corpus_before=$(count_files "$dir/corpus")

        local args=(-max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 -max_len="$max_len"
                -print_final_stats=1 -artifact_prefix="$dir/crashes/")
        [[ -f $top/tests/fuzz/$t.dict ]] && args+=(-dict="$top/tests/fuzz/$t.dict")
        $keep_going && args+=(-fork=1 -ignore_crashes=1)

        echo "fuzz.sh: $t for ${seconds}s (log: $dir/log)"
        touch "$dir/started"
        local status=0
        (cd "$dir" && nice "$build/tests/fuzz/$t" "${args[@]}" "$dir/corpus" >"$dir/log" 2>&1) ||
                status=$?

        # The final stats when libFuzzer prints them, else its last status line (fork mode).
        local execs cov new crashes per_second
        execs=$(log_value "$dir/log" 'stat::number_of_executed_units')
        [[ -n $execs ]] || execs=$(grep -oE '^#[0-9]+' "$dir/log" | tail -n 1 | tr -d '#')
        execs=${execs:-0}
        per_second=$(log_value "$dir/log" 'stat::average_exec_per_sec')
        per_second=${per_second:-$((execs / seconds))}
        cov=$(log_value "$dir/log" 'cov')
        new=$(($(count_files "$dir/corpus") - corpus_before))
        crashes=$(find "$dir/crashes" -maxdepth 1 -type f -newer "$dir/started" | wc -l)
        printf '%-18s %12s executions %8s exec/s   cov: %-5s new corpus entries: %-5s crashes: %s\n' \
                "$t" "$execs" "$per_second" "${cov:-?}" "$new" "$crashes"

        if [[ $crashes -gt 0 ]]; then
                local inputs
                mapfile -t inputs < <(find "$dir/crashes" -maxdepth 1 -type f -newer "$dir/started")
                echo "  crashing inputs (replay one: $build/tests/fuzz/$t FILE):"
                printf '    %s\n' "${inputs[@]:0:5}"
                [[ ${#inputs[@]} -le 5 ]] || echo "    ... and $((${#inputs[@]} - 5)) more in $dir/crashes/"
                echo "  why (inputs per distinct failure, from replaying them):"
                triage "$t" "${inputs[@]:0:200}" | sed 's/^/   /'
                return 1
        fi
        if [[ $status -ne 0 ]]; then
                echo "  $t failed without a crashing input (exit status $status); see $dir/log"
                return 1
        fi
        return 0
}

merge_target() {
        local t=$1 found=$work/$1/corpus seeds=$top/tests/fuzz/corpus/$1
        if [[ ! -d $found ]]; then
                echo "$t: nothing to merge (no run yet)"
                return 0
        fi
        local before after
        before=$(count_files "$seeds")
        "$build/tests/fuzz/$t" -merge=1 -max_len="$max_len" "$seeds" "$found" >"$work/$t/merge.log" 2>&1 ||
                { echo "$t: merge failed; see $work/$t/merge.log"; return 1; }
        after=$(count_files "$seeds")
        echo "$t: $((after - before)) new inputs in tests/fuzz/corpus/$t ($(find "$seeds" -type f -exec cat {} + | wc -c) bytes in all)"
}

setup_and_build
mkdir -p "$work"
failed=()
for t in "${targets[@]}"; do
        if [[ $mode == merge ]]; then
                merge_target "$t" || failed+=("$t")
        else
                run_target "$t" || failed+=("$t")
        fi
done
if [[ $mode == merge ]]; then
        echo "fuzz.sh: review with 'git status tests/fuzz/corpus' (merged inputs are named by hash and may be binary)"
fi
if [[ ${#failed[@]} -gt 0 ]]; then
        echo "fuzz.sh: ${failed[*]} crashed or failed" >&2
        exit 1
fi

#!/usr/bin/env bash
# Runs qtrimd's integration tests with qtrimd under valgrind's memcheck, as root, and fails on
# any error valgrind finds. Builds its own non-sanitized build dir (build-valgrind, with the test
# hooks); the tests start their qtrimd through QT_QTRIMD_WRAPPER (tests/lib/bus.sh). About 6
# minutes on 2 cores, most of it the flood test.
#
#   tools/valgrind.sh                 the default set (below)
#   tools/valgrind.sh cancel flood    the named integration tests
#   QT_TEST_LOCK=/tmp/qtrim-host-tests.lock tools/valgrind.sh
#                                     each test under flock(1) on that file (a shared machine)
#
# qtrimd forks a worker per job and per request without exec, and valgrind follows every fork
# (no option turns that off): workers run under memcheck too, which is wanted, as they run the
# engine on untrusted images. Programs they exec (qemu-img, qemu-nbd) are not traced. A worker
# with a memory error exits 99, so its job or request fails and so does the test.
#
# A worker serves its image over FUSE from its own thread, which valgrind 3.19 (Debian 12's)
# deadlocks or aborts on; --sim-hints=fuse-compatible and an LD_PRELOAD shim
# (tests/tools/valgrind-compat.c) work around it without changing what qtrimd does.
# tests/tools/valgrind.supp holds the suppressions, each with its reason.
#
# Leaks count for qtrimd only. A worker ends with _exit() and never frees what it inherited from
# qtrimd at the fork; memcheck calls some of that "definitely lost" (the parent's struct worker
# for the child, which the child no longer points to). So leaks are not errors (no exit status
# 99); instead this script reads each qtrimd's log (the processes whose parent is not a qtrimd)
# and fails if it lost memory. Workers' leak lines are left in their logs, not judged.
#
# Logs: build-valgrind/valgrind-logs/<test>/qtrimd.<pid>.log, kept after the run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "valgrind.sh: the tests attach loop devices and mount filesystems; run as root" >&2
  exit 1
fi
tools/install-deps.sh

build='build-valgrind'
options=(-Db_sanitize=none -Dtest_hooks=true)
if [ -f "$build/build.ninja" ]; then
  meson setup --reconfigure "$build" "${options[@]}" >/dev/null
else
  meson setup "$build" "${options[@]}" >/dev/null
fi
ninja -C "$build"

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  tests=(shrink-gpt shrink-mbr-logical refusals no-convert cancel queue parallel flood)
fi

logs=$PWD/$build/valgrind-logs
rm -rf "$logs"
mkdir -p "$logs"
start=$(date +%s)
status=0
compat=$PWD/$build/tests/tools/valgrind-compat.so
for t in "${tests[@]}"; do
  mkdir -p "$logs/$t"
  # fuse-compatible and the preload (tests/tools/valgrind-compat.c): the FUSE server's thread
  # must run while another of its threads waits (the server is a forked process, traced too). --track-fds is left out: the
  # fds qtrimd holds at exit are its bus and event loop, and valgrind 3.19 does not count them.
  wrapper=(env "LD_PRELOAD=$compat" valgrind --sim-hints=fuse-compatible
    "--suppressions=$PWD/tests/tools/valgrind.supp" --error-exitcode=99 --leak-check=full
    --show-leak-kinds=definite --errors-for-leak-kinds=none --num-callers=40
    "--log-file=$logs/$t/qtrimd.%p.log")
  export QT_QTRIMD_WRAPPER="${wrapper[*]}"
  # Slower by 5 to 30 times: wider limits for starting and stopping qtrimd.
  export QT_DAEMON_START_TIMEOUT=60 QT_DAEMON_STOP_TIMEOUT=120
  lock=()
  [ -n "${QT_TEST_LOCK:-}" ] && lock=(flock "$QT_TEST_LOCK")
  "${lock[@]}" meson test -C "$build" --print-errorlogs --num-processes 1 --timeout-multiplier 4 "$t" ||
    status=1
done

# Memory errors (any process; a child forked after an error repeats it, hence the dedup) and
# qtrimd's own leaks, from the logs.
distinct=$logs/errors.txt
: >"$distinct"
leaks=0 processes=0 with_errors=0
for f in "$logs"/*/qtrimd.*.log; do
  [ -e "$f" ] || continue
  processes=$((processes + 1))
  n=$(sed -nE 's/^==[0-9]+== ERROR SUMMARY: ([0-9]+) errors.*/\1/p' "$f" | tail -n 1)
  if [ "${n:-0}" -gt 0 ]; then
    with_errors=$((with_errors + 1))
    # Each error: from its headline to the blank line after its stack, without the pid.
    sed -E 's/^==[0-9]+== ?//' "$f" |
      awk '/^(Invalid|Conditional|Use of uninit|Syscall param|Mismatched|Source and dest|Argument|Jump)/ { e = $0; on = 1; next }
           on && /^$/ { print e; on = 0; next }
           on { e = e "\\n" $0 }' >>"$distinct"
  fi
  # A qtrimd, not a worker: its parent has no log here.
  parent=$(sed -nE 's/^==[0-9]+== Parent PID: ([0-9]+)$/\1/p' "$f")
  if [ ! -e "$(dirname "$f")/qtrimd.$parent.log" ]; then
    lost=$(sed -nE 's/^==[0-9]+== +definitely lost: ([0-9,]+) bytes.*/\1/p' "$f" | tr -d ,)
    if [ "${lost:-0}" -gt 0 ]; then
      leaks=$((leaks + 1))
      echo "valgrind.sh: qtrimd lost $lost bytes, $f:" >&2
      sed -n '/definitely lost in loss record/,/^==[0-9]*== $/p' "$f" | head -n 60 >&2
    fi
  fi
done
# The readers of guest filesystems' own metadata (FAT; NTFS through libntfs-3g), on their unit
# tests' real and hostile volumes, in one process each (CK_FORK=no): any error or leak fails.
for t in fat ntfs; do
  CK_FORK=no valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --num-callers=40 "--log-file=$logs/test-$t.log" "$build/tests/unit/test-$t" >/dev/null ||
    { echo "valgrind.sh: test-$t under valgrind failed, see $logs/test-$t.log" >&2; status=1; }
done

errors=$(sort -u "$distinct" | grep -c . || true)
if [ "$errors" -gt 0 ]; then
  echo "valgrind.sh: $errors distinct error(s) in $with_errors process(es):" >&2
  sort -u "$distinct" | sed 's/\\n/\n    /g' >&2
fi
[ "$errors" -eq 0 ] && [ "$leaks" -eq 0 ] || status=1

elapsed=$(($(date +%s) - start))
echo "valgrind: ${#tests[@]} test(s) and test-fat, test-ntfs, $processes process(es) checked, $errors distinct error(s), $leaks qtrimd(s) with leaks, $((elapsed / 60)) min $((elapsed % 60)) s"
exit "$status"

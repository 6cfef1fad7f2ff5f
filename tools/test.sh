#!/usr/bin/env bash
# Runs every qtrim test on this machine, as root: installs what is missing, builds with
# ASan+UBSan (warnings are errors), runs the Check unit tests and the integration tests on real
# images, a real private dbus-daemon, qemu-nbd, FUSE, loop devices and mounts; then fuzzes the
# parsers of untrusted input for QTRIM_FUZZ_SECONDS per target (default 20; 0 skips it), and
# runs the daemon's integration tests under valgrind (tools/valgrind.sh). The VM suite (tests/vm)
# boots Debian's kernel in a TCG guest for the kernel attach path and systemd.
# Extra arguments go to `meson test` (e.g. --suite unit, or a test's name) and skip the fuzzing
# and valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the tests attach loop devices and mount filesystems; run as root" >&2
  exit 1
fi
tools/install-deps.sh

build=build-sanitize
# Test hooks: pause points for the cancel and crash tests (lib/test-hooks.h).
options=(-Db_sanitize=address,undefined -Db_lundef=false -Dc_args=-fno-sanitize-recover=all
  -Dtest_hooks=true)
if [ -f "$build/build.ninja" ]; then
  meson setup --reconfigure "$build" "${options[@]}" >/dev/null
else
  meson setup "$build" "${options[@]}" >/dev/null
fi
ninja -C "$build"

# Workers end with _exit(), so leak checks cover qtrimd, qtrimctl and the unit tests.
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
meson test -C "$build" --print-errorlogs --num-processes 1 "$@" || status=$?

fuzz_seconds=${QTRIM_FUZZ_SECONDS:-20}
fuzz=skipped
if [ $# -eq 0 ] && [ "$fuzz_seconds" -gt 0 ]; then
  if tools/fuzz.sh "$fuzz_seconds"; then fuzz=passed; else fuzz=failed status=1; fi
fi

# qtrimd (and its workers) under valgrind's memcheck in the daemon's integration tests: a
# second build without sanitizers, about 6 minutes. QTRIM_VALGRIND=0 skips it.
valgrind=skipped
if [ $# -eq 0 ] && [ "${QTRIM_VALGRIND:-1}" != 0 ]; then
  if tools/valgrind.sh; then valgrind=passed; else valgrind=failed status=1; fi
fi

# One plain closing line that any reader (and CI) can count.
log="$build/meson-logs/testlog.json"
passed=$(jq -s '[.[] | select(.result == "OK")] | length' "$log")
failed=$(jq -s '[.[] | select(.result != "OK" and .result != "SKIP")] | length' "$log")
skipped=$(jq -s '[.[] | select(.result == "SKIP")] | length' "$log")
for extra in "$fuzz" "$valgrind"; do
  case $extra in
  passed) passed=$((passed + 1)) ;;
  failed) failed=$((failed + 1)) ;;
  esac
done
echo "$passed passed, $failed failed, $skipped skipped"
exit "$status"

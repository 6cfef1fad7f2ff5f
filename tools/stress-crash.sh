#!/usr/bin/env bash
# The kill matrix of tests/integration/crash.sh, ROUNDS times per pause point (default 20), and
# SPREAD kills of the worker and of the FUSE server each at moments spread over a whole shrink
# (default 200), DAEMON_SPREAD of qtrimd alone and of qtrimd with its worker (default 50), on the
# test build: a bounded stress run to catch races that one round misses.
# Prints crash.sh's summary; exits non-zero on the first image lost or anything left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
spread=${SPREAD:-200}
daemon_spread=${DAEMON_SPREAD:-50}
tools/test.sh --suite unit >/dev/null # builds build-sanitize (test hooks on) and checks the basics
QT_CRASH_ROUNDS=$rounds QT_CRASH_SPREAD=$spread QT_CRASH_DAEMON_SPREAD=$daemon_spread BUILD_DIR=$PWD/build-sanitize SOURCE_DIR=$PWD \
  bash tests/integration/crash.sh | grep -E '^(==>|    ok:|    an unkilled|FAIL|PASS)'

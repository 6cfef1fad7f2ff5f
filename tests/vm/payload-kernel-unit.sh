#!/bin/bash
# VM payload (tests/vm/run-guest.sh script tests/vm/payload-kernel-unit.sh RESULTS): the Check
# tests of the kernel attach path, which need the nbd module the build machines lack:
# test-attach-kernel (claiming devices, partition nodes against libblkid, the loop fallback,
# trim, a detach that frees the device) and test-attach-backend (auto must choose the kernel
# path here). Either one skipping (77) fails this payload: in the guest they must run.
set -euo pipefail
build_dir=${BUILD_DIR:?BUILD_DIR must name the build directory}
export TMPDIR=${TMPDIR:-/var/tmp}

modprobe nbd
[[ -e /dev/nbd0 ]] || { echo "FAIL: no /dev/nbd0 after modprobe nbd"; exit 1; }
rc=0
for t in attach-kernel attach-backend; do
        printf '==> test-%s\n' "$t"
        start=$(date +%s.%N)
        status=0
        "$build_dir/tests/unit/test-$t" || status=$?
        printf '    test-%s: exit %d in %.1f s\n' "$t" "$status" \
                "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"
        ((status == 0)) || rc=1
done
for n in /sys/block/nbd*; do
        if [[ -e $n/pid ]]; then
                echo "FAIL: ${n##*/} is still connected after the tests"
                rc=1
        fi
done
exit "$rc"

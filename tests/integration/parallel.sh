#!/bin/bash
# One qtrimctl shrink A B: two jobs run at the same time, on two clones of one image (same
# filesystem UUIDs, so xfs must be mounted nouuid), and both come out shrunk and intact.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start parallel

a=$QT_IMAGES/vm-a.qcow2
b=$QT_IMAGES/vm-b.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2 and a clone of it"
make_gpt_ext4_xfs "$a"
qt_clone_image "$a" "$b"
qt_expect_files
before_a=$(allocated_bytes "$a")
before_b=$(allocated_bytes "$b")
max=$(busctl --system --json=short get-property org.qtrim1 /org/qtrim1 org.qtrim1.Manager MaxParallelJobs | jq .data)
((max >= 2)) || qt_fail "qtrimd runs at most $max job at once; this test needs 2"

qt_step "qtrimctl shrink A B, sampling ListJobs"
samples=$QT_WORK/listjobs.jsonl
qt_sample_jobs_start "$samples"
qt_qtrimctl_ok shrink "$a" "$b"
qt_sample_jobs_stop

most=$(jq -s '[.[] | [.data[0][] | select(.[2] == "running")] | length] | max // 0' "$samples")
((most >= 2)) || qt_fail "the two jobs never ran at the same time (at most $most running in $(wc -l <"$samples") samples)"
qt_ok "both jobs were running at the same time"

qt_step "check the results"
qt_check_shrunk "$a" "$before_a" qcow2
qt_check_shrunk "$b" "$before_b" qcow2

qt_scenario_end

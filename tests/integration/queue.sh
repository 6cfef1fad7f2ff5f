#!/bin/bash
# qtrimd -j 1: of two jobs asked for at once, one runs and the other waits "queued" until the
# first has ended; both come out shrunk and intact.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

QTRIMD_ARGS="--max-parallel-jobs=1" qt_scenario_start queue

a=$QT_IMAGES/vm-a.qcow2
b=$QT_IMAGES/vm-b.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2 and a clone of it"
make_gpt_ext4_xfs "$a"
qt_clone_image "$a" "$b"
qt_expect_files
before_a=$(allocated_bytes "$a")
before_b=$(allocated_bytes "$b")
max=$(busctl --system --json=short get-property org.qtrim1 /org/qtrim1 org.qtrim1.Manager MaxParallelJobs | jq .data)
((max == 1)) || qt_fail "MaxParallelJobs is $max, expected 1"

qt_step "qtrimctl shrink A B, sampling ListJobs"
samples=$QT_WORK/listjobs.jsonl
qt_sample_jobs_start "$samples"
qt_qtrimctl_ok shrink "$a" "$b"
qt_sample_jobs_stop

most=$(jq -s '[.[] | [.data[0][] | select(.[2] == "running")] | length] | max // 0' "$samples")
((most == 1)) || qt_fail "expected exactly one job running at a time, saw at most $most"
waited=$(jq -s '[.[] | select([.data[0][] | .[2]] | sort == ["queued", "running"])] | length' "$samples")
((waited > 0)) || qt_fail "never saw one job running while the other was queued ($(wc -l <"$samples") samples)"
qt_ok "one job ran while the other waited queued ($waited samples)"

qt_step "check the results"
qt_check_shrunk "$a" "$before_a" qcow2
qt_check_shrunk "$b" "$before_b" qcow2

qt_scenario_end

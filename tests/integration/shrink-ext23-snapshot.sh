#!/bin/bash
# ext2 and ext3 guests are trimmed too; and an image with an internal snapshot is trimmed but
# never converted (a copy would drop the snapshot): the job says so, the snapshot survives.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

qt_scenario_start shrink-ext23-snapshot

img=$QT_IMAGES/old.qcow2
snap=$QT_IMAGES/snap.qcow2
qt_step "build a dirty GPT ext2+ext3 qcow2, and a clone of it with an internal snapshot"
make_gpt_ext2_ext3 "$img"
qt_clone_image "$img" "$snap"
qemu-img snapshot -c before-upgrade -- "$snap"
qt_expect_files
before=$(allocated_bytes "$img")

qt_step "qtrimctl --json shrink both"
json=$QT_WORK/shrink.json
qt_qtrimctl --json shrink "$img" "$snap" >"$json" || qt_fail "qtrimctl shrink failed: $(cat "$json")"
jq -c '.[] | {image, result, converted, message, fs: [.filesystems[] | [.name, .fstype, .state]]}' "$json" | sed 's/^/    | /'

qt_step "ext2 and ext3 were trimmed, and the image shrank"
for fs in ext2 ext3; do
        jq -e --arg fs "$fs" '.[0].filesystems | any(.fstype == $fs and .state == "trimmed" and .trimmed > 0)' "$json" >/dev/null ||
                qt_fail "$fs was not trimmed"
done
qt_ok "ext2 and ext3 trimmed"
qt_check_shrunk "$img" "$before" qcow2

qt_step "the snapshotted image: trimmed, not converted, snapshot kept"
jq -e '.[1].result == "done" and .[1].converted == false and (.[1].message | test("snapshot"))' "$json" >/dev/null ||
        qt_fail "expected done, not converted, a message about the snapshot: $(jq -c '.[1]' "$json")"
qemu-img snapshot -l -- "$snap" | grep -q before-upgrade || qt_fail "the internal snapshot is gone"
qt_ok "not converted, and it said why; the snapshot is still there"
assert_qemu_img_check "$snap"
verify_files "$snap"

qt_scenario_end

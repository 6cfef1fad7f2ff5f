#!/bin/bash
# Hostile LVM metadata inside a guest disk: qtrim reads the guest's PV labels, metadata areas
# and metadata text itself (lib/lvm-meta.c), so a guest that rewrote them must get its VG
# refused or its LVs skipped, with the reason, and must never make qtrim touch bytes the
# metadata does not really give it, hang, allocate without bound or fail the whole job. One
# master disk is built (GPT: p1 ext4 with deleted junk; p2 an LVM PV, VG "vgh", 4 MiB extents,
# LV "data" ext4 with deleted junk, free extents holding random data; p3 random bytes, no
# filesystem), shrunk once as the control, then copied per case and damaged the way a hostile
# guest would: the metadata TEXT edited and the metadata area re-sealed (raw_locn size and
# checksum, mda header crc, with lvm2's calc_crc) so that every checksum holds, or a crc broken
# on purpose. Per case: the job's result (done: p1 is always trimmed), the state and message of
# each volume, byte ranges compared with sha256 over qemu-img convert copies at offsets from
# sfdisk and lvm2 (never qtrim), the kept files of p1 and of the LV, nothing left behind.
#   1 the text cut short (raw_locn size, resealed): VG refused, p2 byte-identical
#   2 an LV's segments restart at extent 0: refused (Inspect: the LV over itself on the PV, a
#     gap, segment_count lying)
#   3 pe_count and the LV past the partition, into p3: the LV skipped, p2 and p3 untouched;
#     pe_count alone past it: the LV trimmed, the free range across p2's end not discarded
#   4 a second LV on the same extents: refused
#   5 extent_count, pe_count, segment_count 2^62: refused within seconds (Inspect: each alone,
#     extent_size, overflows); every count at 2^32-1 (valid text, 16 PiB): LV skipped, fast
#   6 label crc broken (libblkid already refuses it); Inspect: mda header crc, text crc
#   7 p2 copied whole onto p3 (VG, PV and LV ids twice on one disk): refused, or handled in
#     one copy only with the other byte-identical; p3 with p2's label but no metadata area:
#     vgh must not be mapped onto p3's bytes
# Tests that only look (Inspect: discovery, no trim) try more edits of one kind cheaply.
# The host's LVM state (/etc/lvm, /run/lvm) must not change.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/layouts.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/layouts.sh"
# shellcheck source=tests/lib/hostile.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/hostile.sh"

qt_need lvm python3 sfdisk
qt_scenario_start hostile-lvm
# The system's python3 if there is one: a version manager's shim costs a third of a second a call.
python=/usr/bin/python3
[[ -x $python ]] || python=$(command -v python3)
# Intermediates (raw disks, the copies the checks read) on a tmpfs outside the work dir: dozens
# of qemu-img converts, each flushed to disk, would take most of the test's time.
QT_SCRATCH=$(mktemp -d /dev/shm/qtrim-hostile-lvm.XXXXXX)
qt_defer rm -rf -- "$QT_SCRATCH"

host_lvm_state() { find /etc/lvm /run/lvm -type f -exec sha256sum {} + 2>/dev/null | sort; }
host_lvm_before=$(host_lvm_state)

# ---- the metadata area, read and re-sealed outside lvm2 -----------------------------------

# lvm_mda RAW PART_OFFSET OP [ARG]: the PV whose partition starts at PART_OFFSET of RAW:
#   get FILE     its committed metadata text (raw_locn[0] of metadata area 0) to FILE
#   edit CODE    python CODE changes the text t (a str); it is written back where it was, with
#                a NUL after it, raw_locn size and checksum set, the mda header crc resealed
#   cut N        raw_locn size N: the text cut there, checksum and header crc resealed
#   label-crc    the label's crc broken (nothing resealed)
#   mda-crc      the mda header's crc broken
#   text-crc     raw_locn's checksum broken, the header crc resealed over it
#   no-mda       the label lists no metadata area any more (label crc resealed)
# lvm2's calc_crc: CRC-32 (reflected, 0xedb88320) from 0xf597a6cf, no final inversion; with
# zlib's crc32 (which inverts before and after) that is crc32(data, init ^ ~0) ^ ~0.
lvm_mda() {
        "$python" - "$@" <<'EOF' || qt_fail "lvm_mda $2 $3 on $1 failed"
import struct, sys, zlib
raw, poff, op = sys.argv[1], int(sys.argv[2]), sys.argv[3]
arg = sys.argv[4] if len(sys.argv) > 4 else None
def crc(data): return zlib.crc32(data, 0xf597a6cf ^ 0xffffffff) ^ 0xffffffff
f = open(raw, 'r+b')
def rd(off, n):
    f.seek(poff + off); return f.read(n)
def wr(off, b):
    f.seek(poff + off); f.write(b)
for s in range(4):
    lab = s * 512
    sec = bytearray(rd(lab, 512))
    if sec[:8] == b'LABELONE': break
else:
    sys.exit('no LVM label')
pvh = struct.unpack_from('<I', sec, 20)[0]
p = pvh + 40
while struct.unpack_from('<Q', sec, p)[0]: p += 16   # the data areas, up to their 0 entry
mda_at = p + 16
if op not in ('label-crc', 'no-mda'):
    mstart, msize = struct.unpack_from('<QQ', sec, mda_at)
    assert mstart, 'no metadata area'
    h = bytearray(rd(mstart, 512))
    off, size, cs, flags = struct.unpack_from('<QQII', h, 40)
    assert off + size <= msize, 'the text wraps around the area'
def reseal():
    struct.pack_into('<QQII', h, 40, off, size, cs, flags)
    struct.pack_into('<I', h, 0, crc(bytes(h[4:])))
    wr(mstart, bytes(h))
if op == 'get':
    open(arg, 'wb').write(rd(mstart + off, size).rstrip(b'\0'))
elif op == 'edit':
    t = rd(mstart + off, size).rstrip(b'\0').decode()
    old = t
    exec(arg)
    assert t != old, 'the edit changed nothing'
    b = t.encode() + b'\0'
    assert off + len(b) <= msize, 'the new text does not fit'
    wr(mstart + off, b)
    size, cs = len(b), crc(b)
    reseal()
elif op == 'cut':
    size = int(arg); cs = crc(rd(mstart + off, size)); reseal()
elif op == 'label-crc':
    struct.pack_into('<I', sec, 16, struct.unpack_from('<I', sec, 16)[0] ^ 0x5a5a5a5a)
    wr(lab, bytes(sec))
elif op == 'mda-crc':
    struct.pack_into('<I', h, 0, struct.unpack_from('<I', h, 0)[0] ^ 0x5a5a5a5a)
    wr(mstart, bytes(h))
elif op == 'text-crc':
    cs ^= 0x5a5a5a5a; reseal()
elif op == 'no-mda':
    sec[mda_at:mda_at + 16] = bytes(16)
    struct.pack_into('<I', sec, 16, crc(bytes(sec[20:])))
    wr(lab, bytes(sec))
else:
    sys.exit('unknown op ' + op)
EOF
}

# ---- the master disk ----------------------------------------------------------------------

qt_step "the master disk: p1 ext4, p2 PV (VG vgh, LV data ext4, free extents), p3 random"
master=$QT_SCRATCH/master.raw
truncate -s 196M -- "$master"
printf 'label: gpt\nsize=64MiB, type=L, name=root\nsize=64MiB, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=pv\nsize=64MiB, type=L, name=spare\n' |
        sfdisk -q -- "$master" >/dev/null
read -r p1_off p1_size < <(_qt_part_geometry "$master" 1)
read -r p2_off p2_size < <(_qt_part_geometry "$master" 2)
read -r p3_off p3_size < <(_qt_part_geometry "$master" 3)
((p2_size == p3_size && p2_off + p2_size == p3_off)) || qt_fail "unexpected partition layout"
p1_frag=$QT_SCRATCH/p1.frag lv_frag=$QT_SCRATCH/lv.frag
_qt_populate_part "$p1_frag" "$master" 1 ext4 32 4K 1M 5M
_qt_random_fill "$master" "$p3_off" "$p3_size"

lv_off='' lv_size='' # set by _qt_lv_range
_qt_lvm_sandbox lvm "$master" 2
_qt_lvm "$lvm" pvcreate -y "$(_qt_lvm_dev "$lvm" 1)" >/dev/null
_qt_lvm "$lvm" vgcreate -s 4M vgh "$(_qt_lvm_dev "$lvm" 1)" >/dev/null
_qt_lvcreate "$lvm" vgh data 40M
_qt_lv_range "$lvm" vgh/data lv_off lv_size
read -r pe_start pe_count < <(_qt_lvm "$lvm" pvs --noheadings --units b --nosuffix -o pe_start,pv_pe_count)
_qt_lvm_sandbox_end "$lvm"
ext=$((4 * MiB)) lv_ext=$((lv_size / (4 * MiB)))
((lv_off == p2_off + pe_start)) || qt_fail "vgh/data does not start at the first extent"
# The free extents (after the LV) held data once: random bytes, which a discard would zero.
free_off=$((lv_off + lv_size)) free_size=$(((pe_count - lv_ext) * ext))
((free_size > 0)) || qt_fail "vgh has no free extents"
_qt_random_fill "$master" "$free_off" "$free_size"
_qt_populate_lv "$lv_frag" "$master" vgh/data "$lv_off" "$lv_size" ext4 16 4K 1M 2M
lvm_mda "$master" "$p2_off" get "$QT_SCRATCH/master.vg"
for key in 'pe_start = 2048' "pe_count = $pe_count" 'extent_size = 8192' 'segment_count = 1' \
        'start_extent = 0' "extent_count = $lv_ext" "dev_size = $((p2_size / 512))" '"pv0", 0'; do
        grep -qxF -- "$key" "$QT_SCRATCH/master.vg" || qt_fail "lvm2's metadata text has no line '$key'"
done
qt_info "p1 $p1_off+$p1_size, p2 $p2_off+$p2_size (pe_start $pe_start, $pe_count extents), p3 $p3_off+$p3_size"
qt_info "vgh/data $lv_off+$lv_size (extents 0-$((lv_ext - 1))), free $free_off+$free_size"

# ---- per case -------------------------------------------------------------------------------

fail_check() {
        hx_failed "$case: $*"
}

# new_case NAME: $raw, a copy of the master to damage; $img, the qcow2 it becomes.
new_case() {
        case=$1
        raw=$QT_SCRATCH/$case.raw img=$QT_IMAGES/$case.qcow2
        cp --sparse=always -- "$master" "$raw"
}

# seal_case [lv [EXTRA-MANIFEST-ENTRIES-FILE]]: the manifest (p1, with "lv" vgh/data as built
# too, plus any entries given: where p2 is not checked byte for byte), the sha256 of p2 and p3
# before, then the qcow2.
seal_case() {
        local frag=$QT_SCRATCH/$case.frag
        cat -- "$p1_frag" ${1:+"$lv_frag"} ${2:+"$2"} >"$frag"
        sha_p2=$(_qt_range_read "$raw" "$p2_off" "$p2_size" | sha256sum | cut -d' ' -f1)
        sha_p3=$(_qt_range_read "$raw" "$p3_off" "$p3_size" | sha256sum | cut -d' ' -f1)
        _qt_finish_qcow2 "$raw" "$img"
        _qt_write_manifest "$img" qcow2 gpt "$frag"
        qt_expect_files
}

# shrink_case: qtrimctl shrink --json (at most 120 s); $json, $result, $elapsed; prints the
# volumes; the result must be "done", the job must leave nothing behind. $after is a raw copy
# of the disk after the job, for the byte checks.
shrink_case() {
        local t0 rc=0
        json=$QT_WORK/$case.json
        t0=$(qt_now)
        timeout 120 "$QT_QTRIMCTL" shrink --json "$img" >"$json" 2>"$json.err" || rc=$?
        elapsed=$(qt_since "$t0")
        result=$(hx_json "$json" .result)
        qt_info "$case: qtrimctl exit $rc, result '$result' in ${elapsed}s$(hx_json "$json" .error_message | sed 's/^./: &/')"
        jq -r '.[0].filesystems[]? | "    | \(.name) \(.fstype) \(.state) \(.trimmed) \(.message)"' "$json" || true
        ((rc == 0)) || fail_check "qtrimctl exited with $rc: $(cat "$json.err")"
        [[ $result == "done" ]] || fail_check "the job's result is '$result', not done"
        hx_tally "$case" "$result: $(jq -r '[.[0].filesystems[]? | select(.name | test("^(p2|p3|vgh)")) | "\(.name) \(.state)"] | join(", ")' "$json")"
        assert_no_leftovers >/dev/null
        after=$QT_SCRATCH/$case.after.raw
        rm -f -- "$after"
        qemu-img convert -U -O raw -- "$img" "$after" || qt_fail "qemu-img convert of $img failed"
}

# vol_is NAME STATE [MESSAGE-REGEX]: what the job said of volume NAME ("-" STATE: not listed).
vol_is() {
        local got
        got=$(jq -r --arg n "$1" '.[0].filesystems[]? | select(.name == $n) | "\(.state) \(.message)"' "$json")
        if [[ $2 == - ]]; then
                if [[ -z $got ]]; then qt_ok "$1: not listed"; else fail_check "$1 is '$got', expected not listed"; fi
        elif [[ $got =~ ^$2( |$) && ${got#* } =~ ${3:-} ]]; then
                qt_ok "$1: $got"
        else
                fail_check "$1 is '${got:-missing}', expected '$2 ${3:-}'"
        fi
}
# No volume of VG vgh at all (the VG was refused before any of it became a volume).
no_vg_volumes() {
        local v
        v=$(jq -r '[.[0].filesystems[]? | select(.name | startswith("vgh")) | .name] | join(", ")' "$json")
        if [[ -z $v ]]; then qt_ok "no volume of vgh"; else fail_check "volumes of the refused VG listed: $v"; fi
}
# No free-extent volume of vgh (it has no free extent inside p2).
no_free_volumes() {
        if jq -e '[.[0].filesystems[] | select(.name | startswith("vgh free"))] | length == 0' "$json" >/dev/null; then
                qt_ok "no free extents listed"
        else
                fail_check "free extents listed: $(jq -c '[.[0].filesystems[] | select(.name | startswith("vgh free"))]' "$json")"
        fi
}
# The job ended within QUICK_S seconds (attach, trim of p1, convert: about 1 s here): no loop
# over 2^62 extents, no allocation sized by them.
QUICK_S=15
quick() {
        if awk -v t="$elapsed" -v max="$QUICK_S" 'BEGIN { exit !(t < max) }'; then
                qt_ok "the job took ${elapsed}s"
        else
                fail_check "the job took ${elapsed}s, more than ${QUICK_S}s"
        fi
}
# same RANGE...: p2 or p3 byte-identical after the job.
same() {
        local r off size want got
        for r in "$@"; do
                case $r in
                p2) off=$p2_off size=$p2_size want=$sha_p2 ;;
                p3) off=$p3_off size=$p3_size want=$sha_p3 ;;
                esac
                got=$(_qt_range_read "$after" "$off" "$size" | sha256sum | cut -d' ' -f1)
                if [[ $got == "$want" ]]; then
                        qt_ok "$r byte-identical"
                else
                        fail_check "$r changed (bytes $off+$size)"
                fi
        done
}
# The kept files of p1 and of the LV (and of any extra entries) intact, each fsck clean.
files_intact() {
        if (verify_files "$img" >"$QT_WORK/$case.verify" 2>&1); then
                qt_ok "kept files intact ($(grep -c 'files intact' "$QT_WORK/$case.verify") filesystems)"
        else
                tail -n 5 "$QT_WORK/$case.verify" >&2
                fail_check "kept files damaged"
        fi
}
end_case() { rm -f -- "$after"; }

# inspected IMG NAME: "STATE MESSAGE" of volume NAME as Inspect (discovery only) says.
inspected() {
        busctl --system --json=short call org.qtrim1 /org/qtrim1 org.qtrim1.Manager Inspect 'sa{sv}' "$1" 0 |
                jq -r --arg n "$2" '.data[1][] | select(.[0] == $n) | "\(.[5]) \(.[6])"'
}
# variant NAME MESSAGE-REGEX LVM_MDA-ARGS...: a raw copy of the master that lvm_mda damages;
# Inspect must say of p2 a message matching MESSAGE-REGEX (no trim: the cheap way to try
# several damages of one kind; each kind also has a full shrink).
variant() {
        local name=$1 want=$2 vi=$QT_IMAGES/$1.raw got t0
        shift 2
        cp --sparse=always -- "$master" "$vi"
        lvm_mda "$vi" "$p2_off" "$@"
        t0=$(qt_now)
        got=$(inspected "$vi" p2)
        qt_info "Inspect $name: ${got:-nothing} ($(qt_since "$t0")s)"
        hx_tally "$name (Inspect)" "p2 ${got%% *}"
        if [[ $got =~ ^(found|skipped)\ $want ]]; then
                qt_ok "$name: p2 $got"
        else
                hx_failed "$name: p2 is '${got:-missing}', expected 'found|skipped $want'"
        fi
        rm -f -- "$vi"
}

# ---- 0: the control ------------------------------------------------------------------------

qt_step "0 control: the master as built: p1, vgh/data trimmed, free extents discarded"
new_case control
seal_case lv
shrink_case
vol_is p1 trimmed
vol_is p2 skipped "an LVM physical volume"
vol_is vgh/data trimmed
vol_is "vgh free1" discarded
vol_is p3 skipped
same p3
files_intact
got=$(_qt_range_read "$after" "$free_off" "$free_size" | tr -d '\0' | head -c 1 | wc -c)
if ((got == 0)); then qt_ok "vgh's free extents read as zeros"; else fail_check "vgh's free extents were not discarded"; fi
end_case

# ---- 1: truncated text -----------------------------------------------------------------------

qt_step "1 truncated metadata text (raw_locn size cut in the middle of the LVs, resealed)"
new_case truncated
cut=$(grep -b -m1 'segment1 {' "$QT_SCRATCH/master.vg" | cut -d: -f1)
lvm_mda "$raw" "$p2_off" cut "$cut"
seal_case
shrink_case
vol_is p1 trimmed
vol_is p2 skipped "^LVM metadata refused: "
no_vg_volumes
same p2 p3
files_intact
end_case

# ---- 2: looping and self-overlapping segments -----------------------------------------------

half=$((lv_ext / 2))
# data as two segments of half the LV each; $1 the second one's start_extent, $2 its PV extent.
two_segments() {
        printf '%s' "t = t.replace('segment_count = 1', 'segment_count = 2').replace('extent_count = $lv_ext', 'extent_count = $half', 1)
t = t.replace('\"pv0\", 0\n]\n}\n', '\"pv0\", 0\n]\n}\n\nsegment2 {\nstart_extent = $1\nextent_count = $half\n\ntype = \"striped\"\nstripe_count = 1\n\nstripes = [\n\"pv0\", $2\n]\n}\n', 1)"
}
qt_step "2 an LV whose segment list restarts at extent 0 (its PV extents distinct)"
new_case seg-restart
lvm_mda "$raw" "$p2_off" edit "$(two_segments 0 "$half")"
seal_case
shrink_case
vol_is p1 trimmed
vol_is p2 skipped "^LVM metadata refused: .*overlapping segment"
no_vg_volumes
same p2 p3
files_intact
end_case
qt_step "2b variants (Inspect): the LV over itself on the PV, a gap, segment_count lying"
variant seg-self-overlap "LVM metadata refused: .*used by both data and data" edit "$(two_segments "$half" 2)"
variant seg-gap "LVM metadata refused: .*gap at extent" edit "$(two_segments $((half + 1)) "$half")"
variant seg-count-lies "LVM metadata refused: .*segment_count 2, 1 segments" edit "t = t.replace('segment_count = 1', 'segment_count = 2')"
# Extents that would start inside the metadata area: discarding free ones would wipe it.
variant pe-start-over-metadata "VG vgh: its extents start over a PV's label or metadata" edit "t = t.replace('pe_start = 2048', 'pe_start = 8')"

# ---- 3: extents past the disk ------------------------------------------------------------------

big=$((pe_count + p3_size / ext / 2)) # half of p3 more: the extents behind p2 are p3's bytes
qt_step "3 pe_count $big and the LV over all of it: past p2, into p3 (dev_size to match)"
new_case past-part
lvm_mda "$raw" "$p2_off" edit "t = t.replace('pe_count = $pe_count', 'pe_count = $big').replace('extent_count = $lv_ext', 'extent_count = $big').replace('dev_size = $((p2_size / 512))', 'dev_size = $((pe_start / 512 + big * ext / 512))')"
seal_case
shrink_case
vol_is p1 trimmed
if jq -e '.[0].filesystems[] | select(.name == "vgh/data")' "$json" >/dev/null; then
        vol_is vgh/data skipped
else
        vol_is p2 skipped "^LVM (metadata|label) refused: "
fi
no_free_volumes
same p2 p3
files_intact
end_case

qt_step "3b pe_count $big, the LV as it was: the free range that crosses p2's end is no volume"
new_case past-part-free
lvm_mda "$raw" "$p2_off" edit "t = t.replace('pe_count = $pe_count', 'pe_count = $big').replace('dev_size = $((p2_size / 512))', 'dev_size = $((pe_start / 512 + big * ext / 512))')"
seal_case lv
shrink_case
vol_is p1 trimmed
vol_is vgh/data trimmed
jq -r '.[0].filesystems[] | select(.name | startswith("vgh free")) | "\(.name) \(.offset // "") \(.size // "")"' "$json" | sed 's/^/    free volume: /'
same p3
# Whatever qtrim did inside p2, the extents past pe_count inside p2 were never the LV's.
files_intact
end_case

# ---- 4: two LVs on the same extents ----------------------------------------------------------

qt_step "4 a second LV (twin) claiming the same extents as data"
new_case twin-lvs
lvm_mda "$raw" "$p2_off" edit "import re
s = t.index('\ndata {'); e = t.index('\n}\n}\n', s) + 5
twin = re.sub(r'id = \"[^\"]+\"', 'id = \"qtrimT-0000-0000-0000-0000-0000-000001\"', t[s:e].replace('data {', 'twin {', 1), count=1)
t = t[:e] + twin + t[e:]"
lvm_mda "$raw" "$p2_off" get "$QT_SCRATCH/twin.vg"
grep -q '^twin {' "$QT_SCRATCH/twin.vg" || qt_fail "the twin LV is not in the text"
seal_case
shrink_case
vol_is p1 trimmed
vol_is p2 skipped "^LVM metadata refused: .*used by both (data and twin|twin and data)"
no_vg_volumes
same p2 p3
files_intact
end_case

# ---- 5: huge counts ----------------------------------------------------------------------------

qt_step "5 extent_count, pe_count and segment_count 2^62: refused, in seconds"
new_case huge
lvm_mda "$raw" "$p2_off" edit "t = t.replace('extent_count = $lv_ext', 'extent_count = $((1 << 62))').replace('pe_count = $pe_count', 'pe_count = $((1 << 62))').replace('segment_count = 1', 'segment_count = $((1 << 62))')"
seal_case
shrink_case
vol_is p1 trimmed
vol_is p2 skipped "^LVM metadata refused: .*out of range"
no_vg_volumes
same p2 p3
files_intact
quick
end_case
qt_step "5b variants (Inspect), one huge count each"
variant huge-extent-count "LVM metadata refused: .*extent_count out of range" edit "t = t.replace('extent_count = $lv_ext', 'extent_count = $((1 << 62))')"
variant huge-pe-count "LVM metadata refused: .*pe_count out of range" edit "t = t.replace('pe_count = $pe_count', 'pe_count = $((1 << 62))')"
variant huge-segment-count "LVM metadata refused: .*segment_count out of range" edit "t = t.replace('segment_count = 1', 'segment_count = $((1 << 62))')"
variant max-segment-count "LVM metadata refused: .*segment_count 4294967295, 1 segments" edit "t = t.replace('segment_count = 1', 'segment_count = 4294967295')"
variant huge-extent-size "LVM metadata refused: .*extent_size out of range" edit "t = t.replace('extent_size = 8192', 'extent_size = $((1 << 62))')"
variant overflow-extent-size "LVM metadata refused: .*overflows" edit "t = t.replace('extent_size = 8192', 'extent_size = 2147483648').replace('pe_count = $pe_count', 'pe_count = 4294967295').replace('dev_size = $((p2_size / 512))\n', '')"
variant int-overflow "LVM metadata refused: .*integer out of range" edit "t = t.replace('pe_count = $pe_count', 'pe_count = 99999999999999999999999')"

qt_step "5c every count at lvm2's 32-bit maximum (2^32 - 1 extents of 4 MiB: 16 PiB), valid as text"
new_case max32
lvm_mda "$raw" "$p2_off" edit "t = t.replace('extent_count = $lv_ext', 'extent_count = 4294967295').replace('pe_count = $pe_count', 'pe_count = 4294967295').replace('dev_size = $((p2_size / 512))\n', '')"
seal_case
shrink_case
vol_is p1 trimmed
if jq -e '.[0].filesystems[] | select(.name == "vgh/data")' "$json" >/dev/null; then
        vol_is vgh/data skipped
else
        vol_is p2 skipped "^LVM metadata refused: "
fi
no_free_volumes
same p2 p3
files_intact
quick
end_case

# ---- 6: checksums ---------------------------------------------------------------------------------

qt_step "6 the label's crc broken"
new_case label-crc
lvm_mda "$raw" "$p2_off" label-crc
seal_case
shrink_case
vol_is p1 trimmed
# libblkid checks the label's crc itself: p2 does not even read as LVM2_member to it, and
# qtrim's own reader never sees it.
vol_is p2 skipped "^(LVM label refused: .*bad crc|no filesystem found)"
no_vg_volumes
same p2 p3
files_intact
end_case

qt_step "6b variants (Inspect): the mda header's crc, the text's crc"
variant mda-crc "LVM label refused: metadata area 0: bad mda header crc" mda-crc
variant text-crc "LVM label refused: metadata area 0: bad metadata text crc" text-crc

# ---- 7: clones ------------------------------------------------------------------------------------

qt_step "7 p2 copied onto p3: the same VG name, VG id, PV id and LV twice on one disk"
new_case clone
dd if="$raw" of="$raw" iflag=skip_bytes,count_bytes skip="$p2_off" count="$p2_size" \
        oflag=seek_bytes seek="$p3_off" bs=1M conv=notrunc status=none
# The clone of data's filesystem, in p3: its kept files must survive too.
jq -c --argjson d $((p3_off - p2_off)) '.name = "vgh/data@p3" | .offset += $d' "$lv_frag" >"$QT_SCRATCH/clone.extra"
seal_case lv "$QT_SCRATCH/clone.extra"
shrink_case
vol_is p1 trimmed
lvs=$(jq -r '[.[0].filesystems[] | select(.name | startswith("vgh")) | "\(.name)@\(.offset)"] | join(" ")' "$json")
qt_info "volumes of vgh: ${lvs:-none}; p2: $(hx_json_fs "$json" p2); p3: $(hx_json_fs "$json" p3)"
# Safe: the VG refused, or handled in one copy only, each of its volumes inside that copy, and
# the other copy byte-identical.
in_p2=$(jq --argjson o "$p2_off" --argjson e $((p2_off + p2_size)) '[.[0].filesystems[] | select((.name | startswith("vgh")) and .size > 0 and .offset >= $o and .offset + .size <= $e)] | length' "$json")
in_p3=$(jq --argjson o "$p3_off" --argjson e $((p3_off + p3_size)) '[.[0].filesystems[] | select((.name | startswith("vgh")) and .size > 0 and .offset >= $o and .offset + .size <= $e)] | length' "$json")
all=$(jq '[.[0].filesystems[] | select((.name | startswith("vgh")) and .size > 0)] | length' "$json")
if ((all == 0)); then
        qt_ok "vgh refused: no volume of it"
        same p2 p3
elif ((in_p3 == all && in_p2 == 0)); then
        qt_ok "vgh handled in p3's copy only ($all volumes), p2 left alone"
        same p2
elif ((in_p2 == all && in_p3 == 0)); then
        qt_ok "vgh handled in p2's copy only ($all volumes), p3 left alone"
        same p3
else
        fail_check "vgh's volumes lie in both copies or outside them: $lvs"
fi
files_intact
end_case

qt_step "7b p3 carries p2's PV id but no metadata area: its bytes are no extents of vgh"
new_case clone-no-mda
# p3 keeps its random bytes; only p2's label sector is copied, its metadata area list emptied.
dd if="$raw" of="$raw" iflag=skip_bytes,count_bytes skip="$p2_off" count=4096 \
        oflag=seek_bytes seek="$p3_off" conv=notrunc status=none
lvm_mda "$raw" "$p3_off" no-mda
seal_case lv
shrink_case
vol_is p1 trimmed
qt_info "p2: $(hx_json_fs "$json" p2); p3: $(hx_json_fs "$json" p3)"
jq -r '.[0].filesystems[] | select(.name | startswith("vgh")) | "    vgh volume: \(.name) at \(.offset)+\(.size) \(.state)"' "$json"
# Two labels with pv0's id. vgh's text came from p2, whose own label carries that id; p3 says
# nothing of its bytes. Taking p3 for pv0 applies p2's extent map to bytes it never described
# (here: vgh's "free" extents discarded over p3's data). Safe: the VG refused as ambiguous, or
# handled in p2 only; p3 byte for byte as it was.
outside=$(jq -r --argjson o "$p2_off" --argjson e $((p2_off + p2_size)) '[.[0].filesystems[] | select((.name | startswith("vgh")) and .size > 0 and (.offset < $o or .offset + .size > $e)) | "\(.name)@\(.offset)+\(.size) \(.state)"] | join(", ")' "$json")
if [[ -z $outside ]]; then
        qt_ok "no volume of vgh outside p2"
else
        fail_check "volumes of vgh outside p2, whose metadata it is: $outside"
fi
same p3
files_intact
end_case

# ---- the end ----------------------------------------------------------------------------------

qt_step "the host's LVM state"
if [[ $(host_lvm_state) == "$host_lvm_before" ]]; then
        qt_ok "/etc/lvm and /run/lvm unchanged"
else
        hx_failed "/etc/lvm or /run/lvm changed"
fi
hx_report
qt_scenario_end

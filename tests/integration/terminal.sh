#!/bin/bash
# qtrimctl shrink on a terminal (tmux, a private server), against a qtrimd whose jobs pause at a
# phase (-Dtest_hooks=true), with MaxParallelJobs=1 so one image runs while the other waits:
# - 40 columns, LC_ALL=C: while the first job is paused in its trim, one progress line per image,
#   none wider than the terminal, with the bytes of the trim; only ASCII. Ctrl-C leaves no "^C"
#   and no stale line, and each image ends "canceled" with what state it is in, exit status 3.
# - 120 columns, C.UTF-8: paused at the start of the convert, then resumed; the bar in block
#   characters, a rate and an ETA once the convert moves; the first image's summary ("→") is on
#   the screen before the second image's progress ends; a resize to 60 columns redraws within
#   60; at the end only the summaries remain, exit status 0.
# Every frame qtrimctl wrote (tmux pipe-pane) is checked: no line reaches the last column.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" 2>/dev/null ||
        qt_fail "needs a build with -Dtest_hooks=true (jobs paused at a phase)"
qt_need tmux

qt_scenario_start terminal
qt_daemon_stop
printf '[Daemon]\nIdleExitSec=0\nMaxParallelJobs=1\n' >"$QT_DAEMON_CONFIG"
QTRIM_TEST_PAUSE=trim-mounted qt_daemon_start

master=$QT_SCRATCH/master.qcow2
qt_step "build a dirty qcow2 (ext4 on the whole disk)"
make_whole_qcow2 "$master"

# A tmux server of the test's own, its socket in the work dir (gone with it).
tm() { tmux -S "$QT_WORK/tmux.sock" "$@"; }
# The server ends by itself with its last session; this is for a test that fails before.
tm_stop() { tm kill-server 2>/dev/null || true; }
qt_defer tm_stop

# run_in_tmux NAME COLUMNS LOCALE IMAGE...: qtrimctl shrink in a fresh tmux window of that size,
# in $QT_IMAGES (images named relative to it), everything it writes recorded in $QT_WORK/NAME.raw,
# its exit status in $QT_WORK/NAME.rc.
run_in_tmux() {
        local name=$1 columns=$2 locale=$3
        shift 3
        rm -f -- "$QT_WORK/$name.go" "$QT_WORK/$name.rc" "$QT_WORK/$name.raw"
        # The command waits for the recording to be in place.
        tm new-session -d -s "$name" -x "$columns" -y 20 \
                "while [ ! -e '$QT_WORK/$name.go' ]; do sleep 0.05; done; cd '$QT_IMAGES'; \
                 env DBUS_SYSTEM_BUS_ADDRESS='$DBUS_SYSTEM_BUS_ADDRESS' LC_ALL=$locale \
                 '$QT_QTRIMCTL' shrink $*; echo \$? >'$QT_WORK/$name.rc'; sleep 600"
        tm set-option -t "$name" window-size manual
        tm pipe-pane -t "$name" -o "cat >>'$QT_WORK/$name.raw'"
        touch "$QT_WORK/$name.go"
        qt_info "qtrimctl shrink $* in a ${columns}-column tmux window, LC_ALL=$locale"
}

screen() { tm capture-pane -p -J -t "$1"; }

# Fails if a line on the screen is as wide as the window or wider (it wrapped, or would): for the
# screens with progress lines (a summary or an error may wrap, as any command's output).
check_screen_width() { # NAME COLUMNS
        # ${#line} counts characters, not bytes, only in a UTF-8 locale.
        local line LC_ALL=C.UTF-8
        while IFS= read -r line; do
                ((${#line} < $2)) || qt_fail "$1: a line of ${#line} columns on a $2-column screen: '$line'"
        done < <(screen "$1")
}

# Every progress line qtrimctl wrote (between cursor movements and line ends), under COLUMNS.
check_frames_width() { # NAME COLUMNS
        local longest
        longest=$(LC_ALL=C.UTF-8 python3 -c '
import re, sys
text = open(sys.argv[1], "rb").read().decode("utf-8", "replace")
text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "\n", text)
print(max([len(s) for s in re.split(r"[\r\n]", text) if re.search(r"[0-9]%  ", s)] or [0]))' "$QT_WORK/$1.raw")
        ((longest < $2)) || qt_fail "$1: qtrimctl wrote a line of $longest columns for $2 columns"
        qt_ok "$1: every line of every frame fits in $2 columns (longest $longest)"
}

wait_paused() { # POINT
        local i
        for ((i = 0; i < 300; i++)); do
                grep -qE "paused at $1( |\$)" "$QT_DAEMON_LOG" && break
                sleep 0.1
        done
        ((i < 300)) || qt_fail "no job paused at $1"
        : >"$QT_DAEMON_LOG"
        # The next second's redraw shows the paused job.
        sleep 1.5
}

wait_rc() { # NAME
        local i
        for ((i = 0; i < 600; i++)); do
                [[ -s $QT_WORK/$1.rc ]] && break
                sleep 0.1
        done
        ((i < 600)) || qt_fail "$1: qtrimctl did not end"
        cat -- "$QT_WORK/$1.rc"
}

qt_step "40 columns, LC_ALL=C: paused in the trim, then Ctrl-C"
long=$QT_IMAGES/a-rather-long-image-name-to-be-cut-at-forty.qcow2
qt_clone_image "$master" "$QT_IMAGES/a.qcow2"
qt_clone_image "$master" "$long"
run_in_tmux narrow 40 C a.qcow2 "${long##*/}"
wait_paused trim-mounted
screen narrow | sed 's/^/    | /'
check_screen_width narrow 40
screen narrow | grep -qE '^a\.qcow2 +[0-9]+%  trim  [0-9.]+ [KMG]?i?B/256\.0 MiB' ||
        qt_fail "no progress line with the trim's bytes for a.qcow2"
screen narrow | grep -qE '^\.\.\.rty\.qcow2 +[0-9]+%  queued' ||
        qt_fail "the long name is not cut at its beginning, with its queued state"
(($(screen narrow | grep -cE '%  (trim|queued)') == 2)) || qt_fail "not exactly one progress line per image"
qt_ok "one line per image, the trim's bytes, the long name cut to fit"
tm send-keys -t narrow C-c
rc=$(wait_rc narrow)
screen narrow | sed 's/^/    | /'
((rc == 3)) || qt_fail "canceled jobs: exit status $rc, expected 3"
screen narrow | grep -q '\^C' && qt_fail "'^C' left on the screen"
screen narrow | grep -qE '^qtrimctl: SIGINT received' || qt_fail "the interrupt message does not start its line"
screen narrow | grep -qE '%  (trim|queued)' && qt_fail "a progress line was left on the screen"
screen narrow | grep -qE '^qtrimctl: a\.qcow2: canceled; ' || qt_fail "a.qcow2 is not reported canceled with its state"
screen narrow | grep -qE 'forty\.qcow2: canceled; the image is as it was' || qt_fail "the queued image's cancel does not say it is untouched"
LC_ALL=C grep -qP '[^\x00-\x7f]' "$QT_WORK/narrow.raw" && qt_fail "non-ASCII output under LC_ALL=C"
check_frames_width narrow 40
qt_ok "Ctrl-C: clean lines, canceled with the image's state, exit 3, ASCII only"
tm kill-session -t narrow

qt_step "120 columns, C.UTF-8: paused at the convert, a resize, then to the end"
qt_daemon_stop
: >"$QT_DAEMON_LOG"
QTRIM_TEST_PAUSE=convert-write QTRIM_TEST_RESUME=$QT_WORK/resume qt_daemon_start
qt_clone_image "$master" "$QT_IMAGES/b.qcow2"
qt_clone_image "$master" "$QT_IMAGES/c.qcow2"
qt_expect_files
before_b=$(allocated_bytes "$QT_IMAGES/b.qcow2")
before_c=$(allocated_bytes "$QT_IMAGES/c.qcow2")
run_in_tmux wide 120 C.UTF-8 b.qcow2 c.qcow2
wait_paused convert-write
screen wide | sed 's/^/    | /'
check_screen_width wide 120
screen wide | grep -qE 'b\.qcow2 +\[(█)*(░)+\] +[0-9]+%  convert  0 B/256\.0 MiB' ||
        qt_fail "no progress line with a block-character bar and the convert's bytes for b.qcow2"
tm resize-window -t wide -x 60
sleep 1.5
screen wide | sed 's/^/    | /'
check_screen_width wide 60
(($(screen wide | grep -cE '%  (convert|queued)') == 2)) || qt_fail "after the resize: not exactly one progress line per image"
qt_ok "after a resize to 60 columns: one line per image, within 60"
# Back to 120 for the rate and the ETA, which 60 columns cut off.
tm resize-window -t wide -x 120
sleep 1.5
touch "$QT_WORK/resume"
rc=$(wait_rc wide)
screen wide | sed 's/^/    | /'
((rc == 0)) || qt_fail "exit status $rc, expected 0"
screen wide | grep -qE '%  (convert|queued|trim)' && qt_fail "a progress line was left on the screen"
for img in b c; do
        screen wide | grep -qE "^$img\.qcow2: .* → .* allocated \(.* reclaimed\) in " ||
                qt_fail "no summary line for $img.qcow2"
done
LC_ALL=C.UTF-8 python3 - "$QT_WORK/wide.raw" <<'EOF' || qt_fail "the progress frames are not as expected"
import re, sys
text = open(sys.argv[1], "rb").read().decode("utf-8")
if not re.search(r"b\.qcow2 .*%  convert  [0-9.]+ [KMG]?i?B/256\.0 MiB  [0-9.]+ [KMG]?i?B/s  ETA ", text):
    sys.exit("no frame shows the convert's rate and ETA")
summary = re.search(r"b\.qcow2: [0-9.]+ [KMG]?i?B → ", text).start()
if not re.search(r"c\.qcow2 .*%  (trim|convert)", text[summary:]):
    sys.exit("b.qcow2's summary came after c.qcow2's progress ended")
EOF
qt_ok "a rate and an ETA in the convert; b.qcow2's summary while c.qcow2 still ran"
check_frames_width wide 120
tm kill-session -t wide
qt_check_shrunk "$QT_IMAGES/b.qcow2" "$before_b" qcow2
qt_check_shrunk "$QT_IMAGES/c.qcow2" "$before_c" qcow2

qt_scenario_end

#!/bin/bash
# Who may make qtrimd act, checked with a real unprivileged user on the private bus and, in the
# second half, a real polkitd on that bus with a rule of our own.
#   Without polkit: a non-root caller is denied (AccessDenied) inside and outside the image
#   directories, may not cancel root's job, and root is allowed. The image is byte-identical.
#   With polkit: the rule lets the user shrink images named allowed-* only; others fall back to
#   the action's auth_admin_keep, which without an agent is a no. A link in the image directory
#   to a file outside it is refused even so. The user's shrink succeeds and is checked; the user
#   may cancel root's job only once the rule grants org.qtrim1.cancel-any.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"

grep -q '^#define QTRIM_TEST_HOOKS 1' "$QT_BUILD_DIR/config.h" ||
        qt_fail "needs a build with -Dtest_hooks=true (a job paused while it is canceled)"
polkitd=/usr/lib/polkit-1/polkitd
[[ -x $polkitd ]] || qt_fail "polkitd is not installed (tools/install-deps.sh installs it)"
user=qtrim-authz-test

qt_scenario_start authorization
if ! id -u "$user" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
        qt_defer userdel "$user"
fi
# The user must reach the bus socket and the images' directory (to name them, not to write).
chmod 755 "$QT_WORK" "$QT_IMAGES"

qt_daemon_stop
printf '[Daemon]\nIdleExitSec=0\nImageDirectories=%s\n' "$QT_IMAGES" >"$QT_DAEMON_CONFIG"
# Jobs wait with filesystems mounted until the test creates the resume file.
QTRIM_TEST_PAUSE=trim-mounted QTRIM_TEST_RESUME=$QT_WORK/resume qt_daemon_start

# Shrink() as the user; prints the D-Bus error name or "ok JOBPATH" (qt_shrink_error_name).
as_user() { runuser -u "$user" -- env DBUS_SYSTEM_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" "$@"; }
user_shrink() { # IMAGE
        local out
        if out=$(as_user gdbus call --system --dest org.qtrim1 --object-path /org/qtrim1 \
                --method org.qtrim1.Manager.Shrink "'$1'" "@a{sv} {}" 2>&1); then
                printf 'ok %s\n' "$(sed -E "s/^\(objectpath '([^']*)',\)$/\1/" <<<"$out")"
        else
                sed -nE 's/.*GDBus\.Error:([A-Za-z0-9_.]+): (.*)/\1 \2/p' <<<"$out" | head -n 1
        fi
}
user_cancel() { # JOB
        as_user gdbus call --system --dest org.qtrim1 --object-path "$1" \
                --method org.qtrim1.Job.Cancel 2>&1 || true
}
expect_denied() { # IMAGE WHY-PATTERN
        local got
        got=$(user_shrink "$1")
        [[ $got == "org.freedesktop.DBus.Error.AccessDenied "* && $got =~ $2 ]] ||
                qt_fail "$(basename -- "$1"): expected AccessDenied ($2), got: $got"
        qt_ok "$(basename -- "$1"): denied: ${got#* }"
}
release_pause() { touch "$QT_WORK/resume"; }

master=$QT_SCRATCH/master.qcow2
qt_step "build a dirty GPT ext4+xfs qcow2 and copies in and out of the image directory"
make_gpt_ext4_xfs "$master"
allowed=$QT_IMAGES/allowed-vm.qcow2
other=$QT_IMAGES/other-vm.qcow2
outside=$QT_SCRATCH/outside-vm.qcow2
cancelable=$QT_IMAGES/cancelable-vm.qcow2
qt_clone_image "$master" "$allowed"
qt_clone_image "$master" "$cancelable"
qt_clone_image "$master" "$other"
qt_clone_image "$master" "$outside"
ln -s "$outside" "$QT_IMAGES/allowed-link.qcow2"
sums=$QT_WORK/sums
sha256sum "$allowed" "$outside" "$cancelable" >"$sums"

qt_step "no polkit on the bus: only root may act"
expect_denied "$allowed" 'polkit is not running'
expect_denied "$outside" 'outside the image directories'
expect_denied /etc/shadow 'outside the image directories'
sha256sum --quiet -c "$sums" || qt_fail "an image changed after refused calls"
qt_ok "the images are byte-identical"

qt_watch_job_removed
qt_step "root's job (paused with filesystems mounted): the user may not cancel it"
root_job=$(qt_qtrimctl shrink --no-block "$other")
got=$(user_cancel "$root_job")
[[ $got == *AccessDenied* ]] || qt_fail "the user's Cancel of root's job: $got"
[[ $(qt_job_prop "$root_job" State) == running ]] || qt_fail "root's job is not running after the denied cancel"
qt_ok "Cancel denied: ${got##*: }"

qt_step "start polkitd on the private bus, with qtrim's actions and a rule for $user"
pk=$QT_WORK/polkit
mkdir -p "$pk/actions" "$pk/rules" "$pk/empty"
cp "$QT_SOURCE_DIR/systemd-units/org.qtrim1.policy" "$pk/actions/"
cat >"$pk/rules/50-qtrim-test.rules" <<EOF
polkit.addRule(function(action, subject) {
    if (subject.user != "$user") return polkit.Result.NOT_HANDLED;
    if (action.id == "org.qtrim1.shrink" && action.lookup("image").indexOf("/allowed-") >= 0)
        return polkit.Result.YES;
    if (action.id == "org.qtrim1.cancel-any" && action.lookup("image").indexOf("/cancelable-") >= 0)
        return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
});
EOF
chmod -R a+rX "$pk"
# Its own mount namespace: our actions and rules over the machine's, seen by nobody else.
unshare -m --propagation private sh -c '
        mount --bind "$1/actions" /usr/share/polkit-1/actions &&
        mount --bind "$1/rules" /etc/polkit-1/rules.d &&
        mount --bind "$1/empty" /usr/share/polkit-1/rules.d &&
        exec "$2" --no-debug' polkit-ns "$pk" "$polkitd" >"$QT_WORK/polkitd.log" 2>&1 &
polkit_pid=$!
qt_defer qt_kill_wait "$polkit_pid" 5
for ((i = 0; i < 100; i++)); do
        qt_name_has_owner org.freedesktop.PolicyKit1 && break
        kill -0 "$polkit_pid" 2>/dev/null || qt_fail "polkitd exited: $(tail -n 5 "$QT_WORK/polkitd.log")"
        sleep 0.1
done
((i < 100)) || qt_fail "polkitd did not take its name: $(tail -n 5 "$QT_WORK/polkitd.log")"
qt_ok "polkitd (pid $polkit_pid) owns org.freedesktop.PolicyKit1"

qt_step "with polkit: the rule decides"
expect_denied "$other" 'authentication is required|not authorized'
expect_denied "$QT_IMAGES/allowed-link.qcow2" 'resolves to a file outside'
expect_denied "$outside" 'outside the image directories'
got=$(user_cancel "$root_job")
[[ $got == *AccessDenied* ]] || qt_fail "the user's Cancel of root's job with polkit: $got"
qt_ok "Cancel of root's job still denied (the rule grants org.qtrim1.cancel-any for cancelable-* only)"

qt_step "root's job on cancelable-vm: the rule lets the user cancel it"
cancel_job=$(qt_qtrimctl shrink --no-block "$cancelable")
got=$(user_cancel "$cancel_job")
[[ $got == "()" ]] || qt_fail "the user's Cancel of a cancelable job: $got"
[[ $(qt_job_removed_result "$cancel_job" 60 "$cancelable") == canceled ]] ||
        qt_fail "the job the user canceled did not end canceled"
assert_qemu_img_check "$cancelable"
verify_files "$cancelable"
qt_ok "canceled by the user; image consistent, files intact"
sha256sum "$allowed" "$outside" | cmp -s - <(grep -v cancelable-vm "$sums") ||
        qt_fail "an image the user was refused changed"
qt_ok "the images the user was refused are byte-identical"

qt_step "the user's shrink of an allowed image runs (root's job resumes)"
before=$(allocated_bytes "$allowed")
before_other=$(allocated_bytes "$other")
got=$(user_shrink "$allowed")
[[ $got == ok* ]] || qt_fail "the user's Shrink of $(basename -- "$allowed"): $got"
user_job=${got#ok }
[[ $(qt_job_prop "$user_job" StartedByUID) == "$(id -u "$user")" ]] || qt_fail "StartedByUID is not the user's"
release_pause
qt_wait_job_gone "$user_job" 120
qt_wait_job_gone "$root_job" 120
qt_check_shrunk "$allowed" "$before" qcow2
qt_check_shrunk "$other" "$before_other" qcow2

qt_scenario_end

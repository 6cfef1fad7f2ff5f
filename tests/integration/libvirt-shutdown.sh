#!/bin/bash
# Shrink on shutdown, and a domain start always wins: libvirt's hook (qtrim-libvirt-hook, in
# /etc/libvirt/hooks/qemu.d for the test's own libvirtd, tests/lib/libvirt.sh) tells qtrimd of a
# domain that starts (DomainStarting) or stopped (DomainStopped). Domains run under TCG with no
# OS (SeaBIOS holds them). ShrinkOnShutdown=qtrim-test-shrunk*:
# (b) a domain the setting does not name stops: no job; it starts in the time a start takes
#     with qtrimd asked and nothing to cancel (the baseline of (c));
# (c) the same domain starts while qtrim shrinks its disk, paused with the filesystem mounted
#     (QTRIM_TEST_PAUSE=trim-mounted): the start succeeds, the job ends canceled, the image is
#     intact (qemu-img check, kept files) and nothing is left; a shrink asked right after is
#     refused with ImageInUse, "domain ... is starting";
# (a) a domain the setting names, with a dirty qcow2 disk, is destroyed: its disk is shrunk
#     (allocation falls, qemu-img check, kept files), timed from the destroy to the job's end;
# (f) the same domain, running again, is stopped with its memory saved (virsh managedsave):
#     no job;
# (d) DomainStopped and DomainStarting from a caller who is not root: AccessDenied;
# (e) qtrimd not running: a start is not held up, and succeeds.
# Needs -Dtest_hooks=true (the pause point of (c)); skipped (77) otherwise.
set -euo pipefail
# shellcheck source=tests/lib/scenario.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/scenario.sh"
# shellcheck source=tests/lib/libvirt.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/libvirt.sh"
# shellcheck source=tests/lib/hostile.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../lib/hostile.sh"

if ! hx_have_test_hooks; then
        printf 'SKIP: %s is not built with -Dtest_hooks=true: no pause point to start a domain at\n' "$QT_BUILD_DIR"
        exit 77
fi
hook=$QT_BUILD_DIR/cli/qtrim-libvirt-hook
[[ -x $hook ]] || qt_fail "the hook is not built: $hook (libvirt support off?)"

QT_T0=$(qt_now)
QT_SCENARIO=libvirt-shutdown
qt_need qemu-img qemu-nbd jq busctl dbus-daemon dbus-monitor gdbus runuser
qt_init_workdir libvirt-shutdown
qt_step "libvirt-shutdown: work dir $QT_WORK"
qt_bus_start
QT_DAEMON_CONFIG=$QT_WORK/qtrimd.conf
printf '[Daemon]\nIdleExitSec=0\nShrinkOnShutdown=qtrim-test-shrunk*\n' >"$QT_DAEMON_CONFIG"
# Every worker pauses with its filesystem mounted, unless the resume file is there.
HX_RESUME=$QT_WORK/resume
QTRIM_TEST_PAUSE=trim-mounted QTRIM_TEST_RESUME=$HX_RESUME qt_daemon_start
qt_watch_job_removed

qt_step "install the hook, start libvirtd (it finds hooks when it starts)"
# libvirtd runs hooks without the test's bus address: the installed hook is a wrapper that
# gives it, around the built one.
hooks_dir=/etc/libvirt/hooks/qemu.d
if [[ ! -d $hooks_dir ]]; then
        mkdir -p -- "$hooks_dir"
        qt_defer rmdir -- "$hooks_dir"
fi
installed=$hooks_dir/qtrim-test
printf '#!/bin/sh\nexport DBUS_SYSTEM_BUS_ADDRESS=%q\nexec %q "$@"\n' "$DBUS_SYSTEM_BUS_ADDRESS" "$hook" >"$installed"
chmod 755 "$installed"
qt_defer rm -f -- "$installed"
qt_libvirt_start

master=$QT_SCRATCH/master.qcow2
make_whole_qcow2 "$master"
shrunk_img=$QT_IMAGES/shrunk.qcow2
busy_img=$QT_IMAGES/busy.qcow2
qt_clone_image "$master" "$shrunk_img"
qt_clone_image "$master" "$busy_img"
qt_domain_xml qtrim-test-shrunk-web "$(qt_domain_disk vda virtio "$shrunk_img" qcow2 unmap)" >"$QT_WORK/shrunk.xml"
qt_domain_xml qtrim-test-busy "$(qt_domain_disk vda virtio "$busy_img" qcow2 unmap)" >"$QT_WORK/busy.xml"
qt_domain_define qtrim-test-shrunk-web "$QT_WORK/shrunk.xml"
qt_domain_define qtrim-test-busy "$QT_WORK/busy.xml"

no_jobs() { [[ -z $(qt_qtrimctl list --json | jq '.[]') ]]; }

# timed_virsh ARGS...: virsh ARGS, its duration in seconds in $took.
timed_virsh() {
        local t
        t=$(qt_now)
        qt_virsh "$@" >/dev/null || qt_fail "virsh $* failed: $(tail -n 5 -- "$QT_LIBVIRT_DIR/libvirtd.log")"
        took=$(qt_since "$t")
}

# timed_start DOMAIN: virsh start, and the domain must run; the seconds in $took.
timed_start() {
        timed_virsh start "$1"
        [[ $(qt_virsh domstate "$1") == running ]] || qt_fail "$1 does not run"
}

qt_step "(b) a domain ShrinkOnShutdown= does not name: started and stopped, no job"
timed_start qtrim-test-busy
start_plain=$took
qt_ok "started in $start_plain s (qtrimd asked, nothing to cancel)"
timed_virsh destroy qtrim-test-busy
stop_plain=$took
no_jobs || qt_fail "a job exists for a domain ShrinkOnShutdown= does not name"
grep -q 'qtrim-test-busy' "$QT_DAEMON_LOG" && qt_fail "qtrimd acted on qtrim-test-busy: $(grep qtrim-test-busy "$QT_DAEMON_LOG")"
qt_ok "destroyed in $stop_plain s, no job"

qt_step "(c) the domain starts while its disk is being shrunk: the start wins"
qt_expect_files
inode=$(stat -c %i -- "$busy_img")
hx_start_paused trim-mounted "$QT_WORK/busy.json" "$busy_img"
[[ -n $HX_JOB ]] || qt_fail "no job for $busy_img"
timed_start qtrim-test-busy
start_busy=$took
qt_ok "started in $start_busy s while a job held its disk (without a job: $start_plain s)"
result=$(qt_job_removed_result "$HX_JOB" 10 "$busy_img") || qt_fail "no JobRemoved for $HX_JOB"
[[ $result == canceled ]] || qt_fail "the job ended $result, not canceled"
grep -qF "$busy_img: domain qtrim-test-busy is starting: canceling job" "$QT_DAEMON_LOG" ||
        qt_fail "qtrimd did not say why it canceled the job"
qt_ok "the job ended canceled"
qt_wait_pid_gone "$HX_CTL_PID" 10 || qt_fail "qtrimctl still waits for the canceled job"
qt_undefer qt_kill_wait "$HX_CTL_PID" 5
got=$(qt_shrink_error_name "$busy_img")
[[ $got == org.qtrim1.Error.ImageInUse ]] || qt_fail "a shrink of the starting domain's disk gave $got"
qtrimctl_out=$(qt_qtrimctl shrink "$busy_img" 2>&1 || true)
[[ $qtrimctl_out == *"domain qtrim-test-busy is starting"* ]] ||
        qt_fail "the refusal does not name the starting domain: $qtrimctl_out"
qt_ok "a shrink right after is refused: $qtrimctl_out"
qt_virsh destroy qtrim-test-busy >/dev/null
[[ $(stat -c %i -- "$busy_img") == "$inode" ]] || qt_fail "the image was replaced"
assert_qemu_img_check "$busy_img"
verify_files "$busy_img"
assert_no_leftovers
no_jobs || qt_fail "a job exists after qtrim-test-busy stopped"

qt_step "(a) a domain ShrinkOnShutdown= names is destroyed: its disk is shrunk"
touch -- "$HX_RESUME"
before=$(allocated_bytes "$shrunk_img")
assert_dirty "$shrunk_img"
qt_virsh start qtrim-test-shrunk-web >/dev/null || qt_fail "virsh start qtrim-test-shrunk-web failed"
t_stop=$(qt_now)
timed_virsh destroy qtrim-test-shrunk-web
stop_shrunk=$took
job=$(busctl --system --json=short call org.qtrim1 /org/qtrim1 org.qtrim1.Manager ListJobs |
        jq -r --arg img "$shrunk_img" 'first(.data[0][] | select(.[1] == $img) | .[3]) // ""')
[[ -n $job ]] || qt_fail "no job for $shrunk_img once virsh destroy returned"
qt_ok "virsh destroy returned in $stop_shrunk s with $job queued"
result=$(qt_job_removed_result "$job" 120 "$shrunk_img") || qt_fail "$job did not end within 120 s"
stop_to_shrunk=$(qt_since "$t_stop")
[[ $result == "done" ]] || qt_fail "the job ended $result: $(tail -n 5 -- "$QT_DAEMON_LOG")"
qt_ok "shrunk $stop_to_shrunk s after the destroy"
qt_check_shrunk "$shrunk_img" "$before" qcow2

qt_step "(f) the same domain stopped with its memory saved (managedsave): no job"
qt_virsh start qtrim-test-shrunk-web >/dev/null || qt_fail "virsh start qtrim-test-shrunk-web failed"
shrunk_print=$(qt_file_fingerprint "$shrunk_img")
qt_virsh managedsave qtrim-test-shrunk-web >/dev/null || qt_fail "virsh managedsave failed"
no_jobs || qt_fail "a job exists for a domain whose memory is saved"
grep -qF "domain qtrim-test-shrunk-web stopped with its memory saved" "$QT_DAEMON_LOG" ||
        qt_fail "qtrimd did not say why it left the saved domain alone"
[[ $(qt_file_fingerprint "$shrunk_img") == "$shrunk_print" ]] || qt_fail "the saved domain's image changed"
qt_virsh managedsave-remove qtrim-test-shrunk-web >/dev/null
qt_ok "left alone"

qt_step "(d) DomainStopped and DomainStarting from a caller who is not root: refused"
chmod 755 "$QT_WORK"
for method in DomainStopped DomainStarting; do
        out=$(runuser -u nobody -- env DBUS_SYSTEM_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" \
                gdbus call --system --dest org.qtrim1 --object-path /org/qtrim1 \
                --method "org.qtrim1.Manager.$method" qtrim-test-shrunk-web "$(cat "$QT_WORK/shrunk.xml")" 2>&1 || true)
        [[ $out == *org.freedesktop.DBus.Error.AccessDenied* ]] || qt_fail "$method from nobody: $out"
        qt_ok "$method from nobody: AccessDenied"
done
no_jobs || qt_fail "a job exists after the refused calls"

qt_step "(e) qtrimd not running: a start is not held up"
qt_daemon_stop
timed_start qtrim-test-busy
start_nodaemon=$took
qt_ok "started in $start_nodaemon s without qtrimd (with it and no job: $start_plain s)"
# No bus activation on the test's bus: DomainStopped finds nobody, which the hook only logs.
timed_virsh destroy qtrim-test-busy
stop_nodaemon=$took
qt_ok "destroyed in $stop_nodaemon s"
awk -v a="$start_nodaemon" -v b="$start_plain" 'BEGIN { exit !(a < b + 2) }' ||
        qt_fail "a start without qtrimd took $start_nodaemon s, $start_plain s with it"
qt_daemon_start

qt_info "figures: destroy -> shrunk $stop_to_shrunk s (virsh destroy $stop_shrunk s with the hook's DomainStopped);" \
        "start $start_plain s with no job, $start_busy s canceling a job, $start_nodaemon s without qtrimd"
qt_scenario_end

#!/bin/bash
# qtrim as installed, under systemd as PID 1, on the guest's real system bus: boots a systemd-mode
# guest (run-guest.sh) with the build installed into it (meson install --destdir on the host,
# copied over the guest's root) and checks, each part on its own so one failure does not hide
# the others:
#   a  systemd-analyze verify passes for every installed qtrim unit
#   b  qtrimctl shrink IMG starts qtrimd by D-Bus activation (it was not running) and the image
#      shrinks; the job's journal entry carries QTRIM_IMAGE, QTRIM_RESULT=done and the byte counts
#   c  systemctl start qtrim-sweep.service over ImageDirectories= with three images, one served
#      by a running qemu-nbd: two shrunk, the busy one reported skipped and left byte-identical,
#      the summary line, and the service succeeds
#   d  a non-root user gets AccessDenied without a polkit rule while root is allowed; with a rule
#      granting org.qtrim1.shrink, the user may inspect inside ImageDirectories= but not outside
#   e  qtrimd exits by itself IdleExitSec= (3 s) after its last request, with status 0, and the
#      next call activates it again
#   g  libvirt under the unit's filters and namespaces: the machine's libvirtd as Debian runs it
#      (socket-activated), LibvirtURI=qemu:///system, a shut-off domain with the dirty image:
#      inspect --domain --json (state, disk), inspect IMAGE names the domain (ListDomainImages),
#      shrink --domain shrinks the disk; started (TCG, SeaBIOS, no agent), shrink --domain
#      --online fails with "has no guest agent channel" (the worker's read-write connection and
#      agent call); no refused system call in qtrimd's journal; domain undefined and libvirtd,
#      virtlogd stopped at the end, pass or fail
#   p  the Debian package, built on the host from a copy of the tree (build-deb.sh), lintian clean
#   f  the package in place of the build: apt-get install ./qtrim_*.deb, the timer enabled and
#      listed by systemctl list-timers, nothing started by the install; an administrator's edit
#      of the conffile (Attach=fuse: a-e ran the kernel path under the same hardened unit);
#      qtrimctl shrink activates qtrimd and the image shrinks; inspect asks libvirt which domain
#      uses it (libvirt under the package's unit, no sanitizer drop-in); systemd-analyze
#      security of both units printed and bounded; apt-get purge leaves nothing of qtrim (no
#      file of dpkg -L, no unit, no /etc/qtrim, no state directory, no timer stamp)
# Parts a-e and g run the build under test (the sanitizer build in CI), part f what users install:
# one guest boot for both, the package replacing the build once a-e and g are done.
# Host side: as meson runs it (BUILD_DIR, SOURCE_DIR); results in $BUILD_DIR/vm/results/systemd-mode.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

# ---- on the host: install the build where the guest can copy it from, boot ------------------
if [[ -z ${QTRIM_VM_GUEST:-} ]]; then
        build_dir=$(cd -- "${BUILD_DIR:-$here/../../build}" && pwd)
        ((EUID == 0)) || {
                echo "SKIP: needs root"
                exit 77
        }
        dest=$build_dir/vm/install-root
        rm -rf -- "$dest"
        mkdir -p -- "$build_dir/vm"
        meson install -C "$build_dir" --destdir "$dest" --no-rebuild --quiet >"$build_dir/vm/install.log" 2>&1 || {
                cat -- "$build_dir/vm/install.log" >&2
                echo "FAIL: meson install --destdir failed" >&2
                exit 1
        }
        options=$(meson introspect "$build_dir" --buildoptions)
        QT_VM_PREFIX=$(jq -r '.[] | select(.name == "prefix") | .value' <<<"$options")
        QT_VM_SANITIZE=$(jq -r '.[] | select(.name == "b_sanitize") | .value' <<<"$options")
        # The package for part f, built before the boot; a failure is part p's, reported by
        # the guest with the others.
        QT_VM_DEB_DIR=$build_dir/vm/deb QT_VM_DEB_RC=0
        "$here/build-deb.sh" "$QT_VM_DEB_DIR" >"$build_dir/vm/build-deb.out" 2>&1 || QT_VM_DEB_RC=$?
        export QT_VM_DESTDIR=$dest QT_VM_PREFIX QT_VM_SANITIZE QT_VM_DEB_DIR QT_VM_DEB_RC
        export QT_VM_ENV="${QT_VM_ENV:-} QT_VM_DESTDIR QT_VM_PREFIX QT_VM_SANITIZE QT_VM_DEB_DIR QT_VM_DEB_RC"
        exec "$here/run-guest.sh" systemd "${BASH_SOURCE[0]}" "$build_dir/vm/results/systemd-mode"
fi

# ---- in the guest: the payload service of qtrim-vm.target ---------------------------------
# Image builders, checks (qt_check_shrunk, qt_clone_image); its private-bus helpers stay unused:
# here qtrimd is on the guest's real system bus.
# shellcheck source=tests/lib/scenario.sh
source "$SOURCE_DIR/tests/lib/scenario.sh"

prefix=$QT_VM_PREFIX
qtrimctl=$prefix/bin/qtrimctl
user=qtvmuser
idle_exit_sec=3

# Each part runs in a subshell: qt_fail, or any command that fails, ends the part, not the test.
# In the background and waited for, because set -e does not act inside `(...) || rc=$?`.
# Cleanups a part registers (qt_defer writes them to a file) still run at the end.
results=()
part() { # ID DESCRIPTION FUNCTION
        local id=$1 what=$2 rc=0 t0
        qt_step "($id) $what"
        t0=$(qt_now)
        ("$3") &
        wait $! || rc=$?
        if ((rc == 0)); then
                results+=("($id) PASS ($(qt_since "$t0")s) $what")
        else
                results+=("($id) FAIL ($(qt_since "$t0")s) $what")
        fi
}

indent() { sed 's/^/    | /'; }

unit_state() { systemctl show -p "$2" --value -- "$1"; }

# The D-Bus error name of a call to org.qtrim1, or "ok", as USER (root if empty).
# gdbus: busctl prints an error's message, never its name.
call_error_name() { # USER METHOD ARGS...
        local u=$1 m=$2 out
        shift 2
        local cmd=(gdbus call --system --dest org.qtrim1 --object-path /org/qtrim1 --method "org.qtrim1.Manager.$m" "$@")
        [[ -n $u ]] && cmd=(runuser -u "$u" -- "${cmd[@]}")
        if out=$("${cmd[@]}" 2>&1); then
                printf 'ok\n'
                return 0
        fi
        sed -nE 's/.*GDBus\.Error:([A-Za-z0-9_.]+):.*/\1/p' <<<"$out" | head -n 1 | grep . ||
                printf 'unparsed: %s\n' "$out"
}

# ---- the installation -------------------------------------------------------------------

# The build, installed over the overlay root as a package would be. A prefix other than /usr
# (meson's default /usr/local) puts the D-Bus policy and the polkit action where neither
# dbus-daemon nor polkitd looks: link them into /usr/share as an administrator would.
install_build() {
        # tar, not cp: /lib is a symbolic link to usr/lib here, and the units go to /lib/systemd.
        tar -C "$QT_VM_DESTDIR" -cf - . | tar -C / --keep-directory-symlink -xf - ||
                qt_fail "cannot copy $QT_VM_DESTDIR into the guest"
        local f d
        if [[ $prefix != /usr ]]; then
                for d in dbus-1/system.d polkit-1/actions; do
                        for f in "$prefix/share/$d"/*; do
                                [[ -e $f ]] || continue
                                mkdir -p -- "/usr/share/$d"
                                ln -sf -- "$f" "/usr/share/$d/${f##*/}"
                                qt_info "note: prefix $prefix: linked $f into /usr/share/$d"
                        done
                done
        fi
        # The sanitizers' settings of this run reach qtrimd and the sweep's qtrimctl.
        local v env=()
        for v in ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS; do
                if [[ -n ${!v:-} ]]; then env+=("\"$v=${!v}\""); fi
        done
        # LeakSanitizer stops the process with ptrace (@debug) to look for leaks at exit: the
        # sanitizer build gets that on top of the units' system call filters, with or without
        # settings (meson test sets none; without @debug every exit was a LeakSanitizer "fatal
        # error", status 1).
        if [[ $QT_VM_SANITIZE != none ]]; then
                for d in qtrimd.service qtrim-sweep.service; do
                        mkdir -p -- "/etc/systemd/system/$d.d"
                        {
                                printf '[Service]\nSystemCallFilter=@debug\n'
                                if ((${#env[@]} > 0)); then printf 'Environment=%s\n' "${env[*]}"; fi
                        } >"/etc/systemd/system/$d.d/50-qtrim-vm-sanitizers.conf"
                done
                qt_info "sanitizer build ($QT_VM_SANITIZE): the units also allow @debug"
        fi
        systemctl daemon-reload
        # dbus-daemon reads policies and activation files again (started already or not).
        systemctl try-reload-or-restart dbus.service || true
        [[ -x $qtrimctl ]] || qt_fail "no $qtrimctl after the install"
        qt_ok "installed with prefix $prefix: $(cd -- "$QT_VM_DESTDIR" && find . -type f | wc -l) files"
}

# A small dirty qcow2: 192 MiB virtual, ext4 on the whole disk, 112 MiB of random data written
# and deleted, every cluster allocated. Smaller than the integration tests' images: under TCG
# every MiB written costs.
make_small_dirty_qcow2() { # IMG
        local img=$1 raw=$QT_SCRATCH/${1##*/}.raw frag=$QT_SCRATCH/${1##*/}.frag
        rm -f -- "$raw" "$frag"
        truncate -s 192M -- "$raw"
        _qt_populate_fs "$frag" "$raw" disk ext4 0 $((192 * MiB)) 112 4K 256K 2M
        qemu-img convert -S 0 -f raw -O qcow2 -- "$raw" "$img"
        rm -f -- "$raw"
        _qt_write_manifest "$img" qcow2 none "$frag"
}

# Runs, last first, the cleanups registered (qt_defer) after the registry's first N lines, and
# forgets them: for a part whose daemons must be gone before the next part starts, pass or fail.
run_cleanups_after() { # N
        local f=$QT_WORK/.cleanup line
        tail -n +"$(($1 + 1))" -- "$f" | tac | while IFS= read -r line; do
                eval "$line" >/dev/null 2>&1 || printf '    cleanup: "%s" failed\n' "$line" >&2
        done
        head -n "$1" -- "$f" >"$f.new"
        mv -f -- "$f.new" "$f"
}

# ---- the parts ----------------------------------------------------------------------------

part_a() {
        local units=() f out rc=0
        while IFS= read -r f; do
                units+=("/${f#./}")
        done < <(cd -- "$QT_VM_DESTDIR" && find . -path '*/systemd/system/*' -type f | sort)
        ((${#units[@]} > 0)) || qt_fail "the install has no systemd units"
        qt_info "units: ${units[*]}"
        out=$(systemd-analyze verify "${units[@]}" 2>&1) || rc=$?
        [[ -z $out ]] || indent <<<"$out"
        ((rc == 0)) || qt_fail "systemd-analyze verify exited $rc"
        # verify exits 0 on some warnings; a unit it complains about is a failure here.
        if grep -E 'qtrim' <<<"$out" | grep -qvE '^$'; then
                qt_fail "systemd-analyze verify has something to say about qtrim's units"
        fi
        qt_ok "systemd-analyze verify: ${#units[@]} unit(s) clean"
}

part_b() {
        local img=$QT_IMAGES/solo.qcow2 before out rc=0 j
        [[ $(systemctl is-active qtrimd.service) != active ]] || qt_fail "qtrimd.service runs before any call"
        busctl --system status org.qtrim1 >/dev/null 2>&1 && qt_fail "org.qtrim1 has an owner before any call"
        qt_ok "qtrimd not running, org.qtrim1 not owned"
        before=$(allocated_bytes "$img")
        qt_info "\$ qtrimctl shrink $img"
        out=$("$qtrimctl" shrink "$img" 2>&1) || rc=$?
        indent <<<"$out"
        ((rc == 0)) || qt_fail "qtrimctl shrink exited $rc"
        [[ $(unit_state qtrimd.service ActiveEnterTimestampMonotonic) != 0 ]] ||
                qt_fail "qtrimd.service was never started: who served the call?"
        journalctl -b -u qtrimd.service -o cat --no-pager | grep -q '^Started qtrimd.service' ||
                qt_fail "no 'Started qtrimd.service' in the journal"
        qt_ok "qtrimd.service started by D-Bus activation"
        qt_check_shrunk "$img" "$before" qcow2
        # The job's structured journal entry.
        j=$(journalctl -b -o json --no-pager "QTRIM_IMAGE=$img" | tail -n 1)
        [[ -n $j ]] || qt_fail "no journal entry with QTRIM_IMAGE=$img"
        jq -e '.QTRIM_RESULT == "done" and (.QTRIM_BYTES_BEFORE | tonumber) > (.QTRIM_BYTES_AFTER | tonumber)
               and (.QTRIM_JOB_ID | length) > 0' <<<"$j" >/dev/null ||
                qt_fail "journal entry lacks QTRIM_RESULT=done or the byte counts: $(jq -c '{MESSAGE, QTRIM_RESULT, QTRIM_BYTES_BEFORE, QTRIM_BYTES_AFTER, QTRIM_JOB_ID}' <<<"$j")"
        qt_ok "journal: $(jq -r '.MESSAGE' <<<"$j")"
}

part_c() {
        local a=$sweep_dir/a.qcow2 b=$sweep_dir/b.qcow2 busy=$sweep_dir/busy.qcow2 nbd_pid i
        local before_a before_b sum t0 secs log rc=0
        qemu-nbd --persistent --socket="$QT_WORK/busy.sock" -f qcow2 -- "$busy" >/dev/null 2>&1 &
        nbd_pid=$!
        qt_defer qt_kill_wait "$nbd_pid" 5
        for ((i = 0; i < 100; i++)); do [[ -S $QT_WORK/busy.sock ]] && break; sleep 0.1; done
        [[ -S $QT_WORK/busy.sock ]] || qt_fail "qemu-nbd did not start"
        sum=$(qt_sha256 "$busy")
        before_a=$(allocated_bytes "$a")
        before_b=$(allocated_bytes "$b")
        qt_info "\$ systemctl start qtrim-sweep.service   (busy.qcow2 served by qemu-nbd pid $nbd_pid)"
        t0=$(qt_now)
        systemctl start qtrim-sweep.service || rc=$?
        secs=$(qt_since "$t0")
        printf '%s\n' "$secs" >"$QTRIM_VM_RESULTS/sweep-seconds"
        log=$QT_WORK/sweep.log
        journalctl -b -u qtrim-sweep.service -o cat --no-pager >"$log"
        indent <"$log"
        qt_info "sweep took ${secs}s"
        ((rc == 0)) || qt_fail "systemctl start qtrim-sweep.service exited $rc"
        [[ $(unit_state qtrim-sweep.service Result) == success ]] ||
                qt_fail "qtrim-sweep.service result $(unit_state qtrim-sweep.service Result)"
        [[ $(unit_state qtrim-sweep.service ExecMainStatus) == 0 ]] ||
                qt_fail "qtrim-sweep.service exit status $(unit_state qtrim-sweep.service ExecMainStatus)"
        grep -qE "^$a: .* (→|->) .* allocated" "$log" || qt_fail "the sweep did not report a.qcow2 shrunk"
        grep -qE "^$b: .* (→|->) .* allocated" "$log" || qt_fail "the sweep did not report b.qcow2 shrunk"
        grep -qE "^$busy: skipped: " "$log" || qt_fail "the sweep did not report busy.qcow2 skipped"
        grep -qE "^$busy: failed" "$log" && qt_fail "the sweep reported busy.qcow2 failed"
        grep -qE '^sweep: 3 image\(s\): 2 shrunk, 1 skipped, 0 failed' "$log" || qt_fail "no summary line '3 image(s): 2 shrunk, 1 skipped, 0 failed'"
        qt_ok "sweep log: two shrunk, busy.qcow2 skipped, summary, status 0"
        [[ $(qt_sha256 "$busy") == "$sum" ]] || qt_fail "busy.qcow2 changed"
        qt_ok "busy.qcow2 byte-identical"
        qt_undo qt_kill_wait "$nbd_pid" 5
        qt_check_shrunk "$a" "$before_a" qcow2
        qt_check_shrunk "$b" "$before_b" qcow2
}

part_d() {
        local inside=$sweep_dir/busy.qcow2 outside=$QT_IMAGES/solo.qcow2 e rules=/etc/polkit-1/rules.d/50-qtrim-vm.rules i
        id "$user" >/dev/null 2>&1 || useradd -M -s /bin/bash "$user" || qt_fail "useradd $user failed"
        for m in Shrink Inspect; do
                if [[ $m == Shrink ]]; then
                        e=$(call_error_name "$user" Shrink "$inside" '@a{sv} {}')
                else
                        e=$(call_error_name "$user" Inspect "$inside" '@a{sv} {}')
                fi
                [[ $e == org.freedesktop.DBus.Error.AccessDenied ]] ||
                        qt_fail "$user: $m of an image in ImageDirectories gave '$e', expected AccessDenied"
                qt_ok "$user: $m denied (AccessDenied) without polkit authorization"
        done
        e=$(call_error_name "" Inspect "$inside" '@a{sv} {}')
        [[ $e == ok ]] || qt_fail "root: Inspect gave '$e'"
        qt_ok "root: Inspect allowed"
        rc=0
        runuser -u "$user" -- "$qtrimctl" inspect "$inside" >"$QT_WORK/user-inspect.out" 2>&1 || rc=$?
        ((rc != 0)) || qt_fail "qtrimctl inspect as $user succeeded"
        qt_ok "qtrimctl inspect as $user exits $rc: $(head -n 1 "$QT_WORK/user-inspect.out")"

        # A rule that grants the action to the user (polkitd watches rules.d).
        mkdir -p -- "${rules%/*}"
        qt_defer rm -f -- "$rules"
        printf 'polkit.addRule(function(action, subject) {\n  if (action.id == "org.qtrim1.shrink" && subject.user == "%s")\n    return polkit.Result.YES;\n});\n' "$user" >"$rules"
        for ((i = 0; i < 50; i++)); do
                e=$(call_error_name "$user" Inspect "$inside" '@a{sv} {}')
                [[ $e == ok ]] && break
                sleep 0.2
        done
        [[ $e == ok ]] || qt_fail "$user: Inspect inside ImageDirectories with a polkit rule gave '$e'"
        qt_ok "$user: Inspect allowed with a polkit rule"
        e=$(call_error_name "$user" Inspect "$outside" '@a{sv} {}')
        [[ $e == org.freedesktop.DBus.Error.AccessDenied ]] ||
                qt_fail "$user: Inspect outside ImageDirectories with a polkit rule gave '$e', expected AccessDenied"
        qt_ok "$user: Inspect outside ImageDirectories denied even with the rule"
        qt_undo rm -f -- "$rules"
}

part_e() {
        local i t0 inv limit=$((idle_exit_sec + 20))
        # The last request: qtrimd runs now (activated if it had left) and must exit about
        # IdleExitSec= later. Its invocation id tells this run from the next activation.
        "$qtrimctl" list >/dev/null || qt_fail "qtrimctl list failed"
        t0=$(qt_now)
        inv=$(unit_state qtrimd.service InvocationID)
        [[ -n $inv ]] || qt_fail "qtrimd.service has no invocation after a call"
        for ((i = 0; i < limit * 10; i++)); do
                [[ $(systemctl is-active qtrimd.service) == active ]] || break
                sleep 0.1
        done
        [[ $(systemctl is-active qtrimd.service) != active ]] ||
                qt_fail "qtrimd.service still active ${limit}s after its last request (IdleExitSec=$idle_exit_sec)"
        qt_ok "qtrimd.service stopped $(qt_since "$t0")s after its last request (IdleExitSec=$idle_exit_sec)"
        [[ $(unit_state qtrimd.service Result) == success && $(unit_state qtrimd.service ExecMainStatus) == 0 ]] ||
                qt_fail "qtrimd exited with result $(unit_state qtrimd.service Result), status $(unit_state qtrimd.service ExecMainStatus)"
        busctl --system status org.qtrim1 >/dev/null 2>&1 && qt_fail "org.qtrim1 still owned after the idle exit"
        qt_ok "exit status 0, org.qtrim1 released"
        "$qtrimctl" list >/dev/null || qt_fail "qtrimctl list after the idle exit failed (no re-activation?)"
        [[ $(unit_state qtrimd.service InvocationID) != "$inv" ]] || qt_fail "the next call did not activate qtrimd again"
        qt_ok "the next call activated qtrimd again"
}

# libvirt's client in qtrimd's children and a job's worker thread, under the unit's system call
# filters and namespaces: the machine's libvirtd as Debian's libvirt-daemon-system runs it
# (socket-activated by systemd, its sockets in /run/libvirt), qemu:///system in LibvirtURI=
# (as root: the read-write socket, or the read-only one for read-only connections), and one
# domain with the dirty image as its disk. The domain helpers are tests/lib/libvirt.sh's; its
# daemons of the test's own are not needed under systemd.
part_g() {
        local dom=qtrim-test-sysmode img=$QT_IMAGES/dom.qcow2 conf=/etc/qtrim/qtrimd.conf
        local before t0 since registered journal=$QT_WORK/libvirt-journal.txt left u
        since=@$(date +%s)
        registered=$(wc -l <"$QT_WORK/.cleanup")
        # Everything the part starts or defines goes when it ends, even by qt_fail; a failure
        # shows what qtrimd, libvirtd and the kernel said.
        # shellcheck disable=SC2064 # the registry's length and the start, now
        trap "((\$? == 0)) || libvirt_logs $since; run_cleanups_after $registered" EXIT
        # shellcheck source=tests/lib/libvirt.sh
        source "$SOURCE_DIR/tests/lib/libvirt.sh"
        QT_LIBVIRT_URI=qemu:///system
        QT_QTRIMCTL=$qtrimctl
        qt_defer systemctl stop libvirtd.service virtlogd.service virtlockd.service
        t0=$(qt_now)
        qt_virsh version >/dev/null || qt_fail "libvirtd does not answer at $QT_LIBVIRT_URI"
        qt_info "libvirtd answers at $QT_LIBVIRT_URI after $(qt_since "$t0")s"
        cp -- "$conf" "$QT_WORK/qtrimd.conf.before-g"
        qt_defer systemctl stop qtrimd.service
        qt_defer cp -- "$QT_WORK/qtrimd.conf.before-g" "$conf"
        printf 'LibvirtURI=%s\n' "$QT_LIBVIRT_URI" >>"$conf"
        # The next call starts qtrimd with the new configuration.
        systemctl stop qtrimd.service
        qt_domain_xml "$dom" "$(qt_domain_disk vda virtio "$img" qcow2 unmap)" >"$QT_WORK/$dom.xml"
        qt_domain_define "$dom" "$QT_WORK/$dom.xml"

        qt_qtrimctl_status 0 inspect --domain "$dom" --json
        jq -e --arg img "$img" '.state == "shut off" and (.disks | length) == 1 and .disks[0].target == "vda"
                and .disks[0].source == $img' "$QT_WORK/out" >/dev/null ||
                qt_fail "inspect --domain does not show the shut-off domain and its disk"
        qt_ok "inspect --domain: shut off, its qcow2 disk"
        qt_qtrimctl_status 0 inspect "$img"
        grep -qF "Used by:         domain $dom (shut off)" "$QT_WORK/out" ||
                qt_fail "inspect IMAGE does not name the domain using it (ListDomainImages)"
        qt_ok "inspect IMAGE: used by domain $dom (shut off)"
        before=$(allocated_bytes "$img")
        qt_qtrimctl_status 0 shrink --domain "$dom"
        qt_check_shrunk "$img" "$before" qcow2

        # A running domain (SeaBIOS holds it, no OS) without an agent channel: the online trim's
        # worker connects read-write and asks for the agent from its thread.
        t0=$(qt_now)
        qt_virsh start "$dom" >/dev/null || qt_fail "virsh start failed: $(tail -n 5 "/var/log/libvirt/qemu/$dom.log")"
        qt_info "domain started in $(qt_since "$t0")s"
        qt_since "$t0" >"$QTRIM_VM_RESULTS/libvirt-domain-start-seconds"
        qt_qtrimctl_status 1 shrink --domain "$dom" --online
        grep -qF "has no guest agent channel" "$QT_WORK/err" ||
                qt_fail "the online trim of a domain without an agent is not refused for that"
        qt_ok "shrink --online: refused, no guest agent channel"

        journalctl -b -u qtrimd.service --since "$since" -o cat --no-pager >"$journal"
        ! grep -iE 'Operation not permitted|EPERM|SIGSYS|seccomp|Bad system call' "$journal" ||
                qt_fail "qtrimd's journal shows a refused system call"
        qt_ok "qtrimd's journal: no refused system call ($(wc -l <"$journal") lines)"

        run_cleanups_after "$registered"
        for u in libvirtd.service virtlogd.service qtrimd.service; do
                [[ $(systemctl is-active "$u") != active ]] || qt_fail "$u still runs after the cleanup"
        done
        left=$(find /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt -name "*$dom*" 2>/dev/null || true)
        [[ -z $left ]] || qt_fail "left of $dom after its undefine: $(tr '\n' ' ' <<<"$left")"
        qt_ok "domain undefined, libvirtd, virtlogd and qtrimd stopped, nothing of $dom left"
}

# What qtrimd and libvirtd logged since SINCE, and the kernel's seccomp or audit lines.
libvirt_logs() { # SINCE
        qt_info "qtrimd.service's journal:"
        journalctl -b -u qtrimd.service --since "$1" -o short-monotonic --no-pager | indent
        qt_info "libvirtd.service's journal (the end):"
        journalctl -b -u libvirtd.service --since "$1" -o cat --no-pager | tail -n 20 | indent
        dmesg | grep -iE 'audit|seccomp' | tail -n 20 | indent
}

part_p() {
        indent <"$BUILD_DIR/vm/build-deb.out"
        ((QT_VM_DEB_RC == 0)) || qt_fail "build-deb.sh exited $QT_VM_DEB_RC (log: $QT_VM_DEB_DIR/build.log)"
        qt_ok "built in $(<"$QT_VM_DEB_DIR/build-seconds")s, lintian clean"
}

# apt-get on the package file alone: every dependency is installed (the guest's root is this
# machine's), and reading the archive's lists would cost a minute of TCG time.
apt_get() {
        local none=$QT_WORK/apt-no-sources.d
        mkdir -p -- "$none"
        DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends \
                -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$none" "$@"
}

# Names with "qtrim" where a package or its services leave state (the guest's own /usr and
# /lib are checked through dpkg -L).
qtrim_names() { find /etc /var/lib /var/cache /run -name '*qtrim*' -not -path "$QT_WORK/*" 2>/dev/null | sort; }

# qtrim's unit files systemd knows (not this harness's qtrim-vm.*); list-unit-files exits 1 when
# nothing matches.
qtrim_unit_files() { systemctl list-unit-files --no-legend 'qtrimd.*' 'qtrim-sweep.*' || true; }

# The overall exposure systemd-analyze security gives UNIT, printed with its table.
exposure() { # UNIT
        local out
        out=$(systemd-analyze security --no-pager "$1" 2>&1) || true
        printf '%s\n' "$out" >>"$QTRIM_VM_RESULTS/security.txt"
        sed -nE 's/.*Overall exposure level for [^:]*: ([0-9.]+) .*/\1/p' <<<"$out"
}

part_f() {
        local deb img=$QT_IMAGES/pkg.qcow2 before out rc=0 f e u names_before sweep_inv bound
        local -A max_exposure=([qtrimd.service]=3.5 [qtrim-sweep.service]=1.5)
        deb=$(find "$QT_VM_DEB_DIR" -maxdepth 1 -name 'qtrim_*.deb' | head -n 1)
        [[ -n $deb ]] || qt_fail "no package in $QT_VM_DEB_DIR (part p)"

        # The build of a-e goes, as if it had never been installed.
        systemctl stop qtrimd.service qtrim-sweep.service || true
        (cd -- "$QT_VM_DESTDIR" && find . -not -type d -print0) | while IFS= read -r -d '' f; do
                rm -f -- "/${f#./}"
        done
        rm -rf /etc/qtrim /var/lib/qtrim /etc/systemd/system/qtrimd.service.d /etc/systemd/system/qtrim-sweep.service.d
        systemctl daemon-reload
        [[ ! -e $qtrimctl ]] || qt_fail "$qtrimctl is still there"
        out=$(qtrim_unit_files)
        [[ -z $out ]] || qt_fail "the build's units are still there: $out"
        # Docker's policy-rc.d (this machine is a container) forbids starting services; the guest
        # is a host of its own.
        rm -f /usr/sbin/policy-rc.d
        # man-db's trigger re-indexes every man page (25000 here, over 9p): 3 minutes of TCG time
        # per dpkg run. The index is not under test (man-db/auto-update false, as debconf sets it).
        rm -f /var/lib/man-db/auto-update
        names_before=$(qtrim_names)
        sweep_inv=$(unit_state qtrim-sweep.service InvocationID)
        qt_ok "build removed"

        qt_info "\$ apt-get install $deb"
        out=$(apt_get install "$deb" 2>&1) || rc=$?
        indent <<<"$out"
        ((rc == 0)) || qt_fail "apt-get install exited $rc"
        [[ $(dpkg-query -W -f='${db:Status-Status}' qtrim) == installed ]] || qt_fail "qtrim is not installed"
        qt_info "$(dpkg -s qtrim | grep '^Installed-Size')"
        dpkg -s qtrim | sed -n 's/^Installed-Size: //p' >"$QTRIM_VM_RESULTS/installed-size-kib"
        dpkg-query -W -f='${Conffiles}\n' qtrim | grep -q '^ /etc/qtrim/qtrimd.conf ' ||
                qt_fail "/etc/qtrim/qtrimd.conf is not a conffile"
        [[ $(dpkg -S /usr/bin/qtrimctl) == "qtrim: /usr/bin/qtrimctl" ]] || qt_fail "qtrimctl is not the package's"
        qt_ok "installed; /etc/qtrim/qtrimd.conf a conffile"

        [[ $(systemctl is-enabled qtrim-sweep.timer) == enabled ]] || qt_fail "qtrim-sweep.timer is not enabled"
        [[ $(systemctl is-active qtrim-sweep.timer) == active ]] || qt_fail "qtrim-sweep.timer is not active"
        out=$(systemctl list-timers --all --no-pager qtrim-sweep.timer || true)
        indent <<<"$out"
        grep -q 'qtrim-sweep.timer' <<<"$out" || qt_fail "systemctl list-timers does not list qtrim-sweep.timer"
        [[ $(systemctl is-active qtrimd.service) != active ]] || qt_fail "the install started qtrimd.service"
        [[ $(unit_state qtrim-sweep.service InvocationID) == "$sweep_inv" ]] || qt_fail "the install ran qtrim-sweep.service"
        qt_ok "timer enabled, active and listed; neither service started by the install"

        # An administrator's edit: the FUSE path, which a-e did not take; qtrimd stays, so the
        # purge must stop it.
        printf 'Attach=fuse\nIdleExitSec=0\n' >>/etc/qtrim/qtrimd.conf
        before=$(allocated_bytes "$img")
        qt_info "\$ qtrimctl shrink $img   (Attach=fuse)"
        rc=0
        out=$(/usr/bin/qtrimctl shrink "$img" 2>&1) || rc=$?
        indent <<<"$out"
        ((rc == 0)) || qt_fail "qtrimctl shrink exited $rc"
        [[ $(unit_state qtrimd.service FragmentPath) == /lib/systemd/system/qtrimd.service ]] ||
                qt_fail "qtrimd.service is not the package's: $(unit_state qtrimd.service FragmentPath)"
        e=$(busctl --system get-property org.qtrim1 /org/qtrim1 org.qtrim1.Manager AttachBackend 2>&1 || true)
        [[ $e == 's "fuse"' ]] || qt_fail "AttachBackend is $e, not fuse"
        qt_ok "qtrimd.service of the package activated, FUSE path"
        qt_check_shrunk "$img" "$before" qcow2
        # libvirt's client under the package's unit as it is (part g ran the sanitizer build,
        # whose units also allow @debug): ListDomainImages at the default LibvirtURI=, through
        # the socket-activated libvirtd.
        rc=0
        out=$(/usr/bin/qtrimctl inspect "$img" 2>&1) || rc=$?
        systemctl stop libvirtd.service 2>/dev/null || true
        ((rc == 0)) || qt_fail "qtrimctl inspect exited $rc: $out"
        grep -F "Used by:" <<<"$out" | indent
        grep -qF "Used by:         no libvirt domain" <<<"$out" || qt_fail "inspect did not ask libvirt which domain uses the image"
        qt_ok "inspect: libvirt asked, no domain uses the image"

        : >"$QTRIM_VM_RESULTS/security.txt"
        for u in qtrimd.service qtrim-sweep.service; do
                e=$(exposure "$u")
                bound=${max_exposure[$u]}
                [[ -n $e ]] || qt_fail "no exposure level for $u: $(tail -n 3 "$QTRIM_VM_RESULTS/security.txt")"
                qt_info "systemd-analyze security $u: $e (at most $bound)"
                awk -v e="$e" -v b="$bound" 'BEGIN { exit !(e <= b) }' || qt_fail "$u: exposure $e above $bound"
        done
        qt_ok "exposure within bounds (the tables: security.txt in the results)"

        local -a files=() dirs=()
        while IFS= read -r f; do
                if [[ -d $f ]]; then dirs+=("$f"); else files+=("$f"); fi
        done < <(dpkg -L qtrim)
        [[ $(systemctl is-active qtrimd.service) == active ]] || qt_fail "qtrimd.service is not running before the purge"
        qt_info "\$ apt-get purge qtrim"
        rc=0
        out=$(apt_get purge qtrim 2>&1) || rc=$?
        indent <<<"$out"
        ((rc == 0)) || qt_fail "apt-get purge exited $rc"
        dpkg-query -W -f='${db:Status-Status}' qtrim 2>/dev/null | grep -q installed && qt_fail "qtrim still installed"
        for f in "${files[@]}"; do
                [[ ! -e $f && ! -L $f ]] || qt_fail "left after the purge: $f"
        done
        for f in "${dirs[@]}"; do
                [[ $f != *qtrim* || ! -e $f ]] || qt_fail "directory left after the purge: $f"
        done
        out=$(qtrim_unit_files)
        [[ -z $out ]] || qt_fail "unit files left: $(tr '\n' ' ' <<<"$out")"
        systemctl list-timers --all --no-pager | grep -q qtrim-sweep && qt_fail "qtrim-sweep.timer is still listed"
        [[ $(systemctl is-active qtrimd.service) != active ]] || qt_fail "qtrimd.service still runs"
        busctl --system status org.qtrim1 >/dev/null 2>&1 && qt_fail "org.qtrim1 still owned"
        for f in /etc/qtrim /var/lib/qtrim /run/qtrim /var/lib/systemd/timers/stamp-qtrim-sweep.timer; do
                [[ ! -e $f ]] || qt_fail "left after the purge: $f"
        done
        # New names only: a name that went is not the package's doing (systemd and libvirtd drop
        # the run state of part g's domain when they get to it; diff's status 1 then ended the
        # part without a word under pipefail).
        out=$(comm -13 <(printf '%s\n' "$names_before") <(qtrim_names))
        [[ -z $out ]] || qt_fail "new names with qtrim after install and purge: $(tr '\n' ' ' <<<"$out")"
        qt_ok "purged: none of ${#files[@]} files, no unit, timer, /etc/qtrim, state or stamp left"
}

# ---- main ---------------------------------------------------------------------------------

qt_need qemu-img qemu-nbd jq gdbus busctl runuser useradd systemd-analyze
qt_init_workdir systemd-mode
qt_step "install the build (prefix $prefix) and configure qtrimd"
install_build
sweep_dir=$QT_WORK/sweep
mkdir -p -- "$sweep_dir"
mkdir -p /etc/qtrim
printf '[Daemon]\nImageDirectories=%s\nIdleExitSec=%s\n' "$sweep_dir" "$idle_exit_sec" >/etc/qtrim/qtrimd.conf
qt_info "/etc/qtrim/qtrimd.conf: $(tr '\n' ' ' </etc/qtrim/qtrimd.conf)"

part a "systemd-analyze verify of the installed units" part_a

qt_step "build a dirty qcow2 and three clones"
t0=$(qt_now)
make_small_dirty_qcow2 "$QT_IMAGES/solo.qcow2"
assert_dirty "$QT_IMAGES/solo.qcow2"
for n in a b busy; do
        qt_clone_image "$QT_IMAGES/solo.qcow2" "$sweep_dir/$n.qcow2"
done
qt_clone_image "$QT_IMAGES/solo.qcow2" "$QT_IMAGES/pkg.qcow2"
qt_clone_image "$QT_IMAGES/solo.qcow2" "$QT_IMAGES/dom.qcow2"
qt_info "images built in $(qt_since "$t0")s"

part b "qtrimctl shrink starts qtrimd by D-Bus activation" part_b
part c "qtrim-sweep.service over three images, one in use" part_c
part d "authorization: non-root denied without polkit, root allowed" part_d
part e "qtrimd exits after IdleExitSec" part_e
part g "libvirt domains under the unit's filters: inspect, used by, shrink, online refusal" part_g

qt_step "stop qtrimd, look for leftovers"
systemctl stop qtrimd.service || true
assert_no_leftovers

part p "the Debian package: built from a copy of the tree, lintian clean" part_p
part f "the package: install, timer, shrink on the FUSE path, exposure, purge" part_f
qt_step "look for leftovers after the package"
assert_no_leftovers

qt_step "summary"
failed=0
for r in "${results[@]}"; do
        printf '    %s\n' "$r"
        [[ $r == *") FAIL "* ]] && failed=1
done
if ((failed)); then
        qt_fail "systemd-mode: some parts failed"
fi
printf 'PASS systemd-mode\n'

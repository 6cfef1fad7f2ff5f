#!/bin/bash
# Builds the Debian package from a copy of the source tree and checks it with lintian:
#
#   tests/vm/build-deb.sh OUTDIR
#
# The tree's files as git knows them (tracked, and new ones not ignored: a working tree with
# uncommitted changes builds as it is; QT_DEB_COMMIT=REV takes a commit instead) are copied to
# OUTDIR/src; dpkg-buildpackage -us -uc -b runs there and writes qtrim_*.deb and
# qtrim_*.changes to OUTDIR, nothing next to the tree.
# Then lintian on the .changes (the .deb and its .buildinfo): any tag not overridden in
# debian/qtrim.lintian-overrides fails. Logs: OUTDIR/build.log, OUTDIR/lintian.log; the build's
# seconds in OUTDIR/build-seconds. Exit status: 0, or 1 with the reason on stderr.
set -euo pipefail
export LC_ALL=C.UTF-8

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
source_dir=${SOURCE_DIR:-$(cd -- "$here/../.." && pwd)}
(($# == 1)) || {
        echo "usage: build-deb.sh OUTDIR" >&2
        exit 2
}
out=$1

fail() {
        printf 'build-deb: %s\n' "$*" >&2
        exit 1
}

for tool in dpkg-buildpackage lintian git; do
        command -v "$tool" >/dev/null || fail "$tool missing (tools/install-deps.sh)"
done
mkdir -p -- "$out"
out=$(cd -- "$out" && pwd)
case $out/ in
"$source_dir"/*) [[ $out == "$source_dir"/build* ]] || fail "OUTDIR must be outside the tree or a build dir" ;;
esac
# Only what a previous run left: the copy, the package files, the logs.
rm -rf -- "$out/src"
rm -f -- "$out"/qtrim_* "$out"/*.log "$out/build-seconds"

git -C "$source_dir" rev-parse --is-inside-work-tree >/dev/null 2>&1 || fail "$source_dir is not a git work tree"
mkdir -p -- "$out/src"
if [[ -n ${QT_DEB_COMMIT:-} ]]; then
        git -C "$source_dir" archive --format=tar "$QT_DEB_COMMIT" | tar -xf - -C "$out/src"
else
        (cd -- "$source_dir" && git ls-files -z --cached --others --exclude-standard |
                while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done |
                tar --null -T - -cf -) | tar -xf - -C "$out/src"
fi

# One version: the package's is the project's (a native package).
deb_version=$(dpkg-parsechangelog -l "$out/src/debian/changelog" -S Version)
meson_version=$(sed -nE "s/^ *version *: *'([^']+)'.*/\1/p" "$out/src/meson.build" | head -n 1)
[[ $deb_version == "$meson_version" ]] ||
        fail "debian/changelog says $deb_version, meson.build $meson_version"

t0=$(date +%s.%N)
if ! (cd -- "$out/src" && dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1; then
        tail -n 40 -- "$out/build.log" >&2
        fail "dpkg-buildpackage failed (the whole log: $out/build.log)"
fi
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' >"$out/build-seconds"
changes=("$out"/qtrim_*.changes)
[[ -f ${changes[0]} ]] || fail "no .changes in $out"
for deb in "$out"/qtrim_*.deb; do [[ -f $deb ]] || fail "no .deb in $out"; done

# Errors, warnings and info tags fail (pedantic and experimental ones are not shown). Overridden
# tags do not, but the log lists them (a second run: --show-overrides makes them count).
rc=0
lintian --fail-on error,warning,info --display-info -- "${changes[0]}" >"$out/lintian.log" 2>&1 || rc=$?
if ((rc != 0)); then
        cat -- "$out/lintian.log" >&2
        fail "lintian: tags not overridden (exit status $rc)"
fi
lintian --display-info --show-overrides -- "${changes[0]}" >"$out/lintian-overrides.log" 2>&1 || true
printf 'build-deb: built %s in %ss; lintian clean, overridden: %s\n' "$(cd -- "$out" && echo qtrim_*.deb)" \
        "$(<"$out/build-seconds")" "$(grep '^O:' "$out/lintian-overrides.log" | cut -d' ' -f3 | paste -sd' ' || true)"

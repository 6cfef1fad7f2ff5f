#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
# The bash completion of qtrimctl: commands, options per command, image files, job ids.
# Usage: completion.sh PATH-TO-shell-completion/bash/qtrimctl. Prints TAP. Needs no root and no
# qtrimd: qtrimctl and busctl are stubs on PATH.

completion=${1:?usage: completion.sh COMPLETION-FILE}
completion=$(realpath "$completion") || exit 1

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# Stubs: busctl answers "status org.qtrim1" with $STUB_RUNNING; qtrimctl prints $STUB_LIST
# for "list" and leaves a mark that it was called; virsh knows two domains.
mkdir "$tmp/bin"
cat >"$tmp/bin/busctl" <<'EOF'
#!/bin/bash
[[ $STUB_RUNNING == yes ]]
EOF
cat >"$tmp/bin/virsh" <<'EOF'
#!/bin/bash
[[ $* == "-q list --all --name" ]] && printf 'web01\ndb02\n'
EOF
cat >"$tmp/bin/qtrimctl" <<'EOF'
#!/bin/bash
touch "$STUB_MARK"
[[ $1 == list ]] && printf '%s' "$STUB_LIST"
EOF
chmod +x "$tmp/bin/busctl" "$tmp/bin/qtrimctl" "$tmp/bin/virsh"
export PATH="$tmp/bin:$PATH" STUB_MARK="$tmp/called" STUB_RUNNING=yes STUB_LIST=''

# Files to complete: images (one with a space, one with glob characters), other files,
# directories.
mkdir -p "$tmp/images/sub" "$tmp/images/dir.img"
touch "$tmp/images/"{a.qcow2,b.img,c.raw,d.txt,e.qcow2.bak,'with space.qcow2','g[1].raw'} \
    "$tmp/images/sub/x.qcow2" "$tmp/images/sub/y.iso"
cd "$tmp/images" || exit 1

# shellcheck source=/dev/null
source "$completion" || exit 1

n=0
failed=0

# check DESCRIPTION LINE EXPECTED: completes LINE (the cursor at its end; a trailing space starts
# a new word) and compares the sorted candidates, one per line, with EXPECTED.
check()
{
    local description=$1 line=$2 expected=$3 got
    read -ra COMP_WORDS <<<"$line"
    [[ $line == *' ' ]] && COMP_WORDS+=('')
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMP_LINE=$line
    COMP_POINT=${#line}
    COMPREPLY=()
    _qtrimctl qtrimctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
    got=$(printf '%s\n' "${COMPREPLY[@]}" | sort -u | sed '/^$/d')
    expected=$(printf '%s' "$expected" | sort -u | sed '/^$/d')

    n=$((n + 1))
    if [[ $got == "$expected" ]]; then
        echo "ok $n - $description"
    else
        echo "not ok $n - $description"
        echo "# line: '$line'"
        echo "# expected: ${expected//$'\n'/ }"
        echo "# got:      ${got//$'\n'/ }"
        failed=1
    fi
}

nl=$'\n'

if complete -p qtrimctl | grep -q -- '-F _qtrimctl'; then
    echo "ok $((n += 1)) - registered for qtrimctl"
else
    echo "not ok $((n += 1)) - registered for qtrimctl"
    failed=1
fi

check 'commands' 'qtrimctl ' "shrink${nl}inspect${nl}list${nl}status${nl}wait${nl}cancel${nl}help"
check 'command prefix' 'qtrimctl sh' 'shrink'
check 'options before a command' 'qtrimctl -' "--help${nl}--version${nl}--verbose"
check 'command after an option' 'qtrimctl --json l' 'list'
check 'unknown command' 'qtrimctl frob ' ''

v="--help${nl}--verbose"
d="--json${nl}--dry-run"
check 'shrink options' 'qtrimctl shrink -' \
    "$v${nl}--no-convert${nl}--all${nl}--domain${nl}--format${nl}--keep-gaps${nl}--no-block${nl}$d"
check 'shrink --json excludes --no-block' 'qtrimctl shrink --json --' \
    "$v${nl}--no-convert${nl}--all${nl}--domain${nl}--format${nl}--keep-gaps${nl}$d"
check 'shrink --dry-run excludes --no-block' 'qtrimctl shrink --dry-run --' \
    "$v${nl}--no-convert${nl}--all${nl}--domain${nl}--format${nl}--keep-gaps${nl}$d"
check 'shrink --no-block excludes --json and --dry-run' 'qtrimctl shrink --no-block --' \
    "$v${nl}--no-convert${nl}--all${nl}--domain${nl}--format${nl}--keep-gaps${nl}--no-block"
check 'shrink with an image: no --all' 'qtrimctl shrink a.qcow2 --' \
    "$v${nl}--no-convert${nl}--format${nl}--keep-gaps${nl}--no-block${nl}$d"
check 'shrink --all: no images' 'qtrimctl shrink --all ' ''
check 'shrink --all options' 'qtrimctl shrink --all --' "$v${nl}--no-convert${nl}$d"
check 'shrink --domain options' 'qtrimctl shrink --domain web01 --' \
    "$v${nl}--no-convert${nl}--online${nl}--keep-gaps${nl}--no-block${nl}--json"
check 'shrink --domain --online options' 'qtrimctl shrink --domain web01 --online --' \
    "$v${nl}--no-block${nl}--json"
check 'shrink --domain: no images' 'qtrimctl shrink --domain web01 ' ''
check 'domain names' 'qtrimctl shrink --domain ' "web01${nl}db02"
check 'domain name prefix' 'qtrimctl inspect --domain w' 'web01'
check 'domain name after =' 'qtrimctl inspect --domain = d' 'db02'
check 'inspect --domain: no image' 'qtrimctl inspect --domain web01 ' ''
check 'inspect --domain options' 'qtrimctl inspect --domain web01 -' "$v${nl}--json"
check 'shrink images and directories' 'qtrimctl shrink ' \
    "a.qcow2${nl}b.img${nl}c.raw${nl}with space.qcow2${nl}g[1].raw${nl}sub${nl}dir.img"
check 'shrink image prefix' 'qtrimctl shrink a' 'a.qcow2'
check 'shrink second image' 'qtrimctl shrink a.qcow2 b' 'b.img'
check 'shrink in a directory' 'qtrimctl shrink sub/' 'sub/x.qcow2'
check 'shrink an absolute path' "qtrimctl shrink $tmp/images/sub/" "$tmp/images/sub/x.qcow2"
check 'options before shrink' 'qtrimctl --no-convert shrink c' 'c.raw'

check 'inspect options' 'qtrimctl inspect -' "$v${nl}--json${nl}--format${nl}--domain"
check 'inspect image' 'qtrimctl inspect --json b' 'b.img'
check 'inspect takes one image' 'qtrimctl inspect a.qcow2 ' ''
check 'format values' 'qtrimctl shrink --format ' "raw${nl}qcow2"
check 'format value prefix' 'qtrimctl inspect --format q' 'qcow2'
check 'format value after =' 'qtrimctl shrink --format = r' 'raw'
check 'image after --format VALUE' 'qtrimctl shrink --format raw c' 'c.raw'
check 'image after --format=VALUE' 'qtrimctl inspect --format = qcow2 b' 'b.img'

check 'list options' 'qtrimctl list -' "$v${nl}--json"
check 'list takes no arguments' 'qtrimctl list ' ''
check 'status and wait options' 'qtrimctl wait -' "$v${nl}--json"
check 'help: a command' 'qtrimctl help s' "shrink${nl}status"
check 'help takes one command' 'qtrimctl help list ' ''

check 'cancel options' 'qtrimctl cancel -' "$v"
STUB_LIST="ID  STATE    PHASE  PROGRESS  ELAPSED  IMAGE
 3  running  trim        40%  8.2 s    /var/lib/libvirt/images/a.qcow2
12  queued   -            0%  1.0 s    /var/lib/libvirt/images/b.img
"
check 'cancel job ids' 'qtrimctl cancel ' "3${nl}12"
check 'cancel job id prefix' 'qtrimctl cancel 1' '12'
check 'cancel more job ids' 'qtrimctl cancel 3 ' "3${nl}12"
check 'wait job ids' 'qtrimctl wait 3 ' "3${nl}12"
check 'status takes one job' 'qtrimctl status 3 ' 
STUB_LIST='No jobs.
'
check 'cancel with no jobs' 'qtrimctl cancel ' ''

# With no qtrimd running, qtrimctl is not run: its ListJobs would start one.
STUB_RUNNING=no
rm -f "$STUB_MARK"
check 'cancel, qtrimd not running' 'qtrimctl cancel ' ''
if [[ ! -e $STUB_MARK ]]; then
    echo "ok $((n += 1)) - qtrimctl not run when qtrimd is not running"
else
    echo "not ok $((n += 1)) - qtrimctl not run when qtrimd is not running"
    failed=1
fi

echo "1..$n"
exit $failed

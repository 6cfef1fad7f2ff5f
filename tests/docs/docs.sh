#!/bin/bash
# The documentation says what the binaries do, read from both at run time (no list of keys or
# options here, so the test stays true as they change):
#   keys    every qtrimd.conf key that qtrimd.conf(5), conf/qtrimd.conf, qtrimd(8), qtrimctl(1) or
#           the README names (a Key= that is not a setting of qtrim's own unit and activation
#           files) is known to qtrimd (no "unknown key" for a file setting it), and the example
#           configuration's values and the EXAMPLES of qtrimd.conf(5) are accepted as written;
#           every key qtrimd knows is in qtrimd.conf(5) and in conf/qtrimd.conf
#   qtrimd  every option of qtrimd(8) is in qtrimd --help and parses; every option of --help is
#           in qtrimd(8)
#   qtrimctl every command of qtrimctl(1) is in qtrimctl --help and takes --help; every
#           option (SYNOPSIS, COMMANDS, OPTIONS) is in a --help and parses with its command; every
#           command and option of qtrimctl --help and of each command's --help is in qtrimctl(1)
# The keys qtrimd knows are found by asking it: each capitalized word in its binary is tried as a
# key. Nothing runs on a bus: DBUS_SYSTEM_BUS_ADDRESS names a socket that does not exist, so
# qtrimd reads its configuration, then fails to connect, and qtrimctl fails its calls. Needs
# neither root nor a lock. All mismatches are listed, then the test fails.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/common.sh
source "$here/../lib/common.sh"

qtrimd=$QT_BUILD_DIR/daemon/qtrimd
qtrimctl=$QT_BUILD_DIR/cli/qtrimctl
man_ctl=$QT_SOURCE_DIR/man/qtrimctl.1
man_d=$QT_SOURCE_DIR/man/qtrimd.8
man_conf=$QT_SOURCE_DIR/man/qtrimd.conf.5
example=$QT_SOURCE_DIR/conf/qtrimd.conf
readme=$QT_SOURCE_DIR/README.md
[[ -x $qtrimd && -x $qtrimctl ]] || qt_fail "no qtrimd or qtrimctl in $QT_BUILD_DIR"
qt_need strings timeout awk sed grep sort comm

work=$(mktemp -d "${TMPDIR:-/tmp}/qtrim-docs.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
mkdir -p -- "$work/state"
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$work/no-bus STATE_DIRECTORY=$work/state

mismatches=0
mismatch() {
        printf '    MISMATCH: %s\n' "$*"
        mismatches=$((mismatches + 1))
}

# ---- reading roff -------------------------------------------------------------------------

# A roff line as text: no macro name, font changes, quotes or spacing escapes.
roff_text() {
        sed -E 's/^\.[A-Za-z]{1,2}([ \t]+|$)//; s/\\f(\[[A-Z]*\]|[BIRP])//g; s/\\-/-/g;
                s/\\[|&c]//g; s/\\[~ ]/ /g; s/\\\(->/->/g; s/"//g'
}

# The lines of SECTION (.SH NAME), as written.
roff_section() { # FILE SECTION
        awk -v sec="$2" '/^\.SH/ { s = $0; sub(/^\.SH[ \t]+/, "", s); gsub(/"/, "", s); in_sec = (s == sec); next }
                in_sec' "$1"
}

# The tag of each top-level .TP (and .TQ) paragraph of SECTION, as text.
roff_tags() { # FILE SECTION
        roff_section "$1" "$2" | awk '
                /^\.RS/ { depth++; next }
                /^\.RE/ { if (depth) depth--; next }
                /^\.T[PQ]/ { tag = (depth == 0); next }
                /^\.\\"/ { next }
                tag { tag = 0; print }' | roff_text
}

# Options in text: words that start with - or --, without a value (--format=raw: --format).
options_in() { { grep -oE '(^|[][ ,|(])--?[A-Za-z][A-Za-z0-9-]*' || true; } | sed -E 's/^[][ ,|(]//' | sort -u; }

# "VERB OPTION" for each option of qtrimctl(1)'s SYNOPSIS, VERB empty where the line has none
# (qtrimctl --version); "VERB" alone for each command.
synopsis_pairs() { # FILE
        roff_section "$1" SYNOPSIS | awk '
                /^\.SY/ { verb = ""; first = 1; next }
                /^\.B[IR]? / && first { first = 0; w = $2; if (w !~ /^\\-/) { verb = w; print verb } }
                { print verb "\037" $0 }' | while IFS=$'\037' read -r verb line; do
                if [[ -z $line ]]; then
                        printf '%s\n' "$verb"
                        continue
                fi
                roff_text <<<"$line" | options_in | sed "s/^/$verb /"
        done | sort -u
}

# ---- reading --help -----------------------------------------------------------------------

# The options a --help lists: in its lines that start with an option, before the description.
help_options() { sed -nE 's/^ +(-)/\1/p' | sed -E 's/ {2,}.*//' | options_in; }
# The commands qtrimctl --help lists under "Commands:".
help_commands() { awk '/^Commands:/ { on = 1; next } on && /^$/ { on = 0 } on && /^  [a-z]/ { print $1 }' | sort -u; }

# ---- asking the binaries ------------------------------------------------------------------

run() { timeout -k 5 20 "$@" 2>&1 || true; }

# Whether PROGRAM [ARGS...] takes OPTION: its output must not be what a made-up option of the
# same kind gets (with the names swapped), nor getopt's words for an unknown option. A made-up
# option that is not refused means the check cannot work: that is a mismatch too.
bogus=--no-such-option-qtrim-docs
takes_option() { # OPTION PROGRAM [ARGS...]
        local opt=$1 out ref
        shift
        out=$(run "$@" "$opt")
        grep -qiE 'unrecognized option|unknown option|invalid option' <<<"$out" && return 1
        [[ $opt == --* ]] || return 0
        ref=$(run "$@" "$bogus")
        grep -qiE 'unrecognized|unknown|invalid' <<<"$ref" ||
                mismatch "$* $bogus is not refused as unknown: '$ref'"
        [[ $out != "${ref//$bogus/$opt}" ]]
}

# qtrimd's complaints about a configuration file: "unknown key K" and "line N: K=V: ...".
conf_output() { # FILE
        run "$qtrimd" --config="$1" | grep -E 'unknown key|unknown section|outside \[Daemon\]|: line [0-9]+: ' || true
}

# The keys qtrimd knows, from its binary: every capitalized word in it is tried, in one file,
# again without the key whose empty value stopped the last read, until it reads to the end.
# A key it does not know gets "unknown key"; a known one is accepted or has its value refused.
known_keys() {
        local -a rest
        local out k stop
        mapfile -t rest < <(strings -n 3 -- "$qtrimd" | grep -E '^[A-Z][A-Za-z0-9]{2,39}$' | sort -u)
        while ((${#rest[@]} > 0)); do
                { printf '[Daemon]\n'; printf '%s=\n' "${rest[@]}"; } >"$work/probe.conf"
                out=$(conf_output "$work/probe.conf")
                stop=$(sed -nE 's/.*: line ([0-9]+): ([A-Za-z0-9]+)=.*/\2/p' <<<"$out" | head -n 1)
                local -a next=()
                local seen_stop=0
                for k in "${rest[@]}"; do
                        if ((seen_stop)); then
                                next+=("$k")
                        elif [[ $k == "$stop" ]]; then
                                seen_stop=1
                                printf '%s\n' "$k"
                        elif ! grep -qE "unknown key $k, " <<<"$out"; then
                                printf '%s\n' "$k"
                        fi
                done
                [[ -n $stop ]] || break
                rest=("${next[@]}")
        done | sort -u
}

# ---- configuration keys -------------------------------------------------------------------

qt_step "qtrimd.conf keys: documented against known"
mapfile -t known < <(known_keys)
((${#known[@]} > 0)) || qt_fail "qtrimd knows no key at all: is $qtrimd the daemon?"
qt_info "qtrimd knows: ${known[*]}"
mapfile -t in_man < <(roff_tags "$man_conf" OPTIONS | sed -nE 's/^([A-Z][A-Za-z0-9]*)=.*/\1/p' | sort -u)
mapfile -t in_example < <(sed -nE 's/^#?([A-Z][A-Za-z0-9]*)=.*/\1/p' -- "$example" | sort -u)
qt_info "qtrimd.conf(5) documents: ${in_man[*]}"
qt_info "conf/qtrimd.conf has: ${in_example[*]}"
# Key= anywhere in the pages and the README, but not the settings of qtrim's own unit and
# activation files (the README and qtrimd(8) talk about those too).
mapfile -t unit_keys < <(cat -- "$QT_SOURCE_DIR"/systemd-units/*.in "$QT_SOURCE_DIR"/systemd-units/*.timer |
        sed -nE 's/^([A-Za-z]+)=.*/\1/p' | sort -u)
mapfile -t mentioned < <({
        for f in "$man_d" "$man_ctl" "$man_conf"; do roff_text <"$f"; done
        cat -- "$readme"
} | { grep -oE '\b[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*=' || true; } | tr -d = | sort -u |
        comm -23 - <(printf '%s\n' "${unit_keys[@]}"))
for k in "${known[@]}"; do
        [[ " ${in_man[*]} " == *" $k "* ]] || mismatch "qtrimd knows $k=, qtrimd.conf(5) does not document it"
        [[ " ${in_example[*]} " == *" $k "* ]] || mismatch "qtrimd knows $k=, conf/qtrimd.conf does not show it"
done
for k in $(printf '%s\n' "${in_man[@]}" "${in_example[@]}" "${mentioned[@]}" | sort -u); do
        [[ " ${known[*]} " == *" $k "* ]] && continue
        # Said by qtrimd itself, for the record.
        printf '[Daemon]\n%s=\n' "$k" >"$work/key.conf"
        mismatch "$k= is documented (qtrimd.conf(5): $([[ " ${in_man[*]} " == *" $k "* ]] && echo yes || echo no), conf/qtrimd.conf: $([[ " ${in_example[*]} " == *" $k "* ]] && echo yes || echo no)), qtrimd says: $(conf_output "$work/key.conf" | sed 's/^qtrimd: [^:]*:[0-9]*: //')"
done
qt_ok "${#known[@]} keys known, each in qtrimd.conf(5) and conf/qtrimd.conf; ${#mentioned[@]} mentioned"

qt_step "the example configuration and qtrimd.conf(5)'s EXAMPLES, as written"
# Every key uncommented, with the value it shows.
sed -E 's/^#([A-Z][A-Za-z0-9]*=)/\1/' -- "$example" >"$work/example.conf"
out=$(conf_output "$work/example.conf")
[[ -z $out ]] || mismatch "conf/qtrimd.conf with every key uncommented: $out"
n=0
while IFS= read -r -d '' block; do
        n=$((n + 1))
        printf '%s' "$block" >"$work/man-example-$n.conf"
        out=$(conf_output "$work/man-example-$n.conf")
        [[ -z $out ]] || mismatch "qtrimd.conf(5) example $n ($(tr '\n' ' ' <"$work/man-example-$n.conf")): $out"
done < <(roff_section "$man_conf" EXAMPLES | awk '/^\.EX/ { on = 1; b = ""; next }
        /^\.EE/ { if (b ~ /^\[Daemon\]/) printf "%s%c", b, 0; on = 0; next }
        on { b = b $0 "\n" }' | roff_text)
((n > 0)) || mismatch "qtrimd.conf(5) has no [Daemon] example"
qt_ok "conf/qtrimd.conf uncommented and $n example(s) read without a warning"

# ---- qtrimd's options ---------------------------------------------------------------------

qt_step "qtrimd's options: qtrimd(8) against qtrimd --help"
mapfile -t d_man < <({
        roff_tags "$man_d" OPTIONS
        roff_section "$man_d" SYNOPSIS | roff_text
} | options_in)
mapfile -t d_help < <(run "$qtrimd" --help | help_options)
((${#d_help[@]} > 0)) || qt_fail "qtrimd --help lists no option"
for o in "${d_man[@]}"; do
        [[ " ${d_help[*]} " == *" $o "* ]] || mismatch "qtrimd(8) has $o, qtrimd --help does not"
        takes_option "$o" "$qtrimd" || mismatch "qtrimd(8) has $o, qtrimd refuses it: $(run "$qtrimd" "$o" | head -n 1)"
done
for o in "${d_help[@]}"; do
        [[ " ${d_man[*]} " == *" $o "* ]] || mismatch "qtrimd --help has $o, qtrimd(8) does not"
done
qt_ok "qtrimd(8): ${d_man[*]}"

# ---- qtrimctl's commands and options ------------------------------------------------------

qt_step "qtrimctl's commands and options: qtrimctl(1) against qtrimctl --help"
top_help=$(run "$qtrimctl" --help)
mapfile -t c_help_cmds < <(help_commands <<<"$top_help")
((${#c_help_cmds[@]} > 0)) || qt_fail "qtrimctl --help lists no command under Commands:"
mapfile -t c_cmds_man < <(roff_tags "$man_ctl" COMMANDS | awk '{ print $1 }' | sort -u)
# VERB OPTION pairs the page shows: SYNOPSIS lines, COMMANDS tags (shrink --all).
mapfile -t pairs < <({
        synopsis_pairs "$man_ctl"
        roff_tags "$man_ctl" COMMANDS | while read -r verb rest; do
                printf '%s\n' "$verb"
                options_in <<<" $rest" | sed "s/^/$verb /"
        done
} | sort -u)
mapfile -t c_opts_man < <({
        roff_tags "$man_ctl" OPTIONS
        printf '%s\n' "${pairs[@]}"
} | options_in)
declare -A verb_help=()
all_help_opts=$(help_options <<<"$top_help")
for v in $(printf '%s\n' "${pairs[@]}" "${c_cmds_man[@]}" | awk '$1 !~ /^-/ { print $1 }' | sort -u); do
        [[ " ${c_help_cmds[*]} " == *" $v "* ]] || mismatch "qtrimctl(1) has the command $v, qtrimctl --help does not"
        out=$(timeout -k 5 20 "$qtrimctl" "$v" --help 2>&1) && rc=0 || rc=$?
        # An unknown command's --help is refused (qtrimctl nosuch --help exits non-zero).
        if ((rc != 0)) || [[ -z $out ]]; then
                mismatch "qtrimctl $v --help exits $rc: $(head -n 1 <<<"$out")"
        fi
        verb_help[$v]=$(help_options <<<"$out")
        all_help_opts+=$'\n'${verb_help[$v]}
done
for p in "${pairs[@]}"; do
        read -r v o <<<"$p"
        [[ -n ${o:-} ]] || continue
        grep -qxF -- "$o" <<<"${verb_help[$v]:-}"$'\n'"$(help_options <<<"$top_help")" ||
                mismatch "qtrimctl(1) shows $v $o, neither qtrimctl $v --help nor qtrimctl --help lists $o"
        takes_option "$o" "$qtrimctl" "$v" || mismatch "qtrimctl(1) shows $v $o, qtrimctl $v refuses it"
done
for o in $(roff_tags "$man_ctl" OPTIONS | options_in); do
        grep -qxF -- "$o" <<<"$all_help_opts" || mismatch "qtrimctl(1) has $o, no qtrimctl --help lists it"
        # With a command whose help lists it (options may belong to commands), else alone.
        v=
        for c in "${!verb_help[@]}"; do grep -qxF -- "$o" <<<"${verb_help[$c]}" && v=$c && break; done
        takes_option "$o" "$qtrimctl" ${v:+"$v"} || mismatch "qtrimctl(1) has $o, qtrimctl ${v:+$v }refuses it"
done
for c in "${c_help_cmds[@]}"; do
        [[ " ${c_cmds_man[*]} " == *" $c "* ]] || mismatch "qtrimctl --help has the command $c, qtrimctl(1)'s COMMANDS do not"
done
while read -r o; do
        [[ -z $o || " ${c_opts_man[*]} " == *" $o "* ]] || mismatch "qtrimctl's help lists $o, qtrimctl(1) does not"
done < <(sort -u <<<"$all_help_opts")
qt_ok "qtrimctl(1): commands ${c_cmds_man[*]}; options ${c_opts_man[*]}"

if ((mismatches > 0)); then
        qt_fail "$mismatches mismatch(es) between the documentation and the binaries"
fi
printf 'PASS docs\n'

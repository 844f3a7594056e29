#!/bin/bash
# Apply the io_uring Fiber::Scheduler series to a CRuby source tree.
#
#   tools/apply.sh [--check | --reverse | --commit] RUBY_TREE
#
#   (default)   copy src/, ext/ and test/ into the tree, then apply the series
#               in order to the working files.  The tree's version picks the
#               series: patches/series for Ruby 3.4.x (with the backports its
#               lines name for older 3.4 releases), patches/master/series for
#               master (4.1.0-dev and later).  Works on a git checkout and on
#               a plain (tarball) tree.
#   --check     dry run: say whether the series applies; name the failing
#               patch and file and exit 1 if it does not.
#   --reverse   undo the series and remove the files copied from src/, ext/ and test/.
#   --commit    (git checkouts only) apply each patch as a commit with
#               `git am`, keeping its author and message.  This is how the
#               build tree is made, so tools/export-patches.sh reproduces the
#               series exactly.
#   --list      print the patch files the tree's version selects, one a line.
#   --sources   only copy the changed files of src/, ext/ and test/ into the tree,
#               leaving its patches alone (the build tree, whose patches are
#               its git commits, uses this).
#
# The tree is checked before anything is written: a tree the series does not
# apply to cleanly (local changes that conflict, another version, a partially
# patched tree) is refused and left untouched.  Running it on a tree that
# already carries the series changes nothing and says so (exit 0).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
mode=apply
tree=
for arg; do
    case $arg in
        --check) mode=check ;;
        --reverse) mode=reverse ;;
        --commit) mode=commit ;;
        --sources) mode=sources ;;
        --list) mode=list ;;
        -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        -*) echo "apply.sh: unknown option $arg" >&2; exit 2 ;;
        *) [ -z "$tree" ] || { echo "apply.sh: one tree only" >&2; exit 2; }; tree=$arg ;;
    esac
done
say() { echo "apply.sh: $*"; }
die() { echo "apply.sh: $*" >&2; exit 1; }

[ -n "$tree" ] || { echo "usage: tools/apply.sh [--check|--reverse|--commit] RUBY_TREE" >&2; exit 2; }
[ -d "$tree" ] || { echo "apply.sh: $tree: no such directory" >&2; exit 2; }
tree=$(cd "$tree" && pwd)
[ -f "$tree/configure.ac" ] && [ -f "$tree/io.c" ] && [ -f "$tree/scheduler.c" ] ||
    { echo "apply.sh: $tree does not look like a CRuby source tree" >&2; exit 2; }

# The tree's version picks the series: patches/series for Ruby 3.4, and
# patches/master/series for master (4.1.0-dev and later).  A series line is
# a patch file, optionally followed by a condition on the tree's version
# ("ruby < 3.4.8": a backport of an upstream fix older trees lack).
version=$("$here/tools/ruby-version.sh" "$tree") ||
    die "cannot read the Ruby version of $tree"
series_dir=$here/$("$here/tools/ruby-version.sh" --series "$tree") || exit 1
# version_lt A B: A < B, as versions.
version_lt() { [ "$1" != "$2" ] && [ "$(printf '%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ]; }
patches=()
skipped=()
while read -r file op want rest; do
    [ -n "$file" ] || continue
    case $op in
        '') ;;
        ruby) case $want in
                  '<') [ -n "$rest" ] || die "$series_dir/series: $file: no version after 'ruby <'"
                       version_lt "$version" "$rest" || { skipped+=("$file"); continue; } ;;
                  *) die "$series_dir/series: cannot read the condition of $file" ;;
              esac ;;
        *) die "$series_dir/series: cannot read the condition of $file" ;;
    esac
    patches+=("$series_dir/$file")
done < <(sed -e 's/#.*//' "$series_dir/series"; echo)
n=${#patches[@]}
if [ "$mode" = list ]; then
    [ "$n" -eq 0 ] || printf '%s\n' "${patches[@]}"
    exit 0
fi
reversed=()
for ((i = n - 1; i >= 0; i--)); do reversed+=("${patches[i]}"); done

is_git=false
if [ "$(git -C "$tree" rev-parse --show-toplevel 2>/dev/null)" = "$tree" ]; then
    is_git=true
fi
[ "$mode" != commit ] || $is_git || die "--commit needs a git checkout; $tree is not one"

# git apply in the tree.  A plain tree may sit inside another repository (the
# build directory of a clone, say): stop git from discovering that one.
tree_apply() {
    if $is_git; then
        git -C "$tree" apply "$@"
    else
        (cd "$tree" && GIT_CEILING_DIRECTORIES=$(dirname "$tree") git apply "$@")
    fi
}

# The files the series touches, as paths in the tree.
patched_files() {
    [ "$n" -gt 0 ] || return 0
    sed -n 's|^diff --git a/\(.*\) b/.*|\1|p' "${patches[@]}" | LC_ALL=C sort -u
}

# Does the series apply to the tree, one patch after the other (git apply
# given several patches does not let a later one build on an earlier one in
# the same file)?  Checked on a scratch copy of the files it touches.
# series_check [--reverse] PATCH...: on failure, git's errors on stderr.
series_check() {
    local args=() scratch f p ok=0
    if [ "$1" = --reverse ]; then args=(--reverse); shift; fi
    scratch=$(mktemp -d)
    while read -r f; do
        if [ -e "$tree/$f" ]; then
            mkdir -p "$scratch/$(dirname "$f")"
            cp -p "$tree/$f" "$scratch/$f"
        fi
    done < <(patched_files)
    for p in "$@"; do
        if ! (cd "$scratch" && GIT_CEILING_DIRECTORIES=$(dirname "$scratch") git apply "${args[@]}" "$p"); then
            ok=1
            break
        fi
    done
    rm -rf "$scratch"
    return $ok
}

# Apply (or reverse) the patches in the tree one after the other; only
# after series_check said they all apply.
series_apply() {
    local args=() p
    if [ "$1" = --reverse ]; then args=(--reverse); shift; fi
    for p in "$@"; do tree_apply "${args[@]}" "$p"; done
}

# The files we copy: src/X -> X, ext/X -> ext/X, test/X -> test/X.
copied_files() {
    (cd "$here" && find src ext test -type f ! -name '*~' | LC_ALL=C sort) |
        while read -r f; do
            case $f in src/*) echo "$f ${f#src/}" ;; *) echo "$f $f" ;; esac
        done
}

# State of the tree: "applied", "clean" (series applies), or "conflict".
state=conflict
if [ "$mode" = sources ] || [ "$n" -eq 0 ]; then
    state=applied
elif series_check --reverse "${reversed[@]}" 2>/dev/null; then
    state=applied
elif series_check "${patches[@]}" 2>/dev/null; then
    state=clean
fi

# Name the first patch that does not apply on top of the ones before it.
explain_conflict() {
    local i err
    for ((i = 1; i <= n; i++)); do
        if ! err=$(series_check "${patches[@]:0:i}" 2>&1); then
            echo "apply.sh: ${patches[i-1]#$here/} does not apply to $tree (Ruby $version):" >&2
            echo "$err" | grep -E 'error:' | sed 's/^/    /' >&2
            break
        fi
    done
    for ((i = n - 1; i >= 1; i--)); do
        if series_check --reverse "${reversed[@]:n-i}" 2>/dev/null; then
            echo "apply.sh: the tree already carries patches 1-$i of $n (partially patched);" \
                 "restore the pristine files first" >&2
            break
        fi
    done
}

# Files copied from src/, ext/ and test/ must not clobber different files in a tree
# that does not carry the series yet.
copy_conflicts=()
while read -r from to; do
    if [ -e "$tree/$to" ] && ! cmp -s "$here/$from" "$tree/$to" && [ "$state" = clean ]; then
        copy_conflicts+=("$to")
    fi
done < <(copied_files)

case $mode in
check)
    if [ "$state" = applied ]; then
        say "the series ($n patches) is already applied to $tree"
        exit 0
    fi
    if [ "$state" = conflict ]; then
        explain_conflict
        exit 1
    fi
    if [ ${#copy_conflicts[@]} -gt 0 ]; then
        die "these files exist in $tree and differ from ours: ${copy_conflicts[*]}"
    fi
    say "the series ($n patches${skipped:+, ${#skipped[@]} backport(s) the tree has}) applies cleanly to $tree (Ruby $version)"
    ;;
apply|commit|sources)
    if [ "$state" = conflict ]; then
        explain_conflict
        die "refusing to patch $tree; nothing was changed"
    fi
    [ ${#copy_conflicts[@]} -eq 0 ] ||
        die "refusing to overwrite files in $tree that differ from ours: ${copy_conflicts[*]}"
    updated=0
    while read -r from to; do
        if ! cmp -s "$here/$from" "$tree/$to"; then
            mkdir -p "$(dirname "$tree/$to")"
            cp "$here/$from" "$tree/$to"
            updated=$((updated + 1))
            if [ "$mode" != apply ] && $is_git; then
                # Copied sources are not part of any patch: keep them out of
                # the tree's history so the exported series stays the series.
                exclude=$(git -C "$tree" rev-parse --git-path info/exclude)
                case $exclude in /*) ;; *) exclude=$tree/$exclude ;; esac
                mkdir -p "$(dirname "$exclude")"
                grep -qxF "/$to" "$exclude" 2>/dev/null || echo "/$to" >> "$exclude"
            fi
        fi
    done < <(copied_files)
    if [ "$mode" = sources ]; then
        [ "$updated" -eq 0 ] || say "copied $updated changed file(s) from src/, ext/ and test/"
        exit 0
    fi
    if [ "$state" = applied ]; then
        if [ "$updated" -gt 0 ]; then
            say "the series is already applied; updated $updated copied file(s) from src/, ext/ and test/"
        else
            say "the series ($n patches) is already applied to $tree; nothing to do"
        fi
        exit 0
    fi
    if [ "$mode" = commit ]; then
        export GIT_COMMITTER_NAME=${GIT_COMMITTER_NAME:-series} GIT_COMMITTER_EMAIL=${GIT_COMMITTER_EMAIL:-series@localhost}
        git -C "$tree" am --quiet --keep-cr --keep-non-patch --committer-date-is-author-date "${patches[@]}" ||
            { git -C "$tree" am --abort 2>/dev/null || true; die "git am failed; the tree was restored"; }
    else
        series_apply "${patches[@]}"
    fi
    say "applied $n patch(es) and copied $updated file(s) into $tree"
    ;;
reverse)
    if [ "$state" != applied ]; then
        if [ "$state" = clean ]; then
            say "the series is not applied to $tree; nothing to undo"
            exit 0
        fi
        explain_conflict
        die "cannot undo: $tree does not carry the whole series"
    fi
    series_apply --reverse "${reversed[@]}"
    removed=0
    while read -r from to; do
        if cmp -s "$here/$from" "$tree/$to"; then
            rm -f "$tree/$to"
            removed=$((removed + 1))
            d=$(dirname "$to")
            while [ "$d" != . ] && rmdir "$tree/$d" 2>/dev/null; do d=$(dirname "$d"); done
        elif [ -e "$tree/$to" ]; then
            echo "apply.sh: left $to in place: it differs from ours" >&2
        fi
    done < <(copied_files)
    say "reversed $n patch(es) and removed $removed copied file(s) from $tree"
    ;;
esac

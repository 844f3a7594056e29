#!/bin/bash
# Summarizes the UndefinedBehaviorSanitizer reports `make test-asan` left
# in DIR (UBSAN_OPTIONS=log_path=DIR/report: one file per process that
# reported; a process reports each source location once).  Prints every
# distinct location with the number of reports, paths relative to TREE,
# and exits 1 if any is in the series' own files (those of src/ and
# ext/io/uring, which TREE holds at the same paths less `src/`).
#
#   tools/asan/ubsan-summary.sh DIR TREE
set -euo pipefail
dir=$1 tree=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
shopt -s nullglob
files=("$dir"/report.*)
if [ ${#files[@]} -eq 0 ]; then
    echo "ubsan: no report"
    exit 0
fi
# "TREE/path/file.c:LINE:COL: runtime error: what" -> "path/file.c:LINE: what"
locations=$(grep -h "runtime error:" "${files[@]}" |
    sed -E "s|^$tree/||; s|^([^:]+:[0-9]+):[0-9]+: runtime error: |\\1: |" |
    sort | uniq -c | sort -rn)
ours=$(cd "$here" && { find src -type f -name '*.[ch]' | sed 's|^src/||'; find ext/io/uring -type f -name '*.[ch]'; })
in_ours=$(echo "$locations" | awk 'NR==FNR { mine[$1] = 1; next }
    { split($2, a, ":"); if (a[1] in mine) print }' <(echo "$ours") -)
echo "ubsan: ${#files[@]} process(es) reported, $(echo "$locations" | wc -l) distinct location(s):"
echo "$locations" | sed 's/^ */  /'
if [ -n "$in_ours" ]; then
    echo "ubsan: in the series' own files:"
    echo "$in_ours" | sed 's/^ */  /'
    exit 1
fi
echo "ubsan: none in the series' own files (src/, ext/io/uring)"

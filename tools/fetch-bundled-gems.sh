#!/bin/bash
# Put the bundled gems a CRuby git checkout's build wants into its gems/
# directory, with `gem fetch` (RubyGems' own configuration and certificates),
# where the build's downloader cannot reach them.  Release tarballs carry
# them already; master's build downloads every gem of gems/bundled_gems.
#
#   tools/fetch-bundled-gems.sh RUBY_TREE
#
# Build such a tree with HAVE_GIT=no as well: with git, the gems pinned to a
# revision in gems/bundled_gems are cloned and built from source instead.
set -euo pipefail
tree=$1
[ -f "$tree/gems/bundled_gems" ] || { echo "fetch-bundled-gems: $tree has no gems/bundled_gems" >&2; exit 1; }
cd "$tree/gems"
missing=0
while read -r name version _; do
    case $name in ''|'#'*) continue ;; esac
    [ -f "$name-$version.gem" ] && continue
    if ! gem fetch "$name" -v "$version" >/dev/null 2>&1 || [ ! -f "$name-$version.gem" ]; then
        echo "fetch-bundled-gems: could not fetch $name $version" >&2
        missing=1
    fi
done < bundled_gems
exit $missing

#!/bin/bash
# Print the Ruby version of a CRuby source tree (3.4.5, 4.1.0, ...), read
# from its include/ruby/version.h (major, minor) and version.h (teeny).
#
#   tools/ruby-version.sh RUBY_TREE
#   tools/ruby-version.sh --series RUBY_TREE   the series for it, relative to
#                                              the project: patches (3.4) or
#                                              patches/master (4.1 and later)
set -euo pipefail
series=false
[ "$1" = --series ] && { series=true; shift; }
tree=$1
define() {
    sed -n "s/^#define[[:space:]]\\{1,\\}$1[[:space:]]\\{1,\\}\\([0-9]\\{1,\\}\\).*/\\1/p" "$2" | head -n1
}
major=$(define RUBY_API_VERSION_MAJOR "$tree/include/ruby/version.h")
minor=$(define RUBY_API_VERSION_MINOR "$tree/include/ruby/version.h")
teeny=$(define RUBY_VERSION_TEENY "$tree/version.h")
[ -n "$major" ] && [ -n "$minor" ] && [ -n "$teeny" ] ||
    { echo "ruby-version: $tree has no readable version.h" >&2; exit 1; }
version=$major.$minor.$teeny
$series || { echo "$version"; exit 0; }
case $version in
    3.4.*) echo patches ;;
    *) [ "$(printf '%s\n' 4.1.0 "$version" | sort -V | head -n1)" = 4.1.0 ] ||
           { echo "ruby-version: no series for Ruby $version (one for 3.4, one for master)" >&2; exit 1; }
       echo patches/master ;;
esac

#!/bin/bash
# Print the Ruby version of a CRuby source tree (3.4.5, 4.1.0, ...), read
# from its include/ruby/version.h (major, minor) and version.h (teeny).
#
#   tools/ruby-version.sh RUBY_TREE
set -euo pipefail
tree=$1
define() {
    sed -n "s/^#define[[:space:]]\\{1,\\}$1[[:space:]]\\{1,\\}\\([0-9]\\{1,\\}\\).*/\\1/p" "$2" | head -n1
}
major=$(define RUBY_API_VERSION_MAJOR "$tree/include/ruby/version.h")
minor=$(define RUBY_API_VERSION_MINOR "$tree/include/ruby/version.h")
teeny=$(define RUBY_VERSION_TEENY "$tree/version.h")
[ -n "$major" ] && [ -n "$minor" ] && [ -n "$teeny" ] ||
    { echo "ruby-version: $tree has no readable version.h" >&2; exit 1; }
echo "$major.$minor.$teeny"

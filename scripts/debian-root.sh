#!/usr/bin/env bash
# A Debian root directory with the packages asked for, made once per machine with debootstrap from
# Debian's archive into the cache outside the checkout, and never installed over the host: the
# host stays Debian 12. The tests run RabbitMQ 4.0 from a Debian 13 one (scripts/rabbitmq.sh), and
# the cluster's stand-in images are made from them (scripts/stand-in-images.sh).
#
#   scripts/debian-root.sh [--suite S] [--before CMD] [--after CMD] NAME PACKAGE...
#     prints the root's path; builds it when missing
#
#   --suite   trixie (Debian 13, default) or bookworm (Debian 12)
#   --before  a shell command run in the root before the packages are installed (users with fixed
#             ids, settings a package's maintainer scripts read)
#   --after   a shell command run in the root after they are installed
#
# The root is keyed by NAME, the suite, the architecture, the package list and both commands:
# another of any is another root. It is built in a temporary directory and renamed into place when
# complete, so an interrupted build leaves nothing half-made behind. Packages are installed without
# recommends, and maintainer scripts cannot start services (policy-rc.d).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SUITE=trixie
before=""
after=""
while [ $# -gt 0 ]; do
  case $1 in
    --suite) SUITE=${2:?--suite needs a value}; shift 2 ;;
    --before) before=${2:?--before needs a command}; shift 2 ;;
    --after) after=${2:?--after needs a command}; shift 2 ;;
    --*) die "unknown option '$1'" ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || die "usage: scripts/debian-root.sh [--suite S] [--before CMD] [--after CMD] NAME PACKAGE..."
case $SUITE in trixie | bookworm) ;; *) die "--suite: \"$SUITE\" must be trixie or bookworm" ;; esac
name=$1
shift
MIRROR="${KMJ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ARCH=$(dpkg --print-architecture)
CACHE="${KMJ_DEBIAN_CACHE:-/var/cache/keda-ml-jobs/debian}"
packages=$(printf '%s\n' "$@" | sort -u | tr '\n' ' ' | sed 's/ $//')
key=$(printf '%s\n%s\n%s\n%s\n%s' "$SUITE" "$ARCH" "$packages" "$before" "$after" | sha256sum | cut -c1-12)
root="$CACHE/$SUITE-$ARCH-$name-$key"

if [ -f "$root/.kmj-complete" ]; then
  echo "$root"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "debootstrap needs root"
apt_install debootstrap
mkdir -p "$CACHE"
tmp=$(mktemp -d "$CACHE/.building-$name-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
say "building a Debian $SUITE root '$name' ($ARCH: $packages) into $root, once per machine"
started=$(date +%s)
debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$tmp" "$MIRROR" >"$tmp.log" 2>&1 ||
  { tail -20 "$tmp.log" >&2; die "debootstrap of $SUITE failed (log: $tmp.log)"; }
# Maintainer scripts must not start services in the root: there is no init there.
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 755 "$tmp/usr/sbin/policy-rc.d"
in_tmp() { chroot "$tmp" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@" >>"$tmp.log" 2>&1; }
# run_in_tmp CMD: a --before or --after command, with the host's CA bundle in the root for its run
# only (this machine reaches the package registries through a proxy the host's bundle trusts): it
# is mounted in a mount namespace of the command's own, never copied into the root.
ca=/etc/ssl/certs/ca-certificates.crt
run_in_tmp() {
  local placeholder=""
  if [ -f "$ca" ] && [ ! -e "$tmp$ca" ]; then
    mkdir -p "$tmp$(dirname "$ca")"
    : >"$tmp$ca"
    placeholder=1
  fi
  local rc=0
  unshare --mount --propagation private -- sh -ec '
    [ -f "$3" ] && mount --bind -o ro "$3" "$1$3"
    exec chroot "$1" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 sh -ec "$2"' run "$tmp" "$1" "$ca" >>"$tmp.log" 2>&1 || rc=$?
  if [ -n "$placeholder" ]; then rm -f "$tmp$ca"; fi
  return $rc
}
if [ -n "$before" ]; then run_in_tmp "$before" || { tail -20 "$tmp.log" >&2; die "--before failed in the $SUITE root (log: $tmp.log)"; }; fi
in_tmp apt-get install -y -q --no-install-recommends "$@" ||
  { tail -20 "$tmp.log" >&2; die "installing $packages in the $SUITE root failed (log: $tmp.log)"; }
if [ -n "$after" ]; then run_in_tmp "$after" || { tail -20 "$tmp.log" >&2; die "--after failed in the $SUITE root (log: $tmp.log)"; }; fi
chroot "$tmp" apt-get clean
rm -rf "$tmp"/var/lib/apt/lists/*
dpkg-query --admindir="$tmp/var/lib/dpkg" -W -f '${Package} ${Version}\n' "$@" >"$tmp/.kmj-versions"
echo "$packages" >"$tmp/.kmj-complete"
rm -f "$tmp.log"
mv "$tmp" "$root"
trap - EXIT
say "Debian $SUITE root '$name' ready in $(($(date +%s) - started)) s: $(tr '\n' ';' <"$root/.kmj-versions")"
echo "$root"

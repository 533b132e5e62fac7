#!/usr/bin/env bash
# Builds, once per machine, the binaries of a real single-node Kubernetes + KEDA from the Go module
# proxy (nothing else can be downloaded here), into a cache keyed by the versions and kept outside
# the clone, so a fresh clone (CI's) finds them built:
#
#   ${KMJ_CLUSTER_CACHE:-/var/cache/keda-ml-jobs/cluster}/k8s-V_etcd-V_keda-V/
#     bin/         etcd kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy
#                  keda-operator keda-admission-webhooks pause, and what k3s adds to a cluster:
#                  coredns, local-path-provisioner; and kube-state-metrics, for the monitoring
#                  case (bin/.versions: the version each was built at)
#     keda-config/ KEDA's config/ (its release manifests' kustomizations), from the module the
#                  operator is built from
#     stamp        written last: everything above is complete
#     work/        wrapper modules, KEDA's source copy and one build log per binary
#
#   scripts/cluster-build.sh              build what is missing (~20 min cold on 2 cores, <1 s after)
#   scripts/cluster-build.sh --print-dir  print the cache dir; exit 1 while its stamp is missing
#
# Versions (env): KMJ_K8S_VERSION (staging modules follow: v1.34.4 -> v0.34.4), KMJ_ETCD_VERSION,
# KMJ_KEDA_VERSION. proto/externalscaler.proto is pinned to KEDA v2.20: keep KEDA a v2.20 release.
# KMJ_COREDNS_VERSION and KMJ_LOCAL_PATH_VERSION: what k3s v1.34 ships (CoreDNS v1.14.4,
# local-path-provisioner v0.0.36, which the Go module proxy does not serve: v0.0.37, the next one).
# KMJ_KSM_VERSION: kube-state-metrics (v2.20.0, what kube-prometheus-stack ships in late 2026).
# A changed add-on version rebuilds that binary only.
#
# Kubernetes' go.mod points its staging modules at ./staging, so `go install k8s.io/kubernetes/cmd/X`
# is refused; a wrapper module with that go.mod, the staging replaces turned into module versions,
# builds them. Flags follow upstream's hack/lib/golang.sh: -trimpath, -s -w, tags
# selinux,notest,grpcnotrace, CGO off except for the kubelet, and -X version flags so that
# `kube-apiserver --version` prints the real version instead of v0.0.0. Each binary is built to a
# hidden .partial name, checked, then renamed into place, so a killed build never leaves a half
# binary that looks complete; a binary already in bin/ is skipped. Builds run under nice -n 10 with
# the normal Go build and module caches (~5 GB and ~2 GB after a cold build).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

k8s_version=${KMJ_K8S_VERSION:-v1.34.4}
etcd_version=${KMJ_ETCD_VERSION:-v3.6.16}
keda_version=${KMJ_KEDA_VERSION:-v2.20.2}
coredns_version=${KMJ_COREDNS_VERSION:-v1.14.4}
local_path_version=${KMJ_LOCAL_PATH_VERSION:-v0.0.37}
ksm_version=${KMJ_KSM_VERSION:-v2.20.0}

problems=()
[[ $k8s_version =~ ^v1\.([0-9]+)\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] ||
  problems+=("KMJ_K8S_VERSION: \"$k8s_version\" must be a Kubernetes release such as v1.34.4")
k8s_minor=${BASH_REMATCH[1]:-}
[[ $etcd_version =~ ^v3\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] ||
  problems+=("KMJ_ETCD_VERSION: \"$etcd_version\" must be an etcd v3 release such as v3.6.16")
[[ $keda_version =~ ^v2\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] ||
  problems+=("KMJ_KEDA_VERSION: \"$keda_version\" must be a KEDA v2 release such as v2.20.2")
if [ ${#problems[@]} -gt 0 ]; then
  joined=$(printf '; %s' "${problems[@]}")
  die "invalid cluster versions: ${joined#; }"
fi
staging_version="v0.${k8s_version#v1.}"

cache_dir="${KMJ_CLUSTER_CACHE:-/var/cache/keda-ml-jobs/cluster}/k8s-${k8s_version}_etcd-${etcd_version}_keda-${keda_version}"
bin="$cache_dir/bin"
keda_config="$cache_dir/keda-config"
stamp="$cache_dir/stamp"
work="$cache_dir/work"
binaries=(etcd kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy keda-operator keda-admission-webhooks pause coredns local-path-provisioner kube-state-metrics)

# version_of NAME: the version bin/NAME must have been built at.
version_of() {
  case $1 in
    etcd) echo "$etcd_version" ;;
    keda-*) echo "$keda_version" ;;
    coredns) echo "$coredns_version" ;;
    local-path-provisioner) echo "$local_path_version" ;;
    kube-state-metrics) echo "$ksm_version" ;;
    *) echo "$k8s_version" ;;
  esac
}

# built NAME: bin/NAME is there, built at the version asked for.
built() {
  [ -x "$bin/$1" ] && grep -qxF "$1 $(version_of "$1")" "$bin/.versions" 2>/dev/null
}

# complete: true when the stamp and everything it vouches for are there.
complete() {
  local b
  [ -f "$stamp" ] && [ -d "$keda_config" ] || return 1
  for b in "${binaries[@]}"; do built "$b" || return 1; done
}

case "${1:-}" in
  --print-dir)
    echo "$cache_dir"
    complete || { say "the cluster binaries are not built yet: run scripts/cluster-build.sh"; exit 1; }
    exit 0
    ;;
  "") ;;
  *) die "unknown argument '$1' (--print-dir, or none to build)" ;;
esac

if complete; then
  say "cluster binaries ready in $cache_dir"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH; the cluster binaries are built with it"
mkdir -p "$bin" "$work/logs" 2>/dev/null ||
  die "cannot create $cache_dir: set KMJ_CLUSTER_CACHE to a writable directory"
# One build per cache dir at a time: a second run waits, then finds the work done.
exec 9>"$cache_dir/.lock"
if ! flock -n 9; then
  say "another cluster-build.sh is building into $cache_dir; waiting for it"
  flock 9
  if complete; then
    say "cluster binaries ready in $cache_dir"
    exit 0
  fi
fi
rm -f "$stamp" "$bin"/.*.partial
# The kubelet is built with cgo (as upstream does) and pause is a static C program.
apt_install gcc libc6-dev

go_cmd() { nice -n 10 env GOWORK=off go "$@"; }

# go_build CGO LDFLAGS ARGS...: go build with upstream's release flags, CGO_ENABLED=CGO and LDFLAGS
# added to -s -w.
go_build() {
  local cgo=$1 ldflags=$2
  shift 2
  CGO_ENABLED=$cgo go_cmd build -mod=mod -trimpath -tags selinux,notest,grpcnotrace \
    -ldflags "-s -w $ldflags" "$@"
}

# reports OUT EXPECTED CMD...: run CMD, log its output, and fail unless a line of it is EXPECTED.
reports() {
  local expected=$1 got
  shift
  got=$("$@" 2>&1) || true
  printf '%s\n' "$got"
  grep -qxF -- "$expected" <<<"$got" || { echo "expected a line '$expected' from $*" >&2; return 1; }
}

# module_dir MODULE@VERSION: download a module (once) and print its directory in the module cache.
module_dir() {
  local json
  json=$(cd "$work" && go_cmd mod download -json "$1") || { printf '%s\n' "$json" >&2; return 1; }
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

# k8s_wrapper: the module the Kubernetes binaries are built from (work/k8s), made once.
k8s_wrapper() {
  local dir="$work/k8s" src
  [ -f "$dir/main.go" ] && return 0
  src=$(module_dir "k8s.io/kubernetes@$k8s_version")
  mkdir -p "$dir"
  sed -e 's|^module k8s.io/kubernetes$|module kmj.local/k8s-build|' \
    -e "s|^\([[:space:]]*\)\(k8s.io/[a-z0-9-]*\) => \./staging/src/k8s.io/[a-z0-9-]*[[:space:]]*\$|\1\2 => \2 $staging_version|" \
    "$src/go.mod" >"$dir/go.mod"
  printf '\nrequire k8s.io/kubernetes %s\n' "$k8s_version" >>"$dir/go.mod"
  if grep -q '=> \./' "$dir/go.mod"; then
    echo "go.mod of k8s.io/kubernetes@$k8s_version still has local replaces after the rewrite:" >&2
    grep '=> \./' "$dir/go.mod" >&2
    return 1
  fi
  cp "$src/go.sum" "$dir/go.sum"
  chmod u+w "$dir/go.mod" "$dir/go.sum"
  # Written last: its presence says the wrapper is complete.
  printf '// Package main only makes this a module; the binaries are k8s.io/kubernetes/cmd/*.\npackage main\n\nfunc main() {}\n' >"$dir/main.go"
}

# Steps: STEP OUT NAME writes the binary to OUT and checks that it runs and reports its version.
kube_step() {
  k8s_wrapper
  cd "$work/k8s"
  local cgo=0
  if [ "$2" = kubelet ]; then cgo=1; fi
  go_build "$cgo" "$k8s_ldflags" -o "$1" "k8s.io/kubernetes/cmd/$2"
  reports "Kubernetes $k8s_version" "$1" --version
}

etcd_step() {
  local dir="$work/etcd"
  mkdir -p "$dir"
  cd "$dir"
  if ! grep -qs "go.etcd.io/etcd/server/v3 $etcd_version\$" go.mod; then
    rm -f go.mod go.sum
    cat >main.go <<'GO'
// Package main is etcd's own main (go.etcd.io/etcd/server/v3/main.go), pinned by this module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go_cmd mod init kmj.local/etcd-build
    go_cmd get "go.etcd.io/etcd/server/v3@$etcd_version"
  fi
  go_build 0 "" -o "$1" .
  reports "etcd Version: ${etcd_version#v}" "$1" --version
}

keda_step() {
  local src="$work/keda-src"
  if [ ! -d "$src" ]; then
    local mod
    mod=$(module_dir "github.com/kedacore/keda/v2@$keda_version")
    rm -rf "$src.partial"
    cp -r "$mod" "$src.partial"
    chmod -R u+w "$src.partial"
    # The module zip keeps at most vendor/modules.txt, which would make go build use a vendor/ that
    # is not there.
    rm -rf "$src.partial/vendor"
    mv "$src.partial" "$src"
  fi
  cd "$src"
  local ldflags="-X github.com/kedacore/keda/v2/version.Version=${keda_version#v}"
  local cmd=operator
  [ "$2" = keda-admission-webhooks ] && cmd=webhooks
  go_build 0 "$ldflags" -o "$1" "./cmd/$cmd"
  # The operator has no --version (and -trimpath keeps -ldflags out of its build info): the
  # version linked in must be in the binary, and it must run.
  grep -aqF "${keda_version#v}" "$1" || { echo "no ${keda_version#v} in $1" >&2; return 1; }
  "$1" --help 2>&1 | grep -e --metrics-bind-address
}

# go_install_step MODULE VERSION OUT [LDFLAGS]: `go install MODULE@VERSION` (their go.mod have no
# replaces) into a directory of its own, then to OUT.
go_install_step() {
  local module=$1 version=$2 out=$3 ldflags=${4:-} gobin
  gobin="$work/gobin-$(basename "$module")"
  rm -rf "$gobin"
  mkdir -p "$gobin"
  (cd "$work" && GOBIN="$gobin" CGO_ENABLED=0 go_cmd install -trimpath -ldflags "-s -w $ldflags" "$module@$version")
  mv "$gobin/$(basename "$module")" "$out"
  rm -rf "$gobin"
}

coredns_step() {
  go_install_step github.com/coredns/coredns "$coredns_version" "$1"
  reports "CoreDNS-${coredns_version#v}" "$1" -version
}

local_path_step() {
  go_install_step github.com/rancher/local-path-provisioner "$local_path_version" "$1" "-X main.VERSION=$local_path_version"
  "$1" --version 2>&1 | grep -F "$local_path_version"
}

# kube-state-metrics' module path ends in /v2, so go install names its binary kube-state-metrics.
ksm_step() {
  local gobin="$work/gobin-kube-state-metrics"
  rm -rf "$gobin"
  mkdir -p "$gobin"
  (cd "$work" && GOBIN="$gobin" CGO_ENABLED=0 go_cmd install -trimpath \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${ksm_version#v}" "k8s.io/kube-state-metrics/v2@$ksm_version")
  mv "$gobin/kube-state-metrics" "$1"
  rm -rf "$gobin"
  "$1" version 2>&1 | grep -F "${ksm_version#v}"
}

pause_step() {
  local src tag
  src=$(module_dir "k8s.io/kubernetes@$k8s_version")
  tag=$(sed -n 's/^TAG ?= *//p' "$src/build/pause/Makefile")
  nice -n 10 gcc -Os -Wall -Werror -static -DVERSION="v${tag:-unknown}" \
    -o "$1" "$src/build/pause/linux/pause.c"
  reports "pause.c v${tag:-unknown}" "$1" -v
}

# build NAME VERSION ESTIMATE STEP: unless bin/NAME exists, run STEP into a .partial file with its
# output in work/logs/NAME.log, then rename the result into place.
timings=()
build() {
  local name=$1 version=$2 estimate=$3 step=$4
  local out="$bin/.$name.partial" log="$work/logs/$name.log" start=$SECONDS rc
  built "$name" && return 0
  say "building $name ($version), ~$estimate cold"
  rm -f "$out"
  set +e
  (set -e; "$step" "$out" "$name") >"$log" 2>&1
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    rm -f "$out"
    say "building $name failed after $((SECONDS - start)) s; the end of $log:"
    tail -n 40 "$log" >&2
    exit 1
  fi
  mv -f "$out" "$bin/$name"
  { grep -v "^$name " "$bin/.versions" 2>/dev/null || true; echo "$name $version"; } >"$bin/.versions.tmp"
  mv -f "$bin/.versions.tmp" "$bin/.versions"
  timings+=("$name $((SECONDS - start))s")
  say "built $name in $((SECONDS - start)) s ($(du -m "$bin/$name" | cut -f1) MB)"
}

started=$SECONDS
# Binaries of a cache made before bin/.versions existed were built at the versions in its name.
if [ ! -f "$bin/.versions" ]; then
  for b in "${binaries[@]}"; do if [ -x "$bin/$b" ]; then echo "$b $(version_of "$b")"; fi; done >"$bin/.versions"
fi
if [ ! -d "$keda_config" ]; then
  keda_mod=$(module_dir "github.com/kedacore/keda/v2@$keda_version") ||
    die "the Go module proxy did not serve github.com/kedacore/keda/v2@$keda_version"
  rm -rf "$keda_config.partial"
  cp -r "$keda_mod/config" "$keda_config.partial"
  chmod -R u+w "$keda_config.partial"
  mv "$keda_config.partial" "$keda_config"
fi
rm -rf "$cache_dir/keda-crds"

# Cold times on 2 busy cores, in this order (later binaries reuse what earlier ones compiled).
build etcd "$etcd_version" "1 min" etcd_step
build kube-apiserver "$k8s_version" "8 min" kube_step
build kubelet "$k8s_version" "2.5 min" kube_step
build kube-controller-manager "$k8s_version" "2 min" kube_step
build kube-scheduler "$k8s_version" "30 s" kube_step
build kube-proxy "$k8s_version" "30 s" kube_step
build keda-operator "$keda_version" "8 min" keda_step
build keda-admission-webhooks "$keda_version" "1 min" keda_step
build pause "$k8s_version" "1 s" pause_step
build coredns "$coredns_version" "5 min" coredns_step
build local-path-provisioner "$local_path_version" "4 min" local_path_step
build kube-state-metrics "$ksm_version" "3 min" ksm_step

{
  echo "kubernetes $k8s_version (staging $staging_version)"
  echo "etcd $etcd_version"
  echo "keda $keda_version"
  echo "coredns $coredns_version"
  echo "local-path-provisioner $local_path_version"
  echo "kube-state-metrics $ksm_version"
  go version
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ)${timings[*]:+ (${timings[*]})}"
} >"$stamp.partial"
mv -f "$stamp.partial" "$stamp"
say "cluster binaries ready in $cache_dir (built in $((SECONDS - started)) s)"

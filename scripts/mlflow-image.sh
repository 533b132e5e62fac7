#!/usr/bin/env bash
# The MLflow image of manifests/mlflow.yaml for linux/arm64 and linux/amd64, made without Docker
# and without emulation: what manifests/mlflow-image/Dockerfile builds (python:3.11-slim-bookworm,
# then pip install of its pins), from the registries alone. Per architecture: Debian 12's python3
# (3.11) for that architecture with what it depends on (scripts/arch-deps.sh python), and the
# Dockerfile's pins installed from PyPI's wheels for that architecture (pip install --target
# --platform manylinux…_<arch> --only-binary=:all:, run by this machine's Python 3.11) into
# /opt/mlflow/site, with `mlflow` on PATH. Cached per machine, outside the checkout, keyed by the
# pins and this script.
#
#   scripts/mlflow-image.sh build     make the OCI archive (an image index of both); print its path
#   scripts/mlflow-image.sh sizes     build, then print each architecture's size
#
# The image honours manifests/mlflow.yaml's contract (entrypoint mlflow, uid 1000, writes only
# HOME, /tmp and /mlflow/artifacts). Push it as the project image (docs/deploy.md). The cluster
# here runs the stand-in of scripts/stand-in-images.sh, made from a Debian root with a venv.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CACHE="${KMJ_IMAGE_CACHE:-/var/cache/keda-ml-jobs/images}"
SITES="${KMJ_ARCH_CACHE:-/var/cache/keda-ml-jobs/arch}"
image=$(awk '/image: .*kmj-mlflow/ { print $2; exit }' "$KMJ_ROOT/manifests/mlflow.yaml")
tag="kmj.local/${image#*/*/}"
pins=$(sed -n 's/.*pip install --no-cache-dir \(.*\) \\$/\1/p' "$KMJ_ROOT/manifests/mlflow-image/Dockerfile")
[ -n "$pins" ] || die "no pip install line in manifests/mlflow-image/Dockerfile"
key=$(printf '%s\n%s\n' "$tag $pins" "$(cat "$0")" | sha256sum | cut -c1-12)
archive="$CACHE/kmj-mlflow-$key.oci.tar"

py_arch() { case $1 in amd64) echo x86_64 ;; arm64) echo aarch64 ;; esac; }

# site ARCH: the pins installed for ARCH into a cached directory; prints its path.
site() {
  local arch=$1 dir plat=() minor tmp
  dir="$SITES/mlflow-site-$arch-$key"
  if [ ! -f "$dir/.kmj-complete" ]; then
    mkdir -p "$SITES"
    # Debian 12's glibc is 2.36: every manylinux tag up to it.
    for minor in $(seq 17 36); do plat+=(--platform "manylinux_2_${minor}_$(py_arch "$arch")"); done
    plat+=(--platform "manylinux2014_$(py_arch "$arch")")
    tmp=$(mktemp -d "$SITES/.mlflow-site-XXXXXX")
    say "installing $pins for linux/$arch from PyPI's wheels into $dir, once per machine"
    # shellcheck disable=SC2086 # the pins are words, quoted in the Dockerfile
    eval python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --no-warn-conflicts \
      --target "$tmp" "${plat[@]}" --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: $pins >&2 ||
      { rm -rf "$tmp"; die "pip could not install the pins for linux/$arch"; }
    # pip writes console scripts for the Python that ran it; the image has its own.
    rm -rf "$tmp/bin"
    touch "$tmp/.kmj-complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
  fi
  echo "$dir"
}

# root ARCH STAGE: the image's root directory for ARCH under STAGE; prints its path.
root() {
  local arch=$1 root="$2/$1" py
  py=$("$KMJ_ROOT/scripts/arch-deps.sh" python "$arch")
  mkdir -p "$root"
  cp -a "$py/." "$root/"
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale" "$root/.kmj-versions" "$root/var/lib/dpkg"
  mkdir -p "$root/opt/mlflow/bin" "$root/tmp" "$root/home/mlflow" "$root/mlflow/artifacts"
  cp -a "$(site "$arch")/." "$root/opt/mlflow/site/"
  rm -f "$root/opt/mlflow/site/.kmj-complete"
  printf '#!/usr/bin/python3\nimport sys\nfrom mlflow.cli import cli\nsys.exit(cli())\n' >"$root/opt/mlflow/bin/mlflow"
  chmod 755 "$root/opt/mlflow/bin/mlflow"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nmlflow:x:1000:1000::/home/mlflow:/usr/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nmlflow:x:1000:\n' >"$root/etc/group"
  echo "$root"
}

build() {
  local stage arch platforms=()
  if [ ! -f "$archive" ]; then
    umask 022
    mkdir -p "$CACHE"
    stage=$(mktemp -d "$CACHE/.mlflow-stage-XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$stage'" EXIT
    for arch in amd64 arm64; do platforms+=(--platform "linux/$arch=$(root "$arch" "$stage")"); done
    node "$KMJ_ROOT/scripts/image-archive.mjs" "${platforms[@]}" --tag "$tag" --out "$archive.partial" \
      --entrypoint /opt/mlflow/bin/mlflow --user 1000:1000 --workdir /home/mlflow \
      --env PATH=/opt/mlflow/bin:/usr/local/bin:/usr/bin:/bin --env PYTHONPATH=/opt/mlflow/site --env LANG=C.UTF-8 \
      >"$archive.json"
    mv "$archive.partial" "$archive"
    rm -rf "$stage"
    trap - EXIT
    say "made $tag (amd64 arm64) in $archive ($(du -h "$archive" | cut -f1))"
  fi
  echo "$archive"
}

case "${1:-}" in
  build) build ;;
  sizes)
    build >/dev/null
    node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const mb = (n) => (n / 1e6).toFixed(1);
      for (const i of r.images) console.log(`${r.tag} ${i.platform}\t${mb(i.compressedBytes)} MB compressed\t${mb(i.uncompressedBytes)} MB uncompressed`);
    ' "$archive.json"
    ;;
  *) die "usage: scripts/mlflow-image.sh build|sizes" ;;
esac

#!/usr/bin/env bash
# Stand-ins for the images manifests/ names but this machine cannot pull, made from the same server
# software: RabbitMQ and Postgres from Debian 13's packages, MLflow from PyPI with exactly the pins
# of manifests/mlflow-image/Dockerfile (on Debian 12's Python 3.11, as its python:3.11 base). Each
# honours the contract its manifest writes down at the top (user and group ids, writable paths,
# environment, entrypoint, probe commands), no more; test/manifests/stand-ins.test.ts holds them to
# it. overlays/local/ renames the images to these tags.
#
#   scripts/stand-in-images.sh build    make the image archives (once per machine, cached)
#   scripts/stand-in-images.sh import   build, then load them into the cluster's containerd
#   scripts/stand-in-images.sh archives build, then print `NAME ARCHIVE` for each (for tests)
#
# The tag of each is the manifest's, and the script fails when the software in the root directory
# is not that version. Archives are kept in /var/cache/keda-ml-jobs/images, keyed by the root they
# are made from.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CACHE="${KMJ_IMAGE_CACHE:-/var/cache/keda-ml-jobs/images}"
STANDINS="$KMJ_ROOT/scripts/stand-ins"

# image_of MANIFEST CONTAINER: the image a manifest gives a container.
image_of() {
  awk -v c="$2" '/- name: / { name = $3 } /image: / && name == c { print $2; exit }' "$KMJ_ROOT/manifests/$1"
}

# version_in ROOT PACKAGE: the Debian version of PACKAGE in a root made by debian-root.sh.
version_in() {
  awk -v p="$2" '$1 == p { print $2 }' "$1/.kmj-versions"
}

# pack NAME TAG ROOT [--add SRC:DEST]... ARGS...: a one-layer image of ROOT (less /dev, /proc, /sys,
# apt's caches and documentation) with the files added, made once per root and content; ARGS go to
# image-archive.mjs. Prints the archive's path.
pack() {
  local name=$1 tag=$2 root=$3 out stage adds=() a
  shift 3
  while [ "${1:-}" = --add ]; do adds+=("$2"); shift 2; done
  out="$CACHE/$name-$(basename "$root" | sed 's/.*-//')-$( { printf '%s\n' "$tag $*"; for a in "${adds[@]}"; do cat "${a%%:*}"; done; } | sha256sum | cut -c1-8).tar"
  if [ ! -f "$out" ]; then
    mkdir -p "$CACHE"
    stage=$(mktemp -d "$CACHE/.stage-$name-XXXXXX")
    tar -C "$root" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
      --exclude='./var/cache/apt/*' --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
      --exclude='./usr/share/locale/*' --exclude='./.kmj-*' -cf - . | tar -C "$stage" -xf -
    chmod 1777 "$stage/tmp"
    for a in "${adds[@]}"; do install -D -m 755 "${a%%:*}" "$stage${a#*:}"; done
    node "$KMJ_ROOT/scripts/image-archive.mjs" --rootfs "$stage" --tag "$tag" --out "$out.partial" "$@" >&2
    rm -rf "$stage"
    mv "$out.partial" "$out"
    say "made $tag ($(du -h "$out" | cut -f1))"
  fi
  echo "$out"
}

# check NAME EXPECTED GOT: the stand-in is the version the manifest names.
check() {
  [ "$2" = "$3" ] || die "the stand-in for $1 would be $3, but manifests/ names $2: change one or the other"
}

rabbitmq() {
  local image tag root version
  image=$(image_of rabbitmq.yaml rabbitmq)
  tag="kmj.local/${image}"
  # The official image's user: rabbitmq, uid and gid 999, made before the package so that its
  # maintainer script keeps them.
  root=$("$KMJ_ROOT/scripts/debian-root.sh" \
    --before 'groupadd --system --gid 999 rabbitmq && useradd --system --uid 999 --gid 999 --home-dir /var/lib/rabbitmq --shell /bin/sh rabbitmq' \
    rabbitmq-standin rabbitmq-server)
  version=$(version_in "$root" rabbitmq-server | sed -E 's/-.*//')
  check rabbitmq "${image#rabbitmq:}" "$version-management"
  pack rabbitmq "$tag" "$root" --entrypoint /usr/lib/rabbitmq/bin/rabbitmq-server --user 999:999 \
    --env PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env HOME=/var/lib/rabbitmq --env RABBITMQ_DATA_DIR=/var/lib/rabbitmq --env LANG=C.UTF-8
}

postgres() {
  local image tag root version major
  image=$(image_of postgres.yaml postgres)
  tag="kmj.local/${image}"
  major=$(sed -E 's/^postgres:([0-9]+).*/\1/' <<<"$image")
  # The official image's user: postgres, uid and gid 999; and no cluster made at install, as the
  # official image configures postgresql-common.
  root=$("$KMJ_ROOT/scripts/debian-root.sh" \
    --before "groupadd --system --gid 999 postgres && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres && mkdir -p /etc/postgresql-common && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf" \
    --after 'mkdir -p /docker-entrypoint-initdb.d /var/lib/postgresql/data && chown 999:999 /var/lib/postgresql/data' \
    postgres-standin "postgresql-$major")
  version=$(version_in "$root" "postgresql-$major" | sed -E 's/-.*//')
  check postgres "${image#postgres:}" "$version-trixie"
  pack postgres "$tag" "$root" --add "$STANDINS/postgres-entrypoint.sh:/usr/local/bin/docker-entrypoint.sh" \
    --entrypoint /usr/local/bin/docker-entrypoint.sh --cmd postgres --user 999:999 --stop-signal SIGINT \
    --env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/$major/bin" \
    --env PGDATA=/var/lib/postgresql/data --env "PG_MAJOR=$major" --env LANG=C.UTF-8
}

mlflow() {
  local image tag root pins version
  image=$(image_of mlflow.yaml mlflow)
  tag="kmj.local/${image#*/*/}"
  # The Dockerfile's pins, read from it: one list for both images.
  pins=$(sed -n 's/.*pip install --no-cache-dir \(.*\) \\$/\1/p' "$KMJ_ROOT/manifests/mlflow-image/Dockerfile")
  [ -n "$pins" ] || die "no pip install line in manifests/mlflow-image/Dockerfile"
  root=$("$KMJ_ROOT/scripts/debian-root.sh" --suite bookworm \
    --after "python3 -m venv /opt/mlflow && /opt/mlflow/bin/pip install --no-cache-dir $pins && useradd --uid 1000 --create-home mlflow" \
    mlflow-standin python3 python3-venv)
  version=$(chroot "$root" /opt/mlflow/bin/python -c 'import mlflow; print(mlflow.__version__)')
  check mlflow "${image##*:}" "$version"
  pack mlflow "$tag" "$root" --entrypoint /opt/mlflow/bin/mlflow --user 1000:1000 \
    --env PATH=/opt/mlflow/bin:/usr/local/bin:/usr/bin:/bin --env LANG=C.UTF-8
}

build() {
  rabbitmq >/dev/null
  postgres >/dev/null
  mlflow >/dev/null
}

case "${1:-}" in
  build) build ;;
  import)
    sock="${KMJ_CLUSTER_STATE:-$KMJ_RUN/cluster}/containerd/containerd.sock"
    [ -S "$sock" ] || die "the cluster's containerd is not running (scripts/cluster.sh up)"
    for make in rabbitmq postgres mlflow; do
      archive=$("$make")
      # Imported once per archive (its name carries its content's hash) and cluster state.
      stamp="$(dirname "$sock")/.kmj-imported-$make"
      if [ "$(cat "$stamp" 2>/dev/null)" = "$archive" ] &&
        ctr -a "$sock" -n k8s.io images ls -q | grep -q "^kmj.local/\(kmj-\)\?$make:"; then
        continue
      fi
      ctr -a "$sock" -n k8s.io images import "$archive" >/dev/null
      echo "$archive" >"$stamp"
    done
    say "imported the stand-ins of RabbitMQ, Postgres and MLflow"
    ;;
  archives)
    for make in rabbitmq postgres mlflow; do echo "$make $("$make")"; done
    ;;
  *) die "usage: scripts/stand-in-images.sh build|import|archives" ;;
esac

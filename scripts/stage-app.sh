#!/usr/bin/env bash
# The one list of what goes into the project's image under /app, staged into a directory that both
# the Dockerfile (its build stage runs this) and scripts/image.sh (the local packer, no Docker)
# copy from:
#
#   scripts/stage-app.sh OUT_DIR [ARCH]     (dist/ must be built: make build)
#
# ARCH is the image's architecture as Docker names it (TARGETARCH): amd64 or arm64; this
# machine's by default. OUT_DIR/app then holds package.json, package-lock.json, bin/, dist/
# (sources compiled; benchmarks and tests never are), proto/, schemas/, and the production
# dependencies only (npm ci --omit=dev, install scripts denied), with onnxruntime-node's linux
# binaries for ARCH and nothing else: no other platform's, no other architecture's.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

out=${1:-}
[ -n "$out" ] || die "usage: scripts/stage-app.sh OUT_DIR [ARCH]"
target=${2:-$(node -p '({ x64: "amd64", arm64: "arm64" })[process.arch] ?? process.arch')}
case $target in
  amd64) arch=x64 ;;
  arm64) arch=arm64 ;;
  *) die "ARCH \"$target\" must be amd64 or arm64" ;;
esac
[ -f "$KMJ_ROOT/dist/cli/kmj.js" ] && [ -f "$KMJ_ROOT/dist/generated/request-validator.js" ] ||
  die "dist/ is not built: run make build first"

app="$out/app"
rm -rf "$app.partial"
mkdir -p "$app.partial"
cp "$KMJ_ROOT/package.json" "$KMJ_ROOT/package-lock.json" "$app.partial/"
cp -R "$KMJ_ROOT/bin" "$KMJ_ROOT/proto" "$KMJ_ROOT/schemas" "$app.partial/"
mkdir -p "$app.partial/dist"
# Every compiled module: dist/ holds only program code (bench/ and test/ run from source).
cp -R "$KMJ_ROOT/dist/." "$app.partial/dist/"
# Source maps stay out: they hold the TypeScript sources, which the image does not need.
find "$app.partial/dist" -name '*.map' -delete

(
  cd "$app.partial"
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >&2
)
# Type declarations and source maps are for compilers and debuggers, not for running: out (the
# Kubernetes client alone ships ~45 MB of them).
find "$app.partial/node_modules" \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' \) -type f -delete
rm -rf "$app.partial/node_modules/@types"
# onnxruntime-node ships CPU binaries for every platform; keep the target's only.
platform=linux
ort="$app.partial/node_modules/onnxruntime-node/bin/napi-v6"
[ -d "$ort/$platform/$arch" ] || die "onnxruntime-node has no binaries for $platform/$arch"
find "$ort" -mindepth 1 -maxdepth 1 -type d ! -name "$platform" -exec rm -rf {} +
find "$ort/$platform" -mindepth 1 -maxdepth 1 -type d ! -name "$arch" -exec rm -rf {} +
# Packages that ship prebuilt addons as prebuilds/<platform>-<arch>/ (the bare-* modules that
# tar-fs pulls in for the Bare runtime, which Node never loads): the target's directory only.
find "$app.partial/node_modules" -type d -path '*/prebuilds/*' -prune ! -name "$platform-$arch" -exec rm -rf {} +

rm -rf "$app"
mv "$app.partial" "$app"
say "staged the app for linux/$target into $app ($(du -sh "$app" | cut -f1))"

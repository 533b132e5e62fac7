# syntax=docker/dockerfile:1.7
# One image for every kmj command (scaler, worker, submit, status). Multi-arch, for the Raspberry Pi
# 5 (linux/arm64) and x86 build hosts:
#   docker buildx build --platform linux/arm64,linux/amd64 -t <registry>/keda-ml-jobs:0.1.0 --push .
# Pin the base image by digest in your registry mirror once you have pulled it.
ARG NODE_VERSION=24.21.0

# The build stage runs on the build machine's own platform and stages the target's binaries
# (scripts/stage-app.sh takes TARGETARCH), so nothing is emulated while building.
FROM --platform=$BUILDPLATFORM node:${NODE_VERSION}-bookworm-slim AS build
ARG TARGETARCH
# onnxruntime-node's install script downloads CUDA libraries on x64; the CPU binaries for linux
# x64 and arm64 are in the npm tarball, so its script is skipped (package.json denies it too).
ENV ONNXRUNTIME_NODE_INSTALL=skip
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY . .
# What goes into /app is decided by scripts/stage-app.sh alone; scripts/image.sh, which builds the
# image without Docker, stages it the same way.
RUN npx tsc -p tsconfig.json \
 && node scripts/build-validators.mjs \
 && scripts/stage-app.sh /stage "$TARGETARCH"

FROM node:${NODE_VERSION}-bookworm-slim
ENV NODE_ENV=production \
    ONNXRUNTIME_NODE_INSTALL=skip \
    ORT_DISABLE_TELEMETRY=1
COPY --from=build /stage/app /app
WORKDIR /app
# The image's own "node" user (uid 1000); manifests run with a read-only root filesystem.
USER 1000:1000
ENTRYPOINT ["node", "/app/bin/kmj.js"]
CMD ["--help"]

# syntax=docker/dockerfile:1.7
# One image for every kmj command (scaler, worker, submit, status). Multi-arch, for the Raspberry Pi
# 5 (linux/arm64) and x86 build hosts:
#   docker buildx build --platform linux/arm64,linux/amd64 -t <registry>/keda-ml-jobs:0.1.0 --push .
# Pin the base image by digest in your registry mirror once you have pulled it.
ARG NODE_VERSION=24.21.0

FROM node:${NODE_VERSION}-bookworm-slim AS build
# onnxruntime-node's install script downloads CUDA libraries on x64; the CPU binaries for linux
# x64 and arm64 are in the npm tarball, so its script is skipped (package.json denies it too).
ENV ONNXRUNTIME_NODE_INSTALL=skip
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json ./
COPY proto ./proto
COPY schemas ./schemas
COPY bin ./bin
COPY cli ./cli
COPY common ./common
COPY scaler ./scaler
COPY worker ./worker
COPY bench ./bench
COPY scripts/build-validators.mjs ./scripts/
RUN npx tsc -p tsconfig.json \
 && node scripts/build-validators.mjs \
 && npm prune --omit=dev --ignore-scripts \
 && ARCH="$(node -p 'process.arch')" \
 && find node_modules/onnxruntime-node/bin -mindepth 3 -maxdepth 3 -type d ! -name "$ARCH" -exec rm -rf {} + \
 && find node_modules/onnxruntime-node/bin -mindepth 2 -maxdepth 2 -type d ! -name linux -exec rm -rf {} +

FROM node:${NODE_VERSION}-bookworm-slim
ENV NODE_ENV=production \
    ONNXRUNTIME_NODE_INSTALL=skip
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin
COPY --from=build /app/proto ./proto
COPY --from=build /app/schemas ./schemas
# The image's own "node" user (uid 1000); manifests run with a read-only root filesystem.
USER 1000:1000
ENTRYPOINT ["node", "/app/bin/kmj.js"]
CMD ["--help"]

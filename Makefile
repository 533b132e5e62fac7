# keda-ml-jobs. `make demo` runs the main job, `make test` the tests; both work on a fresh machine.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# onnxruntime-node's install script downloads CUDA libraries on x64; the CPU binaries ship in the tarball.
export ONNXRUNTIME_NODE_INSTALL := skip
# onnxruntime (Node and Python) uploads telemetry unless told not to; nothing here sends any.
export ORT_DISABLE_TELEMETRY := 1
export npm_config_loglevel := error
NODE_BIN := $(shell scripts/ensure-node.sh)
export PATH := $(NODE_BIN):$(CURDIR)/node_modules/.bin:$(PATH)

STAMP := .run/stamps

.PHONY: help deps build typecheck lint format services image cluster-up cluster cluster-down test demo demo-cluster bench-scaler bench-kafka bench-worker bench-keda bench-models bench-mlflow-auth clean

help:
	@echo "make demo          RabbitMQ, MLflow, the scaler and workers on this machine, one Job per request"
	@echo "make test          start the services the tests need, run every test"
	@echo "make bench-scaler  benchmark the scaler under KEDA-like polling of 200 queues"
	@echo "make bench-kafka   the scaler's Kafka source under KEDA-like polling of 100 groups of 12 partitions, beside RabbitMQ"
	@echo "make bench-worker  the worker beside a Python worker: cold start, throughput, memory"
	@echo "make bench-keda    our trigger beside KEDA's built-in RabbitMQ trigger, in the real cluster (~25 min)"
	@echo "make bench-models  models of 15, 70 and 150 MB: the worker's load beside onnxruntime's, and bursts in the real cluster"
	@echo "make bench-mlflow-auth  MLflow's basic auth per call, with and without its credential cache (~2 min)"
	@echo "make cluster       a real single-node Kubernetes + KEDA here, with the project deployed (docs/deploy.md)"
	@echo "make cluster-up    the same cluster with the images imported, nothing deployed"
	@echo "make cluster-down  stop it and undo its host changes"
	@echo "make demo-cluster  the demo's requests through that cluster: real KEDA, real pods, runs in MLflow"
	@echo "make build         compile TypeScript into dist/"
	@echo "make lint          eslint (type-aware) and prettier --check over code, tests, benches and scripts"
	@echo "make format        rewrite every file the way prettier --check wants it"
	@echo "make image         the project and MLflow images for linux/amd64 and linux/arm64, OCI archives, with their sizes"

# --ignore-scripts: the only install scripts (onnxruntime-node, protobufjs) are denied anyway, and
# `prepare` would compile what `build` compiles next.
$(STAMP)/deps: package.json package-lock.json
	@mkdir -p $(STAMP)
	npm ci --no-audit --no-fund --ignore-scripts
	@touch $@

deps: $(STAMP)/deps

# From clean: a module moved or deleted leaves nothing behind in dist/ (the image ships dist/).
build: deps
	rm -rf dist
	tsc -p tsconfig.json
	node scripts/build-validators.mjs

# The benchmarks and tests are type-checked, never compiled: Node 24 runs them from source.
typecheck: deps
	tsc -p tsconfig.json --noEmit
	tsc -p test/tsconfig.json --noEmit
	tsc -p bench/tsconfig.json --noEmit

# Type-aware lint (eslint.config.js) and the formatter's check (.prettierrc.json) over every file
# the project runs. The first thing `make test` does: a finding fails it before anything starts.
FORMATTED := '**/*.{ts,mjs,js}'

lint: deps
	eslint --max-warnings 0 .
	prettier --check --log-level warn $(FORMATTED)

format: deps
	prettier --write --log-level warn $(FORMATTED)

services:
	scripts/rabbitmq.sh start
	scripts/mlflow.sh start
	scripts/mlflow.sh start kmj-auth 5001 basic
	scripts/kafka.sh start
	scripts/fixtures.sh --big-rows 100000

# A real single-node Kubernetes with the real KEDA operator (binaries built once per machine, ~20 min
# cold), the project's image imported and its manifests applied through overlays/local/.
# The cluster with the images imported, nothing deployed: make test's cluster suite deploys from
# empty itself (test/cluster/from-empty.cases.ts).
cluster-up: build services
	scripts/cluster.sh up
	scripts/image.sh import
	scripts/stand-in-images.sh import

cluster: cluster-up
	scripts/cluster-deploy.sh

cluster-down:
	scripts/cluster.sh down

demo-cluster: cluster
	scripts/demo-cluster.sh

# The images' tests (test/image/) read the project's and the MLflow image index, and run their
# arm64 images under Debian's qemu-aarch64-static (fetched once per machine, not installed). The
# alert rules' tests (test/monitoring/) use promtool from a Debian 13 root of the prometheus package.
test: lint build typecheck services cluster-up
	scripts/arch-deps.sh qemu >/dev/null
	scripts/mlflow-image.sh build >/dev/null
	scripts/debian-root.sh prometheus prometheus >/dev/null
	node scripts/run-tests.mjs

# The project image and the MLflow image for linux/amd64 and linux/arm64, as OCI archives
# (.run/images/keda-ml-jobs.oci.tar; the MLflow one's path is printed), with each one's sizes.
image: build
	scripts/image.sh sizes
	scripts/mlflow-image.sh build
	scripts/mlflow-image.sh sizes

# The demo needs RabbitMQ, the main MLflow server and the sample models; not the auth server.
demo: build
	scripts/rabbitmq.sh start
	scripts/mlflow.sh start
	KMJ_FIXTURES_AUTH=0 scripts/fixtures.sh
	node bin/kmj.js demo

# The scaler benchmark needs RabbitMQ only.
bench-scaler: build
	scripts/rabbitmq.sh start
	node bench/scaler-bench.ts

# The Kafka scaler benchmark: 100 consumer groups (and 100 RabbitMQ queues) against one scaler process.
bench-kafka: build services
	node bench/kafka-bench.ts

bench-worker: build services
	node bench/worker-bench.ts

# MLflow's basic-auth app with and without its credential cache (docs/deploy.md).
bench-mlflow-auth:
	scripts/mlflow.sh venv
	node bench/mlflow-auth-bench.ts

# KEDA's ScaledJob strategies side by side in the real cluster: our trigger, the built-in RabbitMQ
# trigger with accurate and with default (docs/benchmarks.md).
bench-keda: cluster
	eval "$$(scripts/cluster.sh env)" && eval "$$(scripts/cluster-deploy.sh --env)" && \
	  RABBITMQ_URL=$$KMJ_CLUSTER_RABBITMQ_URL MLFLOW_TRACKING_URI=$$KMJ_CLUSTER_MLFLOW_URL \
	  MLFLOW_TRACKING_USERNAME=$$KMJ_CLUSTER_MLFLOW_USERNAME MLFLOW_TRACKING_PASSWORD=$$KMJ_CLUSTER_MLFLOW_PASSWORD \
	  node bench/keda-bench.ts

# Models of realistic sizes (docs/models.md): on this machine, a cache hit's load beside onnxruntime's
# bare session start; then in the real cluster, bursts per model through the node cache.
bench-models: cluster
	node bench/models-bench.ts host
	eval "$$(scripts/cluster.sh env)" && eval "$$(scripts/cluster-deploy.sh --env)" && \
	  RABBITMQ_URL=$$KMJ_CLUSTER_RABBITMQ_URL MLFLOW_TRACKING_URI=$$KMJ_CLUSTER_MLFLOW_URL \
	  MLFLOW_TRACKING_USERNAME=$$KMJ_CLUSTER_MLFLOW_USERNAME MLFLOW_TRACKING_PASSWORD=$$KMJ_CLUSTER_MLFLOW_PASSWORD \
	  node bench/models-bench.ts cluster

clean:
	rm -rf dist .run

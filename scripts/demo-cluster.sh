#!/usr/bin/env bash
# The demo through the real cluster (make demo-cluster, after make cluster): the same mix of
# requests as `kmj demo` (ten that finish, one that cannot), with their datasets in the cluster's
# MLflow so that pods can read them, published to the ScaledJob's queue in the cluster's RabbitMQ
# (both reached from here by their Services' cluster IPs, as their administrators). Real KEDA makes the Jobs and real pods
# run them. Each request is followed to its outcome (`kmj submit --wait`), then it shows what a
# user looks at: `kubectl get scaledjobs,jobs` and `kmj status --scaledjob`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

eval "$("$KMJ_ROOT/scripts/cluster.sh" env)"
fixtures="$KMJ_RUN/fixtures-cluster/fixtures.json"
[ -f "$fixtures" ] || die "no $fixtures: run make cluster (it registers the sample models in the cluster's MLflow)"
requests="$KMJ_RUN/demo-cluster-requests.jsonl"
experiment="kmj-demo-cluster"

node --input-type=module -e '
  import { readFileSync } from "node:fs";
  import { randomUUID } from "node:crypto";
  const f = JSON.parse(readFileSync(process.argv[1], "utf8"));
  const experiment = process.argv[2];
  const c = f.models.classifier, r = f.models.regressor, m = f.models.mlp;
  const csv = f.datasets.runsCsvUri, jsonl = f.datasets.artifactJsonlUri;
  const req = (model, dataset, extra = {}) => ({ version: 1, requestId: `demo-${randomUUID().slice(0, 8)}`, model, dataset, experiment, ...extra });
  const out = [];
  for (let i = 0; i < 4; i++) out.push(req(`models:/${c.name}@${c.alias ?? "champion"}`, { uri: csv }, { labelColumn: f.label }));
  for (let i = 0; i < 2; i++) out.push(req(`models:/${c.name}/latest`, { uri: jsonl }, { labelColumn: f.label }));
  for (let i = 0; i < 2; i++) out.push(req(`models:/${r.name}/${r.version}`, { uri: csv }, { labelColumn: f.regressorLabel }));
  out.push(req(`models:/${m.name}/${m.version}`, { uri: f.datasets.artifactCsvUri }, { labelColumn: f.label }));
  const row = (v, s) => Object.fromEntries([...f.features.map((n, i) => [n, v[i]]), [f.label, s]]);
  out.push(req(`models:/${c.name}/${c.version}`, { rows: [row([5.1, 3.5, 1.4, 0.2], 0), row([6.7, 3.0, 5.2, 2.3], 2)], name: "two-flowers" }, { labelColumn: f.label }));
  out.push(req(`models:/${c.name}@no-such-alias`, { uri: csv }));
  process.stdout.write(out.map((o) => JSON.stringify(o)).join("\n") + "\n");
' "$fixtures" "$experiment" >"$requests"

eval "$("$KMJ_ROOT/scripts/cluster-deploy.sh" --env)"
export RABBITMQ_URL=$KMJ_CLUSTER_RABBITMQ_URL RABBITMQ_MANAGEMENT_URL=$KMJ_CLUSTER_RABBITMQ_MANAGEMENT_URL
export MLFLOW_TRACKING_URI=$KMJ_CLUSTER_MLFLOW_URL MLFLOW_TRACKING_USERNAME=$KMJ_CLUSTER_MLFLOW_USERNAME
export MLFLOW_TRACKING_PASSWORD=$KMJ_CLUSTER_MLFLOW_PASSWORD
started=$SECONDS
say "publishing $(wc -l <"$requests") requests to queue ml-requests; KEDA makes one Job per request"
node "$KMJ_ROOT/bin/kmj.js" submit --queue ml-requests --file "$requests" >/dev/null
deploy="$KMJ_RUN/cluster-deploy/tls"
# This host has no cluster DNS: kmj status reaches the scaler at its Service's cluster IP and checks
# its certificate against the Service name, as through `kubectl port-forward`.
scaler_ip=$(kubectl -n kmj get service kmj-scaler -o jsonpath='{.spec.clusterIP}')
status() {
  KMJ_SCALER_ADDRESS="$scaler_ip:6000" KMJ_SCALER_TLS_SERVER_NAME=kmj-scaler.kmj.svc \
    KMJ_SCALER_METRICS_URL="http://$scaler_ip:8080" KMJ_SCALER_TLS_CA_FILE="$deploy/ca.crt" \
    KMJ_SCALER_TLS_CLIENT_CERT_FILE="$deploy/keda.crt" KMJ_SCALER_TLS_CLIENT_KEY_FILE="$deploy/keda.key" \
    node --no-deprecation "$KMJ_ROOT/bin/kmj.js" status --scaledjob ml-requests -n kmj --experiment "$experiment" --runs 100 "$@"
}
# Done when every request's run has ended and no Job is still running.
ids=$(node -e 'for (const l of require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n")) console.log(JSON.parse(l).requestId)' "$requests")
summary=""
for ((i = 0; i < 180; i++)); do
  summary=$(status -o json | node -e '
    const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const ids = new Set(process.argv[1].split("\n"));
    const runs = (r.mlflow.value?.runs ?? []).filter((x) => ids.has(x.requestId));
    const ended = runs.filter((x) => x.status !== "RUNNING");
    const jobs = r.kubernetes.value?.jobs ?? [];
    const busy = jobs.filter((j) => j.status === "pending" || j.status === "running").length;
    console.log(`${ended.length} ${runs.filter((x) => x.status === "FINISHED").length} ${busy}`);
  ' "$ids" 2>/dev/null || echo "0 0 1")
  read -r ended finished busy <<<"$summary"
  printf '[demo-cluster.sh] %3d s: %2d of 11 runs ended (%d FINISHED), %d Jobs pending or running\n' "$((SECONDS - started))" "$ended" "$finished" "$busy" >&2
  [ "$ended" -ge 11 ] && [ "$busy" = 0 ] && break
  sleep 2
done
echo
kubectl -n kmj get scaledjobs,jobs
echo
status || true
say "$finished of 11 FINISHED, one dead-lettered by design, in $((SECONDS - started)) s from the first publish"
# Exactly ten finish; the eleventh is meant to be dead-lettered.
[ "$ended" -ge 11 ] && [ "$finished" = 10 ]

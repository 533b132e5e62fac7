#!/usr/bin/env bash
# Deploys keda-ml-jobs into the cluster of scripts/cluster.sh the way docs/deploy.md tells a user
# to, and nothing more: no step on the host's RabbitMQ or MLflow, no manual step.
#   1. the images, made here and imported (a user pulls them): the project's (scripts/image.sh)
#      and the stand-ins of RabbitMQ, Postgres and MLflow (scripts/stand-in-images.sh);
#   2. the namespace, then the Secrets of manifests/secrets.example.yaml with random passwords,
#      and those for mutual TLS between KEDA and the scaler (a CA made here, a server certificate
#      for the scaler's Service names, a client certificate for KEDA); the optional kmj-kafka
#      names a Kafka broker for pods (scripts/kafka.sh kafka-cluster 19292 on the node address:
#      there is no Kafka in manifests/, and Kafka hands clients the address it advertises);
#   3. `kubectl apply -k overlays/local/`: RabbitMQ, Postgres and MLflow in the cluster, the
#      scaler, the ScaledJob, and the setup Job (manifests/setup.yaml: the broker users, the queue,
#      the worker's MLflow user); waits until the Job is done and the ScaledJob is READY;
#   4. the sample models, registered in the cluster's MLflow with the real Python client as a user
#      registers them (scripts/make_test_models.py), described in .run/fixtures-cluster/.
#
#   scripts/cluster-deploy.sh            idempotent; prints progress only
#   scripts/cluster-deploy.sh --delete   deletes the namespace (its volumes go with it) and the
#                                        pods' Kafka broker
#   scripts/cluster-deploy.sh --env      prints the host's way to the cluster's services, for eval:
#                                        KMJ_CLUSTER_RABBITMQ_URL, ..._MANAGEMENT_URL, ..._MLFLOW_URL
#                                        (Services' cluster IPs, which kube-proxy routes on this host)
#
# Passwords and certificates are made once and kept in .run/cluster-deploy/ (mode 0700).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

eval "$("$KMJ_ROOT/scripts/cluster.sh" env)"
NS=kmj
NODE_IP=10.250.0.1
# The pods' Kafka broker: name, port, address.
KAFKA_CLUSTER=(kafka-cluster 19292 "$NODE_IP")
DIR="$KMJ_RUN/cluster-deploy"

# secret_of NAME: a random password made once and kept under $DIR (hex: nothing to escape in a URL).
secret_of() {
  local f="$DIR/$1.password"
  [ -s "$f" ] || (umask 077 && openssl rand -hex 16 >"$f")
  cat "$f"
}

# certs: the CA, the scaler's server certificate and KEDA's client certificate, made once.
certs() {
  local d="$DIR/tls"
  # Made once; a scaler certificate that names an IP is from before cluster DNS: made again.
  [ -f "$d/keda.crt" ] && ! openssl x509 -in "$d/scaler.crt" -noout -ext subjectAltName 2>/dev/null | grep -q 'IP Address' && return 0
  rm -rf "$d"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=kmj-scaler-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # issue NAME CN EXTKEYUSAGE [SANS]
  issue() {
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$3" >"$d/$1.ext"
    [ -n "${4:-}" ] && echo "subjectAltName=$4" >>"$d/$1.ext"
    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
      -extfile "$d/$1.ext" -out "$d/$1.crt" 2>/dev/null
  }
  issue scaler kmj-scaler serverAuth "DNS:kmj-scaler.$NS.svc,DNS:kmj-scaler.$NS.svc.cluster.local,DNS:kmj-scaler"
  issue keda keda-operator clientAuth
}

# apply_secret NAME ARGS...: `kubectl create secret generic NAME ARGS` as an apply (idempotent).
apply_secret() {
  local name=$1
  shift
  kubectl -n "$NS" create secret generic "$name" "$@" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

# secrets: those of manifests/secrets.example.yaml, in its shapes, with this deployment's passwords.
secrets() {
  local pg
  pg=$(secret_of kmj-postgres)
  apply_secret rabbitmq-admin --from-literal=username=admin --from-literal=password="$(secret_of rabbitmq-admin)"
  apply_secret kmj-broker \
    --from-literal=scaler-url="amqp://kmj-scaler:$(secret_of kmj-scaler)@rabbitmq.$NS.svc:5672/" \
    --from-literal=worker-url="amqp://kmj-worker:$(secret_of kmj-worker)@rabbitmq.$NS.svc:5672/"
  apply_secret kmj-postgres --from-literal=password="$pg"
  apply_secret kmj-mlflow-auth --from-literal=flask-secret-key="$(secret_of mlflow-flask)" --from-literal=basic_auth.ini="[mlflow]
default_permission = READ
database_uri = postgresql+psycopg2://mlflow:$pg@postgres.$NS.svc:5432/mlflow_auth
admin_username = admin
admin_password = $(secret_of mlflow-admin)
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
"
  apply_secret kmj-mlflow-worker --from-literal=username=kmj-worker --from-literal=password="$(secret_of kmj-mlflow-worker)"
  apply_secret kmj-model-cache --from-literal=token="$(secret_of kmj-model-cache)"
  apply_secret kmj-scaler-tls --from-file=tls.crt="$DIR/tls/scaler.crt" --from-file=tls.key="$DIR/tls/scaler.key" \
    --from-file=ca.crt="$DIR/tls/ca.crt"
  apply_secret kmj-scaler-client-tls --from-file=ca.crt="$DIR/tls/ca.crt" --from-file=tls.crt="$DIR/tls/keda.crt" \
    --from-file=tls.key="$DIR/tls/keda.key"
  apply_secret kmj-kafka --from-literal=brokers="$NODE_IP:${KAFKA_CLUSTER[1]}"
}

# service_ip NAME: a Service's cluster IP.
service_ip() {
  kubectl -n "$NS" get service "$1" -o jsonpath='{.spec.clusterIP}'
}

# env_lines: the host's way to the cluster's services, with the administrators' credentials.
env_lines() {
  echo "export KMJ_CLUSTER_RABBITMQ_URL=amqp://admin:$(secret_of rabbitmq-admin)@$(service_ip rabbitmq):5672/"
  echo "export KMJ_CLUSTER_RABBITMQ_MANAGEMENT_URL=http://admin:$(secret_of rabbitmq-admin)@$(service_ip rabbitmq):15672"
  echo "export KMJ_CLUSTER_MLFLOW_URL=http://$(service_ip mlflow):5000"
  echo "export KMJ_CLUSTER_MLFLOW_USERNAME=admin"
  echo "export KMJ_CLUSTER_MLFLOW_PASSWORD=$(secret_of mlflow-admin)"
}

# wait_rollout KIND/NAME SECONDS
wait_rollout() {
  kubectl -n "$NS" rollout status "$1" --timeout="${2}s" >&2 || { kubectl -n "$NS" describe "$1" >&2; die "$1 is not ready"; }
}

deploy() {
  "$KMJ_ROOT/scripts/image.sh" import
  "$KMJ_ROOT/scripts/stand-in-images.sh" import
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  umask 077
  "$KMJ_ROOT/scripts/kafka.sh" start "${KAFKA_CLUSTER[@]}" >&2
  certs

  kubectl apply -f "$KMJ_ROOT/manifests/namespace.yaml" >/dev/null
  secrets
  local existed=""
  kubectl -n "$NS" get deployment kmj-scaler >/dev/null 2>&1 && existed=1
  # A setup Job that finished is left by kubectl apply as it is: one made again runs again.
  kubectl -n "$NS" delete job kmj-setup --ignore-not-found >/dev/null
  kubectl apply -k "$KMJ_ROOT/overlays/local" >/dev/null
  # The image was made again under the same tag: a scaler deployed before is restarted to run it.
  [ -z "$existed" ] || kubectl -n "$NS" rollout restart deployment/kmj-scaler daemonset/kmj-model-cache >/dev/null
  wait_rollout statefulset/rabbitmq 300
  wait_rollout statefulset/postgres 300
  wait_rollout deployment/mlflow 300
  wait_rollout deployment/kmj-scaler 120
  wait_rollout daemonset/kmj-model-cache 120
  kubectl -n "$NS" wait --for=condition=complete job/kmj-setup --timeout=300s >/dev/null ||
    { kubectl -n "$NS" logs job/kmj-setup >&2 || true; die "the setup Job did not complete"; }
  kubectl -n "$NS" logs job/kmj-setup | sed 's/^/[kmj setup] /' >&2
  local i ready=""
  for ((i = 0; i < 150; i++)); do
    ready=$(kubectl -n "$NS" get scaledjob ml-requests -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    [ "$ready" = True ] && break
    sleep 0.2
  done
  [ "$ready" = True ] || { kubectl -n "$NS" describe scaledjob ml-requests >&2; die "ScaledJob ml-requests is not READY"; }
  models
  say "deployed: kubectl -n $NS get scaledjobs,jobs,pods"
}

# models: the sample models and datasets in the cluster's MLflow, as a user registers them.
models() {
  local log="$KMJ_RUN/fixtures-cluster.log"
  eval "$(env_lines)"
  # Registered once per deployment: kept while the cluster's MLflow still has them.
  if [ -f "$KMJ_RUN/fixtures-cluster/fixtures.json" ] &&
    curl -fsS -o /dev/null -u "admin:$KMJ_CLUSTER_MLFLOW_PASSWORD" \
      "$KMJ_CLUSTER_MLFLOW_URL/api/2.0/mlflow/registered-models/get?name=kmj-iris-classifier"; then
    return 0
  fi
  if ! MLFLOW_TRACKING_URI="$KMJ_CLUSTER_MLFLOW_URL" MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$KMJ_CLUSTER_MLFLOW_PASSWORD" \
    "$KMJ_ROOT/.venv/bin/python" "$KMJ_ROOT/scripts/make_test_models.py" --out "$KMJ_RUN/fixtures-cluster" >"$log" 2>&1; then
    tail -30 "$log" >&2
    die "registering the sample models in the cluster's MLflow failed (log: $log)"
  fi
  grep -E '^fixtures' "$log" >&2 || true
}

delete() {
  kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=300s >/dev/null
  "$KMJ_ROOT/scripts/kafka.sh" stop "${KAFKA_CLUSTER[@]}" >&2
  rm -rf "$DIR" "$KMJ_RUN/fixtures-cluster"
  say "deleted namespace $NS"
}

case "${1:-}" in
  "") deploy ;;
  --delete) delete ;;
  --env) env_lines ;;
  *) die "usage: scripts/cluster-deploy.sh [--delete|--env]" ;;
esac

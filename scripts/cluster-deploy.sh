#!/usr/bin/env bash
# Deploys keda-ml-jobs into the cluster of scripts/cluster.sh the way docs/deploy.md tells a user
# to, with overlays/local/ for this machine:
#   1. the project's image, made here and imported (scripts/image.sh import);
#   2. the broker users kmj-scaler and kmj-worker with the permissions docs/deploy.md gives them,
#      on the host's RabbitMQ (make services), and the request queue ml-requests;
#   3. the namespace, then the Secrets: broker URLs, the worker's MLflow user, and the certificates
#      for mutual TLS between KEDA and the scaler (a CA made here, a server certificate for the
#      scaler's Service names, a client certificate for KEDA);
#   4. a Kafka broker for pods (scripts/kafka.sh kafka-cluster 19292 on the node address: Kafka
#      hands clients the address it advertises, so a forwarder from 127.0.0.1 cannot serve pods);
#      the scaler's overlay names it as KAFKA_BROKERS;
#   5. `kubectl apply -k overlays/local/`, then waits until the scaler's pod is Ready and the
#      ScaledJob reports READY.
#
#   scripts/cluster-deploy.sh            idempotent; prints nothing but progress
#   scripts/cluster-deploy.sh --delete   deletes the namespace and the broker users
#
# Passwords and certificates are made once and kept in .run/cluster-deploy/ (mode 0700).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

eval "$("$KMJ_ROOT/scripts/cluster.sh" env)"
NS=kmj
NODE_IP=10.250.0.1
# The pods' Kafka broker: name, port, address (overlays/local/scaler.yaml names it too).
KAFKA_CLUSTER=(kafka-cluster 19292 "$NODE_IP")
DIR="$KMJ_RUN/cluster-deploy"
ctl() { "$KMJ_ROOT/scripts/rabbitmq.sh" ctl kmj "$@"; }

# secret_of NAME: a random password made once and kept under $DIR.
secret_of() {
  local f="$DIR/$1.password"
  [ -s "$f" ] || (umask 077 && openssl rand -hex 16 >"$f")
  cat "$f"
}

# broker_user NAME CONFIGURE WRITE READ: the user exists with this password and these permissions.
broker_user() {
  local user=$1 pw
  pw=$(secret_of "$user")
  if ctl list_users --silent 2>/dev/null | awk '{print $1}' | grep -qx "$user"; then
    ctl change_password "$user" "$pw" >/dev/null
  else
    ctl add_user "$user" "$pw" >/dev/null
  fi
  ctl set_permissions -p / "$user" "$2" "$3" "$4" >/dev/null
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

# declare_queue NAME: the request queue and its dead-letter queue, declared as `kmj submit` and the
# first worker declare them (rabbitmq/topology.ts), with the worker's own user. A ScaledJob whose
# queue does not exist is not READY: the scaler answers NOT_FOUND until something declares it.
declare_queue() {
  (cd "$KMJ_ROOT" && KMJ_QUEUE_URL="amqp://kmj-worker:$(secret_of kmj-worker)@127.0.0.1:5672/" node --input-type=module -e '
    import { connect } from "amqplib";
    const { declareRequestTopology, deadLetterQueueOf } = await import(process.argv[1]);
    const queue = process.argv[2];
    const conn = await connect(process.env.KMJ_QUEUE_URL);
    await declareRequestTopology(conn, queue, { deadLetterQueue: deadLetterQueueOf(queue), maxDeliveries: 5 });
    await conn.close();
  ' "$KMJ_ROOT/dist/rabbitmq/topology.js" "$1")
}

deploy() {
  "$KMJ_ROOT/scripts/image.sh" import
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  umask 077

  broker_user kmj-scaler '^$' '^$' '^$'
  broker_user kmj-worker '^ml-requests(\.dead)?$' '^(amq\.default|ml-requests(\.dead)?)$' '^ml-requests(\.dead)?$'
  declare_queue ml-requests
  "$KMJ_ROOT/scripts/kafka.sh" start "${KAFKA_CLUSTER[@]}" >&2
  certs

  kubectl apply -f "$KMJ_ROOT/manifests/namespace.yaml" >/dev/null
  apply_secret kmj-broker \
    --from-literal=scaler-url="amqp://kmj-scaler:$(secret_of kmj-scaler)@$NODE_IP:5672/" \
    --from-literal=worker-url="amqp://kmj-worker:$(secret_of kmj-worker)@$NODE_IP:5672/"
  # The host's MLflow on port 5000 runs without authentication; the worker still sends these.
  apply_secret kmj-mlflow-worker --from-literal=username=kmj-worker --from-literal=password="$(secret_of kmj-mlflow-worker)"
  apply_secret kmj-scaler-tls --from-file=tls.crt="$DIR/tls/scaler.crt" --from-file=tls.key="$DIR/tls/scaler.key" \
    --from-file=ca.crt="$DIR/tls/ca.crt"
  apply_secret kmj-scaler-client-tls --from-file=ca.crt="$DIR/tls/ca.crt" --from-file=tls.crt="$DIR/tls/keda.crt" \
    --from-file=tls.key="$DIR/tls/keda.key"

  local existed=""
  kubectl -n "$NS" get deployment kmj-scaler >/dev/null 2>&1 && existed=1
  kubectl apply -k "$KMJ_ROOT/overlays/local" >/dev/null
  # The image was made again under the same tag: a scaler deployed before is restarted to run it.
  [ -z "$existed" ] || kubectl -n "$NS" rollout restart deployment/kmj-scaler >/dev/null
  kubectl -n "$NS" rollout status deployment/kmj-scaler --timeout=120s >&2
  local i ready=""
  for ((i = 0; i < 150; i++)); do
    ready=$(kubectl -n "$NS" get scaledjob ml-requests -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    [ "$ready" = True ] && break
    sleep 0.2
  done
  [ "$ready" = True ] || { kubectl -n "$NS" describe scaledjob ml-requests >&2; die "ScaledJob ml-requests is not READY"; }
  say "deployed: kubectl -n $NS get scaledjobs,jobs,pods"
}

delete() {
  kubectl delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
  "$KMJ_ROOT/scripts/kafka.sh" stop "${KAFKA_CLUSTER[@]}" >&2
  ctl delete_user kmj-scaler >/dev/null 2>&1 || true
  ctl delete_user kmj-worker >/dev/null 2>&1 || true
  rm -rf "$DIR"
  say "deleted namespace $NS and the broker users"
}

case "${1:-}" in
  "") deploy ;;
  --delete) delete ;;
  *) die "usage: scripts/cluster-deploy.sh [--delete]" ;;
esac

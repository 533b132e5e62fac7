#!/usr/bin/env bash
# A real single-node Kubernetes with the real KEDA on this machine, on loopback only: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, containerd + runc (Debian's)
# and a kubelet; then what k3s adds to every cluster, cluster DNS (CoreDNS) and storage
# (local-path-provisioner, the default StorageClass), from scripts/cluster-addons/; then KEDA as its
# release manifest installs it, rendered from KEDA's own config/ (scripts/cluster-addons/), its
# operator and admission webhooks running as pods under their own ServiceAccount; and
# kube-state-metrics, for the monitoring case (test/cluster/monitoring.cases.ts). The binaries come
# from scripts/cluster-build.sh (built once per machine, cached outside the clone); their images
# are made here and imported.
#
#   scripts/cluster.sh up       start what is not running (idempotent); prints the kubeconfig
#   scripts/cluster.sh down     stop what `up` started, by PID, and undo every host change it made
#   scripts/cluster.sh status   one line per component
#   scripts/cluster.sh env      `export KUBECONFIG=…`, for eval
#
# Host changes, all undone by `down`: the node address 10.250.0.1/32 on lo (the kubelet refuses a
# loopback node IP; no traffic leaves the host; the apiserver listens on 127.0.0.1, and a forwarder
# on the node address lets pods reach it there, as the `kubernetes` Service says), a route sending
# the service range 10.96.0.0/16 to lo (kube-proxy's rules rewrite every service address to a pod's; without them nothing for that
# range would take the default route), a line in /etc/hosts mapping the node name to the node address (so
# `kubectl logs` reaches the kubelet), the CNI bridge kmj-cni0 and the iptables chains the kubelet,
# kube-proxy and the CNI plugins add (KUBE-*, CNI-*), the kubelet's cgroups, and mounts under the
# state directory. Everything else lives in the state directory, .run/cluster of the checkout.
#
# Pods run on the pod network (the namespace kmj enforces Pod Security "restricted", which forbids
# hostNetwork). RabbitMQ, Postgres and MLflow run in the cluster (scripts/cluster-deploy.sh); the
# host reaches Services at their cluster IPs (kube-proxy's rules, the route above).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

STATE="${KMJ_CLUSTER_STATE:-$KMJ_RUN/cluster}"
NODE=kmj-node
NODE_IP=10.250.0.1
POD_CIDR=10.251.0.0/24
SERVICE_CIDR=10.96.0.0/16
BRIDGE=kmj-cni0
SOCK="$STATE/containerd/containerd.sock"
PKI="$STATE/pki"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
HOSTS_MARK="# kmj-cluster"
COMPONENTS=(etcd kube-apiserver forward-6443 kube-controller-manager kube-scheduler kube-proxy containerd kubelet)
# Pods' volumes of the StorageClass local-path (k3s: /var/lib/rancher/k3s/storage).
LOCAL_STORAGE="$STATE/storage"
ADDONS="$KMJ_ROOT/scripts/cluster-addons"

bin_dir() { "$KMJ_ROOT/scripts/cluster-build.sh" --print-dir 2>/dev/null | sed 's#$#/bin#'; }

pid_of() { [ -f "$PIDS/$1" ] && cat "$PIDS/$1"; }
alive() {
  local pid
  pid=$(pid_of "$1") || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# start NAME CMD...: runs CMD in the background with its log and PID file, unless it runs already.
start() {
  local name=$1
  shift
  if alive "$name"; then return 0; fi
  mkdir -p "$LOGS" "$PIDS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name"
  say "started $name (pid $!, log $LOGS/$name.log)"
}

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds; fails with the log's tail.
wait_for() {
  local what=$1 seconds=$2 i
  shift 2
  for ((i = 0; i < seconds * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  [ -f "$LOGS/$what.log" ] && tail -n 20 "$LOGS/$what.log" >&2
  die "$what is not ready after ${seconds}s"
}

kc() { kubectl --kubeconfig "$PKI/admin.kubeconfig" "$@"; }

# cert NAME CN [O] [SANS]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 org=${3:-} sans=${4:-}
  [ -f "$PKI/$name.crt" ] && return 0
  local subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  {
    echo 'basicConstraints=CA:FALSE'
    echo 'keyUsage=critical,digitalSignature,keyEncipherment'
    echo 'extendedKeyUsage=clientAuth,serverAuth'
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 30 -out "$PKI/$name.crt" -extfile "$PKI/$name.ext" 2>/dev/null
}

# kubeconfig NAME USER: a kubeconfig for the apiserver on 127.0.0.1:6443 with that user's certificate.
kubeconfig() {
  local name=$1 user=$2 file="$PKI/$1.kubeconfig"
  [ -f "$file" ] && return 0
  kubectl config --kubeconfig "$file" set-cluster kmj --server=https://127.0.0.1:6443 --certificate-authority="$PKI/ca.crt" --embed-certs >/dev/null
  kubectl config --kubeconfig "$file" set-credentials "$user" --client-certificate="$PKI/$name.crt" --client-key="$PKI/$name.key" --embed-certs >/dev/null
  kubectl config --kubeconfig "$file" set-context kmj --cluster=kmj --user="$user" >/dev/null
  kubectl config --kubeconfig "$file" use-context kmj >/dev/null
}

make_pki() {
  mkdir -p "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 30 -subj /CN=kmj-cluster-ca \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  fi
  cert apiserver kube-apiserver '' "IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin kubernetes-admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert kubelet "system:node:$NODE" system:nodes "IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE"
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert kube-proxy system:kube-proxy
  [ -f "$PKI/sa.key" ] || openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  [ -f "$PKI/sa.pub" ] || openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  kubeconfig admin kubernetes-admin
  kubeconfig kubelet "system:node:$NODE"
  kubeconfig controller-manager system:kube-controller-manager
  kubeconfig scheduler system:kube-scheduler
  kubeconfig kube-proxy system:kube-proxy
}

host_changes() {
  ip addr show dev lo | grep -q "inet $NODE_IP/32" || as_root ip addr add "$NODE_IP/32" dev lo
  ip route show "$SERVICE_CIDR" | grep -q . || as_root ip route add "$SERVICE_CIDR" dev lo src "$NODE_IP"
  grep -q "$HOSTS_MARK" /etc/hosts || echo "$NODE_IP $NODE $HOSTS_MARK" | as_root tee -a /etc/hosts >/dev/null
}

containerd_config() {
  local bin=$1
  mkdir -p "$STATE/containerd" "$STATE/cni/net.d"
  cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  disable_apparmor = true
  # root here lacks CAP_SYS_RESOURCE: without this every sandbox fails in runc.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  # Pods get routes to the node address and the service range only, through the bridge: there is
  # no default route, so nothing a pod sends can leave the machine.
  cat >"$STATE/cni/net.d/10-kmj.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kmj",
  "plugins": [
    { "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$POD_CIDR" }]], "dataDir": "$STATE/cni/ipam",
        "routes": [{ "dst": "$NODE_IP/32" }, { "dst": "$SERVICE_CIDR" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  : "$bin"
}

kubelet_config() {
  mkdir -p "$STATE/kubelet"
  cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: "$PKI/ca.crt" }
authorization: { mode: Webhook }
tlsCertFile: "$PKI/kubelet.crt"
tlsPrivateKeyFile: "$PKI/kubelet.key"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: "unix://$SOCK"
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
staticPodPath: ""
evictionHard: { memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%" }
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
EOF
}

# pause_image BIN: the sandbox image, made from the pause binary and imported (nothing is pulled).
pause_image() {
  local bin=$1 ctr=(ctr -a "$SOCK" -n k8s.io)
  "${ctr[@]}" images ls -q 2>/dev/null | grep -qx 'registry.k8s.io/pause:3.10' && return 0
  local root="$STATE/images/pause"
  rm -rf "$root" && mkdir -p "$root/rootfs"
  cp "$bin/pause" "$root/rootfs/pause"
  node "$KMJ_ROOT/scripts/image-archive.mjs" --rootfs "$root/rootfs" --tag registry.k8s.io/pause:3.10 \
    --entrypoint /pause --user 65535 --out "$root/pause.tar"
  "${ctr[@]}" images import "$root/pause.tar" >/dev/null
  say "imported the pause image"
}

# binary_image TAG BINARY PATH USER ENTRYPOINT: a one-layer image of one static binary at PATH, run
# as USER, imported unless an image of this binary is there already.
binary_image() {
  local tag=$1 src=$2 path=$3 user=$4 entrypoint=$5 ctr=(ctr -a "$SOCK" -n k8s.io)
  local name root id
  name=$(basename "${tag%%:*}")
  root="$STATE/images/$name"
  id="$(stat -c '%s %Y' "$src") $tag"
  if [ "$(cat "$root.id" 2>/dev/null)" = "$id" ] && "${ctr[@]}" images ls -q 2>/dev/null | grep -qxF "$tag"; then return 0; fi
  rm -rf "$root" && mkdir -p "$root/rootfs$(dirname "$path")" "$root/rootfs/etc" "$root/rootfs/tmp"
  cp "$src" "$root/rootfs$path"
  chmod 1777 "$root/rootfs/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/rootfs/etc/group"
  node "$KMJ_ROOT/scripts/image-archive.mjs" --rootfs "$root/rootfs" --tag "$tag" --entrypoint "$entrypoint" \
    --user "$user" --env PATH=/usr/local/bin:/usr/bin:/bin --out "$root.tar"
  "${ctr[@]}" images import "$root.tar" >/dev/null
  rm -rf "$root" "$root.tar"
  echo "$id" >"$root.id"
  say "imported $tag"
}

# busybox_image TAG: Debian's static busybox, for local-path-provisioner's helper pods (sh, mkdir,
# chmod, rm).
busybox_image() {
  local tag=$1 ctr=(ctr -a "$SOCK" -n k8s.io) root="$STATE/images/busybox" a
  "${ctr[@]}" images ls -q 2>/dev/null | grep -qxF "$tag" && return 0
  rm -rf "$root" && mkdir -p "$root/rootfs/bin" "$root/rootfs/tmp"
  cp /bin/busybox "$root/rootfs/bin/busybox"
  for a in sh mkdir chmod rm ls cat; do ln -s busybox "$root/rootfs/bin/$a"; done
  chmod 1777 "$root/rootfs/tmp"
  node "$KMJ_ROOT/scripts/image-archive.mjs" --rootfs "$root/rootfs" --tag "$tag" --entrypoint /bin/sh \
    --env PATH=/bin --out "$root.tar"
  "${ctr[@]}" images import "$root.tar" >/dev/null
  rm -rf "$root" "$root.tar"
  say "imported $tag"
}

# addons BIN: cluster DNS, storage, KEDA and kube-state-metrics, applied (idempotent) and ready.
addons() {
  local bin=$1 keda_v coredns_v lpp_v busybox_v ksm_v cache
  cache=$(dirname "$bin")
  keda_v=$(awk '$1 == "keda-operator" { sub(/^v/, "", $2); print $2 }' "$bin/.versions")
  coredns_v=$(awk '$1 == "coredns" { sub(/^v/, "", $2); print $2 }' "$bin/.versions")
  lpp_v=$(awk '$1 == "local-path-provisioner" { print $2 }' "$bin/.versions")
  ksm_v=$(awk '$1 == "kube-state-metrics" { print $2 }' "$bin/.versions")
  busybox_v=$(dpkg-query -W -f '${Version}' busybox-static | sed -E 's/^[0-9]+://; s/-.*//')
  binary_image "kmj.local/coredns:$coredns_v" "$bin/coredns" /coredns 65532:65532 /coredns
  binary_image "kmj.local/local-path-provisioner:$lpp_v" "$bin/local-path-provisioner" /usr/bin/local-path-provisioner 0:0 /usr/bin/local-path-provisioner
  busybox_image "kmj.local/busybox:$busybox_v"
  binary_image "kmj.local/keda:$keda_v" "$bin/keda-operator" /keda 65532:65532 /keda
  binary_image "kmj.local/keda-admission-webhooks:$keda_v" "$bin/keda-admission-webhooks" /keda-admission-webhooks 65532:65532 /keda-admission-webhooks
  binary_image "kmj.local/kube-state-metrics:$ksm_v" "$bin/kube-state-metrics" /kube-state-metrics 65534:65534 /kube-state-metrics

  sed -e "s|kmj.local/coredns:[0-9.]*|kmj.local/coredns:$coredns_v|" "$ADDONS/coredns.yaml" | kc apply -f - >/dev/null
  mkdir -p "$LOCAL_STORAGE"
  sed -e "s|KMJ_LOCAL_STORAGE_PATH|$LOCAL_STORAGE|" -e "s|kmj.local/local-path-provisioner:v[0-9.]*|kmj.local/local-path-provisioner:$lpp_v|" \
    -e "s|kmj.local/busybox:[0-9.]*|kmj.local/busybox:$busybox_v|" "$ADDONS/local-storage.yaml" | kc apply -f - >/dev/null

  local release="$STATE/keda-release" rel
  mkdir -p "$release"
  rel=$(realpath --relative-to="$release" "$cache/keda-config")
  sed -e "s|KEDA_CONFIG|$rel|" -e "s|KEDA_VERSION|$keda_v|" "$ADDONS/keda-kustomization.yaml" >"$release/kustomization.yaml"
  sed -e "s|KEDA_VERSION|$keda_v|" "$ADDONS/keda-labels.yaml" >"$release/labels.yaml"
  # Server-side: the ScaledJob CRD is too large for client-side apply's annotation.
  kc kustomize "$release" | kc apply --server-side --force-conflicts -f - >/dev/null
  kc -n kube-system rollout status deployment/coredns --timeout=120s >&2
  kc -n kube-system rollout status deployment/local-path-provisioner --timeout=120s >&2
  kc -n keda rollout status deployment/keda-operator --timeout=180s >&2
  kc -n keda rollout status deployment/keda-admission --timeout=180s >&2
  # kube-state-metrics with the project's ScaledJob configuration (monitoring/), for the monitoring case.
  sed -e "s|kmj.local/kube-state-metrics:v[0-9.]*|kmj.local/kube-state-metrics:$ksm_v|" "$ADDONS/kube-state-metrics.yaml" | kc apply -f - >/dev/null
  kc -n monitoring create configmap kube-state-metrics-crs --from-file=scaledjob.yaml="$KMJ_ROOT/monitoring/kube-state-metrics-scaledjob.yaml" \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc -n monitoring rollout status deployment/kube-state-metrics --timeout=120s >&2
  say "cluster DNS, local-path storage, KEDA $keda_v and kube-state-metrics $ksm_v are ready"
}

up() {
  [ "$(id -u)" = 0 ] || command -v sudo >/dev/null || die "the cluster needs root (or sudo)"
  apt_install containerd runc containernetworking-plugins iptables conntrack ebtables ethtool openssl socat busybox-static
  command -v kubectl >/dev/null || die "kubectl is not on PATH"
  "$KMJ_ROOT/scripts/cluster-build.sh"
  local bin
  bin=$(bin_dir)
  mkdir -p "$STATE"
  make_pki
  host_changes

  start etcd "$bin/etcd" --name kmj --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster kmj=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  wait_for etcd 30 curl -fsS http://127.0.0.1:2381/health

  start kube-apiserver "$bin/kube-apiserver" --bind-address=127.0.0.1 --advertise-address="$NODE_IP" --secure-port=6443 \
    --etcd-servers=http://127.0.0.1:2379 \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" --client-ca-file="$PKI/ca.crt" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=Hostname,InternalIP \
    --allow-privileged=false --profiling=false
  wait_for kube-apiserver 60 kc get --raw /readyz
  # Pods reach the apiserver at the `kubernetes` Service, whose endpoint is the advertised node
  # address; the apiserver itself listens on 127.0.0.1 only.
  start forward-6443 socat "TCP-LISTEN:6443,bind=$NODE_IP,reuseaddr,fork" TCP:127.0.0.1:6443

  start kube-controller-manager "$bin/kube-controller-manager" --bind-address=127.0.0.1 --leader-elect=false \
    --kubeconfig="$PKI/controller-manager.kubeconfig" --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false
  start kube-scheduler "$bin/kube-scheduler" --bind-address=127.0.0.1 --leader-elect=false \
    --kubeconfig="$PKI/scheduler.kubeconfig" --authentication-kubeconfig="$PKI/scheduler.kubeconfig" \
    --authorization-kubeconfig="$PKI/scheduler.kubeconfig" --profiling=false

  start kube-proxy "$bin/kube-proxy" --kubeconfig="$PKI/kube-proxy.kubeconfig" --hostname-override="$NODE" \
    --proxy-mode=iptables --cluster-cidr="$POD_CIDR" --bind-address=127.0.0.1 \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --nodeport-addresses="$NODE_IP/32" --conntrack-max-per-core=0 --profiling=false

  containerd_config "$bin"
  start containerd containerd --config "$STATE/containerd/config.toml"
  wait_for containerd 30 ctr -a "$SOCK" version
  pause_image "$bin"

  kubelet_config
  start kubelet "$bin/kubelet" --config="$STATE/kubelet/config.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
    --root-dir="$STATE/kubelet/root" --hostname-override="$NODE" --node-ip="$NODE_IP"
  wait_for kubelet 90 bash -c "kubectl --kubeconfig '$PKI/admin.kubeconfig' get node '$NODE' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  say "node $NODE is Ready"

  addons "$bin"
  say "export KUBECONFIG=$PKI/admin.kubeconfig"
  echo "$PKI/admin.kubeconfig"
}

# stop NAME: TERM, then KILL after 10 s, by the PID file. `start` made each one a session and
# process-group leader (setsid), so the signal goes to the group: the forwarders' connection
# children stop with them.
stop() {
  local name=$1 pid i
  pid=$(pid_of "$name") || return 0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; } || true
    say "stopped $name"
  fi
  rm -f "$PIDS/$name"
}

down() {
  local ctr=(ctr -a "$SOCK" -n k8s.io) t
  # The pods' Kafka broker (scripts/cluster-deploy.sh) listens on the node address removed below.
  "$KMJ_ROOT/scripts/kafka.sh" stop kafka-cluster 19292 10.250.0.1 >&2 || true
  stop kubelet
  # The pods' containers outlive the kubelet: kill their tasks while containerd still answers.
  if alive containerd; then
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  # Shims of our containerd (their -address names our socket) and whatever runs under them.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $SOCK" 2>/dev/null || true
  # Forwarders an older version started for the host's RabbitMQ and MLflow.
  stop forward-5672
  stop forward-5000
  stop kube-proxy
  stop kube-scheduler
  stop kube-controller-manager
  stop forward-6443
  stop kube-apiserver
  stop etcd
  # Mounts under the state directory (pod volumes, container root filesystems), deepest first.
  grep " $STATE/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do as_root umount -l "$m" 2>/dev/null || true; done
  # The kubelet's cgroups (cgroupfs driver), deepest first.
  find /sys/fs/cgroup -depth -type d \( -name kubepods -o -path '*/kubepods/*' -o -name kubepods.slice \) 2>/dev/null |
    while read -r d; do rmdir "$d" 2>/dev/null || true; done
  # iptables chains the kubelet (KUBE-*) and the CNI plugins (CNI-*) added.
  local table chain
  for table in filter nat mangle; do
    iptables -t "$table" -S 2>/dev/null | awk '/^-A/ && / -j (KUBE|CNI)-/' | sed 's/^-A/-D/' | while read -r rule; do
      eval "as_root iptables -t $table $rule" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
      as_root iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
      as_root iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && as_root ip link delete "$BRIDGE"
  ip route show "$SERVICE_CIDR" | grep -q . && as_root ip route del "$SERVICE_CIDR"
  ip addr show dev lo | grep -q "inet $NODE_IP/32" && as_root ip addr del "$NODE_IP/32" dev lo
  if grep -q "$HOSTS_MARK" /etc/hosts; then
    grep -v "$HOSTS_MARK" /etc/hosts >"$KMJ_RUN/hosts.tmp" && as_root cp "$KMJ_RUN/hosts.tmp" /etc/hosts && rm -f "$KMJ_RUN/hosts.tmp"
  fi
  as_root rm -rf "$STATE"
  say "cluster down; host changes undone"
}

status() {
  local c
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then echo "$c running (pid $(pid_of "$c"))"; else echo "$c stopped"; fi
  done
  if alive kube-apiserver; then kc get nodes --no-headers 2>/dev/null | sed 's/^/node /'; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export KUBECONFIG=$PKI/admin.kubeconfig" ;;
  *) die "usage: scripts/cluster.sh up|down|status|env" ;;
esac

#!/usr/bin/env bash
# Start, stop or check a RabbitMQ node on loopback for tests, benchmarks and the demo.
#
#   scripts/rabbitmq.sh start [NAME AMQP_PORT MGMT_PORT DIST_PORT]
#   scripts/rabbitmq.sh stop  [NAME ...]
#   scripts/rabbitmq.sh ctl   NAME rabbitmqctl-args...
#   scripts/rabbitmq.sh version
#
# The default node is kmj@localhost on 5672 (AMQP) and 15672 (management). When something already
# answers on the AMQP port, start leaves it alone. State and logs live in .run/rabbitmq-NAME/.
#
# RabbitMQ 4.0 with Erlang 27, as a user runs it in 2026, from a Debian 13 root directory
# (scripts/debian-root.sh), not the host's Debian 12 (3.10). Each command runs chrooted into that
# root in a mount namespace of its own, with the node's state directory mounted at
# /var/lib/kmj/node: nothing is mounted on the host, and the mounts go with the node's processes.
# The network is the host's, so the node listens on the host's 127.0.0.1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cmd=${1:-start}
name=${2:-kmj}
amqp_port=${3:-5672}
mgmt_port=${4:-15672}
dist_port=${5:-25672}
base="$KMJ_RUN/rabbitmq-$name"
bin=/usr/lib/rabbitmq/bin
# Where the node's state directory appears inside the root.
inside=/var/lib/kmj/node

# in_root CMD...: CMD chrooted into the Debian 13 root, with the node's state at $inside.
in_root() {
  local root
  root=$("$KMJ_ROOT/scripts/debian-root.sh" rabbitmq rabbitmq-server)
  mkdir -p "$base" "$root$inside"
  as_root unshare --mount --propagation private -- bash -c '
    set -e
    root=$1 base=$2 inside=$3
    shift 3
    mount --bind "$base" "$root$inside"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys"
    exec chroot "$root" "$@"' in_root "$root" "$base" "$inside" "$@"
}

# The command-line tools' settings: the node's Erlang cookie is in its HOME.
cli_env() {
  export ERL_EPMD_ADDRESS=127.0.0.1
  export HOME="$inside"
  export LANG=C.UTF-8
}

# The node's settings, for the server.
node_env() {
  cli_env
  export RABBITMQ_NODENAME="$name@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$amqp_port"
  export RABBITMQ_DIST_PORT="$dist_port"
  export RABBITMQ_MNESIA_BASE="$inside/mnesia"
  export RABBITMQ_LOG_BASE="$inside/log"
  export RABBITMQ_PID_FILE="$inside/pid"
  export RABBITMQ_CONFIG_FILE="$inside/rabbitmq"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$inside/enabled_plugins"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

case "$cmd" in
  start)
    if port_open 127.0.0.1 "$amqp_port"; then
      say "RabbitMQ already answers on 127.0.0.1:$amqp_port"
      exit 0
    fi
    # Test data only: a node's data from another RabbitMQ version (3.10 from Debian 12 before)
    # cannot be upgraded in place (4.0 upgrades from 3.13 with every feature flag on), so it goes.
    version=$("$0" version)
    if [ -d "$base/mnesia" ] && [ "$(cat "$base/version" 2>/dev/null)" != "$version" ]; then
      say "removing node $name's data from another RabbitMQ version ($(cat "$base/version" 2>/dev/null || echo 3.x))"
      rm -rf "$base/mnesia" "$base/log" "$base/.erlang.cookie"
    fi
    mkdir -p "$base/mnesia" "$base/log"
    echo "$version" >"$base/version"
    cat >"$base/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp_port
management.tcp.ip = 127.0.0.1
management.tcp.port = $mgmt_port
collect_statistics_interval = 1000
log.console = false
log.file.level = warning
CONF
    echo '[rabbitmq_management].' >"$base/enabled_plugins"
    node_env
    say "starting RabbitMQ $version node $RABBITMQ_NODENAME on 127.0.0.1:$amqp_port (management $mgmt_port)"
    in_root "$bin/rabbitmq-server" -detached >"$base/startup.log" 2>&1
    wait_port 127.0.0.1 "$amqp_port" 90 "RabbitMQ ($name)"
    wait_port 127.0.0.1 "$mgmt_port" 60 "RabbitMQ management ($name)"
    say "RabbitMQ ($name) is up"
    ;;
  stop)
    [ -d "$base" ] || exit 0
    cli_env
    in_root "$bin/rabbitmqctl" -n "$name@localhost" stop >/dev/null 2>&1 || true
    # The node started Erlang's port mapper (epmd), which outlives it: stopped with the last node.
    if ! in_root epmd -names 2>/dev/null | grep -q '^name '; then in_root epmd -kill >/dev/null 2>&1 || true; fi
    ;;
  ctl)
    shift 2
    cli_env
    in_root "$bin/rabbitmqctl" -n "$name@localhost" "$@"
    ;;
  version)
    awk '$1 == "rabbitmq-server" {print $2}' "$("$KMJ_ROOT/scripts/debian-root.sh" rabbitmq rabbitmq-server)/.kmj-versions"
    ;;
  *)
    die "unknown command '$cmd' (start, stop, ctl, version)"
    ;;
esac

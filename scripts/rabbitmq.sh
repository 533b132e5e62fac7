#!/usr/bin/env bash
# Start, stop or check a RabbitMQ node on loopback for tests, benchmarks and the demo.
#
#   scripts/rabbitmq.sh start [NAME AMQP_PORT MGMT_PORT DIST_PORT]
#   scripts/rabbitmq.sh stop  [NAME ...]
#   scripts/rabbitmq.sh ctl   NAME rabbitmqctl-args...
#
# The default node is kmj@localhost on 5672 (AMQP) and 15672 (management). When something already
# answers on the AMQP port, start leaves it alone. State and logs live in .run/rabbitmq-NAME/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cmd=${1:-start}
name=${2:-kmj}
amqp_port=${3:-5672}
mgmt_port=${4:-15672}
dist_port=${5:-25672}
base="$KMJ_RUN/rabbitmq-$name"
bin=/usr/lib/rabbitmq/bin

node_env() {
  export RABBITMQ_NODENAME="$name@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$amqp_port"
  export RABBITMQ_DIST_PORT="$dist_port"
  export RABBITMQ_MNESIA_BASE="$base/mnesia"
  export RABBITMQ_LOG_BASE="$base/log"
  export RABBITMQ_PID_FILE="$base/pid"
  export RABBITMQ_CONFIG_FILE="$base/rabbitmq"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export HOME="${HOME:-/root}"
}

case "$cmd" in
  start)
    if port_open 127.0.0.1 "$amqp_port"; then
      say "RabbitMQ already answers on 127.0.0.1:$amqp_port"
      exit 0
    fi
    [ -x "$bin/rabbitmq-server" ] || apt_install rabbitmq-server
    # Debian's package starts its own node through invoke-rc.d where allowed; ours is separate.
    mkdir -p "$base/mnesia" "$base/log"
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
    say "starting RabbitMQ node $RABBITMQ_NODENAME on 127.0.0.1:$amqp_port (management $mgmt_port)"
    "$bin/rabbitmq-server" -detached >"$base/startup.log" 2>&1
    wait_port 127.0.0.1 "$amqp_port" 90 "RabbitMQ ($name)"
    wait_port 127.0.0.1 "$mgmt_port" 60 "RabbitMQ management ($name)"
    say "RabbitMQ ($name) is up"
    ;;
  stop)
    export ERL_EPMD_ADDRESS=127.0.0.1 HOME="${HOME:-/root}"
    "$bin/rabbitmqctl" -n "$name@localhost" stop >/dev/null 2>&1 || true
    ;;
  ctl)
    shift 2
    export ERL_EPMD_ADDRESS=127.0.0.1 HOME="${HOME:-/root}"
    exec "$bin/rabbitmqctl" -n "$name@localhost" "$@"
    ;;
  *)
    die "unknown command '$cmd' (start, stop, ctl)"
    ;;
esac

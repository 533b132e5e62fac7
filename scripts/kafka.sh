#!/usr/bin/env bash
# Start, stop or check a Kafka broker on loopback for tests and benchmarks: Kafka 4 in KRaft mode
# (one process, broker and controller), from the Maven Central jars, with the machine's Java 17.
#
#   scripts/kafka.sh start [NAME PORT [HOST]]    idempotent: leaves a broker that already answers alone
#   scripts/kafka.sh stop [NAME PORT [HOST]]     stops the broker this checkout started (by PID)
#   scripts/kafka.sh status [NAME PORT [HOST]]
#
# NAME (default kafka) and PORT (default 19092) let a test run a broker of its own, to stop and
# start it; HOST (default 127.0.0.1) is where it listens and what it advertises: the cluster's
# node address 10.250.0.1 for pods (scripts/cluster-deploy.sh). Listeners, all on HOST:
#   PORT    PLAINTEXT
#   PORT+1  CONTROLLER (KRaft)
#   PORT+2  SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
#   PORT+3  SASL_SSL, the same mechanisms over TLS: a certificate for HOST signed by a CA made
#           here, .run/NAME/tls/ca.crt (clients trust it with KAFKA_TLS_CA_FILE)
# SASL users, made when the storage is formatted: kmj / kmj-secret (PLAIN and both SCRAMs).
#
# The jars are fetched once per machine into ${KMJ_KAFKA_CACHE:-/var/cache/keda-ml-jobs/kafka}/V/
# with `mvn dependency:copy-dependencies` (Maven Central is reachable here), slf4j-api pinned to 2.x
# (Maven picks 1.7 otherwise and the broker's log goes silent). State and log: .run/NAME/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

version=${KMJ_KAFKA_VERSION:-4.4.0}
cache="${KMJ_KAFKA_CACHE:-/var/cache/keda-ml-jobs/kafka}/$version"
name=${2:-kafka}
port=${3:-19092}
host=${4:-127.0.0.1}
controller_port=$((port + 1))
sasl_port=$((port + 2))
ssl_port=$((port + 3))
base="$KMJ_RUN/$name"
user=kmj
password=kmj-secret

fetch_jars() {
  [ -f "$cache/stamp" ] && return 0
  command -v mvn >/dev/null || die "mvn is needed to fetch the Kafka jars from Maven Central (apt-get install maven)"
  say "fetching Kafka $version jars from Maven Central into $cache (once per machine, ~30 s)"
  local work
  work=$(mktemp -d)
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>keda-ml-jobs</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
  </dependencies>
</project>
EOF
  mkdir -p "$cache"
  (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$cache/libs.partial") >&2
  rm -rf "$cache/libs"
  mv "$cache/libs.partial" "$cache/libs"
  rm -rf "$work"
  touch "$cache/stamp"
}

# The broker's TLS certificate for HOST and the CA that signs it, made once per state directory.
make_tls() {
  local d="$base/tls"
  # Kept while it is good for another day; made again (CA included) otherwise.
  [ -f "$d/server.pem" ] && openssl x509 -checkend 86400 -noout -in "$d/server.crt" >/dev/null 2>&1 && return 0
  rm -rf "$d"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=kmj-kafka-test-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,DNS:localhost\n' "$host" >"$d/server.ext"
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
    -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
  # A PEM key store: the (unencrypted PKCS#8) key, then the certificate.
  cat "$d/server.key" "$d/server.crt" >"$d/server.pem"
}

write_config() {
  mkdir -p "$base/data"
  cat >"$base/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$host:$controller_port
listeners=PLAINTEXT://$host:$port,CONTROLLER://$host:$controller_port,SASL_PLAINTEXT://$host:$sasl_port,SASL_SSL://$host:$ssl_port
advertised.listeners=PLAINTEXT://$host:$port,SASL_PLAINTEXT://$host:$sasl_port,SASL_SSL://$host:$ssl_port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$user="$password";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$user="$password";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$base/tls/server.pem
log.dirs=$base/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
}

# The broker's JVM, for the storage tool and the broker alike.
java_kafka=(java -Xms256m -Xmx512m -Dlog4j2.configurationFile="$base/log4j2.properties" -cp "$cache/libs/*")

case "${1:-start}" in
  start)
    if port_open "$host" "$port"; then
      say "Kafka already answers on $host:$port"
      exit 0
    fi
    command -v java >/dev/null || die "java (17 or later) is needed for the Kafka broker"
    fetch_jars
    make_tls
    write_config
    printf 'rootLogger.level=INFO\nrootLogger.appenderRef.f.ref=F\nappender.f.type=File\nappender.f.name=F\nappender.f.fileName=%s\nappender.f.layout.type=PatternLayout\nappender.f.layout.pattern=[%%d] %%p %%m (%%c)%%n\n' "$base/server.log" >"$base/log4j2.properties"
    if [ ! -f "$base/data/meta.properties" ]; then
      cid=$("${java_kafka[@]}" kafka.tools.StorageTool random-uuid)
      "${java_kafka[@]}" kafka.tools.StorageTool format -t "$cid" -c "$base/server.properties" \
        --add-scram "SCRAM-SHA-256=[name=$user,password=$password]" \
        --add-scram "SCRAM-SHA-512=[name=$user,password=$password]" >"$base/format.log" 2>&1 ||
        { tail -5 "$base/format.log" >&2; die "formatting the Kafka storage failed"; }
    fi
    say "starting Kafka $version (KRaft) \"$name\" on $host:$port, SASL on $sasl_port"
    rm -f "$base/server.log" # its "Kafka Server started" line must be this start's
    nohup "${java_kafka[@]}" kafka.Kafka "$base/server.properties" >"$base/stdout.log" 2>&1 &
    echo $! >"$base/pid"
    for ((i = 0; i < 120; i++)); do
      if grep -q "Kafka Server started" "$base/server.log" 2>/dev/null && port_open "$host" "$port"; then
        say "Kafka is up"
        exit 0
      fi
      kill -0 "$(cat "$base/pid")" 2>/dev/null || { tail -20 "$base/stdout.log" "$base/server.log" >&2 2>/dev/null; die "Kafka exited while starting"; }
      sleep 0.5
    done
    tail -20 "$base/server.log" >&2 2>/dev/null || true
    die "Kafka did not start within 60 s"
    ;;
  stop)
    if [ -f "$base/pid" ]; then
      pid=$(cat "$base/pid")
      kill "$pid" 2>/dev/null || true
      for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$base/pid"
      say "Kafka stopped"
    fi
    ;;
  status)
    if port_open "$host" "$port"; then echo "Kafka answers on $host:$port"; else echo "Kafka is not running"; exit 1; fi
    ;;
  *)
    die "usage: scripts/kafka.sh start|stop|status [NAME PORT [HOST]]"
    ;;
esac

#!/usr/bin/env bash
# A real Apache Kafka broker for the test suite: one KRaft node (broker and controller in one JVM),
# bound to 127.0.0.1 only. No Docker and no download site but Maven Central, so the broker is put
# together from its Maven artifacts (the same jars as the release tarball's libs/) instead of the
# tarball, and run with plain `java -cp`.
#
#   scripts/kafka-broker.sh fetch                          resolve the jars into the cache (no-op if there)
#   scripts/kafka-broker.sh start DIR PORT [CONTROLLER]    format DIR once, start, wait until it serves
#   scripts/kafka-broker.sh stop DIR [TIMEOUT]             SIGTERM, then SIGKILL after TIMEOUT seconds
#   scripts/kafka-broker.sh classpath                      print the cache's classpath (for debugging)
#
# Environment: FLOWAUDIT_KAFKA_CACHE (where the jars go), FLOWAUDIT_KAFKA_START_TIMEOUT (seconds,
# default 90), JAVA (the java binary, default: $JAVA_HOME/bin/java or java on PATH).
set -euo pipefail

# The one place the Kafka version is pinned. 4.x runs KRaft only (no ZooKeeper) and needs Java 17+.
KAFKA_VERSION=4.4.0
SCALA_BINARY=2.13
# Pinned so that a fetch does the same thing everywhere (Maven 3.8 would otherwise pick plugin 2.8).
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

CACHE=${FLOWAUDIT_KAFKA_CACHE:-$HOME/.cache/flowaudit/kafka-$KAFKA_VERSION}
MARKER=$CACHE/.complete
JAVA=${JAVA:-${JAVA_HOME:+$JAVA_HOME/bin/}java}

die() {
  echo "kafka-broker.sh: $*" >&2
  exit 1
}

# --- fetch -------------------------------------------------------------------------------------------

# The cache is complete when the marker exists and every jar it lists is present: the marker is written
# last, so an interrupted fetch leaves no marker and the next fetch starts over.
cache_complete() {
  [ -f "$MARKER" ] || return 1
  local jar
  while IFS= read -r jar; do
    [ -n "$jar" ] && [ ! -f "$CACHE/libs/$jar" ] && return 1
  done < <(tail -n +2 "$MARKER")
  [ "$(head -n 1 "$MARKER")" = "kafka_$SCALA_BINARY-$KAFKA_VERSION" ]
}

# Maven on the throwaway project in WORK; its output goes to WORK/maven.log and is shown on failure only.
maven() {
  local work=$1
  shift
  if ! mvn -B --no-transfer-progress -f "$work/pom.xml" "$@" >>"$work/maven.log" 2>&1; then
    tail -n 40 "$work/maven.log" >&2
    die "Maven failed: mvn $*"
  fi
}

fetch() {
  if cache_complete; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn is not installed (Debian package: maven)"
  mkdir -p "$(dirname "$CACHE")"
  # Two test runs fetching at once would write the same directory: one waits for the other. The lock
  # is held by a subshell, so that the broker started after a fetch does not inherit it.
  (
    flock 9
    cache_complete || fetch_locked
  ) 9>"$CACHE.lock"
}

fetch_locked() {
  # Work beside the cache so that the final move is a rename on the same file system. This runs in
  # fetch's subshell: its EXIT is the end of the fetch, and `work` is global so the trap still sees it.
  work=$(mktemp -d "$(dirname "$CACHE")/.fetch-kafka-$KAFKA_VERSION.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # A throwaway project whose only dependency is the broker: copy-dependencies then brings kafka_2.13
  # and its runtime closure (kafka-server, -metadata, -raft, -storage, -clients, scala-library, ...).
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>flowaudit.test</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_BINARY</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  echo "fetching kafka_$SCALA_BINARY $KAFKA_VERSION and its runtime dependencies from Maven Central" >&2
  maven "$work" "$DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime -DoutputDirectory="$work/libs"
  # Kafka's POM brings log4j-core and slf4j-api but no binding between them (the release tarball adds
  # log4j-slf4j-impl itself); without it slf4j drops every log line. Take the binding of the very
  # log4j version Kafka resolved to, so that no second version is pinned here.
  local log4j_core=("$work"/libs/log4j-core-*.jar) log4j_version
  [ -f "${log4j_core[0]}" ] || die "Kafka $KAFKA_VERSION resolved no log4j-core; cannot choose the slf4j binding"
  log4j_version=${log4j_core[0]##*/log4j-core-}
  log4j_version=${log4j_version%.jar}
  maven "$work" "$DEPENDENCY_PLUGIN:copy" \
    -Dartifact="org.apache.logging.log4j:log4j-slf4j-impl:$log4j_version" -DoutputDirectory="$work/libs"
  [ -f "$work/libs/kafka_$SCALA_BINARY-$KAFKA_VERSION.jar" ] || die "Maven brought no kafka_$SCALA_BINARY jar"
  local jar
  {
    echo "kafka_$SCALA_BINARY-$KAFKA_VERSION"
    for jar in "$work"/libs/*.jar; do echo "${jar##*/}"; done
  } >"$work/marker"
  rm -rf "$CACHE"
  mkdir -p "$CACHE"
  mv "$work/libs" "$CACHE/libs"
  mv "$work/marker" "$MARKER"
  echo "cached $(($(wc -l <"$MARKER") - 1)) jars in $CACHE" >&2
}

classpath() {
  cache_complete || die "the cache $CACHE is incomplete: run '$0 fetch'"
  echo "$CACHE/libs/*"
}

# --- processes ---------------------------------------------------------------------------------------

# True while PID runs as this DIR's broker. A zombie (killed, not yet reaped) counts as stopped, and a
# pid reused by an unrelated process after a crash is not ours to signal.
broker_alive() {
  local pid=$1 dir=$2 state
  [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/server.properties"
}

port_answers() {
  # bash's /dev/tcp connects without any extra tool; the subshell closes the socket again.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

write_config() {
  local dir=$1 port=$2 controller_port=$3
  cat >"$dir/server.properties" <<EOF
# Written by scripts/kafka-broker.sh for the test suite; rewritten on every start.
# One KRaft node that is both broker and controller (what a single-node cluster is in Kafka 4).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
# Both listeners bind to 127.0.0.1 only; clients are told the same address.
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
# Tests create their topics with the partition counts they mean; a typo must not create one.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
# One node: every internal topic has one replica. Few partitions for __consumer_offsets, because
# creating the default 50 on the first group commit costs seconds on a small machine.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A test's consumer group must not wait the default 3 s for more members before its first assignment.
group.initial.rebalance.delay.ms=0
# Small, quickly rolled segments; nothing of a test run needs to be kept for long.
log.segment.bytes=16777216
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
EOF
  # Kafka 4 logs through log4j2 (slf4j -> log4j-slf4j-impl); everything goes to DIR/server.log.
  cat >"$dir/log4j2.properties" <<EOF
status = warn
# Keep logging through the JVM's shutdown (the broker logs its controlled shutdown after SIGTERM).
shutdownHook = disable
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# The per-request state changes and controller chatter drown what a failing test needs to see.
logger.state.name = state.change.logger
logger.state.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = WARN
EOF
}

# JVM settings (into the array JVM): a small heap, since a test broker holds little; no JMX port; the
# logging config above. On a 2-core machine the JVM's start is CPU-bound: the serial collector and the
# C1 compiler only (no C2 compile threads) started the broker in about 2/3 of the time of Kafka's own
# G1 settings (interleaved runs, fresh and restarted), and a test's load does not need C2's code.
set_java_options() {
  local dir=$1
  JVM=(-Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$dir/log4j2.properties" "-Dkafka.logs.dir=$dir" -cp "$(classpath)")
}

start() {
  local dir port controller_port
  [ $# -ge 2 ] || die "usage: $0 start DIR PORT [CONTROLLER_PORT]"
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  port=$2
  controller_port=${3:-$((port + 1))}
  command -v "$JAVA" >/dev/null 2>&1 || die "java is not installed (Kafka $KAFKA_VERSION needs Java 17+)"
  fetch
  if [ -f "$dir/broker.pid" ] && broker_alive "$(cat "$dir/broker.pid")" "$dir"; then
    die "a broker already runs from $dir (pid $(cat "$dir/broker.pid"))"
  fi
  port_answers "$port" && die "port $port on 127.0.0.1 is already in use"
  port_answers "$controller_port" && die "port $controller_port on 127.0.0.1 is already in use"
  mkdir -p "$dir/data"
  write_config "$dir" "$port" "$controller_port"
  local -a JVM
  set_java_options "$dir"
  # Format once: a restart on the same DIR keeps its cluster id, topics and committed offsets.
  if [ ! -f "$dir/data/meta.properties" ]; then
    # A cluster id is 16 random bytes in URL-safe base64 without padding (Kafka's Uuid); generated
    # here rather than by `StorageTool random-uuid` to save a JVM start. Like Kafka, avoid a leading '-'.
    local cluster_id=-
    while [ "${cluster_id#-}" != "$cluster_id" ]; do
      cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    done
    echo "$cluster_id" >"$dir/cluster.id"
    if ! "$JAVA" "${JVM[@]}" kafka.tools.StorageTool format \
      --cluster-id "$cluster_id" --config "$dir/server.properties" >"$dir/format.log" 2>&1; then
      cat "$dir/format.log" >&2
      die "formatting $dir/data failed"
    fi
  fi
  # Only lines logged by this start count as readiness (server.log keeps the earlier runs).
  local log_offset=0
  [ -f "$dir/server.log" ] && log_offset=$(stat -c %s "$dir/server.log")
  # In the background, detached from our stdin/stdout so that a caller capturing this script's
  # output does not wait for the broker; the JVM's own output (crashes, GC warnings) goes to a file.
  "$JAVA" "${JVM[@]}" kafka.Kafka "$dir/server.properties" </dev/null >>"$dir/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/broker.pid"
  local timeout=${FLOWAUDIT_KAFKA_START_TIMEOUT:-90}
  local deadline=$((SECONDS + timeout))
  # Ready when the broker says it started (KafkaRaftServer logs it once the broker is unfenced and its
  # socket server accepts requests) and the port answers; a JVM that exits ends the wait at once.
  until port_answers "$port" && tail -c +"$((log_offset + 1))" "$dir/server.log" 2>/dev/null |
    grep -q 'Kafka Server started'; do
    if ! broker_alive "$pid" "$dir"; then
      tail -n 40 "$dir/stdout.log" "$dir/server.log" >&2 2>/dev/null || true
      die "the broker exited during startup (logs in $dir)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 40 "$dir/server.log" >&2 2>/dev/null || true
      stop "$dir" 5 || true
      die "the broker did not start within $timeout s (logs in $dir)"
    fi
    sleep 0.1
  done
  echo "kafka $KAFKA_VERSION broker pid $pid at 127.0.0.1:$port (controller 127.0.0.1:$controller_port)" >&2
}

stop() {
  [ $# -ge 1 ] || die "usage: $0 stop DIR [TIMEOUT]"
  local dir timeout=${2:-30} pid
  dir=$(cd "$1" && pwd)
  [ -f "$dir/broker.pid" ] || return 0
  pid=$(cat "$dir/broker.pid")
  if broker_alive "$pid" "$dir"; then
    # SIGTERM is Kafka's controlled shutdown: it flushes the logs and closes the metadata log cleanly.
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while broker_alive "$pid" "$dir" && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.1
    done
    if broker_alive "$pid" "$dir"; then
      echo "kafka-broker.sh: broker pid $pid ignored SIGTERM for $timeout s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      while broker_alive "$pid" "$dir"; do
        sleep 0.1
      done
    fi
  fi
  rm -f "$dir/broker.pid"
}

case "${1:-}" in
  fetch) fetch ;;
  start) shift && start "$@" ;;
  stop) shift && stop "$@" ;;
  classpath) classpath ;;
  *) die "usage: $0 fetch | start DIR PORT [CONTROLLER_PORT] | stop DIR [TIMEOUT] | classpath" ;;
esac

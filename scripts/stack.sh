#!/usr/bin/env bash
# Local stack without Docker: a single-node Apache Kafka broker (KRaft, combined broker+controller,
# from its Maven Central jars) and Debian's redis-server, both on 127.0.0.1.
#
#   scripts/stack.sh up       start what is not running, wait until both answer, print the settings
#   scripts/stack.sh down     stop both
#   scripts/stack.sh status   say what runs
#   scripts/stack.sh reset    stop both and delete their data (every topic, group and key): a
#                             broker that kept thousands of test partitions is slower to work with
#   scripts/stack.sh env      print the settings (shell `export` lines) without starting anything
#
# Settings (environment):
#   NEXUS_KAFKA_BOOTSTRAP   use this broker instead of starting one (host:port)
#   NEXUS_REDIS_URL         use this Redis instead of starting one (redis://host:port/db)
#   NEXUS_STACK_DIR         data, logs and pid files              (default: <repo>/.stack)
#   NEXUS_STACK_CACHE       where the broker's jars are kept      (default: ~/.cache/nexus-streams)
#   NEXUS_KAFKA_PORT        broker port                           (default: 19092)
#   NEXUS_KAFKA_CONTROLLER_PORT  KRaft controller port            (default: 19093)
#   NEXUS_REDIS_PORT        Redis port                            (default: 16379)
#   NEXUS_KAFKA_HEAP        JVM heap of the broker                (default: 512m)
#   NEXUS_STACK_TIMEOUT_S   how long `up` waits for both to answer (default: 120)
#   NEXUS_KAFKA_SASL_PORT   also a SASL_PLAINTEXT listener (PLAIN) on this port (default: none)
#   NEXUS_KAFKA_SASL_USERS  its users, `name:password[,name:password]` (with NEXUS_KAFKA_SASL_PORT)
#
# Redis persists as scripts/redis/redis.conf says (AOF, fsync before each reply: docs/operations.md).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
stack_dir=${NEXUS_STACK_DIR:-$repo/.stack}
cache_dir=${NEXUS_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nexus-streams}
kafka_port=${NEXUS_KAFKA_PORT:-19092}
controller_port=${NEXUS_KAFKA_CONTROLLER_PORT:-19093}
redis_port=${NEXUS_REDIS_PORT:-16379}
kafka_heap=${NEXUS_KAFKA_HEAP:-512m}
timeout_s=${NEXUS_STACK_TIMEOUT_S:-120}
sasl_port=${NEXUS_KAFKA_SASL_PORT:-}
sasl_users=${NEXUS_KAFKA_SASL_USERS:-}
pom=$repo/scripts/kafka/pom.xml
redis_conf=$repo/scripts/redis/redis.conf
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
libs=$cache_dir/kafka-$kafka_version/libs

external_kafka=${NEXUS_KAFKA_BOOTSTRAP:-}
external_redis=${NEXUS_REDIS_URL:-}
bootstrap=${external_kafka:-127.0.0.1:$kafka_port}
redis_url=${external_redis:-redis://127.0.0.1:$redis_port/0}

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

# host:port answers a TCP connect within one second
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# a killed daemon nobody reaped (PID 1 of a container may not) is a zombie: not alive
pid_alive() {
  [ -f "$1" ] || return 1
  local pid
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

wait_until() { # description, command...
  local what=$1; shift
  local deadline=$((SECONDS + timeout_s))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
  log "$what is ready"
}

apt_install() {
  log "installing $* with apt"
  local sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

ensure_java() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v java >/dev/null || die "java not found: install a Java 17 JDK"
}

ensure_kafka_jars() {
  if [ -f "$libs/.complete" ]; then return; fi
  command -v mvn >/dev/null || apt_install maven
  command -v mvn >/dev/null || die "mvn not found: install Maven"
  log "resolving Apache Kafka $kafka_version into $libs (first run only)"
  rm -rf "$libs" && mkdir -p "$libs"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$libs" >"$cache_dir/mvn-kafka-$kafka_version.log" 2>&1 \
    || die "mvn could not resolve Kafka; see $cache_dir/mvn-kafka-$kafka_version.log"
  touch "$libs/.complete"
}

ensure_redis_server() {
  command -v redis-server >/dev/null || apt_install redis-server
  command -v redis-server >/dev/null || die "redis-server could not be installed"
}

kafka_ready() {
  port_open 127.0.0.1 "$kafka_port" && grep -q 'Kafka Server started' "$stack_dir/logs/kafka.log" 2>/dev/null
}

redis_ready() {
  [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = "PONG" ]
}

# AOF on and no rewrite pending: what the server acknowledges from now on is in the AOF
redis_aof_ready() {
  local info
  info=$(redis-cli -p "$redis_port" info persistence 2>/dev/null) || return 1
  grep -q '^aof_enabled:1' <<<"$info" && grep -q '^aof_rewrite_in_progress:0' <<<"$info" \
    && grep -q '^aof_rewrite_scheduled:0' <<<"$info"
}

# scripts/redis/redis.conf on the running server, one CONFIG SET per line (no-ops when it already
# runs with it). For a server an older stack.sh started without AOF, and for one started without
# AOF on purpose (below): Redis writes its data set into a new AOF, without a restart.
apply_redis_conf() {
  local name value
  while read -r name value; do
    case $name in '' | '#'*) continue ;; esac
    [ "$(redis-cli -p "$redis_port" config set "$name" "$value")" = OK ] \
      || die "redis on port $redis_port refused CONFIG SET $name $value (from $redis_conf)"
  done <"$redis_conf"
  wait_until "redis AOF" redis_aof_ready \
    || die "redis did not write its AOF within ${timeout_s}s; see $stack_dir/logs/redis.log"
}

# the SASL_PLAINTEXT listener's lines (none without NEXUS_KAFKA_SASL_PORT): the PLAIN users of
# NEXUS_KAFKA_SASL_USERS, for tests of clients with a Kafka identity (docs/security.md)
sasl_config() {
  [ -n "$sasl_port" ] || return 0
  [ -n "$sasl_users" ] || die "NEXUS_KAFKA_SASL_PORT needs NEXUS_KAFKA_SASL_USERS (name:password,...)"
  local jaas="org.apache.kafka.common.security.plain.PlainLoginModule required" pair
  IFS=, read -ra pairs <<<"$sasl_users"
  for pair in "${pairs[@]}"; do
    [[ $pair == *:* ]] || die "NEXUS_KAFKA_SASL_USERS: '$pair' is not name:password"
    jaas+=" user_${pair%%:*}=\"${pair#*:}\""
  done
  printf 'sasl.enabled.mechanisms=PLAIN\n'
  printf 'listener.name.sasl_plaintext.plain.sasl.jaas.config=%s;\n' "$jaas"
}

write_kafka_config() {
  local conf=$stack_dir/kafka/server.properties
  local listeners="PLAINTEXT://127.0.0.1:$kafka_port" map="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [ -n "$sasl_port" ]; then
    listeners+=",SASL_PLAINTEXT://127.0.0.1:$sasl_port"
    map+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  sasl_config >/dev/null  # a malformed NEXUS_KAFKA_SASL_USERS stops here (not inside the heredoc)
  mkdir -p "$stack_dir/kafka/data" "$stack_dir/logs"
  cat >"$conf" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=$listeners,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$map
$(sasl_config)
log.dirs=$stack_dir/kafka/data
num.partitions=1
# The worker creates its topics with the partition count it needs; a topic created by accident
# (a typo, a client that ran first) would break co-partitioning, so none are created implicitly.
auto.create.topics.enable=false
# one node: every internal topic has one replica
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# fast tests: no wait for more members before the first rebalance
group.initial.rebalance.delay.ms=0
# lets a worker run with a session timeout under the default 6 s (fast fail-over; docs/operations.md)
group.min.session.timeout.ms=1000
log.retention.hours=24
log.segment.bytes=67108864
EOF
  cat >"$stack_dir/kafka/log4j2.yaml" <<EOF
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        Pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
EOF
}

start_kafka() {
  if [ -n "$external_kafka" ]; then log "using the broker at $external_kafka (NEXUS_KAFKA_BOOTSTRAP)"; return; fi
  local pidf=$stack_dir/kafka.pid
  if pid_alive "$pidf"; then log "kafka already running (pid $(cat "$pidf"))"; return; fi
  port_open 127.0.0.1 "$kafka_port" && die "port $kafka_port is taken by another process; set NEXUS_KAFKA_PORT"
  ensure_java
  ensure_kafka_jars
  write_kafka_config
  local conf=$stack_dir/kafka/server.properties cp="$libs/*"
  local jvm=(java "-Xms$kafka_heap" "-Xmx$kafka_heap" -XX:+UseG1GC -Djava.awt.headless=true
             "-Dlog4j2.configurationFile=$stack_dir/kafka/log4j2.yaml" -cp "$cp")
  if [ ! -f "$stack_dir/kafka/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$("${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$conf" --ignore-formatted \
      >"$stack_dir/logs/kafka-format.log" 2>&1 || die "formatting the KRaft log failed; see $stack_dir/logs/kafka-format.log"
  fi
  log "starting Apache Kafka $kafka_version on 127.0.0.1:$kafka_port"
  : >"$stack_dir/logs/kafka.log"
  nohup "${jvm[@]}" kafka.Kafka "$conf" >>"$stack_dir/logs/kafka.log" 2>&1 </dev/null &
  echo $! >"$pidf"
}

start_redis() {
  if [ -n "$external_redis" ]; then log "using the Redis at $external_redis (NEXUS_REDIS_URL)"; return; fi
  local pidf=$stack_dir/redis.pid
  if pid_alive "$pidf"; then log "redis already running (pid $(cat "$pidf"))"; return; fi
  ensure_redis_server
  port_open 127.0.0.1 "$redis_port" && die "port $redis_port is taken by another process; set NEXUS_REDIS_PORT"
  mkdir -p "$stack_dir/redis" "$stack_dir/logs"
  # Redis 7.0 started with AOF on a directory that has a snapshot but no AOF yet (data of an older
  # stack.sh) starts empty, ignoring the snapshot: read the snapshot without AOF, then
  # apply_redis_conf turns AOF on from memory
  local first=()
  if [ -f "$stack_dir/redis/dump.rdb" ] && [ ! -d "$stack_dir/redis/appendonlydir" ]; then
    log "redis: moving the snapshot in $stack_dir/redis to the AOF"
    first=(--appendonly no)
  fi
  log "starting redis-server on 127.0.0.1:$redis_port"
  redis-server "$redis_conf" --bind 127.0.0.1 --port "$redis_port" --dir "$stack_dir/redis" \
    --daemonize yes --pidfile "$stack_dir/redis.pid" --logfile "$stack_dir/logs/redis.log" \
    "${first[@]}" >/dev/null
}

print_env() {
  printf 'export NEXUS_KAFKA_BOOTSTRAP=%s\n' "$bootstrap"
  printf 'export NEXUS_REDIS_URL=%s\n' "$redis_url"
}

cmd_up() {
  mkdir -p "$stack_dir" "$cache_dir"
  # kcat: the plain command-line Kafka client the README's examples and a test use
  command -v kcat >/dev/null || command -v kafkacat >/dev/null || apt_install kcat
  start_kafka
  start_redis
  if [ -z "$external_kafka" ]; then
    wait_until "kafka" kafka_ready \
      || die "kafka did not start within ${timeout_s}s; see $stack_dir/logs/kafka.log"
  fi
  if [ -z "$external_redis" ]; then
    wait_until "redis" redis_ready || die "redis did not start within ${timeout_s}s; see $stack_dir/logs/redis.log"
    apply_redis_conf
  fi
  print_env >"$stack_dir/env"
  log "settings (also in $stack_dir/env):"
  print_env
}

stop_pid() { # name pidfile
  local pidf=$2
  if ! pid_alive "$pidf"; then log "$1 not running"; rm -f "$pidf"; return; fi
  local pid deadline=$((SECONDS + 30))
  pid=$(cat "$pidf")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then kill -9 "$pid" 2>/dev/null || true; break; fi
    sleep 0.2
  done
  rm -f "$pidf"
  log "$1 stopped"
}

cmd_down() {
  stop_pid kafka "$stack_dir/kafka.pid"
  stop_pid redis "$stack_dir/redis.pid"
}

cmd_reset() {
  if [ -n "$external_kafka" ] || [ -n "$external_redis" ]; then
    die "reset deletes the local stack's data only; unset NEXUS_KAFKA_BOOTSTRAP / NEXUS_REDIS_URL"
  fi
  cmd_down
  rm -rf "$stack_dir/kafka/data" "$stack_dir/redis"
  log "data deleted ($stack_dir/kafka/data, $stack_dir/redis); \`up\` starts an empty stack"
}

cmd_status() {
  local rc=0
  if [ -n "$external_kafka" ]; then echo "kafka: external $external_kafka"
  elif pid_alive "$stack_dir/kafka.pid" && kafka_ready; then echo "kafka: running pid $(cat "$stack_dir/kafka.pid") on $bootstrap"
  else echo "kafka: stopped"; rc=3; fi
  if [ -n "$external_redis" ]; then echo "redis: external $external_redis"
  elif pid_alive "$stack_dir/redis.pid" && redis_ready; then echo "redis: running pid $(cat "$stack_dir/redis.pid") on $redis_url"
  else echo "redis: stopped"; rc=3; fi
  return $rc
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  env) print_env ;;
  *) echo "usage: $0 up|down|status|reset|env" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Start the native local stack: Redis, Kafka (KRaft, jars from Maven Central), the Rust scorer,
# the gateway, the outer-controller, the trainer (when its env .venv-trainer exists, see WITH_TRAINER)
# and Prometheus (WITH_PROMETHEUS=1), each in the
# background with its log in $RUN_DIR/logs/<name>.log and its pid in $RUN_DIR/pids/<name>.pid.
#
# Everything is parametrised by env (defaults in deploy/local/env.defaults), so a second stack can
# run beside the first with another RUN_DIR and other ports (the e2e tests do). Running it again
# while the stack runs is safe: what already runs is kept, the rest is started.
#
#   STACK_COMPONENTS="redis kafka"   start only these (default: all of them)
#   START_TIMEOUT=90                 seconds to wait for each component to become ready
#
# Writes $RUN_DIR/stack.env (NAME=value lines of the effective environment) for tests and tools.
# Needs `deploy/local/install.sh` (or `make install`) first.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_env
cd "$REPO_ROOT"

START_TIMEOUT="${START_TIMEOUT:-90}"
STACK_COMPONENTS_SET="${STACK_COMPONENTS:-}"
STACK_COMPONENTS="${STACK_COMPONENTS:-redis kafka inner-reward gateway outer-controller}"
# the trainer needs torch, which lives in its own env (`make install-trainer`, ~3 GB): auto = start it
# when that env exists, 1 = require it, 0 = never
WITH_TRAINER="${WITH_TRAINER:-auto}"
if [[ -z ${STACK_COMPONENTS_SET:-} && " $STACK_COMPONENTS " == *" outer-controller "* ]]; then
  if [[ $WITH_TRAINER == 1 || ($WITH_TRAINER == auto && -x $TRAINER_PYTHON) ]]; then
    STACK_COMPONENTS="$STACK_COMPONENTS trainer"
  fi
fi
if [[ ${WITH_PROMETHEUS:-0} == 1 && " $STACK_COMPONENTS " != *" prometheus "* ]]; then
  STACK_COMPONENTS="$STACK_COMPONENTS prometheus"
fi
VENV_BIN="$REPO_ROOT/.venv/bin"

mkdir -p "$PID_DIR" "$LOG_DIR" || die "cannot create RUN_DIR=$RUN_DIR"

wanted() { [[ " $STACK_COMPONENTS " == *" $1 "* ]]; }

for tool in curl timeout setsid; do
  command -v "$tool" >/dev/null || die "$tool not found: run deploy/local/install.sh"
done
if wanted redis; then command -v redis-cli >/dev/null || die "redis-cli not found: run deploy/local/install.sh"; fi
if wanted kafka; then command -v kcat >/dev/null || die "kcat not found: run deploy/local/install.sh"; fi

write_stack_env() {
  local f="$RUN_DIR/stack.env" name value
  {
    echo "# effective environment of the native stack in $RUN_DIR (written by deploy/local/start.sh)"
    for name in "${ENV_NAMES[@]}"; do
      [[ -n ${!name+x} ]] || continue
      value="${!name}"
      if [[ $value =~ ^[A-Za-z0-9_./:@,=+-]*$ ]]; then
        echo "$name=$value"
      else
        echo "$name='${value//\'/\'\\\'\'}'"
      fi
    done
  } >"$f.tmp"
  mv "$f.tmp" "$f"
}

fail_with_log() {
  local name=$1
  shift
  printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
  if [[ -f "$(log_file "$name")" ]]; then
    echo "---- last lines of $(log_file "$name") ----" >&2
    tail -n 25 "$(log_file "$name")" >&2 || true
    echo "----" >&2
  fi
  echo "logs: $LOG_DIR/   stop what started: RUN_DIR=$RUN_DIR deploy/local/stop.sh (or make stop)" >&2
  exit 1
}

# Refuse to start component $1 when one of its ports is taken by something that is not ours.
check_ports_free() {
  local name=$1 a owner
  for a in $(component_addrs "$name"); do
    if port_open "${a%:*}" "${a##*:}"; then
      owner="$(port_owner "${a##*:}")"
      die "$name: port ${a##*:} is already in use${owner:+ by $owner} and $name is not running from $RUN_DIR." \
        "Stop that process or choose another port (see deploy/local/env.defaults)."
    fi
  done
}

# component -> pid of what this run launched (launch), for check_alive
declare -A LAUNCHED_PID=()

# Launch "$@" as component $1 in its own session; the process writes its own pid (bash's $$ is the
# pid that exec keeps), so the pid file names the real process.
launch() {
  local name=$1
  shift
  local lf pf
  lf="$(log_file "$name")"
  pf="$(pid_file "$name")"
  rm -f "$pf"
  {
    echo
    echo "===== $(date -Is) starting $name: $*"
  } >>"$lf"
  # shellcheck disable=SC2016
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pf" "$@" </dev/null >>"$lf" 2>&1 &
  # setsid does not fork here (a background job is no group leader), so $! is the component's pid
  # and this shell its parent: wait_ready can tell it died, and how, without reading its cmdline
  LAUNCHED_PID[$name]=$!
  local _
  for _ in $(seq 1 50); do
    [[ -s $pf ]] && return 0
    sleep 0.1
  done
  fail_with_log "$name" "$name: did not start"
}

# Fails with its log when component $1 is not running. One this run launched is judged by its pid
# alone, and its exit status is reported: running_pid's cmdline check misreads a process in the middle
# of exec (its cmdline reads as empty until the new image's arguments are set up), and a re-check
# 0.3 s later was not always enough -- CI once failed Prometheus's start that way, its log empty. One
# found running by its pid file is judged as running_pid says.
check_alive() {
  local name=$1 pid=${LAUNCHED_PID[$1]:-} rc=0 how
  if [[ -n $pid ]]; then
    pid_alive "$pid" && return 0
    # in this shell, not a $(...) subshell: only the parent can wait for a child
    wait "$pid" 2>/dev/null || rc=$?
    if ((rc > 128)); then how="killed by signal $((rc - 128))"; else how="exit status $rc"; fi
    fail_with_log "$name" "$name exited during start-up ($how)"
  else
    running_pid "$name" >/dev/null || fail_with_log "$name" "$name is no longer running"
  fi
}

# Wait until component $1 answers its readiness probe; fail early when its process dies.
wait_ready() {
  local name=$1 timeout=${2:-$START_TIMEOUT} start
  start=$(date +%s)
  while ! probe "$name"; do
    check_alive "$name"
    if (($(date +%s) - start >= timeout)); then
      fail_with_log "$name" "$name not ready after ${timeout}s"
    fi
    sleep 0.3
  done
  log "$name ready ($(($(date +%s) - start))s)"
}

start_redis() {
  command -v redis-server >/dev/null || die "redis-server not found: run deploy/local/install.sh"
  mkdir -p "$RUN_DIR/redis"
  # rdbcompression no: the append-only file's rewrite (a forked child writing an RDB preamble) tries LZF
  # on every value, and the outer controller's values are LZ4 frames already (OUTER_STATE_COMPRESSION):
  # measured on 148 MB of state-like LZ4 values, the child took 0.27-0.28 s instead of 0.85-0.88 s for a
  # 26 % bigger file -- on a shared machine that child takes a core the controller needs
  # (services/outer-controller README, "Redis's append-only-file rewrites")
  launch redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN_DIR/redis" \
    --appendonly yes --rdbcompression no --daemonize no --save "" --protected-mode yes --logfile ""
}

kafka_java() {
  local cfg=$1
  shift
  # shellcheck disable=SC2086
  java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$cfg" -cp "$KAFKA_LIBS_DIR/*" "$@"
}

start_kafka() {
  command -v java >/dev/null || die "java not found (Java 17+ is needed for Kafka)"
  compgen -G "$KAFKA_LIBS_DIR/kafka_2.13-*.jar" >/dev/null ||
    die "Kafka jars missing in $KAFKA_LIBS_DIR: run deploy/local/install.sh"
  local kdir="$RUN_DIR/kafka" props
  mkdir -p "$kdir" "$RUN_DIR/kafka-data"
  props="$kdir/server.properties"
  # render the template: ${RUN_DIR}, ${KAFKA_PORT}, ${KAFKA_CONTROLLER_PORT}
  sed -e "s|\${RUN_DIR}|$RUN_DIR|g" -e "s|\${KAFKA_PORT}|$KAFKA_PORT|g" \
    -e "s|\${KAFKA_CONTROLLER_PORT}|$KAFKA_CONTROLLER_PORT|g" \
    "$DEPLOY_LOCAL/kafka/server.properties.template" >"$props"
  if [[ ! -f "$RUN_DIR/kafka-data/meta.properties" ]]; then
    local tools_cfg="$DEPLOY_LOCAL/kafka/log4j2-tools.properties" cluster_id
    # what `StorageTool random-uuid` prints (16 random bytes, base64url, no padding, not starting
    # with "-"), without a JVM start
    cluster_id="-"
    while [[ $cluster_id == -* ]]; do
      cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    done
    echo "$cluster_id" >"$kdir/cluster.id"
    KAFKA_HEAP_OPTS="-Xmx256m" kafka_java "$tools_cfg" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$props" >>"$(log_file kafka)" 2>&1 ||
      fail_with_log kafka "kafka: formatting $RUN_DIR/kafka-data failed"
    log "kafka storage formatted (cluster id $cluster_id)"
  fi
  # shellcheck disable=SC2086
  launch kafka java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DEPLOY_LOCAL/kafka/log4j2.properties" \
    -cp "$KAFKA_LIBS_DIR/*" kafka.Kafka "$props"
}

create_topics() {
  if [[ -x $VENV_BIN/rewardloop-admin ]]; then
    "$VENV_BIN/rewardloop-admin" create-topics --wait 60 >>"$(log_file kafka)" 2>&1 ||
      fail_with_log kafka "rewardloop-admin create-topics failed (its output is in the kafka log)"
    log "topics ready: $KAFKA_TOPIC_REWARD_RAW $KAFKA_TOPIC_KPI_RAW $KAFKA_TOPIC_SESSIONS"
  elif wanted gateway || wanted outer-controller || wanted inner-reward; then
    die "$VENV_BIN/rewardloop-admin not found (cannot create topics): run deploy/local/install.sh"
  else
    warn "rewardloop-admin not installed: topics not created (the broker auto-creates them, 3 partitions)"
  fi
}

# segment `default` always exists after bootstrap (docs/architecture.md); idempotent
init_weights() {
  if [[ -x $VENV_BIN/rewardloop-admin ]]; then
    "$VENV_BIN/rewardloop-admin" init-weights --wait 10 >>"$(log_file redis)" 2>&1 ||
      fail_with_log redis "rewardloop-admin init-weights failed (its output is in the redis log)"
    log "weights: segment default present"
  else
    warn "rewardloop-admin not installed: default weights document not written"
  fi
}

start_inner_reward() {
  [[ -x $INNER_REWARD_BIN ]] ||
    die "scorer binary $INNER_REWARD_BIN missing: run deploy/local/install.sh (cargo build --release)"
  launch inner-reward "$INNER_REWARD_BIN"
}

start_python() {
  local name=$1 script=$2
  [[ -x $VENV_BIN/$script ]] || die "$VENV_BIN/$script missing: run deploy/local/install.sh (uv sync)"
  launch "$name" "$VENV_BIN/$script"
}

start_trainer() {
  [[ -x $TRAINER_PYTHON ]] || die "$TRAINER_PYTHON missing: run make install-trainer (WITH_TRAINER=0 skips the trainer)"
  mkdir -p "$OUTER_CREDIT_MODEL_DIR"
  launch trainer "$TRAINER_PYTHON" -m rewardloop_trainer --kafka
}

start_prometheus() {
  command -v prometheus >/dev/null || die "prometheus not found: run deploy/local/install.sh"
  local pdir="$RUN_DIR/prometheus"
  mkdir -p "$pdir/data"
  local m_host m_port
  m_host="$(addr_host "$INNER_REWARD_METRICS_ADDR")"
  m_port="$(addr_port "$INNER_REWARD_METRICS_ADDR")"
  # deploy/prometheus/prometheus.yml names the default ports and a 5s interval; point it at this
  # stack's ports and PROMETHEUS_SCRAPE_INTERVAL
  sed -e "s|127.0.0.1:9464|$m_host:$m_port|g" -e "s|127.0.0.1:8000|127.0.0.1:$GATEWAY_PORT|g" \
    -e "s|127.0.0.1:9102|127.0.0.1:$OUTER_METRICS_PORT|g" -e "s|127.0.0.1:9103|127.0.0.1:$TRAINER_METRICS_PORT|g" -e "s|127.0.0.1:9090|127.0.0.1:$PROMETHEUS_PORT|g" \
    -e "s|^\(  [a-z_]*_interval:\) 5s|\1 ${PROMETHEUS_SCRAPE_INTERVAL:-5s}|" \
    "$REPO_ROOT/deploy/prometheus/prometheus.yml" >"$pdir/prometheus.yml"
  # its rule_files are relative to the config file: link the repo's rules next to the rendered copy
  ln -sfn "$REPO_ROOT/deploy/prometheus/rules" "$pdir/rules"
  launch prometheus prometheus --config.file="$pdir/prometheus.yml" --storage.tsdb.path="$pdir/data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --storage.tsdb.retention.time=2d
}

after_ready() {
  case $1 in
  redis) init_weights ;;
  kafka) create_topics ;;
  esac
}

t0=$(date +%s)
log "native stack in $RUN_DIR (components: $STACK_COMPONENTS)"
write_stack_env

for name in "${COMPONENTS[@]}"; do
  wanted "$name" || continue
  if pid="$(running_pid "$name")"; then
    log "$name already running (pid $pid)"
    wait_ready "$name"
    after_ready "$name"
    continue
  fi
  check_ports_free "$name"
  case $name in
  redis) start_redis ;;
  kafka) start_kafka ;;
  inner-reward) start_inner_reward ;;
  gateway) start_python gateway rewardloop-gateway ;;
  outer-controller) start_python outer-controller rewardloop-outer ;;
  trainer) start_trainer ;;
  prometheus) start_prometheus ;;
  esac
  wait_ready "$name"
  after_ready "$name"
done

log "stack up in $(($(date +%s) - t0))s; env in $RUN_DIR/stack.env, logs in $LOG_DIR/"
wanted gateway && log "gateway      http://$(addr_host "$GATEWAY_HOST:$GATEWAY_PORT"):$GATEWAY_PORT"
wanted inner-reward && log "scorer gRPC  $INNER_REWARD_GRPC_ADDR  metrics http://$INNER_REWARD_METRICS_ADDR/metrics"
wanted outer-controller && log "outer        http://127.0.0.1:$OUTER_METRICS_PORT/metrics"
wanted trainer && log "trainer      http://127.0.0.1:$TRAINER_METRICS_PORT/metrics  (credit models in $OUTER_CREDIT_MODEL_DIR)"
wanted prometheus && log "prometheus   http://127.0.0.1:$PROMETHEUS_PORT"
log "stop with: make stop   (or RUN_DIR=$RUN_DIR deploy/local/stop.sh)"
exit 0

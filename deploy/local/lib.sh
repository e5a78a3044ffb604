# shellcheck shell=bash
# Shared helpers for deploy/local/{install,start,stop,status}.sh. Sourced, never run.
#
# Every component of the native stack has a name (redis, kafka, inner-reward, gateway,
# outer-controller, prometheus), a pid file $RUN_DIR/pids/<name>.pid and a log $RUN_DIR/logs/<name>.log.
# Each is started in its own session (setsid), so Ctrl-C in the terminal that ran start.sh does not
# reach it and stop.sh can signal its whole process group.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export REPO_ROOT
DEPLOY_LOCAL="$REPO_ROOT/deploy/local"

# start order; stop.sh walks it backwards
# shellcheck disable=SC2034
COMPONENTS=(redis kafka inner-reward gateway outer-controller trainer prometheus)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { printf '[%s] WARN: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
  exit 1
}

# Load deploy/local/env.defaults: a variable already set in the environment wins; ${VAR} references
# expand against what is set so far; an empty result leaves the variable unset.
load_env() {
  local line name value
  ENV_NAMES=()
  while IFS= read -r line || [[ -n $line ]]; do
    [[ -z ${line//[[:space:]]/} || $line == \#* ]] && continue
    name=${line%%=*}
    value=${line#*=}
    [[ $name =~ ^[A-Z_][A-Z0-9_]*$ ]] || die "env.defaults: bad line: $line"
    ENV_NAMES+=("$name")
    if [[ -n ${!name+x} ]]; then
      export "${name?}"
      continue
    fi
    eval "value=\"$value\""
    if [[ -n $value ]]; then
      export "$name=$value"
    fi
  done <"$DEPLOY_LOCAL/env.defaults"
  RUN_DIR="$(realpath -m "$RUN_DIR")"
  export RUN_DIR
  PID_DIR="$RUN_DIR/pids"
  LOG_DIR="$RUN_DIR/logs"
}

pid_file() { echo "$PID_DIR/$1.pid"; }
log_file() { echo "$LOG_DIR/$1.log"; }

# A string that the command line of component $1 contains when it is ours (guards against pid reuse).
cmd_marker() {
  case $1 in
  redis) echo "redis-server" ;;
  kafka) echo "kafka.Kafka" ;;
  inner-reward) echo "inner-reward-rs" ;;
  gateway) echo "rewardloop-gateway" ;;
  outer-controller) echo "rewardloop-outer" ;;
  trainer) echo "rewardloop_trainer" ;;
  prometheus) echo "prometheus" ;;
  *) echo "$1" ;;
  esac
}

# Prints the pid of component $1 when its pid file names a live process that is ours; else fails.
running_pid() {
  local f pid cmdline
  f="$(pid_file "$1")"
  [[ -f $f ]] || return 1
  pid="$(<"$f")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ $cmdline == *"$(cmd_marker "$1")"* ]] || return 1
  echo "$pid"
}

# True while process $1 lives: it exists and is no zombie (exited, not yet reaped by its parent).
pid_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  # field 3 of /proc/<pid>/stat, the state, counted after the ")" that ends the command name
  [[ "$(sed -e 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $1}')" != Z ]]
}

# host:port -> port ; host:port -> host
addr_port() { echo "${1##*:}"; }
addr_host() {
  local h="${1%:*}"
  [[ -z $h || $h == 0.0.0.0 ]] && h=127.0.0.1
  echo "$h"
}

# true when something accepts TCP connections on host $1 port $2
port_open() {
  timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# what listens on a port, best effort (for error messages)
port_owner() {
  if command -v ss >/dev/null 2>&1; then
    ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -1
  fi
}

# ports (host:port) that component $1 listens on
component_addrs() {
  case $1 in
  redis) echo "127.0.0.1:$REDIS_PORT" ;;
  kafka) echo "127.0.0.1:$KAFKA_PORT 127.0.0.1:$KAFKA_CONTROLLER_PORT" ;;
  inner-reward) echo "$(addr_host "$INNER_REWARD_GRPC_ADDR"):$(addr_port "$INNER_REWARD_GRPC_ADDR") $(addr_host "$INNER_REWARD_METRICS_ADDR"):$(addr_port "$INNER_REWARD_METRICS_ADDR")" ;;
  gateway) echo "$(addr_host "$GATEWAY_HOST:$GATEWAY_PORT"):$GATEWAY_PORT" ;;
  outer-controller) echo "127.0.0.1:$OUTER_METRICS_PORT" ;;
  trainer) echo "127.0.0.1:$TRAINER_METRICS_PORT" ;;
  prometheus) echo "127.0.0.1:$PROMETHEUS_PORT" ;;
  esac
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# Quick readiness probe of component $1 (no waiting).
probe() {
  case $1 in
  redis) [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] ;;
  kafka) kcat -b "127.0.0.1:$KAFKA_PORT" -L -m 2 >/dev/null 2>&1 ;;
  inner-reward)
    local m
    m="http://$(addr_host "$INNER_REWARD_METRICS_ADDR"):$(addr_port "$INNER_REWARD_METRICS_ADDR")"
    port_open "$(addr_host "$INNER_REWARD_GRPC_ADDR")" "$(addr_port "$INNER_REWARD_GRPC_ADDR")" &&
      { http_ok "$m/healthz" || http_ok "$m/metrics"; }
    ;;
  gateway) http_ok "http://$(addr_host "$GATEWAY_HOST:$GATEWAY_PORT"):$GATEWAY_PORT/healthz" ;;
  outer-controller) http_ok "http://127.0.0.1:$OUTER_METRICS_PORT/metrics" ;;
  trainer) http_ok "http://127.0.0.1:$TRAINER_METRICS_PORT/metrics" ;;
  prometheus) http_ok "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" ;;
  esac
}

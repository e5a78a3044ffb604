#!/usr/bin/env bash
# Benchmark of the inner-reward scorer (issue #3): `make bench-scorer` or run directly.
#
# Builds the release binaries, starts Redis + Kafka (deploy/local/start.sh, own RUN_DIR and
# ports), then for each configuration starts one server pinned to CPU 0 and drives it with the
# open-loop load generator (rewardloop-loadgen, HDR histogram, 1 us resolution) pinned to CPU 1:
#   empty       rewardloop-empty-server (same proto, constant answer): the baseline
#   tel-off     scorer, INNER_REWARD_TELEMETRY=off
#   tel-on      scorer, telemetry to Kafka
#   slate-100   scorer, ScoreSlate with 100 feedbacks, telemetry on (+ Kafka events/s in topic)
# and prints one table. Kafka and Redis are not pinned (they share both cores).
#
# Environment: BENCH_RATE (ScoreAction calls/s, 20000), BENCH_SLATE_RATE (ScoreSlate calls/s,
# 2000), BENCH_DURATION (s, 20), BENCH_WARMUP (s, 3), BENCH_CONNECTIONS (4),
# BENCH_RUN_DIR (.run/bench), KAFKA_PORT (29192), KAFKA_CONTROLLER_PORT (29193), REDIS_PORT
# (26479), BENCH_GRPC_PORT (29051), BENCH_METRICS_PORT (29464), BENCH_EMPTY_PORT (29061),
# BENCH_KEEP_STACK=1 (leave Redis/Kafka running), BENCH_SERVER_CPU (0), BENCH_CLIENT_CPU (1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CRATE="$ROOT/services/inner-reward-rs"
BIN="$CRATE/target/release"
RATE=${BENCH_RATE:-20000}
SLATE_RATE=${BENCH_SLATE_RATE:-2000}
DURATION=${BENCH_DURATION:-20}
WARMUP=${BENCH_WARMUP:-3}
CONNS=${BENCH_CONNECTIONS:-4}
export RUN_DIR=${BENCH_RUN_DIR:-$ROOT/.run/bench}
export KAFKA_PORT=${KAFKA_PORT:-29192}
export KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-29193}
export REDIS_PORT=${REDIS_PORT:-26479}
GRPC_PORT=${BENCH_GRPC_PORT:-29051}
METRICS_PORT=${BENCH_METRICS_PORT:-29464}
EMPTY_PORT=${BENCH_EMPTY_PORT:-29061}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
KAFKA="127.0.0.1:$KAFKA_PORT"
TOPIC=${KAFKA_TOPIC_REWARD_RAW:-recsys.reward.raw}
OUT="$RUN_DIR/bench-results.jsonl"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# command prefixes that pin to a CPU (taskset when there are enough cores, else nothing)
PIN_SERVER=()
PIN_CLIENT=()
if command -v taskset >/dev/null && [[ $(nproc) -gt $SERVER_CPU && $(nproc) -gt $CLIENT_CPU ]]; then
  PIN_SERVER=(taskset -c "$SERVER_CPU")
  PIN_CLIENT=(taskset -c "$CLIENT_CPU")
fi

SERVER_PID=
stop_server() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
cleanup() {
  stop_server
  if [[ ${BENCH_KEEP_STACK:-0} != 1 ]]; then
    STACK_COMPONENTS="redis kafka" "$ROOT/deploy/local/stop.sh" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

wait_port() { # port: wait until it listens and the server we started is alive
  local i
  for i in $(seq 1 200); do
    kill -0 "$SERVER_PID" 2>/dev/null || { log "server exited; see $RUN_DIR/logs"; return 1; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  log "nothing listens on port $1"
  return 1
}

log "building release binaries"
cargo build --release --bins --manifest-path "$CRATE/Cargo.toml" >&2

log "starting redis + kafka in $RUN_DIR (kafka $KAFKA, redis $REDIS_PORT)"
mkdir -p "$RUN_DIR"
STACK_COMPONENTS="redis kafka" "$ROOT/deploy/local/start.sh" >&2
: >"$OUT"

loadgen() { # label method rate [extra...]
  local label=$1 method=$2 rate=$3 port=$4
  shift 4
  "${PIN_CLIENT[@]}" "$BIN/rewardloop-loadgen" --url "http://127.0.0.1:$port" --label "$label" \
    --method "$method" --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" \
    --connections "$CONNS" "$@" | tee -a "$OUT" >&2
}

scorer() { # telemetry on|off
  INNER_REWARD_GRPC_ADDR="127.0.0.1:$GRPC_PORT" INNER_REWARD_METRICS_ADDR="127.0.0.1:$METRICS_PORT" \
    KAFKA_BOOTSTRAP_SERVERS="$KAFKA" REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
    INNER_REWARD_TELEMETRY="$1" INNER_REWARD_SPOOL_DIR="$RUN_DIR/spool" RUST_LOG=warn \
    "${PIN_SERVER[@]}" "$BIN/inner-reward-rs" >>"$RUN_DIR/logs/bench-scorer.log" 2>&1 &
  SERVER_PID=$!
  wait_port "$GRPC_PORT"
}

log "1/4 empty service"
"${PIN_SERVER[@]}" "$BIN/rewardloop-empty-server" "127.0.0.1:$EMPTY_PORT" >>"$RUN_DIR/logs/bench-empty.log" 2>&1 &
SERVER_PID=$!
wait_port "$EMPTY_PORT"
loadgen empty action "$RATE" "$EMPTY_PORT"
stop_server

log "2/4 scorer, telemetry off"
scorer off
loadgen tel-off action "$RATE" "$GRPC_PORT"
stop_server

log "3/4 scorer, telemetry on"
scorer on
loadgen tel-on action "$RATE" "$GRPC_PORT" --kafka-bootstrap "$KAFKA" --kafka-topic "$TOPIC"
log "4/4 scorer, ScoreSlate x100, telemetry on"
loadgen slate-100 slate "$SLATE_RATE" "$GRPC_PORT" --slate-size 100 --kafka-bootstrap "$KAFKA" --kafka-topic "$TOPIC"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
  grep -E '^rewardloop_inner_(events_(published|failed|dropped|spooled)_total|spool_records) ' >&2 || true
stop_server

python3 - "$OUT" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        r = json.loads(line)
        rows[r["label"]] = r
print(f"\nmachine: {sys.argv[2]} cores, {sys.argv[3]}")
hdr = f"{'config':<10} {'offered/s':>10} {'achieved/s':>10} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'errors':>7} {'kafka events/s':>15}"
print(hdr)
print("-" * len(hdr))
for k in ["empty", "tel-off", "tel-on", "slate-100"]:
    r = rows.get(k)
    if not r:
        print(f"{k:<10} (missing)")
        continue
    ke = r.get("kafka_topic_events_per_s")
    print(f"{k:<10} {r['offered_rps']:>10} {r['achieved_rps']:>10.0f} {r['p50_us']:>8} {r['p99_us']:>8} {r['p999_us']:>9} {r['errors'] + r['dropped']:>7} {'' if ke is None else f'{ke:,.0f}':>15}")
e, off, on = rows.get("empty"), rows.get("tel-off"), rows.get("tel-on")
if e and on:
    print(f"\nP99 scorer(telemetry on) / empty: {on['p99_us'] / max(e['p99_us'], 1):.2f}x (target <= 1.3x)")
if e and off:
    print(f"P99 scorer(telemetry off) / empty: {off['p99_us'] / max(e['p99_us'], 1):.2f}x")
if on and off:
    print(f"P99 telemetry on - off: {(on['p99_us'] - off['p99_us']) / 1000:.3f} ms (target <= 0.1 ms)")
PY

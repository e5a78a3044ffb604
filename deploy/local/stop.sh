#!/usr/bin/env bash
# Stop the native stack in $RUN_DIR: exactly the processes its pid files name, services first, then
# Kafka, then Redis. SIGTERM to the component's process group, a bounded wait, then SIGKILL.
# Only RUN_DIR matters here (default .run/local; the e2e stack uses RUN_DIR=.run/e2e).
#
#   STOP_TIMEOUT=20   seconds to wait for each component after SIGTERM (Kafka gets twice that)
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_env

STOP_TIMEOUT="${STOP_TIMEOUT:-20}"

# signal pid $2 (its process group when it leads one, as setsid makes it) with signal $1
signal() {
  local sig=$1 pid=$2 pgid
  # field 5 of /proc/<pid>/stat, counted after the ")" that ends the command name
  pgid="$(sed -e 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $3}')" || true
  if [[ $pgid == "$pid" ]]; then
    kill "-$sig" -- "-$pid" 2>/dev/null || true
  else
    kill "-$sig" "$pid" 2>/dev/null || true
  fi
}

stop_one() {
  local name=$1 pid timeout=$STOP_TIMEOUT start
  [[ $name == kafka ]] && timeout=$((STOP_TIMEOUT * 2))
  if ! pid="$(running_pid "$name")"; then
    if [[ -f "$(pid_file "$name")" ]]; then
      log "$name not running (stale pid file removed)"
      rm -f "$(pid_file "$name")"
    fi
    return 0
  fi
  signal TERM "$pid"
  start=$(date +%s)
  while running_pid "$name" >/dev/null; do
    if (($(date +%s) - start >= timeout)); then
      warn "$name (pid $pid) still running after ${timeout}s: SIGKILL"
      signal KILL "$pid"
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$(pid_file "$name")"
  log "$name stopped (pid $pid, $(($(date +%s) - start))s)"
}

[[ -d $PID_DIR ]] || exit 0
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
  stop_one "${COMPONENTS[i]}"
done

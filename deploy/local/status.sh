#!/usr/bin/env bash
# Show what of the native stack in $RUN_DIR runs: pid, ready or not, ports, log file.
# Exit code 0 when every component with a pid file runs and is ready, 1 otherwise (3: nothing runs).
set -uo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_env
# the running stack's own settings (ports) when it wrote them
if [[ -f $RUN_DIR/stack.env ]]; then
  set -a
  # shellcheck disable=SC1091
  source "$RUN_DIR/stack.env"
  set +a
fi

echo "native stack in $RUN_DIR"
rc=0
any=0
for name in "${COMPONENTS[@]}"; do
  addrs="$(component_addrs "$name")"
  if pid="$(running_pid "$name")"; then
    any=1
    if probe "$name"; then state="ready"; else state="NOT READY"; rc=1; fi
    printf '  %-17s %-10s pid %-8s %s   log %s\n' "$name" "$state" "$pid" "$addrs" "$(log_file "$name")"
  elif [[ -f "$(pid_file "$name")" ]]; then
    rc=1
    printf '  %-17s %-10s (stale pid file)  log %s\n' "$name" "DEAD" "$(log_file "$name")"
  else
    printf '  %-17s %-10s %s\n' "$name" "stopped" "$addrs"
  fi
done
[[ -f $RUN_DIR/stack.env ]] && echo "env: $RUN_DIR/stack.env"
if ((any == 0 && rc == 0)); then exit 3; fi
exit $rc

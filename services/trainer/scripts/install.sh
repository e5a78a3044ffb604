#!/usr/bin/env bash
# Creates .venv-trainer at the repository root: the trainer's own environment, the only one with torch.
# Idempotent: when the venv exists and the inputs (this script and the pyproject files of the packages it
# installs) are unchanged since the last successful install, it returns at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
VENV="${TRAINER_VENV:-$ROOT/.venv-trainer}"
PY="$VENV/bin/python"
STAMP="$VENV/.rewardloop-install-stamp"

inputs=(services/trainer/scripts/install.sh services/trainer/pyproject.toml libs/common/pyproject.toml
        services/simulator/pyproject.toml services/outer-controller/pyproject.toml)
want="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)"

if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "[install-trainer] $VENV is up to date"
  exit 0
fi

command -v uv >/dev/null || { echo "[install-trainer] uv not found: run 'make install' first" >&2; exit 1; }
t0=$SECONDS
if [[ ! -x "$PY" ]]; then
  UV_PYTHON_DOWNLOADS=never uv venv --quiet --python python3.11 "$VENV"
fi
# torch comes from PyPI (its Linux wheel pulls the CUDA libraries, ~3 GB); no other index is reachable here.
uv pip install --quiet --python "$PY" \
  -e libs/common -e services/simulator -e services/outer-controller -e services/trainer \
  "pytest==8.4.2" "pytest-timeout==2.4.0"
echo "$want" >"$STAMP"
echo "[install-trainer] $VENV ready ($((SECONDS - t0))s): $("$PY" -c 'import torch; print("torch", torch.__version__)')"

#!/usr/bin/env bash
# Install what the native stack needs, idempotently: quiet, and fast when everything is there.
#
#   1. apt packages (only when one is missing): redis-server redis-tools kcat protobuf-compiler
#      docker-compose prometheus curl (+ java/maven/python3.11 when those are absent)
#   2. uv (pip) and the Python workspace: uv sync [--frozen] into .venv (Python 3.11, no downloads;
#      it builds the outer controller's Rust extension through maturin, so cargo is needed here too)
#   3. Python gRPC stubs from proto/ (libs/common/scripts/gen_proto.py)
#   4. Kafka 4.1.1 jars from Maven Central (deploy/local/kafka/pom.xml) into $KAFKA_LIBS_DIR
#   5. the Rust scorer: cargo build --release
#
#   INSTALL_SKIP="apt rust"   skip steps by name (apt uv python proto kafka rust)
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# env.defaults sets RUST_LOG for the scorer; uv and cargo read it too, so keep the caller's value
if [[ -n ${RUST_LOG+x} ]]; then caller_rust_log=$RUST_LOG; fi
load_env
if [[ -n ${caller_rust_log+x} ]]; then export RUST_LOG=$caller_rust_log; else unset RUST_LOG; fi
cd "$REPO_ROOT"

INSTALL_SKIP="${INSTALL_SKIP:-}"
export UV_PYTHON_DOWNLOADS=never
export DEBIAN_FRONTEND=noninteractive
PYTHON="${PYTHON:-python3.11}"

T_ALL=$(date +%s)
step_t0=0
step() {
  step_t0=$(date +%s)
  printf '[install] %-8s ' "$1"
}
done_() { printf '%s (%ss)\n' "$1" "$(($(date +%s) - step_t0))"; }
skipped() { [[ " $INSTALL_SKIP " == *" $1 "* ]]; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# ---------------------------------------------------------------- apt
if ! skipped apt; then
  step apt
  want=(redis-server redis-tools kcat protobuf-compiler docker-compose prometheus curl ca-certificates make)
  command -v java >/dev/null || want+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || want+=(maven)
  command -v "$PYTHON" >/dev/null || want+=(python3.11 python3.11-venv python3-pip)
  # uv comes from PyPI through pip
  if ! command -v uv >/dev/null && ! "$PYTHON" -m pip --version >/dev/null 2>&1; then want+=(python3-pip); fi
  missing=()
  for p in "${want[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]})); then
    printf 'installing %s ... ' "${missing[*]}"
    [[ ${APT_UPDATED:-0} == 1 ]] || as_root apt-get update -qq >/dev/null
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    done_ "done"
  else
    done_ "all present"
  fi
fi

# ---------------------------------------------------------------- uv
UV=()
if ! skipped uv; then
  step uv
  if command -v uv >/dev/null; then
    UV=(uv)
    done_ "present ($(uv --version))"
  else
    if ! "$PYTHON" -m uv --version >/dev/null 2>&1; then
      "$PYTHON" -m pip install --quiet --disable-pip-version-check uv 2>/dev/null ||
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --break-system-packages uv
    fi
    UV=("$PYTHON" -m uv)
    done_ "installed ($("${UV[@]}" --version))"
  fi
else
  command -v uv >/dev/null && UV=(uv)
fi

# ---------------------------------------------------------------- python workspace
if ! skipped python; then
  step python
  ((${#UV[@]})) || die "uv not available"
  # the outer controller's native core (services/outer-controller/native) is built by uv through maturin
  command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs); the Python workspace builds a Rust extension"
  sync=("${UV[@]}" sync --quiet --python "$PYTHON")
  [[ -f uv.lock ]] && sync+=(--frozen)
  if "${sync[@]}"; then
    done_ "uv sync ok (.venv)"
  else
    echo
    die "uv sync failed"
  fi
fi

# ---------------------------------------------------------------- proto stubs
if ! skipped proto; then
  step proto
  gen=libs/common/scripts/gen_proto.py
  stamp=.run/proto.stamp
  if [[ ! -f $gen ]]; then
    done_ "skipped: $gen not present yet"
  elif [[ -f $stamp && -d libs/common/src/rewardloop_common/proto/gen && -z "$(find proto "$gen" -newer "$stamp" -print -quit)" ]]; then
    done_ "up to date"
  else
    .venv/bin/python "$gen" >/dev/null
    mkdir -p .run && touch "$stamp"
    done_ "generated"
  fi
fi

# ---------------------------------------------------------------- kafka jars
if ! skipped kafka; then
  step kafka
  if compgen -G "$KAFKA_LIBS_DIR/kafka_2.13-*.jar" >/dev/null && [[ -f $KAFKA_LIBS_DIR/.complete ]]; then
    done_ "jars present ($KAFKA_LIBS_DIR)"
  else
    command -v mvn >/dev/null || die "mvn not found"
    rm -rf "$KAFKA_LIBS_DIR"
    mkdir -p "$KAFKA_LIBS_DIR"
    mvn_log="$(mktemp)"
    if ! mvn -q -B -f deploy/local/kafka/pom.xml \
      dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIBS_DIR" >"$mvn_log" 2>&1; then
      cat "$mvn_log" >&2
      die "downloading the Kafka jars from Maven Central failed"
    fi
    rm -f "$mvn_log"
    touch "$KAFKA_LIBS_DIR/.complete"
    done_ "downloaded $(find "$KAFKA_LIBS_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$KAFKA_LIBS_DIR" | cut -f1))"
  fi
fi

# ---------------------------------------------------------------- rust scorer
if ! skipped rust; then
  step rust
  manifest=services/inner-reward-rs/Cargo.toml
  if [[ ! -f $manifest ]]; then
    done_ "skipped: $manifest not present yet"
  else
    command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
    if cargo build --release --quiet --manifest-path "$manifest"; then
      done_ "built $INNER_REWARD_BIN"
    else
      echo
      die "cargo build --release failed"
    fi
  fi
fi

echo "[install] done in $(($(date +%s) - T_ALL))s"

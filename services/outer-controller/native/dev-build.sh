#!/usr/bin/env bash
# Rebuild the extension in place for the editable install (.venv) after a Rust change: faster than
# `uv sync` (which also rebuilds it, through maturin). Usage: services/outer-controller/native/dev-build.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
cargo build --release --lib --quiet
cp target/release/lib_core.so python/rewardloop_outer_native/_core.abi3.so

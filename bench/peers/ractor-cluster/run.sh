#!/usr/bin/env bash
# Build the ractor_cluster peer bench, run server and client on 127.0.0.1,
# print the client's JSON line. Usage: bench/peers/ractor-cluster/run.sh [MESSAGES]
# Env: PORT (default 47311), COOKIE (default "troupe-bench").
set -euo pipefail
cd "$(dirname "$0")/../../.."   # repository root

MESSAGES="${1:-${MESSAGES:-1000000}}"
PORT="${PORT:-47311}"
COOKIE="${COOKIE:-troupe-bench}"
export CARGO_TARGET_DIR=/work/main/target-peers

cargo build --release --manifest-path bench/peers/ractor-cluster/Cargo.toml >&2
BIN="$CARGO_TARGET_DIR/release/ractor_cluster_bench"

LOG="$(mktemp)"
"$BIN" serve --port "$PORT" --cookie "$COOKIE" >"$LOG" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -f "$LOG"; }
trap cleanup EXIT

for _ in $(seq 1 300); do
  grep -q '^READY$' "$LOG" && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; echo "server exited" >&2; exit 1; }
  sleep 0.1
done
grep -q '^READY$' "$LOG" || { cat "$LOG" >&2; echo "server not ready" >&2; exit 1; }

"$BIN" run --port "$PORT" --cookie "$COOKIE" --messages "$MESSAGES"

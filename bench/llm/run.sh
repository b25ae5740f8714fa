#!/usr/bin/env bash
# CPU benchmark of troupe-llm against llama.cpp on the same GGUF, the same number
# of threads, in the same run. Prints a side-by-side table with ratios and writes
# bench/results/llm-cpu-<stamp>.{json,md}.
#
#   bash bench/llm/run.sh                 # THREADS=2 ROUNDS=2 by default
#
# Needs: the model (pulled here if missing) and llama-cpp-python (installed here
# if missing: a source build, several minutes on 2 cores, once).
# The machine is shared and noisy: each side runs ROUNDS times, alternating, and
# the best figure per metric is kept for both sides alike.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
BATCHES=${BATCHES:-1,8,32,128}
MIXED=${MIXED:-64}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-llm}
OUT=bench/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

cargo build -q -p troupe-llm --release --example bench_engine && cargo build -q -p troupe-llm-shell --release --example pull_model
MODEL=${MODEL:-$("$CARGO_TARGET_DIR/release/examples/pull_model" smollm2-135m)}
if ! python3 -c "import llama_cpp, numpy" 2>/dev/null; then
  echo "installing llama-cpp-python (source build, takes minutes) ..." >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --quiet llama-cpp-python numpy
fi

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS: troupe-llm" >&2
  "$CARGO_TARGET_DIR/release/examples/bench_engine" --model "$MODEL" --threads "$THREADS" \
    --batches "$BATCHES" --mixed-requests "$MIXED" > "$TMP/ours-$r.json"
  echo "== round $r/$ROUNDS: llama.cpp" >&2
  python3 bench/llm/llamacpp_bench.py --model "$MODEL" --threads "$THREADS" \
    --batches "$BATCHES" > "$TMP/llamacpp-$r.json"
done

python3 bench/llm/summarize.py --threads "$THREADS" --mixed "$MIXED" --out "$OUT/llm-cpu-$STAMP" "$TMP"/ours-*.json -- "$TMP"/llamacpp-*.json
# The machine is shared: record how busy it was (1/5/15-minute load averages).
echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores)." | tee -a "$OUT/llm-cpu-$STAMP.md"

#!/usr/bin/env bash
# Serving benchmark of system 01 (llm-serving) against llama.cpp's server
# (llama-cpp-python's OpenAI-compatible server) on the same GGUF, the same thread count
# and the same CPUs, in the same run: vLLM `bench serve` style (Poisson arrivals, a
# prompt/output length mix, TTFT/TPOT/ITL, goodput). Writes bench/results/llm-serving.{json,md}
# and bench/results/llm-serving-{goodput,ttft-p99}.png.
#
#   bash bench/llm/serving.sh          # THREADS=2 CPUS=0-1 RATES=0.25,0.5,1,2 DURATION=40
#
# One troupe node (systems rate-limiter + llm-serving, roles gateway + gpu; the engine runs
# on its CPU backend with THREADS threads) and the llama.cpp server (--n_threads THREADS)
# are both started under `taskset -c $CPUS`, and so is the load generator. The rates run
# against each server in turn (the order alternates per rate) with the same prompts and
# the same arrival times.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-2}
CPUS=${CPUS:-0-$((THREADS - 1))}
RATES=${RATES:-0.25,0.5,1,2}
DURATION=${DURATION:-40}        # seconds of arrivals per rate and server
GRACE=${GRACE:-30}              # seconds after the last arrival before the rest is dropped
MAX_REQUESTS=${MAX_REQUESTS:-120}
PROMPT=${PROMPT:-32,96,512}     # min,median,max prompt tokens (lognormal)
OUTPUT=${OUTPUT:-16,48,256}      # min,median,max output tokens (lognormal)
SIGMA=${SIGMA:-0.7}             # of the lognormals' log
SEED=${SEED:-1}
KEY=sk-troupe-dev-paid
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# BUILD=0 uses the binaries already in target/release (when another build holds the lock).
if [ "${BUILD:-1}" != 0 ]; then cargo build --release -p troupe -p troupe-bench; fi
MODEL=${MODEL:-$(cargo run -q --release -p troupe-llm-shell --example pull_model)}
if ! python3 -c "import llama_cpp.server.app" 2>/dev/null; then
  echo "installing llama-cpp-python[server] (a source build if llama_cpp is missing: minutes) ..." >&2
  pip install --quiet 'llama-cpp-python[server]'
fi
LLAMA_VERSION=$(python3 -c "import llama_cpp; print(llama_cpp.__version__)")
LLAMA_CPU=$(python3 -c "import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())")

port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
QUIC=$(port); GOSSIP=$(port); ADMIN=$(port); KV=$(port); LIM=$(port); GW=$(port); LLAMA=$(port)

# One node; the engine gets THREADS threads (the idle second pool too); the rate limiter's
# LLM rules stay on the request path but are raised far above what the bench offers.
mkdir -p "$TMP/systems"
cp systems/rate-limiter.toml systems/llm-serving.toml "$TMP/systems/"
cat > "$TMP/cluster.toml" <<EOF
[cluster]
name = "bench-llm"
systems = ["rate-limiter", "llm-serving"]
seeds = ["n1"]

[overrides.llm-serving.worker]
threads = $THREADS

[overrides.llm-serving.worker_fast]
threads = $THREADS

[overrides.rate-limiter.rules]
rules = """
version = 1

[[rule]]
name = "llm-requests"
dimension = "user"
algorithm = "token_bucket"
limit = 1000000
window_ms = 60000
fail_mode = "open"

[[rule]]
name = "llm-tokens"
dimension = "user"
algorithm = "sliding_counter"
limit = 1000000000
window_ms = 60000
fail_mode = "open"

[[rule]]
name = "llm-org-requests"
dimension = "user"
algorithm = "token_bucket"
limit = 1000000
window_ms = 60000
fail_mode = "open"

[[rule]]
name = "llm-org-tokens"
dimension = "user"
algorithm = "sliding_counter"
limit = 1000000000
window_ms = 60000
fail_mode = "open"
"""

[[nodes]]
name = "n1"
addr = "127.0.0.1:$QUIC"
gossip = "127.0.0.1:$GOSSIP"
admin = "127.0.0.1:$ADMIN"
roles = ["gateway", "gpu"]
ports = { kv = $KV, "rate-limiter" = $LIM, "llm-serving" = $GW }
EOF
target/release/troupe certs init --cluster "$TMP/cluster.toml" >/dev/null

taskset -c "$CPUS" target/release/troupe node --cluster "$TMP/cluster.toml" --name n1 \
  >/dev/null 2>"$TMP/troupe.log" &
PIDS+=($!)
# llama-cpp-python's server has no parallel slots or continuous batching: requests take
# turns behind a lock. --interrupt_requests False keeps a new request from cutting off the
# one streaming (its default would abort every stream as soon as another request arrives).
# OMP_WAIT_POLICY=passive: its OpenMP threads sleep instead of spinning at barriers; on
# these shared cores that made single requests 3-4x faster (TPOT 135-195 ms -> 44-47 ms).
OMP_WAIT_POLICY=passive taskset -c "$CPUS" python3 -m llama_cpp.server --model "$MODEL" --model_alias smollm2-135m \
  --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx 2048 --n_batch 512 \
  --interrupt_requests False --host 127.0.0.1 --port "$LLAMA" >"$TMP/llama.log" 2>&1 &
PIDS+=($!)

status=0
taskset -c "$CPUS" target/release/llm_serving --model-file "$MODEL" \
  --target "troupe,http://127.0.0.1:$GW,ignore_eos" \
  --target "llama.cpp,http://127.0.0.1:$LLAMA,min_tokens" \
  --rates "$RATES" --duration-s "$DURATION" --grace-s "$GRACE" --max-requests "$MAX_REQUESTS" \
  --prompt "$PROMPT" --output "$OUTPUT" --sigma "$SIGMA" --seed "$SEED" --api-key "$KEY" --out llm-serving \
  --note "threads=$THREADS per engine; server processes and the load generator under taskset -c $CPUS" \
  --note "troupe=one node (rate-limiter + llm-serving), CPU backend, systems/llm-serving.toml defaults (max_num_seqs 32, max_batched_tokens 256, prefix caching on)" \
  --note "llama.cpp=llama-cpp-python $LLAMA_VERSION server, n_ctx 2048, n_batch 512, OMP_WAIT_POLICY=passive, one request at a time (no parallel slots in the Python server); $LLAMA_CPU" \
  --note "script=bench/llm/serving.sh (RATES=$RATES DURATION=$DURATION GRACE=$GRACE PROMPT=$PROMPT OUTPUT=$OUTPUT SIGMA=$SIGMA SEED=$SEED)" \
  --note "load average when the script started=$LOAD_START" || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- troupe log (tail)" >&2; tail -20 "$TMP/troupe.log" >&2
  echo "--- llama.cpp log (tail)" >&2; tail -20 "$TMP/llama.log" >&2
  exit "$status"
fi
echo "Load average at script start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores)."

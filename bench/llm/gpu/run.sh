#!/usr/bin/env bash
# One-command GPU check for troupe-llm (run on the H200 machine, inside the
# folder prepare.sh staged, e.g. `bash /tmp/llm/run.sh /tmp/llm`). Writes to $OUT:
#   greedy_cuda.json  greedy output of the CUDA backend vs the CPU/float fixtures
#   ours.json         our decode tok/s at batch 1/32/128/256 and prefill tok/s
#   hf.json           HF transformers generate on the same GGUF, same batches
#   summary.md        side-by-side table with ratios and the issue-6 goals
set -uo pipefail
DIR=${1:-/tmp/llm}
OUT=${OUT:-$DIR/out}
mkdir -p "$OUT"
cd "$DIR"
MODEL=$DIR/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$MODEL" ]; then cat model.part.* > "$MODEL"; fi
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $MODEL" | sha256sum -c - || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}

echo "== greedy equality (CUDA vs fixtures)" >&2
timeout 120 ./greedy_check --model "$MODEL" --fixtures reference.json --backend cuda > "$OUT/greedy_cuda.json" 2> "$OUT/greedy_cuda.log"
tail -1 "$OUT/greedy_cuda.log" >&2

echo "== troupe-llm CUDA throughput" >&2
timeout 300 ./bench_engine --model "$MODEL" --backend cuda --batches 1,32,128,256 --gen 128 \
  --prompt-len 512 --no-mixed > "$OUT/ours.json" 2> "$OUT/ours.log"
cat "$OUT/ours.log" >&2

echo "== HF transformers generate" >&2
pip install --quiet --no-deps --no-index --find-links wheels gguf >/dev/null 2>&1 || true
timeout 300 python3 hf_baseline.py --model "$MODEL" --batches 1,32,128,256 --gen 128 --prompt-len 512 \
  > "$OUT/hf.json" 2> "$OUT/hf.log"
tail -6 "$OUT/hf.log" >&2

python3 summarize_gpu.py "$OUT" | tee "$OUT/summary.md"

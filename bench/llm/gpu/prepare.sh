#!/usr/bin/env bash
# Prepare the GPU check (run here, on a CPU machine): build the release examples,
# and stage what the H200 needs into two folders under .device/ (git-ignored),
# each under the 64 MiB that one device call carries:
#   .device/llm-a: bench_engine, greedy_check, fixtures, scripts, gguf wheel, model part 1
#   .device/llm-b: model part 2
# Then, with the device tool (see bench/llm/gpu/README.md):
#   call 1 (carry .device/llm-a): mkdir -p /tmp/llm && cp -r .device/llm-a/. /tmp/llm/
#   call 2 (carry .device/llm-b): cp -r .device/llm-b/. /tmp/llm/ && bash /tmp/llm/run.sh /tmp/llm
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-llm}
cargo build -q -p troupe-llm --release --example bench_engine --example greedy_check && cargo build -q -p troupe-llm-shell --release --example pull_model
MODEL=$("$CARGO_TARGET_DIR/release/examples/pull_model" smollm2-135m)
rm -rf .device/llm-a .device/llm-b
mkdir -p .device/llm-a .device/llm-b
for b in bench_engine greedy_check; do
  cp "$CARGO_TARGET_DIR/release/examples/$b" .device/llm-a/
  strip .device/llm-a/$b
done
cp actors/llm/core/tests/fixtures/reference.json .device/llm-a/
cp bench/llm/gpu/run.sh bench/llm/gpu/hf_baseline.py bench/llm/gpu/summarize_gpu.py .device/llm-a/
pip download --quiet --no-deps gguf -d .device/llm-a/wheels
split -b 50000000 "$MODEL" .device/llm-a/model.part.
mv .device/llm-a/model.part.ab .device/llm-b/
du -sh .device/llm-a .device/llm-b

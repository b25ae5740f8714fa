#!/usr/bin/env python3
"""HF transformers baseline for the GPU bench: the same GGUF (dequantized by
transformers through the `gguf` package), bf16, greedy `generate`, the same
synthetic prompts and batch sizes as bench_engine. Prints JSON on stdout."""

import argparse
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def prompt(s, n):
    return [((i * 7919 + s * 104729) % 40000 + 100) for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,32,128,256")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=512)
    a = ap.parse_args()
    d, f = os.path.split(a.model)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.bfloat16).cuda().eval()
    out = {"engine": "hf-transformers", "torch": torch.__version__, "decode": [], "prefill": []}
    with torch.inference_mode():
        # Prefill: one forward over a batch of prompts.
        for b, n in [(1, a.prompt_len), (8, 128)]:
            ids = torch.tensor([prompt(s, n) for s in range(b)], device="cuda")
            model(ids)
            torch.cuda.synchronize()
            t = time.perf_counter()
            model(ids)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            out["prefill"].append({"batch": b, "prompt_len": n, "tok_s": b * n / dt})
            print(f"hf prefill {b}x{n}: {b * n / dt:.0f} tok/s", file=sys.stderr)
        for b in [int(x) for x in a.batches.split(",")]:
            ids = torch.tensor([prompt(s, 32) for s in range(b)], device="cuda")
            mask = torch.ones_like(ids)
            kw = dict(max_new_tokens=a.gen, min_new_tokens=a.gen, do_sample=False, pad_token_id=2, attention_mask=mask)
            model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
            torch.cuda.synchronize()
            t = time.perf_counter()
            model.generate(ids, **kw)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            out["decode"].append({"batch": b, "tok_s": b * a.gen / dt, "ms_per_step": dt * 1000 / a.gen})
            print(f"hf decode batch {b}: {b * a.gen / dt:.1f} tok/s ({dt * 1000 / a.gen:.2f} ms/step)", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""llama.cpp side of the LLM engine bench (same measurements as
actors/llm/core/examples/bench_engine.rs), through llama-cpp-python's low-level API so
that several sequences decode in one llama_decode call (like llama-batched-bench).

Usage: python3 bench/llm/llamacpp_bench.py --model PATH --threads 2 > out.json

Timing covers llama_decode only (argmax sampling in numpy is excluded, which
favours llama.cpp slightly); prompts are the same synthetic token ids as ours.
"""

import argparse
import ctypes
import json
import sys
import time

import llama_cpp as L
import numpy as np


def prompt(s, n):
    return [((i * 7919 + s * 104729) % 40000 + 100) for i in range(n)]


class Ctx:
    def __init__(self, model, n_ctx, n_seq, threads, n_batch=512):
        p = L.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = n_batch
        p.n_ubatch = n_batch
        p.n_seq_max = n_seq
        p.n_threads = threads
        p.n_threads_batch = threads
        # One KV stream per sequence: with a unified cache llama.cpp attends every
        # token over all sequences' cells (masked), which at batch 32 costs it ~10x.
        if hasattr(p, "kv_unified"):
            p.kv_unified = False
        self.ctx = L.llama_init_from_model(model, p)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        self.batch = L.llama_batch_init(max(n_batch, n_seq), 0, 1)

    def decode(self, items):
        """items: list of (token, pos, seq, want_logits). Returns seconds spent."""
        b = self.batch
        b.n_tokens = len(items)
        for i, (t, pos, s, lg) in enumerate(items):
            b.token[i] = t
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = s
            b.logits[i] = 1 if lg else 0
        t0 = time.perf_counter()
        rc = L.llama_decode(self.ctx, b)
        dt = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return dt

    def argmax(self, i):
        ptr = L.llama_get_logits_ith(self.ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def free(self):
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)


def chunks(items, n):
    for i in range(0, len(items), n):
        yield items[i : i + n]


def bench_prefill(model, threads, batch, length):
    best = 0.0
    for _ in range(3):
        c = Ctx(model, batch * length + 64, batch, threads)
        items = [(t, p, s, p == length - 1) for s in range(batch) for p, t in enumerate(prompt(s, length))]
        dt = sum(c.decode(ch) for ch in chunks(items, 512))
        c.free()
        best = max(best, batch * length / dt)
    return best


def bench_decode(model, threads, batch, gen):
    plen = 32
    c = Ctx(model, batch * (plen + gen) + 64, batch, threads)
    items = [(t, p, s, p == plen - 1) for s in range(batch) for p, t in enumerate(prompt(s, plen))]
    for ch in chunks(items, 512):
        c.decode(ch)
    # Timed part: every step decodes one token for each of the `batch` sequences
    # (the first fed token is the prompt's last, which only shifts positions).
    steps, total = 0, 0.0
    toks = [prompt(s, plen)[-1] for s in range(batch)]
    pos = plen
    while steps + 2 < gen:
        step_items = [(toks[s], pos, s, True) for s in range(batch)]
        total += c.decode(step_items)
        toks = [c.argmax(i) for i in range(batch)]
        pos += 1
        steps += 1
    c.free()
    return batch * steps / total, total * 1000 / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    a = ap.parse_args()
    # Silence llama.cpp's per-tensor load log (keep a reference to the callback).
    global _quiet
    _quiet = L.llama_log_callback(lambda level, text, user: None)
    L.llama_log_set(_quiet, ctypes.c_void_p())
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        sys.exit("cannot load model")
    out = {"engine": "llama.cpp", "version": L.__version__, "threads": a.threads}
    p1 = bench_prefill(model, a.threads, 1, a.prompt_len)
    print(f"llama.cpp prefill 1x{a.prompt_len}: {p1:.0f} tok/s", file=sys.stderr)
    p8 = bench_prefill(model, a.threads, 8, 128)
    print(f"llama.cpp prefill 8x128: {p8:.0f} tok/s", file=sys.stderr)
    out["prefill"] = [
        {"batch": 1, "prompt_len": a.prompt_len, "tok_s": p1},
        {"batch": 8, "prompt_len": 128, "tok_s": p8},
    ]
    out["decode"] = []
    for b in [int(x) for x in a.batches.split(",")]:
        tps, ms = bench_decode(model, a.threads, b, a.gen)
        print(f"llama.cpp decode batch {b}: {tps:.1f} tok/s ({ms:.2f} ms/step)", file=sys.stderr)
        out["decode"].append({"batch": b, "tok_s": tps, "ms_per_step": ms})
    L.llama_model_free(model)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side table of ours.json vs hf.json plus the greedy check (GPU bench)."""

import json
import os
import sys


def load(p):
    try:
        return json.load(open(p))
    except Exception as e:  # a missing side is reported, not fatal
        return {"error": str(e)}


def main():
    out = sys.argv[1]
    ours, hf, greedy = (load(os.path.join(out, n)) for n in ("ours.json", "hf.json", "greedy_cuda.json"))
    lines = ["# troupe-llm CUDA vs HF transformers (same GGUF, same run)", ""]
    if "identical" in greedy:
        lines.append(f"Greedy check: {greedy['identical']}/{greedy['cases']} fixture prompts identical for "
                     f"{greedy['n_new']} tokens ({greedy['backend']}).")
    else:
        lines.append(f"Greedy check failed to run: {greedy.get('error')}")
    lines += ["", "| metric | troupe-llm | HF | ratio |", "| --- | ---: | ---: | ---: |"]
    for sec in ("prefill", "decode"):
        theirs = {r["batch"]: r for r in hf.get(sec, [])}
        for r in ours.get(sec, []):
            h = theirs.get(r["batch"])
            ratio = f"{r['tok_s'] / h['tok_s']:.1f}x" if h else "—"
            lines.append(f"| {sec} tok/s, batch {r['batch']} | {r['tok_s']:.0f} | {h['tok_s']:.0f} | {ratio} |" if h
                         else f"| {sec} tok/s, batch {r['batch']} | {r['tok_s']:.0f} | — | — |")
    dec = {r["batch"]: r for r in ours.get("decode", [])}
    if 1 in dec:
        lines.append(f"\nTPOT at batch 1: {dec[1]['ms_per_step']:.3f} ms (goal ≤ 1 ms)")
    if 256 in dec:
        lines.append(f"Aggregate decode at 256: {dec[256]['tok_s']:.0f} tok/s (goal ≥ 50,000)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

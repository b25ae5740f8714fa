#!/usr/bin/env python3
"""Merge bench_engine.rs and llamacpp_bench.py outputs (best of rounds per metric)
into a side-by-side table with ratios; writes <out>.json and <out>.md."""

import json
import platform
import sys


def best(runs, section, key):
    """{key value: best tok_s} over rounds."""
    out = {}
    for r in runs:
        for row in r.get(section, []):
            k = row[key]
            out[k] = max(out.get(k, 0.0), row["tok_s"])
    return out


def main():
    args = sys.argv[1:]
    threads = args[args.index("--threads") + 1]
    out = args[args.index("--out") + 1]
    n_mixed = args[args.index("--mixed") + 1] if "--mixed" in args else "64"
    files = [a for a in args if a.endswith(".json")]
    sep = args.index("--")
    ours = [json.load(open(f)) for f in files if args.index(f) < sep]
    theirs = [json.load(open(f)) for f in files if args.index(f) > sep]
    rows = []
    for section, key, label in [("prefill", "batch", "prefill tok/s, batch {}"), ("decode", "batch", "decode tok/s, batch {}")]:
        a, b = best(ours, section, key), best(theirs, section, key)
        for k in sorted(a):
            rows.append((label.format(k), a[k], b.get(k)))
    b1 = best(ours, "decode", "batch").get(1)
    b32 = best(ours, "decode", "batch").get(32)
    mixed = {
        m: max(r["mixed"][m]["generated_tok_s"] for r in ours) for m in ("continuous", "static")
    }
    lines = [
        f"# troupe-llm vs llama.cpp (CPU, {threads} threads)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, shared 2-core VM; best of {len(ours)} rounds per side.",
        f"Ours: {ours[0].get('backend', '?')}. Peer: llama.cpp via llama-cpp-python {theirs[0].get('version', '?') if theirs else '?'}.",
        "",
        "| metric | troupe-llm | llama.cpp | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, a, b in rows:
        ratio = f"{a / b:.2f}x" if b else "—"
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {ratio} |" if b else f"| {name} | {a:.1f} | — | — |")
    lines += [
        "",
        "Goals (issue 5):",
        f"- batch-1 decode ≥ 0.8× llama.cpp: {rows_ratio(rows, 'decode tok/s, batch 1')}",
        f"- aggregate decode at batch 32 ≥ 4× our batch 1: {b32 / b1:.2f}x" if b1 and b32 else "- batch 32 not measured",
        "",
        f"Mixed-length workload ({n_mixed} requests, prompts 16–192, outputs 8–128, 16 slots): "
        f"continuous batching {mixed['continuous']:.1f} generated tok/s vs static batching "
        f"{mixed['static']:.1f} ({mixed['continuous'] / mixed['static']:.2f}x).",
    ]
    md = "\n".join(lines) + "\n"
    print(md)
    with open(out + ".md", "w") as f:
        f.write(md)
    with open(out + ".json", "w") as f:
        json.dump({"threads": int(threads), "ours": ours, "llamacpp": theirs}, f, indent=1)


def rows_ratio(rows, name):
    for n, a, b in rows:
        if n == name and b:
            return f"{a / b:.2f}x ({'met' if a / b >= 0.8 else 'missed'})"
    return "not measured"


if __name__ == "__main__":
    main()

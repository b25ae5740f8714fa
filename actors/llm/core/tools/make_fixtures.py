#!/usr/bin/env python3
"""Independent reference for troupe-llm's correctness gate.

Regenerate the fixtures (from the repository root, model pulled first):

    pip install gguf==0.19.0 numpy tokenizers==0.23.3 jinja2
    python3 actors/llm/core/tools/make_fixtures.py \
        --model ~/.cache/troupe/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out actors/llm/core/tests/fixtures/reference.json

Why it is independent of the Rust engine:
- weights are dequantized by the `gguf` package (gguf.quants.dequantize), not by us;
- the forward pass is plain float64 numpy over the dequantized weights (no activation
  quantization, no paging, no batching), written from the llama architecture;
- prompts are rendered with the real Jinja chat template from the GGUF (jinja2), and
  tokenized by HF `tokenizers` configured like SmolLM2's tokenizer.json
  (Digits(individual) + ByteLevel pre-tokenizer, BPE with the GGUF merges).
RoPE uses the adjacent-pair layout: GGUF llama files store Q/K rows permuted so that
(x[2i], x[2i+1]) is a rotation pair (llama.cpp's "normal" rope), not HF rotate-half.
"""

import argparse
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
import jinja2
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, AddedToken

N_NEW = 32
TOP_N = 20

# (kind, system or None, text). kind "chat" renders the GGUF template; "raw" does not.
PROMPTS = [
    ("chat", None, "What is the capital of France?"),
    ("chat", None, "Write a haiku about the ocean."),
    ("raw", None, "The quick brown fox jumps over the lazy dog. 12345 + 678 ="),
    ("chat", "You are a pirate. Answer like one.", "Tell me about ships."),
    ("raw", None, 'def fibonacci(n):\n    """'),
    ("chat", None, "List three prime numbers greater than 100."),
    ("raw", None, "Café au lait, naïve résumé — 東京 2024!  Tabs\tand\n\nnewlines."),
]

# Extra strings for the tokenizer cross-check only (no forward pass).
TOKENIZER_ONLY = [
    "Hello world",
    "  leading spaces and trailing   ",
    "I'm sure you'll say it's 3.14159, they've done 1,000,000 tests; we'd agree.",
    "<|im_start|>user\nhi<|im_end|>\n",
    "emoji 🤖🚀 and ümlauts, ÆØÅ, русский текст, العربية",
    "x = [1, 2, 3]\nfor i in range(10):\n\tprint(i ** 2)\r\n",
    "",
]


def field_str(r, key):
    f = r.fields[key]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def field_num(r, key):
    f = r.fields[key]
    return f.parts[f.data[0]][0].item()


def field_str_array(r, key):
    f = r.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def build_tokenizer(r):
    tokens = field_str_array(r, "tokenizer.ggml.tokens")
    merges = field_str_array(r, "tokenizer.ggml.merges")
    tt = r.fields["tokenizer.ggml.token_type"]
    types = [int(tt.parts[i][0]) for i in tt.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(specials)
    return tok


def render(template, kind, system, text):
    if kind == "raw":
        return text
    msgs = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": text})
    env = jinja2.Environment(keep_trailing_newline=True)
    return env.from_string(template).render(messages=msgs, add_generation_prompt=True)


def q8(x):
    """llama.cpp-style activation quantization: per 32-block, d = amax/127,
    q = round-half-away(x/d), back to float (what the int8 dot products see)."""
    sh = x.shape
    b = x.reshape(-1, 32)
    d = np.abs(b).max(axis=1, keepdims=True) / 127.0
    d32 = d.astype(np.float32).astype(np.float64)
    inv = np.where(d32 > 0, 1.0 / np.where(d32 > 0, d32, 1.0), 0.0)
    v = b * inv
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return (q * d32).reshape(sh)


class Model:
    def __init__(self, r, emulate_q8=False):
        self.emulate_q8 = emulate_q8
        self.n_layer = field_num(r, "llama.block_count")
        self.n_head = field_num(r, "llama.attention.head_count")
        self.n_kv = field_num(r, "llama.attention.head_count_kv")
        self.dim = field_num(r, "llama.embedding_length")
        self.eps = field_num(r, "llama.attention.layer_norm_rms_epsilon")
        self.base = field_num(r, "llama.rope.freq_base")
        self.hd = self.dim // self.n_head
        self.w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
            self.w[t.name] = a.reshape([int(x) for x in reversed(t.shape)])
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]

    def act(self, x):
        return q8(x) if self.emulate_q8 else x

    def kv(self, x):
        return x.astype(np.float16).astype(np.float64) if self.emulate_q8 else x

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        # x: (T, heads, hd); rotate adjacent pairs (2i, 2i+1).
        hd = self.hd
        inv = self.base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = np.outer(pos, inv)  # (T, hd/2)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def forward(self, ids, cache, start):
        """ids: new tokens at positions start..; cache: per-layer (K, V) lists."""
        T = len(ids)
        pos = np.arange(start, start + T)
        x = self.w["token_embd.weight"][ids]
        group = self.n_head // self.n_kv
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.act(self.rms(x, self.w[p + "attn_norm.weight"]))
            q = (h @ self.w[p + "attn_q.weight"].T).reshape(T, self.n_head, self.hd)
            k = (h @ self.w[p + "attn_k.weight"].T).reshape(T, self.n_kv, self.hd)
            v = (h @ self.w[p + "attn_v.weight"].T).reshape(T, self.n_kv, self.hd)
            q, k = self.rope(q, pos), self.kv(self.rope(k, pos))
            v = self.kv(v)
            K = np.concatenate([cache[l][0], k]) if start else k
            V = np.concatenate([cache[l][1], v]) if start else v
            cache[l] = (K, V)
            S = K.shape[0]
            att = np.empty((T, self.n_head, self.hd))
            mask = np.arange(S)[None, :] <= pos[:, None]
            for hh in range(self.n_head):
                kv = hh // group
                sc = (q[:, hh, :] @ K[:, kv, :].T) / np.sqrt(self.hd)
                sc = np.where(mask, sc, -np.inf)
                sc = np.exp(sc - sc.max(axis=1, keepdims=True))
                sc /= sc.sum(axis=1, keepdims=True)
                att[:, hh, :] = sc @ V[:, kv, :]
            x = x + self.act(att.reshape(T, self.dim)) @ self.w[p + "attn_output.weight"].T
            h = self.act(self.rms(x, self.w[p + "ffn_norm.weight"]))
            g = h @ self.w[p + "ffn_gate.weight"].T
            u = h @ self.w[p + "ffn_up.weight"].T
            x = x + self.act((g / (1 + np.exp(-g))) * u) @ self.w[p + "ffn_down.weight"].T
        x = self.act(self.rms(x[-1:], self.w["output_norm.weight"]))
        return (x @ self.w["output.weight"].T)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--emulate-q8",
        action="store_true",
        help="quantize matmul inputs to 8 bits per 32-block and store K/V as f16, as llama.cpp and troupe-llm do",
    )
    args = ap.parse_args()
    r = GGUFReader(args.model)
    tok = build_tokenizer(r)
    template = field_str(r, "tokenizer.chat_template")
    model = Model(r, emulate_q8=args.emulate_q8)
    cases = []
    for kind, system, text in PROMPTS:
        rendered = render(template, kind, system, text)
        ids = tok.encode(rendered, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == rendered, rendered
        cache = [None] * model.n_layer
        logits = model.forward(ids, cache, 0)
        top = np.argsort(-logits)[:TOP_N]
        out = []
        pos = len(ids)
        step_logits = logits
        for _ in range(N_NEW):
            nxt = int(np.argmax(step_logits))
            out.append(nxt)
            step_logits = model.forward([nxt], cache, pos)
            pos += 1
        cases.append(
            {
                "kind": kind,
                "system": system,
                "text": text,
                "rendered": rendered,
                "prompt_ids": ids,
                "greedy_ids": out,
                "greedy_text": tok.decode(out, skip_special_tokens=False),
                "prefill_top": [[int(i), float(logits[i])] for i in top],
            }
        )
        print(f"{kind}: {text[:40]!r} -> {cases[-1]['greedy_text'][:60]!r}", file=sys.stderr)
    tok_cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in TOKENIZER_ONLY]
    doc = {
        "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "n_new": N_NEW,
        "reference": "gguf dequantize + float64 numpy forward; HF tokenizers; jinja2 template",
        "emulate_q8": args.emulate_q8,
        "cases": cases,
        "tokenizer_cases": tok_cases,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

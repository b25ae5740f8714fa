#!/usr/bin/env python3
"""The official `openai` client against troupe's LLM gateway (tests/llm_serving.rs runs it).

Streams a chat completion (with usage), makes a non-streamed one and a legacy completion,
lists the models, and checks that errors come back as the client's typed exceptions.
Prints one JSON line with what it saw; exits non-zero on any mismatch.

    python3 tests/llm/openai_client.py --base-url http://127.0.0.1:8000/v1 --api-key "$(troupe certs api-key alice)"
"""

import argparse
import json
import sys

import openai


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=120)
    out = {"openai_version": openai.__version__}

    out["models"] = sorted(m.id for m in client.models.list())
    assert a.model in out["models"], out["models"]

    # Streamed chat completion with the usage chunk at the end.
    stream = client.chat.completions.create(
        model=a.model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, chunks, finish, usage = "", 0, None, None
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert chunks >= 3, chunks
    assert text.strip(), "empty streamed text"
    assert finish in ("stop", "length"), finish
    assert usage is not None and usage.completion_tokens >= 1 and usage.prompt_tokens > 5, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    out["stream"] = {"text": text, "chunks": chunks, "finish": finish, "usage": usage.model_dump()}

    # Non-streamed, greedy: the same answer as the stream (both greedy).
    r = client.chat.completions.create(
        model=a.model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert r.choices[0].message.content == text, (r.choices[0].message.content, text)
    assert r.usage.completion_tokens == usage.completion_tokens
    out["chat"] = r.choices[0].message.content

    c = client.completions.create(model=a.model, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0)
    assert c.choices[0].text, c
    out["completion"] = c.choices[0].text

    # Errors arrive as the client's typed exceptions, with OpenAI's error body.
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    try:
        client.chat.completions.create(model=a.model, messages=[{"role": "user", "content": "x"}], n=2)
        raise AssertionError("n=2 accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "n", e.body
    bad = openai.OpenAI(base_url=a.base_url, api_key="sk-not-a-key", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("bad key accepted")
    except openai.AuthenticationError as e:
        assert e.body["code"] == "invalid_api_key", e.body
    out["errors"] = "ok"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

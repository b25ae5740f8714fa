//! LLM serving bench (system 01), after vLLM's `bench serve`: streams `/v1/completions`
//! (`stream: true`) against OpenAI-compatible servers with fixed-seed Poisson arrivals at
//! several request rates and a prompt/output length mix; per rate and server it reports
//! TTFT, TPOT, ITL and end-to-end latency (p50/p99), output tokens/s, requests/s and
//! goodput (requests/s meeting TTFT ≤ `--ttft-slo-ms` AND TPOT ≤ `--tpot-slo-ms`).
//! Rates run against every target in turn (the order alternates per rate), with the same
//! prompts and the same arrival times for each. Writes `bench/results/<out>.json`, `.md` and
//! two plots (goodput and TTFT p99 against the rate).
//!
//! Lengths are controlled: prompts are random words cut to an exact token count with the
//! model's own tokenizer (the GGUF both servers load), and generation may not stop early
//! (`ignore_eos` for troupe, `min_tokens` = `max_tokens` for llama-cpp-python's server,
//! `none` to send neither).
//!
//! Usage: `cargo run --release -p troupe-bench --bin llm_serving -- --model-file PATH
//! --target troupe,http://127.0.0.1:8080,ignore_eos --target llama.cpp,http://127.0.0.1:8081,min_tokens
//! [--rates 0.5,1,2,4] [--duration-s 40] [--grace-s 30] [--max-requests 120] [--seed 1]
//! [--prompt 32,128,512] [--output 16,64,256] [--sigma 0.8] [--ttft-slo-ms 200]
//! [--tpot-slo-ms 50] [--relaxed-slo-ms 1000,100] [--api-key KEY (default: $TROUPE_API_KEY, else alice's in .troupe/api-keys.toml)] [--model smollm2-135m]
//! [--out llm-serving] [--note key=value]...`
//!
//! `--prompt`/`--output` are min,median,max tokens of a lognormal clamped to [min, max].
//! Arrivals stop after `--duration-s` (or `--max-requests`); requests still running
//! `--grace-s` after the last arrival are dropped (the connection closes, both servers
//! then cancel) and count as failed. Before the next phase a 1-token probe must pass
//! through the server, so a backlog never spills into the other side's phase.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use troupe_chart::{Line, LineChart, render_lines_png};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Eos {
    Ignore,
    MinTokens,
    Nothing,
}

#[derive(Debug, Clone)]
struct Target {
    name: String,
    /// host:port
    addr: String,
    eos: Eos,
}

struct Args {
    targets: Vec<Target>,
    rates: Vec<f64>,
    duration_s: f64,
    grace_s: f64,
    max_requests: usize,
    seed: u64,
    model_file: PathBuf,
    model: String,
    api_key: String,
    prompt: (usize, f64, usize),
    output: (usize, f64, usize),
    sigma: f64,
    ttft_slo_ms: f64,
    tpot_slo_ms: f64,
    /// A second, looser SLO pair, reported next to the goal's (this machine is shared).
    relaxed: (f64, f64),
    out: String,
    notes: Vec<(String, String)>,
}

fn triple(v: &str) -> anyhow::Result<(usize, f64, usize)> {
    let p: Vec<&str> = v.split(',').collect();
    anyhow::ensure!(p.len() == 3, "expected min,median,max; got {v}");
    let t = (p[0].parse()?, p[1].parse()?, p[2].parse()?);
    anyhow::ensure!(t.0 >= 1 && (t.0 as f64) <= t.1 && t.1 <= t.2 as f64, "need 1 <= min <= median <= max: {v}");
    Ok(t)
}

fn target(v: &str) -> anyhow::Result<Target> {
    let p: Vec<&str> = v.split(',').collect();
    anyhow::ensure!(p.len() == 3, "--target NAME,http://HOST:PORT,ignore_eos|min_tokens|none; got {v}");
    let addr = p[1].trim_start_matches("http://").trim_end_matches('/').to_string();
    anyhow::ensure!(!addr.contains('/'), "give the base URL without a path: {v}");
    let eos = match p[2] {
        "ignore_eos" => Eos::Ignore,
        "min_tokens" => Eos::MinTokens,
        "none" => Eos::Nothing,
        o => bail!("unknown eos mode {o}"),
    };
    Ok(Target { name: p[0].to_string(), addr, eos })
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        targets: Vec::new(),
        rates: vec![0.5, 1.0, 2.0, 4.0],
        duration_s: 40.0,
        grace_s: 30.0,
        max_requests: 120,
        seed: 1,
        model_file: PathBuf::new(),
        model: "smollm2-135m".into(),
        api_key: String::new(),
        prompt: (32, 128.0, 512),
        output: (16, 64.0, 256),
        sigma: 0.8,
        ttft_slo_ms: 200.0,
        tpot_slo_ms: 50.0,
        relaxed: (1000.0, 100.0),
        out: "llm-serving".into(),
        notes: Vec::new(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).context("every flag takes a value")?;
        match pair[0].as_str() {
            "--target" => a.targets.push(target(val)?),
            "--rates" => a.rates = val.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--duration-s" => a.duration_s = val.parse()?,
            "--grace-s" => a.grace_s = val.parse()?,
            "--max-requests" => a.max_requests = val.parse()?,
            "--seed" => a.seed = val.parse()?,
            "--model-file" => a.model_file = val.into(),
            "--model" => a.model = val.clone(),
            "--api-key" => a.api_key = val.clone(),
            "--prompt" => a.prompt = triple(val)?,
            "--output" => a.output = triple(val)?,
            "--sigma" => a.sigma = val.parse()?,
            "--ttft-slo-ms" => a.ttft_slo_ms = val.parse()?,
            "--tpot-slo-ms" => a.tpot_slo_ms = val.parse()?,
            "--relaxed-slo-ms" => {
                let (x, y) = val.split_once(',').context("--relaxed-slo-ms TTFT,TPOT")?;
                a.relaxed = (x.parse()?, y.parse()?);
            }
            "--out" => a.out = val.clone(),
            "--note" => {
                let (k, v) = val.split_once('=').context("--note key=value")?;
                a.notes.push((k.into(), v.into()));
            }
            other => bail!("unknown flag {other}; see the module docs"),
        }
    }
    if a.api_key.is_empty() {
        // The cluster's development user, found the documented way (docs/operations.md).
        let key_file = std::path::Path::new(".troupe/cluster.key");
        a.api_key = troupe_runtime::cluster::api_keys::for_client("alice", key_file).unwrap_or_else(|e| {
            eprintln!("warning: no API key for troupe targets: {e}");
            String::new()
        });
    }
    anyhow::ensure!(!a.targets.is_empty(), "give at least one --target");
    anyhow::ensure!(a.model_file.exists(), "--model-file {} not found", a.model_file.display());
    anyhow::ensure!(a.rates.iter().all(|r| *r > 0.0), "rates must be positive");
    Ok(a)
}

/// SplitMix64: small, seedable, the same on every platform and crate version.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn exp(&mut self, rate: f64) -> f64 {
        -self.unit().ln() / rate
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn lognormal(rng: &mut Rng, (lo, median, hi): (usize, f64, usize), sigma: f64) -> usize {
    ((median.ln() + sigma * rng.normal()).exp().round() as usize).clamp(lo, hi)
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were", "their",
    "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no",
    "she", "other", "its", "may", "these", "what", "them", "than", "some", "him", "time", "into", "only", "do",
    "could", "new", "about", "two", "first", "then", "also", "any", "like", "our", "over", "such", "after", "people",
    "should", "very", "most", "where", "made", "between", "many", "through", "system", "water", "city", "model",
    "server", "request", "token", "memory", "network", "river", "mountain", "history", "music", "garden", "question",
    "answer", "summary", "explain", "write", "story", "about", "science", "energy", "market", "school", "computer",
    "language", "because", "little", "world", "house", "small", "large", "number", "always", "never",
];

/// One request of the workload.
#[derive(Debug, Clone)]
struct Req {
    prompt: String,
    prompt_tokens: usize,
    output_tokens: usize,
}

struct Workload {
    tokenizer: troupe_llm::tokenizer::Tokenizer,
}

impl Workload {
    fn load(path: &std::path::Path) -> anyhow::Result<Workload> {
        let buf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let f = troupe_llm::gguf::GgufFile::parse(&buf).map_err(|e| anyhow::anyhow!("gguf: {e}"))?;
        let tokenizer =
            troupe_llm::tokenizer::Tokenizer::from_gguf(&f).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(Workload { tokenizer })
    }

    fn count(&self, text: &str) -> usize {
        self.tokenizer.encode(text, false).map(|v| v.len()).unwrap_or(0)
    }

    /// Random words cut to `n` tokens of the model's vocabulary (n, or within a token or
    /// two of it after re-tokenizing; the exact count is kept).
    fn prompt(&self, rng: &mut Rng, n: usize) -> anyhow::Result<(String, usize)> {
        let mut text = String::from("Continue the text:");
        loop {
            for _ in 0..(n + 8) {
                text.push(' ');
                text.push_str(WORDS[rng.below(WORDS.len())]);
            }
            let ids = self.tokenizer.encode(&text, false).map_err(|e| anyhow::anyhow!("{e}"))?;
            if ids.len() >= n {
                let bos = usize::from(self.tokenizer.add_bos && self.tokenizer.bos.is_some());
                let cut = self.tokenizer.decode(&ids[bos..n]).map_err(|e| anyhow::anyhow!("{e}"))?;
                let count = self.count(&cut);
                return Ok((cut, count));
            }
        }
    }

    fn requests(&self, a: &Args, rng: &mut Rng, count: usize) -> anyhow::Result<Vec<Req>> {
        (0..count)
            .map(|_| {
                let p = lognormal(rng, a.prompt, a.sigma);
                let o = lognormal(rng, a.output, a.sigma);
                let (prompt, prompt_tokens) = self.prompt(rng, p)?;
                Ok(Req { prompt, prompt_tokens, output_tokens: o })
            })
            .collect()
    }
}

/// What one streamed request saw.
#[derive(Debug, Clone, Default)]
struct Outcome {
    ok: bool,
    error: Option<String>,
    ttft_s: f64,
    e2e_s: f64,
    itl_s: Vec<f64>,
    /// Completion tokens: `usage.completion_tokens` where the server sends it, else
    /// the number of chunks that carried text.
    out_tokens: usize,
    chunks: usize,
    finish: Option<String>,
}

fn body(t: &Target, model: &str, r: &Req) -> String {
    let mut b = json!({
        "model": model,
        "prompt": r.prompt,
        "max_tokens": r.output_tokens,
        "temperature": 0.0,
        "stream": true,
    });
    match t.eos {
        Eos::Ignore => {
            b["ignore_eos"] = json!(true);
            b["stream_options"] = json!({ "include_usage": true });
        }
        Eos::MinTokens => b["min_tokens"] = json!(r.output_tokens),
        Eos::Nothing => {}
    }
    b.to_string()
}

fn find(h: &[u8], pat: &[u8]) -> Option<usize> {
    h.windows(pat.len()).position(|w| w == pat)
}

/// Incremental HTTP/1.1 body: chunked or plain.
struct BodyDecoder {
    chunked: bool,
    raw: Vec<u8>,
    /// Bytes left in the current chunk; None: a size line comes next.
    left: Option<usize>,
    done: bool,
}

impl BodyDecoder {
    /// Feeds raw bytes; appends decoded body bytes to `out`.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        if !self.chunked {
            out.extend_from_slice(data);
            return Ok(());
        }
        self.raw.extend_from_slice(data);
        let mut pos = 0;
        loop {
            match self.left {
                Some(0) => {
                    // The CRLF after a chunk's data.
                    if self.raw.len() - pos < 2 {
                        break;
                    }
                    pos += 2;
                    self.left = None;
                }
                Some(n) => {
                    let take = n.min(self.raw.len() - pos);
                    if take == 0 {
                        break;
                    }
                    out.extend_from_slice(&self.raw[pos..pos + take]);
                    pos += take;
                    self.left = Some(n - take);
                }
                None => {
                    let Some(eol) = find(&self.raw[pos..], b"\r\n") else { break };
                    let line = std::str::from_utf8(&self.raw[pos..pos + eol])?;
                    let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                        .with_context(|| format!("bad chunk size line {line:?}"))?;
                    pos += eol + 2;
                    if size == 0 {
                        self.done = true;
                        break;
                    }
                    self.left = Some(size);
                }
            }
        }
        self.raw.drain(..pos);
        Ok(())
    }
}

/// Streams one completion; never runs past `deadline`.
async fn one(t: &Target, key: &str, model: &str, r: &Req, deadline: tokio::time::Instant) -> Outcome {
    let start = Instant::now();
    let mut o = Outcome::default();
    match tokio::time::timeout_at(deadline, stream(t, key, model, r, start, &mut o)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => o.error = Some(format!("{e:#}")),
        Err(_) => o.error = Some("timed out (dropped)".into()),
    }
    o.ok = o.error.is_none() && o.chunks > 0;
    if o.ok && o.out_tokens == 0 {
        o.out_tokens = o.chunks;
    }
    o
}

async fn stream(t: &Target, key: &str, model: &str, r: &Req, start: Instant, o: &mut Outcome) -> anyhow::Result<()> {
    let body = body(t, model, r);
    let mut s = TcpStream::connect(&t.addr).await.with_context(|| format!("connect {}", t.addr))?;
    s.set_nodelay(true)?;
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        t.addr,
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut buf = vec![0u8; 16384];
    let mut head_buf = Vec::new();
    let mut status = 0u16;
    let mut dec: Option<BodyDecoder> = None;
    let mut events = Vec::new();
    let mut last_token: Option<f64> = None;
    let mut usage_tokens = None;
    loop {
        let n = s.read(&mut buf).await?;
        let now = start.elapsed().as_secs_f64();
        let mut data = &buf[..n];
        if dec.is_none() {
            head_buf.extend_from_slice(data);
            let Some(end) = find(&head_buf, b"\r\n\r\n") else {
                anyhow::ensure!(n > 0, "connection closed before the response head");
                continue;
            };
            let head = String::from_utf8_lossy(&head_buf[..end]).to_ascii_lowercase();
            status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let chunked = head.contains("transfer-encoding: chunked");
            dec = Some(BodyDecoder { chunked, raw: Vec::new(), left: None, done: false });
            let rest = head_buf.split_off(end + 4);
            head_buf = rest;
            data = &head_buf;
        }
        let Some(d) = dec.as_mut() else { unreachable!() };
        d.feed(data, &mut events)?;
        let finished = n == 0 || d.done;
        if status != 200 {
            if finished || events.len() > 4096 {
                bail!("HTTP {status}: {}", String::from_utf8_lossy(&events).chars().take(300).collect::<String>());
            }
            continue;
        }
        // SSE: events end at a blank line; '\r' never appears inside JSON text.
        events.retain(|b| *b != b'\r');
        while let Some(end) = find(&events, b"\n\n") {
            let ev: Vec<u8> = events.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&ev).lines() {
                let Some(payload) = line.strip_prefix("data:") else { continue };
                let payload = payload.trim();
                if payload == "[DONE]" {
                    o.e2e_s = last_token.unwrap_or(now);
                    o.out_tokens = usage_tokens.unwrap_or(0);
                    return Ok(());
                }
                let v: Value = serde_json::from_str(payload).with_context(|| format!("bad event {payload:?}"))?;
                if let Some(e) = v.get("error") {
                    bail!("error event: {e}");
                }
                if let Some(u) = v.get("usage").and_then(|u| u.get("completion_tokens")).and_then(Value::as_u64) {
                    usage_tokens = Some(u as usize);
                }
                let Some(c) = v.get("choices").and_then(|c| c.get(0)) else { continue };
                let text = c.get("text").or_else(|| c.get("delta").and_then(|d| d.get("content")));
                if text.and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
                    match last_token {
                        None => o.ttft_s = now,
                        Some(prev) => o.itl_s.push(now - prev),
                    }
                    last_token = Some(now);
                    o.chunks += 1;
                }
                if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                    o.finish = Some(f.to_string());
                }
            }
        }
        if finished {
            anyhow::ensure!(last_token.is_some(), "stream ended without a token");
            o.e2e_s = last_token.unwrap_or(now);
            o.out_tokens = usage_tokens.unwrap_or(0);
            return Ok(());
        }
    }
}

/// Sends a 1-token request until one passes through, so that whatever is still queued
/// (a backlog from the phase before) has left the server.
async fn barrier(t: &Target, a: &Args, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let probe = Req { prompt: "Hello".into(), prompt_tokens: 1, output_tokens: 1 };
    loop {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let o = one(t, &a.api_key, &a.model, &probe, deadline).await;
        if o.ok {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < timeout, "{} not ready after {timeout:?}: {:?}", t.name, o.error);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

fn dist_ms(mut v: Vec<f64>) -> Value {
    let mean = if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    json!({
        "p50": pct(&mut v, 0.50) * 1e3,
        "p99": pct(&mut v, 0.99) * 1e3,
        "mean": mean * 1e3,
        "n": v.len(),
    })
}

fn tpot(o: &Outcome) -> Option<f64> {
    (o.ok && o.out_tokens > 1).then(|| (o.e2e_s - o.ttft_s) / (o.out_tokens - 1) as f64)
}

fn summarize(a: &Args, rate: f64, reqs: &[Req], outs: &[Outcome], duration_s: f64) -> Value {
    let ok: Vec<&Outcome> = outs.iter().filter(|o| o.ok).collect();
    let meets = |ttft_ms: f64, tpot_ms: f64| {
        ok.iter().filter(|o| o.ttft_s * 1e3 <= ttft_ms && tpot(o).is_none_or(|t| t * 1e3 <= tpot_ms)).count()
    };
    let good = meets(a.ttft_slo_ms, a.tpot_slo_ms);
    let good_relaxed = meets(a.relaxed.0, a.relaxed.1);
    let out_tokens: usize = ok.iter().map(|o| o.out_tokens).sum();
    let short = outs.iter().zip(reqs).filter(|(o, r)| o.ok && o.out_tokens != r.output_tokens).count();
    let mut errors: Vec<String> = outs.iter().filter_map(|o| o.error.clone()).collect();
    errors.sort();
    errors.dedup();
    errors.truncate(5);
    json!({
        "rate": rate,
        "requests": outs.len(),
        "completed": ok.len(),
        "failed": outs.len() - ok.len(),
        "errors": errors,
        "completed_not_at_max_tokens": short,
        "duration_s": duration_s,
        "good": good,
        "goodput_rps": good as f64 / duration_s,
        "slo_attainment": good as f64 / outs.len().max(1) as f64,
        "goodput_relaxed_rps": good_relaxed as f64 / duration_s,
        "request_throughput_rps": ok.len() as f64 / duration_s,
        "output_throughput_tok_s": out_tokens as f64 / duration_s,
        "ttft_ms": dist_ms(ok.iter().map(|o| o.ttft_s).collect()),
        "tpot_ms": dist_ms(ok.iter().filter_map(|o| tpot(o)).collect()),
        "itl_ms": dist_ms(ok.iter().flat_map(|o| o.itl_s.iter().copied()).collect()),
        "e2e_ms": dist_ms(ok.iter().map(|o| o.e2e_s).collect()),
    })
}

async fn phase(a: &Args, t: &Target, reqs: &[Req], arrivals: &[f64]) -> (Vec<Outcome>, f64) {
    let start = tokio::time::Instant::now();
    let last = arrivals.last().copied().unwrap_or(0.0);
    let deadline = start + Duration::from_secs_f64(last + a.grace_s);
    let mut set = tokio::task::JoinSet::new();
    for (i, (r, at)) in reqs.iter().zip(arrivals).enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(*at)).await;
        let (t, r, key, model) = (t.clone(), r.clone(), a.api_key.clone(), a.model.clone());
        set.spawn(async move { (i, one(&t, &key, &model, &r, deadline).await) });
    }
    let mut outs = vec![Outcome::default(); reqs.len()];
    while let Some(res) = set.join_next().await {
        if let Ok((i, o)) = res {
            outs[i] = o;
        }
    }
    (outs, start.elapsed().as_secs_f64())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn fmt(x: f64, digits: usize) -> String {
    if x.is_finite() { format!("{x:.digits$}") } else { "–".into() }
}

fn ratio(ours: f64, theirs: f64) -> Value {
    if theirs > 0.0 && ours.is_finite() && theirs.is_finite() { json!(ours / theirs) } else { Value::Null }
}

fn ratio_text(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 && ours.is_finite() && theirs.is_finite() {
        format!("{:.2}x", ours / theirs)
    } else if ours > 0.0 && theirs == 0.0 {
        "∞ (peer 0)".into()
    } else {
        "–".into()
    }
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let load_start = loadavg();
    let wl = Workload::load(&a.model_file)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The workload per rate: the same prompts, lengths and arrival times for every target.
    let mut plans = Vec::new();
    for (k, &rate) in a.rates.iter().enumerate() {
        let mut rng = Rng(a.seed ^ (0xA5A5_0000 + k as u64));
        let mut arrivals = Vec::new();
        let mut at = 0.0;
        loop {
            at += rng.exp(rate);
            if at > a.duration_s || arrivals.len() >= a.max_requests {
                break;
            }
            arrivals.push(at);
        }
        let reqs = wl.requests(&a, &mut rng, arrivals.len())?;
        plans.push((rate, arrivals, reqs));
    }
    let all: Vec<&Req> = plans.iter().flat_map(|p| p.2.iter()).collect();
    let mean = |f: &dyn Fn(&Req) -> usize| all.iter().map(|r| f(r)).sum::<usize>() as f64 / all.len().max(1) as f64;
    let workload = json!({
        "requests_total": all.len(),
        "prompt_tokens": { "min": a.prompt.0, "median": a.prompt.1, "max": a.prompt.2, "sigma": a.sigma, "mean_drawn": mean(&|r| r.prompt_tokens) },
        "output_tokens": { "min": a.output.0, "median": a.output.1, "max": a.output.2, "sigma": a.sigma, "mean_drawn": mean(&|r| r.output_tokens) },
        "arrivals": "Poisson (exponential gaps), fixed seed",
        "seed": a.seed,
        "duration_s": a.duration_s,
        "grace_s": a.grace_s,
        "max_requests": a.max_requests,
    });
    eprintln!("workload: {workload}");
    let mut results = Vec::new();
    rt.block_on(async {
        for t in &a.targets {
            let waited = barrier(t, &a, Duration::from_secs(300)).await?;
            eprintln!("{} ready after {:.1}s", t.name, waited.as_secs_f64());
        }
        for (k, (rate, arrivals, reqs)) in plans.iter().enumerate() {
            let mut order: Vec<&Target> = a.targets.iter().collect();
            if k % 2 == 1 {
                order.reverse();
            }
            let mut per = serde_json::Map::new();
            for t in order {
                let (outs, dur) = phase(&a, t, reqs, arrivals).await;
                let s = summarize(&a, *rate, reqs, &outs, dur);
                eprintln!(
                    "rate {rate} {}: {}/{} done, goodput {:.3} req/s, {:.1} tok/s, TTFT p50/p99 {}/{} ms, TPOT p50/p99 {}/{} ms, load {}",
                    t.name,
                    s["completed"],
                    s["requests"],
                    f(&s["goodput_rps"]),
                    f(&s["output_throughput_tok_s"]),
                    fmt(f(&s["ttft_ms"]["p50"]), 0),
                    fmt(f(&s["ttft_ms"]["p99"]), 0),
                    fmt(f(&s["tpot_ms"]["p50"]), 1),
                    fmt(f(&s["tpot_ms"]["p99"]), 1),
                    loadavg()
                );
                per.insert(t.name.clone(), s);
                let waited = barrier(t, &a, Duration::from_secs(120)).await?;
                eprintln!("  {} drained in {:.1}s", t.name, waited.as_secs_f64());
            }
            results.push(json!({ "rate": rate, "targets": per }));
        }
        anyhow::Ok(())
    })?;
    let load_end = loadavg();

    // Ratios: the first target over the second (troupe / llama.cpp in bench/llm/serving.sh).
    let names: Vec<String> = a.targets.iter().map(|t| t.name.clone()).collect();
    let mut md = format!(
        "# LLM serving: {} (OpenAI-compatible, streamed /v1/completions)\n\n\
         Poisson arrivals (seed {}), {} s of arrivals per rate (at most {} requests), {} s grace; \
         prompts {}–{} tokens (lognormal, median {}), outputs {}–{} (median {}), generation to max_tokens. \
         SLOs: TTFT ≤ {} ms and TPOT ≤ {} ms. Latencies over completed requests; goodput = requests/s meeting both SLOs; \
         relaxed goodput: the same with TTFT ≤ {} ms and TPOT ≤ {} ms.\n\n",
        names.join(" vs "),
        a.seed,
        a.duration_s,
        a.max_requests,
        a.grace_s,
        a.prompt.0,
        a.prompt.2,
        a.prompt.1,
        a.output.0,
        a.output.2,
        a.output.1,
        a.ttft_slo_ms,
        a.tpot_slo_ms,
        a.relaxed.0,
        a.relaxed.1
    );
    md.push_str("| rate (req/s) | server | done/sent | goodput (req/s) | relaxed goodput | req/s | out tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | ITL p50 / p99 (ms) |\n");
    md.push_str("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in &results {
        for n in &names {
            let s = &r["targets"][n];
            md.push_str(&format!(
                "| {} | {n} | {}/{} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |\n",
                r["rate"],
                s["completed"],
                s["requests"],
                fmt(f(&s["goodput_rps"]), 3),
                fmt(f(&s["goodput_relaxed_rps"]), 3),
                fmt(f(&s["request_throughput_rps"]), 3),
                fmt(f(&s["output_throughput_tok_s"]), 1),
                fmt(f(&s["ttft_ms"]["p50"]), 0),
                fmt(f(&s["ttft_ms"]["p99"]), 0),
                fmt(f(&s["tpot_ms"]["p50"]), 1),
                fmt(f(&s["tpot_ms"]["p99"]), 1),
                fmt(f(&s["itl_ms"]["p50"]), 1),
                fmt(f(&s["itl_ms"]["p99"]), 1),
            ));
        }
    }
    let mut ratios = Vec::new();
    if names.len() >= 2 {
        let (x, y) = (&names[0], &names[1]);
        md.push_str(&format!(
            "\nRatios {x} / {y} (goodput and throughput: higher is better for {x}; latencies: lower is better):\n\n\
             | rate | goodput | relaxed goodput | out tok/s | TTFT p99 | TPOT p99 | ITL p99 | goal: goodput {x} > {y} |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
        ));
        for r in &results {
            let (sx, sy) = (&r["targets"][x], &r["targets"][y]);
            let g = (f(&sx["goodput_rps"]), f(&sy["goodput_rps"]));
            let met = g.0 > g.1;
            let cell = |k: &str, q: &str| ratio_text(f(&sx[k][q]), f(&sy[k][q]));
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r["rate"],
                ratio_text(g.0, g.1),
                ratio_text(f(&sx["goodput_relaxed_rps"]), f(&sy["goodput_relaxed_rps"])),
                ratio_text(f(&sx["output_throughput_tok_s"]), f(&sy["output_throughput_tok_s"])),
                cell("ttft_ms", "p99"),
                cell("tpot_ms", "p99"),
                cell("itl_ms", "p99"),
                if met { "met" } else { "missed" }
            ));
            ratios.push(json!({
                "rate": r["rate"],
                "goodput": ratio(g.0, g.1),
                "goodput_relaxed": ratio(f(&sx["goodput_relaxed_rps"]), f(&sy["goodput_relaxed_rps"])),
                "output_throughput": ratio(f(&sx["output_throughput_tok_s"]), f(&sy["output_throughput_tok_s"])),
                "ttft_p99": ratio(f(&sx["ttft_ms"]["p99"]), f(&sy["ttft_ms"]["p99"])),
                "tpot_p99": ratio(f(&sx["tpot_ms"]["p99"]), f(&sy["tpot_ms"]["p99"])),
                "itl_p99": ratio(f(&sx["itl_ms"]["p99"]), f(&sy["itl_ms"]["p99"])),
                "goal_met": met,
            }));
        }
    }
    for (k, v) in &a.notes {
        md.push_str(&format!("\n- {k}: {v}"));
    }
    md.push_str(&format!(
        "\n\nLoad average at start: {load_start}; at end: {load_end} ({} cores, shared).\n",
        troupe_bench::machine()["cores"]
    ));

    let notes: serde_json::Map<String, Value> = a.notes.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let doc = json!({
        "bench": "llm-serving",
        "machine": troupe_bench::machine(),
        "load_avg_start": load_start,
        "load_avg_end": load_end,
        "model": a.model,
        "model_file": a.model_file.display().to_string(),
        "targets": a.targets.iter().map(|t| json!({ "name": t.name, "addr": t.addr, "eos": format!("{:?}", t.eos) })).collect::<Vec<_>>(),
        "slo": { "ttft_ms": a.ttft_slo_ms, "tpot_ms": a.tpot_slo_ms },
        "relaxed_slo": { "ttft_ms": a.relaxed.0, "tpot_ms": a.relaxed.1 },
        "workload": workload,
        "notes": notes,
        "results": results,
        "ratios": ratios,
    });
    let p = troupe_bench::write_result(&a.out, &doc)?;
    let dir = troupe_bench::results_dir();
    std::fs::write(dir.join(format!("{}.md", a.out)), &md)?;
    let line = |key: &str, q: Option<&str>| -> Vec<Line> {
        names
            .iter()
            .map(|n| Line {
                label: n.clone(),
                points: results
                    .iter()
                    .map(|r| {
                        let s = &r["targets"][n];
                        (f(&r["rate"]), f(q.map_or(&s[key], |q| &s[key][q])))
                    })
                    .filter(|p| p.1.is_finite())
                    .collect(),
            })
            .collect()
    };
    let charts = [
        (
            "goodput",
            LineChart {
                title: format!("Goodput (TTFT ≤ {} ms, TPOT ≤ {} ms)", a.ttft_slo_ms, a.tpot_slo_ms),
                x_desc: "offered rate (req/s)".into(),
                y_desc: "goodput (req/s)".into(),
                lines: line("goodput_rps", None)
                    .into_iter()
                    .chain(line("goodput_relaxed_rps", None).into_iter().map(|mut l| {
                        l.label = format!("{} (relaxed: {} ms / {} ms)", l.label, a.relaxed.0, a.relaxed.1);
                        l
                    }))
                    .collect(),
                levels: Vec::new(),
                shade: None,
            },
        ),
        (
            "ttft-p99",
            LineChart {
                title: "TTFT p99 (completed requests)".into(),
                x_desc: "offered rate (req/s)".into(),
                y_desc: "TTFT p99 (ms)".into(),
                lines: line("ttft_ms", Some("p99")),
                levels: vec![(a.ttft_slo_ms, "SLO".into())],
                shade: None,
            },
        ),
    ];
    for (name, c) in charts {
        match render_lines_png(&c, 900, 500) {
            Ok(png) => std::fs::write(dir.join(format!("{}-{name}.png", a.out)), png)?,
            Err(e) => eprintln!("plot {name}: {e}"),
        }
    }
    println!("{md}");
    eprintln!("wrote {} and {}.md", p.display(), a.out);
    Ok(())
}

//! Engine throughput benchmark (CPU): prefill tokens/s, decode tokens/s at several
//! batch sizes, and continuous vs static batching on a mixed-length workload.
//! Prints one JSON document on stdout; `bench/llm/run.sh` runs it beside llama.cpp.
//!
//! `cargo run -p troupe-llm --release --example bench_engine -- --threads 2`
//!
//! Prompts are synthetic token ids (content does not change the cost), the same
//! formula as `bench/llm/llamacpp_bench.py` uses. Prefix caching is off except in
//! the mixed workload, so no measurement is flattered by cache hits. Timings
//! include scheduling and sampling (the whole `step()`).

use std::path::PathBuf;
use std::time::Instant;

use troupe_llm::{Engine, EngineConfig, ModelFile, SamplingParams};

struct Args {
    model: PathBuf,
    threads: usize,
    batches: Vec<usize>,
    prompt_len: usize,
    gen_len: usize,
    f32_acts: bool,
    mixed_requests: usize,
    seed: u64,
    /// "cpu", "cuda" or "auto".
    backend: String,
    /// Skip the mixed-workload comparison (the GPU script measures HF instead).
    no_mixed: bool,
}

fn parse() -> Args {
    let mut a = Args {
        model: troupe_llm::fetch::locate("smollm2-135m").unwrap_or_default(),
        threads: 2,
        batches: vec![1, 8, 32, 128],
        prompt_len: 256,
        gen_len: 64,
        f32_acts: false,
        mixed_requests: 48,
        seed: 7,
        backend: "cpu".into(),
        no_mixed: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--model" => a.model = PathBuf::from(v()),
            "--threads" => a.threads = v().parse().unwrap_or(2),
            "--batches" => a.batches = v().split(',').filter_map(|x| x.parse().ok()).collect(),
            "--prompt-len" => a.prompt_len = v().parse().unwrap_or(256),
            "--gen" => a.gen_len = v().parse().unwrap_or(64),
            "--mixed-requests" => a.mixed_requests = v().parse().unwrap_or(48),
            "--seed" => a.seed = v().parse().unwrap_or(7),
            "--f32-activations" => a.f32_acts = true,
            "--backend" => a.backend = v(),
            "--no-mixed" => a.no_mixed = true,
            other => eprintln!("ignoring unknown argument {other}"),
        }
    }
    a
}

/// Deterministic synthetic prompt `s` of `n` tokens (shared with the llama.cpp script).
fn prompt(s: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + s * 104_729) % 40_000 + 100) as u32).collect()
}

fn engine(
    m: &ModelFile,
    a: &Args,
    max_num_seqs: usize,
    max_batched_tokens: usize,
    blocks: usize,
    prefix: bool,
) -> Engine {
    let cfg = EngineConfig {
        max_num_seqs,
        max_batched_tokens,
        num_kv_blocks: blocks,
        enable_prefix_caching: prefix,
        threads: a.threads,
        f32_activations: a.f32_acts,
        ..EngineConfig::default()
    };
    let b: Box<dyn troupe_llm::Backend> = match a.backend.as_str() {
        "cuda" => Box::new(troupe_llm::cuda::CudaBackend::new(m, &cfg).expect("CUDA backend")),
        "auto" if troupe_llm::cuda::probe().is_ok() => {
            Box::new(troupe_llm::cuda::CudaBackend::new(m, &cfg).expect("CUDA backend"))
        }
        _ => Box::new(m.cpu_backend(&cfg).expect("backend")),
    };
    Engine::new(b, m.tokenizer.clone(), cfg).expect("engine")
}

fn params(n: usize) -> SamplingParams {
    SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n) }
}

/// Prefill tok/s for `batch` prompts of `len` tokens (best of 3).
fn bench_prefill(m: &ModelFile, a: &Args, batch: usize, len: usize) -> f64 {
    let mut e = engine(m, a, batch, 512, batch * len.div_ceil(16) + 16, false);
    let mut best = 0f64;
    for round in 0..3 {
        for s in 0..batch {
            e.add_request((round * 1000 + s) as u64, prompt(s, len), params(1), 0).expect("add");
        }
        let t = Instant::now();
        while e.has_work() {
            e.step().expect("step");
        }
        best = best.max((batch * len) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// Decode tok/s with `batch` sequences all decoding (prefill excluded).
fn bench_decode(m: &ModelFile, a: &Args, batch: usize) -> (f64, f64) {
    let plen = 32;
    let blocks = batch * (plen + a.gen_len).div_ceil(16) + 16;
    let mut e = engine(m, a, batch, 512.max(batch), blocks, false);
    for s in 0..batch {
        e.add_request(s as u64, prompt(s, plen), params(a.gen_len), 0).expect("add");
    }
    // Prefill: until every sequence has its first token.
    let mut started = vec![false; batch];
    while started.iter().any(|s| !s) {
        for o in e.step().expect("step") {
            started[o.id as usize] = true;
        }
    }
    let t = Instant::now();
    let (mut tokens, mut steps) = (0usize, 0usize);
    // Stop before sequences start finishing so every timed step has `batch` rows.
    while steps + 2 < a.gen_len {
        tokens += e.step().expect("step").iter().map(|o| o.new_tokens.len()).sum::<usize>();
        steps += 1;
    }
    let dt = t.elapsed().as_secs_f64();
    (tokens as f64 / dt, dt * 1000.0 / steps as f64)
}

/// Mixed workload: (prompt len, max tokens) per request, seeded.
fn workload(n: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut r = troupe_llm::sampler::Rng::new(seed);
    (0..n).map(|_| (16 + (r.next_u64() % 177) as usize, 8 + (r.next_u64() % 121) as usize)).collect()
}

fn run_mixed(m: &ModelFile, a: &Args, continuous: bool) -> serde_json::Value {
    let w = workload(a.mixed_requests, a.seed);
    let slots = 16;
    let mut e = engine(m, a, slots, 512, slots * 20 + 16, true);
    let t = Instant::now();
    let mut generated = 0usize;
    let prompt_tokens: usize = w.iter().map(|x| x.0).sum();
    let groups: Vec<&[(usize, usize)]> = if continuous { vec![&w[..]] } else { w.chunks(slots).collect() };
    let mut id = 0u64;
    for g in groups {
        // Static batching: a group is admitted only when the previous one is done.
        for &(pl, n_gen) in g {
            e.add_request(id, prompt(id as usize, pl), params(n_gen), 0).expect("add");
            id += 1;
        }
        while e.has_work() {
            generated += e.step().expect("step").iter().map(|o| o.new_tokens.len()).sum::<usize>();
        }
    }
    let dt = t.elapsed().as_secs_f64();
    serde_json::json!({
        "requests": w.len(), "slots": slots, "prompt_tokens": prompt_tokens, "generated_tokens": generated,
        "seconds": dt, "generated_tok_s": generated as f64 / dt,
        "total_tok_s": (generated + prompt_tokens) as f64 / dt,
    })
}

fn main() {
    let a = parse();
    if !a.model.is_file() {
        eprintln!("{}", troupe_llm::fetch::missing_model_help("smollm2-135m"));
        std::process::exit(2);
    }
    let m = ModelFile::open(&a.model).expect("model");
    let name = engine(&m, &a, 1, 16, 2, false).backend_name();
    eprintln!("backend: {name}");
    let prefill1 = bench_prefill(&m, &a, 1, a.prompt_len);
    eprintln!("prefill 1x{}: {prefill1:.0} tok/s", a.prompt_len);
    let prefill8 = bench_prefill(&m, &a, 8, 128);
    eprintln!("prefill 8x128: {prefill8:.0} tok/s");
    let mut decode = Vec::new();
    for &b in &a.batches {
        let (tps, ms) = bench_decode(&m, &a, b);
        eprintln!("decode batch {b}: {tps:.1} tok/s ({ms:.2} ms/step)");
        decode.push(serde_json::json!({"batch": b, "tok_s": tps, "ms_per_step": ms}));
    }
    let (cont, stat) = if a.no_mixed {
        (serde_json::Value::Null, serde_json::Value::Null)
    } else {
        let cont = run_mixed(&m, &a, true);
        eprintln!("mixed continuous: {:.1} generated tok/s", cont["generated_tok_s"].as_f64().unwrap_or(0.0));
        let stat = run_mixed(&m, &a, false);
        eprintln!("mixed static: {:.1} generated tok/s", stat["generated_tok_s"].as_f64().unwrap_or(0.0));
        (cont, stat)
    };
    let out = serde_json::json!({
        "engine": "troupe-llm", "backend": name, "threads": a.threads,
        "prefill": [{"batch": 1, "prompt_len": a.prompt_len, "tok_s": prefill1}, {"batch": 8, "prompt_len": 128, "tok_s": prefill8}],
        "decode": decode, "decode_gen": a.gen_len, "decode_prompt_len": 32,
        "mixed": {"continuous": cont, "static": stat, "seed": a.seed},
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}

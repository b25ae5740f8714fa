//! Greedy-equality check against the committed fixtures on a chosen backend:
//! runs every fixture prompt (batched) for the fixture's token count and prints
//! a JSON report (per prompt: identical?, first difference). Used by
//! bench/llm/gpu/run.sh on the GPU machine; `--backend cpu` works anywhere.
//!
//! `greedy_check --model M --fixtures actors/llm/core/tests/fixtures/reference.json --backend cuda`

use std::path::PathBuf;

use troupe_llm::{Engine, EngineConfig, ModelFile, SamplingParams};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut model, mut fixtures, mut backend) = (None, None, "cpu".to_string());
    let mut f32_acts = false;
    while let Some(k) = args.next() {
        match k.as_str() {
            "--model" => model = args.next().map(PathBuf::from),
            "--fixtures" => fixtures = args.next().map(PathBuf::from),
            "--backend" => backend = args.next().unwrap_or_default(),
            "--f32-activations" => f32_acts = true,
            other => eprintln!("ignoring {other}"),
        }
    }
    let model = model.or_else(|| troupe_llm::fetch::locate("smollm2-135m")).expect("--model or a pulled model");
    let fx = fixtures.unwrap_or_else(|| PathBuf::from("actors/llm/core/tests/fixtures/reference.json"));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&fx).expect("fixtures")).expect("JSON");
    let n_new = doc["n_new"].as_u64().unwrap_or(32) as usize;
    let cases = doc["cases"].as_array().expect("cases");
    let m = ModelFile::open(&model).expect("model");
    let cfg = EngineConfig {
        num_kv_blocks: 256,
        max_batched_tokens: 512,
        threads: 0,
        f32_activations: f32_acts,
        ..EngineConfig::default()
    };
    let b: Box<dyn troupe_llm::Backend> = match backend.as_str() {
        "cuda" => Box::new(troupe_llm::cuda::CudaBackend::new(&m, &cfg).expect("CUDA backend")),
        _ => Box::new(m.cpu_backend(&cfg).expect("CPU backend")),
    };
    let name = b.name();
    let mut e = Engine::new(b, m.tokenizer.clone(), cfg).expect("engine");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()).unwrap_or_default()
    };
    for (i, c) in cases.iter().enumerate() {
        let p = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n_new) };
        e.add_request(i as u64, ids(&c["prompt_ids"]), p, 0).expect("add");
    }
    let mut got = vec![Vec::new(); cases.len()];
    while e.has_work() {
        for o in e.step().expect("step") {
            got[o.id as usize].extend(o.new_tokens);
        }
    }
    let mut report = Vec::new();
    let mut same = 0;
    for (c, g) in cases.iter().zip(&got) {
        let want = ids(&c["greedy_ids"]);
        let first = want.iter().zip(g).position(|(a, b)| a != b);
        same += (want == *g) as usize;
        report.push(
            serde_json::json!({"prompt": c["text"], "identical": want == *g, "first_difference": first, "got": g}),
        );
    }
    let out = serde_json::json!({"backend": name, "fixtures": fx, "identical": same, "cases": cases.len(), "n_new": n_new, "report": report});
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    eprintln!("{name}: {same}/{} prompts identical to {}", cases.len(), fx.display());
}

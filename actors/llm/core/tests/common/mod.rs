//! Shared helpers for the model-backed integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use serde::Deserialize;
use troupe_llm::fetch;

pub const MODEL: &str = "smollm2-135m";

/// The pulled model, or a failure that says how to pull it.
pub fn model_path() -> PathBuf {
    match fetch::locate(MODEL) {
        Some(p) => p,
        None => panic!("{}", fetch::missing_model_help(MODEL)),
    }
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub kind: String,
    pub system: Option<String>,
    pub text: String,
    pub rendered: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub greedy_text: String,
    pub prefill_top: Vec<(u32, f32)>,
}

#[derive(Debug, Deserialize)]
pub struct TokCase {
    pub text: String,
    pub ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct Fixtures {
    pub model_sha256: String,
    pub n_new: usize,
    pub cases: Vec<Case>,
    pub tokenizer_cases: Vec<TokCase>,
}

/// The float64 reference (no activation quantization).
pub fn fixtures() -> Fixtures {
    load("reference.json")
}

/// The same reference emulating llama.cpp's numerics: 8-bit activations per
/// 32-block into every matmul and an f16 KV cache (`--emulate-q8`).
pub fn fixtures_q8() -> Fixtures {
    load("reference_q8.json")
}

fn load(name: &str) -> Fixtures {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let s = std::fs::read_to_string(&p).expect("fixture file");
    serde_json::from_str(&s).expect("fixture JSON")
}

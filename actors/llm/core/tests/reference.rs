//! Correctness gate: tokenizer, chat template, prefill logits and greedy output
//! against the independent numpy reference (`tools/make_fixtures.py`).

mod common;

use common::{Fixtures, fixtures, fixtures_q8, model_path};
use troupe_llm::backend::{BLOCK_SIZE, Backend, Batch, SeqBatch};
use troupe_llm::cpu::kernels::Isa;
use troupe_llm::{Engine, EngineConfig, Message, ModelFile, SamplingParams};

// The model-sized tests below are ignored in unoptimized builds (a debug forward
// pass over 135M parameters takes minutes); the gate is
// `cargo test -p troupe-llm --release`, which runs them all.

/// Largest accepted |ours - reference| on the reference's top-20 prefill logits
/// with f32 activations (only f32 vs f64 arithmetic and the f16 KV cache differ).
const LOGIT_TOL_EXACT: f32 = 0.05;
/// With 8-bit activations (the fast default, as llama.cpp): SmolLM2's activation
/// outliers make per-block 8-bit quantization lossy and the error is chaotic —
/// the numpy emulation of the same scheme is 1.07 away from float64, and
/// llama.cpp itself (llama-cpp-python 0.3.36, same file) is 0.86 away with
/// greedy output identical on 1 of the 7 prompts. Ours measures 0.6–1.3
/// depending on the ISA's float summation order.
const LOGIT_TOL_INT8: f32 = 1.5;

#[test]
fn fixture_matches_the_pinned_model() {
    for f in [fixtures(), fixtures_q8()] {
        assert_eq!(f.model_sha256, troupe_llm::fetch::MODELS[0].sha256);
        assert!(f.cases.len() >= 5 && f.n_new >= 32);
    }
    // Same prompts, same tokenization in both files.
    let (a, b) = (fixtures(), fixtures_q8());
    assert!(a.cases.iter().zip(&b.cases).all(|(x, y)| x.prompt_ids == y.prompt_ids));
}

#[test]
fn tokenizer_and_template_match_reference() {
    let m = ModelFile::open(&model_path()).expect("model");
    let f = fixtures();
    for c in &f.cases {
        if c.kind == "chat" {
            let mut msgs = Vec::new();
            if let Some(s) = &c.system {
                msgs.push(Message::new("system", s));
            }
            msgs.push(Message::new("user", &c.text));
            assert_eq!(m.chat.render(&msgs, true).expect("render"), c.rendered, "template for {:?}", c.text);
        }
        let ids = m.tokenizer.encode(&c.rendered, true).expect("encode");
        assert_eq!(ids, c.prompt_ids, "tokens of {:?}", c.rendered);
        assert_eq!(m.tokenizer.decode(&ids).expect("decode"), c.rendered);
        assert_eq!(m.tokenizer.decode(&c.greedy_ids).expect("decode"), c.greedy_text);
    }
    for c in &f.tokenizer_cases {
        assert_eq!(m.tokenizer.encode(&c.text, true).expect("encode"), c.ids, "tokens of {:?}", c.text);
        assert_eq!(m.tokenizer.decode(&c.ids).expect("decode"), c.text);
    }
}

/// Prefill one prompt alone on `backend`; returns the last position's logits.
fn prefill(backend: &mut dyn Backend, ids: &[u32]) -> Vec<f32> {
    let table: Vec<u32> = (0..ids.len().div_ceil(BLOCK_SIZE) as u32).collect();
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let seqs = [SeqBatch {
        token_start: 0,
        n_tokens: ids.len(),
        context_len: ids.len(),
        block_table: &table,
        want_logits: true,
    }];
    let batch = Batch { tokens: ids, positions: &positions, slots: &positions, seqs: &seqs };
    let mut logits = Vec::new();
    backend.forward(&batch, &mut logits).expect("forward");
    logits
}

fn max_top_diff(logits: &[f32], top: &[(u32, f32)]) -> f32 {
    top.iter().map(|&(i, v)| (logits[i as usize] - v).abs()).fold(0.0, f32::max)
}

fn check_logits(f: &Fixtures, label: &str, tol: f32, f32_acts: bool) {
    let m = ModelFile::open(&model_path()).expect("model");
    let mut isas = vec![Isa::Scalar];
    if Isa::detect() != Isa::Scalar {
        isas.push(Isa::Avx2);
    }
    if Isa::detect() == Isa::Avx512Vnni {
        isas.push(Isa::Avx512Vnni);
    }
    for isa in isas {
        let w = troupe_llm::cpu::CpuWeights::load(&m.gguf, &m.bytes, &m.config).expect("weights");
        let mut b =
            troupe_llm::cpu::CpuBackend::with_isa(m.config.clone(), w, 16, 2, isa).with_f32_activations(f32_acts);
        let mut worst = 0f32;
        for c in &f.cases {
            let logits = prefill(&mut b, &c.prompt_ids);
            let d = max_top_diff(&logits, &c.prefill_top);
            worst = worst.max(d);
            eprintln!("{label} {isa:?} {:?}: max |Δlogit| on top-20 = {d:.4}", &c.text[..c.text.len().min(30)]);
        }
        eprintln!("{label} {isa:?}: worst max |Δlogit| = {worst:.4} (tolerance {tol})");
        assert!(worst <= tol, "{label} {isa:?}: logits differ by {worst}");
        if f32_acts {
            break; // the f32 path does not depend on the ISA
        }
    }
}

#[test]
#[cfg_attr(debug_assertions, ignore = "model-sized: run with --release")]
fn prefill_logits_f32_activations_match_f64_reference() {
    check_logits(&fixtures(), "f32 activations vs f64 reference", LOGIT_TOL_EXACT, true);
}

#[test]
#[cfg_attr(debug_assertions, ignore = "model-sized: run with --release")]
fn prefill_logits_int8_close_to_both_references_on_every_isa() {
    check_logits(&fixtures(), "int8 vs f64 reference", LOGIT_TOL_INT8, false);
    check_logits(&fixtures_q8(), "int8 vs q8-emulating reference", LOGIT_TOL_INT8, false);
}

fn engine(prefix_caching: bool, max_batched_tokens: usize, f32_activations: bool) -> Engine {
    let m = ModelFile::open(&model_path()).expect("model");
    let cfg = EngineConfig {
        num_kv_blocks: 128,
        max_batched_tokens,
        enable_prefix_caching: prefix_caching,
        threads: 2,
        f32_activations,
        ..EngineConfig::default()
    };
    let b = m.cpu_backend(&cfg).expect("backend");
    Engine::new(Box::new(b), m.tokenizer, cfg).expect("engine").with_chat(m.chat)
}

/// Run every fixture prompt through one engine at once; returns generated ids.
fn generate_all(e: &mut Engine, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n) };
    for (i, p) in prompts.iter().enumerate() {
        e.add_request(i as u64, p.clone(), params.clone(), 0).expect("add");
    }
    let mut out = vec![Vec::new(); prompts.len()];
    let mut steps = 0;
    while e.has_work() {
        for o in e.step().expect("step") {
            out[o.id as usize].extend(o.new_tokens);
        }
        steps += 1;
        assert!(steps < 10_000, "engine did not finish");
    }
    out
}

fn report_matches(label: &str, f: &Fixtures, got: &[Vec<u32>]) -> usize {
    let mut same = 0;
    for (c, g) in f.cases.iter().zip(got) {
        let first_diff = c.greedy_ids.iter().zip(g).position(|(a, b)| a != b);
        eprintln!("{label} {:?}: first difference at {first_diff:?}", &c.text[..c.text.len().min(30)]);
        same += (g == &c.greedy_ids) as usize;
    }
    eprintln!("{label}: {same} of {} prompts identical for {} tokens", f.cases.len(), f.n_new);
    same
}

/// The gate: with f32 activations, greedy output equals the float64 reference
/// token for token on every prompt, all prompts batched together with a small
/// token budget (chunked prefill interleaved with decodes of others, paged KV).
#[test]
#[cfg_attr(debug_assertions, ignore = "model-sized: run with --release")]
fn greedy_output_equals_reference_token_for_token() {
    let f = fixtures();
    let prompts: Vec<Vec<u32>> = f.cases.iter().map(|c| c.prompt_ids.clone()).collect();
    let mut e = engine(true, 48, true);
    let got = generate_all(&mut e, &prompts, f.n_new);
    let same = report_matches("f32 activations vs f64 reference", &f, &got);
    assert_eq!(same, f.cases.len(), "greedy output differs from the reference");
}

/// The fast int8 path: reported against both references; it must agree with the
/// float64 reference on at least as many prompts as llama.cpp does (1 of 7).
const INT8_GREEDY_MATCHES_MIN: usize = 1;

#[test]
#[cfg_attr(debug_assertions, ignore = "model-sized: run with --release")]
fn greedy_int8_path_report() {
    let f = fixtures();
    let prompts: Vec<Vec<u32>> = f.cases.iter().map(|c| c.prompt_ids.clone()).collect();
    let mut e = engine(true, 48, false);
    let got = generate_all(&mut e, &prompts, f.n_new);
    let same = report_matches("int8 vs f64 reference", &f, &got);
    report_matches("int8 vs q8-emulating reference", &fixtures_q8(), &got);
    assert!(same >= INT8_GREEDY_MATCHES_MIN);
}

#[test]
#[cfg_attr(debug_assertions, ignore = "model-sized: run with --release")]
fn prefix_cache_does_not_change_outputs() {
    let f = fixtures();
    // The same prompts twice, plus shared-prefix variants: with caching, the second
    // round hits the cache; outputs must be identical to a cache-less engine.
    let mut prompts: Vec<Vec<u32>> = f.cases.iter().map(|c| c.prompt_ids.clone()).collect();
    prompts.extend(f.cases.iter().map(|c| c.prompt_ids.clone()));
    let mut on = engine(true, 512, false);
    let mut off = engine(false, 512, false);
    let a = generate_all(&mut on, &prompts[..f.cases.len()], 8);
    let b = generate_all(&mut on, &prompts[f.cases.len()..], 8);
    let c = generate_all(&mut off, &prompts[..f.cases.len()], 8);
    assert!(on.stats().prefix_hits > 0, "second round must hit the prefix cache");
    assert_eq!(off.stats().prefix_hits, 0);
    assert_eq!(a, c);
    assert_eq!(b, c);
}

mod round_trip {
    use super::*;
    use proptest::prelude::*;

    fn tokenizer() -> troupe_llm::Tokenizer {
        ModelFile::open(&model_path()).expect("model").tokenizer
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: if cfg!(debug_assertions) { 30 } else { 300 }, ..ProptestConfig::default() })]
        /// With the real 49,152-token vocabulary: decode(encode(s)) == s for text
        /// whose bytes all have tokens (printable Unicode, whitespace, digits).
        #[test]
        fn real_vocab_round_trips(s in "[\\PC\t\n ]{0,80}") {
            thread_local!(static TOK: troupe_llm::Tokenizer = tokenizer());
            let back = TOK.with(|t| t.decode(&t.encode(&s, false).expect("encode")).expect("decode"));
            prop_assert_eq!(back, s);
        }
    }
}

/// A 1 MiB run of letters without a space is one pre-token: the merge loop must not be
/// quadratic in it. The old scan took 23 s for 64 KiB here (410 s for 256 KiB), so 1 MiB
/// would take hours; the heap takes well under a second (measured in the closing note
/// of the security issue). The bound below is only there to fail fast with the reason.
#[test]
fn a_megabyte_without_spaces_is_tokenized_in_n_log_n() {
    let model = troupe_llm::ModelFile::open(&common::model_path()).expect("model");
    let t = &model.tokenizer;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let text: String = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect();
    let started = std::time::Instant::now();
    let ids = t.encode(&text, false).expect("encode");
    let took = started.elapsed();
    assert!(ids.len() >= t.min_tokens(&text), "min_tokens is a lower bound");
    assert_eq!(t.decode(&ids).expect("decode"), text, "nothing lost");
    assert!(took < std::time::Duration::from_secs(60), "1 MiB took {took:?}: the merge loop has gone quadratic again");
}

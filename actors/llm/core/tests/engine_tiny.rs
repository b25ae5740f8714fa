//! Engine behaviour on a tiny synthetic model (no download needed): batching,
//! chunked prefill, preemption and prefix caching must not change outputs;
//! cancellation, stop strings and length limits end requests as documented.

use troupe_llm::gguf::writer::tiny_model;
use troupe_llm::{Engine, EngineConfig, FinishReason, Message, ModelFile, SamplingParams, StepOutput};

fn engine(cfg: EngineConfig) -> Engine {
    let m = ModelFile::from_bytes(tiny_model(1)).expect("tiny model");
    let b = m.cpu_backend(&cfg).expect("backend");
    Engine::new(Box::new(b), m.tokenizer, cfg).expect("engine").with_chat(m.chat)
}

fn cfg(blocks: usize, budget: usize, prefix: bool) -> EngineConfig {
    EngineConfig {
        num_kv_blocks: blocks,
        max_batched_tokens: budget,
        enable_prefix_caching: prefix,
        max_num_seqs: 8,
        threads: 2,
        ..EngineConfig::default()
    }
}

fn prompts() -> Vec<Vec<u32>> {
    // Shared 40-token prefix for half of them (prefix-cache hits), varied lengths.
    (0..6u32)
        .map(|i| {
            let head: Vec<u32> = if i % 2 == 0 { (10..50).collect() } else { vec![] };
            head.into_iter().chain((0..(5 + 7 * i)).map(|j| 3 + (j * 13 + i * 7) % 250)).collect()
        })
        .collect()
}

fn params(n: usize) -> SamplingParams {
    SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n) }
}

/// Run all prompts (in waves of `wave`), returning each one's tokens and reason.
fn run(e: &mut Engine, prompts: &[Vec<u32>], n: usize, wave: usize) -> Vec<(Vec<u32>, Option<FinishReason>)> {
    let mut out = vec![(Vec::new(), None); prompts.len()];
    for (w, chunk) in prompts.chunks(wave).enumerate() {
        for (i, p) in chunk.iter().enumerate() {
            e.add_request((w * wave + i) as u64, p.clone(), params(n), (i % 3) as i32).expect("add");
        }
        let mut steps = 0;
        while e.has_work() {
            for o in e.step().expect("step") {
                let slot = &mut out[o.id as usize];
                slot.0.extend(&o.new_tokens);
                if o.finished.is_some() {
                    slot.1 = o.finished;
                }
            }
            steps += 1;
            assert!(steps < 5000, "engine stuck");
        }
    }
    out
}

#[test]
fn batching_chunking_preemption_and_caching_do_not_change_outputs() {
    let ps = prompts();
    let alone = run(&mut engine(cfg(256, 512, false)), &ps, 12, 1);
    assert!(alone.iter().all(|(t, r)| t.len() == 12 && *r == Some(FinishReason::Length)));
    let distinct: std::collections::HashSet<u32> = alone.iter().flat_map(|(t, _)| t.iter().copied()).collect();
    assert!(distinct.len() > 6, "the random model should not be degenerate: {alone:?}");
    let batched = run(&mut engine(cfg(256, 512, false)), &ps, 12, ps.len());
    assert_eq!(batched, alone, "batching changed outputs");
    let chunked = run(&mut engine(cfg(256, 7, false)), &ps, 12, ps.len());
    assert_eq!(chunked, alone, "chunked prefill changed outputs");
    let mut cached_engine = engine(cfg(256, 512, true));
    let cached = run(&mut cached_engine, &ps, 12, 2);
    assert_eq!(cached, alone, "prefix caching changed outputs");
    assert!(cached_engine.stats().prefix_hits > 0, "shared prefixes must hit the cache");
    // 12 blocks hold 192 tokens: six sequences of up to 92 tokens cannot all fit.
    let mut small = engine(cfg(12, 64, true));
    let preempted = run(&mut small, &ps, 12, ps.len());
    assert!(small.stats().preemptions > 0, "the small cache must force preemption");
    assert_eq!(preempted, alone, "preemption by recompute changed outputs");
    assert_eq!(small.stats().kv_blocks_used, 0, "all blocks released (cached ones count as free)");
}

#[test]
fn cancel_stops_a_request_and_frees_its_blocks() {
    let mut e = engine(cfg(64, 512, false));
    e.add_request(1, (3..40).collect(), params(100), 0).expect("add");
    e.add_request(2, (3..20).collect(), params(5), 0).expect("add");
    for _ in 0..3 {
        e.step().expect("step");
    }
    assert!(e.cancel(1));
    assert!(!e.cancel(1), "second cancel is a no-op");
    let outs: Vec<StepOutput> =
        std::iter::from_fn(|| e.has_work().then(|| e.step().expect("step"))).flatten().collect();
    let c = outs.iter().find(|o| o.id == 1).expect("cancel reported");
    assert_eq!(c.finished, Some(FinishReason::Cancelled));
    assert!(outs.iter().any(|o| o.id == 2 && o.finished == Some(FinishReason::Length)));
    assert_eq!(e.stats().kv_blocks_used, 0);
}

#[test]
fn stop_strings_and_stop_tokens_end_generation() {
    let mut e = engine(cfg(64, 512, false));
    // Learn what the model says, then stop on a piece of it.
    let prompt: Vec<u32> = (3..30).collect();
    e.add_request(1, prompt.clone(), params(16), 0).expect("add");
    let mut text = String::new();
    let mut toks = Vec::new();
    while e.has_work() {
        for o in e.step().expect("step") {
            text.push_str(&o.text_delta);
            toks.extend(o.new_tokens);
        }
    }
    let full = e.tokenizer().decode(&toks).expect("decode");
    assert_eq!(text, full, "streamed deltas add up to the decoded text");
    // Stop token: the 4th generated token.
    let p = SamplingParams { stop_token_ids: vec![toks[3]], ..params(16) };
    e.add_request(2, prompt.clone(), p, 0).expect("add");
    let mut n = 0;
    let mut reason = None;
    while e.has_work() {
        for o in e.step().expect("step") {
            n += o.new_tokens.len();
            reason = o.finished.or(reason);
        }
    }
    let first = toks.iter().position(|&t| t == toks[3]).expect("present") + 1;
    assert_eq!((n, reason), (first, Some(FinishReason::Stop)));
    // Stop string: a non-empty piece from the middle of the text.
    let chars: Vec<char> = full.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[3..5].iter().collect();
        let want: String = full[..full.find(&stop).expect("present")].to_string();
        let p = SamplingParams { stop: vec![stop], ..params(16) };
        e.add_request(3, prompt, p, 0).expect("add");
        let mut got = String::new();
        while e.has_work() {
            for o in e.step().expect("step") {
                got.push_str(&o.text_delta);
                if o.finished.is_some() {
                    assert_eq!(o.finished, Some(FinishReason::Stop));
                }
            }
        }
        assert_eq!(got, want);
    }
}

#[test]
fn bad_requests_are_refused_without_side_effects() {
    let mut e = engine(cfg(8, 512, false));
    assert!(e.add_request(1, vec![], params(4), 0).is_err(), "empty prompt");
    assert!(e.add_request(1, vec![999_999], params(4), 0).is_err(), "token out of vocab");
    assert!(e.add_request(1, vec![5; 200], params(4), 0).is_err(), "longer than the cache");
    let bad = SamplingParams { top_p: 0.0, ..params(4) };
    assert!(e.add_request(1, vec![5; 4], bad, 0).is_err(), "top_p 0");
    e.add_request(1, vec![5; 4], params(2), 0).expect("valid");
    assert!(e.add_request(1, vec![5; 4], params(2), 0).is_err(), "duplicate id");
    assert_eq!(e.stats().waiting, 1);
}

#[test]
fn chat_rendering_uses_the_template() {
    let e = engine(cfg(8, 512, false));
    let ids = e.render_chat(&[Message::new("user", "hi")]).expect("render");
    let text = e.tokenizer().decode(&ids).expect("decode");
    assert_eq!(
        text,
        "<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(ids[0], 1, "<|im_start|> parsed as the special token");
}

#[test]
fn sampling_is_seeded() {
    let run_seeded = |seed| {
        let mut e = engine(cfg(32, 512, false));
        let p = SamplingParams { temperature: 2.0, top_k: 50, top_p: 0.95, seed: Some(seed), ..params(10) };
        e.add_request(1, (3..20).collect(), p, 0).expect("add");
        let mut t = Vec::new();
        while e.has_work() {
            for o in e.step().expect("step") {
                t.extend(o.new_tokens);
            }
        }
        t
    };
    assert_eq!(run_seeded(7), run_seeded(7));
    assert_ne!(run_seeded(7), run_seeded(8), "different seeds should differ on a random model");
}

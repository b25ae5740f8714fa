//! Disaggregated serving at the engine level, on the tiny synthetic model: a prompt
//! computed by one engine, its KV exported and imported into another, must continue
//! exactly as if one engine had done everything (greedy, token for token), whatever the
//! prompt length relative to block boundaries, and with the decode side's own prefix
//! cache in play. Refusals (no room, bad shapes) change nothing.

use troupe_llm::gguf::writer::tiny_model;
use troupe_llm::{Engine, EngineConfig, EngineError, FinishReason, KvBlocks, ModelFile, SamplingParams, ScheduleError};

fn engine(blocks: usize) -> Engine {
    let cfg = EngineConfig {
        num_kv_blocks: blocks,
        max_batched_tokens: 64,
        max_num_seqs: 4,
        threads: 1,
        ..EngineConfig::default()
    };
    let m = ModelFile::from_bytes(tiny_model(3)).expect("tiny model");
    let b = m.cpu_backend(&cfg).expect("backend");
    Engine::new(Box::new(b), m.tokenizer, cfg).expect("engine").with_chat(m.chat)
}

fn params(n: usize) -> SamplingParams {
    SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n) }
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|j| 3 + (j * 31 + salt * 7) % 250).collect()
}

/// Runs to completion; returns every token of `id` and its finish reason.
fn drain(e: &mut Engine, id: u64) -> (Vec<u32>, Option<FinishReason>) {
    let (mut toks, mut fin) = (Vec::new(), None);
    for _ in 0..10_000 {
        if !e.has_work() {
            break;
        }
        for o in e.step().expect("step") {
            if o.id == id {
                toks.extend(&o.new_tokens);
                fin = fin.or(o.finished);
            }
        }
    }
    (toks, fin)
}

/// Prefill on `p`, move the KV to `d`, decode there.
fn disaggregated(p: &mut Engine, d: &mut Engine, id: u64, prompt: Vec<u32>, n: usize) -> Vec<u32> {
    p.add_request_held(id, prompt.clone(), params(1), 0).expect("prefill request");
    let (first, fin) = drain(p, id);
    assert_eq!(fin, Some(FinishReason::Length));
    assert_eq!(first.len(), 1);
    assert_eq!(p.num_held(), 1);
    let kv = p.export_held(id).expect("held").expect("export");
    assert_eq!(p.num_held(), 0);
    assert_eq!(p.stats().kv_blocks_used, 0, "export releases the prefill side's blocks");
    assert_eq!(kv.n_tokens, prompt.len());
    // Through the wire format, as the serving actors ship it.
    let chunks = kv.chunks(2);
    let kv = KvBlocks::from_chunks(kv.n_tokens, kv.n_layer, kv.kv_dim, &chunks).expect("reassemble");
    d.import_request(id, prompt, first[0], &kv, params(n), 0).expect("import");
    let (toks, fin) = drain(d, id);
    assert_eq!(fin, Some(FinishReason::Length));
    toks
}

#[test]
fn imported_kv_continues_exactly_like_one_engine() {
    let mut unified = engine(64);
    let (mut pre, mut dec) = (engine(64), engine(64));
    for (i, len) in [1usize, 15, 16, 17, 40, 48, 63].into_iter().enumerate() {
        let id = i as u64;
        let p = prompt(len, i as u32);
        unified.add_request(id, p.clone(), params(12), 0).expect("add");
        let (want, _) = drain(&mut unified, id);
        assert_eq!(want.len(), 12);
        let got = disaggregated(&mut pre, &mut dec, 100 + id, p, 12);
        assert_eq!(got, want, "prompt of {len} tokens");
        assert_eq!(dec.stats().kv_blocks_used, 0);
    }
}

#[test]
fn imported_blocks_join_the_decode_sides_prefix_cache() {
    let (mut pre, mut dec) = (engine(64), engine(64));
    let p = prompt(40, 9);
    disaggregated(&mut pre, &mut dec, 1, p.clone(), 4);
    let before = dec.stats().prefix_hits;
    dec.add_request(2, p, params(2), 0).expect("add");
    drain(&mut dec, 2);
    assert_eq!(dec.stats().prefix_hits - before, 2, "the two full imported blocks are reused");
}

#[test]
fn refusals_change_nothing() {
    let (mut pre, mut dec) = (engine(64), engine(3));
    let p = prompt(40, 1);
    pre.add_request_held(1, p.clone(), params(1), 0).expect("add");
    let (first, _) = drain(&mut pre, 1);
    let kv = pre.export_held(1).expect("held").expect("export");
    // 3 blocks hold 48 tokens; 40 + 16 generated would not fit.
    let e = dec.import_request(1, p.clone(), first[0], &kv, params(16), 0).expect_err("too long");
    assert!(matches!(e, EngineError::Schedule(ScheduleError::TooLong { .. })), "{e}");
    let mut bad = kv.clone();
    bad.data.pop();
    assert!(matches!(dec.import_request(2, p.clone(), first[0], &bad, params(2), 0), Err(EngineError::BadParams(_))));
    assert!(matches!(
        dec.import_request(3, p[1..].to_vec(), first[0], &kv, params(2), 0),
        Err(EngineError::BadParams(_))
    ));
    assert_eq!(dec.stats().kv_blocks_used, 0);
    assert!(!dec.has_work());
    // A held request that is cancelled before it finishes is not held.
    pre.add_request_held(5, p.clone(), params(1), 0).expect("add");
    assert!(pre.cancel(5));
    drain(&mut pre, 5);
    assert!(pre.export_held(5).is_none());
    // Dropping held KV frees its blocks.
    pre.add_request_held(6, p, params(1), 0).expect("add");
    drain(&mut pre, 6);
    assert!(pre.stats().kv_blocks_used > 0);
    assert!(pre.drop_held(6));
    assert_eq!(pre.stats().kv_blocks_used, 0);
}

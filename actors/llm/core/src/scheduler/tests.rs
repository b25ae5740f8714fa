use super::*;
use proptest::prelude::*;

fn cfg(blocks: usize, budget: usize, seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: seqs,
        max_batched_tokens: budget,
        max_model_len: 4096,
        max_waiting: 1000,
        num_kv_blocks: blocks,
        enable_prefix_caching: true,
    }
}

/// Drive the scheduler with a fake model that "samples" token 7 after each
/// chunk that wants logits, as the engine does; a sequence finishes when it has
/// generated `max_new` tokens. Returns the steps taken.
fn drive(s: &mut Scheduler, max_new: &HashMap<SeqId, usize>, max_steps: usize) -> Result<usize, String> {
    let prompt_len: HashMap<SeqId, usize> =
        max_new.keys().map(|&id| (id, s.get(id).map_or(0, |q| q.tokens.len()))).collect();
    for step in 0..max_steps {
        if s.is_empty() {
            return Ok(step);
        }
        let plan = s.schedule();
        if plan.n_tokens() > s.cfg.max_batched_tokens {
            return Err(format!("budget exceeded: {}", plan.n_tokens()));
        }
        if plan.scheduled.len() > s.cfg.max_num_seqs || s.num_running() > s.cfg.max_num_seqs {
            return Err("too many sequences".into());
        }
        for sc in &plan.scheduled {
            let seq = s.get(sc.id).ok_or("scheduled unknown seq")?;
            if seq.block_table.len() * BLOCK_SIZE < sc.start + sc.n_tokens {
                return Err("block table too short".into());
            }
        }
        s.on_computed(&plan);
        for sc in plan.scheduled.iter().filter(|sc| sc.want_logits) {
            let len = s.get(sc.id).ok_or("gone")?.tokens.len();
            let generated = len - prompt_len[&sc.id] + 1;
            if generated >= max_new[&sc.id] {
                s.finish(sc.id);
            } else {
                s.append_token(sc.id, 7);
            }
        }
        s.blocks.check(&s.tables())?;
    }
    Err(format!("not done after {max_steps} steps: {} running, {} waiting", s.num_running(), s.num_waiting()))
}

#[test]
fn decodes_are_not_blocked_by_a_long_prefill() {
    let mut s = Scheduler::new(cfg(64, 32, 8));
    s.add(1, vec![1; 4], 10, 0).expect("add");
    let p = s.schedule();
    s.on_computed(&p);
    s.append_token(1, 5);
    s.add(2, vec![2; 300], 1, 0).expect("add");
    let p = s.schedule();
    // The decode of 1 is planned first; the long prompt gets the remaining 31.
    assert_eq!(p.scheduled[0], Scheduled { id: 1, start: 4, n_tokens: 1, want_logits: true });
    assert_eq!(p.scheduled[1].n_tokens, 31);
    assert!(!p.scheduled[1].want_logits);
}

#[test]
fn prefix_cache_skips_shared_blocks() {
    let mut s = Scheduler::new(cfg(64, 512, 8));
    let prompt: Vec<u32> = (0..40).collect();
    s.add(1, prompt.clone(), 1, 0).expect("add");
    let p = s.schedule();
    s.on_computed(&p);
    s.finish(1);
    s.add(2, prompt, 1, 0).expect("add");
    let p = s.schedule();
    assert_eq!(p.scheduled[0].start, 32, "two full blocks reused");
    assert_eq!(s.blocks.stats.hits, 2);
}

#[test]
fn preemption_frees_blocks_for_the_most_urgent() {
    // 4 blocks = 64 tokens; two sequences that each grow to 48 cannot both fit.
    let mut s = Scheduler::new(cfg(4, 64, 4));
    s.add(1, vec![1; 30], 18, 0).expect("add");
    s.add(2, vec![2; 30], 18, 0).expect("add");
    let mut max_new = HashMap::new();
    max_new.insert(1, 18);
    max_new.insert(2, 18);
    drive(&mut s, &max_new, 1000).expect("both finish");
    assert!(s.total_preemptions > 0);
}

#[test]
fn too_long_requests_are_refused() {
    let mut s = Scheduler::new(cfg(2, 64, 4));
    assert!(matches!(s.add(1, vec![1; 30], 10, 0), Err(ScheduleError::TooLong { .. })));
    assert_eq!(s.add(2, vec![], 1, 0), Err(ScheduleError::EmptyPrompt));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random workloads: budget never exceeded, blocks consistent every step,
    /// and every admitted request finishes.
    #[test]
    fn every_request_finishes(
        reqs in prop::collection::vec((1usize..80, 1usize..20, -2i32..3, 0u32..3), 1..12),
        blocks in 6usize..40,
        budget in 1usize..96,
        max_seqs in 1usize..6,
    ) {
        let mut s = Scheduler::new(cfg(blocks, budget, max_seqs));
        let mut max_new = HashMap::new();
        for (i, (plen, n_gen, prio, fam)) in reqs.into_iter().enumerate() {
            // Shared prefixes across "families" exercise the prefix cache.
            let prompt: Vec<u32> = (0..plen).map(|j| if j < 32 { fam } else { (i * 1000 + j) as u32 }).collect();
            if s.add(i as u64, prompt, n_gen, prio).is_ok() {
                max_new.insert(i as u64, n_gen);
            }
        }
        let r = drive(&mut s, &max_new, 20_000);
        prop_assert!(r.is_ok(), "{:?}", r);
        prop_assert_eq!(s.blocks.num_used(), 0);
    }
}

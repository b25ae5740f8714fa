//! Replays one seed of the simulator and prints its event log and violations, or runs
//! many and names the failing ones — `troupe sim` without building the CLI:
//! `cargo run -p troupe-core --release --example sim_seed -- <seed> [nodes]`, or
//! `-- many <count> [nodes]` (`weak` instead of `many`: writes acknowledged by one
//! vote, which the checks must catch).

use troupe_core::sim::{SimConfig, run};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    #[allow(clippy::disallowed_methods)] // anchors virtual time only
    let base = std::time::Instant::now();
    let mode = args.first().map(String::as_str);
    if mode == Some("many") || mode == Some("weak") {
        // `weak`: writes acknowledged by one vote, to see the checks catch the loss.
        let write_votes = (mode == Some("weak")).then_some(1);
        let cfg = SimConfig { nodes: num(2, 5) as usize, write_votes, ..Default::default() };
        let (mut bad, mut writes, mut acks) = (0, 0, 0);
        for seed in 0..num(1, 100) {
            let r = run(seed, &cfg, base);
            writes += r.writes;
            acks += r.acks;
            if !r.passed() {
                bad += 1;
                println!("seed {seed}: {}", r.violations.join("\n    "));
            }
        }
        println!("{bad} failing seeds; {writes} writes, {acks} acknowledged");
        return;
    }
    let cfg = SimConfig { nodes: num(1, 5) as usize, ..Default::default() };
    let seed = num(0, 0);
    let r = run(seed, &cfg, base);
    for l in &r.log {
        println!("{l}");
    }
    println!("seed {seed}: {} writes, {} acknowledged, violations: {:#?}", r.writes, r.acks, r.violations);
}

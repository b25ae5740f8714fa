//! `troupe sim`: seeded simulations of the cluster (troupe-core's simulator): the
//! membership cores and replicated writes through the real directory and replication
//! decisions, over many seeds of kills, restarts, partitions, disk loss, packet loss
//! and duplication on virtual time; prints every seed that broke an invariant, with the
//! command that replays it.

use anyhow::bail;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use troupe_core::sim::{SimConfig, SimReport, run};

#[derive(clap::Args)]
pub struct SimArgs {
    /// How many seeds to run (seeds `--from` .. `--from + seeds`).
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Replay one seed and print its whole event log.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Nodes per simulated cluster (3-7).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Seconds of virtual time with faults, per seed (a settle phase follows).
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Client writes per second of virtual time (0: membership only).
    #[arg(long, default_value_t = SimConfig::default().writes_per_sec)]
    pub writes: u32,
    /// Worker threads (default: every core).
    #[arg(long)]
    pub jobs: Option<usize>,
}

pub fn run_sim(a: SimArgs) -> anyhow::Result<()> {
    if !(3..=7).contains(&a.nodes) {
        bail!(super::UsageError(format!("--nodes must be 3..=7, not {}", a.nodes)));
    }
    let cfg = SimConfig {
        nodes: a.nodes,
        duration: Duration::from_secs(a.secs),
        writes_per_sec: a.writes,
        ..SimConfig::default()
    };
    let base = Instant::now();
    if let Some(seed) = a.seed {
        let r = run(seed, &cfg, base);
        for l in &r.log {
            println!("{l}");
        }
        println!(
            "seed {seed}: {} events, {} packets sent, {} delivered, {} writes, {} acknowledged, log hash {:016x}",
            r.log.len(),
            r.packets_sent,
            r.packets_delivered,
            r.writes,
            r.acks,
            r.log_hash
        );
        return report(&[r]);
    }
    let jobs = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
    let next = AtomicU64::new(a.from);
    let end = a.from + a.seeds;
    let failed: Mutex<Vec<SimReport>> = Mutex::new(Vec::new());
    let bar = indicatif::ProgressBar::new(a.seeds);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} seeds, {elapsed} elapsed, eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    let r = run(seed, &cfg, base);
                    if !r.passed() {
                        let first = r.violations.first().cloned().unwrap_or_default();
                        bar.println(format!("seed {seed} FAILED ({} violations): {first}", r.violations.len()));
                        failed.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                        bar.set_message(format!("{} failed", failed.lock().map(|f| f.len()).unwrap_or(0)));
                    }
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish();
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "{} seeds ({}..{}) of {} s virtual time on {} nodes in {:.1} s wall, {} jobs: {} passed, {} failed",
        a.seeds,
        a.from,
        end,
        a.secs,
        a.nodes,
        started.elapsed().as_secs_f64(),
        jobs,
        a.seeds as usize - failed.len(),
        failed.len()
    );
    report(&failed)
}

fn report(failed: &[SimReport]) -> anyhow::Result<()> {
    let bad: Vec<&SimReport> = failed.iter().filter(|r| !r.passed()).collect();
    if bad.is_empty() {
        return Ok(());
    }
    for r in &bad {
        let shown: Vec<&str> = r.violations.iter().take(5).map(String::as_str).collect();
        let more = r.violations.len().saturating_sub(shown.len());
        let more = if more > 0 { format!("\n  … and {more} more") } else { String::new() };
        eprintln!("seed {}: {}{more}\n  replay: troupe sim --seed {}", r.seed, shown.join("\n  "), r.seed);
    }
    bail!("{} seed(s) broke an invariant; add them to runtime/core/tests/sim_regressions.txt once fixed", bad.len())
}

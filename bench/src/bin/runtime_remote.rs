//! Remote messaging between two nodes over QUIC: tell throughput and ask round trip,
//! node n1 (in this process, through troupe's handles) to a per-node counter actor on
//! node n2 (a real `troupe node` process). The ractor_cluster peer (TCP) runs in the
//! same run when its bench is built (bench/peers/ractor-cluster/run.sh).
//!
//! `cargo build --release && cargo run --release -p troupe-bench --bin runtime_remote`

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_bench::cluster::LocalCluster;
use troupe_bench::{new_histogram, record, summarize, write_result};
use troupe_diag::{Counter, CounterMsg, CounterReply};
use troupe_runtime::{ActorPath, Node};
use troupe_system::System;

async fn troupe_side(n: u64, asks: u64) -> anyhow::Result<serde_json::Value> {
    let mut c = LocalCluster::prepare(2, &["diag"], "[transport]\nsend_queue_cap = 65536\nlanes_per_peer = 4\n", &[])?;
    c.spawn("n2")?;
    let loaded = troupe_runtime::config::load(&c.cluster_file(), &registry()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let node = Node::start_with(Arc::new(loaded), registry(), "n1", true).await?;
    let target = node.handle::<Counter>(ActorPath::new("diag", "counter", "n2")?);
    // Wait until n2 answers.
    let t0 = Instant::now();
    loop {
        if let Ok(CounterReply::Count { .. }) = target.ask_timeout(CounterMsg::Get, Duration::from_millis(500)).await {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "n2 never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    target.tell(CounterMsg::Reset).await?;
    // Warm-up, then the measured burst: tell as fast as the lanes accept, backing
    // off briefly when a bounded queue is full (that is the back-pressure signal).
    let mut full = 0u64;
    let t = Instant::now();
    let mut sent = 0;
    while sent < n {
        match target.tell(CounterMsg::Add { n: 1 }).await {
            Ok(()) => sent += 1,
            Err(troupe_runtime::RemoteError::QueueFull { .. }) => {
                full += 1;
                tokio::task::yield_now().await;
            }
            Err(e) => anyhow::bail!("tell failed: {e}"),
        }
    }
    // Order is FIFO per sender → target, so this Get is answered after the last Add:
    // its count confirms every message arrived.
    let total = match target.ask_timeout(CounterMsg::Get, Duration::from_secs(60)).await? {
        CounterReply::Count { total, .. } => total,
        other => anyhow::bail!("unexpected {other:?}"),
    };
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(total == n, "lost messages: {total} of {n}");
    let mut h = new_histogram();
    for _ in 0..1000 {
        let _ = target.ask(CounterMsg::Get).await?;
    }
    for _ in 0..asks {
        let t = Instant::now();
        let _ = target.ask(CounterMsg::Get).await?;
        record(&mut h, t.elapsed());
    }
    let lat = summarize(&h);
    node.shutdown().await;
    drop(c);
    Ok(serde_json::json!({
        "tell_per_s": n as f64 / secs,
        "queue_full_retries": full,
        "ask_p50_us": lat.p50_us, "ask_p99_us": lat.p99_us, "ask_p999_us": lat.p999_us,
        "messages": n,
    }))
}

fn ractor_cluster_side(n: u64) -> Option<serde_json::Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/ractor-cluster/run.sh");
    if !script.exists() {
        eprintln!("ractor_cluster peer not present ({}); skipping it", script.display());
        return None;
    }
    let out = Command::new("bash").arg(&script).env("MESSAGES", n.to_string()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{'))?;
    serde_json::from_str(line).ok()
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::var("MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let asks: u64 = 20_000;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let troupe = rt.block_on(troupe_side(n, asks))?;
    let peer = ractor_cluster_side(n);
    let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    println!("\n{:<26} {:>14} {:>16} {:>8}", "", "troupe (QUIC)", "ractor_cluster", "ratio");
    let p = peer.clone().unwrap_or_default();
    println!(
        "{:<26} {:>14.0} {:>16.0} {:>8.2}",
        "remote tell (msg/s)",
        f(&troupe, "tell_per_s"),
        f(&p, "tell_per_s"),
        f(&troupe, "tell_per_s") / f(&p, "tell_per_s")
    );
    for (k, label) in
        [("ask_p50_us", "ask p50 (µs)"), ("ask_p99_us", "ask p99 (µs)"), ("ask_p999_us", "ask p99.9 (µs)")]
    {
        println!("{:<26} {:>14.1} {:>16.1} {:>8.2}", label, f(&troupe, k), f(&p, k), f(&troupe, k) / f(&p, k));
    }
    let path = write_result(
        "runtime-remote",
        &serde_json::json!({ "machine": troupe_bench::machine(), "troupe": troupe, "ractor_cluster": peer, "goals": { "tell_per_s": 500000, "ask_p99_us": 1000 } }),
    )?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// The diag system's kinds: all this benchmark's cluster runs.
fn registry() -> troupe_runtime::KindRegistry {
    let mut k = troupe_runtime::KindRegistry::new();
    troupe_diag_shell::Diag.register(&mut k);
    k
}

//! Local messaging cost: tell throughput and ask round trip through troupe's
//! handles vs raw ractor actors, side by side in one run on the same runtime.
//!
//! `cargo run --release -p troupe-bench --bin runtime_local [-- --messages N]`

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_bench::{new_histogram, record, summarize, write_result};
use troupe_runtime::{
    ActorError, ActorPath, Behavior, Ctx, FromParams, KindRegistry, KindSpec, MsgOf, Node, Protocol, Reply, ReplyOf,
};

// ---- raw ractor --------------------------------------------------------------

enum RawMsg {
    Add(u64),
    Get(RpcReplyPort<u64>),
}

struct RawCounter;

impl Actor for RawCounter {
    type Msg = RawMsg;
    type State = u64;
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<RawMsg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }
    async fn handle(&self, _: ActorRef<RawMsg>, msg: RawMsg, st: &mut u64) -> Result<(), ActorProcessingErr> {
        match msg {
            RawMsg::Add(n) => *st += n,
            RawMsg::Get(r) => {
                let _ = r.send(*st);
            }
        }
        Ok(())
    }
}

// ---- troupe ----------------------------------------------------------------

struct CounterProto;
impl Protocol for CounterProto {
    type Msg = CounterMsg;
    type Reply = u64;
    const NAME: &'static str = "bench.counter";
}

#[derive(Serialize, Deserialize)]
enum CounterMsg {
    Add(u64),
    Get,
}

struct Counter;
impl FromParams for Counter {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(Counter)
    }
}
impl Behavior for Counter {
    type Proto = CounterProto;
    type State = u64;
    async fn init(&self, _: &Ctx<CounterProto>) -> Result<u64, ActorError> {
        Ok(0)
    }
    async fn handle(
        &self,
        _: &Ctx<CounterProto>,
        st: &mut u64,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            CounterMsg::Add(n) => *st += n,
            CounterMsg::Get => reply.send(*st).await,
        }
        Ok(())
    }
}

async fn troupe_node(dir: &std::path::Path) -> anyhow::Result<Node> {
    std::fs::create_dir_all(dir.join("systems"))?;
    std::fs::write(
        dir.join("cluster.toml"),
        "[cluster]\nname = \"b\"\nsystems = [\"bench\"]\nseeds = [\"n1\"]\n[[nodes]]\nname = \"n1\"\naddr = \"127.0.0.1:1\"\ngossip = \"127.0.0.1:2\"\nadmin = \"127.0.0.1:3\"\n",
    )?;
    // The mailbox bound is set above the burst so both sides queue the same work.
    std::fs::write(
        dir.join("systems/bench.toml"),
        "[system]\nname = \"bench\"\n[kinds.counter]\nfactory = \"bench.counter\"\nplacement = \"sharded\"\nmailbox_cap = 16777216\n",
    )?;
    let mut kinds = KindRegistry::new();
    kinds.register::<Counter>("bench.counter");
    let loaded = troupe_runtime::config::load(&dir.join("cluster.toml"), &kinds).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Node::start(Arc::new(loaded), kinds, "n1").await?)
}

struct Side {
    tell_per_s: f64,
    ask: troupe_bench::Latency,
}

async fn raw(n: u64, asks: u64) -> anyhow::Result<Side> {
    let (a, _) = Actor::spawn(None, RawCounter, ()).await?;
    let t = Instant::now();
    for _ in 0..n {
        a.send_message(RawMsg::Add(1)).map_err(|_| anyhow::anyhow!("send"))?;
    }
    let got = ractor::call!(a, RawMsg::Get)?;
    let tell_per_s = n as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(got == n, "raw counter lost messages: {got} of {n}");
    let mut h = new_histogram();
    for _ in 0..asks {
        let t = Instant::now();
        let _ = ractor::call!(a, RawMsg::Get)?;
        record(&mut h, t.elapsed());
    }
    a.stop(None);
    Ok(Side { tell_per_s, ask: summarize(&h) })
}

async fn troupe(node: &Node, key: &str, n: u64, asks: u64) -> anyhow::Result<Side> {
    let h = node.handle::<CounterProto>(ActorPath::new("bench", "counter", key)?);
    let _ = h.ask(CounterMsg::Get).await?; // activate
    let t = Instant::now();
    for _ in 0..n {
        h.tell(CounterMsg::Add(1)).await?;
    }
    let got = h.ask_timeout(CounterMsg::Get, Duration::from_secs(60)).await?;
    let tell_per_s = n as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(got == n, "troupe counter lost messages: {got} of {n}");
    let mut hist = new_histogram();
    for _ in 0..asks {
        let t = Instant::now();
        let _ = h.ask(CounterMsg::Get).await?;
        record(&mut hist, t.elapsed());
    }
    Ok(Side { tell_per_s, ask: summarize(&hist) })
}

fn main() -> anyhow::Result<()> {
    let mut n: u64 = 2_000_000;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--messages") {
        n = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(n);
    }
    let asks = 100_000;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // `--only raw|troupe`: one tell burst and nothing else, for instruction counts
    // under `valgrind --tool=callgrind` (repeatable whatever the machine's load).
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let side = args.get(i + 1).cloned().unwrap_or_default();
        return rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("troupe-bench-local-{}", std::process::id()));
            let node = troupe_node(&dir).await?;
            match side.as_str() {
                "raw" => {
                    raw(n, 0).await?;
                }
                "troupe" => {
                    troupe(&node, "only", n, 0).await?;
                }
                other => anyhow::bail!("--only takes raw or troupe, not {other}"),
            }
            node.shutdown().await;
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        });
    }
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("troupe-bench-local-{}", std::process::id()));
        let node = troupe_node(&dir).await?;
        // Warm up both, then alternate three rounds and keep the best of each.
        let _ = raw(n / 10, 1000).await?;
        let _ = troupe(&node, "warm", n / 10, 1000).await?;
        let mut best_raw: Option<Side> = None;
        let mut best_tr: Option<Side> = None;
        for round in 0..3 {
            let r = raw(n, asks).await?;
            let t = troupe(&node, &format!("r{round}"), n, asks).await?;
            println!(
                "round {round}: tell raw {:.0}/s troupe {:.0}/s | ask p50 raw {:.1} µs troupe {:.1} µs",
                r.tell_per_s, t.tell_per_s, r.ask.p50_us, t.ask.p50_us
            );
            if best_raw.as_ref().is_none_or(|b| r.tell_per_s > b.tell_per_s) {
                best_raw = Some(r);
            }
            if best_tr.as_ref().is_none_or(|b| t.tell_per_s > b.tell_per_s) {
                best_tr = Some(t);
            }
        }
        let (r, t) = (best_raw.unwrap_or_else(|| unreachable!()), best_tr.unwrap_or_else(|| unreachable!()));
        let tell_overhead = r.tell_per_s / t.tell_per_s - 1.0;
        let ask_overhead = t.ask.p50_us / r.ask.p50_us - 1.0;
        println!("\n{:<28} {:>14} {:>14} {:>10}", "", "raw ractor", "troupe", "overhead");
        println!(
            "{:<28} {:>14.0} {:>14.0} {:>9.1}%",
            "tell throughput (msg/s)",
            r.tell_per_s,
            t.tell_per_s,
            tell_overhead * 100.0
        );
        println!(
            "{:<28} {:>14.2} {:>14.2} {:>9.1}%",
            "ask round trip p50 (µs)",
            r.ask.p50_us,
            t.ask.p50_us,
            ask_overhead * 100.0
        );
        println!("{:<28} {:>14.2} {:>14.2}", "ask round trip p99 (µs)", r.ask.p99_us, t.ask.p99_us);
        let p = write_result(
            "runtime-local",
            &serde_json::json!({
                "machine": troupe_bench::machine(),
                "messages": n,
                "asks": asks,
                "raw_ractor": { "tell_per_s": r.tell_per_s, "ask": r.ask },
                "troupe": { "tell_per_s": t.tell_per_s, "ask": t.ask },
                "tell_overhead": tell_overhead,
                "ask_p50_overhead": ask_overhead,
            }),
        )?;
        println!("\nwrote {}", p.display());
        node.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

//! Memory per idle thing on one troupe node: an idle entity (a sharded actor that
//! answered once and waits), an idle QUIC client connection (an SDK client that asked
//! once and stays connected) and an idle WebSocket (the diag gateway's echo, one round
//! trip then silence). Each figure is the node process's RSS delta over many of them,
//! divided by their number. The peer, in the same run: a raw ractor actor (its mailbox
//! and task, no troupe around it) in a process of its own, measured the same way.
//!
//! `cargo run --release -p troupe-bench --bin memory [-- --entities N --clients N --websockets N]`
//! (defaults 100,000 / 5,000 / 10,000). It needs the release `troupe` binary
//! (`cargo build --release`). Clients and WebSockets hold one file descriptor each in
//! this process (and a WebSocket one in the node): their counts stay below the open
//! files limit, which the bench raises to its hard limit first.
//!
//! Writes bench/results/memory.json with a `goals` object.

use futures::StreamExt;
use std::time::{Duration, Instant};
use troupe_bench::cluster::LocalCluster;
use troupe_bench::sys::{raise_nofile, settled_rss};
use troupe_client::{ActorPath, Client, ClientConfig, ws};
use troupe_diag::{Counter, CounterMsg, CounterReply};

/// The node's allocator, so the peer's figure is on the same one.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The goal of the runtime performance issue: bytes per idle entity.
const ENTITY_GOAL_BYTES: f64 = 1024.0;
/// Akka's published figure (~2.5 million actors per GB of heap), for reference only:
/// it is not measured here.
const AKKA_PUBLISHED_BYTES: f64 = 400.0;
/// Requests in flight while activating entities.
const IN_FLIGHT: usize = 256;

/// The node's RSS growth per thing since `before` (read once it settled), printed.
fn per_thing(pid: u32, before: u64, count: usize, what: &str) -> anyhow::Result<f64> {
    let after = settled_rss(pid)?;
    let each = after.saturating_sub(before) as f64 / count as f64;
    eprintln!("idle {what}: {each:.0} bytes ({count} of them, RSS {before} → {after})");
    Ok(each)
}

/// A progress line every `every` things.
fn progress(done: usize, of: usize, every: usize, what: &str, t: Instant) {
    if done.is_multiple_of(every) {
        eprintln!("  {done} of {of} {what} ({:.1} s)", t.elapsed().as_secs_f64());
    }
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(default)
}

// ---- the peer: raw ractor actors in a process of their own ------------------------

struct Raw;

impl ractor::Actor for Raw {
    type Msg = u64;
    type State = u64;
    type Arguments = ();
    async fn pre_start(&self, _: ractor::ActorRef<u64>, _: ()) -> Result<u64, ractor::ActorProcessingErr> {
        Ok(0)
    }
    async fn handle(&self, _: ractor::ActorRef<u64>, n: u64, st: &mut u64) -> Result<(), ractor::ActorProcessingErr> {
        *st += n;
        Ok(())
    }
}

/// `--raw N`: spawns N ractor actors that each took one message, prints
/// `rss_before rss_after` and exits.
fn raw_child(n: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        // Warm the runtime and the allocator up with a few actors first.
        let mut keep = Vec::with_capacity(n + 1000);
        for _ in 0..1000 {
            keep.push(ractor::Actor::spawn(None, Raw, ()).await?.0);
        }
        let before = settled_rss(std::process::id())?;
        for _ in 0..n {
            let (a, _) = ractor::Actor::spawn(None, Raw, ()).await?;
            a.send_message(1).map_err(|_| anyhow::anyhow!("send"))?;
            keep.push(a);
        }
        let after = settled_rss(std::process::id())?;
        println!("{before} {after}");
        for a in keep {
            a.stop(None);
        }
        anyhow::Ok(())
    })
}

fn raw_peer(n: usize) -> anyhow::Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?).args(["--raw", &n.to_string()]).output()?;
    anyhow::ensure!(out.status.success(), "the ractor child failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    anyhow::ensure!(v.len() == 2, "the ractor child printed {text:?}");
    Ok(v[1].saturating_sub(v[0]) as f64 / n as f64)
}

// ---- troupe: one node process ----------------------------------------------------

/// Live `diag/shard` entities on the node, from its metrics.
fn live_shards(c: &LocalCluster) -> f64 {
    let Ok((_, body)) = troupe_bench::cluster::http(c.admin["n1"], "GET", "/metrics", None) else { return f64::NAN };
    body.lines()
        .filter(|l| l.starts_with("troupe_actors{") && l.contains("kind=\"shard\"") && l.contains("system=\"diag\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn activate(client: &Client, from: usize, to: usize) -> anyhow::Result<()> {
    let mut asks = futures::stream::iter(from..to)
        .map(|i| async move {
            let path = ActorPath::new("diag", "shard", &format!("e{i}"))?;
            match client.ask_timeout::<Counter>(&path, &CounterMsg::Get, Duration::from_secs(60)).await? {
                CounterReply::Count { .. } => anyhow::Ok(()),
                other => anyhow::bail!("unexpected answer {other:?}"),
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut done = 0usize;
    let t = Instant::now();
    while let Some(r) = asks.next().await {
        r?;
        done += 1;
        if done.is_multiple_of(20_000) {
            eprintln!("  {done} of {} entities active ({:.1} s)", to - from, t.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

struct Figures {
    entity: f64,
    client: f64,
    websocket: f64,
    rss_idle_node: u64,
    live_entities: f64,
}

async fn troupe_side(c: &LocalCluster, entities: usize, clients: usize, websockets: usize) -> anyhow::Result<Figures> {
    let pid = c.pid("n1").ok_or_else(|| anyhow::anyhow!("n1 is not running"))?;
    let cfg = ClientConfig::from_cluster_file(&c.cluster_file(), "cli")?;
    let client = Client::connect(cfg.clone()).await?;
    // Warm-up: the kind's first activations, a few clients and sessions.
    activate(&client, 0, 1000).await?;
    let rss_idle_node = settled_rss(pid)?;

    // Idle entities.
    let before = settled_rss(pid)?;
    activate(&client, 1000, 1000 + entities).await?;
    let live_entities = live_shards(c);
    anyhow::ensure!(
        live_entities >= (1000 + entities) as f64,
        "only {live_entities} entities live of {} (passivated?)",
        1000 + entities
    );
    let entity = per_thing(pid, before, entities, "entity")?;

    // Idle QUIC client connections: each SDK client has its own endpoint and asks once.
    let before = settled_rss(pid)?;
    let mut held = Vec::with_capacity(clients);
    let t = Instant::now();
    for i in 0..clients {
        let cl = Client::connect(cfg.clone()).await?;
        let path = ActorPath::new("diag", "shard", &format!("e{}", i % 1000))?;
        cl.ask_timeout::<Counter>(&path, &CounterMsg::Get, Duration::from_secs(60)).await?;
        held.push(cl);
        progress(i + 1, clients, 1000, "clients connected", t);
    }
    let client_bytes = per_thing(pid, before, clients, "QUIC client connection")?;
    drop(held);

    // Idle WebSockets on the diag gateway's echo.
    let url = format!("ws://127.0.0.1:{}/ws/echo", c.ports["n1"]["diag"]);
    let auth = c.service_auth()?;
    let before = settled_rss(pid)?;
    let mut socks = Vec::with_capacity(websockets);
    let t = Instant::now();
    for i in 0..websockets {
        let mut s = ws::connect(&url, Some(&auth), Duration::from_secs(30)).await?;
        s.send_text(format!("hello {i}")).await?;
        match s.next_within(Duration::from_secs(30)).await? {
            Some(ws::WsFrame::Text(t)) if t == format!("hello {i}") => {}
            other => anyhow::bail!("websocket {i}: expected the echo, got {other:?}"),
        }
        socks.push(s);
        progress(i + 1, websockets, 2000, "websockets open", t);
    }
    let websocket = per_thing(pid, before, websockets, "WebSocket")?;
    drop(socks);
    Ok(Figures { entity, client: client_bytes, websocket, rss_idle_node, live_entities })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--raw") {
        return raw_child(arg(&args, "--raw", 100_000));
    }
    let entities = arg(&args, "--entities", 100_000);
    let clients = arg(&args, "--clients", 5_000);
    let websockets = arg(&args, "--websockets", 10_000);
    let nofile = raise_nofile();
    anyhow::ensure!(
        (clients.max(websockets) as u64) + 1000 < nofile,
        "the open files limit is {nofile}: ask for fewer clients or websockets"
    );

    let raw = raw_peer(entities)?;
    eprintln!("raw ractor actor: {raw:.0} bytes ({entities} actors)");

    let mut c = LocalCluster::prepare(1, &["diag"], "", &["diag"])?;
    // Entities must stay idle, not passivate, while they are counted; the gateway
    // must admit every session.
    let sys = c.dir.join("systems/diag.toml");
    let text = std::fs::read_to_string(&sys)?
        .replace("passivate_after_ms = 30000", "passivate_after_ms = 3600000")
        .replace("sessions_max = 10000", &format!("sessions_max = {}", websockets + 100))
        .replace("connections_max = 8192", &format!("connections_max = {}", websockets + 100))
        .replace("connections_per_ip_max = 256", &format!("connections_per_ip_max = {}", websockets + 100));
    std::fs::write(&sys, text)?;
    c.spawn("n1")?;
    c.wait_all_alive(Duration::from_secs(30))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let f = rt.block_on(troupe_side(&c, entities, clients, websockets))?;

    println!("\n{:<36} {:>14}", "idle, bytes each (RSS delta / count)", "");
    println!("{:<36} {:>14.0}", "troupe entity (diag/shard)", f.entity);
    println!("{:<36} {:>14.0}", "raw ractor actor (peer)", raw);
    println!("{:<36} {:>14.0}", "troupe QUIC client connection", f.client);
    println!("{:<36} {:>14.0}", "troupe WebSocket (diag echo)", f.websocket);
    println!("entity / raw ractor: {:.2}×", f.entity / raw);

    let out = serde_json::json!({
        "bench": "memory",
        "machine": troupe_bench::machine(),
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "method": "RSS (VmRSS) of the node process before and after N idle things, median of 5 reads after a 2 s pause, divided by N; the raw ractor peer in a child process the same way",
        "counts": { "entities": entities, "clients": clients, "websockets": websockets, "open_files_limit": nofile },
        "node_rss_idle_bytes": f.rss_idle_node,
        "live_entities_seen": f.live_entities,
        "bytes_each": {
            "entity": f.entity,
            "raw_ractor_actor": raw,
            "quic_client_connection": f.client,
            "websocket": f.websocket,
        },
        "ratios": { "entity_vs_raw_ractor": f.entity / raw },
        "reference": { "akka_actor_published_bytes": AKKA_PUBLISHED_BYTES, "note": "published figure, not measured here" },
        "goals": { "idle_entity_at_most_1_kib": f.entity <= ENTITY_GOAL_BYTES },
    });
    let p = troupe_bench::write_result("memory", &out)?;
    println!("wrote {}", p.display());
    Ok(())
}

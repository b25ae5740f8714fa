//! Peer benchmark for troupe's remote bench: `ractor_cluster` messaging between
//! two OS processes over TCP on 127.0.0.1.
//!
//! `serve --port P --cookie C` starts a `NodeServer` and a counter actor joined
//! to the process group `bench.counter`, then prints `READY`.
//!
//! `run --port P --cookie C --messages N` starts its own `NodeServer`, connects
//! to the serving node, waits until the counter is visible in the group (as a
//! `RemoteActor`), then measures
//!   1. remote tell throughput: N casts of `Add(1)` (a u64 payload), then one
//!      `Get` call that confirms the count; messages/s over that whole span;
//!   2. unloaded ask round trip: 20,000 sequential `Get` calls after a warm-up,
//!      p50/p99/p999 in microseconds (hdrhistogram),
//! and prints one JSON line on stdout.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{NodeServer, RactorClusterMessage};

const GROUP: &str = "bench.counter";
const ASKS: u64 = 20_000;
const ASK_WARMUP: u64 = 2_000;
const TELL_WARMUP: u64 = 10_000;
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Wire message. `Add` is a cast carrying a u64; `Get` is an RPC answering a
/// u64. The derive encodes each variant as (variant name, field bytes); u64s
/// go as 8 big-endian bytes (`BytesConvertable`).
#[derive(RactorClusterMessage)]
enum CounterMsg {
    Add(u64),
    #[rpc]
    Get(RpcReplyPort<u64>),
}

struct Counter;

impl Actor for Counter {
    type Msg = CounterMsg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<CounterMsg>, _: ()) -> Result<u64, ActorProcessingErr> {
        ractor::pg::join(GROUP.to_string(), vec![myself.get_cell()]);
        Ok(0)
    }

    async fn handle(&self, _: ActorRef<CounterMsg>, msg: CounterMsg, count: &mut u64) -> Result<(), ActorProcessingErr> {
        match msg {
            CounterMsg::Add(n) => *count += n,
            CounterMsg::Get(reply) => {
                let _ = reply.send(*count);
            }
        }
        Ok(())
    }
}

struct Args {
    mode: String,
    port: u16,
    cookie: String,
    messages: u64,
    local_port: u16,
}

fn usage() -> ! {
    eprintln!(
        "usage: ractor_cluster_bench serve --port P --cookie C\n       \
         ractor_cluster_bench run --port P --cookie C --messages N [--local-port L]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage());
    let mut a = Args { mode, port: 0, cookie: String::new(), messages: 1_000_000, local_port: 0 };
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--port" => a.port = v.parse().unwrap_or_else(|_| usage()),
            "--cookie" => a.cookie = v,
            "--messages" => a.messages = v.parse().unwrap_or_else(|_| usage()),
            "--local-port" => a.local_port = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.port == 0 || a.cookie.is_empty() || a.messages == 0 {
        usage();
    }
    a
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn start_node(port: u16, cookie: &str, name: &str) -> Res<ActorRef<ractor_cluster::NodeServerMessage>> {
    let server = NodeServer::new(port, cookie.to_string(), name.to_string(), "127.0.0.1".to_string(), None, None)
        .with_listen_addr(LOCALHOST);
    // The listener binds in NodeServer's pre_start: once spawn returns, it listens.
    let (node, _) = Actor::spawn(None, server, ()).await?;
    Ok(node)
}

async fn serve(a: &Args) -> Res<()> {
    let _node = start_node(a.port, &a.cookie, "bench-serve").await?;
    let (_counter, handle) = Actor::spawn(None, Counter, ()).await?;
    println!("READY");
    std::io::stdout().flush()?;
    handle.await?;
    Ok(())
}

async fn get(counter: &ActorRef<CounterMsg>) -> Res<u64> {
    match counter.call(CounterMsg::Get, Some(CALL_TIMEOUT)).await? {
        ractor::rpc::CallResult::Success(v) => Ok(v),
        other => Err(format!("Get failed: {other:?}").into()),
    }
}

async fn tell_burst(counter: &ActorRef<CounterMsg>, n: u64) -> Res<(u64, Duration)> {
    let t = Instant::now();
    for _ in 0..n {
        counter.cast(CounterMsg::Add(1)).map_err(|e| format!("cast: {e}"))?;
    }
    // FIFO along RemoteActor -> NodeSession -> TCP -> NodeSession -> Counter:
    // this reply comes after every Add above has been applied.
    let got = get(counter).await?;
    Ok((got, t.elapsed()))
}

async fn run(a: &Args) -> Res<()> {
    let node = start_node(a.local_port, &a.cookie, "bench-run").await?;
    ractor_cluster::client_connect(&node, (LOCALHOST, a.port)).await?;

    // Wait for authentication + pg sync to surface the remote counter.
    let deadline = Instant::now() + Duration::from_secs(30);
    let cell = loop {
        if let Some(c) = ractor::pg::get_members(&GROUP.to_string()).into_iter().find(|c| !c.get_id().is_local()) {
            break c;
        }
        if Instant::now() > deadline {
            return Err("remote counter never appeared in the process group".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let counter: ActorRef<CounterMsg> = cell.into();
    eprintln!("remote counter {} visible", counter.get_id());

    // Tell warm-up, then the measured burst.
    let base = get(&counter).await?;
    let (after_warm, _) = tell_burst(&counter, TELL_WARMUP).await?;
    if after_warm - base != TELL_WARMUP {
        return Err(format!("warm-up lost messages: {} of {TELL_WARMUP}", after_warm - base).into());
    }
    let (got, took) = tell_burst(&counter, a.messages).await?;
    if got - after_warm != a.messages {
        return Err(format!("counter lost messages: {} of {}", got - after_warm, a.messages).into());
    }
    let tell_per_s = a.messages as f64 / took.as_secs_f64();

    // Ask round trips, unloaded (the tell burst is fully drained above).
    for _ in 0..ASK_WARMUP {
        get(&counter).await?;
    }
    // Same bounds as troupe-bench: 1 ns .. 100 s, 3 significant digits.
    let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3)?;
    for _ in 0..ASKS {
        let t = Instant::now();
        get(&counter).await?;
        h.record(t.elapsed().as_nanos().max(1) as u64)?;
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{{\"tell_per_s\":{:.1},\"ask_p50_us\":{:.3},\"ask_p99_us\":{:.3},\"ask_p999_us\":{:.3},\"messages\":{}}}",
        tell_per_s,
        us(0.5),
        us(0.99),
        us(0.999),
        a.messages
    );
    std::io::stdout().flush()?;
    node.stop(None);
    Ok(())
}

fn main() {
    let a = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let r = rt.block_on(async {
        match a.mode.as_str() {
            "serve" => serve(&a).await,
            "run" => run(&a).await,
            _ => usage(),
        }
    });
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    // Skip runtime teardown (open sessions, actors): the result is printed.
    std::process::exit(0);
}

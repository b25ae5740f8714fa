//! Rate limiter, distributed (issue 7 (b)): checks through the SDK (troupe-client, one QUIC
//! connection, `--clients` asks in flight) to a 3-node troupe cluster, side by side in the same
//! run with Redis 7 running a Lua token bucket via EVALSHA (`--clients` TCP connections, one
//! request in flight each, unpipelined): throughput and p50/p99/p999, with ratios.
//! Writes bench/results/rate-limiter-distributed.json.
//!
//! troupe is measured two ways, both entering at node n1 and only for users whose shard lives
//! on another node (so every check crosses nodes):
//! - `service`: the SDK asks n1's limiter agent (`LimiterService`), which plans the check with
//!   its rules and asks the shard owner: the full API (fail modes, headers data, receipts);
//! - `shard`: the SDK asks the shard entity's path directly; n1 only forwards (what a client
//!   that routes for itself would pay).
//!
//! Redis gets the same users, cost and bucket (100 per second, burst 100), and reads its own
//! clock (`TIME`) inside the script, as the usual design does against clock skew.
//!
//! Then both again with client-side coalescing, the same policy for both (what a gateway
//! process fronting many users does, and what redis-rs' multiplexed connection or ioredis'
//! auto-pipelining do): the `--clients` tasks hand their checks to one coalescer that sends
//! whatever has queued as one batch (at most 64, no timer) with at most 4 batches in flight —
//! troupe as one `CheckBatch` ask, Redis as one pipeline on one of 4 connections. Latency is
//! still per check, from hand-off to answer.
//!
//! Needs `redis-server` (Debian: `apt-get install -y redis-server`) and a release build:
//! `cargo build --release -p troupe` (or `TROUPE_BIN`).
//!
//! Usage: `cargo run --release -p troupe-bench --bin rate_limiter -- [--duration-s 10]
//! [--clients 50] [--users 10000] [--rounds 2]`

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc, oneshot};
use troupe_bench::cluster::{LocalCluster, http, http_auth};
use troupe_bench::{new_histogram, record, summarize};
use troupe_client::{ActorPath, Client, ClientConfig};
use troupe_limiter::Dimension;
use troupe_limiter::proto::{
    self, CheckItem, LimiterService, LimiterShard, ServiceMsg, ServiceReply, ShardItem, ShardMsg, ShardReply,
};
use troupe_runtime::placement::{Candidate, owner};

const SYS: &str = "rate-limiter";
const SHARDS: u32 = 64;

/// The bench cluster: default membership, the shipped topology's shard count.
const CLUSTER_EXTRA: &str = r#"
[membership]
probe_period_ms = 1000
probe_rtt_ms = 400
suspect_to_down_ms = 3000
"#;

const RULES: &str = r#"
version = 2
[[rule]]
name = "bench"
dimension = "user"
algorithm = "token_bucket"
limit = 100
window_ms = 1000
"#;

/// The usual Redis token bucket: state in a hash, refilled from the server's clock.
const LUA: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1]) or burst
local ts = tonumber(s[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, math.floor(tokens)}
"#;

struct Args {
    duration_s: u64,
    clients: usize,
    users: usize,
    rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { duration_s: 10, clients: 50, users: 10_000, rounds: 2 };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).context("every flag takes a value")?;
        match pair[0].as_str() {
            "--duration-s" => a.duration_s = val.parse()?,
            "--clients" => a.clients = val.parse()?,
            "--users" => a.users = val.parse()?,
            "--rounds" => a.rounds = val.parse()?,
            other => bail!("unknown flag {other}; see the module docs"),
        }
    }
    Ok(a)
}

/// One side's run: requests, allowed, errors, duration and latency.
#[derive(Debug, Clone, serde::Serialize)]
struct RunResult {
    side: String,
    round: usize,
    requests: u64,
    allowed: u64,
    errors: u64,
    seconds: f64,
    checks_per_s: f64,
    latency: troupe_bench::Latency,
    /// For troupe service runs: the check as n1's `Limiter::check` timed it (what an actor on
    /// n1 calling the in-cluster API sees), from n1's histogram: upper bounds of the buckets
    /// holding p50 / p99 / p999, µs.
    in_cluster_le_us: Option<[f64; 3]>,
}

/// `troupe_ratelimit_check_duration_seconds` buckets of a node: (upper bound s, cumulative).
fn check_buckets(admin: SocketAddr) -> Vec<(f64, f64)> {
    let Ok((_, body)) = http(admin, "GET", "/metrics", None) else { return Vec::new() };
    body.lines()
        .filter_map(|l| l.strip_prefix("troupe_ratelimit_check_duration_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// Upper bounds (µs) of the buckets holding p50, p99, p999 of what was observed between two
/// scrapes.
fn quantiles_between(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<[f64; 3]> {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let at = |q: f64| delta.iter().find(|(_, c)| *c >= q * total).map_or(f64::INFINITY, |(le, _)| le * 1e6);
    Some([at(0.5), at(0.99), at(0.999)])
}

struct Tally {
    h: Histogram<u64>,
    requests: u64,
    allowed: u64,
    errors: u64,
}

/// xorshift64*: per-task user choice, no shared state.
fn next(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

async fn drive<F, Fut>(side: &str, round: usize, clients: usize, duration: Duration, make: F) -> RunResult
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients).map(|i| tokio::spawn(make(i))).collect();
    let mut h = new_histogram();
    let (mut requests, mut allowed, mut errors) = (0, 0, 0);
    for t in tasks {
        if let Ok(t) = t.await {
            let _ = h.add(&t.h);
            requests += t.requests;
            allowed += t.allowed;
            errors += t.errors;
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(duration.as_secs_f64());
    let r = RunResult {
        side: side.into(),
        round,
        requests,
        allowed,
        errors,
        seconds,
        checks_per_s: requests as f64 / seconds,
        latency: summarize(&h),
        in_cluster_le_us: None,
    };
    eprintln!(
        "  {side:<14} round {round}: {:>9.0} checks/s  p50 {:>7.1} µs  p99 {:>7.1} µs  p999 {:>7.1} µs  ({} allowed, {} errors)",
        r.checks_per_s, r.latency.p50_us, r.latency.p99_us, r.latency.p999_us, allowed, errors
    );
    r
}

// ---------------------------------------------------------------------------------------------
// troupe

struct Troupe {
    client: Arc<Client>,
    agent: ActorPath,
    /// Users whose shard is owned by a node other than n1, with their shard path.
    users: Arc<Vec<(String, ActorPath)>>,
}

fn remote_users(n: usize, names: &[String]) -> anyhow::Result<Vec<(String, ActorPath)>> {
    let cands: Vec<Candidate> = names
        .iter()
        .map(|n| Candidate { name: n.clone(), roles: vec!["gateway".into(), "gpu".into()], weight: 1.0 })
        .collect();
    let mut out = Vec::with_capacity(n);
    for i in 0.. {
        if out.len() == n {
            break;
        }
        let user = format!("u{i}");
        let path = proto::shard_path(proto::shard_of(Dimension::User, &user, SHARDS))?;
        if owner(&path.to_string(), &cands, None).is_some_and(|c| c.name != "n1") {
            out.push((user, path));
        }
    }
    Ok(out)
}

async fn troupe_service(t: &Troupe, round: usize, a: &Args) -> RunResult {
    let duration = Duration::from_secs(a.duration_s);
    drive("troupe-service", round, a.clients, duration, |i| {
        let (client, agent, users) = (t.client.clone(), t.agent.clone(), t.users.clone());
        async move {
            let mut tally = Tally { h: new_histogram(), requests: 0, allowed: 0, errors: 0 };
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let (user, _) = &users[(next(&mut rng) % users.len() as u64) as usize];
                let msg = ServiceMsg::Check { checks: vec![CheckItem::new("bench", user.as_str())] };
                let t0 = Instant::now();
                let r = client.ask::<LimiterService>(&agent, &msg).await;
                record(&mut tally.h, t0.elapsed());
                tally.requests += 1;
                match r {
                    Ok(ServiceReply::Verdict(v)) => tally.allowed += u64::from(v.allowed),
                    _ => tally.errors += 1,
                }
            }
            tally
        }
    })
    .await
}

async fn troupe_shard(t: &Troupe, round: usize, a: &Args) -> RunResult {
    let duration = Duration::from_secs(a.duration_s);
    drive("troupe-shard", round, a.clients, duration, |i| {
        let (client, users) = (t.client.clone(), t.users.clone());
        async move {
            let mut tally = Tally { h: new_histogram(), requests: 0, allowed: 0, errors: 0 };
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let (user, path) = &users[(next(&mut rng) % users.len() as u64) as usize];
                let msg = ShardMsg::Check {
                    version: 2,
                    items: vec![ShardItem { key: format!("bench|user|{user}"), cost: 1 }],
                };
                let t0 = Instant::now();
                let r = client.ask::<LimiterShard>(path, &msg).await;
                record(&mut tally.h, t0.elapsed());
                tally.requests += 1;
                match r {
                    Ok(ShardReply::Checked { admitted, .. }) => tally.allowed += u64::from(admitted),
                    _ => tally.errors += 1,
                }
            }
            tally
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Client-side coalescing, the same policy for both sides.

/// Most checks in one coalesced batch.
const COALESCE_MAX: usize = 64;
/// Coalesced batches in flight.
const COALESCE_IN_FLIGHT: usize = 4;

type Job = (String, oneshot::Sender<bool>);

/// Runs `send` on batches of queued jobs: a batch leaves as soon as one of
/// `COALESCE_IN_FLIGHT` slots is free, with whatever queued meanwhile.
fn coalescer<F, Fut>(send: F) -> mpsc::Sender<Job>
where
    F: Fn(usize, Vec<Job>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Job>(4096);
    let send = Arc::new(send);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(COALESCE_IN_FLIGHT));
        let mut n = 0usize;
        while let Some(first) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let mut batch = vec![first];
            while batch.len() < COALESCE_MAX {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let send = send.clone();
            n += 1;
            let lane = n % COALESCE_IN_FLIGHT;
            tokio::spawn(async move {
                send(lane, batch).await;
                drop(permit);
            });
        }
    });
    tx
}

async fn coalesced(
    side: &str,
    round: usize,
    a: &Args,
    users: Arc<Vec<(String, ActorPath)>>,
    q: mpsc::Sender<Job>,
) -> RunResult {
    let duration = Duration::from_secs(a.duration_s);
    drive(side, round, a.clients, duration, |i| {
        let (users, q) = (users.clone(), q.clone());
        async move {
            let mut tally = Tally { h: new_histogram(), requests: 0, allowed: 0, errors: 0 };
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let (user, _) = &users[(next(&mut rng) % users.len() as u64) as usize];
                let (tx, rx) = oneshot::channel();
                let t0 = Instant::now();
                if q.send((user.clone(), tx)).await.is_err() {
                    tally.errors += 1;
                    break;
                }
                let r = rx.await;
                record(&mut tally.h, t0.elapsed());
                tally.requests += 1;
                match r {
                    Ok(ok) => tally.allowed += u64::from(ok),
                    Err(_) => tally.errors += 1,
                }
            }
            tally
        }
    })
    .await
}

fn troupe_coalescer(t: &Troupe) -> mpsc::Sender<Job> {
    let (client, agent) = (t.client.clone(), t.agent.clone());
    coalescer(move |_, batch: Vec<Job>| {
        let (client, agent) = (client.clone(), agent.clone());
        async move {
            let requests = batch.iter().map(|(u, _)| vec![CheckItem::new("bench", u.as_str())]).collect();
            match client.ask::<LimiterService>(&agent, &ServiceMsg::CheckBatch { requests }).await {
                Ok(ServiceReply::Verdicts(vs)) if vs.len() == batch.len() => {
                    for (v, (_, tx)) in vs.into_iter().zip(batch) {
                        let _ = tx.send(v.is_ok_and(|v| v.allowed));
                    }
                }
                _ => {} // dropping the senders reports errors
            }
        }
    })
}

async fn redis_coalescer(addr: SocketAddr, sha: Arc<String>) -> anyhow::Result<mpsc::Sender<Job>> {
    let mut conns = Vec::new();
    for _ in 0..COALESCE_IN_FLIGHT {
        conns.push(Arc::new(tokio::sync::Mutex::new(Resp::connect(addr).await?)));
    }
    let conns = Arc::new(conns);
    Ok(coalescer(move |lane, batch: Vec<Job>| {
        let (conns, sha) = (conns.clone(), sha.clone());
        async move {
            let mut c = conns[lane % conns.len()].lock().await;
            // One pipeline: every command written, then every reply read.
            let mut buf = Vec::new();
            for (user, _) in &batch {
                let key = format!("rl:{user}");
                for (i, a) in [b"EVALSHA".as_slice(), sha.as_bytes(), b"1", key.as_bytes(), b"100", b"100", b"1"]
                    .iter()
                    .enumerate()
                {
                    if i == 0 {
                        buf.extend_from_slice(b"*7\r\n");
                    }
                    buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                    buf.extend_from_slice(a);
                    buf.extend_from_slice(b"\r\n");
                }
            }
            if c.w.write_all(&buf).await.is_err() {
                return;
            }
            for (_, tx) in batch {
                match c.reply().await {
                    Ok(Reply::Array(v)) => {
                        let _ = tx.send(matches!(v.first(), Some(Reply::Int(1))));
                    }
                    _ => return,
                }
            }
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Redis: a minimal RESP client (requests as arrays of bulk strings; integer, status, error and
// array replies), one connection per client task.

struct Resp {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

#[derive(Debug)]
enum Reply {
    Int(i64),
    Str(String),
    Array(Vec<Reply>),
    Nil,
}

impl Resp {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Resp> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Resp { r: BufReader::new(r), w, line: String::new() })
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&buf).await?;
        self.reply().await
    }

    async fn reply(&mut self) -> anyhow::Result<Reply> {
        // Arrays are read iteratively into a stack, so a hostile reply cannot recurse deeply.
        let mut stack: Vec<(usize, Vec<Reply>)> = Vec::new();
        loop {
            self.line.clear();
            if self.r.read_line(&mut self.line).await? == 0 {
                bail!("redis closed the connection");
            }
            let l = self.line.trim_end();
            let (tag, rest) = l.split_at(1.min(l.len()));
            let item = match tag {
                ":" => Reply::Int(rest.parse()?),
                "+" => Reply::Str(rest.to_string()),
                "-" => bail!("redis error: {rest}"),
                "$" => {
                    let n: i64 = rest.parse()?;
                    if n < 0 {
                        Reply::Nil
                    } else {
                        let mut b = vec![0u8; n as usize + 2];
                        tokio::io::AsyncReadExt::read_exact(&mut self.r, &mut b).await?;
                        b.truncate(n as usize);
                        Reply::Str(String::from_utf8_lossy(&b).into_owned())
                    }
                }
                "*" => {
                    let n: i64 = rest.parse()?;
                    if n <= 0 {
                        Reply::Array(Vec::new())
                    } else {
                        stack.push((n as usize, Vec::with_capacity(n as usize)));
                        continue;
                    }
                }
                _ => bail!("unexpected reply line {l:?}"),
            };
            let mut item = item;
            loop {
                match stack.last_mut() {
                    None => return Ok(item),
                    Some((n, items)) => {
                        items.push(item);
                        if items.len() < *n {
                            break;
                        }
                    }
                }
                let (_, items) = stack.pop().unwrap_or_default();
                item = Reply::Array(items);
            }
        }
    }
}

struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_redis() -> anyhow::Result<Redis> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-server (Debian: apt-get install -y redis-server)")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let r = Redis { child, addr };
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = Resp::connect(addr).await
            && matches!(c.cmd(&[b"PING"]).await, Ok(Reply::Str(s)) if s == "PONG")
        {
            return Ok(r);
        }
        anyhow::ensure!(Instant::now() < end, "redis-server did not answer on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn redis_run(
    addr: SocketAddr,
    sha: Arc<String>,
    users: Arc<Vec<(String, ActorPath)>>,
    round: usize,
    a: &Args,
) -> RunResult {
    let duration = Duration::from_secs(a.duration_s);
    drive("redis-lua", round, a.clients, duration, |i| {
        let (sha, users) = (sha.clone(), users.clone());
        async move {
            let mut tally = Tally { h: new_histogram(), requests: 0, allowed: 0, errors: 0 };
            let Ok(mut c) = Resp::connect(addr).await else {
                tally.errors += 1;
                return tally;
            };
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let (user, _) = &users[(next(&mut rng) % users.len() as u64) as usize];
                let key = format!("rl:{user}");
                let t0 = Instant::now();
                let r = c.cmd(&[b"EVALSHA", sha.as_bytes(), b"1", key.as_bytes(), b"100", b"100", b"1"]).await;
                record(&mut tally.h, t0.elapsed());
                tally.requests += 1;
                match r {
                    Ok(Reply::Array(v)) if matches!(v.first(), Some(Reply::Int(_))) => {
                        tally.allowed += u64::from(matches!(v.first(), Some(Reply::Int(1))));
                    }
                    _ => tally.errors += 1,
                }
            }
            tally
        }
    })
    .await
}

fn best<'a>(runs: &'a [RunResult], side: &str) -> Option<&'a RunResult> {
    runs.iter().filter(|r| r.side == side).max_by(|a, b| a.checks_per_s.total_cmp(&b.checks_per_s))
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    eprintln!("starting a 3-node troupe cluster and redis-server ...");
    let mut cluster = LocalCluster::start(3, &[SYS], CLUSTER_EXTRA, &[SYS])?;
    cluster.wait_all_alive(Duration::from_secs(30))?;
    let names = cluster.names();
    let gw = SocketAddr::from(([127, 0, 0, 1], cluster.ports["n1"][SYS]));
    let end = Instant::now() + Duration::from_secs(30);
    let admin = cluster.admin_auth()?;
    loop {
        match http_auth(gw, "PUT", "/v1/rules", &admin, Some(RULES)) {
            Ok((200, _)) => break,
            Ok((c, b)) if Instant::now() > end => bail!("PUT /v1/rules: {c} {b}"),
            Err(e) if Instant::now() > end => bail!("PUT /v1/rules: {e}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let users = Arc::new(remote_users(a.users, &names)?);
    let admin = cluster.admin["n1"];
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let runs = rt.block_on(async {
        let cfg = ClientConfig::from_cluster_file(&cluster.cluster_file(), "cli")?.prefer("n1");
        let client = Arc::new(Client::connect(cfg).await?);
        anyhow::ensure!(client.node().await.as_deref() == Some("n1"), "the SDK must enter at n1");
        let t = Troupe { client, agent: proto::agent_path("n1")?, users: users.clone() };
        // Warm: rules on every node, every shard activated on its owner.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (user, _) in users.iter().take(2_000) {
            let msg = ServiceMsg::Check { checks: vec![CheckItem::new("bench", user.as_str())] };
            let _ = t.client.ask::<LimiterService>(&t.agent, &msg).await;
        }
        let redis = start_redis().await?;
        let mut c = Resp::connect(redis.addr).await?;
        let sha = match c.cmd(&[b"SCRIPT", b"LOAD", LUA.as_bytes()]).await? {
            Reply::Str(s) => Arc::new(s),
            other => bail!("SCRIPT LOAD answered {other:?}"),
        };
        let tq = troupe_coalescer(&t);
        let rq = redis_coalescer(redis.addr, sha.clone()).await?;
        let mut runs = Vec::new();
        for round in 1..=a.rounds {
            let b = check_buckets(admin);
            let mut r = troupe_service(&t, round, &a).await;
            r.in_cluster_le_us = quantiles_between(&b, &check_buckets(admin));
            runs.push(r);
            runs.push(troupe_shard(&t, round, &a).await);
            runs.push(redis_run(redis.addr, sha.clone(), users.clone(), round, &a).await);
            let b = check_buckets(admin);
            let mut r = coalesced("troupe-batched", round, &a, users.clone(), tq.clone()).await;
            r.in_cluster_le_us = quantiles_between(&b, &check_buckets(admin));
            runs.push(r);
            runs.push(coalesced("redis-pipelined", round, &a, users.clone(), rq.clone()).await);
        }
        Ok::<_, anyhow::Error>(runs)
    })?;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    cluster.kill("n1");

    let (svc, shard, redis) = (best(&runs, "troupe-service"), best(&runs, "troupe-shard"), best(&runs, "redis-lua"));
    let (tb, rp) = (best(&runs, "troupe-batched"), best(&runs, "redis-pipelined"));
    let ratio_to = |x: Option<&RunResult>, redis: Option<&RunResult>| {
        let (Some(x), Some(r)) = (x, redis) else { return serde_json::Value::Null };
        serde_json::json!({
            "throughput_vs_redis": x.checks_per_s / r.checks_per_s,
            "p50_vs_redis": x.latency.p50_us / r.latency.p50_us,
            "p99_vs_redis": x.latency.p99_us / r.latency.p99_us,
            "p999_vs_redis": x.latency.p999_us / r.latency.p999_us,
        })
    };
    let ratio = |x: Option<&RunResult>| ratio_to(x, redis);
    let goals_to = |x: Option<&RunResult>, redis: Option<&RunResult>| {
        x.zip(redis).map(|(x, r)| {
            serde_json::json!({
                "p99_under_1ms": x.latency.p99_us < 1000.0,
                "throughput_3x_redis": x.checks_per_s >= 3.0 * r.checks_per_s,
            })
        })
    };
    let goals = |x: Option<&RunResult>| goals_to(x, redis);
    let report = serde_json::json!({
        "bench": "rate-limiter-distributed",
        "machine": troupe_bench::machine(),
        "loadavg_before": load_before.trim(),
        "loadavg_after": load_after.trim(),
        "config": {
            "nodes": 3, "shards": SHARDS, "clients": a.clients, "users": a.users, "duration_s": a.duration_s,
            "rounds": a.rounds, "rule": "token_bucket 100/s burst 100 per user, cost 1",
            "troupe": "SDK (one QUIC connection, `clients` asks in flight) enters at n1; only users whose shard is on n2/n3",
            "redis": "redis-server 7, Lua token bucket via EVALSHA, `clients` TCP connections, one request in flight each",
        },
        "runs": runs,
        "best": { "troupe_service": svc, "troupe_shard": shard, "redis_lua": redis,
                  "troupe_batched": tb, "redis_pipelined": rp },
        "ratios": { "troupe_service": ratio(svc), "troupe_shard": ratio(shard),
                    "troupe_batched_vs_redis_pipelined": ratio_to(tb, rp),
                    "troupe_batched_vs_redis_unpipelined": ratio(tb) },
        "goals": { "troupe_service": goals(svc), "troupe_shard": goals(shard),
                   "troupe_batched_vs_redis_pipelined": goals_to(tb, rp) },
    });
    println!("\nbest of {} rounds ({} clients, {} s each):", a.rounds, a.clients, a.duration_s);
    for (name, r) in [
        ("troupe service", svc),
        ("troupe shard", shard),
        ("redis+lua", redis),
        ("troupe batched", tb),
        ("redis pipelined", rp),
    ] {
        if let Some(r) = r {
            println!(
                "  {name:<15} {:>9.0} checks/s   p50 {:>7.1} µs   p99 {:>7.1} µs   p999 {:>7.1} µs",
                r.checks_per_s, r.latency.p50_us, r.latency.p99_us, r.latency.p999_us
            );
        }
    }
    if let (Some(s), Some(d), Some(r)) = (svc, shard, redis) {
        println!(
            "  ratios vs redis: service {:.2}x throughput, p99 {:.2}x; shard {:.2}x throughput, p99 {:.2}x",
            s.checks_per_s / r.checks_per_s,
            s.latency.p99_us / r.latency.p99_us,
            d.checks_per_s / r.checks_per_s,
            d.latency.p99_us / r.latency.p99_us
        );
    }
    if let (Some(b), Some(p)) = (tb, rp) {
        println!(
            "  coalesced: troupe {:.2}x redis pipelined throughput, p99 {:.2}x",
            b.checks_per_s / p.checks_per_s,
            b.latency.p99_us / p.latency.p99_us
        );
    }
    let p = troupe_bench::write_result("rate-limiter-distributed", &report)?;
    println!("wrote {}", p.display());
    Ok(())
}

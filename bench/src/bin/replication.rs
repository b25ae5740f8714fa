//! Replicated key-value writes: troupe's kv (rf 3, majority quorums, every write fsynced
//! on a majority before its 200) against a 3-member etcd cluster (Debian
//! `etcd-server`, each member its own data dir, default fsync) on loopback, in one run,
//! driven by one load generator over HTTP/JSON with the same clients, keys and value
//! sizes: troupe's `PUT /kv/{key}` and `GET /kv/{key}` (a linearizable read: a read
//! barrier on a majority), etcd's v3 JSON gateway `POST /v3/kv/put` and
//! `POST /v3/kv/range` (linearizable by default). Clients spread over the three
//! nodes / members and keep their connections open, as real clients do.
//!
//! `cargo run --release -p troupe-bench --bin replication -- [--secs 10] [--rounds 3]
//! [--clients 16] [--keys 1000] [--value-bytes 256]` → bench/results/replication.json.

use anyhow::Context;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use troupe_bench::cluster::{LocalCluster, http, http_auth};
use troupe_bench::{machine, new_histogram, record, summarize, write_result};

struct Args {
    secs: u64,
    rounds: usize,
    clients: usize,
    keys: usize,
    value_bytes: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { secs: 10, rounds: 3, clients: 16, keys: 1000, value_bytes: 256 };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).with_context(|| format!("{} needs a value", v[i]))?;
        match v[i].as_str() {
            "--secs" => a.secs = val.parse()?,
            "--rounds" => a.rounds = val.parse()?,
            "--clients" => a.clients = val.parse()?,
            "--keys" => a.keys = val.parse()?,
            "--value-bytes" => a.value_bytes = val.parse()?,
            other => anyhow::bail!("unknown flag {other} (--secs, --rounds, --clients, --keys, --value-bytes)"),
        }
        i += 2;
    }
    Ok(a)
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= c.len() { T[(n >> shift & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// One kept-alive HTTP/1.1 connection.
struct Conn {
    addr: SocketAddr,
    r: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, r: None }
    }

    /// Sends a request and reads the answer; reconnects once if the connection broke.
    /// `auth`: an `Authorization` header value, or empty for none.
    fn call(&mut self, method: &str, path: &str, auth: &str, body: &str) -> std::io::Result<(u16, String)> {
        for attempt in 0..2 {
            if self.r.is_none() {
                let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                self.r = Some(BufReader::new(s));
            }
            match self.once(method, path, auth, body) {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 => {
                    self.r = None;
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("two attempts return")
    }

    fn once(&mut self, method: &str, path: &str, auth: &str, body: &str) -> std::io::Result<(u16, String)> {
        let r = self.r.as_mut().ok_or_else(|| std::io::Error::other("not connected"))?;
        let auth = if auth.is_empty() { String::new() } else { format!("Authorization: {auth}\r\n") };
        write!(
            r.get_mut(),
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 =
            line.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(line.clone()))?;
        let (mut len, mut chunked) = (0usize, false);
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else {
            out.resize(len, 0);
            r.read_exact(&mut out)?;
        }
        Ok((status, String::from_utf8_lossy(&out).into_owned()))
    }
}

/// What one request of a system looks like.
trait Target: Sync {
    fn put(&self, c: &mut Conn, key: &str, value: &str) -> bool;
    fn get(&self, c: &mut Conn, key: &str) -> bool;
}

/// troupe's kv routes; writes carry the cluster's service token, as a kv client must.
struct Troupe {
    auth: String,
}
impl Target for Troupe {
    fn put(&self, c: &mut Conn, key: &str, value: &str) -> bool {
        let body = format!("{{\"value\":\"{value}\"}}");
        matches!(c.call("PUT", &format!("/kv/{key}"), &self.auth, &body), Ok((200, _)))
    }
    fn get(&self, c: &mut Conn, key: &str) -> bool {
        matches!(c.call("GET", &format!("/kv/{key}"), "", ""), Ok((200, _)))
    }
}

struct Etcd;
impl Target for Etcd {
    fn put(&self, c: &mut Conn, key: &str, value: &str) -> bool {
        let body = format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(key), b64(value));
        matches!(c.call("POST", "/v3/kv/put", "", &body), Ok((200, _)))
    }
    fn get(&self, c: &mut Conn, key: &str) -> bool {
        matches!(c.call("POST", "/v3/kv/range", "", &format!("{{\"key\":\"{}\"}}", b64(key))), Ok((200, _)))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Put,
    Get,
}

/// `clients` threads over `addrs` for `secs`; returns (ok/s, errors, latency summary).
fn drive(t: &dyn Target, addrs: &[SocketAddr], a: &Args, op: Op) -> serde_json::Value {
    let hist = Mutex::new(new_histogram());
    let (ok, err) = (Mutex::new(0u64), Mutex::new(0u64));
    let stop = AtomicBool::new(false);
    let value = "v".repeat(a.value_bytes);
    let started = Instant::now();
    std::thread::scope(|s| {
        for i in 0..a.clients {
            let (hist, ok, err, stop, value) = (&hist, &ok, &err, &stop, &value);
            let addr = addrs[i % addrs.len()];
            s.spawn(move || {
                let mut c = Conn::new(addr);
                let mut h = new_histogram();
                let (mut n_ok, mut n_err) = (0u64, 0u64);
                let mut k = i * 7919;
                while !stop.load(Ordering::Relaxed) {
                    k = (k + 104_729) % a.keys;
                    let key = format!("bench{k}");
                    let t0 = Instant::now();
                    let good = match op {
                        Op::Put => t.put(&mut c, &key, value),
                        Op::Get => t.get(&mut c, &key),
                    };
                    if good {
                        record(&mut h, t0.elapsed());
                        n_ok += 1;
                    } else {
                        n_err += 1;
                    }
                }
                let _ = hist.lock().map(|mut g| g.add(&h));
                *ok.lock().unwrap_or_else(|e| e.into_inner()) += n_ok;
                *err.lock().unwrap_or_else(|e| e.into_inner()) += n_err;
            });
        }
        std::thread::sleep(Duration::from_secs(a.secs));
        stop.store(true, Ordering::Relaxed);
    });
    let secs = started.elapsed().as_secs_f64();
    let ok = *ok.lock().unwrap_or_else(|e| e.into_inner());
    let err = *err.lock().unwrap_or_else(|e| e.into_inner());
    let lat = summarize(&hist.lock().unwrap_or_else(|e| e.into_inner()));
    serde_json::json!({ "ops_per_s": ok as f64 / secs, "ok": ok, "errors": err, "latency": lat })
}

/// Three etcd members on loopback, each with its own data dir (default fsync).
struct EtcdCluster {
    procs: Vec<Child>,
    clients: Vec<SocketAddr>,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn etcd_cluster(dir: &Path) -> anyhow::Result<EtcdCluster> {
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        peers.push(port()?);
        clients.push(port()?);
    }
    let initial: Vec<String> = (0..3).map(|i| format!("m{i}=http://127.0.0.1:{}", peers[i])).collect();
    let mut procs = Vec::new();
    for i in 0..3 {
        let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log")))?;
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(dir.join(format!("etcd-m{i}")))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", clients[i])])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{}", clients[i])])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", peers[i])])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", peers[i])])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "troupe-bench"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (apt-get install -y etcd-server)")?;
        procs.push(child);
    }
    let clients: Vec<SocketAddr> = clients.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect();
    let end = Instant::now() + Duration::from_secs(30);
    for a in &clients {
        while !http(*a, "GET", "/health", None).is_ok_and(|(c, b)| c == 200 && b.contains("true")) {
            anyhow::ensure!(Instant::now() < end, "etcd member {a} not healthy; logs in {}", dir.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(EtcdCluster { procs, clients })
}

fn median(v: &[serde_json::Value], field: &str) -> f64 {
    let mut xs: Vec<f64> = v
        .iter()
        .filter_map(|r| {
            let mut x = r;
            for f in field.split('.') {
                x = &x[f];
            }
            x.as_f64()
        })
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    anyhow::ensure!(
        Command::new("sh").args(["-c", "command -v etcd"]).output()?.status.success(),
        "`etcd` not found: apt-get install -y etcd-server"
    );
    let cluster = LocalCluster::start(3, &["kv"], "", &["kv"])?;
    cluster.wait_all_alive(Duration::from_secs(30))?;
    let troupe: Vec<SocketAddr> =
        cluster.names().iter().map(|n| SocketAddr::from(([127, 0, 0, 1], cluster.ports[n]["kv"]))).collect();
    let end = Instant::now() + Duration::from_secs(30);
    let auth = cluster.service_auth()?;
    for gw in &troupe {
        while !matches!(http_auth(*gw, "PUT", "/kv/warm", &auth, Some("{\"value\":\"x\"}")), Ok((200, _))) {
            anyhow::ensure!(Instant::now() < end, "kv gateway {gw} not serving; logs in {}", cluster.dir.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let etcd = etcd_cluster(&cluster.dir)?;
    // Every key exists on both before timing (troupe activates an entity per key).
    eprintln!("writing {} keys to each ...", a.keys);
    let warm = Args { secs: 3, ..a };
    let kv = Troupe { auth: auth.clone() };
    let _ = drive(&kv, &troupe, &warm, Op::Put);
    let _ = drive(&Etcd, &etcd.clients, &warm, Op::Put);
    let a = Args { secs: args()?.secs, ..warm };

    let mut runs: Vec<(&str, &str, serde_json::Value)> = Vec::new();
    for round in 0..a.rounds {
        for (name, op) in [("put", Op::Put), ("get", Op::Get)] {
            eprintln!("round {}/{}: {name} troupe ...", round + 1, a.rounds);
            runs.push(("troupe", name, drive(&kv, &troupe, &a, op)));
            eprintln!("round {}/{}: {name} etcd ...", round + 1, a.rounds);
            runs.push(("etcd", name, drive(&Etcd, &etcd.clients, &a, op)));
        }
    }
    let pick = |sys: &str, op: &str| -> Vec<serde_json::Value> {
        runs.iter().filter(|r| r.0 == sys && r.1 == op).map(|r| r.2.clone()).collect()
    };
    let mut summary = serde_json::Map::new();
    let mut goals = serde_json::Map::new();
    for op in ["put", "get"] {
        let (t, e) = (pick("troupe", op), pick("etcd", op));
        let (t_ops, e_ops) = (median(&t, "ops_per_s"), median(&e, "ops_per_s"));
        let (t_p99, e_p99) = (median(&t, "latency.p99_us"), median(&e, "latency.p99_us"));
        summary.insert(
            op.to_string(),
            serde_json::json!({
                "troupe": { "ops_per_s": t_ops, "p50_us": median(&t, "latency.p50_us"), "p99_us": t_p99 },
                "etcd": { "ops_per_s": e_ops, "p50_us": median(&e, "latency.p50_us"), "p99_us": e_p99 },
                "throughput_ratio": t_ops / e_ops,
                "p99_ratio": t_p99 / e_p99,
            }),
        );
        if op == "put" {
            goals.insert("put_throughput_at_least_etcd".into(), (t_ops >= e_ops).into());
            goals.insert("put_p99_at_most_etcd".into(), (t_p99 <= e_p99).into());
        }
    }
    let load: String = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let out = serde_json::json!({
        "benchmark": "replicated kv writes and linearizable reads: troupe kv vs etcd 3.4",
        "machine": machine(),
        "load_average_before": load.split_whitespace().take(3).collect::<Vec<_>>(),
        "config": {
            "clients": a.clients, "keys": a.keys, "value_bytes": a.value_bytes, "secs_per_run": a.secs,
            "rounds": a.rounds,
            "troupe": "3 nodes, kv rf 3 (majority writes, fsync per commit, read barrier on GET), HTTP/1.1 keep-alive to the kv gateways",
            "etcd": "3 members, etcd 3.4.23 defaults (fsync on), v3 JSON gateway, HTTP/1.1 keep-alive, linearizable range",
            "clients_spread": "client i talks to node / member i mod 3",
        },
        "summary": summary,
        "goals": goals,
        "runs": runs.iter().map(|(s, o, v)| serde_json::json!({ "system": s, "op": o, "result": v })).collect::<Vec<_>>(),
    });
    let p = write_result("replication", &out)?;
    println!("{}", serde_json::to_string_pretty(&out["summary"])?);
    println!("goals: {}", out["goals"]);
    println!("wrote {}", p.display());
    drop(etcd);
    Ok(())
}

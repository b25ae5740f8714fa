//! Lab (e), live: fail-open vs fail-closed on a real cluster. Starts 3 `troupe node`
//! processes (this binary) on free loopback ports, offers twice the limit of a fail-open and a
//! fail-closed rule for one user through node n1, SIGKILLs the owner of that user's shard, and
//! records every answer until the shard has re-homed and run for a while.
//!
//! Every wait is bounded; the processes and the temporary folder are removed on the way out,
//! also on error.

use anyhow::{Context, bail};

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_chart::{Line, LineChart};

const TOPOLOGY: &str = include_str!("../../../../../systems/rate-limiter.toml");
const LIMIT_PER_S: u64 = 50;
const OFFERED_PER_S: u64 = 100;
const KILL_AT: Duration = Duration::from_secs(5);
const RUN_FOR: Duration = Duration::from_secs(14);
const BIN: Duration = Duration::from_millis(250);

const RULES: &str = r#"
version = 2
[[rule]]
name = "live-open"
dimension = "user"
algorithm = "token_bucket"
limit = 50
window_ms = 1000
fail_mode = "open"

[[rule]]
name = "live-closed"
dimension = "user"
algorithm = "token_bucket"
limit = 50
window_ms = 1000
fail_mode = "closed"
"#;

/// One answer: seconds since the start, admitted, and the mode the service reported.
#[derive(Debug, Clone)]
struct Answer {
    t: f64,
    allowed: bool,
    mode: String,
}

/// What the live run saw.
pub struct LiveResult {
    owner: String,
    kill_s: f64,
    /// When both rules were enforced again.
    rehomed_s: f64,
    /// First enforced answer after the kill, per rule (open, closed).
    back_s: (f64, f64),
    open: Vec<Answer>,
    closed: Vec<Answer>,
}

struct Procs {
    dir: PathBuf,
    kids: Vec<(String, Child)>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.kids {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let t = TcpListener::bind("127.0.0.1:0")?;
        let p = t.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port on 127.0.0.1")
}

/// One JSON request on a fresh connection: (status, body).
/// `auth`: an `Authorization` value (the lab's admin token, which passes for the service
/// token that checks need too).
fn http(addr: SocketAddr, method: &str, path: &str, auth: &str, body: &str) -> std::io::Result<(u16, String)> {
    let json = [("Content-Type", "application/json"), ("Authorization", auth)];
    let r = troupe_common::http::request_within(addr, method, path, &json, body.as_bytes(), Duration::from_secs(5))?;
    Ok((r.status, r.body))
}

fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check(addr: SocketAddr, auth: &str, rule: &str, user: &str) -> Option<(bool, String)> {
    let body = serde_json::json!({ "rule": rule, "key": user }).to_string();
    let (code, b) = http(addr, "POST", "/v1/check", auth, &body).ok()?;
    let v: serde_json::Value = serde_json::from_str(&b).ok()?;
    Some((code == 200, v["results"][0]["mode"].as_str().unwrap_or("?").to_string()))
}

/// Runs the experiment (about 25 s).
pub fn run() -> anyhow::Result<LiveResult> {
    let exe = std::env::current_exe().context("locating the troupe binary")?;
    let dir = std::env::temp_dir().join(format!("troupe-lab-rl-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("systems"))?;
    let mut procs = Procs { dir: dir.clone(), kids: Vec::new() };
    std::fs::write(dir.join("systems/rate-limiter.toml"), TOPOLOGY)?;
    let names = ["n1", "n2", "n3"];
    let mut nodes = String::new();
    let mut http_ports = Vec::new();
    let mut admin_ports = Vec::new();
    for n in names {
        let (q, g, a, h) = (free_port()?, free_port()?, free_port()?, free_port()?);
        nodes.push_str(&format!(
            "[[nodes]]\nname = \"{n}\"\naddr = \"127.0.0.1:{q}\"\ngossip = \"127.0.0.1:{g}\"\nadmin = \"127.0.0.1:{a}\"\nroles = [\"gateway\"]\nports = {{ \"rate-limiter\" = {h} }}\n\n"
        ));
        http_ports.push(SocketAddr::from(([127, 0, 0, 1], h)));
        admin_ports.push(SocketAddr::from(([127, 0, 0, 1], a)));
    }
    let cluster = format!(
        "[cluster]\nname = \"lab\"\nsystems = [\"rate-limiter\"]\nseeds = [\"n1\", \"n2\"]\n\n[membership]\nprobe_period_ms = 300\nprobe_rtt_ms = 150\nsuspect_to_down_ms = 900\n\n[overrides.rate-limiter.limiter_shard]\nshards = 16\nsnapshot_ms = 200\n\n[overrides.rate-limiter.agent]\nowner_timeout_ms = 100\nbreaker_ms = 200\nrules_pull_ms = 500\nfail_closed_retry_ms = 1000\n\n{nodes}"
    );
    let file = dir.join("cluster.toml");
    std::fs::write(&file, cluster)?;
    let out = Command::new(&exe).args(["certs", "init", "--cluster"]).arg(&file).output()?;
    if !out.status.success() {
        bail!("certs init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token = std::fs::read_to_string(dir.join(".troupe/admin.token")).context("reading the lab's admin token")?;
    let auth = format!("Bearer {}", token.trim());
    for n in names {
        let log = std::fs::File::create(dir.join(format!("{n}.log")))?;
        let child = Command::new(&exe)
            .args(["node", "--cluster"])
            .arg(&file)
            .args(["--name", n])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {n}"))?;
        procs.kids.push((n.to_string(), child));
    }
    for a in &http_ports {
        wait("the limiter's HTTP services", Duration::from_secs(60), || {
            http(*a, "GET", "/v1/health", "", "").ok().filter(|(c, _)| *c == 200)
        })?;
    }
    wait("the rules update", Duration::from_secs(30), || {
        http(http_ports[0], "PUT", "/v1/rules", &auth, RULES).ok().filter(|(c, _)| *c == 200)
    })?;
    wait("every node to enforce the rules", Duration::from_secs(10), || {
        http_ports
            .iter()
            .all(|a| http(*a, "GET", "/v1/rules", "", "").is_ok_and(|(_, b)| b.contains("\"version\":2")))
            .then_some(())
    })?;
    // A user whose shard lives on n2 or n3, so the kill leaves the gateway n1 standing.
    let gw = http_ports[0];
    let (user, owner) = wait("a user whose shard is not on n1", Duration::from_secs(30), || {
        (0..64).find_map(|i| {
            let user = format!("user{i}");
            check(gw, &auth, "live-open", &user)?;
            let shard = troupe_limiter::proto::shard_of(troupe_limiter::Dimension::User, &user, 16);
            let path = format!("\"/rate-limiter/limiter_shard/s{shard}\"");
            let owner = (1..3)
                .find(|i| http(admin_ports[*i], "GET", "/v1/tree", "", "").is_ok_and(|(_, b)| b.contains(&path)))?;
            Some((user, owner))
        })
    })?;
    let owner_name = names[owner].to_string();
    eprintln!("    offering {OFFERED_PER_S}/s per rule for `{user}` through n1; its shard is on {owner_name}");

    let start = Instant::now();
    let logs: Vec<Arc<Mutex<Vec<Answer>>>> = (0..2).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let loaders: Vec<_> = ["live-open", "live-closed"]
        .into_iter()
        .zip(logs.iter().cloned())
        .map(|(rule, log)| {
            let (user, auth) = (user.clone(), auth.clone());
            std::thread::spawn(move || {
                let period = Duration::from_secs(1) / OFFERED_PER_S as u32;
                let mut next = start;
                while start.elapsed() < RUN_FOR {
                    if let Some((allowed, mode)) = check(gw, &auth, rule, &user)
                        && let Ok(mut l) = log.lock()
                    {
                        l.push(Answer { t: start.elapsed().as_secs_f64(), allowed, mode });
                    }
                    next += period;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(KILL_AT);
    if let Some((_, c)) = procs.kids.iter_mut().find(|(n, _)| *n == owner_name) {
        let _ = c.kill();
        let _ = c.wait();
    }
    let kill_s = start.elapsed().as_secs_f64();
    eprintln!("    SIGKILL {owner_name} at {kill_s:.2} s");
    for l in loaders {
        let _ = l.join();
    }
    let take = |i: usize| logs[i].lock().map(|l| l.clone()).unwrap_or_default();
    let (open, closed) = (take(0), take(1));
    let back = |v: &[Answer]| v.iter().find(|a| a.t > kill_s && a.mode == "enforced").map(|a| a.t);
    let back_s = (back(&open).unwrap_or(f64::NAN), back(&closed).unwrap_or(f64::NAN));
    let rehomed_s = back_s.0.max(back_s.1);
    drop(procs);
    Ok(LiveResult { owner: owner_name, kill_s, rehomed_s, back_s, open, closed })
}

impl LiveResult {
    fn during(v: &[Answer], from: f64, to: f64) -> (usize, usize) {
        let w: Vec<&Answer> = v.iter().filter(|a| a.t >= from && a.t < to).collect();
        (w.iter().filter(|a| a.allowed).count(), w.len())
    }

    fn per_bin(&self, v: &[Answer]) -> Vec<(f64, f64)> {
        let bin = BIN.as_secs_f64();
        let n = (RUN_FOR.as_secs_f64() / bin).ceil() as usize;
        let mut counts = vec![0u64; n];
        for a in v.iter().filter(|a| a.allowed) {
            if let Some(c) = counts.get_mut((a.t / bin) as usize) {
                *c += 1;
            }
        }
        counts.iter().enumerate().map(|(i, c)| ((i as f64 + 0.5) * bin, *c as f64 / bin)).collect()
    }

    /// Text for summary.txt.
    pub fn summary(&self) -> String {
        let ko = self.kill_s;
        let (bo, bc) = self.back_s;
        let (open_out, open_n) = Self::during(&self.open, ko, bo);
        let (closed_out, closed_n) = Self::during(&self.closed, ko, bc);
        let (open_before, n_before) = Self::during(&self.open, 1.0, ko);
        let (open_after, n_after) = Self::during(&self.open, bo, bo + 3.0);
        let (closed_after, _) = Self::during(&self.closed, bc, bc + 3.0);
        format!(
            "\n(e) live, 3 nodes: {OFFERED_PER_S}/s offered to a fail-open and a fail-closed token bucket ({LIMIT_PER_S}/s, burst {LIMIT_PER_S}) for one user;\n    SIGKILL of its shard owner {} at {ko:.2} s; enforced again at {bo:.2} s (open) and {bc:.2} s (closed): outage {:.2} s\n    before:  fail-open admitted {open_before} of {n_before} ({:.0}/s)\n    outage:  fail-open admitted {open_out} of {open_n} (all); fail-closed admitted {closed_out} of {closed_n}\n    after:   fail-open {open_after} of {n_after}, fail-closed {closed_after} in the 3 s after re-homing ({:.0}/s: the restored bucket refilled during the outage, B + L·3 s = {})\n",
            self.owner,
            self.rehomed_s - ko,
            open_before as f64 / (ko - 1.0).max(0.001),
            open_after as f64 / 3.0,
            LIMIT_PER_S * 4,
        )
    }

    /// Numbers for report.json.
    pub fn json(&self) -> serde_json::Value {
        let pts = |v: &[(f64, f64)]| v.iter().map(|(t, r)| serde_json::json!([t, r])).collect::<Vec<_>>();
        serde_json::json!({
            "owner_killed": self.owner, "kill_s": self.kill_s, "rehomed_s": self.rehomed_s,
            "enforced_again_s": { "open": self.back_s.0, "closed": self.back_s.1 },
            "limit_per_s": LIMIT_PER_S, "offered_per_s": OFFERED_PER_S,
            "open_admitted_per_s": pts(&self.per_bin(&self.open)),
            "closed_admitted_per_s": pts(&self.per_bin(&self.closed)),
        })
    }

    /// The plot: admitted per second over time for both rules, outage shaded.
    pub fn chart(&self) -> LineChart {
        LineChart {
            title: format!("Live: shard owner {} killed; admitted per second (limit {LIMIT_PER_S}/s)", self.owner),
            x_desc: "time (s)".into(),
            y_desc: "admitted per second".into(),
            lines: vec![
                Line { label: "fail-open rule".into(), points: self.per_bin(&self.open) },
                Line { label: "fail-closed rule".into(), points: self.per_bin(&self.closed) },
            ],
            levels: vec![(LIMIT_PER_S as f64, "limit".into()), (OFFERED_PER_S as f64, "offered".into())],
            shade: Some((self.kill_s, self.rehomed_s, "owner dead, not yet re-homed".into())),
        }
    }
}

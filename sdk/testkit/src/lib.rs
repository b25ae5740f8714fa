//! troupe-testkit: multi-node tests of systems on troupe. A [`TestCluster`] is real node
//! processes of a troupe binary (the `troupe` CLI, or your own binary that runs
//! `troupe::run` with your systems) on 127.0.0.1, each with its own ports and data folder
//! under a temporary directory, with the cluster's certificates made by `certs init`.
//! [`request`] and [`http`] are a raw HTTP/1.1 client with bounded waits, so a test sees
//! exactly what the server sent. Every wait here is bounded.
//!
//! ```no_run
//! use std::time::Duration;
//! use troupe_testkit::{Options, TestCluster, http_auth};
//!
//! let c = TestCluster::start(Options {
//!     bin: env!("CARGO_MANIFEST_DIR").into(), // your binary: env!("CARGO_BIN_EXE_<name>")
//!     topologies: "systems".into(),           // where <system>.toml files are
//!     systems: vec!["kv".into()],
//!     ..Options::default()
//! });
//! c.wait_converged(&[], Duration::from_secs(20));
//! // Writes need the cluster's service token (reads do not).
//! let put = http_auth(c.port("n1", "kv"), "PUT", "/kv/a", &c.service_auth(), Some(r#"{"value":"1"}"#));
//! let (status, body) = put.expect("request");
//! assert_eq!(status, 200, "{body}");
//! ```
//!
//! Logs of every node are kept in the cluster's folder (printed by a failing wait) when
//! the test panics, and removed otherwise.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod ports;
pub mod ws;
pub use ports::free_port;
pub use troupe_common::http::{Resp, dechunk, http, http_auth, request, request_within};

/// The ports of one node.
#[derive(Debug, Clone)]
pub struct NodePorts {
    /// QUIC, between nodes.
    pub quic: u16,
    /// SWIM gossip (UDP).
    pub gossip: u16,
    /// The admin API (`/v1/members`, `/metrics`, ...).
    pub admin: u16,
    /// `ports.<system>` of every enabled system: its HTTP routes' listener.
    pub systems: BTreeMap<String, u16>,
}

/// A cluster of node processes; dropping it kills them.
#[derive(Debug)]
pub struct TestCluster {
    /// The cluster's folder: cluster file, topologies, certificates, node data and logs.
    pub dir: PathBuf,
    /// The binary the nodes run.
    pub bin: PathBuf,
    /// Node names, `n1`..`nN`.
    pub names: Vec<String>,
    /// Each node's ports.
    pub ports: BTreeMap<String, NodePorts>,
    /// The running nodes.
    pub procs: BTreeMap<String, Child>,
}

/// What cluster to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// The binary that runs a node (`<bin> node --cluster F --name N`) and makes the
    /// certificates (`<bin> certs init --cluster F`): `env!("CARGO_BIN_EXE_<name>")`.
    pub bin: PathBuf,
    /// The folder holding the systems' topology files, `<system>.toml`.
    pub topologies: PathBuf,
    /// Nodes, named `n1`..`nN`.
    pub nodes: usize,
    /// Systems to enable (each `topologies/<system>.toml` is copied into the cluster).
    pub systems: Vec<String>,
    /// SWIM probe period, in milliseconds (short, so tests see failures quickly).
    pub probe_period_ms: u64,
    /// SWIM probe round trip allowed, in milliseconds.
    pub probe_rtt_ms: u64,
    /// Suspect to down, in milliseconds.
    pub suspect_to_down_ms: u64,
    /// More cluster-file text, placed after the generated sections (e.g. `[overrides...]`).
    pub extra: String,
    /// `[nodes.labels]` per node: (node, key, value).
    pub labels: Vec<(String, String, String)>,
    /// `[[nodes.gpus]]` per node: (node, model, memory in GiB, count).
    pub gpus: Vec<(String, String, u64, u64)>,
}

impl Default for Options {
    /// Three nodes with fast failure detection; `bin`, `topologies` and `systems` are
    /// yours to set.
    fn default() -> Self {
        Options {
            bin: PathBuf::new(),
            topologies: PathBuf::from("systems"),
            nodes: 3,
            systems: Vec::new(),
            probe_period_ms: 300,
            probe_rtt_ms: 150,
            suspect_to_down_ms: 900,
            extra: String::new(),
            labels: Vec::new(),
            gpus: Vec::new(),
        }
    }
}

impl TestCluster {
    /// Writes the cluster file, its topologies and certificates; starts nothing (a test
    /// may start the nodes itself, e.g. through `troupe up`).
    pub fn prepare(opts: impl Into<Options>) -> TestCluster {
        let opts = opts.into();
        assert!(
            opts.bin.is_file(),
            "Options::bin must be the node binary (env!(\"CARGO_BIN_EXE_<name>\")), not {:?}",
            opts.bin
        );
        let dir = std::env::temp_dir().join(format!("troupe-it-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(dir.join("systems")).expect("mkdir");
        for s in &opts.systems {
            let from = opts.topologies.join(format!("{s}.toml"));
            std::fs::copy(&from, dir.join(format!("systems/{s}.toml")))
                .unwrap_or_else(|e| panic!("copying the topology {}: {e}", from.display()));
        }
        let names: Vec<String> = (1..=opts.nodes).map(|i| format!("n{i}")).collect();
        let mut ports = BTreeMap::new();
        let mut nodes_toml = String::new();
        for n in &names {
            let systems: BTreeMap<String, u16> = opts.systems.iter().map(|s| (s.to_string(), free_port())).collect();
            let p = NodePorts { quic: free_port(), gossip: free_port(), admin: free_port(), systems };
            let listeners: Vec<String> = p.systems.iter().map(|(s, port)| format!("\"{s}\" = {port}")).collect();
            let labels: Vec<String> = opts
                .labels
                .iter()
                .filter(|(node, _, _)| node == n)
                .map(|(_, k, v)| format!("\"{k}\" = \"{v}\""))
                .collect();
            let gpus: Vec<String> = opts
                .gpus
                .iter()
                .filter(|(node, ..)| node == n)
                .map(|(_, model, gib, count)| format!("{{ model = \"{model}\", memory_gib = {gib}, count = {count} }}"))
                .collect();
            // Every node is a gateway and may host GPU workers (a system with GPU
            // work falls back to its CPU path where there is no GPU).
            nodes_toml.push_str(&format!(
                "[[nodes]]\nname = \"{n}\"\naddr = \"127.0.0.1:{}\"\ngossip = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\nroles = [\"gateway\", \"gpu\"]\nports = {{ {} }}\nlabels = {{ {} }}\ngpus = [{}]\n\n",
                p.quic,
                p.gossip,
                p.admin,
                listeners.join(", "),
                labels.join(", "),
                gpus.join(", ")
            ));
            ports.insert(n.clone(), p);
        }
        let systems: Vec<String> = opts.systems.iter().map(|s| format!("\"{s}\"")).collect();
        let seeds: Vec<String> = names.iter().take(2).map(|n| format!("\"{n}\"")).collect();
        let toml = format!(
            "[cluster]\nname = \"it\"\nsystems = [{}]\nseeds = [{}]\n\n[membership]\nprobe_period_ms = {}\nprobe_rtt_ms = {}\nsuspect_to_down_ms = {}\njoin_retry_ms = 200\n\n[transport]\nask_timeout_ms = 3000\nconnect_timeout_ms = 500\nidle_timeout_ms = 3000\nkeep_alive_ms = 500\n\n{}\n{}",
            systems.join(", "),
            seeds.join(", "),
            opts.probe_period_ms,
            opts.probe_rtt_ms,
            opts.suspect_to_down_ms,
            opts.extra,
            nodes_toml
        );
        std::fs::write(dir.join("cluster.toml"), toml).expect("write cluster.toml");
        let out = Command::new(&opts.bin)
            .args(["certs", "init", "--cluster"])
            .arg(dir.join("cluster.toml"))
            .output()
            .expect("certs init");
        assert!(out.status.success(), "certs init failed: {}", String::from_utf8_lossy(&out.stderr));
        TestCluster { dir, bin: opts.bin, names, ports, procs: BTreeMap::new() }
    }

    /// Writes the cluster file and certificates, and starts every node.
    pub fn start(opts: impl Into<Options>) -> TestCluster {
        let mut c = TestCluster::prepare(opts);
        for n in c.names.clone() {
            c.spawn(&n);
        }
        c
    }

    /// The cluster file the nodes run with.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }

    /// Starts node `name` (again, after a kill); its log goes to `<dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(&self.bin)
            .args(["node", "--cluster"])
            .arg(self.cluster_file())
            .args(["--name", name])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn node");
        self.procs.insert(name.to_string(), child);
    }

    /// `Bearer <token>` for the cluster's service token (made by `troupe certs init`
    /// beside the cluster key): what kv writes, limiter checks and an authenticating
    /// proxy's `X-User-Id` need.
    pub fn service_auth(&self) -> String {
        self.bearer("service.token")
    }

    /// `Bearer <token>` for the cluster's admin token (chaos, rule changes).
    pub fn admin_auth(&self) -> String {
        self.bearer("admin.token")
    }

    /// The API key of one of the cluster's users (`alice`, `bob`, `carol` in the
    /// development `api-keys.toml` the cluster starts with).
    pub fn api_key(&self, user: &str) -> String {
        let p = self.dir.join(".troupe").join("api-keys.toml");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        // The file `troupe certs init` writes: `key = "…"` then `user = "…"` per [[key]].
        let value = |line: &str, name: &str| {
            let rest = line.trim().strip_prefix(name)?.trim_start().strip_prefix('=')?.trim();
            Some(rest.trim_matches('"').to_string())
        };
        let mut key = None;
        for line in text.lines() {
            if let Some(k) = value(line, "key") {
                key = Some(k);
            } else if value(line, "user").as_deref() == Some(user) {
                return key.unwrap_or_else(|| panic!("{}: user {user} has no key line", p.display()));
            }
        }
        panic!("{} has no key for user {user}", p.display())
    }

    fn bearer(&self, file: &str) -> String {
        let p = self.dir.join(".troupe").join(file);
        let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        format!("Bearer {}", t.trim())
    }

    /// Node `name`'s state directory (the cluster file's default `data_dir`).
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.join(".troupe/data").join(name)
    }

    /// Deletes node `name`'s state, as a replacement machine would come back; the
    /// node must be stopped.
    pub fn wipe(&mut self, name: &str) {
        assert!(!self.procs.contains_key(name), "wipe {name} only while it is stopped");
        let dir = self.data_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("wiping {}: {e}", dir.display()),
        }
    }

    /// Waits until no running node is rebuilding after a lost disk (the
    /// `troupe_replica_rebuilding` gauge is 0 everywhere).
    pub fn wait_rebuilt(&self, timeout: Duration) {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        let last = wait_for_or_last(
            timeout,
            || names.iter().map(|n| (n.clone(), self.metric(n, "troupe_replica_rebuilding"))).collect::<Vec<_>>(),
            |v| v.iter().all(|(_, x)| *x == 0.0),
        );
        assert!(
            last.iter().all(|(_, x)| *x == 0.0),
            "nodes still rebuilding after {timeout:?}: {last:?}; logs in {}",
            self.dir.display()
        );
    }

    /// SIGKILL, as `kill -9`.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.procs.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The admin API of node `name`.
    pub fn admin(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[name].admin))
    }

    /// The `ports.<system>` listener of node `name` (where `system`'s HTTP routes are).
    pub fn port(&self, name: &str, system: &str) -> SocketAddr {
        let p =
            self.ports[name].systems.get(system).unwrap_or_else(|| panic!("{system} is not enabled in this cluster"));
        SocketAddr::from(([127, 0, 0, 1], *p))
    }

    /// The nodes this cluster started and has not killed.
    pub fn alive(&self) -> Vec<String> {
        self.procs.keys().cloned().collect()
    }

    /// Members as `name` sees them: name → (state, epoch).
    pub fn members(&self, name: &str) -> Option<BTreeMap<String, (String, u64)>> {
        let (code, body) = http(self.admin(name), "GET", "/v1/members", None).ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(
            v.as_array()?
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_string(),
                        (m["state"].as_str().unwrap_or("").to_string(), m["epoch"].as_u64().unwrap_or(0)),
                    )
                })
                .collect(),
        )
    }

    /// Waits until every running node sees every running node alive (and, if
    /// `down` is given, those as down).
    pub fn wait_converged(&self, down: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.procs.keys().all(|n| {
                self.members(n).is_some_and(|m| {
                    self.procs.keys().all(|o| m.get(o).is_some_and(|(s, _)| s == "Alive"))
                        && down.iter().all(|d| m.get(*d).is_none_or(|(s, _)| s == "Down"))
                })
            });
            if ok {
                return;
            }
            if Instant::now() > deadline {
                let views: Vec<String> = self.procs.keys().map(|n| format!("{n}: {:?}", self.members(n))).collect();
                panic!(
                    "cluster did not converge (down={down:?}):\n{}\nlogs in {}",
                    views.join("\n"),
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sum of every series of `metric` on node `name` (`NaN` when it does not answer).
    pub fn metric(&self, name: &str, metric: &str) -> f64 {
        let Ok((_, body)) = http(self.admin(name), "GET", "/metrics", None) else { return f64::NAN };
        body.lines()
            .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn rand_suffix() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (t as u64) ^ ((std::process::id() as u64) << 32)
}

/// Polls `f` until it returns a value; panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `read` until `done` holds for its value or `timeout` passes; returns the last
/// value either way, so the caller asserts on it with its own message.
pub fn wait_for_or_last<T>(timeout: Duration, mut read: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let v = read();
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

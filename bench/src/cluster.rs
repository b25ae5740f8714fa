//! A local cluster of real `troupe node` processes for benchmarks: a temp folder
//! with a cluster file, certificates, and helpers to kill, pause and query nodes.

use anyhow::Context;
use std::collections::BTreeMap;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalCluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub admin: BTreeMap<String, SocketAddr>,
    pub ports: BTreeMap<String, BTreeMap<String, u16>>,
    pub procs: BTreeMap<String, Child>,
}

/// A port free for both TCP and UDP, never handed out twice by this process (the
/// OS may offer the same ephemeral port again once our probe socket is closed).
fn free_port() -> u16 {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = t.local_addr().expect("addr").port();
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        if !taken.contains(&p) && UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            taken.push(p);
            return p;
        }
    }
}

/// The troupe binary: `$TROUPE_BIN`, else target/release/troupe of this repo.
pub fn troupe_bin() -> PathBuf {
    std::env::var_os("TROUPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/troupe"))
}

impl LocalCluster {
    /// `Bearer <token>` for the cluster's service token (kv writes, limiter checks).
    pub fn service_auth(&self) -> anyhow::Result<String> {
        self.bearer("service.token")
    }

    /// `Bearer <token>` for the cluster's admin token (chaos, rule changes).
    pub fn admin_auth(&self) -> anyhow::Result<String> {
        self.bearer("admin.token")
    }

    fn bearer(&self, file: &str) -> anyhow::Result<String> {
        let p = self.dir.join(".troupe").join(file);
        let t = std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
        Ok(format!("Bearer {}", t.trim()))
    }

    /// `membership` and `extra` are TOML text appended to the cluster file;
    /// `systems` are copied from the repository's systems/ folder.
    pub fn start(
        nodes: usize,
        systems: &[&str],
        membership: &str,
        extra_ports: &[&str],
    ) -> anyhow::Result<LocalCluster> {
        let mut c = Self::prepare(nodes, systems, membership, extra_ports)?;
        for n in c.names() {
            c.spawn(&n)?;
        }
        Ok(c)
    }

    /// Writes the cluster file and certificates without starting any node.
    pub fn prepare(
        nodes: usize,
        systems: &[&str],
        membership: &str,
        extra_ports: &[&str],
    ) -> anyhow::Result<LocalCluster> {
        let bin = troupe_bin();
        anyhow::ensure!(
            bin.exists(),
            "{} not found: build it with `cargo build --release` or set TROUPE_BIN",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!("troupe-bench-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(dir.join("systems"))?;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for s in systems {
            std::fs::copy(repo.join(format!("systems/{s}.toml")), dir.join(format!("systems/{s}.toml")))?;
        }
        let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
        let mut text = format!(
            "[cluster]\nname = \"bench\"\nsystems = [{}]\nseeds = [{}]\n\n{membership}\n\n",
            systems.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "),
            names.iter().take(2).map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
        );
        let mut admin = BTreeMap::new();
        let mut ports = BTreeMap::new();
        for n in &names {
            let (q, g, a) = (free_port(), free_port(), free_port());
            let mut p = BTreeMap::new();
            for e in extra_ports {
                p.insert(e.to_string(), free_port());
            }
            let port_list: Vec<String> = p.iter().map(|(k, v)| format!("\"{k}\" = {v}")).collect();
            text.push_str(&format!(
                "[[nodes]]\nname = \"{n}\"\naddr = \"127.0.0.1:{q}\"\ngossip = \"127.0.0.1:{g}\"\nadmin = \"127.0.0.1:{a}\"\nroles = [\"gateway\", \"gpu\"]\nports = {{ {} }}\n\n",
                port_list.join(", ")
            ));
            admin.insert(n.clone(), SocketAddr::from(([127, 0, 0, 1], a)));
            ports.insert(n.clone(), p);
        }
        std::fs::write(dir.join("cluster.toml"), text)?;
        let out = Command::new(&bin).args(["certs", "init", "--cluster"]).arg(dir.join("cluster.toml")).output()?;
        anyhow::ensure!(out.status.success(), "certs init: {}", String::from_utf8_lossy(&out.stderr));
        Ok(LocalCluster { dir, bin, admin, ports, procs: BTreeMap::new() })
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }

    pub fn names(&self) -> Vec<String> {
        self.admin.keys().cloned().collect()
    }

    pub fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        self.spawn_with(name, &[])
    }

    /// Starts node `name` under a wrapper command (e.g. `taskset -c 1 nice -n 19`).
    pub fn spawn_with(&mut self, name: &str, wrapper: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.log")))?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .args(["node", "--cluster"])
            .arg(self.dir.join("cluster.toml"))
            .args(["--name", name])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        self.procs.insert(name.to_string(), child);
        Ok(())
    }

    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.procs.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name).map(|c| c.id())
    }

    /// name → state as `observer` sees the cluster.
    pub fn states(&self, observer: &str) -> Option<BTreeMap<String, String>> {
        let (code, body) = http(self.admin[observer], "GET", "/v1/members", None).ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(
            v.as_array()?
                .iter()
                .map(|m| (m["name"].as_str().unwrap_or("").to_string(), m["state"].as_str().unwrap_or("").to_string()))
                .collect(),
        )
    }

    pub fn wait_all_alive(&self, timeout: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let ok = self.procs.keys().all(|o| {
                self.states(o).is_some_and(|s| self.procs.keys().all(|n| s.get(n).is_some_and(|x| x == "Alive")))
            });
            if ok {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < end, "cluster did not converge; logs in {}", self.dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metric(&self, node: &str, name: &str) -> f64 {
        let Ok((_, body)) = http(self.admin[node], "GET", "/metrics", None) else { return f64::NAN };
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A JSON request on a fresh connection: (status, body).
pub use troupe_common::http::{http, http_auth};

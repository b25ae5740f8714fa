//! Three `troupe node` processes on three "hosts": network namespaces joined by veth
//! pairs on a bridge, as machines on a LAN are, each node with its own address and the
//! same ports as the others, and its own folder holding only what `troupe certs bundle`
//! gives that host (no CA key, no other node's key). The addresses are 127.77.0.1-3,
//! carried between the namespaces with `route_localnet`, so no address outside
//! 127.0.0.0/8 is ever used. The nodes converge, a write through one host is read
//! through another, and after one host's node is killed the others see it down and
//! still serve the value. Needs root (CI runs as root) and iproute2 (`.ci/run`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::request;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const HOSTS: usize = 3;

/// Runs `ip` with `args`; panics with its error output on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip (iproute2, installed by .ci/run)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The hosts' namespaces, a hub namespace with the bridge, and the node processes;
/// dropped, it kills the nodes and deletes the namespaces (and so the links).
struct Lan {
    prefix: String,
    nodes: Vec<Option<Child>>,
}

impl Lan {
    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    fn new() -> Lan {
        let prefix = format!("trmh{}", std::process::id());
        let lan = Lan { prefix: prefix.clone(), nodes: Vec::new() };
        let hub = format!("{prefix}-hub");
        ip(&["netns", "add", &hub]);
        for i in 1..=HOSTS {
            ip(&["netns", "add", &lan.ns(i)]);
        }
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 1..=HOSTS {
            let ns = lan.ns(i);
            let (host_end, hub_end) = (format!("{prefix}v{i}"), format!("{prefix}h{i}"));
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &hub_end]);
            ip(&["link", "set", &host_end, "netns", &ns]);
            ip(&["link", "set", &hub_end, "netns", &hub]);
            ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &hub_end, "up"]);
            ip(&["-n", &ns, "link", "set", &host_end, "name", "eth0"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // 127/8 is local by default; keep 127.0.0.1 on lo and route the hosts'
            // 127.77.0.0/24 over eth0 like any LAN.
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "sysctl", "-qw"])
                .args(["net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf.eth0.route_localnet=1"])
                .output()
                .unwrap();
            assert!(out.status.success(), "sysctl in {ns}: {}", String::from_utf8_lossy(&out.stderr));
            ip(&["-n", &ns, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"]);
            ip(&["-n", &ns, "route", "replace", "local", "127.0.0.1", "dev", "lo", "table", "local"]);
            ip(&["-n", &ns, "addr", "add", &format!("127.77.0.{i}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        lan
    }

    /// Starts node `n<i>` in host `i`'s namespace from that host's folder.
    fn start(&mut self, i: usize, host: &Path) {
        let log = std::fs::File::create(host.join("node.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), common::BIN, "node", "--cluster"])
            .arg(host.join("cluster.toml"))
            .args(["--name", &format!("n{i}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        while self.nodes.len() < i {
            self.nodes.push(None);
        }
        self.nodes[i - 1] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `f` on a thread inside host `i`'s network namespace (its sockets are that
    /// host's).
    fn on<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let ns = self.ns(i);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
                // SAFETY: setns on this thread only, with a valid namespace descriptor.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 1..=self.nodes.len() {
            self.kill(i);
        }
        for ns in (1..=HOSTS).map(|i| self.ns(i)).chain(std::iter::once(format!("{}-hub", self.prefix))) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        // A pair made but not yet moved when a step failed is still here.
        for i in 1..=HOSTS {
            let _ = Command::new("ip").args(["link", "del", &format!("{}v{i}", self.prefix)]).output();
        }
    }
}

fn addr(i: usize, port: u16) -> SocketAddr {
    format!("127.77.0.{i}:{port}").parse().unwrap()
}

const QUIC: u16 = 7100;
const GOSSIP: u16 = 7101;
const ADMIN: u16 = 7102;
const KV: u16 = 7103;

/// The cluster file of the three hosts: every node on its own address, same ports.
fn cluster_file(dir: &Path) -> PathBuf {
    let mut nodes = String::new();
    for i in 1..=HOSTS {
        nodes.push_str(&format!(
            "[[nodes]]\nname = \"n{i}\"\naddr = \"{}\"\ngossip = \"{}\"\nadmin = \"{}\"\nroles = [\"gateway\"]\nports = {{ kv = {KV} }}\n\n",
            addr(i, QUIC),
            addr(i, GOSSIP),
            addr(i, ADMIN)
        ));
    }
    let toml = format!(
        "[cluster]\nname = \"lan\"\nsystems = [\"kv\"]\nseeds = [\"n1\", \"n2\"]\n\n[membership]\nprobe_period_ms = 300\nprobe_rtt_ms = 150\nsuspect_to_down_ms = 900\njoin_retry_ms = 200\n\n[transport]\nask_timeout_ms = 3000\nconnect_timeout_ms = 500\nidle_timeout_ms = 3000\nkeep_alive_ms = 500\n\n{nodes}"
    );
    std::fs::create_dir_all(dir.join("systems")).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("systems/kv.toml"), dir.join("systems/kv.toml")).unwrap();
    let f = dir.join("cluster.toml");
    std::fs::write(&f, toml).unwrap();
    f
}

fn troupe(args: &[&str], cluster: &Path) -> std::process::Output {
    Command::new(common::BIN).args(args).arg("--cluster").arg(cluster).output().unwrap()
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Members as host `i`'s node sees them: name → state.
fn members(lan: &Lan, i: usize) -> Option<Vec<(String, String)>> {
    lan.on(i, || {
        let r = request(addr(i, ADMIN), "GET", "/v1/members", &[], b"").ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let mut m: Vec<(String, String)> = v
            .as_array()?
            .iter()
            .map(|m| (m["name"].as_str().unwrap_or("").into(), m["state"].as_str().unwrap_or("").into()))
            .collect();
        m.sort();
        Some(m)
    })
}

/// The value of key `lan` read through host `i`'s kv port.
fn read(lan: &Lan, i: usize) -> Option<String> {
    lan.on(i, || request(addr(i, KV), "GET", "/kv/lan", &[], b"").ok().filter(|r| r.status == 200).map(|r| r.body))
}

fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_nodes_in_three_network_namespaces_form_a_cluster_from_their_bundles() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "network namespaces need root (CI runs the suite as root)");
    let dir = std::env::temp_dir().join(format!("troupe-lan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = cluster_file(&dir.join("operator"));
    let init = troupe(&["certs", "init"], &cluster);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let hosts: Vec<PathBuf> = (1..=HOSTS).map(|i| dir.join(format!("host{i}"))).collect();
    for (i, host) in hosts.iter().enumerate() {
        let n = format!("n{}", i + 1);
        let out = troupe(&["certs", "bundle", &n, "--out", host.to_str().unwrap()], &cluster);
        assert!(out.status.success(), "bundle for {n}: {}", String::from_utf8_lossy(&out.stderr));
        let have = files(host);
        let want = [
            "cluster.toml".to_string(),
            "systems/kv.toml".into(),
            ".troupe/tls/ca.pem".into(),
            format!(".troupe/tls/{n}.pem"),
            format!(".troupe/tls/{n}.key"),
            ".troupe/cluster.key".into(),
            ".troupe/admin.token".into(),
            ".troupe/service.token".into(),
            ".troupe/api-keys.toml".into(),
        ];
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(have, want, "what {n}'s host gets");
    }
    // A bundle is not written over another, nor for a node the file does not have.
    let again = troupe(&["certs", "bundle", "n1", "--out", hosts[0].to_str().unwrap()], &cluster);
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"), "{again:?}");
    let nobody = troupe(&["certs", "bundle", "n9", "--out", dir.join("n9").to_str().unwrap()], &cluster);
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("node `n9` is not in"), "{nobody:?}");

    let mut lan = Lan::new();
    for (i, host) in hosts.iter().enumerate() {
        lan.start(i + 1, host);
    }
    let alive: Vec<(String, String)> = (1..=HOSTS).map(|i| (format!("n{i}"), "Alive".to_string())).collect();
    for i in [1, 3] {
        wait(&format!("n{i} sees every node alive"), || (members(&lan, i)? == alive).then_some(()));
    }
    // A write through host 1 is read through host 3.
    let token = std::fs::read_to_string(hosts[0].join(".troupe/service.token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let put = wait("a write through n1", || {
        lan.on(1, || {
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            request(addr(1, KV), "PUT", "/kv/lan", &headers, br#"{"value":"across"}"#).ok().filter(|r| r.status != 503)
        })
    });
    assert_eq!(put.status, 200, "the write through n1: {}", put.body);
    let got = wait("the value read through n3", || read(&lan, 3));
    assert!(got.contains("across"), "{got}");
    // Host 1's node dies: the others see it down and still serve the value.
    lan.kill(1);
    wait("n2 sees n1 down", || {
        let m = members(&lan, 2)?;
        m.iter().any(|(n, s)| n == "n1" && s == "Down").then_some(())
    });
    let got = wait("the value read through n2 after n1 died", || read(&lan, 2));
    assert!(got.contains("across"), "{got}");
    drop(lan);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bundle_never_holds_the_ca_key_or_another_nodes_key_even_through_a_link() {
    let dir = std::env::temp_dir().join(format!("troupe-bundle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = cluster_file(&dir.join("operator"));
    assert!(troupe(&["certs", "init"], &cluster).status.success());
    let tls = dir.join("operator/.troupe/tls");
    // n2's key replaced by a link to the CA's key: its bundle is refused, saying why.
    let n2_key = std::fs::read(tls.join("n2.key")).unwrap();
    std::fs::remove_file(tls.join("n2.key")).unwrap();
    std::os::unix::fs::symlink(tls.join("ca.key"), tls.join("n2.key")).unwrap();
    let out = troupe(&["certs", "bundle", "n2", "--out", dir.join("h2").to_str().unwrap()], &cluster);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("which no node's bundle may hold"), "{err}");
    assert!(!dir.join("h2").exists(), "a refused bundle left files behind");
    std::fs::remove_file(tls.join("n2.key")).unwrap();
    std::fs::write(tls.join("n2.key"), n2_key).unwrap();
    // Without the CA key here (kept offline), bundling still works and makes no new CA.
    let ca = std::fs::read(tls.join("ca.pem")).unwrap();
    std::fs::rename(tls.join("ca.key"), dir.join("offline-ca.key")).unwrap();
    let out = troupe(&["certs", "bundle", "n1", "--out", dir.join("h1").to_str().unwrap()], &cluster);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), ca, "a new CA replaced the cluster's");
    assert!(!tls.join("ca.key").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

//! Multi-process cluster tests: real `troupe node` processes on 127.0.0.1 that form
//! a cluster, get killed with SIGKILL, restart, get partitioned and heal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Options, TestCluster, http, wait_for};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[test]
fn kill_detect_and_rejoin_with_new_incarnation() {
    let mut c = TestCluster::start(Options::default());
    c.wait_converged(&[], Duration::from_secs(20));
    let old_epoch = c.members("n1").unwrap()["n3"].1;
    let killed = Instant::now();
    c.kill("n3");
    c.wait_converged(&["n3"], Duration::from_secs(15));
    eprintln!("n3 declared down after {:?}", killed.elapsed());
    c.spawn("n3");
    c.wait_converged(&[], Duration::from_secs(20));
    let new_epoch = c.members("n1").unwrap()["n3"].1;
    assert!(new_epoch > old_epoch, "a restarted node must rejoin as a new incarnation ({old_epoch} → {new_epoch})");
}

/// In production the CA key stays on the machine that issues certificates: a node needs
/// only `ca.pem`, its own certificate and key, and the cluster key.
#[test]
fn nodes_run_and_replicate_without_the_ca_key() {
    let mut c = TestCluster::prepare(Options::default());
    let ca_key = c.dir.join(".troupe/tls/ca.key");
    assert!(ca_key.is_file(), "certs init made {}", ca_key.display());
    std::fs::remove_file(&ca_key).unwrap();
    for n in c.names.clone() {
        c.spawn(&n);
    }
    c.wait_converged(&[], Duration::from_secs(20));
    wait_for("a replicated write", Duration::from_secs(20), || put(&c, "n1", "no-ca", "v").then_some(()));
    assert_eq!(get(&c, "n3", "no-ca").as_deref(), Some("v"));
    assert!(!ca_key.exists(), "nothing recreated the CA key");
}

fn put(c: &TestCluster, node: &str, key: &str, value: &str) -> bool {
    matches!(
        http(c.port(node, "kv"), "PUT", &format!("/kv/{key}"), Some(&format!("{{\"value\":\"{value}\"}}"))),
        Ok((200, _))
    )
}

fn get(c: &TestCluster, node: &str, key: &str) -> Option<String> {
    let (code, body) = http(c.port(node, "kv"), "GET", &format!("/kv/{key}"), None).ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["Value"]["value"].as_str().unwrap_or("<none>").to_string())
}

#[test]
fn entities_rehome_with_their_state() {
    let mut c = TestCluster::start(Options::default());
    c.wait_converged(&[], Duration::from_secs(20));
    for i in 0..30 {
        assert!(put(&c, "n1", &format!("k{i}"), &format!("v{i}")), "put k{i}");
    }
    c.kill("n1");
    c.wait_converged(&["n1"], Duration::from_secs(15));
    for i in 0..30 {
        let v = wait_for(&format!("k{i} on n2"), Duration::from_secs(15), || get(&c, "n2", &format!("k{i}")));
        assert_eq!(v, format!("v{i}"), "k{i} lost its value when its owner died");
    }
    c.spawn("n1");
    c.wait_converged(&[], Duration::from_secs(20));
    // Keys move back to n1 (rendezvous), which must pick up writes it missed.
    assert!(put(&c, "n3", "k0", "after"));
    for i in 1..30 {
        let v = wait_for(&format!("k{i} on n1"), Duration::from_secs(15), || get(&c, "n1", &format!("k{i}")));
        assert_eq!(v, format!("v{i}"));
    }
    assert_eq!(get(&c, "n1", "k0").as_deref(), Some("after"));
}

fn allocate(c: &TestCluster, node: &str) -> Option<(u64, u64, String)> {
    let (code, body) = http(c.port(node, "kv"), "POST", "/ranges/ids", Some("{\"size\":100}")).ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let r = &v["Range"];
    Some((r["start"].as_u64()?, r["end"].as_u64()?, r["node"].as_str()?.to_string()))
}

#[test]
fn singleton_moves_and_keeps_its_state() {
    let mut c = TestCluster::start(Options::default());
    c.wait_converged(&[], Duration::from_secs(20));
    let (s1, e1, home) = wait_for("first range", Duration::from_secs(10), || allocate(&c, "n1"));
    assert_eq!(e1 - s1, 100);
    c.kill(&home);
    c.wait_converged(&[&home], Duration::from_secs(15));
    let other = c.alive().into_iter().next().unwrap();
    let (s2, _e2, new_home) = wait_for("range after failover", Duration::from_secs(15), || allocate(&c, &other));
    assert_ne!(new_home, home, "the singleton must move off the dead node");
    assert!(s2 >= e1, "a range was handed out twice: {s1}..{e1} then {s2}");
    // Only one instance runs: every node's gateway reaches the same one.
    for n in c.alive() {
        let (_, _, h) = wait_for("range", Duration::from_secs(10), || allocate(&c, &n));
        assert_eq!(h, new_home);
    }
}

#[test]
fn partition_heals_and_the_cluster_converges() {
    let c = TestCluster::start(Options::default());
    c.wait_converged(&[], Duration::from_secs(20));
    let token = std::fs::read_to_string(c.dir.join(".troupe/admin.token")).expect("certs init made the admin token");
    let bearer = format!("Bearer {}", token.trim());
    let headers = [("Content-Type", "application/json"), ("Authorization", bearer.as_str())];
    let cmd = |node: &str, body: &str| {
        common::request(c.admin(node), "POST", "/v1/chaos", &headers, body.as_bytes()).map(|r| r.status)
    };
    // Without the token, or with another, the admin API refuses and says why.
    let heal = br#""Heal""#;
    let json = [("Content-Type", "application/json")];
    let r = common::request(c.admin("n1"), "POST", "/v1/chaos", &json, heal).unwrap();
    assert!(r.status == 401 && r.body.contains("admin token is required"), "{} {}", r.status, r.body);
    let wrong = [("Content-Type", "application/json"), ("Authorization", "Bearer 0000")];
    let r = common::request(c.admin("n1"), "POST", "/v1/chaos", &wrong, heal).unwrap();
    assert!(r.status == 401 && r.body.contains("does not match"), "{} {}", r.status, r.body);
    assert_eq!(cmd("n1", r#"{"Partition":{"nodes":["n2","n3"],"for_ms":null}}"#).unwrap(), 200);
    assert_eq!(cmd("n2", r#"{"Partition":{"nodes":["n1"],"for_ms":null}}"#).unwrap(), 200);
    assert_eq!(cmd("n3", r#"{"Partition":{"nodes":["n1"],"for_ms":null}}"#).unwrap(), 200);
    wait_for("both sides to see the other down", Duration::from_secs(20), || {
        let m1 = c.members("n1")?;
        let m2 = c.members("n2")?;
        (m1["n2"].0 == "Down" && m2["n1"].0 == "Down").then_some(())
    });
    for n in ["n1", "n2", "n3"] {
        assert_eq!(cmd(n, r#""Heal""#).unwrap(), 200);
    }
    c.wait_converged(&[], Duration::from_secs(30));
}

#[test]
fn chaos_random_kills_lose_no_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, RwLock};
    let mut c = TestCluster::start(Options::default());
    c.wait_converged(&[], Duration::from_secs(20));
    let kills: usize = std::env::var("TROUPE_CHAOS_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    // Writers put unique keys through whichever gateways are up, while the main
    // thread kills a random node, restarts it, and waits for the cluster to heal.
    let kv: BTreeMap<String, std::net::SocketAddr> = c.names.iter().map(|n| (n.clone(), c.port(n, "kv"))).collect();
    let up: Arc<RwLock<Vec<String>>> = Arc::new(RwLock::new(c.alive()));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let attempts = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (kv, up, acked, attempts, stop) =
                (kv.clone(), up.clone(), acked.clone(), attempts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let nodes = up.read().unwrap().clone();
                    let node = &nodes[(i as usize + w as usize) % nodes.len()];
                    let key = format!("w{w}-{i}");
                    let value = format!("{}", i.wrapping_mul(0x9e37_79b9) ^ w);
                    i += 1;
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let body = format!("{{\"value\":\"{value}\"}}");
                    if matches!(http(kv[node], "PUT", &format!("/kv/{key}"), Some(&body)), Ok((200, _))) {
                        acked.lock().unwrap().insert(key, value);
                    }
                }
            })
        })
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..kills {
        std::thread::sleep(Duration::from_millis(300));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let alive = c.alive();
        let victim = alive[(seed as usize) % alive.len()].clone();
        up.write().unwrap().retain(|n| n != &victim);
        c.kill(&victim);
        std::thread::sleep(Duration::from_millis(1200));
        c.spawn(&victim);
        c.wait_converged(&[], Duration::from_secs(30));
        up.write().unwrap().push(victim.clone());
        eprintln!("round {round}: killed {victim}; {} writes acknowledged so far", acked.lock().unwrap().len());
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let attempts = attempts.load(Ordering::Relaxed);
    assert!(acked.len() as f64 > attempts as f64 * 0.3, "too few writes succeeded: {} of {attempts}", acked.len());
    let mut lost = Vec::new();
    for (k, v) in &acked {
        let alive = c.alive();
        let got = wait_for(&format!("read {k}"), Duration::from_secs(20), || get(&c, &alive[0], k));
        if &got != v {
            lost.push(format!("{k}: wanted {v}, got {got}"));
        }
    }
    assert!(lost.is_empty(), "{} acknowledged writes lost:\n{}", lost.len(), lost.join("\n"));
    eprintln!("{} of {attempts} writes acknowledged; all {} read back after {kills} kills", acked.len(), acked.len());
}

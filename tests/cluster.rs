//! Multi-process cluster tests: real `troupe node` processes on 127.0.0.1 that form
//! a cluster, get killed with SIGKILL, restart, get partitioned and heal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Options, TestCluster, http, http_auth, wait_for};
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
        http_auth(
            c.port(node, "kv"),
            "PUT",
            &format!("/kv/{key}"),
            &c.service_auth(),
            Some(&format!("{{\"value\":\"{value}\"}}"))
        ),
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

/// The `paths=` of the last "rebuilt" line in node `name`'s log, if it has one.
fn rebuilt_paths(c: &TestCluster, name: &str) -> Option<usize> {
    let log = std::fs::read_to_string(c.dir.join(format!("{name}.log"))).ok()?;
    let line = log.lines().rev().find(|l| l.contains("rebuilt:"))?;
    line.split_whitespace().find_map(|w| w.strip_prefix("paths=")).and_then(|n| n.parse().ok())
}

/// Every node of a 3-node cluster loses its disk in turn (each waits for the one before
/// to rebuild, as an operator replacing machines would): nothing is lost, though after
/// the second loss the only copies of the first writes are on rebuilt replicas. While
/// a node rebuilds it counts for nothing, and the other two keep serving writes.
#[test]
fn lost_disks_are_rebuilt_before_they_vote_and_lose_nothing() {
    let mut c = TestCluster::start(Options::default());
    c.wait_converged(&[], Duration::from_secs(20));
    c.wait_rebuilt(Duration::from_secs(20));
    let keys: Vec<String> = (0..24).map(|i| format!("disk-{i}")).collect();
    for k in &keys {
        wait_for(&format!("put {k}"), Duration::from_secs(20), || put(&c, "n1", k, "first").then_some(()));
    }
    // Overwrite half of them, so a rebuilt copy must hold the newer entry too.
    for k in keys.iter().step_by(2) {
        wait_for(&format!("overwrite {k}"), Duration::from_secs(20), || put(&c, "n1", k, "second").then_some(()));
    }
    let want = |i: usize| if i.is_multiple_of(2) { "second" } else { "first" };
    for (round, victim) in ["n2", "n3", "n1"].into_iter().enumerate() {
        c.kill(victim);
        c.wipe(victim);
        c.spawn(victim);
        // While the victim rebuilds, the two others are a majority of every key.
        let other = if victim == "n1" { "n2" } else { "n1" };
        let during = format!("during-{round}");
        wait_for(&format!("a write while {victim} rebuilds"), Duration::from_secs(20), || {
            put(&c, other, &during, "x").then_some(())
        });
        c.wait_converged(&[], Duration::from_secs(30));
        c.wait_rebuilt(Duration::from_secs(60));
        let relearned = rebuilt_paths(&c, victim).expect("the victim logged the end of its rebuild");
        assert!(relearned >= keys.len(), "{victim} relearned {relearned} paths, fewer than the {} keys", keys.len());
    }
    // A node that lost its disk while another is down waits for it (that node may hold
    // the only other copy of what it had): meanwhile it counts for nothing, and a
    // write that needs it is refused, saying why.
    c.kill("n3");
    c.kill("n2");
    c.wipe("n2");
    c.spawn("n2");
    c.wait_converged(&["n3"], Duration::from_secs(30));
    let refused = wait_for("a write refused while n2 rebuilds and n3 is down", Duration::from_secs(30), || {
        let body = "{\"value\":\"lost\"}";
        match http_auth(c.port("n1", "kv"), "PUT", &format!("/kv/{}", keys[1]), &c.service_auth(), Some(body)) {
            Ok((code, body)) if code != 200 && body.contains("rebuilding after losing its disk") => Some(body),
            _ => None,
        }
    });
    eprintln!("refused while n2 rebuilds: {refused}");
    assert_eq!(c.metric("n2", "troupe_replica_rebuilding"), 1.0, "n2 waits for n3's inventory");
    c.spawn("n3");
    c.wait_converged(&[], Duration::from_secs(30));
    c.wait_rebuilt(Duration::from_secs(60));
    for node in ["n1", "n2", "n3"] {
        for (i, k) in keys.iter().enumerate() {
            let got = wait_for(&format!("read {k} on {node}"), Duration::from_secs(20), || get(&c, node, k));
            assert_eq!(got, want(i), "{k} read through {node} after every disk was lost once");
        }
        for round in 0..3 {
            let k = format!("during-{round}");
            assert_eq!(get(&c, node, &k).as_deref(), Some("x"), "{k}, written while a node rebuilt");
        }
    }
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
    let (code, body) =
        http_auth(c.port(node, "kv"), "POST", "/ranges/ids", &c.service_auth(), Some("{\"size\":100}")).ok()?;
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
    c.wait_rebuilt(Duration::from_secs(20));
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let kills = env("TROUPE_CHAOS_KILLS", 20);
    // Every this many kills, the victim comes back with its disk wiped, as a
    // replacement machine would (0: never).
    let wipe_every = env("TROUPE_CHAOS_WIPE_EVERY", 4);
    // Writers overwrite their own keys (KEYS each) through whichever gateways are up,
    // while the main thread kills a random node, restarts it, and waits for the
    // cluster to heal (and, after a wipe, for the node to rebuild).
    const KEYS: u64 = 32;
    let kv: BTreeMap<String, std::net::SocketAddr> = c.names.iter().map(|n| (n.clone(), c.port(n, "kv"))).collect();
    let up: Arc<RwLock<Vec<String>>> = Arc::new(RwLock::new(c.alive()));
    // Per key, every value written to it in order, and whether it was acknowledged
    // (a write that failed may still have taken effect).
    type History = BTreeMap<String, Vec<(String, bool)>>;
    let history: Arc<Mutex<History>> = Arc::new(Mutex::new(BTreeMap::new()));
    let (attempts, acks) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (kv, up, history, attempts, acks, stop) =
                (kv.clone(), up.clone(), history.clone(), attempts.clone(), acks.clone(), stop.clone());
            let auth = c.service_auth();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let nodes = up.read().unwrap().clone();
                    let node = &nodes[(i as usize + w as usize) % nodes.len()];
                    let key = format!("w{w}-{}", i % KEYS);
                    let value = format!("{w}-{i}");
                    i += 1;
                    attempts.fetch_add(1, Ordering::Relaxed);
                    history.lock().unwrap().entry(key.clone()).or_default().push((value.clone(), false));
                    let body = format!("{{\"value\":\"{value}\"}}");
                    let put = http_auth(kv[node], "PUT", &format!("/kv/{key}"), &auth, Some(&body));
                    if matches!(put, Ok((200, _))) {
                        acks.fetch_add(1, Ordering::Relaxed);
                        if let Some(last) = history.lock().unwrap().get_mut(&key).and_then(|h| h.last_mut()) {
                            last.1 = true;
                        }
                    }
                }
            })
        })
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut wipes = 0;
    for round in 0..kills {
        std::thread::sleep(Duration::from_millis(300));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let alive = c.alive();
        let victim = alive[(seed as usize) % alive.len()].clone();
        let wipe = wipe_every > 0 && round % wipe_every == wipe_every - 1;
        up.write().unwrap().retain(|n| n != &victim);
        c.kill(&victim);
        if wipe {
            c.wipe(&victim);
            wipes += 1;
        }
        std::thread::sleep(Duration::from_millis(1200));
        c.spawn(&victim);
        c.wait_converged(&[], Duration::from_secs(30));
        if wipe {
            c.wait_rebuilt(Duration::from_secs(60));
        }
        up.write().unwrap().push(victim.clone());
        let how = if wipe { "killed and wiped" } else { "killed" };
        eprintln!("round {round}: {how} {victim}; {} writes acknowledged so far", acks.load(Ordering::Relaxed));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let history = history.lock().unwrap().clone();
    let (attempts, acks) = (attempts.load(Ordering::Relaxed), acks.load(Ordering::Relaxed));
    assert!(acks as f64 > attempts as f64 * 0.3, "too few writes succeeded: {acks} of {attempts}");
    // Each key must read back its last acknowledged value or one written after it.
    let mut lost = Vec::new();
    let alive = c.alive();
    for (k, h) in &history {
        let Some(last_ack) = h.iter().rposition(|(_, acked)| *acked) else { continue };
        let got = wait_for(&format!("read {k}"), Duration::from_secs(20), || get(&c, &alive[0], k));
        if h.iter().position(|(v, _)| *v == got).is_none_or(|at| at < last_ack) {
            lost.push(format!("{k}: wanted {} or a later write, got {got}", h[last_ack].0));
        }
    }
    assert!(lost.is_empty(), "{} keys lost an acknowledged write:\n{}", lost.len(), lost.join("\n"));
    eprintln!(
        "{acks} of {attempts} writes acknowledged over {} keys; every key read back its last acknowledged value or a later one after {kills} kills ({wipes} with the disk wiped)",
        history.len()
    );
}

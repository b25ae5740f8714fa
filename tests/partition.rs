//! Partition safety on real processes (docs/replication.md): the cluster is split with
//! `troupe chaos partition`, writers on both sides overwrite a few registers — kv keys,
//! or the targets of URL-shortener links — and read them back, the partition heals,
//! and then
//! - the minority side refused (503, with the reason and Retry-After) within the time
//!   the failure detector takes, and acknowledged nothing after that;
//! - every key's whole history — every read and write with its invocation and response
//!   time, and reads through every node after the heal — is linearizable
//!   (tests/common/linearizable.rs), so every acknowledged write reads back with its
//!   value or a later one on every node.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::linearizable::{self, Kind, Op};
use common::{BIN, Options, TestCluster, request};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys the writers overwrite (few, so both sides hit the same ones).
const KEYS: usize = 4;

/// Every operation of the run, by key, timed in microseconds from the start.
struct History {
    start: Instant,
    ops: Mutex<BTreeMap<String, Vec<Op>>>,
    /// PUTs the minority answered 200 to after it had begun refusing.
    minority_acks_after_refusal: AtomicU64,
    /// PUTs acknowledged by the majority while the partition lasted.
    majority_acks_during: AtomicU64,
}

impl History {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn record(&self, key: &str, op: Op) {
        self.ops.lock().unwrap().entry(key.to_string()).or_default().push(op);
    }
}

enum Put {
    Acked,
    /// Refused by a node on the minority side: the resolver's 503.
    Minority {
        retry_after: bool,
        body: String,
    },
    /// Anything else: it may or may not have taken effect.
    Unknown,
}

/// What the writers overwrite: kv keys, or the targets of shortener links.
#[derive(Clone, Copy, PartialEq)]
enum Register {
    Kv,
    Link,
}

/// The shortener's settings for this test (the owner of the links is `ann`).
const SHORTENER: &str = "[overrides.url-shortener.gateway]\ncreate_per_ip = { limit = 100000, window_ms = 1000 }\ncreate_per_user = { limit = 100000, window_ms = 1000 }\n";
const OWNER: (&str, &str) = ("X-User-Id", "ann");

impl Register {
    fn system(self) -> &'static str {
        match self {
            Register::Kv => "kv",
            Register::Link => "url-shortener",
        }
    }

    /// Creates the register if it must exist before it is overwritten.
    fn create(self, addr: SocketAddr, key: &str, auth: &str) -> bool {
        match self {
            Register::Kv => true,
            Register::Link => {
                let body = format!("{{\"url\":\"https://example.com/start\",\"alias\":\"{key}\"}}");
                let hdrs = [("Content-Type", "application/json"), OWNER, ("Authorization", auth)];
                request(addr, "POST", "/api/links", &hdrs, body.as_bytes()).is_ok_and(|r| r.status == 201)
            }
        }
    }

    /// `auth`: the cluster's service token, as kv writes and the proxy that vouches for
    /// the link's owner present it.
    fn put(self, addr: SocketAddr, key: &str, value: &str, auth: &str) -> Put {
        let r = match self {
            Register::Kv => {
                let body = format!("{{\"value\":\"{value}\"}}");
                let hdrs = [("Content-Type", "application/json"), ("Authorization", auth)];
                request(addr, "PUT", &format!("/kv/{key}"), &hdrs, body.as_bytes())
            }
            Register::Link => {
                let body = format!("{{\"url\":\"https://example.com/{value}\"}}");
                let hdrs = [("Content-Type", "application/json"), OWNER, ("Authorization", auth)];
                request(addr, "PATCH", &format!("/api/links/{key}"), &hdrs, body.as_bytes())
            }
        };
        match r {
            Ok(r) if r.status == 200 => Put::Acked,
            Ok(r) if r.status == 503 && r.body.contains("minority side of a partition") => {
                Put::Minority { retry_after: r.header("retry-after").is_some(), body: r.body }
            }
            _ => Put::Unknown,
        }
    }

    /// A read's value (`Some(None)`: absent, or the link as created), or `None` when
    /// the read failed.
    fn get(self, addr: SocketAddr, key: &str) -> Option<Option<String>> {
        match self {
            Register::Kv => {
                let r = request(addr, "GET", &format!("/kv/{key}"), &[], b"").ok()?;
                (r.status == 200).then(|| r.json()["Value"]["value"].as_str().map(str::to_string))
            }
            Register::Link => {
                let r = request(addr, "GET", &format!("/api/links/{key}"), &[], b"").ok()?;
                if r.status != 200 {
                    return None;
                }
                let url = r.json()["url"].as_str()?.to_string();
                let v = url.strip_prefix("https://example.com/")?;
                Some((v != "start").then(|| v.to_string()))
            }
        }
    }
}

fn chaos(c: &TestCluster, args: &[&str]) {
    let out = Command::new(BIN).arg("chaos").args(args).arg("--cluster").arg(c.cluster_file()).output().unwrap();
    assert!(out.status.success(), "troupe chaos {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// One writer: PUTs of fresh values and GETs, alternating, through `node`'s gateway.
#[allow(clippy::too_many_arguments)] // one writer's whole setting, spelled out
fn writer(
    reg: Register,
    auth: String,
    h: Arc<History>,
    addr: SocketAddr,
    name: String,
    minority: bool,
    refusing: Arc<AtomicBool>,
    partitioned: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("reg{}", i % KEYS);
        if i % 3 == 2 {
            let call = h.now();
            if let Some(v) = reg.get(addr, &key) {
                h.record(&key, Op { call, ret: Some(h.now()), kind: Kind::Read(v) });
            }
        } else {
            let value = format!("{name}-{i}");
            let call = h.now();
            let was_refusing = refusing.load(Ordering::SeqCst);
            let outcome = reg.put(addr, &key, &value, &auth);
            let ret = match outcome {
                Put::Acked => {
                    if minority && was_refusing && partitioned.load(Ordering::SeqCst) {
                        h.minority_acks_after_refusal.fetch_add(1, Ordering::Relaxed);
                    }
                    if !minority && partitioned.load(Ordering::SeqCst) {
                        h.majority_acks_during.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(h.now())
                }
                // Refused before anything was written; still recorded as unknown, which
                // only widens what the checker allows.
                Put::Minority { .. } | Put::Unknown => None,
            };
            h.record(&key, Op { call, ret, kind: Kind::Write(value) });
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(15));
    }
}

fn partition_run(reg: Register, nodes: usize, minority: &[&str]) {
    let opts = match reg {
        Register::Kv => Options { nodes, ..Options::default() },
        Register::Link => {
            Options { nodes, systems: vec!["kv", "url-shortener"], extra: SHORTENER.into(), ..Options::default() }
        }
    };
    let sys = reg.system();
    // How long the minority may take to refuse: the failure detector declaring the
    // other side down (a probe period, then suspicion), stretched by local health
    // under load, with slack for a loaded CI machine.
    let detect = Duration::from_millis(opts.probe_period_ms + opts.suspect_to_down_ms);
    let refuse_within = detect * 4 + Duration::from_secs(3);
    let c = TestCluster::start(opts);
    c.wait_converged(&[], Duration::from_secs(30));
    for key in (0..KEYS).map(|k| format!("reg{k}")).chain(["probe".to_string()]) {
        let until = Instant::now() + Duration::from_secs(30);
        while !reg.create(c.port(&c.names[0], sys), &key, &c.service_auth()) {
            assert!(Instant::now() < until, "cannot create {key}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let majority: Vec<String> = c.names.iter().filter(|n| !minority.contains(&n.as_str())).cloned().collect();
    let h = Arc::new(History {
        start: Instant::now(),
        ops: Mutex::new(BTreeMap::new()),
        minority_acks_after_refusal: AtomicU64::new(0),
        majority_acks_during: AtomicU64::new(0),
    });
    let (refusing, partitioned, stop) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let mut writers = Vec::new();
    for (name, is_minority) in
        [(minority[0].to_string(), true), (majority[0].clone(), false), (majority[1].clone(), false)]
    {
        let (h, addr, refusing, partitioned, stop) =
            (h.clone(), c.port(&name, sys), refusing.clone(), partitioned.clone(), stop.clone());
        let auth = c.service_auth();
        writers.push(std::thread::spawn(move || {
            writer(reg, auth, h, addr, name, is_minority, refusing, partitioned, stop)
        }));
    }
    std::thread::sleep(Duration::from_secs(1));

    // Split: every minority node from every majority node.
    let others = majority.join(",");
    for m in minority {
        chaos(&c, &["partition", m, "--from", &others]);
    }
    let split_at = Instant::now();
    partitioned.store(true, Ordering::SeqCst);
    // The minority refuses, saying why, within the detection time.
    let probe = c.port(minority[0], sys);
    let (took, retry_after, body) = loop {
        if let Put::Minority { retry_after, body } = reg.put(probe, "probe", "x", &c.service_auth()) {
            break (split_at.elapsed(), retry_after, body);
        }
        assert!(
            split_at.elapsed() < refuse_within,
            "{} still accepts writes {refuse_within:?} after the split",
            minority[0]
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    refusing.store(true, Ordering::SeqCst);
    assert!(retry_after, "the minority's 503 carries no Retry-After: {body}");
    assert!(body.contains("keep-majority needs"), "{body}");
    eprintln!("{} refused {took:?} after the split: {body}", minority[0]);
    // Both sides keep writing while the partition lasts.
    std::thread::sleep(Duration::from_secs(3));

    chaos(&c, &["heal"]);
    partitioned.store(false, Ordering::SeqCst);
    c.wait_converged(&[], Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }

    // After the heal, every key read through every node, until each read succeeds.
    for k in 0..KEYS {
        let key = format!("reg{k}");
        for n in c.names.clone() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let call = h.now();
                if let Some(v) = reg.get(c.port(&n, sys), &key) {
                    h.record(&key, Op { call, ret: Some(h.now()), kind: Kind::Read(v) });
                    break;
                }
                if Instant::now() >= deadline {
                    let route = if reg == Register::Kv { format!("/kv/{key}") } else { format!("/api/links/{key}") };
                    let last = request(c.port(&n, sys), "GET", &route, &[], b"").map(|r| (r.status, r.body));
                    let tree = request(c.admin(&n), "GET", "/v1/tree", &[], b"").map(|r| r.body).unwrap_or_default();
                    panic!("{key} cannot be read through {n} after the heal; last answer {last:?}\n{tree}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert_eq!(
        h.minority_acks_after_refusal.load(Ordering::Relaxed),
        0,
        "the minority acknowledged writes after it began refusing"
    );
    assert!(h.majority_acks_during.load(Ordering::Relaxed) > 0, "the majority acknowledged nothing during the split");
    let ops = h.ops.lock().unwrap().clone();
    let mut total = 0;
    for (key, ops) in &ops {
        total += ops.len();
        if let Err(why) = linearizable::check(ops) {
            panic!("{key}'s history is not linearizable: {why}");
        }
    }
    eprintln!("{sys}: {total} operations on {} registers, all linearizable", ops.len());
}

#[test]
fn a_minority_of_three_refuses_and_nothing_acknowledged_is_lost() {
    partition_run(Register::Kv, 3, &["n1"]);
}

/// The same for the URL shortener's links: edits of a link's target on both sides,
/// reads through the API (a read barrier at the link's owner).
#[test]
fn links_on_a_minority_of_three_refuse_and_no_acknowledged_edit_is_lost() {
    partition_run(Register::Link, 3, &["n1"]);
}

#[test]
fn a_minority_of_five_refuses_and_nothing_acknowledged_is_lost() {
    partition_run(Register::Kv, 5, &["n1", "n2"]);
}

// ---- the checker itself must be able to fail ------------------------------------

fn w(call: u64, ret: Option<u64>, v: &str) -> Op {
    Op { call, ret, kind: Kind::Write(v.into()) }
}

fn r(call: u64, ret: u64, v: Option<&str>) -> Op {
    Op { call, ret: Some(ret), kind: Kind::Read(v.map(str::to_string)) }
}

#[test]
fn the_checker_accepts_linearizable_histories() {
    // Sequential.
    assert!(
        linearizable::check(&[w(0, Some(1), "a"), r(2, 3, Some("a")), w(4, Some(5), "b"), r(6, 7, Some("b"))]).is_ok()
    );
    // Concurrent write and read: the read may see either.
    assert!(linearizable::check(&[w(0, Some(10), "a"), r(1, 2, None)]).is_ok());
    assert!(linearizable::check(&[w(0, Some(10), "a"), r(1, 2, Some("a"))]).is_ok());
    // A write with an unknown outcome may have happened...
    assert!(linearizable::check(&[w(0, None, "a"), r(5, 6, Some("a"))]).is_ok());
    // ...or not.
    assert!(linearizable::check(&[w(0, None, "a"), r(5, 6, None)]).is_ok());
}

#[test]
fn the_checker_rejects_stale_and_lost_values() {
    // A read after an acknowledged write sees the old value: a stale read.
    let e = linearizable::check(&[w(0, Some(1), "a"), w(2, Some(3), "b"), r(4, 5, Some("a"))]).unwrap_err();
    assert!(e.contains("no order of these 3 operations"), "{e}");
    // An acknowledged write is gone after the heal.
    assert!(linearizable::check(&[w(0, Some(1), "a"), r(2, 3, None)]).is_err());
    // Two reads disagree in time: b then a, though a was overwritten by b.
    assert!(
        linearizable::check(&[w(0, Some(1), "a"), w(2, Some(3), "b"), r(4, 5, Some("b")), r(6, 7, Some("a"))]).is_err()
    );
    // A value nobody wrote.
    assert!(linearizable::check(&[r(0, 1, Some("z"))]).is_err());
}

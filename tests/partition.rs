//! Partition safety on real processes (docs/replication.md): the cluster is split with
//! `troupe chaos partition`, writers on both sides overwrite a few kv keys and read
//! them back, the partition heals, and then
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

fn put(addr: SocketAddr, key: &str, value: &str) -> Put {
    let body = format!("{{\"value\":\"{value}\"}}");
    match request(addr, "PUT", &format!("/kv/{key}"), &[("Content-Type", "application/json")], body.as_bytes()) {
        Ok(r) if r.status == 200 => Put::Acked,
        Ok(r) if r.status == 503 && r.body.contains("minority side of a partition") => {
            Put::Minority { retry_after: r.header("retry-after").is_some(), body: r.body }
        }
        _ => Put::Unknown,
    }
}

/// A read's value (`Some(None)`: absent), or `None` when the read failed.
fn get(addr: SocketAddr, key: &str) -> Option<Option<String>> {
    let r = request(addr, "GET", &format!("/kv/{key}"), &[], b"").ok()?;
    if r.status != 200 {
        return None;
    }
    let v = r.json();
    Some(v["Value"]["value"].as_str().map(str::to_string))
}

fn chaos(c: &TestCluster, args: &[&str]) {
    let out = Command::new(BIN).arg("chaos").args(args).arg("--cluster").arg(c.cluster_file()).output().unwrap();
    assert!(out.status.success(), "troupe chaos {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// One writer: PUTs of fresh values and GETs, alternating, through `node`'s gateway.
fn writer(
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
        let key = format!("p{}", i % KEYS);
        if i % 3 == 2 {
            let call = h.now();
            if let Some(v) = get(addr, &key) {
                h.record(&key, Op { call, ret: Some(h.now()), kind: Kind::Read(v) });
            }
        } else {
            let value = format!("{name}-{i}");
            let call = h.now();
            let was_refusing = refusing.load(Ordering::SeqCst);
            let outcome = put(addr, &key, &value);
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

fn partition_run(nodes: usize, minority: &[&str]) {
    let opts = Options { nodes, ..Options::default() };
    // How long the minority may take to refuse: the failure detector declaring the
    // other side down (a probe period, then suspicion), stretched by local health
    // under load, with slack for a loaded CI machine.
    let detect = Duration::from_millis(opts.probe_period_ms + opts.suspect_to_down_ms);
    let refuse_within = detect * 4 + Duration::from_secs(3);
    let c = TestCluster::start(opts);
    c.wait_converged(&[], Duration::from_secs(30));
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
            (h.clone(), c.port(&name, "kv"), refusing.clone(), partitioned.clone(), stop.clone());
        writers.push(std::thread::spawn(move || writer(h, addr, name, is_minority, refusing, partitioned, stop)));
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
    let probe = c.port(minority[0], "kv");
    let (took, retry_after, body) = loop {
        if let Put::Minority { retry_after, body } = put(probe, "probe", "x") {
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
        let key = format!("p{k}");
        for n in c.names.clone() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let call = h.now();
                if let Some(v) = get(c.port(&n, "kv"), &key) {
                    h.record(&key, Op { call, ret: Some(h.now()), kind: Kind::Read(v) });
                    break;
                }
                if Instant::now() >= deadline {
                    let last =
                        request(c.port(&n, "kv"), "GET", &format!("/kv/{key}"), &[], b"").map(|r| (r.status, r.body));
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
    eprintln!("{total} operations on {} keys, all linearizable", ops.len());
}

#[test]
fn a_minority_of_three_refuses_and_nothing_acknowledged_is_lost() {
    partition_run(3, &["n1"]);
}

#[test]
fn a_minority_of_five_refuses_and_nothing_acknowledged_is_lost() {
    partition_run(5, &["n1", "n2"]);
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

//! A deterministic simulation of the cluster's membership: 3–7 nodes in one thread on
//! virtual time, a simulated network (latency, loss, reordering, duplication,
//! partitions) and node crashes and restarts, all drawn from one seed, running the real
//! membership core ([`crate::membership`], i.e. foca and troupe's glue). One seed replays
//! byte for byte: [`SimReport::log_hash`] is a hash of the whole event log.
//!
//! Checked on every run:
//! - convergence: after the last fault heals and the cluster has had a settle time
//!   (derived from the SWIM settings), every running node sees every running node
//!   alive in its current incarnation, and every stopped node down or gone;
//! - a node never holds itself down, and no event names a member outside the cluster.
//!
//! - no acknowledged write is lost: clients write to and read replicated logs (`kv.rs`)
//!   through the real directory and replication decisions; after the faults end,
//!   every node restarts, and every key read through its owner must hold every write
//!   that was ever acknowledged;
//! - each key's history of writes and reads is linearizable ([`NOT_LINEARIZABLE`]).
//!
//! The actors' shells, the transport and the store run on tokio and are modelled here,
//! not run (docs/ARCHITECTURE.md, "Simulation", says what is run and what is modelled).

mod kv;

use crate::membership::{Effects, Input, Membership, MembershipTuning, NodeId};
use crate::placement::stable_hash;
use rand010::{RngExt, SeedableRng, rngs::SmallRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use troupe_wire::introspect::MemberState;

/// What one simulated run looks like.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes in the cluster (3–7).
    pub nodes: usize,
    /// Virtual time of the faulty phase; a settle phase without faults follows.
    pub duration: Duration,
    /// Inject kills, restarts and partitions during the faulty phase.
    pub faults: bool,
    /// Largest packet loss rate drawn for a run (0.0–0.5).
    pub loss_max: f64,
    /// Largest duplication rate drawn for a run.
    pub dup_max: f64,
    /// Largest rate drawn for a run of replica requests delivered twice, the copy up
    /// to the replica timeout late (a request the caller sent again after its reply
    /// was lost, as the handle's retry does).
    pub replay_max: f64,
    /// One-way latency range in milliseconds; a spread reorders packets.
    pub latency_ms: (u64, u64),
    pub tuning: MembershipTuning,
    /// Client requests per second of virtual time during the faulty phase, one in four
    /// a read (0: none).
    pub writes_per_sec: u32,
    /// Keys the clients write (one replicated log each).
    pub keys: usize,
    /// Copies of each key (the kv system's default); a write needs a majority of them.
    pub rf: u64,
    /// Votes that acknowledge a write, instead of a majority of `rf`: only for the
    /// test that shows the simulator finds the loss fewer votes cause.
    pub write_votes: Option<usize>,
    /// Time a disk write takes to sync, in milliseconds.
    pub disk_ms: (u64, u64),
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            duration: Duration::from_secs(60),
            faults: true,
            loss_max: 0.05,
            dup_max: 0.02,
            replay_max: 0.1,
            latency_ms: (1, 20),
            // The test cluster's settings (tests/common): fast detection.
            tuning: MembershipTuning {
                probe_period_ms: 300,
                probe_rtt_ms: 150,
                suspect_to_down_ms: 900,
                join_retry_ms: 200,
                ..MembershipTuning::default()
            },
            writes_per_sec: 20,
            keys: 6,
            rf: 3,
            write_votes: None,
            disk_ms: (1, 5),
        }
    }
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    /// Hash of the event log: equal for two runs of one seed.
    pub log_hash: u64,
    /// Every membership event, fault and check, one line each, with virtual time.
    pub log: Vec<String>,
    pub packets_sent: u64,
    pub packets_delivered: u64,
    /// Client writes issued, and acknowledged.
    pub writes: u64,
    pub acks: u64,
    /// Broken invariants; empty when the run passed.
    pub violations: Vec<String>,
}

/// The prefix of a lost acknowledged write.
pub const WRITE_LOST: &str = "acknowledged write lost";
/// The prefix of a history no single order of the operations explains.
pub const NOT_LINEARIZABLE: &str = "not linearizable";

impl SimReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Violations other than lost acknowledged writes.
    pub fn other_violations(&self) -> Vec<&String> {
        self.violations.iter().filter(|v| !v.starts_with(WRITE_LOST)).collect()
    }
}

struct SimNode {
    name: String,
    core: Option<Membership>,
    epoch: u64,
    /// When the running incarnation started.
    started_ms: u64,
    kv: kv::KvNode,
    disk: kv::Disk,
}

impl SimNode {
    fn new(i: usize) -> SimNode {
        SimNode {
            name: format!("n{}", i + 1),
            core: None,
            epoch: 1,
            started_ms: 0,
            kv: kv::KvNode::default(),
            disk: kv::Disk::default(),
        }
    }
}

/// What an event carries.
enum Cargo {
    /// A SWIM datagram.
    Gossip(Vec<u8>),
    /// A message on a link between two nodes.
    Body { body: kv::Body, sent_ms: u64 },
    /// A node's own wake-up, for the incarnation `epoch`.
    Timer { epoch: u64, t: kv::Timer },
    /// The next client write.
    Client,
}

/// An event, ordered by time and then by when it was scheduled.
struct InFlight {
    at_ms: u64,
    seq: u64,
    from: usize,
    to: usize,
    cargo: Cargo,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at_ms, self.seq) == (o.at_ms, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(o.at_ms, o.seq))
    }
}

enum Fault {
    Kill(usize),
    Restart(usize),
    Partition(BTreeSet<usize>),
    Heal,
}

struct World {
    base: Instant,
    cfg: SimConfig,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    /// Packets on the wire, by delivery time.
    wire: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Nodes cut off from the rest (empty: no partition).
    island: BTreeSet<usize>,
    loss: f64,
    dup: f64,
    replay: f64,
    log: Vec<String>,
    sent: u64,
    delivered: u64,
    violations: Vec<String>,
    ledger: kv::Ledger,
    /// Clients write while this holds.
    clients: bool,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000 + i as u16))
}

impl World {
    fn id(&self, i: usize) -> NodeId {
        NodeId { name: self.nodes[i].name.clone(), gossip: addr(i), epoch: self.nodes[i].epoch, bump: 0 }
    }

    fn start_node(&mut self, i: usize, now_ms: u64) {
        let seeds: Vec<NodeId> = (0..self.nodes.len().min(2))
            .map(|s| NodeId { epoch: 0, ..self.id(s) })
            .filter(|s| s.name != self.nodes[i].name)
            .collect();
        let seed = self.rng.random::<u64>();
        let core = Membership::new(
            self.id(i),
            seeds,
            self.cfg.tuning.clone(),
            self.nodes.len(),
            seed,
            self.base + Duration::from_millis(now_ms),
        );
        self.nodes[i].core = Some(core);
        self.nodes[i].started_ms = now_ms;
        self.record(now_ms, &format!("{} starts (epoch {})", self.nodes[i].name, self.nodes[i].epoch));
    }

    fn push(&mut self, at_ms: u64, from: usize, to: usize, cargo: Cargo) {
        self.seq += 1;
        self.wire.push(Reverse(InFlight { at_ms, seq: self.seq, from, to, cargo }));
    }

    fn record(&mut self, now_ms: u64, line: &str) {
        self.log.push(format!("{now_ms:>8} {line}"));
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.island.is_empty() || self.island.contains(&a) == self.island.contains(&b)
    }

    fn apply(&mut self, from: usize, now_ms: u64, fx: Effects) {
        let me = self.nodes[from].name.clone();
        for e in &fx.events {
            if e.name == me && e.state == MemberState::Down {
                self.violations.push(format!("{now_ms} ms: {me} holds itself down"));
            }
            if !self.nodes.iter().any(|n| n.name == e.name) {
                self.violations.push(format!("{now_ms} ms: {me} saw unknown member {}", e.name));
            }
            self.record(now_ms, &format!("{me} sees {} {:?} (epoch {})", e.name, e.state, e.epoch));
        }
        if fx.defunct {
            self.record(now_ms, &format!("{me} was declared down and rejoins"));
        }
        for (dst, payload) in fx.send {
            self.sent += 1;
            let Some(to) = self.nodes.iter().position(|n| n.name == dst.name) else { continue };
            if !self.reachable(from, to) || self.rng.random::<f64>() < self.loss {
                continue;
            }
            let copies = if self.rng.random::<f64>() < self.dup { 2 } else { 1 };
            for _ in 0..copies {
                let (lo, hi) = self.cfg.latency_ms;
                let at_ms = now_ms + self.rng.random_range(lo..=hi.max(lo));
                self.push(at_ms, from, to, Cargo::Gossip(payload.clone()));
            }
        }
        if !fx.events.is_empty() {
            self.rehome(now_ms, from);
        }
    }

    /// Runs every node's due work and every delivery up to `until_ms`.
    fn run_until(&mut self, until_ms: u64) {
        loop {
            let next_packet = self.wire.peek().map(|Reverse(p)| p.at_ms);
            let next_wake = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    n.core.as_ref().map(|c| (c.next_wake().duration_since(self.base).as_millis() as u64, i))
                })
                .min();
            let step = match (next_packet, next_wake) {
                (Some(p), Some((w, _))) if p <= w => Some((p, None)),
                (_, Some((w, i))) => Some((w, Some(i))),
                (Some(p), None) => Some((p, None)),
                (None, None) => None,
            };
            let Some((at_ms, who)) = step else { return };
            if at_ms > until_ms {
                return;
            }
            let now = self.base + Duration::from_millis(at_ms);
            match who {
                Some(i) => {
                    let Some(core) = self.nodes[i].core.as_mut() else { continue };
                    let fx = core.handle(now, Input::Tick);
                    self.apply(i, at_ms, fx);
                }
                None => {
                    let Some(Reverse(p)) = self.wire.pop() else { continue };
                    match p.cargo {
                        Cargo::Gossip(payload) => {
                            // A partition that began while the packet flew drops it too.
                            if !self.reachable(p.from, p.to) {
                                continue;
                            }
                            let Some(core) = self.nodes[p.to].core.as_mut() else { continue };
                            self.delivered += 1;
                            let fx = core.handle(now, Input::Packet(&payload));
                            self.apply(p.to, at_ms, fx);
                        }
                        Cargo::Body { body, sent_ms } => {
                            if self.reachable(p.from, p.to) {
                                self.deliver(at_ms, p.from, p.to, body, sent_ms);
                            }
                        }
                        Cargo::Timer { epoch, t } => {
                            if self.nodes[p.to].core.is_some() && self.nodes[p.to].epoch == epoch {
                                self.wake(at_ms, p.to, t);
                            }
                        }
                        Cargo::Client => {
                            if self.clients {
                                self.client_request(at_ms);
                                self.schedule_client(at_ms);
                            }
                        }
                    }
                }
            }
        }
    }

    fn fault(&mut self, now_ms: u64, f: Fault) {
        match f {
            Fault::Kill(i) => {
                self.nodes[i].core = None;
                self.crash_kv(now_ms, i);
                self.record(now_ms, &format!("kill -9 {}", self.nodes[i].name));
            }
            Fault::Restart(i) => {
                // A restarted process has a later boot epoch.
                self.nodes[i].epoch = self.nodes[i].epoch.max(now_ms) + 1;
                self.start_node(i, now_ms);
            }
            Fault::Partition(side) => {
                let names: Vec<&str> = side.iter().map(|i| self.nodes[*i].name.as_str()).collect();
                let line = format!("partition {names:?} from the rest");
                self.island = side;
                self.record(now_ms, &line);
            }
            Fault::Heal => {
                self.island.clear();
                self.record(now_ms, "heal");
            }
        }
    }

    fn schedule_client(&mut self, now_ms: u64) {
        if self.cfg.writes_per_sec == 0 {
            return;
        }
        let mean = (1000 / u64::from(self.cfg.writes_per_sec)).max(1);
        let at = now_ms + self.rng.random_range(1..=2 * mean);
        self.push(at, 0, 0, Cargo::Client);
    }

    /// Picks the next fault for the current state of the world.
    fn draw_fault(&mut self) -> Fault {
        let n = self.nodes.len();
        let dead: Vec<usize> = (0..n).filter(|i| self.nodes[*i].core.is_none()).collect();
        let roll = self.rng.random_range(0..10u32);
        if !self.island.is_empty() && roll < 5 {
            return Fault::Heal;
        }
        if !dead.is_empty() && roll < 7 {
            return Fault::Restart(dead[self.rng.random_range(0..dead.len())]);
        }
        // Keep a majority running: at most (n - 1) / 2 dead at once.
        if roll < 8 && dead.len() < (n - 1) / 2 {
            let live: Vec<usize> = (0..n).filter(|i| self.nodes[*i].core.is_some()).collect();
            return Fault::Kill(live[self.rng.random_range(0..live.len())]);
        }
        let k = self.rng.random_range(1..=(n - 1) / 2);
        let mut side = BTreeSet::new();
        while side.len() < k {
            side.insert(self.rng.random_range(0..n));
        }
        Fault::Partition(side)
    }

    /// After the settle time: every running node sees the others as they are.
    fn check_converged(&mut self, now_ms: u64) {
        let truth: BTreeMap<String, Option<u64>> =
            self.nodes.iter().map(|n| (n.name.clone(), n.core.as_ref().map(|_| n.epoch))).collect();
        for node in &self.nodes {
            let Some(core) = &node.core else { continue };
            for (name, want) in &truth {
                let seen = core.view().members.get(name);
                let ok = match (want, seen) {
                    (Some(epoch), Some(m)) => m.state == MemberState::Alive && m.id.epoch == *epoch,
                    (Some(_), None) => false,
                    (None, Some(m)) => m.state == MemberState::Down,
                    (None, None) => true,
                };
                if !ok {
                    self.violations.push(format!(
                        "{now_ms} ms: after settling, {} sees {name} as {:?}, but it is {}",
                        node.name,
                        seen.map(|m| (m.state, m.id.epoch)),
                        want.map_or("stopped".to_string(), |e| format!("running (epoch {e})"))
                    ));
                }
            }
        }
        self.record(now_ms, &format!("converged check: {} violations", self.violations.len()));
    }
}

/// Runs one seeded simulation. `base` only anchors virtual time (any instant: the run
/// depends on differences from it alone).
pub fn run(seed: u64, cfg: &SimConfig, base: Instant) -> SimReport {
    let mut rng = SmallRng::seed_from_u64(seed);
    let loss = rng.random::<f64>() * cfg.loss_max;
    let dup = rng.random::<f64>() * cfg.dup_max;
    let replay = rng.random::<f64>() * cfg.replay_max;
    let n = cfg.nodes.clamp(3, 7);
    let mut w = World {
        base,
        cfg: cfg.clone(),
        rng,
        nodes: (0..n).map(SimNode::new).collect(),
        wire: BinaryHeap::new(),
        seq: 0,
        island: BTreeSet::new(),
        loss,
        dup,
        replay,
        log: Vec::new(),
        sent: 0,
        delivered: 0,
        violations: Vec::new(),
        ledger: kv::Ledger::default(),
        clients: cfg.writes_per_sec > 0,
    };
    w.record(0, &format!("seed {seed}: {n} nodes, loss {loss:.3}, duplication {dup:.3}, replays {replay:.3}"));
    for i in 0..n {
        w.start_node(i, 0);
    }
    w.schedule_client(0);
    let t = &cfg.tuning;
    // Long enough for a cluster to form or a fault to be noticed (slack for loss).
    let settle_ms = 4 * (t.probe_period_ms + t.suspect_to_down_ms) + t.join_retry_ms * 5 + 2 * t.gossip_period_ms;
    let mut now_ms = 0u64;
    let end_ms = cfg.duration.as_millis() as u64;
    while now_ms < end_ms {
        let gap = if cfg.faults { w.rng.random_range(settle_ms / 4..=settle_ms * 2) } else { end_ms };
        now_ms = (now_ms + gap).min(end_ms);
        w.run_until(now_ms);
        if cfg.faults && now_ms < end_ms {
            let f = w.draw_fault();
            w.fault(now_ms, f);
        }
    }
    // Settle: the network heals (no partition, loss or duplication), nobody restarts
    // (stopped nodes must be seen down), and the cluster runs on.
    if !w.island.is_empty() {
        w.fault(now_ms, Fault::Heal);
    }
    w.loss = 0.0;
    w.dup = 0.0;
    w.replay = 0.0;
    // Suspicions can be stretched by local health; give the stretched timeout room.
    let stretch = 1 + t.local_health_max.min(2);
    let settle_end = now_ms + settle_ms * stretch;
    w.clients = false;
    w.run_until(settle_end);
    w.check_converged(settle_end);
    if w.ledger.writes > 0 {
        // Every node comes back with its disk; once the cluster settled again, each
        // key is read through its owner and must hold every acknowledged write.
        for i in 0..n {
            if w.nodes[i].core.is_none() {
                w.fault(settle_end, Fault::Restart(i));
            }
        }
        let read_at = settle_end + settle_ms * stretch;
        w.run_until(read_at);
        w.read_all(read_at);
        // Recovery waits for every live node to agree, within its deadline.
        let end = read_at + kv::REPLICA_TIMEOUT_MS + 12_000;
        w.run_until(end);
        w.check_reads(end);
    }
    let mut text = String::new();
    for l in &w.log {
        let _ = writeln!(text, "{l}");
    }
    SimReport {
        seed,
        log_hash: stable_hash(&[text.as_bytes()]),
        log: w.log,
        packets_sent: w.sent,
        packets_delivered: w.delivered,
        writes: w.ledger.writes,
        acks: w.ledger.acks,
        violations: w.violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The one place the core reads a clock: a test anchoring virtual time.
    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_seed_replays_byte_for_byte() {
        let cfg = SimConfig { duration: Duration::from_secs(20), ..SimConfig::default() };
        let a = run(7, &cfg, base());
        let b = run(7, &cfg, base());
        assert_eq!(a.log, b.log);
        assert_eq!(a.log_hash, b.log_hash);
        let c = run(8, &cfg, base());
        assert_ne!(a.log_hash, c.log_hash, "another seed, another run");
    }

    #[test]
    fn a_quiet_cluster_forms_and_stays_up() {
        let cfg = SimConfig { faults: false, loss_max: 0.0, dup_max: 0.0, ..SimConfig::default() };
        let r = run(1, &cfg, base());
        assert!(r.passed(), "{:#?}\n{}", r.violations, r.log.join("\n"));
        assert!(r.packets_delivered > 100, "no gossip flowed: {}", r.packets_delivered);
        // Nobody was ever suspected on a clean network.
        assert!(!r.log.iter().any(|l| l.contains("Suspect") || l.contains("Down")), "{}", r.log.join("\n"));
    }

    #[test]
    fn the_convergence_check_can_fail() {
        // A world whose truth disagrees with the views must be reported.
        let cfg = SimConfig { faults: false, ..SimConfig::default() };
        let mut r = run(3, &cfg, base());
        assert!(r.passed(), "{:#?}", r.violations);
        // Rerun by hand and stop a node right before the check: nobody had time to see it.
        let mut w = World {
            base: base(),
            cfg: cfg.clone(),
            rng: SmallRng::seed_from_u64(3),
            nodes: (0..3).map(SimNode::new).collect(),
            wire: BinaryHeap::new(),
            seq: 0,
            island: BTreeSet::new(),
            loss: 0.0,
            dup: 0.0,
            replay: 0.0,
            log: Vec::new(),
            sent: 0,
            delivered: 0,
            violations: Vec::new(),
            ledger: kv::Ledger::default(),
            clients: false,
        };
        for i in 0..3 {
            w.start_node(i, 0);
        }
        w.run_until(10_000);
        w.fault(10_000, Fault::Kill(2));
        w.check_converged(10_001);
        r.violations = w.violations;
        assert_eq!(r.violations.len(), 2, "n1 and n2 still see n3 alive: {:#?}", r.violations);
    }

    #[test]
    fn partitions_longer_than_the_memory_of_down_members_heal() {
        // Members held down are forgotten after 1 s here, so every partition outlives
        // foca's memory of the other side.
        let mut cfg = SimConfig::default();
        cfg.tuning.remove_down_after_ms = 1000;
        for seed in 100..106 {
            let r = run(seed, &cfg, base());
            assert!(r.passed(), "seed {seed} failed:\n{:#?}\n{}", r.violations, r.log.join("\n"));
        }
    }

    #[test]
    fn writes_on_a_quiet_cluster_are_all_acknowledged_and_read_back() {
        let cfg = SimConfig { faults: false, ..SimConfig::default() };
        for seed in 0..4 {
            let r = run(seed, &cfg, base());
            assert!(r.passed(), "seed {seed}: {:#?}", r.violations);
            // 20 requests a second for 60 s, one in four a read.
            assert!(r.writes > 700, "seed {seed}: {} writes", r.writes);
            // Loss on the network delays answers; only a write cut by the end of the
            // faulty phase (or a forward between disagreeing views) goes unanswered.
            assert!(r.acks * 100 >= r.writes * 98, "seed {seed}: {} of {} acknowledged", r.acks, r.writes);
            assert!(r.log.iter().any(|l| l.contains("read check: 6 keys read")), "{}", r.log.join("\n"));
        }
    }

    #[test]
    fn the_read_check_reports_a_lost_write() {
        // Writes acknowledged by the owner alone: a minority owner acknowledges writes
        // the majority's owner never sees, and the checks must say so.
        let cfg = SimConfig { write_votes: Some(1), ..SimConfig::default() };
        let r = run(18, &cfg, base());
        assert!(r.violations.iter().any(|v| v.starts_with(WRITE_LOST)), "{:#?}", r.violations);
        assert!(r.other_violations().iter().all(|v| v.starts_with(NOT_LINEARIZABLE)), "{:#?}", r.other_violations());
        // With a majority, the same seed loses nothing.
        let r = run(18, &SimConfig::default(), base());
        assert!(r.passed(), "{:#?}", r.violations);
    }

    #[test]
    fn fixed_seeds_with_kills_partitions_and_loss_converge() {
        let cfg = SimConfig::default();
        for seed in 0..8 {
            let r = run(seed, &cfg, base());
            assert!(
                r.passed(),
                "seed {seed} failed (replay: troupe sim --seed {seed}):\n{:#?}\n{}",
                r.violations,
                r.log.join("\n")
            );
        }
    }
}

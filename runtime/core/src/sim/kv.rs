//! Replicated durable state under simulation: a sharded entity per key, each holding an
//! append-only log, persisted through primary-backup replication as the runtime does
//! it — the same directory ([`crate::directory`]) and the same replication decisions
//! ([`crate::replication`]: replica fencing, the write round with its fail-over, the
//! recovery round) over the simulated network and disks, driven by the membership
//! cores' views.
//!
//! What is modelled after the node shell rather than run: the entity (a log of values,
//! as the kv store's actor keeps; one request at a time, a failed write re-recovers it,
//! handoff stops it when the view moves it), the per-path lock of `replica.rs` (one
//! disk job per key per node at a time), the store (a write is on disk only after its
//! sync; a crash loses the write in flight — redb's commit is atomic, so a torn last
//! write is discarded at open, which here is the same as lost), and the links (QUIC:
//! reliable and ordered while both ends live and the network joins them; loss costs a
//! retransmission's delay; a partition or a crash drops what is in flight).
//!
//! Checked: after the faults end, every node restarts and the cluster settles, each
//! key is read through its owner; every write that was ever acknowledged must be in
//! the log read.

use super::{Cargo, World};
use crate::directory::{self, Kind, Placement, Roster};
use crate::placement::Candidate;
use crate::replication::{
    Recovery, RecoveryRound, Versioned, WriteCheck, WriteRound, WriteStep, check_owner, check_write,
};
use rand010::RngExt;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use troupe_wire::ActorPath;

/// How long one replication ask may take (the runtime's `REPLICA_TIMEOUT`).
pub(super) const REPLICA_TIMEOUT_MS: u64 = 3_000;
/// How long recovery waits for every live node to agree (`RECOVER_DEADLINE`).
const RECOVER_DEADLINE_MS: u64 = 10_000;
const RECOVER_RETRY_MS: u64 = 100;
/// Forwarding hops a client request may take between nodes that disagree.
const HOPS_MAX: u8 = 3;

/// The simulated kind: sharded, every node eligible.
const KIND: Kind<'static> = Kind { system: "sim", name: "log", placement: Placement::Sharded, role: None };

/// A key's log: sequence number → value (a write id).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Log(BTreeMap<u64, u64>);

impl Versioned for Log {
    fn last_seq(&self) -> u64 {
        self.0.keys().next_back().copied().unwrap_or(0)
    }
}

/// What survives a crash: the synced logs.
#[derive(Default)]
pub(super) struct Disk {
    logs: BTreeMap<usize, Log>,
}

#[derive(Debug, Clone)]
pub(super) enum Req {
    /// Apply `entries` (all of the log when `full`), written by `writer`.
    Write { writer: String, entries: Log, full: bool },
    /// Hand over your copy to its owner `asker`.
    Load { asker: String },
}

#[derive(Debug, Clone)]
pub(super) enum Ans {
    Written,
    Gap(u64),
    Refused(String),
    Loaded(Log),
}

#[derive(Debug, Clone)]
pub(super) enum ClientReq {
    Write { id: u64 },
    Read,
}

/// What travels between nodes.
#[derive(Debug, Clone)]
pub(super) enum Body {
    Req { ask: u64, key: usize, req: Req },
    Ans { ask: u64, ans: Ans },
    Client { key: usize, req: ClientReq, hops: u8 },
}

/// A node's own wake-ups.
#[derive(Debug, Clone)]
pub(super) enum Timer {
    AskTimeout(u64),
    DiskDone(usize),
    RecoverRetry(u64),
}

enum Origin {
    Remote { ask: u64, from: usize },
    Local { ask: u64 },
}

struct Job {
    origin: Origin,
    req: Req,
}

#[derive(Default)]
struct Lock {
    started: bool,
    jobs: VecDeque<Job>,
}

enum Phase {
    Recovering,
    Ready { log: Log, busy: bool },
}

struct Entity {
    phase: Phase,
    queue: VecDeque<ClientReq>,
    /// Handoff asked it to stop after the request in progress.
    stopping: bool,
}

enum Stage {
    Asking(RecoveryRound<Log>),
    Adopting { best: Log, sync: Vec<String> },
    Syncing { best: Log },
}

enum Op {
    Write {
        key: usize,
        seq: u64,
        id: u64,
        round: WriteRound,
        /// The step to take once the local disk holds the entry.
        first: Option<WriteStep>,
        results: Vec<(String, bool)>,
    },
    Recover {
        key: usize,
        set: Vec<String>,
        deadline_ms: u64,
        stage: Stage,
    },
}

impl Op {
    fn key(&self) -> usize {
        match self {
            Op::Write { key, .. } | Op::Recover { key, .. } => *key,
        }
    }
}

/// A node's state that a crash loses.
#[derive(Default)]
pub(super) struct KvNode {
    locks: BTreeMap<usize, Lock>,
    entities: BTreeMap<usize, Entity>,
    ops: BTreeMap<u64, Op>,
    /// Open asks: ask id → (op, peer).
    asks: BTreeMap<u64, (u64, String)>,
    /// Asks of an op still unanswered.
    waiting: BTreeMap<u64, BTreeSet<u64>>,
}

/// An acknowledged write.
#[derive(Debug, Clone)]
struct Acked {
    key: usize,
    id: u64,
    seq: u64,
    at_ms: u64,
    by: String,
}

/// What the clients saw.
#[derive(Default)]
pub(super) struct Ledger {
    next_id: u64,
    acked: Vec<Acked>,
    reads: BTreeMap<usize, Log>,
    pub(super) writes: u64,
    pub(super) acks: u64,
}

struct Everyone<'a>(&'a [String]);

impl Roster for Everyone<'_> {
    fn roles(&self, node: &str) -> Option<&[String]> {
        self.0.iter().any(|n| n == node).then_some(&[])
    }
}

fn path(key: usize) -> ActorPath {
    ActorPath::new(KIND.system, KIND.name, &format!("k{key}")).expect("valid path")
}

impl World {
    fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    fn live_view(&self, i: usize) -> Vec<Candidate> {
        let Some(core) = &self.nodes[i].core else { return Vec::new() };
        core.view()
            .members
            .values()
            .filter(|m| m.state != troupe_wire::introspect::MemberState::Down)
            .map(|m| Candidate { name: m.id.name.clone(), roles: Vec::new(), weight: 1.0 })
            .collect()
    }

    fn owner_in_view(&self, i: usize, key: usize) -> Result<String, String> {
        let names = self.names();
        directory::owner_of(&KIND, &path(key), &self.live_view(i), &Everyone(&names)).map_err(|e| e.to_string())
    }

    fn replica_set_in_view(&self, i: usize, key: usize) -> Vec<String> {
        let names = self.names();
        directory::replica_set(&KIND, &path(key), self.cfg.rf, &self.live_view(i), &Everyone(&names))
            .unwrap_or_default()
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    fn next_id(&mut self) -> u64 {
        self.ledger.next_id += 1;
        self.ledger.next_id
    }

    /// Sends over a link: reliable while both ends run and the network joins them.
    fn send_body(&mut self, now_ms: u64, from: usize, to: usize, body: Body) {
        if !self.reachable(from, to) {
            return;
        }
        let (lo, hi) = self.cfg.latency_ms;
        let mut delay = self.rng.random_range(lo..=hi.max(lo));
        // A lost datagram is sent again after about a round trip.
        while self.rng.random::<f64>() < self.loss {
            delay += 2 * hi.max(1);
        }
        self.push(now_ms + delay, from, to, Cargo::Body { body, sent_ms: now_ms });
    }

    fn timer(&mut self, at_ms: u64, node: usize, t: Timer) {
        let epoch = self.nodes[node].epoch;
        self.push(at_ms, node, node, Cargo::Timer { epoch, t });
    }

    // ---- the store under the per-path lock -------------------------------------

    fn enqueue(&mut self, now_ms: u64, i: usize, key: usize, job: Job) {
        self.nodes[i].kv.locks.entry(key).or_default().jobs.push_back(job);
        self.pump(now_ms, i, key);
    }

    fn pump(&mut self, now_ms: u64, i: usize, key: usize) {
        let me = self.nodes[i].name.clone();
        let Some(lock) = self.nodes[i].kv.locks.get_mut(&key) else { return };
        if lock.started {
            return;
        }
        let Some(job) = lock.jobs.front() else { return };
        lock.started = true;
        let req = job.req.clone();
        let view_owner = self.owner_in_view(i, key);
        let have = self.nodes[i].disk.logs.get(&key).map(Versioned::last_seq).unwrap_or(0);
        let p = path(key).to_string();
        let done = match &req {
            Req::Write { writer, entries, full } => {
                let first = if *full { None } else { entries.0.keys().next().copied() };
                match check_write(&me, &p, writer, view_owner.as_deref().map_err(Clone::clone), first, have) {
                    WriteCheck::Accept => None,
                    WriteCheck::Gap { have } => Some(Ans::Gap(have)),
                    WriteCheck::Refuse(why) => Some(Ans::Refused(why)),
                }
            }
            Req::Load { asker } => {
                Some(match check_owner(&me, &p, asker, view_owner.as_deref().map_err(Clone::clone)) {
                    Ok(()) => Ans::Loaded(self.nodes[i].disk.logs.get(&key).cloned().unwrap_or_default()),
                    Err(why) => Ans::Refused(why),
                })
            }
        };
        match done {
            Some(ans) => self.finish_job(now_ms, i, key, ans),
            None => {
                let (lo, hi) = self.cfg.disk_ms;
                let at = now_ms + self.rng.random_range(lo..=hi.max(lo));
                self.timer(at, i, Timer::DiskDone(key));
            }
        }
    }

    /// The sync of the write at the head of `key`'s lock completed.
    fn disk_done(&mut self, now_ms: u64, i: usize, key: usize) {
        let Some(job) = self.nodes[i].kv.locks.get(&key).and_then(|l| l.jobs.front()) else { return };
        if let Req::Write { entries, full, .. } = &job.req {
            let (entries, full) = (entries.clone(), *full);
            let log = self.nodes[i].disk.logs.entry(key).or_default();
            if full {
                *log = entries;
            } else {
                log.0.extend(entries.0);
            }
        }
        self.finish_job(now_ms, i, key, Ans::Written);
    }

    fn finish_job(&mut self, now_ms: u64, i: usize, key: usize, ans: Ans) {
        let Some(lock) = self.nodes[i].kv.locks.get_mut(&key) else { return };
        lock.started = false;
        let Some(job) = lock.jobs.pop_front() else { return };
        match job.origin {
            Origin::Remote { ask, from } => self.send_body(now_ms, i, from, Body::Ans { ask, ans }),
            Origin::Local { ask } => self.answer(now_ms, i, ask, Some(ans)),
        }
        self.pump(now_ms, i, key);
    }

    // ---- asks ------------------------------------------------------------------

    fn ask(&mut self, now_ms: u64, i: usize, op: u64, peer: &str, key: usize, req: Req) {
        let ask = self.next_id();
        self.nodes[i].kv.asks.insert(ask, (op, peer.to_string()));
        self.nodes[i].kv.waiting.entry(op).or_default().insert(ask);
        if peer == self.nodes[i].name {
            self.enqueue(now_ms, i, key, Job { origin: Origin::Local { ask }, req });
            return;
        }
        let Some(to) = self.index(peer) else { return };
        self.send_body(now_ms, i, to, Body::Req { ask, key, req });
        self.timer(now_ms + REPLICA_TIMEOUT_MS, i, Timer::AskTimeout(ask));
    }

    /// An answer to ask `ask` (`None`: it timed out).
    fn answer(&mut self, now_ms: u64, i: usize, ask: u64, ans: Option<Ans>) {
        let Some((op, peer)) = self.nodes[i].kv.asks.remove(&ask) else { return };
        let Some(w) = self.nodes[i].kv.waiting.get_mut(&op) else { return };
        w.remove(&ask);
        let all_in = w.is_empty();
        let me = self.nodes[i].name.clone();
        let Some(o) = self.nodes[i].kv.ops.get_mut(&op) else { return };
        let key = o.key();
        let mut resend_full = false;
        match o {
            Op::Write { first, results, .. } => {
                if peer == me {
                    // The local write: on, or the write fails.
                    if !matches!(ans, Some(Ans::Written)) {
                        *first = Some(WriteStep::LostOwnership);
                    }
                } else {
                    match ans {
                        Some(Ans::Written) => results.push((peer.clone(), true)),
                        // The replica missed earlier entries: it gets the whole copy.
                        Some(Ans::Gap(_)) => resend_full = true,
                        _ => results.push((peer.clone(), false)),
                    }
                }
            }
            Op::Recover { stage, .. } => match stage {
                Stage::Asking(round) => match ans {
                    Some(Ans::Loaded(log)) => round.copy(&peer, log),
                    Some(Ans::Refused(why)) => round.problem(&peer, why),
                    Some(Ans::Gap(have)) => round.problem(&peer, format!("gap after {have}")),
                    Some(Ans::Written) => round.problem(&peer, "answered a load with `written`"),
                    None => round.problem(&peer, "timed out"),
                },
                Stage::Adopting { .. } if peer == me && !matches!(ans, Some(Ans::Written)) => {
                    self.abandon(now_ms, i, op, "could not adopt the recovered copy");
                    return;
                }
                _ => {}
            },
        }
        if resend_full {
            let full = self.nodes[i].disk.logs.get(&key).cloned().unwrap_or_default();
            self.ask(now_ms, i, op, &peer, key, Req::Write { writer: me, entries: full, full: true });
            return;
        }
        if all_in {
            self.nodes[i].kv.waiting.remove(&op);
            self.advance(now_ms, i, op);
        }
    }

    /// Every ask of `op`'s current stage is in: take the next step.
    fn advance(&mut self, now_ms: u64, i: usize, op_id: u64) {
        let me = self.nodes[i].name.clone();
        let Some(op) = self.nodes[i].kv.ops.remove(&op_id) else { return };
        match op {
            Op::Write { key, seq, id, mut round, first, results } => {
                let step = match first {
                    Some(step) => step,
                    None => {
                        let fresh = self.replica_set_in_view(i, key);
                        round.round_done(&results, fresh)
                    }
                };
                match step {
                    WriteStep::Send(todo) => {
                        let op = Op::Write { key, seq, id, round, first: None, results: Vec::new() };
                        self.nodes[i].kv.ops.insert(op_id, op);
                        let entries = Log(BTreeMap::from([(seq, id)]));
                        for r in todo {
                            let req = Req::Write { writer: me.clone(), entries: entries.clone(), full: false };
                            self.ask(now_ms, i, op_id, &r, key, req);
                        }
                    }
                    WriteStep::Ack => {
                        self.ledger.acks += 1;
                        self.ledger.acked.push(Acked { key, id, seq, at_ms: now_ms, by: me.clone() });
                        self.record(now_ms, &format!("{me} acks write {id} of k{key} at seq {seq}"));
                        if let Some(Entity { phase: Phase::Ready { log, busy }, .. }) =
                            self.nodes[i].kv.entities.get_mut(&key)
                        {
                            log.0.insert(seq, id);
                            *busy = false;
                        }
                        self.drive(now_ms, i, key);
                    }
                    other => {
                        self.record(now_ms, &format!("{me} fails write {id} of k{key}: {other:?}"));
                        // The kv actor re-initializes after a failed write: it recovers again.
                        self.start_recovery(now_ms, i, key);
                    }
                }
            }
            Op::Recover { key, set, deadline_ms, stage } => match stage {
                Stage::Asking(round) => match round.outcome(&set) {
                    Recovery::Retry(problems) => {
                        if now_ms >= deadline_ms {
                            let why = format!("live nodes do not agree ({})", problems.join("; "));
                            self.stop(now_ms, i, key, &why);
                        } else {
                            let stage = Stage::Asking(RecoveryRound::new(&me));
                            self.nodes[i].kv.ops.insert(op_id, Op::Recover { key, set, deadline_ms, stage });
                            self.timer(now_ms + RECOVER_RETRY_MS, i, Timer::RecoverRetry(op_id));
                        }
                    }
                    Recovery::Adopt { best, adopt_locally, sync } => {
                        let stage = Stage::Adopting { best: best.clone(), sync };
                        self.nodes[i].kv.ops.insert(op_id, Op::Recover { key, set, deadline_ms, stage });
                        if adopt_locally {
                            let req = Req::Write { writer: me.clone(), entries: best, full: true };
                            self.ask(now_ms, i, op_id, &me, key, req);
                        } else {
                            self.advance(now_ms, i, op_id);
                        }
                    }
                },
                Stage::Adopting { best, sync } => {
                    let stage = Stage::Syncing { best: best.clone() };
                    self.nodes[i].kv.ops.insert(op_id, Op::Recover { key, set, deadline_ms, stage });
                    if sync.is_empty() {
                        self.advance(now_ms, i, op_id);
                    }
                    for r in sync {
                        let req = Req::Write { writer: me.clone(), entries: best.clone(), full: true };
                        self.ask(now_ms, i, op_id, &r, key, req);
                    }
                }
                Stage::Syncing { best } => {
                    self.record(now_ms, &format!("{me} recovered k{key} up to seq {}", best.last_seq()));
                    if let Some(e) = self.nodes[i].kv.entities.get_mut(&key) {
                        e.phase = Phase::Ready { log: best, busy: false };
                    }
                    self.drive(now_ms, i, key);
                }
            },
        }
    }

    // ---- entities --------------------------------------------------------------

    fn start_recovery(&mut self, now_ms: u64, i: usize, key: usize) {
        let me = self.nodes[i].name.clone();
        let e = self.nodes[i].kv.entities.entry(key).or_insert_with(|| Entity {
            phase: Phase::Recovering,
            queue: VecDeque::new(),
            stopping: false,
        });
        if e.stopping {
            self.stop(now_ms, i, key, "handed off");
            return;
        }
        e.phase = Phase::Recovering;
        let op_id = self.next_id();
        let op = Op::Recover {
            key,
            set: Vec::new(),
            deadline_ms: now_ms + RECOVER_DEADLINE_MS,
            stage: Stage::Asking(RecoveryRound::new(&me)),
        };
        self.nodes[i].kv.ops.insert(op_id, op);
        self.recovery_round(now_ms, i, op_id);
    }

    fn recovery_round(&mut self, now_ms: u64, i: usize, op_id: u64) {
        let me = self.nodes[i].name.clone();
        let Some(Op::Recover { key, .. }) = self.nodes[i].kv.ops.get(&op_id) else { return };
        let key = *key;
        let set = self.replica_set_in_view(i, key);
        if set.first() != Some(&me) {
            self.abandon(now_ms, i, op_id, "does not own the key in its view");
            return;
        }
        if let Some(Op::Recover { set: s, stage, .. }) = self.nodes[i].kv.ops.get_mut(&op_id) {
            *s = set;
            *stage = Stage::Asking(RecoveryRound::new(&me));
        }
        let live: Vec<String> = self.live_view(i).into_iter().map(|c| c.name).collect();
        for n in live {
            self.ask(now_ms, i, op_id, &n, key, Req::Load { asker: me.clone() });
        }
    }

    /// Recovery failed: the entity stops and its queued requests fail.
    fn abandon(&mut self, now_ms: u64, i: usize, op_id: u64, why: &str) {
        let Some(op) = self.nodes[i].kv.ops.remove(&op_id) else { return };
        self.nodes[i].kv.waiting.remove(&op_id);
        self.stop(now_ms, i, op.key(), why);
    }

    fn stop(&mut self, now_ms: u64, i: usize, key: usize, why: &str) {
        if let Some(e) = self.nodes[i].kv.entities.remove(&key) {
            let me = self.nodes[i].name.clone();
            self.record(now_ms, &format!("{me} stops k{key} ({why}); {} queued requests fail", e.queue.len()));
        }
    }

    /// Serves queued requests of a ready entity, one at a time.
    fn drive(&mut self, now_ms: u64, i: usize, key: usize) {
        let me = self.nodes[i].name.clone();
        loop {
            let Some(e) = self.nodes[i].kv.entities.get_mut(&key) else { return };
            let Phase::Ready { log, busy } = &mut e.phase else { return };
            if *busy {
                return;
            }
            if e.stopping {
                self.stop(now_ms, i, key, "handed off");
                return;
            }
            let Some(req) = e.queue.pop_front() else { return };
            let id = match req {
                ClientReq::Read => {
                    let log = log.clone();
                    self.ledger.reads.insert(key, log);
                    continue;
                }
                ClientReq::Write { id } => id,
            };
            let seq = log.last_seq() + 1;
            *busy = true;
            let set = self.replica_set_in_view(i, key);
            let Some((round, step)) = WriteRound::start(&me, set) else {
                self.stop(now_ms, i, key, "not the owner in its view");
                return;
            };
            let op_id = self.next_id();
            let op = Op::Write { key, seq, id, round, first: Some(step), results: Vec::new() };
            self.nodes[i].kv.ops.insert(op_id, op);
            let req = Req::Write { writer: me.clone(), entries: Log(BTreeMap::from([(seq, id)])), full: false };
            self.ask(now_ms, i, op_id, &me, key, req);
            return;
        }
    }

    /// A client request reaches node `i`.
    fn client(&mut self, now_ms: u64, i: usize, key: usize, req: ClientReq, hops: u8) {
        if self.nodes[i].core.is_none() {
            return;
        }
        let me = self.nodes[i].name.clone();
        match self.owner_in_view(i, key) {
            Err(_) => {}
            Ok(owner) if owner != me => {
                if hops < HOPS_MAX
                    && let Some(to) = self.index(&owner)
                {
                    self.send_body(now_ms, i, to, Body::Client { key, req, hops: hops + 1 });
                }
            }
            Ok(_) => {
                let fresh = !self.nodes[i].kv.entities.contains_key(&key);
                if fresh {
                    self.start_recovery(now_ms, i, key);
                }
                if let Some(e) = self.nodes[i].kv.entities.get_mut(&key) {
                    e.queue.push_back(req);
                }
                self.drive(now_ms, i, key);
            }
        }
    }

    /// The view of node `i` changed: it stops the entities it no longer owns.
    pub(super) fn rehome(&mut self, now_ms: u64, i: usize) {
        let me = self.nodes[i].name.clone();
        let keys: Vec<usize> = self.nodes[i].kv.entities.keys().copied().collect();
        for key in keys {
            if self.owner_in_view(i, key).is_ok_and(|o| o != me)
                && let Some(e) = self.nodes[i].kv.entities.get_mut(&key)
            {
                match e.phase {
                    // The request in progress finishes first (an actor stops between messages).
                    Phase::Ready { busy: true, .. } | Phase::Recovering => e.stopping = true,
                    Phase::Ready { busy: false, .. } => self.stop(now_ms, i, key, "handed off"),
                }
            }
        }
    }

    // ---- the world's side ------------------------------------------------------

    pub(super) fn deliver(&mut self, now_ms: u64, from: usize, to: usize, body: Body, sent_ms: u64) {
        // A link does not outlive either end: what was sent to or from an earlier
        // incarnation is gone.
        if self.nodes[to].core.is_none() || self.nodes[to].started_ms > sent_ms || self.nodes[from].started_ms > sent_ms
        {
            return;
        }
        match body {
            Body::Req { ask, key, req } => {
                self.enqueue(now_ms, to, key, Job { origin: Origin::Remote { ask, from }, req })
            }
            Body::Ans { ask, ans } => self.answer(now_ms, to, ask, Some(ans)),
            Body::Client { key, req, hops } => self.client(now_ms, to, key, req, hops),
        }
    }

    pub(super) fn wake(&mut self, now_ms: u64, i: usize, t: Timer) {
        match t {
            Timer::AskTimeout(ask) => self.answer(now_ms, i, ask, None),
            Timer::DiskDone(key) => self.disk_done(now_ms, i, key),
            Timer::RecoverRetry(op) => self.recovery_round(now_ms, i, op),
        }
    }

    /// A crash: the volatile state goes; a write in flight to the disk is lost.
    pub(super) fn crash_kv(&mut self, now_ms: u64, i: usize) {
        let kv = std::mem::take(&mut self.nodes[i].kv);
        for (key, lock) in kv.locks {
            if lock.started && matches!(lock.jobs.front().map(|j| &j.req), Some(Req::Write { .. })) {
                let me = self.nodes[i].name.clone();
                self.record(now_ms, &format!("{me}: the unsynced write of k{key} is lost with the crash"));
            }
        }
    }

    /// One client write to a random key through a random running node.
    pub(super) fn client_write(&mut self, now_ms: u64) {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].core.is_some()).collect();
        if running.is_empty() || self.cfg.keys == 0 {
            return;
        }
        let i = running[self.rng.random_range(0..running.len())];
        let key = self.rng.random_range(0..self.cfg.keys);
        let id = self.next_id();
        self.ledger.writes += 1;
        self.client(now_ms, i, key, ClientReq::Write { id }, 0);
    }

    /// After the cluster settled: reads every key through its owner.
    pub(super) fn read_all(&mut self, now_ms: u64) {
        let Some(i) = (0..self.nodes.len()).find(|i| self.nodes[*i].core.is_some()) else { return };
        for key in 0..self.cfg.keys {
            self.client(now_ms, i, key, ClientReq::Read, 0);
        }
    }

    /// Every acknowledged write is in the read of its key.
    pub(super) fn check_reads(&mut self, now_ms: u64) {
        let used: BTreeSet<usize> = self.ledger.acked.iter().map(|a| a.key).collect();
        for key in used {
            if !self.ledger.reads.contains_key(&key) {
                self.violations.push(format!("{now_ms} ms: the final read of k{key} did not complete"));
            }
        }
        let mut lost = Vec::new();
        for a in &self.ledger.acked {
            let Some(log) = self.ledger.reads.get(&a.key) else { continue };
            if !log.0.values().any(|v| *v == a.id) {
                let there = log.0.get(&a.seq).map_or("nothing".to_string(), |v| format!("write {v}"));
                lost.push(format!(
                    "acknowledged write lost: write {} of k{} (seq {}, acknowledged by {} at {} ms) is not in the \
                     final read (seq {} holds {there}; the log ends at seq {})",
                    a.id,
                    a.key,
                    a.seq,
                    a.by,
                    a.at_ms,
                    a.seq,
                    log.last_seq()
                ));
            }
        }
        self.violations.extend(lost);
        let reads = self.ledger.reads.len();
        self.record(now_ms, &format!("read check: {reads} keys read, {} acknowledged writes", self.ledger.acked.len()));
    }
}

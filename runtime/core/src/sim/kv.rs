//! Replicated durable state under simulation: a sharded entity per key, each holding an
//! append-only log, persisted as the runtime does it — the same directory
//! ([`crate::directory`]: fixed replica sets, owner = first live member) and the same
//! replication decisions ([`crate::replication`]: elections by term, adoption, majority
//! writes, read barriers) over the simulated network and disks, driven by the
//! membership cores' views.
//!
//! What is modelled after the node shell rather than run: the entity (a log of values,
//! as the kv store's actor keeps; one request at a time; a failed write or read barrier
//! re-recovers it, as the kv actor re-initializes; handoff stops it when the view moves
//! it), the per-path lock of `replica.rs` (one disk job per key per node at a time),
//! the store (data and terms are on disk only after their sync; a crash loses the
//! write in flight — redb's commit is atomic, so a torn last write is discarded at
//! open, which here is the same as lost), and the links (QUIC: reliable and ordered
//! while both ends live and the network joins them; loss costs a retransmission's
//! delay; a partition or a crash drops what is in flight).
//!
//! Checked: after the faults end, every node restarts and the cluster settles, each
//! key is read through its owner; every write that was ever acknowledged must be in
//! the log read. Every read of the run, final ones included, must fit one order per
//! key with the writes ([`NOT_LINEARIZABLE`]).

use super::{Cargo, NOT_LINEARIZABLE, World};
use crate::directory::{self, Kind, Placement, Roster};
use crate::placement::Candidate;
use crate::replication::{
    Check, Elected, Election, Entries, Quorum, Tally, Term, Terms, Versioned, check_adopt, check_append, check_confirm,
    check_prepare,
};
use rand010::RngExt;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use troupe_wire::ActorPath;

/// How long one replication ask may take (the runtime's `REPLICA_TIMEOUT`).
pub(super) const REPLICA_TIMEOUT_MS: u64 = 3_000;
/// How long an election may keep trying (`RECOVER_DEADLINE`).
const RECOVER_DEADLINE_MS: u64 = 10_000;
const RECOVER_RETRY_MS: u64 = 100;
/// Forwarding hops a client request may take between nodes that disagree.
const HOPS_MAX: u8 = 3;
/// One client request in this many is a read.
const READ_ONE_IN: u32 = 4;

/// The simulated kind: sharded, every node eligible, `rf` copies.
fn kind(rf: u64) -> Kind<'static> {
    Kind { system: "sim", name: "log", placement: Placement::Sharded, role: None, rf }
}

/// A key's log: sequence number → value (a write id).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Log(BTreeMap<u64, u64>);

impl Versioned for Log {
    fn last_seq(&self) -> u64 {
        self.0.keys().next_back().copied().unwrap_or(0)
    }
}

impl Log {
    /// Whether `self` is a prefix of `other` (logs have no holes).
    fn prefix_of(&self, other: &Log) -> bool {
        self.0.iter().all(|(s, v)| other.0.get(s) == Some(v))
    }

    fn position(&self, id: u64) -> Option<u64> {
        self.0.iter().find(|(_, v)| **v == id).map(|(s, _)| *s)
    }
}

/// One key's durable state on one node: its log and its terms, committed together.
#[derive(Debug, Clone, Default)]
struct Stored {
    log: Log,
    terms: Terms,
}

/// What survives a crash: the synced state.
#[derive(Default)]
pub(super) struct Disk {
    keys: BTreeMap<usize, Stored>,
}

#[derive(Debug, Clone)]
pub(super) enum Req {
    /// Promise `term` to `asker` and hand over your copy.
    Prepare { asker: String, term: Term },
    /// Hold this copy under `term` (`None`: yours is it already; only the terms change).
    Adopt { term: Term, log: Option<Log> },
    /// Append these entries of the owner of `term`.
    Append { term: Term, entries: Log },
    /// Do you still back the owner of `term`? (a read barrier)
    Confirm { term: Term },
}

#[derive(Debug, Clone)]
pub(super) enum Ans {
    Written,
    Promised { accepted: Term, log: Log },
    NeedCopy(String),
    Fenced(Term),
    Refused(String),
    Confirmed,
}

#[derive(Debug, Clone)]
pub(super) enum ClientReq {
    Write {
        id: u64,
    },
    /// `last`: the final read after the faults, which the loss check uses.
    Read {
        id: u64,
        last: bool,
    },
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
    /// Start another election round of this operation.
    Retry(u64),
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
    Ready { log: Log, term: Term, busy: bool },
}

struct Entity {
    phase: Phase,
    queue: VecDeque<ClientReq>,
    /// Handoff asked it to stop after the request in progress.
    stopping: bool,
}

/// An owner's operation in progress. Each stage has its own id: answers to the asks
/// of a stage that is over find nothing and are dropped.
enum Op {
    /// Waiting to start the next election round (after `seen`).
    Pause {
        key: usize,
        seen: Term,
        deadline_ms: u64,
    },
    Elect {
        key: usize,
        set: Vec<String>,
        election: Election<Log>,
        deadline_ms: u64,
    },
    Adopt {
        key: usize,
        term: Term,
        best: Log,
        send: Vec<(String, bool)>,
        votes: Quorum,
        failed: Option<String>,
        deadline_ms: u64,
    },
    Write {
        key: usize,
        seq: u64,
        id: u64,
        term: Term,
        votes: Quorum,
        failed: Option<String>,
        /// The owner's own disk holds the entry.
        local_done: bool,
        /// Replicas that asked for the whole copy before the owner's disk had it.
        waiting: Vec<String>,
    },
    Confirm {
        key: usize,
        read: (u64, bool),
        log: Log,
        votes: Quorum,
    },
}

impl Op {
    fn key(&self) -> usize {
        match self {
            Op::Pause { key, .. }
            | Op::Elect { key, .. }
            | Op::Adopt { key, .. }
            | Op::Write { key, .. }
            | Op::Confirm { key, .. } => *key,
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

/// A completed read.
#[derive(Debug, Clone)]
struct ReadDone {
    key: usize,
    id: u64,
    invoked_ms: u64,
    done_ms: u64,
    log: Log,
}

/// What the clients saw.
#[derive(Default)]
pub(super) struct Ledger {
    next_id: u64,
    /// When each client request was issued, by id: (key, ms).
    invoked: BTreeMap<u64, (usize, u64)>,
    acked: Vec<Acked>,
    reads: Vec<ReadDone>,
    finals: BTreeMap<usize, Log>,
    pub(super) writes: u64,
    pub(super) acks: u64,
}

struct Everyone<'a>(&'a [String]);

impl Roster for Everyone<'_> {
    fn roles(&self, node: &str) -> Option<&[String]> {
        self.0.iter().any(|n| n == node).then_some(&[])
    }
    fn members(&self) -> Vec<(&str, &[String], f64)> {
        self.0.iter().map(|n| (n.as_str(), &[] as &[String], 1.0)).collect()
    }
}

fn path(key: usize) -> ActorPath {
    ActorPath::new("sim", "log", &format!("k{key}")).expect("valid path")
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
        directory::owner_of(&kind(self.cfg.rf), &path(key), &self.live_view(i), &Everyone(&names))
            .map_err(|e| e.to_string())
    }

    fn replica_set(&self, key: usize) -> Vec<String> {
        let names = self.names();
        directory::replica_set(&kind(self.cfg.rf), &path(key), &Everyone(&names))
    }

    /// A write's votes: a majority of the set, unless the configuration asks for fewer
    /// (the test that shows the simulator finds the loss that follows).
    fn write_votes(&self, set: &[String]) -> Quorum {
        match self.cfg.write_votes {
            Some(n) => Quorum::with_needed(set, n),
            None => Quorum::new(set),
        }
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
        // A request sent again after its reply was lost arrives a second time, late.
        if matches!(body, Body::Req { .. }) && self.rng.random::<f64>() < self.replay {
            let late = delay + self.rng.random_range(0..=REPLICA_TIMEOUT_MS);
            self.push(now_ms + late, from, to, Cargo::Body { body: body.clone(), sent_ms: now_ms });
        }
        self.push(now_ms + delay, from, to, Cargo::Body { body, sent_ms: now_ms });
    }

    fn timer(&mut self, at_ms: u64, node: usize, t: Timer) {
        let epoch = self.nodes[node].epoch;
        self.push(at_ms, node, node, Cargo::Timer { epoch, t });
    }

    // ---- the replica: the store under the per-path lock --------------------------

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
        let stored = self.nodes[i].disk.keys.get(&key).cloned().unwrap_or_default();
        let check = match &req {
            Req::Prepare { asker, term } => {
                let view_owner = self.owner_in_view(i, key);
                let p = path(key).to_string();
                check_prepare(&me, &p, asker, view_owner.as_deref().map_err(Clone::clone), term, &stored.terms)
            }
            Req::Adopt { term, log } => {
                check_adopt(term, &stored.terms, log.as_ref().map(Versioned::last_seq), stored.log.last_seq())
            }
            Req::Append { term, entries } => {
                let first = entries.0.keys().next().copied().unwrap_or(0);
                check_append(term, &stored.terms, Entries::Append { first }, stored.log.last_seq(), 0)
            }
            Req::Confirm { term } => match check_confirm(term, &stored.terms) {
                Check::Accept => return self.finish_job(now_ms, i, key, Ans::Confirmed),
                other => other,
            },
        };
        let done = match check {
            Check::Accept => None,
            Check::NeedCopy(why) => Some(Ans::NeedCopy(why)),
            Check::Fenced(t) => Some(Ans::Fenced(t)),
            Check::NotOwner(why) => Some(Ans::Refused(why)),
            Check::Duplicate => {
                let Req::Append { entries, .. } = &req else {
                    // A late copy of the term this replica holds: already covered.
                    return self.finish_job(now_ms, i, key, Ans::Written);
                };
                if entries.prefix_of(&stored.log) {
                    Some(Ans::Written)
                } else {
                    let line = format!(
                        "{now_ms} ms: {me} was sent entries {:?} of k{key} that differ from its own under one term",
                        entries.0
                    );
                    self.violations.push(format!("{NOT_LINEARIZABLE}: {line}"));
                    Some(Ans::Refused("conflicting entry".into()))
                }
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

    /// The sync of the job at the head of `key`'s lock completed.
    fn disk_done(&mut self, now_ms: u64, i: usize, key: usize) {
        let Some(job) = self.nodes[i].kv.locks.get(&key).and_then(|l| l.jobs.front()) else { return };
        let req = job.req.clone();
        let stored = self.nodes[i].disk.keys.entry(key).or_default();
        let ans = match req {
            Req::Prepare { term, .. } => {
                stored.terms.promised = term;
                Ans::Promised { accepted: stored.terms.accepted.clone(), log: stored.log.clone() }
            }
            Req::Adopt { term, log } => {
                if let Some(log) = log {
                    stored.log = log;
                }
                stored.terms = Terms { promised: term.clone(), accepted: term };
                Ans::Written
            }
            Req::Append { entries, .. } => {
                stored.log.0.extend(entries.0);
                Ans::Written
            }
            Req::Confirm { .. } => Ans::Confirmed,
        };
        self.finish_job(now_ms, i, key, ans);
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

    // ---- the owner: asks and the operations they serve ----------------------------

    fn ask(&mut self, now_ms: u64, i: usize, op: u64, peer: &str, key: usize, req: Req) {
        let ask = self.next_id();
        self.nodes[i].kv.asks.insert(ask, (op, peer.to_string()));
        if peer == self.nodes[i].name {
            self.enqueue(now_ms, i, key, Job { origin: Origin::Local { ask }, req });
            return;
        }
        let Some(to) = self.index(peer) else { return };
        self.send_body(now_ms, i, to, Body::Req { ask, key, req });
        self.timer(now_ms + REPLICA_TIMEOUT_MS, i, Timer::AskTimeout(ask));
    }

    /// Starts a new stage: a fresh op id, so the old stage's late answers are dropped.
    fn stage(&mut self, i: usize, op: Op) -> u64 {
        let id = self.next_id();
        self.nodes[i].kv.ops.insert(id, op);
        id
    }

    /// An answer to ask `ask` (`None`: it timed out).
    fn answer(&mut self, now_ms: u64, i: usize, ask: u64, ans: Option<Ans>) {
        let Some((op_id, peer)) = self.nodes[i].kv.asks.remove(&ask) else { return };
        let me = self.nodes[i].name.clone();
        let local = peer == me;
        let Some(op) = self.nodes[i].kv.ops.get_mut(&op_id) else { return };
        let key = op.key();
        let why = why_not;
        let then = match op {
            Op::Pause { .. } => Then::Nothing,
            Op::Elect { election, .. } => {
                match ans {
                    Some(Ans::Promised { accepted, log }) => election.promised(&peer, accepted, log),
                    Some(Ans::Fenced(t)) => election.fenced(&peer, t),
                    other => election.refused(&peer, why(&other)),
                }
                Then::Nothing
            }
            // The owner adopts the copy on its own disk first, then on the others.
            Op::Adopt { votes, failed, .. } => match ans {
                Some(Ans::Written) => {
                    votes.yes(&peer);
                    if local { Then::AdoptOthers } else { Then::Nothing }
                }
                other => refused(votes, failed, &peer, local, other),
            },
            // The owner's own disk and the others' are written at once; a replica that
            // needs the whole copy gets it once the owner's disk holds the entry.
            Op::Write { votes, failed, term, local_done, waiting, .. } => match ans {
                Some(Ans::Written) if local => {
                    votes.yes(&peer);
                    *local_done = true;
                    Then::Copies(term.clone(), std::mem::take(waiting))
                }
                other if local => refused(votes, failed, &peer, local, other),
                Some(Ans::Written) => {
                    votes.yes(&peer);
                    Then::Nothing
                }
                Some(Ans::NeedCopy(_)) if *local_done => Then::Copies(term.clone(), vec![peer.clone()]),
                Some(Ans::NeedCopy(_)) => {
                    waiting.push(peer.clone());
                    Then::Nothing
                }
                other => refused(votes, failed, &peer, local, other),
            },
            Op::Confirm { votes, .. } => {
                match ans {
                    Some(Ans::Confirmed) => votes.yes(&peer),
                    Some(Ans::Fenced(t)) => votes.fenced(&peer, t),
                    other => votes.no(&peer, why(&other)),
                }
                Then::Nothing
            }
        };
        match then {
            Then::Nothing => {}
            Then::AdoptOthers => {
                // The data goes only to members whose copy differs.
                let Some(Op::Adopt { send, term, best, .. }) = self.nodes[i].kv.ops.get(&op_id) else { return };
                let plan: Vec<(String, Req)> = send
                    .iter()
                    .filter(|(r, _)| *r != me)
                    .map(|(r, data)| (r.clone(), Req::Adopt { term: term.clone(), log: data.then(|| best.clone()) }))
                    .collect();
                for (r, req) in plan {
                    self.ask(now_ms, i, op_id, &r, key, req);
                }
            }
            Then::Copies(term, to) => {
                let log = self.nodes[i].disk.keys.get(&key).map(|s| s.log.clone()).unwrap_or_default();
                for r in to {
                    self.ask(now_ms, i, op_id, &r, key, Req::Adopt { term: term.clone(), log: Some(log.clone()) });
                }
            }
        }
        self.progress(now_ms, i, op_id);
    }

    /// Takes the next step of `op_id` if its stage is decided.
    fn progress(&mut self, now_ms: u64, i: usize, op_id: u64) {
        let me = self.nodes[i].name.clone();
        let Some(op) = self.nodes[i].kv.ops.get(&op_id) else { return };
        match op {
            Op::Pause { .. } => {}
            Op::Elect { key, set, election, deadline_ms } => match election.outcome(set) {
                Elected::Pending => {}
                Elected::Won { best, send } => {
                    let (key, deadline_ms, term) = (*key, *deadline_ms, election.term().clone());
                    let votes = Quorum::new(set);
                    self.nodes[i].kv.ops.remove(&op_id);
                    let mine = send.iter().find(|(r, _)| *r == me).is_none_or(|(_, d)| *d);
                    let req = Req::Adopt { term: term.clone(), log: mine.then(|| best.clone()) };
                    let op = Op::Adopt { key, term, best, send, votes, failed: None, deadline_ms };
                    let id = self.stage(i, op);
                    self.ask(now_ms, i, id, &me, key, req);
                }
                Elected::Lost { seen, problems } => {
                    let (key, deadline_ms) = (*key, *deadline_ms);
                    self.nodes[i].kv.ops.remove(&op_id);
                    self.retry_election(now_ms, i, key, seen, deadline_ms, &problems);
                }
            },
            Op::Adopt { votes, failed, .. } => match failed.clone().map_or_else(|| votes.tally(), Tally::Lost) {
                Tally::Pending => {}
                Tally::Won => {
                    let Some(Op::Adopt { key, term, best, .. }) = self.nodes[i].kv.ops.remove(&op_id) else {
                        return;
                    };
                    self.record(
                        now_ms,
                        &format!("{me} owns k{key} under term {} up to seq {}", term.n, best.last_seq()),
                    );
                    if let Some(e) = self.nodes[i].kv.entities.get_mut(&key) {
                        e.phase = Phase::Ready { log: best, term, busy: false };
                    }
                    self.drive(now_ms, i, key);
                }
                Tally::Lost(why) => {
                    let Some(Op::Adopt { key, term, deadline_ms, votes, .. }) = self.nodes[i].kv.ops.remove(&op_id)
                    else {
                        return;
                    };
                    let seen = votes.newer().cloned().unwrap_or(term);
                    self.retry_election(now_ms, i, key, seen, deadline_ms, &why);
                }
            },
            Op::Write { votes, failed, local_done, .. } => {
                match failed.clone().map_or_else(|| votes.tally(), Tally::Lost) {
                    // Acknowledged only once the owner's own disk holds it too.
                    Tally::Pending => {}
                    Tally::Won if !local_done => {}
                    Tally::Won => {
                        let Some(Op::Write { key, seq, id, .. }) = self.nodes[i].kv.ops.remove(&op_id) else { return };
                        self.ledger.acks += 1;
                        self.ledger.acked.push(Acked { key, id, seq, at_ms: now_ms, by: me.clone() });
                        self.record(now_ms, &format!("{me} acks write {id} of k{key} at seq {seq}"));
                        if let Some(Entity { phase: Phase::Ready { log, busy, .. }, .. }) =
                            self.nodes[i].kv.entities.get_mut(&key)
                        {
                            log.0.insert(seq, id);
                            *busy = false;
                        }
                        self.drive(now_ms, i, key);
                    }
                    Tally::Lost(why) => {
                        let Some(Op::Write { key, id, .. }) = self.nodes[i].kv.ops.remove(&op_id) else { return };
                        self.record(now_ms, &format!("{me} fails write {id} of k{key}: {why}"));
                        // The kv actor re-initializes after a failed write: it recovers again.
                        self.start_recovery(now_ms, i, key);
                    }
                }
            }
            Op::Confirm { votes, .. } => match votes.tally() {
                Tally::Pending => {}
                Tally::Won => {
                    let Some(Op::Confirm { key, read, log, .. }) = self.nodes[i].kv.ops.remove(&op_id) else {
                        return;
                    };
                    self.served_read(now_ms, key, read, log);
                    if let Some(Entity { phase: Phase::Ready { busy, .. }, .. }) =
                        self.nodes[i].kv.entities.get_mut(&key)
                    {
                        *busy = false;
                    }
                    self.drive(now_ms, i, key);
                }
                Tally::Lost(why) => {
                    let Some(Op::Confirm { key, read, .. }) = self.nodes[i].kv.ops.remove(&op_id) else { return };
                    self.record(now_ms, &format!("{me} fails read {} of k{key}: {why}", read.0));
                    // The final reads are retried, as a client would until it gets an answer.
                    if read.1
                        && let Some(e) = self.nodes[i].kv.entities.get_mut(&key)
                    {
                        e.queue.push_front(ClientReq::Read { id: read.0, last: true });
                    }
                    self.start_recovery(now_ms, i, key);
                }
            },
        }
    }

    fn retry_election(&mut self, now_ms: u64, i: usize, key: usize, seen: Term, deadline_ms: u64, why: &str) {
        if now_ms >= deadline_ms {
            self.stop(now_ms, i, key, &format!("no majority promised ({why})"));
            return;
        }
        let id = self.stage(i, Op::Pause { key, seen, deadline_ms });
        self.timer(now_ms + RECOVER_RETRY_MS, i, Timer::Retry(id));
    }

    // ---- entities --------------------------------------------------------------

    fn start_recovery(&mut self, now_ms: u64, i: usize, key: usize) {
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
        self.elect(now_ms, i, key, Term::default(), now_ms + RECOVER_DEADLINE_MS);
    }

    /// One election round: a term above everything seen, asked of the whole set.
    fn elect(&mut self, now_ms: u64, i: usize, key: usize, seen: Term, deadline_ms: u64) {
        let me = self.nodes[i].name.clone();
        if self.owner_in_view(i, key).ok().as_deref() != Some(me.as_str()) {
            self.stop(now_ms, i, key, "does not own the key in its view");
            return;
        }
        let set = self.replica_set(key);
        let local = self.nodes[i].disk.keys.get(&key).map(|s| s.terms.promised.clone()).unwrap_or_default();
        let term = Term::after(&seen.max(local), &me, self.nodes[i].epoch);
        let election = Election::new(&me, term.clone(), &set);
        let id = self.stage(i, Op::Elect { key, set: set.clone(), election, deadline_ms });
        for r in set {
            self.ask(now_ms, i, id, &r, key, Req::Prepare { asker: me.clone(), term: term.clone() });
        }
    }

    fn stop(&mut self, now_ms: u64, i: usize, key: usize, why: &str) {
        if let Some(e) = self.nodes[i].kv.entities.remove(&key) {
            let me = self.nodes[i].name.clone();
            self.record(now_ms, &format!("{me} stops k{key} ({why}); {} queued requests fail", e.queue.len()));
        }
        let stale: Vec<u64> = self.nodes[i].kv.ops.iter().filter(|(_, o)| o.key() == key).map(|(id, _)| *id).collect();
        for id in stale {
            self.nodes[i].kv.ops.remove(&id);
        }
    }

    /// Serves queued requests of a ready entity, one at a time.
    fn drive(&mut self, now_ms: u64, i: usize, key: usize) {
        let me = self.nodes[i].name.clone();
        let set = self.replica_set(key);
        let Some(e) = self.nodes[i].kv.entities.get_mut(&key) else { return };
        let Phase::Ready { log, term, busy } = &mut e.phase else { return };
        if *busy {
            return;
        }
        if e.stopping {
            self.stop(now_ms, i, key, "handed off");
            return;
        }
        let Some(req) = e.queue.pop_front() else { return };
        *busy = true;
        let term = term.clone();
        match req {
            ClientReq::Read { id, last } => {
                let log = log.clone();
                let votes = Quorum::new(&set);
                let op = self.stage(i, Op::Confirm { key, read: (id, last), log, votes });
                for r in set {
                    self.ask(now_ms, i, op, &r, key, Req::Confirm { term: term.clone() });
                }
            }
            ClientReq::Write { id } => {
                let seq = log.last_seq() + 1;
                let votes = self.write_votes(&set);
                let write = Op::Write {
                    key,
                    seq,
                    id,
                    term: term.clone(),
                    votes,
                    failed: None,
                    local_done: false,
                    waiting: vec![],
                };
                let op = self.stage(i, write);
                let entries = Log(BTreeMap::from([(seq, id)]));
                // Its own disk first in the queue, then the others, all at once.
                self.ask(now_ms, i, op, &me, key, Req::Append { term: term.clone(), entries: entries.clone() });
                for r in set.into_iter().filter(|r| *r != me) {
                    self.ask(now_ms, i, op, &r, key, Req::Append { term: term.clone(), entries: entries.clone() });
                }
            }
        }
    }

    fn served_read(&mut self, now_ms: u64, key: usize, (id, last): (u64, bool), log: Log) {
        let invoked_ms = self.ledger.invoked.get(&id).map_or(now_ms, |(_, t)| *t);
        if last {
            self.ledger.finals.insert(key, log.clone());
        }
        self.ledger.reads.push(ReadDone { key, id, invoked_ms, done_ms: now_ms, log });
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
                if !self.nodes[i].kv.entities.contains_key(&key) {
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
            Timer::Retry(op) => {
                if let Some(Op::Pause { key, seen, deadline_ms }) = self.nodes[i].kv.ops.remove(&op) {
                    self.elect(now_ms, i, key, seen, deadline_ms);
                }
            }
        }
    }

    /// A crash: the volatile state goes; a write in flight to the disk is lost.
    pub(super) fn crash_kv(&mut self, now_ms: u64, i: usize) {
        let kv = std::mem::take(&mut self.nodes[i].kv);
        for (key, lock) in kv.locks {
            if lock.started && !matches!(lock.jobs.front().map(|j| &j.req), Some(Req::Confirm { .. })) {
                let me = self.nodes[i].name.clone();
                self.record(now_ms, &format!("{me}: the unsynced write of k{key} is lost with the crash"));
            }
        }
    }

    /// One client request (a write, or one in [`READ_ONE_IN`] a read) to a random key
    /// through a random running node.
    pub(super) fn client_request(&mut self, now_ms: u64) {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].core.is_some()).collect();
        if running.is_empty() || self.cfg.keys == 0 {
            return;
        }
        let i = running[self.rng.random_range(0..running.len())];
        let key = self.rng.random_range(0..self.cfg.keys);
        let id = self.next_id();
        self.ledger.invoked.insert(id, (key, now_ms));
        let req = if self.rng.random_range(0..READ_ONE_IN) == 0 {
            ClientReq::Read { id, last: false }
        } else {
            self.ledger.writes += 1;
            ClientReq::Write { id }
        };
        self.client(now_ms, i, key, req, 0);
    }

    /// After the cluster settled: reads every key through its owner.
    pub(super) fn read_all(&mut self, now_ms: u64) {
        let Some(i) = (0..self.nodes.len()).find(|i| self.nodes[*i].core.is_some()) else { return };
        for key in 0..self.cfg.keys {
            let id = self.next_id();
            self.ledger.invoked.insert(id, (key, now_ms));
            self.client(now_ms, i, key, ClientReq::Read { id, last: true }, 0);
        }
    }

    /// Every acknowledged write is in the final read of its key, and the history of
    /// each key fits one order.
    pub(super) fn check_reads(&mut self, now_ms: u64) {
        let used: BTreeSet<usize> = self.ledger.acked.iter().map(|a| a.key).collect();
        for key in used {
            if !self.ledger.finals.contains_key(&key) {
                self.violations.push(format!("{now_ms} ms: the final read of k{key} did not complete"));
            }
        }
        let mut lost = Vec::new();
        for a in &self.ledger.acked {
            let Some(log) = self.ledger.finals.get(&a.key) else { continue };
            if !log.0.values().any(|v| *v == a.id) {
                let there = log.0.get(&a.seq).map_or("nothing".to_string(), |v| format!("write {v}"));
                lost.push(format!(
                    "{}: write {} of k{} (seq {}, acknowledged by {} at {} ms) is not in the final read (seq {} \
                     holds {there}; the log ends at seq {})",
                    super::WRITE_LOST,
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
        let broken = linearizable(&self.ledger);
        self.violations.extend(broken.into_iter().map(|b| format!("{NOT_LINEARIZABLE}: {b}")));
        let reads = self.ledger.finals.len();
        self.record(
            now_ms,
            &format!(
                "read check: {reads} keys read, {} acknowledged writes, {} reads checked",
                self.ledger.acked.len(),
                self.ledger.reads.len()
            ),
        );
    }
}

/// What the owner sends next after an answer, once the borrow of the op is over.
enum Then {
    Nothing,
    /// The owner's own disk holds the adopted copy: on to the other members.
    AdoptOthers,
    /// These replicas need the owner's whole copy (read from its disk).
    Copies(Term, Vec<String>),
}

/// Counts an answer that is not a yes to an adoption or a write: the owner's own disk
/// refusing fails the round; a replica's refusal is a no (a newer term's, a fence).
fn refused(votes: &mut Quorum, failed: &mut Option<String>, peer: &str, local: bool, ans: Option<Ans>) -> Then {
    match ans {
        other if local => *failed = Some(format!("the owner's own disk did not take it: {}", why_not(&other))),
        Some(Ans::Fenced(t)) => votes.fenced(peer, t),
        other => votes.no(peer, why_not(&other)),
    }
    Then::Nothing
}

fn why_not(a: &Option<Ans>) -> String {
    match a {
        None => "timed out".to_string(),
        Some(Ans::Refused(w) | Ans::NeedCopy(w)) => w.clone(),
        Some(other) => format!("answered {other:?}"),
    }
}

/// Checks each key's history of an append-only log against linearizability: reads
/// return logs, and one order of all writes must explain every read at a point between
/// its invocation and its completion. For a log with unique values that is: the reads
/// are prefixes of one another; a read that completed before another began is not the
/// longer one; a write acknowledged before a read began is in it; a write issued
/// after a read completed is not; and a write acknowledged before another was issued
/// comes first.
fn linearizable(l: &Ledger) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<usize> = l.reads.iter().map(|r| r.key).collect();
    for key in keys {
        let mut reads: Vec<&ReadDone> = l.reads.iter().filter(|r| r.key == key).collect();
        reads.sort_by_key(|r| (r.log.0.len(), r.done_ms));
        for w in reads.windows(2) {
            if !w[0].log.prefix_of(&w[1].log) {
                out.push(format!(
                    "k{key}: read {} ({:?}) and read {} ({:?}) are not prefixes of one another",
                    w[0].id, w[0].log.0, w[1].id, w[1].log.0
                ));
            }
        }
        let Some(longest) = reads.last().map(|r| &r.log) else { continue };
        for a in reads.iter() {
            for b in reads.iter() {
                if a.done_ms < b.invoked_ms && a.log.0.len() > b.log.0.len() {
                    out.push(format!(
                        "k{key}: read {} ended at {} ms with {} entries, the later read {} (from {} ms) saw {}",
                        a.id,
                        a.done_ms,
                        a.log.0.len(),
                        b.id,
                        b.invoked_ms,
                        b.log.0.len()
                    ));
                }
            }
        }
        let acked: Vec<&Acked> = l.acked.iter().filter(|a| a.key == key).collect();
        for r in &reads {
            for a in &acked {
                if a.at_ms < r.invoked_ms && r.log.position(a.id).is_none() {
                    out.push(format!(
                        "k{key}: write {} acknowledged at {} ms is missing from read {} issued at {} ms",
                        a.id, a.at_ms, r.id, r.invoked_ms
                    ));
                }
            }
            for (seq, v) in &r.log.0 {
                if l.invoked.get(v).is_some_and(|(_, t)| *t > r.done_ms) {
                    out.push(format!(
                        "k{key}: read {} done at {} ms saw write {v} (seq {seq}) issued after it",
                        r.id, r.done_ms
                    ));
                }
            }
        }
        for a in &acked {
            for b in &acked {
                let b_invoked = l.invoked.get(&b.id).map_or(0, |(_, t)| *t);
                if a.at_ms < b_invoked
                    && let (Some(pa), Some(pb)) = (longest.position(a.id), longest.position(b.id))
                    && pa > pb
                {
                    out.push(format!(
                        "k{key}: write {} was acknowledged before write {} was issued, yet follows it",
                        a.id, b.id
                    ));
                }
            }
        }
    }
    out.truncate(20);
    out
}

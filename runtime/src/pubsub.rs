//! Distributed publish/subscribe and process groups (Erlang's `pg`, Akka's
//! distributed pub/sub are the models): topics with subscribers on any node, and named
//! groups of actors across the cluster.
//!
//! Each node keeps its own subscribers and group members ([`PubSub::of`] the node),
//! and tells every other node which topics it has subscribers for and which group
//! members it holds: at once when that changes, to a member as soon as it joins, and
//! every [`RESYNC`] to everyone (a lost announcement repairs itself). A node's
//! announcements carry its boot epoch and a version; a member that goes down is
//! forgotten on its member-down event, with its subscribers and group members.
//!
//! **Publish** goes once to each node that has subscribers for the topic — one
//! message per node, not per subscriber — through the node's built-in broker actor
//! (`/troupe/pubsub/<node>`), which hands it to the local subscribers. A
//! [`Publisher`] numbers its messages; they reach every subscriber in that order
//! (one lane per pair of nodes, and one publish at a time per publisher).
//! [`Publisher::publish`] is at-most-once: a subscriber whose queue is full misses the
//! message (counted in `troupe_pubsub_dropped_total`), a node that cannot be reached
//! misses it. [`Publisher::publish_acked`] waits for every node's broker to have
//! handed the message to every local subscriber (waiting for room) and says how many
//! got it, or which node failed.
//!
//! A subscription made on one node reaches a publisher on another after that node has
//! heard of it (an announcement: a few milliseconds on a LAN, at most [`RESYNC`]);
//! [`PubSub::nodes_for`] tells what a node knows.

use crate::metrics::Counter;
use crate::node::Node;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use troupe_wire::introspect::MemberState;
use troupe_wire::{ActorPath, Protocol, RemoteError};

/// How often every node announces its topics and groups to everyone.
pub const RESYNC: Duration = Duration::from_secs(2);

/// Messages a subscriber may have waiting before it misses published ones.
pub const SUBSCRIBER_QUEUE: usize = 1024;

/// Publisher instances whose last number a node keeps (to drop duplicates and
/// overtaken messages); the oldest first seen is forgotten past this.
pub const PUBLISHERS_KEPT: usize = 65_536;

/// How long an acknowledged publish waits for one node's broker.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// One published message, as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The topic it was published on.
    pub topic: String,
    /// Who published it: `<node>/<publisher name>`.
    pub publisher: String,
    /// Its number from that publisher, from 1 up; a subscriber sees a publisher's
    /// numbers in order (a gap: messages it missed).
    pub seq: u64,
    /// Which [`Publisher`] object of that name (a new one numbers from 1 again).
    pub instance: u64,
    /// What was published (bytes; [`Published::decode`] for a typed payload).
    pub payload: Vec<u8>,
}

impl Published {
    /// The payload as a value published with [`Publisher::publish`] of a type.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, troupe_wire::codec::CodecError> {
        troupe_wire::codec::decode(&self.payload)
    }
}

/// The broker protocol between nodes (`/troupe/pubsub/<node>`).
pub struct Broker;

impl Protocol for Broker {
    type Msg = BrokerMsg;
    type Reply = BrokerReply;
    const NAME: &'static str = "troupe.pubsub";
}

/// What one node's broker tells another's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BrokerMsg {
    /// A published message for this node's subscribers.
    Deliver {
        /// The message.
        msg: Published,
        /// Answer [`BrokerReply::Delivered`] once every local subscriber has it
        /// (waiting for room); otherwise a full subscriber misses it.
        acked: bool,
    },
    /// The sender's topics with subscribers and its group members.
    Interest {
        /// The sending node.
        node: String,
        /// Its boot epoch.
        epoch: u64,
        /// The version of its topics and groups within that boot.
        version: u64,
        /// Topics it has subscribers for.
        topics: Vec<String>,
        /// Its groups and their members' paths.
        groups: Vec<(String, Vec<String>)>,
    },
}

/// A broker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BrokerReply {
    /// Local subscribers got the message.
    Delivered {
        /// How many.
        subscribers: u64,
    },
}

/// What one acknowledged publish reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message's number from its publisher.
    pub seq: u64,
    /// The nodes it was sent to (those with subscribers, as this node knows them).
    pub nodes: Vec<String>,
    /// Subscribers that got it (acknowledged publishes only; 0 otherwise).
    pub subscribers: u64,
    /// Nodes that did not acknowledge it, with the reason.
    pub failed: Vec<(String, RemoteError)>,
}

struct Sub {
    id: u64,
    tx: mpsc::Sender<Published>,
}

/// What another node announced.
#[derive(Default)]
struct Remote {
    epoch: u64,
    version: u64,
    topics: BTreeSet<String>,
    groups: BTreeMap<String, Vec<String>>,
}

#[derive(Default)]
struct State {
    subs: HashMap<String, Vec<Sub>>,
    /// group → (membership id → actor path)
    groups: BTreeMap<String, BTreeMap<u64, String>>,
    remote: BTreeMap<String, Remote>,
    /// The last boot epoch of each member seen going down: an announcement of that
    /// incarnation arriving late is ignored.
    down: BTreeMap<String, u64>,
    /// The last number handed out from each publisher instance, and the order they
    /// were first seen in (the oldest are forgotten past [`PUBLISHERS_KEPT`]).
    last_seq: HashMap<(String, u64), u64>,
    seen: std::collections::VecDeque<(String, u64)>,
    next_id: u64,
}

/// One node's pub/sub and process groups; [`PubSub::of`] a node.
pub struct PubSub {
    node: Node,
    state: Mutex<State>,
    version: AtomicU64,
    dirty: tokio::sync::Notify,
    pub(crate) dropped: Counter,
    delivered: Counter,
    /// (node, topic) pairs of other nodes this node has heard of.
    remote_topics: crate::metrics::Gauge,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub").field("node", &self.node.name()).finish_non_exhaustive()
    }
}

impl PubSub {
    /// This node's pub/sub (made on first use).
    pub fn of(node: &Node) -> Arc<PubSub> {
        let made: Result<Arc<PubSub>, std::convert::Infallible> = node.extension(|| {
            let m = node.metrics();
            Ok(PubSub {
                node: node.clone(),
                state: Mutex::new(State::default()),
                version: AtomicU64::new(0),
                dirty: tokio::sync::Notify::new(),
                dropped: m.counter(
                    "troupe_pubsub_dropped_total",
                    "Published messages a local subscriber missed: its queue was full",
                    &[],
                ),
                delivered: m.counter(
                    "troupe_pubsub_delivered_total",
                    "Published messages handed to local subscribers",
                    &[],
                ),
                remote_topics: m.gauge(
                    "troupe_pubsub_remote_topics",
                    "Topics with subscribers on other nodes this node has heard of, counted once per node",
                    &[],
                ),
            })
        });
        match made {
            Ok(p) => p,
            Err(never) => match never {},
        }
    }

    /// Subscribes to `topic` on this node, with a queue of [`SUBSCRIBER_QUEUE`];
    /// dropping the [`Subscription`] unsubscribes.
    pub fn subscribe(self: &Arc<Self>, topic: &str) -> Subscription {
        self.subscribe_with(topic, SUBSCRIBER_QUEUE)
    }

    /// Subscribes with a queue of `queue` messages.
    pub fn subscribe_with(self: &Arc<Self>, topic: &str, queue: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (id, first) = {
            let mut st = self.state.lock();
            st.next_id += 1;
            let id = st.next_id;
            let list = st.subs.entry(topic.to_string()).or_default();
            list.push(Sub { id, tx });
            (id, list.len() == 1)
        };
        if first {
            self.changed();
        }
        Subscription { pubsub: self.clone(), topic: topic.to_string(), id, rx }
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        let last = {
            let mut st = self.state.lock();
            let Some(list) = st.subs.get_mut(topic) else { return };
            list.retain(|s| s.id != id);
            let empty = list.is_empty();
            if empty {
                st.subs.remove(topic);
            }
            empty
        };
        if last {
            self.changed();
        }
    }

    /// Adds `path` to `group` (any actor, on this node) until the [`GroupMember`] is
    /// dropped.
    pub fn join(self: &Arc<Self>, group: &str, path: &ActorPath) -> GroupMember {
        let id = {
            let mut st = self.state.lock();
            st.next_id += 1;
            let id = st.next_id;
            st.groups.entry(group.to_string()).or_default().insert(id, path.to_string());
            id
        };
        self.changed();
        GroupMember { pubsub: self.clone(), group: group.to_string(), id }
    }

    fn leave(&self, group: &str, id: u64) {
        {
            let mut st = self.state.lock();
            let Some(members) = st.groups.get_mut(group) else { return };
            members.remove(&id);
            if members.is_empty() {
                st.groups.remove(group);
            }
        }
        self.changed();
    }

    /// Every member of `group` this node knows of, on any node (each path once).
    pub fn members(&self, group: &str) -> Vec<ActorPath> {
        let st = self.state.lock();
        let mut paths: BTreeSet<String> = st.groups.get(group).into_iter().flat_map(|m| m.values().cloned()).collect();
        for r in st.remote.values() {
            if let Some(m) = r.groups.get(group) {
                paths.extend(m.iter().cloned());
            }
        }
        paths.into_iter().filter_map(|p| ActorPath::parse(&p).ok()).collect()
    }

    /// The nodes with subscribers for `topic`, as this node knows them (itself
    /// included when it has some), in name order.
    pub fn nodes_for(&self, topic: &str) -> Vec<String> {
        let st = self.state.lock();
        let mut nodes: Vec<String> =
            st.remote.iter().filter(|(_, r)| r.topics.contains(topic)).map(|(n, _)| n.clone()).collect();
        if st.subs.contains_key(topic) {
            nodes.push(self.node.name().to_string());
        }
        nodes.sort();
        nodes
    }

    /// A publisher named `name` (unique on this node for its numbering to mean
    /// anything); its messages are numbered from 1.
    pub fn publisher(self: &Arc<Self>, name: &str) -> Publisher {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let instance = self.node.epoch().wrapping_mul(1_000_003) ^ INSTANCES.fetch_add(1, Ordering::Relaxed);
        Publisher {
            pubsub: self.clone(),
            instance,
            id: format!("{}/{name}", self.node.name()),
            seq: Arc::new(tokio::sync::Mutex::new(0)),
            queues: Arc::default(),
        }
    }

    /// Hands `msg` to this node's subscribers of its topic: without waiting (a full
    /// queue misses it) or, `wait`ing, for room in each (at most [`ACK_TIMEOUT`] per
    /// subscriber). Returns how many got it. A message numbered at or below the last
    /// one handed out from its publisher (a retry's duplicate, or one overtaken) is
    /// dropped: subscribers may see a gap, never a duplicate or a reordering.
    pub(crate) async fn deliver(&self, msg: &Published, wait: bool) -> u64 {
        let targets: Vec<mpsc::Sender<Published>> = {
            let mut st = self.state.lock();
            let key = (msg.publisher.clone(), msg.instance);
            match st.last_seq.get_mut(&key) {
                Some(last) if msg.seq <= *last => return 0,
                Some(last) => *last = msg.seq,
                None => {
                    st.last_seq.insert(key.clone(), msg.seq);
                    st.seen.push_back(key);
                    if st.seen.len() > PUBLISHERS_KEPT
                        && let Some(old) = st.seen.pop_front()
                    {
                        st.last_seq.remove(&old);
                    }
                }
            }
            st.subs.get(&msg.topic).map(|l| l.iter().map(|s| s.tx.clone()).collect()).unwrap_or_default()
        };
        let mut got = 0;
        for tx in targets {
            let ok = if wait {
                tx.send_timeout(msg.clone(), ACK_TIMEOUT).await.is_ok()
            } else {
                tx.try_send(msg.clone()).is_ok()
            };
            if ok {
                got += 1;
            } else if !tx.is_closed() {
                self.dropped.inc();
            }
        }
        self.delivered.add(got);
        got
    }

    /// This node's announcement.
    fn interest(&self) -> BrokerMsg {
        let st = self.state.lock();
        BrokerMsg::Interest {
            node: self.node.name().to_string(),
            epoch: self.node.epoch(),
            version: self.version.load(Ordering::SeqCst),
            topics: st.subs.keys().cloned().collect(),
            groups: st.groups.iter().map(|(g, m)| (g.clone(), m.values().cloned().collect())).collect(),
        }
    }

    /// Local topics or groups changed: a new version, announced to every member by
    /// the broker's announcer (changes close together go out as one announcement).
    fn changed(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.dirty.notify_one();
    }

    /// Waits for a change to announce (the broker's announcer task).
    pub(crate) async fn next_change(&self) {
        self.dirty.notified().await
    }

    /// Tells `to` (or every other live member) this node's topics and groups.
    pub(crate) fn announce(&self, to: Option<String>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let targets: Vec<String> = match to {
            Some(n) => vec![n],
            None => self
                .node
                .members()
                .into_iter()
                .filter(|m| m.name != self.node.name() && m.state == MemberState::Alive)
                .map(|m| m.name)
                .collect(),
        };
        if targets.is_empty() {
            return;
        }
        let msg = self.interest();
        let node = self.node.clone();
        handle.spawn(async move {
            for n in targets {
                let Ok(path) = ActorPath::new("troupe", "pubsub", &n) else { continue };
                let broker = node.handle::<Broker>(path);
                // A member that just joined may not run its broker yet: a few more tries
                // (the resync repairs whatever is still lost, within RESYNC).
                for pause in [0, 100, 300, 600] {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    if broker.tell(msg.clone()).await.is_ok() {
                        break;
                    }
                }
            }
        });
    }

    /// Another node's announcement: kept if newer than what this node holds of it.
    pub(crate) fn heard(
        &self,
        node: String,
        epoch: u64,
        version: u64,
        topics: Vec<String>,
        groups: Vec<(String, Vec<String>)>,
    ) {
        if node == self.node.name() {
            return;
        }
        let mut st = self.state.lock();
        if st.down.get(&node).is_some_and(|&gone| epoch <= gone) {
            return;
        }
        let r = st.remote.entry(node).or_default();
        if (epoch, version) <= (r.epoch, r.version) && r.epoch != 0 {
            return;
        }
        *r = Remote { epoch, version, topics: topics.into_iter().collect(), groups: groups.into_iter().collect() };
        self.count_remote(&st);
    }

    fn count_remote(&self, st: &State) {
        self.remote_topics.set(st.remote.values().map(|r| r.topics.len()).sum::<usize>() as f64);
    }

    /// A member is alive in `epoch`: announcements of older incarnations are void,
    /// and a member that came back in the same incarnation (declared down, then
    /// refuted) is heard again.
    pub(crate) fn revive(&self, node: &str, epoch: u64) {
        let mut st = self.state.lock();
        if st.remote.get(node).is_some_and(|r| r.epoch < epoch) {
            st.remote.remove(node);
        }
        if let Some(gone) = st.down.get_mut(node)
            && *gone >= epoch
        {
            *gone = epoch.saturating_sub(1);
        }
        self.count_remote(&st);
    }

    /// Forgets every member the view no longer holds alive or suspect (events can
    /// be missed: a lagging subscriber, a broker restart).
    pub(crate) fn reconcile(&self) {
        let live: BTreeMap<String, u64> = self
            .node
            .members()
            .into_iter()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| (m.name, m.epoch))
            .collect();
        let mut st = self.state.lock();
        st.remote.retain(|n, r| live.get(n).is_some_and(|&e| e == r.epoch));
        self.count_remote(&st);
    }

    /// A member went down: what its incarnation `epoch` (and any older one)
    /// announced is void.
    pub(crate) fn forget(&self, node: &str, epoch: u64) {
        let mut st = self.state.lock();
        if st.remote.get(node).is_some_and(|r| r.epoch <= epoch) {
            st.remote.remove(node);
        }
        let gone = st.down.entry(node.to_string()).or_insert(0);
        *gone = (*gone).max(epoch);
        self.count_remote(&st);
    }
}

/// A subscription to one topic on this node; dropping it unsubscribes.
pub struct Subscription {
    pubsub: Arc<PubSub>,
    topic: String,
    id: u64,
    rx: mpsc::Receiver<Published>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next message published on the topic.
    pub async fn recv(&mut self) -> Option<Published> {
        self.rx.recv().await
    }
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.pubsub.unsubscribe(&self.topic, self.id);
    }
}

/// Membership of one actor in one group; dropping it leaves the group.
pub struct GroupMember {
    pubsub: Arc<PubSub>,
    group: String,
    id: u64,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember").field("group", &self.group).finish_non_exhaustive()
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.pubsub.leave(&self.group, self.id);
    }
}

/// Publishes numbered messages; cheap to clone (clones share the numbering and the
/// queues).
///
/// Each destination node has a queue of its own (at most [`PUBLISH_QUEUE`]
/// messages) drained in order by one task, so a slow or unreachable node delays
/// nobody else and the publisher never waits on the network for a plain publish.
#[derive(Clone)]
pub struct Publisher {
    pubsub: Arc<PubSub>,
    id: String,
    instance: u64,
    /// The last number used; held across a publish so messages are queued in order.
    seq: Arc<tokio::sync::Mutex<u64>>,
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Outgoing>>>>,
}

/// Messages one publisher may have waiting for one node before it misses more.
pub const PUBLISH_QUEUE: usize = 4096;

/// One message on its way to one node; `ack` for an acknowledged publish.
struct Outgoing {
    msg: Published,
    ack: Option<tokio::sync::oneshot::Sender<Result<u64, RemoteError>>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Publisher {
    /// This publisher's name in [`Published::publisher`].
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Publishes `value` (encoded with troupe's codec) on `topic`, at most once.
    pub async fn publish<T: Serialize>(&self, topic: &str, value: &T) -> Result<Delivery, RemoteError> {
        let payload = troupe_wire::codec::encode(value).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        self.publish_bytes(topic, payload, false).await
    }

    /// Publishes `value` and waits until every node with subscribers has handed it
    /// to each of them ([`Delivery::subscribers`], [`Delivery::failed`]).
    pub async fn publish_acked<T: Serialize>(&self, topic: &str, value: &T) -> Result<Delivery, RemoteError> {
        let payload = troupe_wire::codec::encode(value).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        self.publish_bytes(topic, payload, true).await
    }

    /// The queue to `node`, with its drain task started on first use.
    fn queue(&self, node: &str) -> Result<mpsc::Sender<Outgoing>, RemoteError> {
        let mut queues = self.queues.lock();
        if let Some(q) = queues.get(node)
            && !q.is_closed()
        {
            return Ok(q.clone());
        }
        let path = ActorPath::new("troupe", "pubsub", node).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        let handle = self.pubsub.node.handle::<Broker>(path);
        let (tx, mut rx) = mpsc::channel::<Outgoing>(PUBLISH_QUEUE);
        // One task per destination: deliveries to one node leave in order, from one
        // task (so on one lane).
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                match out.ack {
                    None => {
                        let _ = handle.tell(BrokerMsg::Deliver { msg: out.msg, acked: false }).await;
                    }
                    Some(answer) => {
                        let r = handle.ask_timeout(BrokerMsg::Deliver { msg: out.msg, acked: true }, ACK_TIMEOUT).await;
                        let _ = answer.send(r.map(|BrokerReply::Delivered { subscribers }| subscribers));
                    }
                }
            }
        });
        queues.insert(node.to_string(), tx.clone());
        Ok(tx)
    }

    /// Publishes raw bytes.
    pub async fn publish_bytes(&self, topic: &str, payload: Vec<u8>, acked: bool) -> Result<Delivery, RemoteError> {
        let mut seq = self.seq.lock().await;
        *seq += 1;
        let msg = Published {
            topic: topic.to_string(),
            publisher: self.id.clone(),
            seq: *seq,
            instance: self.instance,
            payload,
        };
        let me = self.pubsub.node.name().to_string();
        let nodes = self.pubsub.nodes_for(topic);
        let mut report = Delivery { seq: *seq, nodes: nodes.clone(), subscribers: 0, failed: Vec::new() };
        let mut waits = Vec::new();
        for n in &nodes {
            if *n == me {
                // Local subscribers: by the same rule as a broker's.
                let got = self.pubsub.deliver(&msg, acked).await;
                if acked {
                    report.subscribers += got;
                }
                continue;
            }
            let queue = self.queue(n)?;
            let (ack, answer) = if acked {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            match queue.try_send(Outgoing { msg: msg.clone(), ack }) {
                Ok(()) => {
                    if let Some(answer) = answer {
                        waits.push((n.clone(), answer));
                    }
                }
                Err(_) => {
                    self.pubsub.dropped.inc();
                    report
                        .failed
                        .push((n.clone(), RemoteError::QueueFull { node: n.clone(), cap: PUBLISH_QUEUE as u64 }));
                }
            }
        }
        // An acknowledged publish holds the numbering until every node answered, so
        // the next message cannot overtake it anywhere.
        for (n, answer) in waits {
            match answer.await {
                Ok(Ok(subscribers)) => report.subscribers += subscribers,
                Ok(Err(e)) => report.failed.push((n, e)),
                Err(_) => report.failed.push((n.clone(), RemoteError::NodeDown { node: n })),
            }
        }
        drop(seq);
        Ok(report)
    }
}

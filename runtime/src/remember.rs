//! Remembered entities (Akka's remember-entities): a sharded kind with
//! `remember = true` has its live entities started again on their new owner when their
//! node dies, and on their owner when the whole cluster restarts, without waiting for
//! the next message.
//!
//! How: each activation of a remembered entity tells the cluster's registry
//! (`/troupe/remembered/_`, a singleton whose state is replicated like any actor's)
//! where it runs: node, boot epoch and an incarnation id; a passivation tells it the
//! entity stopped on purpose. The registry re-checks its entries after every placement
//! change and every [`CHECK_EVERY`]: an entity whose recorded node is no longer a live
//! member under the same epoch, or that another node owns now, is woken on its owner
//! (`/troupe/wake/<owner>` activates it there, which registers it again). Handoffs and
//! node shutdowns do not forget an entity; only passivation does. In the first
//! [`FORMATION_WAIT`] after its node boots, the registry wakes nothing until every
//! node of the cluster file has been seen, so a whole-cluster restart starts each
//! entity once, on its final owner.
//!
//! Invariants:
//! - An entity is remembered from the moment the registry acknowledges its
//!   activation (normally a few milliseconds after it starts; the registration is
//!   retried in the background while the registry itself moves).
//! - Registration and forgetting of one incarnation are sent in that order by one
//!   task, and the registry forgets only the incarnation it holds, so a late forget of
//!   an older incarnation never drops a newer one.
//! - Waking is idempotent: a wake for an entity that already runs is a lookup.

use crate::node::Node;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use troupe_wire::{ActorPath, Protocol, RemoteError};

/// How often the registry re-checks where its entities run, besides after every
/// placement change.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long, from its node's boot, the registry waits for the cluster to form before
/// it wakes anything: while a node of the cluster file has not been seen yet (a whole
/// cluster starting again, its nodes coming up one by one), an entity woken now may be
/// owned by that node once it joins, and would be started twice (here, then handed
/// off). Past this, a node that never came back does not hold the others' entities
/// back. A registry on a node that has been up longer (it took over after a failure)
/// wakes at once.
pub const FORMATION_WAIT: Duration = Duration::from_secs(10);
/// Entities the cluster remembers at most (the registry's snapshot stays well below the
/// transport's frame limit); past it activations are not remembered and say so in the
/// log.
pub const REMEMBERED_MAX: usize = 50_000;
/// Bytes of paths the cluster remembers at most (about; the registry's snapshot must
/// fit a frame). The built-in reminder buckets count towards neither limit.
pub const REMEMBERED_BYTES_MAX: usize = 8 << 20;
/// How long an entity's registration keeps being retried while the registry is
/// unreachable (it moves with its node like any singleton).
const REGISTER_FOR: Duration = Duration::from_secs(600);

/// The registry's protocol.
pub struct RegistryProto;

impl Protocol for RegistryProto {
    type Msg = RegistryMsg;
    type Reply = RegistryReply;
    const NAME: &'static str = "troupe.remembered";
}

/// Where one incarnation of an entity runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation {
    /// The node it runs on.
    pub node: String,
    /// That node's boot epoch: a restarted node's entities are not running any more.
    pub epoch: u64,
    /// Unique per activation on that node's boot.
    pub id: u64,
}

/// Messages to the registry (nodes only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RegistryMsg {
    /// Entity `path` runs as `at`.
    Started {
        /// The entity.
        path: String,
        /// Where it runs.
        at: Incarnation,
    },
    /// Entity `path` passivated: forget it if `at` is the incarnation remembered.
    Passivated {
        /// The entity.
        path: String,
        /// The incarnation that stopped.
        at: Incarnation,
    },
    /// Every remembered entity and where it was last seen running.
    List,
    /// The registry's own: write what arrived since the last flush as one batch.
    Flush,
    /// The registry's own: wake the entities that are not running where they should.
    Check,
}

/// One remembered entity, as [`list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedEntity {
    /// The entity's path.
    pub path: String,
    /// Where it was last seen running.
    pub at: Incarnation,
}

/// The registry's answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RegistryReply {
    /// Durable.
    Done,
    /// The remembered entities.
    Remembered(Vec<RememberedEntity>),
}

/// The per-node wake agent's protocol (`/troupe/wake/<node>`).
pub struct WakeProto;

impl Protocol for WakeProto {
    type Msg = WakeMsg;
    type Reply = Woken;
    const NAME: &'static str = "troupe.wake";
}

/// Messages to a wake agent (nodes only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WakeMsg {
    /// Start these remembered entities here if this node owns them.
    Wake {
        /// Paths of remembered entities.
        paths: Vec<String>,
    },
}

/// What a wake did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Woken {
    /// Started here now.
    pub started: u64,
    /// Already running here.
    pub running: u64,
    /// Owned by another node in this node's view.
    pub elsewhere: u64,
    /// Not started, with why.
    pub failed: Vec<(String, String)>,
}

/// The registry's path.
pub fn registry_path() -> ActorPath {
    ActorPath::new("troupe", "remembered", troupe_core::directory::SINGLETON_KEY)
        .unwrap_or_else(|_| unreachable!("a valid constant path"))
}

/// Node `node`'s wake agent.
pub(crate) fn wake_path(node: &str) -> Result<ActorPath, RemoteError> {
    ActorPath::new("troupe", "wake", node).map_err(|e| RemoteError::Invalid(e.to_string()))
}

/// A new incarnation of an entity on `node`.
pub(crate) fn incarnation(node: &Node) -> Incarnation {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Incarnation { node: node.name().to_string(), epoch: node.epoch(), id: NEXT.fetch_add(1, Ordering::Relaxed) }
}

/// Every entity the cluster remembers, from the registry.
pub async fn list(node: &Node) -> Result<Vec<RememberedEntity>, RemoteError> {
    match node.handle::<RegistryProto>(registry_path()).ask(RegistryMsg::List).await? {
        RegistryReply::Remembered(v) => Ok(v),
        other => Err(RemoteError::Invalid(format!("the registry answered {other:?}"))),
    }
}

/// The remembering of one incarnation: registered now (in the background, retried
/// while the registry moves), forgotten when [`Remembering::passivated`] is called,
/// left remembered when dropped (a handoff, a failure, a shutdown).
pub(crate) struct Remembering {
    passivated: Option<oneshot::Sender<()>>,
    /// Becomes true once the registry holds this incarnation durably.
    pub(crate) registered: tokio::sync::watch::Receiver<bool>,
}

impl Remembering {
    /// Registers `path` running here as a new incarnation.
    pub(crate) fn start(node: &Node, path: &ActorPath) -> Remembering {
        let (tx, rx) = oneshot::channel();
        let (done, registered) = tokio::sync::watch::channel(false);
        let path = path.to_string();
        let at = incarnation(node);
        // Weak: a node that stops is not kept alive (its store open) by this task.
        let weak = node.downgrade();
        tokio::spawn(async move {
            let sent = RegistryMsg::Started { path: path.clone(), at: at.clone() };
            if !tell_registry(&weak, &path, sent).await {
                return;
            }
            let _ = done.send(true);
            // Wait for the passivation; a dropped sender ends the task, remembered.
            if rx.await.is_ok() {
                tell_registry(&weak, &path, RegistryMsg::Passivated { path: path.clone(), at }).await;
            }
        });
        Remembering { passivated: Some(tx), registered }
    }

    /// The entity stopped on purpose: forget it (after its registration).
    pub(crate) fn passivated(&mut self) {
        if let Some(tx) = self.passivated.take() {
            let _ = tx.send(());
        }
    }
}

/// Sends `msg` to the registry until it is durable there (or the node stops, or the
/// registry refuses for good); `false` when it gave up.
async fn tell_registry(node: &std::sync::Weak<crate::node::NodeInner>, path: &str, msg: RegistryMsg) -> bool {
    let deadline = tokio::time::Instant::now() + REGISTER_FOR;
    let mut pause = Duration::from_millis(50);
    loop {
        let Some(inner) = node.upgrade() else { return false };
        let registry = Node::from_inner(inner).handle::<RegistryProto>(registry_path());
        match registry.ask(msg.clone()).await {
            Ok(_) => return true,
            Err(e) => {
                let permanent = matches!(e, RemoteError::Invalid(_) | RemoteError::BadMessage { .. });
                if permanent || tokio::time::Instant::now() >= deadline {
                    tracing::warn!(%path, error = %e, "remembered entity: the registry did not record it");
                    return false;
                }
                tracing::debug!(%path, error = %e, "remembered entity: registry unreachable; retrying");
            }
        }
        drop(registry);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

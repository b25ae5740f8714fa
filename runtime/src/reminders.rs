//! Durable reminders (Orleans reminders are the model): a message an actor asks to be
//! sent to itself (or any actor) later, or every period, that survives the crash of
//! any node. [`crate::Ctx::send_after`] is a timer in memory; a reminder is kept in a
//! reminder bucket (`/troupe/reminders/b<NN>`, chosen by the target's path), a sharded
//! built-in actor whose state is replicated like any actor's and which is a remembered
//! entity: when its node dies it is started again on its new owner, which fires what
//! is due.
//!
//! Delivery is at least once: the bucket sends the stored message as an ask, and the
//! target's answer (any value) acknowledges it. Until then — the target's node is
//! down, its handler failed, or it answered nothing — it is sent again with backoff
//! (100 ms doubling to 30 s), and a bucket that fails over sends again whatever it did
//! not record as delivered. So a reminder's handler answers it, and is idempotent.
//! A message the target can never take (an unknown path, a message it cannot decode)
//! is dropped and counted in `troupe_reminders_dropped_total`. A one-shot reminder is removed
//! once delivered; a periodic one is due again one period later (occurrences missed
//! while its bucket was down are coalesced into one). The message the target gets is
//! the one given when the reminder was set; put the reminder's id in it to tell
//! reminders apart.
//!
//! Due times are wall-clock (milliseconds since the Unix epoch on the bucket's node):
//! the nodes' clocks are assumed synchronised to well under a reminder's precision.
//! Buckets look for due reminders every [`RESOLUTION`].

use crate::node::Node;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use troupe_wire::{ActorPath, Protocol, RemoteError};

/// Reminder buckets; a target's reminders all live in one of them.
pub const BUCKETS: u64 = 16;
/// How often a bucket looks for due reminders (a reminder fires up to this late).
pub const RESOLUTION: Duration = Duration::from_millis(100);
/// The shortest period of a periodic reminder.
pub const PERIOD_MIN: Duration = Duration::from_millis(100);
/// The longest delay and period of a reminder.
pub const DELAY_MAX: Duration = Duration::from_secs(366 * 24 * 3600);
/// The largest message a reminder carries.
pub const MESSAGE_BYTES_MAX: usize = 64 << 10;
/// The longest reminder id.
pub const ID_BYTES_MAX: usize = 256;
/// Reminders one bucket holds at most (so about 16 times this in a cluster).
pub const PER_BUCKET_MAX: usize = 10_000;
/// Bytes of messages one bucket holds at most (its snapshot stays well below the
/// transport's frame limit).
pub const BUCKET_BYTES_MAX: usize = 8 << 20;

/// When a reminder fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Delay until the first firing.
    pub first: Duration,
    /// Then again every this long; `None`: once.
    pub period: Option<Duration>,
}

impl Schedule {
    /// Once, `after` from now.
    pub fn once(after: Duration) -> Schedule {
        Schedule { first: after, period: None }
    }
    /// Every `period`, the first one `period` from now.
    pub fn every(period: Duration) -> Schedule {
        Schedule { first: period, period: Some(period) }
    }
    /// Every `period`, the first one `first` from now.
    pub fn starting(first: Duration, period: Duration) -> Schedule {
        Schedule { first, period: Some(period) }
    }
}

/// The reminder buckets' protocol.
pub struct ReminderProto;

impl Protocol for ReminderProto {
    type Msg = ReminderMsg;
    type Reply = ReminderReply;
    const NAME: &'static str = "troupe.reminders";
}

/// Messages to a reminder bucket (nodes only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReminderMsg {
    /// Set (or replace) reminder `id` of `target`.
    Set {
        /// The actor the message goes to.
        target: String,
        /// The reminder's name among the target's reminders.
        id: String,
        /// First due time, ms since the Unix epoch.
        due_unix_ms: u64,
        /// Period in ms; `None`: once.
        period_ms: Option<u64>,
        /// The message, encoded for the target's protocol.
        msg: Vec<u8>,
    },
    /// Remove reminder `id` of `target`.
    Cancel {
        /// The target.
        target: String,
        /// The reminder.
        id: String,
    },
    /// The reminders of `target`.
    List {
        /// The target.
        target: String,
    },
    /// The bucket's own: send what is due.
    Fire,
    /// The bucket's own: how one sending of reminder `id` (set as `generation`) ended:
    /// `None` delivered, else the error and whether it is worth trying again.
    Sent {
        /// The bucket incarnation that sent it.
        incarnation: u64,
        /// The target.
        target: String,
        /// The reminder.
        id: String,
        /// Which setting of the reminder was sent.
        generation: u64,
        /// `None`: delivered.
        failed: Option<(String, bool)>,
    },
}

/// One reminder, as [`list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderInfo {
    /// Its id.
    pub id: String,
    /// When it is next due, ms since the Unix epoch.
    pub due_unix_ms: u64,
    /// Its period in ms, if periodic.
    pub period_ms: Option<u64>,
    /// Failed sendings since the last delivery.
    pub attempts: u32,
}

/// A bucket's answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReminderReply {
    /// Durable.
    Set,
    /// Removed (`existed`: there was one).
    Cancelled {
        /// Whether a reminder of that id existed.
        existed: bool,
    },
    /// The target's reminders.
    Listed(Vec<ReminderInfo>),
    /// Noted.
    Done,
}

/// The bucket that holds `target`'s reminders (placement's stable hash of its path:
/// the same on every build and node).
pub fn bucket_of(target: &ActorPath) -> ActorPath {
    let h = troupe_core::placement::stable_hash(&[target.as_str().as_bytes()]);
    ActorPath::new("troupe", "reminders", &format!("b{:02}", h % BUCKETS))
        .unwrap_or_else(|_| unreachable!("a valid constant path"))
}

fn invalid(why: String) -> RemoteError {
    RemoteError::Invalid(why)
}

/// Sets reminder `id` of `target`: `msg` (a message of `P`, the target's protocol) is
/// sent to it on `schedule`. Setting an id again replaces the reminder. Returns once
/// the reminder is durable (on a majority of its bucket's replicas).
pub async fn set<P: Protocol>(
    node: &Node,
    target: &ActorPath,
    id: &str,
    schedule: Schedule,
    msg: &P::Msg,
) -> Result<(), RemoteError> {
    let bytes = troupe_wire::codec::encode(msg)
        .map_err(|e| RemoteError::BadMessage { path: target.to_string(), reason: e.to_string() })?;
    set_encoded(node, target, id, schedule, bytes).await
}

/// [`set`] with the message already encoded for the target's protocol.
pub async fn set_encoded(
    node: &Node,
    target: &ActorPath,
    id: &str,
    schedule: Schedule,
    msg: Vec<u8>,
) -> Result<(), RemoteError> {
    check(id, &schedule, &msg)?;
    let due_unix_ms = node.clock_us() / 1000 + schedule.first.as_millis() as u64;
    let period_ms = schedule.period.map(|p| p.as_millis() as u64);
    let set = ReminderMsg::Set { target: target.to_string(), id: id.to_string(), due_unix_ms, period_ms, msg };
    match node.handle::<ReminderProto>(bucket_of(target)).ask(set).await? {
        ReminderReply::Set => Ok(()),
        other => Err(invalid(format!("the reminder bucket answered {other:?}"))),
    }
}

/// What a reminder must be: an id, a sensible period, a bounded message.
pub(crate) fn check(id: &str, schedule: &Schedule, msg: &[u8]) -> Result<(), RemoteError> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(invalid(format!("a reminder id is 1 to {ID_BYTES_MAX} bytes, not {}", id.len())));
    }
    if let Some(p) = schedule.period
        && p < PERIOD_MIN
    {
        return Err(invalid(format!("a reminder's period is at least {PERIOD_MIN:?}, not {p:?}")));
    }
    if schedule.first > DELAY_MAX || schedule.period.is_some_and(|p| p > DELAY_MAX) {
        return Err(invalid(format!("a reminder's delay and period are at most {DELAY_MAX:?} (a year)")));
    }
    if msg.len() > MESSAGE_BYTES_MAX {
        return Err(invalid(format!(
            "a reminder's message is at most {MESSAGE_BYTES_MAX} bytes, not {}: keep large data in the actor's state",
            msg.len()
        )));
    }
    Ok(())
}

/// Removes reminder `id` of `target`; `Ok(false)` when there was none.
pub async fn cancel(node: &Node, target: &ActorPath, id: &str) -> Result<bool, RemoteError> {
    let msg = ReminderMsg::Cancel { target: target.to_string(), id: id.to_string() };
    match node.handle::<ReminderProto>(bucket_of(target)).ask(msg).await? {
        ReminderReply::Cancelled { existed } => Ok(existed),
        other => Err(invalid(format!("the reminder bucket answered {other:?}"))),
    }
}

/// The reminders of `target`, by id.
pub async fn list(node: &Node, target: &ActorPath) -> Result<Vec<ReminderInfo>, RemoteError> {
    let msg = ReminderMsg::List { target: target.to_string() };
    match node.handle::<ReminderProto>(bucket_of(target)).ask(msg).await? {
        ReminderReply::Listed(v) => Ok(v),
        other => Err(invalid(format!("the reminder bucket answered {other:?}"))),
    }
}

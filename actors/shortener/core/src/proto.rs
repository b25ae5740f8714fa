//! The URL shortener's wire protocol: the messages its actors exchange, as plain serde
//! types plus [`troupe_wire::Protocol`] markers, and the pure rules of a link's log.
//!
//! They live here, in the pure crate, so a program using only `troupe-client` (no runtime)
//! can speak to the system; the actors (crate `troupe-shortener-shell`)
//! implement them. docs/url-shortener.md describes the data flow.
//!
//! Invariants: every type here encodes with bincode (no untagged enums, no skipped
//! fields); [`stable_hash`] is FNV-1a and must never change (it decides which click-log
//! shard holds a code's clicks).

use serde::{Deserialize, Serialize};
use troupe_wire::Protocol;

use crate::analytics::{ClickEvent, LinkReport};

/// Kind names the shells use to address each other inside the system.
pub const KIND_LINK: &str = "link";
pub const KIND_CLICKLOG: &str = "clicklog";
pub const KIND_GATEWAY: &str = "gateway";

/// FNV-1a (64 bit): a hash that is the same on every node and every build, so every
/// gateway sends a code's clicks to the same shard (std's hasher is seeded per process).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The click-log shard of a code.
pub fn shard_of(code: &str, shards: u32) -> u32 {
    (stable_hash(code.as_bytes()) % u64::from(shards.max(1))) as u32
}

pub struct Link;

impl Protocol for Link {
    type Msg = LinkMsg;
    type Reply = LinkReply;
    const NAME: &'static str = "shortener.link";
}

/// A short link as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// Normalized target URL (validated and screened by the gateway).
    pub target: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Unix ms after which the link answers 410.
    pub expires_ms: Option<u64>,
    /// 301 instead of 302: browsers cache it, so later clicks never reach us (opt-in).
    pub permanent: bool,
    /// The user who created it (`X-User-Id`); `None` = anonymous, immutable.
    pub owner: Option<String>,
    /// Set when deleted; the record stays as a tombstone.
    pub deleted_ms: Option<u64>,
}

impl LinkRecord {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|at| now_ms >= at)
    }
}

/// Who asks for an edit or a delete.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Requester {
    pub user: Option<String>,
    /// Presented the deployment's admin token (abuse takedowns).
    pub admin: bool,
}

/// Fields an edit may change; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LinkChange {
    pub target: Option<String>,
    /// `Some(None)` removes the expiry.
    pub expires_ms: Option<Option<u64>>,
    pub permanent: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LinkMsg {
    /// Store a new link under this code, unless the code was ever used.
    Create {
        link: LinkRecord,
    },
    /// The record (tombstones included; the caller decides 404/410).
    Get,
    Update {
        change: LinkChange,
        by: Requester,
        at_ms: u64,
    },
    Delete {
        by: Requester,
        at_ms: u64,
    },
    /// The record after a read barrier (a majority still backs this owner), so it
    /// holds every acknowledged change: the API's read. Redirects use `Get`.
    Read,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LinkReply {
    Created(LinkRecord),
    /// The code is in use (or was, and was deleted).
    Taken {
        deleted: bool,
    },
    Found(LinkRecord),
    NotFound,
    Updated(LinkRecord),
    Deleted,
    Forbidden(String),
}

/// One entry of the durable log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LinkOp {
    Created(LinkRecord),
    Updated { change: LinkChange, at_ms: u64 },
    Deleted { at_ms: u64 },
}

/// The pure state transition: what the log means.
pub fn apply(state: &mut Option<LinkRecord>, op: LinkOp) {
    match op {
        LinkOp::Created(rec) => *state = Some(rec),
        LinkOp::Updated { change, at_ms } => {
            if let Some(rec) = state {
                if let Some(t) = change.target {
                    rec.target = t;
                }
                if let Some(e) = change.expires_ms {
                    rec.expires_ms = e;
                }
                if let Some(p) = change.permanent {
                    rec.permanent = p;
                }
                rec.updated_ms = at_ms;
            }
        }
        LinkOp::Deleted { at_ms } => {
            if let Some(rec) = state {
                rec.deleted_ms.get_or_insert(at_ms);
            }
        }
    }
}

/// Whether `by` may edit or delete `rec`; the error is the 403 message.
pub fn may_manage(rec: &LinkRecord, by: &Requester) -> Result<(), String> {
    if by.admin {
        return Ok(());
    }
    match (&rec.owner, &by.user) {
        (Some(owner), Some(user)) if owner == user => Ok(()),
        (Some(_), Some(_)) => Err("this link belongs to another user".into()),
        (Some(_), None) => Err("send the API key of the user who created this link".into()),
        (None, _) => {
            Err("anonymous links cannot be changed or deleted; create links with your API key to manage them".into())
        }
    }
}

pub struct ClickLog;

impl Protocol for ClickLog {
    type Msg = ClickLogMsg;
    type Reply = ClickLogReply;
    const NAME: &'static str = "shortener.clicklog";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClickLogMsg {
    /// Append these clicks and count the new ones.
    Ingest { events: Vec<ClickEvent> },
    /// Statistics of one link (top lists cut to `top_n`).
    Stats { code: String, top_n: u32 },
    /// Drop a deleted link's statistics.
    Forget { code: String },
    /// Counters of the shard.
    Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClickLogReply {
    Ingested { new: u32, duplicates: u32, late: u32 },
    Stats(Option<LinkReport>),
    Forgotten,
    Status { links: u64, duplicate_events: u64, late_events: u64, dedup_ids: u64 },
}

pub struct Gateway;

impl Protocol for Gateway {
    type Msg = GatewayMsg;
    type Reply = GatewayReply;
    const NAME: &'static str = "shortener.gateway";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GatewayMsg {
    /// A link was edited or deleted: drop this node's cached copy.
    Invalidate {
        code: String,
    },
    Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GatewayReply {
    Status { http: String, cache_entries: u64, cache_hits: u64, cache_misses: u64, geo: Option<String> },
}

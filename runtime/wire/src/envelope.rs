//! Envelopes and frames: what travels between nodes and between a client and a node.
//!
//! An [`Envelope`] carries one message for one actor. Its payload is the target
//! protocol's message, already encoded, so a node can route a frame without knowing
//! the message type; only the owning node decodes it.

use crate::path::ActorPath;
use serde::{Deserialize, Serialize};

/// Identifies one request across every node it touches (`troupe trace <id>`).
pub type TraceId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// Fire and forget.
    Tell,
    /// One reply expected under `corr` within `timeout_ms`.
    Ask { corr: u64, timeout_ms: u32 },
    /// Zero or more `StreamItem`s then one `StreamEnd` under `corr`.
    Stream { corr: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub target: ActorPath,
    /// The sending actor, when there is one; FIFO order is kept per (sender, target).
    pub sender: Option<ActorPath>,
    pub request: RequestKind,
    pub trace: TraceId,
    /// The target protocol's `Msg`, encoded with [`crate::codec`].
    #[serde(with = "crate::blob::raw")]
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Msg(Envelope),
    /// The answer to an `Ask`; the payload is the target protocol's `Reply`.
    Reply {
        corr: u64,
        #[serde(with = "crate::blob::raw::result")]
        result: Result<Vec<u8>, RemoteError>,
    },
    StreamItem {
        corr: u64,
        #[serde(with = "crate::blob::raw")]
        payload: Vec<u8>,
    },
    StreamEnd {
        corr: u64,
        result: Result<(), RemoteError>,
    },
    /// The asker gave up (timeout, client gone): the receiver may stop working on it.
    Cancel {
        corr: u64,
    },
    /// A client's JSON request; the node converts it with the target kind's protocol.
    JsonAsk {
        target: ActorPath,
        corr: u64,
        timeout_ms: u32,
        json: String,
        stream: bool,
        trace: TraceId,
    },
    /// A client's JSON message, fire and forget.
    JsonTell {
        target: ActorPath,
        json: String,
        trace: TraceId,
    },
    /// JSON rendering of a reply or a stream item for a `JsonAsk`.
    JsonReply {
        corr: u64,
        result: Result<String, RemoteError>,
        last: bool,
    },
}

/// Why a request failed, as the caller sees it. Each variant is a distinct situation
/// a caller can act on differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    #[error("no actor at {path}: {reason}")]
    UnknownPath { path: String, reason: String },
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: String, reason: String },
    #[error("timed out after {ms} ms waiting for {path}")]
    Timeout { path: String, ms: u64 },
    #[error("mailbox of {path} is full ({cap} messages, mailbox_cap); retry later")]
    MailboxFull { path: String, cap: u64 },
    #[error("send queue to node {node} is full ({cap} frames, send_queue_cap); retry later")]
    QueueFull { node: String, cap: u64 },
    #[error("{path} is restarting; retry in {retry_after_ms} ms")]
    Restarting { path: String, retry_after_ms: u64 },
    #[error("{path} is owned by node {owner}, not this one")]
    WrongOwner { path: String, owner: String },
    #[error("could not decode the message for {path}: {reason}")]
    BadMessage { path: String, reason: String },
    #[error("{path} failed while handling the request: {reason}")]
    ActorFailed { path: String, reason: String },
    #[error("{path} stopped without replying")]
    NoReply { path: String },
    #[error("not allowed: {0}")]
    Unauthorized(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
    // New variants go last: bincode numbers variants by position, so a variant added
    // in the middle would shift every later one for a peer or client built earlier.
    /// The sending node's membership view holds `node` down: nothing is sent to it
    /// (and nothing waits on it) until it rejoins. Retrying within the same request is
    /// pointless; a later request may be placed on a live node.
    #[error("node {node} is down in this node's membership view; nothing is sent to it until it rejoins")]
    NodeDown { node: String },
}

impl RemoteError {
    /// Whether trying again (perhaps on another node) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RemoteError::Unreachable { .. }
                | RemoteError::NodeDown { .. }
                | RemoteError::MailboxFull { .. }
                | RemoteError::QueueFull { .. }
                | RemoteError::Restarting { .. }
                | RemoteError::WrongOwner { .. }
        )
    }
}

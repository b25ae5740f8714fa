//! The JSON frames of the chat WebSocket (`GET /v1/ws` on `ports.chat`), one per
//! WebSocket text message. A client sends [`ClientFrame`]s and receives
//! [`ServerFrame`]s; docs/chat.md shows a session.
//!
//! The client owns its cursors: it sends, per conversation, the last sequence number
//! it holds in `hello`, and the gateway sends every event after it, in order, then
//! each new one as it happens. A client that applies only the next number it expects
//! sees every event exactly once, in order, across reconnects to any gateway.

use crate::conversation::EventBody;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// From a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Starts delivery: every conversation of the user, from the given cursors (a
    /// conversation not named starts at its oldest kept event).
    Hello {
        #[serde(default)]
        cursors: BTreeMap<String, u64>,
    },
    /// A message; `id` is the client's for it (a resend with the same id after a
    /// reconnect is answered with the same sequence number, not sent twice).
    Send { conv: String, id: String, text: String },
    /// The client holds events up to `seq` (a delivery receipt).
    Ack { conv: String, seq: u64 },
    /// The user read up to `seq` (a read receipt).
    Read { conv: String, seq: u64 },
    /// Creates a group with `members` (the user included); `id` names the request.
    Create { id: String, conv: String, members: Vec<String> },
    /// Adds and removes members of a group.
    Members {
        id: String,
        conv: String,
        #[serde(default)]
        add: Vec<String>,
        #[serde(default)]
        remove: Vec<String>,
    },
    /// Who of `users` is online, and when each was last seen (at most 100 users).
    Presence { users: Vec<String> },
}

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPresence {
    pub user: String,
    pub online: bool,
    /// When the user was last seen going offline (ms since the Unix epoch), if known.
    pub last_seen_ms: Option<u64>,
}

/// From the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to `hello`: the user, and the conversations whose events follow
    /// (in several `ready` frames when there are many: `more` until the last).
    Ready { user: String, conversations: Vec<String>, more: bool },
    /// One event of a conversation, in sequence order per conversation.
    Event { conv: String, seq: u64, at_ms: u64, body: EventBody },
    /// Events `from..=to` of `conv` are no longer kept: the client cannot get them.
    Gap { conv: String, from: u64, to: u64 },
    /// Event `seq` of `conv` encodes to more than this gateway's largest frame
    /// (`bytes`): it is skipped here (read it over HTTP, which has no frame limit).
    TooBig { conv: String, seq: u64, bytes: u64 },
    /// The message `id` is durable at `seq`.
    Accepted { id: String, conv: String, seq: u64 },
    /// The request `id` was refused, with the reason.
    Rejected { id: String, reason: String },
    /// The request `id` (create or members) is done; the conversation's head after it.
    Done { id: String, conv: String, head: u64 },
    /// Members' receipts that moved: (user, delivered, read).
    Receipts { conv: String, receipts: Vec<(String, u64, u64)> },
    /// The answer to `presence`.
    Presence { users: Vec<UserPresence> },
    /// A frame the gateway could not take, with the reason.
    Error { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_as_documented() {
        let f: ClientFrame = serde_json::from_str(r#"{"type":"send","conv":"c","id":"1","text":"hi"}"#).unwrap();
        assert_eq!(f, ClientFrame::Send { conv: "c".into(), id: "1".into(), text: "hi".into() });
        let f: ClientFrame = serde_json::from_str(r#"{"type":"hello"}"#).unwrap();
        assert_eq!(f, ClientFrame::Hello { cursors: BTreeMap::new() });
        let e = serde_json::from_str::<ClientFrame>(r#"{"type":"send","conv":"c"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
        let e = serde_json::from_str::<ClientFrame>(r#"{"type":"hello","x":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let out = ServerFrame::Event {
            conv: "c".into(),
            seq: 2,
            at_ms: 5,
            body: EventBody::Message { from: "a".into(), id: "1".into(), text: "hi".into() },
        };
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"{"type":"event","conv":"c","seq":2,"at_ms":5,"body":{"message":{"from":"a","id":"1","text":"hi"}}}"#
        );
    }
}

//! The messages between the chat actors. Kind names inside the system are fixed: the
//! shells address each other by them.

use crate::conversation::Event;
use crate::keys::{DeviceKeys, OneTimeKey, ToDevice};
use serde::{Deserialize, Serialize};
use troupe_wire::Protocol;

/// One entity per conversation (sharded, replicated).
pub const KIND_CONVERSATION: &str = "conversation";
/// The users' directory: which conversations each user is in, in `shards` entities.
pub const KIND_DIRECTORY: &str = "directory";
/// The WebSocket and HTTP gateway, one per gateway node.
pub const KIND_GATEWAY: &str = "gateway";
/// One entity per user: the user's devices, their public keys and mailboxes.
pub const KIND_KEYS: &str = "keys";

/// A user's devices and keys (the entity keyed by the user).
pub struct Keys;

impl Protocol for Keys {
    type Msg = KeysMsg;
    type Reply = KeysReply;
    const NAME: &'static str = "chat.keys";
}

/// What a gateway asks a user's keys entity. The gateway sends `Publish`, `Mailbox`,
/// `Ack` and `Revoke` only to the caller's own entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeysMsg {
    Publish {
        keys: DeviceKeys,
        one_time: Vec<OneTimeKey>,
        fallback: Option<OneTimeKey>,
    },
    Devices,
    /// Hands out one key of `device` for a new Olm session (durably used up).
    Claim {
        device: String,
    },
    Deliver {
        device: String,
        from_user: String,
        from_device: String,
        body: String,
    },
    Mailbox {
        device: String,
        after: u64,
        max: u32,
    },
    Ack {
        device: String,
        upto: u64,
    },
    Revoke {
        device: String,
    },
}

/// A keys entity's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeysReply {
    /// Published; one-time keys the device has on the server now.
    Published {
        one_time_keys: u64,
    },
    Devices(Vec<DeviceKeys>),
    Claimed {
        keys: DeviceKeys,
        key: OneTimeKey,
    },
    Mailbox(Vec<ToDevice>),
    Done,
    Refused(String),
}

/// A conversation entity.
pub struct Conversation;

impl Protocol for Conversation {
    type Msg = ConvMsg;
    type Reply = ConvReply;
    const NAME: &'static str = "chat.conversation";
}

/// What a gateway asks a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvMsg {
    /// Create it with these members (`by` included).
    Create { by: String, members: Vec<String>, at_ms: u64 },
    /// A message from `from`, whose client calls it `id`; acknowledged once durable.
    Send { from: String, id: String, text: String, at_ms: u64 },
    /// Add and remove members.
    Members { by: String, add: Vec<String>, remove: Vec<String>, at_ms: u64 },
    /// Events after `after`, at most `max`, for member `user`.
    Since { user: String, after: u64, max: u32 },
    /// `user`'s client has events up to `delivered` and has read up to `read`.
    Receipt { user: String, delivered: u64, read: u64 },
    /// Members, head and receipts, for member `user`.
    Info { user: String },
}

/// A conversation's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvReply {
    /// The conversation exists with these members; its head.
    Created { members: Vec<String>, head: u64 },
    /// The message is durable at `seq` (`duplicate`: it was already, from a retry).
    Accepted { seq: u64, duplicate: bool },
    /// Membership changed (or was already so); the head after it.
    MembersChanged { head: u64, members: Vec<String> },
    /// Events after the asked number; `oldest` is the oldest still kept, `head` the
    /// newest.
    Events { events: Vec<Event>, oldest: u64, head: u64 },
    /// Noted.
    Noted,
    /// About the conversation.
    Info { members: Vec<String>, head: u64, receipts: Vec<(String, u64, u64)> },
    /// Refused, with the reason (not a member, no such conversation, too long, …).
    Refused(String),
}

/// What a conversation publishes on its topic (`ids::conversation_topic`): gateways
/// with a member online are subscribed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Published {
    /// A new event.
    Event(Event),
    /// The conversation's head now: a gateway that has less asks for what it missed
    /// (a publish is at most once).
    Head(u64),
    /// Receipts that moved: (user, delivered, read).
    Receipts(Vec<(String, u64, u64)>),
}

/// What is published on a user topic (`ids::user_topic`): a batch of notes, each
/// naming its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserNote {
    /// `user` is now a member of `conv`.
    Joined { user: String, conv: String },
    /// `user` is no longer a member of `conv`.
    Left { user: String, conv: String },
}

impl UserNote {
    /// The user it is about.
    pub fn user(&self) -> &str {
        match self {
            UserNote::Joined { user, .. } | UserNote::Left { user, .. } => user,
        }
    }
}

/// A directory shard: user → the conversations the user is in.
pub struct Directory;

impl Protocol for Directory {
    type Msg = DirMsg;
    type Reply = DirReply;
    const NAME: &'static str = "chat.directory";
}

/// What a directory shard is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirMsg {
    /// `users` (all of this shard) joined (`joined`) or left `conv`; durable before
    /// the answer, idempotent.
    Update { conv: String, users: Vec<String>, joined: bool },
    /// The conversations of `user`.
    Conversations { user: String },
}

/// A directory shard's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirReply {
    /// Written.
    Updated,
    /// A user's conversations, in id order.
    Conversations(Vec<String>),
    /// Refused, with the reason.
    Refused(String),
}

/// One directory shard's durable log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub conv: String,
    pub users: Vec<String>,
    pub joined: bool,
}

/// The gateway (one per gateway node).
pub struct Gateway;

impl Protocol for Gateway {
    type Msg = GatewayMsg;
    type Reply = GatewayReply;
    const NAME: &'static str = "chat.gateway";
}

/// Control messages to a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayMsg {
    /// Where it listens and what it holds.
    Status,
}

/// A gateway's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayReply {
    Status { addr: Option<String>, sessions: u64, topics: u64 },
}

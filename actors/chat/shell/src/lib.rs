//! System 08, chat, as actors on the troupe runtime. The pure parts — conversation
//! state, ids, client frames, the history checker — are the crate `troupe-chat`
//! (re-exported as [`core`]); this crate holds the shells:
//!
//! | kind (factory) | placement | job |
//! |---|---|---|
//! | `conversation` (`chat.conversation`) | sharded, rf 3, remembered | one per conversation: sequence, members, kept history, dedup, receipts |
//! | `directory` (`chat.directory`) | sharded, 16 entities, rf 3 | which conversations each user is in |
//! | `gateway` (`chat.gateway`) | per node with role `gateway` | the WebSocket and HTTP API on `ports.chat` |
//! | `keys` (`chat.keys`) | sharded, one per user, rf 3 | devices, public keys, to-device mailboxes (end-to-end encryption) |
//!
//! Invariants (argued in docs/chat.md): a message is acknowledged only once durable on
//! a majority of its conversation's replicas; a client that reconnects with its
//! cursors gets every event after them, once each and in order; a message resent with
//! the same id while it is still in the kept history is not stored twice.

pub mod cli;
pub mod conversation;
pub mod directory;
pub mod gateway;
pub mod keys;
#[cfg(feature = "lab")]
pub mod lab;
pub mod push;
pub mod top;

pub use troupe_chat as core;
pub use troupe_chat::proto::Published;

/// Directory shards (keys "0".."15"). Fixed: changing it on a live cluster would send
/// users to shards that do not hold them.
pub const DIRECTORY_SHARDS: u32 = 16;

/// This node's publisher of conversation events (one per node, so its numbering
/// means something to subscribers).
struct EventPublisher(troupe_runtime::pubsub::Publisher);

pub(crate) fn system_publisher(node: &troupe_runtime::Node) -> troupe_runtime::pubsub::Publisher {
    let made: Result<std::sync::Arc<EventPublisher>, std::convert::Infallible> =
        node.extension(|| Ok(EventPublisher(troupe_runtime::pubsub::PubSub::of(node).publisher("chat-events"))));
    match made {
        Ok(p) => p.0.clone(),
        Err(never) => match never {},
    }
}

/// Chat as the `troupe` binary sees it (`src/systems.rs`).
pub struct Chat;

impl troupe_system::System for Chat {
    fn name(&self) -> &'static str {
        "chat"
    }
    fn register(&self, kinds: &mut troupe_runtime::KindRegistry) {
        kinds.register::<conversation::ConversationActor>("chat.conversation");
        kinds.register::<directory::DirectoryActor>("chat.directory");
        kinds.register::<gateway::GatewayActor>("chat.gateway");
        kinds.register::<keys::KeysActor>("chat.keys");
    }
    #[cfg(feature = "lab")]
    fn lab(&self) -> Option<troupe_system::Command> {
        Some(troupe_system::Command::args::<lab::Args>(
            "chat",
            "Chat: fan-out on write vs read, per-node batching vs per-member sends, polling vs push, \
             the cost of one global order",
            lab::run,
        ))
    }
    fn panel(&self) -> Option<&dyn troupe_system::Panel> {
        Some(&top::ChatPanel)
    }
    fn commands(&self) -> Vec<troupe_system::Command> {
        vec![troupe_system::Command::args::<cli::ChatArgs>(
            "chat",
            "Chat in the terminal as a user (`troupe chat --as alice`; /dm bob, then type)",
            cli::run,
        )]
    }
}

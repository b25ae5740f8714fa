//! The push hook: what a conversation does for a member who is offline when a message
//! arrives (a mobile push service, a mail digest). Pluggable per node with
//! [`set_sink`]; the default writes a log line (`target troupe_chat::push`). The hook
//! is given who, where, which sequence number and from whom — never the text, which
//! may be end-to-end encrypted anyway.
//!
//! Invariants: a member is pushed at most once per conversation per `push_every_ms`
//! (the conversation's param), and only while the node's presence view is live (a
//! gateway runs on the node and hears the others' digests), so a node without one
//! pushes nobody rather than everybody.

use parking_lot::RwLock;
use std::sync::Arc;
use troupe_runtime::Node;

/// Where pushes go.
pub trait PushSink: Send + Sync {
    /// `user` was offline when message `seq` of `conv` from `from` arrived.
    fn notify(&self, user: &str, conv: &str, seq: u64, from: &str);
}

/// The default sink: one log line per push.
pub struct LogSink;

impl PushSink for LogSink {
    fn notify(&self, user: &str, conv: &str, seq: u64, from: &str) {
        tracing::info!(target: "troupe_chat::push", %user, %conv, seq, %from, "push: a new message for an offline user");
    }
}

struct Slot(RwLock<Arc<dyn PushSink>>);

fn slot(node: &Node) -> Arc<Slot> {
    let made: Result<Arc<Slot>, std::convert::Infallible> = node.extension(|| Ok(Slot(RwLock::new(Arc::new(LogSink)))));
    match made {
        Ok(s) => s,
        Err(never) => match never {},
    }
}

/// Replaces this node's push sink.
pub fn set_sink(node: &Node, sink: Arc<dyn PushSink>) {
    *slot(node).0.write() = sink;
}

/// This node's push sink.
pub fn sink(node: &Node) -> Arc<dyn PushSink> {
    slot(node).0.read().clone()
}

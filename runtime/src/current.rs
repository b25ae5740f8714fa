//! What the task handling a message knows about it: its trace id and the actor
//! handling it (a task-local), and fresh trace ids for sends made outside any actor.
//! A leaf module: the transport reads it without reaching the actor shell.

use std::sync::Arc;
use troupe_wire::TraceId;

/// What the task handling a message knows about it.
#[derive(Clone)]
pub(crate) struct Current {
    /// The trace id of the message being handled.
    pub trace: TraceId,
    /// The path of the actor handling it (FIFO lanes are per sender → receiver).
    pub actor: Arc<str>,
    /// Fields the handler adds to its span ([`span_field`]); sampled messages only.
    pub fields: SpanFields,
}

/// The fields a handler adds to its span, shared with the shell that records it.
pub(crate) type SpanFields = Arc<parking_lot::Mutex<Vec<(String, String)>>>;

/// Adds field `key` = `value` to the span of the message being handled, when its trace
/// is sampled (`troupe trace` shows it, the OTLP export carries it as an attribute);
/// nothing otherwise. At most 32 fields a span; keys are cut to 64 bytes and values to
/// 1 KiB.
pub fn span_field(key: &str, value: impl std::fmt::Display) {
    let _ = CURRENT.try_with(|c| {
        let mut f = c.fields.lock();
        if f.len() < crate::traces::FIELDS_MAX {
            let key = crate::traces::bounded(key.to_string(), crate::traces::FIELD_KEY_MAX);
            f.push((key, crate::traces::bounded(value.to_string(), crate::traces::FIELD_VALUE_MAX)));
        }
    });
}

tokio::task_local! {
    pub static CURRENT: Current;
}

thread_local! {
    /// Fresh unsampled trace ids: a Weyl sequence from a random start per thread,
    /// cheap enough for every tell.
    static NEXT_TRACE: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
}

/// The current trace id, or a fresh unsampled one when none is being handled.
/// Odd ids are sampled: their spans are recorded for `troupe trace`.
pub fn current_trace() -> TraceId {
    CURRENT.try_with(|c| c.trace).unwrap_or_else(|_| {
        NEXT_TRACE.with(|n| {
            let v = n.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            n.set(v);
            v & !1
        })
    })
}

//! The node's side of the conversation topics: one pub/sub subscription per topic that
//! some local session watches, however many sessions watch it (a group's message
//! reaches this node once and is handed to each local member's session here).
//!
//! Invariants: a topic is subscribed while at least one [`Watch`] of it lives and
//! unsubscribed when the last is dropped; a session's queue that is full misses the
//! note (counted, and flagged to the session, which then catches up on every
//! conversation it watches), never blocks the topic.

use crate::Published as Pub;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::mpsc;
use troupe_chat::proto::UserNote;
use troupe_runtime::metrics::Counter;
use troupe_runtime::pubsub::PubSub;

/// What a topic hands a session.
#[derive(Debug, Clone)]
pub enum Note {
    /// Something a conversation published.
    Conv(Arc<str>, Arc<Pub>),
    /// The user joined or left a conversation.
    User(UserNote),
}

/// What a topic's notes are about.
#[derive(Debug, Clone)]
pub enum TopicOf {
    Conversation(Arc<str>),
    User,
}

/// A session's queue and its flag that a note was missed.
type Target = (mpsc::Sender<Note>, Arc<AtomicBool>);

struct Topic {
    sessions: Arc<Mutex<HashMap<u64, Target>>>,
    task: tokio::task::AbortHandle,
}

/// One per gateway incarnation.
pub struct Hub {
    pubsub: Arc<PubSub>,
    topics: Mutex<HashMap<String, Topic>>,
    next: AtomicU64,
    missed: Counter,
}

impl Hub {
    pub fn new(pubsub: Arc<PubSub>, missed: Counter) -> Hub {
        Hub { pubsub, topics: Mutex::new(HashMap::new()), next: AtomicU64::new(1), missed }
    }

    /// A fresh id for a session (or a long poll).
    pub fn session_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Topics subscribed now.
    pub fn topics(&self) -> usize {
        self.topics.lock().len()
    }

    /// Hands `id`'s queue every note of `topic` until the [`Watch`] is dropped; sets
    /// `missed` when the queue was full.
    pub fn watch(
        self: &Arc<Self>,
        topic: String,
        of: TopicOf,
        id: u64,
        tx: mpsc::Sender<Note>,
        missed: Arc<AtomicBool>,
    ) -> Watch {
        let mut topics = self.topics.lock();
        let entry = topics.entry(topic.clone()).or_insert_with(|| {
            let sessions: Arc<Mutex<HashMap<u64, Target>>> = Arc::default();
            let mut sub = self.pubsub.subscribe(&topic);
            let targets = sessions.clone();
            let missed = self.missed.clone();
            let task = tokio::spawn(async move {
                while let Some(p) = sub.recv().await {
                    let note = match &of {
                        TopicOf::Conversation(conv) => match p.decode::<Pub>() {
                            Ok(v) => Note::Conv(conv.clone(), Arc::new(v)),
                            Err(e) => {
                                tracing::warn!(error = %e, "undecodable conversation note");
                                continue;
                            }
                        },
                        TopicOf::User => match p.decode::<UserNote>() {
                            Ok(v) => Note::User(v),
                            Err(e) => {
                                tracing::warn!(error = %e, "undecodable user note");
                                continue;
                            }
                        },
                    };
                    let to: Vec<Target> = targets.lock().values().cloned().collect();
                    for (tx, flag) in to {
                        if tx.try_send(note.clone()).is_err() {
                            flag.store(true, Ordering::Relaxed);
                            missed.inc();
                        }
                    }
                }
            });
            Topic { sessions, task: task.abort_handle() }
        });
        entry.sessions.lock().insert(id, (tx, missed));
        Watch { hub: self.clone(), topic, id }
    }

    fn unwatch(&self, topic: &str, id: u64) {
        let mut topics = self.topics.lock();
        let Some(t) = topics.get(topic) else { return };
        let empty = {
            let mut s = t.sessions.lock();
            s.remove(&id);
            s.is_empty()
        };
        if empty && let Some(t) = topics.remove(topic) {
            t.task.abort();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for (_, t) in self.topics.get_mut().drain() {
            t.task.abort();
        }
    }
}

/// A session's interest in one topic; dropping it ends the interest.
pub struct Watch {
    hub: Arc<Hub>,
    topic: String,
    id: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.unwatch(&self.topic, self.id);
    }
}

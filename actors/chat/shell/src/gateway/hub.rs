//! The node's side of the chat topics: one pub/sub subscription per conversation topic
//! that some local session watches, however many sessions watch it (a group's message
//! reaches this node once and is handed to each local member's session here), and a
//! fixed 16 subscriptions to the user topics, whose notes go to the named user's
//! sessions (a session costs no subscription of its own).
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
}

/// A session's queue and its flag that a note was missed.
type Target = (mpsc::Sender<Note>, Arc<AtomicBool>);

struct Topic {
    sessions: Arc<Mutex<HashMap<u64, Target>>>,
    task: tokio::task::AbortHandle,
}

/// Sessions by user, for the notes of the user topics.
type ByUser = Arc<Mutex<HashMap<String, HashMap<u64, Target>>>>;

/// One per gateway incarnation.
pub struct Hub {
    pubsub: Arc<PubSub>,
    topics: Mutex<HashMap<String, Topic>>,
    users: ByUser,
    /// The tasks reading the user topics (subscribed for the hub's life).
    user_tasks: Vec<tokio::task::AbortHandle>,
    next: AtomicU64,
    missed: Counter,
}

impl Hub {
    /// A hub subscribed to the system's `USER_TOPICS` user topics, whose notes it
    /// hands to the sessions of the user each names.
    pub fn new(pubsub: Arc<PubSub>, system: &str, missed: Counter) -> Hub {
        let users: ByUser = Arc::default();
        let user_tasks = troupe_chat::ids::user_topics(system)
            .into_iter()
            .map(|topic| {
                let mut sub = pubsub.subscribe(&topic);
                let users = users.clone();
                let missed = missed.clone();
                tokio::spawn(async move {
                    while let Some(p) = sub.recv().await {
                        let notes: Vec<UserNote> = match p.decode() {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::warn!(error = %e, "undecodable user notes");
                                continue;
                            }
                        };
                        for note in notes {
                            let to: Vec<Target> = users
                                .lock()
                                .get(note.user())
                                .map(|m| m.values().cloned().collect())
                                .unwrap_or_default();
                            for (tx, flag) in to {
                                if tx.try_send(Note::User(note.clone())).is_err() {
                                    flag.store(true, Ordering::Relaxed);
                                    missed.inc();
                                }
                            }
                        }
                    }
                })
                .abort_handle()
            })
            .collect();
        Hub { pubsub, topics: Mutex::new(HashMap::new()), users, user_tasks, next: AtomicU64::new(1), missed }
    }

    /// Hands `id`'s queue the notes about `user` until the [`UserWatch`] is dropped.
    pub fn watch_user(
        self: &Arc<Self>,
        user: &str,
        id: u64,
        tx: mpsc::Sender<Note>,
        missed: Arc<AtomicBool>,
    ) -> UserWatch {
        self.users.lock().entry(user.to_string()).or_default().insert(id, (tx, missed));
        UserWatch { hub: self.clone(), user: user.to_string(), id }
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
        for t in &self.user_tasks {
            t.abort();
        }
    }
}

/// A session's interest in its user's notes; dropping it ends the interest.
pub struct UserWatch {
    hub: Arc<Hub>,
    user: String,
    id: u64,
}

impl Drop for UserWatch {
    fn drop(&mut self) {
        let mut users = self.hub.users.lock();
        if let Some(m) = users.get_mut(&self.user) {
            m.remove(&self.id);
            if m.is_empty() {
                users.remove(&self.user);
            }
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

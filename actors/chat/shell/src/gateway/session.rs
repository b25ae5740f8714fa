//! One WebSocket session: a task, not an actor. It reads the client's frames, asks the
//! conversations, and hands the client every event of the user's conversations in
//! sequence order from the client's cursors.
//!
//! Invariants:
//! - per conversation the session sends event n only right after event n-1 (or a
//!   `gap` frame naming what is no longer kept), so a client sees each event once and
//!   in order; anything else it learns of (a later event, a head beyond what it sent)
//!   makes it ask the conversation for what it missed;
//! - a catch-up that failed (the conversation was moving) is tried again every
//!   `tick`, so a lost publish delays an event by at most about a tick once the
//!   conversation answers again;
//! - a send is answered `accepted` only after the conversation made it durable.

use super::App;
use super::hub::{Note, TopicOf, Watch};
use crate::Published as Pub;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use troupe_chat::frames::{ClientFrame, ServerFrame};
use troupe_chat::ids;
use troupe_chat::proto::{ConvMsg, ConvReply, UserNote};
use troupe_runtime::ws::{WsMessage, WsReceiver, WsSender, close_code};

/// Notes a session may have waiting before it misses some (and catches up).
const NOTE_QUEUE: usize = 1024;

struct Watched {
    last: u64,
    _watch: Watch,
}

pub struct Session {
    app: Arc<App>,
    user: String,
    id: u64,
    tx: WsSender,
    notes: mpsc::Sender<Note>,
    watched: HashMap<String, Watched>,
    /// Receipts to tell conversations on the next tick: (delivered, read).
    receipts: HashMap<String, (u64, u64)>,
    /// Conversations whose catch-up failed; tried again each tick.
    behind: BTreeSet<String>,
    started: bool,
    /// When to read the user's directory entry again (a note of a new conversation is
    /// at most once, and one published before this node's subscription reached the
    /// conversation's node is lost): `DIRECTORY_FIRST` after hello, then every
    /// `directory_every_ms`.
    next_directory: tokio::time::Instant,
}

/// When a session reads the directory again after hello: past the time pub/sub takes
/// to announce a new subscription to every node (`pubsub::RESYNC`, 2 s).
const DIRECTORY_FIRST: std::time::Duration = std::time::Duration::from_secs(3);

pub async fn run(app: Arc<App>, user: String, tx: WsSender, mut rx: WsReceiver) {
    let id = app.hub.session_id();
    let (notes, mut inbox) = mpsc::channel(NOTE_QUEUE);
    let topic = ids::user_topic(&app.system, &user);
    let _user_watch = app.hub.watch(topic, TopicOf::User, id, notes.clone());
    let mut s = Session {
        app: app.clone(),
        user,
        id,
        tx,
        notes,
        watched: HashMap::new(),
        receipts: HashMap::new(),
        behind: BTreeSet::new(),
        started: false,
        next_directory: tokio::time::Instant::now(),
    };
    let mut tick = tokio::time::interval(app.params.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                let ok = match m {
                    WsMessage::Text(t) => match serde_json::from_str::<ClientFrame>(&t) {
                        Ok(f) => s.on_frame(f).await,
                        Err(e) => s.send(ServerFrame::Error { reason: format!("not a chat frame: {e}") }).await,
                    },
                    WsMessage::Binary(_) => {
                        s.send(ServerFrame::Error { reason: "frames are JSON text messages".into() }).await
                    }
                };
                if !ok {
                    break;
                }
            }
            Some(n) = inbox.recv() => {
                if s.started && !s.on_note(n).await {
                    break;
                }
            }
            _ = tick.tick() => {
                if !s.on_tick().await {
                    break;
                }
            }
        }
    }
    s.flush_receipts().await;
}

impl Session {
    /// Sends a frame; false once the session is gone.
    async fn send(&self, f: ServerFrame) -> bool {
        match serde_json::to_string(&f) {
            Ok(t) => self.tx.send(WsMessage::Text(t)).await.is_ok(),
            Err(e) => {
                self.tx.close(close_code::SERVER_ERROR, format!("cannot encode a frame: {e}")).await;
                false
            }
        }
    }

    async fn on_frame(&mut self, f: ClientFrame) -> bool {
        match f {
            ClientFrame::Hello { cursors } => self.hello(cursors).await,
            ClientFrame::Send { conv, id, text } => {
                if let Err(why) = ids::check_conversation(&conv) {
                    return self.send(ServerFrame::Rejected { id, reason: why }).await;
                }
                let msg = ConvMsg::Send { from: self.user.clone(), id: id.clone(), text, at_ms: super::now_ms() };
                match self.app.ask(&conv, msg).await {
                    Ok(ConvReply::Accepted { seq, duplicate }) => {
                        if !duplicate {
                            self.app.metrics.accepted.inc();
                        }
                        if !self.send(ServerFrame::Accepted { id, conv: conv.clone(), seq }).await {
                            return false;
                        }
                        if self.started && !self.watched.contains_key(&conv) {
                            self.watch(&conv, 0);
                            return self.catch_up(&conv).await;
                        }
                        true
                    }
                    Ok(ConvReply::Refused(reason)) => self.send(ServerFrame::Rejected { id, reason }).await,
                    Ok(other) => {
                        self.send(ServerFrame::Rejected { id, reason: format!("unexpected answer {other:?}") }).await
                    }
                    Err(e) => {
                        let reason = format!("not stored ({e}); send it again with the same id");
                        self.send(ServerFrame::Rejected { id, reason }).await
                    }
                }
            }
            ClientFrame::Ack { conv, seq } => {
                self.receipt(conv, seq, 0);
                true
            }
            ClientFrame::Read { conv, seq } => {
                self.receipt(conv, seq, seq);
                true
            }
            ClientFrame::Create { id, conv, members } => {
                if let Err(why) = ids::check_conversation(&conv) {
                    return self.send(ServerFrame::Rejected { id, reason: why }).await;
                }
                let msg = ConvMsg::Create { by: self.user.clone(), members, at_ms: super::now_ms() };
                let answer = self.app.ask(&conv, msg).await;
                self.done(id, conv, answer).await
            }
            ClientFrame::Members { id, conv, add, remove } => {
                if let Err(why) = ids::check_conversation(&conv) {
                    return self.send(ServerFrame::Rejected { id, reason: why }).await;
                }
                let msg = ConvMsg::Members { by: self.user.clone(), add, remove, at_ms: super::now_ms() };
                let answer = self.app.ask(&conv, msg).await;
                self.done(id, conv, answer).await
            }
        }
    }

    async fn done(&mut self, id: String, conv: String, answer: Result<ConvReply, troupe_runtime::RemoteError>) -> bool {
        match answer {
            Ok(ConvReply::Created { head, .. } | ConvReply::MembersChanged { head, .. }) => {
                if !self.send(ServerFrame::Done { id, conv: conv.clone(), head }).await {
                    return false;
                }
                if self.started && !self.watched.contains_key(&conv) {
                    self.watch(&conv, 0);
                    return self.catch_up(&conv).await;
                }
                true
            }
            Ok(ConvReply::Refused(reason)) => self.send(ServerFrame::Rejected { id, reason }).await,
            Ok(other) => self.send(ServerFrame::Rejected { id, reason: format!("unexpected answer {other:?}") }).await,
            Err(e) => self.send(ServerFrame::Rejected { id, reason: format!("not done ({e}); try again") }).await,
        }
    }

    fn receipt(&mut self, conv: String, delivered: u64, read: u64) {
        if !self.watched.contains_key(&conv) {
            return;
        }
        let r = self.receipts.entry(conv).or_default();
        r.0 = r.0.max(delivered).max(read);
        r.1 = r.1.max(read);
    }

    async fn hello(&mut self, cursors: BTreeMap<String, u64>) -> bool {
        if self.started {
            return self.send(ServerFrame::Error { reason: "hello was said already on this session".into() }).await;
        }
        let list = match self.app.conversations_of(&self.user).await {
            Ok(list) => list,
            Err(why) => {
                let reason = format!("cannot read your conversations now ({why}); say hello again");
                return self.send(ServerFrame::Error { reason }).await;
            }
        };
        self.started = true;
        self.next_directory = tokio::time::Instant::now() + DIRECTORY_FIRST;
        let mut all: BTreeSet<String> = list.into_iter().collect();
        all.extend(cursors.keys().filter(|c| ids::check_conversation(c).is_ok()).cloned());
        if !self
            .send(ServerFrame::Ready { user: self.user.clone(), conversations: all.iter().cloned().collect() })
            .await
        {
            return false;
        }
        for conv in &all {
            self.watch(conv, cursors.get(conv).copied().unwrap_or(0));
        }
        for conv in &all {
            if !self.catch_up(conv).await {
                return false;
            }
        }
        true
    }

    fn watch(&mut self, conv: &str, last: u64) {
        let topic = ids::conversation_topic(&self.app.system, conv);
        let w = self.app.hub.watch(topic, TopicOf::Conversation(conv.into()), self.id, self.notes.clone());
        self.watched.insert(conv.to_string(), Watched { last, _watch: w });
    }

    fn unwatch(&mut self, conv: &str) {
        self.watched.remove(conv);
        self.behind.remove(conv);
        self.receipts.remove(conv);
    }

    /// Sends everything of `conv` after what this session sent, in order.
    async fn catch_up(&mut self, conv: &str) -> bool {
        self.app.metrics.catch_ups.inc();
        loop {
            let Some(last) = self.watched.get(conv).map(|w| w.last) else { return true };
            let msg = ConvMsg::Since { user: self.user.clone(), after: last, max: self.app.params.since_max };
            match self.app.ask(conv, msg).await {
                Ok(ConvReply::Events { events, oldest, head }) => {
                    self.behind.remove(conv);
                    let mut last = last;
                    if oldest > last + 1 {
                        self.app.metrics.gaps.inc();
                        if !self.send(ServerFrame::Gap { conv: conv.to_string(), from: last + 1, to: oldest - 1 }).await
                        {
                            return false;
                        }
                        last = oldest - 1;
                    }
                    let n = events.len();
                    for e in events {
                        if e.seq == last + 1 {
                            last = e.seq;
                            let f =
                                ServerFrame::Event { conv: conv.to_string(), seq: e.seq, at_ms: e.at_ms, body: e.body };
                            if !self.send(f).await {
                                return false;
                            }
                            self.app.metrics.delivered.inc();
                        }
                    }
                    if let Some(w) = self.watched.get_mut(conv) {
                        w.last = last;
                    }
                    if n == 0 || last >= head {
                        return true;
                    }
                }
                Ok(ConvReply::Refused(why)) => {
                    tracing::debug!(conv, user = %self.user, reason = %why, "not watching a conversation");
                    self.unwatch(conv);
                    return true;
                }
                Ok(other) => {
                    tracing::warn!(conv, answer = ?other, "unexpected answer to Since");
                    self.behind.insert(conv.to_string());
                    return true;
                }
                Err(e) => {
                    tracing::debug!(conv, error = %e, "catch-up failed; retried next tick");
                    self.behind.insert(conv.to_string());
                    return true;
                }
            }
        }
    }

    async fn on_note(&mut self, n: Note) -> bool {
        match n {
            Note::Conv(conv, p) => {
                let Some(last) = self.watched.get(&*conv).map(|w| w.last) else { return true };
                match &*p {
                    Pub::Event(e) if e.seq == last + 1 => {
                        if let Some(w) = self.watched.get_mut(&*conv) {
                            w.last = e.seq;
                        }
                        let f = ServerFrame::Event {
                            conv: conv.to_string(),
                            seq: e.seq,
                            at_ms: e.at_ms,
                            body: e.body.clone(),
                        };
                        if !self.send(f).await {
                            return false;
                        }
                        self.app.metrics.delivered.inc();
                        true
                    }
                    Pub::Event(e) if e.seq > last + 1 => self.catch_up(&conv).await,
                    Pub::Head(h) if *h > last => self.catch_up(&conv).await,
                    Pub::Receipts(list) => {
                        self.send(ServerFrame::Receipts { conv: conv.to_string(), receipts: list.clone() }).await
                    }
                    _ => true,
                }
            }
            Note::User(UserNote::Joined { conv }) => {
                if self.watched.contains_key(&conv) {
                    return true;
                }
                self.watch(&conv, 0);
                self.catch_up(&conv).await
            }
            Note::User(UserNote::Left { conv }) => {
                // Hand over what came before the leaving (the conversation refuses a
                // non-member's catch-up, which ends the watch).
                self.catch_up(&conv).await
            }
        }
    }

    async fn on_tick(&mut self) -> bool {
        self.flush_receipts().await;
        if self.started && tokio::time::Instant::now() >= self.next_directory {
            self.next_directory = tokio::time::Instant::now() + self.app.params.directory_every();
            match self.app.conversations_of(&self.user).await {
                Ok(list) => {
                    for conv in list {
                        if !self.watched.contains_key(&conv) {
                            self.watch(&conv, 0);
                            if !self.catch_up(&conv).await {
                                return false;
                            }
                        }
                    }
                }
                Err(why) => tracing::debug!(user = %self.user, reason = %why, "directory not read; next time"),
            }
        }
        let behind: Vec<String> = self.behind.iter().cloned().collect();
        for conv in behind {
            if !self.catch_up(&conv).await {
                return false;
            }
        }
        !self.tx.is_closed()
    }

    async fn flush_receipts(&mut self) {
        for (conv, (delivered, read)) in std::mem::take(&mut self.receipts) {
            let msg = ConvMsg::Receipt { user: self.user.clone(), delivered, read };
            // At most once: the next ack repeats a lost receipt.
            self.app.tell(&conv, msg).await;
        }
    }
}

//! One WebSocket session: a task, not an actor. It reads the client's frames, asks the
//! conversations, and hands the client every event of the user's conversations in
//! sequence order from the client's cursors.
//!
//! Invariants:
//! - per conversation the session sends event n only right after event n-1 (or a
//!   `gap` / `too_big` frame naming what it cannot send), so a client sees each event
//!   once and in order; anything else it learns of (a later event, a head beyond
//!   what it sent) makes it ask the conversation for what it missed;
//! - a watch forwards published events only after one catch-up succeeded for it (the
//!   conversation checked membership), and ends on the event that removes the user;
//! - a missed note is made up for: a catch-up that failed is tried again every
//!   `tick`, a full queue makes the session catch up on everything it watches, and
//!   every new watch is caught up again `RECHECK` later (past pub/sub's announcement
//!   of the new subscription); the conversation republishes its head every few ticks;
//! - a send is answered `accepted` only after the conversation made it durable;
//! - a frame over the gateway's largest message never ends the session: an event is
//!   replaced by `too_big`, a list is split.

use super::App;
use super::hub::{Note, TopicOf, Watch};
use crate::Published as Pub;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use troupe_chat::frames::{ClientFrame, ServerFrame};
use troupe_chat::proto::{ConvMsg, ConvReply, UserNote};
use troupe_chat::{Event, EventBody, ids};
use troupe_runtime::ws::{WsMessage, WsReceiver, WsSendError, WsSender};

/// Notes a session may have waiting before it misses some (and catches up).
const NOTE_QUEUE: usize = 1024;
/// When a session reads the directory again after hello, and catches up a new watch
/// again: past the time pub/sub takes to announce a new subscription everywhere
/// (`pubsub::RESYNC`, 2 s).
const RECHECK: Duration = Duration::from_secs(3);
/// Conversations named in hello's cursors that the directory does not list (a
/// direct conversation created a moment ago) taken at most.
const CURSORS_EXTRA_MAX: usize = 64;
/// Conversation ids per `ready` frame.
const READY_CHUNK: usize = 200;
/// Cursors of conversations the user left, kept for a rejoin in this session.
const LEFT_KEPT: usize = 256;

struct Watched {
    last: u64,
    /// A catch-up succeeded: the conversation knows the user as a member.
    confirmed: bool,
    _watch: Watch,
}

pub struct Session {
    app: Arc<App>,
    user: String,
    id: u64,
    tx: WsSender,
    notes: mpsc::Sender<Note>,
    missed: Arc<AtomicBool>,
    watched: HashMap<String, Watched>,
    /// Where the client was in conversations it left, for a rejoin.
    left: HashMap<String, u64>,
    /// Receipts to tell conversations on the next tick: (delivered, read).
    receipts: HashMap<String, (u64, u64)>,
    /// Conversations whose catch-up failed; tried again each tick.
    behind: BTreeSet<String>,
    /// New watches to catch up once more, when due.
    rechecks: VecDeque<(Instant, String)>,
    started: bool,
    /// When to read the user's directory entry again (a note of a new conversation is
    /// at most once): `RECHECK` after hello, then every `directory_every_ms`.
    next_directory: Instant,
}

pub async fn run(app: Arc<App>, user: String, tx: WsSender, mut rx: WsReceiver) {
    let id = app.hub.session_id();
    let (notes, mut inbox) = mpsc::channel(NOTE_QUEUE);
    let missed = Arc::new(AtomicBool::new(false));
    let _user_watch = app.hub.watch_user(&user, id, notes.clone(), missed.clone());
    let _online = app.presence.connect(&user);
    let mut s = Session {
        app: app.clone(),
        user,
        id,
        tx,
        notes,
        missed,
        watched: HashMap::new(),
        left: HashMap::new(),
        receipts: HashMap::new(),
        behind: BTreeSet::new(),
        rechecks: VecDeque::new(),
        started: false,
        next_directory: Instant::now(),
    };
    let mut tick = tokio::time::interval(app.params.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                let ok = match m {
                    WsMessage::Text(t) => match serde_json::from_str::<ClientFrame>(&t) {
                        // Boxed: an idle session's task holds only the select's
                        // state, not the largest nested request's.
                        Ok(f) => Box::pin(s.on_frame(f)).await,
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
                if s.started && !Box::pin(s.on_note(n)).await {
                    break;
                }
            }
            _ = tick.tick() => {
                if !Box::pin(s.on_tick()).await {
                    break;
                }
            }
        }
    }
    s.flush_receipts().await;
}

impl Session {
    /// Sends a frame; false once the session is gone. A frame over the largest
    /// message is replaced (an event by `too_big`, anything else by an error).
    async fn send(&self, f: ServerFrame) -> bool {
        let t = match serde_json::to_string(&f) {
            Ok(t) => t,
            Err(e) => format!("{{\"type\":\"error\",\"reason\":\"cannot encode a frame: {e}\"}}"),
        };
        let bytes = t.len() as u64;
        match self.tx.send(WsMessage::Text(t)).await {
            Ok(()) => true,
            Err(WsSendError::TooBig) => {
                let instead = match f {
                    ServerFrame::Event { conv, seq, .. } => ServerFrame::TooBig { conv, seq, bytes },
                    _ => ServerFrame::Error {
                        reason: format!("a frame of {bytes} bytes is over this gateway's largest"),
                    },
                };
                let t = serde_json::to_string(&instead).unwrap_or_default();
                self.tx.send(WsMessage::Text(t)).await.is_ok()
            }
            Err(_) => false,
        }
    }

    async fn on_frame(&mut self, f: ClientFrame) -> bool {
        match f {
            ClientFrame::Hello { cursors } => self.hello(cursors).await,
            ClientFrame::Presence { users } => {
                let users = self.app.presence.query(&users);
                self.send(ServerFrame::Presence { users }).await
            }
            ClientFrame::Send { conv, id, text } => {
                if let Err(why) = ids::check_conversation(&conv) {
                    return self.send(ServerFrame::Rejected { id, reason: why }).await;
                }
                if let Err(reason) = self.app.admit_send(&self.user).await {
                    return self.send(ServerFrame::Rejected { id, reason }).await;
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
                        self.watch_new(&conv).await
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
                if let Err(reason) = self.app.admit_send(&self.user).await {
                    return self.send(ServerFrame::Rejected { id, reason }).await;
                }
                let msg = ConvMsg::Create { by: self.user.clone(), members, at_ms: super::now_ms() };
                let answer = self.app.ask(&conv, msg).await;
                self.done(id, conv, answer).await
            }
            ClientFrame::Members { id, conv, add, remove } => {
                if let Err(why) = ids::check_conversation(&conv) {
                    return self.send(ServerFrame::Rejected { id, reason: why }).await;
                }
                if let Err(reason) = self.app.admit_send(&self.user).await {
                    return self.send(ServerFrame::Rejected { id, reason }).await;
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
                self.watch_new(&conv).await
            }
            Ok(ConvReply::Refused(reason)) => self.send(ServerFrame::Rejected { id, reason }).await,
            Ok(other) => self.send(ServerFrame::Rejected { id, reason: format!("unexpected answer {other:?}") }).await,
            Err(e) => self.send(ServerFrame::Rejected { id, reason: format!("not done ({e}); try again") }).await,
        }
    }

    /// After hello, starts watching `conv` if it does not yet (from where the user
    /// left it, if it did in this session).
    async fn watch_new(&mut self, conv: &str) -> bool {
        if !self.started || self.watched.contains_key(conv) {
            return true;
        }
        let from = self.left.remove(conv).unwrap_or(0);
        self.watch(conv, from);
        self.catch_up(conv).await
    }

    fn receipt(&mut self, conv: String, delivered: u64, read: u64) {
        if !self.watched.get(&conv).is_some_and(|w| w.confirmed) {
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
        self.next_directory = Instant::now() + RECHECK;
        let mut all: BTreeSet<String> = list.into_iter().collect();
        let extra: Vec<String> = cursors
            .keys()
            .filter(|c| !all.contains(*c) && ids::check_conversation(c).is_ok())
            .take(CURSORS_EXTRA_MAX)
            .cloned()
            .collect();
        all.extend(extra);
        let ids: Vec<String> = all.iter().cloned().collect();
        let chunks: Vec<&[String]> = if ids.is_empty() { vec![&[]] } else { ids.chunks(READY_CHUNK).collect() };
        for (i, chunk) in chunks.iter().enumerate() {
            let f = ServerFrame::Ready {
                user: self.user.clone(),
                conversations: chunk.to_vec(),
                more: i + 1 < chunks.len(),
            };
            if !self.send(f).await {
                return false;
            }
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
        let w = self.app.hub.watch(
            topic,
            TopicOf::Conversation(conv.into()),
            self.id,
            self.notes.clone(),
            self.missed.clone(),
        );
        self.watched.insert(conv.to_string(), Watched { last, confirmed: false, _watch: w });
        self.rechecks.push_back((Instant::now() + RECHECK, conv.to_string()));
    }

    fn unwatch(&mut self, conv: &str) {
        if let Some(w) = self.watched.remove(conv) {
            if self.left.len() >= LEFT_KEPT
                && let Some(k) = self.left.keys().next().cloned()
            {
                self.left.remove(&k);
            }
            self.left.insert(conv.to_string(), w.last);
        }
        self.behind.remove(conv);
        self.receipts.remove(conv);
    }

    /// Sends one event (the next of its conversation); ends the watch on the event
    /// that removes this user. False once the session is gone.
    async fn deliver(&mut self, conv: &str, e: Event) -> bool {
        let seq = e.seq;
        let gone = matches!(&e.body, EventBody::Left { users, .. } if users.contains(&self.user));
        if let Some(w) = self.watched.get_mut(conv) {
            w.last = seq;
        }
        let f = ServerFrame::Event { conv: conv.to_string(), seq, at_ms: e.at_ms, body: e.body };
        if !self.send(f).await {
            return false;
        }
        self.app.metrics.delivered.inc();
        if gone {
            self.unwatch(conv);
        }
        true
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
                    if let Some(w) = self.watched.get_mut(conv) {
                        w.confirmed = true;
                    }
                    if last > head {
                        // The client claims more than there is: go on from the head.
                        let reason =
                            format!("your cursor {last} of {conv} is past its last event {head}; going on from {head}");
                        last = head;
                        if let Some(w) = self.watched.get_mut(conv) {
                            w.last = head;
                        }
                        if !self.send(ServerFrame::Error { reason }).await {
                            return false;
                        }
                    }
                    if oldest > last.saturating_add(1) {
                        self.app.metrics.gaps.inc();
                        if !self.send(ServerFrame::Gap { conv: conv.to_string(), from: last + 1, to: oldest - 1 }).await
                        {
                            return false;
                        }
                        last = oldest - 1;
                        if let Some(w) = self.watched.get_mut(conv) {
                            w.last = last;
                        }
                    }
                    let n = events.len();
                    for e in events {
                        if !self.watched.contains_key(conv) {
                            return true;
                        }
                        if e.seq == last.saturating_add(1) {
                            last = e.seq;
                            if !self.deliver(conv, e).await {
                                return false;
                            }
                        }
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
                let Some((last, confirmed)) = self.watched.get(&*conv).map(|w| (w.last, w.confirmed)) else {
                    return true;
                };
                match &*p {
                    Pub::Event(_) | Pub::Head(_) if !confirmed => self.catch_up(&conv).await,
                    Pub::Event(e) if e.seq == last.saturating_add(1) => self.deliver(&conv, e.clone()).await,
                    Pub::Event(e) if e.seq > last => self.catch_up(&conv).await,
                    Pub::Head(h) if *h > last => self.catch_up(&conv).await,
                    Pub::Receipts(list) if confirmed => {
                        self.send(ServerFrame::Receipts { conv: conv.to_string(), receipts: list.clone() }).await
                    }
                    _ => true,
                }
            }
            Note::User(UserNote::Joined { conv, .. }) => self.watch_new(&conv).await,
            Note::User(UserNote::Left { conv, .. }) => {
                // Hand over what came before the leaving; the conversation refuses a
                // non-member's catch-up, which ends the watch.
                self.catch_up(&conv).await
            }
        }
    }

    async fn on_tick(&mut self) -> bool {
        self.flush_receipts().await;
        let now = Instant::now();
        let mut again: BTreeSet<String> = std::mem::take(&mut self.behind);
        if self.missed.swap(false, Ordering::Relaxed) {
            again.extend(self.watched.keys().cloned());
        }
        while self.rechecks.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, conv)) = self.rechecks.pop_front() {
                again.insert(conv);
            }
        }
        if self.started && now >= self.next_directory {
            self.next_directory = now + self.app.params.directory_every();
            match self.app.conversations_of(&self.user).await {
                Ok(list) => {
                    for conv in list {
                        if !self.watched.contains_key(&conv) {
                            let from = self.left.remove(&conv).unwrap_or(0);
                            self.watch(&conv, from);
                            again.insert(conv);
                        }
                    }
                }
                Err(why) => tracing::debug!(user = %self.user, reason = %why, "directory not read; next time"),
            }
        }
        for conv in again {
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

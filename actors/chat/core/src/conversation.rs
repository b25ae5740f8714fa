//! One conversation's state: its members, its sequence, the events it still keeps
//! (messages and membership changes share one sequence, so a client sees who was in
//! the room in order with what was said), each member's receipts, and how far the
//! members' directory entries were written.
//!
//! The shell plans a change with the state (`plan_*`: nothing changes yet), makes the
//! planned [`Entry`]s durable, then [`ConvState::apply`]s them — the same function
//! recovery replays the log with, so the state after a crash is the state that was
//! acknowledged.
//!
//! Invariants:
//! - sequence numbers are consecutive from 1: event n+1 is applied only after event n;
//! - a message is identified by (sender, client id): while its event is still kept,
//!   the same pair is answered with the sequence number it got (a retry after a lost
//!   ack is not a second message); the window is the kept history (`history_max`
//!   events and `history_bytes_max` bytes, the newest);
//! - only members send, read and change membership; a direct conversation's members
//!   are its two users, fixed.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// The bounds a conversation keeps to (the `conversation` kind's params).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Members at most (a group of this many costs one publish per gateway node).
    pub members_max: usize,
    /// Events kept for catching up (and the dedup window), newest first.
    pub history_max: usize,
    /// Bytes of events kept at most (message text and ids).
    pub history_bytes_max: usize,
    /// Bytes of one message's text at most.
    pub text_bytes_max: usize,
    /// Bytes of a client message id at most.
    pub client_id_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            members_max: 1024,
            history_max: 2000,
            history_bytes_max: 4 << 20,
            text_bytes_max: 16 << 10,
            client_id_bytes_max: 64,
        }
    }
}

/// One event of a conversation, numbered in its sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its number: 1, 2, 3, … in the conversation.
    pub seq: u64,
    /// When the gateway took it (wall clock, ms since the Unix epoch).
    pub at_ms: u64,
    /// What happened.
    pub body: EventBody,
}

/// What an event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventBody {
    /// A message: its sender, the sender's id for it, and its text (ciphertext for an
    /// end-to-end encrypted client: the server never looks inside).
    Message { from: String, id: String, text: String },
    /// The conversation began with these members.
    Created { by: String, members: Vec<String> },
    /// Users added.
    Joined { by: String, users: Vec<String> },
    /// Users removed (or who left).
    Left { by: String, users: Vec<String> },
}

impl Event {
    fn bytes(&self) -> usize {
        64 + match &self.body {
            EventBody::Message { from, id, text } => from.len() + id.len() + text.len(),
            EventBody::Created { by, members: users }
            | EventBody::Joined { by, users }
            | EventBody::Left { by, users } => by.len() + users.iter().map(|u| u.len() + 8).sum::<usize>(),
        }
    }
}

/// One entry of a conversation's durable log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// An event, at its sequence number.
    Event(Event),
    /// Members' receipts that moved: (user, delivered up to, read up to).
    Receipts(Vec<(String, u64, u64)>),
    /// The members' directory entries are written for every membership event up to
    /// this sequence number.
    DirectorySynced(u64),
}

/// What a send turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The same (sender, id) was already taken: its sequence number, nothing new.
    Duplicate(u64),
    /// Events to make durable (a direct conversation's first message also creates it).
    Append(Vec<Event>),
}

/// A conversation's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvState {
    /// Whether it was created (its first event is `Created`).
    pub created: bool,
    /// Who created it (may remove anyone; others may remove only themselves).
    pub creator: String,
    /// Its members now.
    pub members: BTreeSet<String>,
    /// The last sequence number given (0: none yet).
    pub head: u64,
    /// Kept events, oldest first, consecutive, ending at `head`.
    pub history: VecDeque<Event>,
    /// Bytes of `history` (as `Event::bytes` counts).
    pub history_bytes: usize,
    /// Each member's receipts: (delivered up to, read up to).
    pub receipts: BTreeMap<String, (u64, u64)>,
    /// Membership events up to here have their directory entries written.
    pub directory_synced: u64,
    /// The last membership event's sequence number.
    pub last_membership: u64,
    /// Users who left and whose directory entries still list this conversation
    /// (cleared when the directory is synced up to the last membership event).
    pub pending_left: BTreeSet<String>,
    /// (sender, client id) → sequence number, for every kept message.
    #[serde(skip)]
    index: HashMap<(String, String), u64>,
}

impl ConvState {
    /// Rebuilds what is derived (the dedup index) after decoding a snapshot.
    pub fn reindex(&mut self) {
        self.index.clear();
        for e in &self.history {
            if let EventBody::Message { from, id, .. } = &e.body {
                self.index.insert((from.clone(), id.clone()), e.seq);
            }
        }
    }

    /// Whether `user` is a member now.
    pub fn is_member(&self, user: &str) -> bool {
        self.members.contains(user)
    }

    /// The oldest sequence number still kept (`head + 1` when none is).
    pub fn oldest(&self) -> u64 {
        self.history.front().map_or(self.head + 1, |e| e.seq)
    }

    /// Plans the creation of conversation `conv` by `by` with `members` (`by`
    /// included). Creating it again with the same members is not an error and plans
    /// nothing (a retried create).
    pub fn plan_create(
        &self,
        conv: &str,
        by: &str,
        members: &[String],
        at_ms: u64,
        limits: &Limits,
    ) -> Result<Option<Event>, String> {
        let mut set: BTreeSet<String> = members.iter().cloned().collect();
        set.insert(by.to_string());
        for u in &set {
            crate::ids::check_user(u)?;
        }
        if let Some((a, b)) = crate::ids::direct_members(conv) {
            let want: BTreeSet<String> = [a.to_string(), b.to_string()].into();
            if set != want {
                return Err(format!("{conv} is a direct conversation: its members are {a} and {b}, no one else"));
            }
        } else if conv.starts_with("dm:") {
            return Err(format!("{conv}: ids starting with `dm:` are direct conversations, `dm:<a>:<b>` with a < b"));
        }
        if set.len() > limits.members_max {
            return Err(format!("a conversation has at most {} members, not {}", limits.members_max, set.len()));
        }
        if self.created {
            return if self.members == set || (self.creator == by && set.is_subset(&self.members)) {
                Ok(None)
            } else {
                Err(format!("conversation {conv} exists already with other members"))
            };
        }
        Ok(Some(Event {
            seq: self.head + 1,
            at_ms,
            body: EventBody::Created { by: by.to_string(), members: set.into_iter().collect() },
        }))
    }

    /// Plans a message from `from` with the client's id `id`.
    pub fn plan_send(
        &self,
        conv: &str,
        from: &str,
        id: &str,
        text: &str,
        at_ms: u64,
        limits: &Limits,
    ) -> Result<SendOutcome, String> {
        if id.is_empty() || id.len() > limits.client_id_bytes_max {
            return Err(format!("a message id is 1..={} bytes, not {}", limits.client_id_bytes_max, id.len()));
        }
        if text.len() > limits.text_bytes_max {
            return Err(format!("a message is at most {} bytes, not {}", limits.text_bytes_max, text.len()));
        }
        if let Some(seq) = self.index.get(&(from.to_string(), id.to_string())) {
            return Ok(SendOutcome::Duplicate(*seq));
        }
        let mut out = Vec::new();
        if !self.created {
            // A direct conversation comes into being with its first message.
            match crate::ids::direct_members(conv) {
                Some((a, b)) if from == a || from == b => {
                    let members = vec![a.to_string(), b.to_string()];
                    if let Some(e) = self.plan_create(conv, from, &members, at_ms, limits)? {
                        out.push(e);
                    }
                }
                Some(_) => return Err(format!("{from} is not a member of {conv}")),
                None => return Err(format!("no conversation {conv}: create it first")),
            }
        } else if !self.is_member(from) {
            return Err(format!("{from} is not a member of {conv}"));
        }
        out.push(Event {
            seq: self.head + 1 + out.len() as u64,
            at_ms,
            body: EventBody::Message { from: from.to_string(), id: id.to_string(), text: text.to_string() },
        });
        Ok(SendOutcome::Append(out))
    }

    /// Plans a membership change by `by`: `add` joins, `remove` leaves. Adding a
    /// member or removing a non-member plans nothing for that user (a retry is a no-op).
    pub fn plan_members(
        &self,
        conv: &str,
        by: &str,
        add: &[String],
        remove: &[String],
        at_ms: u64,
        limits: &Limits,
    ) -> Result<Vec<Event>, String> {
        if !self.created {
            return Err(format!("no conversation {conv}"));
        }
        if crate::ids::direct_members(conv).is_some() {
            return Err(format!("{conv} is a direct conversation: its members cannot change"));
        }
        if !self.is_member(by) {
            return Err(format!("{by} is not a member of {conv}"));
        }
        for u in add.iter().chain(remove) {
            crate::ids::check_user(u)?;
        }
        let joined: BTreeSet<String> = add.iter().filter(|u| !self.is_member(u)).cloned().collect();
        let left: BTreeSet<String> = remove.iter().filter(|u| self.is_member(u)).cloned().collect();
        if let Some(other) = left.iter().find(|u| *u != by && by != self.creator) {
            return Err(format!(
                "only {} (who created {conv}) may remove {other}; members may remove themselves",
                self.creator
            ));
        }
        if self.members.len() + joined.len() - left.len().min(self.members.len()) > limits.members_max {
            return Err(format!("a conversation has at most {} members", limits.members_max));
        }
        let mut out = Vec::new();
        let mut seq = self.head;
        if !joined.is_empty() {
            seq += 1;
            out.push(Event {
                seq,
                at_ms,
                body: EventBody::Joined { by: by.to_string(), users: joined.into_iter().collect() },
            });
        }
        if !left.is_empty() {
            seq += 1;
            out.push(Event {
                seq,
                at_ms,
                body: EventBody::Left { by: by.to_string(), users: left.into_iter().collect() },
            });
        }
        Ok(out)
    }

    /// Applies one durable entry (after it was written, and in recovery).
    pub fn apply(&mut self, entry: &Entry, limits: &Limits) {
        match entry {
            Entry::Event(e) => {
                if e.seq != self.head + 1 {
                    // Replayed twice or out of order: the log is the order, skip it.
                    return;
                }
                self.head = e.seq;
                match &e.body {
                    EventBody::Message { from, id, .. } => {
                        self.index.insert((from.clone(), id.clone()), e.seq);
                    }
                    EventBody::Created { by, members } => {
                        self.created = true;
                        self.creator = by.clone();
                        self.members = members.iter().cloned().collect();
                        self.last_membership = e.seq;
                    }
                    EventBody::Joined { users, .. } => {
                        for u in users {
                            self.pending_left.remove(u);
                        }
                        self.members.extend(users.iter().cloned());
                        self.last_membership = e.seq;
                    }
                    EventBody::Left { users, .. } => {
                        for u in users {
                            self.members.remove(u);
                            self.receipts.remove(u);
                            self.pending_left.insert(u.clone());
                        }
                        self.last_membership = e.seq;
                    }
                }
                self.history_bytes += e.bytes();
                self.history.push_back(e.clone());
                while self.history.len() > limits.history_max.max(1)
                    || (self.history_bytes > limits.history_bytes_max && self.history.len() > 1)
                {
                    let Some(old) = self.history.pop_front() else { break };
                    self.history_bytes -= old.bytes();
                    if let EventBody::Message { from, id, .. } = old.body {
                        self.index.remove(&(from, id));
                    }
                }
            }
            Entry::Receipts(list) => {
                for (user, delivered, read) in list {
                    if self.is_member(user) {
                        let r = self.receipts.entry(user.clone()).or_default();
                        r.0 = r.0.max(*delivered).min(self.head);
                        r.1 = r.1.max(*read).min(self.head);
                    }
                }
            }
            Entry::DirectorySynced(seq) => {
                self.directory_synced = self.directory_synced.max(*seq);
                if self.directory_synced >= self.last_membership {
                    self.pending_left.clear();
                }
            }
        }
    }

    /// Events after `after`, at most `max`: (events, the oldest kept sequence number).
    /// When `after + 1` is older than the oldest kept, the events start at the oldest
    /// kept and the caller tells the client what it can no longer get.
    pub fn since(&self, after: u64, max: usize) -> (Vec<Event>, u64) {
        let oldest = self.oldest();
        let from = after.saturating_add(1).max(oldest);
        let skip = usize::try_from(from - oldest).unwrap_or(usize::MAX);
        (self.history.iter().skip(skip).take(max).cloned().collect(), oldest)
    }

    /// The sequence number of the event that removed `user`, while it is still kept
    /// (and the user has not joined again since).
    pub fn left_at(&self, user: &str) -> Option<u64> {
        if self.is_member(user) {
            return None;
        }
        self.history.iter().rev().find_map(|e| match &e.body {
            EventBody::Left { users, .. } if users.iter().any(|u| u == user) => Some(e.seq),
            _ => None,
        })
    }

    /// What `user` may read after `after` (at most `max`): a member everything, a user
    /// who left everything up to the event that removed them — so the leaving itself
    /// reaches their devices, and nothing after it. (events, oldest kept, head as the
    /// user sees it.)
    pub fn since_for(&self, user: &str, after: u64, max: usize) -> Result<(Vec<Event>, u64, u64), String> {
        let head = if self.is_member(user) {
            self.head
        } else {
            self.left_at(user).ok_or_else(|| format!("{user} is not a member of this conversation"))?
        };
        let (mut events, oldest) = self.since(after, max);
        events.retain(|e| e.seq <= head);
        Ok((events, oldest, head))
    }

    /// Records a member's receipt in memory; true when it moved (to be written and
    /// told).
    pub fn receipt(&mut self, user: &str, delivered: u64, read: u64) -> bool {
        if !self.is_member(user) {
            return false;
        }
        let head = self.head;
        let r = self.receipts.entry(user.to_string()).or_default();
        let before = *r;
        r.0 = r.0.max(delivered.min(head));
        r.1 = r.1.max(read.min(head));
        r.0 = r.0.max(r.1);
        *r != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn commit(st: &mut ConvState, events: Vec<Event>, l: &Limits) {
        for e in events {
            st.apply(&Entry::Event(e), l);
        }
    }

    fn send(st: &mut ConvState, from: &str, id: &str, l: &Limits) -> Result<u64, String> {
        match st.plan_send("room", from, id, "hi", 1, l)? {
            SendOutcome::Duplicate(seq) => Ok(seq),
            SendOutcome::Append(ev) => {
                let seq = ev.last().map(|e| e.seq).unwrap_or(0);
                commit(st, ev, l);
                Ok(seq)
            }
        }
    }

    #[test]
    fn a_group_numbers_messages_and_membership_in_one_sequence() {
        let l = Limits::default();
        let mut st = ConvState::default();
        assert!(st.plan_send("room", "a", "1", "x", 1, &l).unwrap_err().contains("create it first"));
        let c = st.plan_create("room", "a", &s(&["b", "c"]), 1, &l).unwrap().unwrap();
        commit(&mut st, vec![c], &l);
        assert_eq!(st.members, ["a", "b", "c"].iter().map(|x| x.to_string()).collect());
        assert_eq!(send(&mut st, "b", "m1", &l), Ok(2));
        assert_eq!(send(&mut st, "b", "m1", &l), Ok(2), "a retry gets the same number");
        assert!(send(&mut st, "d", "m1", &l).unwrap_err().contains("not a member"));
        let ev = st.plan_members("room", "b", &s(&["d"]), &s(&["b"]), 2, &l).unwrap();
        assert_eq!(ev.len(), 2);
        commit(&mut st, ev, &l);
        assert_eq!(st.head, 4);
        assert!(st.plan_members("room", "a", &s(&["d"]), &[], 3, &l).unwrap().is_empty(), "no-op retry");
        assert!(st.plan_members("room", "d", &[], &s(&["c"]), 3, &l).unwrap_err().contains("only a"));
        assert_eq!(send(&mut st, "d", "m2", &l), Ok(5));
        let (ev, oldest) = st.since(3, 10);
        assert_eq!((ev.iter().map(|e| e.seq).collect::<Vec<_>>(), oldest), (vec![4, 5], 1));
    }

    #[test]
    fn a_direct_conversation_starts_with_its_first_message_and_keeps_its_two_members() {
        let l = Limits::default();
        let mut st = ConvState::default();
        let id = crate::ids::direct("bob", "alice");
        assert!(st.plan_send(&id, "carol", "1", "x", 1, &l).unwrap_err().contains("not a member"));
        let SendOutcome::Append(ev) = st.plan_send(&id, "bob", "1", "x", 1, &l).unwrap() else { panic!() };
        assert_eq!(ev.len(), 2);
        assert!(matches!(ev[0].body, EventBody::Created { .. }));
        commit(&mut st, ev, &l);
        assert_eq!(st.head, 2);
        assert!(st.plan_members(&id, "bob", &s(&["carol"]), &[], 1, &l).unwrap_err().contains("cannot change"));
        assert!(st.plan_create("dm:x", "x", &[], 1, &l).unwrap_err().contains("dm:<a>:<b>"));
        assert!(st.plan_create(&id, "bob", &s(&["carol"]), 1, &l).unwrap_err().contains("no one else"));
    }

    #[test]
    fn history_is_bounded_and_the_dedup_window_with_it() {
        let l = Limits { history_max: 10, ..Limits::default() };
        let mut st = ConvState::default();
        let c = st.plan_create("room", "a", &[], 1, &l).unwrap().unwrap();
        commit(&mut st, vec![c], &l);
        for i in 0..30 {
            send(&mut st, "a", &format!("m{i}"), &l).unwrap();
        }
        assert_eq!(st.history.len(), 10);
        assert_eq!(st.oldest(), 22);
        let (ev, oldest) = st.since(5, 100);
        assert_eq!((ev.first().map(|e| e.seq), oldest), (Some(22), 22), "starts at the oldest kept");
        assert_eq!(send(&mut st, "a", "m29", &l), Ok(31), "still in the window");
        assert_eq!(send(&mut st, "a", "m0", &l), Ok(32), "out of the window: a new message");
        // Snapshot round trip: the index comes back.
        let mut back: ConvState = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        back.reindex();
        assert_eq!(back, st);
        assert_eq!(send(&mut back, "a", "m29", &l), Ok(31));
    }

    #[test]
    fn bytes_bound_history_too() {
        let l = Limits { history_bytes_max: 1000, ..Limits::default() };
        let mut st = ConvState::default();
        let c = st.plan_create("room", "a", &[], 1, &l).unwrap().unwrap();
        commit(&mut st, vec![c], &l);
        for i in 0..100 {
            let SendOutcome::Append(ev) = st.plan_send("room", "a", &format!("{i}"), &"x".repeat(100), 1, &l).unwrap()
            else {
                panic!()
            };
            commit(&mut st, ev, &l);
        }
        assert!(st.history_bytes <= 1000, "{}", st.history_bytes);
        assert!(st.plan_send("room", "a", "big", &"x".repeat(17 << 10), 1, &l).unwrap_err().contains("at most"));
    }

    #[test]
    fn receipts_only_move_forward_and_never_past_the_head() {
        let l = Limits::default();
        let mut st = ConvState::default();
        let c = st.plan_create("room", "a", &s(&["b"]), 1, &l).unwrap().unwrap();
        commit(&mut st, vec![c], &l);
        send(&mut st, "a", "1", &l).unwrap();
        assert!(st.receipt("b", 2, 1));
        assert!(!st.receipt("b", 1, 0), "backwards: no change");
        assert!(st.receipt("b", 99, 99));
        assert_eq!(st.receipts["b"], (2, 2));
        assert!(!st.receipt("zed", 1, 1), "not a member");
    }

    #[test]
    fn users_who_left_wait_for_the_directory_and_a_huge_cursor_is_no_panic() {
        let l = Limits { history_max: 2, ..Limits::default() };
        let mut st = ConvState::default();
        let c = st.plan_create("room", "a", &s(&["b", "c"]), 1, &l).unwrap().unwrap();
        commit(&mut st, vec![c], &l);
        st.apply(&Entry::DirectorySynced(1), &l);
        let ev = st.plan_members("room", "a", &[], &s(&["b"]), 1, &l).unwrap();
        commit(&mut st, ev, &l);
        for i in 0..5 {
            send(&mut st, "a", &i.to_string(), &l).unwrap();
        }
        assert!(st.history.iter().all(|e| !matches!(e.body, EventBody::Left { .. })), "the Left event is gone");
        assert_eq!(st.pending_left, ["b".to_string()].into(), "but b is still to be written off");
        st.apply(&Entry::DirectorySynced(st.last_membership), &l);
        assert!(st.pending_left.is_empty());
        let (ev, _) = st.since(u64::MAX, 10);
        assert!(ev.is_empty());
    }

    #[test]
    fn a_user_who_left_reads_up_to_the_leaving_and_no_further() {
        let l = Limits::default();
        let mut st = ConvState::default();
        let c = st.plan_create("room", "a", &s(&["b"]), 1, &l).unwrap().unwrap();
        commit(&mut st, vec![c], &l);
        send(&mut st, "a", "1", &l).unwrap();
        let ev = st.plan_members("room", "b", &[], &s(&["b"]), 1, &l).unwrap();
        commit(&mut st, ev, &l);
        send(&mut st, "a", "2", &l).unwrap();
        let (ev, _, head) = st.since_for("b", 0, 100).unwrap();
        assert_eq!((ev.iter().map(|e| e.seq).collect::<Vec<_>>(), head), (vec![1, 2, 3], 3));
        assert_eq!(st.since_for("a", 0, 100).unwrap().2, 4);
        assert!(st.since_for("z", 0, 100).unwrap_err().contains("not a member"));
    }

    #[test]
    fn apply_skips_an_event_out_of_sequence() {
        let l = Limits::default();
        let mut st = ConvState::default();
        let c = st.plan_create("room", "a", &[], 1, &l).unwrap().unwrap();
        st.apply(&Entry::Event(c.clone()), &l);
        st.apply(&Entry::Event(c), &l);
        assert_eq!((st.head, st.history.len()), (1, 1));
    }
}

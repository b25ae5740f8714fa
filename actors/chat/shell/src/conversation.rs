//! `conversation`: one sharded, replicated, remembered entity per conversation.
//!
//! It holds the pure [`ConvState`] and makes every change durable before anyone hears
//! of it: a message is acknowledged (`Accepted`) only once its entry is on disk on a
//! majority of the kind's `replication_factor` replicas. Then it publishes the event on
//! the conversation's topic, once per gateway node with a member online.
//!
//! Invariants:
//! - one sequence per conversation, consecutive, in the order the log holds: the
//!   entity handles one message at a time and appends before it answers;
//! - a publish is at most once, so every tick that follows new events publishes the
//!   head, and every new incarnation publishes it as it starts (the kind is
//!   remembered: a dead owner's conversations start again on their new owners at
//!   once, and their gateways learn what the dead node may not have published);
//! - a membership change is written to the members' directory shards after it is
//!   durable here, retried on every tick until done, and recorded as done in the log.

use crate::{Published as Pub, system_publisher};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use troupe_chat::ids;
use troupe_chat::proto::{ConvMsg, ConvReply, Conversation, DirMsg, DirReply, Directory, KIND_DIRECTORY, UserNote};
use troupe_chat::{ConvState, Entry, EventBody, Limits, SendOutcome};
use troupe_runtime::wire::codec;
use troupe_runtime::{
    ActorError, ActorPath, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, fail,
};

/// `[kinds.conversation.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationParams {
    pub members_max: usize,
    pub history_max: usize,
    pub history_bytes_max: usize,
    pub text_bytes_max: usize,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// How often receipts are written and the head is published (ms).
    pub tick_ms: u64,
    /// Events one `Since` answers at most.
    pub since_max: u32,
    /// An offline member is pushed (`crate::push`) at most once per this many ms.
    pub push_every_ms: u64,
}

impl Default for ConversationParams {
    fn default() -> Self {
        let l = Limits::default();
        ConversationParams {
            members_max: l.members_max,
            history_max: l.history_max,
            history_bytes_max: l.history_bytes_max,
            text_bytes_max: l.text_bytes_max,
            snapshot_every: 256,
            tick_ms: 1000,
            since_max: 500,
            push_every_ms: 30_000,
        }
    }
}

pub struct ConversationActor {
    params: ConversationParams,
    limits: Limits,
}

impl FromParams for ConversationActor {
    type Params = ConversationParams;
    fn from_params(p: ConversationParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        let limits = Limits {
            members_max: p.members_max,
            history_max: p.history_max,
            history_bytes_max: p.history_bytes_max,
            text_bytes_max: p.text_bytes_max,
            ..Limits::default()
        };
        Ok(ConversationActor { params: p, limits })
    }
    fn check(p: &ConversationParams) -> Result<(), String> {
        if !(2..=100_000).contains(&p.members_max) {
            return Err("members_max must be 2..=100000".into());
        }
        if p.history_max == 0 || p.history_bytes_max < 4096 || p.history_bytes_max > 6 << 20 {
            return Err("history_max must be above 0 and history_bytes_max 4096..=6291456 (a snapshot holds the history and must fit a frame)".into());
        }
        if p.text_bytes_max == 0 || p.text_bytes_max * 4 > p.history_bytes_max {
            return Err("text_bytes_max must be above 0 and at most a quarter of history_bytes_max".into());
        }
        if p.snapshot_every == 0 || p.tick_ms == 0 || p.since_max == 0 {
            return Err("snapshot_every, tick_ms and since_max must be above 0".into());
        }
        Ok(())
    }
}

pub struct ConvActorState {
    conv: ConvState,
    since_snapshot: u64,
    /// Receipts that moved and are not written yet.
    receipts: BTreeMap<String, (u64, u64)>,
    /// The head the last tick published.
    published_head: u64,
    /// Ticks since start (the head is published again every `HEAD_EVERY` ticks).
    ticks: u64,
    /// When each member was last pushed (ms since the epoch).
    pushed: std::collections::HashMap<String, u64>,
}

/// Every this many ticks a live conversation with subscribers publishes its head even
/// if it did not move: a gateway that missed both an event and the head published
/// after it (a full queue, a subscription not yet announced) catches up then.
const HEAD_EVERY: u64 = 5;

/// Receipts per published note (a note must fit a gateway's frame).
const RECEIPTS_PER_NOTE: usize = 100;

impl ConversationActor {
    /// Reads the durable state back (snapshot + log): at start, and after a write
    /// that may or may not have landed.
    async fn load(&self, ctx: &Ctx<Conversation>) -> Result<ConvActorState, ActorError> {
        ids::check_conversation(ctx.key()).map_err(fail)?;
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut conv: ConvState = match &r.snapshot {
            Some((_, b)) => codec::decode(b).map_err(|e| fail(format!("corrupt snapshot of {}: {e}", ctx.path())))?,
            None => ConvState::default(),
        };
        conv.reindex();
        for (_, b) in &r.entries {
            let e: Entry = codec::decode(b).map_err(|e| fail(format!("corrupt log entry of {}: {e}", ctx.path())))?;
            conv.apply(&e, &self.limits);
        }
        let head = conv.head;
        Ok(ConvActorState {
            conv,
            since_snapshot: r.entries.len() as u64,
            receipts: BTreeMap::new(),
            published_head: head,
            ticks: 0,
            pushed: std::collections::HashMap::new(),
        })
    }

    /// Makes `entries` durable in one step, then applies them.
    async fn write(
        &self,
        ctx: &Ctx<Conversation>,
        st: &mut ConvActorState,
        entries: Vec<Entry>,
    ) -> Result<(), RemoteError> {
        let mut bytes = Vec::with_capacity(entries.len());
        for e in &entries {
            bytes.push(codec::encode(e).map_err(|e| RemoteError::Invalid(e.to_string()))?);
        }
        let written = if bytes.len() == 1 {
            ctx.persist(bytes.remove(0)).await.map(|_| ())
        } else {
            ctx.persist_batch(bytes).await.map(|_| ())
        };
        if let Err(e) = written {
            tracing::warn!(path = %ctx.path(), error = %e, "conversation write not acknowledged");
            // The entry may be on some disks: reload from the durable copies (or end
            // this incarnation, `Ctx::must_recover`) before serving again.
            match self.load(ctx).await {
                Ok(fresh) => *st = fresh,
                Err(e) => tracing::warn!(path = %ctx.path(), error = %e, "recovery after a failed write failed"),
            }
            return Err(troupe_runtime::store_failed(ctx.path(), &e));
        }
        for e in &entries {
            st.conv.apply(e, &self.limits);
        }
        st.since_snapshot += entries.len() as u64;
        if st.since_snapshot >= self.params.snapshot_every
            && let Ok(snap) = codec::encode(&st.conv)
            && ctx.snapshot(snap).await.is_ok()
        {
            st.since_snapshot = 0;
        }
        Ok(())
    }

    /// Publishes events on the conversation's topic and tells users who joined or left.
    async fn publish(ctx: &Ctx<Conversation>, events: &[troupe_chat::Event]) {
        let node = ctx.node();
        let system = ctx.path().system();
        let publisher = system_publisher(node);
        let topic = ids::conversation_topic(system, ctx.key());
        for e in events {
            if let Err(e) = publisher.publish(&topic, &Pub::Event(e.clone())).await {
                tracing::debug!(error = %e, "event not published (gateways catch up on the next head)");
            }
            let (users, joined) = match &e.body {
                EventBody::Created { members, .. } => (members, true),
                EventBody::Joined { users, .. } => (users, true),
                EventBody::Left { users, .. } => (users, false),
                EventBody::Message { .. } => continue,
            };
            // One publish per user topic touched (16 at most), not one per user.
            let mut by_topic: BTreeMap<String, Vec<UserNote>> = BTreeMap::new();
            for u in users {
                let (user, conv) = (u.clone(), ctx.key().to_string());
                let note = if joined { UserNote::Joined { user, conv } } else { UserNote::Left { user, conv } };
                by_topic.entry(ids::user_topic(system, u)).or_default().push(note);
            }
            for (topic, notes) in by_topic {
                let _ = publisher.publish(&topic, &notes).await;
            }
        }
    }

    /// Tells the push hook of each member (not the sender) who is offline, at most
    /// once per member per `push_every_ms`, and only where this node's presence view is
    /// live.
    fn push_offline(&self, ctx: &Ctx<Conversation>, st: &mut ConvActorState, from: &str, seq: u64) {
        let presence = crate::gateway::presence::Presence::of(ctx.node());
        if !presence.is_live() {
            return;
        }
        let now = crate::gateway::now_ms();
        if st.pushed.len() > 2 * self.limits.members_max {
            st.pushed.clear();
        }
        let sink = crate::push::sink(ctx.node());
        for m in &st.conv.members {
            if m == from || presence.is_online(m) {
                continue;
            }
            if st.pushed.get(m).is_some_and(|t| now.saturating_sub(*t) < self.params.push_every_ms) {
                continue;
            }
            st.pushed.insert(m.clone(), now);
            sink.notify(m, ctx.key(), seq, from);
        }
    }

    /// Writes the members' directory entries for every membership event not yet
    /// synced; records the sync in the log. Idempotent.
    async fn sync_directory(&self, ctx: &Ctx<Conversation>, st: &mut ConvActorState) -> Result<(), String> {
        if st.conv.directory_synced >= st.conv.last_membership {
            return Ok(());
        }
        let upto = st.conv.last_membership;
        let left = st.conv.pending_left.clone();
        let mut by_shard: BTreeMap<(String, bool), Vec<String>> = BTreeMap::new();
        for u in &st.conv.members {
            by_shard.entry((ids::directory_shard(u, crate::DIRECTORY_SHARDS), true)).or_default().push(u.clone());
        }
        for u in left {
            let shard = ids::directory_shard(&u, crate::DIRECTORY_SHARDS);
            by_shard.entry((shard, false)).or_default().push(u);
        }
        let system = ctx.path().system().to_string();
        let asks = by_shard.into_iter().map(|((shard, joined), users)| {
            let conv = ctx.key().to_string();
            let system = system.clone();
            async move {
                let path = ActorPath::new(&system, KIND_DIRECTORY, &shard).map_err(|e| e.to_string())?;
                let h = ctx.node().handle::<Directory>(path);
                match h.ask_timeout(DirMsg::Update { conv, users, joined }, Duration::from_secs(10)).await {
                    Ok(DirReply::Updated) => Ok(()),
                    Ok(DirReply::Refused(why)) => {
                        // Users it cannot list (at their limit): not retried, the rest
                        // are written.
                        tracing::warn!(shard = %shard, reason = %why, "directory refused some users; not retried");
                        Ok(())
                    }
                    Ok(other) => Err(format!("directory shard {shard} answered {other:?}")),
                    Err(e) => Err(format!("directory shard {shard}: {e}")),
                }
            }
        });
        for r in futures::future::join_all(asks).await {
            r?;
        }
        self.write(ctx, st, vec![Entry::DirectorySynced(upto)]).await.map_err(|e| e.to_string())
    }
}

impl Behavior for ConversationActor {
    type Proto = Conversation;
    type State = ConvActorState;

    async fn init(&self, ctx: &Ctx<Conversation>) -> Result<ConvActorState, ActorError> {
        let st = self.load(ctx).await?;
        ctx.tick_every(Duration::from_millis(self.params.tick_ms));
        if st.conv.head > 0 {
            // Whatever the last incarnation published may not have left its node.
            let topic = ids::conversation_topic(ctx.path().system(), ctx.key());
            let _ = system_publisher(ctx.node()).publish(&topic, &Pub::Head(st.conv.head)).await;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        ctx: &Ctx<Conversation>,
        st: &mut ConvActorState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let conv_id = ctx.key().to_string();
        match msg {
            ConvMsg::Create { by, members, at_ms } => {
                match st.conv.plan_create(&conv_id, &by, &members, at_ms, &self.limits) {
                    Err(why) => {
                        if !st.conv.created {
                            ctx.passivate();
                        }
                        reply.send(ConvReply::Refused(why)).await
                    }
                    Ok(planned) => {
                        if let Some(e) = planned {
                            if let Err(err) = self.write(ctx, st, vec![Entry::Event(e.clone())]).await {
                                reply.fail(err);
                                return Ok(());
                            }
                            Self::publish(ctx, std::slice::from_ref(&e)).await;
                        }
                        if let Err(why) = self.sync_directory(ctx, st).await {
                            tracing::info!(conv = %conv_id, reason = %why, "directory not written yet; the next tick retries");
                        }
                        let members = st.conv.members.iter().cloned().collect();
                        reply.send(ConvReply::Created { members, head: st.conv.head }).await;
                    }
                }
            }
            ConvMsg::Send { from, id, text, at_ms } => {
                match st.conv.plan_send(&conv_id, &from, &id, &text, at_ms, &self.limits) {
                    Err(why) => {
                        if !st.conv.created {
                            // Nothing to keep in memory for a conversation that is not.
                            ctx.passivate();
                        }
                        reply.send(ConvReply::Refused(why)).await
                    }
                    Ok(SendOutcome::Duplicate(seq)) => reply.send(ConvReply::Accepted { seq, duplicate: true }).await,
                    Ok(SendOutcome::Append(events)) => {
                        let entries = events.iter().cloned().map(Entry::Event).collect();
                        if let Err(err) = self.write(ctx, st, entries).await {
                            reply.fail(err);
                            return Ok(());
                        }
                        let seq = st.conv.head;
                        reply.send(ConvReply::Accepted { seq, duplicate: false }).await;
                        Self::publish(ctx, &events).await;
                        self.push_offline(ctx, st, &from, seq);
                        if events.len() > 1
                            && let Err(why) = self.sync_directory(ctx, st).await
                        {
                            tracing::info!(conv = %conv_id, reason = %why, "directory not written yet; the next tick retries");
                        }
                    }
                }
            }
            ConvMsg::Members { by, add, remove, at_ms } => {
                match st.conv.plan_members(&conv_id, &by, &add, &remove, at_ms, &self.limits) {
                    Err(why) => {
                        if !st.conv.created {
                            ctx.passivate();
                        }
                        reply.send(ConvReply::Refused(why)).await
                    }
                    Ok(events) => {
                        if !events.is_empty() {
                            let entries = events.iter().cloned().map(Entry::Event).collect();
                            if let Err(err) = self.write(ctx, st, entries).await {
                                reply.fail(err);
                                return Ok(());
                            }
                            Self::publish(ctx, &events).await;
                        }
                        if let Err(why) = self.sync_directory(ctx, st).await {
                            tracing::info!(conv = %conv_id, reason = %why, "directory not written yet; the next tick retries");
                        }
                        let members = st.conv.members.iter().cloned().collect();
                        reply.send(ConvReply::MembersChanged { head: st.conv.head, members }).await;
                    }
                }
            }
            ConvMsg::Since { user, after, max } => {
                if !st.conv.created {
                    ctx.passivate();
                    reply.send(ConvReply::Refused(format!("no conversation {conv_id}"))).await;
                } else {
                    // A member reads everything; a user who left, up to the leaving.
                    match st.conv.since_for(&user, after, max.min(self.params.since_max) as usize) {
                        Ok((events, oldest, head)) => reply.send(ConvReply::Events { events, oldest, head }).await,
                        Err(_) => reply.send(ConvReply::Refused(format!("{user} is not a member of {conv_id}"))).await,
                    }
                }
            }
            ConvMsg::Receipt { user, delivered, read } => {
                if !st.conv.created {
                    ctx.passivate();
                }
                if st.conv.receipt(&user, delivered, read)
                    && let Some(r) = st.conv.receipts.get(&user)
                {
                    st.receipts.insert(user, *r);
                }
                reply.send(ConvReply::Noted).await;
            }
            ConvMsg::Info { user } => {
                if !st.conv.created {
                    ctx.passivate();
                }
                if !st.conv.is_member(&user) {
                    reply.send(ConvReply::Refused(format!("{user} is not a member of {conv_id}"))).await;
                } else {
                    let receipts = st.conv.receipts.iter().map(|(u, (d, r))| (u.clone(), *d, *r)).collect();
                    let members = st.conv.members.iter().cloned().collect();
                    reply.send(ConvReply::Info { members, head: st.conv.head, receipts }).await;
                }
            }
        }
        Ok(())
    }

    async fn tick(&self, ctx: &Ctx<Conversation>, st: &mut ConvActorState) -> Result<(), ActorError> {
        let topic = ids::conversation_topic(ctx.path().system(), ctx.key());
        if !st.receipts.is_empty() {
            let list: Vec<(String, u64, u64)> =
                std::mem::take(&mut st.receipts).into_iter().map(|(u, (d, r))| (u, d, r)).collect();
            // Receipts are written so a new owner still has them; losing a tick's worth
            // in a crash costs only a receipt that the next ack repeats.
            if self.write(ctx, st, vec![Entry::Receipts(list.clone())]).await.is_ok() {
                for part in list.chunks(RECEIPTS_PER_NOTE) {
                    let _ = system_publisher(ctx.node()).publish(&topic, &Pub::Receipts(part.to_vec())).await;
                }
            }
        }
        st.ticks += 1;
        let again = st.ticks.is_multiple_of(HEAD_EVERY) && st.conv.head > 0;
        if st.conv.head > st.published_head || again {
            st.published_head = st.conv.head;
            let _ = system_publisher(ctx.node()).publish(&topic, &Pub::Head(st.conv.head)).await;
        }
        if let Err(why) = self.sync_directory(ctx, st).await {
            tracing::debug!(conv = %ctx.key(), reason = %why, "directory still not written");
        }
        Ok(())
    }
}

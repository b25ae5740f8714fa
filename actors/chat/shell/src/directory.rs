//! `directory`: which conversations each user is in, in `DIRECTORY_SHARDS` sharded,
//! replicated entities (keys "0".."15", a user's shard by `ids::directory_shard`). A
//! gateway reads a user's list when the user's client says hello; conversations write
//! it when their members change (after the change is durable in the conversation).
//!
//! Invariants: an update is acknowledged only once durable on a majority of replicas;
//! updates are idempotent (a retried one changes nothing); a user is in at most
//! `conversations_max` conversations (past it that user is refused with the reason
//! and the other users of the update are written).

use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use troupe_chat::proto::{DirEntry, DirMsg, DirReply, Directory};
use troupe_runtime::wire::codec;
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf, fail};

/// `[kinds.directory.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryParams {
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// Conversations one user may be in.
    pub conversations_max: usize,
}

impl Default for DirectoryParams {
    fn default() -> Self {
        DirectoryParams { snapshot_every: 512, conversations_max: 10_000 }
    }
}

pub struct DirectoryActor {
    params: DirectoryParams,
}

impl FromParams for DirectoryActor {
    type Params = DirectoryParams;
    fn from_params(params: DirectoryParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(DirectoryActor { params })
    }
    fn check(p: &DirectoryParams) -> Result<(), String> {
        if p.snapshot_every == 0 || p.conversations_max == 0 {
            return Err("snapshot_every and conversations_max must be above 0".into());
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct DirState {
    users: HashMap<String, BTreeSet<String>>,
    since_snapshot: u64,
}

fn apply(users: &mut HashMap<String, BTreeSet<String>>, e: &DirEntry) {
    for u in &e.users {
        if e.joined {
            users.entry(u.clone()).or_default().insert(e.conv.clone());
        } else if let Some(set) = users.get_mut(u) {
            set.remove(&e.conv);
            if set.is_empty() {
                users.remove(u);
            }
        }
    }
}

impl Behavior for DirectoryActor {
    type Proto = Directory;
    type State = DirState;

    async fn init(&self, ctx: &Ctx<Directory>) -> Result<DirState, ActorError> {
        let shard: u32 =
            ctx.key().parse().map_err(|_| fail(format!("directory shard {:?} is not a number", ctx.key())))?;
        if shard >= crate::DIRECTORY_SHARDS {
            return Err(fail(format!("directory shard {shard} is past the {} shards", crate::DIRECTORY_SHARDS)));
        }
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut users: HashMap<String, BTreeSet<String>> = match &r.snapshot {
            Some((_, b)) => codec::decode(b).map_err(|e| fail(format!("corrupt snapshot of {}: {e}", ctx.path())))?,
            None => HashMap::new(),
        };
        for (_, b) in &r.entries {
            let e: DirEntry = codec::decode(b).map_err(|e| fail(format!("corrupt log entry: {e}")))?;
            apply(&mut users, &e);
        }
        Ok(DirState { users, since_snapshot: r.entries.len() as u64 })
    }

    async fn handle(
        &self,
        ctx: &Ctx<Directory>,
        st: &mut DirState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            DirMsg::Conversations { user } => {
                let list = st.users.get(&user).map(|s| s.iter().cloned().collect()).unwrap_or_default();
                reply.send(DirReply::Conversations(list)).await;
            }
            DirMsg::Update { conv, users, joined } => {
                let changes: Vec<String> = users
                    .into_iter()
                    .filter(|u| st.users.get(u).is_some_and(|s| s.contains(&conv)) != joined)
                    .collect();
                if changes.is_empty() {
                    reply.send(DirReply::Updated).await;
                    return Ok(());
                }
                // A user at the limit is refused; the others are written.
                let max = self.params.conversations_max;
                let (changes, full): (Vec<String>, Vec<String>) =
                    changes.into_iter().partition(|u| !joined || st.users.get(u).is_none_or(|s| s.len() < max));
                let refusal = (!full.is_empty()).then(|| {
                    let who = full.join(", ");
                    format!("{who}: in {max} conversations already (the most); not added to {conv}")
                });
                if changes.is_empty() {
                    reply.send(DirReply::Refused(refusal.unwrap_or_default())).await;
                    return Ok(());
                }
                let entry = DirEntry { conv, users: changes, joined };
                let bytes = codec::encode(&entry).map_err(|e| fail(e.to_string()))?;
                if let Err(e) = ctx.persist(bytes).await {
                    reply.fail(troupe_runtime::store_failed(ctx.path(), &e));
                    // The entry may be on some disks: start again from the durable copies.
                    return Err(fail(format!("directory write failed: {e}")));
                }
                apply(&mut st.users, &entry);
                st.since_snapshot += 1;
                if st.since_snapshot >= self.params.snapshot_every
                    && let Ok(snap) = codec::encode(&st.users)
                    && ctx.snapshot(snap).await.is_ok()
                {
                    st.since_snapshot = 0;
                }
                match refusal {
                    Some(why) => reply.send(DirReply::Refused(why)).await,
                    None => reply.send(DirReply::Updated).await,
                }
            }
        }
        Ok(())
    }
}

//! `link`: one sharded entity per short code, with replicated durable state.
//!
//! The entity holds at most one [`LinkRecord`]. Every change is an entry of its durable
//! log ([`LinkOp`]), persisted on `replication_factor` nodes before the caller hears of it,
//! so an acknowledged create, edit or delete survives `kill -9` of any one node.
//!
//! Invariants:
//! - a code is created at most once: `Create` on an existing or deleted code answers
//!   `Taken` (a deleted code stays a tombstone, so an old link in the wild can never start
//!   pointing somewhere new);
//! - only the owner (or the admin token) may edit or delete; anonymous links are immutable;
//! - after an edit or delete is durable, every gateway is told to drop its cached copy
//!   (at-most-once; the gateways' cache TTL bounds staleness when a tell is lost).

use serde::Deserialize;
use troupe_runtime::pubsub::{PubSub, Publisher};
use troupe_runtime::wire::codec;
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, fail};
pub use troupe_shortener::proto::{
    Link, LinkChange, LinkMsg, LinkOp, LinkRecord, LinkReply, Requester, apply, may_manage,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkParams {
    /// Snapshot the entity after this many log entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

fn default_snapshot_every() -> u64 {
    16
}

pub struct LinkActor {
    params: LinkParams,
}

impl FromParams for LinkActor {
    type Params = LinkParams;
    fn from_params(params: LinkParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(Self { params })
    }
    fn check(p: &LinkParams) -> Result<(), String> {
        if p.snapshot_every == 0 || p.snapshot_every > 10_000 {
            return Err("snapshot_every must be 1..=10000 log entries".into());
        }
        Ok(())
    }
}

pub struct LinkState {
    record: Option<LinkRecord>,
    since_snapshot: u64,
}

impl LinkActor {
    /// Makes `op` durable, then applies it. On failure the entity reloads from the durable
    /// copies (the entry may have reached some disks) and the caller gets the error.
    async fn write(&self, ctx: &Ctx<Link>, st: &mut LinkState, op: LinkOp) -> Result<(), RemoteError> {
        let bytes = codec::encode(&op).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        if let Err(e) = ctx.persist(bytes).await {
            tracing::warn!(path = %ctx.path(), error = %e, "link write not acknowledged");
            // If recovering fails too, the runtime ends this incarnation after the
            // message (`Ctx::must_recover`) and its restart recovers.
            match self.init(ctx).await {
                Ok(fresh) => *st = fresh,
                Err(e) => tracing::warn!(path = %ctx.path(), error = %e, "recovery after a failed write failed"),
            }
            return Err(RemoteError::ActorFailed { path: ctx.path().to_string(), reason: e.to_string() });
        }
        apply(&mut st.record, op);
        st.since_snapshot += 1;
        if st.since_snapshot >= self.params.snapshot_every {
            // A failed snapshot loses nothing: the log it would replace is still there.
            if let Ok(snap) = codec::encode(&st.record)
                && ctx.snapshot(snap).await.is_ok()
            {
                st.since_snapshot = 0;
            }
        }
        Ok(())
    }

    /// Tells every gateway to drop its cached copy of this code: one message per
    /// node with a gateway, on the system's invalidation topic (the runtime's pub/sub).
    async fn broadcast_invalidate(ctx: &Ctx<Link>) {
        let node = ctx.node();
        let system = ctx.path().system();
        let Ok(publisher) = node.extension(|| {
            Ok::<_, std::convert::Infallible>(InvalidationPublisher(PubSub::of(node).publisher("links")))
        });
        // At most once; a dead node has no cache to clean, and the TTL covers a loss.
        match publisher.0.publish(&super::invalidation_topic(system), &ctx.key().to_string()).await {
            Ok(d) if !d.failed.is_empty() => {
                tracing::debug!(failed = ?d.failed, "invalidation not delivered everywhere")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "invalidation not published"),
        }
    }
}

/// This node's publisher of link invalidations (one, so its numbering means something).
struct InvalidationPublisher(Publisher);

impl Behavior for LinkActor {
    type Proto = Link;
    type State = LinkState;

    async fn init(&self, ctx: &Ctx<Link>) -> Result<LinkState, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut record: Option<LinkRecord> = match &r.snapshot {
            Some((_, b)) => codec::decode(b).map_err(|e| fail(format!("corrupt snapshot of {}: {e}", ctx.path())))?,
            None => None,
        };
        for (_, b) in &r.entries {
            let op: LinkOp = codec::decode(b).map_err(|e| fail(format!("corrupt log entry: {e}")))?;
            apply(&mut record, op);
        }
        Ok(LinkState { record, since_snapshot: r.entries.len() as u64 })
    }

    async fn handle(
        &self,
        ctx: &Ctx<Link>,
        st: &mut LinkState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            LinkMsg::Get => match &st.record {
                Some(rec) => reply.send(LinkReply::Found(rec.clone())).await,
                None => {
                    // Nothing to keep in memory for an unknown code (scans, typos).
                    ctx.passivate();
                    reply.send(LinkReply::NotFound).await;
                }
            },
            LinkMsg::Read => match ctx.confirm().await {
                Ok(()) => match &st.record {
                    Some(rec) => reply.send(LinkReply::Found(rec.clone())).await,
                    None => reply.send(LinkReply::NotFound).await,
                },
                Err(e) => {
                    tracing::warn!(path = %ctx.path(), error = %e, "link read not confirmed");
                    // Another owner may hold it: recover (or fail to) before the next request.
                    match self.init(ctx).await {
                        Ok(fresh) => *st = fresh,
                        Err(e) => tracing::warn!(path = %ctx.path(), error = %e, "recovery after a failed read failed"),
                    }
                    reply.fail(RemoteError::ActorFailed { path: ctx.path().to_string(), reason: e.to_string() });
                }
            },
            LinkMsg::Create { link } => {
                if let Some(rec) = &st.record {
                    reply.send(LinkReply::Taken { deleted: rec.deleted_ms.is_some() }).await;
                    return Ok(());
                }
                match self.write(ctx, st, LinkOp::Created(link.clone())).await {
                    Ok(()) => {
                        // A custom alias may sit in a gateway's negative cache (someone tried
                        // it before it existed); generated codes are never guessed.
                        if ctx.key().len() != troupe_shortener::ids::CODE_LEN {
                            Self::broadcast_invalidate(ctx).await;
                        }
                        reply.send(LinkReply::Created(link)).await;
                        // A new link is rarely read right away (the creating gateway caches
                        // the record it got back), and every live entity
                        // costs its kind supervisor a little on each activation, so
                        // leave memory now; the first redirect miss reactivates it.
                        ctx.passivate();
                    }
                    Err(e) => reply.fail(e),
                }
            }
            LinkMsg::Update { change, by, at_ms } => {
                let Some(rec) = st.record.as_ref().filter(|r| r.deleted_ms.is_none()) else {
                    reply.send(LinkReply::NotFound).await;
                    return Ok(());
                };
                if let Err(why) = may_manage(rec, &by) {
                    reply.send(LinkReply::Forbidden(why)).await;
                    return Ok(());
                }
                match self.write(ctx, st, LinkOp::Updated { change, at_ms }).await {
                    Ok(()) => {
                        Self::broadcast_invalidate(ctx).await;
                        let rec = st.record.clone().ok_or_else(|| fail("updated link vanished"))?;
                        reply.send(LinkReply::Updated(rec)).await;
                    }
                    Err(e) => reply.fail(e),
                }
            }
            LinkMsg::Delete { by, at_ms } => {
                let Some(rec) = st.record.as_ref().filter(|r| r.deleted_ms.is_none()) else {
                    reply.send(LinkReply::NotFound).await;
                    return Ok(());
                };
                if let Err(why) = may_manage(rec, &by) {
                    reply.send(LinkReply::Forbidden(why)).await;
                    return Ok(());
                }
                match self.write(ctx, st, LinkOp::Deleted { at_ms }).await {
                    Ok(()) => {
                        Self::broadcast_invalidate(ctx).await;
                        reply.send(LinkReply::Deleted).await;
                    }
                    Err(e) => reply.fail(e),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: Option<&str>) -> LinkRecord {
        LinkRecord {
            target: "https://example.com/".into(),
            created_ms: 10,
            updated_ms: 10,
            expires_ms: None,
            permanent: false,
            owner: owner.map(str::to_string),
            deleted_ms: None,
        }
    }

    #[test]
    fn log_replays_to_the_same_state() {
        let ops = vec![
            LinkOp::Created(rec(Some("ann"))),
            LinkOp::Updated {
                change: LinkChange { target: Some("https://example.org/".into()), ..Default::default() },
                at_ms: 20,
            },
            LinkOp::Updated { change: LinkChange { expires_ms: Some(Some(99)), ..Default::default() }, at_ms: 30 },
            LinkOp::Deleted { at_ms: 40 },
            LinkOp::Deleted { at_ms: 50 },
        ];
        let mut st = None;
        for op in ops.clone() {
            let bytes = codec::encode(&op).unwrap_or_default();
            apply(&mut st, codec::decode(&bytes).unwrap_or(op));
        }
        let r = st.unwrap_or_else(|| rec(None));
        assert_eq!(r.target, "https://example.org/");
        assert_eq!(r.expires_ms, Some(99));
        assert_eq!(r.updated_ms, 30);
        // The first delete wins: a repeated delete does not move the tombstone.
        assert_eq!(r.deleted_ms, Some(40));
        assert!(r.is_expired(99) && !r.is_expired(98));
    }

    #[test]
    fn only_owner_or_admin_manage() {
        let ann = Requester { user: Some("ann".into()), admin: false };
        let bob = Requester { user: Some("bob".into()), admin: false };
        let nobody = Requester::default();
        let admin = Requester { user: None, admin: true };
        assert!(may_manage(&rec(Some("ann")), &ann).is_ok());
        assert!(may_manage(&rec(Some("ann")), &bob).is_err());
        assert!(may_manage(&rec(Some("ann")), &nobody).is_err());
        assert!(may_manage(&rec(None), &ann).is_err());
        assert!(may_manage(&rec(None), &admin).is_ok());
    }

    #[test]
    fn update_of_absent_link_changes_nothing() {
        let mut st = None;
        apply(&mut st, LinkOp::Updated { change: LinkChange::default(), at_ms: 1 });
        apply(&mut st, LinkOp::Deleted { at_ms: 1 });
        assert_eq!(st, None);
    }
}

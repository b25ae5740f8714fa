//! `keys`: one sharded, replicated entity per user (`chat/keys/<user>`) holding the
//! user's devices, their public keys and to-device mailboxes — the server side of
//! end-to-end encryption (docs/chat.md, "End-to-end encryption"). Every change is
//! durable on a majority before it is answered: a claimed one-time key is used up
//! before anyone hears it, so no key is handed out twice.

use serde::Deserialize;
use troupe_chat::keys::{KeysOp, UserKeys};
use troupe_chat::proto::{Keys, KeysMsg, KeysReply};
use troupe_runtime::wire::codec;
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf, fail};

/// `[kinds.keys.params]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysParams {
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// Mailbox messages one read returns at most.
    pub mailbox_read_max: u32,
}

impl Default for KeysParams {
    fn default() -> Self {
        KeysParams { snapshot_every: 64, mailbox_read_max: 200 }
    }
}

pub struct KeysActor {
    params: KeysParams,
}

impl FromParams for KeysActor {
    type Params = KeysParams;
    fn from_params(params: KeysParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(KeysActor { params })
    }
    fn check(p: &KeysParams) -> Result<(), String> {
        if p.snapshot_every == 0 || p.mailbox_read_max == 0 {
            return Err("snapshot_every and mailbox_read_max must be above 0".into());
        }
        Ok(())
    }
}

pub struct KeysState {
    keys: UserKeys,
    since_snapshot: u64,
}

impl KeysActor {
    async fn load(&self, ctx: &Ctx<Keys>) -> Result<KeysState, ActorError> {
        troupe_chat::ids::check_user(ctx.key()).map_err(fail)?;
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut keys: UserKeys = match &r.snapshot {
            Some((_, b)) => codec::decode(b).map_err(|e| fail(format!("corrupt snapshot of {}: {e}", ctx.path())))?,
            None => UserKeys::default(),
        };
        for (_, b) in &r.entries {
            let op: KeysOp = codec::decode(b).map_err(|e| fail(format!("corrupt log entry: {e}")))?;
            keys.apply(&op);
        }
        Ok(KeysState { keys, since_snapshot: r.entries.len() as u64 })
    }

    /// Makes `op` durable, then applies it; on failure reloads and says why.
    async fn write(&self, ctx: &Ctx<Keys>, st: &mut KeysState, op: KeysOp) -> Result<(), troupe_runtime::RemoteError> {
        let bytes = codec::encode(&op).map_err(|e| troupe_runtime::RemoteError::Invalid(e.to_string()))?;
        if let Err(e) = ctx.persist(bytes).await {
            match self.load(ctx).await {
                Ok(fresh) => *st = fresh,
                Err(e) => tracing::warn!(path = %ctx.path(), error = %e, "recovery after a failed write failed"),
            }
            return Err(troupe_runtime::store_failed(ctx.path(), &e));
        }
        st.keys.apply(&op);
        st.since_snapshot += 1;
        if st.since_snapshot >= self.params.snapshot_every
            && let Ok(snap) = codec::encode(&st.keys)
            && ctx.snapshot(snap).await.is_ok()
        {
            st.since_snapshot = 0;
        }
        Ok(())
    }
}

impl Behavior for KeysActor {
    type Proto = Keys;
    type State = KeysState;

    async fn init(&self, ctx: &Ctx<Keys>) -> Result<KeysState, ActorError> {
        self.load(ctx).await
    }

    async fn handle(
        &self,
        ctx: &Ctx<Keys>,
        st: &mut KeysState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let user = ctx.key().to_string();
        let answer = match msg {
            KeysMsg::Publish { keys, one_time, fallback } => match st.keys.check_publish(&keys, &one_time, &fallback) {
                Err(why) => KeysReply::Refused(why),
                Ok(()) => {
                    let device = keys.device.clone();
                    match self.write(ctx, st, KeysOp::Publish { keys, one_time, fallback }).await {
                        Ok(()) => {
                            let n = st.keys.devices.get(&device).map_or(0, |d| d.one_time.len() as u64);
                            KeysReply::Published { one_time_keys: n }
                        }
                        Err(e) => {
                            reply.fail(e);
                            return Ok(());
                        }
                    }
                }
            },
            KeysMsg::Devices => KeysReply::Devices(st.keys.devices()),
            KeysMsg::Claim { device } => match st.keys.claimable(&device) {
                None => KeysReply::Refused(format!("{user} has no device {device} with a key to claim")),
                Some((keys, key)) => {
                    let used = st.keys.devices.get(&device).is_some_and(|d| d.one_time.contains_key(&key.id));
                    if used && let Err(e) = self.write(ctx, st, KeysOp::Claimed { device, id: key.id.clone() }).await {
                        reply.fail(e);
                        return Ok(());
                    }
                    KeysReply::Claimed { keys, key }
                }
            },
            KeysMsg::Deliver { device, from_user, from_device, body } => match st.keys.check_deliver(&device, &body) {
                Err(why) => KeysReply::Refused(why),
                Ok(()) => match self.write(ctx, st, KeysOp::Deliver { device, from_user, from_device, body }).await {
                    Ok(()) => KeysReply::Done,
                    Err(e) => {
                        reply.fail(e);
                        return Ok(());
                    }
                },
            },
            KeysMsg::Mailbox { device, after, max } => {
                KeysReply::Mailbox(st.keys.mailbox(&device, after, max.min(self.params.mailbox_read_max) as usize))
            }
            KeysMsg::Ack { device, upto } => {
                let pending =
                    st.keys.devices.get(&device).is_some_and(|d| d.mailbox.front().is_some_and(|m| m.seq <= upto));
                if pending && let Err(e) = self.write(ctx, st, KeysOp::Acked { device, upto }).await {
                    reply.fail(e);
                    return Ok(());
                }
                KeysReply::Done
            }
            KeysMsg::Revoke { device } => {
                if !st.keys.devices.contains_key(&device) {
                    KeysReply::Refused(format!("{user} has no device {device}"))
                } else if let Err(e) = self.write(ctx, st, KeysOp::Revoke { device }).await {
                    reply.fail(e);
                    return Ok(());
                } else {
                    KeysReply::Done
                }
            }
        };
        reply.send(answer).await;
        Ok(())
    }
}

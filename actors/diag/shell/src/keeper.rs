//! The diag keeper: a remembered entity that counts its activations and records the
//! durable reminders it receives (`tests/remembered.rs`).

use std::time::Duration;
use troupe_diag::{Keeper, KeeperMsg, KeeperReply};
use troupe_runtime::reminders::Schedule;
use troupe_runtime::wire::codec;
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf, fail};

pub struct KeeperActor;

impl FromParams for KeeperActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(KeeperActor)
    }
}

/// One durable entry of a keeper's log.
#[derive(serde::Serialize, serde::Deserialize)]
enum Entry {
    Activated,
    Reminded(String, u64),
}

#[derive(Default)]
pub struct KeeperState {
    activations: u64,
    reminded: Vec<(String, u64)>,
}

async fn record(ctx: &Ctx<Keeper>, st: &mut KeeperState, e: Entry) -> Result<(), ActorError> {
    let bytes = codec::encode(&e).map_err(|e| fail(e.to_string()))?;
    ctx.persist(bytes).await.map_err(|e| fail(format!("{}: {e}", ctx.path())))?;
    match e {
        Entry::Activated => st.activations += 1,
        Entry::Reminded(id, at) => st.reminded.push((id, at)),
    }
    Ok(())
}

impl Behavior for KeeperActor {
    type Proto = Keeper;
    type State = KeeperState;

    async fn init(&self, ctx: &Ctx<Keeper>) -> Result<KeeperState, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut st = KeeperState::default();
        for (_, b) in &r.entries {
            match codec::decode::<Entry>(b).map_err(|e| fail(format!("a corrupt keeper entry: {e}")))? {
                Entry::Activated => st.activations += 1,
                Entry::Reminded(id, at) => st.reminded.push((id, at)),
            }
        }
        record(ctx, &mut st, Entry::Activated).await?;
        Ok(st)
    }

    async fn handle(
        &self,
        ctx: &Ctx<Keeper>,
        st: &mut KeeperState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            KeeperMsg::Status => {
                let node = ctx.node().name().to_string();
                reply
                    .send(KeeperReply::Status { node, activations: st.activations, reminded: st.reminded.clone() })
                    .await
            }
            KeeperMsg::RemindMe { id, after_ms, every_ms } => {
                let after = Duration::from_millis(after_ms);
                let schedule = match every_ms {
                    None => Schedule::once(after),
                    Some(p) => Schedule::starting(after, Duration::from_millis(p)),
                };
                match ctx.remind(&id, schedule, KeeperMsg::Reminded { id: id.clone() }).await {
                    Ok(()) => reply.send(KeeperReply::Done).await,
                    Err(e) => reply.fail(e),
                }
            }
            KeeperMsg::Cancel { id } => match ctx.cancel_reminder(&id).await {
                Ok(existed) => reply.send(KeeperReply::Cancelled(existed)).await,
                Err(e) => reply.fail(e),
            },
            KeeperMsg::Reminded { id } => {
                let at = ctx.node().clock_us() / 1000;
                record(ctx, st, Entry::Reminded(id, at)).await?;
                reply.send(KeeperReply::Done).await;
            }
            KeeperMsg::Remembered => match troupe_runtime::remember::list(ctx.node()).await {
                Ok(all) => {
                    let all = all.into_iter().map(|e| (e.path, e.at.node)).collect();
                    reply.send(KeeperReply::Remembered(all)).await
                }
                Err(e) => reply.fail(e),
            },
            KeeperMsg::Sleep => {
                ctx.passivate();
                reply.send(KeeperReply::Done).await;
            }
        }
        Ok(())
    }
}

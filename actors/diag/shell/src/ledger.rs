//! The diag ledger: a replicated log written in batches (`Ctx::persist_batch`), for
//! the test that a batch survives a crash whole or not at all (`tests/batch_persist.rs`).

use troupe_diag::{Ledger, LedgerMsg, LedgerReply};
use troupe_runtime::wire::codec;
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf, fail};

pub struct LedgerActor;

impl FromParams for LedgerActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(LedgerActor)
    }
}

impl Behavior for LedgerActor {
    type Proto = Ledger;
    /// Every entry, in log order.
    type State = Vec<(u64, u32)>;

    async fn init(&self, ctx: &Ctx<Ledger>) -> Result<Self::State, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        r.entries
            .iter()
            .map(|(_, b)| codec::decode::<(u64, u32)>(b).map_err(|e| fail(format!("a corrupt ledger entry: {e}"))))
            .collect()
    }

    async fn handle(
        &self,
        ctx: &Ctx<Ledger>,
        st: &mut Self::State,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let node = ctx.node().name().to_string();
        match msg {
            LedgerMsg::Append { batch, entries } => {
                let items: Vec<(u64, u32)> = (0..entries).map(|i| (batch, i)).collect();
                let bytes =
                    items.iter().map(codec::encode).collect::<Result<Vec<_>, _>>().map_err(|e| fail(e.to_string()))?;
                match ctx.persist_batch(bytes).await {
                    Ok(_) => {
                        st.extend(items);
                        reply.send(LedgerReply::Appended { node }).await;
                    }
                    Err(e) => reply.fail(troupe_runtime::store_failed(ctx.path(), &e)),
                }
            }
            LedgerMsg::Entries => reply.send(LedgerReply::Entries { node, entries: st.clone() }).await,
        }
        Ok(())
    }
}

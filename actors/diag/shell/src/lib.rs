//! The `diag` system: a counter and an echo on every node, for smoke tests and
//! benchmarks of the runtime itself (remote tell throughput, ask latency) without
//! the cost of any real system's work, and a gateway with a WebSocket echo
//! ([`gateway`]) that exercises the runtime's WebSocket service.

pub mod blobber;
pub mod gateway;
pub mod keeper;
pub mod ledger;
pub mod topic;

pub use troupe_diag::{Counter, CounterMsg, CounterReply};
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf};

pub struct CounterActor;

impl FromParams for CounterActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(CounterActor)
    }
}

#[derive(Default)]
pub struct CounterState {
    total: u64,
    messages: u64,
}

impl Behavior for CounterActor {
    type Proto = Counter;
    type State = CounterState;

    async fn init(&self, _: &Ctx<Counter>) -> Result<CounterState, ActorError> {
        Ok(CounterState::default())
    }

    async fn handle(
        &self,
        ctx: &Ctx<Counter>,
        st: &mut CounterState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            CounterMsg::Add { n } => {
                st.total += n;
                st.messages += 1;
            }
            CounterMsg::Get => {
                // On the span of a sampled request (`troupe trace`, the OTLP export).
                troupe_runtime::span_field("diag.total", st.total);
                troupe_runtime::span_field("diag.messages", st.messages);
                reply
                    .send(CounterReply::Count {
                        total: st.total,
                        messages: st.messages,
                        node: ctx.node().name().to_string(),
                    })
                    .await
            }
            CounterMsg::Echo { bytes } => reply.send(CounterReply::Echo { bytes }).await,
            CounterMsg::Reset => *st = CounterState::default(),
        }
        Ok(())
    }
}

/// diag as the `troupe` binary sees it (`src/systems.rs`).
pub struct Diag;

impl troupe_system::System for Diag {
    fn name(&self) -> &'static str {
        "diag"
    }
    fn register(&self, kinds: &mut troupe_runtime::KindRegistry) {
        kinds.register::<CounterActor>("diag.counter");
        kinds.register::<gateway::GatewayActor>("diag.gateway");
        kinds.register::<topic::TopicActor>("diag.topic");
        kinds.register::<ledger::LedgerActor>("diag.ledger");
        kinds.register::<keeper::KeeperActor>("diag.keeper");
        kinds.register::<blobber::BlobberActor>("diag.blobber");
    }
}

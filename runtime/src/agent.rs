//! The node agent (`/troupe/node/<name>`): answers introspection and chaos requests.
//! The CLI, `troupe top` and the tests all go through it, locally or remotely.

use crate::actor::{ActorError, Behavior, Ctx, FromParams, MsgOf, ReplyOf};
use crate::config::KindSpec;
use crate::node::Node;
use crate::reply::Reply;
use troupe_wire::introspect::{NodeAgent, NodeReply, NodeRequest};

pub(crate) struct NodeAgentBehavior;

impl FromParams for NodeAgentBehavior {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(NodeAgentBehavior)
    }
}

impl Behavior for NodeAgentBehavior {
    type Proto = NodeAgent;
    type State = ();

    async fn init(&self, _ctx: &Ctx<NodeAgent>) -> Result<(), ActorError> {
        Ok(())
    }

    async fn handle(
        &self,
        ctx: &Ctx<NodeAgent>,
        _: &mut (),
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let node = ctx.node();
        let answer = match msg {
            NodeRequest::Health => NodeReply::Health(node.health()),
            NodeRequest::Tree => NodeReply::Tree(node.tree()),
            NodeRequest::Members => NodeReply::Members(node.members()),
            NodeRequest::Metrics => NodeReply::Metrics(troupe_wire::introspect::MetricsSnapshot {
                node: node.name().to_string(),
                unix_ms: node.clock_us() / 1000,
                metrics: node.metrics_snapshot(),
            }),
            NodeRequest::Trace { trace } => NodeReply::Trace(node.spans(trace).await),
            NodeRequest::Chaos(cmd) => match node.cluster() {
                Some(c) => NodeReply::Chaos(c.chaos(cmd)),
                None => {
                    reply.fail(troupe_wire::RemoteError::Invalid("chaos needs a clustered node".into()));
                    return Ok(());
                }
            },
        };
        reply.send(answer).await;
        Ok(())
    }
}

//! The diag topic actor: a subscriber and publisher of the runtime's pub/sub, one per
//! node, for tests across node processes (`tests/pubsub.rs`).

use std::collections::BTreeMap;
use troupe_diag::{Topic, TopicMsg, TopicReply};
use troupe_runtime::pubsub::{GroupMember, PubSub, Publisher};
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, Reply, ReplyOf, fail};

pub struct TopicActor;

impl FromParams for TopicActor {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(TopicActor)
    }
}

#[derive(Default)]
pub struct TopicState {
    /// topic → (publisher, seq, value) in arrival order.
    received: BTreeMap<String, Vec<(String, u64, u64)>>,
    /// Group memberships, left when the actor stops.
    groups: Vec<GroupMember>,
    /// Publishers by name, kept so their numbering goes on across messages.
    publishers: BTreeMap<String, Publisher>,
}

impl Behavior for TopicActor {
    type Proto = Topic;
    type State = TopicState;

    async fn init(&self, _: &Ctx<Topic>) -> Result<TopicState, ActorError> {
        Ok(TopicState::default())
    }

    async fn handle(
        &self,
        ctx: &Ctx<Topic>,
        st: &mut TopicState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            TopicMsg::Subscribe { topic } if st.received.contains_key(&topic) => {
                // Subscribed already: a second subscription would deliver twice.
                reply.send(TopicReply::Done).await;
            }
            TopicMsg::Subscribe { topic } => {
                let t = topic.clone();
                ctx.subscribe(&topic, move |p| TopicMsg::Got {
                    topic: t.clone(),
                    value: p.decode::<u64>().unwrap_or(u64::MAX),
                    publisher: p.publisher,
                    seq: p.seq,
                });
                st.received.entry(topic).or_default();
                reply.send(TopicReply::Done).await;
            }
            TopicMsg::Publish { topic, publisher, count, acked } => {
                let p = st
                    .publishers
                    .entry(publisher.clone())
                    .or_insert_with(|| PubSub::of(ctx.node()).publisher(&publisher))
                    .clone();
                let mut last = None;
                for value in 1..=count {
                    let r = if acked { p.publish_acked(&topic, &value).await } else { p.publish(&topic, &value).await };
                    last = Some(r.map_err(|e| fail(e.to_string()))?);
                }
                let (nodes, subscribers, failed) = match last {
                    Some(d) => {
                        (d.nodes, d.subscribers, d.failed.into_iter().map(|(n, e)| format!("{n}: {e}")).collect())
                    }
                    None => (Vec::new(), 0, Vec::new()),
                };
                reply.send(TopicReply::Published { nodes, subscribers, failed }).await;
            }
            TopicMsg::Received { topic } => {
                reply.send(TopicReply::Received(st.received.get(&topic).cloned().unwrap_or_default())).await
            }
            TopicMsg::Nodes { topic } => reply.send(TopicReply::Nodes(PubSub::of(ctx.node()).nodes_for(&topic))).await,
            TopicMsg::Join { group } => {
                st.groups.push(PubSub::of(ctx.node()).join(&group, ctx.path()));
                reply.send(TopicReply::Done).await;
            }
            TopicMsg::Members { group } => {
                let members = PubSub::of(ctx.node()).members(&group).iter().map(|p| p.to_string()).collect();
                reply.send(TopicReply::Members(members)).await;
            }
            TopicMsg::Got { topic, publisher, seq, value } => {
                st.received.entry(topic).or_default().push((publisher, seq, value));
            }
        }
        Ok(())
    }
}

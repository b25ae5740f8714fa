//! The pub/sub broker actor of every node (`/troupe/pubsub/<node>`): takes other
//! nodes' deliveries and announcements for this node's [`PubSub`], follows membership
//! (a member down: its subscribers forgotten; a member up: greeted with this node's
//! announcement) and re-announces every [`RESYNC`]. Apart from `pubsub.rs` so that
//! the actor layer (`Ctx::subscribe`) can use pub/sub without a cycle.

use crate::actor::{ActorError, Behavior, Ctx, FromParams, MsgOf, ReplyOf};
use crate::config::KindSpec;
use crate::node::{MemberChange, Node};
use crate::pubsub::{Broker, BrokerMsg, BrokerReply, PubSub, RESYNC};
use crate::reply::Reply;
use troupe_wire::introspect::MemberState;

/// The built-in broker actor of every node (`/troupe/pubsub/<node>`).
pub(crate) struct BrokerBehavior;

impl FromParams for BrokerBehavior {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(BrokerBehavior)
    }
}

/// The broker's state: the task that follows membership, stopped with it.
pub(crate) struct BrokerState {
    follow: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for BrokerState {
    fn drop(&mut self) {
        if let Some(t) = self.follow.take() {
            t.abort();
        }
    }
}

impl Behavior for BrokerBehavior {
    type Proto = Broker;
    type State = BrokerState;

    async fn init(&self, ctx: &Ctx<Broker>) -> Result<BrokerState, ActorError> {
        let pubsub = PubSub::of(ctx.node());
        ctx.tick_every(RESYNC);
        // Forget a member's subscribers on its member-down event; greet a member that
        // joins (or comes back) with this node's announcement.
        let follow = ctx.node().member_events().map(|mut events| {
            let pubsub = pubsub.clone();
            tokio::spawn(async move {
                while let Some(change) = events.next().await {
                    match change {
                        MemberChange::Changed(e) if e.state == MemberState::Down => pubsub.forget(&e.name, e.epoch),
                        MemberChange::Changed(e) if e.state == MemberState::Alive => {
                            // A new incarnation: the old one's announcement is void.
                            pubsub.forget(&e.name, e.epoch.saturating_sub(1));
                            pubsub.announce(Some(e.name));
                        }
                        MemberChange::Changed(_) => {}
                        MemberChange::Missed(_) => pubsub.announce(None),
                    }
                }
            })
        });
        pubsub.announce(None);
        Ok(BrokerState { follow })
    }

    async fn handle(
        &self,
        ctx: &Ctx<Broker>,
        _: &mut BrokerState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let pubsub = PubSub::of(ctx.node());
        match msg {
            BrokerMsg::Deliver { msg, acked } => {
                let subscribers = pubsub.deliver_local(&msg, acked).await;
                reply.send(BrokerReply::Delivered { subscribers }).await;
            }
            BrokerMsg::Interest { node, epoch, version, topics, groups } => {
                pubsub.heard(node, epoch, version, topics, groups);
            }
        }
        Ok(())
    }

    async fn tick(&self, ctx: &Ctx<Broker>, _: &mut BrokerState) -> Result<(), ActorError> {
        PubSub::of(ctx.node()).announce(None);
        Ok(())
    }
}

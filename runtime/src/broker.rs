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

/// The broker's state: this node's pub/sub and the tasks that follow membership and
/// announce changes, stopped with it.
pub(crate) struct BrokerState {
    pubsub: std::sync::Arc<PubSub>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for BrokerState {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Changes closer together than this go out as one announcement.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(20);

impl Behavior for BrokerBehavior {
    type Proto = Broker;
    type State = BrokerState;

    async fn init(&self, ctx: &Ctx<Broker>) -> Result<BrokerState, ActorError> {
        let pubsub = PubSub::of(ctx.node());
        ctx.tick_every(RESYNC);
        let mut tasks = Vec::new();
        // Announce local changes, several close together as one.
        let announcer = pubsub.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                announcer.next_change().await;
                tokio::time::sleep(DEBOUNCE).await;
                announcer.announce(None);
            }
        }));
        // Forget a member's subscribers on its member-down event; greet a member that
        // joins (or comes back) with this node's announcement.
        if let Some(mut events) = ctx.node().member_events() {
            let pubsub = pubsub.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(change) = events.next().await {
                    match change {
                        MemberChange::Changed(e) if e.state == MemberState::Down => pubsub.forget(&e.name, e.epoch),
                        MemberChange::Changed(e) if e.state == MemberState::Alive => {
                            pubsub.revive(&e.name, e.epoch);
                            pubsub.announce(Some(e.name));
                        }
                        MemberChange::Changed(_) => {}
                        MemberChange::Missed(_) => {
                            pubsub.reconcile();
                            pubsub.announce(None);
                        }
                    }
                }
            }));
        }
        pubsub.reconcile();
        pubsub.announce(None);
        Ok(BrokerState { pubsub, tasks })
    }

    async fn handle(
        &self,
        _: &Ctx<Broker>,
        st: &mut BrokerState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            BrokerMsg::Deliver { msg, acked } => {
                let subscribers = st.pubsub.deliver(&msg, acked).await;
                reply.send(BrokerReply::Delivered { subscribers }).await;
            }
            BrokerMsg::Interest { node, epoch, version, topics, groups } => {
                st.pubsub.heard(node, epoch, version, topics, groups);
            }
        }
        Ok(())
    }

    async fn tick(&self, _: &Ctx<Broker>, st: &mut BrokerState) -> Result<(), ActorError> {
        st.pubsub.reconcile();
        st.pubsub.announce(None);
        Ok(())
    }
}

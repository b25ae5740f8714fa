//! `agent`: the limiter's per-node actor. It keeps this node's rule set current (pushes from the
//! rules singleton, and a pull every `rules_pull_ms` as the safety net), holds the node's
//! shared limiter state alive, and serves [`LimiterService`] to SDK users.
//!
//! Each service request runs on its own task so the mailbox never waits behind a check's
//! round trips; at most `inflight_max` run at once, beyond that a request is refused with
//! `MailboxFull` (back-pressure the caller sees, not unbounded memory).

use super::client::{Limiter, LimiterError};
use super::config::AgentParams;
use super::state::NodeLimiter;
use futures::future::join_all;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use troupe_limiter::proto::{BATCH_MAX, LimiterService, ServiceMsg, ServiceReply, ShardMsg};
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, fail};

/// The `limiter.agent` kind.
pub struct AgentActor {
    params: AgentParams,
}

impl FromParams for AgentActor {
    type Params = AgentParams;
    fn from_params(params: AgentParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(AgentActor { params })
    }
    fn check(p: &AgentParams) -> Result<(), String> {
        p.validate()
    }
}

/// The agent's state.
pub struct AgentState {
    st: Arc<NodeLimiter>,
    limiter: Limiter,
    inflight: Arc<Semaphore>,
}

/// What a caller of the service sees for a limiter error.
pub fn remote_error(e: LimiterError) -> RemoteError {
    match e {
        LimiterError::Remote(r) => r,
        LimiterError::Rules { conflict: true, errors } => {
            RemoteError::Invalid(format!("conflict: {}", errors.join("; ")))
        }
        other => RemoteError::Invalid(other.to_string()),
    }
}

impl Behavior for AgentActor {
    type Proto = LimiterService;
    type State = AgentState;

    async fn init(&self, ctx: &Ctx<LimiterService>) -> Result<AgentState, ActorError> {
        let st = NodeLimiter::of(ctx.node()).map_err(fail)?;
        st.pull_soon();
        ctx.tick_every(Duration::from_millis(self.params.rules_pull_ms));
        Ok(AgentState {
            limiter: Limiter::from_state(st.clone()),
            st,
            inflight: Arc::new(Semaphore::new(self.params.inflight_max)),
        })
    }

    async fn handle(
        &self,
        ctx: &Ctx<LimiterService>,
        s: &mut AgentState,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let full = || RemoteError::MailboxFull { path: ctx.path().to_string(), cap: self.params.inflight_max as u64 };
        match msg {
            ServiceMsg::Check { checks } => {
                let Ok(permit) = s.inflight.clone().try_acquire_owned() else {
                    reply.fail(full());
                    return Ok(());
                };
                let limiter = s.limiter.clone();
                tokio::spawn(async move {
                    let r = limiter.check(&checks).await;
                    drop(permit);
                    match r {
                        Ok(v) => reply.send(ServiceReply::Verdict(v)).await,
                        Err(e) => reply.fail(remote_error(e)),
                    }
                });
            }
            ServiceMsg::Adjust { receipt, actual } => {
                let Ok(permit) = s.inflight.clone().try_acquire_owned() else {
                    reply.fail(full());
                    return Ok(());
                };
                let limiter = s.limiter.clone();
                tokio::spawn(async move {
                    let r = limiter.adjust(&receipt, actual).await;
                    drop(permit);
                    match r {
                        Ok(()) => reply.send(ServiceReply::Done).await,
                        Err(e) => reply.fail(remote_error(e)),
                    }
                });
            }
            ServiceMsg::GetRules => reply.send(ServiceReply::Rules((*s.st.rules()).clone())).await,
            ServiceMsg::CheckBatch { requests } => {
                if requests.len() > BATCH_MAX {
                    reply.fail(RemoteError::Invalid(format!(
                        "{} requests in one batch is above the bound of {BATCH_MAX}",
                        requests.len()
                    )));
                    return Ok(());
                }
                let Ok(permit) = s.inflight.clone().try_acquire_owned() else {
                    reply.fail(full());
                    return Ok(());
                };
                let limiter = s.limiter.clone();
                tokio::spawn(async move {
                    let verdicts = join_all(requests.iter().map(|r| limiter.check(r))).await;
                    drop(permit);
                    let out = verdicts.into_iter().map(|v| v.map_err(|e| e.to_string())).collect();
                    reply.send(ServiceReply::Verdicts(out)).await;
                });
            }
            ServiceMsg::ShardBatch { checks } => {
                if checks.len() > BATCH_MAX {
                    reply.fail(RemoteError::Invalid(format!("{} shard checks is above {BATCH_MAX}", checks.len())));
                    return Ok(());
                }
                let Ok(permit) = s.inflight.clone().try_acquire_owned() else {
                    reply.fail(full());
                    return Ok(());
                };
                let st = s.st.clone();
                tokio::spawn(async move {
                    // Each request to its shard here (local: typed, no encoding). A shard this
                    // node no longer owns is reached through the handle, wherever it went.
                    let answers = join_all(checks.into_iter().map(|c| {
                        let st = &st;
                        async move {
                            let Some(link) = st.shards.get(c.shard as usize) else {
                                return Err(RemoteError::Invalid(format!("no shard {}", c.shard)));
                            };
                            let msg = ShardMsg::Check { version: c.version, items: c.items };
                            link.handle.ask_timeout(msg, st.owner_timeout()).await
                        }
                    }))
                    .await;
                    drop(permit);
                    reply.send(ServiceReply::ShardBatch(answers)).await;
                });
            }
            ServiceMsg::ApplyRules { rules } => {
                // A nudge, not a set to trust: pull it from the rules singleton.
                if rules.version() > s.st.rules().version() {
                    s.st.pull_soon();
                }
                reply.send(ServiceReply::Done).await;
            }
        }
        Ok(())
    }

    async fn tick(&self, _: &Ctx<LimiterService>, s: &mut AgentState) -> Result<(), ActorError> {
        s.st.pull_soon();
        Ok(())
    }
}

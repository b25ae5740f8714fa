//! tally: polls whose votes survive node failures — the example of
//! docs/writing-a-system.md. One entity per poll (`tally.poll`, sharded by poll name),
//! every vote written to a majority of the poll's 3 replicas before it is acknowledged,
//! two HTTP routes (`POST /polls/{poll}/vote`, `GET /polls/{poll}`) declared in
//! `systems/tally.toml`, and the [`System`] entry that hands the kind to the node.
//!
//! The shape is the one troupe's own systems have, in one small crate: [`proto`] is
//! the wire protocol (what a client sends and gets back), [`Votes`] the pure state (no
//! I/O, easy to test), [`PollActor`] the thin actor shell that makes it durable.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use troupe_runtime::{
    ActorError, Behavior, Ctx, FromParams, KindRegistry, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, fail,
};
use troupe_system::System;

/// The wire protocol: a client needs only this (and serde) to talk to a poll.
pub mod proto {
    use serde::{Deserialize, Serialize};

    /// The `tally.poll` kind: one entity per poll.
    pub struct Poll;

    impl troupe_runtime::Protocol for Poll {
        type Msg = PollMsg;
        type Reply = PollReply;
        const NAME: &'static str = "tally.poll";
    }

    /// What a poll is asked. Over HTTP the route names the variant and the JSON body
    /// holds its fields (`{"option": "rust"}`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum PollMsg {
        /// One vote for `option`.
        Vote {
            /// The option voted for: 1 to 64 bytes.
            option: String,
        },
        /// The counts so far.
        Results,
    }

    /// What a poll answers.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum PollReply {
        /// The vote is on a majority of the poll's replicas; `total` votes so far.
        Counted {
            /// Votes in the poll, this one included.
            total: u64,
        },
        /// Votes per option.
        Results {
            /// Option → votes.
            counts: std::collections::BTreeMap<String, u64>,
            /// All votes.
            total: u64,
        },
    }
}

use proto::{Poll, PollMsg, PollReply};

/// Longest option name accepted, in bytes.
pub const OPTION_BYTES_MAX: usize = 64;

/// A poll's votes: the pure part, with no I/O.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Votes {
    counts: BTreeMap<String, u64>,
    total: u64,
}

impl Votes {
    /// Checks a vote before it is written: the error is the client's to fix.
    pub fn check(option: &str) -> Result<(), String> {
        if option.is_empty() || option.len() > OPTION_BYTES_MAX {
            return Err(format!("option must be 1 to {OPTION_BYTES_MAX} bytes, not {}", option.len()));
        }
        Ok(())
    }

    /// Counts one vote (from the log, or a new one that is now durable).
    pub fn apply(&mut self, option: String) {
        *self.counts.entry(option).or_insert(0) += 1;
        self.total += 1;
    }

    /// The answer to `Results`.
    pub fn results(&self) -> PollReply {
        PollReply::Results { counts: self.counts.clone(), total: self.total }
    }
}

/// The `tally.poll` kind's parameters (`[kinds.poll.params]`); it has none yet, and
/// refuses unknown ones so a typo in the topology file is an error, not a no-op.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollParams {}

/// The actor shell around [`Votes`].
pub struct PollActor;

impl FromParams for PollActor {
    type Params = PollParams;
    fn from_params(_: PollParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(PollActor)
    }
}

impl Behavior for PollActor {
    type Proto = Poll;
    type State = Votes;

    /// Rebuilds the poll from its durable log (on whichever node owns it now).
    async fn init(&self, ctx: &Ctx<Poll>) -> Result<Votes, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering {}: {e}", ctx.path())))?;
        let mut votes = Votes::default();
        for (_, bytes) in &r.entries {
            let option: String = troupe_runtime::wire::codec::decode(bytes)
                .map_err(|e| fail(format!("corrupt vote in {}: {e}", ctx.path())))?;
            votes.apply(option);
        }
        Ok(votes)
    }

    async fn handle(
        &self,
        ctx: &Ctx<Poll>,
        votes: &mut Votes,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            PollMsg::Vote { option } => {
                if let Err(why) = Votes::check(&option) {
                    // 400 over HTTP, with this reason in the body.
                    reply.fail(RemoteError::Invalid(why));
                    return Ok(());
                }
                let entry = troupe_runtime::wire::codec::encode(&option).map_err(|e| fail(e.to_string()))?;
                // Acknowledged only once a majority of the poll's replicas have it on disk.
                if let Err(e) = ctx.persist(entry).await {
                    reply.fail(RemoteError::ActorFailed { path: ctx.path().to_string(), reason: e.to_string() });
                    // Let it crash: the supervisor restarts the poll, which recovers
                    // from the log instead of guessing whether the vote landed.
                    return Err(fail(format!("vote not written: {e}")));
                }
                votes.apply(option);
                reply.send(PollReply::Counted { total: votes.total }).await;
            }
            // The read barrier: answer only while a majority still backs this owner, so a
            // node cut off from the others refuses instead of answering stale counts.
            PollMsg::Results => match ctx.confirm().await {
                Ok(()) => reply.send(votes.results()).await,
                Err(e) => reply.fail(RemoteError::ActorFailed { path: ctx.path().to_string(), reason: e.to_string() }),
            },
        }
        Ok(())
    }
}

/// tally as the `troupe` command line sees it.
pub struct Tally;

impl System for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }
    fn register(&self, kinds: &mut KindRegistry) {
        kinds.register::<PollActor>("tally.poll");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_count_per_option() {
        let mut v = Votes::default();
        for o in ["rust", "go", "rust"] {
            v.apply(o.to_string());
        }
        let PollReply::Results { counts, total } = v.results() else { panic!("results") };
        assert_eq!((counts["rust"], counts["go"], total), (2, 1, 3));
    }

    #[test]
    fn an_empty_or_long_option_is_refused_with_the_limit() {
        assert!(Votes::check("rust").is_ok());
        assert_eq!(Votes::check("").unwrap_err(), "option must be 1 to 64 bytes, not 0");
        assert!(Votes::check(&"x".repeat(65)).unwrap_err().contains("not 65"));
    }
}

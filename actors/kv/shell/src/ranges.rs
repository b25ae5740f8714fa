//! `kv.ranges`: a cluster singleton that hands out disjoint ranges of a named
//! counter (IDs for the URL shortener, sequence blocks for anything). Its state is
//! durable and replicated, so after its node dies the singleton resumes on another
//! node and never hands out a number twice.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
pub use troupe_kv::ranges::{Ranges, RangesMsg, RangesReply};
use troupe_runtime::{ActorError, Behavior, Ctx, FromParams, KindSpec, MsgOf, Node, RemoteError, Reply, ReplyOf, fail};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangesParams {
    /// Largest range one request may take.
    #[serde(default = "default_size_max")]
    pub size_max: u64,
}

fn default_size_max() -> u64 {
    1 << 20
}

pub struct RangesActor {
    size_max: u64,
}

impl FromParams for RangesActor {
    type Params = RangesParams;
    fn from_params(p: RangesParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(Self { size_max: p.size_max })
    }
    fn check(p: &RangesParams) -> Result<(), String> {
        if p.size_max == 0 { Err("size_max must be at least 1".into()) } else { Ok(()) }
    }
}

/// The pure core: counters and their next free number.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counters(BTreeMap<String, u64>);

impl Counters {
    pub fn next(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
    /// Reserves `size` numbers; `None` on overflow.
    pub fn allocate(&mut self, name: &str, size: u64) -> Option<(u64, u64)> {
        let start = self.next(name);
        let end = start.checked_add(size)?;
        self.0.insert(name.to_string(), end);
        Some((start, end))
    }
}

impl Behavior for RangesActor {
    type Proto = Ranges;
    type State = Counters;

    async fn init(&self, ctx: &Ctx<Ranges>) -> Result<Counters, ActorError> {
        let r = ctx.recover().await.map_err(|e| fail(format!("recovering counters: {e}")))?;
        let mut c: Counters = match &r.snapshot {
            Some((_, b)) => {
                troupe_runtime::wire::codec::decode(b).map_err(|e| fail(format!("corrupt snapshot: {e}")))?
            }
            None => Counters::default(),
        };
        for (_, b) in &r.entries {
            let (name, end): (String, u64) =
                troupe_runtime::wire::codec::decode(b).map_err(|e| fail(format!("corrupt entry: {e}")))?;
            c.0.insert(name, end);
        }
        Ok(c)
    }

    async fn handle(
        &self,
        ctx: &Ctx<Ranges>,
        st: &mut Counters,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        let node = ctx.node().name().to_string();
        match msg {
            RangesMsg::Peek { name } => reply.send(RangesReply::Next { next: st.next(&name), node }).await,
            RangesMsg::Allocate { name, size } => {
                if size == 0 || size > self.size_max || name.is_empty() || name.len() > 200 {
                    reply.fail(RemoteError::Invalid(format!(
                        "size must be 1..={} and name 1..=200 bytes",
                        self.size_max
                    )));
                    return Ok(());
                }
                let mut next = st.clone();
                let Some((start, end)) = next.allocate(&name, size) else {
                    reply.fail(RemoteError::Invalid(format!("counter {name} would overflow")));
                    return Ok(());
                };
                let entry = troupe_runtime::wire::codec::encode(&(name, end)).map_err(|e| fail(e.to_string()))?;
                match ctx.persist(entry).await {
                    Ok(seq) => {
                        *st = next;
                        if seq % 256 == 0 {
                            let snap = troupe_runtime::wire::codec::encode(&*st).map_err(|e| fail(e.to_string()))?;
                            ctx.snapshot(snap).await.map_err(|e| fail(e.to_string()))?;
                        }
                        reply.send(RangesReply::Range { start, end, node }).await;
                    }
                    Err(e) => {
                        reply.fail(RemoteError::ActorFailed { path: ctx.path().to_string(), reason: e.to_string() });
                        // The entry may be on some disks: reload rather than guess.
                        *st = self.init(ctx).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ranges_never_overlap(reqs in proptest::collection::vec((0usize..3, 1u64..1000), 1..100)) {
            let mut c = Counters::default();
            let mut seen: Vec<(usize, u64, u64)> = Vec::new();
            for (n, size) in reqs {
                let (s, e) = c.allocate(&format!("c{n}"), size).unwrap();
                prop_assert_eq!(e - s, size);
                for (m, s2, e2) in &seen {
                    if *m == n {
                        prop_assert!(e <= *s2 || s >= *e2);
                    }
                }
                seen.push((n, s, e));
            }
        }
    }
}

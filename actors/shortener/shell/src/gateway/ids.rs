//! Code minting on a gateway node: counter values from blocks that `kv.ranges` hands out,
//! through the keyed permutation of the core (`CodeGen`).
//!
//! Invariants:
//! - a counter value is used at most once in the cluster: blocks are disjoint (the range
//!   singleton persists each allocation on two nodes before answering) and a block lives
//!   only in this process's memory; after a restart the rest of it is abandoned (at most
//!   two blocks per restart are wasted: the current one and the prefetched one);
//! - the create path needs no coordination while a block lasts; the next block is
//!   fetched in the background when the current one falls below a quarter.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use troupe_kv::ranges::{Ranges, RangesMsg, RangesReply};
use troupe_runtime::{ActorPath, Node, RemoteError};
use troupe_shortener::ids::{Code, CodeGen, CounterBlock};

pub struct IdSource {
    codes: CodeGen,
    counter: String,
    block_size: u64,
    blocks: Mutex<VecDeque<CounterBlock>>,
    /// One refill at a time.
    refill: tokio::sync::Mutex<()>,
    prefetching: AtomicBool,
}

impl IdSource {
    pub fn new(codes: CodeGen, counter: String, block_size: u64) -> Self {
        Self {
            codes,
            counter,
            block_size,
            blocks: Mutex::new(VecDeque::new()),
            refill: tokio::sync::Mutex::new(()),
            prefetching: AtomicBool::new(false),
        }
    }

    /// Takes a value; also says whether stock is low (time to prefetch).
    fn take(&self) -> (Option<u64>, bool) {
        let mut blocks = self.blocks.lock();
        while let Some(b) = blocks.front_mut() {
            if let Some(v) = b.take() {
                let left: u64 = blocks.iter().map(CounterBlock::remaining).sum();
                return (Some(v), left < self.block_size / 4);
            }
            blocks.pop_front();
        }
        (None, true)
    }

    fn stock(&self) -> u64 {
        self.blocks.lock().iter().map(CounterBlock::remaining).sum()
    }

    /// The next code minted on this node.
    pub async fn next(self: &Arc<Self>, node: &Node, timeout: Duration) -> Result<Code, RemoteError> {
        for _ in 0..3 {
            let (value, low) = self.take();
            if low {
                self.prefetch(node);
            }
            if let Some(v) = value {
                return self.codes.code_for(v).map_err(|e| RemoteError::Invalid(format!("code space: {e}")));
            }
            let _one = self.refill.lock().await;
            if self.stock() == 0 {
                self.fetch(node, timeout).await?;
            }
        }
        Err(RemoteError::Unreachable { node: "-".into(), reason: "no counter block could be obtained".into() })
    }

    fn prefetch(self: &Arc<Self>, node: &Node) {
        if self.prefetching.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let _one = me.refill.lock().await;
            if me.stock() < me.block_size / 4
                && let Err(e) = me.fetch(&node, Duration::from_secs(5)).await
            {
                tracing::warn!(error = %e, "prefetching a counter block failed; will retry on demand");
            }
            me.prefetching.store(false, Ordering::SeqCst);
        });
    }

    async fn fetch(&self, node: &Node, timeout: Duration) -> Result<(), RemoteError> {
        let path = ActorPath::new("kv", "ranges", "main").map_err(|e| RemoteError::Invalid(e.to_string()))?;
        let msg = RangesMsg::Allocate { name: self.counter.clone(), size: self.block_size };
        match node.handle::<Ranges>(path).ask_timeout(msg, timeout).await? {
            RangesReply::Range { start, end, .. } => {
                let block = CounterBlock::new(start, end)
                    .map_err(|e| RemoteError::Invalid(format!("the code space is exhausted: {e}")))?;
                self.blocks.lock().push_back(block);
                Ok(())
            }
            other => Err(RemoteError::Invalid(format!("kv.ranges answered {other:?} to Allocate"))),
        }
    }
}

//! The admission queue in front of each worker's engine (pure core: no I/O, time passed
//! in as milliseconds).
//!
//! Order: paid before free, short before long, with **linear aging**: a request's
//! effective priority is `level × aging_ms + waited_ms`, where `level` is 0..=3 (free
//! long, free short, paid long, paid short). Because every waiting request ages at the
//! same rate, the order between two requests never changes while they wait, so the
//! queue keeps one static key per request, `level × aging_ms − arrival_ms` (larger
//! first; earlier arrival breaks ties), in a B-tree: push, pop and cancel are O(log n).
//!
//! Guarantees (property-tested below):
//! - **Order:** `pop` returns a request with the highest effective priority at that
//!   instant, the earliest among equals.
//! - **No starvation:** a request that arrived at `t` is served before every request
//!   that arrives after `t + (LEVEL_MAX − level) × aging_ms`. So with a bounded queue
//!   (`cap`) and a server that pops at least every `s` ms, it waits at most
//!   `(LEVEL_MAX − level) × aging_ms + cap × s`, however much higher-priority traffic
//!   keeps arriving.
//! - **Bounded:** at most `cap` requests; `push` beyond it is refused (the caller
//!   answers 503/429) and changes nothing.

use std::collections::{BTreeMap, HashMap};

/// Highest priority level (paid, short).
pub const LEVEL_MAX: u8 = 3;

/// Customer tier of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Paid,
}

/// What decides a request's base priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Class {
    pub tier: Tier,
    /// Tokens the request may occupy: prompt + max_tokens.
    pub tokens: u32,
}

impl Class {
    /// 0..=LEVEL_MAX: paid above free, then short (≤ `short_tokens_max`) above long.
    pub fn level(&self, short_tokens_max: u32) -> u8 {
        let paid = u8::from(self.tier == Tier::Paid);
        let short = u8::from(self.tokens <= short_tokens_max);
        paid * 2 + short
    }
}

/// Queue settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most requests waiting, requests.
    pub cap: usize,
    /// Milliseconds of waiting worth one priority level.
    pub aging_ms: u64,
    /// Requests of at most this many tokens (prompt + max_tokens) are "short".
    pub short_tokens_max: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    /// Negated static key, so the B-tree's first entry is the most urgent.
    neg_key: i128,
    seq: u64,
}

/// The queue of one worker. `T` is what the caller needs to start the request.
#[derive(Debug)]
pub struct AdmissionQueue<T> {
    cfg: QueueConfig,
    order: BTreeMap<Key, (u64, T)>,
    by_id: HashMap<u64, Key>,
    next_seq: u64,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({0} requests waiting)")]
    Full(usize),
    #[error("request {0} is already queued")]
    Duplicate(u64),
}

impl<T> AdmissionQueue<T> {
    pub fn new(cfg: QueueConfig) -> Self {
        AdmissionQueue {
            cfg: QueueConfig { aging_ms: cfg.aging_ms.max(1), ..cfg },
            order: BTreeMap::new(),
            by_id: HashMap::new(),
            next_seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// Queues request `id` that arrived at `now_ms`. A refused item is handed back.
    pub fn push(&mut self, id: u64, class: Class, now_ms: u64, item: T) -> Result<(), (QueueError, T)> {
        if self.by_id.contains_key(&id) {
            return Err((QueueError::Duplicate(id), item));
        }
        if self.order.len() >= self.cfg.cap {
            return Err((QueueError::Full(self.cfg.cap), item));
        }
        let level = i128::from(class.level(self.cfg.short_tokens_max));
        let key = Key { neg_key: -(level * i128::from(self.cfg.aging_ms) - i128::from(now_ms)), seq: self.next_seq };
        self.next_seq += 1;
        self.order.insert(key, (id, item));
        self.by_id.insert(id, key);
        Ok(())
    }

    /// The most urgent request (see the module docs), removed.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let (_, (id, item)) = self.order.pop_first()?;
        self.by_id.remove(&id);
        Some((id, item))
    }

    /// Removes a queued request (cancelled by its client).
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let key = self.by_id.remove(&id)?;
        self.order.remove(&key).map(|(_, item)| item)
    }

    /// Removes every request (the worker is shutting down).
    pub fn drain(&mut self) -> Vec<(u64, T)> {
        self.by_id.clear();
        std::mem::take(&mut self.order).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(cap: usize, aging_ms: u64) -> QueueConfig {
        QueueConfig { cap, aging_ms, short_tokens_max: 256 }
    }

    fn class(paid: bool, tokens: u32) -> Class {
        Class { tier: if paid { Tier::Paid } else { Tier::Free }, tokens }
    }

    #[test]
    fn paid_before_free_short_before_long_then_fifo() {
        let mut q = AdmissionQueue::new(cfg(10, 1000));
        q.push(1, class(false, 1000), 0, ()).expect("push");
        q.push(2, class(false, 10), 0, ()).expect("push");
        q.push(3, class(true, 1000), 0, ()).expect("push");
        q.push(4, class(true, 10), 0, ()).expect("push");
        q.push(5, class(true, 10), 0, ()).expect("push");
        let order: Vec<u64> = std::iter::from_fn(|| q.pop().map(|(id, ())| id)).collect();
        assert_eq!(order, vec![4, 5, 3, 2, 1]);
    }

    #[test]
    fn an_old_free_request_overtakes_new_paid_ones() {
        let mut q = AdmissionQueue::new(cfg(10, 100));
        q.push(1, class(false, 1000), 0, ()).expect("push");
        // Paid short is 3 levels up: worth 300 ms of waiting. Arriving later than that,
        // it goes behind.
        q.push(2, class(true, 10), 301, ()).expect("push");
        q.push(3, class(true, 10), 299, ()).expect("push");
        assert_eq!(q.pop().map(|p| p.0), Some(3));
        assert_eq!(q.pop().map(|p| p.0), Some(1));
        assert_eq!(q.pop().map(|p| p.0), Some(2));
    }

    #[test]
    fn full_and_duplicate_pushes_change_nothing() {
        let mut q = AdmissionQueue::new(cfg(2, 100));
        q.push(1, class(true, 1), 0, "a").expect("push");
        assert_eq!(q.push(1, class(true, 1), 0, "b"), Err((QueueError::Duplicate(1), "b")));
        q.push(2, class(true, 1), 0, "c").expect("push");
        assert_eq!(q.push(3, class(true, 1), 0, "d"), Err((QueueError::Full(2), "d")));
        assert_eq!(q.len(), 2);
        assert_eq!(q.remove(1), Some("a"));
        assert_eq!(q.remove(1), None);
        assert_eq!(q.pop(), Some((2, "c")));
        assert!(q.is_empty());
    }

    /// An arrival: (gap since the previous one in ms, paid, tokens).
    fn arrivals() -> impl Strategy<Value = Vec<(u64, bool, u32)>> {
        prop::collection::vec((0u64..50, any::<bool>(), 1u32..600), 1..300)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Every pop returns the request with the highest effective priority at that
        /// instant (brute force over what is queued), earliest among equals.
        #[test]
        fn pop_respects_effective_priority(arr in arrivals(), aging in 1u64..500, pop_every in 1usize..5) {
            let c = cfg(1000, aging);
            let mut q = AdmissionQueue::new(c);
            let mut model: Vec<(u64, u8, u64)> = Vec::new(); // id, level, arrival
            let mut now = 0;
            for (i, (gap, paid, tokens)) in arr.into_iter().enumerate() {
                now += gap;
                let cl = class(paid, tokens);
                q.push(i as u64, cl, now, ()).expect("push");
                model.push((i as u64, cl.level(c.short_tokens_max), now));
                if i % pop_every == 0 {
                    let eff = |&(_, l, t): &(u64, u8, u64)| (u64::from(l) * aging + (now - t), std::cmp::Reverse(t));
                    let best = model.iter().max_by_key(|e| eff(e)).copied();
                    let (id, ()) = q.pop().expect("non-empty");
                    let got = model.iter().find(|e| e.0 == id).copied();
                    prop_assert_eq!(got.map(|g| eff(&g)), best.map(|b| eff(&b)));
                    model.retain(|e| e.0 != id);
                }
            }
            prop_assert_eq!(q.len(), model.len());
        }

        /// A free, long request facing a flood of paid short ones (one every `gap` ms,
        /// one served every `serve_ms`) waits no longer than the documented bound.
        #[test]
        fn no_starvation_under_a_flood(gap in 1u64..20, serve_ms in 1u64..40, aging in 1u64..300, start in 0u64..1000) {
            let c = cfg(64, aging);
            let mut q = AdmissionQueue::new(c);
            let victim = 1_000_000u64;
            let mut next_arrival = 0;
            let mut next_serve = 0;
            let mut id = 0;
            let mut queued_victim = false;
            let mut pushed_at = 0;
            let mut served_at = None;
            let mut now = 0;
            while now < 200_000 && served_at.is_none() {
                // The victim arrives at `start`, or as soon as the queue has room (a full
                // queue refuses it: the client gets a 503, which is not starvation).
                if !queued_victim && now >= start && q.len() < c.cap {
                    q.push(victim, class(false, 10_000), now, ()).expect("room checked");
                    queued_victim = true;
                    pushed_at = now;
                }
                if now >= next_arrival {
                    // Refused when full: the flood is bounded by the queue, as in the worker.
                    let _ = q.push(id, class(true, 1), now, ());
                    id += 1;
                    next_arrival += gap;
                }
                if now >= next_serve {
                    if let Some((got, ())) = q.pop()
                        && got == victim
                    {
                        served_at = Some(now);
                    }
                    next_serve += serve_ms;
                }
                now += 1;
            }
            let waited = served_at.map(|t| t - pushed_at);
            let bound = u64::from(LEVEL_MAX) * aging + (c.cap as u64 + 1) * serve_ms + 1;
            prop_assert!(waited.is_some_and(|w| w <= bound), "waited {:?}, bound {}", waited, bound);
        }
    }
}

//! Queue-depth autoscaling of a pool's workers (pure core: time passed in as ms).
//!
//! Every worker of a pool is loaded at start (model in memory, engine thread up); the
//! scaler only decides which of them **admit** requests (active) and which keep **warm**
//! (loaded, not admitting). Scaling up is therefore one message, never a model load.
//!
//! Decision, each tick, from the pool's live workers:
//! - demand = Σ (queued + running) over active workers;
//! - wanted = clamp(ceil(demand / target_per_worker), min_active, live workers);
//! - **up** at once (after `up_cooldown_ms` since the last change) when wanted > active,
//!   by as many workers as needed — the least loaded warm ones; a dead active worker is
//!   simply not counted, so a warm one replaces it at the next tick;
//! - **down** by one worker when wanted < active has held for `down_stable_ms` (and
//!   `down_cooldown_ms` since the last change): the active worker with the least work,
//!   which finishes what it has and takes nothing new.
//!
//! Guarantees (tested): active ∈ [min(min_active, live), live] after every decision
//! (capacity = the workers the cluster declares, by role); no oscillation faster than
//! the cooldowns; a queue that keeps growing reaches every live worker.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleConfig {
    /// Workers always admitting (when alive).
    pub min_active: u32,
    /// Requests (queued + running) one active worker should carry.
    pub target_per_worker: f64,
    /// Milliseconds between two changes when scaling up.
    pub up_cooldown_ms: u64,
    /// Milliseconds between two changes when scaling down.
    pub down_cooldown_ms: u64,
    /// Milliseconds demand must stay low before scaling down.
    pub down_stable_ms: u64,
}

/// A worker as the scaler sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkerView {
    pub id: String,
    pub alive: bool,
    pub active: bool,
    pub queued: u32,
    pub running: u32,
}

#[derive(Debug, Clone)]
pub struct Scaler {
    cfg: ScaleConfig,
    last_change_ms: Option<u64>,
    low_since_ms: Option<u64>,
}

impl Scaler {
    pub fn new(cfg: ScaleConfig) -> Self {
        Scaler {
            cfg: ScaleConfig { target_per_worker: cfg.target_per_worker.max(0.1), ..cfg },
            last_change_ms: None,
            low_since_ms: None,
        }
    }

    /// How many workers should admit, given the pool's workers.
    pub fn wanted(&self, workers: &[WorkerView]) -> u32 {
        let live = workers.iter().filter(|w| w.alive).count() as u32;
        let demand: u32 = workers.iter().filter(|w| w.alive && w.active).map(|w| w.queued + w.running).sum();
        let need = (f64::from(demand) / self.cfg.target_per_worker).ceil() as u32;
        need.max(self.cfg.min_active).min(live)
    }

    /// Changes to make: `(worker id, active)`.
    pub fn decide(&mut self, workers: &[WorkerView], now_ms: u64) -> Vec<(String, bool)> {
        let wanted = self.wanted(workers);
        let active: Vec<&WorkerView> = workers.iter().filter(|w| w.alive && w.active).collect();
        let n_active = active.len() as u32;
        let since = |c: Option<u64>| c.map_or(u64::MAX, |t| now_ms.saturating_sub(t));
        let mut out = Vec::new();
        if wanted > n_active {
            self.low_since_ms = None;
            // Below the minimum (start, or a worker died): no cooldown.
            if n_active < self.cfg.min_active || since(self.last_change_ms) >= self.cfg.up_cooldown_ms {
                let mut warm: Vec<&WorkerView> = workers.iter().filter(|w| w.alive && !w.active).collect();
                warm.sort_by_key(|w| (w.queued + w.running, w.id.clone()));
                out.extend(warm.iter().take((wanted - n_active) as usize).map(|w| (w.id.clone(), true)));
            }
        } else if wanted < n_active {
            let low_since = *self.low_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(low_since) >= self.cfg.down_stable_ms
                && since(self.last_change_ms) >= self.cfg.down_cooldown_ms
                && let Some(w) = active.iter().min_by_key(|w| (w.queued + w.running, std::cmp::Reverse(w.id.clone())))
            {
                out.push((w.id.clone(), false));
                self.low_since_ms = None;
            }
        } else {
            self.low_since_ms = None;
        }
        if !out.is_empty() {
            self.last_change_ms = Some(now_ms);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> ScaleConfig {
        ScaleConfig {
            min_active: 1,
            target_per_worker: 4.0,
            up_cooldown_ms: 1000,
            down_cooldown_ms: 5000,
            down_stable_ms: 3000,
        }
    }

    fn w(id: &str, active: bool, queued: u32, running: u32) -> WorkerView {
        WorkerView { id: id.into(), alive: true, active, queued, running }
    }

    fn apply(ws: &mut [WorkerView], changes: &[(String, bool)]) {
        for (id, a) in changes {
            if let Some(x) = ws.iter_mut().find(|x| &x.id == id) {
                x.active = *a;
            }
        }
    }

    #[test]
    fn scales_up_on_queue_and_down_after_a_quiet_period() {
        let mut s = Scaler::new(cfg());
        let mut ws = vec![w("a", false, 0, 0), w("b", false, 0, 0), w("c", false, 0, 0)];
        let c = s.decide(&ws, 0);
        assert_eq!(c, vec![("a".to_string(), true)], "min_active at start");
        apply(&mut ws, &c);
        ws[0].queued = 9; // demand 9 → 3 workers
        assert!(s.decide(&ws, 500).is_empty(), "up cooldown");
        let c = s.decide(&ws, 1000);
        assert_eq!(c.len(), 2);
        apply(&mut ws, &c);
        ws[0].queued = 0;
        assert!(s.decide(&ws, 2000).is_empty(), "low, not yet stable");
        assert!(s.decide(&ws, 4999).is_empty());
        let c = s.decide(&ws, 6000);
        assert_eq!(c.len(), 1);
        assert!(!c[0].1);
    }

    #[test]
    fn a_dead_active_worker_is_replaced_without_cooldown() {
        let mut s = Scaler::new(cfg());
        let mut ws = vec![w("a", true, 0, 0), w("b", false, 0, 0)];
        assert!(s.decide(&ws, 0).is_empty());
        ws[0].alive = false;
        assert_eq!(s.decide(&ws, 1), vec![("b".to_string(), true)]);
    }

    proptest! {
        /// Whatever the load, after applying each decision the active count stays within
        /// [min(min_active, live), live], and changes respect the cooldowns.
        #[test]
        fn active_count_stays_within_capacity(steps in prop::collection::vec((prop::collection::vec((0u32..20, 0u32..20, any::<bool>()), 4), 0u64..2000), 1..100)) {
            let c = cfg();
            let mut s = Scaler::new(c);
            let mut ws: Vec<WorkerView> = (0..4).map(|i| w(&format!("w{i}"), false, 0, 0)).collect();
            let mut now = 0;
            let mut last_up: Option<u64> = None;
            for (loads, gap) in steps {
                now += gap;
                for (x, (q, r, alive)) in ws.iter_mut().zip(loads) {
                    x.queued = q;
                    x.running = r;
                    x.alive = alive;
                }
                let before = ws.iter().filter(|x| x.alive && x.active).count() as u32;
                let ch = s.decide(&ws, now);
                apply(&mut ws, &ch);
                let live = ws.iter().filter(|x| x.alive).count() as u32;
                let active = ws.iter().filter(|x| x.alive && x.active).count() as u32;
                prop_assert!(active <= live);
                prop_assert!(active >= c.min_active.min(live));
                if active > before
                    && before >= c.min_active
                    && let Some(t) = last_up
                {
                    prop_assert!(now - t >= c.up_cooldown_ms.min(c.down_cooldown_ms));
                }
                if !ch.is_empty() { last_up = Some(now); }
                prop_assert!(ch.iter().filter(|(_, a)| !a).count() <= 1, "down one at a time");
            }
        }
    }
}

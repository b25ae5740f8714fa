//! Fault injection: per-peer rules that drop, delay or partition traffic, applied by
//! the transport and by gossip to everything this node sends to or receives from a
//! named node. Rules may expire on their own (`for_ms`). Pure: time and randomness
//! come in as arguments.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use troupe_wire::introspect::ChaosCommand;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Rule {
    partition: bool,
    delay_ms: u64,
    drop_ratio: f64,
    until: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Pass,
    Drop,
    Delay(Duration),
}

#[derive(Debug, Default, Clone)]
pub struct ChaosRules {
    rules: BTreeMap<String, Rule>,
}

impl ChaosRules {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies a command; returns what changed, for the operator.
    pub fn apply(&mut self, cmd: &ChaosCommand, now: Instant) -> String {
        let until = |f: &Option<u64>| f.map(|ms| now + Duration::from_millis(ms));
        let for_text = |f: &Option<u64>| f.map(|ms| format!(" for {ms} ms")).unwrap_or_default();
        match cmd {
            ChaosCommand::Heal => {
                let n = self.rules.len();
                self.rules.clear();
                format!("healed ({n} rules removed)")
            }
            ChaosCommand::Partition { nodes, for_ms } => {
                for n in nodes {
                    let r = self.rules.entry(n.clone()).or_default();
                    r.partition = true;
                    r.until = until(for_ms);
                }
                format!("partitioned from {}{}", nodes.join(", "), for_text(for_ms))
            }
            ChaosCommand::Delay { nodes, delay_ms, for_ms } => {
                for n in nodes {
                    let r = self.rules.entry(n.clone()).or_default();
                    r.delay_ms = *delay_ms;
                    r.until = until(for_ms);
                }
                format!("delaying traffic with {} by {delay_ms} ms{}", nodes.join(", "), for_text(for_ms))
            }
            ChaosCommand::Drop { nodes, ratio, for_ms } => {
                let ratio = ratio.clamp(0.0, 1.0);
                for n in nodes {
                    let r = self.rules.entry(n.clone()).or_default();
                    r.drop_ratio = ratio;
                    r.until = until(for_ms);
                }
                format!("dropping {:.0}% of traffic with {}{}", ratio * 100.0, nodes.join(", "), for_text(for_ms))
            }
        }
    }

    /// What to do with one packet or frame to/from `node`; `roll` is uniform in [0,1).
    pub fn verdict(&self, node: &str, now: Instant, roll: f64) -> Verdict {
        match self.rules.get(node) {
            None => Verdict::Pass,
            Some(r) if r.until.is_some_and(|u| now >= u) => Verdict::Pass,
            Some(r) if r.partition || roll < r.drop_ratio => Verdict::Drop,
            Some(r) if r.delay_ms > 0 => Verdict::Delay(Duration::from_millis(r.delay_ms)),
            Some(_) => Verdict::Pass,
        }
    }

    /// Drops expired rules.
    pub fn expire(&mut self, now: Instant) {
        self.rules.retain(|_, r| r.until.is_none_or(|u| now < u));
    }
}

#[cfg(test)]
// Tests anchor time somewhere; the code under test never reads a clock.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn rules_apply_and_expire() {
        let t0 = Instant::now();
        let mut c = ChaosRules::default();
        c.apply(&ChaosCommand::Partition { nodes: vec!["n2".into()], for_ms: Some(100) }, t0);
        c.apply(&ChaosCommand::Delay { nodes: vec!["n3".into()], delay_ms: 50, for_ms: None }, t0);
        c.apply(&ChaosCommand::Drop { nodes: vec!["n4".into()], ratio: 0.5, for_ms: None }, t0);
        assert_eq!(c.verdict("n2", t0, 0.9), Verdict::Drop);
        assert_eq!(c.verdict("n2", t0 + Duration::from_millis(100), 0.9), Verdict::Pass);
        assert_eq!(c.verdict("n3", t0, 0.0), Verdict::Delay(Duration::from_millis(50)));
        assert_eq!(c.verdict("n4", t0, 0.2), Verdict::Drop);
        assert_eq!(c.verdict("n4", t0, 0.7), Verdict::Pass);
        assert_eq!(c.verdict("n1", t0, 0.0), Verdict::Pass);
        c.expire(t0 + Duration::from_millis(200));
        assert_eq!(c.rules.len(), 2);
        assert!(c.apply(&ChaosCommand::Heal, t0).contains("2 rules"));
        assert!(c.is_empty());
    }
}

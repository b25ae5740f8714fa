//! `troupe lab chat`: seeded experiments on the decisions of docs/chat.md.
//!
//! (a) [`fanout`]: where a group message is written and how it travels — an inbox per
//!     user written on send (fan-out on write: one replicated write per inbox shard
//!     touched) against one log per conversation read from cursors (fan-out on read: one
//!     write); and sending to each online member against one publish per gateway node
//!     with members online (per-node batching);
//! (b) [`polling`]: polling intervals against push — delivery latency and requests a
//!     client makes per minute;
//! (c) [`ordering`]: the price of one global order — one sequencer for every message
//!     against one per conversation, p99 time to sequence as the load grows.
//!
//! Invariants: every experiment is a pure function of its parameters (seeded
//! SplitMix64, no clock); every size is bounded (`TRIALS_MAX`, `EVENTS_MAX`).

use serde::Serialize;
use troupe_common::rng::SplitMix64;

/// Trials per point at most.
pub const TRIALS_MAX: u32 = 100_000;
/// Simulated events per run at most.
pub const EVENTS_MAX: u64 = 5_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct FanoutPoint {
    pub group: u32,
    /// Replicated writes per message with an inbox per user (distinct shards touched).
    pub inbox_writes: f64,
    /// Replicated writes per message with one log per conversation.
    pub log_writes: f64,
    /// Network messages per send, one per online member.
    pub per_member_sends: f64,
    /// Network messages per send, one per gateway node with a member online.
    pub per_node_sends: f64,
}

/// (a) Averages over `trials` groups of each size; members online with probability
/// `online`, on one of `nodes` gateways, their inboxes in one of `shards` shards.
pub fn fanout(
    seed: u64,
    groups: &[u32],
    nodes: u32,
    shards: u32,
    online: f64,
    trials: u32,
) -> Result<Vec<FanoutPoint>, String> {
    if nodes == 0 || shards == 0 || !(0.0..=1.0).contains(&online) || trials == 0 || trials > TRIALS_MAX {
        return Err(format!("nodes and shards above 0, online in 0..=1, trials 1..={TRIALS_MAX}"));
    }
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    for &g in groups {
        let (mut inbox, mut members, mut per_node) = (0u64, 0u64, 0u64);
        for _ in 0..trials {
            let mut shard_hit = vec![false; shards as usize];
            let mut node_hit = vec![false; nodes as usize];
            for _ in 0..g {
                shard_hit[rng.below(u64::from(shards)) as usize] = true;
                if rng.unit() < online {
                    members += 1;
                    node_hit[rng.below(u64::from(nodes)) as usize] = true;
                }
            }
            inbox += shard_hit.iter().filter(|h| **h).count() as u64;
            per_node += node_hit.iter().filter(|h| **h).count() as u64;
        }
        let t = f64::from(trials);
        out.push(FanoutPoint {
            group: g,
            inbox_writes: inbox as f64 / t,
            log_writes: 1.0,
            per_member_sends: members as f64 / t,
            per_node_sends: per_node as f64 / t,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct PollPoint {
    /// Poll interval (ms); 0 is push.
    pub interval_ms: u64,
    pub mean_latency_ms: f64,
    pub p99_latency_ms: f64,
    /// Requests (polls) or frames (push) per client per minute.
    pub requests_per_min: f64,
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// (b) Messages reach a client at `per_min` a minute (Poisson) for `minutes`; a poll
/// every interval (random phase) or a push, each adding `rtt_ms`.
pub fn polling(
    seed: u64,
    intervals_ms: &[u64],
    per_min: f64,
    minutes: u64,
    rtt_ms: f64,
) -> Result<Vec<PollPoint>, String> {
    let events = (per_min * minutes as f64) as u64;
    if per_min <= 0.0 || events == 0 || events > EVENTS_MAX {
        return Err(format!("messages per run must be 1..={EVENTS_MAX}"));
    }
    let mut rng = SplitMix64::new(seed);
    let horizon_ms = minutes as f64 * 60_000.0;
    let mut arrivals = Vec::new();
    let mut t = 0.0;
    loop {
        t += rng.exp_ns(60_000.0 / per_min * 1e6) as f64 / 1e6;
        if t >= horizon_ms {
            break;
        }
        arrivals.push(t);
    }
    let mut out = Vec::new();
    for &iv in std::iter::once(&0).chain(intervals_ms) {
        let phase = if iv == 0 { 0.0 } else { rng.unit() * iv as f64 };
        let mut lat: Vec<f64> = arrivals
            .iter()
            .map(|&a| {
                if iv == 0 {
                    rtt_ms
                } else {
                    let k = ((a - phase) / iv as f64).ceil().max(0.0);
                    phase + k * iv as f64 - a + rtt_ms
                }
            })
            .collect();
        let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
        let requests = if iv == 0 { arrivals.len() as f64 / minutes as f64 } else { 60_000.0 / iv as f64 };
        out.push(PollPoint {
            interval_ms: iv,
            mean_latency_ms: mean,
            p99_latency_ms: quantile(&mut lat, 0.99),
            requests_per_min: requests,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderingPoint {
    /// Messages a second offered to the whole system.
    pub load_per_s: f64,
    pub global_p99_ms: f64,
    pub per_conversation_p99_ms: f64,
}

/// p99 time in a FIFO single server with `service_ms` per message (Lindley's recursion).
fn sequencer_p99(arrivals: &[f64], service_ms: f64) -> f64 {
    let mut done = 0.0f64;
    let mut sojourn: Vec<f64> = arrivals
        .iter()
        .map(|&a| {
            done = done.max(a) + service_ms;
            done - a
        })
        .collect();
    quantile(&mut sojourn, 0.99)
}

/// (c) `seconds` of Poisson load over `conversations` (uniform), sequenced either by one
/// server (a global order) or by one server per conversation; each sequencing costs
/// `service_ms` (a replicated write).
pub fn ordering(
    seed: u64,
    loads: &[f64],
    conversations: u32,
    service_ms: f64,
    seconds: f64,
) -> Result<Vec<OrderingPoint>, String> {
    if conversations == 0 || service_ms <= 0.0 || seconds <= 0.0 {
        return Err("conversations, service_ms and seconds must be above 0".into());
    }
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    for &load in loads {
        if load <= 0.0 || (load * seconds) as u64 > EVENTS_MAX {
            return Err(format!("load × seconds must be 1..={EVENTS_MAX} messages"));
        }
        let mut all = Vec::new();
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); conversations as usize];
        let mut t = 0.0;
        loop {
            t += rng.exp_ns(1e9 / load) as f64 / 1e6;
            if t >= seconds * 1000.0 {
                break;
            }
            all.push(t);
            per[rng.below(u64::from(conversations)) as usize].push(t);
        }
        let mut each: Vec<f64> = Vec::with_capacity(all.len());
        for p in &per {
            let mut done = 0.0f64;
            each.extend(p.iter().map(|&a| {
                done = done.max(a) + service_ms;
                done - a
            }));
        }
        out.push(OrderingPoint {
            load_per_s: load,
            global_p99_ms: sequencer_p99(&all, service_ms),
            per_conversation_p99_ms: quantile(&mut each, 0.99),
        });
    }
    Ok(out)
}

/// All three, with the documented parameters.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    pub seed: u64,
    pub fanout: Vec<FanoutPoint>,
    pub polling: Vec<PollPoint>,
    pub ordering: Vec<OrderingPoint>,
}

/// Gateway nodes, inbox shards and the online fraction of experiment (a).
pub const FANOUT_SETUP: (u32, u32, f64) = (3, 16, 0.3);
/// Service time of one sequencing in (c): the measured 1:1 p50 of a replicated write
/// and delivery on this machine is ~1.4 ms (bench/results/chat.json); 1 ms here.
pub const SERVICE_MS: f64 = 1.0;

pub fn run_all(seed: u64, quick: bool) -> Result<LabReport, String> {
    let trials = if quick { 200 } else { 5_000 };
    let groups = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
    let (nodes, shards, online) = FANOUT_SETUP;
    let fanout = fanout(seed, &groups, nodes, shards, online, trials)?;
    let minutes = if quick { 60 } else { 1440 };
    let polling = polling(seed, &[250, 1000, 5000, 15_000, 30_000, 60_000], 2.0, minutes, 2.0)?;
    let seconds = if quick { 20.0 } else { 200.0 };
    let ordering = ordering(
        seed,
        &[100.0, 300.0, 500.0, 700.0, 900.0, 950.0, 990.0, 2000.0, 10_000.0],
        1000,
        SERVICE_MS,
        seconds,
    )?;
    Ok(LabReport { seed, fanout, polling, ordering })
}

impl LabReport {
    /// The findings in words, with the numbers.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let (nodes, shards, online) = FANOUT_SETUP;
        s.push_str(&format!(
            "(a) fan-out, {nodes} gateway nodes, {shards} inbox shards, {:.0}% of members online:\n",
            online * 100.0
        ));
        for p in &self.fanout {
            s.push_str(&format!(
                "  group {:>4}: replicated writes per message {:>5.1} (inbox per user) vs {:.0} (log per conversation); \
                 network sends {:>6.1} (per member) vs {:.1} (per node)\n",
                p.group, p.inbox_writes, p.log_writes, p.per_member_sends, p.per_node_sends
            ));
        }
        s.push_str("(b) polling vs push, 2 messages a minute, 2 ms round trip:\n");
        for p in &self.polling {
            let how = if p.interval_ms == 0 { "push".to_string() } else { format!("poll every {} ms", p.interval_ms) };
            s.push_str(&format!(
                "  {how:>22}: latency mean {:>8.1} ms, p99 {:>8.1} ms, {:>6.1} requests/min\n",
                p.mean_latency_ms, p.p99_latency_ms, p.requests_per_min
            ));
        }
        s.push_str(&format!("(c) ordering, 1000 conversations, {SERVICE_MS} ms per sequencing:\n"));
        for p in &self.ordering {
            s.push_str(&format!(
                "  {:>6.0} msg/s: p99 {:>10.1} ms (one global order) vs {:>6.1} ms (per conversation)\n",
                p.load_per_s, p.global_p99_ms, p.per_conversation_p99_ms
            ));
        }
        s
    }

    /// The three plots as PNG bytes, with their file names.
    #[cfg(feature = "plot")]
    pub fn plots(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        use troupe_chart::{Line, LineChart, render_lines_png};
        let line = |label: &str, points: Vec<(f64, f64)>| Line { label: label.into(), points };
        let chart = |title: &str, x: &str, y: &str, lines: Vec<Line>| LineChart {
            title: title.into(),
            x_desc: x.into(),
            y_desc: y.into(),
            lines,
            levels: vec![],
            shade: None,
        };
        let g = |f: fn(&FanoutPoint) -> f64| self.fanout.iter().map(|p| (f64::from(p.group), f(p))).collect::<Vec<_>>();
        let fan = chart(
            "Per group message: replicated writes and network sends",
            "group members",
            "per message",
            vec![
                line("writes, inbox per user", g(|p| p.inbox_writes)),
                line("writes, log per conversation", g(|p| p.log_writes)),
                line("sends, one per online member", g(|p| p.per_member_sends)),
                line("sends, one per gateway node", g(|p| p.per_node_sends)),
            ],
        );
        let polls: Vec<&PollPoint> = self.polling.iter().filter(|p| p.interval_ms > 0).collect();
        let push = self.polling.iter().find(|p| p.interval_ms == 0);
        let poll = chart(
            "Polling vs push: mean delivery latency against requests per minute",
            "requests per client per minute",
            "mean latency (ms)",
            vec![
                line("polling", polls.iter().rev().map(|p| (p.requests_per_min, p.mean_latency_ms)).collect()),
                line("push", push.map(|p| vec![(p.requests_per_min, p.mean_latency_ms)]).unwrap_or_default()),
            ],
        );
        let cap = |v: f64| v.min(1000.0);
        let order = chart(
            "Time to sequence, p99 (capped at 1 s): one global order vs per conversation",
            "messages per second",
            "p99 (ms)",
            vec![
                line(
                    "one global sequencer",
                    self.ordering.iter().map(|p| (p.load_per_s, cap(p.global_p99_ms))).collect(),
                ),
                line(
                    "one per conversation",
                    self.ordering.iter().map(|p| (p.load_per_s, cap(p.per_conversation_p99_ms))).collect(),
                ),
            ],
        );
        let mut out = Vec::new();
        for (name, c) in [("fanout.png", fan), ("polling.png", poll), ("ordering.png", order)] {
            out.push((name.to_string(), render_lines_png(&c, 900, 560).map_err(|e| e.to_string())?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_is_seeded_and_says_what_the_design_claims() {
        let a = run_all(7, true).unwrap();
        let b = run_all(7, true).unwrap();
        assert_eq!(a.summary(), b.summary(), "same seed, same numbers");
        let big = a.fanout.last().unwrap();
        assert!(big.inbox_writes > 15.0 && big.log_writes == 1.0, "{big:?}");
        assert!(big.per_node_sends <= 3.0 && big.per_member_sends > 250.0, "{big:?}");
        let push = &a.polling[0];
        let slow = a.polling.last().unwrap();
        assert!(push.mean_latency_ms < 3.0 && slow.mean_latency_ms > 20_000.0, "{push:?} {slow:?}");
        let over = a.ordering.iter().find(|p| p.load_per_s >= 2000.0).unwrap();
        assert!(over.global_p99_ms > 100.0 * over.per_conversation_p99_ms, "{over:?}");
        assert!(fanout(1, &[2], 0, 16, 0.5, 10).is_err());
    }
}

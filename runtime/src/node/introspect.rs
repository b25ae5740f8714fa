//! What a node tells about itself: spans, the actor tree, health, members, metrics.

use super::*;
use crate::handle::ActorHandle;
use std::collections::BTreeMap;
use troupe_wire::introspect::{ActorInfo, Health, MemberInfo, MemberState, SpanRecord, SystemHealth};
use troupe_wire::{ActorPath, RemoteError, TraceId};

impl Node {
    /// Microseconds since the Unix epoch, monotonic within this process.
    pub fn clock_us(&self) -> u64 {
        self.0.started_unix_us + self.0.started.elapsed().as_micros() as u64
    }

    /// Records a span for `troupe trace` when the trace is sampled (odd ids).
    pub fn record_span(&self, trace: TraceId, name: &str, path: &ActorPath, start_us: u64) {
        self.record_span_with(trace, name, path, start_us, Vec::new());
    }

    /// Records a span with fields (key, value), kept durably and exported when
    /// configured ([`crate::traces`]); only for sampled traces (odd ids).
    pub fn record_span_with(
        &self,
        trace: TraceId,
        name: &str,
        path: &ActorPath,
        start_us: u64,
        fields: Vec<(String, String)>,
    ) {
        if trace & 1 == 0 {
            return;
        }
        let end = self.clock_us();
        self.0.traces.record(SpanRecord {
            trace,
            node: self.0.name.clone(),
            name: name.to_string(),
            target: path.to_string(),
            start_unix_us: start_us,
            duration_us: end.saturating_sub(start_us),
            fields,
        });
    }

    /// The spans of `trace` this node keeps (written within `[tracing] retention_ms`,
    /// waiting to be, or in memory), by start time; read on a blocking thread.
    pub async fn spans(&self, trace: TraceId) -> Vec<SpanRecord> {
        let traces = self.0.traces.clone();
        let read = tokio::task::spawn_blocking(move || traces.spans(trace)).await.map_err(|e| e.to_string());
        read.and_then(|r| r).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the span store");
            Vec::new()
        })
    }

    /// A snapshot of this node's supervision tree, from the root down.
    pub fn tree(&self) -> ActorInfo {
        self.0.root_entry.snapshot()
    }

    /// Node name, epoch, uptime (ms) and the state of each system supervisor
    /// (`failed: <error>` when one has failed).
    pub fn health(&self) -> Health {
        let systems = self
            .0
            .root_entry
            .children()
            .iter()
            .map(|e| SystemHealth {
                name: e.path.trim_start_matches('/').to_string(),
                status: match e.stats.state() {
                    troupe_wire::introspect::ActorState::Failed => {
                        format!("failed: {}", e.stats.last_error().unwrap_or_default())
                    }
                    s => format!("{s:?}").to_lowercase(),
                },
            })
            .collect();
        Health { node: self.0.name.clone(), epoch: self.0.epoch, uptime_ms: self.uptime().as_millis() as u64, systems }
    }

    /// Membership as this node sees it.
    pub fn members(&self) -> Vec<MemberInfo> {
        match self.cluster() {
            Some(c) => c.members(),
            None => {
                let spec = self.0.loaded.cluster.node(&self.0.name);
                vec![MemberInfo {
                    name: self.0.name.clone(),
                    addr: spec.map(|s| s.addr.to_string()).unwrap_or_default(),
                    epoch: self.0.epoch,
                    state: MemberState::Alive,
                    incarnation: 0,
                    roles: spec.map(|s| s.placement_roles.clone()).unwrap_or_default(),
                }]
            }
        }
    }

    /// Per-kind actor statistics folded into metrics, plus every registered series.
    pub fn metrics_snapshot(&self) -> Vec<troupe_wire::introspect::Metric> {
        let mut out = self.0.metrics.snapshot();
        let mut per_kind: BTreeMap<(String, String), (f64, f64, f64, f64)> = BTreeMap::new();
        let tree = self.tree();
        for sys in &tree.children {
            for kind in &sys.children {
                let parts: Vec<&str> = kind.path.trim_start_matches('/').splitn(2, '/').collect();
                let key = (parts.first().unwrap_or(&"").to_string(), parts.get(1).unwrap_or(&"").to_string());
                let e = per_kind.entry(key).or_default();
                e.3 += kind.restarts as f64;
                for a in &kind.children {
                    e.0 += 1.0;
                    e.1 += a.mailbox_len as f64;
                    e.2 += a.handled as f64;
                    e.3 += a.restarts as f64;
                }
            }
        }
        let m = |name: &str, help: &str, kind: &str, sys: &str, k: &str, v: f64| troupe_wire::introspect::Metric {
            name: name.into(),
            help: help.into(),
            kind: kind.into(),
            labels: vec![("system".into(), sys.into()), ("kind".into(), k.into())],
            value: v,
        };
        for ((sys, k), (actors, depth, handled, restarts)) in per_kind {
            out.push(m("troupe_actors", "Live actors of a kind on this node.", "gauge", &sys, &k, actors));
            out.push(m(
                "troupe_mailbox_depth",
                "Messages waiting in the mailboxes of a kind.",
                "gauge",
                &sys,
                &k,
                depth,
            ));
            out.push(m(
                "troupe_messages_handled_total",
                "Messages handled by actors of a kind.",
                "counter",
                &sys,
                &k,
                handled,
            ));
            out.push(m(
                "troupe_actor_restarts_total",
                "Restarts of actors of a kind and of its supervisor.",
                "counter",
                &sys,
                &k,
                restarts,
            ));
        }
        out.push(troupe_wire::introspect::Metric {
            name: "troupe_node_uptime_seconds".into(),
            help: "Seconds since this node started.".into(),
            kind: "gauge".into(),
            labels: vec![],
            value: self.uptime().as_secs_f64(),
        });
        if let Some(c) = self.cluster() {
            out.extend(c.metrics());
        }
        out
    }

    /// A handle to the node agent of `node` (introspection, chaos).
    pub fn agent(&self, node: &str) -> Result<ActorHandle<troupe_wire::introspect::NodeAgent>, RemoteError> {
        let path = ActorPath::new("troupe", "node", node).map_err(|e| RemoteError::Invalid(e.to_string()))?;
        Ok(self.handle(path))
    }
}

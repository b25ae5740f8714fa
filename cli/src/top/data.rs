//! Where `troupe top` gets its data: a `Source` answers for one node at a time, and
//! `spawn_pollers` asks every node about once per refresh on a background thread,
//! one task per node, sending each answer as a `Report` to the screen.
//!
//! Invariants: a node's poll never waits longer than `node_timeout` (a dead or
//! partitioned node turns into an error report, it never holds up another node or
//! the screen); the report queue is bounded; the pollers stop on their own once the
//! screen drops its receiver.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use troupe_client::{Client, ClientConfig};
use troupe_runtime::wire::introspect::{
    ActorInfo, Health, MemberInfo, MetricsSnapshot, NodeReply, NodeRequest, SpanRecord,
};

/// Everything one node said about itself in one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeData {
    pub health: Health,
    pub members: Vec<MemberInfo>,
    pub tree: ActorInfo,
    pub metrics: MetricsSnapshot,
    /// The spans this node holds of the trace `troupe top --trace` follows (none
    /// otherwise).
    pub spans: Vec<SpanRecord>,
}

/// One poll's outcome for one node; the error is a line a person can read.
#[derive(Debug, Clone)]
pub struct Report {
    pub node: String,
    pub outcome: Result<NodeData, String>,
}

/// Answers for one node; implemented over the SDK and, in tests, by a fake.
pub trait Source: Send + Sync + 'static {
    /// The nodes to poll, in cluster-file order.
    fn nodes(&self) -> Vec<String>;
    fn fetch(&self, node: &str) -> impl Future<Output = Result<NodeData, String>> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct PollConfig {
    pub refresh: Duration,
    pub node_timeout: Duration,
}

impl PollConfig {
    /// A node gets most of a refresh period to answer, within sane bounds.
    pub fn for_refresh(refresh: Duration) -> PollConfig {
        let node_timeout = (refresh * 4 / 5).clamp(Duration::from_millis(300), Duration::from_secs(2));
        PollConfig { refresh, node_timeout }
    }
}

/// Reports buffered per node before its poller waits for the screen.
const QUEUE_PER_NODE: usize = 4;

/// Starts polling every node of `source` on a background thread.
pub fn spawn_pollers<S: Source>(source: S, cfg: PollConfig) -> std::io::Result<mpsc::Receiver<Report>> {
    let nodes = source.nodes();
    let (tx, rx) = mpsc::channel(QUEUE_PER_NODE * nodes.len().max(1));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("top-poll".into()).spawn(move || {
        rt.block_on(async move {
            let source = Arc::new(source);
            let mut tasks = tokio::task::JoinSet::new();
            for node in nodes {
                tasks.spawn(poll_node(source.clone(), node, cfg, tx.clone()));
            }
            drop(tx);
            while tasks.join_next().await.is_some() {}
        })
    })?;
    Ok(rx)
}

async fn poll_node<S: Source>(source: Arc<S>, node: String, cfg: PollConfig, tx: mpsc::Sender<Report>) {
    let mut tick = tokio::time::interval(cfg.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The SDK times its own asks out at `node_timeout`; this outer bound also covers
        // connecting and any source that does not.
        let outcome =
            match tokio::time::timeout(cfg.node_timeout + Duration::from_millis(200), source.fetch(&node)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", cfg.node_timeout.as_millis())),
            };
        if tx.send(Report { node: node.clone(), outcome }).await.is_err() {
            return;
        }
    }
}

/// Polls real nodes through the SDK: one client per node that connects to that node
/// only. A row then shows what the node itself answers, never a relay through another
/// node (which a partition could cut while the node is fine), and a node that is down
/// only ever slows its own row.
pub struct SdkSource {
    base: ClientConfig,
    /// The trace followed, if any: each poll also asks for its spans.
    trace: Option<u64>,
    clients: Vec<(String, tokio::sync::Mutex<Option<Arc<Client>>>)>,
}

impl SdkSource {
    pub fn new(mut base: ClientConfig, node_timeout: Duration, trace: Option<u64>) -> SdkSource {
        base.ask_timeout = node_timeout;
        base.connect_timeout = node_timeout;
        let clients = base.nodes.iter().map(|(n, _)| (n.clone(), tokio::sync::Mutex::new(None))).collect();
        SdkSource { base, trace, clients }
    }

    async fn client(&self, node: &str) -> Result<Arc<Client>, String> {
        let slot = &self.clients.iter().find(|(n, _)| n == node).ok_or_else(|| format!("unknown node {node}"))?.1;
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut cfg = self.base.clone();
        cfg.nodes.retain(|(n, _)| n == node);
        let c = Arc::new(Client::connect(cfg).await.map_err(|e| e.to_string())?);
        *slot = Some(c.clone());
        Ok(c)
    }
}

impl Source for SdkSource {
    fn nodes(&self) -> Vec<String> {
        self.clients.iter().map(|(n, _)| n.clone()).collect()
    }

    async fn fetch(&self, node: &str) -> Result<NodeData, String> {
        let c = self.client(node).await?;
        let ask = |req| {
            let c = c.clone();
            async move { c.node_request(node, req).await.map_err(|e| e.to_string()) }
        };
        let spans = async {
            match self.trace {
                Some(trace) => ask(NodeRequest::Trace { trace }).await.map(Some),
                None => Ok(None),
            }
        };
        let (health, members, tree, metrics, spans) = tokio::join!(
            ask(NodeRequest::Health),
            ask(NodeRequest::Members),
            ask(NodeRequest::Tree),
            ask(NodeRequest::Metrics),
            spans
        );
        let spans = match spans? {
            Some(NodeReply::Trace(s)) => s,
            None => Vec::new(),
            Some(_) => return Err(format!("{node} answered a trace with the wrong kind of reply")),
        };
        match (health?, members?, tree?, metrics?) {
            (
                NodeReply::Health(health),
                NodeReply::Members(members),
                NodeReply::Tree(tree),
                NodeReply::Metrics(metrics),
            ) => Ok(NodeData { health, members, tree, metrics, spans }),
            _ => Err(format!("{node} answered with the wrong kind of reply (a different troupe version?)")),
        }
    }
}

/// A cluster in memory for tests: nodes answer with what was put in, fail, or hang.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    pub enum Answer {
        Data(Box<NodeData>),
        Fail(String),
        /// Never answers: a node behind a partition.
        Hang,
    }

    #[derive(Debug, Clone, Default)]
    pub struct FakeSource {
        pub answers: Arc<std::sync::Mutex<BTreeMap<String, Answer>>>,
    }

    impl FakeSource {
        fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Answer>> {
            // A test that panicked while holding the lock has already failed.
            self.answers.lock().unwrap_or_else(|p| p.into_inner())
        }

        pub fn set(&self, node: &str, a: Answer) {
            self.lock().insert(node.to_string(), a);
        }
    }

    impl Source for FakeSource {
        fn nodes(&self) -> Vec<String> {
            self.lock().keys().cloned().collect()
        }

        async fn fetch(&self, node: &str) -> Result<NodeData, String> {
            let a = self.lock().get(node).cloned();
            match a {
                Some(Answer::Data(d)) => Ok(*d),
                Some(Answer::Fail(e)) => Err(e),
                Some(Answer::Hang) => std::future::pending().await,
                None => Err(format!("unknown node {node}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Answer, FakeSource};
    use super::*;
    use std::collections::HashMap;
    use std::time::Instant;

    #[test]
    fn a_hanging_node_never_holds_up_the_others() {
        let src = FakeSource::default();
        let fixture = crate::top::fixture::cluster();
        src.set("n1", Answer::Data(Box::new(fixture[0].clone())));
        src.set("n2", Answer::Hang);
        src.set("n3", Answer::Fail("connection refused".into()));
        let cfg = PollConfig { refresh: Duration::from_millis(100), node_timeout: Duration::from_millis(300) };
        let mut rx = spawn_pollers(src.clone(), cfg).expect("spawn");
        let start = Instant::now();
        let mut seen: HashMap<String, Vec<Result<(), String>>> = HashMap::new();
        while start.elapsed() < Duration::from_secs(10) {
            match rx.try_recv() {
                Ok(r) => seen.entry(r.node).or_default().push(r.outcome.map(|_| ())),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            if seen.get("n1").is_some_and(|v| v.len() >= 3) && seen.contains_key("n2") {
                break;
            }
        }
        assert!(seen["n1"].len() >= 3 && seen["n1"].iter().all(|r| r.is_ok()), "n1 kept answering: {seen:?}");
        assert!(seen["n3"].iter().all(|r| r.as_ref().is_err_and(|e| e.contains("refused"))), "{seen:?}");
        let n2 = &seen["n2"][0];
        assert!(n2.as_ref().is_err_and(|e| e.contains("no answer within 300 ms")), "{n2:?}");
        drop(rx);
    }
}

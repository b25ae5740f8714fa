//! Commands that talk to a running cluster through the SDK: send / ask / stream
//! (JSON for people, bincode on the wire), members, tree, metrics, trace.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use troupe_client::{Client, ClientConfig, ClientError};
use troupe_runtime::wire::introspect::{ActorInfo, MemberInfo, Metric, NodeReply, NodeRequest};
use troupe_runtime::{ActorPath, RemoteError};

#[derive(Args, Clone)]
pub struct Conn {
    #[arg(long, default_value = "cluster.toml")]
    pub cluster: PathBuf,
    /// Client certificate name (`troupe certs client <name>`).
    #[arg(long = "as", default_value = "cli")]
    pub client: String,
    /// Connect to this node first.
    #[arg(long)]
    pub via: Option<String>,
}

impl Conn {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let mut cfg = ClientConfig::from_cluster_file(&self.cluster, &self.client)
            .map_err(|e| super::UsageError(e.to_string()))?;
        if let Some(n) = &self.via {
            cfg = cfg.prefer(n);
        }
        Client::connect(cfg).await.map_err(into_anyhow)
    }
}

/// Keeps a remote error downcastable (exit codes depend on it).
pub fn into_anyhow(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Remote(r) => anyhow::Error::new(r),
        other => anyhow::Error::new(other),
    }
}

#[derive(Args)]
pub struct RequestArgs {
    /// Actor path: `/<system>/<kind>/<key>` (`troupe tree` lists them).
    pub path: String,
    /// The message as JSON, e.g. '{"Put":{"value":"world"}}' or '"Get"'.
    pub json: String,
    #[command(flatten)]
    pub conn: Conn,
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

fn parse_path(p: &str) -> anyhow::Result<ActorPath> {
    p.parse::<ActorPath>().map_err(|e| super::UsageError(e.to_string()).into())
}

fn check_json(j: &str) -> anyhow::Result<()> {
    serde_json::from_str::<serde_json::Value>(j)
        .map(|_| ())
        .map_err(|e| super::UsageError(format!("the message is not valid JSON: {e}")).into())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn pretty(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_string())
}

pub fn ask(a: RequestArgs) -> anyhow::Result<()> {
    let path = parse_path(&a.path)?;
    check_json(&a.json)?;
    runtime()?.block_on(async {
        let c = a.conn.connect().await?;
        let trace = Client::new_kept_trace();
        eprintln!("trace {trace:016x}");
        let r = c.ask_json(&path, &a.json, Duration::from_millis(a.timeout_ms), trace).await.map_err(into_anyhow)?;
        println!("{}", pretty(&r));
        Ok(())
    })
}

pub fn send(a: RequestArgs) -> anyhow::Result<()> {
    let path = parse_path(&a.path)?;
    check_json(&a.json)?;
    runtime()?.block_on(async {
        let c = a.conn.connect().await?;
        let trace = Client::new_kept_trace();
        c.tell_json(&path, &a.json, trace).await.map_err(into_anyhow)?;
        eprintln!("sent (trace {trace:016x})");
        // Give the lane a moment to flush before the process exits.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    })
}

pub fn stream(a: RequestArgs) -> anyhow::Result<()> {
    let path = parse_path(&a.path)?;
    check_json(&a.json)?;
    runtime()?.block_on(async {
        let c = a.conn.connect().await?;
        let trace = Client::new_kept_trace();
        eprintln!("trace {trace:016x}");
        let mut rx = c.stream_json(&path, &a.json, trace).await.map_err(into_anyhow)?;
        while let Some(item) = rx.recv().await {
            let (text, last) = item.map_err(anyhow::Error::new)?;
            if !text.is_empty() {
                println!("{text}");
            }
            if last {
                return Ok(());
            }
        }
        Err(anyhow::Error::new(RemoteError::NoReply { path: path.to_string() }))
    })
}

#[derive(Args)]
pub struct NodeArgs {
    /// Node to ask (default: every node of the cluster file).
    pub node: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

async fn ask_node(c: &Client, node: &str, req: NodeRequest) -> anyhow::Result<NodeReply> {
    c.node_request(node, req).await.map_err(into_anyhow).with_context(|| format!("asking node {node}"))
}

pub fn members(a: NodeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let c = a.conn.connect().await?;
        let node = match &a.node {
            Some(n) => n.clone(),
            None => c.node().await.unwrap_or_default(),
        };
        let NodeReply::Members(ms) = ask_node(&c, &node, NodeRequest::Members).await? else {
            anyhow::bail!("unexpected reply")
        };
        if a.json {
            println!("{}", serde_json::to_string_pretty(&ms)?);
            return Ok(());
        }
        println!("membership as {node} sees it:");
        print_members(&ms);
        Ok(())
    })
}

fn print_members(ms: &[MemberInfo]) {
    println!("{:<8} {:<8} {:<15} {:>5} {:<22} ROLES", "NAME", "STATE", "EPOCH", "INC", "ADDR");
    for m in ms {
        println!(
            "{:<8} {:<8} {:<15} {:>5} {:<22} {}",
            m.name,
            format!("{:?}", m.state),
            m.epoch,
            m.incarnation,
            m.addr,
            m.roles.join(",")
        );
    }
}

pub fn tree(a: NodeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let c = a.conn.connect().await?;
        let nodes = match &a.node {
            Some(n) => vec![n.clone()],
            None => c.nodes(),
        };
        for n in nodes {
            match ask_node(&c, &n, NodeRequest::Tree).await {
                Ok(NodeReply::Tree(t)) if a.json => println!("{}", serde_json::to_string_pretty(&t)?),
                Ok(NodeReply::Tree(t)) => {
                    println!("node {n}");
                    print_tree(&t, 1);
                }
                Ok(_) => anyhow::bail!("unexpected reply from {n}"),
                Err(e) if a.node.is_none() => println!("node {n}: unreachable ({e:#})"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

fn print_tree(t: &ActorInfo, depth: usize) {
    let name = if depth <= 1 { t.path.clone() } else { t.path.rsplit('/').next().unwrap_or(&t.path).to_string() };
    let mut line = format!("{}{} [{}] {:?}", "  ".repeat(depth), name, t.kind, t.state);
    if !t.strategy.is_empty() {
        line.push_str(&format!(" {}", t.strategy));
    } else {
        line.push_str(&format!(" mailbox {}/{} handled {}", t.mailbox_len, t.mailbox_cap, t.handled));
    }
    if t.restarts > 0 {
        line.push_str(&format!(" restarts {}", t.restarts));
    }
    if let Some(e) = &t.last_error {
        line.push_str(&format!(" last error: {e}"));
    }
    println!("{line}");
    for ch in &t.children {
        print_tree(ch, depth + 1);
    }
}

pub fn metrics(a: NodeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let c = a.conn.connect().await?;
        let nodes = match &a.node {
            Some(n) => vec![n.clone()],
            None => c.nodes(),
        };
        for n in nodes {
            match ask_node(&c, &n, NodeRequest::Metrics).await {
                Ok(NodeReply::Metrics(m)) if a.json => println!("{}", serde_json::to_string_pretty(&m)?),
                Ok(NodeReply::Metrics(m)) => {
                    println!("node {n}");
                    print_metrics(&m.metrics);
                }
                Ok(_) => anyhow::bail!("unexpected reply from {n}"),
                Err(e) if a.node.is_none() => println!("node {n}: unreachable ({e:#})"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

fn print_metrics(ms: &[Metric]) {
    let mut ms: Vec<&Metric> = ms.iter().filter(|m| !m.name.ends_with("_bucket")).collect();
    ms.sort_by(|a, b| a.name.cmp(&b.name).then(a.labels.cmp(&b.labels)));
    for m in ms {
        let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let name = if labels.is_empty() { m.name.clone() } else { format!("{}{{{}}}", m.name, labels.join(",")) };
        println!("  {name:<70} {}", m.value);
    }
}

#[derive(Args)]
pub struct TraceArgs {
    /// Trace id (hex), as printed by `troupe ask`.
    pub id: String,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn trace(a: TraceArgs) -> anyhow::Result<()> {
    let id = u64::from_str_radix(a.id.trim_start_matches("0x"), 16)
        .map_err(|_| super::UsageError(format!("`{}` is not a hexadecimal trace id", a.id)))?;
    runtime()?.block_on(async {
        let c = a.conn.connect().await?;
        let (spans, missing) = c.trace(id).await;
        for (n, e) in missing {
            eprintln!("node {n}: unreachable, its spans are missing ({:#})", into_anyhow(e));
        }
        if spans.is_empty() {
            anyhow::bail!("no spans recorded for trace {id:016x} (spans are kept for sampled requests: ones sent by the CLI, SDK or gateways)");
        }
        let t0 = spans[0].start_unix_us;
        println!("trace {id:016x}: {} spans", spans.len());
        println!("{:>10} {:>10}  {:<6} {:<10} TARGET", "START ms", "DUR ms", "NODE", "SPAN");
        for s in spans {
            // Escaped: a field may carry user data (control characters, spaces).
            let fields: Vec<String> =
                s.fields.iter().map(|(k, v)| format!("{}={:?}", k.escape_debug(), v)).collect();
            println!(
                "{:>10.3} {:>10.3}  {:<6} {:<10} {}{}{}",
                (s.start_unix_us - t0) as f64 / 1000.0,
                s.duration_us as f64 / 1000.0,
                s.node,
                s.name,
                s.target,
                if fields.is_empty() { "" } else { "  " },
                fields.join(" ")
            );
        }
        Ok(())
    })
}

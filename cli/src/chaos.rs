//! `troupe chaos`: kill a node process, or tell nodes to drop, delay or partition
//! traffic between each other (through their admin API).

use anyhow::{Context, bail};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Duration;
use troupe_runtime::wire::introspect::ChaosCommand;

#[derive(Subcommand)]
pub enum ChaosCmd {
    /// SIGKILL a node's process (as `kill -9`).
    Kill {
        node: String,
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
    /// Cut traffic between two groups of nodes: `partition n1 --from n2,n3`.
    Partition {
        node: String,
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<String>,
        /// Heal on its own after this many milliseconds.
        #[arg(long = "for-ms")]
        for_ms: Option<u64>,
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
    /// Delay traffic between `node` and others.
    Delay {
        node: String,
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        #[arg(long = "ms")]
        delay_ms: u64,
        #[arg(long = "for-ms")]
        for_ms: Option<u64>,
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
    /// Drop a fraction of traffic between `node` and others.
    Drop {
        node: String,
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        #[arg(long)]
        ratio: f64,
        #[arg(long = "for-ms")]
        for_ms: Option<u64>,
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
    /// Remove every chaos rule on every node.
    Heal {
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
}

/// The cluster's admin token (`$TROUPE_ADMIN_TOKEN`, else `admin.token` beside the
/// cluster key), as the header value the admin API wants.
fn bearer(cluster: &troupe_runtime::ClusterConfig) -> anyhow::Result<String> {
    use troupe_runtime::cluster::tokens::{Role, for_client};
    let t = for_client(Role::Admin, &cluster.key_file).map_err(anyhow::Error::msg)?;
    Ok(format!("Bearer {t}"))
}

/// POSTs a chaos command to a node's admin API with the admin token.
fn post(addr: std::net::SocketAddr, bearer: &str, cmd: &ChaosCommand) -> anyhow::Result<String> {
    let body = serde_json::to_string(cmd)?;
    let json = [("Content-Type", "application/json"), ("Authorization", bearer)];
    let r =
        troupe_common::http::request_within(addr, "POST", "/v1/chaos", &json, body.as_bytes(), Duration::from_secs(5))
            .with_context(|| format!("admin API at {addr} is unreachable"))?;
    if r.status != 200 {
        bail!("{addr}: {}", r.body.trim());
    }
    Ok(r.json()["result"].as_str().unwrap_or("").to_string())
}

fn apply_pairwise(
    cluster: &std::path::Path,
    node: &str,
    others: &[String],
    make: impl Fn(Vec<String>) -> ChaosCommand,
) -> anyhow::Result<()> {
    let loaded = super::load(cluster)?;
    let spec = |n: &str| {
        loaded.cluster.node(n).ok_or_else(|| super::UsageError(format!("no node `{n}` in {}", cluster.display())))
    };
    let bearer = bearer(&loaded.cluster)?;
    // Both sides apply the rule, so the effect is symmetric.
    let out = post(spec(node)?.admin, &bearer, &make(others.to_vec()))?;
    println!("{node}: {out}");
    for o in others {
        let out = post(spec(o)?.admin, &bearer, &make(vec![node.to_string()]))?;
        println!("{o}: {out}");
    }
    Ok(())
}

pub fn run(cmd: ChaosCmd) -> anyhow::Result<()> {
    match cmd {
        ChaosCmd::Kill { node, cluster } => {
            let loaded = super::load(&cluster)?;
            if loaded.cluster.node(&node).is_none() {
                return Err(super::UsageError(format!("no node `{node}` in {}", cluster.display())).into());
            }
            let pid_path = super::node::pid_file(&loaded.cluster, &node);
            let pid: i32 = std::fs::read_to_string(&pid_path)
                .with_context(|| format!("node {node} does not seem to run ({} is missing)", pid_path.display()))?
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a process id", pid_path.display()))?;
            // SAFETY: kill(2) with a pid read from the node's pid file.
            let r = unsafe { libc::kill(pid, libc::SIGKILL) };
            if r != 0 {
                bail!("could not kill node {node} (pid {pid}): {}", std::io::Error::last_os_error());
            }
            let _ = std::fs::remove_file(&pid_path);
            println!("killed node {node} (pid {pid}) with SIGKILL");
            Ok(())
        }
        ChaosCmd::Partition { node, from, for_ms, cluster } => {
            apply_pairwise(&cluster, &node, &from, |nodes| ChaosCommand::Partition { nodes, for_ms })
        }
        ChaosCmd::Delay { node, to, delay_ms, for_ms, cluster } => {
            apply_pairwise(&cluster, &node, &to, |nodes| ChaosCommand::Delay { nodes, delay_ms, for_ms })
        }
        ChaosCmd::Drop { node, to, ratio, for_ms, cluster } => {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(super::UsageError("--ratio must be between 0 and 1".into()).into());
            }
            apply_pairwise(&cluster, &node, &to, |nodes| ChaosCommand::Drop { nodes, ratio, for_ms })
        }
        ChaosCmd::Heal { cluster } => {
            let loaded = super::load(&cluster)?;
            let bearer = bearer(&loaded.cluster)?;
            for n in &loaded.cluster.nodes {
                match post(n.admin, &bearer, &ChaosCommand::Heal) {
                    Ok(out) => println!("{}: {out}", n.name),
                    Err(e) => println!("{}: {e:#}", n.name),
                }
            }
            Ok(())
        }
    }
}

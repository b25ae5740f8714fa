//! `troupe node`: one node of a cluster, in this process.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use troupe_runtime::{Node, admin, gateway};

#[derive(clap::Args)]
pub struct NodeArgs {
    #[arg(long, default_value = "cluster.toml")]
    pub cluster: PathBuf,
    /// Which node of the cluster file this process is.
    #[arg(long)]
    pub name: String,
}

pub fn check(cluster: &Path) -> anyhow::Result<()> {
    let loaded = super::load(cluster)?;
    println!(
        "{}: cluster `{}` with {} nodes and {} systems ({}) is valid",
        cluster.display(),
        loaded.cluster.name,
        loaded.cluster.nodes.len(),
        loaded.topologies.len(),
        loaded.topologies.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// Where `troupe up` and `troupe chaos kill` find a node's process id.
pub fn pid_file(cluster: &troupe_runtime::ClusterConfig, node: &str) -> PathBuf {
    cluster.node_data_dir(node).join("node.pid")
}

pub fn run(a: NodeArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    let loaded = super::load(&a.cluster)?;
    let spec = loaded
        .cluster
        .node(&a.name)
        .cloned()
        .ok_or_else(|| super::UsageError(format!("node `{}` is not in {}", a.name, a.cluster.display())))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let pid = pid_file(&loaded.cluster, &a.name);
        let node = Node::start_with(Arc::new(loaded), super::kinds(), &a.name, true)
            .await
            .with_context(|| format!("starting node {}", a.name))?;
        let admin_addr = admin::serve(node.clone(), spec.admin)
            .await
            .with_context(|| format!("binding admin HTTP on {}", spec.admin))?;
        let gateways = gateway::serve_routes(&node).await.context("binding gateway ports")?;
        if let Some(dir) = pid.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        std::fs::write(&pid, std::process::id().to_string()).with_context(|| format!("writing {}", pid.display()))?;
        let gw: Vec<String> = gateways.iter().map(|(s, a)| format!("{s}=http://{a}")).collect();
        tracing::info!(node = %a.name, admin = %format!("http://{admin_addr}"), gateways = %gw.join(" "), "ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
            _ = term.recv() => tracing::info!("terminated; stopping"),
            _ = node.wait_root() => {
                tracing::error!("the root supervisor gave up: every system failed past its restart limits");
                let _ = std::fs::remove_file(&pid);
                anyhow::bail!("node {} failed", a.name);
            }
        }
        node.shutdown().await;
        let _ = std::fs::remove_file(&pid);
        Ok(())
    })
}

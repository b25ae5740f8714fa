//! `troupe up`: a dev cluster on this machine — every node of the cluster file as a
//! child process, logs prefixed with the node name. Ctrl-C stops them all; a node
//! that dies is reported and (unless --no-restart) started again.

use anyhow::Context;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(clap::Args)]
pub struct UpArgs {
    #[arg(long, default_value = "cluster.toml")]
    pub cluster: PathBuf,
    /// Do not restart a node that dies.
    #[arg(long)]
    pub no_restart: bool,
    /// Wait this long before restarting a dead node, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub restart_delay_ms: u64,
    /// Start only these nodes (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

const COLORS: [&str; 6] = ["36", "33", "35", "32", "34", "31"];

fn spawn(exe: &PathBuf, cluster: &PathBuf, name: &str, color: Option<&'static str>) -> anyhow::Result<Child> {
    let mut child = Command::new(exe);
    child
        .args(["node", "--cluster"])
        .arg(cluster)
        .args(["--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // If `troupe up` itself dies, its nodes must not linger as orphans.
    // SAFETY: prctl in the child between fork and exec touches no shared state.
    unsafe {
        child.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = child.spawn().with_context(|| format!("starting node {name}"))?;
    let prefix = match color {
        Some(c) => format!("\x1b[{c}m{name:>4} |\x1b[0m "),
        None => format!("{name:>4} | "),
    };
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{prefix}{line}");
            }
        });
    }
    Ok(child)
}

pub fn run(a: UpArgs) -> anyhow::Result<()> {
    let loaded = super::load(&a.cluster)?;
    let made = super::certs::ensure(&loaded.cluster)?;
    if !made.is_empty() {
        println!(
            "dev mode: created the cluster's CA, node certificates and key in {}",
            loaded.cluster.tls_dir.display()
        );
        let keys = troupe_runtime::cluster::api_keys::path(&loaded.cluster.key_file);
        if made.contains(&keys) {
            println!(
                "dev mode: created API keys for alice, bob and carol in {} (0600); `troupe certs api-key alice` prints hers",
                keys.display()
            );
        }
    }
    // What the systems need before any node starts (models, data files), once, here.
    for s in crate::systems() {
        s.prepare(&loaded).with_context(|| format!("preparing {}", s.name()))?;
    }
    let exe = std::env::current_exe().context("locating the troupe binary")?;
    let cluster_path = a.cluster.canonicalize().with_context(|| format!("{}", a.cluster.display()))?;
    let names: Vec<String> = loaded
        .cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| a.only.is_empty() || a.only.contains(n))
        .collect();
    if names.is_empty() {
        return Err(super::UsageError("no node to start (check --only)".into()).into());
    }
    let color = std::io::stdout().is_terminal();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut children: HashMap<String, Child> = HashMap::new();
        let colors: HashMap<String, &'static str> = names.iter().enumerate().map(|(i, n)| (n.clone(), COLORS[i % COLORS.len()])).collect();
        for n in &names {
            children.insert(n.clone(), spawn(&exe, &cluster_path, n, color.then(|| colors[n]))?);
        }
        for n in &loaded.cluster.nodes {
            if names.contains(&n.name) {
                let ports: Vec<String> = n.ports.iter().map(|(s, p)| format!("{s}=:{p}")).collect();
                println!("troupe: node {} — admin http://{}  quic {}  {}", n.name, n.admin, n.addr, ports.join(" "));
            }
        }
        println!("troupe: {} nodes starting; Ctrl-C stops them all", names.len());
        let mut restart_at: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {
                    for n in &names {
                        if let Some(c) = children.get_mut(n)
                            && let Ok(Some(status)) = c.try_wait()
                        {
                            children.remove(n);
                            let how = match status.code() {
                                Some(code) => format!("exited with status {code}"),
                                None => "was killed by a signal".to_string(),
                            };
                            if a.no_restart {
                                eprintln!("troupe: node {n} {how}");
                            } else {
                                eprintln!("troupe: node {n} {how}; restarting in {} ms", a.restart_delay_ms);
                                restart_at.insert(n.clone(), Instant::now() + Duration::from_millis(a.restart_delay_ms));
                            }
                        }
                    }
                    let due: Vec<String> = restart_at.iter().filter(|(_, t)| Instant::now() >= **t).map(|(n, _)| n.clone()).collect();
                    for n in due {
                        restart_at.remove(&n);
                        match spawn(&exe, &cluster_path, &n, color.then(|| colors[&n])) {
                            Ok(c) => {
                                eprintln!("troupe: node {n} restarted");
                                children.insert(n, c);
                            }
                            Err(e) => eprintln!("troupe: could not restart {n}: {e:#}"),
                        }
                    }
                    if children.is_empty() && restart_at.is_empty() {
                        eprintln!("troupe: every node has stopped");
                        return Ok(());
                    }
                }
            }
        }
        println!("troupe: stopping {} nodes", children.len());
        for c in children.values() {
            if let Some(pid) = c.id() {
                // SAFETY: kill(2) on a child pid we own; no memory is touched.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (n, mut c) in children {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, c.wait()).await.is_err() {
                eprintln!("troupe: node {n} did not stop in time; killing it");
                let _ = c.kill().await;
            }
        }
        Ok(())
    })
}

//! Where a client finds the cluster and its credentials: read from a cluster file
//! (the same `cluster.toml` the nodes use) or given explicitly.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Nodes to try, in order of preference.
    pub nodes: Vec<(String, SocketAddr)>,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ask_timeout: Duration,
    pub connect_timeout: Duration,
    /// Items buffered per stream before the producer waits.
    pub stream_buffer: usize,
    /// Largest frame accepted, in bytes.
    pub frame_bytes_max: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read cluster file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("client certificate {0} is missing: run `troupe certs client <name> --cluster <file>`")]
    MissingCert(PathBuf),
}

#[derive(Deserialize)]
struct File {
    cluster: ClusterTable,
    #[serde(default)]
    nodes: Vec<NodeTable>,
    #[serde(default)]
    transport: Option<TransportTable>,
}

#[derive(Deserialize)]
struct ClusterTable {
    #[serde(default)]
    tls_dir: Option<String>,
}

#[derive(Deserialize)]
struct NodeTable {
    name: String,
    addr: String,
}

#[derive(Deserialize)]
struct TransportTable {
    #[serde(default)]
    ask_timeout_ms: Option<u64>,
    #[serde(default)]
    frame_bytes_max: Option<usize>,
}

impl ClientConfig {
    /// Reads the nodes and TLS folder from a cluster file, using the client
    /// certificate `client-<name>.pem` issued by `troupe certs`.
    pub fn from_cluster_file(path: &Path, client: &str) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.into(), reason: e.to_string() })?;
        let f: File = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), reason: e.message().to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = base.join(f.cluster.tls_dir.unwrap_or_else(|| ".troupe/tls".into()));
        let mut nodes = Vec::new();
        for n in f.nodes {
            let addr = n.addr.parse().map_err(|_| ConfigError::Parse {
                path: path.into(),
                reason: format!("node {}: bad addr {}", n.name, n.addr),
            })?;
            nodes.push((n.name, addr));
        }
        if nodes.is_empty() {
            return Err(ConfigError::Parse { path: path.into(), reason: "the cluster file lists no nodes".into() });
        }
        let cert = tls.join(format!("client-{client}.pem"));
        if !cert.exists() {
            return Err(ConfigError::MissingCert(cert));
        }
        let t = f.transport;
        Ok(ClientConfig {
            nodes,
            ca_cert: tls.join("ca.pem"),
            key: tls.join(format!("client-{client}.key")),
            cert,
            ask_timeout: Duration::from_millis(t.as_ref().and_then(|t| t.ask_timeout_ms).unwrap_or(5000)),
            connect_timeout: Duration::from_secs(2),
            stream_buffer: 64,
            frame_bytes_max: t.and_then(|t| t.frame_bytes_max).unwrap_or(troupe_wire::FRAME_BYTES_MAX_DEFAULT),
        })
    }

    /// Starts with `node` (then the others in file order).
    pub fn prefer(mut self, node: &str) -> Self {
        if let Some(i) = self.nodes.iter().position(|(n, _)| n == node) {
            let n = self.nodes.remove(i);
            self.nodes.insert(0, n);
        }
        self
    }
}

//! `cluster.toml`: the nodes of a cluster, how they find and trust each other, and
//! which systems run. Paths in the file are relative to the file's folder.

use super::diag::{Diags, Doc, suggest};
use super::reader::Tbl;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
pub use troupe_core::downing::SplitBrain;
pub use troupe_core::membership::MembershipTuning;
use troupe_wire::path::check_name;

/// A checked cluster file: its nodes, tuning and enabled systems. Relative paths in
/// the file are already resolved against the file's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The cluster file itself.
    pub file: PathBuf,
    /// Cluster name (`[cluster] name`), a checked name.
    pub name: String,
    /// Folder holding one data folder per node (default `.troupe/data`).
    pub data_dir: PathBuf,
    /// Folder holding the cluster CA and the node and client certificates
    /// (default `.troupe/tls`).
    pub tls_dir: PathBuf,
    /// 32-byte secret that seals gossip packets; made on first run in dev mode.
    pub key_file: PathBuf,
    /// Folder holding the topology files, `<system>.toml` (default `systems`).
    pub systems_dir: PathBuf,
    /// Enabled systems (topology file stems), in start order.
    pub systems: Vec<String>,
    /// Node names a joining node contacts first.
    pub seeds: Vec<String>,
    /// SWIM membership timings (`[membership]`).
    pub membership: MembershipTuning,
    /// Which side of a partition keeps serving (`[split_brain]`).
    pub split_brain: SplitBrain,
    /// QUIC transport limits and timings (`[transport]`).
    pub transport: TransportTuning,
    /// Where spans are kept and sent (`[tracing]`).
    pub tracing: TracingConfig,
    /// The blob store's copies and garbage collection (`[blobs]`).
    pub blobs: BlobsConfig,
    /// Every node of the cluster (`[[nodes]]`), names and sockets unique.
    pub nodes: Vec<NodeSpec>,
    /// Per-system overrides: `[overrides.<system>.<kind>]` tables merged over the
    /// kind's `params` (and `mailbox_cap` etc. when named).
    pub overrides: BTreeMap<String, toml::Table>,
}

/// One `[[nodes]]` table: a node's name, sockets and what it offers to placement.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Node name, unique in the cluster.
    pub name: String,
    /// QUIC endpoint: node links and clients.
    pub addr: SocketAddr,
    /// UDP socket for SWIM gossip.
    pub gossip: SocketAddr,
    /// Admin HTTP: /health, /metrics, introspection, chaos.
    pub admin: SocketAddr,
    /// Roles this node plays; kinds placed by role run only on nodes that have it.
    pub roles: Vec<String>,
    /// Free-form `[nodes.labels]` key/value strings (region, rack, host...). A kind
    /// whose `role` is `"key=value"` runs only on nodes with that label.
    pub labels: BTreeMap<String, String>,
    /// What placement matches a kind's `role` against: the roles, then each label as
    /// `key=value`, then each GPU model as `gpu=<model>`.
    pub placement_roles: Vec<String>,
    /// GPUs declared in `[[nodes.gpus]]`.
    pub gpus: Vec<GpuSpec>,
    /// Relative capacity for weighted placement.
    pub weight: f64,
    /// Public listeners of gateways on this node: `<system>` or `<system>.<name>` → port.
    pub ports: BTreeMap<String, u16>,
}

/// One `[[nodes.gpus]]` entry: a group of identical GPUs on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSpec {
    /// Model name, as written in the file.
    pub model: String,
    /// Memory of each GPU, in GiB (1..=4096).
    pub memory_gib: u64,
    /// How many GPUs of this model (1..=64, default 1).
    pub count: u64,
}

/// `[blobs]`: where the blob store keeps chunks and when it collects them
/// (runtime `blobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct BlobsConfig {
    /// Copies of each chunk and manifest (default: 3, or every node of a smaller
    /// cluster); a put returns once a majority of them is on disk.
    pub replication_factor: u64,
    /// Only nodes with this role (or `key=value` label) keep chunks; every node by
    /// default. Any node can put and read.
    pub role: Option<String>,
    /// A blob nobody holds is deleted this long after its last holder let go, and a
    /// chunk no manifest names this long after it was written (an upload must finish
    /// within it), in milliseconds (default one hour).
    pub grace_ms: u64,
    /// How often each node runs a collection round, in milliseconds (default 60,000).
    pub gc_interval_ms: u64,
    /// Largest blob one put takes, in bytes (default 64 GiB).
    pub blob_bytes_max: u64,
}

impl BlobsConfig {
    /// The defaults for a cluster of `nodes` nodes.
    pub fn new(nodes: usize) -> BlobsConfig {
        BlobsConfig {
            replication_factor: nodes.clamp(1, 3) as u64,
            role: None,
            grace_ms: 3_600_000,
            gc_interval_ms: 60_000,
            blob_bytes_max: 64 << 30,
        }
    }
}

/// `[tracing]`: how long each node keeps the spans of sampled requests, and where it
/// exports them.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Spans older than this are deleted, in milliseconds (default one day).
    pub retention_ms: u64,
    /// Spans one node keeps at most; the oldest go first (default 1,000,000).
    pub spans_max: u64,
    /// Of the sampled traces not explicitly kept, one in this many is written to disk
    /// (by trace id; default 64; 1: all; 0: only those asked for, as `troupe ask`'s).
    pub keep_one_in: u64,
    /// An OTLP/HTTP traces endpoint (`http://host:port/v1/traces`) every node sends
    /// its spans to, protobuf-encoded; none by default.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (default `troupe-<cluster name>`).
    pub service_name: String,
}

impl TracingConfig {
    /// The defaults, for cluster `name`.
    pub fn new(name: &str) -> TracingConfig {
        TracingConfig {
            retention_ms: 86_400_000,
            spans_max: 1_000_000,
            keep_one_in: 64,
            otlp_endpoint: None,
            service_name: format!("troupe-{name}"),
        }
    }
}

/// `[transport]`: limits and timings of the QUIC links between nodes and clients.
/// `keep_alive_ms` is always shorter than `idle_timeout_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportTuning {
    /// Largest frame a link sends or accepts, in bytes (default 16 MiB); a peer that
    /// sends a bigger one loses that stream.
    pub frame_bytes_max: u64,
    /// Frames queued for one peer, split evenly across its lanes (at least 8 per
    /// lane); a send to a full lane fails with `QueueFull` (default 8192).
    pub send_queue_cap: u64,
    /// Unidirectional streams per direction on each connection (default 8).
    pub lanes_per_peer: u64,
    /// QUIC keep-alive interval, in milliseconds (default 1000).
    pub keep_alive_ms: u64,
    /// A link with no traffic for this long is closed, in milliseconds (default 5000).
    pub idle_timeout_ms: u64,
    /// How long a dial may take before it fails, in milliseconds (default 2000).
    pub connect_timeout_ms: u64,
    /// After a failed dial, sends to that peer fail as unreachable for this long
    /// before the next dial, in milliseconds (default 50); doubles on each further
    /// failure.
    pub reconnect_backoff_min_ms: u64,
    /// Cap on the redial wait, in milliseconds (default 2000).
    pub reconnect_backoff_max_ms: u64,
    /// Default timeout of an ask, in milliseconds (default 5000).
    pub ask_timeout_ms: u64,
    /// Undelivered items one reply stream buffers (default 64).
    pub stream_buffer: u64,
    /// Requests (asks, streams, tells being forwarded) one client connection may have
    /// in flight at a node; past it a request is refused with `QueueFull` at once
    /// (default 1024).
    pub client_in_flight_max: u64,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            frame_bytes_max: 16 << 20,
            send_queue_cap: 8192,
            lanes_per_peer: 8,
            keep_alive_ms: 1000,
            idle_timeout_ms: 5000,
            connect_timeout_ms: 2000,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 2000,
            ask_timeout_ms: 5000,
            stream_buffer: 64,
            client_in_flight_max: 1024,
        }
    }
}

/// Per-node paths name nodes of the cluster file, live or not; replica sets are drawn
/// from them.
impl troupe_core::directory::Roster for ClusterConfig {
    fn roles(&self, node: &str) -> Option<&[String]> {
        self.node(node).map(|n| n.placement_roles.as_slice())
    }
    fn members(&self) -> Vec<(&str, &[String], f64)> {
        self.nodes.iter().map(|n| (n.name.as_str(), n.placement_roles.as_slice(), n.weight)).collect()
    }
}

impl ClusterConfig {
    /// The node named `name`, if the cluster file declares it.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The folder of the cluster file, which relative paths in it are resolved against.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    /// This node's data folder.
    pub fn node_data_dir(&self, node: &str) -> PathBuf {
        self.data_dir.join(node)
    }

    /// A cluster of one node with every default, for tests and `troupe generate`.
    pub fn single(name: &str, dir: &Path) -> Self {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        ClusterConfig {
            file: dir.join("cluster.toml"),
            name: "local".into(),
            data_dir: dir.join("data"),
            tls_dir: dir.join("tls"),
            key_file: dir.join("cluster.key"),
            systems_dir: dir.join("systems"),
            systems: Vec::new(),
            seeds: vec![name.into()],
            membership: MembershipTuning::default(),
            split_brain: SplitBrain::default(),
            tracing: TracingConfig::new("local"),
            blobs: BlobsConfig::new(1),
            transport: TransportTuning::default(),
            nodes: vec![NodeSpec {
                name: name.into(),
                addr: any,
                gossip: any,
                admin: any,
                roles: Vec::new(),
                placement_roles: Vec::new(),
                labels: BTreeMap::new(),
                gpus: Vec::new(),
                weight: 1.0,
                ports: BTreeMap::new(),
            }],
            overrides: BTreeMap::new(),
        }
    }
}

fn rel(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

fn addr(t: &Tbl<'_>, key: &str) -> Option<SocketAddr> {
    let s = t.req_str(key)?;
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            t.error(
                key,
                format!("`{key}` = \"{s}\" is not a socket address"),
                Some("write it as \"127.0.0.1:7101\"".into()),
            );
            None
        }
    }
}

/// Reads and checks a cluster file. Errors go to `diags`; `None` only when the file
/// could not be parsed at all.
pub fn load_cluster(doc: &Doc, diags: &Diags) -> Option<ClusterConfig> {
    let base = doc.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let root = Tbl::root(doc, diags);
    let errors_before = diags.len();

    let cluster = root.table("cluster");
    let (name, data_dir, tls_dir, key_file, systems_dir, systems, seeds) = match &cluster {
        Some(c) => {
            let name = c.req_str("name").unwrap_or_default();
            if !name.is_empty()
                && let Err(e) = check_name("cluster name", &name)
            {
                c.error("name", e.to_string(), None);
            }
            (
                name,
                rel(&base, &c.opt_str("data_dir").unwrap_or_else(|| ".troupe/data".into())),
                rel(&base, &c.opt_str("tls_dir").unwrap_or_else(|| ".troupe/tls".into())),
                rel(&base, &c.opt_str("key_file").unwrap_or_else(|| ".troupe/cluster.key".into())),
                rel(&base, &c.opt_str("systems_dir").unwrap_or_else(|| "systems".into())),
                c.strs("systems"),
                c.strs("seeds"),
            )
        }
        None => {
            doc.error(
                diags,
                "",
                "the cluster file has no [cluster] table",
                Some("add [cluster] with `name`, `systems` and `seeds`".into()),
            );
            (String::new(), PathBuf::new(), PathBuf::new(), PathBuf::new(), PathBuf::new(), vec![], vec![])
        }
    };
    if let Some(c) = cluster {
        c.finish();
    }

    let membership = match root.table("membership") {
        None => MembershipTuning::default(),
        Some(m) => {
            let d = MembershipTuning::default();
            let out = MembershipTuning {
                probe_period_ms: m.u64_in("probe_period_ms", d.probe_period_ms, 50, 60_000, "milliseconds"),
                probe_rtt_ms: m.u64_in("probe_rtt_ms", d.probe_rtt_ms, 10, 30_000, "milliseconds"),
                suspect_to_down_ms: m.u64_in("suspect_to_down_ms", d.suspect_to_down_ms, 100, 600_000, "milliseconds"),
                remove_down_after_ms: m.u64_in(
                    "remove_down_after_ms",
                    d.remove_down_after_ms,
                    1000,
                    86_400_000,
                    "milliseconds",
                ),
                indirect_probes: m.u64_in("indirect_probes", d.indirect_probes, 1, 16, "members"),
                packet_bytes_max: m.u64_in("packet_bytes_max", d.packet_bytes_max, 1024, 65_000, "bytes"),
                gossip_period_ms: m.u64_in("gossip_period_ms", d.gossip_period_ms, 10, 60_000, "milliseconds"),
                join_retry_ms: m.u64_in("join_retry_ms", d.join_retry_ms, 10, 60_000, "milliseconds"),
                local_health_max: m.u64_in("local_health_max", d.local_health_max, 0, 64, "probe periods"),
            };
            if out.probe_rtt_ms >= out.probe_period_ms {
                m.error(
                    "probe_rtt_ms",
                    format!(
                        "probe_rtt_ms ({}) must be shorter than probe_period_ms ({})",
                        out.probe_rtt_ms, out.probe_period_ms
                    ),
                    Some("SWIM waits probe_rtt_ms for an ack inside each probe period".into()),
                );
            }
            m.finish();
            out
        }
    };

    let transport = match root.table("transport") {
        None => TransportTuning::default(),
        Some(t) => {
            let d = TransportTuning::default();
            let out = TransportTuning {
                frame_bytes_max: t.u64_in("frame_bytes_max", d.frame_bytes_max, 1024, 64 << 20, "bytes"),
                send_queue_cap: t.u64_in("send_queue_cap", d.send_queue_cap, 16, 1 << 20, "frames"),
                lanes_per_peer: t.u64_in("lanes_per_peer", d.lanes_per_peer, 1, 64, "streams"),
                keep_alive_ms: t.u64_in("keep_alive_ms", d.keep_alive_ms, 100, 60_000, "milliseconds"),
                idle_timeout_ms: t.u64_in("idle_timeout_ms", d.idle_timeout_ms, 500, 600_000, "milliseconds"),
                connect_timeout_ms: t.u64_in("connect_timeout_ms", d.connect_timeout_ms, 50, 60_000, "milliseconds"),
                reconnect_backoff_min_ms: t.u64_in(
                    "reconnect_backoff_min_ms",
                    d.reconnect_backoff_min_ms,
                    1,
                    60_000,
                    "milliseconds",
                ),
                reconnect_backoff_max_ms: t.u64_in(
                    "reconnect_backoff_max_ms",
                    d.reconnect_backoff_max_ms,
                    1,
                    600_000,
                    "milliseconds",
                ),
                ask_timeout_ms: t.u64_in("ask_timeout_ms", d.ask_timeout_ms, 1, 3_600_000, "milliseconds"),
                stream_buffer: t.u64_in("stream_buffer", d.stream_buffer, 1, 65_536, "items"),
                client_in_flight_max: t.u64_in("client_in_flight_max", d.client_in_flight_max, 1, 1 << 20, "requests"),
            };
            if out.keep_alive_ms >= out.idle_timeout_ms {
                t.error(
                    "keep_alive_ms",
                    "keep_alive_ms must be shorter than idle_timeout_ms",
                    Some("otherwise idle links time out between keep-alives".into()),
                );
            }
            t.finish();
            out
        }
    };

    let mut nodes = Vec::new();
    let node_tables = root.tables("nodes");
    if node_tables.is_empty() && root.has("nodes") {
        // already reported as a type error
    } else if node_tables.is_empty() {
        doc.error(
            diags,
            "",
            "the cluster file declares no nodes",
            Some("add at least one [[nodes]] table with name, addr, gossip and admin".into()),
        );
    }
    for n in node_tables {
        let name = n.req_str("name");
        if let Some(nm) = &name
            && let Err(e) = check_name("node name", nm)
        {
            n.error("name", e.to_string(), None);
        }
        // A node's certificate and key are `<tls_dir>/<name>.pem|.key`, beside the CA's
        // (`ca`) and the clients' (`client-<name>`): those names would share files.
        if let Some(nm) = &name
            && (nm == "ca" || nm.starts_with("client-"))
        {
            n.error(
                "name",
                format!("node name `{nm}` is reserved: its certificate would share a file with the CA's or a client's"),
                Some("pick another name (`ca` and `client-*` are taken)".into()),
            );
        }
        let (a, g, ad) = (addr(&n, "addr"), addr(&n, "gossip"), addr(&n, "admin"));
        let roles = n.strs("roles");
        if let Some(r) = roles.iter().find(|r| r.contains('=')) {
            n.error(
                "roles",
                format!("role `{r}` has a `=`, which marks a label in a kind's `role`"),
                Some("put key/value facts about a node in [nodes.labels]".into()),
            );
        }
        let labels = match n.table("labels") {
            None => BTreeMap::new(),
            Some(l) => {
                let mut out = BTreeMap::new();
                for k in l.table.keys() {
                    if k == "gpu" {
                        l.error(
                            k,
                            "the label `gpu` is reserved: a node's GPUs give it `gpu=<model>` for placement"
                                .to_string(),
                            Some("declare GPUs in [[nodes.gpus]] (model, memory_gib, count)".into()),
                        );
                        continue;
                    }
                    if let Some(v) = l.req_str(k) {
                        out.insert(k.clone(), v);
                    }
                }
                out
            }
        };
        let gpus: Vec<GpuSpec> = n
            .tables("gpus")
            .into_iter()
            .filter_map(|g| {
                let model = g.req_str("model");
                let memory_gib = g.u64_in("memory_gib", 0, 1, 4096, "GiB");
                let count = g.u64_in("count", 1, 1, 64, "GPUs");
                g.finish();
                Some(GpuSpec { model: model?, memory_gib, count })
            })
            .collect();
        // Placement matches a kind's `role` against the roles, each label as
        // `key=value`, and each GPU model as `gpu=<model>`.
        let mut placement_roles: Vec<String> =
            roles.iter().cloned().chain(labels.iter().map(|(k, v)| format!("{k}={v}"))).collect();
        for g in &gpus {
            let role = format!("gpu={}", g.model);
            if !placement_roles.contains(&role) {
                placement_roles.push(role);
            }
        }
        let weight = n.f64_in("weight", 1.0, 0.01, 1000.0, "relative capacity");
        let ports = match n.table("ports") {
            None => BTreeMap::new(),
            Some(p) => {
                let mut out = BTreeMap::new();
                for k in p.table.keys() {
                    let port = p.u64_in(k, 0, 1, 65_535, "TCP port");
                    if port > 0 {
                        out.insert(k.clone(), port as u16);
                    }
                }
                out
            }
        };
        n.finish();
        if let (Some(name), Some(addr), Some(gossip), Some(admin)) = (name, a, g, ad) {
            nodes.push(NodeSpec { name, addr, gossip, admin, roles, labels, placement_roles, gpus, weight, ports });
        }
    }

    // Cross-checks: unique names and addresses, seeds that exist.
    let mut names = BTreeSet::new();
    let mut sockets = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if !names.insert(n.name.clone()) {
            doc.error(
                diags,
                &format!("nodes[{i}].name"),
                format!("node name `{}` is used twice", n.name),
                Some("give every node a unique name".into()),
            );
        }
        for (what, a) in [("addr", n.addr), ("gossip", n.gossip), ("admin", n.admin)] {
            if let Some(prev) = sockets.insert(a, format!("{}.{what}", n.name)) {
                doc.error(
                    diags,
                    &format!("nodes[{i}].{what}"),
                    format!("address {a} is already used by {prev}"),
                    Some("every node needs its own ports".into()),
                );
            }
        }
    }
    for (i, s) in seeds.iter().enumerate() {
        if !names.contains(s) {
            doc.error(
                diags,
                &format!("cluster.seeds[{i}]"),
                format!("seed `{s}` is not a node of this cluster"),
                Some(suggest(s, names.iter().map(|s| s.as_str()), "nodes")),
            );
        }
    }
    if seeds.is_empty() && !nodes.is_empty() {
        doc.error(
            diags,
            "cluster",
            "no seeds: a node would have nobody to join",
            Some(format!("add `seeds = [\"{}\"]` to [cluster]", nodes[0].name)),
        );
    }

    let tracing = match root.table("tracing") {
        None => TracingConfig::new(&name),
        Some(t) => {
            let d = TracingConfig::new(&name);
            let out = TracingConfig {
                retention_ms: t.u64_in("retention_ms", d.retention_ms, 1000, 366 * 86_400_000, "milliseconds"),
                spans_max: t.u64_in("spans_max", d.spans_max, 1000, 1 << 32, "spans"),
                keep_one_in: t.u64_in("keep_one_in", d.keep_one_in, 0, 1 << 20, "traces"),
                otlp_endpoint: t.opt_str("otlp_endpoint"),
                service_name: t.opt_str("service_name").unwrap_or(d.service_name),
            };
            if let Some(url) = &out.otlp_endpoint
                && let Err(why) = crate::otlp::Endpoint::parse(url)
            {
                t.error("otlp_endpoint", why, Some("write it as http://host:port/v1/traces".into()));
            }
            t.finish();
            out
        }
    };

    let blobs = match root.table("blobs") {
        None => BlobsConfig::new(nodes.len()),
        Some(t) => {
            let d = BlobsConfig::new(nodes.len());
            let out = BlobsConfig {
                replication_factor: t.u64_in("replication_factor", d.replication_factor, 1, 7, "copies"),
                role: t.opt_str("role"),
                grace_ms: t.u64_in("grace_ms", d.grace_ms, 100, 366 * 86_400_000, "milliseconds"),
                gc_interval_ms: t.u64_in("gc_interval_ms", d.gc_interval_ms, 50, 86_400_000, "milliseconds"),
                blob_bytes_max: t.u64_in("blob_bytes_max", d.blob_bytes_max, 1, 1 << 40, "bytes"),
            };
            if let Some(role) = &out.role
                && !nodes.iter().any(|n| n.placement_roles.iter().any(|r| r == role))
            {
                t.error(
                    "role",
                    format!("no node has role `{role}`: no node could keep a blob"),
                    Some("give at least one node that role or label, or remove `role`".into()),
                );
            }
            t.finish();
            out
        }
    };

    let split_brain = match root.table("split_brain") {
        None => SplitBrain::default(),
        Some(t) => {
            let strategy = t.opt_str("strategy").unwrap_or_else(|| SplitBrain::NAMES[0].to_string());
            let quorum = t.opt_u64_in("quorum", 1, 1024, "nodes");
            let out = match strategy.as_str() {
                "keep-majority" => SplitBrain::KeepMajority,
                "keep-oldest" => SplitBrain::KeepOldest,
                "static-quorum" => match quorum {
                    Some(q) if (q as usize) * 2 > nodes.len() => SplitBrain::StaticQuorum(q as usize),
                    Some(q) => {
                        t.error(
                            "quorum",
                            format!("a quorum of {q} of {} nodes lets both sides of a split serve", nodes.len()),
                            Some(format!("use more than half the nodes: at least {}", nodes.len() / 2 + 1)),
                        );
                        SplitBrain::default()
                    }
                    None => {
                        t.error(
                            "strategy",
                            "static-quorum needs `quorum`, the nodes a side must see to serve",
                            Some(format!("add `quorum = {}`", nodes.len() / 2 + 1)),
                        );
                        SplitBrain::default()
                    }
                },
                other => {
                    t.error(
                        "strategy",
                        format!("unknown split-brain strategy `{other}`"),
                        Some(suggest(other, SplitBrain::NAMES, "strategies")),
                    );
                    SplitBrain::default()
                }
            };
            if quorum.is_some() && !matches!(out, SplitBrain::StaticQuorum(_)) && strategy != "static-quorum" {
                t.error("quorum", "`quorum` is only read by strategy = \"static-quorum\"", None);
            }
            t.finish();
            out
        }
    };

    let mut overrides = BTreeMap::new();
    if let Some(o) = root.table("overrides") {
        for (sys, v) in o.table {
            match v {
                toml::Value::Table(t) => {
                    if !systems.contains(sys) {
                        o.error(
                            sys,
                            format!("override for `{sys}`, which is not enabled"),
                            Some(suggest(sys, systems.iter().map(|s| s.as_str()), "enabled systems")),
                        );
                    }
                    overrides.insert(sys.clone(), t.clone());
                }
                other => o.error(sys, format!("`overrides.{sys}` must be a table, not {}", other.type_str()), None),
            }
            let _ = o.raw(sys);
        }
        o.finish();
    }
    root.finish();

    if diags.len() > errors_before && nodes.is_empty() {
        return None;
    }
    Some(ClusterConfig {
        file: doc.file.clone(),
        name,
        data_dir,
        tls_dir,
        key_file,
        systems_dir,
        systems,
        seeds,
        membership,
        split_brain,
        transport,
        tracing,
        blobs,
        nodes,
        overrides,
    })
}

//! Configuration: the cluster file and the topology files, loaded like a compiler
//! loads a program — every error in every file is collected and reported at once,
//! each with file, line, column and a fix.

pub mod cluster;
pub mod diag;
pub mod reader;
pub mod topology;

pub use cluster::{
    BlobsConfig, ClusterConfig, GpuSpec, MembershipTuning, NodeSpec, SplitBrain, TracingConfig, TransportTuning,
};
pub use diag::{ConfigErrors, Diag, Diags, Doc};
pub use topology::{KindCatalog, KindSpec, Placement, RouteSpec, SupervisionSpec, Topology};

use std::path::Path;

/// A cluster file and the topologies of its enabled systems, all checked.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The cluster file.
    pub cluster: ClusterConfig,
    /// One topology per enabled system, in the cluster file's `systems` order.
    pub topologies: Vec<Topology>,
}

impl Loaded {
    /// The topology of enabled system `system`.
    pub fn topology(&self, system: &str) -> Option<&Topology> {
        self.topologies.iter().find(|t| t.name == system)
    }
    /// Kind `kind` of enabled system `system`.
    pub fn kind(&self, system: &str, kind: &str) -> Option<&KindSpec> {
        self.topology(system).and_then(|t| t.kind(kind))
    }
}

fn read_doc(path: &Path, diags: &Diags, what: &str, help: &str) -> Option<Doc> {
    match std::fs::read_to_string(path) {
        Ok(text) => Doc::parse(path, text, diags),
        Err(e) => {
            diags.file_error(path, format!("cannot read {what} {}: {e}", path.display()), Some(help.to_string()));
            None
        }
    }
}

/// Loads `cluster_file` and every topology it enables.
pub fn load(cluster_file: &Path, kinds: &dyn KindCatalog) -> Result<Loaded, ConfigErrors> {
    let diags = Diags::new();
    let doc = read_doc(
        cluster_file,
        &diags,
        "cluster file",
        "pass --cluster <file>, or run from the folder holding cluster.toml",
    );
    let cluster = doc.as_ref().and_then(|d| cluster::load_cluster(d, &diags));
    let Some(cluster) = cluster else {
        return Err(ConfigErrors(diags.into_vec()));
    };
    let topologies = load_topologies(&cluster, doc.as_ref(), kinds, &diags);
    if diags.is_empty() { Ok(Loaded { cluster, topologies }) } else { Err(ConfigErrors(diags.into_vec())) }
}

/// Loads the topologies `cluster` enables, checking cross-file rules.
pub fn load_topologies(
    cluster: &ClusterConfig,
    cluster_doc: Option<&Doc>,
    kinds: &dyn KindCatalog,
    diags: &Diags,
) -> Vec<Topology> {
    let mut out: Vec<Topology> = Vec::new();
    for (i, sys) in cluster.systems.iter().enumerate() {
        let path = cluster.systems_dir.join(format!("{sys}.toml"));
        if !path.exists() {
            let available = available_systems(&cluster.systems_dir);
            let help = diag::suggest(sys, available.iter().map(|s| s.as_str()), "topologies in the systems folder");
            match cluster_doc {
                Some(d) => d.error(
                    diags,
                    &format!("cluster.systems[{i}]"),
                    format!("no topology file for system `{sys}` ({})", path.display()),
                    Some(help),
                ),
                None => diags.file_error(&path, format!("no topology file for system `{sys}`"), Some(help)),
            }
            continue;
        }
        let Some(doc) = read_doc(&path, diags, "topology file", "check the file's permissions") else {
            continue;
        };
        if let Some(t) = topology::load_topology(&doc, diags, kinds, cluster.overrides.get(sys)) {
            for (j, req) in t.requires.iter().enumerate() {
                if !cluster.systems.contains(req) {
                    doc.error(
                        diags,
                        &format!("system.requires[{j}]"),
                        format!("system `{}` requires `{req}`, which the cluster does not enable", t.name),
                        Some(format!("add \"{req}\" to `systems` in {}", cluster.file.display())),
                    );
                }
            }
            for (j, k) in t.kinds.iter().enumerate() {
                if let Some(role) = &k.role
                    && !cluster.nodes.iter().any(|n| n.placement_roles.contains(role))
                {
                    let _ = j;
                    let (what, fix) = match role.split_once('=') {
                        Some(("gpu", model)) => (
                            format!("a `{model}` GPU (`{role}`)"),
                            format!(
                                "add a [[nodes.gpus]] entry with model = \"{model}\" to a node in {}",
                                cluster.file.display()
                            ),
                        ),
                        Some((key, value)) => (
                            format!("label `{role}`"),
                            format!(
                                "add `{key} = \"{value}\"` to the [nodes.labels] of a node in {}",
                                cluster.file.display()
                            ),
                        ),
                        None => (
                            format!("role `{role}`"),
                            format!("add \"{role}\" to the `roles` of a node in {}", cluster.file.display()),
                        ),
                    };
                    doc.error(
                        diags,
                        &format!("kinds.{}.role", k.name),
                        format!("kind `{}` runs on nodes with {what}, and no node has it", k.name),
                        Some(fix),
                    );
                }
            }
            out.push(t);
        }
    }
    out
}

fn available_systems(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let p = e.path();
                    (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

//! `troupe certs`: the cluster CA, node and client certificates, the gossip key, the
//! admin and service tokens, and the users' API keys.

use clap::Subcommand;
use std::path::{Path, PathBuf};
use troupe_runtime::cluster::{seal, tls};

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Make the CA, a certificate per node, a CLI client certificate, the cluster key,
    /// the admin and service tokens and the development API keys (whatever is missing).
    Init {
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
    /// Print a user's API key from api-keys.toml beside the cluster key, e.g.
    /// `curl -H "Authorization: Bearer $(troupe certs api-key alice)"`.
    ApiKey {
        user: String,
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
    /// Write what one host of a multi-host cluster needs to run node NODE into OUT: the
    /// cluster file and its topologies, the CA certificate (not its key), NODE's
    /// certificate and key, the cluster key, the tokens and the API keys. Copy OUT to
    /// the host and run `troupe node --cluster OUT/cluster.toml --name NODE` there
    /// (docs/deploy.md).
    Bundle {
        node: String,
        /// A new or empty folder.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
    /// Issue a client certificate for an application using the SDK.
    Client {
        name: String,
        /// With the admin role: it may also address kinds whose topology says
        /// `allow = ["admin"]`.
        #[arg(long)]
        admin: bool,
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
}

/// Makes whatever certificates and key are missing; returns what was created.
pub fn ensure(cluster: &troupe_runtime::ClusterConfig) -> anyhow::Result<Vec<PathBuf>> {
    let dir = tls::TlsDir(cluster.tls_dir.clone());
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let mut made = tls::init_cluster(&dir, &cluster.name, &nodes)?;
    if !cluster.key_file.exists() {
        seal::load_key(&cluster.key_file, true).map_err(anyhow::Error::msg)?;
        made.push(cluster.key_file.clone());
    }
    use troupe_runtime::cluster::tokens::{self, Role};
    for role in [Role::Admin, Role::Service] {
        let token = tokens::path(role, &cluster.key_file);
        if tokens::ensure(&token)? {
            made.push(token);
        }
    }
    let keys = troupe_runtime::cluster::api_keys::path(&cluster.key_file);
    if troupe_runtime::cluster::api_keys::ensure(&keys)? {
        made.push(keys);
    }
    Ok(made)
}

/// Writes into `out` what one host needs to run node `node` of a cluster spread over
/// several machines: the cluster file and its topologies, the CA certificate (not its
/// key), the node's own certificate and key, the cluster key, the admin and service
/// tokens and the API keys, each at the path the cluster file names for it (relative
/// to the cluster file). Returns the files written.
pub fn bundle(cluster_file: &Path, node: &str, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let loaded = super::load(cluster_file)?;
    let c = &loaded.cluster;
    if c.node(node).is_none() {
        let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        anyhow::bail!("node `{node}` is not in {}; its nodes are {}", cluster_file.display(), names.join(", "));
    }
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        anyhow::bail!("{} is not empty: a bundle is written into a new or empty folder", out.display());
    }
    // Whatever is missing is made first, on this (the operator's) machine.
    ensure(c)?;
    let base =
        std::fs::canonicalize(cluster_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    let inside = |p: &Path| -> anyhow::Result<PathBuf> {
        let abs = std::fs::canonicalize(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        abs.strip_prefix(&base).map(Path::to_path_buf).map_err(|_| {
            anyhow::anyhow!(
                "{} is outside {}, the cluster file's folder: a bundle keeps the paths the cluster file names \
                 relative to it (set tls_dir, key_file and systems_dir relative to the cluster file)",
                p.display(),
                base.display()
            )
        })
    };
    let dir = tls::TlsDir(c.tls_dir.clone());
    let key_file = &c.key_file;
    let mut public: Vec<PathBuf> = vec![dir.ca_cert(), dir.cert(node)];
    let mut secret: Vec<PathBuf> = vec![
        dir.key(node),
        key_file.clone(),
        troupe_runtime::cluster::tokens::path(troupe_runtime::cluster::tokens::Role::Admin, key_file),
        troupe_runtime::cluster::tokens::path(troupe_runtime::cluster::tokens::Role::Service, key_file),
        troupe_runtime::cluster::api_keys::path(key_file),
    ];
    let mut topologies: Vec<PathBuf> = Vec::new();
    for t in &loaded.topologies {
        topologies.push(c.systems_dir.join(format!("{}.toml", t.name)));
    }
    public.extend(topologies);
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    let name = cluster_file.file_name().ok_or_else(|| anyhow::anyhow!("{} names no file", cluster_file.display()))?;
    let to = out.join(name);
    std::fs::copy(cluster_file, &to)?;
    written.push(to);
    for (files, private) in [(std::mem::take(&mut public), false), (std::mem::take(&mut secret), true)] {
        for f in files {
            let to = out.join(inside(&f)?);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let bytes = std::fs::read(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            if private {
                tls::write_secret(&to, &bytes)?;
            } else {
                std::fs::write(&to, &bytes)?;
            }
            written.push(to);
        }
    }
    Ok(written)
}

pub fn run(cmd: CertsCmd) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Init { cluster } => {
            let loaded = super::load(&cluster)?;
            let made = ensure(&loaded.cluster)?;
            if made.is_empty() {
                println!("everything is already there in {}", loaded.cluster.tls_dir.display());
            }
            for f in made {
                println!("created {}", f.display());
            }
            Ok(())
        }
        CertsCmd::Bundle { node, out, cluster } => {
            let written = bundle(&cluster, &node, &out)?;
            println!("{} files for {node} in {}:", written.len(), out.display());
            for f in &written {
                println!("  {}", f.strip_prefix(&out).unwrap_or(f).display());
            }
            println!(
                "copy {} to {node}'s host (it holds secrets: keep the modes) and run there:\n  troupe node --cluster <that folder>/{} --name {node}",
                out.display(),
                cluster.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
            );
            Ok(())
        }
        CertsCmd::ApiKey { user, cluster } => {
            let loaded = super::load(&cluster)?;
            let key = troupe_runtime::cluster::api_keys::from_file(&user, &loaded.cluster.key_file)
                .map_err(anyhow::Error::msg)?;
            println!("{key}");
            Ok(())
        }
        CertsCmd::Client { name, admin, cluster } => {
            let loaded = super::load(&cluster)?;
            let dir = tls::TlsDir(loaded.cluster.tls_dir.clone());
            let id = if admin { tls::PeerId::Admin(name.clone()) } else { tls::PeerId::Client(name.clone()) };
            if tls::ensure_cert(&dir, &id)? {
                println!("created {}", dir.cert(&format!("client-{name}")).display());
            } else {
                println!("{} already exists", dir.cert(&format!("client-{name}")).display());
            }
            Ok(())
        }
    }
}

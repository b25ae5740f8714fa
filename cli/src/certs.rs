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
    // Whatever is missing is made first, here (where the CA key is).
    ensure(c)?;
    let dir = tls::TlsDir(c.tls_dir.clone());
    // The files the cluster file names are under its folder; a bundle keeps them at
    // the same place relative to it (as the paths are written, symlinks not followed).
    let base = c.file.parent().unwrap_or(Path::new("."));
    let relative = |p: &Path| -> anyhow::Result<PathBuf> {
        let r =
            p.strip_prefix(base).ok().filter(|r| r.components().all(|c| matches!(c, std::path::Component::Normal(_))));
        r.map(Path::to_path_buf).ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not inside {}, the cluster file's folder: a bundle keeps the paths the cluster file names \
                 relative to it (write tls_dir, key_file and systems_dir relative to the cluster file)",
                p.display(),
                base.display()
            )
        })
    };
    // Never the CA's key or another node's or a client's, even through a link.
    let forbidden: Vec<PathBuf> = std::iter::once(dir.ca_key())
        .chain(c.nodes.iter().filter(|n| n.name != node).map(|n| dir.key(&n.name)))
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let tokens = |role| troupe_runtime::cluster::tokens::path(role, &c.key_file);
    use troupe_runtime::cluster::tokens::Role;
    let public: Vec<PathBuf> = [dir.ca_cert(), dir.cert(node)]
        .into_iter()
        .chain(loaded.topologies.iter().map(|t| c.systems_dir.join(format!("{}.toml", t.name))))
        .collect();
    let secret: Vec<PathBuf> = vec![
        dir.key(node),
        c.key_file.clone(),
        tokens(Role::Admin),
        tokens(Role::Service),
        troupe_runtime::cluster::api_keys::path(&c.key_file),
    ];
    // Everything is checked before anything is written: a refused bundle leaves nothing.
    let mut plan: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    for (files, private) in [(public, false), (secret, true)] {
        for f in files {
            let canonical = std::fs::canonicalize(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            if forbidden.contains(&canonical) || client_key(&canonical) {
                anyhow::bail!(
                    "{} is {}, which no node's bundle may hold: make it a file of its own",
                    f.display(),
                    canonical.display()
                );
            }
            let rel = relative(&f)?;
            plan.push((f, rel, private));
        }
    }
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    let name = cluster_file.file_name().ok_or_else(|| anyhow::anyhow!("{} names no file", cluster_file.display()))?;
    let to = out.join(name);
    std::fs::copy(cluster_file, &to)?;
    written.push(to);
    for (f, rel, private) in plan {
        let to = out.join(rel);
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
    Ok(written)
}

/// Whether `p` is a client's private key (`client-<name>.key`).
fn client_key(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("client-") && n.ends_with(".key"))
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

//! `troupe certs`: the cluster CA, node and client certificates, the gossip key, the
//! admin and service tokens, and the users' API keys.

use clap::Subcommand;
use std::path::PathBuf;
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

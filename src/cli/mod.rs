//! The CLI's subcommands. Each module parses its arguments and reports errors with
//! context a person can act on.

pub mod certs;
pub mod chaos;
pub mod client;
pub mod lab;
pub mod node;
pub mod sim;
pub mod top;
pub mod up;

use std::path::Path;
use troupe_runtime::{ConfigErrors, KindRegistry, Loaded, RemoteError};

/// A configuration or usage error (exit code 2); systems' subcommands return the same.
pub use troupe_system::UsageError;

pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<ConfigErrors>().is_some() || e.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    match e.downcast_ref::<RemoteError>() {
        Some(RemoteError::Unreachable { .. } | RemoteError::NodeDown { .. }) => 3,
        Some(RemoteError::Timeout { .. }) => 4,
        _ => 1,
    }
}

/// Every actor kind of every system this binary carries.
pub fn kinds() -> KindRegistry {
    let mut k = KindRegistry::new();
    for s in crate::systems::SYSTEMS {
        s.register(&mut k);
    }
    k
}

/// Loads and checks a cluster file with every registered kind.
pub fn load(cluster: &Path) -> anyhow::Result<Loaded> {
    troupe_runtime::config::load(cluster, &kinds()).map_err(anyhow::Error::new)
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
pub fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

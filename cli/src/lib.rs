//! troupe-cli: the `troupe` command line — run nodes, talk to actors, watch and break
//! the cluster — for any set of systems. The `troupe` binary (src/main.rs) is this with
//! the systems of src/systems.rs; a binary of your own systems is one line
//! (docs/writing-a-system.md).
//!
//! Exit codes scripts can rely on: 0 success, 1 a request or runtime failure, 2 a
//! bad configuration or usage, 3 the target was unreachable, 4 a timeout. Each module
//! parses its arguments and reports errors with context a person can act on.

pub mod certs;
pub mod chaos;
pub mod client;
pub mod lab;
pub mod node;
pub mod sim;
pub mod top;
pub mod up;

use clap::{CommandFactory, FromArgMatches, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use troupe_runtime::{ConfigErrors, KindRegistry, Loaded, RemoteError};
use troupe_system::System;

/// The systems `main` was given.
static SYSTEMS: OnceLock<&'static [&'static dyn System]> = OnceLock::new();

/// The systems this command line runs with (none before `main`).
pub fn systems() -> &'static [&'static dyn System] {
    SYSTEMS.get().copied().unwrap_or(&[])
}

/// The systems' `troupe top` panels, in list order.
fn panels() -> Vec<&'static dyn troupe_system::Panel> {
    systems().iter().filter_map(|s| s.panel()).collect()
}

/// A configuration or usage error (exit code 2); systems' subcommands return the same.
pub use troupe_system::UsageError;

/// The exit code of an error: 2 usage or configuration, 3 unreachable, 4 timeout, else 1.
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
    for s in systems() {
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

#[derive(clap::Parser)]
#[command(name = "troupe", version, about = "An actor-model distributed runtime and the systems on it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start every node of the cluster file on this machine (dev cluster).
    Up(crate::up::UpArgs),
    /// Run one node of a cluster.
    Node(crate::node::NodeArgs),
    /// Check a cluster file and its topologies; print every error.
    Check {
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
    /// Manage the cluster's certificates and key.
    #[command(subcommand)]
    Certs(crate::certs::CertsCmd),
    /// Break things on purpose: kill, partition, delay, drop, heal.
    #[command(subcommand)]
    Chaos(crate::chaos::ChaosCmd),
    /// Ask an actor and print its reply (JSON in, JSON out).
    Ask(crate::client::RequestArgs),
    /// Send a message to an actor without waiting.
    Send(crate::client::RequestArgs),
    /// Stream replies from an actor, one JSON per line.
    Stream(crate::client::RequestArgs),
    /// Cluster membership as a node sees it.
    Members(crate::client::NodeArgs),
    /// Supervision trees of the nodes.
    Tree(crate::client::NodeArgs),
    /// Metrics of the nodes.
    Metrics(crate::client::NodeArgs),
    /// Spans of one request across the cluster, in order.
    Trace(crate::client::TraceArgs),
    /// Live view of the cluster: nodes, supervision trees, rates, metrics.
    Top(crate::top::TopArgs),
    /// Seeded simulations of cluster membership under kills, partitions and loss.
    Sim(crate::sim::SimArgs),
}

/// The built-in subcommands, then `troupe lab` and each system's own subcommands.
fn command(systems: &[&dyn System]) -> clap::Command {
    let cmd = Cli::command().subcommand(crate::lab::command(systems));
    systems.iter().flat_map(|s| s.commands()).fold(cmd, |c, sc| c.subcommand(sc.cli))
}

fn run(systems: &[&dyn System], matches: &clap::ArgMatches) -> anyhow::Result<()> {
    if let Some((name, sub)) = matches.subcommand() {
        if name == "lab" {
            return crate::lab::run(systems, sub);
        }
        if let Some(c) = systems.iter().flat_map(|s| s.commands()).find(|c| c.cli.get_name() == name) {
            return (c.run)(sub);
        }
    }
    let cli = Cli::from_arg_matches(matches).map_err(|e| crate::UsageError(e.to_string()))?;
    match cli.command {
        Command::Up(a) => crate::up::run(a),
        Command::Node(a) => crate::node::run(a),
        Command::Check { cluster } => crate::node::check(&cluster),
        Command::Certs(c) => crate::certs::run(c),
        Command::Chaos(c) => crate::chaos::run(c),
        Command::Ask(a) => crate::client::ask(a),
        Command::Send(a) => crate::client::send(a),
        Command::Stream(a) => crate::client::stream(a),
        Command::Members(a) => crate::client::members(a),
        Command::Tree(a) => crate::client::tree(a),
        Command::Metrics(a) => crate::client::metrics(a),
        Command::Trace(a) => crate::client::trace(a),
        Command::Top(a) => crate::top::run(a),
        Command::Sim(a) => crate::sim::run_sim(a),
    }
}

/// Runs the `troupe` command line with `systems`: parses the arguments, runs the
/// subcommand and turns its outcome into the documented exit code. A binary of your own
/// systems is `fn main() -> ExitCode { troupe_cli::main(MY_SYSTEMS) }`
/// (docs/writing-a-system.md).
pub fn main(systems: &'static [&'static dyn System]) -> ExitCode {
    let _ = SYSTEMS.set(systems);
    let matches = command(systems).get_matches();
    match run(systems, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            if e.downcast_ref::<troupe_runtime::ConfigErrors>().is_some() {
                // Already rendered like a compiler: one block per error.
                eprintln!("{e}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

//! `troupe`: run nodes, talk to actors, watch and break the cluster.
//!
//! Exit codes scripts can rely on: 0 success, 1 a request or runtime failure, 2 a
//! bad configuration or usage, 3 the target was unreachable, 4 a timeout.

mod cli;
mod systems;

use clap::{CommandFactory, FromArgMatches, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Parser)]
#[command(name = "troupe", version, about = "An actor-model distributed runtime and the systems on it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start every node of the cluster file on this machine (dev cluster).
    Up(cli::up::UpArgs),
    /// Run one node of a cluster.
    Node(cli::node::NodeArgs),
    /// Check a cluster file and its topologies; print every error.
    Check {
        #[arg(long, default_value = "cluster.toml")]
        cluster: PathBuf,
    },
    /// Manage the cluster's certificates and key.
    #[command(subcommand)]
    Certs(cli::certs::CertsCmd),
    /// Break things on purpose: kill, partition, delay, drop, heal.
    #[command(subcommand)]
    Chaos(cli::chaos::ChaosCmd),
    /// Ask an actor and print its reply (JSON in, JSON out).
    Ask(cli::client::RequestArgs),
    /// Send a message to an actor without waiting.
    Send(cli::client::RequestArgs),
    /// Stream replies from an actor, one JSON per line.
    Stream(cli::client::RequestArgs),
    /// Cluster membership as a node sees it.
    Members(cli::client::NodeArgs),
    /// Supervision trees of the nodes.
    Tree(cli::client::NodeArgs),
    /// Metrics of the nodes.
    Metrics(cli::client::NodeArgs),
    /// Spans of one request across the cluster, in order.
    Trace(cli::client::TraceArgs),
    /// Live view of the cluster: nodes, supervision trees, rates, metrics.
    Top(cli::top::TopArgs),
    /// Seeded simulations of cluster membership under kills, partitions and loss.
    Sim(cli::sim::SimArgs),
}

/// The built-in subcommands, then `troupe lab` and each system's own subcommands.
fn command() -> clap::Command {
    let systems = systems::SYSTEMS;
    let cmd = Cli::command().subcommand(cli::lab::command(systems));
    systems.iter().flat_map(|s| s.commands()).fold(cmd, |c, sc| c.subcommand(sc.cli))
}

fn run(matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let systems = systems::SYSTEMS;
    if let Some((name, sub)) = matches.subcommand() {
        if name == "lab" {
            return cli::lab::run(systems, sub);
        }
        if let Some(c) = systems.iter().flat_map(|s| s.commands()).find(|c| c.cli.get_name() == name) {
            return (c.run)(sub);
        }
    }
    let cli = Cli::from_arg_matches(matches).map_err(|e| cli::UsageError(e.to_string()))?;
    match cli.command {
        Command::Up(a) => cli::up::run(a),
        Command::Node(a) => cli::node::run(a),
        Command::Check { cluster } => cli::node::check(&cluster),
        Command::Certs(c) => cli::certs::run(c),
        Command::Chaos(c) => cli::chaos::run(c),
        Command::Ask(a) => cli::client::ask(a),
        Command::Send(a) => cli::client::send(a),
        Command::Stream(a) => cli::client::stream(a),
        Command::Members(a) => cli::client::members(a),
        Command::Tree(a) => cli::client::tree(a),
        Command::Metrics(a) => cli::client::metrics(a),
        Command::Trace(a) => cli::client::trace(a),
        Command::Top(a) => cli::top::run(a),
        Command::Sim(a) => cli::sim::run_sim(a),
    }
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    match run(&matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = cli::exit_code(&e);
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

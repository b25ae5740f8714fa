//! `troupe lab <system>`: seeded simulations of a system's key design decisions, written
//! as PNG plots and a text summary into a folder. Each system brings its own
//! (`troupe_system::System::lab`); this module only lists and dispatches them.

use troupe_system::{Command, System};

/// The `lab` subcommand, with one subcommand per system that has a lab.
pub fn command(systems: &[&dyn System]) -> clap::Command {
    systems.iter().filter_map(|s| s.lab()).fold(
        clap::Command::new("lab")
            .about("Seeded simulations of a system's design decisions, with plots")
            .subcommand_required(true)
            .arg_required_else_help(true),
        |c, lab| c.subcommand(lab.cli),
    )
}

/// Runs the lab `matches` names.
pub fn run(systems: &[&dyn System], matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let Some((name, sub)) = matches.subcommand() else {
        return Err(super::UsageError("troupe lab needs a system; see `troupe lab --help`".into()).into());
    };
    let lab: Option<Command> = systems.iter().filter_map(|s| s.lab()).find(|l| l.cli.get_name() == name);
    match lab {
        Some(l) => (l.run)(sub),
        None => Err(super::UsageError(format!("no system has a lab named {name}")).into()),
    }
}

//! `tally`: the troupe command line with the tally system. Every `troupe` subcommand
//! works: `tally up`, `tally node`, `tally ask`, `tally top`, `tally chaos ...`.

use troupe_system::System;

static SYSTEMS: &[&dyn System] = &[&troupe_example_tally::Tally];

fn main() -> std::process::ExitCode {
    troupe_cli::main(SYSTEMS)
}

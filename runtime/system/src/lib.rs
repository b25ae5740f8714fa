//! troupe-system: the one trait through which a system hands the node and the `troupe`
//! binary everything it brings — its actor kinds, what `troupe up` must fetch before the
//! nodes start, its `troupe lab` experiments, its own subcommands and its `troupe top`
//! panel. The binary keeps one list of systems (`src/systems.rs`) and names no system
//! anywhere else; a new system lands in `actors/<system>/` plus that one line.
//!
//! ```
//! use troupe_system::{Command, System};
//! use troupe_runtime::KindRegistry;
//!
//! /// A system with no kinds of its own and one lab.
//! struct Hello;
//!
//! #[derive(clap::Args)]
//! struct LabArgs {
//!     /// How many greetings.
//!     #[arg(long, default_value_t = 3)]
//!     n: u32,
//! }
//!
//! impl System for Hello {
//!     fn name(&self) -> &'static str {
//!         "hello"
//!     }
//!     fn register(&self, _: &mut KindRegistry) {}
//!     fn lab(&self) -> Option<Command> {
//!         Some(Command::args::<LabArgs>("hello", "Greets n times", |a| {
//!             for _ in 0..a.n {
//!                 println!("hello");
//!             }
//!             Ok(())
//!         }))
//!     }
//! }
//!
//! let lab = Hello.lab().expect("a lab");
//! let m = lab.cli.clone().try_get_matches_from(["hello", "--n", "2"]).expect("parses");
//! (lab.run)(&m).expect("runs");
//! ```
//!
//! Invariants: a system's name is the `name` of its topology files' `[system]` table,
//! lower-case with dashes, unique in the list; every factory it registers starts with a
//! prefix no other system uses (the registry refuses a factory registered twice).

#![warn(missing_docs)]

use ratatui::Frame;
use ratatui::layout::Rect;
use troupe_runtime::KindRegistry;
use troupe_runtime::config::Loaded;
use troupe_runtime::wire::introspect::MetricsSnapshot;

/// One system as the `troupe` binary sees it.
pub trait System: Send + Sync {
    /// The system's name: the `[system] name` of its topology file, and the subcommand
    /// of `troupe lab`.
    fn name(&self) -> &'static str;

    /// Registers every actor kind the system provides, by factory name.
    fn register(&self, kinds: &mut KindRegistry);

    /// What `troupe up` does before it starts the nodes of `cluster` (downloads the
    /// models its topologies name, builds data files), so that no node pays for it and a
    /// missing network is reported once, with what to run instead. Called for every
    /// system; one looks at the cluster's kinds for what they need. The default needs
    /// nothing.
    fn prepare(&self, _cluster: &Loaded) -> anyhow::Result<()> {
        Ok(())
    }

    /// `troupe lab <name>`: seeded experiments on the system's design decisions.
    fn lab(&self) -> Option<Command> {
        None
    }

    /// Top-level subcommands of its own (e.g. `troupe models`).
    fn commands(&self) -> Vec<Command> {
        Vec::new()
    }

    /// Its panel in `troupe top`, shown under the tree on nodes where it has something
    /// to show.
    fn panel(&self) -> Option<&dyn Panel> {
        None
    }
}

/// What a subcommand runs with the arguments clap parsed for it.
pub type RunFn = Box<dyn Fn(&clap::ArgMatches) -> anyhow::Result<()> + Send + Sync>;

/// A subcommand a system adds to the binary: its clap definition and what it runs.
pub struct Command {
    /// The subcommand, with its name, help text and arguments.
    pub cli: clap::Command,
    /// Runs it with the arguments clap parsed against `cli`.
    pub run: RunFn,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command").field("name", &self.cli.get_name()).finish_non_exhaustive()
    }
}

impl Command {
    /// A subcommand whose arguments are a `#[derive(clap::Args)]` struct.
    pub fn args<A>(
        name: &'static str,
        about: &'static str,
        run: impl Fn(A) -> anyhow::Result<()> + Send + Sync + 'static,
    ) -> Command
    where
        A: clap::Args + clap::FromArgMatches,
    {
        Command {
            cli: A::augment_args(clap::Command::new(name).about(about)),
            run: Box::new(move |m| run(A::from_arg_matches(m).map_err(|e| UsageError(e.to_string()))?)),
        }
    }

    /// A subcommand with subcommands of its own, a `#[derive(clap::Subcommand)]` enum.
    pub fn subcommands<S>(
        name: &'static str,
        about: &'static str,
        run: impl Fn(S) -> anyhow::Result<()> + Send + Sync + 'static,
    ) -> Command
    where
        S: clap::Subcommand + clap::FromArgMatches,
    {
        Command {
            cli: S::augment_subcommands(clap::Command::new(name).about(about))
                .subcommand_required(true)
                .arg_required_else_help(true),
            run: Box::new(move |m| run(S::from_arg_matches(m).map_err(|e| UsageError(e.to_string()))?)),
        }
    }
}

/// A system's `troupe top` panel: turns a node's metrics into something to draw.
pub trait Panel: Send + Sync {
    /// What to show for one node, from its newest metrics and an earlier snapshot (the
    /// start of the rate window); `None` when the node has nothing of this system.
    /// Pure: no I/O, no clock.
    fn summarize(&self, now: &MetricsSnapshot, earlier: Option<&MetricsSnapshot>) -> Option<Box<dyn PanelView>>;
}

/// One node's panel, ready to draw.
pub trait PanelView {
    /// Rows it needs, borders included (the view may give it fewer).
    fn height(&self) -> u16;
    /// Draws into `area`; `live` is false while the node is not answering, so stale
    /// figures are shown as such.
    fn draw(&self, f: &mut Frame, area: Rect, node: &str, live: bool);
}

/// The text of a drawn screen, for tests of panels and of `troupe top`.
pub mod screen {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    /// Draws with `draw` on a `w`×`h` test terminal and returns its rows as text (also
    /// printed, so `--nocapture` shows the layout).
    pub fn render(w: u16, h: u16, draw: impl FnOnce(&mut ratatui::Frame)) -> Vec<String> {
        let mut t = match Terminal::new(TestBackend::new(w, h)) {
            Ok(t) => t,
            Err(e) => match e {},
        };
        if let Err(e) = t.draw(draw) {
            match e {}
        }
        let buf = t.backend().buffer();
        let lines: Vec<String> = (0..h).map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>()).collect();
        println!("{}", lines.join("\n"));
        lines
    }

    /// Whether some row contains `needle`.
    pub fn has(lines: &[String], needle: &str) -> bool {
        lines.iter().any(|l| l.contains(needle))
    }

    /// Panics, showing the screen, unless every needle is on it.
    #[track_caller]
    pub fn assert_has(lines: &[String], needles: &[&str]) {
        let text = lines.join("\n");
        for n in needles {
            assert!(text.contains(n), "the screen lacks {n:?}:\n{text}");
        }
    }
}

/// A mistake in what the user asked for (exit code 2), as opposed to a failure while
/// doing it (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// How much a Prometheus counter grew from `prev` to `now`: a counter that went
/// backwards restarted in between, so all of `now` is growth (as `increase()` treats
/// it), never a negative.
pub fn counter_increase(prev: f64, now: f64) -> f64 {
    if now < prev { now } else { now - prev }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_increase_counts_a_reset_as_growth_from_zero() {
        assert_eq!(counter_increase(10.0, 25.0), 15.0);
        assert_eq!(counter_increase(500.0, 7.0), 7.0, "restarted: everything since is new");
        assert_eq!(counter_increase(3.0, 3.0), 0.0);
    }

    #[derive(clap::Args)]
    struct A {
        #[arg(long)]
        n: u32,
    }

    #[test]
    fn a_command_parses_its_own_arguments_and_reports_bad_ones_as_usage_errors() {
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let s = seen.clone();
        let c = Command::args::<A>("x", "about x", move |a| {
            s.store(a.n, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        assert_eq!(c.cli.get_name(), "x");
        let m = c.cli.clone().try_get_matches_from(["x", "--n", "7"]).expect("parses");
        (c.run)(&m).expect("runs");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 7);
        let bad = c.cli.clone().try_get_matches_from(["x", "--n", "seven"]);
        assert!(bad.is_err(), "clap refuses a non-number");
    }
}

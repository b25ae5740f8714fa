//! `troupe top`: a live terminal view of a cluster — nodes and membership, each
//! node's supervision tree, the selected actor's details and rates, metrics by system,
//! and the panels systems bring (`troupe_system::Panel`) on nodes where they apply.
//!
//! This module owns the terminal and the event loop; `app` is the state (pure),
//! `view` draws it, `data` polls the nodes on a background thread.
//!
//! Invariants: the loop never waits on the network (reports arrive on a channel and
//! are drained without blocking; a key is answered within `TICK`); the terminal is
//! restored on every exit path, including errors and panics.

mod app;
mod data;
mod metrics;
mod rates;
mod view;

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod snapshot_tests;

use anyhow::Context;
use app::{Action, App, Key};
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TryRecvError;

#[derive(Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub conn: super::client::Conn,
    /// How often every node is asked, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub refresh_ms: u64,
    /// Follow this trace (hex, as `troupe ask` prints it): a panel under the tree shows
    /// its spans from every node as a waterfall.
    #[arg(long)]
    pub trace: Option<String>,
}

/// Longest the loop sleeps waiting for a key; also how often "N s ago" moves on.
const TICK: Duration = Duration::from_millis(200);

pub fn run(a: TopArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let refresh = Duration::from_millis(a.refresh_ms);
    let cfg = troupe_client::ClientConfig::from_cluster_file(&a.conn.cluster, &a.conn.client)
        .map_err(|e| super::UsageError(e.to_string()))?;
    if !std::io::stdout().is_terminal() {
        return Err(super::UsageError(
            "troupe top needs a terminal (use `troupe tree` or `troupe metrics` in scripts)".into(),
        )
        .into());
    }
    let trace = match &a.trace {
        None => None,
        Some(t) => Some(
            u64::from_str_radix(t.trim_start_matches("0x"), 16)
                .map_err(|_| super::UsageError(format!("`{t}` is not a hexadecimal trace id")))?,
        ),
    };
    let poll = data::PollConfig::for_refresh(refresh);
    let nodes: Vec<String> = cfg.nodes.iter().map(|(n, _)| n.clone()).collect();
    let mut app = App::new(a.conn.cluster.display().to_string(), nodes, refresh).with_panels(crate::panels());
    app.trace = trace;
    // Every node is asked directly, so --via only picks the node shown first.
    if let Some(i) = a.conn.via.as_ref().and_then(|v| app.nodes.iter().position(|n| &n.name == v)) {
        app.selected = i;
    }
    let reports = data::spawn_pollers(data::SdkSource::new(cfg, poll.node_timeout, trace), poll)
        .context("starting the pollers")?;
    let terminal = ratatui::try_init().context("setting up the terminal")?;
    // Restores the terminal when this function returns by any path; `try_init` already
    // installed a panic hook that does the same before the panic message is printed.
    let mut guard = Restore(terminal);
    event_loop(&mut guard.0, &mut app, reports)
}

struct Restore(ratatui::DefaultTerminal);

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn event_loop(
    term: &mut ratatui::DefaultTerminal,
    app: &mut App,
    mut reports: tokio::sync::mpsc::Receiver<data::Report>,
) -> anyhow::Result<()> {
    loop {
        // Bounded: at most what the pollers queued since the last pass.
        loop {
            match reports.try_recv() {
                Ok(r) => app.ingest(r, Instant::now()),
                Err(TryRecvError::Empty) => break,
                // Only a panic on the polling thread gets here; a frozen screen would lie.
                Err(TryRecvError::Disconnected) => anyhow::bail!("the polling thread stopped; see the message above"),
            }
        }
        term.draw(|f| view::draw(f, app, Instant::now())).context("drawing")?;
        if !event::poll(TICK).context("reading the terminal")? {
            continue;
        }
        // Answer every key that is already waiting before drawing again.
        loop {
            if let Event::Key(k) = event::read().context("reading the terminal")?
                && let Some(key) = map_key(k)
                && app.on_key(key) == Action::Quit
            {
                return Ok(());
            }
            if !event::poll(Duration::ZERO)? {
                break;
            }
        }
    }
}

fn map_key(k: KeyEvent) -> Option<Key> {
    if k.kind == KeyEventKind::Release {
        return None;
    }
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Some(Key::Quit);
    }
    Some(match k.code {
        KeyCode::Char('q') => Key::Quit,
        KeyCode::Up | KeyCode::Char('k') => Key::Up,
        KeyCode::Down | KeyCode::Char('j') => Key::Down,
        KeyCode::Left | KeyCode::Char('h') => Key::Left,
        KeyCode::Right | KeyCode::Char('l') => Key::Right,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Key::Home,
        KeyCode::End | KeyCode::Char('G') => Key::End,
        KeyCode::Enter | KeyCode::Char(' ') => Key::Toggle,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Char('n') => Key::NextNode,
        KeyCode::Char('p') => Key::Pause,
        KeyCode::Char('?') => Key::Help,
        KeyCode::Esc => Key::Escape,
        _ => return None,
    })
}

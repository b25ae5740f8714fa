//! The state behind `troupe top`, with no I/O and no clock: what each node last said,
//! whether it is answering, which node and tree row are selected, which tree nodes are
//! expanded and which page of a big kind is shown, and the rates computed from
//! successive snapshots. The event loop feeds it reports and keys; the view reads it.
//!
//! Invariants: a failed poll never erases what a node last said (the screen keeps
//! showing it, marked stale); the selection is kept by actor path, so it survives
//! refreshes that add or remove actors; an expanded node shows at most `PAGE` children
//! at a time, so a kind with thousands of entities stays cheap to draw and to scroll.

use super::data::{NodeData, Report};
use super::metrics::{self, Group};
use super::rates::{self, Rates};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use troupe_runtime::wire::introspect::{ActorInfo, ActorState, MemberState, MetricsSnapshot};

/// Children shown per page of an expanded tree node.
pub const PAGE: usize = 50;
/// Metrics snapshots kept per node (the rate window at the fastest refresh is less).
const METRIC_HISTORY_MAX: usize = 64;

/// A key, after the terminal's own encoding is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
    /// Enter or space: expand/collapse, turn a page.
    Toggle,
    Tab,
    BackTab,
    NextNode,
    Pause,
    Help,
    Escape,
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    Nodes,
    Tree,
    Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not heard from yet.
    Waiting,
    Up,
    /// The last poll failed; `since_contact` is `None` if it never answered.
    Down {
        since_contact: Option<Duration>,
        reason: String,
    },
}

#[derive(Debug, Default)]
pub struct NodeState {
    pub name: String,
    /// The last good answer, kept while the node is down.
    pub data: Option<NodeData>,
    /// Earlier metrics snapshots, oldest first, for rates over the same window as the
    /// actors' (`rates::MSG_WINDOW`); at most `METRIC_HISTORY_MAX`.
    pub metric_history: VecDeque<MetricsSnapshot>,
    pub last_ok: Option<Instant>,
    /// Why the latest poll failed; `None` while the node answers.
    pub failure: Option<String>,
}

/// A row of the tree panel: an actor, or a marker for children on other pages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RowId {
    Actor(String),
    /// Children of this path on earlier pages.
    Earlier(String),
    /// Children of this path on later pages.
    Later(String),
}

#[derive(Debug, Clone)]
pub struct Row<'a> {
    pub id: RowId,
    pub depth: usize,
    /// The actor, for `RowId::Actor` rows.
    pub info: Option<&'a ActorInfo>,
    pub expandable: bool,
    pub expanded: bool,
    /// Children on the other pages, for `Earlier`/`Later` rows.
    pub hidden: usize,
}

/// What a collapsed supervisor hides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub actors: usize,
    pub failed: usize,
    pub restarting: usize,
    pub queued: u64,
}

pub fn summarize(info: &ActorInfo) -> Summary {
    let mut s = Summary::default();
    for a in info.walk().into_iter().skip(1) {
        s.actors += 1;
        s.failed += usize::from(a.state == ActorState::Failed);
        s.restarting += usize::from(a.state == ActorState::Restarting);
        s.queued += a.mailbox_len;
    }
    s
}

/// Systems start expanded; kinds start collapsed because a sharded kind may hold
/// thousands of entities. (The root is never a row: its children are the systems.)
fn expanded_by_default(info: &ActorInfo) -> bool {
    info.kind == "system"
}

fn parent_path(path: &str) -> Option<&str> {
    match path.rsplit_once('/') {
        Some(("", _)) | None => None,
        Some((p, _)) => Some(p),
    }
}

#[derive(Debug)]
pub struct App {
    /// Shown in the header, e.g. the cluster file.
    pub title: String,
    pub refresh: Duration,
    pub nodes: Vec<NodeState>,
    pub selected: usize,
    pub focus: Panel,
    pub paused: bool,
    pub help: bool,
    pub rates: Rates,
    /// Paths whose expansion differs from the default; shared by all nodes so `n`
    /// shows the same part of the next node's tree.
    toggled: HashSet<String>,
    pages: HashMap<String, usize>,
    /// The selected row, and its index as a fallback when that row disappears.
    cursor: Option<(RowId, usize)>,
    pub tree_offset: usize,
    tree_height: usize,
    metric_group: Option<String>,
    pub metric_offset: usize,
    /// The systems' `troupe top` panels.
    panels: Panels,
    /// The trace followed (`--trace`): a panel shows its spans.
    pub trace: Option<u64>,
}

/// The systems' panels (a list of trait objects, which have no `Debug` of their own).
#[derive(Default)]
struct Panels(Vec<&'static dyn troupe_system::Panel>);

impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} panels", self.0.len())
    }
}

impl App {
    pub fn new(title: impl Into<String>, nodes: Vec<String>, refresh: Duration) -> App {
        App {
            title: title.into(),
            refresh,
            nodes: nodes.into_iter().map(|name| NodeState { name, ..Default::default() }).collect(),
            selected: 0,
            focus: Panel::Tree,
            paused: false,
            help: false,
            rates: Rates::default(),
            toggled: HashSet::new(),
            pages: HashMap::new(),
            cursor: None,
            tree_offset: 0,
            tree_height: 10,
            metric_group: None,
            metric_offset: 0,
            panels: Panels::default(),
            trace: None,
        }
    }

    /// The spans of the followed trace every node answered with (its last answer for a
    /// node that is down now), by start time.
    pub fn trace_spans(&self) -> Vec<&troupe_runtime::wire::introspect::SpanRecord> {
        let mut all: Vec<_> = self.nodes.iter().filter_map(|n| n.data.as_ref()).flat_map(|d| &d.spans).collect();
        all.sort_by_key(|s| (s.start_unix_us, s.node.as_str()));
        all
    }

    /// Takes one node's poll result. Paused screens ignore new data on purpose.
    pub fn ingest(&mut self, r: Report, now: Instant) {
        if self.paused {
            return;
        }
        let Some(n) = self.nodes.iter_mut().find(|n| n.name == r.node) else { return };
        match r.outcome {
            Ok(d) => {
                let walk = d.tree.walk();
                let mut total = 0u64;
                for a in &walk {
                    self.rates.record((n.name.clone(), a.path.clone()), now, a.handled, a.restarts);
                    total += a.handled;
                }
                // The empty path is the node's total.
                self.rates.record((n.name.clone(), String::new()), now, total, 0);
                let live: HashSet<&str> = walk.iter().map(|a| a.path.as_str()).collect();
                self.rates.retain(&n.name, |p| p.is_empty() || live.contains(p));
                if let Some(old) = n.data.take() {
                    n.metric_history.push_back(old.metrics);
                }
                let newest = d.metrics.unix_ms;
                let window = rates::MSG_WINDOW.as_millis() as u64;
                // Keep one snapshot older than the window, if it is the only earlier one,
                // so a long gap between polls still gives a rate.
                while n.metric_history.len() > METRIC_HISTORY_MAX
                    || n.metric_history.get(1).is_some_and(|m| newest.saturating_sub(m.unix_ms) > window)
                {
                    n.metric_history.pop_front();
                }
                n.data = Some(d);
                n.last_ok = Some(now);
                n.failure = None;
            }
            Err(e) => n.failure = Some(e),
        }
    }

    pub fn status(&self, i: usize, now: Instant) -> Status {
        let n = &self.nodes[i];
        match (&n.failure, n.last_ok) {
            (None, None) => Status::Waiting,
            (None, Some(_)) => Status::Up,
            (Some(e), last) => {
                Status::Down { since_contact: last.map(|t| now.saturating_duration_since(t)), reason: e.clone() }
            }
        }
    }

    /// How node `i` sees node `other`, if it answered and knows it.
    pub fn view_of(&self, i: usize, other: &str) -> Option<MemberState> {
        let n = &self.nodes[i];
        if n.failure.is_some() {
            return None;
        }
        n.data.as_ref()?.members.iter().find(|m| m.name == other).map(|m| m.state)
    }

    pub fn node(&self) -> &NodeState {
        &self.nodes[self.selected]
    }

    fn is_expanded(&self, info: &ActorInfo) -> bool {
        expanded_by_default(info) != self.toggled.contains(&info.path)
    }

    /// The visible rows of the selected node's tree (the root itself is left out:
    /// its children are the systems).
    pub fn rows(&self) -> Vec<Row<'_>> {
        let mut out = Vec::new();
        if let Some(d) = &self.node().data {
            for sys in &d.tree.children {
                self.push_rows(sys, 0, &mut out);
            }
        }
        out
    }

    fn push_rows<'a>(&self, info: &'a ActorInfo, depth: usize, out: &mut Vec<Row<'a>>) {
        let expandable = !info.children.is_empty();
        let expanded = expandable && self.is_expanded(info);
        out.push(Row { id: RowId::Actor(info.path.clone()), depth, info: Some(info), expandable, expanded, hidden: 0 });
        if !expanded {
            return;
        }
        let mut kids: Vec<&ActorInfo> = info.children.iter().collect();
        if info.kind == "kind" {
            // Entities arrive in activation order; by path, pages stay put between refreshes.
            kids.sort_by(|a, b| a.path.cmp(&b.path));
        }
        let last_page = (kids.len() - 1) / PAGE;
        let start = self.pages.get(&info.path).copied().unwrap_or(0).min(last_page) * PAGE;
        let end = (start + PAGE).min(kids.len());
        let marker = |id, hidden| Row { id, depth: depth + 1, info: None, expandable: false, expanded: false, hidden };
        if start > 0 {
            out.push(marker(RowId::Earlier(info.path.clone()), start));
        }
        for k in &kids[start..end] {
            self.push_rows(k, depth + 1, out);
        }
        if end < kids.len() {
            out.push(marker(RowId::Later(info.path.clone()), kids.len() - end));
        }
    }

    pub fn cursor_index(&self, rows: &[Row<'_>]) -> usize {
        match &self.cursor {
            None => 0,
            Some((id, idx)) => {
                rows.iter().position(|r| &r.id == id).unwrap_or_else(|| (*idx).min(rows.len().saturating_sub(1)))
            }
        }
    }

    /// The selected row's id (the first row when nothing was chosen yet).
    pub fn selected_row(&self) -> Option<RowId> {
        let rows = self.rows();
        rows.get(self.cursor_index(&rows)).map(|r| r.id.clone())
    }

    /// The selected actor, if the selected row is one.
    pub fn selected_actor(&self) -> Option<&ActorInfo> {
        let rows = self.rows();
        let i = self.cursor_index(&rows);
        rows.get(i).and_then(|r| r.info)
    }

    fn move_cursor(&mut self, to: impl FnOnce(usize, usize) -> usize) {
        let ids: Vec<RowId> = self.rows().into_iter().map(|r| r.id).collect();
        if ids.is_empty() {
            return;
        }
        let cur = self.cursor_index_of(&ids);
        let i = to(cur, ids.len()).min(ids.len() - 1);
        self.cursor = Some((ids[i].clone(), i));
    }

    fn cursor_index_of(&self, ids: &[RowId]) -> usize {
        match &self.cursor {
            None => 0,
            Some((id, idx)) => ids.iter().position(|r| r == id).unwrap_or_else(|| (*idx).min(ids.len() - 1)),
        }
    }

    fn select(&mut self, id: RowId) {
        let ids: Vec<RowId> = self.rows().into_iter().map(|r| r.id).collect();
        if let Some(i) = ids.iter().position(|r| *r == id) {
            self.cursor = Some((id, i));
        }
    }

    fn turn_page(&mut self, parent: &str, forward: bool) {
        let p = self.pages.entry(parent.to_string()).or_insert(0);
        *p = if forward { *p + 1 } else { p.saturating_sub(1) };
        // Land on the first entity of the new page going forward, the last going back.
        let ids: Vec<RowId> = self.rows().into_iter().map(|r| r.id).collect();
        let at = if forward {
            ids.iter().position(|r| *r == RowId::Earlier(parent.to_string())).map(|i| i + 1)
        } else {
            ids.iter().position(|r| *r == RowId::Later(parent.to_string())).and_then(|i| i.checked_sub(1))
        };
        let at = at.or_else(|| ids.iter().position(|r| *r == RowId::Actor(parent.to_string())));
        if let Some(i) = at {
            self.cursor = Some((ids[i].clone(), i));
        }
    }

    fn toggle(&mut self, path: &str) {
        if !self.toggled.remove(path) {
            self.toggled.insert(path.to_string());
        }
    }

    /// Keeps the cursor inside a tree panel `height` rows tall.
    pub fn fit_tree(&mut self, height: usize) {
        self.tree_height = height.max(1);
        let rows = self.rows();
        let (i, len) = (self.cursor_index(&rows), rows.len());
        drop(rows);
        self.tree_offset = self.tree_offset.min(len.saturating_sub(self.tree_height));
        if i < self.tree_offset {
            self.tree_offset = i;
        } else if i >= self.tree_offset + self.tree_height {
            self.tree_offset = i + 1 - self.tree_height;
        }
    }

    /// The selected node's metrics grouped by system.
    pub fn metric_groups(&self) -> Vec<Group> {
        let n = self.node();
        let Some(d) = &n.data else { return Vec::new() };
        let systems: Vec<String> = d.tree.children.iter().map(|s| s.path.trim_start_matches('/').to_string()).collect();
        metrics::group(&d.metrics, n.metric_history.front(), &systems)
    }

    /// Shows the systems' panels (`troupe_system::Panel`) on the nodes where they have
    /// something to show.
    pub fn with_panels(mut self, panels: Vec<&'static dyn troupe_system::Panel>) -> App {
        self.panels = Panels(panels);
        self
    }

    /// The systems' panels for the selected node, over the rate window, in the order
    /// the systems are listed; empty where no system has one to show.
    pub fn panel_views(&self) -> Vec<Box<dyn troupe_system::PanelView>> {
        let n = self.node();
        let Some(d) = &n.data else { return Vec::new() };
        self.panels.0.iter().filter_map(|p| p.summarize(&d.metrics, n.metric_history.front())).collect()
    }

    /// Index of the shown group in `groups`.
    pub fn metric_group_index(&self, groups: &[Group]) -> usize {
        self.metric_group.as_ref().and_then(|g| groups.iter().position(|x| &x.system == g)).unwrap_or(0)
    }

    fn step_group(&mut self, forward: bool) {
        let groups = self.metric_groups();
        if groups.is_empty() {
            return;
        }
        let i = self.metric_group_index(&groups);
        let j = if forward { (i + 1) % groups.len() } else { (i + groups.len() - 1) % groups.len() };
        self.metric_group = Some(groups[j].system.clone());
        self.metric_offset = 0;
    }

    pub fn on_key(&mut self, k: Key) -> Action {
        if self.help && !matches!(k, Key::Quit) {
            self.help = false;
            return Action::Continue;
        }
        match k {
            Key::Quit => return Action::Quit,
            Key::Help => self.help = true,
            Key::Escape => {}
            Key::Pause => self.paused = !self.paused,
            Key::NextNode => self.selected = (self.selected + 1) % self.nodes.len().max(1),
            Key::Tab | Key::BackTab => {
                let order = [Panel::Nodes, Panel::Tree, Panel::Metrics];
                let i = order.iter().position(|p| *p == self.focus).unwrap_or(0);
                let j = if k == Key::Tab { (i + 1) % 3 } else { (i + 2) % 3 };
                self.focus = order[j];
            }
            _ => match self.focus {
                Panel::Nodes => self.on_nodes_key(k),
                Panel::Tree => self.on_tree_key(k),
                Panel::Metrics => self.on_metrics_key(k),
            },
        }
        Action::Continue
    }

    fn on_nodes_key(&mut self, k: Key) {
        let last = self.nodes.len().saturating_sub(1);
        match k {
            Key::Up => self.selected = self.selected.saturating_sub(1),
            Key::Down => self.selected = (self.selected + 1).min(last),
            Key::Home => self.selected = 0,
            Key::End => self.selected = last,
            Key::Toggle | Key::Right => self.focus = Panel::Tree,
            _ => {}
        }
    }

    fn on_metrics_key(&mut self, k: Key) {
        match k {
            Key::Up => self.metric_offset = self.metric_offset.saturating_sub(1),
            Key::Down => self.metric_offset += 1,
            Key::Left => self.step_group(false),
            Key::Right | Key::Toggle => self.step_group(true),
            Key::Home => self.metric_offset = 0,
            _ => {}
        }
    }

    fn on_tree_key(&mut self, k: Key) {
        let page = self.tree_height.saturating_sub(1).max(1);
        match k {
            Key::Up => self.move_cursor(|i, _| i.saturating_sub(1)),
            Key::Down => self.move_cursor(|i, _| i + 1),
            Key::PageUp => self.move_cursor(|i, _| i.saturating_sub(page)),
            Key::PageDown => self.move_cursor(|i, _| i + page),
            Key::Home => self.move_cursor(|_, _| 0),
            Key::End => self.move_cursor(|_, n| n - 1),
            Key::Toggle | Key::Left | Key::Right => self.on_tree_fold(k),
            _ => {}
        }
    }

    fn on_tree_fold(&mut self, k: Key) {
        let rows = self.rows();
        let Some(row) = rows.get(self.cursor_index(&rows)) else { return };
        let (id, expandable, expanded) = (row.id.clone(), row.expandable, row.expanded);
        drop(rows);
        match (&id, k) {
            (RowId::Actor(p), Key::Toggle) if expandable => self.toggle(p),
            (RowId::Actor(p), Key::Right) if expandable && !expanded => self.toggle(p),
            (RowId::Actor(_), Key::Right) if expanded => self.move_cursor(|i, _| i + 1),
            (RowId::Actor(p), Key::Left) if expanded => self.toggle(p),
            (RowId::Actor(p), Key::Left) => {
                if let Some(parent) = parent_path(p) {
                    self.select(RowId::Actor(parent.to_string()));
                }
            }
            (RowId::Earlier(p), Key::Toggle) => self.turn_page(p, false),
            (RowId::Later(p), Key::Toggle | Key::Right) => self.turn_page(p, true),
            (RowId::Earlier(p) | RowId::Later(p), Key::Left) => self.select(RowId::Actor(p.clone())),
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;

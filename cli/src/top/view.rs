//! Draws `troupe top` from the app state: a header, the nodes with how each sees the
//! others, the selected node's supervision tree, the selected actor's details, the
//! node's metrics by system, the systems' own panels where they apply, and a
//! footer with the keys.
//!
//! Invariants: drawing reads the state and only moves the scroll offsets to keep the
//! cursor on screen; everything fits and stays readable at 80×24 (longer text is cut
//! at the panel edge, never wrapped over another panel); meaning never rests on color
//! alone (states are words), so the screen reads the same in `tmux capture-pane`.

use super::app::{App, NodeState, Panel, Row, RowId, Status, summarize};
use super::metrics::Group;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};
use std::time::{Duration, Instant};
use troupe_runtime::wire::introspect::{ActorInfo, ActorState, MemberState};

/// Node rows shown before the nodes panel scrolls.
const NODE_ROWS_MAX: usize = 8;

pub fn draw(f: &mut Frame, app: &mut App, now: Instant) {
    let node_rows = app.nodes.len().clamp(1, NODE_ROWS_MAX) as u16;
    let [head, nodes, middle, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(node_rows + 3),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(f.area());
    // The systems' panels take the full width under the rest, only on nodes where they
    // have something to show, and together at most half the height so the tree stays
    // usable at 80×24; the first listed system gets its rows first.
    let views = app.panel_views();
    let mut left_h = middle.height / 2;
    let heights: Vec<u16> = views
        .iter()
        .map(|v| {
            let h = v.height().min(left_h);
            left_h -= h;
            h
        })
        .collect();
    let [middle, panels] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(heights.iter().sum())]).areas(middle);
    // A followed trace takes the full width under the tree, at most half the height.
    let (middle, trace_area) = match app.trace {
        Some(_) => {
            let want = (app.trace_spans().len() as u16 + 2).clamp(3, (middle.height / 2).max(3));
            let [m, t] = Layout::vertical([Constraint::Min(0), Constraint::Length(want)]).areas(middle);
            (m, Some(t))
        }
        None => (middle, None),
    };
    let panel_areas = Layout::vertical(heights.iter().map(|h| Constraint::Length(*h))).split(panels);
    // The tree's rows are short (indent and a name); metric names need the width.
    let [left, right] = Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(middle);
    let details_h = if middle.height >= 24 { 11 } else { middle.height.saturating_sub(4).clamp(3, 9) };
    let [details, metrics] = Layout::vertical([Constraint::Length(details_h), Constraint::Min(3)]).areas(right);
    header(f, app, head);
    nodes_panel(f, app, nodes, now);
    tree_panel(f, app, left, now);
    details_panel(f, app, details);
    metrics_panel(f, app, metrics);
    if let Some(area) = trace_area {
        trace_panel(f, app, area);
    }
    let live = app.node().failure.is_none();
    for (v, area) in views.iter().zip(panel_areas.iter()) {
        if area.height > 0 {
            v.draw(f, *area, &app.node().name, live);
        }
    }
    footer(f, foot);
    if app.help {
        help(f, f.area());
    }
}

fn block(title: String, focused: bool) -> Block<'static> {
    let style = if focused { Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD) } else { Style::new() };
    Block::bordered().border_style(style).title(Span::styled(title, style))
}

/// `12s`, `4m05s`, `2h03m`: short enough for a table cell.
pub fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A rate in at most 6 columns: `0.4`, `12.0`, `950`, `12.3k`.
fn num_short(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{:.1}M", v / 1e6),
        a if a >= 1e3 => format!("{:.1}k", v / 1e3),
        a if a >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

fn header(f: &mut Frame, app: &App, area: Rect) {
    let up = (0..app.nodes.len()).filter(|i| app.nodes[*i].failure.is_none() && app.nodes[*i].last_ok.is_some());
    let mut spans = vec![
        " troupe top ".bold().reversed(),
        Span::raw(format!(
            " {} · {}/{} nodes up · every {} ms",
            app.title,
            up.count(),
            app.nodes.len(),
            app.refresh.as_millis()
        )),
    ];
    if app.paused {
        spans.push(" PAUSED (p resumes) ".bold().fg(Color::Black).bg(Color::Yellow));
    }
    f.render_widget(Line::from(spans), area);
}

fn member_cell(s: Option<MemberState>) -> Span<'static> {
    match s {
        Some(MemberState::Alive) => Span::styled("up   ", Style::new().fg(Color::Green)),
        Some(MemberState::Suspect) => Span::styled("susp ", Style::new().fg(Color::Yellow)),
        Some(MemberState::Down) => Span::styled("DOWN ", Style::new().fg(Color::Red).bold()),
        None => Span::raw("-    "),
    }
}

fn nodes_panel(f: &mut Frame, app: &App, area: Rect, now: Instant) {
    let w = app.nodes.iter().map(|n| n.name.len()).max().unwrap_or(4).max(4);
    let mut lines = vec![
        Line::from(format!(
            "  {:<w$}  {:<16}{:>8}{:>8}{:>8}  {}",
            "NODE",
            "STATUS",
            "UPTIME",
            "ACTORS",
            "MSG/S",
            app.nodes.iter().map(|n| format!("{:<5}", n.name)).collect::<String>()
        ))
        .dim(),
    ];
    let visible = app.nodes.len().clamp(1, NODE_ROWS_MAX);
    let offset = app.selected.saturating_sub(visible - 1);
    for (i, n) in app.nodes.iter().enumerate().skip(offset).take(visible) {
        let status = app.status(i, now);
        let (text, style) = match &status {
            Status::Waiting => ("waiting".to_string(), Style::new().fg(Color::DarkGray)),
            Status::Up => ("UP".to_string(), Style::new().fg(Color::Green).bold()),
            Status::Down { since_contact: Some(d), .. } => {
                (format!("DOWN {} ago", ago(*d)), Style::new().fg(Color::Red).bold())
            }
            Status::Down { since_contact: None, .. } => {
                ("DOWN never seen".to_string(), Style::new().fg(Color::Red).bold())
            }
        };
        let (uptime, actors, rate) = match (&status, &n.data) {
            (Status::Up, Some(d)) => {
                let since = n.last_ok.map(|t| now.saturating_duration_since(t)).unwrap_or_default();
                (
                    ago(Duration::from_millis(d.health.uptime_ms) + since),
                    summarize(&d.tree).actors.to_string(),
                    app.rates.msgs_per_sec(&n.name, "").map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into()),
                )
            }
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let sel = i == app.selected;
        let mut spans = vec![
            Span::raw(if sel { "▶ " } else { "  " }),
            Span::styled(format!("{:<w$}  ", n.name), if sel { Style::new().bold() } else { Style::new() }),
            Span::styled(format!("{text:<16}"), style),
            Span::raw(format!("{uptime:>8}{actors:>8}{rate:>8}  ")),
        ];
        spans.extend(app.nodes.iter().map(|o| member_cell(app.view_of(i, &o.name))));
        let mut line = Line::from(spans);
        if sel && app.focus == Panel::Nodes {
            line = line.style(Style::new().bg(Color::DarkGray));
        }
        lines.push(line);
    }
    let title = " Nodes · membership as each node sees the others ".to_string();
    f.render_widget(Paragraph::new(lines).block(block(title, app.focus == Panel::Nodes)), area);
}

fn state_span(s: ActorState) -> Option<Span<'static>> {
    match s {
        ActorState::Running => None,
        ActorState::Starting => Some(" starting".fg(Color::Cyan)),
        ActorState::Restarting => Some(" RESTARTING".fg(Color::Yellow).bold()),
        ActorState::Stopped => Some(" stopped".fg(Color::DarkGray)),
        ActorState::Failed => Some(" FAILED".fg(Color::Red).bold()),
    }
}

fn tree_line(row: &Row<'_>, selected: bool, focused: bool) -> Line<'static> {
    let mut spans = vec![Span::raw(if selected { "›" } else { " " }), Span::raw("  ".repeat(row.depth))];
    match (&row.id, row.info) {
        (RowId::Actor(_), Some(a)) => {
            spans.push(Span::raw(match (row.expandable, row.expanded) {
                (true, true) => "▾ ",
                (true, false) => "▸ ",
                _ => "  ",
            }));
            let name = if row.depth == 0 { a.path.as_str() } else { a.path.rsplit('/').next().unwrap_or(&a.path) };
            spans.push(Span::styled(
                name.to_string(),
                if a.kind == "system" { Style::new().bold() } else { Style::new() },
            ));
            // Kinds always show their count, so an empty kind still reads as one.
            if (row.expandable || a.kind == "kind") && a.kind != "system" {
                let s = summarize(a);
                let mut t = format!(" ({}", s.actors);
                if s.failed > 0 {
                    t.push_str(&format!(", {} failed", s.failed));
                }
                if s.restarting > 0 {
                    t.push_str(&format!(", {} restarting", s.restarting));
                }
                t.push(')');
                spans
                    .push(Span::styled(t, if s.failed > 0 { Style::new().fg(Color::Red) } else { Style::new().dim() }));
            }
            spans.extend(state_span(a.state));
            if a.mailbox_len > 0 {
                spans.push(format!(" mbox {}", a.mailbox_len).fg(Color::Yellow));
            }
            if a.restarts > 0 {
                spans.push(format!(" ↻{}", a.restarts).fg(Color::Yellow));
            }
        }
        (RowId::Earlier(_), _) => spans.push(format!("  … {} earlier (enter)", row.hidden).dim()),
        (RowId::Later(_), _) => spans.push(format!("  … {} more (enter)", row.hidden).dim()),
        _ => {}
    }
    let line = Line::from(spans);
    match (selected, focused) {
        (true, true) => line.style(Style::new().add_modifier(Modifier::REVERSED)),
        (true, false) => line.style(Style::new().add_modifier(Modifier::BOLD)),
        _ => line,
    }
}

fn tree_panel(f: &mut Frame, app: &mut App, area: Rect, now: Instant) {
    let focused = app.focus == Panel::Tree;
    let n: &NodeState = app.node();
    let mut title = format!(" Tree {} ", n.name);
    let status = app.status(app.selected, now);
    if let Status::Down { since_contact, reason } = &status {
        title = match since_contact {
            Some(d) => format!(" Tree {} · DOWN, as of {} ago ", n.name, ago(*d)),
            None => format!(" Tree {} · DOWN ", n.name),
        };
        if n.data.is_none() {
            let text = format!("{} has not answered yet: {reason}", n.name);
            f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }).block(block(title, focused)), area);
            return;
        }
    }
    if n.data.is_none() {
        let text = format!("waiting for {}…", n.name);
        f.render_widget(Paragraph::new(text).block(block(title, focused)), area);
        return;
    }
    // A node that stopped answering says why on the first line, above its last tree.
    let mut lines: Vec<Line> = Vec::new();
    if let Status::Down { reason, .. } = &status {
        let width = area.width.saturating_sub(2) as usize;
        lines.extend(
            wrap(&format!("not answering: {reason}"), width).into_iter().take(2).map(|l| l.fg(Color::Red).into()),
        );
    }
    let h = (area.height.saturating_sub(2) as usize).saturating_sub(lines.len());
    app.fit_tree(h);
    let rows = app.rows();
    let cur = app.cursor_index(&rows);
    lines.extend(rows.iter().enumerate().skip(app.tree_offset).take(h).map(|(i, r)| tree_line(r, i == cur, focused)));
    if rows.len() > h {
        title.push_str(&format!("{}/{} ", cur + 1, rows.len()));
    }
    f.render_widget(Paragraph::new(lines).block(block(title, focused)), area);
}

fn field(label: &str, value: impl Into<String>) -> Line<'static> {
    Line::from(vec![Span::styled(format!("{label:<9}"), Style::new().dim()), Span::raw(value.into())])
}

fn details_panel(f: &mut Frame, app: &App, area: Rect) {
    let stale = app.node().failure.is_some();
    let title = if stale { " Actor (stale) " } else { " Actor " }.to_string();
    let width = area.width.saturating_sub(2) as usize;
    let lines = match app.selected_row() {
        Some(RowId::Actor(_)) => app.selected_actor().map(|a| actor_lines(app, a, width)).unwrap_or_default(),
        Some(RowId::Earlier(p) | RowId::Later(p)) => vec![
            field("children", format!("of {p} on other pages")),
            Line::from("enter turns the page; ← goes back up").dim(),
        ],
        None => vec![Line::from("nothing selected").dim()],
    };
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(block(title, false)), area);
}

fn actor_lines(app: &App, a: &ActorInfo, width: usize) -> Vec<Line<'static>> {
    let node = &app.node().name;
    let mut state = vec![Span::raw(a.kind.clone()), Span::raw(" ·")];
    spans_state(&mut state, a.state);
    let supervisor = !a.strategy.is_empty();
    let cap = if a.mailbox_cap == u64::MAX { "∞".to_string() } else { a.mailbox_cap.to_string() };
    // Rates of a node that stopped answering would describe the past as if it were now.
    let live = app.node().failure.is_none();
    let per_min = app
        .rates
        .restarts_per_min(node, &a.path)
        .filter(|_| live)
        .map(|r| format!(" ({r:.1}/min)"))
        .unwrap_or_default();
    let rate = app
        .rates
        .msgs_per_sec(node, &a.path)
        .filter(|_| live)
        .map(|r| format!("{r:.1} msg/s"))
        .unwrap_or_else(|| "-".into());
    let mut lines = vec![
        field("path", a.path.clone()),
        Line::from([vec![Span::styled(format!("{:<9}", "kind"), Style::new().dim())], state].concat()),
        field("restarts", format!("{}{per_min}", a.restarts)),
        field("rate", rate),
    ];
    // A supervisor's own mailbox only carries child exits: its strategy says more.
    if !supervisor {
        lines.insert(2, field("mailbox", format!("{}/{cap} · handled {}", a.mailbox_len, a.handled)));
    }
    if supervisor {
        let s = summarize(a);
        lines.push(field("strategy", format!("{} · {} below, {} failed", a.strategy, s.actors, s.failed)));
    }
    if let Some(e) = &a.last_error {
        for (i, part) in wrap(e, width.saturating_sub(9)).into_iter().enumerate() {
            let label = if i == 0 { "error" } else { "" };
            lines.push(Line::from(vec![Span::styled(format!("{label:<9}"), Style::new().dim()), part.fg(Color::Red)]));
        }
    }
    lines
}

/// Word wrap to `width` columns (a longer word is cut), so continuation lines line up
/// under the value instead of under the label.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        let word: String = word.chars().take(width).collect();
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

fn spans_state(out: &mut Vec<Span<'static>>, s: ActorState) {
    match state_span(s) {
        Some(sp) => out.push(sp),
        None => out.push(" running".fg(Color::Green)),
    }
}

fn metrics_panel(f: &mut Frame, app: &mut App, area: Rect) {
    let groups: Vec<Group> = app.metric_groups();
    let focused = app.focus == Panel::Metrics;
    let live = app.node().failure.is_none();
    let Some(g) = groups.get(app.metric_group_index(&groups)) else {
        f.render_widget(Paragraph::new("no metrics yet").block(block(" Metrics ".into(), focused)), area);
        return;
    };
    let i = app.metric_group_index(&groups);
    let h = area.height.saturating_sub(2) as usize;
    app.metric_offset = app.metric_offset.min(g.series.len().saturating_sub(h));
    let title = format!(" Metrics {} · {} ({}/{}) ←→ ", app.node().name, g.system, i + 1, groups.len());
    let inner = area.width.saturating_sub(2) as usize;
    let name_w = inner.saturating_sub(15).max(8);
    let lines: Vec<Line> = g
        .series
        .iter()
        .skip(app.metric_offset)
        .take(h)
        .map(|s| {
            let mut name = if s.labels.is_empty() { s.name.clone() } else { format!("{} {}", s.name, s.labels) };
            if name.chars().count() > name_w {
                name = name.chars().take(name_w.saturating_sub(1)).collect::<String>() + "…";
            }
            let rate = s.rate.filter(|_| live).map(|r| format!("{}/s", num_short(r))).unwrap_or_default();
            Line::from(vec![
                Span::raw(format!("{name:<name_w$}")),
                Span::raw(format!("{:>7}", num(s.value))).bold(),
                Span::raw(format!("{rate:>8}")).fg(Color::Cyan),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block(title, focused)), area);
}

/// The followed trace's spans as a waterfall, full width: start and duration in ms from
/// the first span, the node, a bar placing the span in the trace's time, the span, its
/// target and its fields (escaped: they may carry user data).
fn trace_panel(f: &mut Frame, app: &App, area: Rect) {
    let focused = false;
    let id = app.trace.unwrap_or_default();
    let spans = app.trace_spans();
    let nodes: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.node.as_str()).collect();
    let h = area.height.saturating_sub(2) as usize;
    let shown = if spans.len() > h { format!(", the first {h}") } else { String::new() };
    let title = format!(" Trace {id:016x} · {} spans on {} nodes{shown} ", spans.len(), nodes.len());
    if spans.is_empty() {
        let text = "no spans of this trace (kept for sampled requests; `troupe ask` prints the id)";
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }).block(block(title, focused)), area);
        return;
    }
    let t0 = spans[0].start_unix_us;
    let end = spans.iter().map(|s| s.start_unix_us + s.duration_us).max().unwrap_or(t0).max(t0 + 1);
    let inner = area.width.saturating_sub(2) as usize;
    const BAR: usize = 12;
    let lines: Vec<Line> = spans
        .iter()
        .take(h)
        .map(|s| {
            let scale = |us: u64| ((us.saturating_sub(t0)) as f64 / (end - t0) as f64 * BAR as f64) as usize;
            let (from, to) = (scale(s.start_unix_us).min(BAR - 1), scale(s.start_unix_us + s.duration_us));
            let bar: String = (0..BAR).map(|i| if i >= from && i <= to.max(from) { '█' } else { '·' }).collect();
            let fields: Vec<String> = s.fields.iter().map(|(k, v)| format!("{}={:?}", k.escape_debug(), v)).collect();
            let mut text = format!("{} {} {}", s.name, s.target, fields.join(" "));
            let room = inner.saturating_sub(8 + 8 + 5 + BAR + 4);
            if text.chars().count() > room {
                text = text.chars().take(room.saturating_sub(1)).collect::<String>() + "…";
            }
            Line::from(vec![
                Span::raw(format!("{:>8.1}", (s.start_unix_us - t0) as f64 / 1000.0)),
                Span::raw(format!("{:>8.1} ", s.duration_us as f64 / 1000.0)).bold(),
                Span::raw(format!("{:<4} ", s.node)).fg(Color::Cyan),
                Span::raw(bar).fg(Color::Yellow),
                Span::raw(format!(" {text}")),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block(title, focused)), area);
}

pub const FOOTER_KEYS: [(&str, &str); 8] = [
    ("q", "quit"),
    ("↑↓/jk", "move"),
    ("⏎/space", "expand"),
    ("←→", "fold"),
    ("tab", "panel"),
    ("n", "node"),
    ("p", "pause"),
    ("?", "help"),
];

fn footer(f: &mut Frame, area: Rect) {
    let mut spans = vec![Span::raw(" ")];
    for (k, what) in FOOTER_KEYS {
        spans.push(k.bold().fg(Color::Cyan));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    f.render_widget(Line::from(spans), area);
}

const HELP: [(&str, &str); 14] = [
    ("q, ctrl-c", "quit"),
    ("↑ ↓, j k", "move in the focused panel"),
    ("pgup pgdn, home end", "move a page, to the ends"),
    ("enter, space", "expand or collapse; turn a page"),
    ("→ ←", "expand / collapse, or go to the parent"),
    ("tab, shift-tab", "focus nodes → tree → metrics"),
    ("n", "show the next node"),
    ("← → (metrics)", "the previous / next system"),
    ("p", "pause the screen (keep reading)"),
    ("--trace ID", "a panel follows that trace's spans"),
    ("?", "this help; any key closes it"),
    ("", ""),
    ("DOWN 12s ago", "not answering; last data kept, marked"),
    ("up / susp / DOWN", "that row's node's view of the column"),
];

fn help(f: &mut Frame, area: Rect) {
    let w = 64.min(area.width);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| Line::from(vec![format!(" {k:<20}").bold().fg(Color::Cyan), Span::raw(*what)]))
        .collect();
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(lines).block(Block::bordered().title(" keys ")), r);
}

//! The chat panel of `troupe top`: per node, WebSocket sessions and users online, and
//! over the window between two snapshots messages accepted, events delivered and
//! catch-ups per second, with the sends the rate limit refused and the notes full
//! session queues missed.
//!
//! Invariants: pure (no I/O, no clock); a figure that needs an earlier snapshot is `-`
//! without one, never 0; a counter that went backwards restarted in between and its
//! reading is all growth (`counter_increase`).

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use troupe_runtime::wire::introspect::MetricsSnapshot;
use troupe_system::{Panel, PanelView, counter_increase};

pub const SESSIONS: &str = "troupe_chat_sessions";
pub const ONLINE: &str = "troupe_chat_online_users";
pub const ACCEPTED: &str = "troupe_chat_messages_accepted_total";
pub const DELIVERED: &str = "troupe_chat_events_delivered_total";
pub const CATCH_UPS: &str = "troupe_chat_catch_ups_total";
pub const LIMITED: &str = "troupe_chat_sends_limited_total";
pub const MISSED: &str = "troupe_chat_notes_missed_total";

/// One node's chat figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatStats {
    pub sessions: f64,
    pub online: f64,
    /// Per second over the window; `None` without an earlier snapshot.
    pub accepted_per_s: Option<f64>,
    pub delivered_per_s: Option<f64>,
    pub catch_ups_per_s: Option<f64>,
    /// Since the node started.
    pub limited: f64,
    pub missed: f64,
}

fn value(s: &MetricsSnapshot, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for m in s.metrics.iter().filter(|m| m.name == name) {
        found = true;
        sum += m.value;
    }
    found.then_some(sum)
}

/// The node's figures; `None` when it runs no chat gateway.
pub fn summarize(now: &MetricsSnapshot, earlier: Option<&MetricsSnapshot>) -> Option<ChatStats> {
    let sessions = value(now, SESSIONS)?;
    let rate = |name: &str| {
        let e = earlier?;
        let secs = (now.unix_ms.checked_sub(e.unix_ms)? as f64) / 1000.0;
        if secs <= 0.0 {
            return None;
        }
        Some(counter_increase(value(e, name).unwrap_or(0.0), value(now, name).unwrap_or(0.0)) / secs)
    };
    Some(ChatStats {
        sessions,
        online: value(now, ONLINE).unwrap_or(0.0),
        accepted_per_s: rate(ACCEPTED),
        delivered_per_s: rate(DELIVERED),
        catch_ups_per_s: rate(CATCH_UPS),
        limited: value(now, LIMITED).unwrap_or(0.0),
        missed: value(now, MISSED).unwrap_or(0.0),
    })
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 999.5 => format!("{v:.0}"),
        Some(v) if v < 999_500.0 => format!("{:.1}k", v / 1e3),
        Some(v) => format!("{:.1}M", v / 1e6),
    }
}

/// The panel (`System::panel`).
pub struct ChatPanel;

impl Panel for ChatPanel {
    fn summarize(&self, now: &MetricsSnapshot, earlier: Option<&MetricsSnapshot>) -> Option<Box<dyn PanelView>> {
        summarize(now, earlier).map(|s| Box::new(s) as Box<dyn PanelView>)
    }
}

impl PanelView for ChatStats {
    fn height(&self) -> u16 {
        4
    }

    fn draw(&self, f: &mut Frame, area: Rect, node: &str, live: bool) {
        let dim = if live { Style::default() } else { Style::default().fg(Color::DarkGray) };
        let header = ["SESSIONS", "ONLINE", "MSG/S", "DELIV/S", "CATCHUP/S", "LIMITED", "MISSED"];
        let values = [
            num(Some(self.sessions)),
            num(Some(self.online)),
            num(self.accepted_per_s),
            num(self.delivered_per_s),
            num(self.catch_ups_per_s),
            num(Some(self.limited)),
            num(Some(self.missed)),
        ];
        let row = |cells: Vec<String>| {
            Line::from(cells.into_iter().map(|c| Span::raw(format!("{c:>10}"))).collect::<Vec<_>>())
        };
        let title = if live { format!(" chat on {node} ") } else { format!(" chat on {node} (not answering) ") };
        let text = vec![row(header.iter().map(|h| h.to_string()).collect()).bold(), row(values.to_vec())];
        f.render_widget(Paragraph::new(text).style(dim).block(Block::bordered().title(title)), area);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_runtime::wire::introspect::Metric;

    fn m(name: &str, value: f64) -> Metric {
        Metric { name: name.into(), help: String::new(), kind: "counter".into(), labels: vec![], value }
    }
    fn snap(unix_ms: u64, metrics: Vec<Metric>) -> MetricsSnapshot {
        MetricsSnapshot { node: "n1".into(), unix_ms, metrics }
    }

    #[test]
    fn rates_need_an_earlier_snapshot_and_a_restart_is_growth() {
        assert!(summarize(&snap(1000, vec![m("troupe_actors", 1.0)]), None).is_none(), "no chat here");
        let now = snap(3000, vec![m(SESSIONS, 12.0), m(ONLINE, 9.0), m(ACCEPTED, 500.0), m(DELIVERED, 40.0)]);
        let alone = summarize(&now, None).unwrap();
        assert_eq!((alone.sessions, alone.accepted_per_s), (12.0, None));
        let before = snap(1000, vec![m(SESSIONS, 10.0), m(ACCEPTED, 100.0), m(DELIVERED, 100.0)]);
        let s = summarize(&now, Some(&before)).unwrap();
        assert_eq!(s.accepted_per_s, Some(200.0));
        assert_eq!(s.delivered_per_s, Some(20.0), "went backwards: a restart, all 40 are growth over 2 s");
        let lines = troupe_system::screen::render(80, 4, |f| s.draw(f, f.area(), "n1", true));
        troupe_system::screen::assert_has(&lines, &["chat on n1", "SESSIONS", "MSG/S", "200", "12"]);
        let stale = troupe_system::screen::render(80, 4, |f| alone.draw(f, f.area(), "n2", false));
        troupe_system::screen::assert_has(&stale, &["not answering", "-"]);
    }
}

//! A Jepsen-style checker of chat histories: from what senders were told was accepted
//! and what every client received, in the order it received it, it counts lost,
//! duplicated and reordered messages per conversation. The tests (`tests/chat.rs`) and
//! the benchmark judge delivery with it; it knows nothing of how the histories were
//! made.

use std::collections::{BTreeMap, HashMap};

/// A message its sender was told is durable: (conversation, sender, client id) at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub conv: String,
    pub from: String,
    pub id: String,
    pub seq: u64,
}

/// One message as a client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub conv: String,
    pub seq: u64,
    pub from: String,
    pub id: String,
}

/// One client's whole history: whose device it is, the conversations it must receive
/// everything of, and what it received, in order (across all its reconnects).
#[derive(Debug, Clone, Default)]
pub struct ClientHistory {
    pub name: String,
    pub conversations: Vec<String>,
    pub received: Vec<Received>,
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Acknowledged messages checked, times clients that had to receive each.
    pub expected_deliveries: u64,
    /// An acknowledged message a client of its conversation never received.
    pub lost: u64,
    /// A sequence number received twice by one client, or one (sender, id) at two
    /// sequence numbers.
    pub duplicates: u64,
    /// A sequence number received after a higher one of the same conversation.
    pub order_violations: u64,
    /// A message received at another sequence number than its sender was told.
    pub mismatched: u64,
    /// The first few problems, readable.
    pub examples: Vec<String>,
}

impl Report {
    /// No message lost, duplicated, reordered or misnumbered.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.order_violations == 0 && self.mismatched == 0
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 20 {
            self.examples.push(what);
        }
    }
}

/// Checks `clients` against `acked`.
pub fn check(acked: &[Acked], clients: &[ClientHistory]) -> Report {
    let mut r = Report::default();
    // (conv, from, id) → seq the sender was told; two different numbers for one id is
    // a duplicate on the server's side.
    let mut told: HashMap<(&str, &str, &str), u64> = HashMap::new();
    for a in acked {
        if let Some(prev) = told.insert((&a.conv, &a.from, &a.id), a.seq)
            && prev != a.seq
        {
            r.duplicates += 1;
            r.note(format!("{}: {}'s message {} acknowledged at {prev} and at {}", a.conv, a.from, a.id, a.seq));
        }
    }
    for c in clients {
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        let mut got: HashMap<(&str, &str, &str), u64> = HashMap::new();
        for m in &c.received {
            let l = last.entry(&m.conv).or_insert(0);
            if m.seq == *l {
                r.duplicates += 1;
                r.note(format!("{}: {} #{} received twice", c.name, m.conv, m.seq));
            } else if m.seq < *l {
                r.order_violations += 1;
                r.note(format!("{}: {} #{} received after #{l}", c.name, m.conv, m.seq));
            } else {
                *l = m.seq;
            }
            if let Some(prev) = got.insert((&m.conv, &m.from, &m.id), m.seq)
                && prev != m.seq
            {
                r.duplicates += 1;
                r.note(format!("{}: {}'s message {} in {} at #{prev} and #{}", c.name, m.from, m.id, m.conv, m.seq));
            }
            if let Some(seq) = told.get(&(m.conv.as_str(), m.from.as_str(), m.id.as_str()))
                && *seq != m.seq
            {
                r.mismatched += 1;
                r.note(format!(
                    "{}: {} message {} received at #{} but acknowledged at #{seq}",
                    c.name, m.conv, m.id, m.seq
                ));
            }
        }
        for a in acked.iter().filter(|a| c.conversations.contains(&a.conv)) {
            r.expected_deliveries += 1;
            if !got.contains_key(&(a.conv.as_str(), a.from.as_str(), a.id.as_str())) {
                r.lost += 1;
                r.note(format!("{}: {} message {} from {} (#{}) never received", c.name, a.conv, a.id, a.from, a.seq));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(conv: &str, from: &str, id: &str, seq: u64) -> Acked {
        Acked { conv: conv.into(), from: from.into(), id: id.into(), seq }
    }
    fn rx(conv: &str, seq: u64, from: &str, id: &str) -> Received {
        Received { conv: conv.into(), seq, from: from.into(), id: id.into() }
    }
    fn client(received: Vec<Received>) -> ClientHistory {
        ClientHistory { name: "c".into(), conversations: vec!["x".into()], received }
    }

    #[test]
    fn a_clean_history_passes() {
        let a = [acked("x", "a", "1", 1), acked("x", "b", "1", 2)];
        let r = check(&a, &[client(vec![rx("x", 1, "a", "1"), rx("x", 2, "b", "1")])]);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.expected_deliveries, 2);
    }

    #[test]
    fn each_kind_of_fault_is_counted() {
        let a = [acked("x", "a", "1", 1), acked("x", "b", "1", 2), acked("x", "a", "2", 3)];
        let lost = check(&a, &[client(vec![rx("x", 1, "a", "1"), rx("x", 3, "a", "2")])]);
        assert_eq!((lost.lost, lost.ok()), (1, false), "{lost:?}");
        let dup = check(
            &a,
            &[client(vec![rx("x", 1, "a", "1"), rx("x", 1, "a", "1"), rx("x", 2, "b", "1"), rx("x", 3, "a", "2")])],
        );
        assert_eq!(dup.duplicates, 1, "{dup:?}");
        let reordered = check(&a, &[client(vec![rx("x", 2, "b", "1"), rx("x", 1, "a", "1"), rx("x", 3, "a", "2")])]);
        assert_eq!(reordered.order_violations, 1, "{reordered:?}");
        let twice = check(&[acked("x", "a", "1", 1), acked("x", "a", "1", 2)], &[]);
        assert_eq!(twice.duplicates, 1, "one id acknowledged at two numbers");
        let moved = check(&a, &[client(vec![rx("x", 1, "a", "1"), rx("x", 2, "a", "2"), rx("x", 3, "b", "1")])]);
        assert_eq!(moved.mismatched, 2, "{moved:?}");
        assert!(!moved.examples.is_empty());
    }

    #[test]
    fn a_client_outside_a_conversation_owes_nothing() {
        let a = [acked("y", "a", "1", 1)];
        assert!(check(&a, &[client(vec![])]).ok());
    }
}

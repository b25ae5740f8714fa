//! Incremental detokenization with stop strings.
//!
//! Tokens arrive one by one; a token may end in the middle of a UTF-8 character,
//! and the text may be the beginning of a stop string. `TextStream` emits only
//! text that is final: complete characters, and never a tail that could still
//! become a stop string. Invariant: the concatenation of everything emitted
//! equals the decoded text truncated at the first stop string (tested).

#[derive(Debug, Default, Clone)]
pub struct TextStream {
    pending: Vec<u8>,
    /// Decoded text not yet emitted (held back for stop-string matching).
    held: String,
    stop: Vec<String>,
    hold: usize,
    stopped: bool,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> TextStream {
        // Keep back up to the longest stop string minus one byte.
        let hold = stop.iter().map(|s| s.len()).max().unwrap_or(1).saturating_sub(1);
        TextStream { stop, hold, ..Default::default() }
    }

    /// Feed a token's bytes. Returns (text now final, whether a stop string hit).
    pub fn push(&mut self, bytes: &[u8]) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => {
                // Invalid bytes (not just an unfinished char): emit U+FFFD for them.
                let upto = e.valid_up_to() + e.error_len().unwrap_or(1);
                self.held.push_str(&String::from_utf8_lossy(&self.pending[..upto]));
                self.pending.drain(..upto);
                return self.push(&[]);
            }
            Err(e) => e.valid_up_to(),
        };
        // valid <= len and is a char boundary, so this cannot fail.
        if let Ok(s) = std::str::from_utf8(&self.pending[..valid]) {
            self.held.push_str(s);
        }
        self.pending.drain(..valid);
        if let Some(at) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.held.truncate(at);
            self.stopped = true;
            return (std::mem::take(&mut self.held), true);
        }
        let mut cut = self.held.len().saturating_sub(self.hold);
        while !self.held.is_char_boundary(cut) {
            cut -= 1;
        }
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// End of generation: everything held back is final now.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&String::from_utf8_lossy(&self.pending));
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_utf8_is_held_until_complete() {
        let mut t = TextStream::new(vec![]);
        let e = "é".as_bytes();
        assert_eq!(t.push(&e[..1]), (String::new(), false));
        assert_eq!(t.push(&e[1..]), ("é".to_string(), false));
    }

    #[test]
    fn stop_string_across_tokens_is_cut() {
        let mut t = TextStream::new(vec!["END".into()]);
        let mut out = String::new();
        for piece in ["Hello E", "N", "D tail"] {
            let (s, stop) = t.push(piece.as_bytes());
            out.push_str(&s);
            if stop {
                break;
            }
        }
        assert_eq!(out, "Hello ");
    }

    proptest! {
        #[test]
        fn emitted_text_is_decoded_text_cut_at_stop(
            text in "[a-cé ]{0,40}",
            cuts in prop::collection::vec(0usize..50, 0..10),
            stop in "[a-c]{1,3}",
        ) {
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            points.push(bytes.len());
            points.sort();
            let mut t = TextStream::new(vec![stop.clone()]);
            let (mut out, mut prev, mut stopped) = (String::new(), 0, false);
            for p in points {
                let (s, st) = t.push(&bytes[prev..p]);
                out.push_str(&s);
                prev = p;
                if st { stopped = true; break; }
            }
            if !stopped { out.push_str(&t.finish()); }
            let want = match text.find(&stop) { Some(i) => &text[..i], None => &text[..] };
            prop_assert_eq!(out, want);
        }
    }
}

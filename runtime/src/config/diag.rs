//! Diagnostics for configuration files, reported like a compiler: every error at
//! once, each with its file, line and column, the offending line, and a fix.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// One configuration error, displayed like a compiler error (`error:`, location,
/// the source line underlined, `help:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    /// The file the error is in.
    pub file: PathBuf,
    /// Line, counted from 1.
    pub line: usize,
    /// Column in characters, counted from 1.
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something to say.
    pub help: Option<String>,
    /// The source line the error points at, and the width of the underline.
    pub snippet: Option<(String, usize)>,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "  --> {}:{}:{}", self.file.display(), self.line, self.col)?;
        if let Some((text, width)) = &self.snippet {
            let n = self.line.to_string();
            let pad = " ".repeat(n.len());
            writeln!(f, "{pad} |")?;
            writeln!(f, "{n} | {text}")?;
            writeln!(f, "{pad} | {}{}", " ".repeat(self.col.saturating_sub(1)), "^".repeat((*width).max(1)))?;
        }
        if let Some(h) = &self.help {
            writeln!(f, "  = help: {h}")?;
        }
        Ok(())
    }
}

/// A growing list of diagnostics, shared by everything that checks one load.
#[derive(Debug, Default)]
pub struct Diags(RefCell<Vec<Diag>>);

impl Diags {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds one diagnostic.
    pub fn push(&self, d: Diag) {
        self.0.borrow_mut().push(d);
    }
    /// Whether nothing has been reported.
    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
    /// How many diagnostics have been reported so far.
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }
    /// The diagnostics, in the order they were reported.
    pub fn into_vec(self) -> Vec<Diag> {
        self.0.into_inner()
    }
    /// An error about a whole file (missing, unreadable).
    pub fn file_error(&self, file: &Path, message: impl Into<String>, help: Option<String>) {
        self.push(Diag { file: file.to_path_buf(), line: 1, col: 1, message: message.into(), help, snippet: None });
    }
}

/// Every error of a failed load, rendered together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diag>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        write!(f, "{} error{} in the configuration", self.0.len(), if self.0.len() == 1 { "" } else { "s" })
    }
}

/// One parsed TOML file: its values, and where each key and value sits in the text.
#[derive(Debug)]
pub struct Doc {
    /// The file it was read from.
    pub file: PathBuf,
    /// The file's text, which spans index into.
    pub text: String,
    /// The parsed top-level table.
    pub root: toml::Table,
    /// Dotted path (`actors.store.placement`, `nodes[1].name`) → (key span, value span).
    spans: HashMap<String, (Range<usize>, Range<usize>)>,
}

impl Doc {
    /// Parses `text`; syntax errors go to `diags` and give `None`.
    pub fn parse(file: &Path, text: String, diags: &Diags) -> Option<Doc> {
        let (spanned, errors) = DeTable::parse_recoverable(&text);
        let empty =
            Doc { file: file.to_path_buf(), text: String::new(), root: toml::Table::new(), spans: HashMap::new() };
        if !errors.is_empty() {
            let probe = Doc { text: text.clone(), ..empty };
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                diags.push(probe.diag_at(span, format!("TOML syntax: {}", e.message().trim()), None));
            }
            return None;
        }
        let mut spans = HashMap::new();
        index_table(spanned.get_ref(), "", &mut spans);
        match toml::from_str::<toml::Table>(&text) {
            Ok(root) => Some(Doc { file: file.to_path_buf(), text, root, spans }),
            Err(e) => {
                let probe = Doc { text: text.clone(), ..empty };
                diags.push(probe.diag_at(e.span().unwrap_or(0..0), format!("TOML: {}", e.message().trim()), None));
                None
            }
        }
    }

    /// Byte range of the value at dotted `path` (or of its closest enclosing path
    /// that has one); `0..0` when none does.
    pub fn value_span(&self, path: &str) -> Range<usize> {
        self.lookup(path).map(|s| s.1).unwrap_or(0..0)
    }

    /// Byte range of the key at dotted `path`, with the same fallback as
    /// [`Doc::value_span`].
    pub fn key_span(&self, path: &str) -> Range<usize> {
        self.lookup(path).map(|s| s.0).unwrap_or(0..0)
    }

    /// Falls back to the closest enclosing path that has a span.
    fn lookup(&self, path: &str) -> Option<(Range<usize>, Range<usize>)> {
        let mut p = path;
        loop {
            if let Some(s) = self.spans.get(p) {
                return Some(s.clone());
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// A diagnostic pointing at the byte range `span` of this file: line, column and
    /// the underlined source line.
    pub fn diag_at(&self, span: Range<usize>, message: String, help: Option<String>) -> Diag {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = self.text[line_start..start].chars().count() + 1;
        let line_text: String = self.text[line_start..].lines().next().unwrap_or("").to_string();
        let width = if span.end > span.start {
            self.text[start..span.end.min(self.text.len())].lines().next().map(|l| l.chars().count()).unwrap_or(1)
        } else {
            1
        };
        let snippet = if self.text.is_empty() { None } else { Some((line_text, width)) };
        Diag { file: self.file.clone(), line, col, message, help, snippet }
    }

    /// Reports an error at the value of dotted `path` (`nodes[1].addr`).
    pub fn error(&self, diags: &Diags, path: &str, message: impl Into<String>, help: Option<String>) {
        diags.push(self.diag_at(self.value_span(path), message.into(), help));
    }

    /// Reports an error at the key of dotted `path`, for errors about the name itself.
    pub fn key_error(&self, diags: &Diags, path: &str, message: impl Into<String>, help: Option<String>) {
        diags.push(self.diag_at(self.key_span(path), message.into(), help));
    }
}

fn index_table(t: &DeTable<'_>, prefix: &str, out: &mut HashMap<String, (Range<usize>, Range<usize>)>) {
    for (k, v) in t.iter() {
        let path = if prefix.is_empty() { k.get_ref().to_string() } else { format!("{prefix}.{}", k.get_ref()) };
        out.insert(path.clone(), (k.span(), v.span()));
        index_value(v.get_ref(), &path, out);
    }
}

fn index_value(v: &DeValue<'_>, path: &str, out: &mut HashMap<String, (Range<usize>, Range<usize>)>) {
    match v {
        DeValue::Table(t) => index_table(t, path, out),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.insert(p.clone(), (item.span(), item.span()));
                index_value(item.get_ref(), &p, out);
            }
        }
        _ => {}
    }
}

/// Edit distance, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// "did you mean `x`?" when a candidate is close enough, otherwise the list.
pub fn suggest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>, what: &str) -> String {
    let all: Vec<&str> = candidates.into_iter().collect();
    let best = all.iter().map(|c| (edit_distance(wrong, c), *c)).min();
    let mut s = String::new();
    if let Some((d, c)) = best
        && d <= (wrong.len() / 3).max(2)
    {
        let _ = write!(s, "did you mean `{c}`? ");
    }
    if all.is_empty() {
        let _ = write!(s, "there are no {what}");
    } else {
        let _ = write!(s, "{what}: {}", all.join(", "));
    }
    s
}

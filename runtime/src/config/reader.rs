//! A checked reader over one TOML table. Each getter records what was read and
//! reports a wrong type or an out-of-range value to [`Diags`]; `finish` reports the
//! keys nobody read as unknown fields. A bad value yields `None` or the default, so
//! checking goes on and every error is collected.

use super::diag::{Diags, Doc, suggest};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// A reader over one table of a [`Doc`], reporting to a shared [`Diags`]. Call
/// [`Tbl::finish`] once every known key has been read.
pub struct Tbl<'a> {
    /// The file the table is in.
    pub doc: &'a Doc,
    /// Where errors go.
    pub diags: &'a Diags,
    /// Dotted path of this table (empty for the root).
    pub path: String,
    /// The table itself; reading it directly does not mark keys as read.
    pub table: &'a toml::Table,
    seen: RefCell<BTreeSet<String>>,
}

impl<'a> Tbl<'a> {
    /// A reader over the top level of `doc`.
    pub fn root(doc: &'a Doc, diags: &'a Diags) -> Self {
        Self::new(doc, diags, String::new(), &doc.root)
    }

    /// A reader over `table`, found at dotted `path` in `doc`.
    pub fn new(doc: &'a Doc, diags: &'a Diags, path: String, table: &'a toml::Table) -> Self {
        Self { doc, diags, path, table, seen: RefCell::new(BTreeSet::new()) }
    }

    /// Dotted path of `key` in this table (`nodes[0].addr`).
    pub fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) }
    }

    /// Where this table is, for messages: `[actors.store]` or `the top level`.
    pub fn place(&self) -> String {
        if self.path.is_empty() { "the top level".into() } else { format!("[{}]", self.path) }
    }

    /// Reports an error at the value of `key` in this table.
    pub fn error(&self, key: &str, message: impl Into<String>, help: Option<String>) {
        self.doc.error(self.diags, &self.child_path(key), message, help);
    }

    fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.seen.borrow_mut().insert(key.to_string());
        self.table.get(key)
    }

    /// Whether `key` is present; does not mark it as read.
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn type_error(&self, key: &str, want: &str, got: &toml::Value) {
        self.error(key, format!("`{key}` in {} must be {want}, not {}", self.place(), got.type_str()), None);
    }

    /// A required string; reports it missing or of the wrong type and gives `None`.
    pub fn req_str(&self, key: &str) -> Option<String> {
        match self.get(key) {
            None => {
                self.doc.error(
                    self.diags,
                    &self.path,
                    format!("{} is missing `{key}`", self.place()),
                    Some(format!("add `{key} = \"...\"`")),
                );
                None
            }
            Some(v) => self.as_str(key, v),
        }
    }

    /// An optional string; `None` when absent or (reported) not a string.
    pub fn opt_str(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| self.as_str(key, v))
    }

    fn as_str(&self, key: &str, v: &toml::Value) -> Option<String> {
        match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.type_error(key, "a string", v);
                None
            }
        }
    }

    /// An integer in `lo..=hi`, with its unit named in the error.
    pub fn u64_in(&self, key: &str, default: u64, lo: u64, hi: u64, unit: &str) -> u64 {
        match self.get(key) {
            None => default,
            Some(toml::Value::Integer(i)) if *i >= 0 && (*i as u64) >= lo && (*i as u64) <= hi => *i as u64,
            Some(toml::Value::Integer(i)) => {
                self.error(
                    key,
                    format!("`{key}` = {i} is out of range"),
                    Some(format!("use a value from {lo} to {hi} ({unit})")),
                );
                default
            }
            Some(v) => {
                self.type_error(key, &format!("an integer ({unit})"), v);
                default
            }
        }
    }

    /// Like [`Tbl::u64_in`] with no default: `None` when absent; a bad value is
    /// reported and gives `Some(lo)`.
    pub fn opt_u64_in(&self, key: &str, lo: u64, hi: u64, unit: &str) -> Option<u64> {
        if self.has(key) { Some(self.u64_in(key, lo, lo, hi, unit)) } else { None }
    }

    /// A number (integer or float) in `lo..=hi`, `what` named in the error; absent
    /// or bad gives `default`.
    pub fn f64_in(&self, key: &str, default: f64, lo: f64, hi: f64, what: &str) -> f64 {
        let v = match self.get(key) {
            None => return default,
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(v) => {
                self.type_error(key, &format!("a number ({what})"), v);
                return default;
            }
        };
        if v.is_finite() && v >= lo && v <= hi {
            v
        } else {
            self.error(
                key,
                format!("`{key}` = {v} is out of range"),
                Some(format!("use a value from {lo} to {hi} ({what})")),
            );
            default
        }
    }

    /// A boolean; absent or (reported) not a boolean gives `default`.
    pub fn bool(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(v) => {
                self.type_error(key, "true or false", v);
                default
            }
        }
    }

    /// An array of strings; absent gives an empty list, and items that are not
    /// strings are reported and skipped.
    pub fn strs(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    match it.as_str() {
                        Some(s) => out.push(s.to_string()),
                        None => self.doc.error(
                            self.diags,
                            &format!("{}[{i}]", self.child_path(key)),
                            format!("`{key}` in {} must hold strings, not {}", self.place(), it.type_str()),
                            None,
                        ),
                    }
                }
                out
            }
            Some(v) => {
                self.type_error(key, "an array of strings", v);
                Vec::new()
            }
        }
    }

    /// A sub-table, if present and a table.
    pub fn table(&self, key: &str) -> Option<Tbl<'a>> {
        match self.get(key) {
            None => None,
            Some(toml::Value::Table(t)) => Some(Tbl::new(self.doc, self.diags, self.child_path(key), t)),
            Some(v) => {
                self.type_error(key, "a table", v);
                None
            }
        }
    }

    /// The raw value, marked as read (for free-form parameters).
    pub fn raw(&self, key: &str) -> Option<&'a toml::Value> {
        self.get(key)
    }

    /// An array of tables, each wrapped in a reader.
    pub fn tables(&self, key: &str) -> Vec<Tbl<'a>> {
        match self.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| match it {
                    toml::Value::Table(t) => {
                        Some(Tbl::new(self.doc, self.diags, format!("{}[{i}]", self.child_path(key)), t))
                    }
                    other => {
                        self.doc.error(
                            self.diags,
                            &format!("{}[{i}]", self.child_path(key)),
                            format!("`{key}` must hold tables (`[[{key}]]`), not {}", other.type_str()),
                            None,
                        );
                        None
                    }
                })
                .collect(),
            Some(v) => {
                self.type_error(key, &format!("an array of tables (`[[{key}]]`)"), v);
                Vec::new()
            }
        }
    }

    /// Reports every key that no getter asked for.
    pub fn finish(self) {
        let seen = self.seen.borrow();
        let known: Vec<&str> = seen.iter().map(|s| s.as_str()).collect();
        for key in self.table.keys() {
            if !seen.contains(key) {
                self.doc.key_error(
                    self.diags,
                    &self.child_path(key),
                    format!("unknown field `{key}` in {}", self.place()),
                    Some(suggest(key, known.iter().copied(), "known fields")),
                );
            }
        }
    }
}

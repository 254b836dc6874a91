//! Where each key of `kindling.toml` is written, from toml's spanned parse: messages about a
//! value point at its line (`kindling.toml:12: subnet 10.0.0.0/24: ...`).
//!
//! Keys are dotted paths with array indexes: `dhcp.mode`, `dhcp.subnet[1].network`,
//! `dns.record[0].value`. A key that is not written (a default) falls back to its nearest
//! written parent, so a message always lands on the closest line the operator can see.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, line_of};

/// The line of every key of one TOML document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans {
    lines: HashMap<String, usize>,
}

impl Spans {
    /// Index `source`. A document that does not parse gives an empty index (its parse error is
    /// reported on its own).
    pub fn of(source: &str) -> Spans {
        let mut spans = Spans::default();
        if let Ok(doc) = DeTable::parse(source) {
            spans.table("", doc.get_ref(), source);
        }
        spans
    }

    fn table(&mut self, prefix: &str, table: &DeTable<'_>, source: &str) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.lines
                .entry(path.clone())
                .or_insert_with(|| line_of(source, key.span().start));
            self.value(&path, value, source);
        }
    }

    fn value(&mut self, path: &str, value: &Spanned<DeValue<'_>>, source: &str) {
        match value.get_ref() {
            DeValue::Table(t) => self.table(path, t, source),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    self.lines
                        .entry(at.clone())
                        .or_insert_with(|| line_of(source, item.span().start));
                    self.value(&at, item, source);
                }
            }
            _ => {}
        }
    }

    /// The line of `key`, else of its nearest written parent (`a.b[2].c` → `a.b[2]` → `a.b`
    /// → `a`).
    pub fn line(&self, key: &str) -> Option<usize> {
        let mut key = key;
        loop {
            if let Some(line) = self.lines.get(key) {
                return Some(*line);
            }
            let cut = key.rfind(['.', '['])?;
            key = &key[..cut];
        }
    }
}

/// The file a config was read from and where its keys are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The config file.
    pub path: PathBuf,
    /// Its keys' lines.
    pub spans: Spans,
}

impl Source {
    /// The source of `text`, read from `path`.
    pub fn new(path: &Path, text: &str) -> Source {
        Source {
            path: path.to_path_buf(),
            spans: Spans::of(text),
        }
    }

    /// A diagnostic about `key`, at its line.
    pub fn diagnostic(&self, key: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(&self.path, self.spans.line(key), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tables_and_arrays_of_tables_have_their_lines() {
        let text = "[server]\nbase_url = \"http://x\"\n\n[dhcp]\nmode = \"full\"\n\
                    [[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\n[[dhcp.subnet]]\n\nnetwork = \"10.1.0.0/24\"\n\
                    [dns]\nrecord = [{ name = \"a\" },\n  { name = \"b\" }]\n";
        let s = Spans::of(text);
        assert_eq!(s.line("server.base_url"), Some(2));
        assert_eq!(s.line("dhcp.mode"), Some(5));
        assert_eq!(s.line("dhcp.subnet[0].network"), Some(7));
        assert_eq!(s.line("dhcp.subnet[1].network"), Some(10));
        assert_eq!(s.line("dns.record[1].name"), Some(13));
        assert_eq!(s.line("dns"), Some(11));
        // Not written: the nearest parent.
        assert_eq!(s.line("dhcp.subnet[1].router"), Some(10 - 2));
        assert_eq!(s.line("dhcp.interfaces"), Some(4));
        assert_eq!(s.line("tftp.timeout"), None);
        assert_eq!(Spans::of("not = [toml"), Spans::default());
    }
}

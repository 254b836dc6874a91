//! Diagnostics that point at a file and line, for `kindling check`, load errors and logs.
//!
//! Operators edit TOML and templates by hand; every error must say where. A `Diagnostic` is
//! `path:line: message` (line omitted when unknown); loaders collect all of them rather than
//! stopping at the first, so one `check` run lists everything to fix.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl Diagnostic {
    /// A problem at `path:line`.
    pub fn new(path: impl Into<PathBuf>, line: Option<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.into(),
            line,
            message: message.into(),
        }
    }

    /// A problem at the byte offset `offset` of `source` (the text of `path`).
    pub fn at_offset(path: &Path, source: &str, offset: usize, message: impl Into<String>) -> Self {
        Diagnostic::new(path, Some(line_of(source, offset)), message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// A file and line, for messages that point back at the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// A list of diagnostics, displayed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// `s` with every control character shown as `?`: for text that came from the network and
/// goes to a log, a comment or a terminal (a line break or an escape sequence must not).
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The 1-based line holding byte `offset` of `source`.
pub fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Turn a TOML error (parse or deserialize) into a diagnostic at its line.
pub fn from_toml(path: &Path, source: &str, err: &toml::de::Error) -> Diagnostic {
    let message = err.message().trim().to_string();
    match err.span() {
        Some(span) => Diagnostic::at_offset(path, source, span.start, message),
        None => Diagnostic::new(path, None, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        let s = "a\nbb\nccc";
        assert_eq!(line_of(s, 0), 1);
        assert_eq!(line_of(s, 2), 2);
        assert_eq!(line_of(s, 5), 3);
        assert_eq!(line_of(s, 999), 3);
    }

    #[test]
    fn displays_path_line_message() {
        let d = Diagnostic::new("profiles/a.toml", Some(3), "bad");
        assert_eq!(d.to_string(), "profiles/a.toml:3: bad");
        let d = Diagnostic::new("profiles/a.toml", None, "bad");
        assert_eq!(d.to_string(), "profiles/a.toml: bad");
    }
}

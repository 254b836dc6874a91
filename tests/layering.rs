//! The layering of `src/`: every module imports only from layers below its own.
//!
//! The table below is the one place the layers are written down (the README's layout section
//! draws it). The checker reads every `src/**/*.rs`, strips comments and string literals,
//! collects the `crate::…` references of each top-level module (and `kindling::…` in the
//! binary) and fails on any reference to a module of the same or a higher layer, naming the
//! file and line. References inside a module (`super::`, `self::`) are that module's own
//! business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bottom to top. A module may use modules of lower layers only; modules of one layer do not
/// use each other (services talk through the event bus and adapters in `app`).
const LAYERS: &[&[&str]] = &[
    // leaves: shared types and helpers
    &[
        "mac", "time_fmt", "diag", "digest", "net", "metrics", "testkit",
    ],
    // pure decisions on leaf types
    &["pxe", "boot_state"],
    // typed events and the bus that carries them
    &["events"],
    // kindling.toml: plain types, defaults, range checks
    &["config"],
    // a template engine that knows nothing of profiles; the connection to etcd
    &["render", "cluster", "bmc"],
    // profiles: model, load, resolve, select, documents, watch, adopt
    &["profiles"],
    // machines: record, feed, plan, writer, store
    &["inventory"],
    // power through BMCs: clients, polling, readings into the inventory
    &["power"],
    // what every service is given
    &["ctx"],
    // the services
    &["dns", "dhcp", "tftp", "http", "wol"],
    // composition: bind, validate, start, supervise, adapters between services
    &["app"],
    // the command line and the API client
    &["cli"],
    // the binary
    &["main"],
];

/// The layer of every module in the table.
fn ranks() -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        for m in *layer {
            assert!(out.insert(*m, rank).is_none(), "{m} is in two layers");
        }
    }
    out
}

/// The source with comments, string and char literals blanked (newlines kept, so line
/// numbers stay right): a path in a doc comment or a message is not an import.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    out.push(b' ');
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        out.extend_from_slice(b"  ");
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        out.extend_from_slice(b"  ");
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        blank(&mut out, b[i]);
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // raw string r"…" / r#"…"#
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                out.extend(std::iter::repeat_n(b' ', j + 1 - i));
                i = j + 1;
                while i < b.len() && !b[i..].starts_with(&close) {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                out.extend(std::iter::repeat_n(b' ', close.len().min(b.len() - i)));
                i += close.len();
            }
            b'"' => {
                out.push(b' ');
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        blank(&mut out, b[i]);
                        i += 1;
                    }
                    blank(&mut out, b[i]);
                    i += 1;
                }
                out.push(b' ');
                i += 1;
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\')) => {
                // a char literal ('x', '\n', '\''); lifetimes ('a) are left alone
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|p| i + 3 + p)
                } else {
                    Some(i + 3)
                };
                let end = end.unwrap_or(i + 1).min(b.len());
                out.extend(std::iter::repeat_n(b' ', end - i));
                i = end;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The modules named by `root::` paths in `src` (`crate` in the library, `kindling` in the
/// binary), with `use root::{a, b::c}` groups expanded, and their 1-based lines.
fn referenced(src: &str, root: &str) -> Vec<(usize, String)> {
    let code = code_only(src);
    let b = code.as_bytes();
    let needle = format!("{root}::");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(pos) = code[at..].find(&needle) {
        let start = at + pos;
        at = start + needle.len();
        // `foo_crate::x` or `krate::x` must not count: the root must start an identifier.
        if start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[at..];
        let rest = rest.trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: split on commas outside nested braces.
            let mut depth = 0;
            let mut name = String::new();
            let mut names = Vec::new();
            let mut taking = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(std::mem::take(&mut name));
                        taking = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && taking {
                    if c.is_alphanumeric() || c == '_' {
                        name.push(c);
                    } else if !name.is_empty() {
                        taking = false;
                    }
                }
            }
            names.push(name);
            for n in names.into_iter().filter(|n| !n.is_empty() && n != "self") {
                out.push((line, n));
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((line, name));
            }
        }
    }
    out
}

/// The top-level module a source file belongs to (`src/dhcp/server.rs` → `dhcp`).
fn module_of(rel: &Path) -> Option<String> {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    let first = parts.next()?;
    if rel.components().count() == 1 {
        let stem = first.strip_suffix(".rs")?;
        return (stem != "lib").then(|| stem.to_string());
    }
    Some(first.into_owned())
}

/// Every reference in `files` (path relative to `src/`, text) that breaks the layering, and
/// every module the table does not know.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let ranks = ranks();
    let mut out = Vec::new();
    for (rel, text) in files {
        let Some(from) = module_of(rel) else { continue };
        let Some(&from_rank) = ranks.get(from.as_str()) else {
            out.push(format!(
                "src/{}: module `{from}` is not in the layer table (tests/layering.rs)",
                rel.display()
            ));
            continue;
        };
        let root = if from == "main" { "kindling" } else { "crate" };
        for (line, to) in referenced(text, root) {
            if to == from {
                continue;
            }
            let Some(&to_rank) = ranks.get(to.as_str()) else {
                // Not a module (a re-exported item of the crate root, a macro): not layered.
                continue;
            };
            if to_rank >= from_rank {
                let how = if to_rank == from_rank {
                    "the same layer"
                } else {
                    "a higher layer"
                };
                out.push(format!(
                    "src/{}:{line}: `{from}` uses `{to}`, which is in {how}",
                    rel.display()
                ));
            }
        }
    }
    out
}

fn sources(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            sources(&p, base, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

#[test]
fn src_imports_only_from_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &src, &mut files);
    assert!(files.len() > 20, "read {} files", files.len());
    let found = violations(&files);
    assert!(
        found.is_empty(),
        "{} layering violation(s):\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn every_module_of_lib_rs_is_in_the_table() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let ranks = ranks();
    for line in lib.lines() {
        let line = line.trim();
        let Some(rest) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
        else {
            continue;
        };
        let name = rest.trim_end_matches(';');
        assert!(
            ranks.contains_key(name),
            "src/lib.rs declares `{name}`, which has no layer"
        );
    }
}

// ---- the checker itself -------------------------------------------------------------------

fn file(rel: &str, text: &str) -> (PathBuf, String) {
    (PathBuf::from(rel), text.to_string())
}

#[test]
fn a_back_edge_is_caught_with_file_and_line() {
    let files = [
        file(
            "config.rs",
            "use crate::diag::Diagnostic;\n\nfn f() { crate::dns::check(); }\n",
        ),
        file(
            "dns/mod.rs",
            "use crate::{config::DnsConfig, profiles::ProfileSet};\n",
        ),
    ];
    assert_eq!(
        violations(&files),
        ["src/config.rs:3: `config` uses `dns`, which is in a higher layer"]
    );
}

#[test]
fn same_layer_groups_nested_groups_and_the_binary_are_checked() {
    let files = [
        file(
            "http/api.rs",
            "use crate::{\n    inventory::{Filter, NextBoot},\n    wol::{self, Waker},\n};\n",
        ),
        file(
            "main.rs",
            "use kindling::app;\nfn x() { kindling::cli::run(); }\n",
        ),
        file(
            "profiles/mod.rs",
            "use crate::render::{self};\nuse crate::inventory::X;\n",
        ),
    ];
    assert_eq!(
        violations(&files),
        [
            "src/http/api.rs:1: `http` uses `wol`, which is in the same layer",
            "src/profiles/mod.rs:2: `profiles` uses `inventory`, which is in a higher layer",
        ],
        "main may use app and cli (lower); a nested group is one reference"
    );
}

#[test]
fn comments_strings_and_other_crates_are_not_references() {
    let files = [file(
        "config.rs",
        "//! See [`crate::app`].\n/* crate::dns */\nconst S: &str = \"crate::http\";\nconst R: &str = r#\"crate::wol\"#;\nuse foo_crate::app;\nfn f<'a>(c: char) -> bool { c == '\"' }\nfn g() { crate::cli::x(); }\n",
    )];
    assert_eq!(
        violations(&files),
        ["src/config.rs:7: `config` uses `cli`, which is in a higher layer"]
    );
}

#[test]
fn an_unknown_module_is_reported() {
    let files = [file("newthing.rs", "")];
    assert_eq!(
        violations(&files),
        ["src/newthing.rs: module `newthing` is not in the layer table (tests/layering.rs)"]
    );
}

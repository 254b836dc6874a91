//! A profile file and a template as an operator might write them: TOML, selectors, machine
//! entries, templates compiled and rendered for every machine (the loader behind `check`).
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use kindling::profiles::{ProfileSet, Sources};

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::scratch("loader"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // A profile file, then (after the first NUL) a template it may name as t.j2.
    let (toml, template) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let p = dir().join("profiles");
    let _ = std::fs::create_dir_all(&p);
    if std::fs::write(p.join("p.toml"), toml).is_err()
        || std::fs::write(p.join("t.j2"), template).is_err()
    {
        return;
    }
    let sources = Sources {
        profiles: p,
        scripts: dir().join("no-scripts"),
    };
    let _ = ProfileSet::load(&sources, "http://10.0.0.2:8080");
});

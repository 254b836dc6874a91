#![allow(dead_code)]
//! What the targets share: a profile set loaded from files written once.

use std::path::PathBuf;

use kindling::profiles::{ProfileSet, Sources};

/// A scratch directory of this fuzzing process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kindling-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Profiles of a small lab: a declared machine with an address, a selector, a default.
pub fn profiles() -> (Sources, ProfileSet) {
    let dir = scratch("profiles");
    let p = dir.join("profiles");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("node.toml"),
        "ignition = \"n.ign.j2\"\nafter_provision = \"local\"\n[boot]\nkernel = \"os/vmlinuz\"\n\
         args = [\"ignition.config.url={{ ignition_url }}\"]\n\
         [[machine]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"n1\"\nip = \"10.0.0.50\"\n\
         [[select]]\nlabels = { circuit_id = \"rack-a\" }\n",
    )
    .unwrap();
    std::fs::write(
        p.join("n.ign.j2"),
        "{\"ignition\": {\"version\": \"3.4.0\"}}",
    )
    .unwrap();
    std::fs::write(
        p.join("any.toml"),
        "default = true\n[boot]\nkernel = \"k\"\n",
    )
    .unwrap();
    let sources = Sources {
        profiles: p,
        scripts: dir.join("no-scripts"),
    };
    let set = ProfileSet::load(&sources, "http://10.0.0.2:8080").unwrap();
    (sources, set)
}

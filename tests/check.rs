//! `kindling check` on the shipped example and on every broken fixture.
//!
//! Each directory under `tests/fixtures/invalid/` is one broken setup with a `kindling.toml`,
//! a `profiles/` tree and an `expected` file: every line of it must begin one line of the
//! error output (so each error is pinned to its file and line), and check must exit 64.

use std::path::Path;
use std::process::Command;

fn kindling() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kindling"))
}

#[test]
fn shipped_example_checks_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = kindling()
        .current_dir(root)
        .args(["check", "--config", "kindling.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: 2 profiles, 3 machines"), "{stdout}");
}

#[test]
fn every_invalid_fixture_lists_its_errors_with_file_and_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "fixtures missing");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy();
        let expected = std::fs::read_to_string(case.join("expected")).unwrap();
        let out = kindling()
            .current_dir(case)
            .args(["check", "--config", "kindling.toml"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(64) {
            failures.push(format!(
                "{name}: exit {:?}, want 64\n{stderr}",
                out.status.code()
            ));
        }
        for want in expected.lines().filter(|l| !l.trim().is_empty()) {
            if !stderr.lines().any(|l| l.starts_with(want)) {
                failures.push(format!(
                    "{name}: no line starting with\n    {want}\nin\n{stderr}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn render_prints_what_the_machine_gets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        let out = kindling()
            .current_dir(root)
            .args(["render", "--config", "kindling.toml"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["--mac", "52-54-00-10-00-21", "--arch", "x86_64"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("#!ipxe\n# Kindling: profile worker for 52:54:00:10:00:21 (worker-1)\n"),
        "{out}"
    );
    assert!(
        err.contains("machine entry at profiles/worker.toml:"),
        "{err}"
    );
    let (code, out, _) = run(&["--mac", "52:54:00:10:00:11", "--what", "ignition"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ignition"]["version"], "3.3.0");
    let (code, out, _) = run(&["--mac", "52:54:00:10:00:11", "--what", "metadata"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("HOSTNAME=ctrl-1\n"), "{out}");
    let (code, _, err) = run(&["--mac", "52:54:00:99:99:99"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no profile for machine 52:54:00:99:99:99"),
        "{err}"
    );
    let (code, _, _) = run(&["--mac", "not-a-mac"]);
    assert_eq!(code, Some(64), "usage error");
}

#[test]
fn version() {
    let out = kindling().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kindling {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn explain_prints_the_dhcp_decision_and_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        let out = kindling()
            .current_dir(root)
            .args(["explain", "--config", "kindling.toml"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(&["--mac", "52:54:00:10:00:21", "--arch", "0"]);
    assert!(
        out.contains("profile:    worker (machine entry at profiles/worker.toml:"),
        "{out}"
    );
    assert!(out.contains("boot file:  undionly.kpxe (TFTP"), "{out}");
    let out = run(&["--mac", "52-54-00-10-00-21", "--arch", "9"]);
    assert!(out.contains("boot file:  ipxe.efi (TFTP"), "{out}");
    let out = run(&[
        "--mac",
        "52:54:00:10:00:21",
        "--arch",
        "7",
        "--user-class",
        "iPXE",
    ]);
    assert!(
        out.contains("boot file:  http://127.0.0.1:8080/boot.ipxe (HTTP)"),
        "{out}"
    );
    assert!(out.contains("would loop"), "{out}");
    let out = run(&["--mac", "52:54:00:10:00:21", "--arch", "19"]);
    assert!(
        out.contains("boot file:  http://127.0.0.1:8080/boot/snp-arm64.efi (HTTP)"),
        "{out}"
    );
    assert!(out.contains("option 60:  HTTPClient"), "{out}");
    let out = run(&["--mac", "52:54:00:99:00:01", "--arch", "9"]);
    assert!(
        out.contains("profile:    none") && out.contains("boot file:  none"),
        "{out}"
    );
}

//! The project's fixed points that no other test touches: the Dockerfile refers only to files
//! that exist, the container config is valid, `.ci/run` runs the README's test command.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn dockerfile_copies_only_existing_files_and_is_multi_stage() {
    let text = read("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "build stage + runtime stage: {froms:?}");
    assert!(
        froms[0].contains("rust:") && froms[0].ends_with(" AS build"),
        "{froms:?}"
    );
    assert!(
        froms[1].contains("debian:") && froms[1].contains("slim"),
        "{froms:?}"
    );
    assert!(text.contains("apt-get install -y --no-install-recommends ipxe"));
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                root().join(src).exists(),
                "Dockerfile copies missing {src}: {line}"
            );
        }
    }
    assert!(
        text.contains("--locked"),
        "reproducible build from Cargo.lock"
    );
    // etcd-client's build script runs protoc on etcd's protos, which import Google's
    // well-known types: the build stage needs both packages.
    if read("Cargo.toml").contains("etcd-client") {
        let build_stage = &text[..text.find(froms[1]).unwrap()];
        for pkg in ["protobuf-compiler", "libprotobuf-dev"] {
            assert!(
                build_stage.contains(pkg),
                "the build stage does not install {pkg}"
            );
        }
    }
}

#[test]
fn container_config_is_valid() {
    let path = root().join("scripts/container/kindling.toml");
    let config = kindling::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.dhcp.mode, kindling::config::DhcpMode::Off);
    assert!(
        config.http.listen.ip().is_unspecified(),
        "containers listen on all addresses"
    );
    assert!(config.server.base_url.is_some());
}

#[test]
fn ci_runs_the_readme_test_command() {
    let ci = read(".ci/run");
    assert!(ci.contains("exec scripts/test.sh"), "{ci}");
    let readme = read("README.md");
    assert!(readme.contains("scripts/test.sh") && readme.contains("scripts/run-example.sh"));
    let test = read("scripts/test.sh");
    assert!(
        test.contains("cargo fmt --check")
            && test.contains("cargo clippy --locked --all-targets -- -D warnings")
    );
}

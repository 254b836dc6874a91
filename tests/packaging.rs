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
    assert_eq!(
        froms.len(),
        3,
        "build stage + signed binaries + runtime stage: {froms:?}"
    );
    assert!(
        froms[0].contains("rust:") && froms[0].ends_with(" AS build"),
        "{froms:?}"
    );
    assert!(
        froms[1].contains("debian:") && froms[1].ends_with(" AS signed"),
        "{froms:?}"
    );
    assert!(
        froms[2].contains("debian:") && froms[2].contains("slim"),
        "{froms:?}"
    );
    // The Secure Boot chain's signed binaries: downloaded and unpacked, never installed, and
    // put where [paths] shim and grub look by default.
    let signed_stage = &text[text.find(froms[1]).unwrap()..text.find(froms[2]).unwrap()];
    assert!(
        signed_stage.contains("apt-get download shim-signed grub-efi-amd64-signed")
            && signed_stage.contains("dpkg-deb -x")
            && !signed_stage.contains("apt-get install"),
        "{signed_stage}"
    );
    let defaults = kindling::config::PathsConfig::default();
    for path in [&defaults.shim, &defaults.grub] {
        let dest = path.display().to_string();
        assert!(
            text.lines()
                .any(|l| l.starts_with("COPY --from=signed ") && l.ends_with(&format!(" {dest}"))),
            "the image has no {dest}"
        );
    }
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
    // Every file the crate embeds (include_str!/include_bytes!) is in the build stage.
    let build_stage = &text[..text.find(froms[1]).unwrap()];
    let copied: Vec<&str> = build_stage
        .lines()
        .filter(|l| l.starts_with("COPY "))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[1..parts.len() - 1].to_vec()
        })
        .collect();
    for embedded in embedded_files(&root().join("src")) {
        let rel = embedded
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            copied
                .iter()
                .any(|c| rel == *c || rel.starts_with(&format!("{}/", c.trim_end_matches('/')))),
            "the build stage does not COPY {rel}, which the crate embeds"
        );
    }
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

/// The files `include_str!`/`include_bytes!` in `dir` (recursively) name, resolved.
fn embedded_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(embedded_files(&path));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for macro_ in ["include_str!(\"", "include_bytes!(\""] {
            for piece in text.split(macro_).skip(1) {
                let rel = &piece[..piece.find('"').unwrap()];
                let file = path.parent().unwrap().join(rel);
                let file = std::fs::canonicalize(&file)
                    .unwrap_or_else(|e| panic!("{}: {rel}: {e}", path.display()));
                out.push(file);
            }
        }
    }
    out
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

/// The high-availability layout in `scripts/cluster`: the compose file runs an etcd member on
/// each of three hosts and Kindling on two, with configs that load, point at all three members,
/// serve the same segment and differ only in what must differ per host.
#[test]
fn the_cluster_layout_is_consistent() {
    use kindling::config::{Config, DhcpMode, StoreKind};
    let compose = read("scripts/cluster/compose.yaml");
    let env = |n: u32| -> std::collections::HashMap<String, String> {
        read(&format!("scripts/cluster/host{n}.env"))
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    // Every variable the compose file uses is set on every host.
    let vars: Vec<&str> = compose
        .split("${")
        .skip(1)
        .map(|r| r.split('}').next().unwrap())
        .collect();
    assert!(vars.contains(&"HOST_IP") && vars.contains(&"KINDLING_CONFIG"));
    let initial = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("- --initial-cluster="))
        .expect("--initial-cluster");
    let mut configs = Vec::new();
    for n in 1..=3 {
        let e = env(n);
        for v in &vars {
            assert!(e.contains_key(*v), "host{n}.env does not set {v}");
        }
        let member = format!("{}=http://{}:2380", e["ETCD_NAME"], e["HOST_IP"]);
        assert!(
            initial.split(',').any(|m| m == member),
            "{member} not in {initial}"
        );
        let runs_kindling = e["COMPOSE_PROFILES"] == "kindling";
        assert_eq!(runs_kindling, n < 3, "kindling on hosts 1 and 2");
        if runs_kindling {
            let path = root().join("scripts/cluster").join(&e["KINDLING_CONFIG"]);
            let config = Config::load(&path).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(config.cluster.store, StoreKind::Etcd);
            assert_eq!(config.dhcp.mode, DhcpMode::Full);
            let ip = &e["HOST_IP"];
            assert_eq!(config.dhcp.subnets[0].server_ip.unwrap().to_string(), *ip);
            assert_eq!(
                config.server.advertise_ip.map(|a| a.to_string()).as_deref(),
                Some(ip.as_str())
            );
            // The boot URLs name the address keepalived moves, the same on both.
            let vip = read("scripts/cluster/keepalived.conf")
                .lines()
                .map(str::trim)
                .find(|l| l.ends_with("dev eno2") && l.contains('/'))
                .and_then(|l| l.split('/').next())
                .expect("the VRRP address")
                .to_string();
            assert_eq!(
                config.server.base_url.as_deref(),
                Some(format!("http://{vip}:8080").as_str())
            );
            configs.push(config);
        }
    }
    let (a, b) = (&configs[0], &configs[1]);
    assert_eq!(initial.split(',').count(), 3);
    assert_eq!(a.cluster.endpoints.len(), 3);
    for (endpoint, member) in a.cluster.endpoints.iter().zip(initial.split(',')) {
        let host = member
            .split("//")
            .nth(1)
            .unwrap()
            .split(':')
            .next()
            .unwrap();
        assert!(endpoint.contains(host), "{endpoint} vs {member}");
    }
    assert_eq!(a.cluster.endpoints, b.cluster.endpoints);
    assert_ne!(a.cluster.node_name, b.cluster.node_name);
    assert_eq!(
        a.dhcp.subnets[0].network, b.dhcp.subnets[0].network,
        "one segment"
    );
    assert_eq!(a.dhcp.subnets[0].range, b.dhcp.subnets[0].range);
    for file in ["../../profiles", "../.."] {
        assert!(root().join("scripts/cluster").join(file).exists());
    }
}

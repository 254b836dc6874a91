//! A small boot storm as a correctness test: 50 simulated machines (bench/storm.rs, built by
//! the test as the example `storm`) power on within 2 s and boot the way PXE firmware and
//! iPXE do (DHCP through a relay, TFTP, DHCP as iPXE, boot script, kernel, initrd, Ignition,
//! report) against the real daemon, inside two network namespaces this test creates. Every
//! machine must reach `provisioned` with no failure, and the API must count them so. The
//! 1,000-machine benchmark against dnsmasq + nginx is bench/storm.sh. Needs root; skips with
//! a reason otherwise (CI runs as root).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Daemon, Netns, have, ip, write};

const MACHINES: u32 = 50;

/// The simulator, built here: `cargo test --all-targets` builds examples only as test
/// harnesses, so the binary is built with the test's own cargo and profile
/// (target/<profile>/examples/storm).
fn simulator() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--locked", "--quiet", "--example", "storm"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo");
    assert!(status.success(), "cargo build --example storm failed");
    profile_dir.join("examples/storm")
}

fn skip_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("needs root for network namespaces".into());
    }
    for tool in ["ip", "curl", "timeout"] {
        if !have(tool) {
            return Some(format!("{tool} is not installed (scripts/setup.sh test)"));
        }
    }
    None
}

#[test]
fn a_storm_of_50_machines_is_provisioned_and_the_api_agrees() {
    let test = "a_storm_of_50_machines_is_provisioned_and_the_api_agrees";
    if let Some(why) = skip_reason() {
        eprintln!("SKIP {test}: {why}");
        return;
    }
    let storm = simulator();
    let ns = Netns::new(&["sts", "stc"]);
    let (srv, cli) = (ns.names[0].as_str(), ns.names[1].as_str());
    ns.veth(srv, "s0", cli, "c0");
    ip(&["-n", srv, "addr", "add", "10.97.0.1/16", "dev", "s0"]);
    ip(&["-n", cli, "addr", "add", "10.97.0.2/16", "dev", "c0"]);
    ip(&["-n", srv, "link", "set", "s0", "up"]);
    ip(&["-n", cli, "link", "set", "c0", "up"]);
    // The pool is local on the machines' side (each binds its leased address); the server
    // reaches it through the relay.
    ip(&[
        "-n",
        cli,
        "route",
        "add",
        "local",
        "10.97.64.0/18",
        "dev",
        "lo",
    ]);
    ip(&[
        "-n",
        srv,
        "route",
        "add",
        "10.97.64.0/18",
        "via",
        "10.97.0.2",
    ]);

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let blob = |rel: &str, len: usize| {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::create_dir_all(root.join(rel).parent().unwrap()).unwrap();
        std::fs::write(root.join(rel), bytes).unwrap();
    };
    blob("tftp/ipxe.efi", 200_000);
    blob("tftp/undionly.kpxe", 70_000);
    blob("assets/kernel", 1 << 20);
    blob("assets/initrd", 3 << 20);
    write(
        root,
        "profiles/node.toml",
        "default = true\nignition = \"templates/node.ign.j2\"\n[boot]\nkernel = \"kernel\"\n\
         initrd = [\"initrd\"]\nargs = [\"ignition.config.url={{ ignition_url }}\"]\n",
    );
    write(
        root,
        "profiles/templates/node.ign.j2",
        "{ \"ignition\": { \"version\": \"3.3.0\" } }\n",
    );
    let r = root.display();
    let ipxe = concat!(env!("CARGO_MANIFEST_DIR"), "/ipxe");
    write(
        root,
        "kindling.toml",
        &format!(
            "[server]\nbase_url = \"http://10.97.0.1:8080\"\n[http]\nlisten = \"10.97.0.1:8080\"\n\
             [paths]\nprofiles = \"{r}/profiles\"\nipxe_scripts = \"{ipxe}\"\n\
             ipxe_binaries = \"{r}/tftp\"\nassets = \"{r}/assets\"\nstate = \"{r}/state\"\n\
             [dhcp]\nmode = \"full\"\ninterfaces = [\"s0\"]\nlease_time = \"1h\"\n\
             [[dhcp.subnet]]\nnetwork = \"10.97.0.0/16\"\nrange = [\"10.97.64.1\", \"10.97.127.254\"]\n\
             server_ip = \"10.97.0.1\"\n[tftp]\nenabled = true\nlisten = \"10.97.0.1:69\"\n"
        ),
    );
    let d = Daemon::start_in(srv, &root.join("kindling.toml"));
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("listening for DHCP on s0")
    })
    .expect("DHCP listening");

    let out = Command::new("timeout")
        .args(["180", "ip", "netns", "exec", cli])
        .arg(&storm)
        .args(["run", "--server", "10.97.0.1", "--relay", "10.97.0.2"])
        .args(["--machines", &MACHINES.to_string(), "--ramp-ms", "2000"])
        .args(["--deadline-s", "150"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let summary = text
        .lines()
        .find(|l| l.contains(" machines="))
        .expect("the simulator's summary line");
    assert!(
        summary.starts_with(&format!(
            "ok machines={MACHINES} provisioned={MACHINES} failed=0 "
        )),
        "{summary}"
    );
    assert!(out.status.success());

    // The API counts every simulated machine as provisioned, and only those.
    let api = Command::new("ip")
        .args(["netns", "exec", srv, "curl", "-fsS"])
        .arg("http://10.97.0.1:8080/api/v1/machines")
        .output()
        .unwrap();
    assert!(api.status.success(), "{api:?}");
    let body: serde_json::Value = serde_json::from_slice(&api.stdout).unwrap();
    let mut states: HashMap<String, u32> = HashMap::new();
    for m in body["machines"].as_array().unwrap() {
        assert!(
            m["mac"].as_str().unwrap().starts_with("02:4b:00:"),
            "a machine the storm did not simulate: {m}"
        );
        *states
            .entry(m["state"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(body["count"], MACHINES);
    assert_eq!(
        states,
        HashMap::from([("provisioned".to_string(), MACHINES)])
    );
}

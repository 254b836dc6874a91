//! Who may read a machine's config and change its boot, replayed against the real daemon
//! with curl from distinct loopback addresses (127.5.0.0/24: each is a host on the LAN).
//! Kindling's DHCP is off here, the weakest mode: the first address that asks for a machine's
//! boot script binds that boot.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, write};

const MAC: &str = "52:54:00:ac:00:01";
const MACHINE: &str = "127.5.0.10";
const STRANGER: &str = "127.5.0.66";
const API_TOKEN: &str = "operator-s3cret";

/// `curl` from `src`: the status code and the body.
fn curl(src: &str, method: &str, url: &str, extra: &[&str]) -> (u16, String) {
    let args = [&["--interface", src, "-X", method][..], extra].concat();
    common::curl(&args, url)
}

fn lab() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[api]\ntoken = \"{API_TOKEN}\"\n\
             [paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display()
        ),
    );
    write(
        root,
        "profiles/node.toml",
        &format!(
            "ignition = \"node.ign.j2\"\nafter_provision = \"local\"\n[boot]\nkernel = \"vmlinuz\"\n\
             args = [\"ignition.config.url={{{{ ignition_url }}}}\", \"kindling.report={{{{ report_url }}}}\"]\n\
             [vars]\njoin_token = \"cluster-join-secret\"\n\
             [[machine]]\nmac = \"{MAC}\"\nhostname = \"alpha\"\n"
        ),
    );
    write(
        root,
        "profiles/node.ign.j2",
        "{\"ignition\": {\"version\": \"3.4.0\"}, \"passwd\": {\"users\": [{\"name\": \"core\", \"sshAuthorizedKeys\": [\"{{ join_token }}\"]}]}}",
    );
    dir
}

/// The boot secret in a served script.
fn secret_in(script: &str) -> String {
    let at = script.find("token=").expect("a token in the script") + 6;
    script[at..at + 32].to_string()
}

#[test]
fn only_the_machine_gets_its_script_configs_and_report() {
    if !common::have("curl") {
        eprintln!(
            "SKIP only_the_machine_gets_its_script_configs_and_report: curl is not installed"
        );
        return;
    }
    let dir = lab();
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let url = |p: &str| d.url(p);
    let state = || {
        let (_, body) = curl(
            "127.0.0.1",
            "GET",
            &url(&format!("/api/v1/machines/{MAC}")),
            &[],
        );
        body
    };

    // The machine boots: its script carries its secret in every URL it hands on.
    let ipxe = url(&format!("/ipxe?mac={MAC}&arch=x86_64"));
    let (code, script) = curl(MACHINE, "GET", &ipxe, &[]);
    assert_eq!(code, 200, "{script}");
    let token = secret_in(&script);
    assert!(
        script.contains(&format!("/ignition?mac={MAC}&token={token}")),
        "{script}"
    );
    assert!(
        script.contains(&format!("/api/v1/report?mac={MAC}&token={token}")),
        "{script}"
    );
    // The operator asks for a reinstall (for its next boot).
    let (code, body) = curl(
        "127.0.0.1",
        "POST",
        &url(&format!("/api/v1/machines/{MAC}/reinstall")),
        &["-H", &format!("Authorization: Bearer {API_TOKEN}")],
    );
    assert_eq!(code, 200, "{body}");
    assert!(state().contains("\"boot\":\"install\""), "{}", state());

    // A stranger: no script for the machine (and no boot consumed, no facts changed), no
    // config, no metadata, no report.
    let (code, body) = curl(
        STRANGER,
        "GET",
        &url(&format!("/ipxe?mac={MAC}&uuid={}", "1".repeat(32))),
        &[],
    );
    assert_eq!(code, 403, "{body}");
    let after = state();
    assert!(!after.contains(&"1".repeat(32)), "facts changed: {after}");
    assert!(
        after.contains("\"boot\":\"install\""),
        "reinstall used up: {after}"
    );
    for path in ["/ignition", "/metadata", "/generic"] {
        let (code, body) = curl(STRANGER, "GET", &url(&format!("{path}?mac={MAC}")), &[]);
        assert_eq!(code, 403, "{path}: {body}");
        assert!(!body.contains("cluster-join-secret"), "{body}");
    }
    let wrong = format!("/ignition?mac={MAC}&token={}", "0".repeat(32));
    assert_eq!(curl(STRANGER, "GET", &url(&wrong), &[]).0, 403);
    let report = url(&format!("/api/v1/report?mac={MAC}&state=provisioned"));
    assert_eq!(curl(STRANGER, "POST", &report, &[]).0, 403);
    assert_eq!(curl(STRANGER, "GET", &report, &[]).0, 405);
    assert!(
        !state().contains("\"state\":\"provisioned\""),
        "{}",
        state()
    );
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("refused") && l.contains(MAC) && l.contains(STRANGER)
    })
    .unwrap_or_else(|| {
        panic!(
            "no refusal naming the MAC and the source:\n{}",
            d.log_text()
        )
    });

    // The machine: its config from its own address, or with its secret from anywhere.
    let (code, ign) = curl(MACHINE, "GET", &url(&format!("/ignition?mac={MAC}")), &[]);
    assert_eq!(code, 200, "{ign}");
    assert!(ign.contains("cluster-join-secret"), "{ign}");
    let with = url(&format!("/ignition?mac={MAC}&token={token}"));
    assert_eq!(curl(STRANGER, "GET", &with, &[]).0, 200);
    // Its report, with the secret.
    let (code, body) = curl(STRANGER, "POST", &format!("{report}&token={token}"), &[]);
    assert_eq!(code, 200, "{body}");
    assert!(state().contains("\"state\":\"provisioned\""), "{}", state());
    assert!(!state().contains(&token), "the API never shows the secret");

    // The secret is kept with the record: it still works after a restart, and still only it.
    assert!(d.terminate().success());
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let with = d.url(&format!("/ignition?mac={MAC}&token={token}"));
    assert_eq!(curl(STRANGER, "GET", &with, &[]).0, 200);
    let without = d.url(&format!("/ignition?mac={MAC}"));
    assert_eq!(curl(STRANGER, "GET", &without, &[]).0, 403);
}

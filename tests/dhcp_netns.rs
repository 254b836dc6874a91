//! DHCP full mode against real clients (ISC dhclient, busybox udhcpc), inside network
//! namespaces this test creates: a server namespace and a client namespace joined by a veth
//! pair created *inside* them. Nothing is attached to the host namespace; everything is removed
//! on drop, also when an assertion fails. Needs root and iproute2; skips with a reason
//! otherwise (CI runs as root).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Daemon, write};

const RESERVED_MAC: &str = "52:54:00:77:00:50";
const RESERVED_IP: &str = "10.77.0.50";

/// Two namespaces and a veth pair, deleted on drop.
struct Lab {
    server: String,
    client: String,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip")
}

fn must(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = std::process::id();
        let lab = Lab {
            server: format!("kdl{id}{tag}s"),
            client: format!("kdl{id}{tag}c"),
        };
        let (s, c) = (lab.server.as_str(), lab.client.as_str());
        must(&["netns", "add", s]);
        must(&["netns", "add", c]);
        must(&[
            "-n", s, "link", "add", "vs0", "type", "veth", "peer", "name", "vc0", "netns", c,
        ]);
        must(&["-n", s, "addr", "add", "10.77.0.2/24", "dev", "vs0"]);
        for (ns, dev) in [(s, "vs0"), (s, "lo"), (c, "lo")] {
            must(&["-n", ns, "link", "set", dev, "up"]);
        }
        lab.set_client_mac("52:54:00:77:00:01");
        lab
    }

    fn set_client_mac(&self, mac: &str) {
        let c = self.client.as_str();
        must(&["-n", c, "link", "set", "vc0", "down"]);
        must(&["-n", c, "addr", "flush", "dev", "vc0"]);
        must(&["-n", c, "link", "set", "vc0", "address", mac]);
        must(&["-n", c, "link", "set", "vc0", "up"]);
    }

    /// Run a command in the client namespace, bounded by `timeout`.
    fn client_run(&self, secs: u32, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg(secs.to_string())
            .args(["ip", "netns", "exec", &self.client])
            .args(args)
            .output()
            .expect("run client")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.server]);
        let _ = ip(&["netns", "del", &self.client]);
    }
}

fn skip_reason() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("needs root for network namespaces".into());
    }
    for tool in ["ip", "dhclient", "busybox", "timeout"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!(
                "{tool} is not installed (scripts/setup.sh installs it)"
            ));
        }
    }
    None
}

fn config(dir: &Path) -> std::path::PathBuf {
    let ipxe = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe");
    write(
        dir,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n\
             [dhcp]\nmode = \"full\"\ninterfaces = [\"vs0\"]\nlease_time = \"10m\"\n\
             [[dhcp.subnet]]\nnetwork = \"10.77.0.0/24\"\nrange = [\"10.77.0.100\", \"10.77.0.110\"]\n\
             server_ip = \"10.77.0.2\"\nrouter = \"10.77.0.1\"\ndns = [\"10.77.0.2\"]\ndomain = \"lab.test\"\n",
            ipxe.display()
        ),
    );
    write(
        dir,
        "profiles/node.toml",
        &format!(
            "[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"{RESERVED_MAC}\"\nhostname = \"reserved-1\"\nip = \"{RESERVED_IP}\"\n"
        ),
    );
    dir.join("kindling.toml")
}

/// `fixed-address` of the last lease in a dhclient lease file.
fn dhclient_address(lease_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(lease_file).ok()?;
    text.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("fixed-address ")
                .map(|a| a.trim_end_matches(';').to_string())
        })
        .next_back()
}

/// busybox udhcpc: one attempt, no configuration; the address it was offered and acked.
fn udhcpc(lab: &Lab) -> Option<String> {
    udhcpc_in(&lab.client)
}

/// The same in namespace `ns` on its `vc0`.
fn udhcpc_in(ns: &str) -> Option<String> {
    let out = Command::new("timeout")
        .args([
            "20", "ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", "vc0", "-n", "-q", "-f",
        ])
        .args(["-s", "/bin/true", "-t", "4", "-T", "2"])
        .output()
        .expect("run udhcpc");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| {
        l.split("lease of ")
            .nth(1)
            .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
    })
}

fn dhclient(lab: &Lab, dir: &Path, args: &[&str]) -> Output {
    let lf = dir.join("dhclient.leases");
    let pf = dir.join("dhclient.pid");
    let mut all = vec![
        "dhclient",
        "-1",
        "-v",
        "-sf",
        "/bin/true",
        "-lf",
        lf.to_str().unwrap(),
        "-pf",
        pf.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    all.push("vc0");
    lab.client_run(40, &all)
}

#[test]
fn full_mode_with_dhclient_and_udhcpc_and_a_kill_9_restart() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP full_mode_with_dhclient_and_udhcpc_and_a_kill_9_restart: {why}");
        return;
    }
    let lab = Lab::new("a");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let d = Daemon::start_in(&lab.server, &cfg);
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("listening for DHCP on vs0")
    })
    .expect("DHCP listening");

    // 1. dhclient gets an address from the range.
    let out = dhclient(&lab, dir.path(), &[]);
    assert!(
        out.status.success(),
        "dhclient failed:\n{}\n--- kindling ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    let first = dhclient_address(&dir.path().join("dhclient.leases")).expect("a lease");
    assert!(first.starts_with("10.77.0.1"), "{first}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DHCPOFFER") && stderr.contains("DHCPACK"),
        "{stderr}"
    );

    // 2. Again with the same lease file: INIT-REBOOT, the same address.
    let out = dhclient(&lab, dir.path(), &[]);
    assert!(out.status.success());
    assert_eq!(
        dhclient_address(&dir.path().join("dhclient.leases")).unwrap(),
        first,
        "renewed the same address"
    );

    // 3. Release: configure the address so dhclient can unicast the RELEASE, then release.
    must(&[
        "-n",
        &lab.client,
        "addr",
        "add",
        &format!("{first}/24"),
        "dev",
        "vc0",
    ]);
    let out = dhclient(&lab, dir.path(), &["-r"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("DHCP release") && l.contains(&first)
    })
    .expect("release seen");

    // 4. The reserved machine gets its profile address, from busybox udhcpc.
    lab.set_client_mac(RESERVED_MAC);
    assert_eq!(
        udhcpc(&lab).as_deref(),
        Some(RESERVED_IP),
        "{}",
        d.log_text()
    );
    let line = d
        .wait_log(Duration::from_secs(5), |l| {
            l.contains("DHCP ack") && l.contains(RESERVED_IP)
        })
        .unwrap();
    assert!(line.contains("profile=node"), "{line}");

    // 5. Two more clients, then SIGKILL and restart: every lease is still held by its MAC.
    lab.set_client_mac("52:54:00:77:00:02");
    let second = udhcpc(&lab).expect("second lease");
    d.kill9();
    let d = Daemon::start_in(&lab.server, &cfg);
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("DHCP leases restored") && l.contains("leases=3")
    })
    .unwrap_or_else(|| panic!("{}", d.log_text()));
    lab.set_client_mac("52:54:00:77:00:03");
    let third = udhcpc(&lab).expect("third lease");
    assert_ne!(
        third, second,
        "an acknowledged lease was given to another MAC after the restart"
    );
    assert_ne!(third, RESERVED_IP);
    lab.set_client_mac("52:54:00:77:00:02");
    assert_eq!(
        udhcpc(&lab).as_deref(),
        Some(second.as_str()),
        "the restarted server remembers who holds what"
    );
}

#[test]
fn a_missing_interface_is_a_start_up_error() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP a_missing_interface_is_a_start_up_error: {why}");
        return;
    }
    let lab = Lab::new("b");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("interfaces = [\"vs0\"]", "interfaces = [\"nosuch0\"]");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.server,
            env!("CARGO_BIN_EXE_kindling"),
            "serve",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nosuch0"), "{err}");
}

/// Kea's perfdhcp: 2000 four-way exchanges at 200/s from 2000 simulated clients, zero drops.
/// perfdhcp acts as a relay (giaddr = its own address, listening on port 67), so this also
/// exercises relay addressing: subnet chosen by giaddr, replies unicast to giaddr:67.
#[test]
fn perfdhcp_thousands_of_exchanges_without_drops() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP perfdhcp_thousands_of_exchanges_without_drops: {why}");
        return;
    }
    if Command::new("sh")
        .args(["-c", "command -v perfdhcp"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!(
            "SKIP perfdhcp_thousands_of_exchanges_without_drops: perfdhcp (kea-admin) is not installed"
        );
        return;
    }
    let lab = Lab::new("p");
    must(&[
        "-n",
        &lab.client,
        "addr",
        "add",
        "10.77.0.3/24",
        "dev",
        "vc0",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // A pool large enough for every simulated client.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("network = \"10.77.0.0/24\"", "network = \"10.77.0.0/20\"")
        .replace(
            "range = [\"10.77.0.100\", \"10.77.0.110\"]",
            "range = [\"10.77.1.1\", \"10.77.14.254\"]",
        )
        .replace(
            "[paths]",
            "[log]\nlevel = \"warn,kindling::app=info\"\n[paths]",
        );
    std::fs::write(&cfg, text).unwrap();
    must(&["-n", &lab.server, "addr", "flush", "dev", "vs0"]);
    must(&[
        "-n",
        &lab.server,
        "addr",
        "add",
        "10.77.0.2/20",
        "dev",
        "vs0",
    ]);
    let d = Daemon::start_in(&lab.server, &cfg);
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("listening for DHCP on vs0")
    })
    .expect("DHCP listening");
    let out = lab.client_run(
        60,
        &[
            "perfdhcp", "-4", "-l", "vc0", "-r", "200", "-n", "2000", "-R", "2000", "-p", "30",
            "-W", "2000000",
        ],
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .collect()
    };
    let (sent, received, drops, rejected) = (
        field("sent packets:"),
        field("received packets:"),
        field("drops:"),
        field("rejected leases:"),
    );
    assert_eq!(
        sent,
        vec![2000, 2000],
        "DISCOVER and REQUEST counts:\n{text}\n{}",
        d.log_text()
    );
    assert_eq!(received, vec![2000, 2000], "OFFER and ACK counts:\n{text}");
    assert_eq!(drops, vec![0, 0], "{text}");
    assert_eq!(rejected, vec![0, 0], "{text}");
}

/// Namespaces deleted (and a child process killed) on drop.
struct Guard {
    namespaces: Vec<String>,
    children: Vec<std::process::Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// client ── relay (isc-dhcp-relay, adds option 82) ── server: the relayed client gets an
/// address from the relay's subnet (chosen by giaddr), the reply reaches it through the relay
/// (which requires option 82 echoed back), and a selector on the circuit-id picks its profile.
#[test]
fn relayed_through_dhcrelay_with_option_82() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP relayed_through_dhcrelay_with_option_82: {why}");
        return;
    }
    if Command::new("sh")
        .args(["-c", "command -v dhcrelay"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!(
            "SKIP relayed_through_dhcrelay_with_option_82: dhcrelay (isc-dhcp-relay) is not installed"
        );
        return;
    }
    let id = std::process::id();
    let (s, r, c) = (
        format!("kdl{id}rs"),
        format!("kdl{id}rr"),
        format!("kdl{id}rc"),
    );
    let mut guard = Guard {
        namespaces: vec![s.clone(), r.clone(), c.clone()],
        children: Vec::new(),
    };
    for ns in &guard.namespaces {
        must(&["netns", "add", ns]);
        must(&["-n", ns, "link", "set", "lo", "up"]);
    }
    must(&[
        "-n", &s, "link", "add", "vs0", "type", "veth", "peer", "name", "rs0", "netns", &r,
    ]);
    must(&[
        "-n", &r, "link", "add", "rc0", "type", "veth", "peer", "name", "vc0", "netns", &c,
    ]);
    must(&["-n", &s, "addr", "add", "10.77.0.2/24", "dev", "vs0"]);
    must(&["-n", &r, "addr", "add", "10.77.0.1/24", "dev", "rs0"]);
    must(&["-n", &r, "addr", "add", "10.79.0.1/24", "dev", "rc0"]);
    for (ns, dev) in [(&s, "vs0"), (&r, "rs0"), (&r, "rc0"), (&c, "vc0")] {
        must(&["-n", ns, "link", "set", dev, "up"]);
    }
    must(&["-n", &s, "route", "add", "10.79.0.0/24", "via", "10.77.0.1"]);

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "[[dhcp.subnet]]\nnetwork = \"10.79.0.0/24\"\nrange = [\"10.79.0.100\", \"10.79.0.110\"]\n\
           server_ip = \"10.77.0.2\"\nrouter = \"10.79.0.1\"\n";
    std::fs::write(&cfg, text).unwrap();
    write(
        dir.path(),
        "profiles/relayed.toml",
        "[boot]\nkernel = \"k\"\n[[select]]\nlabels = { circuit_id = \"rc0\" }\n",
    );
    let d = Daemon::start_in(&s, &cfg);
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("listening for DHCP on vs0")
    })
    .expect("DHCP listening");
    guard.children.push(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &r,
                "dhcrelay",
                "-d",
                "-4",
                "-a",
                "-iu",
                "rs0",
                "-id",
                "rc0",
                "10.77.0.2",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dhcrelay"),
    );
    std::thread::sleep(Duration::from_millis(500)); // dhcrelay has no readiness signal

    let got = udhcpc_in(&c);
    let got = got.unwrap_or_else(|| panic!("no lease through the relay:\n{}", d.log_text()));
    assert!(
        got.starts_with("10.79.0.1"),
        "address from the relayed subnet: {got}"
    );
    let line = d
        .wait_log(Duration::from_secs(5), |l| {
            l.contains("DHCP ack") && l.contains(&got)
        })
        .unwrap();
    assert!(
        line.contains("profile=relayed"),
        "option 82 circuit-id selected the profile: {line}"
    );
    drop(guard);
}

//! DHCP full mode against real clients (ISC dhclient, busybox udhcpc), inside network
//! namespaces this test creates: a server namespace and a client namespace joined by a veth
//! pair created *inside* them. Nothing is attached to the host namespace; everything is removed
//! on drop, also when an assertion fails. Needs root and iproute2; skips with a reason
//! otherwise (CI runs as root).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dhcproto::v4::{
    Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use common::{Daemon, Netns, have, in_netns, ip, udp_in_netns, write};

const RESERVED_MAC: &str = "52:54:00:77:00:50";
const RESERVED_IP: &str = "10.77.0.50";

/// Two namespaces and a veth pair, deleted on drop.
struct Lab {
    server: String,
    client: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = std::process::id();
        let lab = Lab {
            server: format!("kdl{id}{tag}s"),
            client: format!("kdl{id}{tag}c"),
        };
        let (s, c) = (lab.server.as_str(), lab.client.as_str());
        ip(&["netns", "add", s]);
        ip(&["netns", "add", c]);
        ip(&[
            "-n", s, "link", "add", "vs0", "type", "veth", "peer", "name", "vc0", "netns", c,
        ]);
        ip(&["-n", s, "addr", "add", "10.77.0.2/24", "dev", "vs0"]);
        for (ns, dev) in [(s, "vs0"), (s, "lo"), (c, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        lab.set_client_mac("52:54:00:77:00:01");
        lab
    }

    fn set_client_mac(&self, mac: &str) {
        let c = self.client.as_str();
        ip(&["-n", c, "link", "set", "vc0", "down"]);
        ip(&["-n", c, "addr", "flush", "dev", "vc0"]);
        ip(&["-n", c, "link", "set", "vc0", "address", mac]);
        ip(&["-n", c, "link", "set", "vc0", "up"]);
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
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
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
        if !have(tool) {
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

/// Whether to skip `test`: prints the reason (no root, or a tool missing: `(tool, package)`).
fn skip(test: &str, tools: &[(&str, &str)]) -> bool {
    let why = skip_reason().or_else(|| {
        tools
            .iter()
            .find(|(tool, _)| !have(tool))
            .map(|(tool, pkg)| format!("{tool} ({pkg}) is not installed"))
    });
    if let Some(why) = &why {
        eprintln!("SKIP {test}: {why}");
    }
    why.is_some()
}

/// A running full-mode test setup: the lab, its files and the daemon.
struct Setup {
    lab: Lab,
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
    d: Daemon,
}

/// The common start of a full-mode test: `None` (with the reason printed) without root or
/// tools; else the lab, the config (changed by `edit`) and the daemon listening on vs0.
fn start(test: &str, tag: &str, edit: impl FnOnce(String) -> String) -> Option<Setup> {
    if skip(test, &[]) {
        return None;
    }
    let lab = Lab::new(tag);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let text = edit(std::fs::read_to_string(&cfg).unwrap());
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start_in(&lab.server, &cfg);
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("listening for DHCP on vs0")
    })
    .expect("DHCP listening");
    Some(Setup { lab, dir, cfg, d })
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
    dhclient_in(&lab.client, dir, args)
}

/// ISC dhclient, one attempt, no configuration (`-sf /bin/true`), on `vc0` of namespace `ns`;
/// its lease file is `dir/dhclient.leases`.
fn dhclient_in(ns: &str, dir: &Path, args: &[&str]) -> Output {
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
    Command::new("timeout")
        .args(["40", "ip", "netns", "exec", ns])
        .args(&all)
        .output()
        .expect("run dhclient")
}

#[test]
fn full_mode_with_dhclient_and_udhcpc_and_a_kill_9_restart() {
    let Some(Setup { lab, dir, cfg, d }) = start(
        "full_mode_with_dhclient_and_udhcpc_and_a_kill_9_restart",
        "a",
        |t| t,
    ) else {
        return;
    };

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
    ip(&[
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

/// SIGTERM stops an idle full-mode daemon at once: the lease writer ends with the services
/// (after a last commit) instead of holding shutdown for the whole grace period.
#[test]
fn sigterm_stops_an_idle_full_mode_daemon_in_under_a_second() {
    let Some(Setup { lab, d, .. }) = start(
        "sigterm_stops_an_idle_full_mode_daemon_in_under_a_second",
        "q",
        |t| t,
    ) else {
        return;
    };
    // One exchange first, so the lease writer has work behind it.
    assert!(udhcpc(&lab).is_some(), "{}", d.log_text());
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = d.terminate();
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
}

#[test]
fn a_missing_interface_is_a_start_up_error() {
    if skip("a_missing_interface_is_a_start_up_error", &[]) {
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
    if skip(
        "perfdhcp_thousands_of_exchanges_without_drops",
        &[("perfdhcp", "kea-admin")],
    ) {
        return;
    }
    let lab = Lab::new("p");
    ip(&[
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
    ip(&["-n", &lab.server, "addr", "flush", "dev", "vs0"]);
    ip(&[
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
    let field = |name: &str| common::perfdhcp_field(&text, name);
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

/// client ── relay (isc-dhcp-relay, adds option 82) ── server: the relayed client gets an
/// address from the relay's subnet (chosen by giaddr), the reply reaches it through the relay
/// (which requires option 82 echoed back), and a selector on the circuit-id picks its profile.
#[test]
fn relayed_through_dhcrelay_with_option_82() {
    if skip(
        "relayed_through_dhcrelay_with_option_82",
        &[("dhcrelay", "isc-dhcp-relay")],
    ) {
        return;
    }
    let mut guard = Netns::new(&["rs", "rr", "rc"]);
    let (s, r, c) = (
        guard.names[0].clone(),
        guard.names[1].clone(),
        guard.names[2].clone(),
    );
    guard.veth(&s, "vs0", &r, "rs0");
    guard.veth(&r, "rc0", &c, "vc0");
    ip(&["-n", &s, "addr", "add", "10.77.0.2/24", "dev", "vs0"]);
    ip(&["-n", &r, "addr", "add", "10.77.0.1/24", "dev", "rs0"]);
    ip(&["-n", &r, "addr", "add", "10.79.0.1/24", "dev", "rc0"]);
    for (ns, dev) in [(&s, "vs0"), (&r, "rs0"), (&r, "rc0"), (&c, "vc0")] {
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    ip(&["-n", &s, "route", "add", "10.79.0.0/24", "via", "10.77.0.1"]);

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

/// A PXE request as firmware sends it: UEFI x64 (option 93 = 7, `PXEClient` class, GUID).
fn pxe_request(kind: MessageType, mac: [u8; 6], xid: u32, ipxe: bool) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_flags(Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::X64));
    o.insert(DhcpOption::ClientMachineIdentifier(
        [&[0u8][..], &[0x11; 16]].concat(),
    ));
    o.insert(DhcpOption::ParameterRequestList(
        [1u8, 3, 6, 43, 60, 66, 67, 97]
            .into_iter()
            .map(OptionCode::from)
            .collect(),
    ));
    if ipxe {
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![19, 1, 1],
        )));
    }
    m
}

fn encode(m: &Message) -> Vec<u8> {
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

/// Send `req` to `to` up to `tries` times; collect the replies with its xid until `done`
/// says enough (each try waits up to a second).
fn exchange(
    sock: &UdpSocket,
    req: &Message,
    to: SocketAddrV4,
    tries: u32,
    done: impl Fn(&[Message]) -> bool,
) -> Vec<Message> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    for _ in 0..tries {
        sock.send_to(&encode(req), to).unwrap();
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n]))
                && m.xid() == req.xid()
                && m.opcode() == Opcode::BootReply
            {
                got.push(m);
            }
            if done(&got) {
                return got;
            }
        }
    }
    got
}

fn server_id(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

fn file_of(m: &Message) -> String {
    m.fname_str()
        .and_then(Result::ok)
        .unwrap_or_default()
        .trim_end_matches('\0')
        .to_string()
}

const KINDLING: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const DNSMASQ: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// Proxy mode beside dnsmasq as the LAN's plain DHCP server, each in its own namespace on one
/// bridge. An emulated UEFI PXE ROM (then iPXE) on raw UDP: dnsmasq gives the address,
/// Kindling the boot file (proxy OFFER on 67, ACK on 4011 back to the source port), and
/// Kindling never offers an address. A machine that boots from disk and a plain dhclient get
/// their address from dnsmasq and nothing from Kindling.
#[test]
fn proxy_mode_beside_dnsmasq() {
    if skip("proxy_mode_beside_dnsmasq", &[("dnsmasq", "dnsmasq-base")]) {
        return;
    }
    let mut guard = Netns::new(&["xs", "xd", "xc"]);
    let (s, d, c) = (
        guard.names[0].clone(),
        guard.names[1].clone(),
        guard.names[2].clone(),
    );
    // Kindling's namespace holds the bridge (the "switch"); dnsmasq and the client hang off it.
    ip(&["-n", &s, "link", "add", "br0", "type", "bridge"]);
    guard.veth(&s, "sd0", &d, "vd0");
    guard.veth(&s, "sc0", &c, "vc0");
    for port in ["sd0", "sc0"] {
        ip(&["-n", &s, "link", "set", port, "master", "br0"]);
        ip(&["-n", &s, "link", "set", port, "up"]);
    }
    ip(&["-n", &s, "addr", "add", "10.77.0.2/24", "dev", "br0"]);
    ip(&["-n", &s, "link", "set", "br0", "up"]);
    ip(&["-n", &d, "addr", "add", "10.77.0.1/24", "dev", "vd0"]);
    ip(&["-n", &d, "link", "set", "vd0", "up"]);
    ip(&[
        "-n",
        &c,
        "link",
        "set",
        "vc0",
        "address",
        "52:54:00:77:00:31",
    ]);
    ip(&["-n", &c, "link", "set", "vc0", "up"]);

    let dir = tempfile::tempdir().unwrap();
    let leases = dir.path().join("dnsmasq.leases");
    guard.dnsmasq(
        &d,
        "vd0",
        "10.77.0.100,10.77.0.110,255.255.255.0,10m",
        &leases,
        &[],
    );

    let ipxe = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe");
    write(
        dir.path(),
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[server]\nbase_url = \"http://10.77.0.2:8080\"\n\
             [paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n\
             [dhcp]\nmode = \"proxy\"\ninterfaces = [\"br0\"]\n",
            ipxe.display()
        ),
    );
    write(
        dir.path(),
        "profiles/node.toml",
        "default = true\n[boot]\nkernel = \"k\"\n",
    );
    write(
        dir.path(),
        "profiles/disk.toml",
        "[boot]\nlocal = true\n[[machine]]\nmac = \"52:54:00:77:00:32\"\n",
    );
    let cfg = dir.path().join("kindling.toml");
    let daemon = Daemon::start_in(&s, &cfg);
    daemon
        .wait_log(Duration::from_secs(5), |l| {
            l.contains("listening for DHCP on br0") && l.contains("port=4011")
        })
        .unwrap_or_else(|| panic!("{}", daemon.log_text()));

    let mac = [0x52, 0x54, 0x00, 0x77, 0x00, 0x31];
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let rom = udp_in_netns(&c, "vc0", SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));

    // 1. DISCOVER: an address offer from dnsmasq and a proxy offer (no address) from Kindling.
    let discover = pxe_request(MessageType::Discover, mac, 0x3100_0001, false);
    let both = |r: &[Message]| {
        r.iter().any(|m| server_id(m) == Some(DNSMASQ))
            && r.iter().any(|m| server_id(m) == Some(KINDLING))
    };
    let offers = exchange(&rom, &discover, bcast, 5, both);
    assert!(both(&offers), "offers: {offers:?}\n{}", daemon.log_text());
    let from = |who| offers.iter().find(|m| server_id(m) == Some(who)).unwrap();
    let address = from(DNSMASQ).yiaddr();
    assert!(address.octets()[..3] == [10, 77, 0] && address.octets()[3] >= 100);
    let proxy = from(KINDLING);
    assert_eq!(
        proxy.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "Kindling gave no address"
    );
    assert!(proxy.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(
        proxy.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    match proxy.opts().get(OptionCode::VendorExtensions) {
        Some(DhcpOption::VendorExtensions(o43)) => assert!(
            o43.windows(9)
                .any(|w| w == [8, 7, 0x80, 0, 1, 10, 77, 0, 2]),
            "option 43 names this boot server: {o43:?}"
        ),
        other => panic!("no option 43: {other:?}"),
    }
    assert!(
        proxy
            .opts()
            .get(OptionCode::ClientMachineIdentifier)
            .is_some()
    );

    // 2. The REQUEST goes to dnsmasq, which ACKs; Kindling stays silent on 67.
    let mut request = pxe_request(MessageType::Request, mac, 0x3100_0002, false);
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(DNSMASQ));
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(address));
    let acks = exchange(&rom, &request, bcast, 3, |r| !r.is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        acks.iter()
            .all(|m| server_id(m) == Some(DNSMASQ) && m.yiaddr() == address),
        "{acks:?}"
    );
    assert!(!acks.is_empty(), "dnsmasq ACKed");
    ip(&[
        "-n",
        &c,
        "addr",
        "add",
        &format!("{address}/24"),
        "dev",
        "vc0",
    ]);

    // 3. OVMF-style boot server request from port 4011 to Kindling's 4011: the boot file,
    //    back to port 4011.
    let ovmf = udp_in_netns(&c, "vc0", SocketAddrV4::new(address, 4011));
    let mut bs = pxe_request(MessageType::Request, mac, 0x3100_0003, false);
    bs.set_ciaddr(address);
    bs.set_flags(Flags::default());
    bs.opts_mut().insert(DhcpOption::VendorExtensions(vec![
        71, 4, 0x80, 0, 0, 0, 255,
    ]));
    let to_kindling = SocketAddrV4::new(KINDLING, 4011);
    let ack = exchange(&ovmf, &bs, to_kindling, 3, |r| !r.is_empty());
    let ack = ack
        .first()
        .unwrap_or_else(|| panic!("no ACK on 4011:\n{}", daemon.log_text()));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(file_of(ack), "ipxe.efi");
    assert_eq!(ack.siaddr(), KINDLING);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        ack.opts().get(OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![
            71, 4, 0x80, 0, 0, 0, 255
        ]))
    );

    // 4. iPXE: its DISCOVER gets the script URL in Kindling's proxy offer; its proxy REQUEST
    //    from port 68 gets the URL back on port 68.
    let discover = pxe_request(MessageType::Discover, mac, 0x3100_0004, true);
    let offers = exchange(&rom, &discover, bcast, 5, both);
    let proxy = offers
        .iter()
        .find(|m| server_id(m) == Some(KINDLING))
        .unwrap_or_else(|| panic!("{offers:?}"));
    assert_eq!(file_of(proxy), "http://10.77.0.2:8080/boot.ipxe");
    assert_eq!(proxy.yiaddr(), Ipv4Addr::UNSPECIFIED);
    let mut req = pxe_request(MessageType::Request, mac, 0x3100_0005, true);
    req.set_ciaddr(address);
    let ack = exchange(&rom, &req, to_kindling, 3, |r| !r.is_empty());
    assert_eq!(
        ack.first().map(file_of).as_deref(),
        Some("http://10.77.0.2:8080/boot.ipxe"),
        "{}",
        daemon.log_text()
    );

    // 5. A machine whose profile boots from disk: dnsmasq offers, Kindling does not.
    let disk = [0x52, 0x54, 0x00, 0x77, 0x00, 0x32];
    let discover = pxe_request(MessageType::Discover, disk, 0x3200_0001, false);
    let offers = exchange(&rom, &discover, bcast, 6, |r| {
        r.iter().any(|m| server_id(m) == Some(DNSMASQ))
    });
    assert!(
        offers.iter().any(|m| server_id(m) == Some(DNSMASQ)),
        "{offers:?}"
    );
    assert!(
        offers.iter().all(|m| server_id(m) != Some(KINDLING)),
        "{offers:?}"
    );

    // 6. A plain dhclient (no PXE class): address from dnsmasq, nothing from Kindling.
    ip(&["-n", &c, "addr", "flush", "dev", "vc0"]);
    ip(&["-n", &c, "link", "set", "vc0", "down"]);
    ip(&[
        "-n",
        &c,
        "link",
        "set",
        "vc0",
        "address",
        "52:54:00:77:00:33",
    ]);
    ip(&["-n", &c, "link", "set", "vc0", "up"]);
    let out = dhclient_in(&c, dir.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lf = dir.path().join("dhclient.leases");
    let got = dhclient_address(&lf).expect("dhclient lease");
    assert!(got.starts_with("10.77.0.1"), "{got}");
    assert_ne!(
        got,
        address.to_string(),
        "dnsmasq gave each machine its own address"
    );

    // Kindling answered only the netboot machine, and keeps no leases in proxy mode.
    let log = daemon.log_text();
    let proxy_lines: Vec<&str> = log.lines().filter(|l| l.contains("proxy DHCP")).collect();
    assert!(
        proxy_lines
            .iter()
            .all(|l| l.contains("mac=52:54:00:77:00:31")),
        "{log}"
    );
    for (xid, event) in [
        (0x3100_0001u32, "offer"),
        (0x3100_0003, "ack"),
        (0x3100_0004, "offer"),
        (0x3100_0005, "ack"),
    ] {
        assert!(
            proxy_lines
                .iter()
                .any(|l| l.contains(&format!("proxy DHCP {event}"))
                    && l.contains(&format!("xid={xid} "))),
            "{event} {xid:#x}: {log}"
        );
    }
    assert!(!dir.path().join("state/leases.redb").exists());
    let dnsmasq_leases = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(
        dnsmasq_leases.contains("52:54:00:77:00:31"),
        "{dnsmasq_leases}"
    );
    drop(guard);
}

/// `GET /metrics` from the daemon inside namespace `ns` (its HTTP listens on that namespace's
/// loopback).
fn metrics_in(ns: &str, d: &Daemon) -> String {
    let out = Command::new("timeout")
        .args(["10", "ip", "netns", "exec", ns, "curl", "-sf"])
        .arg(format!("http://{}/metrics", d.addr))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl /metrics failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Guards, with a raw client in the client namespace: more clients than addresses (the pool
/// runs out loudly: a warning, then "exhausted", and the pool metrics say so), one MAC
/// flooding (rate-limited), and garbage datagrams (dropped, counted, no crash).
#[test]
fn pool_exhaustion_floods_and_garbage_are_loud_not_fatal() {
    // `_dir` keeps the daemon's directory alive.
    let Some(Setup {
        lab,
        dir: _dir,
        cfg: _,
        d,
    }) = start(
        "pool_exhaustion_floods_and_garbage_are_loud_not_fatal",
        "f",
        |t| t,
    )
    else {
        return;
    };
    let sock = udp_in_netns(
        &lab.client,
        "vc0",
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    );
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let discover = |n: u8| {
        let mut m = pxe_request(
            MessageType::Discover,
            [2, 0, 0, 0, 0, n],
            0x4000_0000 + u32::from(n),
            false,
        );
        m.opts_mut().remove(OptionCode::ClassIdentifier);
        m.opts_mut().remove(OptionCode::ClientSystemArchitecture);
        m
    };

    // 15 clients, 11 addresses (10.77.0.100-110).
    let mut offered = std::collections::HashSet::new();
    for n in 1..=15u8 {
        let got = exchange(&sock, &discover(n), bcast, 1, |r| !r.is_empty());
        for m in got {
            assert!(offered.insert(m.yiaddr()), "{} offered twice", m.yiaddr());
        }
    }
    assert_eq!(offered.len(), 11, "{offered:?}\n{}", d.log_text());
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("DHCP pool is running low")
    })
    .unwrap_or_else(|| panic!("no low-pool warning:\n{}", d.log_text()));
    d.wait_log(Duration::from_secs(5), |l| l.contains("is exhausted"))
        .unwrap_or_else(|| panic!("no exhaustion warning:\n{}", d.log_text()));

    // One MAC floods: 40 more DISCOVERs; it had used 1 of its 30 per 10 s.
    let flood = encode(&discover(1));
    for _ in 0..40 {
        sock.send_to(&flood, bcast).unwrap();
    }
    // Garbage: three datagrams that are not DHCP.
    for junk in [
        &b"hello"[..],
        &[0u8; 300][..],
        &[1, 1, 6, 0, 0xff, 0xff][..],
    ] {
        sock.send_to(junk, bcast).unwrap();
    }
    d.wait_log(Duration::from_secs(5), |l| l.contains("DHCP rate limit"))
        .unwrap_or_else(|| panic!("no rate-limit warning:\n{}", d.log_text()));

    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = metrics_in(&lab.server, &d);
        let malformed = metric(
            &text,
            "kindling_dhcp_messages_total{type=\"malformed\",outcome=\"dropped\"}",
        );
        if malformed == Some(2) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let pool = |name: &str| {
        metric(
            &text,
            &format!("kindling_dhcp_pool_{name}{{subnet=\"10.77.0.0/24\"}}"),
        )
    };
    assert_eq!(pool("size"), Some(11), "{text}");
    assert_eq!(pool("used"), Some(11), "{text}");
    assert_eq!(pool("free"), Some(0), "{text}");
    let count = |t: &str, o: &str| {
        metric(
            &text,
            &format!("kindling_dhcp_messages_total{{type=\"{t}\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(
        count("discover", "ignored"),
        Some(4),
        "pool exhausted: {text}"
    );
    assert_eq!(count("discover", "rate_limited"), Some(11), "{text}");
    assert_eq!(count("discover", "offer"), Some(11 + 29), "{text}");
    // "hello" and the truncated header do not decode; 300 zero bytes decode as a BOOTP
    // packet that is not Ethernet.
    assert_eq!(count("malformed", "dropped"), Some(2), "{text}");
    assert_eq!(count("bootp", "dropped"), Some(1), "{text}");
    // Still serving.
    let again = exchange(&sock, &discover(2), bcast, 2, |r| !r.is_empty());
    assert_eq!(again.len(), 1, "{}", d.log_text());
}

/// dhclient keeps running on a short lease: it renews at T1 by unicast (RENEWING: ciaddr set,
/// no server id), gets the same address, and Kindling extends the lease. Its script only sets
/// the address on the namespace's interface (never resolv.conf).
#[test]
fn dhclient_renews_by_unicast() {
    let Some(Setup {
        lab,
        dir,
        cfg: _,
        d,
    }) = start("dhclient_renews_by_unicast", "r", |t| {
        t.replace("lease_time = \"10m\"", "lease_time = \"8s\"")
    })
    else {
        return;
    };
    let script = dir.path().join("script.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$reason\" in BOUND|RENEW|REBIND|REBOOT) ip addr replace \"$new_ip_address/24\" dev \"$interface\";; esac\nexit 0\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let log = dir.path().join("dhclient.log");
    let dhclient = Netns {
        names: Vec::new(),
        children: vec![
            Command::new("ip")
                .args(["netns", "exec", &lab.client, "dhclient", "-d", "-v", "-sf"])
                .arg(&script)
                .arg("-lf")
                .arg(dir.path().join("dhclient.leases"))
                .arg("-pf")
                .arg(dir.path().join("dhclient.pid"))
                .arg("vc0")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start dhclient"),
        ],
    };
    // The first ACK, then a renewal ACK for the same address (T1 = 4 s).
    let first = d
        .wait_log(Duration::from_secs(15), |l| l.contains("DHCP ack"))
        .unwrap_or_else(|| panic!("no ACK:\n{}", d.log_text()));
    let ip = first
        .split("ip=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let renewed = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&format!("DHCPREQUEST for {ip} on vc0 to 10.77.0.2 port 67"))
            && d.log_text().matches("DHCP ack").count() >= 2
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no unicast renewal:\n{text}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let acks: Vec<String> = d
        .log_text()
        .lines()
        .filter(|l| l.contains("DHCP ack"))
        .map(str::to_string)
        .collect();
    assert!(
        acks.iter().all(|l| l.contains(&format!("ip={ip} "))),
        "renewed the same address: {acks:?}"
    );
    assert!(
        renewed.contains(&format!("DHCPACK of {ip} from 10.77.0.2")),
        "{renewed}"
    );
    drop(dhclient); // kills it
}

/// A plain DHCP client's message (as dhclient sends it): `kind` from `chaddr`, with client
/// identifier `client_id` (type 1 + a MAC), broadcast flag set.
fn plain(kind: MessageType, chaddr: [u8; 6], xid: u32, client_id: [u8; 6]) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &chaddr,
    );
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut().insert(DhcpOption::ClientIdentifier(
        [&[1u8][..], &client_id[..]].concat(),
    ));
    m
}

/// Wait (at most 5 s) until `/metrics` satisfies `ok`; the last text either way.
fn metrics_until(ns: &str, d: &Daemon, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics_in(ns, d);
        if ok(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dhcp_count(text: &str, kind: &str, outcome: &str) -> u64 {
    metric(
        text,
        &format!("kindling_dhcp_messages_total{{type=\"{kind}\",outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0)
}

/// DHCP spoofing, replayed on the wire: a machine holds a lease; RELEASEs and DECLINEs forged
/// by another MAC, with the wrong ciaddr or with another client identifier are ignored
/// (counted, logged at debug only) and the lease stays; an INFORM from an off-subnet ciaddr
/// gets no answer while one from an address on the subnet does; the holder's own RELEASE
/// frees the address.
#[test]
fn forged_decline_release_and_inform_are_ignored() {
    let Some(Setup {
        lab,
        dir: _dir,
        cfg: _,
        d,
    }) = start("forged_decline_release_and_inform_are_ignored", "s", |t| t)
    else {
        return;
    };
    let sock = udp_in_netns(
        &lab.client,
        "vc0",
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    );
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let victim = [2, 0, 0, 0, 0xa, 1];
    let attacker = [2, 0, 0, 0, 0xa, 2];
    let one = |r: &[Message]| !r.is_empty();

    // The victim's DORA.
    let offer = exchange(
        &sock,
        &plain(MessageType::Discover, victim, 0x5000_0001, victim),
        bcast,
        3,
        one,
    );
    let offer = offer.first().expect("an OFFER");
    let ip = offer.yiaddr();
    let mut request = plain(MessageType::Request, victim, 0x5000_0002, victim);
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip));
    request
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(KINDLING));
    let ack = exchange(&sock, &request, bcast, 3, one);
    assert_eq!(
        ack.first().and_then(|m| m.opts().msg_type()),
        Some(MessageType::Ack),
        "{}",
        d.log_text()
    );
    let pool_used = "kindling_dhcp_pool_used{subnet=\"10.77.0.0/24\"}";
    assert_eq!(metric(&metrics_in(&lab.server, &d), pool_used), Some(1));

    // Forgeries: three RELEASEs, two DECLINEs, one INFORM from off the subnet.
    let next_ip = Ipv4Addr::from(u32::from(ip) + 1);
    let release = |chaddr, ciaddr, cid| {
        let mut m = plain(MessageType::Release, chaddr, 0x5000_0010, cid);
        m.set_ciaddr(ciaddr);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(KINDLING));
        m
    };
    let decline = |chaddr, cid| {
        let mut m = plain(MessageType::Decline, chaddr, 0x5000_0020, cid);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(KINDLING));
        m
    };
    let mut inform = plain(MessageType::Inform, attacker, 0x5000_0030, attacker);
    inform.set_ciaddr(Ipv4Addr::new(192, 0, 2, 5));
    for m in [
        release(attacker, ip, attacker),
        release(victim, next_ip, victim),
        release(victim, ip, attacker),
        decline(attacker, attacker),
        decline(victim, attacker),
        inform.clone(),
    ] {
        sock.send_to(&encode(&m), bcast).unwrap();
    }
    let text = metrics_until(&lab.server, &d, |t| {
        dhcp_count(t, "release", "ignored")
            + dhcp_count(t, "decline", "ignored")
            + dhcp_count(t, "inform", "ignored")
            >= 6
    });
    assert_eq!(dhcp_count(&text, "release", "ignored"), 3, "{text}");
    assert_eq!(dhcp_count(&text, "decline", "ignored"), 2, "{text}");
    assert_eq!(dhcp_count(&text, "inform", "ignored"), 1, "{text}");
    assert_eq!(dhcp_count(&text, "release", "release"), 0, "{text}");
    assert_eq!(dhcp_count(&text, "decline", "decline"), 0, "{text}");
    assert_eq!(metric(&text, pool_used), Some(1), "the lease stays: {text}");
    let mut buf = [0u8; 1500];
    let off_subnet_answered = (0..4).any(|_| {
        sock.recv_from(&mut buf).is_ok_and(|(n, _)| {
            Message::decode(&mut Decoder::new(&buf[..n])).is_ok_and(|m| m.xid() == 0x5000_0030)
        })
    });
    assert!(!off_subnet_answered, "an off-subnet INFORM was answered");
    let log = d.log_text();
    assert!(
        !log.contains("DHCP release") && !log.contains("DHCP decline"),
        "{log}"
    );

    // The victim still has its address: an INIT-REBOOT REQUEST is ACKed with it.
    let mut reboot = plain(MessageType::Request, victim, 0x5000_0003, victim);
    reboot.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    let again = exchange(&sock, &reboot, bcast, 3, one);
    let again = again.first().expect("an answer to INIT-REBOOT");
    assert_eq!(again.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(again.yiaddr(), ip);

    // An INFORM from an address on the subnet is answered (unicast to its ciaddr).
    common::ip(&[
        "-n",
        &lab.client,
        "addr",
        "add",
        "10.77.0.9/24",
        "dev",
        "vc0",
    ]);
    let mut inform = plain(MessageType::Inform, attacker, 0x5000_0031, attacker);
    inform.set_ciaddr(Ipv4Addr::new(10, 77, 0, 9));
    let informed = exchange(&sock, &inform, bcast, 3, one);
    let informed = informed
        .first()
        .expect("an INFORM from the subnet is answered");
    assert_eq!(informed.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(informed.yiaddr(), Ipv4Addr::UNSPECIFIED);

    // The holder's own RELEASE frees the address.
    sock.send_to(&encode(&release(victim, ip, victim)), bcast)
        .unwrap();
    let text = metrics_until(&lab.server, &d, |t| metric(t, pool_used) == Some(0));
    assert_eq!(metric(&text, pool_used), Some(0), "{text}");
    assert_eq!(dhcp_count(&text, "release", "release"), 1, "{text}");
    d.wait_log(Duration::from_secs(5), |l| l.contains("DHCP release"))
        .unwrap_or_else(|| panic!("no release line:\n{}", d.log_text()));
}

/// The record cap under a DHCP flood: random-MAC PXE DISCOVERs, 40 every 10 ms (at
/// most 20,000, at most 10 s) with the inventory capped at 200 records, while a machine with
/// a reservation runs ten DORA exchanges: each one completes with its reserved address, the
/// inventory stays at its cap, and the service keeps up with the flood.
#[test]
fn a_reserved_machine_completes_every_dora_while_pxe_clients_flood_at_the_record_cap() {
    let Some(Setup {
        lab,
        dir: _dir,
        cfg: _,
        d,
    }) = start(
        "a_reserved_machine_completes_every_dora_while_pxe_clients_flood_at_the_record_cap",
        "q",
        |t| format!("{t}\n[inventory]\nmax_machines = 200\n"),
    )
    else {
        return;
    };
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    // The flood from its own port (replies come back there, not to the machine's 68).
    let flood_sock = udp_in_netns(
        &lab.client,
        "vc0",
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 6800),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0u32;
            while sent < 20_000
                && started.elapsed() < Duration::from_secs(10)
                && !stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                for _ in 0..40 {
                    let n = sent.to_be_bytes();
                    let req = pxe_request(
                        MessageType::Discover,
                        [0x0a, 0xee, n[0], n[1], n[2], n[3]],
                        0x6000_0000 + sent,
                        false,
                    );
                    let _ = flood_sock.send_to(&encode(&req), bcast);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (sent, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_secs(1));

    let sock = udp_in_netns(
        &lab.client,
        "vc0",
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    );
    let reserved: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x50];
    let reserved_ip: Ipv4Addr = RESERVED_IP.parse().unwrap();
    let kind_of = |r: &[Message], k| r.iter().any(|m| m.opts().msg_type() == Some(k));
    let mut completed = 0;
    for i in 0..10u32 {
        let discover = pxe_request(MessageType::Discover, reserved, 0x7000_0000 + i, false);
        let offers = exchange(&sock, &discover, bcast, 2, |r| {
            kind_of(r, MessageType::Offer)
        });
        let Some(offer) = offers
            .iter()
            .find(|m| m.opts().msg_type() == Some(MessageType::Offer))
        else {
            continue;
        };
        assert_eq!(offer.yiaddr(), reserved_ip);
        let mut request = pxe_request(MessageType::Request, reserved, 0x7000_0000 + i, false);
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(reserved_ip));
        request
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(KINDLING));
        let acks = exchange(&sock, &request, bcast, 2, |r| kind_of(r, MessageType::Ack));
        if let Some(ack) = acks
            .iter()
            .find(|m| m.opts().msg_type() == Some(MessageType::Ack))
        {
            assert_eq!(ack.yiaddr(), reserved_ip);
            completed += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, took) = flood.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let text = metrics_in(&lab.server, &d);
    let handled: u64 = text
        .lines()
        .filter(|l| l.starts_with("kindling_dhcp_messages_total{type=\"discover\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let records: u64 = text
        .lines()
        .filter(|l| l.starts_with("kindling_machines{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    eprintln!(
        "flood: {sent} DISCOVERs in {:.1} s; {handled} DISCOVERs handled (with the machine's); \
         {records} records; {completed} of 10 DORA completed",
        took.as_secs_f64()
    );
    assert_eq!(completed, 10, "{}", d.log_text());
    assert!(records <= 200, "{records} records at a cap of 200");
    assert!(
        handled * 10 >= u64::from(sent) * 9,
        "only {handled} of {sent} flood DISCOVERs handled"
    );
}

/// Wait (at most 5 s) until `dev` in `ns` has a link-local address that finished duplicate
/// address detection (a tentative one cannot send or be answered).
fn wait_link_local(ns: &str, dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["-n", ns, "-6", "addr", "show", "dev", dev])
            .output()
            .expect("ip addr");
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("fe80::") && !text.contains("tentative") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no link-local address on {dev}: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// rdisc6 (a real router-discovery client) on the client's vc0: one solicitation, a short
/// wait; what it printed.
fn rdisc6(lab: &Lab) -> String {
    let out = lab.client_run(10, &["rdisc6", "-1", "-n", "-r", "2", "-w", "400", "vc0"]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The value rdisc6 printed for `field` (`Router lifetime   :   0 (0x00000000) seconds`).
fn rdisc6_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim())
}

fn ra_count(text: &str, outcome: &str) -> u64 {
    metric(
        text,
        &format!("kindling_router_solicitations_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0)
}

/// A router solicitation sent from the client namespace's vc0 with hop limit `hops`.
fn send_rs(ns: &str, msg: Vec<u8>, hops: u32) {
    in_netns(ns, move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV6),
        )
        .unwrap();
        s.bind_device(Some(b"vc0")).unwrap();
        s.set_multicast_hops_v6(hops).unwrap();
        let index = nix::net::if_::if_nametoindex("vc0").unwrap();
        let to = std::net::SocketAddrV6::new("ff02::2".parse().unwrap(), 0, 0, index);
        s.send_to(&msg, &to.into()).unwrap();
    });
}

/// iPXE waits about 16 s for an IPv6 router on a LAN without one. Kindling answers the router
/// solicitations of a machine in its firmware with "no router here" (rdisc6 as the client):
/// not before the machine's PXE ROM asked for an address, then at once, with router lifetime
/// 0, no prefix and neither M nor O; no longer once its OS asked for an address.
/// Solicitations routed from off the link or malformed are dropped and counted. With
/// `answer_router_solicitations = false`, nothing is answered.
#[test]
fn router_solicitations_of_booting_machines_get_an_empty_answer() {
    let test = "router_solicitations_of_booting_machines_get_an_empty_answer";
    if skip(test, &[("rdisc6", "ndisc6")]) {
        return;
    }
    let Some(Setup { lab, dir, cfg, d }) = start(test, "r", |t| t) else {
        return;
    };
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("answering IPv6 router solicitations of booting machines on vs0")
    })
    .unwrap_or_else(|| panic!("no responder:\n{}", d.log_text()));
    lab.set_client_mac(RESERVED_MAC);
    wait_link_local(&lab.server, "vs0");
    wait_link_local(&lab.client, "vc0");

    // 1. Not booting (no DHCP seen from it): no answer.
    let text = rdisc6(&lab);
    assert!(rdisc6_field(&text, "Router lifetime").is_none(), "{text}");
    let m = metrics_until(&lab.server, &d, |t| ra_count(t, "ignored") >= 1);
    assert!(ra_count(&m, "ignored") >= 1, "{m}");
    assert_eq!(ra_count(&m, "answered"), 0, "{m}");

    // 2. Its UEFI PXE ROM asks for an address: now answered, with nothing in the answer.
    let mac: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x50];
    let sock = udp_in_netns(
        &lab.client,
        "vc0",
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    );
    // Its PXE ROM's DISCOVER (transaction `xid`), offered an address by `d`.
    let rom_discover = |xid: u32, d: &Daemon| {
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let discover = pxe_request(MessageType::Discover, mac, xid, false);
        let offers = exchange(&sock, &discover, bcast, 3, |g| !g.is_empty());
        assert!(!offers.is_empty(), "no offer:\n{}", d.log_text());
    };
    rom_discover(41, &d);
    let text = rdisc6(&lab);
    let lifetime = rdisc6_field(&text, "Router lifetime")
        .unwrap_or_else(|| panic!("no answer:\n{text}\n--- kindling ---\n{}", d.log_text()));
    assert!(lifetime.starts_with("0 ("), "not a default router: {text}");
    assert_eq!(
        rdisc6_field(&text, "Stateful address conf."),
        Some("No"),
        "{text}"
    );
    assert_eq!(
        rdisc6_field(&text, "Stateful other conf."),
        Some("No"),
        "{text}"
    );
    assert!(!text.contains("Prefix"), "no prefix: {text}");
    assert!(
        text.contains(" from fe80::"),
        "from the link-local address: {text}"
    );
    let m = metrics_in(&lab.server, &d);
    assert_eq!(ra_count(&m, "answered"), 1, "{m}");

    // 3. Routed from off the link (hop limit 64), and malformed (an option of length 0):
    //    dropped and counted; the responder goes on.
    let rs = vec![133, 0, 0, 0, 0, 0, 0, 0];
    send_rs(&lab.client, rs.clone(), 64);
    send_rs(
        &lab.client,
        [rs, vec![1, 0, 0, 0, 0, 0, 0, 0]].concat(),
        255,
    );
    let m = metrics_until(&lab.server, &d, |t| ra_count(t, "dropped") >= 2);
    assert_eq!(ra_count(&m, "dropped"), 2, "{m}");
    assert!(
        rdisc6_field(&rdisc6(&lab), "Router lifetime").is_some(),
        "still answering"
    );

    // 4. Its OS asks for an address (udhcpc): no longer answered.
    assert_eq!(
        udhcpc(&lab).as_deref(),
        Some(RESERVED_IP),
        "{}",
        d.log_text()
    );
    let text = rdisc6(&lab);
    assert!(
        rdisc6_field(&text, "Router lifetime").is_none(),
        "answered an OS: {text}"
    );

    // 5. Turned off: not even a booting machine is answered.
    assert!(d.terminate().success());
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "lease_time = \"10m\"\n",
        "lease_time = \"10m\"\nanswer_router_solicitations = false\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start_in(&lab.server, &cfg);
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("listening for DHCP on vs0")
    })
    .expect("DHCP listening");
    rom_discover(42, &d);
    let text = rdisc6(&lab);
    assert!(
        rdisc6_field(&text, "Router lifetime").is_none(),
        "answered while off: {text}"
    );
    assert!(
        !d.log_text()
            .contains("answering IPv6 router solicitations of")
    );
    assert!(
        d.log_text().contains(
            "not answering IPv6 router solicitations: [dhcp] answer_router_solicitations = false"
        ),
        "{}",
        d.log_text()
    );
    drop(dir);
}

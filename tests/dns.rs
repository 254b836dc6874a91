//! DNS against the real daemon on loopback ephemeral ports, asked with `dig`: profile names
//! and their PTRs, wildcards, static records, truncation and TCP, forwarding (per zone and
//! upstream) through test dnsmasq servers on loopback, REFUSED for clients outside
//! `allow_recursion` and when no upstream is set, the SOA serial bumped by a profile change,
//! and a bounded flood of malformed packets. Then, in network namespaces (root), a name that
//! appears with a DHCP lease and goes away when the lease expires.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, replace, write};

/// A dnsmasq answering fixed names on 127.0.0.1:`port`, killed on drop.
struct Upstream(Child);

impl Upstream {
    fn start(port: u16, names: &[(&str, &str)]) -> Upstream {
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
        ])
        .args([
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--user=root",
        ])
        .arg(format!("--port={port}"))
        .arg("--pid-file");
        for (name, ip) in names {
            cmd.arg(format!("--address=/{name}/{ip}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let u = Upstream(child);
        // Ready when it answers.
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if !dig(port, &[names[0].0, "+short"]).trim().is_empty() {
                return u;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("test dnsmasq on port {port} did not answer");
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=3", "+tries=2"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(text: &str) -> String {
    text.split("status: ")
        .nth(1)
        .map(|r| r.split(',').next().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn sorted(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

fn lab(dns: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[paths]\nipxe_scripts = \"{}\"\n[dns]\nenabled = true\n\
             listen = \"127.0.0.1:0\"\ndomain = \"lab.example\"\nttl = \"30s\"\n{dns}",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display()
        ),
    );
    write(
        root,
        "profiles/node.toml",
        "[boot]\nkernel = \"k\"\n\
         [[machine]]\nmac = \"52:54:00:dd:00:01\"\nhostname = \"node1\"\nip = \"10.10.0.11\"\nlabels = { role = \"ingress\" }\n\
         [[machine]]\nmac = \"52:54:00:dd:00:02\"\nhostname = \"node2\"\nip = \"10.10.0.12\"\nlabels = { role = \"ingress\" }\n\
         [[machine]]\nmac = \"52:54:00:dd:00:03\"\nhostname = \"db\"\nip = \"10.10.0.13\"\n\
         [[machine]]\nmac = \"52:54:00:dd:00:05\"\nhostname = \"web\"\n",
    );
    dir
}

fn dns_port(d: &Daemon) -> u16 {
    d.logged_addr("listening for DNS on ").port()
}

#[test]
fn zones_forwarding_refusal_truncation_and_serials() {
    if !common::have("dig") || !common::have("dnsmasq") {
        eprintln!(
            "SKIP zones_forwarding_refusal_truncation_and_serials: needs dig and dnsmasq (scripts/setup.sh test)"
        );
        return;
    }
    let (up, corp) = (free_port(), free_port());
    let _upstream = Upstream::start(up, &[("outside.test", "10.9.9.9")]);
    let _corp = Upstream::start(corp, &[("corp.example", "10.1.2.3")]);
    let many: Vec<String> = (1..=60).map(|i| format!("\"10.20.0.{i}\"")).collect();
    let dir = lab(&format!(
        "upstreams = [\"127.0.0.1:{up}\"]\nallow_recursion = [\"127.0.0.1/32\"]\n\
         [[dns.forward]]\nzone = \"corp.example\"\nservers = [\"127.0.0.1:{corp}\"]\n\
         [[dns.record]]\nname = \"*.apps\"\ntype = \"A\"\nmachines = {{ role = \"ingress\" }}\n\
         [[dns.record]]\nname = \"git\"\ntype = \"CNAME\"\nvalue = \"db\"\n\
         [[dns.record]]\nname = \"@\"\ntype = \"TXT\"\nvalue = \"kindling lab\"\n\
         [[dns.record]]\nname = \"_ldap._tcp\"\ntype = \"SRV\"\nvalue = \"10 5 389 db\"\n\
         [[dns.record]]\nname = \"many\"\ntype = \"A\"\nvalues = [{}]\n",
        many.join(", ")
    ));
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let p = dns_port(&d);

    // Profile machines: A and PTR, over UDP and TCP.
    assert_eq!(
        dig(p, &["node1.lab.example", "+short"]).trim(),
        "10.10.0.11"
    );
    assert_eq!(
        dig(p, &["node1.lab.example", "+short", "+tcp"]).trim(),
        "10.10.0.11"
    );
    assert_eq!(
        dig(p, &["-x", "10.10.0.12", "+short"]).trim(),
        "node2.lab.example."
    );
    let nx = dig(p, &["nothere.lab.example"]);
    assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
    assert!(nx.contains("SOA"), "negative answers carry the SOA: {nx}");
    // Asked again (without EDNS, so no cookie makes each query new), an answer comes from the
    // cache, and /metrics counts both kinds.
    for _ in 0..3 {
        assert_eq!(
            dig(p, &["nODe1.lab.example", "+short", "+noedns"]).trim(),
            "10.10.0.11"
        );
    }
    let (_, metrics) = common::curl(&[], &d.url("/metrics"));
    for (source, rcode) in [
        ("cache", "noerror"),
        ("zones", "noerror"),
        ("zones", "nxdomain"),
    ] {
        let series = format!("kindling_dns_answers_total{{source=\"{source}\",rcode=\"{rcode}\"}}");
        assert!(
            common::metric(&metrics, &series) >= 1.0,
            "{series}: {metrics}"
        );
    }

    // Wildcard over the machines labelled role=ingress; static records.
    assert_eq!(
        sorted(&dig(p, &["anything.apps.lab.example", "+short"])),
        ["10.10.0.11", "10.10.0.12"]
    );
    assert_eq!(
        sorted(&dig(p, &["git.lab.example", "+short"])),
        ["10.10.0.13", "db.lab.example."]
    );
    assert_eq!(
        dig(p, &["lab.example", "TXT", "+short"]).trim(),
        "\"kindling lab\""
    );
    assert_eq!(
        dig(p, &["_ldap._tcp.lab.example", "SRV", "+short"]).trim(),
        "10 5 389 db.lab.example."
    );
    // 60 addresses do not fit 512 bytes: truncated over UDP, whole over TCP (dig retries).
    let udp = dig(p, &["many.lab.example", "+ignore", "+noedns"]);
    assert!(udp.contains(" tc"), "TC flag expected: {udp}");
    assert_eq!(
        dig(p, &["many.lab.example", "+short", "+noedns"])
            .lines()
            .count(),
        60
    );

    // Forwarding: upstream and per-zone, for allowed clients only.
    assert_eq!(dig(p, &["outside.test", "+short"]).trim(), "10.9.9.9");
    assert_eq!(dig(p, &["www.corp.example", "+short"]).trim(), "10.1.2.3");
    let refused = dig(p, &["-b", "127.0.0.2", "outside.test"]);
    assert_eq!(status(&refused), "REFUSED", "{refused}");
    // Kindling's own zone still answers that client.
    assert_eq!(
        dig(p, &["-b", "127.0.0.2", "node1.lab.example", "+short"]).trim(),
        "10.10.0.11"
    );
    // /metrics tells forwarded from refused answers, and times each forwarder.
    let (_, metrics) = common::curl(&[], &d.url("/metrics"));
    for (series, least) in [
        (
            "kindling_dns_answers_total{source=\"forwarded\",rcode=\"noerror\"}",
            2.0,
        ),
        (
            "kindling_dns_answers_total{source=\"refused\",rcode=\"refused\"}",
            1.0,
        ),
        ("kindling_dns_forward_seconds_count{zone=\".\"}", 1.0),
        (
            "kindling_dns_forward_seconds_count{zone=\"corp.example.\"}",
            1.0,
        ),
    ] {
        assert!(
            common::metric(&metrics, series) >= least,
            "{series}: {metrics}"
        );
    }
    assert_eq!(
        common::metric(
            &metrics,
            "kindling_dns_answers_total{source=\"other\",rcode=\"refused\"}"
        ),
        0.0,
        "{metrics}"
    );

    // A profile change shows up without a restart, with a higher SOA serial.
    let serial = |p: u16| -> u64 {
        let soa = dig(p, &["lab.example", "SOA", "+short"]);
        soa.split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("SOA: {soa}"))
    };
    let before = serial(p);
    let text = std::fs::read_to_string(dir.path().join("profiles/node.toml")).unwrap()
        + "[[machine]]\nmac = \"52:54:00:dd:00:04\"\nhostname = \"node4\"\nip = \"10.10.0.14\"\n";
    replace(dir.path(), "profiles/node.toml", &text);
    let end = Instant::now() + Duration::from_secs(10);
    while dig(p, &["node4.lab.example", "+short"]).trim() != "10.10.0.14" {
        assert!(
            Instant::now() < end,
            "node4 never appeared:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(serial(p) > before, "serial {before} not bumped");
    assert_eq!(
        dig(p, &["-x", "10.10.0.14", "+short"]).trim(),
        "node4.lab.example."
    );

    // hickory's own resolver gets the same answers.
    let resolved = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use hickory_server::net::runtime::TokioRuntimeProvider;
            use hickory_server::resolver::Resolver;
            use hickory_server::resolver::config::{NameServerConfig, ResolverConfig};
            let mut ns = NameServerConfig::udp_and_tcp("127.0.0.1".parse().unwrap());
            for c in &mut ns.connections {
                c.port = p;
            }
            let resolver = Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![ns]),
                TokioRuntimeProvider::default(),
            )
            .build()
            .unwrap();
            let ips = resolver.lookup_ip("node2.lab.example.").await.unwrap();
            let names = resolver
                .reverse_lookup("10.10.0.11".parse::<std::net::IpAddr>().unwrap())
                .await
                .unwrap();
            (
                ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
                names
                    .answers()
                    .iter()
                    .map(|r| r.data.to_string())
                    .collect::<Vec<_>>(),
            )
        });
    assert_eq!(
        resolved,
        (
            vec!["10.10.0.12".to_string()],
            vec!["node1.lab.example.".to_string()]
        )
    );

    // Without DHCP leases, the inventory names machines: `web` has no address in its profile;
    // its iPXE request from 127.0.0.1 gives it one.
    let out = Command::new("curl")
        .args(["-sf", "-o", "/dev/null"])
        .arg(d.url("/ipxe?mac=52:54:00:dd:00:05"))
        .status()
        .unwrap();
    assert!(out.success());
    let end = Instant::now() + Duration::from_secs(5);
    while dig(p, &["web.lab.example", "+short"]).trim() != "127.0.0.1" {
        assert!(Instant::now() < end, "web never named:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }

    // What a machine reports names nothing: a new MAC claiming `wpad`, `ns` or any name gets no
    // record (names come from profiles and granted leases only).
    for (n, name) in ["wpad", "ns", "evil"].iter().enumerate() {
        let _ = Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(d.url(&format!("/ipxe?mac=52:54:00:dd:01:0{n}&hostname={name}")))
            .status()
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(800));
    for name in ["wpad", "evil"] {
        let text = dig(p, &[&format!("{name}.lab.example")]);
        assert_eq!(status(&text), "NXDOMAIN", "{name}: {text}");
    }
    assert_eq!(
        dig(p, &["ns.lab.example", "+short"]).trim(),
        "",
        "ns is the server's own"
    );
    assert_eq!(dig(p, &["web.lab.example", "+short"]).trim(), "127.0.0.1");

    // Malformed packets: a bounded flood, then it still answers at once.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let started = Instant::now();
    for i in 0..3000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 600) as usize;
        let mut pkt: Vec<u8> = (0..len)
            .map(|j| (x.rotate_left(j as u32 % 64) & 0xff) as u8)
            .collect();
        // Some with a plausible header, so the decoder gets further in.
        if i % 3 == 0 && pkt.len() > 12 {
            pkt[2] = 0x01;
            pkt[4..6].copy_from_slice(&[0, 1]);
        }
        let _ = sock.send_to(&pkt, ("127.0.0.1", p));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "flood took too long"
        );
    }
    // The flood may still fill the socket's buffer when dig asks: it may retry (1 s each),
    // and then prints a line about the timeout before the answer.
    let answer = dig(p, &["node1.lab.example", "+short", "+time=1", "+tries=3"]);
    assert_eq!(
        answer
            .lines()
            .filter(|l| !l.starts_with(";;"))
            .collect::<Vec<_>>(),
        ["10.10.0.11"],
        "{answer}"
    );
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());

    // TCP: garbage, a length prefix promising more than comes, then a hang-up.
    for junk in [
        &b"\x00\x05hello"[..],
        b"\xff\xff",
        b"\x00\x0c\x12\x34\x01\x00\x00\x01",
    ] {
        use std::io::Write as _;
        let mut t = std::net::TcpStream::connect(("127.0.0.1", p)).unwrap();
        let _ = t.write_all(junk);
    }
    assert_eq!(
        dig(p, &["node1.lab.example", "+short", "+tcp"]).trim(),
        "10.10.0.11"
    );

    // Without upstreams, names outside the zones are REFUSED for everyone.
    let dir2 = lab("");
    let d2 = Daemon::start(&dir2.path().join("kindling.toml"));
    let p2 = dns_port(&d2);
    assert_eq!(status(&dig(p2, &["outside.test"])), "REFUSED");
    assert_eq!(dig(p2, &["db.lab.example", "+short"]).trim(), "10.10.0.13");
    // DNS stops with the other services.
    assert!(d2.terminate().success());
    assert!(d.terminate().success());
}

#[test]
fn a_bad_dns_config_is_a_check_error() {
    let dir = lab(
        "upstreams = [\"not-an-ip\"]\n[[dns.record]]\nname = \"x\"\ntype = \"MX\"\nvalue = \"y\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kindling"))
        .args(["check", "--config"])
        .arg(dir.path().join("kindling.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("\"not-an-ip\": not IP or IP:port"), "{err}");
    assert!(err.contains("type \"MX\""), "{err}");
}

/// A DHCP client's name appears in DNS with its lease (A and PTR) and goes away when the
/// lease expires, without a restart; `wpad`, `ns` and a dotted name sent in option 12 name
/// nothing. Network namespaces: Kindling (DHCP on a veth, DNS on the
/// namespace's loopback) and a busybox udhcpc that sends its hostname and then stays quiet.
#[test]
fn a_lease_name_appears_and_expires() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("SKIP a_lease_name_appears_and_expires: needs root for network namespaces");
        return;
    }
    for tool in ["dig", "busybox", "ip"] {
        if !common::have(tool) {
            eprintln!(
                "SKIP a_lease_name_appears_and_expires: {tool} is not installed (scripts/setup.sh test)"
            );
            return;
        }
    }
    let net = common::Netns::new(&["ns", "nc"]);
    let (s, c) = (net.names[0].clone(), net.names[1].clone());
    net.veth(&s, "vs0", &c, "vc0");
    common::ip(&["-n", &s, "addr", "add", "10.76.0.2/24", "dev", "vs0"]);
    common::ip(&["-n", &s, "link", "set", "vs0", "up"]);
    common::ip(&["-n", &c, "link", "set", "vc0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "kindling.toml",
        "[http]\nlisten = \"127.0.0.1:0\"\n[dns]\nenabled = true\nlisten = \"127.0.0.1:0\"\ndomain = \"lab.example\"\n\
         [dhcp]\nmode = \"full\"\ninterfaces = [\"vs0\"]\nlease_time = \"6s\"\n\
         [[dhcp.subnet]]\nnetwork = \"10.76.0.0/24\"\nrange = [\"10.76.0.100\", \"10.76.0.110\"]\nserver_ip = \"10.76.0.2\"\n",
    );
    write(
        dir.path(),
        "profiles/any.toml",
        "default = true\n[boot]\nkernel = \"k\"\n",
    );
    let d = Daemon::start_in(&s, &dir.path().join("kindling.toml"));
    let port = dns_port(&d).to_string();
    let dig_in = |args: &[&str]| -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &s,
                "dig",
                "@127.0.0.1",
                "-p",
                &port,
                "+time=2",
                "+tries=1",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status(&dig_in(&["leasebox.lab.example"])), "NXDOMAIN");
    // A free address of the subnet: answered here (its reverse zone), not forwarded.
    assert_eq!(status(&dig_in(&["-x", "10.76.0.105"])), "NXDOMAIN");

    // udhcpc from `mac` sending option 12 `hostname`: the address it was granted.
    let lease = |mac: &str, hostname: &str| -> String {
        for args in [
            &["link", "set", "vc0", "down"][..],
            &["link", "set", "vc0", "address", mac],
            &["link", "set", "vc0", "up"],
        ] {
            common::ip(&[&["-n", c.as_str()][..], args].concat());
        }
        let out = Command::new("timeout")
            .args([
                "20", "ip", "netns", "exec", &c, "busybox", "udhcpc", "-i", "vc0", "-n", "-q", "-f",
            ])
            .args(["-s", "/bin/true", "-t", "4", "-T", "2", "-x"])
            .arg(format!("hostname:{hostname}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.split("lease of ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("udhcpc got no lease: {text}"))
            .to_string()
    };

    // Reserved names cannot be taken by a lease: `wpad` and the zone's own `ns` stay the
    // server's; a name of more than one label is no name at all.
    let wpad = lease("02:76:00:00:00:01", "wpad");
    let ns = lease("02:76:00:00:00:02", "ns");
    let dotted = lease("02:76:00:00:00:03", "evil.example.com");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&dig_in(&["wpad.lab.example"])), "NXDOMAIN");
    let ns_answers = dig_in(&["ns.lab.example", "+short"]);
    assert!(
        !ns_answers.contains(&ns),
        "ns taken by a lease: {ns_answers}"
    );
    for ip in [&wpad, &ns, &dotted] {
        assert_eq!(dig_in(&["-x", ip, "+short"]).trim(), "", "PTR of {ip}");
    }
    assert_eq!(
        status(&dig_in(&["evil.example.com.lab.example"])),
        "NXDOMAIN"
    );
    assert_eq!(status(&dig_in(&["evil.lab.example"])), "NXDOMAIN");

    let ip = lease("02:76:00:00:00:04", "leasebox");
    let granted = Instant::now();
    let end = granted + Duration::from_secs(3);
    while dig_in(&["leasebox.lab.example", "+short"]).trim() != ip {
        assert!(
            Instant::now() < end,
            "the lease name did not appear:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        dig_in(&["-x", &ip, "+short"]).trim(),
        "leasebox.lab.example."
    );
    // udhcpc -q does not renew: after 6 s the lease expires and the name goes.
    let end = granted + Duration::from_secs(15);
    while status(&dig_in(&["leasebox.lab.example"])) != "NXDOMAIN" {
        assert!(
            Instant::now() < end,
            "the name outlived its lease:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        granted.elapsed() >= Duration::from_secs(5),
        "gone before the lease ended: {:?}",
        granted.elapsed()
    );
}

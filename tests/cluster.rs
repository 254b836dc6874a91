//! Several instances sharing one etcd (`[cluster] store = "etcd"`): a real etcd member and
//! two real daemons on loopback. What one instance learns, the other's API shows.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Etcd, write};

const MAC: &str = "52:54:00:c1:00:01";
const TOKEN: &str = "cluster-test-token";

/// A config directory for instance `node` on `etcd`.
fn instance(etcd: &Etcd, node: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nconfig_access = \"open\"\n[api]\ntoken = \"{TOKEN}\"\n\
             [paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n[cluster]\nstore = \"etcd\"\nendpoints = [\"{}\"]\nnode_name = \"{node}\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display(),
            etcd.url
        ),
    );
    write(
        root,
        "profiles/node.toml",
        &format!(
            "[boot]\nkernel = \"vmlinuz\"\n[[machine]]\nmac = \"{MAC}\"\nhostname = \"alpha\"\n"
        ),
    );
    dir
}

fn get(url: &str) -> (u16, String) {
    common::curl(&[], url)
}

/// Wait (at most 5 s) until `url` answers a body that satisfies `ok`.
fn until(url: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = get(url);
        if ok(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_instances_share_one_inventory_through_etcd() {
    let Some(etcd) = Etcd::start("two_instances_share_one_inventory_through_etcd") else {
        return;
    };
    let (da, db) = (instance(&etcd, "kindling-a"), instance(&etcd, "kindling-b"));
    // B stands for an instance of another rack: another segment, the same profiles.
    let b_toml = db.path().join("kindling.toml");
    let text = std::fs::read_to_string(&b_toml).unwrap();
    std::fs::write(&b_toml, format!("{text}segment = \"rack-b\"\n")).unwrap();
    let a = Daemon::start(&da.path().join("kindling.toml"));
    let b = Daemon::start(&db.path().join("kindling.toml"));
    for d in [&a, &b] {
        d.wait_log(Duration::from_secs(5), |l| {
            l.contains("cluster store: etcd reached") && l.contains(&etcd.url)
        })
        .unwrap_or_else(|| panic!("no etcd line:\n{}", d.log_text()));
    }
    // A machine boots from A; B lists it with what A served it.
    let (code, script) = get(&a.url(&format!("/ipxe?mac={MAC}&serial=SN-1")));
    assert_eq!(code, 200, "{script}");
    let on_b = until(&b.url(&format!("/api/v1/machines/{MAC}")), |body| {
        body.contains("served ipxe")
    });
    assert!(
        on_b.contains("served ipxe"),
        "B does not show A's boot: {on_b}"
    );
    assert!(on_b.contains("SN-1"), "{on_b}");
    // A machine B discovers (no profile is for it: 404) shows on A.
    let other = "52:54:00:c1:00:02";
    assert_eq!(get(&b.url(&format!("/ipxe?mac={other}"))).0, 404);
    // (Its record may reach A before the transition to `discovered` does: wait for both.)
    let list = until(&a.url("/api/v1/machines"), |body| {
        body.contains(other) && body.contains("\"state\":\"discovered\"")
    });
    assert!(list.contains(other) && list.contains(MAC), "{list}");
    // `kindling machines` prints the same table from either instance.
    let table = |d: &Daemon| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_kindling"))
            .args(["machines", "--url"])
            .arg(d.url(""))
            .output()
            .expect("kindling machines");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (ta, tb) = (table(&a), table(&b));
    assert!(ta.contains(MAC) && ta.contains(other), "{ta}");
    // MAC, hostname, profile, IP and state of each row (SINCE counts seconds).
    let rows = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(rows(&ta), rows(&tb), "A:\n{ta}\nB:\n{tb}");
    // The event stream on A shows a transition B served.
    let sse = Command::new("curl")
        .args(["-sN", "-m", "4"])
        .arg(a.url(&format!("/api/v1/events?mac={MAC}")))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl events");
    std::thread::sleep(Duration::from_millis(700));
    let reinstall = Command::new("curl")
        .args(["-s", "-m", "5", "-X", "POST"])
        .arg(b.url(&format!("/api/v1/report?mac={MAC}&state=provisioned")))
        .output()
        .unwrap();
    assert!(reinstall.status.success());
    let streamed = String::from_utf8_lossy(&sse.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        streamed.contains("event: transition") && streamed.contains("provisioned"),
        "A's stream did not show B's transition:\n{streamed}"
    );
    // A one-shot next boot set on one instance is used up exactly once, whichever instance
    // the machine's requests reach first: four at once on each, five rounds.
    for round in 0..5 {
        let setter = if round % 2 == 0 { &b } else { &a };
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-X", "PUT", "-H"])
            .arg(format!("Authorization: Bearer {TOKEN}"))
            .args(["-d", r#"{"boot":"local"}"#])
            .arg(setter.url(&format!("/api/v1/machines/{MAC}/next-boot")))
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(answer.contains("local"), "round {round}: {answer}");
        for d in [&a, &b] {
            let shown = until(&d.url(&format!("/api/v1/machines/{MAC}")), |body| {
                body.contains(r#""next_boot":{"boot":"local"}"#)
            });
            assert!(
                shown.contains(r#""next_boot":{"boot":"local"}"#),
                "round {round}: {shown}"
            );
        }
        let racers: Vec<_> = (0..8)
            .map(|i| {
                Command::new("curl")
                    .args(["-s", "-m", "5"])
                    .arg([&a, &b][i % 2].url(&format!("/ipxe?mac={MAC}")))
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let scripts: Vec<String> = racers
            .into_iter()
            .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned())
            .collect();
        assert!(
            scripts.iter().all(|s| s.starts_with("#!ipxe")),
            "{scripts:?}"
        );
        let local = scripts
            .iter()
            .filter(|s| s.contains("boots from its local disk"))
            .count();
        assert_eq!(
            local, 1,
            "round {round}: the next boot was served {local} times"
        );
    }
    // Nothing is pending afterwards, on either instance.
    for d in [&a, &b] {
        let after = until(&d.url(&format!("/api/v1/machines/{MAC}")), |body| {
            body.contains(r#""next_boot":null"#) || !body.contains("next_boot\":{")
        });
        assert!(!after.contains(r#""next_boot":{"#), "{after}");
    }
    // A machine adopted through A is added to B's copy of the profile too: B serves it.
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-X", "POST", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .args(["-d", r#"{"profile":"node","hostname":"beta"}"#])
        .arg(a.url(&format!("/api/v1/machines/{other}/adopt")))
        .output()
        .unwrap();
    let adopted = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        adopted.contains("shared with the other instances"),
        "{adopted}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&b.url(&format!("/ipxe?mac={other}"))).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "B does not serve the adopted machine:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let b_file = std::fs::read_to_string(db.path().join("profiles/node.toml")).unwrap();
    let a_file = std::fs::read_to_string(da.path().join("profiles/node.toml")).unwrap();
    assert!(
        b_file.contains(other) && b_file.contains("beta"),
        "{b_file}"
    );
    assert_eq!(a_file, b_file, "the same entry in both copies");
    // Instances without DHCP, in different segments, compare their profile digests too: the
    // same files (after the adoption, too), no warning; B's profiles change, A says so.
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        !a.log_text().contains("different profile sets"),
        "{}",
        a.log_text()
    );
    assert!(
        !b.log_text().contains("different profile sets"),
        "{}",
        b.log_text()
    );
    let b_profile = db.path().join("profiles/node.toml");
    let text = std::fs::read_to_string(&b_profile).unwrap();
    std::fs::write(&b_profile, format!("# edited on b only\n{text}")).unwrap();
    // The API lists both members with their digests; A sees that B's differs now.
    let cluster = until(&a.url("/api/v1/cluster"), |body| {
        body.contains(r#""same_profiles":false"#)
    });
    let v: serde_json::Value = serde_json::from_str(&cluster).unwrap();
    assert_eq!(v["store"], "etcd", "{v}");
    assert_eq!(v["node"], "kindling-a", "{v}");
    let members = v["members"].as_array().unwrap();
    let find = |seg: &str, node: &str| {
        members
            .iter()
            .find(|m| m["segment"] == seg && m["node"] == node)
            .unwrap_or_else(|| panic!("no {seg}/{node}: {v}"))
    };
    assert_eq!(find("no-dhcp", "kindling-a")["same_profiles"], true, "{v}");
    assert_eq!(find("rack-b", "kindling-b")["same_profiles"], false, "{v}");
    let warning = a
        .wait_log(Duration::from_secs(20), |l| {
            l.contains("different profile sets")
        })
        .unwrap_or_else(|| panic!("no mismatch warning on A:\n{}", a.log_text()));
    assert!(warning.contains("rack-b/kindling-b"), "{warning}");
    // A restarted instance starts from what etcd holds (its own state directory has none).
    drop(a);
    let fresh = instance(&etcd, "kindling-c");
    let c = Daemon::start(&fresh.path().join("kindling.toml"));
    let list = get(&c.url("/api/v1/machines")).1;
    assert!(list.contains(other) && list.contains(MAC), "{list}");
}

/// Two instances on one segment: namespaces `a` and `b` each run Kindling in full mode on a
/// veth into a bridge in namespace `c`, where etcd runs (on the bridge, reachable from both)
/// and the clients do (namespace `d`, on the bridge too, holds a second client). Both instances have seen each other when this returns.
struct Segment {
    // Dropped in this order: the daemons, then etcd and the namespaces.
    a: Daemon,
    b: Option<Daemon>,
    configs: Vec<tempfile::TempDir>,
    net: common::Netns,
    _data: tempfile::TempDir,
    etcd_url: &'static str,
}

impl Segment {
    fn ns(&self, n: usize) -> &str {
        &self.net.names[n]
    }

    /// `etcdctl ARGS` in the client namespace: stdout and stderr.
    fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns(2),
                "etcdctl",
                "--endpoints",
                self.etcd_url,
            ])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The lease values in etcd.
    fn leases(&self) -> String {
        self.etcdctl(&["get", "--prefix", "/kindling/leases/", "--print-value-only"])
    }
}

/// `None` (with the reason printed) without root or the tools.
fn segment(test: &str, tag: &str, mode: &str) -> Option<Segment> {
    if !is_root() {
        eprintln!("SKIP {test}: needs root for network namespaces");
        return None;
    }
    for (tool, pkg) in [
        ("perfdhcp", "kea-admin"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
    ] {
        if !common::have(tool) {
            eprintln!("SKIP {test}: {tool} ({pkg}) is not installed (scripts/setup.sh test)");
            return None;
        }
    }
    let names = [
        format!("{tag}a"),
        format!("{tag}b"),
        format!("{tag}c"),
        format!("{tag}d"),
    ];
    let mut net = common::Netns::new(&[&names[0], &names[1], &names[2], &names[3]]);
    let (a, b, c, d) = (
        net.names[0].clone(),
        net.names[1].clone(),
        net.names[2].clone(),
        net.names[3].clone(),
    );
    common::ip(&["-n", &c, "link", "add", "br0", "type", "bridge"]);
    // a and b serve; namespace d holds a second client beside whatever runs in c.
    for (ns, dev, port, addr) in [
        (&a, "vs0", "p1", "10.78.0.2/20"),
        (&b, "vs0", "p2", "10.78.0.4/20"),
        (&d, "vc0", "p3", "10.78.0.5/20"),
    ] {
        net.veth(ns, dev, &c, port);
        common::ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        common::ip(&["-n", ns, "link", "set", dev, "up"]);
        common::ip(&["-n", &c, "link", "set", port, "master", "br0"]);
        common::ip(&["-n", &c, "link", "set", port, "up"]);
    }
    common::ip(&["-n", &c, "addr", "add", "10.78.0.3/20", "dev", "br0"]);
    common::ip(&["-n", &c, "link", "set", "br0", "up"]);
    // etcd on the bridge, reachable from both instances.
    let data = tempfile::tempdir().unwrap();
    let etcd_url = "http://10.78.0.3:2379";
    net.children.push(
        Command::new("ip")
            .args(["netns", "exec", &c, "/usr/bin/etcd", "--name=ha"])
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg("--listen-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-cluster=ha=http://127.0.0.1:2380")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(data.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("start etcd"),
    );
    let health = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &c, "etcdctl", "--endpoints", etcd_url])
            .args(["endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !health().contains("is healthy") {
        assert!(
            Instant::now() < deadline,
            "etcd did not start: {}",
            std::fs::read_to_string(data.path().join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = |node: &str, server_ip: &str| {
        let dhcp = if mode == "proxy" {
            "[dhcp]\nmode = \"proxy\"\ninterfaces = [\"vs0\"]\n".to_string()
        } else {
            format!(
                "[dhcp]\nmode = \"full\"\ninterfaces = [\"vs0\"]\nlease_time = \"10m\"\n\
                 [[dhcp.subnet]]\nnetwork = \"10.78.0.0/20\"\nrange = [\"10.78.1.1\", \"10.78.14.254\"]\n\
                 server_ip = \"{server_ip}\"\n"
            )
        };
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "kindling.toml",
            &format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn,kindling::app=info,kindling::cluster=info\"\n\
                 [paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n\
                 {dhcp}\
                 [cluster]\nstore = \"etcd\"\nendpoints = [\"{etcd_url}\"]\nnode_name = \"{node}\"\n\
                 member_ttl = \"2s\"\ntakeover_delay = \"1s\"\n",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display(),
            ),
        );
        write(
            dir.path(),
            "profiles/any.toml",
            "default = true\n[boot]\nkernel = \"k\"\n",
        );
        dir
    };
    let (ca, cb) = (
        config("kindling-a", "10.78.0.2"),
        config("kindling-b", "10.78.0.4"),
    );
    let da = Daemon::start_in(&a, &ca.path().join("kindling.toml"));
    let db = Daemon::start_in(&b, &cb.path().join("kindling.toml"));
    // Each sees both members: it answers fewer than all 256 buckets.
    for d in [&da, &db] {
        d.wait_log(Duration::from_secs(15), |l| {
            l.contains("answers its share") && l.contains("kindling-a,kindling-b")
        })
        .unwrap_or_else(|| panic!("no share of two members:\n{}", d.log_text()));
    }

    Some(Segment {
        net,
        _data: data,
        configs: vec![ca, cb],
        a: da,
        b: Some(db),
        etcd_url,
    })
}

/// perfdhcp storms both instances with 2,000 clients: every client gets exactly one OFFER and
/// one ACK (each bucket is answered by one instance), both instances answer a share, and etcd
/// holds 2,000 leases with 2,000 different MACs.
#[test]
fn two_instances_on_one_segment_split_the_clients() {
    let Some(seg) = segment(
        "two_instances_on_one_segment_split_the_clients",
        "hs",
        "full",
    ) else {
        return;
    };
    let (a, b, c) = (seg.ns(0), seg.ns(1), seg.ns(2));
    let (da, db) = (&seg.a, seg.b.as_ref().unwrap());
    // An answer counts as lost only after 5 s (perfdhcp's default is 1 s, and each ACK waits
    // for etcd's fsync: one took 1.13 s on a loaded CI machine, a late answer, not a second).
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", c])
        .args([
            "perfdhcp", "-4", "-l", "br0", "-r", "200", "-n", "2000", "-R", "2000", "-p", "30",
            "-d", "5", "-d", "5", "-W", "5000000",
        ])
        .output()
        .expect("perfdhcp");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| common::perfdhcp_field(&text, name);
    // perfdhcp's rate control in multi-thread mode may start a few exchanges more than -n
    // (2001 and 2002 seen on a loaded machine): every count below follows what it sent.
    let sent = field("sent packets:");
    let n = sent.first().copied().unwrap_or(0);
    assert!((2000..=2010).contains(&n), "{text}");
    assert_eq!(sent, vec![n, n], "{text}");
    // Exactly one answer per request: no client heard from both instances.
    assert_eq!(
        field("received packets:"),
        vec![n, n],
        "{text}\n--- a ---\n{}\n--- b ---\n{}",
        da.log_text(),
        db.log_text()
    );
    assert_eq!(field("drops:"), vec![0, 0], "{text}");

    // Both answered a share.
    let acks = |ns: &str, d: &Daemon| -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sf"])
            .arg(format!("http://{}/metrics", d.addr))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("kindling_dhcp_messages_total{type=\"request\",outcome=\"ack\"}")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let (na, nb) = (acks(a, da), acks(b, db));
    eprintln!("{n} clients: kindling-a acknowledged {na}, kindling-b {nb}");
    assert_eq!(na + nb, n, "a {na} + b {nb}");
    assert!(na > 500 && nb > 500, "an uneven split: a {na}, b {nb}");
    // etcd holds every lease once, each client on one address.
    let leases = seg.leases();
    let macs: std::collections::HashSet<&str> = leases
        .lines()
        .filter_map(|l| l.split("\"mac\":\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        leases.lines().filter(|l| l.contains("\"ip\"")).count() as u64,
        n
    );
    assert_eq!(macs.len() as u64, n);
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A client's socket on `dev` in namespace `ns`: 0.0.0.0:68, short reads.
fn client_socket(ns: &str, dev: &str) -> std::net::UdpSocket {
    let s = common::udp_in_netns(
        ns,
        dev,
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 68),
    );
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// A client's DHCP message of `kind` (broadcast flag set).
fn dhcp(kind: dhcproto::v4::MessageType, mac: [u8; 6], xid: u32) -> dhcproto::v4::Message {
    use dhcproto::v4::{DhcpOption, Flags, Message};
    let zero = std::net::Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, zero, zero, zero, zero, &mac);
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

/// Send `req` every 250 ms until a reply of `want` with its xid comes (at most `within`):
/// the reply and when it came.
fn ask(
    sock: &std::net::UdpSocket,
    req: &dhcproto::v4::Message,
    want: dhcproto::v4::MessageType,
    within: Duration,
) -> Option<(dhcproto::v4::Message, Instant)> {
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    let mut bytes = Vec::new();
    req.encode(&mut Encoder::new(&mut bytes)).unwrap();
    let to = std::net::SocketAddr::from(([255, 255, 255, 255], 67));
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1500];
    // Retransmits back off as a real client's do (250 ms, doubling up to 2 s): a client that
    // asks 4 times a second through a store outage trips the per-client rate limit.
    let mut pause = Duration::from_millis(250);
    while Instant::now() < deadline {
        sock.send_to(&bytes, to).unwrap();
        let wait = Instant::now() + pause;
        pause = (pause * 2).min(Duration::from_secs(2));
        while Instant::now() < wait {
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && let Ok(m) = dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..n]))
                && m.xid() == req.xid()
                && m.opts().msg_type() == Some(want)
            {
                return Some((m, Instant::now()));
            }
        }
    }
    None
}

/// `n` client MACs (`52:54:00:<tag>:00:xx`) whose bucket kindling-b owns while both are up.
fn clients_of_b(tag: u8, n: usize) -> Vec<[u8; 6]> {
    let members = ["kindling-a", "kindling-b"];
    let macs: Vec<[u8; 6]> = (0..=u8::MAX)
        .map(|i| [0x52, 0x54, 0x00, tag, 0x00, i])
        .filter(|m| {
            let b = kindling::cluster::buckets::bucket(kindling::mac::MacAddr(*m));
            kindling::cluster::buckets::owner(b, members) == Some("kindling-b")
        })
        .take(n)
        .collect();
    assert_eq!(macs.len(), n);
    macs
}

/// The server identifier of a reply.
fn server_of(m: &dhcproto::v4::Message) -> Option<std::net::Ipv4Addr> {
    match m.opts().get(dhcproto::v4::OptionCode::ServerIdentifier) {
        Some(dhcproto::v4::DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// A DORA with kindling-b (10.78.0.4) for each of `macs` (xids from `xid`): each MAC and the
/// address it was acknowledged.
fn lease_from_b(
    sock: &std::net::UdpSocket,
    macs: &[[u8; 6]],
    xid: u32,
) -> Vec<([u8; 6], std::net::Ipv4Addr)> {
    use dhcproto::v4::{DhcpOption, MessageType};
    let b: std::net::Ipv4Addr = "10.78.0.4".parse().unwrap();
    let mut held = Vec::new();
    for (i, mac) in macs.iter().enumerate() {
        let xid = xid + i as u32;
        let (offer, _) = ask(
            sock,
            &dhcp(MessageType::Discover, *mac, xid),
            MessageType::Offer,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no offer for client {i}"));
        assert_eq!(server_of(&offer), Some(b), "b answers client {i}");
        let mut req = dhcp(MessageType::Request, *mac, xid);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        req.opts_mut().insert(DhcpOption::ServerIdentifier(b));
        let (ack, _) = ask(sock, &req, MessageType::Ack, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no ack for client {i}"));
        held.push((*mac, ack.yiaddr()));
    }
    held
}

/// kill -9 one of two instances: the survivor answers the dead one's clients once its
/// membership expired (member_ttl 2 s) plus the takeover delay (1 s), and gives each the
/// address it had; every lease the dead instance acknowledged is still in etcd.
#[test]
fn the_survivor_takes_over_a_killed_instances_clients() {
    use dhcproto::v4::{DhcpOption, MessageType};
    let Some(mut seg) = segment(
        "the_survivor_takes_over_a_killed_instances_clients",
        "hk",
        "full",
    ) else {
        return;
    };
    // Twenty clients that kindling-b answers.
    let sock = client_socket(seg.ns(2), "br0");
    let held = lease_from_b(&sock, &clients_of_b(0xbb, 20), 0x4b00_0000);

    // Both serve the same files: one digest, no warning. Then b's profiles change (a hot
    // reload): a says the members serve different profile sets.
    let digest = |ns: &str, d: &Daemon| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-s", "-m", "5"])
            .arg(d.url("/healthz"))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["profiles"]["digest"].as_str().unwrap().to_string()
    };
    let before = digest(seg.ns(0), &seg.a);
    assert_eq!(before.len(), 16);
    assert_eq!(before, digest(seg.ns(1), seg.b.as_ref().unwrap()));
    assert!(!seg.a.log_text().contains("different profile sets"));
    let b_profile = seg.configs[1].path().join("profiles/any.toml");
    let text = std::fs::read_to_string(&b_profile).unwrap();
    std::fs::write(&b_profile, format!("# edited on b only\n{text}")).unwrap();
    seg.a
        .wait_log(Duration::from_secs(10), |l| {
            l.contains("different profile sets")
        })
        .unwrap_or_else(|| panic!("no mismatch warning:\n{}", seg.a.log_text()));
    assert_ne!(digest(seg.ns(1), seg.b.as_ref().unwrap()), before);

    seg.b.take().unwrap().kill9();
    let killed = Instant::now();
    // The first of b's clients asks again (INIT-REBOOT, as after a reboot): a answers it.
    let (mac, ip) = held[0];
    let mut reboot = dhcp(MessageType::Request, mac, 0x4b10_0000);
    reboot.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    let (ack, at) = ask(&sock, &reboot, MessageType::Ack, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the survivor never answered:\n{}", seg.a.log_text()));
    let took = at - killed;
    eprintln!("kill -9: the survivor answered the dead instance's client after {took:?}");
    assert_eq!(server_of(&ack), Some("10.78.0.2".parse().unwrap()));
    assert_eq!(ack.yiaddr(), ip, "the address it had");
    assert!(
        took < Duration::from_secs(2 + 1 + 2),
        "took {took:?}: member_ttl 2 s + takeover 1 s + a retransmission"
    );
    // A new DISCOVER of another of b's clients: its old address again.
    let (mac, ip) = held[1];
    let (offer, _) = ask(
        &sock,
        &dhcp(MessageType::Discover, mac, 0x4b10_0001),
        MessageType::Offer,
        Duration::from_secs(5),
    )
    .expect("an offer from the survivor");
    assert_eq!(offer.yiaddr(), ip);
    // Nothing b acknowledged was lost.
    let leases = seg.leases();
    for (mac, ip) in &held {
        let mac = kindling::mac::MacAddr(*mac).to_string();
        assert!(
            leases
                .lines()
                .any(|l| l.contains(&format!("\"ip\":\"{ip}\"")) && l.contains(&mac)),
            "{mac} at {ip} lost:\n{leases}"
        );
    }
}

/// kill -9 one of two instances in the middle of a perfdhcp storm of 2,000 clients: clients
/// that the dead instance had leased are answered by the survivor within member_ttl (2 s) +
/// takeover delay (1 s) + a retransmission, with their addresses; every lease perfdhcp saw
/// acknowledged is bound in etcd, no MAC holds two addresses; after the takeover the survivor
/// answers the whole segment.
#[test]
fn killing_an_instance_mid_storm_loses_no_acknowledged_lease() {
    use dhcproto::v4::{DhcpOption, MessageType};
    let Some(mut seg) = segment(
        "killing_an_instance_mid_storm_loses_no_acknowledged_lease",
        "hx",
        "full",
    ) else {
        return;
    };
    // Five clients of kindling-b lease first (from namespace d).
    let sock = client_socket(seg.ns(3), "vc0");
    let held = lease_from_b(&sock, &clients_of_b(0xbc, 5), 0x4c00_0000);
    // The storm: 2,000 clients at 200/s for 10 s, from namespace c.
    let storm = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", seg.ns(2)])
        .args([
            "perfdhcp", "-4", "-l", "br0", "-r", "200", "-n", "2000", "-R", "2000", "-p", "30",
            "-W", "2000000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("perfdhcp");
    std::thread::sleep(Duration::from_secs(3));
    seg.b.take().unwrap().kill9();
    let killed = Instant::now();
    // b's clients come back (INIT-REBOOT) while the storm goes on: the survivor answers.
    let mut slowest = Duration::ZERO;
    for (i, (mac, ip)) in held.iter().enumerate() {
        let mut reboot = dhcp(MessageType::Request, *mac, 0x4c10_0000 + i as u32);
        reboot
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(*ip));
        let (ack, at) = ask(&sock, &reboot, MessageType::Ack, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("the survivor never answered:\n{}", seg.a.log_text()));
        assert_eq!(ack.yiaddr(), *ip, "the address it had");
        slowest = slowest.max(at - killed);
    }
    eprintln!(
        "kill -9 mid-storm: the survivor answered the dead instance's clients within {slowest:?}"
    );
    assert!(
        slowest < Duration::from_secs(2 + 1 + 2),
        "took {slowest:?}: member_ttl 2 s + takeover 1 s + a retransmission"
    );
    let out = storm.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| common::perfdhcp_field(&text, name);
    assert_eq!(field("sent packets:").first(), Some(&2000), "{text}");
    let acks = field("received packets:")[1];
    eprintln!("the storm: {acks} of 2,000 clients acknowledged across the kill");
    // Clients of b that started between the kill and the takeover are lost to perfdhcp (it
    // does not retransmit); everything else is answered.
    assert!(acks >= 1500, "only {acks} acknowledged:\n{text}");
    // Every acknowledged lease is bound in etcd; no MAC holds two addresses.
    let leases = seg.leases();
    let mut bound: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for l in leases.lines().filter(|l| l.contains("\"state\":\"Bound\"")) {
        let mac = l
            .split("\"mac\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        *bound.entry(mac.unwrap_or("?").to_string()).or_default() += 1;
    }
    assert!(bound.values().all(|n| *n == 1), "a MAC with two addresses");
    for (mac, _) in &held {
        assert!(bound.contains_key(&kindling::mac::MacAddr(*mac).to_string()));
    }
    let storm_bound = bound.len() - held.len();
    eprintln!("etcd: {storm_bound} storm clients bound");
    assert!(
        storm_bound as u64 >= acks,
        "{acks} acknowledged but {storm_bound} bound in etcd"
    );
}

/// The servers that offer `mac` an address within `wait` of one DISCOVER.
fn offers_for(sock: &std::net::UdpSocket, mac: [u8; 6], xid: u32, wait: Duration) -> Vec<String> {
    use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    let mut bytes = Vec::new();
    dhcp(MessageType::Discover, mac, xid)
        .encode(&mut Encoder::new(&mut bytes))
        .unwrap();
    sock.send_to(&bytes, ("255.255.255.255", 67)).unwrap();
    let mut from = Vec::new();
    let mut buf = [0u8; 1500];
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && let Ok(m) = dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..n]))
            && m.xid() == xid
            && m.opts().msg_type() == Some(MessageType::Offer)
            && let Some(DhcpOption::ServerIdentifier(ip)) =
                m.opts().get(OptionCode::ServerIdentifier)
        {
            from.push(ip.to_string());
        }
    }
    from
}

/// An instance cut off from etcd but not from the LAN: once its membership expired, the
/// other answers its clients and it answers none of them (no client hears two offers); when
/// it reaches etcd again it takes its clients back, without a restart.
#[test]
fn an_instance_cut_off_from_etcd_stops_answering() {
    let Some(seg) = segment(
        "an_instance_cut_off_from_etcd_stops_answering",
        "hp",
        "full",
    ) else {
        return;
    };
    let of_b = clients_of_b(0xbd, 8);
    let sock = client_socket(seg.ns(3), "vc0");
    let b = seg.b.as_ref().unwrap();
    for (i, mac) in of_b.iter().enumerate() {
        let from = offers_for(
            &sock,
            *mac,
            0x4d00_0000 + i as u32,
            Duration::from_millis(700),
        );
        assert_eq!(from, ["10.78.0.4"], "client {i} before the cut");
    }
    // b loses etcd (a blackhole route to it); the LAN stays.
    let route = ["-n", seg.ns(1), "route", "add", "blackhole", "10.78.0.3/32"];
    common::ip(&route);
    let cut = Instant::now();
    b.wait_log(Duration::from_secs(20), |l| l.contains("cut off from etcd"))
        .unwrap_or_else(|| panic!("b kept answering:\n{}", b.log_text()));
    seg.a
        .wait_log(Duration::from_secs(20), |l| {
            l.contains("cluster member left")
        })
        .unwrap_or_else(|| panic!("a did not see b leave:\n{}", seg.a.log_text()));
    // member_ttl 2 s + takeover 1 s after a saw b leave (later than that on a loaded
    // machine): until then nobody answers b's clients; never both.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let from = offers_for(&sock, of_b[0], 0x4d20_0000, Duration::from_millis(700));
        assert!(from.len() <= 1, "two offers while b is cut off: {from:?}");
        if from == ["10.78.0.2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a did not take b's clients over {:?} after the cut: {from:?}\n{}",
            cut.elapsed(),
            seg.a.log_text()
        );
    }
    for (i, mac) in of_b.iter().enumerate() {
        let from = offers_for(
            &sock,
            *mac,
            0x4d10_0000 + i as u32,
            Duration::from_millis(700),
        );
        assert_eq!(from, ["10.78.0.2"], "client {i} while b is cut off");
    }
    // etcd back: b is a member again and answers its clients, alone.
    let shares = b.log_text().matches("answers its share").count();
    common::ip(&["-n", seg.ns(1), "route", "del", "blackhole", "10.78.0.3/32"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.log_text().matches("answers its share").count() <= shares {
        assert!(
            Instant::now() < deadline,
            "b did not rejoin:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    for (i, mac) in of_b.iter().enumerate() {
        let from = offers_for(
            &sock,
            *mac,
            0x4d20_0000 + i as u32,
            Duration::from_millis(700),
        );
        assert_eq!(from, ["10.78.0.4"], "client {i} after b rejoined");
    }
}

/// Three etcd members in namespace `ns` on loopback, each restartable with its data.
struct EtcdTrio {
    ns: String,
    dir: tempfile::TempDir,
    members: Vec<Option<std::process::Child>>,
}

impl EtcdTrio {
    const CLIENT: [u16; 3] = [23791, 23792, 23793];
    const PEER: [u16; 3] = [23801, 23802, 23803];

    fn start(ns: &str) -> EtcdTrio {
        let mut trio = EtcdTrio {
            ns: ns.to_string(),
            dir: tempfile::tempdir().unwrap(),
            members: vec![None, None, None],
        };
        for i in 0..3 {
            trio.start_member(i);
        }
        trio
    }

    fn endpoints(&self) -> Vec<String> {
        Self::CLIENT
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    fn start_member(&mut self, i: usize) {
        let cluster: Vec<String> = (0..3)
            .map(|j| format!("m{j}=http://127.0.0.1:{}", Self::PEER[j]))
            .collect();
        let client = format!("http://127.0.0.1:{}", Self::CLIENT[i]);
        let peer = format!("http://127.0.0.1:{}", Self::PEER[i]);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "/usr/bin/etcd"])
            .arg(format!("--name=m{i}"))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join(format!("m{i}")).display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", cluster.join(",")))
            .arg("--initial-cluster-state=new")
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(format!("m{i}.log")))
                    .unwrap(),
            )
            .spawn()
            .expect("start etcd");
        self.members[i] = Some(child);
    }

    fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdTrio {
    fn drop(&mut self) {
        for i in 0..3 {
            self.stop_member(i);
        }
    }
}

/// etcd trouble: three members. One stopped: leases still flow. Two stopped (no quorum): no
/// lease is acknowledged, with a log line, a metric and `/healthz` degraded, while `/ipxe` and
/// `/ignition` still answer. Both started again: leases flow without restarting Kindling.
#[test]
fn without_an_etcd_quorum_no_lease_is_acknowledged_and_boots_still_serve() {
    use dhcproto::v4::{DhcpOption, MessageType};
    let test = "without_an_etcd_quorum_no_lease_is_acknowledged_and_boots_still_serve";
    if !is_root() {
        eprintln!("SKIP {test}: needs root for network namespaces");
        return;
    }
    if !common::have("etcd") {
        eprintln!("SKIP {test}: etcd (etcd-server) is not installed (scripts/setup.sh test)");
        return;
    }
    let net = common::Netns::new(&["qs", "qc"]);
    let (s, c) = (net.names[0].clone(), net.names[1].clone());
    net.veth(&s, "vs0", &c, "vc0");
    common::ip(&["-n", &s, "addr", "add", "10.79.0.2/24", "dev", "vs0"]);
    common::ip(&["-n", &s, "link", "set", "vs0", "up"]);
    common::ip(&["-n", &c, "link", "set", "vc0", "up"]);
    let mut trio = EtcdTrio::start(&s);
    let endpoints = trio
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nconfig_access = \"open\"\n\
             [paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n\
             [dhcp]\nmode = \"full\"\ninterfaces = [\"vs0\"]\n\
             [[dhcp.subnet]]\nnetwork = \"10.79.0.0/24\"\nrange = [\"10.79.0.100\", \"10.79.0.200\"]\n\
             server_ip = \"10.79.0.2\"\n\
             [cluster]\nstore = \"etcd\"\nendpoints = [{endpoints}]\nnode_name = \"q\"\ntimeout = \"1s\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display(),
        ),
    );
    write(
        dir.path(),
        "profiles/any.toml",
        "default = true\nignition = \"any.ign.j2\"\n[boot]\nkernel = \"k\"\n",
    );
    write(
        dir.path(),
        "profiles/any.ign.j2",
        "{\"ignition\": {\"version\": \"3.4.0\"}}",
    );
    let d = Daemon::start_in(&s, &dir.path().join("kindling.toml"));
    d.wait_log(Duration::from_secs(30), |l| {
        l.contains("listening for DHCP on vs0")
    })
    .unwrap_or_else(|| panic!("DHCP not listening:\n{}", d.log_text()));
    let sock = client_socket(&c, "vc0");
    let server: std::net::Ipv4Addr = "10.79.0.2".parse().unwrap();
    // A DORA for client `n`: whether it was acknowledged within `within`.
    let dora = |n: u8, within: Duration| -> bool {
        let mac = [0x52, 0x54, 0x00, 0x79, 0x00, n];
        let xid = 0x7900_0000 + u32::from(n) * 16;
        let Some((offer, _)) = ask(
            &sock,
            &dhcp(MessageType::Discover, mac, xid),
            MessageType::Offer,
            Duration::from_secs(5),
        ) else {
            return false;
        };
        let mut req = dhcp(MessageType::Request, mac, xid + 1);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        req.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        ask(&sock, &req, MessageType::Ack, within).is_some()
    };
    let http = |path: &str| -> (u16, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &s,
                "curl",
                "-s",
                "-m",
                "5",
                "-w",
                "\n%{http_code}",
            ])
            .arg(d.url(path))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    };
    assert!(dora(1, Duration::from_secs(5)), "{}", d.log_text());

    // One member down: a quorum of two remains.
    trio.stop_member(2);
    // When the stopped member led, the other two elect a leader first (seconds on a loaded
    // machine).
    assert!(
        dora(2, Duration::from_secs(20)),
        "one member down:\n{}",
        d.log_text()
    );

    // Two down: no quorum. No ACK; the boot path serves on.
    trio.stop_member(1);
    assert!(
        !dora(3, Duration::from_secs(6)),
        "an ACK without a committed lease"
    );
    d.wait_log(Duration::from_secs(5), |l| {
        l.contains("lease store unavailable")
    })
    .unwrap_or_else(|| panic!("no refusal logged:\n{}", d.log_text()));
    let (code, health) = http("/healthz");
    assert_eq!(code, 200);
    assert!(
        health.contains("\"degraded\"") && health.contains("lease store"),
        "{health}"
    );
    let metrics = http("/metrics").1;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("kindling_store_errors_total{store=\"leases\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "kindling_dhcp_messages_total{type=\"request\",outcome=\"not_committed\"}"
        )),
        "{metrics}"
    );
    assert_eq!(http("/ipxe?mac=52:54:00:79:00:09").0, 200);
    assert_eq!(http("/ignition?mac=52:54:00:79:00:09").0, 200);

    // Quorum back: leases flow again, no restart.
    trio.start_member(1);
    trio.start_member(2);
    let back = Instant::now();
    let deadline = back + Duration::from_secs(30);
    while !dora(4, Duration::from_secs(3)) {
        assert!(
            Instant::now() < deadline,
            "leases never flowed again:\n{}",
            d.log_text()
        );
    }
    eprintln!(
        "quorum back: leases acknowledged again after {:?}",
        back.elapsed()
    );
    d.wait_log(Duration::from_secs(10), |l| {
        l.contains("lease store reachable again")
    })
    .unwrap_or_else(|| panic!("no recovery line:\n{}", d.log_text()));
    // Every store write succeeds again: healthy (the inventory retries within 10 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = http("/healthz").1;
        if health.contains("\"status\":\"ok\"") {
            break;
        }
        assert!(Instant::now() < deadline, "still degraded: {health}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// DNS on every instance names the cluster's machines: a machine that booted from instance A
/// (Kindling's DHCP off: the address it asked from names it) resolves on instance B.
#[test]
fn every_instance_names_the_machines_of_the_cluster() {
    let test = "every_instance_names_the_machines_of_the_cluster";
    if !common::have("dig") {
        eprintln!("SKIP {test}: dig (bind9-dnsutils) is not installed");
        return;
    }
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let dirs = [instance(&etcd, "dns-a"), instance(&etcd, "dns-b")];
    for d in &dirs {
        let cfg = d.path().join("kindling.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "{text}[dns]\nenabled = true\nlisten = \"127.0.0.1:0\"\ndomain = \"lab.example\"\n"
            ),
        )
        .unwrap();
    }
    let a = Daemon::start(&dirs[0].path().join("kindling.toml"));
    let b = Daemon::start(&dirs[1].path().join("kindling.toml"));
    let port = b.logged_addr("listening for DNS on ").port().to_string();
    let dig = || -> String {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port,
                "+short",
                "+time=1",
                "+tries=1",
                "alpha.lab.example",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig(), "", "not booted yet");
    assert_eq!(get(&a.url(&format!("/ipxe?mac={MAC}"))).0, 200);
    // A's write goes through etcd to B's watch: allow for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(15);
    while dig() != "127.0.0.1" {
        assert!(
            Instant::now() < deadline,
            "B never named A's machine:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two proxy-mode instances on one segment (beside the LAN's own DHCP server): each PXE
/// client gets exactly one proxy offer, and both instances answer a share of them.
#[test]
fn two_proxy_instances_give_each_pxe_client_one_offer() {
    use dhcproto::v4::{Architecture, DhcpOption, MessageType};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    let Some(seg) = segment(
        "two_proxy_instances_give_each_pxe_client_one_offer",
        "hp",
        "proxy",
    ) else {
        return;
    };
    let sock = client_socket(seg.ns(2), "br0");
    let to = std::net::SocketAddr::from(([255, 255, 255, 255], 67));
    for n in 0..40u8 {
        let mut m = dhcp(
            MessageType::Discover,
            [0x52, 0x54, 0x00, 0xcc, 0x00, n],
            0x5000 + u32::from(n),
        );
        let o = m.opts_mut();
        o.insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
        ));
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::X64));
        o.insert(DhcpOption::ClientMachineIdentifier(
            [&[0u8][..], &[0x11; 16]].concat(),
        ));
        let mut bytes = Vec::new();
        m.encode(&mut Encoder::new(&mut bytes)).unwrap();
        sock.send_to(&bytes, to).unwrap();
    }
    let mut offers: std::collections::BTreeMap<u32, Vec<std::net::Ipv4Addr>> = Default::default();
    let until = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && let Ok(m) = dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..n]))
            && m.opts().msg_type() == Some(MessageType::Offer)
            && let Some(DhcpOption::ServerIdentifier(ip)) =
                m.opts().get(dhcproto::v4::OptionCode::ServerIdentifier)
        {
            offers.entry(m.xid()).or_default().push(*ip);
        }
    }
    assert_eq!(
        offers.len(),
        40,
        "clients without an offer: {offers:?}\n{}",
        seg.a.log_text()
    );
    for (xid, from) in &offers {
        assert_eq!(from.len(), 1, "client {xid:x} got {from:?}");
    }
    let servers: std::collections::BTreeSet<_> = offers.values().map(|v| v[0]).collect();
    assert_eq!(
        servers.len(),
        2,
        "one instance answered everyone: {servers:?}"
    );
}

//! Several instances sharing one etcd (`[cluster] store = "etcd"`): a real etcd member and
//! two real daemons on loopback. What one instance learns, the other's API shows.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Etcd, write};

const MAC: &str = "52:54:00:c1:00:01";

/// A config directory for instance `node` on `etcd`.
fn instance(etcd: &Etcd, node: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nconfig_access = \"open\"\n[paths]\nipxe_scripts = \"{}\"\n\
             state = \"state\"\n[cluster]\nstore = \"etcd\"\nendpoints = [\"{}\"]\nnode_name = \"{node}\"\n",
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
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
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
    let list = until(&a.url("/api/v1/machines"), |body| body.contains(other));
    assert!(list.contains(other) && list.contains(MAC), "{list}");
    // A restarted instance starts from what etcd holds (its own state directory has none).
    drop(a);
    let fresh = instance(&etcd, "kindling-c");
    let c = Daemon::start(&fresh.path().join("kindling.toml"));
    let list = get(&c.url("/api/v1/machines")).1;
    assert!(list.contains(other) && list.contains(MAC), "{list}");
}

/// Two instances on one segment (HA): namespaces `a` and `b` each run Kindling in full mode on
/// a veth into a bridge in namespace `c`, where etcd and Kea's perfdhcp run. perfdhcp storms
/// both with 2,000 clients: every client gets exactly one OFFER and one ACK (each bucket is
/// answered by one instance), both instances answer a share, and etcd holds 2,000 leases with
/// 2,000 different MACs.
#[test]
fn two_instances_on_one_segment_split_the_clients() {
    let test = "two_instances_on_one_segment_split_the_clients";
    if !is_root() {
        eprintln!("SKIP {test}: needs root for network namespaces");
        return;
    }
    for (tool, pkg) in [
        ("perfdhcp", "kea-admin"),
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
    ] {
        if !common::have(tool) {
            eprintln!("SKIP {test}: {tool} ({pkg}) is not installed (scripts/setup.sh test)");
            return;
        }
    }
    let mut net = common::Netns::new(&["ha", "hb", "hc"]);
    let (a, b, c) = (
        net.names[0].clone(),
        net.names[1].clone(),
        net.names[2].clone(),
    );
    common::ip(&["-n", &c, "link", "add", "br0", "type", "bridge"]);
    for (ns, dev, port, addr) in [
        (&a, "vs0", "p1", "10.78.0.2/20"),
        (&b, "vs0", "p2", "10.78.0.4/20"),
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
    let etcdctl = |args: &[&str]| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &c, "etcdctl", "--endpoints", etcd_url])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !etcdctl(&["endpoint", "health"]).contains("is healthy") {
        assert!(
            Instant::now() < deadline,
            "etcd did not start: {}",
            std::fs::read_to_string(data.path().join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = |node: &str, server_ip: &str| {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "kindling.toml",
            &format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn,kindling::app=info,kindling::cluster=info\"\n\
                 [paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n\
                 [dhcp]\nmode = \"full\"\ninterfaces = [\"vs0\"]\nlease_time = \"10m\"\n\
                 [[dhcp.subnet]]\nnetwork = \"10.78.0.0/20\"\nrange = [\"10.78.1.1\", \"10.78.14.254\"]\n\
                 server_ip = \"{server_ip}\"\n\
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

    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &c])
        .args([
            "perfdhcp", "-4", "-l", "br0", "-r", "200", "-n", "2000", "-R", "2000", "-p", "30",
            "-W", "2000000",
        ])
        .output()
        .expect("perfdhcp");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .collect()
    };
    assert_eq!(field("sent packets:"), vec![2000, 2000], "{text}");
    // Exactly one answer per request: no client heard from both instances.
    assert_eq!(
        field("received packets:"),
        vec![2000, 2000],
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
    let (na, nb) = (acks(&a, &da), acks(&b, &db));
    eprintln!("2,000 clients: kindling-a acknowledged {na}, kindling-b {nb}");
    assert_eq!(na + nb, 2000, "a {na} + b {nb}");
    assert!(na > 500 && nb > 500, "an uneven split: a {na}, b {nb}");
    // etcd holds every lease once, each client on one address.
    let leases = etcdctl(&["get", "--prefix", "/kindling/leases/", "--print-value-only"]);
    let macs: std::collections::HashSet<&str> = leases
        .lines()
        .filter_map(|l| l.split("\"mac\":\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        leases.lines().filter(|l| l.contains("\"ip\"")).count(),
        2000
    );
    assert_eq!(macs.len(), 2000);
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

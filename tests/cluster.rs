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

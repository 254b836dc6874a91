//! The inventory through the real daemon: the HTTP boot path walked with curl while
//! `kindling watch` follows the event stream, `kindling machines` lists the states, and the
//! states, history and a pending reinstall survive `kill -9`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, write};

const MAC1: &str = "52:54:00:bb:00:01";
const TOKEN: &str = "t0ken-for-tests";

fn lab() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[paths]\nipxe_scripts = \"{}\"\n[api]\ntoken = \"{TOKEN}\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display()
        ),
    );
    write(
        root,
        "profiles/node.toml",
        &format!(
            "ignition = \"node.ign.j2\"\nafter_provision = \"local\"\n[boot]\nkernel = \"os/vmlinuz\"\n\
             [[machine]]\nmac = \"{MAC1}\"\nhostname = \"alpha\"\n"
        ),
    );
    write(
        root,
        "profiles/node.ign.j2",
        "{\"ignition\": {\"version\": \"3.4.0\"}}",
    );
    write(root, "assets/os/vmlinuz", &"k".repeat(4096));
    dir
}

/// A child process killed (by its own PID) on drop, with its stdout lines collected.
struct Watched {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watched {
    fn spawn(mut cmd: Command) -> Watched {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kindling watch");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Watched { child, lines }
    }

    fn wait_for(&self, n: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let got: Vec<String> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| pred(l))
                .cloned()
                .collect();
            if got.len() >= n || Instant::now() > end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kindling(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kindling"))
        .args(args)
        .env_remove("KINDLING_TOKEN")
        .output()
        .unwrap()
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn machine(d: &Daemon) -> serde_json::Value {
    let (code, body) = curl(&[&d.url(&format!("/api/v1/machines/{MAC1}"))]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn transitions(m: &serde_json::Value) -> Vec<String> {
    m["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h.get("from").is_some())
        .map(|h| h["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn watch_and_machines_follow_a_boot_and_the_record_survives_kill_9() {
    if !common::have("curl") {
        eprintln!("SKIP: curl is not installed (scripts/setup.sh test installs it)");
        return;
    }
    let dir = lab();
    let config = dir.path().join("kindling.toml");
    let d = Daemon::start(&config);
    let url = d.url("");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kindling"));
    cmd.args(["watch", "--url", &url]);
    let watch = Watched::spawn(cmd);
    assert_eq!(
        watch.wait_for(1, |l| l.starts_with("# following")).len(),
        1,
        "kindling watch did not connect"
    );

    // The HTTP boot path, as iPXE and the OS walk it.
    let (code, body) = curl(&[&d.url(&format!("/ipxe?mac={MAC1}&arch=x86_64"))]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("kernel http://"), "{body}");
    assert_eq!(curl(&[&d.url("/assets/os/vmlinuz")]).0, 200);
    assert_eq!(curl(&[&d.url(&format!("/ignition?mac={MAC1}"))]).0, 200);
    let report = d.url(&format!("/api/v1/report?mac={MAC1}"));
    assert_eq!(
        curl(&["-X", "POST", "-d", "state=provisioned", &report]).0,
        200
    );

    let lines = watch.wait_for(4, |l| l.contains(MAC1));
    let moves: Vec<String> = lines
        .iter()
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            let arrow = parts.iter().position(|p| *p == "->").unwrap();
            format!("{} -> {}", parts[arrow - 1], parts[arrow + 1])
        })
        .collect();
    assert_eq!(
        moves,
        [
            "unknown -> ipxe",
            "ipxe -> kernel",
            "kernel -> config",
            "config -> provisioned"
        ],
        "{lines:#?}"
    );
    assert!(lines[0].contains("alpha"), "{lines:#?}");

    // kindling machines: the table, and filters.
    let out = kindling(&["machines", "--url", &url]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.starts_with("MAC "), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(MAC1))
        .expect("machine row");
    assert!(
        row.contains("alpha") && row.contains("node") && row.contains("provisioned"),
        "{row}"
    );
    let out = kindling(&["machines", "--url", &url, "--state", "kernel", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = kindling(&["machines", "--url", &url, "--state", "booting"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("400"),
        "{out:?}"
    );

    // Metrics: machines per state, requests per route.
    let (_, metrics) = curl(&[&d.url("/metrics")]);
    assert!(
        metrics.contains("kindling_machines{state=\"provisioned\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kindling_http_requests_total{endpoint=\"/ipxe\",status=\"200\"} 1"),
        "{metrics}"
    );

    // A broken edit is a counted reload error; the last good profiles stay.
    std::fs::write(dir.path().join("profiles/bad.toml"), "[boot\n").unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, m) = curl(&[&d.url("/metrics")]);
        if m.contains("kindling_profile_reload_errors_total 1") || Instant::now() > end {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("kindling_profile_reload_errors_total 1"),
        "{metrics}"
    );
    std::fs::remove_file(dir.path().join("profiles/bad.toml")).unwrap();

    // Mutations need the token; a reinstall is pending when the daemon is killed.
    let reinstall = d.url(&format!("/api/v1/machines/{MAC1}/reinstall"));
    let (code, body) = curl(&["-X", "POST", &reinstall]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let auth = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(curl(&["-X", "POST", "-H", &auth, &reinstall]).0, 200);
    let before = machine(&d);
    assert_eq!(
        transitions(&before),
        ["ipxe", "kernel", "config", "provisioned"]
    );
    d.kill9();
    drop(watch);

    let d = Daemon::start(&config);
    let after = machine(&d);
    for key in [
        "state",
        "entered",
        "history",
        "next_boot",
        "provisioned",
        "ip",
        "hostname",
    ] {
        assert_eq!(after[key], before[key], "{key} after kill -9");
    }
    assert_eq!(after["state"], "provisioned");
    assert_eq!(after["next_boot"]["boot"], "install");
    // The reinstall is served once, then the machine boots its disk again.
    let ipxe = d.url(&format!("/ipxe?mac={MAC1}"));
    assert!(curl(&[&ipxe]).1.contains("kernel http://"));
    let (_, body) = curl(&[&ipxe]);
    assert!(body.contains("\nexit"), "{body}");

    // kindling wake without [wol] interface: a clear error.
    let out = kindling(&[
        "wake",
        "--url",
        &url.replace(&d.addr.port().to_string(), "1"),
        MAC1,
    ]);
    assert!(!out.status.success());
    let out = kindling(&["wake", "--url", &d.url(""), "--token", TOKEN, MAC1]);
    assert!(!out.status.success());
    // Per machine: a group goes on past a machine that cannot be woken.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "FAILED {MAC1}: {MAC1} has no BMC and Wake-on-LAN is off"
        )),
        "{out:?}"
    );
    let out = kindling(&["wake", "--url", &d.url("")]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "nothing to wake is a usage error"
    );
}

#[test]
fn sigterm_ends_open_event_streams() {
    let dir = lab();
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kindling"));
    cmd.args(["watch", "--url", &d.url("")]);
    let mut watch = Watched::spawn(cmd);
    assert_eq!(watch.wait_for(1, |l| l.starts_with("# following")).len(), 1);
    let started = Instant::now();
    let status = d.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for the stream: {:?}",
        started.elapsed()
    );
    // The watcher sees the end of the stream and exits by itself.
    let end = Instant::now() + Duration::from_secs(10);
    while watch.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "kindling watch did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

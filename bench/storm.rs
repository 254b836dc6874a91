//! Boot-storm simulator for bench/storm.sh and tests/storm.rs: N simulated machines power on
//! within a ramp and each does what PXE firmware and iPXE do, with their retransmit timing:
//!
//! 1. DHCP as a PXE ROM: DISCOVER/OFFER/REQUEST/ACK with the PXEClient vendor class, option 93
//!    (BIOS or x64 UEFI), 94 and 97; retransmits after 4, 8, 16, 32 s (PXE spec);
//! 2. TFTP of the boot file the ACK names, from the server it names: UEFI machines first probe
//!    its size as OVMF does (tsize, then error 8) and read it with windowsize 4, BIOS machines
//!    read it in lock-step 1468-byte blocks; silences cost a retransmit after 1 s;
//! 3. DHCP again as iPXE (user class `iPXE`), retransmits after 1, 2, 4, 8, 16 s;
//! 4. HTTP as iPXE: the boot file URL (`/boot.ipxe`), the `chain` URL in it with iPXE's
//!    `${...}` settings filled in, the `kernel` and `initrd` URLs of the script that returns
//!    (streamed, length checked), the `ignition.config.url=` of the kernel line (must be JSON),
//!    then a POST of `mac`, `state=provisioned` and `hostname` to the report path.
//!
//! The simulator is the rack's DHCP relay: it binds `RELAY:67`, sends every request to
//! `SERVER:67` with giaddr = RELAY, and hands each answer to the machine by transaction id.
//! After its lease each machine binds its TFTP and HTTP sockets to its leased address, so the
//! namespace it runs in must own the pool's addresses (bench/storm.sh adds them as a local
//! route on loopback).
//!
//!   storm run --server 10.97.0.1 --relay 10.97.0.2 [--machines 1000] [--ramp-ms 10000] ...
//!   storm prerender --boot-url http://10.97.0.1:8080/boot.ipxe --machines N --out DIR
//!
//! `run` prints a table of per-phase times and a last line
//! `ok|fail machines=N provisioned=P failed=F all_ms=T dhcp_retx=.. tftp_retx=.. http_retries=..`.
//! `prerender` walks the HTTP chain of every machine once and writes what it got as static
//! files (`boot.ipxe`, `ipxe/<mac>`, `ignition/<mac>`), for a reference web server, and each
//! machine's address as dnsmasq `dhcp-host` lines (`dhcp-hosts`, from 10.97.64.1).
//! Every machine gives up at `--deadline-s`, so a run always ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

#[path = "tftp_client.rs"]
mod tftp_client;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the simulated machines against a server.
    Run(RunArgs),
    /// Fetch every machine's documents once and write them as static files.
    Prerender(PrerenderArgs),
}

#[derive(clap::Args)]
struct Fleet {
    /// How many machines.
    #[arg(long, default_value_t = 1000)]
    machines: u32,
    /// Percentage of BIOS machines (the rest are x64 UEFI).
    #[arg(long, default_value_t = 20)]
    bios_percent: u32,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    fleet: Fleet,
    /// The DHCP server, as the relay forwards to it.
    #[arg(long)]
    server: Ipv4Addr,
    /// This relay's address (giaddr), in the pool's subnet; bound on port 67.
    #[arg(long)]
    relay: Ipv4Addr,
    /// Machines power on evenly spread over this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    ramp_ms: u64,
    /// Where the machines POST their report (on the Ignition URL's server).
    #[arg(long, default_value = "/api/v1/report")]
    report_path: String,
    /// A machine not provisioned this long after the run started has failed.
    #[arg(long, default_value_t = 600)]
    deadline_s: u64,
}

#[derive(clap::Args)]
struct PrerenderArgs {
    #[command(flatten)]
    fleet: Fleet,
    /// The boot file URL the DHCP server hands to iPXE.
    #[arg(long)]
    boot_url: String,
    /// The directory to write into.
    #[arg(long)]
    out: PathBuf,
}

/// One simulated machine's identity.
struct Machine {
    index: u32,
    mac: [u8; 6],
    bios: bool,
}

impl Machine {
    fn new(index: u32, fleet: &Fleet) -> Machine {
        let [_, a, b, c] = index.to_be_bytes();
        let pct = fleet.bios_percent.min(100);
        Machine {
            index,
            // Locally administered, unicast.
            mac: [0x02, 0x4b, 0x00, a, b, c],
            // Spread evenly: machine i is BIOS when the running share of BIOS machines steps.
            bios: (index + 1) * pct / 100 != index * pct / 100,
        }
    }

    fn mac_colons(&self) -> String {
        self.mac.map(|b| format!("{b:02x}")).join(":")
    }

    fn uuid(&self) -> String {
        format!("4b1d0000-0000-4000-8000-{:012x}", self.index)
    }

    /// iPXE's settings, as `${name}` or `${name:type}` in scripts expand them.
    fn ipxe_setting(&self, name: &str) -> String {
        match name {
            "mac:hexhyp" => self.mac.map(|b| format!("{b:02x}")).join("-"),
            "mac" | "mac:hex" => self.mac_colons(),
            "uuid" => self.uuid(),
            "buildarch" => if self.bios { "i386" } else { "x86_64" }.into(),
            "platform" => if self.bios { "pcbios" } else { "efi" }.into(),
            "serial" | "serial:uristring" => format!("SIM{:06}", self.index),
            "manufacturer" | "manufacturer:uristring" => "QEMU".into(),
            "product" | "product:uristring" => "Standard%20PC".into(),
            "memsize" => "4096".into(),
            _ => String::new(),
        }
    }

    /// `text` with every `${...}` replaced as iPXE would for this machine.
    fn expand(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            match rest[at + 2..].find('}') {
                Some(end) => {
                    out.push_str(&self.ipxe_setting(&rest[at + 2..at + 2 + end]));
                    rest = &rest[at + 2 + end + 1..];
                }
                None => {
                    rest = &rest[at..];
                    break;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// The phases of one boot, in order.
const PHASES: [&str; 7] = [
    "pxe-dhcp",
    "firmware",
    "ipxe-dhcp",
    "script",
    "kernel",
    "config",
    "report",
];

/// Where one machine's boot got to.
struct Failed {
    phase: &'static str,
    why: String,
}

/// Counters shared by all machines.
#[derive(Default)]
struct Counters {
    dhcp_retx: AtomicU32,
    dhcp_naks: AtomicU32,
    tftp_retx: AtomicU32,
    http_retries: AtomicU32,
}

/// The relay: one socket on port 67, answers handed to machines by transaction id.
struct Relay {
    sock: UdpSocket,
    addr: Ipv4Addr,
    server: SocketAddrV4,
    waiting: Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>,
}

impl Relay {
    async fn dispatch(self: Arc<Self>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, _)) = self.sock.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(msg) = Message::decode(&mut dhcproto::Decoder::new(&buf[..n])) else {
                continue;
            };
            let tx = self.waiting.lock().unwrap().get(&msg.xid()).cloned();
            if let Some(tx) = tx {
                let _ = tx.send(msg);
            }
        }
    }
}

/// What a DHCP exchange leased.
struct Lease {
    addr: Ipv4Addr,
    next_server: Ipv4Addr,
    file: String,
}

#[derive(Clone, Copy)]
enum Stage {
    Pxe,
    Ipxe,
}

impl Stage {
    /// Retransmit timeouts: PXE ROMs 4, 8, 16, 32 s; iPXE 1, 2, 4, 8, 16 s.
    fn schedule(self) -> &'static [u64] {
        match self {
            Stage::Pxe => &[4, 8, 16, 32],
            Stage::Ipxe => &[1, 2, 4, 8, 16],
        }
    }
}

fn request(m: &Machine, stage: Stage, kind: MessageType, xid: u32, relay: Ipv4Addr) -> Message {
    let mut msg = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        relay,
        &m.mac,
    );
    msg.set_opcode(Opcode::BootRequest)
        .set_hops(1)
        .set_flags(Flags::default().set_broadcast());
    let (arch, undi) = if m.bios { (0, "002001") } else { (7, "003016") };
    let o = msg.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ClassIdentifier(
        format!("PXEClient:Arch:{arch:05}:UNDI:{undi}").into_bytes(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
    o.insert(DhcpOption::ClientNetworkInterface(1, 3, 16));
    let mut guid = vec![0u8];
    guid.extend(m.index.to_be_bytes());
    guid.extend([0u8; 12]);
    o.insert(DhcpOption::ClientMachineIdentifier(guid));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::ClassIdentifier,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
    ]));
    if let Stage::Ipxe = stage {
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    msg
}

/// Send `msg` and retransmit on `stage`'s schedule until `rx` yields a reply of type `want`.
async fn exchange(
    relay: &Relay,
    rx: &mut mpsc::UnboundedReceiver<Message>,
    msg: &Message,
    want: MessageType,
    stage: Stage,
    counters: &Counters,
) -> Result<Message, String> {
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    for (attempt, secs) in stage.schedule().iter().enumerate() {
        if attempt > 0 {
            counters.dhcp_retx.fetch_add(1, Ordering::Relaxed);
        }
        relay
            .sock
            .send_to(&bytes, relay.server)
            .await
            .map_err(|e| e.to_string())?;
        let until = tokio::time::Instant::now() + Duration::from_secs(*secs);
        while let Ok(Some(reply)) = tokio::time::timeout_at(until, rx.recv()).await {
            match reply.opts().msg_type() {
                Some(t) if t == want => return Ok(reply),
                Some(MessageType::Nak) => return Err(NAK.into()),
                _ => {}
            }
        }
    }
    Err(format!(
        "no {want:?} after {} tries",
        stage.schedule().len()
    ))
}

/// One DORA exchange through the relay.
async fn dora(
    relay: &Relay,
    m: &Machine,
    stage: Stage,
    counters: &Counters,
) -> Result<Lease, String> {
    // A NAK (e.g. an address offered to two clients) starts over with a new DISCOVER, as RFC
    // 2131 says, after a random pause of up to a second (so that clients who collided do not
    // collide again); a new transaction id each time.
    const ROUNDS: u32 = 8;
    for round in 0..ROUNDS {
        let xid = 0x4b00_0000 ^ (round << 20) ^ ((m.index << 1) | stage as u32);
        match dora_once(relay, m, stage, xid, counters).await {
            Err(e) if e == NAK => {
                counters.dhcp_naks.fetch_add(1, Ordering::Relaxed);
                // Deterministic "random": the same run pauses the same way each time.
                let jitter = (xid.wrapping_mul(2_654_435_761) >> 8) % 1000;
                tokio::time::sleep(Duration::from_millis(u64::from(jitter))).await;
            }
            other => return other,
        }
    }
    Err(format!("NAK after {ROUNDS} rounds"))
}

const NAK: &str = "NAK";

async fn dora_once(
    relay: &Relay,
    m: &Machine,
    stage: Stage,
    xid: u32,
    counters: &Counters,
) -> Result<Lease, String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    relay.waiting.lock().unwrap().insert(xid, tx);
    let result = async {
        let discover = request(m, stage, MessageType::Discover, xid, relay.addr);
        let offer = exchange(
            relay,
            &mut rx,
            &discover,
            MessageType::Offer,
            stage,
            counters,
        )
        .await?;
        let mut req = request(m, stage, MessageType::Request, xid, relay.addr);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        if let Some(DhcpOption::ServerIdentifier(sid)) =
            offer.opts().get(OptionCode::ServerIdentifier)
        {
            req.opts_mut().insert(DhcpOption::ServerIdentifier(*sid));
        }
        let ack = exchange(relay, &mut rx, &req, MessageType::Ack, stage, counters).await?;
        // Option 67 or the file field; firmware reads either as a C string.
        let file = match ack.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(f)) => f.as_slice(),
            _ => ack.fname().unwrap_or_default(),
        };
        let file = String::from_utf8_lossy(file.split(|&b| b == 0).next().unwrap_or_default())
            .into_owned();
        let next_server = match (ack.siaddr(), ack.opts().get(OptionCode::ServerIdentifier)) {
            (s, _) if !s.is_unspecified() => s,
            (_, Some(DhcpOption::ServerIdentifier(sid))) => *sid,
            _ => relay.server.ip().to_owned(),
        };
        Ok(Lease {
            addr: ack.yiaddr(),
            next_server,
            file,
        })
    }
    .await;
    relay.waiting.lock().unwrap().remove(&xid);
    result
}

/// The firmware's TFTP download of its boot file.
async fn firmware(lease: &Lease, m: &Machine, counters: &Counters) -> Result<(), String> {
    let server = SocketAddr::from((lease.next_server, 69));
    let bind = || UdpSocket::bind((lease.addr, 0));
    let (timeout, give_up) = (Duration::from_secs(1), Duration::from_secs(30));
    let count = |f: &tftp_client::Fetched| {
        counters
            .tftp_retx
            .fetch_add(f.retransmits, Ordering::Relaxed);
    };
    let opts: &[(&str, &str)] = if m.bios {
        &[("blksize", "1468")]
    } else {
        // OVMF: ask the size first, abort, then read with a window.
        let sock = bind().await.map_err(|e| e.to_string())?;
        let probe = tftp_client::fetch(
            &sock,
            server,
            &lease.file,
            &[("tsize", "0"), ("blksize", "1468")],
            tftp_client::Mode::Probe,
            timeout,
            give_up,
        )
        .await?;
        count(&probe);
        &[("blksize", "1468"), ("windowsize", "4")]
    };
    let sock = bind().await.map_err(|e| e.to_string())?;
    let got = tftp_client::fetch(
        &sock,
        server,
        &lease.file,
        opts,
        tftp_client::Mode::Read,
        timeout,
        give_up,
    )
    .await?;
    count(&got);
    if got.bytes == 0 {
        return Err(format!("{}: empty", lease.file));
    }
    Ok(())
}

/// A machine's HTTP side: one client bound to its address, kept alive between requests.
struct Http<'a> {
    client: reqwest::Client,
    local: Option<Ipv4Addr>,
    counters: &'a Counters,
}

impl Http<'_> {
    fn new(addr: Option<Ipv4Addr>, counters: &Counters) -> Result<Http<'_>, String> {
        let client = reqwest::Client::builder()
            .local_address(addr.map(IpAddr::V4))
            .connect_timeout(Duration::from_secs(10))
            // One connection per request, as the big bodies get: a machine holds at most one.
            .pool_max_idle_per_host(0)
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Http {
            client,
            local: addr,
            counters,
        })
    }

    /// Up to 3 tries of `once`, 1 s apart, while it fails with a retryable error.
    async fn retry<T, F: Future<Output = Result<T, (bool, String)>>>(
        &self,
        once: impl Fn() -> F,
    ) -> Result<T, String> {
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                self.counters.http_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match once().await {
                Ok(r) => return Ok(r),
                Err((true, why)) => last = why,
                Err((false, why)) => return Err(why),
            }
        }
        Err(last)
    }

    /// GET a big body (kernel, initrd) and throw it away without copying it here: on its
    /// own connection, discarded in the kernel as it arrives (recv with MSG_TRUNC), so that the
    /// simulator's CPU does not set the pace of a storm. Its length is checked.
    async fn sink(&self, url: &str) -> Result<u64, String> {
        self.retry(|| async {
            match tokio::time::timeout(Duration::from_secs(120), sink_once(self.local, url)).await {
                Ok(r) => r.map_err(|e| (true, format!("GET {url}: {e}"))),
                Err(_) => Err((true, format!("GET {url}: no end after 120 s"))),
            }
        })
        .await
    }

    /// GET a text (script, config); connection errors and 5xx are tried again.
    async fn text(&self, url: &str) -> Result<String, String> {
        let body = self
            .retry(|| async {
                let resp = self
                    .client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| (true, format!("GET {url}: {}", chain(&e))))?;
                let status = resp.status();
                if !status.is_success() {
                    return Err((status.is_server_error(), format!("GET {url}: {status}")));
                }
                resp.bytes()
                    .await
                    .map_err(|e| (true, format!("GET {url}: {}", chain(&e))))
            })
            .await?;
        String::from_utf8(body.to_vec()).map_err(|_| format!("GET {url}: not UTF-8"))
    }
}

/// An error with its causes: reqwest's own message says only "error sending request".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// One GET of `url` from `local`, the body discarded unread; its length.
async fn sink_once(local: Option<Ipv4Addr>, url: &str) -> Result<u64, String> {
    use std::os::fd::AsRawFd as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
    let io = |e: std::io::Error| e.to_string();
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let server: SocketAddr = host
        .parse()
        .or_else(|_| format!("{host}:80").parse())
        .map_err(|_| format!("{host}: not an address"))?;
    let sock = tokio::net::TcpSocket::new_v4().map_err(io)?;
    if let Some(ip) = local {
        sock.bind(SocketAddr::from((ip, 0))).map_err(io)?;
    }
    let mut stream = sock.connect(server).await.map_err(io)?;
    let path = if path.is_empty() { "/" } else { path };
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(io)?;
    // The head (and whatever of the body came with it).
    let mut head = Vec::with_capacity(4096);
    let end = loop {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err("closed before the head ended".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 65536 {
            return Err("a head over 64 KiB".into());
        }
    };
    let text = String::from_utf8_lossy(&head[..end]);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("status {status}"));
    }
    let len: u64 = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or("no Content-Length")?;
    let mut got = (head.len() - end) as u64;
    // The body is consumed in the kernel without a copy here: a TCP recv with MSG_TRUNC
    // discards the data (Linux). One descriptor per download; a splice through a pipe to
    // /dev/null took four, and 10,000 machines ran out of the 20,000 this machine allows.
    thread_local! {
        static DISCARD: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 1 << 20]);
    }
    while got < len {
        stream.readable().await.map_err(io)?;
        let want = usize::try_from(len - got)
            .unwrap_or(usize::MAX)
            .min(1 << 20);
        let moved = stream.try_io(Interest::READABLE, || {
            DISCARD.with_borrow_mut(|buf| {
                nix::sys::socket::recv(
                    stream.as_raw_fd(),
                    &mut buf[..want],
                    nix::sys::socket::MsgFlags::MSG_TRUNC,
                )
                .map_err(std::io::Error::from)
            })
        });
        let n = match moved {
            Ok(0) => return Err(format!("closed after {got} of {len} bytes")),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        };
        got += n as u64;
    }
    Ok(got)
}

/// What iPXE would do with a boot script: its kernel, initrds and the Ignition URL on the
/// kernel line.
struct Script {
    kernel: String,
    initrds: Vec<String>,
    ignition: Option<String>,
}

fn first_url<'a>(words: impl Iterator<Item = &'a str>) -> Option<String> {
    words
        .into_iter()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(str::to_string)
}

/// The URL of the script's `chain` command.
fn chain_url(script: &str) -> Option<String> {
    script
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("chain "))
        .and_then(|l| first_url(l.split_whitespace()))
}

fn parse_script(text: &str) -> Result<Script, String> {
    let mut kernel = None;
    let mut ignition = None;
    let mut initrds = Vec::new();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("kernel") => {
                let rest: Vec<&str> = words.collect();
                kernel = first_url(rest.iter().copied());
                ignition = rest
                    .iter()
                    .find_map(|w| w.strip_prefix("ignition.config.url="))
                    .map(str::to_string);
            }
            Some("initrd") => initrds.extend(first_url(words)),
            _ => {}
        }
    }
    let kernel = kernel.ok_or_else(|| format!("no kernel line in: {text:.200}"))?;
    Ok(Script {
        kernel,
        initrds,
        ignition,
    })
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    url[after..].find('/').map_or(url, |i| &url[..after + i])
}

/// The raw value of query parameter `name` in `url`.
fn query_arg<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// The HTTP part of one boot; records each phase's time in `times`.
async fn http_boot(
    http: &Http<'_>,
    m: &Machine,
    boot_url: &str,
    report_path: &str,
    times: &mut Vec<Duration>,
) -> Result<(), Failed> {
    let mut clock = Instant::now();
    let mut lap = |times: &mut Vec<Duration>| {
        times.push(clock.elapsed());
        clock = Instant::now();
    };
    let fail = |phase: &'static str| move |why: String| Failed { phase, why };
    let boot = http.text(boot_url).await.map_err(fail("script"))?;
    let url = chain_url(&m.expand(&boot))
        .ok_or_else(|| fail("script")(format!("no chain URL in {boot_url}")))?;
    let script =
        parse_script(&http.text(&url).await.map_err(fail("script"))?).map_err(fail("script"))?;
    lap(times);
    for url in std::iter::once(&script.kernel).chain(&script.initrds) {
        http.sink(url).await.map_err(fail("kernel"))?;
    }
    lap(times);
    let ignition = script
        .ignition
        .ok_or_else(|| fail("config")("no ignition.config.url= on the kernel line".into()))?;
    let config = http.text(&ignition).await.map_err(fail("config"))?;
    serde_json::from_str::<serde_json::Value>(&config)
        .map_err(|e| fail("config")(format!("{ignition}: not JSON: {e}")))?;
    lap(times);
    let report = format!("{}{report_path}", origin(&ignition));
    let body = format!(
        "mac={}&state=provisioned&hostname=sim-{}",
        m.mac_colons(),
        m.index
    );
    let resp = http
        .client
        .post(&report)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| fail("report")(format!("POST {report}: {}", chain(&e))))?;
    if !resp.status().is_success() {
        return Err(fail("report")(format!("POST {report}: {}", resp.status())));
    }
    lap(times);
    Ok(())
}

/// One machine's whole boot; the time of each phase.
async fn boot(
    relay: &Relay,
    m: &Machine,
    report_path: &str,
    counters: &Counters,
) -> Result<Vec<Duration>, Failed> {
    let mut times = Vec::with_capacity(PHASES.len());
    let mut clock = Instant::now();
    let mut lap = |times: &mut Vec<Duration>| {
        times.push(clock.elapsed());
        clock = Instant::now();
    };
    let fail = |phase: &'static str| move |why: String| Failed { phase, why };
    let pxe = dora(relay, m, Stage::Pxe, counters)
        .await
        .map_err(fail("pxe-dhcp"))?;
    lap(&mut times);
    firmware(&pxe, m, counters)
        .await
        .map_err(|e| fail("firmware")(format!("{:?} from {}: {e}", pxe.file, pxe.next_server)))?;
    lap(&mut times);
    let ipxe = dora(relay, m, Stage::Ipxe, counters)
        .await
        .map_err(fail("ipxe-dhcp"))?;
    if !ipxe.file.starts_with("http") {
        return Err(fail("ipxe-dhcp")(format!(
            "iPXE was handed {:?}, not an http:// URL",
            ipxe.file
        )));
    }
    lap(&mut times);
    let http = Http::new(Some(ipxe.addr), counters).map_err(fail("script"))?;
    http_boot(&http, m, &ipxe.file, report_path, &mut times).await?;
    Ok(times)
}

/// This process's user + system CPU seconds (is the simulator itself the bottleneck?).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // Clock ticks: 100 a second on Linux.
    f.iter().sum::<f64>() / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn run(args: RunArgs) -> bool {
    let sock = UdpSocket::bind((args.relay, 67))
        .await
        .unwrap_or_else(|e| panic!("bind {}:67: {e}", args.relay));
    let relay = Arc::new(Relay {
        sock,
        addr: args.relay,
        server: SocketAddrV4::new(args.server, 67),
        waiting: Mutex::new(HashMap::new()),
    });
    tokio::spawn(relay.clone().dispatch());
    let counters = Arc::new(Counters::default());
    let report_path = Arc::new(args.report_path);
    let n = args.fleet.machines;
    let bios = (0..n)
        .filter(|&i| Machine::new(i, &args.fleet).bios)
        .count();
    println!(
        "storm: {n} machines ({} UEFI, {bios} BIOS) powering on within {} ms",
        n as usize - bios,
        args.ramp_ms
    );
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(args.deadline_s);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let m = Machine::new(i, &args.fleet);
            let (relay, counters, report_path) =
                (relay.clone(), counters.clone(), report_path.clone());
            let at = started + Duration::from_millis(args.ramp_ms * u64::from(i) / u64::from(n));
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let on = Instant::now();
                match tokio::time::timeout_at(deadline, boot(&relay, &m, &report_path, &counters))
                    .await
                {
                    Ok(Ok(times)) => Ok((times, on.elapsed(), Instant::now())),
                    Ok(Err(f)) => Err(f),
                    Err(_) => Err(Failed {
                        phase: "deadline",
                        why: "not provisioned by the deadline".into(),
                    }),
                }
            })
        })
        .collect();
    let mut phases: Vec<Vec<Duration>> = vec![Vec::new(); PHASES.len()];
    let mut totals = Vec::new();
    let mut last_done = None;
    let mut failures: HashMap<&'static str, (u32, String)> = HashMap::new();
    for t in tasks {
        match t.await {
            Ok(Ok((times, total, done))) => {
                for (p, d) in phases.iter_mut().zip(times) {
                    p.push(d);
                }
                totals.push(total);
                last_done = last_done.max(Some(done));
            }
            Ok(Err(f)) => {
                let e = failures.entry(f.phase).or_insert((0, f.why));
                e.0 += 1;
            }
            Err(e) => {
                failures.entry("panic").or_insert((0, e.to_string())).0 += 1;
            }
        }
    }
    let all = last_done.map_or(Duration::ZERO, |d| d - started.into_std());
    println!(
        "{:<10} {:>9} {:>9} {:>9}",
        "phase", "p50 ms", "p99 ms", "max ms"
    );
    for (name, mut v) in PHASES
        .iter()
        .zip(phases)
        .chain([("total", totals)].iter().map(|(n, v)| (n, v.clone())))
    {
        v.sort();
        println!(
            "{name:<10} {:>9.1} {:>9.1} {:>9.1}",
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            percentile(&v, 1.0)
        );
    }
    let failed: u32 = failures.values().map(|(c, _)| c).sum();
    for (phase, (count, why)) in &failures {
        println!("failed in {phase}: {count} machines; first: {why}");
    }
    let provisioned = n - failed;
    let ok = failed == 0;
    println!(
        "{} machines={n} provisioned={provisioned} failed={failed} all_ms={:.0} dhcp_retx={} dhcp_naks={} tftp_retx={} http_retries={} sim_cpu_s={:.1}",
        if ok { "ok" } else { "fail" },
        all.as_secs_f64() * 1000.0,
        counters.dhcp_retx.load(Ordering::Relaxed),
        counters.dhcp_naks.load(Ordering::Relaxed),
        counters.tftp_retx.load(Ordering::Relaxed),
        counters.http_retries.load(Ordering::Relaxed),
        own_cpu_seconds(),
    );
    ok
}

async fn prerender(args: PrerenderArgs) -> Result<(), String> {
    let counters = Counters::default();
    let http = Http::new(None, &counters)?;
    let boot = http.text(&args.boot_url).await?;
    let write = |rel: &str, body: &[u8]| {
        let path = args.out.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("boot.ipxe", boot.as_bytes())?;
    // dnsmasq's dhcp-host lines: every machine's address pinned, 10.97.64.1 and up.
    let hosts: String = (0..args.fleet.machines)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 64, 1)) + i);
            format!("{},{ip}\n", Machine::new(i, &args.fleet).mac_colons())
        })
        .collect();
    write("dhcp-hosts", hosts.as_bytes())?;
    for i in 0..args.fleet.machines {
        let m = Machine::new(i, &args.fleet);
        let url = chain_url(&m.expand(&boot)).ok_or("no chain URL in the boot script")?;
        let text = http.text(&url).await?;
        let script = parse_script(&text)?;
        let key = |u: &str| {
            query_arg(u, "mac")
                .map(str::to_string)
                .ok_or(format!("no mac= in {u}"))
        };
        write(&format!("ipxe/{}", key(&url)?), text.as_bytes())?;
        let ignition = script.ignition.ok_or("no ignition.config.url=")?;
        let config = http.text(&ignition).await?;
        write(&format!("ignition/{}", key(&ignition)?), config.as_bytes())?;
    }
    println!(
        "prerendered {} machines into {}",
        args.fleet.machines,
        args.out.display()
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let ok = match Cli::parse().cmd {
        Cmd::Run(a) => run(a).await,
        Cmd::Prerender(a) => prerender(a)
            .await
            .map_err(|e| eprintln!("prerender: {e}"))
            .is_ok(),
    };
    std::process::exit(if ok { 0 } else { 1 });
}

//! The read-only TFTP service: iPXE binaries and assets for PXE ROMs.
//!
//! Kindling's own RRQ-only server on tokio, rather than async-tftp 0.4. That crate ignores
//! a client's ERROR packet and drops a second RRQ from the same address and port while the
//! first transfer still retries. A PXE ROM does exactly that. OVMF sends RRQ(tsize) → OACK →
//! ERROR 8 → RRQ, so its real download waited for the dead transfer's retries to run out. See
//! CRATES.md.
//!
//! - One listening socket; each transfer gets its own socket connected to the client (its
//!   transfer ID), so stray datagrams never reach it.
//! - A new RRQ from the same address and port as a running transfer replaces it at once,
//!   unless it is the same request while the client is still busy with the transfer (it sent
//!   nothing yet, or an ACK within [`RESTART_SILENCE`]): that is the client's own repeat of its
//!   request, sent before the transfer's first packet reached it and queued behind a storm.
//!   The client has taken the running transfer's port as its transfer ID; a new transfer from
//!   another port would be ignored by it while the one it answers was gone.
//! - An ERROR from the client ends its transfer at once.
//! - Options: `blksize` (clamped to `tftp.max_block_size` and the path MTU), `tsize`, `timeout`
//!   (1..255 s), `windowsize` (RFC 7440, clamped to `tftp.max_window_size`).
//! - A silent client's transfer ends after `tftp.retries` retransmissions of its window. The
//!   wait before each doubles (up to 8 times the timeout, at most [`MAX_BACKOFF`]), as
//!   dnsmasq's does: in a boot storm a slow client is not dropped after a few seconds while
//!   its ROM still waits, and a congested server does not add a retransmission every second.
//! - At most `tftp.max_transfers` transfers at once; a request beyond that waits for a free
//!   slot, first come first served, for up to [`SLOT_WAIT`], and is then dropped without an
//!   answer. Never an ERROR: a PXE ROM gives up its boot on an ERROR, but sends its request
//!   again after a silence. A repeated request of a waiting client keeps its place.
//! - Write requests, `..` and netascii mode are refused with a TFTP ERROR; a leading `/` is the
//!   TFTP root (GRUB asks for `/grub/grub.cfg`).
//! - A window of several blocks leaves in one `send` where the kernel segments UDP
//!   (`UDP_SEGMENT`, generic segmentation offload): one DATA packet per block on the wire,
//!   one trip through the socket and IP layers for all of them. A device or path that
//!   refuses it (no checksum offload, IPsec) gets one `send` per block.
//! - Files up to 8 MiB (iPXE binaries) are cached in memory, keyed by path, size and
//!   modification time. Bigger files are read per window.
//! - Each completed transfer is logged and recorded against the machine. TFTP knows only the
//!   client's IP, so the inventory maps it to a MAC (the address DHCP gave it).

pub mod packet;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::TftpConfig;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::net::{ReceiveError, Receiver};
use packet::{ErrorCode, Options, Packet, Request};

/// Files up to this size are kept in memory once read.
const CACHE_FILE_MAX: u64 = 8 << 20;
/// The cache is emptied when it would grow beyond this.
const CACHE_TOTAL_MAX: u64 = 64 << 20;
/// IPv4 + UDP + TFTP DATA headers: a block must fit the MTU with them.
const HEADERS: u32 = 20 + 8 + 4;

/// Why the TFTP service stopped.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// The listening socket keeps failing.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
}

/// A file's bytes, shared by the transfers that send it.
type Bytes = Arc<[u8]>;

/// The TFTP service.
/// Renders the grub.cfg of a machine (by MAC, asked from its address): its bytes, or why not.
pub type GrubCfg = Arc<
    dyn Fn(
            crate::mac::MacAddr,
            std::net::Ipv4Addr,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>
        + Send
        + Sync,
>;

/// The name GRUB asks for its config by (its prefix is `(tftp,<server>)/grub`).
pub const GRUB_CFG: &str = "grub/grub.cfg";

pub struct Service {
    roots: Vec<PathBuf>,
    /// Files served under a name of their own (the signed shim and GRUB).
    named: std::collections::HashMap<String, PathBuf>,
    /// Renders `grub/grub.cfg` for the machine that asks.
    grub_cfg: Option<GrubCfg>,
    config: TftpConfig,
    inventory: Arc<Inventory>,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    /// Running transfers by client address and port (to replace one when its client asks
    /// again) and how many each client address has.
    active: Mutex<Active>,
    /// Big files are read ahead [`READ_AHEAD`] at a time by at most this many transfers at
    /// once (the memory they hold is bounded); the others read one window at a time.
    read_ahead: Arc<Semaphore>,
    next_id: std::sync::atomic::AtomicU64,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tftp::Service")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cache {
    files: HashMap<PathBuf, (u64, SystemTime, Bytes)>,
    total: u64,
}

/// Where a file's blocks come from.
enum Source {
    Memory(Bytes),
    File(Arc<std::fs::File>, u64),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::File(_, len) => *len,
        }
    }
}

/// Bytes read ahead from a file per blocking read (a few hundred blocks).
const READ_AHEAD: usize = 512 << 10;
/// All read-ahead buffers together stay below this.
const READ_AHEAD_BUDGET: usize = 64 << 20;
/// A transfer without a read-ahead buffer keeps at most this much of its file in memory: its
/// window is negotiated down to fit.
const WINDOW_BYTES_WITHOUT_READ_AHEAD: usize = 64 << 10;
/// The longest retransmission timeout a client may ask for (RFC 2349 allows 255 s; a slot
/// held that long for two packets is a denial of service). A longer one is not acknowledged,
/// and the server's own timeout applies.
const MAX_CLIENT_TIMEOUT_S: u8 = 5;
/// The longest wait between two retransmissions of a window (unless the timeout itself is
/// longer). With the default timeout of 1 s and 5 retries, a silent client's transfer ends
/// after 1 + 2 + 4 + 8 + 8 + 8 = 31 s, as dnsmasq's ends after about 29 s.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The wait for an ACK after the `tries`-th retransmission (0: after the first send).
fn retransmit_wait(timeout: Duration, tries: u32) -> Duration {
    (timeout * (1 << tries.min(3))).min(timeout.max(MAX_BACKOFF))
}

/// A client silent this long towards its running transfer that sends the same request again
/// has started over (a ROM retrying its boot from the same port): it gets a new transfer.
/// Sooner, the request is its old repeat and is ignored.
pub const RESTART_SILENCE: Duration = Duration::from_secs(3);

/// How long a request waits for a transfer slot when all are taken. PXE ROMs ask again after
/// a few seconds of silence for about half a minute; their repeats keep the first one's place.
pub const SLOT_WAIT: Duration = Duration::from_secs(30);

/// Running transfers.
#[derive(Default)]
struct Active {
    /// Per client address and port: its transfer.
    by_peer: HashMap<SocketAddr, Running>,
    per_ip: HashMap<IpAddr, usize>,
}

/// A client's request, waiting for a slot or served.
struct Running {
    id: u64,
    cancel: CancellationToken,
    request: Request,
    /// Whether it still waits for a slot.
    waiting: bool,
    heard: Arc<Heard>,
}

/// When a transfer last heard from its client (an ACK); `None` before the first.
#[derive(Debug, Default)]
struct Heard(Mutex<Option<Instant>>);

impl Heard {
    fn mark(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether the client is still busy with the transfer: it sent nothing yet (the transfer's
    /// first packets or their retransmissions are on their way), or something within `within`.
    fn busy(&self, within: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| at.elapsed() < within)
    }
}

/// The bytes of a transfer: the whole cached file, or a read-ahead window of a big one.
struct Reader<'a> {
    source: &'a Source,
    /// The bytes held and the file offset of their first byte.
    held: Bytes,
    at: u64,
    /// Whether big reads are allowed (this transfer holds a read-ahead permit); else one
    /// window at a time.
    read_ahead: bool,
}

impl<'a> Reader<'a> {
    fn new(source: &'a Source, read_ahead: bool) -> Reader<'a> {
        let held = match source {
            Source::Memory(b) => b.clone(),
            Source::File(..) => Bytes::from(Vec::new()),
        };
        Reader {
            source,
            held,
            at: 0,
            read_ahead,
        }
    }

    fn len(&self) -> u64 {
        self.source.len()
    }

    /// Make `offset..offset + len` (clipped to the file) available; returns where it starts
    /// in [`Reader::held`]. Cached files never read; big files read [`READ_AHEAD`] at a time.
    async fn fetch(&mut self, offset: u64, len: usize) -> std::io::Result<usize> {
        let want_end = (offset + len as u64).min(self.len());
        let held_end = self.at + self.held.len() as u64;
        if offset >= self.at && want_end <= held_end {
            return Ok(usize::try_from(offset - self.at).unwrap_or(usize::MAX));
        }
        let Source::File(f, _) = self.source else {
            return Ok(self.held.len());
        };
        let f = f.clone();
        let size = if self.read_ahead {
            len.max(READ_AHEAD)
        } else {
            len
        };
        let bytes = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; size];
            let mut got = 0;
            while got < size {
                match f.read_at(&mut buf[got..], offset + got as u64)? {
                    0 => break,
                    n => got += n,
                }
            }
            buf.truncate(got);
            Ok::<_, std::io::Error>(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        self.held = bytes;
        self.at = offset;
        Ok(0)
    }
}

/// A request refused before any data: the ERROR to send and the reason to log.
struct Refusal(ErrorCode, String);

/// Why a transfer ended without completing.
enum Ended {
    ClientError(u16, String),
    TimedOut(u64),
    TooLong,
    Replaced,
    Io(std::io::Error),
}

impl Service {
    /// A service serving from `roots`, looked up in order (the iPXE binaries, then assets).
    pub fn new(
        roots: Vec<PathBuf>,
        config: TftpConfig,
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
    ) -> Service {
        Service {
            slots: Arc::new(Semaphore::new(config.max_transfers)),
            roots,
            named: Default::default(),
            grub_cfg: None,
            config,
            inventory,
            metrics,
            active: Mutex::new(Active::default()),
            read_ahead: Arc::new(Semaphore::new(READ_AHEAD_BUDGET / READ_AHEAD)),
            next_id: std::sync::atomic::AtomicU64::new(1),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Serve `path` as `name` too (the shim and GRUB of the Secure Boot chain).
    pub fn with_file(mut self, name: &str, path: PathBuf) -> Service {
        self.named.insert(name.to_string(), path);
        self
    }

    /// Answer `grub/grub.cfg` with what `render` makes for the machine at the client's address.
    pub fn with_grub_cfg(mut self, render: GrubCfg) -> Service {
        self.grub_cfg = Some(render);
        self
    }

    /// Serve requests arriving on `socket` until `token` is cancelled. A receive error backs
    /// off (10 ms doubling to 1 s); one that lasts a minute without a good datagram ends the
    /// service with an error for the supervisor.
    pub async fn run(
        self: Arc<Self>,
        socket: Arc<UdpSocket>,
        token: CancellationToken,
    ) -> Result<(), TftpError> {
        let local = socket.local_addr().ok();
        let mut buf = vec![0u8; 2048];
        let mut receiver = Receiver::new(socket.clone(), "TFTP");
        loop {
            let Some((len, peer)) = receiver.recv(&mut buf, &token).await? else {
                return Ok(());
            };
            match packet::parse(&buf[..len]) {
                Ok(Packet::Request(req)) if req.opcode == packet::RRQ => {
                    self.start(peer, req, local, &socket, &token).await;
                }
                Ok(Packet::Request(req)) => {
                    tracing::info!(%peer, file = %req.filename, "TFTP write request refused");
                    self.metrics.tftp("refused");
                    let msg =
                        packet::error(ErrorCode::AccessViolation, "Kindling's TFTP is read-only");
                    let _ = socket.send_to(&msg, peer).await;
                }
                Ok(other) => {
                    tracing::debug!(%peer, ?other, "TFTP: not a request on the server port; dropped");
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TFTP: malformed packet dropped");
                    self.metrics.tftp("malformed");
                }
            }
        }
    }

    async fn start(
        self: &Arc<Self>,
        peer: SocketAddr,
        req: Request,
        local: Option<SocketAddr>,
        socket: &UdpSocket,
        token: &CancellationToken,
    ) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cancel = token.child_token();
        let heard = Arc::new(Heard::default());
        let admitted = {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(running) = active.by_peer.get(&peer) {
                if running.waiting && running.request.filename == req.filename {
                    // Its request again while it waits for a slot: it keeps its place.
                    return;
                }
                if !running.waiting && running.request == req && running.heard.busy(RESTART_SILENCE)
                {
                    // Its old repeat, queued: the client answers the running transfer.
                    tracing::debug!(%peer, file = %req.filename, "TFTP: a repeated request of a running transfer ignored");
                    return;
                }
            }
            let replaced = active.by_peer.remove(&peer);
            if let Some(old) = &replaced {
                // The client started over (a ROM after its tsize probe): serve the new request
                // now; the old transfer's count is handed on to this one.
                old.cancel.cancel();
            }
            let count = active.per_ip.entry(peer.ip()).or_default();
            if replaced.is_none() && *count >= self.config.max_transfers_per_client {
                false
            } else {
                if replaced.is_none() {
                    *count += 1;
                }
                active.by_peer.insert(
                    peer,
                    Running {
                        id,
                        cancel: cancel.clone(),
                        request: req.clone(),
                        waiting: true,
                        heard: heard.clone(),
                    },
                );
                true
            }
        };
        if !admitted {
            tracing::warn!(%peer, file = %req.filename, max = self.config.max_transfers_per_client, "TFTP: this client has too many transfers running; request refused");
            self.metrics.tftp("busy");
            let msg = packet::error(ErrorCode::Undefined, "too many transfers from this address");
            let _ = socket.send_to(&msg, peer).await;
            return;
        }
        let this = self.clone();
        // One span per transfer: everything logged about it carries the client and the file.
        let span = tracing::info_span!("tftp", %peer, file = %req.filename);
        tokio::spawn(
            async move {
                let Some(permit) = this.slot(peer, id, &cancel).await else {
                    this.forget(peer, id);
                    return;
                };
                this.transfer(peer, req, local, cancel, &heard).await;
                drop(permit);
                this.forget(peer, id);
            }
            .instrument(span),
        );
    }

    /// A transfer slot for request `id` of `peer`: at once, or in turn once one frees up; `None`
    /// when the client started over meanwhile, or after [`SLOT_WAIT`] (logged and counted as
    /// `busy`; the client asks again after its timeout).
    async fn slot(
        &self,
        peer: SocketAddr,
        id: u64,
        cancel: &CancellationToken,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::debug!(
                    max = self.config.max_transfers,
                    "TFTP: every slot taken; the request waits for one"
                );
                tokio::select! {
                    permit = self.slots.clone().acquire_owned() => permit.ok()?,
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(SLOT_WAIT) => {
                        tracing::warn!(max = self.config.max_transfers, "TFTP busy: no slot came free in {SLOT_WAIT:?}; request dropped (the client asks again)");
                        self.metrics.tftp("busy");
                        return None;
                    }
                }
            }
        };
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        match active.by_peer.get_mut(&peer) {
            Some(running) if running.id == id => running.waiting = false,
            _ => return None,
        }
        Some(permit)
    }

    /// Transfer `id` of `peer` is over: free its place (unless a newer request of the same
    /// client took it over).
    fn forget(&self, peer: SocketAddr, id: u64) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.by_peer.get(&peer).is_some_and(|r| r.id == id) {
            active.by_peer.remove(&peer);
            if let Some(n) = active.per_ip.get_mut(&peer.ip()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    active.per_ip.remove(&peer.ip());
                }
            }
        }
    }

    async fn transfer(
        &self,
        peer: SocketAddr,
        req: Request,
        local: Option<SocketAddr>,
        cancel: CancellationToken,
        heard: &Heard,
    ) {
        let started = Instant::now();
        let bind_ip = match local {
            Some(a) if !a.ip().is_unspecified() => a.ip(),
            _ => IpAddr::from([0, 0, 0, 0]),
        };
        let sock = match UdpSocket::bind((bind_ip, 0)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%peer, error = %e, "TFTP: cannot open a transfer socket");
                return;
            }
        };
        if let Err(e) = sock.connect(peer).await {
            tracing::warn!(%peer, error = %e, "TFTP: cannot reach the client");
            return;
        }
        let file = req.filename.clone();
        let source = match self.open(&req, peer).await {
            Ok(s) => s,
            Err(Refusal(code, why)) => {
                tracing::info!(%peer, %file, "TFTP request refused: {why}");
                self.metrics.tftp("refused");
                let _ = sock.send(&packet::error(code, &why)).await;
                return;
            }
        };
        let mtu = path_mtu(&sock).unwrap_or(1500);
        // A big file is read ahead when the budget allows; else its window shrinks to fit.
        let read_ahead = match &source {
            Source::File(..) => self.read_ahead.clone().try_acquire_owned().ok(),
            Source::Memory(_) => None,
        };
        let window_cap = match (&source, &read_ahead) {
            (Source::File(..), None) => Some(WINDOW_BYTES_WITHOUT_READ_AHEAD),
            _ => None,
        };
        let (granted, block_size, window, timeout) =
            self.negotiate(&req.options, &source, mtu, window_cap);
        let reader = Reader::new(&source, read_ahead.is_some());
        let result = tokio::select! {
            _ = cancel.cancelled() => Err(Ended::Replaced),
            _ = tokio::time::sleep(self.config.max_transfer_time) => Err(Ended::TooLong),
            r = send_file(&sock, reader, &granted, Pace { block_size, window, timeout, retries: self.config.retries }, heard) => r,
        };
        drop(read_ahead);
        let ms = started.elapsed().as_millis();
        let mac = match peer.ip() {
            IpAddr::V4(ip) => self.inventory.mac_by_ip(ip),
            IpAddr::V6(_) => None,
        };
        let mac_text = mac.map_or_else(|| "-".to_string(), |m| m.to_string());
        match result {
            Ok((bytes, sends)) => {
                tracing::info!(%peer, mac = %mac_text, %file, bytes, ms, block_size, window, sends = %sends.as_str(), "TFTP sent");
                self.metrics.tftp("completed");
                self.metrics.tftp_bytes.inc_by(bytes);
                if let Some(mac) = mac {
                    self.inventory.tftp_fetched(mac, &file);
                }
            }
            Err(Ended::ClientError(code, msg)) => {
                // OVMF and others end the tsize probe this way; not a failure.
                tracing::debug!(%peer, mac = %mac_text, %file, code, %msg, "TFTP transfer ended by the client");
                self.metrics.tftp("aborted");
            }
            Err(Ended::TooLong) => {
                tracing::warn!(%peer, mac = %mac_text, %file, ms, "TFTP transfer cut off: it took longer than tftp.max_transfer_time");
                self.metrics.tftp("timeout");
            }
            Err(Ended::Replaced) => {
                tracing::debug!(%peer, %file, "TFTP transfer replaced by a new request from the same client");
                self.metrics.tftp("aborted");
            }
            Err(Ended::TimedOut(block)) => {
                tracing::warn!(%peer, mac = %mac_text, %file, block, ms, "TFTP transfer abandoned: the client stopped answering");
                self.metrics.tftp("timeout");
            }
            Err(Ended::Io(e)) => {
                tracing::warn!(%peer, mac = %mac_text, %file, error = %e, "TFTP transfer failed");
                self.metrics.tftp("error");
                let _ = sock
                    .send(&packet::error(ErrorCode::Undefined, "read error"))
                    .await;
            }
        }
    }

    /// The options granted, the block size, window size and retransmission timeout. A window
    /// holds at most `window_bytes` when given; a client timeout above
    /// [`MAX_CLIENT_TIMEOUT_S`] is not acknowledged (RFC 2349: the acknowledged value must be
    /// the requested one) and the server's timeout applies.
    fn negotiate(
        &self,
        asked: &Options,
        source: &Source,
        mtu: u32,
        window_bytes: Option<usize>,
    ) -> (Options, usize, usize, Duration) {
        let mtu_block = u16::try_from(mtu.saturating_sub(HEADERS).max(8)).unwrap_or(u16::MAX);
        let block_size = asked
            .block_size
            .map(|b| b.min(self.config.max_block_size).min(mtu_block));
        let block = usize::from(block_size.unwrap_or(512));
        let fits = window_bytes.map_or(u16::MAX, |bytes| {
            u16::try_from((bytes / block).max(1)).unwrap_or(u16::MAX)
        });
        let window_size = asked
            .window_size
            .map(|w| w.min(self.config.max_window_size).min(fits));
        let client_timeout = asked.timeout.filter(|t| *t <= MAX_CLIENT_TIMEOUT_S);
        let granted = Options {
            block_size,
            timeout: client_timeout,
            transfer_size: asked.transfer_size.map(|_| source.len()),
            window_size,
        };
        let timeout =
            client_timeout.map_or(self.config.timeout, |t| Duration::from_secs(u64::from(t)));
        (
            granted,
            usize::from(block_size.unwrap_or(512)),
            usize::from(window_size.unwrap_or(1)),
            timeout,
        )
    }

    /// Resolve and open the requested file.
    async fn open(&self, req: &Request, peer: SocketAddr) -> Result<Source, Refusal> {
        if req.mode != "octet" {
            return Err(Refusal(
                ErrorCode::Undefined,
                format!("mode {:?} is not served: use octet (binary) mode", req.mode),
            ));
        }
        let rel = safe_relative(&req.filename).map_err(|why| {
            Refusal(
                ErrorCode::AccessViolation,
                format!("{:?}: {why}", req.filename),
            )
        })?;
        let name = rel.to_string_lossy();
        if name == GRUB_CFG
            && let Some(render) = &self.grub_cfg
        {
            let IpAddr::V4(ip) = peer.ip() else {
                return Err(Refusal(ErrorCode::FileNotFound, "IPv4 only".into()));
            };
            let Some(mac) = self.inventory.mac_by_ip(ip) else {
                return Err(Refusal(
                    ErrorCode::FileNotFound,
                    format!("{GRUB_CFG}: no machine is known at {ip} (its DHCP exchange names it)"),
                ));
            };
            return match render(mac, ip).await {
                Ok(bytes) => Ok(Source::Memory(Bytes::from(bytes))),
                Err(why) => Err(Refusal(
                    ErrorCode::FileNotFound,
                    format!("{GRUB_CFG} for {mac}: {why}"),
                )),
            };
        }
        let named = self.named.get(name.as_ref()).cloned();
        let candidates = named
            .into_iter()
            .chain(self.roots.iter().map(|root| root.join(&rel)));
        let Some((path, meta)) = candidates.into_iter().find_map(|p| {
            std::fs::metadata(&p)
                .ok()
                .filter(std::fs::Metadata::is_file)
                .map(|m| (p, m))
        }) else {
            return Err(Refusal(
                ErrorCode::FileNotFound,
                format!("{}: no such file", req.filename),
            ));
        };
        let len = meta.len();
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if len <= CACHE_FILE_MAX {
            if let Some((l, t, bytes)) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .files
                .get(&path)
                && *l == len
                && *t == mtime
            {
                return Ok(Source::Memory(bytes.clone()));
            }
            let p = path.clone();
            let bytes: Bytes = tokio::task::spawn_blocking(move || std::fs::read(p))
                .await
                .map_err(|e| Refusal(ErrorCode::Undefined, e.to_string()))?
                .map_err(|e| io_refusal(&req.filename, &e))?
                .into();
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.total + len > CACHE_TOTAL_MAX {
                cache.files.clear();
                cache.total = 0;
            }
            if let Some((old, _, _)) = cache.files.insert(path, (len, mtime, bytes.clone())) {
                cache.total -= old;
            }
            cache.total += len;
            return Ok(Source::Memory(bytes));
        }
        let file = std::fs::File::open(&path).map_err(|e| io_refusal(&req.filename, &e))?;
        Ok(Source::File(Arc::new(file), len))
    }
}

fn io_refusal(name: &str, e: &std::io::Error) -> Refusal {
    let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
        ErrorCode::AccessViolation
    } else {
        ErrorCode::FileNotFound
    };
    Refusal(code, format!("{name}: {e}"))
}

/// The request path as a path relative to the served roots, with no `..`. A leading `/` means
/// the TFTP root, as in tftpd-hpa's secure mode: GRUB asks for `/grub/grub.cfg` and
/// `/vmlinuz`; nothing outside the roots is reachable either way.
fn safe_relative(name: &str) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err("\"..\" is refused"),
            p => out.push(p),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("empty path");
    }
    Ok(out)
}

/// The path MTU towards the connected peer (Linux `IP_MTU`).
fn path_mtu(sock: &UdpSocket) -> Option<u32> {
    nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::IpMtu)
        .ok()
        .and_then(|m| u32::try_from(m).ok())
}

/// Ask the kernel to cut every datagram of `sock` into segments of `size` bytes (one TFTP
/// DATA packet each; 0 turns it off); false where it cannot (kernels before 4.18, other
/// systems).
fn segment_sends(sock: &UdpSocket, size: usize) -> bool {
    let Ok(size) = i32::try_from(size) else {
        return false;
    };
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::UdpGsoSegment, &size).is_ok()
}

/// Whether a segmented send failed because the path cannot segment (checksum offload missing:
/// `EIO`; a socket without UDP checksums: `EINVAL`; `EMSGSIZE` when the MTU shrank).
fn segmenting_refused(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error()
        .map(Errno::from_raw)
        .is_some_and(|n| matches!(n, Errno::EIO | Errno::EINVAL | Errno::EMSGSIZE))
}

/// The most segments the kernel takes in one send (`UDP_MAX_SEGMENTS`: 64 in older kernels,
/// more in newer ones).
const MAX_SEGMENTS: usize = 64;
/// The most bytes in one segmented send (a UDP datagram's payload is at most 65,507).
const MAX_SEGMENTED_BYTES: usize = 65_000;

/// One window's DATA packets: blocks `first`, `first + 1`, … (`count` of them), their
/// payloads cut from `data` every `block_size` bytes (the file's last may be short or empty).
struct Window<'a> {
    first: u64,
    data: &'a [u8],
    block_size: usize,
    count: usize,
}

impl Window<'_> {
    fn payload(&self, i: usize) -> &[u8] {
        let from = (i * self.block_size).min(self.data.len());
        let to = ((i + 1) * self.block_size).min(self.data.len());
        &self.data[from..to]
    }
}

/// Send a window's packets: while `sends` is [`Sends::Segmented`], as few segmented sends as
/// the kernel's limits allow, straight from the file's bytes (each packet a header and its
/// payload in one vectored send, no copy); else one send per packet, copied into `scratch`
/// (cheaper than a vectored send for one packet). A segmented send the path refuses turns
/// the socket's segmenting off and sends the rest one by one (`sends` becomes
/// [`Sends::FellBack`]).
async fn send_window(
    sock: &UdpSocket,
    w: &Window<'_>,
    sends: &mut Sends,
    scratch: &mut Vec<u8>,
) -> std::io::Result<()> {
    let header = |i: usize| packet::data_header((w.first + i as u64) as u16);
    let mut i = 0;
    if *sends == Sends::Segmented && w.count > 1 {
        let per_send = (MAX_SEGMENTED_BYTES / (4 + w.block_size)).clamp(1, MAX_SEGMENTS);
        let headers: Vec<[u8; 4]> = (0..w.count).map(header).collect();
        while i < w.count {
            let n = per_send.min(w.count - i);
            if n == 1 {
                break;
            }
            match send_packets(sock, &headers[i..i + n], w, i).await {
                Ok(()) => i += n,
                Err(e) if segmenting_refused(&e) => {
                    tracing::debug!(error = %e, "TFTP: the path does not segment UDP; one send per block");
                    segment_sends(sock, 0);
                    *sends = Sends::FellBack;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    for k in i..w.count {
        scratch.clear();
        scratch.extend_from_slice(&header(k));
        scratch.extend_from_slice(w.payload(k));
        sock.send(scratch).await?;
    }
    Ok(())
}

/// One send of the packets with `headers`, the first being the window's packet `from`.
async fn send_packets(
    sock: &UdpSocket,
    headers: &[[u8; 4]],
    w: &Window<'_>,
    from: usize,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let slices: Vec<std::io::IoSlice<'_>> = headers
        .iter()
        .enumerate()
        .flat_map(|(k, h)| {
            [
                std::io::IoSlice::new(h),
                std::io::IoSlice::new(w.payload(from + k)),
            ]
        })
        .collect();
    sock.async_io(tokio::io::Interest::WRITABLE, || {
        nix::sys::socket::sendmsg::<()>(
            sock.as_raw_fd(),
            &slices,
            &[],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .map_err(std::io::Error::from)
    })
    .await?;
    Ok(())
}

/// A transfer's block and window sizes and its retransmission timing.
struct Pace {
    block_size: usize,
    window: usize,
    timeout: Duration,
    retries: u32,
}

/// How a transfer's DATA packets went out: whether its windows were sent segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sends {
    /// One `send` per block.
    Single,
    /// One segmented `send` per window.
    Segmented,
    /// Segmenting was refused on the way, then one `send` per block.
    FellBack,
}

impl Sends {
    fn as_str(self) -> &'static str {
        match self {
            Sends::Single => "single",
            Sends::Segmented => "segmented",
            Sends::FellBack => "fell-back",
        }
    }
}

/// Send the OACK (if any option was granted) and every block, windowed; the bytes sent and
/// how they were sent.
async fn send_file(
    sock: &UdpSocket,
    mut reader: Reader<'_>,
    granted: &Options,
    pace: Pace,
    heard: &Heard,
) -> Result<(u64, Sends), Ended> {
    let Pace {
        block_size,
        window,
        timeout,
        retries,
    } = pace;
    let mut buf = [0u8; 1024];
    if granted.any() {
        let oack = packet::oack(granted);
        let mut tries = 0;
        loop {
            sock.send(&oack).await.map_err(Ended::Io)?;
            match recv_ack(sock, &mut buf, retransmit_wait(timeout, tries), heard).await? {
                Some(0) => break,
                Some(_) => continue,
                None => {
                    tries += 1;
                    if tries > retries {
                        return Err(Ended::TimedOut(0));
                    }
                }
            }
        }
    }
    let len = reader.len();
    // Blocks 1..=last; the last one is short (possibly empty).
    let last = len / block_size as u64 + 1;
    let mut base: u64 = 1;
    let mut tries = 0;
    // Every packet but a file's last is 4 + block_size bytes: the segment size.
    let mut sends = if window > 1 && segment_sends(sock, 4 + block_size) {
        Sends::Segmented
    } else {
        Sends::Single
    };
    let mut scratch = Vec::with_capacity(4 + block_size);
    while base <= last {
        let end = (base + window as u64 - 1).min(last);
        let offset = (base - 1) * block_size as u64;
        let start = reader
            .fetch(offset, (end - base + 1) as usize * block_size)
            .await
            .map_err(Ended::Io)?;
        let window = Window {
            first: base,
            data: &reader.held[start.min(reader.held.len())..],
            block_size,
            count: (end - base + 1) as usize,
        };
        send_window(sock, &window, &mut sends, &mut scratch)
            .await
            .map_err(Ended::Io)?;
        // Wait for an ACK inside the window; ignore stale ones.
        let acked = loop {
            match recv_ack(sock, &mut buf, retransmit_wait(timeout, tries), heard).await? {
                Some(n) => {
                    if let Some(k) = (base..=end).find(|k| *k as u16 == n) {
                        break Some(k);
                    }
                }
                None => break None,
            }
        };
        match acked {
            Some(k) => {
                base = k + 1;
                tries = 0;
            }
            None => {
                tries += 1;
                if tries > retries {
                    return Err(Ended::TimedOut(base));
                }
            }
        }
    }
    Ok((len, sends))
}

/// The next ACK's block number, `None` on timeout; a client ERROR ends the transfer.
async fn recv_ack(
    sock: &UdpSocket,
    buf: &mut [u8],
    timeout: Duration,
    heard: &Heard,
) -> Result<Option<u16>, Ended> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            Err(_) => return Ok(None),
            // ICMP port unreachable: the client is gone; keep waiting out the timeout.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Ok(Err(e)) => return Err(Ended::Io(e)),
            Ok(Ok(n)) => n,
        };
        match packet::parse(&buf[..n]) {
            Ok(Packet::Ack(b)) => {
                heard.mark();
                return Ok(Some(b));
            }
            Ok(Packet::Error(code, msg)) => return Err(Ended::ClientError(code, msg)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_is_busy_until_its_client_has_been_silent() {
        let heard = Heard::default();
        assert!(heard.busy(Duration::ZERO), "nothing heard yet: busy");
        heard.mark();
        assert!(heard.busy(RESTART_SILENCE));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!heard.busy(Duration::from_millis(2)), "silent since");
    }

    #[test]
    fn retransmissions_back_off_to_eight_times_the_timeout_or_the_cap() {
        let s = Duration::from_secs;
        let waits: Vec<_> = (0..6).map(|t| retransmit_wait(s(1), t)).collect();
        assert_eq!(waits, [s(1), s(2), s(4), s(8), s(8), s(8)]);
        // A client's timeout of 5 s: the cap of 8 s.
        let waits: Vec<_> = (0..3).map(|t| retransmit_wait(s(5), t)).collect();
        assert_eq!(waits, [s(5), s(8), s(8)]);
        // A timeout above the cap stays as it is.
        assert_eq!(retransmit_wait(s(10), 4), s(10));
        let ms = Duration::from_millis;
        let waits: Vec<_> = (0..5).map(|t| retransmit_wait(ms(200), t)).collect();
        assert_eq!(waits, [ms(200), ms(400), ms(800), ms(1600), ms(1600)]);
        assert_eq!(retransmit_wait(s(1), u32::MAX), s(8), "no overflow");
    }

    /// What `rx` receives until 300 ms pass without a datagram.
    async fn datagrams(rx: &UdpSocket) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(300), rx.recv(&mut buf)).await
        {
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[tokio::test]
    async fn a_window_leaves_as_one_datagram_per_packet_segmented_or_not() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        tx.connect(rx.local_addr().unwrap()).await.unwrap();
        // 150 blocks of 8 bytes (more than one segmented send takes) and a short last one,
        // block numbers wrapping past 65,535.
        let data: Vec<u8> = (0..150u8).flat_map(|i| [i; 8]).chain([200; 5]).collect();
        let w = Window {
            first: 65_500,
            data: &data,
            block_size: 8,
            count: 151,
        };
        let expected: Vec<Vec<u8>> = data
            .chunks(8)
            .enumerate()
            .map(|(i, payload)| {
                let mut p = vec![0, 3];
                p.extend(((65_500 + i as u64) as u16).to_be_bytes());
                p.extend(payload);
                p
            })
            .collect();

        assert!(segment_sends(&tx, 12), "loopback segments UDP");
        let mut sends = Sends::Segmented;
        send_window(&tx, &w, &mut sends, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(sends, Sends::Segmented);
        assert_eq!(datagrams(&rx).await, expected);

        // A segmented send the kernel refuses (here: 2-byte segments, more of them than it
        // takes in one send) falls back to one send per packet, for the rest of the transfer.
        nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::UdpGsoSegment, &2).unwrap();
        send_window(&tx, &w, &mut sends, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(sends, Sends::FellBack);
        assert_eq!(datagrams(&rx).await, expected);
        send_window(&tx, &w, &mut sends, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(datagrams(&rx).await, expected);

        // An empty last block (a file that is a multiple of the block size) is a bare header.
        let w = Window {
            first: 1,
            data: &data[..16],
            block_size: 8,
            count: 3,
        };
        let mut sends = Sends::Segmented;
        assert!(segment_sends(&tx, 12));
        send_window(&tx, &w, &mut sends, &mut Vec::new())
            .await
            .unwrap();
        let got = datagrams(&rx).await;
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [12, 12, 4]);
        assert_eq!(got[2], [0, 3, 0, 3]);
    }

    #[test]
    fn paths_are_relative_and_never_escape() {
        assert_eq!(
            safe_relative("ipxe.efi").unwrap(),
            PathBuf::from("ipxe.efi")
        );
        assert_eq!(
            safe_relative("flatcar/./vmlinuz").unwrap(),
            PathBuf::from("flatcar/vmlinuz")
        );
        assert_eq!(
            safe_relative("a\\b").unwrap(),
            PathBuf::from("a/b"),
            "backslashes are separators"
        );
        // A leading '/' is the TFTP root.
        assert_eq!(
            safe_relative("/grub/grub.cfg").unwrap(),
            PathBuf::from("grub/grub.cfg")
        );
        assert_eq!(
            safe_relative("/etc/passwd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        for bad in ["/../etc/passwd", "../x", "a/../../x", "a\\..\\x", "", "./"] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
    }
}

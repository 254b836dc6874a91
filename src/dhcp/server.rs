//! The DHCP service: sockets, the per-packet path, durability.
//!
//! Per datagram: decode (a malformed packet is logged and dropped), rate-limit by MAC,
//! classify the PXE client against its profile ([`pxe::decide`]), then by mode:
//!
//! - **full**: choose the subnet (by giaddr when relayed, else by the receiving interface's
//!   address) and run [`decide::handle`]. An ACK is not sent by the socket task: it goes to the
//!   [`LeaseWriter`] with its lease, which commits every lease waiting in one fsync'd
//!   transaction and only then sends their ACKs (group commit: durable before the ACK leaves,
//!   without one fsync per client).
//! - **proxy**: [`proxy::offer`] for DISCOVERs on port 67, [`proxy::ack`] for REQUESTs on 4011;
//!   no addresses, no leases.
//!
//! One task per socket; the subnets sit behind a std mutex that is held only inside the
//! synchronous decision, never across `.await`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::decide::{self, Action, Ctx, Subnet};
use super::leases::{Lease, Pool};
use super::proxy;
use super::reply;
use super::store::{LeaseStore, StoreError};
use crate::config::{Config, DhcpMode, IpAddr};
use crate::inventory::{DhcpClient, DhcpSeen, Inventory};
use crate::mac::MacAddr;
use crate::metrics::{Metrics, PoolLabels};
use crate::profiles::watch::Live;
use crate::profiles::{Facts, ProfileSet};
use crate::pxe::{self, BootFiles, ClientInfo, Decision};
use crate::time_fmt::unix_now;

/// Packets accepted per MAC per [`RATE_WINDOW`]; beyond that they are dropped. A PXE ROM sends
/// a handful per boot; a flood from one MAC cannot starve the others.
const RATE_LIMIT: u32 = 30;
/// The rate-limit window.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Warn when a pool is this full (percent).
const POOL_WARN_PERCENT: u32 = 90;
/// Lease writes waiting for the writer; beyond this the socket tasks wait (backpressure).
const WRITE_QUEUE: usize = 4096;
/// Most leases committed in one transaction.
const WRITE_BATCH: usize = 1024;

/// One bound DHCP socket.
#[derive(Debug)]
pub struct Listener {
    /// The interface it is bound to.
    pub iface: String,
    /// The socket (`0.0.0.0:port`, `SO_BINDTODEVICE`).
    pub socket: Arc<UdpSocket>,
    /// 67, or 4011 for proxy-DHCP boot server requests.
    pub port: u16,
    /// The interface's IPv4 addresses: its subnet (full mode), its server address (proxy).
    pub addrs: Vec<Ipv4Addr>,
}

/// A lease change on its way to disk, with the ACK to send once it is there.
struct Write {
    lease: Lease,
    ack: Option<(Vec<u8>, SocketAddrV4, Arc<UdpSocket>)>,
}

/// Commits lease changes in batches, then sends the ACKs that waited for them.
pub struct LeaseWriter {
    store: Arc<LeaseStore>,
    rx: mpsc::Receiver<Write>,
}

impl std::fmt::Debug for LeaseWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseWriter").finish_non_exhaustive()
    }
}

impl LeaseWriter {
    /// Run until every [`Service`] holding the sending side is gone, then finish the queue.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(64);
        while self.rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            let leases: Vec<Lease> = batch.iter().map(|w: &Write| w.lease.clone()).collect();
            let store = self.store.clone();
            let result = tokio::task::spawn_blocking(move || store.put(&leases)).await;
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("lease store task failed: {e}")),
            };
            if let Some(e) = error {
                let acks = batch.iter().filter(|w| w.ack.is_some()).count();
                tracing::error!(error = %e, leases = batch.len(), acks, "cannot persist leases: their ACKs are not sent");
                batch.clear();
                continue;
            }
            for w in batch.drain(..) {
                if let Some((bytes, to, socket)) = w.ack
                    && let Err(e) = socket.send_to(&bytes, SocketAddr::V4(to)).await
                {
                    tracing::warn!(%to, error = %e, "DHCP send failed");
                }
            }
        }
    }
}

/// What one request says about its client, and what the profiles make of it.
struct Client {
    mac: MacAddr,
    info: ClientInfo,
    decision: Decision,
    hostname: Option<String>,
    profile: String,
    guid: Option<String>,
}

impl Client {
    fn seen(&self, event: &'static str, ip: Option<Ipv4Addr>) -> DhcpSeen {
        let client = if self.decision.ipxe {
            DhcpClient::Ipxe
        } else if self.decision.vendor_class.is_some() {
            // Option 60 PXEClient/HTTPClient: a ROM or UEFI network stack, not an OS.
            DhcpClient::Firmware
        } else {
            DhcpClient::Os
        };
        DhcpSeen {
            event,
            client,
            profile: (self.profile != "-").then(|| self.profile.clone()),
            ip,
            vendor_class: self.info.vendor_class.clone(),
            guid: self.guid.clone(),
            arch_code: self.info.arch,
            hostname: self.hostname.clone(),
        }
    }

    fn boot_text(&self) -> &str {
        match &self.decision.boot_file {
            Some(pxe::BootFile::Tftp(f)) => f,
            Some(pxe::BootFile::Http(u)) => u,
            None => "-",
        }
    }
}

/// The DHCP service's state, shared by the per-socket tasks.
pub struct Service {
    mode: DhcpMode,
    /// A std mutex: held only for the synchronous decision of one packet.
    subnets: Mutex<Vec<Subnet>>,
    /// Profile generation the reservations were last built from.
    reservations_gen: Mutex<u64>,
    /// To the lease writer (full mode).
    writes: Option<mpsc::Sender<Write>>,
    profiles: Arc<Live>,
    inventory: Arc<Inventory>,
    /// Poked when a lease is granted, released or declined (DNS follows leases).
    pub lease_changed: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    boot_files: BootFiles,
    base_url: String,
    advertise: Option<Ipv4Addr>,
    config_reservations: HashMap<MacAddr, Ipv4Addr>,
    /// Per-MAC packet counts in the current window. A std mutex, held for one map update.
    limiter: Mutex<HashMap<MacAddr, (u64, u32)>>,
    /// When the pools were last counted and warned about.
    pool_warn: Mutex<PoolWarn>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("dhcp::Service").finish_non_exhaustive()
    }
}

/// Reservations from the profiles (machines with an IPv4 `ip`) plus the config's.
fn reservations(
    set: &ProfileSet,
    config: &HashMap<MacAddr, Ipv4Addr>,
) -> HashMap<MacAddr, Ipv4Addr> {
    let mut out: HashMap<MacAddr, Ipv4Addr> = set
        .machines
        .values()
        .filter_map(|m| match m.ip {
            Some(std::net::IpAddr::V4(ip)) => Some((m.mac, ip)),
            _ => None,
        })
        .collect();
    out.extend(config.iter().map(|(m, ip)| (*m, *ip)));
    out
}

impl Service {
    /// Build the service. Full mode needs `store`: the subnets are built from the config,
    /// every stored lease is restored, and the returned [`LeaseWriter`] must be run. Proxy mode
    /// keeps no leases.
    pub fn new(
        config: &Config,
        store: Option<Arc<LeaseStore>>,
        profiles: Arc<Live>,
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
        base_url: String,
    ) -> Result<(Service, Option<LeaseWriter>), StoreError> {
        let d = &config.dhcp;
        let advertise = match config.server.advertise_ip {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        };
        let config_reservations: HashMap<MacAddr, Ipv4Addr> =
            d.reservations.iter().map(|r| (r.mac, r.ip)).collect();
        let mut subnets = Vec::new();
        let mut writer = None;
        let mut writes = None;
        if let (DhcpMode::Full, Some(store)) = (d.mode, store) {
            let all = reservations(&profiles.current(), &config_reservations);
            subnets = d
                .subnets
                .iter()
                .map(|s| {
                    let net = s.network.trunc();
                    let mine = all
                        .iter()
                        .filter(|(_, ip)| net.contains(*ip))
                        .map(|(m, ip)| (*m, *ip))
                        .collect();
                    Subnet {
                        network: net.network(),
                        prefix_len: net.prefix_len(),
                        pool: Pool::new(s.range[0], s.range[1], mine),
                        router: s.router,
                        dns: s.dns.clone(),
                        domain: s.domain.clone(),
                        lease_time: s.lease_time.unwrap_or(d.lease_time),
                        offer_time: d.offer_time,
                        server_ip: s.server_ip.or(advertise).unwrap_or(Ipv4Addr::UNSPECIFIED),
                    }
                })
                .collect();
            let stored = store.load()?;
            let count = stored.len();
            for lease in stored {
                if let Some(s) = subnets.iter_mut().find(|s| s.contains(lease.ip)) {
                    s.pool.restore(lease);
                }
            }
            tracing::info!(
                subnets = subnets.len(),
                leases = count,
                "DHCP leases restored"
            );
            let (tx, rx) = mpsc::channel(WRITE_QUEUE);
            writes = Some(tx);
            writer = Some(LeaseWriter { store, rx });
        }
        let service = Service {
            mode: d.mode,
            subnets: Mutex::new(subnets),
            reservations_gen: Mutex::new(profiles.status().generation),
            writes,
            profiles,
            inventory,
            lease_changed: Arc::new(tokio::sync::Notify::new()),
            metrics,
            boot_files: d.boot_files.clone(),
            base_url,
            advertise,
            config_reservations,
            limiter: Mutex::new(HashMap::new()),
            pool_warn: Mutex::new(PoolWarn::default()),
        };
        Ok((service, writer))
    }

    /// Serve one socket until `token` is cancelled.
    pub async fn run(self: Arc<Self>, listener: Listener, token: CancellationToken) {
        let mut buf = vec![0u8; 1500];
        loop {
            let (len, peer) = tokio::select! {
                _ = token.cancelled() => break,
                r = listener.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(iface = %listener.iface, error = %e, "DHCP receive failed");
                        continue;
                    }
                },
            };
            let Some(out) = self.process(&buf[..len], peer, &listener) else {
                continue;
            };
            match out {
                Out::Send(bytes, to) => {
                    if let Err(e) = listener.socket.send_to(&bytes, SocketAddr::V4(to)).await {
                        tracing::warn!(iface = %listener.iface, %to, error = %e, "DHCP send failed");
                    }
                }
                Out::Write(lease, ack) => {
                    let Some(writes) = &self.writes else {
                        continue;
                    };
                    let ack = ack.map(|(bytes, to)| (bytes, to, listener.socket.clone()));
                    // Durable before the ACK leaves: the writer sends it after the commit.
                    if writes.send(Write { lease, ack }).await.is_err() {
                        tracing::error!("lease writer stopped: ACK not sent");
                    }
                }
            }
        }
    }

    /// Whether `mac` is within its packet budget.
    fn allow(&self, mac: MacAddr, now: u64) -> bool {
        let mut map = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (start, _)| now < *start + RATE_WINDOW.as_secs());
        }
        let entry = map.entry(mac).or_insert((now, 0));
        if now >= entry.0 + RATE_WINDOW.as_secs() {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 == RATE_LIMIT + 1 {
            tracing::warn!(%mac, "DHCP rate limit: dropping this client's packets for the rest of {RATE_WINDOW:?}");
        }
        entry.1 <= RATE_LIMIT
    }

    /// Rebuild reservations when the profiles changed.
    fn refresh_reservations(&self, set: &ProfileSet, subnets: &mut [Subnet]) {
        let generation = self.profiles.status().generation;
        let mut seen = self
            .reservations_gen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *seen == generation {
            return;
        }
        *seen = generation;
        let all = reservations(set, &self.config_reservations);
        for s in subnets {
            let mine = all
                .iter()
                .filter(|(_, ip)| s.contains(**ip))
                .map(|(m, ip)| (*m, *ip))
                .collect();
            s.pool.set_reservations(mine);
        }
    }

    /// Decode, rate-limit and classify one datagram.
    fn admit(&self, bytes: &[u8], peer: SocketAddr, iface: &str) -> Option<(Message, Client)> {
        let req = match reply::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%iface, %peer, error = %e, "dropping DHCP packet");
                self.metrics.dhcp("malformed", "dropped");
                return None;
            }
        };
        let kind = type_name(req.opts().msg_type());
        let Some(mac) = reply::client_mac(&req) else {
            tracing::debug!(%iface, %peer, xid = req.xid(), "dropping DHCP packet: not an Ethernet client");
            self.metrics.dhcp(kind, "dropped");
            return None;
        };
        if !self.allow(mac, unix_now()) {
            self.metrics.dhcp(kind, "rate_limited");
            return None;
        }
        let info = reply::client_info(&req);
        let mut facts = Facts::from_mac(mac);
        // Option 82 circuit-id / remote-id: selectors can match them as labels.
        facts.labels.extend(reply::relay_labels(&req));
        if let Some(fw) = info.arch.and_then(pxe::arch_type).and_then(|a| a.firmware) {
            facts.arch = Some(fw.ipxe_arch().to_string());
            facts.platform = Some(fw.platform().to_string());
        }
        let set = self.profiles.current();
        let (machine, chosen) = set.machine_boot(&facts);
        let decision = pxe::decide(&info, &machine, &self.boot_files, &self.base_url);
        let hostname = chosen
            .as_ref()
            .and_then(|m| m.machine)
            .and_then(|m| m.hostname.clone());
        let profile = chosen
            .as_ref()
            .map_or("-", |m| m.profile.name.as_str())
            .to_string();
        let guid = match req.opts().get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(g)) => {
                Some(g.iter().map(|b| format!("{b:02x}")).collect())
            }
            _ => None,
        };
        let client = Client {
            mac,
            info,
            decision,
            hostname,
            profile,
            guid,
        };
        Some((req, client))
    }

    /// Decide on one datagram.
    fn process(&self, bytes: &[u8], peer: SocketAddr, listener: &Listener) -> Option<Out> {
        let (req, client) = self.admit(bytes, peer, &listener.iface)?;
        match self.mode {
            DhcpMode::Proxy => self.proxy(&req, &client, peer, listener),
            DhcpMode::Full => self.full(&req, &client, peer, listener),
            DhcpMode::Off => None,
        }
    }

    /// Proxy mode: a proxy OFFER on 67, the boot file on 4011.
    fn proxy(
        &self,
        req: &Message,
        client: &Client,
        peer: SocketAddr,
        listener: &Listener,
    ) -> Option<Out> {
        let (iface, mac, xid) = (listener.iface.as_str(), client.mac, req.xid());
        let kind = req.opts().msg_type();
        let name = type_name(kind);
        let Some(server_ip) = self.advertise.or(listener.addrs.first().copied()) else {
            self.metrics.dhcp(name, "ignored");
            tracing::warn!(%iface, %mac, "proxy DHCP: no address on this interface and no server.advertise_ip: not answered");
            return None;
        };
        let SocketAddr::V4(peer) = peer else {
            return None;
        };
        let (answer, to, event) = if listener.port == proxy::PXE_PORT {
            (
                proxy::ack(req, &client.decision, server_ip),
                proxy::ack_destination(peer),
                "ack",
            )
        } else if kind == Some(MessageType::Discover) {
            (
                proxy::offer(req, &client.decision, server_ip),
                test_hook(peer, reply::destination(req, MessageType::Offer)),
                "offer",
            )
        } else {
            // REQUEST, RELEASE, ... on 67 belong to the LAN's DHCP server.
            tracing::trace!(%iface, %mac, xid, ?kind, "proxy DHCP: not ours");
            self.metrics.dhcp(name, "ignored");
            return None;
        };
        let ip = (!req.ciaddr().is_unspecified()).then(|| req.ciaddr());
        let msg = match answer {
            Ok(m) => m,
            Err(why) => {
                tracing::debug!(%iface, %mac, xid, ?kind, port = listener.port, "proxy DHCP: not answered: {why}");
                self.metrics.dhcp(name, "ignored");
                if kind == Some(MessageType::Discover) {
                    self.inventory.dhcp(mac, client.seen("discover", ip));
                }
                return None;
            }
        };
        tracing::info!(%iface, %mac, xid, profile = %client.profile, boot = %client.boot_text(), %to, port = listener.port, "proxy DHCP {event}");
        self.metrics.dhcp(
            name,
            if event == "ack" {
                "proxy_ack"
            } else {
                "proxy_offer"
            },
        );
        self.inventory.dhcp(mac, client.seen(event, ip));
        encode(&msg, mac, xid).map(|bytes| Out::Send(bytes, to))
    }

    /// Full mode: addresses, leases and boot information.
    fn full(
        &self,
        req: &Message,
        client: &Client,
        peer: SocketAddr,
        listener: &Listener,
    ) -> Option<Out> {
        let (iface, mac, xid) = (listener.iface.as_str(), client.mac, req.xid());
        let kind = req.opts().msg_type();
        let name = type_name(kind);
        let giaddr = req.giaddr();
        let set = self.profiles.current();
        let action = {
            let mut subnets = self.subnets.lock().unwrap_or_else(|e| e.into_inner());
            self.refresh_reservations(&set, &mut subnets);
            let subnet = if giaddr.is_unspecified() {
                subnets
                    .iter_mut()
                    .find(|s| listener.addrs.iter().any(|a| s.contains(*a)))
            } else {
                subnets.iter_mut().find(|s| s.contains(giaddr))
            };
            let Some(subnet) = subnet else {
                tracing::warn!(%iface, %mac, xid, %giaddr, "no [[dhcp.subnet]] for this interface or relay: not answered");
                self.metrics.dhcp(name, "ignored");
                return None;
            };
            let server_ip = subnet.server_ip;
            decide::handle(
                req,
                subnet,
                &Ctx {
                    server_ip,
                    now: unix_now(),
                    boot: &client.decision,
                    hostname: client.hostname.as_deref(),
                },
            )
        };
        match action {
            Action::Ignore(why) => {
                tracing::debug!(%iface, %mac, xid, ?kind, "DHCP request not answered: {why}");
                self.metrics.dhcp(name, "ignored");
                if kind == Some(MessageType::Discover) {
                    self.inventory.dhcp(mac, client.seen("discover", None));
                }
                if why.contains("exhausted") {
                    let now = unix_now();
                    let mut w = self.pool_warn.lock().unwrap_or_else(|e| e.into_inner());
                    if now >= w.exhausted + WARN_EVERY {
                        w.exhausted = now;
                        tracing::warn!(%iface, %mac, "{why}: new clients get no address (repeated at most once a minute)");
                    }
                }
                None
            }
            Action::Persist { lease, kind, .. } => {
                self.lease_changed.notify_one();
                let event = if kind == MessageType::Decline {
                    "decline"
                } else {
                    "release"
                };
                tracing::info!(%iface, %mac, xid, ip = %lease.ip, %event, "DHCP {event}");
                self.metrics.dhcp(name, event);
                self.inventory.dhcp(mac, client.seen(event, Some(lease.ip)));
                // No reply waits for it.
                Some(Out::Write(lease, None))
            }
            Action::Reply {
                msg,
                to,
                lease,
                kind: reply_kind,
                ..
            } => {
                let event = match reply_kind {
                    MessageType::Offer => "offer",
                    MessageType::Nak => "nak",
                    _ if msg.yiaddr().is_unspecified() => "inform",
                    _ => "ack",
                };
                let ip = (!msg.yiaddr().is_unspecified()).then(|| msg.yiaddr());
                let ip_text = ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
                tracing::info!(%iface, %mac, xid, ip = %ip_text, profile = %client.profile, boot = %client.boot_text(), %event, "DHCP {event}");
                self.metrics.dhcp(name, event);
                self.inventory.dhcp(mac, client.seen(event, ip));
                self.warn_if_pool_low(ip);
                let to = match peer {
                    SocketAddr::V4(p) => test_hook(p, to),
                    SocketAddr::V6(_) => to,
                };
                let bytes = encode(&msg, mac, xid)?;
                Some(match lease {
                    Some(lease) => {
                        if lease.state == crate::dhcp::leases::State::Bound {
                            self.lease_changed.notify_one();
                        }
                        Out::Write(lease, Some((bytes, to)))
                    }
                    None => Out::Send(bytes, to),
                })
            }
        }
    }

    /// Export each pool's size, used and free addresses, computed at scrape time.
    pub fn export_pools(service: &Arc<Service>, metrics: &Metrics) {
        let weak = Arc::downgrade(service);
        metrics.on_scrape(move |m| {
            let Some(service) = weak.upgrade() else {
                return;
            };
            let now = unix_now();
            let subnets = service.subnets.lock().unwrap_or_else(|e| e.into_inner());
            for s in subnets.iter() {
                let (size, used) = s.pool.usage(now);
                let labels = PoolLabels {
                    subnet: format!("{}/{}", s.network, s.prefix_len),
                };
                m.dhcp_pool_size.get_or_create(&labels).set(i64::from(size));
                m.dhcp_pool_used.get_or_create(&labels).set(i64::from(used));
                m.dhcp_pool_free
                    .get_or_create(&labels)
                    .set(i64::from(size - used));
            }
        });
    }

    /// Warn when the pool of `ip` is nearly full (at most once a minute). The precise count
    /// walks the pool: it is skipped while a cheap upper bound is below the threshold, and runs
    /// at most once a second on pools of more than [`COUNT_ALWAYS_BELOW`] leases.
    fn warn_if_pool_low(&self, ip: Option<Ipv4Addr>) {
        let Some(ip) = ip else { return };
        let now = unix_now();
        let subnets = self.subnets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = subnets.iter().find(|s| s.contains(ip)) else {
            return;
        };
        let size = s.pool.size();
        let low = |used: u32| {
            size > 0 && u64::from(used) * 100 >= u64::from(size) * u64::from(POOL_WARN_PERCENT)
        };
        let bound = s.pool.used_at_most();
        if !low(bound) {
            return;
        }
        let mut w = self.pool_warn.lock().unwrap_or_else(|e| e.into_inner());
        if bound > COUNT_ALWAYS_BELOW {
            if w.counted == now {
                return;
            }
            w.counted = now;
        }
        let (size, used) = s.pool.usage(now);
        if low(used) && now >= w.low + WARN_EVERY {
            w.low = now;
            tracing::warn!(subnet = %s.network, used, size, "DHCP pool is running low (repeated at most once a minute)");
        }
    }
}

/// Pools with at most this many leases are counted on every new address.
const COUNT_ALWAYS_BELOW: u32 = 4096;
/// Seconds between repeats of a pool warning.
const WARN_EVERY: u64 = 60;

/// When the pools were last counted and warned about (Unix seconds).
#[derive(Debug, Default)]
struct PoolWarn {
    counted: u64,
    low: u64,
    exhausted: u64,
}

/// The metric label of a DHCP message type.
fn type_name(kind: Option<MessageType>) -> &'static str {
    match kind {
        Some(MessageType::Discover) => "discover",
        Some(MessageType::Request) => "request",
        Some(MessageType::Decline) => "decline",
        Some(MessageType::Release) => "release",
        Some(MessageType::Inform) => "inform",
        Some(MessageType::Offer | MessageType::Ack | MessageType::Nak) => "reply",
        Some(_) => "other",
        None => "bootp",
    }
}

/// What the socket task does with one decision.
enum Out {
    /// Send now.
    Send(Vec<u8>, SocketAddrV4),
    /// Make the lease durable, then send the ACK if there is one.
    Write(Lease, Option<(Vec<u8>, SocketAddrV4)>),
}

/// Test hook: a client on a non-standard port (a test tool such as perfdhcp) gets its reply
/// where it came from.
fn test_hook(peer: SocketAddrV4, to: SocketAddrV4) -> SocketAddrV4 {
    if peer.port() != reply::CLIENT_PORT && peer.port() != reply::SERVER_PORT {
        peer
    } else {
        to
    }
}

fn encode(msg: &Message, mac: MacAddr, xid: u32) -> Option<Vec<u8>> {
    match reply::encode_padded(msg) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::error!(%mac, xid, error = %e, "cannot encode DHCP reply");
            None
        }
    }
}

impl crate::dns::LeaseSource for Service {
    fn named_leases(&self) -> Vec<crate::dns::LeaseName> {
        let subnets = self.subnets.lock().unwrap_or_else(|e| e.into_inner());
        subnets
            .iter()
            .flat_map(|s| s.pool.leases())
            .filter(|l| l.state == crate::dhcp::leases::State::Bound)
            .filter_map(|l| {
                Some(crate::dns::LeaseName {
                    hostname: l.hostname.clone()?,
                    ip: l.ip,
                    expires: l.expires,
                })
            })
            .collect()
    }

    fn networks(&self) -> Vec<ipnet::Ipv4Net> {
        let subnets = self.subnets.lock().unwrap_or_else(|e| e.into_inner());
        subnets
            .iter()
            .filter_map(|s| ipnet::Ipv4Net::new(s.network, s.prefix_len).ok())
            .collect()
    }
}

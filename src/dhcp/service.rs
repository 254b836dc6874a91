//! The DHCP service's state and the per-packet path, without sockets: one datagram in, what to
//! send (or make durable first) out. The socket loops and the lease writer are in
//! [`super::server`].
//!
//! Per datagram: decode (a malformed packet is counted and dropped), rate-limit by MAC,
//! classify the PXE client against its profile ([`pxe::decide`]), then by mode:
//!
//! - **full**: choose the subnet ([`decide::choose_subnet`]) and run [`decide::handle`]. An ACK
//!   is not sent here: it goes with its lease to the lease writer, which makes the lease
//!   durable before the ACK leaves.
//! - **proxy**: [`proxy::offer`] for DISCOVERs on port 67, [`proxy::ack`] for REQUESTs on 4011;
//!   no addresses, no leases.
//!
//! **One profile snapshot per packet.** The subnets' reservations are built from a profile
//! set, and the set they were built from is kept beside them (both swapped together when the
//! profiles reload, [`Service::follow`]). A packet is classified against that set and decided
//! against its reservations; if a reload lands in between, the packet is classified again
//! against the new set before it is decided, so an answer never mixes two sets.
//!
//! The state sits behind std mutexes held only inside the synchronous decision, never across
//! `.await`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use super::decide::{self, Action, Ctx, Ignore, Subnet};
use super::leases::{Lease, Pool, State as LeaseState};
use super::proxy;
use super::reply;
use crate::cluster::buckets::Share;
use crate::config::{Config, DhcpMode, IpAddr};
use crate::events::{Bus, LeaseChange, LeaseEvent};
use crate::inventory::{DhcpClient, DhcpSeen, Inventory};
use crate::mac::MacAddr;
use crate::metrics::{Metrics, PoolUsage};
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
/// Pools with at most this many leases are counted on every new address.
const COUNT_ALWAYS_BELOW: u32 = 4096;
/// Seconds between repeats of a pool warning.
const WARN_EVERY: u64 = 60;

/// What the packet path knows of the socket a datagram came in on.
#[derive(Debug, Clone)]
pub struct Ingress {
    /// The interface.
    pub iface: String,
    /// 67, or 4011 for proxy-DHCP boot server requests.
    pub port: u16,
    /// The interface's IPv4 addresses: its subnet (full mode), its server address (proxy).
    pub addrs: Vec<Ipv4Addr>,
}

/// What to do with an IPv6 router solicitation (see [`super::ndp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solicited {
    /// Answer: a machine this instance boots, in its firmware or iPXE.
    Answer,
    /// Not a machine being booted here, or its OS may be running.
    Ignore,
    /// Over its packet budget.
    RateLimited,
}

/// What to do with one decision.
#[derive(Debug)]
pub enum Out {
    /// Send now.
    Send(Vec<u8>, SocketAddrV4),
    /// Make the lease durable, then send the ACK if there is one.
    Write(Write),
}

/// A lease change on its way to disk, with the ACK to send once it is there.
#[derive(Debug)]
pub struct Write {
    /// The lease as it now stands.
    pub lease: Lease,
    /// What happened to it (announced once it is durable).
    pub change: LeaseChange,
    /// The ACK and where it goes.
    pub ack: Option<(Vec<u8>, SocketAddrV4)>,
}

/// What one request says about its client, and what the profiles make of it.
struct Client {
    mac: MacAddr,
    kind: Option<MessageType>,
    info: ClientInfo,
    decision: Decision,
    hostname: Option<String>,
    /// The profile's name, `None` when no profile matches.
    profile: Option<String>,
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
            profile: self.profile.clone(),
            ip,
            vendor_class: self.info.vendor_class.clone(),
            guid: self.guid.clone(),
            arch_code: self.info.arch,
            hostname: self.hostname.clone(),
            leased: false,
        }
    }

    fn profile_text(&self) -> &str {
        self.profile.as_deref().unwrap_or("-")
    }

    fn boot_text(&self) -> &str {
        match &self.decision.boot_file {
            Some(pxe::BootFile::Tftp(f)) => f,
            Some(pxe::BootFile::Http(u)) => u,
            None => "-",
        }
    }
}

/// The subnets and the profile set their reservations come from: swapped together.
struct Leases {
    set: Arc<ProfileSet>,
    subnets: Vec<Subnet>,
}

/// The DHCP service's state, shared by the per-socket tasks.
pub struct Service {
    mode: DhcpMode,
    /// A std mutex: held only for the synchronous decision of one packet.
    state: Mutex<Leases>,
    inventory: Arc<Inventory>,
    metrics: Arc<Metrics>,
    bus: Arc<Bus>,
    boot_files: BootFiles,
    base_url: String,
    /// `[discovery] enabled`: machines no profile knows get iPXE.
    discovery: bool,
    advertise: Option<Ipv4Addr>,
    config_reservations: HashMap<MacAddr, Ipv4Addr>,
    /// `[dhcp] relays`: who may send relayed requests (empty: anyone).
    relays: Vec<ipnet::Ipv4Net>,
    /// Per-MAC packet counts in the current window. A std mutex, held for one map update.
    limiter: Mutex<HashMap<MacAddr, (u64, u32)>>,
    /// When the pools were last counted and warned about.
    pool_warn: Mutex<PoolWarn>,
    /// The clients this instance answers (all, unless instances on one segment split them).
    share: arc_swap::ArcSwap<Share>,
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

/// The reservations of one subnet.
fn on_subnet(all: &HashMap<MacAddr, Ipv4Addr>, s: &Subnet) -> HashMap<MacAddr, Ipv4Addr> {
    all.iter()
        .filter(|(_, ip)| s.contains(**ip))
        .map(|(m, ip)| (*m, *ip))
        .collect()
}

impl Service {
    /// The service for `config`, serving `set`. Full mode builds the subnets from the config
    /// (restore the stored leases with [`Service::restore`]); proxy mode keeps no leases.
    pub fn new(
        config: &Config,
        set: Arc<ProfileSet>,
        inventory: Arc<Inventory>,
        metrics: Arc<Metrics>,
        bus: Arc<Bus>,
        base_url: String,
    ) -> Service {
        let d = &config.dhcp;
        let advertise = match config.server.advertise_ip {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        };
        let config_reservations: HashMap<MacAddr, Ipv4Addr> =
            d.reservations.iter().map(|r| (r.mac, r.ip)).collect();
        let mut subnets = Vec::new();
        if d.mode == DhcpMode::Full {
            let all = reservations(&set, &config_reservations);
            subnets = d
                .subnets
                .iter()
                .map(|s| {
                    let net = s.network.trunc();
                    let mut subnet = Subnet {
                        network: net.network(),
                        prefix_len: net.prefix_len(),
                        pool: Pool::new(s.range[0], s.range[1], HashMap::new()),
                        router: s.router,
                        dns: s.dns.clone(),
                        domain: s.domain.clone(),
                        lease_time: s.lease_time.unwrap_or(d.lease_time),
                        offer_time: d.offer_time,
                        server_ip: s.server_ip.or(advertise).unwrap_or(Ipv4Addr::UNSPECIFIED),
                    };
                    subnet.pool.set_reservations(on_subnet(&all, &subnet));
                    subnet
                })
                .collect();
        }
        Service {
            mode: d.mode,
            state: Mutex::new(Leases { set, subnets }),
            inventory,
            metrics,
            bus,
            boot_files: d.boot_files.clone(),
            base_url,
            discovery: config.discovery.enabled,
            advertise,
            config_reservations,
            relays: d.relays.clone(),
            limiter: Mutex::new(HashMap::new()),
            share: arc_swap::ArcSwap::from_pointee(Share::all()),
            pool_warn: Mutex::new(PoolWarn::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this service hands out addresses (full mode).
    pub fn keeps_leases(&self) -> bool {
        self.mode == DhcpMode::Full
    }

    /// Take over leases read from the store; returns how many found a subnet.
    pub fn restore(&self, leases: Vec<Lease>) -> usize {
        let mut st = self.lock();
        let mut n = 0;
        for lease in leases {
            if let Some(s) = st.subnets.iter_mut().find(|s| s.contains(lease.ip)) {
                s.pool.restore(lease);
                n += 1;
            }
        }
        n
    }

    /// A lease another instance sharing the store committed: this instance's pool takes it,
    /// and what it means for names (DNS) is announced like a local change. `None` when it
    /// changed nothing here (this instance's own write, an address outside every subnet, an
    /// offer).
    pub fn merge_remote(&self, lease: Lease) -> Option<LeaseChange> {
        let mut st = self.lock();
        let pool = &mut st.subnets.iter_mut().find(|s| s.contains(lease.ip))?.pool;
        let held_before = pool
            .lease(lease.ip)
            .is_some_and(|l| l.state == LeaseState::Bound && l.mac == lease.mac);
        if !pool.merge_remote(lease.clone()) {
            return None;
        }
        drop(st);
        let change = match lease.state {
            LeaseState::Bound if held_before => LeaseChange::Renewed,
            LeaseState::Bound => LeaseChange::Granted,
            LeaseState::Released => LeaseChange::Released,
            LeaseState::Declined => LeaseChange::Declined,
            LeaseState::Offered => return None,
        };
        self.announce(&lease, change);
        Some(change)
    }

    /// `n` ACKs were not sent: their leases could not be made durable.
    pub fn count_not_committed(&self, n: usize) {
        for _ in 0..n {
            self.metrics.dhcp("request", "not_committed");
        }
    }

    /// The metrics this service counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Answer only the clients of `share` from now on (several instances on one segment).
    /// New addresses come from the same share of each pool (address mod the bucket count),
    /// so two instances never offer one free address to two clients.
    pub fn use_share(&self, share: Share) {
        let mine = share.buckets().to_vec();
        self.share.store(Arc::new(share));
        for s in &mut self.lock().subnets {
            s.pool.set_share(Some(mine.clone()));
        }
    }

    /// Serve `set` from now on: its reservations replace the old ones in the same step.
    pub fn use_profiles(&self, set: Arc<ProfileSet>) {
        let mut st = self.lock();
        let all = reservations(&set, &self.config_reservations);
        for s in &mut st.subnets {
            let mine = on_subnet(&all, s);
            s.pool.set_reservations(mine);
        }
        st.set = set;
    }

    /// The profile set packets are classified against now.
    fn snapshot(&self) -> Arc<ProfileSet> {
        self.lock().set.clone()
    }

    /// Every bound lease (DNS names them; expiry watches them from start-up).
    pub fn bound_leases(&self) -> Vec<Lease> {
        self.lock()
            .subnets
            .iter()
            .flat_map(|s| s.pool.leases())
            .filter(|l| l.state == LeaseState::Bound)
            .cloned()
            .collect()
    }

    /// The networks served (reverse DNS zones).
    pub fn networks(&self) -> Vec<ipnet::Ipv4Net> {
        self.lock()
            .subnets
            .iter()
            .filter_map(|s| ipnet::Ipv4Net::new(s.network, s.prefix_len).ok())
            .collect()
    }

    /// The lease of `ip` as the pool has it now.
    pub fn lease(&self, ip: Ipv4Addr) -> Option<Lease> {
        let st = self.lock();
        st.subnets
            .iter()
            .find(|s| s.contains(ip))
            .and_then(|s| s.pool.lease(ip).cloned())
    }

    /// Announce a durable lease change.
    pub fn announce(&self, lease: &Lease, change: LeaseChange) {
        self.bus.publish(LeaseEvent {
            change,
            ip: lease.ip,
            mac: lease.mac,
            hostname: lease.hostname.clone(),
            expires: lease.expires,
        });
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

    /// Whether to answer a router solicitation from `mac`: only a machine whose DHCP this
    /// instance answers and whose record says its firmware or iPXE runs
    /// ([`crate::inventory::Record::in_firmware`]), within its packet budget (shared with its
    /// DHCP packets).
    pub fn solicited(&self, mac: MacAddr) -> Solicited {
        let booting = self.share.load().answers(mac)
            && self
                .inventory
                .read(mac, |r| r.in_firmware())
                .unwrap_or(false);
        if !booting {
            Solicited::Ignore
        } else if !self.allow(mac, unix_now()) {
            Solicited::RateLimited
        } else {
            Solicited::Answer
        }
    }

    /// Decode and rate-limit one datagram: the request and its client's MAC.
    fn admit(&self, bytes: &[u8], peer: SocketAddr, iface: &str) -> Option<(Message, MacAddr)> {
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
        Some((req, mac))
    }

    /// Whether `peer` may relay requests (`[dhcp] relays`).
    fn relay_allowed(&self, peer: SocketAddr) -> bool {
        match peer {
            SocketAddr::V4(p) => {
                self.relays.is_empty() || self.relays.iter().any(|n| n.contains(p.ip()))
            }
            SocketAddr::V6(_) => false,
        }
    }

    /// What `set` makes of the request's client.
    fn classify(&self, req: &Message, mac: MacAddr, set: &ProfileSet) -> Client {
        let info = reply::client_info(req);
        let mut facts = Facts::from_mac(mac);
        // Option 82 circuit-id / remote-id: selectors can match them as labels. Only a relay
        // adds option 82; in a request that did not come through one it is the client's own
        // claim, and ignored.
        if !req.giaddr().is_unspecified() {
            facts.labels.extend(reply::relay_labels(req));
        }
        if let Some(fw) = info.arch.and_then(pxe::arch_type).and_then(|a| a.firmware) {
            facts.arch = Some(fw.ipxe_arch().to_string());
            facts.platform = Some(fw.platform().to_string());
        }
        let (machine, chosen) = set.machine_boot(&facts);
        let machine = machine.or_discover(self.discovery);
        let decision = pxe::decide(&info, &machine, &self.boot_files, &self.base_url);
        let hostname = chosen
            .as_ref()
            .and_then(|m| m.machine)
            .and_then(|m| m.hostname.clone());
        let profile = chosen.as_ref().map(|m| m.profile.name.clone());
        let guid = match req.opts().get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(g)) => {
                Some(g.iter().map(|b| format!("{b:02x}")).collect())
            }
            _ => None,
        };
        Client {
            mac,
            kind: req.opts().msg_type(),
            info,
            decision,
            hostname,
            profile,
            guid,
        }
    }

    /// Decide on one datagram that arrived on `ingress` from `peer`.
    pub fn process(&self, bytes: &[u8], peer: SocketAddr, ingress: &Ingress) -> Option<Out> {
        let (req, mac) = self.admit(bytes, peer, &ingress.iface)?;
        if !self.share.load().answers(mac) {
            // Another instance on this segment answers this client.
            self.metrics
                .dhcp(type_name(req.opts().msg_type()), "other_instance");
            return None;
        }
        if !req.giaddr().is_unspecified() && !self.relay_allowed(peer) {
            tracing::debug!(%mac, %peer, giaddr = %req.giaddr(), "DHCP: relayed request from a sender not in [dhcp] relays: dropped");
            self.metrics
                .dhcp(type_name(req.opts().msg_type()), "ignored");
            return None;
        }
        let set = self.snapshot();
        self.decide(&req, mac, peer, ingress, &set)
    }

    /// Decide on an admitted request, classifying it against `set`.
    fn decide(
        &self,
        req: &Message,
        mac: MacAddr,
        peer: SocketAddr,
        ingress: &Ingress,
        set: &Arc<ProfileSet>,
    ) -> Option<Out> {
        let client = self.classify(req, mac, set);
        let SocketAddr::V4(peer) = peer else {
            return None;
        };
        match self.mode {
            DhcpMode::Proxy => self.proxy(req, &client, peer, ingress),
            DhcpMode::Full => self.full(req, client, peer, ingress, set),
            DhcpMode::Off => None,
        }
    }

    /// A request no answer is sent to: counted, logged at debug, and a DISCOVER still tells
    /// the inventory the machine is booting.
    fn not_answered(&self, client: &Client, ip: Option<Ipv4Addr>, why: &dyn std::fmt::Display) {
        tracing::debug!(mac = %client.mac, kind = ?client.kind, "DHCP request not answered: {why}");
        self.metrics.dhcp(type_name(client.kind), "ignored");
        if client.kind == Some(MessageType::Discover) {
            self.inventory.dhcp(client.mac, client.seen("discover", ip));
        }
    }

    /// Proxy mode: a proxy OFFER on 67, the boot file on 4011.
    fn proxy(
        &self,
        req: &Message,
        client: &Client,
        peer: SocketAddrV4,
        ingress: &Ingress,
    ) -> Option<Out> {
        let Some(server_ip) = self.advertise.or(ingress.addrs.first().copied()) else {
            self.metrics.dhcp(type_name(client.kind), "ignored");
            tracing::warn!(mac = %client.mac, "proxy DHCP: no address on this interface and no server.advertise_ip: not answered");
            return None;
        };
        let ip = (!req.ciaddr().is_unspecified()).then(|| req.ciaddr());
        let (answer, to, event) = if ingress.port == proxy::PXE_PORT {
            (
                proxy::ack(req, &client.decision, server_ip),
                proxy::ack_destination(peer),
                "ack",
            )
        } else if client.kind == Some(MessageType::Discover) {
            (
                proxy::offer(req, &client.decision, server_ip),
                test_hook(peer, reply::destination(req, MessageType::Offer)),
                "offer",
            )
        } else {
            // REQUEST, RELEASE, ... on 67 belong to the LAN's DHCP server.
            self.metrics.dhcp(type_name(client.kind), "ignored");
            return None;
        };
        let msg = match answer {
            Ok(m) => m,
            Err(why) => {
                self.not_answered(client, ip, &why);
                return None;
            }
        };
        tracing::info!(mac = %client.mac, xid = req.xid(), profile = %client.profile_text(), boot = %client.boot_text(), %to, iface = %ingress.iface, port = ingress.port, "proxy DHCP {event}");
        let outcome = if event == "ack" {
            "proxy_ack"
        } else {
            "proxy_offer"
        };
        self.metrics.dhcp(type_name(client.kind), outcome);
        self.inventory.dhcp(client.mac, client.seen(event, ip));
        encode(&msg, client.mac, req.xid()).map(|bytes| Out::Send(bytes, to))
    }

    /// Full mode: addresses, leases and boot information.
    fn full(
        &self,
        req: &Message,
        mut client: Client,
        peer: SocketAddrV4,
        ingress: &Ingress,
        set: &Arc<ProfileSet>,
    ) -> Option<Out> {
        let (mac, xid) = (client.mac, req.xid());
        let now = unix_now();
        let action = {
            let mut st = self.lock();
            if !Arc::ptr_eq(&st.set, set) {
                // The profiles reloaded since this packet was classified: classify it again
                // against the set these reservations come from.
                client = self.classify(req, mac, &st.set);
            }
            let Some(i) = decide::choose_subnet(&st.subnets, req.giaddr(), &ingress.addrs) else {
                drop(st);
                tracing::warn!(%mac, xid, iface = %ingress.iface, giaddr = %req.giaddr(), "no [[dhcp.subnet]] for this interface or relay: not answered");
                self.metrics.dhcp(type_name(client.kind), "ignored");
                return None;
            };
            let subnet = &mut st.subnets[i];
            let ctx = Ctx {
                mac,
                server_ip: subnet.server_ip,
                now,
                boot: &client.decision,
                hostname: client.hostname.as_deref(),
            };
            decide::handle(req, subnet, &ctx)
        };
        let name = type_name(client.kind);
        match action {
            Action::Ignore(why) => {
                self.not_answered(&client, None, &why);
                if let Ignore::PoolExhausted(_) = why {
                    let mut w = self.pool_warn.lock().unwrap_or_else(|e| e.into_inner());
                    if now >= w.exhausted + WARN_EVERY {
                        w.exhausted = now;
                        tracing::warn!(%mac, "{why}: new clients get no address (repeated at most once a minute)");
                    }
                }
                None
            }
            Action::Persist { lease, kind, .. } => {
                let (event, change) = if kind == MessageType::Decline {
                    ("decline", LeaseChange::Declined)
                } else {
                    ("release", LeaseChange::Released)
                };
                tracing::info!(%mac, xid, ip = %lease.ip, iface = %ingress.iface, %event, "DHCP {event}");
                self.metrics.dhcp(name, event);
                self.inventory.dhcp(mac, client.seen(event, Some(lease.ip)));
                // No reply waits for it.
                Some(Out::Write(Write {
                    lease,
                    change,
                    ack: None,
                }))
            }
            Action::Reply {
                msg,
                to,
                lease,
                change,
                kind,
                ..
            } => {
                let event = match kind {
                    MessageType::Offer => "offer",
                    MessageType::Nak => "nak",
                    _ if msg.yiaddr().is_unspecified() => "inform",
                    _ => "ack",
                };
                let ip = (!msg.yiaddr().is_unspecified()).then(|| msg.yiaddr());
                let ip_text = ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
                // One info line per completed exchange (the ACK, a NAK, an INFORM); the
                // OFFER on the way is detail.
                if kind == MessageType::Offer {
                    tracing::debug!(%mac, xid, ip = %ip_text, profile = %client.profile_text(), boot = %client.boot_text(), %event, "DHCP {event}");
                } else {
                    tracing::info!(%mac, xid, ip = %ip_text, profile = %client.profile_text(), boot = %client.boot_text(), iface = %ingress.iface, %event, "DHCP {event}");
                }
                self.metrics.dhcp(name, event);
                let seen = DhcpSeen {
                    leased: event == "ack" && ip.is_some(),
                    ..client.seen(event, ip)
                };
                self.inventory.dhcp(mac, seen);
                self.warn_if_pool_low(ip, now);
                let to = test_hook(peer, to);
                let bytes = encode(&msg, mac, xid)?;
                Some(match (lease, change) {
                    (Some(lease), Some(change)) => Out::Write(Write {
                        lease,
                        change,
                        ack: Some((bytes, to)),
                    }),
                    _ => Out::Send(bytes, to),
                })
            }
        }
    }

    /// Each pool's size, used and free addresses, for `/metrics` and the API, when asked.
    pub fn export_pools(service: &Arc<Service>, metrics: &Metrics) {
        let weak = Arc::downgrade(service);
        metrics.on_pools(move || {
            let Some(service) = weak.upgrade() else {
                return Vec::new();
            };
            let now = unix_now();
            let st = service.lock();
            st.subnets
                .iter()
                .map(|s| {
                    let (size, used) = s.pool.usage(now);
                    PoolUsage {
                        subnet: format!("{}/{}", s.network, s.prefix_len),
                        size,
                        used,
                        free: size - used,
                    }
                })
                .collect()
        });
    }

    /// Warn when the pool of `ip` is nearly full (at most once a minute). The precise count
    /// walks the pool: it is skipped while a cheap upper bound is below the threshold, and runs
    /// at most once a second on pools of more than [`COUNT_ALWAYS_BELOW`] leases.
    fn warn_if_pool_low(&self, ip: Option<Ipv4Addr>, now: u64) {
        let Some(ip) = ip else { return };
        let st = self.lock();
        let Some(s) = st.subnets.iter().find(|s| s.contains(ip)) else {
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

#[cfg(test)]
mod tests;

//! The DHCP service in full mode: sockets, the per-packet path, durability.
//!
//! Per datagram: decode (a malformed packet is logged and dropped), rate-limit by MAC, choose
//! the subnet (by giaddr when relayed, else by the receiving interface's address), classify the
//! PXE client against its profile, run [`decide::handle`], persist the lease (fsync) if the
//! reply is an ACK, then send. One task per interface; the subnets sit behind a std mutex that
//! is held only inside the synchronous decision, never across `.await`.
//!
//! Not yet: proxy mode (port 4011), option 82 labels, metrics. See the README's status.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::decide::{self, Action, Ctx, Subnet};
use super::leases::{Lease, Pool};
use super::pxe::{self, BootFiles};
use super::reply;
use super::store::{LeaseStore, StoreError};
use crate::config::{Config, IpAddr};
use crate::inventory::{DhcpSeen, Inventory};
use crate::mac::MacAddr;
use crate::profiles::watch::Live;
use crate::profiles::{Facts, ProfileSet};

/// Packets accepted per MAC per [`RATE_WINDOW`]; beyond that they are dropped. A PXE ROM sends
/// a handful per boot; a flood from one MAC cannot starve the others.
const RATE_LIMIT: u32 = 30;
/// The rate-limit window.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Warn when a pool is this full (percent).
const POOL_WARN_PERCENT: u32 = 90;

/// One bound DHCP socket.
#[derive(Debug)]
pub struct Listener {
    /// The interface it is bound to.
    pub iface: String,
    /// The socket (`0.0.0.0:67`, `SO_BINDTODEVICE`).
    pub socket: UdpSocket,
    /// The interface's IPv4 addresses, to find its subnet.
    pub addrs: Vec<Ipv4Addr>,
}

/// The DHCP service's state, shared by the per-interface tasks.
pub struct Service {
    /// A std mutex: held only for the synchronous decision of one packet.
    subnets: Mutex<Vec<Subnet>>,
    /// Profile generation the reservations were last built from.
    reservations_gen: Mutex<u64>,
    store: Arc<LeaseStore>,
    profiles: Arc<Live>,
    inventory: Arc<Inventory>,
    boot_files: BootFiles,
    base_url: String,
    config_reservations: HashMap<MacAddr, Ipv4Addr>,
    /// Per-MAC packet counts in the current window. A std mutex, held for one map update.
    limiter: Mutex<HashMap<MacAddr, (u64, u32)>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("dhcp::Service").finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    /// Build the subnets from the config and restore every stored lease.
    pub fn new(
        config: &Config,
        store: Arc<LeaseStore>,
        profiles: Arc<Live>,
        inventory: Arc<Inventory>,
        base_url: String,
    ) -> Result<Service, StoreError> {
        let d = &config.dhcp;
        let advertise = match config.server.advertise_ip {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        };
        let config_reservations: HashMap<MacAddr, Ipv4Addr> =
            d.reservations.iter().map(|r| (r.mac, r.ip)).collect();
        let all = reservations(&profiles.current(), &config_reservations);
        let mut subnets: Vec<Subnet> = d
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
        Ok(Service {
            subnets: Mutex::new(subnets),
            reservations_gen: Mutex::new(profiles.status().generation),
            store,
            profiles,
            inventory,
            boot_files: d.boot_files.clone(),
            base_url,
            config_reservations,
            limiter: Mutex::new(HashMap::new()),
        })
    }

    /// Serve one interface until `token` is cancelled.
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
            let Some((bytes, to, lease)) = self.process(&buf[..len], peer, &listener) else {
                continue;
            };
            if let Some(lease) = lease {
                // Durable before the ACK leaves: a crash after this point keeps the lease.
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.put(&[lease])).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot persist lease: ACK not sent");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "lease store task failed: ACK not sent");
                        continue;
                    }
                }
            }
            if let Err(e) = listener.socket.send_to(&bytes, SocketAddr::V4(to)).await {
                tracing::warn!(iface = %listener.iface, %to, error = %e, "DHCP send failed");
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

    /// Decide on one datagram: the encoded reply, its destination and the lease to persist.
    fn process(
        &self,
        bytes: &[u8],
        peer: SocketAddr,
        listener: &Listener,
    ) -> Option<(Vec<u8>, SocketAddrV4, Option<Lease>)> {
        let iface = listener.iface.as_str();
        let req = match reply::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%iface, %peer, error = %e, "dropping DHCP packet");
                return None;
            }
        };
        let xid = req.xid();
        let Some(mac) = reply::client_mac(&req) else {
            tracing::debug!(%iface, %peer, xid, "dropping DHCP packet: not an Ethernet client");
            return None;
        };
        let now = unix_now();
        if !self.allow(mac, now) {
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
        let kind = req.opts().msg_type();
        let giaddr = req.giaddr();

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
                return None;
            };
            let server_ip = subnet.server_ip;
            decide::handle(
                &req,
                subnet,
                &Ctx {
                    server_ip,
                    now,
                    boot: &decision,
                    hostname: hostname.as_deref(),
                },
            )
        };

        let guid = match req.opts().get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(g)) => {
                Some(g.iter().map(|b| format!("{b:02x}")).collect())
            }
            _ => None,
        };
        let seen = |event: &'static str, ip: Option<Ipv4Addr>| DhcpSeen {
            event,
            ip,
            vendor_class: info.vendor_class.clone(),
            guid: guid.clone(),
            arch_code: info.arch,
            hostname: hostname.clone(),
        };
        let profile = chosen.as_ref().map_or("-", |m| m.profile.name.as_str());
        match action {
            Action::Ignore(why) => {
                tracing::debug!(%iface, %mac, xid, ?kind, "DHCP request not answered: {why}");
                if kind == Some(MessageType::Discover) {
                    self.inventory
                        .dhcp(mac, seen("discover", None), SystemTime::now());
                }
                if why.contains("exhausted") {
                    tracing::warn!(%iface, %mac, "{why}");
                }
                None
            }
            Action::Persist { lease, kind, .. } => {
                let event = if kind == MessageType::Decline {
                    "decline"
                } else {
                    "release"
                };
                tracing::info!(%iface, %mac, xid, ip = %lease.ip, %event, "DHCP {event}");
                self.inventory
                    .dhcp(mac, seen(event, Some(lease.ip)), SystemTime::now());
                let store = self.store.clone();
                let l = lease.clone();
                // No reply to wait for: persist in the background.
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = store.put(&[l]) {
                        tracing::error!(error = %e, "cannot persist lease change");
                    }
                });
                None
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
                let boot = match &decision.boot_file {
                    Some(pxe::BootFile::Tftp(f)) => f.clone(),
                    Some(pxe::BootFile::Http(u)) => u.clone(),
                    None => "-".into(),
                };
                let ip_text = ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
                tracing::info!(%iface, %mac, xid, ip = %ip_text, %profile, %boot, %event, "DHCP {event}");
                self.inventory.dhcp(mac, seen(event, ip), SystemTime::now());
                self.warn_if_pool_low(ip);
                // Test hook: a client on a non-standard port (a test tool) gets its reply
                // where it came from.
                let to = match peer {
                    SocketAddr::V4(p)
                        if p.port() != reply::CLIENT_PORT && p.port() != reply::SERVER_PORT =>
                    {
                        p
                    }
                    _ => to,
                };
                match reply::encode_padded(&msg) {
                    Ok(bytes) => Some((bytes, to, lease)),
                    Err(e) => {
                        tracing::error!(%mac, xid, error = %e, "cannot encode DHCP reply");
                        None
                    }
                }
            }
        }
    }

    fn warn_if_pool_low(&self, ip: Option<Ipv4Addr>) {
        let Some(ip) = ip else { return };
        let subnets = self.subnets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = subnets.iter().find(|s| s.contains(ip)) {
            let (size, used) = s.pool.usage(unix_now());
            if size > 0 && used * 100 >= size * POOL_WARN_PERCENT {
                tracing::warn!(subnet = %s.network, used, size, "DHCP pool is running low");
            }
        }
    }
}

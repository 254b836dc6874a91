//! Full-mode DHCP decisions: one request plus the subnet's state in, one action out.
//!
//! Pure and synchronous, with time passed in. The server loop decodes, calls [`handle`],
//! persists [`Action::Reply::lease`] (durably, before sending), then sends. Kindling is
//! *authoritative* on the subnets it serves (full mode means it is the LAN's DHCP server): a
//! REQUEST for an address it cannot give is NAKed rather than ignored, so clients restart
//! quickly instead of timing out.
//!
//! | request | state (RFC 2131 §4.3) | action |
//! | --- | --- | --- |
//! | DISCOVER | | OFFER an address ([`Pool::choose`]), held for the offer time |
//! | REQUEST + server id ours | SELECTING | ACK if it is the offered/usable address, else NAK |
//! | REQUEST + server id not ours | SELECTING | ignore; our offer lapses |
//! | REQUEST, no server id, ciaddr 0 | INIT-REBOOT | ACK if the requested address is usable by it, else NAK |
//! | REQUEST, ciaddr set | RENEWING / REBINDING | ACK (extend) if usable by it, else NAK |
//! | DECLINE | | quarantine the address; no reply |
//! | RELEASE | | free the address; no reply |
//! | INFORM | | ACK with configuration, no address, no lease time |
//! | BOOTREPLY or OFFER/ACK/NAK | another server's | ignore |

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};

use super::leases::{AllocError, Lease, Now, Pool, State};
use super::reply::{destination, echo_guid, reply_base, set_boot, set_no_proxydhcp};
use crate::events::LeaseChange;
use crate::mac::MacAddr;
use crate::pxe::Decision;

/// A subnet Kindling serves in full mode.
#[derive(Debug, Clone)]
pub struct Subnet {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// The address range and its leases.
    pub pool: Pool,
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Option 51 for bound leases.
    pub lease_time: Duration,
    /// How long an offer holds its address.
    pub offer_time: Duration,
    /// Kindling's address on this subnet: server identifier and next-server.
    pub server_ip: Ipv4Addr,
}

impl Subnet {
    /// The netmask (option 1).
    pub fn mask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// Whether `ip` is on this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.network) & u32::from(self.mask())
    }
}

/// The subnet a request belongs to: the one holding the relay's address (giaddr) when it was
/// relayed, else the one holding an address of the interface it arrived on.
pub fn choose_subnet(
    subnets: &[Subnet],
    giaddr: Ipv4Addr,
    iface_addrs: &[Ipv4Addr],
) -> Option<usize> {
    if giaddr.is_unspecified() {
        subnets
            .iter()
            .position(|s| iface_addrs.iter().any(|a| s.contains(*a)))
    } else {
        subnets.iter().position(|s| s.contains(giaddr))
    }
}

/// Why a request gets no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignore {
    /// A BOOTREPLY: another server's packet.
    #[error("a BOOTREPLY (another server's packet)")]
    ForeignReply,
    /// No option 53.
    #[error("no DHCP message type (plain BOOTP is not served)")]
    NoMessageType,
    /// No address is left for a new client.
    #[error("DISCOVER not answered: {0}")]
    PoolExhausted(AllocError),
    /// A REQUEST that chose another server's offer.
    #[error("REQUEST for server {0}: the client chose another server")]
    OtherServer(Ipv4Addr),
    /// A DECLINE that names no address.
    #[error("DECLINE without option 50")]
    DeclineWithoutAddress,
    /// A DECLINE or RELEASE of an address the client does not hold.
    #[error("{kind} of {ip}, which it does not hold")]
    NotHeld {
        /// `DECLINE` or `RELEASE`.
        kind: &'static str,
        /// The address.
        ip: Ipv4Addr,
    },
    /// A DECLINE or RELEASE whose client identifier is not the one the lease was bound with.
    #[error("{kind} of {ip} with another client identifier than the lease's")]
    ClientIdMismatch {
        /// `DECLINE` or `RELEASE`.
        kind: &'static str,
        /// The address.
        ip: Ipv4Addr,
    },
    /// A DECLINE long after the ACK (a client declines right after its ARP check).
    #[error("DECLINE of {0} long after its ACK")]
    LateDecline(Ipv4Addr),
    /// An INFORM from an address on no served subnet.
    #[error("INFORM from {0}, which is not on this subnet")]
    InformOffSubnet(Ipv4Addr),
    /// An OFFER, ACK or NAK sent to the server port.
    #[error("{0:?} is a server message")]
    ServerMessage(MessageType),
}

/// A client's option 12 as it may name its lease: one DNS label (letters, digits, inner
/// hyphens, at most 63), lower case; anything else (dots, spaces, control characters) is not
/// taken.
pub fn one_label(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| name.to_ascii_lowercase())
}

/// How long after its ACK a client may DECLINE an address (it declines after the ARP check
/// it makes right away); later, a DECLINE is someone else's forgery.
pub const DECLINE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// The client identifier of a request (option 61), hex.
fn client_id(req: &Message) -> Option<String> {
    match req.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => {
            Some(id.iter().map(|b| format!("{b:02x}")).collect())
        }
        _ => None,
    }
}

/// Whether a DECLINE or RELEASE of `ip` comes from the client holding its lease: the same
/// client identifier as the binding (when it had one) and, for a DECLINE (`window` set), soon
/// after the ACK. The MAC is checked by the pool.
fn holder_check(
    subnet: &Subnet,
    ip: Ipv4Addr,
    mac: MacAddr,
    req: &Message,
    now: Now,
    window: Option<std::time::Duration>,
) -> Result<(), Ignore> {
    let kind = if window.is_some() {
        "DECLINE"
    } else {
        "RELEASE"
    };
    let Some(lease) = subnet.pool.lease(ip).filter(|l| l.mac == Some(mac)) else {
        return Err(Ignore::NotHeld { kind, ip });
    };
    if lease.client_id.is_some() && lease.client_id != client_id(req) {
        return Err(Ignore::ClientIdMismatch { kind, ip });
    }
    if let Some(window) = window
        && (lease.state != State::Bound || now > lease.bound_at + window.as_secs())
    {
        return Err(Ignore::LateDecline(ip));
    }
    Ok(())
}

/// What the server should do with one request.
#[derive(Debug)]
pub enum Action {
    /// Send `msg` to `to`, after persisting `lease` if there is one.
    Reply {
        /// The reply.
        msg: Box<Message>,
        /// Its destination (RFC 2131 §4.1).
        to: SocketAddrV4,
        /// The lease to make durable before the reply leaves (ACKs).
        lease: Option<Lease>,
        /// What the ACK does to the lease: granted (new to this client) or renewed.
        change: Option<LeaseChange>,
        /// The request's client.
        mac: MacAddr,
        /// Offer, Ack or Nak.
        kind: MessageType,
    },
    /// No reply; persist the changed lease (RELEASE, DECLINE).
    Persist {
        /// The lease as it now stands.
        lease: Lease,
        /// The client.
        mac: MacAddr,
        /// Release or Decline.
        kind: MessageType,
    },
    /// Drop the request, logged with the reason.
    Ignore(Ignore),
}

/// Everything [`handle`] needs besides the request and subnet.
pub struct Ctx<'a> {
    /// The request's client (read once, when the packet was admitted).
    pub mac: MacAddr,
    /// Kindling's address on this subnet: server identifier and next-server.
    pub server_ip: Ipv4Addr,
    /// The current time (Unix seconds).
    pub now: Now,
    /// The classifier's decision for this request's client (boot file or none).
    pub boot: &'a Decision,
    /// The hostname the machine's profile assigns (option 12), if any.
    pub hostname: Option<&'a str>,
}

/// Decide what to do with `req` on `subnet`.
pub fn handle(req: &Message, subnet: &mut Subnet, ctx: &Ctx<'_>) -> Action {
    if req.opcode() != Opcode::BootRequest {
        return Action::Ignore(Ignore::ForeignReply);
    }
    let mac = ctx.mac;
    let Some(kind) = req.opts().msg_type() else {
        return Action::Ignore(Ignore::NoMessageType);
    };
    let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let client_hostname = match req.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => one_label(h),
        _ => None,
    };
    let hostname = ctx.hostname.map(str::to_string).or(client_hostname);
    let now = ctx.now;
    match kind {
        MessageType::Discover => match subnet.pool.choose(mac, requested, now) {
            Ok(ip) => {
                let until = now + subnet.offer_time.as_secs();
                subnet.pool.assign(ip, mac, State::Offered, until, hostname);
                let msg = build(req, subnet, ctx, MessageType::Offer, ip, true);
                Action::Reply {
                    to: destination(req, MessageType::Offer),
                    msg: Box::new(msg),
                    lease: None,
                    change: None,
                    mac,
                    kind: MessageType::Offer,
                }
            }
            Err(e) => Action::Ignore(Ignore::PoolExhausted(e)),
        },
        MessageType::Request => {
            if let Some(sid) = server_id
                && sid != ctx.server_ip
            {
                return Action::Ignore(Ignore::OtherServer(sid));
            }
            let ciaddr = req.ciaddr();
            let wanted = if ciaddr.is_unspecified() {
                requested
            } else {
                Some(ciaddr)
            };
            let Some(ip) = wanted else {
                return nak(
                    req,
                    subnet,
                    ctx,
                    mac,
                    "REQUEST names no address (no option 50, no ciaddr)",
                );
            };
            if !subnet.contains(ip) {
                return nak(
                    req,
                    subnet,
                    ctx,
                    mac,
                    &format!("{ip} is not on this subnet"),
                );
            }
            if !subnet.pool.usable_by(ip, mac, now) {
                return nak(
                    req,
                    subnet,
                    ctx,
                    mac,
                    &format!("{ip} is not available to {mac}"),
                );
            }
            if server_id.is_none()
                && ciaddr.is_unspecified()
                && subnet.pool.choose(mac, Some(ip), now) != Ok(ip)
            {
                // INIT-REBOOT asking for an address other than the one it should have
                // (e.g. its reservation changed): NAK so it starts over with DISCOVER.
                return nak(
                    req,
                    subnet,
                    ctx,
                    mac,
                    &format!("{ip} is not the address for {mac}"),
                );
            }
            let until = now + subnet.lease_time.as_secs();
            let held = subnet
                .pool
                .lease(ip)
                .is_some_and(|l| l.state == State::Bound && l.mac == Some(mac) && l.expires > now);
            let lease = subnet
                .pool
                .bind(ip, mac, until, hostname, client_id(req), now);
            let msg = build(req, subnet, ctx, MessageType::Ack, ip, true);
            Action::Reply {
                to: destination(req, MessageType::Ack),
                msg: Box::new(msg),
                lease: Some(lease),
                change: Some(if held {
                    LeaseChange::Renewed
                } else {
                    LeaseChange::Granted
                }),
                mac,
                kind: MessageType::Ack,
            }
        }
        MessageType::Decline => {
            let Some(ip) = requested else {
                return Action::Ignore(Ignore::DeclineWithoutAddress);
            };
            if let Err(why) = holder_check(subnet, ip, mac, req, now, Some(DECLINE_WINDOW)) {
                return Action::Ignore(why);
            }
            match subnet.pool.decline(ip, mac, now) {
                Some(lease) => Action::Persist {
                    lease,
                    mac,
                    kind: MessageType::Decline,
                },
                None => Action::Ignore(Ignore::NotHeld {
                    kind: "DECLINE",
                    ip,
                }),
            }
        }
        MessageType::Release => {
            let ip = req.ciaddr();
            if let Err(why) = holder_check(subnet, ip, mac, req, now, None) {
                return Action::Ignore(why);
            }
            match subnet.pool.release(ip, mac, now) {
                Some(lease) => Action::Persist {
                    lease,
                    mac,
                    kind: MessageType::Release,
                },
                None => Action::Ignore(Ignore::NotHeld {
                    kind: "RELEASE",
                    ip,
                }),
            }
        }
        MessageType::Inform => {
            let ciaddr = req.ciaddr();
            if ciaddr.is_unspecified() || !subnet.contains(ciaddr) {
                return Action::Ignore(Ignore::InformOffSubnet(ciaddr));
            }
            let msg = build(
                req,
                subnet,
                ctx,
                MessageType::Ack,
                Ipv4Addr::UNSPECIFIED,
                false,
            );
            Action::Reply {
                to: destination(req, MessageType::Ack),
                msg: Box::new(msg),
                lease: None,
                change: None,
                mac,
                kind: MessageType::Ack,
            }
        }
        other => Action::Ignore(Ignore::ServerMessage(other)),
    }
}

fn nak(req: &Message, subnet: &Subnet, ctx: &Ctx<'_>, mac: MacAddr, why: &str) -> Action {
    let mut msg = reply_base(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED);
    msg.opts_mut()
        .insert(DhcpOption::ServerIdentifier(ctx.server_ip));
    msg.opts_mut().insert(DhcpOption::Message(why.to_string()));
    let _ = subnet;
    Action::Reply {
        to: destination(req, MessageType::Nak),
        msg: Box::new(msg),
        lease: None,
        change: None,
        mac,
        kind: MessageType::Nak,
    }
}

/// An OFFER or ACK with the subnet's configuration and the boot decision.
fn build(
    req: &Message,
    subnet: &Subnet,
    ctx: &Ctx<'_>,
    kind: MessageType,
    yiaddr: Ipv4Addr,
    with_lease: bool,
) -> Message {
    let mut msg = reply_base(req, kind, yiaddr);
    if kind == MessageType::Ack && yiaddr.is_unspecified() {
        msg.set_ciaddr(req.ciaddr()); // INFORM
    }
    let o = msg.opts_mut();
    o.insert(DhcpOption::ServerIdentifier(ctx.server_ip));
    o.insert(DhcpOption::SubnetMask(subnet.mask()));
    if with_lease {
        let secs = u32::try_from(subnet.lease_time.as_secs()).unwrap_or(u32::MAX);
        o.insert(DhcpOption::AddressLeaseTime(secs));
        o.insert(DhcpOption::Renewal(secs / 2));
        o.insert(DhcpOption::Rebinding(secs / 8 * 7));
    }
    if let Some(r) = subnet.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !subnet.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(subnet.dns.clone()));
    }
    if let Some(d) = &subnet.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(h) = ctx.hostname {
        o.insert(DhcpOption::Hostname(h.to_string()));
    }
    echo_guid(req, &mut msg);
    set_boot(&mut msg, ctx.boot, ctx.server_ip);
    if ctx.boot.ipxe {
        set_no_proxydhcp(&mut msg);
    }
    msg
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use dhcproto::v4::{Architecture, Flags};

    use super::*;
    use crate::dhcp::reply::client_mac;
    use crate::dhcp::testkit::request;
    use crate::pxe::{self, BootFile, BootFiles, MachineBoot};

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn subnet() -> Subnet {
        Subnet {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 24,
            pool: Pool::new(
                Ipv4Addr::new(10, 0, 0, 100),
                Ipv4Addr::new(10, 0, 0, 101),
                HashMap::from([(mac(9), Ipv4Addr::new(10, 0, 0, 9))]),
            ),
            router: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![SERVER],
            domain: Some("lab.example".into()),
            lease_time: Duration::from_secs(3600),
            offer_time: Duration::from_secs(60),
            server_ip: SERVER,
        }
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn no_boot() -> Decision {
        pxe::decide(
            &Default::default(),
            &MachineBoot::NoProfile,
            &BootFiles::default(),
            "http://x",
        )
    }

    fn run(req: &Message, s: &mut Subnet, now: Now) -> Action {
        let d = no_boot();
        handle(
            req,
            s,
            &Ctx {
                mac: client_mac(req).unwrap_or(MacAddr([0; 6])),
                server_ip: SERVER,
                now,
                boot: &d,
                hostname: None,
            },
        )
    }

    fn reply(a: Action) -> (Message, SocketAddrV4, Option<Lease>, MessageType) {
        match a {
            Action::Reply {
                msg,
                to,
                lease,
                kind,
                ..
            } => (*msg, to, lease, kind),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn dora(s: &mut Subnet, m: MacAddr, now: Now) -> Ipv4Addr {
        let (offer, _, _, kind) = reply(run(&request(MessageType::Discover, m), s, now));
        assert_eq!(kind, MessageType::Offer);
        let mut req = request(MessageType::Request, m);
        req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        let (ack, _, lease, kind) = reply(run(&req, s, now));
        assert_eq!(kind, MessageType::Ack);
        assert_eq!(
            lease.unwrap().state,
            State::Bound,
            "the ACK comes with a lease to persist"
        );
        ack.yiaddr()
    }

    #[test]
    fn discover_offer_request_ack() {
        let mut s = subnet();
        let (offer, to, lease, _) = reply(run(&request(MessageType::Discover, mac(1)), &mut s, 0));
        assert!(lease.is_none(), "offers are not persisted");
        assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(offer.opcode(), Opcode::BootReply);
        let o = offer.opts();
        assert_eq!(
            o.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]))
        );
        assert_eq!(
            o.get(OptionCode::DomainName),
            Some(&DhcpOption::DomainName("lab.example".into()))
        );
        assert_eq!(
            dora(&mut s, mac(1), 1),
            Ipv4Addr::new(10, 0, 0, 100),
            "the offered address is acked"
        );
    }

    #[test]
    fn reserved_machine_gets_its_address() {
        let mut s = subnet();
        assert_eq!(dora(&mut s, mac(9), 0), Ipv4Addr::new(10, 0, 0, 9));
    }

    #[test]
    fn request_for_another_server_is_ignored_and_wrong_addresses_are_naked() {
        let mut s = subnet();
        let mut req = request(MessageType::Request, mac(1));
        req.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 3)));
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 100)));
        assert!(matches!(run(&req, &mut s, 0), Action::Ignore(_)));

        // INIT-REBOOT for an address on another subnet.
        let mut req = request(MessageType::Request, mac(1));
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 1, 5,
            )));
        let (nak, to, _, kind) = reply(run(&req, &mut s, 0));
        assert_eq!(kind, MessageType::Nak);
        assert_eq!(to.ip(), &Ipv4Addr::BROADCAST);
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);

        // INIT-REBOOT for an address another client holds.
        let held = dora(&mut s, mac(2), 0);
        let mut req = request(MessageType::Request, mac(1));
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(held));
        assert_eq!(reply(run(&req, &mut s, 10)).3, MessageType::Nak);

        // INIT-REBOOT for the reserved address of someone else.
        let mut req = request(MessageType::Request, mac(1));
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(reply(run(&req, &mut s, 10)).3, MessageType::Nak);
    }

    #[test]
    fn init_reboot_renew_and_rebind() {
        let mut s = subnet();
        let ip = dora(&mut s, mac(1), 0);
        // INIT-REBOOT: remembers its address.
        let mut req = request(MessageType::Request, mac(1));
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        let (_, _, lease, kind) = reply(run(&req, &mut s, 100));
        assert_eq!((kind, lease.unwrap().expires), (MessageType::Ack, 3700));
        // RENEWING: unicast with ciaddr; the reply goes to ciaddr.
        let mut req = request(MessageType::Request, mac(1));
        req.set_flags(Flags::default());
        req.set_ciaddr(ip);
        let (ack, to, lease, _) = reply(run(&req, &mut s, 1800));
        assert_eq!(to, SocketAddrV4::new(ip, 68));
        assert_eq!(ack.yiaddr(), ip);
        assert_eq!(lease.unwrap().expires, 5400, "extended");
        // REBINDING after the lease lapsed, address still free: granted again.
        let (_, _, lease, kind) = reply(run(&req, &mut s, 9000));
        assert_eq!((kind, lease.unwrap().expires), (MessageType::Ack, 12_600));
    }

    #[test]
    fn decline_quarantines_and_release_frees() {
        let mut s = subnet();
        let ip = dora(&mut s, mac(1), 0);
        let mut dec = request(MessageType::Decline, mac(1));
        dec.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        match run(&dec, &mut s, 5) {
            Action::Persist { lease, kind, .. } => {
                assert_eq!((lease.state, kind), (State::Declined, MessageType::Decline))
            }
            other => panic!("{other:?}"),
        }
        assert_ne!(
            dora(&mut s, mac(1), 6),
            ip,
            "a declined address is not offered again"
        );
        let ip2 = s.pool.address_of(mac(1)).unwrap();
        let mut rel = request(MessageType::Release, mac(1));
        rel.set_ciaddr(ip2);
        match run(&rel, &mut s, 7) {
            Action::Persist { lease, .. } => assert_eq!(lease.state, State::Released),
            other => panic!("{other:?}"),
        }
        let mut rel = request(MessageType::Release, mac(2));
        rel.set_ciaddr(ip2);
        assert!(
            matches!(run(&rel, &mut s, 8), Action::Ignore(_)),
            "only the holder releases"
        );
    }

    /// Forgeries with the victim's MAC: a DECLINE long after the ACK, a DECLINE or RELEASE with
    /// another client identifier, and an INFORM from an address off the subnet get nothing.
    #[test]
    fn forged_decline_release_and_inform_are_ignored() {
        let with_id = |mut m: Message, id: &[u8]| {
            m.opts_mut()
                .insert(DhcpOption::ClientIdentifier(id.to_vec()));
            m
        };
        let mut s = subnet();
        // The victim binds with client identifier 01:52:54:..:01 at t = 0.
        let (offer, _, _, _) = reply(run(
            &with_id(
                request(MessageType::Discover, mac(1)),
                &[1, 0x52, 0x54, 0, 0, 0, 1],
            ),
            &mut s,
            0,
        ));
        let ip = offer.yiaddr();
        let mut req = with_id(
            request(MessageType::Request, mac(1)),
            &[1, 0x52, 0x54, 0, 0, 0, 1],
        );
        req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        let (_, _, lease, _) = reply(run(&req, &mut s, 0));
        assert_eq!(lease.unwrap().client_id.as_deref(), Some("01525400000001"));

        let decline = |id: &[u8]| {
            let mut d = with_id(request(MessageType::Decline, mac(1)), id);
            d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
            d
        };
        let ignored = |a: Action| match a {
            Action::Ignore(why) => why.to_string(),
            other => panic!("expected to be ignored: {other:?}"),
        };
        let why = ignored(run(&decline(&[1, 9, 9, 9, 9, 9, 9]), &mut s, 5));
        assert!(why.contains("another client identifier"), "{why}");
        let why = ignored(run(&decline(&[1, 0x52, 0x54, 0, 0, 0, 1]), &mut s, 600));
        assert!(why.contains("long after its ACK"), "{why}");
        let mut release = with_id(request(MessageType::Release, mac(1)), &[1, 7]);
        release.set_ciaddr(ip);
        let why = ignored(run(&release, &mut s, 10));
        assert!(
            why.contains("RELEASE") && why.contains("client identifier"),
            "{why}"
        );
        assert_eq!(
            s.pool.lease(ip).unwrap().state,
            State::Bound,
            "still the victim's"
        );
        // The real client, right after its ACK, may decline.
        assert!(matches!(
            run(&decline(&[1, 0x52, 0x54, 0, 0, 0, 1]), &mut s, 30),
            Action::Persist { .. }
        ));
        let mut inform = request(MessageType::Inform, mac(3));
        inform.set_ciaddr(Ipv4Addr::new(192, 168, 7, 7));
        let why = ignored(run(&inform, &mut s, 40));
        assert!(why.contains("not on this subnet"), "{why}");
    }

    #[test]
    fn inform_gets_configuration_without_an_address() {
        let mut s = subnet();
        let mut req = request(MessageType::Inform, mac(1));
        req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 50));
        let (ack, to, lease, kind) = reply(run(&req, &mut s, 0));
        assert_eq!((kind, lease), (MessageType::Ack, None));
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(ack.opts().get(OptionCode::Router).is_some());
        assert_eq!(to, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 68));
    }

    #[test]
    fn pool_exhaustion_and_foreign_packets_are_ignored() {
        let mut s = subnet();
        dora(&mut s, mac(1), 0);
        dora(&mut s, mac(2), 0);
        assert!(
            matches!(run(&request(MessageType::Discover, mac(3)), &mut s, 1), Action::Ignore(w) if w.to_string().contains("exhausted"))
        );
        let mut foreign = request(MessageType::Offer, mac(3));
        assert!(matches!(run(&foreign, &mut s, 1), Action::Ignore(_)));
        foreign.set_opcode(Opcode::BootReply);
        assert!(
            matches!(run(&foreign, &mut s, 1), Action::Ignore(w) if w.to_string().contains("BOOTREPLY"))
        );
        let mut bootp = request(MessageType::Discover, mac(3));
        bootp.opts_mut().remove(OptionCode::MessageType);
        assert!(
            matches!(run(&bootp, &mut s, 1), Action::Ignore(w) if w.to_string().contains("BOOTP"))
        );
    }

    #[test]
    fn pxe_offer_carries_boot_info_and_echoes_guid() {
        let mut s = subnet();
        let mut req = request(MessageType::Discover, mac(1));
        req.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::X64));
        req.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
        ));
        req.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(vec![0, 1, 2, 3]));
        let d = crate::dhcp::testkit::netboot_decision(
            &crate::dhcp::reply::client_info(&req),
            "http://10.0.0.2:8080",
        );
        assert_eq!(d.boot_file, Some(BootFile::Tftp("ipxe.efi".into())));
        let a = handle(
            &req,
            &mut s,
            &Ctx {
                mac: client_mac(&req).unwrap(),
                server_ip: SERVER,
                now: 0,
                boot: &d,
                hostname: Some("worker-1"),
            },
        );
        let (offer, _, _, _) = reply(a);
        assert_eq!(offer.siaddr(), SERVER);
        assert_eq!(
            offer.opts().get(OptionCode::ClientMachineIdentifier),
            Some(&DhcpOption::ClientMachineIdentifier(vec![0, 1, 2, 3]))
        );
        assert_eq!(
            offer.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("worker-1".into()))
        );
        assert!(crate::dhcp::reply::encode_padded(&offer).unwrap().len() >= 300);
    }

    #[test]
    fn relayed_replies_echo_option_82() {
        use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
        let mut s = subnet();
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(b"port1".to_vec()));
        let opt = DhcpOption::RelayAgentInformation(info);
        let mut req = request(MessageType::Discover, mac(1));
        req.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
        req.opts_mut().insert(opt.clone());
        let (offer, to, _, _) = reply(run(&req, &mut s, 0));
        assert_eq!(
            offer.opts().get(OptionCode::RelayAgentInformation),
            Some(&opt)
        );
        assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(to, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 67));
        let mut bad = request(MessageType::Request, mac(1));
        bad.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
        bad.opts_mut().insert(opt.clone());
        bad.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 9, 9,
            )));
        let (nak, _, _, kind) = reply(run(&bad, &mut s, 0));
        assert_eq!(kind, MessageType::Nak);
        assert_eq!(
            nak.opts().get(OptionCode::RelayAgentInformation),
            Some(&opt)
        );
    }

    #[test]
    fn option_12_names_a_lease_only_as_one_label() {
        for (sent, kept) in [
            ("Node-7", Some("node-7")),
            ("wpad", Some("wpad")),
            ("evil\nINFO forged", None),
            ("a.b", None),
            ("-x", None),
            ("", None),
        ] {
            let mut s = subnet();
            let mut req = request(MessageType::Request, mac(4));
            req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
            req.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 100)));
            req.opts_mut().insert(DhcpOption::Hostname(sent.into()));
            let (_, _, lease, _) = reply(run(&req, &mut s, 0));
            assert_eq!(lease.unwrap().hostname.as_deref(), kept, "{sent:?}");
        }
        assert_eq!(one_label(&"a".repeat(64)), None);
    }

    #[test]
    fn the_subnet_is_the_relays_or_the_interfaces() {
        let mut other = subnet();
        other.network = Ipv4Addr::new(10, 1, 0, 0);
        let subnets = [subnet(), other];
        let local = [Ipv4Addr::new(10, 1, 0, 2)];
        assert_eq!(
            choose_subnet(&subnets, Ipv4Addr::UNSPECIFIED, &local),
            Some(1)
        );
        assert_eq!(
            choose_subnet(&subnets, Ipv4Addr::new(10, 0, 0, 1), &local),
            Some(0),
            "a relay's giaddr wins over the receiving interface"
        );
        assert_eq!(
            choose_subnet(&subnets, Ipv4Addr::new(10, 9, 0, 1), &local),
            None
        );
        assert_eq!(choose_subnet(&subnets, Ipv4Addr::UNSPECIFIED, &[]), None);
    }

    /// Bounded random-packet test of decode → decide (full and proxy) → encode: mutated real
    /// requests and pure noise, never a panic.
    #[test]
    fn random_packets_never_panic() {
        let mut rng = crate::testkit::Rng(0x0dcb_0dcb_0dcb_0001);
        let seeds: Vec<Vec<u8>> = [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Decline,
            MessageType::Release,
            MessageType::Inform,
        ]
        .into_iter()
        .map(|k| {
            let mut m = request(k, mac(1));
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 100)));
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00007".to_vec(),
            ));
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            m.opts_mut().insert(DhcpOption::VendorExtensions(vec![
                71, 4, 0x80, 0, 0, 0, 255,
            ]));
            crate::dhcp::reply::encode_padded(&m).unwrap()
        })
        .collect();
        let mut s = subnet();
        let (mut decoded, mut answered) = (0, 0);
        for i in 0..20_000u64 {
            let mut bytes = if i % 10 == 0 {
                (0..rng.below(600)).map(|_| rng.next() as u8).collect()
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            for _ in 0..rng.below(6) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.below(bytes.len());
                match rng.below(3) {
                    0 => bytes[at] = rng.next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, rng.next() as u8),
                }
            }
            let Ok(msg) = crate::dhcp::reply::decode(&bytes) else {
                continue;
            };
            decoded += 1;
            let info = crate::dhcp::reply::client_info(&msg);
            let d = crate::dhcp::testkit::netboot_decision(&info, "http://10.0.0.2:8080");
            // Proxy mode's path over the same packet.
            for r in [
                crate::dhcp::proxy::offer(&msg, &d, SERVER),
                crate::dhcp::proxy::ack(&msg, &d, SERVER),
            ]
            .into_iter()
            .flatten()
            {
                crate::dhcp::reply::encode_padded(&r).unwrap();
            }
            let Some(mac) = client_mac(&msg) else {
                continue;
            };
            if let Action::Reply { msg, .. } = handle(
                &msg,
                &mut s,
                &Ctx {
                    mac,
                    server_ip: SERVER,
                    now: i,
                    boot: &d,
                    hostname: None,
                },
            ) {
                answered += 1;
                crate::dhcp::reply::encode_padded(&msg).unwrap();
            }
        }
        assert!(
            decoded > 1000 && answered > 100,
            "the mix must exercise the decision code: {decoded} decoded, {answered} answered"
        );
    }
}

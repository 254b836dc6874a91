//! IPv6 router solicitations from the machines Kindling is booting, answered at once so that
//! iPXE does not wait out its IPv6 configuration.
//!
//! iPXE configures IPv4 (DHCP) and IPv6 (router discovery) side by side, and its `dhcp` /
//! `ifconf` returns only when both are done. On a provisioning LAN without an IPv6 router,
//! router discovery ends only when its solicitations time out: measured in the QEMU lab, 16 s
//! of every boot between iPXE's DHCP ACK and its first HTTP request. iPXE ends its IPv6
//! configuration on the first solicited router advertisement that carries neither the M nor
//! the O flag (`ipv6conf_rx_router_advertisement` in its `src/net/ndp.c`).
//!
//! The advertisement Kindling sends gives nothing: router lifetime 0 (not a default router),
//! no prefix (no address beyond the link-local one), M = O = 0 (no DHCPv6), and only the
//! source link-layer address option. It is sent:
//!
//! - only to a machine this instance boots ([`super::service::Service::solicited`]): its record
//!   is in its firmware (`dhcp`, `firmware`, `discovered`, or stalled in one of the first two)
//!   and its last DHCP message came from its firmware or iPXE, not an OS;
//! - unicast to the soliciting link-local address, from the interface's link-local address,
//!   with hop limit 255 (RFC 4861 §6.2.6 allows a unicast answer);
//! - only for solicitations that came from the link (hop limit 255, RFC 4861 §6.1.1) and are
//!   well formed;
//! - on the DHCP interfaces only, and not at all with `[dhcp] answer_router_solicitations =
//!   false` (a LAN whose IPv6 router must be the only one that answers).
//!
//! The sender's MAC is its source link-layer address option (iPXE sends one), else the
//! interface identifier of an EUI-64 link-local source address.

use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn6};
use tokio_util::sync::CancellationToken;

use super::service::{Service, Solicited};
use crate::config::{Config, DhcpMode};
use crate::mac::MacAddr;

/// ICMPv6 router solicitation.
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 router advertisement.
pub const ROUTER_ADVERTISEMENT: u8 = 134;
/// NDP option: source link-layer address.
const OPT_SOURCE_LL: u8 = 1;
/// The hop limit of every NDP message that stayed on its link.
pub const LINK_HOP_LIMIT: i32 = 255;

/// Whether to answer router solicitations on the DHCP interfaces; if not, why. Not when
/// machines fetch their boot script from an IPv6 base URL: iPXE then needs the LAN's own
/// router advertisements (its prefix) to reach it, and it takes only the first one it gets.
pub fn wanted(config: &Config) -> Result<(), &'static str> {
    if config.dhcp.mode == DhcpMode::Off {
        Err("DHCP is off")
    } else if !config.dhcp.answer_router_solicitations {
        Err("[dhcp] answer_router_solicitations = false")
    } else if config.base_url(config.http.listen).contains("://[") {
        Err("the base URL is IPv6: iPXE needs the LAN's own router advertisements to reach it")
    } else {
        Ok(())
    }
}

/// A router solicitation worth deciding on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicitation {
    /// The sender's MAC: its source link-layer address option, else its EUI-64 address.
    pub mac: Option<MacAddr>,
}

/// Why a datagram on the socket is not a solicitation to decide on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotSolicitation {
    /// Another ICMPv6 message (the socket sees them all): not counted.
    #[error("ICMPv6 type {0}, not a router solicitation")]
    Other(u8),
    /// Malformed or not from the link: counted as dropped.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Parse one ICMPv6 message from `src`, received with `hop_limit`, as RFC 4861 §6.1.1
/// validates a router solicitation.
pub fn parse(
    msg: &[u8],
    src: Ipv6Addr,
    hop_limit: Option<i32>,
) -> Result<Solicitation, NotSolicitation> {
    let Some(&kind) = msg.first() else {
        return Err(NotSolicitation::Invalid("an empty ICMPv6 message"));
    };
    if kind != ROUTER_SOLICITATION {
        return Err(NotSolicitation::Other(kind));
    }
    if hop_limit != Some(LINK_HOP_LIMIT) {
        return Err(NotSolicitation::Invalid(
            "hop limit is not 255: not sent on this link",
        ));
    }
    if msg.len() < 8 {
        return Err(NotSolicitation::Invalid(
            "shorter than a router solicitation (8 bytes)",
        ));
    }
    if msg[1] != 0 {
        return Err(NotSolicitation::Invalid("ICMPv6 code is not 0"));
    }
    let mut source_ll = None;
    let mut rest = &msg[8..];
    while !rest.is_empty() {
        let (Some(&kind), Some(&units)) = (rest.first(), rest.get(1)) else {
            return Err(NotSolicitation::Invalid("an option cut short"));
        };
        let len = usize::from(units) * 8;
        if len == 0 || len > rest.len() {
            return Err(NotSolicitation::Invalid(
                "an option of length 0 or past the end",
            ));
        }
        if kind == OPT_SOURCE_LL && len == 8 {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&rest[2..8]);
            source_ll = Some(MacAddr(mac));
        }
        rest = &rest[len..];
    }
    if src.is_unspecified() && source_ll.is_some() {
        return Err(NotSolicitation::Invalid(
            "a source link-layer address from the unspecified address",
        ));
    }
    Ok(Solicitation {
        mac: source_ll.or_else(|| eui64_mac(src)),
    })
}

/// The MAC inside a link-local address formed from it by EUI-64 (`fe80::` + MAC with
/// `ff:fe` in the middle and the universal/local bit flipped); `None` for any other address.
pub fn eui64_mac(addr: Ipv6Addr) -> Option<MacAddr> {
    let b = addr.octets();
    let link_local = b[..8] == [0xfe, 0x80, 0, 0, 0, 0, 0, 0];
    (link_local && b[11] == 0xff && b[12] == 0xfe)
        .then(|| MacAddr([b[8] ^ 0x02, b[9], b[10], b[13], b[14], b[15]]))
}

/// Whether `addr` is link-local (`fe80::/10`): the only address a unicast answer goes to.
fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// The router advertisement Kindling answers with: not a default router, no prefix, no
/// DHCPv6, reachable and retransmit times unspecified; the source link-layer address option
/// when the interface's MAC is known. The kernel fills in the checksum.
pub fn advertisement(own_mac: Option<MacAddr>) -> Vec<u8> {
    let mut out = vec![
        ROUTER_ADVERTISEMENT,
        0, // code
        0,
        0, // checksum
        0, // current hop limit: unspecified
        0, // M = O = 0
        0,
        0, // router lifetime: 0, not a default router
        0,
        0,
        0,
        0, // reachable time: unspecified
        0,
        0,
        0,
        0, // retransmit timer: unspecified
    ];
    if let Some(mac) = own_mac {
        out.extend_from_slice(&[OPT_SOURCE_LL, 1]);
        out.extend_from_slice(&mac.0);
    }
    out
}

/// The answering socket of one DHCP interface.
#[derive(Debug)]
pub struct Responder {
    /// The raw ICMPv6 socket (see [`crate::net::icmpv6_on_interface`]).
    pub socket: socket2::Socket,
    /// The interface.
    pub iface: String,
    /// Its index: the scope of the link-local addresses answered.
    pub ifindex: u32,
    /// Its MAC, for the source link-layer address option.
    pub mac: Option<MacAddr>,
}

impl Responder {
    /// The responder for `iface`.
    pub fn open(iface: &str) -> io::Result<Responder> {
        let (socket, ifindex) = crate::net::icmpv6_on_interface(iface)?;
        Ok(Responder {
            socket,
            iface: iface.to_string(),
            ifindex,
            mac: crate::net::mac_of(iface).map(MacAddr),
        })
    }

    /// Another handle on the same socket, for a run of [`run`] started again.
    pub fn dup(&self) -> io::Result<Responder> {
        Ok(Responder {
            socket: self.socket.try_clone()?,
            iface: self.iface.clone(),
            ifindex: self.ifindex,
            mac: self.mac,
        })
    }
}

/// One received ICMPv6 message: its length, sender and hop limit.
fn receive(
    socket: &tokio::net::UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, Ipv6Addr, Option<i32>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!(i32);
    let msg = nix::sys::socket::recvmsg::<SockaddrIn6>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )?;
    let mut hop_limit = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv6HopLimit(h) = c {
            hop_limit = Some(h);
        }
    }
    let src = msg.address.map_or(Ipv6Addr::UNSPECIFIED, |a| a.ip());
    Ok((msg.bytes, src, hop_limit))
}

/// Answer the router solicitations that come in on `responder` until `token` is cancelled.
/// A receive error ends the run (the supervisor starts it again); a failed send is logged.
pub async fn run(
    service: Arc<Service>,
    responder: Responder,
    token: CancellationToken,
) -> io::Result<()> {
    let Responder {
        socket,
        iface,
        ifindex,
        mac: own_mac,
    } = responder;
    // Tokio's datagram socket drives the raw socket's readiness (its `recvmsg` and `sendto`
    // are the system calls a raw socket takes), without `unsafe` registration.
    let socket = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
    let answer = advertisement(own_mac);
    let mut buf = [0u8; 1500];
    loop {
        let (len, src, hop_limit) = tokio::select! {
            () = token.cancelled() => return Ok(()),
            got = socket.async_io(tokio::io::Interest::READABLE, || receive(&socket, &mut buf)) => got?,
        };
        let rs = match parse(&buf[..len], src, hop_limit) {
            Ok(rs) => rs,
            Err(NotSolicitation::Other(_)) => continue,
            Err(NotSolicitation::Invalid(why)) => {
                tracing::debug!(%iface, %src, why, "dropping router solicitation");
                service.metrics().router_solicitation("dropped");
                continue;
            }
        };
        let Some(mac) = rs.mac.filter(|_| is_link_local(src)) else {
            // No MAC to look up, or no link-local address to answer to.
            service.metrics().router_solicitation("ignored");
            continue;
        };
        match service.solicited(mac) {
            Solicited::Ignore => {
                service.metrics().router_solicitation("ignored");
                continue;
            }
            Solicited::RateLimited => {
                service.metrics().router_solicitation("rate_limited");
                continue;
            }
            Solicited::Answer => {}
        }
        let to = SocketAddrV6::new(src, 0, 0, ifindex);
        match socket.send_to(&answer, to).await {
            Ok(_) => {
                tracing::debug!(%iface, %mac, %src, "answered a router solicitation: no IPv6 router here");
                service.metrics().router_solicitation("answered");
            }
            Err(e) => {
                tracing::warn!(%iface, %mac, %src, error = %e, "cannot send a router advertisement");
                service.metrics().router_solicitation("dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    fn link_local() -> Ipv6Addr {
        "fe80::5054:ff:fe12:3456".parse().unwrap()
    }

    /// A router solicitation as iPXE sends it: the header and its source link-layer address.
    fn ipxe_rs(mac: MacAddr) -> Vec<u8> {
        let mut m = vec![ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0, OPT_SOURCE_LL, 1];
        m.extend_from_slice(&mac.0);
        m
    }

    #[test]
    fn the_mac_comes_from_the_option_else_from_the_eui64_address() {
        let other = MacAddr([2, 0, 0, 0, 0, 9]);
        // The option wins over the address.
        assert_eq!(
            parse(&ipxe_rs(other), link_local(), Some(255)),
            Ok(Solicitation { mac: Some(other) })
        );
        // rdisc6 and Linux send no option: the EUI-64 address tells.
        let bare = [ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            parse(&bare, link_local(), Some(255)),
            Ok(Solicitation { mac: Some(MAC) })
        );
        // A stable-privacy address tells nothing.
        let private: Ipv6Addr = "fe80::1c2d:3e4f:5a6b:7c8d".parse().unwrap();
        assert_eq!(
            parse(&bare, private, Some(255)),
            Ok(Solicitation { mac: None })
        );
        assert_eq!(
            eui64_mac("2001:db8::5054:ff:fe12:3456".parse().unwrap()),
            None
        );
    }

    #[test]
    fn malformed_and_off_link_solicitations_are_refused() {
        let ll = link_local();
        let invalid = |msg: &[u8], hop: Option<i32>| {
            matches!(parse(msg, ll, hop), Err(NotSolicitation::Invalid(_)))
        };
        let good = ipxe_rs(MAC);
        assert!(parse(&good, ll, Some(255)).is_ok());
        // Routed to us from elsewhere, or the hop limit unknown.
        assert!(invalid(&good, Some(64)));
        assert!(invalid(&good, None));
        // Too short, wrong code.
        assert!(invalid(&good[..7], Some(255)));
        assert!(invalid(&[], Some(255)));
        let mut code = good.clone();
        code[1] = 1;
        assert!(invalid(&code, Some(255)));
        // An option of length 0 (would loop forever), past the end, or cut short.
        let mut zero = good.clone();
        zero[9] = 0;
        assert!(invalid(&zero, Some(255)));
        let mut long = good.clone();
        long[9] = 2;
        assert!(invalid(&long, Some(255)));
        let mut cut = good.clone();
        cut.push(OPT_SOURCE_LL);
        assert!(invalid(&cut, Some(255)));
        // A source link-layer address from the unspecified address.
        assert!(matches!(
            parse(&good, Ipv6Addr::UNSPECIFIED, Some(255)),
            Err(NotSolicitation::Invalid(_))
        ));
        // Other ICMPv6 messages are not solicitations, whatever their hop limit.
        assert_eq!(
            parse(&[135, 0, 0, 0], ll, Some(255)),
            Err(NotSolicitation::Other(135))
        );
        // Unknown options are skipped (RFC 4861 §6.1.1).
        let mut unknown = good.clone();
        unknown.extend_from_slice(&[200, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse(&unknown, ll, Some(255)),
            Ok(Solicitation { mac: Some(MAC) })
        );
    }

    #[test]
    fn no_bytes_make_the_parser_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let mut msg: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            if let Some(first) = msg.first_mut() {
                *first = ROUTER_SOLICITATION;
            }
            let _ = parse(&msg, link_local(), Some(255));
        }
    }

    #[test]
    fn the_advertisement_offers_nothing_and_names_no_router() {
        let ra = advertisement(Some(MAC));
        assert_eq!(ra.len(), 24);
        assert_eq!(ra[0], ROUTER_ADVERTISEMENT);
        assert_eq!(ra[1], 0);
        assert_eq!(ra[5] & 0xc0, 0, "neither M nor O");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(&ra[16..18], &[OPT_SOURCE_LL, 1]);
        assert_eq!(&ra[18..24], &MAC.0);
        assert_eq!(advertisement(None).len(), 16);
    }

    #[test]
    fn answering_is_wanted_unless_off_or_the_boot_goes_over_ipv6() {
        let config = |extra: &str| {
            let text = format!(
                "[http]\nlisten = \"10.0.0.2:8080\"\n[dhcp]\nmode = \"proxy\"\ninterfaces = [\"vs0\"]\n{extra}"
            );
            Config::parse(std::path::Path::new("/k.toml"), &text).unwrap()
        };
        assert_eq!(wanted(&config("")), Ok(()));
        assert!(wanted(&config("answer_router_solicitations = false\n")).is_err());
        let v6 = "[server]\nbase_url = \"http://[fd00::2]:8080\"\nadvertise_ip = \"10.0.0.2\"\n";
        let text = format!("{v6}[dhcp]\nmode = \"proxy\"\ninterfaces = [\"vs0\"]\n");
        let c = Config::parse(std::path::Path::new("/k.toml"), &text).unwrap();
        assert!(wanted(&c).unwrap_err().contains("IPv6"));
        assert_eq!(
            wanted(&Config::parse(std::path::Path::new("/k.toml"), "").unwrap()),
            Err("DHCP is off")
        );
    }

    #[test]
    fn only_link_local_addresses_are_answered() {
        assert!(is_link_local(link_local()));
        assert!(!is_link_local("2001:db8::1".parse().unwrap()));
        assert!(!is_link_local(Ipv6Addr::UNSPECIFIED));
    }
}

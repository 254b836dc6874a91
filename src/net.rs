//! Socket builders and interface facts.
//!
//! DHCP must answer only on the interfaces the config names: each gets its own socket bound to
//! `0.0.0.0:67` (a socket bound to a unicast address never sees 255.255.255.255 datagrams)
//! and restricted to the device with `SO_BINDTODEVICE`. A missing interface is an error, never
//! a fallback to every interface.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// A UDP socket on `0.0.0.0:port` that receives and sends only through `iface`, with
/// broadcast enabled (replies to clients without an address are broadcast).
pub fn udp_on_interface(iface: &str, port: u16) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sock.bind_device(Some(iface.as_bytes())).map_err(|e| {
        io::Error::new(e.kind(), format!("cannot bind to interface {iface:?}: {e} (does it exist? binding needs root or CAP_NET_RAW)"))
    })?;
    sock.set_reuse_address(true)?;
    sock.set_broadcast(true)?;
    sock.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind UDP port {port} on {iface}: {e}"),
            )
        })?;
    sock.set_nonblocking(true)?;
    hold_bursts(&sock);
    Ok(sock.into())
}

/// Bytes of datagrams a service's socket may hold while its thread is busy (the kernel
/// reserves nothing until they arrive). The default, `net.core.rmem_default` (208 KiB), holds
/// about a hundred DHCP packets: a rack powering on, or a load generator's burst, then loses
/// DISCOVERs whose machines try again only after 4 s. With 4 MiB (8 MiB as the kernel counts
/// it) a few thousand wait instead.
pub const BURST_BUFFER: usize = 4 << 20;

/// Give `sock` a [`BURST_BUFFER`] receive buffer: beyond `net.core.rmem_max` where the process
/// may (`SO_RCVBUFFORCE`, CAP_NET_ADMIN), else up to it. Returns the size the kernel reports
/// (twice what it accounts datagrams against); a failure only leaves the default.
pub fn hold_bursts(sock: &impl std::os::fd::AsFd) -> usize {
    let sock = socket2::SockRef::from(sock);
    let forced = nix::sys::socket::setsockopt(
        &*sock,
        nix::sys::socket::sockopt::RcvBufForce,
        &BURST_BUFFER,
    );
    if forced.is_err() {
        let _ = sock.set_recv_buffer_size(BURST_BUFFER);
    }
    let size = sock.recv_buffer_size().unwrap_or(0);
    tracing::debug!(
        bytes = size,
        forced = forced.is_ok(),
        "socket receive buffer"
    );
    size
}

/// A raw ICMPv6 socket that receives and sends only through `iface`, in the all-routers group
/// (`ff02::2`, where router solicitations go), sending with hop limit 255 as NDP requires and
/// telling each received message's hop limit; with the interface's index.
pub fn icmpv6_on_interface(iface: &str) -> io::Result<(Socket, u32)> {
    let index = nix::net::if_::if_nametoindex(iface).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("no interface {iface:?}: {e}"),
        )
    })?;
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    sock.bind_device(Some(iface.as_bytes()))?;
    sock.set_unicast_hops_v6(255)?;
    sock.set_multicast_hops_v6(255)?;
    sock.set_multicast_loop_v6(false)?;
    sock.set_recv_hoplimit_v6(true)?;
    let all_routers = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    sock.join_multicast_v6(&all_routers, index).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot join ff02::2 on {iface}: {e} (is IPv6 off on it?)"),
        )
    })?;
    sock.set_nonblocking(true)?;
    Ok((sock, index))
}

/// The MAC address of an interface (`None` for one without an Ethernet address).
pub fn mac_of(iface: &str) -> Option<[u8; 6]> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs.filter(|a| a.interface_name == iface).find_map(|a| {
        a.address
            .and_then(|s| s.as_link_addr().and_then(|l| l.addr()))
    })
}

/// The IPv4 addresses of an interface.
pub fn ipv4_addrs(iface: &str) -> io::Result<Vec<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| {
            a.address
                .and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip()))
        })
        .collect())
}

/// The IPv4 broadcast addresses of an interface.
pub fn ipv4_broadcasts(iface: &str) -> io::Result<Vec<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| {
            a.broadcast
                .and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip()))
        })
        .collect())
}

/// A retry pause that doubles from `first` up to `max`, and how long the failures have lasted:
/// a socket that keeps failing is retried without spinning, and given up on after a while.
/// On tokio's clock, so paused-time tests drive it.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: std::time::Duration,
    max: std::time::Duration,
    current: std::time::Duration,
    since: Option<tokio::time::Instant>,
}

impl Backoff {
    /// Pauses from `first`, doubling to `max`.
    pub fn new(first: std::time::Duration, max: std::time::Duration) -> Backoff {
        Backoff {
            first,
            max,
            current: first,
            since: None,
        }
    }

    /// One more failure: the pause before the next try.
    pub fn failed(&mut self) -> std::time::Duration {
        self.since.get_or_insert_with(tokio::time::Instant::now);
        let pause = self.current;
        self.current = (self.current * 2).min(self.max);
        pause
    }

    /// A success: the next failure starts over.
    pub fn reset(&mut self) {
        self.current = self.first;
        self.since = None;
    }

    /// How long the failures have lasted (zero without one).
    pub fn failing_for(&self) -> std::time::Duration {
        self.since
            .map_or(std::time::Duration::ZERO, |t| t.elapsed())
    }
}

/// Receives datagrams for a service's socket loop: a receive error is retried after a pause
/// that doubles from 10 ms to 1 s (a broken socket does not spin a core), and one that lasts
/// [`Receiver::GIVE_UP`] with no good datagram in between is handed back as the service's end.
#[derive(Debug)]
pub struct Receiver {
    socket: std::sync::Arc<tokio::net::UdpSocket>,
    backoff: Backoff,
    /// What the socket serves, for the log (`DHCP on vs0:67`, `TFTP`).
    what: String,
    /// Receive errors so far.
    errors: u64,
}

/// A socket that kept failing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: receiving fails for {} s: {source}", .failing_for.as_secs())]
pub struct ReceiveError {
    /// What the socket serves.
    pub what: String,
    /// How long it failed.
    pub failing_for: std::time::Duration,
    /// The last error.
    pub source: io::Error,
}

impl Receiver {
    /// How long a receive error may last before the loop ends.
    pub const GIVE_UP: std::time::Duration = std::time::Duration::from_secs(60);

    /// A receiver on `socket`, serving `what`.
    pub fn new(socket: std::sync::Arc<tokio::net::UdpSocket>, what: impl Into<String>) -> Receiver {
        Receiver {
            socket,
            backoff: Backoff::new(
                std::time::Duration::from_millis(10),
                std::time::Duration::from_secs(1),
            ),
            what: what.into(),
            errors: 0,
        }
    }

    /// Receive errors so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// The next datagram into `buf`: its length and sender; `Ok(None)` once `token` is
    /// cancelled.
    pub async fn recv(
        &mut self,
        buf: &mut [u8],
        token: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<(usize, SocketAddr)>, ReceiveError> {
        loop {
            let got = tokio::select! {
                _ = token.cancelled() => return Ok(None),
                got = self.socket.recv_from(buf) => got,
            };
            match got {
                Ok(x) => {
                    self.backoff.reset();
                    return Ok(Some(x));
                }
                Err(source) => {
                    self.errors += 1;
                    let failing_for = self.backoff.failing_for();
                    if failing_for > Self::GIVE_UP {
                        return Err(ReceiveError {
                            what: self.what.clone(),
                            failing_for,
                            source,
                        });
                    }
                    let pause = self.backoff.failed();
                    tracing::warn!(error = %source, retry_in = ?pause, "{}: receive failed", self.what);
                    tokio::select! {
                        _ = token.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams of `size` bytes sent to `to` as fast as they go, none read: how many wait.
    fn burst_held(to: &UdpSocket, count: usize, size: usize) -> usize {
        let from = UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload = vec![0x5a; size];
        for _ in 0..count {
            from.send_to(&payload, to.local_addr().unwrap()).unwrap();
        }
        to.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1500];
        let mut held = 0;
        while to.recv(&mut buf).is_ok() {
            held += 1;
        }
        held
    }

    #[test]
    fn a_burst_of_dhcp_sized_datagrams_waits_in_the_receive_buffer() {
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let service = UdpSocket::bind("127.0.0.1:0").unwrap();
        let size = hold_bursts(&service);
        if size < 2 * BURST_BUFFER {
            eprintln!(
                "SKIP: only {size} bytes of receive buffer (needs CAP_NET_ADMIN or net.core.rmem_max >= {BURST_BUFFER})"
            );
            return;
        }
        // A rack's worth of DISCOVERs (300 bytes each, as a PXE ROM's) at once: the kernel's
        // default buffer drops most of them, the service's holds them all.
        let default_held = burst_held(&plain, 3000, 300);
        assert!(
            default_held < 3000,
            "{default_held}: the default holds all?"
        );
        assert_eq!(burst_held(&service, 3000, 300), 3000);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_its_cap_and_starts_over_after_a_success() {
        use std::time::Duration;
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        assert_eq!(b.failing_for(), Duration::ZERO);
        let pauses: Vec<u128> = (0..5).map(|_| b.failed().as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 50, 50]);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.failing_for(), Duration::from_secs(3));
        b.reset();
        assert_eq!(b.failing_for(), Duration::ZERO);
        assert_eq!(b.failed(), Duration::from_millis(10));
    }

    /// A receive error (here: ICMP port unreachable on a connected socket) is retried after a
    /// pause, the next datagram is delivered, and cancelling ends the loop.
    #[tokio::test]
    async fn a_receive_error_is_retried_and_cancelling_ends_the_loop() {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = gone.local_addr().unwrap();
        drop(gone);
        sock.connect(peer).await.unwrap();
        sock.send(b"hello?").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let sock = std::sync::Arc::new(sock);
        let mut receiver = Receiver::new(sock.clone(), "test");
        let token = tokio_util::sync::CancellationToken::new();
        let me = sock.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let back = std::net::UdpSocket::bind(peer).unwrap();
            back.send_to(b"answer", me).unwrap();
        });
        let mut buf = [0u8; 64];
        let got = receiver.recv(&mut buf, &token).await.unwrap();
        assert_eq!(
            got.map(|(n, from)| (&buf[..n], from)),
            Some((&b"answer"[..], peer))
        );
        assert_eq!(
            receiver.errors(),
            1,
            "the refused send came back as one receive error"
        );
        sender.await.unwrap();
        token.cancel();
        assert!(receiver.recv(&mut buf, &token).await.unwrap().is_none());
    }

    #[test]
    fn loopback_has_an_address_and_unknown_interfaces_are_errors() {
        assert!(ipv4_addrs("lo").unwrap().contains(&Ipv4Addr::LOCALHOST));
        assert!(ipv4_addrs("no-such-if0").unwrap().is_empty());
        let err = udp_on_interface("no-such-if0", 0).unwrap_err();
        assert!(err.to_string().contains("no-such-if0"), "{err}");
    }
}

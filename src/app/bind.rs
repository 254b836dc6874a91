//! Binding every socket the config asks for, once, before anything is served: a port conflict
//! or a missing interface is a start-up error, and tests ask for port 0 and read the bound
//! address from the `listening for … on ADDR` log lines.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, UdpSocket};

use crate::config::{Config, DhcpMode, IpAddr};
use crate::dhcp::server::Listener;
use crate::dhcp::service::Ingress;

/// Sockets bound before anything is served.
#[derive(Debug)]
pub struct Bound {
    /// The HTTP listener.
    pub http: TcpListener,
    /// DHCP sockets: per configured interface, port 67 (and 4011 in proxy mode).
    pub dhcp: Vec<Listener>,
    /// Router-solicitation responders: one per DHCP interface that has IPv6.
    pub ndp: Vec<crate::dhcp::ndp::Responder>,
    /// The TFTP socket, when enabled.
    pub tftp: Option<UdpSocket>,
    /// DNS: UDP and TCP on one port, when enabled.
    pub dns: Option<(UdpSocket, TcpListener)>,
}

impl Bound {
    /// Bind every socket the config asks for.
    pub async fn bind(config: &Config) -> anyhow::Result<Bound> {
        let http = crate::http::server::listen(config.http.listen)
            .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
        let mut dhcp = Vec::new();
        let mut ndp = Vec::new();
        let ports: &[u16] = match config.dhcp.mode {
            DhcpMode::Off => &[],
            DhcpMode::Full => &[crate::dhcp::reply::SERVER_PORT],
            DhcpMode::Proxy => &[
                crate::dhcp::reply::SERVER_PORT,
                crate::dhcp::proxy::PXE_PORT,
            ],
        };
        for iface in &config.dhcp.interfaces {
            let addrs = crate::net::ipv4_addrs(iface)?;
            for &port in ports {
                let std_sock = crate::net::udp_on_interface(iface, port)
                    .with_context(|| format!("DHCP on interface {iface}"))?;
                dhcp.push(Listener {
                    socket: Arc::new(UdpSocket::from_std(std_sock)?),
                    ingress: Ingress {
                        iface: iface.clone(),
                        port,
                        addrs: addrs.clone(),
                    },
                });
            }
            match crate::dhcp::ndp::wanted(config) {
                Ok(()) => match crate::dhcp::ndp::Responder::open(iface) {
                    Ok(r) => ndp.push(r),
                    // Not a start-up error: iPXE only boots slower.
                    Err(e) => {
                        tracing::warn!(iface = %iface, error = %e, "cannot answer IPv6 router solicitations here: iPXE on this LAN waits about 16 s for an IPv6 router on every boot")
                    }
                },
                Err(why) if config.dhcp.mode != DhcpMode::Off => {
                    tracing::info!(iface = %iface, "not answering IPv6 router solicitations: {why}")
                }
                Err(_) => {}
            }
            if addrs.is_empty() {
                let advertised = matches!(config.server.advertise_ip, Some(IpAddr::V4(_)));
                if config.dhcp.mode == DhcpMode::Proxy && !advertised {
                    anyhow::bail!(
                        "proxy DHCP on {iface}: the interface has no IPv4 address to offer as the boot server; give it one or set server.advertise_ip"
                    );
                }
                tracing::warn!(iface = %iface, "interface has no IPv4 address: only relayed requests can be matched to a subnet");
            }
        }
        let tftp = if config.tftp.enabled {
            let sock = UdpSocket::bind(config.tftp.listen)
                .await
                .with_context(|| format!("cannot listen for TFTP on {}", config.tftp.listen))?;
            // A storm's read requests arrive together, as its DISCOVERs do.
            crate::net::hold_bursts(&sock);
            Some(sock)
        } else {
            None
        };
        let dns = if config.dns.enabled {
            let udp = UdpSocket::bind(config.dns.listen)
                .await
                .with_context(|| format!("cannot listen for DNS on {} (UDP)", config.dns.listen))?;
            crate::net::hold_bursts(&udp);
            // Port 0: TCP on the port UDP got.
            let addr = udp.local_addr()?;
            let tcp = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for DNS on {addr} (TCP)"))?;
            Some((udp, tcp))
        } else {
            None
        };
        Ok(Bound {
            http,
            dhcp,
            ndp,
            tftp,
            dns,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// Another handle on the same UDP socket (`dup`), for a service that is started again.
pub(super) fn dup_udp(s: &UdpSocket) -> std::io::Result<UdpSocket> {
    let std = socket2::SockRef::from(s).try_clone()?;
    UdpSocket::from_std(std.into())
}

/// Another handle on the same listening TCP socket (`dup`).
pub(super) fn dup_tcp(s: &TcpListener) -> std::io::Result<TcpListener> {
    let std = socket2::SockRef::from(s).try_clone()?;
    TcpListener::from_std(std.into())
}

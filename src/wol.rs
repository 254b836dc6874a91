//! Wake-on-LAN: magic packets as UDP broadcasts and as raw Ethernet frames (EtherType 0x0842).
//!
//! A magic packet is 6 × 0xFF, then the target MAC 16 times (102 bytes), then the SecureOn
//! password (4 or 6 bytes) when the NIC wants one. [`Waker::wake`] sends it `repeat` times:
//! as UDP from the configured interface to its broadcast address (and any subnet-directed
//! addresses) on each port, and as a raw frame to ff:ff:ff:ff:ff:ff through the interface
//! (pnet, on a blocking thread). Packets leave only through the named interface.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::config::WolConfig;
use crate::mac::MacAddr;

/// The EtherType of raw Wake-on-LAN frames.
pub const ETHERTYPE_WOL: u16 = 0x0842;
/// Pause between repeats.
const REPEAT_GAP: Duration = Duration::from_millis(100);

/// The magic packet for `mac`, with the SecureOn password appended when given.
pub fn magic_packet(mac: MacAddr, password: Option<&[u8]>) -> Vec<u8> {
    let mut p = vec![0xff; 6];
    for _ in 0..16 {
        p.extend_from_slice(&mac.0);
    }
    if let Some(pw) = password {
        p.extend_from_slice(pw);
    }
    p
}

/// A SecureOn password that is neither 6 bytes like a MAC nor 4 like an IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "wol.password {0:?}: 6 bytes written like a MAC (aa:bb:cc:dd:ee:ff) or 4 like an IPv4 address"
)]
pub struct BadPassword(String);

/// Parse a SecureOn password: 6 bytes as a MAC (`aa:bb:cc:dd:ee:ff`) or 4 as an IPv4 address.
pub fn parse_password(text: &str) -> Result<Vec<u8>, BadPassword> {
    if let Ok(mac) = text.parse::<MacAddr>() {
        return Ok(mac.0.to_vec());
    }
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(ip.octets().to_vec());
    }
    Err(BadPassword(text.to_string()))
}

/// The `[wol]` problems `kindling check` reports.
pub fn check_config(config: &WolConfig) -> Vec<crate::config::Issue> {
    config
        .password
        .as_deref()
        .and_then(|pw| parse_password(pw).err())
        .map(|e| crate::config::Issue::new("wol.password", e.to_string()))
        .into_iter()
        .collect()
}

/// What one wake sent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sent {
    /// UDP destinations.
    pub udp: Vec<String>,
    /// Whether raw frames went out.
    pub raw: bool,
    /// How many times each was sent.
    pub repeat: u32,
}

/// Sends magic packets through one interface.
#[derive(Debug, Clone)]
pub struct Waker {
    iface: String,
    config: WolConfig,
    password: Option<Vec<u8>>,
}

impl Waker {
    /// A waker for the configured interface, or `None` when `[wol] interface` is unset.
    pub fn new(config: &WolConfig) -> Result<Option<Waker>, BadPassword> {
        let Some(iface) = config.interface.clone() else {
            return Ok(None);
        };
        let password = config.password.as_deref().map(parse_password).transpose()?;
        Ok(Some(Waker {
            iface,
            config: config.clone(),
            password,
        }))
    }

    /// Send the magic packet for `mac`: UDP broadcasts and (if configured) raw frames, each
    /// `repeat` times.
    pub async fn wake(&self, mac: MacAddr) -> io::Result<Sent> {
        let payload = magic_packet(mac, self.password.as_deref());
        let mut targets: Vec<Ipv4Addr> = crate::net::ipv4_broadcasts(&self.iface)?;
        if targets.is_empty() {
            targets.push(Ipv4Addr::BROADCAST);
        }
        targets.extend(self.config.directed.iter().copied());
        let socket =
            tokio::net::UdpSocket::from_std(crate::net::udp_on_interface(&self.iface, 0)?)?;
        let mut udp = Vec::new();
        for addr in &targets {
            for port in &self.config.ports {
                udp.push(SocketAddr::from((*addr, *port)));
            }
        }
        let repeat = self.config.repeat.max(1);
        for i in 0..repeat {
            if i > 0 {
                tokio::time::sleep(REPEAT_GAP).await;
            }
            for to in &udp {
                socket.send_to(&payload, to).await?;
            }
            if self.config.raw {
                let (iface, payload) = (self.iface.clone(), payload.clone());
                tokio::task::spawn_blocking(move || send_raw(&iface, &payload))
                    .await
                    .map_err(io::Error::other)??;
            }
        }
        Ok(Sent {
            udp: udp.iter().map(ToString::to_string).collect(),
            raw: self.config.raw,
            repeat,
        })
    }
}

/// One raw Ethernet frame: broadcast destination, the interface's MAC, EtherType 0x0842.
fn send_raw(iface: &str, payload: &[u8]) -> io::Result<()> {
    use pnet_datalink::Channel;
    let nic = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == iface)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {iface}")))?;
    let src = nic.mac.map_or([0; 6], |m| m.octets());
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ETHERTYPE_WOL.to_be_bytes());
    frame.extend_from_slice(payload);
    match pnet_datalink::channel(&nic, pnet_datalink::Config::default())? {
        Channel::Ethernet(mut tx, _) => tx
            .send_to(&frame, None)
            .unwrap_or_else(|| Err(io::Error::other("no room to send")))
            .map_err(|e| io::Error::new(e.kind(), format!("raw frame on {iface}: {e}"))),
        _ => Err(io::Error::other("not an Ethernet channel")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_packets_are_6_ff_and_16_macs_then_the_password() {
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let p = magic_packet(mac, None);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xff; 6]);
        for chunk in p[6..].chunks(6) {
            assert_eq!(chunk, &mac.0);
        }
        let pw = parse_password("01:02:03:04:05:06").unwrap();
        let p = magic_packet(mac, Some(&pw));
        assert_eq!(p.len(), 108);
        assert_eq!(&p[102..], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(parse_password("10.0.0.1").unwrap(), [10, 0, 0, 1]);
        assert!(parse_password("secret").is_err());
    }
}

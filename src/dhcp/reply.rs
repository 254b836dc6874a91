//! Building DHCP replies that real PXE ROMs accept: pure functions over dhcproto messages.
//!
//! - [`client_mac`] and [`client_info`]: what a request says, read defensively (dhcproto's
//!   `chaddr()` slices by the packet's own `hlen` and panics beyond 16: check first).
//! - [`destination`]: RFC 2131 §4.1 reply addressing in one place.
//! - [`set_boot`]: siaddr, the `file` field and options 66/67 set consistently from a
//!   classifier decision, option 60 echoed (`PXEClient`/`HTTPClient`); [`set_no_proxydhcp`]
//!   (iPXE option 175.176) so iPXE does not wait ~3 s for proxy offers in full mode.
//! - [`encode_padded`]: encode, then pad to the 300-byte BOOTP minimum some ROMs insist on
//!   (dhcproto does not pad).

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Encodable, Encoder};

use crate::mac::MacAddr;
use crate::pxe::{BootFile, ClientInfo, Decision, MAX_BOOT_FILE_LEN};

/// The BOOTP minimum message size (RFC 951/1542); shorter replies are dropped by some ROMs.
pub const BOOTP_MIN_LEN: usize = 300;
/// DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;

/// Decode a datagram, treating a decoder panic as a malformed packet.
///
/// dhcproto 0.15's option decoder carries `debug_assert!`s on option lengths (and a `len - 1`
/// that underflows on a zero-length option), so a single crafted packet panics it in debug
/// builds; release builds skip the asserts but the server must not depend on the build mode.
/// The decoder is pure, so catching its unwind loses nothing.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    use dhcproto::{Decodable, Decoder};
    match std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes))) {
        Ok(Ok(msg)) => Ok(msg),
        Ok(Err(e)) => Err(DecodeError::Malformed(e)),
        Err(_) => Err(DecodeError::LengthChecks),
    }
}

/// Why a datagram is not a DHCP message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The decoder refused it.
    #[error("malformed DHCP packet: {0}")]
    Malformed(dhcproto::error::DecodeError),
    /// The decoder's length assertions fired.
    #[error("malformed DHCP packet (rejected by the decoder's length checks)")]
    LengthChecks,
}

/// The client's Ethernet MAC, or `None` when the packet is not Ethernet or `hlen` is not 6.
pub fn client_mac(msg: &Message) -> Option<MacAddr> {
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return None;
    }
    let bytes: [u8; 6] = msg.chaddr().try_into().ok()?;
    Some(MacAddr(bytes))
}

/// Options 60, 77, 93 and 175 of a request, for the classifier.
pub fn client_info(msg: &Message) -> ClientInfo {
    let opts = msg.opts();
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        // Kept in the machine's record and shown to operators: printable, at most 128.
        Some(DhcpOption::ClassIdentifier(v)) => Some(crate::diag::printable(
            &String::from_utf8_lossy(&v[..v.len().min(128)]),
        )),
        _ => None,
    };
    let user_class = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(v)) => Some(v.clone()),
        _ => None,
    };
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => None,
    };
    ClientInfo {
        arch,
        vendor_class,
        user_class,
        ipxe_options: opts.get(OptionCode::Unknown(175)).is_some(),
    }
}

/// Option 82 (relay agent information, RFC 3046) as selector labels: `circuit_id` and
/// `remote_id`, as text when printable, else as hex.
pub fn relay_labels(msg: &Message) -> Vec<(String, String)> {
    use dhcproto::v4::relay::{RelayCode, RelayInfo};
    let Some(DhcpOption::RelayAgentInformation(info)) =
        msg.opts().get(OptionCode::RelayAgentInformation)
    else {
        return Vec::new();
    };
    let text = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() || c == ' ') => {
            s.to_string()
        }
        _ => b.iter().map(|x| format!("{x:02x}")).collect(),
    };
    let mut out = Vec::new();
    if let Some(RelayInfo::AgentCircuitId(id)) = info.get(RelayCode::AgentCircuitId) {
        out.push(("circuit_id".to_string(), text(id)));
    }
    if let Some(RelayInfo::AgentRemoteId(id)) = info.get(RelayCode::AgentRemoteId) {
        out.push(("remote_id".to_string(), text(id)));
    }
    out
}

/// Copy option 82 from the request into the reply: a relay agent strips it on the way back
/// and needs it to find the client's port (RFC 3046 §2.2).
pub fn echo_relay_info(req: &Message, reply: &mut Message) {
    if let Some(o @ DhcpOption::RelayAgentInformation(_)) =
        req.opts().get(OptionCode::RelayAgentInformation)
    {
        reply.opts_mut().insert(o.clone());
    }
}

/// A BOOTREPLY skeleton for `req`: same xid, flags, chaddr and giaddr, message type `kind`,
/// option 82 echoed.
pub fn reply_base(req: &Message, kind: MessageType, yiaddr: Ipv4Addr) -> Message {
    let mut msg = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        &[],
    );
    msg.set_opcode(Opcode::BootReply);
    msg.set_htype(HType::Eth);
    if let Some(mac) = client_mac(req) {
        msg.set_chaddr(&mac.0);
    }
    msg.set_flags(req.flags());
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    echo_relay_info(req, &mut msg);
    msg
}

/// Echo option 97 (client machine GUID): PXE clients expect it back.
pub fn echo_guid(req: &Message, reply: &mut Message) {
    if let Some(guid @ DhcpOption::ClientMachineIdentifier(_)) =
        req.opts().get(OptionCode::ClientMachineIdentifier)
    {
        reply.opts_mut().insert(guid.clone());
    }
}

/// Where a reply goes (RFC 2131 §4.1): to the relay when `giaddr` is set; a DHCPNAK without a
/// relay is broadcast; to `ciaddr` when the client has an address; otherwise broadcast (the
/// client has no address yet and we do not inject ARP entries).
pub fn destination(req: &Message, reply: MessageType) -> SocketAddrV4 {
    if !req.giaddr().is_unspecified() {
        return SocketAddrV4::new(req.giaddr(), SERVER_PORT);
    }
    if reply != MessageType::Nak && !req.ciaddr().is_unspecified() {
        return SocketAddrV4::new(req.ciaddr(), CLIENT_PORT);
    }
    SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
}

/// Put the classifier's decision into a reply. `server_ip` is Kindling's address on the
/// client's network (TFTP next-server).
///
/// Option 60 is echoed only for `HTTPClient` (UEFI HTTP boot needs it). A `PXEClient` echo
/// without option 43 makes EDK2/OVMF treat the offer as a "BINL" offer and ask port 4011
/// for the file, so a full-mode server answers PXE ROMs as a plain DHCP server with a boot
/// file does. Proxy mode adds `PXEClient` itself ([`super::proxy`]).
pub fn set_boot(reply: &mut Message, decision: &Decision, server_ip: Ipv4Addr) {
    if let Some(vc @ "HTTPClient") = decision.vendor_class {
        reply
            .opts_mut()
            .insert(DhcpOption::ClassIdentifier(vc.as_bytes().to_vec()));
    }
    match &decision.boot_file {
        Some(BootFile::Tftp(file)) => {
            reply.set_siaddr(server_ip);
            set_file(reply, file);
            reply.opts_mut().insert(DhcpOption::TFTPServerName(
                server_ip.to_string().into_bytes(),
            ));
            reply
                .opts_mut()
                .insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
        }
        Some(BootFile::Http(url)) => {
            // A UEFI HTTP boot client's loader URL names the machine: in proxy mode Kindling
            // does not know the address it will fetch from, and the fetch marks `firmware`.
            let url = match client_mac(reply) {
                Some(mac) if url.contains("/boot/") && !url.contains('?') => {
                    format!("{url}?mac={mac}")
                }
                _ => url.clone(),
            };
            reply.set_siaddr(server_ip);
            set_file(reply, &url);
            reply
                .opts_mut()
                .insert(DhcpOption::BootfileName(url.into_bytes()));
        }
        None => {}
    }
}

/// Tell iPXE not to wait ~3 s for proxy-DHCP offers: iPXE encapsulated option 175.176
/// `no-pxedhcp` = 1. Full mode only: in proxy mode Kindling *is* the proxy.
pub fn set_no_proxydhcp(reply: &mut Message) {
    reply
        .opts_mut()
        .insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1],
        )));
}

/// The `file` field holds 127 bytes and a NUL; dhcproto panics on longer names. Names are
/// checked at config load; a longer URL is sent in option 67 only.
fn set_file(reply: &mut Message, file: &str) {
    if file.len() <= MAX_BOOT_FILE_LEN {
        reply.set_fname_str(file);
    }
}

/// Encode a reply and pad it to [`BOOTP_MIN_LEN`] bytes.
pub fn encode_padded(msg: &Message) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    let mut buf = Vec::with_capacity(BOOTP_MIN_LEN.max(576));
    msg.encode(&mut Encoder::new(&mut buf))?;
    if buf.len() < BOOTP_MIN_LEN {
        buf.resize(BOOTP_MIN_LEN, 0);
    }
    Ok(buf)
}

#[cfg(test)]
pub(crate) mod tests {
    use dhcproto::v4::Architecture;
    use dhcproto::{Decodable, Decoder};

    use super::*;
    use crate::dhcp::testkit::{netboot_decision, pxe_request};
    use crate::pxe::{self, BootFiles, MachineBoot};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// A DHCPDISCOVER as OVMF's PXE client sends it.
    fn uefi_discover() -> Message {
        let mut m = pxe_request(
            MessageType::Discover,
            MacAddr(MAC),
            "PXEClient:Arch:00007:UNDI:003016",
            Architecture::X64,
            vec![0; 17],
        );
        m.set_xid(0x1234_5678);
        m
    }

    fn reply_to(req: &Message) -> Message {
        let mut r = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 0, 50),
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            req.chaddr(),
        );
        r.set_opcode(Opcode::BootReply);
        r.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        r
    }

    fn roundtrip(m: &Message) -> (usize, Message) {
        let bytes = encode_padded(m).unwrap();
        (
            bytes.len(),
            Message::decode(&mut Decoder::new(&bytes)).unwrap(),
        )
    }

    #[test]
    fn uefi_rom_gets_consistent_tftp_boot_fields_in_a_padded_reply() {
        let req = uefi_discover();
        assert_eq!(client_mac(&req), Some(MacAddr(MAC)));
        let info = client_info(&req);
        assert_eq!(info.arch, Some(7));
        let d = netboot_decision(&info, "http://10.0.0.2:8080");
        let mut r = reply_to(&req);
        set_boot(&mut r, &d, Ipv4Addr::new(10, 0, 0, 2));
        let (len, back) = roundtrip(&r);
        assert!(len >= BOOTP_MIN_LEN, "{len}");
        assert_eq!(back.siaddr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            back.fname_str().unwrap().unwrap().trim_end_matches('\0'),
            "ipxe.efi"
        );
        assert_eq!(
            back.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"ipxe.efi".to_vec()))
        );
        assert_eq!(
            back.opts().get(OptionCode::TFTPServerName),
            Some(&DhcpOption::TFTPServerName(b"10.0.0.2".to_vec()))
        );
        assert_eq!(
            back.opts().get(OptionCode::ClassIdentifier),
            None,
            "no PXEClient echo: OVMF would take the offer for a BINL offer and ask port 4011"
        );
        assert!(
            back.opts().get(OptionCode::Unknown(175)).is_none(),
            "not iPXE"
        );
    }

    #[test]
    fn ipxe_gets_the_script_url_and_no_pxedhcp() {
        let mut req = uefi_discover();
        req.opts_mut()
            .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        let d = netboot_decision(&client_info(&req), "http://10.0.0.2:8080");
        let mut r = reply_to(&req);
        set_boot(&mut r, &d, Ipv4Addr::new(10, 0, 0, 2));
        assert!(d.ipxe);
        set_no_proxydhcp(&mut r);
        let (_, back) = roundtrip(&r);
        assert_eq!(
            back.fname_str().unwrap().unwrap().trim_end_matches('\0'),
            "http://10.0.0.2:8080/boot.ipxe"
        );
        match back.opts().get(OptionCode::Unknown(175)) {
            Some(DhcpOption::Unknown(u)) => assert_eq!(u.data(), &[176, 1, 1]),
            other => panic!("no option 175: {other:?}"),
        }
    }

    #[test]
    fn long_urls_go_in_option_67_only() {
        let base = format!("http://{}.example:8080", "a".repeat(120));
        let mut req = uefi_discover();
        req.opts_mut()
            .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        let d = netboot_decision(&client_info(&req), &base);
        let mut r = reply_to(&req);
        set_boot(&mut r, &d, Ipv4Addr::new(10, 0, 0, 2));
        let (_, back) = roundtrip(&r);
        assert!(
            back.fname().is_none_or(|f| f.iter().all(|b| *b == 0)),
            "file field left empty"
        );
        assert_eq!(
            back.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(
                format!("{base}/boot.ipxe").into_bytes()
            ))
        );
    }

    #[test]
    fn no_boot_file_means_no_boot_fields() {
        let req = uefi_discover();
        let d = pxe::decide(
            &client_info(&req),
            &MachineBoot::NoProfile,
            &BootFiles::default(),
            "http://x",
        );
        let mut r = reply_to(&req);
        set_boot(&mut r, &d, Ipv4Addr::new(10, 0, 0, 2));
        let (_, back) = roundtrip(&r);
        assert_eq!(back.siaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(back.opts().get(OptionCode::BootfileName).is_none());
    }

    #[test]
    fn reply_addressing_follows_rfc2131() {
        let mut req = uefi_discover();
        assert_eq!(
            destination(&req, MessageType::Offer),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
        req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 50));
        assert_eq!(
            destination(&req, MessageType::Ack),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 68)
        );
        assert_eq!(
            destination(&req, MessageType::Nak),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
            "NAK broadcast"
        );
        req.set_giaddr(Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(
            destination(&req, MessageType::Ack),
            SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 67)
        );
        assert_eq!(
            destination(&req, MessageType::Nak),
            SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 67)
        );
    }

    #[test]
    fn hostile_hlen_does_not_panic() {
        let mut bytes = encode_padded(&uefi_discover()).unwrap();
        bytes[2] = 200; // hlen
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(
            client_mac(&m),
            None,
            "rejected before chaddr() can slice out of bounds"
        );
        bytes[2] = 6;
        bytes[1] = 6; // htype IEEE 802 (token ring), not Ethernet
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(client_mac(&m), None);
    }

    #[test]
    fn decoder_length_assertions_are_malformed_packets_not_crashes() {
        let good = encode_padded(&uefi_discover()).unwrap();
        assert!(decode(&good).is_ok());
        // Options start after the 236-byte header and the 4-byte magic cookie. Option 152
        // (bulk lease query base time) with length 2 trips the decoder's `len == 4` debug
        // assertion; whatever the build, decode() answers instead of unwinding.
        let packet = |opt: &[u8]| {
            let mut bad = good[..240].to_vec();
            bad.extend_from_slice(&[53, 1, 1]);
            bad.extend_from_slice(opt);
            bad.push(255);
            bad
        };
        let short_time = decode(&packet(&[152, 2, 0, 0]));
        if cfg!(debug_assertions) {
            assert!(short_time.is_err());
        }
        let _ = decode(&packet(&[151, 0]));
        assert!(decode(&[]).is_err());
        assert!(decode(&good[..100]).is_err());
    }

    #[test]
    fn option_82_becomes_labels() {
        use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
        let mut req = uefi_discover();
        assert!(relay_labels(&req).is_empty());
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(b"rack7-port12".to_vec()));
        info.insert(RelayInfo::AgentRemoteId(vec![0, 1, 0xfe]));
        req.opts_mut()
            .insert(DhcpOption::RelayAgentInformation(info));
        assert_eq!(
            relay_labels(&req),
            vec![
                ("circuit_id".into(), "rack7-port12".into()),
                ("remote_id".into(), "0001fe".into())
            ]
        );
        let mut r = reply_to(&req);
        echo_relay_info(&req, &mut r);
        let (_, back) = roundtrip(&r);
        assert_eq!(
            back.opts().get(OptionCode::RelayAgentInformation),
            req.opts().get(OptionCode::RelayAgentInformation)
        );
    }
}

//! Proxy-DHCP: boot information beside the LAN's own DHCP server (PXE 2.1 §2.2, §2.3).
//!
//! Another server hands out addresses; Kindling answers only PXE clients, with no address:
//!
//! 1. DISCOVER (broadcast to 67): the LAN's server OFFERs an address, Kindling a *proxy
//!    OFFER* ([`offer`]): yiaddr 0, option 54, option 60, option 97 echoed, option 43.
//! 2. The client takes its address from the LAN's server, then sends a REQUEST to Kindling's
//!    UDP 4011 and gets the boot file in the ACK ([`ack`]), sent back to the address and port
//!    the REQUEST came from ([`ack_destination`]): 4011 from EDK2/OVMF, 68 from iPXE.
//!
//! | client | proxy OFFER on 67 | ACK on 4011 |
//! | --- | --- | --- |
//! | PXE ROM (TFTP boot file) | 43: discovery control 3, boot servers [this server], a one-item menu of type 0x8000, prompt timeout 0; no file | siaddr, file, 66/67, 43 with the boot item (71) echoed |
//! | iPXE | 43: discovery control 8 (no menu: use the file); file = the `/boot.ipxe` URL | the same file |
//! | UEFI HTTP boot | 60 `HTTPClient`, file = the iPXE EFI URL; no 43 (HTTP boot takes the offer's URL) | the same file |
//! | not a PXE client, or no boot file (local disk, no profile) | no answer | no answer |
//!
//! Pure functions; the socket loop is in [`super::server`].

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use super::reply::{echo_guid, reply_base, set_boot};
use crate::pxe::Decision;

/// The PXE boot server port (proxy-DHCP REQUESTs and boot server discovery).
pub const PXE_PORT: u16 = 4011;
/// The boot server type of Kindling's one menu item (0x8000 and up are vendor types).
pub const BOOT_TYPE: u16 = 0x8000;
/// The menu item's text (a ROM with a visible menu shows it).
const MENU_TEXT: &[u8] = b"Kindling";

/// PXE option 43 sub-options.
const SUB_DISCOVERY_CONTROL: u8 = 6;
const SUB_BOOT_SERVERS: u8 = 8;
const SUB_BOOT_MENU: u8 = 9;
const SUB_MENU_PROMPT: u8 = 10;
const SUB_BOOT_ITEM: u8 = 71;
const SUB_END: u8 = 255;

/// Discovery control: bit 0 no broadcast discovery, bit 1 no multicast discovery (so the
/// client asks the listed boot server directly), bit 3 no menu, boot the offer's file.
const DISCOVER_LISTED_SERVER: u8 = 0b0011;
const USE_OFFERED_FILE: u8 = 0b1000;

/// Why a proxy request gets no answer.
pub type NoAnswer = &'static str;

/// The proxy OFFER for a DISCOVER on port 67, or why there is none.
pub fn offer(req: &Message, decision: &Decision, server_ip: Ipv4Addr) -> Result<Message, NoAnswer> {
    let vendor_class = answerable(decision)?;
    let mut msg = reply_base(req, MessageType::Offer, Ipv4Addr::UNSPECIFIED);
    msg.opts_mut()
        .insert(DhcpOption::ServerIdentifier(server_ip));
    echo_guid(req, &mut msg);
    if vendor_class == "HTTPClient" {
        set_boot(&mut msg, decision, server_ip);
    } else if decision.ipxe {
        set_boot(&mut msg, decision, server_ip);
        msg.opts_mut().insert(DhcpOption::ClassIdentifier(
            vendor_class.as_bytes().to_vec(),
        ));
        msg.opts_mut().insert(DhcpOption::VendorExtensions(vec![
            SUB_DISCOVERY_CONTROL,
            1,
            USE_OFFERED_FILE,
            SUB_END,
        ]));
    } else {
        // The ROM discovers its boot server (us, on 4011) through the menu; the file comes
        // in that ACK, so the offer carries none.
        msg.opts_mut().insert(DhcpOption::ClassIdentifier(
            vendor_class.as_bytes().to_vec(),
        ));
        msg.opts_mut()
            .insert(DhcpOption::VendorExtensions(discovery_menu(server_ip)));
    }
    Ok(msg)
}

/// The ACK for a REQUEST on port 4011, or why there is none.
pub fn ack(req: &Message, decision: &Decision, server_ip: Ipv4Addr) -> Result<Message, NoAnswer> {
    if req.opts().msg_type() != Some(MessageType::Request) {
        return Err("not a DHCPREQUEST (port 4011 serves only boot server requests)");
    }
    let vendor_class = answerable(decision)?;
    let mut msg = reply_base(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED);
    msg.set_ciaddr(req.ciaddr());
    msg.opts_mut()
        .insert(DhcpOption::ServerIdentifier(server_ip));
    echo_guid(req, &mut msg);
    set_boot(&mut msg, decision, server_ip);
    msg.opts_mut().insert(DhcpOption::ClassIdentifier(
        vendor_class.as_bytes().to_vec(),
    ));
    if let Some((kind, layer)) = boot_item(req) {
        let [t0, t1] = kind.to_be_bytes();
        let [l0, l1] = layer.to_be_bytes();
        msg.opts_mut().insert(DhcpOption::VendorExtensions(vec![
            SUB_BOOT_ITEM,
            4,
            t0,
            t1,
            l0,
            l1,
            SUB_END,
        ]));
    }
    Ok(msg)
}

/// Where a 4011 ACK goes: back to the REQUEST's source address and port; broadcast to that
/// port when the client has no address yet.
pub fn ack_destination(peer: SocketAddrV4) -> SocketAddrV4 {
    if peer.ip().is_unspecified() {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, peer.port())
    } else {
        peer
    }
}

fn answerable(decision: &Decision) -> Result<&'static str, NoAnswer> {
    let Some(vendor_class) = decision.vendor_class else {
        return Err("not a network-boot client (no PXEClient/HTTPClient class, not iPXE)");
    };
    if decision.boot_file.is_none() {
        return Err("no boot file for this machine (its profile boots from disk, or no profile)");
    }
    Ok(vendor_class)
}

/// Option 43 for a PXE ROM: ask the listed server (this one) for the one boot item, at once.
fn discovery_menu(server_ip: Ipv4Addr) -> Vec<u8> {
    let [t0, t1] = BOOT_TYPE.to_be_bytes();
    let ip = server_ip.octets();
    let mut o = vec![SUB_DISCOVERY_CONTROL, 1, DISCOVER_LISTED_SERVER];
    o.extend([SUB_BOOT_SERVERS, 7, t0, t1, 1, ip[0], ip[1], ip[2], ip[3]]);
    let text_len = u8::try_from(MENU_TEXT.len()).unwrap_or(u8::MAX);
    o.extend([SUB_BOOT_MENU, 3 + text_len, t0, t1, text_len]);
    o.extend_from_slice(MENU_TEXT);
    // Prompt timeout 0: no prompt, the first (only) item is chosen.
    o.extend([SUB_MENU_PROMPT, 4, 0, b'P', b'X', b'E']);
    o.push(SUB_END);
    o
}

/// The boot item (type, layer) a REQUEST asks for: option 43 sub-option 71, when present and
/// well formed.
pub fn boot_item(req: &Message) -> Option<(u16, u16)> {
    let Some(DhcpOption::VendorExtensions(bytes)) = req.opts().get(OptionCode::VendorExtensions)
    else {
        return None;
    };
    let mut rest = bytes.as_slice();
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => rest = tail,
            SUB_END => return None,
            _ => {
                let (&len, tail) = tail.split_first()?;
                let len = usize::from(len);
                let value = tail.get(..len)?;
                if code == SUB_BOOT_ITEM && len == 4 {
                    return Some((
                        u16::from_be_bytes([value[0], value[1]]),
                        u16::from_be_bytes([value[2], value[3]]),
                    ));
                }
                rest = &tail[len..];
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use dhcproto::v4::Architecture;

    use super::*;
    use crate::dhcp::reply::{client_info, encode_padded};
    use crate::dhcp::testkit::{netboot_decision, pxe_request};
    use crate::mac::MacAddr;
    use crate::pxe::{self, BootFiles, MachineBoot};

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x01];
    const BASE: &str = "http://10.0.0.2:8080";

    fn request(kind: MessageType, class: &str, arch: Architecture) -> Message {
        pxe_request(kind, MacAddr(MAC), class, arch, vec![0, 1, 2, 3])
    }

    fn decision(req: &Message) -> Decision {
        netboot_decision(&client_info(req), BASE)
    }

    fn opt43(m: &Message) -> Vec<u8> {
        match m.opts().get(OptionCode::VendorExtensions) {
            Some(DhcpOption::VendorExtensions(b)) => b.clone(),
            other => panic!("no option 43: {other:?}"),
        }
    }

    fn file(m: &Message) -> String {
        m.fname_str()
            .and_then(Result::ok)
            .unwrap_or_default()
            .trim_end_matches('\0')
            .to_string()
    }

    #[test]
    fn rom_offer_has_no_address_no_file_and_a_one_item_menu_naming_this_server() {
        let req = request(
            MessageType::Discover,
            "PXEClient:Arch:00007:UNDI:003016",
            Architecture::X64,
        );
        let o = offer(&req, &decision(&req), SERVER).unwrap();
        assert_eq!(o.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(o.siaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(file(&o), "");
        assert!(o.opts().get(OptionCode::BootfileName).is_none());
        assert!(o.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert_eq!(o.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(
            o.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            o.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            o.opts().get(OptionCode::ClientMachineIdentifier),
            Some(&DhcpOption::ClientMachineIdentifier(vec![0, 1, 2, 3]))
        );
        assert_eq!(
            opt43(&o),
            [
                &[6, 1, 3][..],
                &[8, 7, 0x80, 0x00, 1, 10, 0, 0, 2],
                &[9, 11, 0x80, 0x00, 8],
                b"Kindling",
                &[10, 4, 0, b'P', b'X', b'E'],
                &[255],
            ]
            .concat()
        );
        assert!(o.opts().get(OptionCode::Unknown(175)).is_none());
        // It survives encoding, padded.
        assert!(encode_padded(&o).unwrap().len() >= 300);
    }

    #[test]
    fn rom_ack_on_4011_carries_the_boot_file_and_echoes_the_boot_item() {
        let mut req = request(
            MessageType::Request,
            "PXEClient:Arch:00007:UNDI:003016",
            Architecture::X64,
        );
        req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 150));
        req.opts_mut().insert(DhcpOption::VendorExtensions(vec![
            71, 4, 0x80, 0x00, 0, 0, 255,
        ]));
        assert_eq!(boot_item(&req), Some((0x8000, 0)));
        let a = ack(&req, &decision(&req), SERVER).unwrap();
        assert_eq!(a.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(a.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(a.ciaddr(), Ipv4Addr::new(10, 0, 0, 150));
        assert_eq!(a.siaddr(), SERVER);
        assert_eq!(file(&a), "ipxe.efi");
        assert_eq!(
            a.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"ipxe.efi".to_vec()))
        );
        assert_eq!(
            a.opts().get(OptionCode::TFTPServerName),
            Some(&DhcpOption::TFTPServerName(b"10.0.0.2".to_vec()))
        );
        assert_eq!(opt43(&a), [71, 4, 0x80, 0x00, 0, 0, 255]);
        assert_eq!(
            a.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert!(a.opts().get(OptionCode::ClientMachineIdentifier).is_some());
        // Back where it came from: OVMF's 4011, iPXE's 68; broadcast without an address.
        let ovmf = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 150), 4011);
        assert_eq!(ack_destination(ovmf), ovmf);
        assert_eq!(
            ack_destination(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
    }

    #[test]
    fn bios_rom_gets_undionly() {
        let mut req = request(
            MessageType::Request,
            "PXEClient:Arch:00000:UNDI:002001",
            Architecture(0),
        );
        req.set_ciaddr(Ipv4Addr::new(10, 0, 0, 151));
        let a = ack(&req, &decision(&req), SERVER).unwrap();
        assert_eq!(file(&a), "undionly.kpxe");
        assert!(a.opts().get(OptionCode::VendorExtensions).is_none());
    }

    #[test]
    fn ipxe_gets_the_script_in_the_offer_with_no_menu_and_no_no_pxedhcp() {
        let mut req = request(
            MessageType::Discover,
            "PXEClient:Arch:00007:UNDI:003016",
            Architecture::X64,
        );
        req.opts_mut()
            .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        let d = decision(&req);
        let o = offer(&req, &d, SERVER).unwrap();
        assert_eq!(file(&o), "http://10.0.0.2:8080/boot.ipxe");
        assert_eq!(opt43(&o), [6, 1, 8, 255]);
        assert!(o.opts().get(OptionCode::Unknown(175)).is_none());
        let mut r = req.clone();
        r.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        let a = ack(&r, &d, SERVER).unwrap();
        assert_eq!(file(&a), "http://10.0.0.2:8080/boot.ipxe");
        assert!(a.opts().get(OptionCode::Unknown(175)).is_none());
    }

    #[test]
    fn http_boot_gets_the_url_and_httpclient_in_the_offer() {
        let req = request(
            MessageType::Discover,
            "HTTPClient:Arch:00016:UNDI:003016",
            Architecture::X64_Http,
        );
        let o = offer(&req, &decision(&req), SERVER).unwrap();
        // The URL names the machine: its fetch from an address Kindling never saw marks it.
        assert_eq!(
            file(&o),
            "http://10.0.0.2:8080/boot/ipxe.efi?mac=52:54:00:aa:00:01"
        );
        assert_eq!(
            o.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
        );
        assert!(o.opts().get(OptionCode::VendorExtensions).is_none());
    }

    #[test]
    fn non_pxe_clients_local_disk_and_unknown_machines_get_nothing() {
        let mut plain = request(MessageType::Discover, "android-dhcp-13", Architecture::X64);
        plain
            .opts_mut()
            .remove(OptionCode::ClientSystemArchitecture);
        assert!(offer(&plain, &decision(&plain), SERVER).is_err());

        let req = request(
            MessageType::Discover,
            "PXEClient:Arch:00007:UNDI:003016",
            Architecture::X64,
        );
        let info = client_info(&req);
        for machine in [
            MachineBoot::LocalDisk {
                profile: "installed".into(),
            },
            MachineBoot::NoProfile,
        ] {
            let d = pxe::decide(&info, &machine, &BootFiles::default(), BASE);
            let why = offer(&req, &d, SERVER).unwrap_err();
            assert!(why.contains("no boot file"), "{why}");
            let mut r = req.clone();
            r.opts_mut()
                .insert(DhcpOption::MessageType(MessageType::Request));
            assert!(ack(&r, &d, SERVER).is_err());
        }
        // 4011 answers only REQUESTs.
        assert!(ack(&req, &decision(&req), SERVER).is_err());
    }

    #[test]
    fn boot_item_parsing_is_defensive() {
        let with = |bytes: Vec<u8>| {
            let mut m = request(MessageType::Request, "PXEClient", Architecture::X64);
            m.opts_mut().insert(DhcpOption::VendorExtensions(bytes));
            boot_item(&m)
        };
        assert_eq!(with(vec![0, 0, 71, 4, 0, 1, 0, 2, 255]), Some((1, 2)));
        assert_eq!(with(vec![6, 1, 3, 71, 4, 0x80, 0, 0, 0]), Some((0x8000, 0)));
        assert_eq!(with(vec![71, 3, 0, 1, 0]), None);
        assert_eq!(with(vec![71, 9, 0, 1]), None);
        assert_eq!(with(vec![71]), None);
        assert_eq!(with(vec![255, 71, 4, 0, 1, 0, 2]), None);
        assert_eq!(with(vec![]), None);
        let mut rng = crate::testkit::Rng(0x4300_0000_0000_0043);
        for _ in 0..2000 {
            let len = rng.below(40);
            let bytes = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
            let _ = with(bytes);
        }
    }
}
